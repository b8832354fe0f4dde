//! A guard on the client socket's read side against ambiguous HTTP/1.1 framing.
//!
//! hyper resolves some ambiguous requests itself (it prefers `Transfer-Encoding` over
//! `Content-Length` and silently folds identical duplicate `Content-Length` headers). A proxy
//! must not guess: a request that two parsers could frame differently is how requests are
//! smuggled past one of them. This guard follows the byte stream request by request (head,
//! then the body by its declared framing) and, when a head carries both `Content-Length` and
//! `Transfer-Encoding`, several `Content-Length` headers, or a list value, it replaces the end
//! of that head with bytes hyper cannot parse: hyper answers `400 Bad Request` and closes the
//! connection, and nothing reaches the origin.
//!
//! Invariant: bytes are passed through unchanged except in that one case; memory held per
//! connection is the current request head only while it is being read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

// Chunk lines longer than this are not followed: hyper rejects them itself.
use crate::h1::{parse_chunk_size, parse_length, CHUNK_LINE_MAX as LINE_MAX};

/// Bytes that make any HTTP parser fail, whatever came before them in the head.
const POISON: &[u8] = b"\x00\r\n\r\n";

/// Wraps a client connection; see the module docs.
pub struct FramingGuard<S> {
    inner: S,
    state: State,
    /// The head being read (only while in `State::Head`).
    head: Vec<u8>,
    head_max: usize,
}

enum State {
    Head,
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(u8),
    Trailer(Vec<u8>),
    /// Upgraded or not followed any more: bytes pass through unchecked.
    Tunnel,
    /// A bad head was poisoned: the connection is over.
    Rejected,
}

enum Verdict {
    Ok(State),
    Reject,
}

impl<S> FramingGuard<S> {
    pub fn new(inner: S, head_max: usize) -> Self {
        FramingGuard {
            inner,
            state: State::Head,
            head: Vec::new(),
            head_max,
        }
    }

    /// The wrapped socket.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The socket, no longer guarded (a detached stream reads nothing from its client).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Follows `data`; returns the offset where a rejected head's bytes start in `data`.
    fn scan(&mut self, data: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < data.len() {
            match &mut self.state {
                State::Tunnel | State::Rejected => return None,
                State::Head => {
                    // Skip blank lines between requests (RFC 9112 §2.2 allows them).
                    if self.head.is_empty() && (data[i] == b'\r' || data[i] == b'\n') {
                        i += 1;
                        continue;
                    }
                    let start = i;
                    let rest = &data[i..];
                    let Some(end) = head_end(&self.head, rest) else {
                        self.head.extend_from_slice(rest);
                        if self.head.len() > self.head_max {
                            // hyper rejects oversized heads itself.
                            self.state = State::Tunnel;
                            self.head = Vec::new();
                        }
                        return None;
                    };
                    i += end;
                    if self.head.len() + end > self.head_max {
                        self.state = State::Tunnel;
                        self.head = Vec::new();
                        return None;
                    }
                    // A head within one read is judged where it lies, without a copy.
                    let verdict = if self.head.is_empty() {
                        judge(&rest[..end])
                    } else {
                        self.head.extend_from_slice(&rest[..end]);
                        let v = judge(&self.head);
                        self.head = Vec::new();
                        v
                    };
                    match verdict {
                        Verdict::Ok(next) => self.state = next,
                        Verdict::Reject => {
                            self.state = State::Rejected;
                            return Some(start);
                        }
                    }
                }
                State::Body(n) => {
                    let take = (*n).min((data.len() - i) as u64);
                    *n -= take;
                    i += take as usize;
                    if *n == 0 {
                        self.state = State::Head;
                    }
                }
                State::ChunkSize(line) => {
                    let b = data[i];
                    i += 1;
                    line.push(b);
                    if b == b'\n' {
                        let text = line.strip_suffix(b"\n").unwrap_or(line);
                        let text = text.strip_suffix(b"\r").unwrap_or(text);
                        match parse_chunk_size(text) {
                            Some(0) => self.state = State::Trailer(Vec::new()),
                            Some(n) => self.state = State::ChunkData(n),
                            None => self.state = State::Tunnel,
                        }
                    } else if line.len() > LINE_MAX {
                        self.state = State::Tunnel;
                    }
                }
                State::ChunkData(n) => {
                    let take = (*n).min((data.len() - i) as u64);
                    *n -= take;
                    i += take as usize;
                    if *n == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                }
                State::ChunkEnd(left) => {
                    i += 1;
                    *left -= 1;
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailer(line) => {
                    let b = data[i];
                    i += 1;
                    line.push(b);
                    if b == b'\n' {
                        if line == b"\r\n" || line == b"\n" {
                            self.state = State::Head;
                        } else {
                            line.clear();
                        }
                    } else if line.len() > LINE_MAX {
                        self.state = State::Tunnel;
                    }
                }
            }
        }
        None
    }
}

/// Where a request head ends in `rest` (just past its blank line), given the head's bytes
/// already seen in earlier reads (`seen`): the blank line may straddle two reads.
fn head_end(seen: &[u8], rest: &[u8]) -> Option<usize> {
    // The byte `back` places before `rest[j]`, looking into `seen` when needed.
    let before = |j: usize, back: usize| -> Option<u8> {
        if j >= back {
            Some(rest[j - back])
        } else {
            seen.len().checked_sub(back - j).map(|k| seen[k])
        }
    };
    let mut from = 0;
    while let Some(off) = rest[from..].iter().position(|&b| b == b'\n') {
        let j = from + off;
        let lf_lf = before(j, 1) == Some(b'\n');
        let crlf_crlf = before(j, 1) == Some(b'\r')
            && before(j, 2) == Some(b'\n')
            && before(j, 3) == Some(b'\r');
        if lf_lf || crlf_crlf {
            return Some(j + 1);
        }
        from = j + 1;
    }
    None
}

/// Decides what follows a complete request head.
fn judge(head: &[u8]) -> Verdict {
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        // hyper will reject what httparse cannot parse; stop following this connection.
        _ => return Verdict::Ok(State::Tunnel),
    }
    let mut content_length = None;
    let mut content_lengths = 0;
    let mut te = false;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_lengths += 1;
            content_length = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if content_lengths > 1 || (te && content_lengths > 0) {
        return Verdict::Reject;
    }
    if upgrade {
        return Verdict::Ok(State::Tunnel);
    }
    if te {
        return Verdict::Ok(State::ChunkSize(Vec::new()));
    }
    match content_length {
        None => Verdict::Ok(State::Head),
        // One value, digits only: a list (`5, 5`) or a sign is a reason to reject.
        Some(v) => match parse_length(v.trim_ascii()) {
            Some(0) => Verdict::Ok(State::Head),
            Some(n) => Verdict::Ok(State::Body(n)),
            None => Verdict::Reject,
        },
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.state, State::Rejected) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if matches!(this.state, State::Tunnel) {
            return Poll::Ready(Ok(()));
        }
        if let Some(at) = this.scan(&buf.filled()[before..]) {
            buf.set_filled(before + at);
            let room = buf.remaining().min(POISON.len());
            buf.put_slice(&POISON[..room]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn verdict(head: &str) -> bool {
        matches!(judge(head.as_bytes()), Verdict::Reject)
    }

    #[test]
    fn judges_heads() {
        assert!(verdict(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(verdict(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(verdict("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"));
        assert!(verdict("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"));
        assert!(!verdict("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"));
        assert!(!verdict(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn follows_pipelined_requests() {
        let mut g = FramingGuard::new((), 8192);
        let stream = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /c HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let bad = stream.windows(6).position(|w| w == b"GET /c").unwrap();
        // Feed byte by byte: framing must be tracked across reads.
        let mut hit = None;
        for (i, b) in stream.iter().enumerate() {
            if let Some(at) = g.scan(&[*b]) {
                hit = Some(i + at);
                break;
            }
        }
        assert!(hit.is_some_and(|h| h >= bad), "{hit:?}");
        // And in every split of the same stream into two reads.
        for cut in 0..stream.len() {
            let mut g = FramingGuard::new((), 8192);
            let hit = g
                .scan(&stream[..cut])
                .or_else(|| g.scan(&stream[cut..]).map(|at| cut + at));
            assert!(hit.is_some_and(|h| h >= bad), "cut {cut}: {hit:?}");
        }
    }

    #[test]
    fn finds_head_ends_across_reads() {
        assert_eq!(head_end(b"", b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"", b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r", b"\nrest"), Some(1));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n", b"\r\n"), Some(2));
        assert_eq!(head_end(b"GET / HTTP/1.1\r", b"\n\r\n"), Some(3));
        assert_eq!(head_end(b"GET / HTTP/1.1\n", b"\n"), Some(1));
        assert_eq!(head_end(b"", b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"", b"\n"), None);
    }

    #[test]
    fn good_pipelined_requests_pass() {
        let stream = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\n\r\n";
        for cut in 0..stream.len() {
            let mut g = FramingGuard::new((), 8192);
            assert_eq!(g.scan(&stream[..cut]), None, "cut {cut}");
            assert_eq!(g.scan(&stream[cut..]), None, "cut {cut}");
            assert!(matches!(g.state, State::Head), "cut {cut}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// One request as a client may send it, and whether its framing is ambiguous.
        fn request() -> impl Strategy<Value = (Vec<u8>, bool)> {
            let body = proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n')],
                0..200,
            );
            (
                prop_oneof![Just("GET"), Just("POST"), Just("PUT")],
                "/[a-z0-9]{0,12}",
                body,
                0u8..5,
                1usize..50,
            )
                .prop_map(|(method, path, body, kind, piece)| {
                    let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
                    let mut r = head.into_bytes();
                    let ambiguous = kind >= 3;
                    match kind {
                        // No body.
                        0 => r.extend_from_slice(b"\r\n"),
                        // A length.
                        1 => {
                            r.extend_from_slice(
                                format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                            );
                            r.extend_from_slice(&body);
                        }
                        // Chunked, in pieces.
                        2 => {
                            r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                            for c in body.chunks(piece) {
                                r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                                r.extend_from_slice(c);
                                r.extend_from_slice(b"\r\n");
                            }
                            r.extend_from_slice(b"0\r\n\r\n");
                        }
                        // Both framings.
                        3 => r.extend_from_slice(
                            b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                        ),
                        // Two lengths.
                        _ => r.extend_from_slice(b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n"),
                    }
                    (r, ambiguous)
                })
        }

        proptest! {
            /// Whatever a client sends, in whatever reads: no panic, and a poisoned offset
            /// lies within the read.
            #[test]
            fn scan_is_total(
                raw in proptest::collection::vec(
                    prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b':')], 0..600),
                step in 1usize..80,
            ) {
                let mut g = FramingGuard::new((), 256);
                for piece in raw.chunks(step) {
                    if let Some(at) = g.scan(piece) {
                        prop_assert!(at <= piece.len());
                        break;
                    }
                }
            }

            /// Pipelined requests with well-framed bodies (bytes that look like heads
            /// included) pass untouched in any split into reads; the first ambiguous one is
            /// caught within its own head, never earlier.
            #[test]
            fn pipelined_requests_are_followed(
                requests in proptest::collection::vec(request(), 1..6),
                step in 1usize..120,
            ) {
                let mut stream = Vec::new();
                let mut bad = None;
                for (r, ambiguous) in &requests {
                    if *ambiguous && bad.is_none() {
                        bad = Some((stream.len(), stream.len() + r.len()));
                    }
                    stream.extend_from_slice(r);
                }
                let mut g = FramingGuard::new((), 8192);
                let mut hit = None;
                let mut offset = 0;
                for piece in stream.chunks(step) {
                    if let Some(at) = g.scan(piece) {
                        hit = Some(offset + at);
                        break;
                    }
                    offset += piece.len();
                }
                match bad {
                    None => {
                        prop_assert_eq!(hit, None);
                        prop_assert!(matches!(g.state, State::Head));
                    }
                    Some((start, end)) => {
                        let hit = hit.expect("an ambiguous request passed");
                        prop_assert!(
                            hit >= start && hit < end,
                            "hit {} outside {}..{}", hit, start, end
                        );
                    }
                }
            }
        }
    }
}
