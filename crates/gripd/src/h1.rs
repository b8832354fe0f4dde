//! The origin side's HTTP/1.1 engine: one request and response at a time on an
//! [`OriginConn`], driven by the task that needs the response. No task of its own.
//!
//! Why not hyper's client connection: it runs in a task of its own and talks to the request
//! through two channels, so every request woke a second task (often on the other core) and
//! paid for its channel traffic. Here the request task writes the request and reads the head
//! itself, and the response body reads straight from the socket while the client side
//! (hyper's server) polls it. The pool (`pool.rs`) gets the connection back from the body.
//!
//! Invariants:
//! - A request's framing is ours: the client's `Content-Length`/`Transfer-Encoding` never pass;
//!   the body's own length decides (`Content-Length`, or chunked when unknown).
//! - A response is framed as RFC 9112 §6.3 says (no body for HEAD, 1xx, 204, 304; chunked; a
//!   single agreed `Content-Length`; otherwise up to the close). Conflicting lengths are an
//!   error, never a guess.
//! - A connection is reused only after a whole response was read with nothing left over, from
//!   an origin that kept the connection alive.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::origin::{Body, BoxError};
use crate::pool::{Key, Pool};

/// Most header lines in a response head.
const HEADERS_MAX: usize = 128;
/// Longest chunk-size or trailer line followed (requests in `framing.rs`, responses here).
pub const CHUNK_LINE_MAX: usize = 4096;
/// Read size; also the largest body frame handed on.
const READ_SIZE: usize = 16 * 1024;
/// Kept bodies up to this size go out in the same write as the head.
const COALESCE_MAX: usize = 16 * 1024;

/// The byte stream to an origin: TCP, or TLS over TCP for `ssl` targets.
pub type OriginIo = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// One HTTP/1.1 connection to an origin.
pub struct OriginConn {
    /// Boxed: a TLS stream is over a kilobyte, and connections move between pool and body.
    io: Box<OriginIo>,
    /// Bytes read from the origin and not yet consumed.
    buf: BytesMut,
    pub key: Arc<Key>,
    /// Has carried a response before (so it may have been closed while idle).
    reused: bool,
}

/// A request body as the engine sends it.
pub enum OutBody {
    /// Known bytes: can be sent again on another connection.
    Bytes(Bytes),
    /// Streamed from the client: sent once, chunked unless its length is known.
    Stream(Body),
}

impl OutBody {
    /// The body's length, `None` when unknown (sent chunked).
    pub fn known_len(&self) -> Option<u64> {
        match self {
            OutBody::Bytes(b) => Some(b.len() as u64),
            OutBody::Stream(s) => s.size_hint().exact(),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// A reused connection ended before any byte of a response: the origin closed it while
    /// idle. Safe to send again on a new connection when the request can be replayed.
    Stale,
    /// Anything else; the message says what, for logs and the 502 body.
    Failed(String),
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    Chunked,
    /// Up to the end of the connection.
    Close,
    /// `101 Switching Protocols`: the connection now belongs to another protocol.
    Upgrade,
}

/// What the response head says, besides the `http` parts.
#[derive(Debug, PartialEq, Eq)]
pub struct HeadInfo {
    pub framing: Framing,
    /// The origin keeps the connection open after this response.
    pub keep_alive: bool,
}

// === message syntax shared with `framing.rs` ===

/// A `Content-Length` value (one list element): ASCII digits only, no sign, no inner space.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The size on a chunk-size line (line end removed): hex digits before any `;` extension.
pub fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let size = line.split(|&b| b == b';').next()?.trim_ascii();
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()
}

/// The comma-separated tokens of a header value (`Connection`, `Transfer-Encoding`), trimmed.
pub fn tokens(value: &HeaderValue) -> impl DoubleEndedIterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

// === request encoding ===

/// How the origin request's header lines differ from the client's, applied as the head is
/// written (no copy of the client's header map is made).
#[derive(Default)]
pub struct HeaderEdits {
    /// A name, its one new value (`None`: dropped), and whether it has been written.
    edits: Vec<(HeaderName, Option<HeaderValue>, bool)>,
}

impl HeaderEdits {
    pub fn with_capacity(n: usize) -> HeaderEdits {
        HeaderEdits {
            edits: Vec::with_capacity(n),
        }
    }

    /// Every client line named `name` gives way to this one, written where the first of them
    /// was (at the end when there was none). A later edit of the same name replaces this one.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.edit(name, Some(value));
    }

    /// Every client line named `name` is left out.
    pub fn remove(&mut self, name: HeaderName) {
        self.edit(name, None);
    }

    fn edit(&mut self, name: HeaderName, value: Option<HeaderValue>) {
        match self.edits.iter_mut().find(|(n, _, _)| *n == name) {
            Some(e) => e.1 = value,
            None => self.edits.push((name, value, false)),
        }
    }
}

/// Writes a request head in origin-form: the client's header lines (`client`, cleaned of
/// hop-by-hop headers) as `edits` change them, then `extra` lines, then our own framing header
/// for `body_len` (`None`: chunked).
pub fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    client: &HeaderMap,
    edits: &mut HeaderEdits,
    extra: &[(HeaderName, HeaderValue)],
    body_len: Option<u64>,
) {
    fn line(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in client {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        match edits.edits.iter_mut().find(|(n, _, _)| n == name) {
            None => line(out, name, value),
            Some((_, new, written)) => {
                if !*written {
                    *written = true;
                    if let Some(v) = new {
                        line(out, name, v);
                    }
                }
            }
        }
    }
    for (name, value, written) in &edits.edits {
        if let (false, Some(v)) = (written, value) {
            line(out, name, v);
        }
    }
    for (name, value) in extra {
        line(out, name, value);
    }
    match body_len {
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Some(0) if !method_implies_body(method) => {}
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Methods whose requests normally carry a body: an empty one is said so (`Content-Length: 0`).
fn method_implies_body(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::CONNECT
            | Method::TRACE
    )
}

// === response head ===

/// A parsed response head: status, version, reason, headers and how its body is framed.
pub struct ParsedHead {
    pub status: StatusCode,
    pub version: Version,
    /// The reason phrase, when it is not the status code's usual one.
    pub reason: Option<Bytes>,
    pub headers: HeaderMap,
    pub info: HeadInfo,
    /// Length of the head in bytes.
    pub len: usize,
}

/// Parses a response head of at most `head_max` bytes at the start of `buf`: `Ok(None)` when
/// more bytes are needed. Informational (1xx other than 101) heads come back like any other;
/// the caller skips them.
pub fn parse_head(
    buf: &[u8],
    request_method: &Method,
    head_max: usize,
) -> Result<Option<ParsedHead>, String> {
    // Uninitialised slots: zeroing 128 of them cost more than the parse itself.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS_MAX];
    let mut r = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut r, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > head_max {
                return Err(format!("response head over {head_max} bytes"));
            }
            return Ok(None);
        }
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    if len > head_max {
        return Err(format!("response head over {head_max} bytes"));
    }
    let status = r
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("bad status code")?;
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let reason = r
        .reason
        .filter(|p| Some(*p) != status.canonical_reason())
        .map(|p| Bytes::copy_from_slice(p.as_bytes()));
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    let mut framing = FramingHeaders::default();
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("bad response header name {:?}", h.name))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| format!("bad value in response header {name}"))?;
        framing.note(&name, &value)?;
        headers.append(name, value);
    }
    let info = head_info(status, version, &framing, request_method);
    Ok(Some(ParsedHead {
        status,
        version,
        reason,
        headers,
        info,
        len,
    }))
}

/// What a response's `Connection`, `Transfer-Encoding` and `Content-Length` headers say,
/// gathered in the one pass that builds the header map.
#[derive(Default)]
struct FramingHeaders {
    close: bool,
    keep_alive: bool,
    /// Some `Transfer-Encoding` was present; `chunked_last`: its final coding is chunked.
    transfer_encoding: bool,
    chunked_last: bool,
    /// The one length all `Content-Length` values agree on.
    length: Option<u64>,
}

impl FramingHeaders {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), String> {
        if name == header::CONNECTION {
            for t in tokens(value) {
                self.close |= t.eq_ignore_ascii_case("close");
                self.keep_alive |= t.eq_ignore_ascii_case("keep-alive");
            }
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            if let Some(last) = tokens(value).next_back() {
                self.chunked_last = last.eq_ignore_ascii_case("chunked");
            }
        } else if name == header::CONTENT_LENGTH {
            for part in value.as_bytes().split(|&b| b == b',') {
                let n = parse_length(part.trim_ascii()).ok_or_else(|| {
                    format!("bad Content-Length {:?}", String::from_utf8_lossy(part))
                })?;
                if self.length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length values".into());
                }
                self.length = Some(n);
            }
        }
        Ok(())
    }
}

/// RFC 9112 §6.3 message body length, and whether the connection stays open.
fn head_info(
    status: StatusCode,
    version: Version,
    h: &FramingHeaders,
    request_method: &Method,
) -> HeadInfo {
    let close = h.close || (version == Version::HTTP_10 && !h.keep_alive);
    let (framing, reusable) = if status == StatusCode::SWITCHING_PROTOCOLS {
        (Framing::Upgrade, false)
    } else if *request_method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        (Framing::Length(0), true)
    } else if h.transfer_encoding {
        // Only a final `chunked` delimits the body; a length beside it is not to be trusted,
        // so the connection is not reused either way.
        let chunked = h.chunked_last && version == Version::HTTP_11;
        if chunked {
            (Framing::Chunked, h.length.is_none())
        } else {
            (Framing::Close, false)
        }
    } else if let Some(n) = h.length {
        (Framing::Length(n), true)
    } else {
        (Framing::Close, false)
    };
    HeadInfo {
        framing,
        keep_alive: reusable && !close,
    }
}

// === chunked decoding ===

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
    Done,
}

/// One step of the decoder over `buf`: data to hand on, `Ok(None)` when more bytes are
/// needed or the body is done (see `state`).
fn decode_chunk(
    buf: &mut BytesMut,
    state: &mut Chunk,
    max: usize,
) -> Result<Option<Bytes>, String> {
    loop {
        match *state {
            Chunk::Done => return Ok(None),
            Chunk::Data(0) => *state = Chunk::DataEnd,
            Chunk::Data(n) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = (n.min(buf.len() as u64) as usize).min(max);
                *state = Chunk::Data(n - take as u64);
                return Ok(Some(buf.split_to(take).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF".into());
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Size | Chunk::Trailers => {
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > CHUNK_LINE_MAX {
                        return Err("chunk line too long".into());
                    }
                    return Ok(None);
                };
                let line = buf.split_to(end + 1);
                let line = line.strip_suffix(b"\r\n").unwrap_or(&line[..end]);
                if *state == Chunk::Trailers {
                    if line.is_empty() {
                        *state = Chunk::Done;
                    }
                    continue;
                }
                let size = parse_chunk_size(line).ok_or("bad chunk size")?;
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
        }
    }
}

// === the connection ===

impl OriginConn {
    pub fn new(io: OriginIo, key: Arc<Key>) -> OriginConn {
        OriginConn {
            io: Box::new(io),
            buf: BytesMut::new(),
            key,
            reused: false,
        }
    }

    /// False when the origin has closed this idle connection (or sent what it should not).
    pub fn is_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut probe = [0u8; 1];
        let mut rb = tokio::io::ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut *self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Writes the request and reads the response head (skipping 1xx interim heads). `head`
    /// is used as the write buffer and comes back as it was, ready to be sent again.
    pub async fn exchange(
        &mut self,
        head: &mut Vec<u8>,
        body: OutBody,
        method: &Method,
        head_max: usize,
    ) -> Result<ParsedHead, ExchangeError> {
        let failed = |what: &str, e: io::Error| ExchangeError::Failed(format!("{what}: {e}"));
        // The rule `encode_head` wrote into the head: unknown length, chunked.
        let chunked = body.known_len().is_none();
        // A small known body goes out in the head's write; the rest is sent after it.
        let head_len = head.len();
        let rest = match body {
            OutBody::Bytes(b) if b.len() <= COALESCE_MAX => {
                head.extend_from_slice(&b);
                None
            }
            body => Some(body),
        };
        let written = self.io.write_all(head).await;
        head.truncate(head_len);
        written.map_err(|e| failed("sending request", e))?;
        let sent = match rest {
            Some(body) => self.send_body(body, chunked, method, head_max).await?,
            None => {
                self.io
                    .flush()
                    .await
                    .map_err(|e| failed("sending request", e))?;
                Sent::default()
            }
        };
        // An origin may answer before the body is all sent (a 413, a 401) and stop reading
        // it; the connection cannot carry another request then.
        if let Some(mut h) = sent.early {
            h.info.keep_alive = false;
            return Ok(h);
        }
        // Whether the origin sent anything at all: a reused connection that ends before any
        // byte was closed while idle (stale), not mid-response.
        let mut got_any = sent.heard;
        loop {
            if let Some(h) = self.final_head(method, head_max)? {
                return Ok(h);
            }
            match self.read_more().await {
                Ok(0) if self.reused && !got_any => return Err(ExchangeError::Stale),
                Ok(0) => {
                    return Err(ExchangeError::Failed(
                        "origin closed the connection before a complete response head".into(),
                    ))
                }
                Ok(_) => got_any = true,
                Err(e) if self.reused && !got_any && is_reset(&e) => {
                    return Err(ExchangeError::Stale)
                }
                Err(e) => return Err(failed("reading response", e)),
            }
        }
    }

    /// Sends a request body after its head while reading what the origin says meanwhile.
    async fn send_body(
        &mut self,
        body: OutBody,
        chunked: bool,
        method: &Method,
        head_max: usize,
    ) -> Result<Sent, ExchangeError> {
        let mut out = Outgoing {
            body: Some(body),
            chunked,
            queue: VecDeque::with_capacity(3),
        };
        // The origin's side has ended (closed or failed): only the sending goes on.
        let mut origin_ended = false;
        let mut heard = false;
        let sent = std::future::poll_fn(|cx| loop {
            if !origin_ended {
                match self.poll_read_more(cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => origin_ended = true,
                    Poll::Ready(Ok(_)) => {
                        heard = true;
                        match self.final_head(method, head_max) {
                            Ok(None) => continue,
                            Ok(Some(h)) => return Poll::Ready(Ok(Some(h))),
                            Err(e) => return Poll::Ready(Err(SendError::Head(e))),
                        }
                    }
                    Poll::Pending => {}
                }
            }
            return out.poll_send(&mut self.io, cx).map_ok(|()| None);
        })
        .await;
        let err = match sent {
            Ok(early) => return Ok(Sent { early, heard }),
            Err(SendError::Head(e)) => return Err(e),
            Err(SendError::Body(e)) => {
                return Err(ExchangeError::Failed(format!("reading request body: {e}")))
            }
            Err(SendError::Io(e)) => e,
        };
        // The origin may have answered and closed without reading the rest: what it sent
        // before closing is still there to read.
        loop {
            if let Some(h) = self.final_head(method, head_max)? {
                return Ok(Sent {
                    early: Some(h),
                    heard: true,
                });
            }
            match self.read_more().await {
                Ok(n) if n > 0 => heard = true,
                _ => break,
            }
        }
        if self.reused && !heard && is_reset(&err) {
            return Err(ExchangeError::Stale);
        }
        Err(ExchangeError::Failed(format!(
            "sending request body: {err}"
        )))
    }

    /// The final response head at the start of `buf`, taken from it, after dropping any
    /// interim (1xx) heads before it; `None` while more bytes are needed.
    fn final_head(
        &mut self,
        method: &Method,
        head_max: usize,
    ) -> Result<Option<ParsedHead>, ExchangeError> {
        loop {
            match parse_head(&self.buf, method, head_max).map_err(ExchangeError::Failed)? {
                None => return Ok(None),
                Some(h) => {
                    self.buf.advance(h.len);
                    if !h.status.is_informational() || h.info.framing == Framing::Upgrade {
                        return Ok(Some(h));
                    }
                }
            }
        }
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_SIZE);
        tokio_util::io::poll_read_buf(Pin::new(&mut *self.io), cx, &mut self.buf)
    }

    /// The stream and the bytes already read past the head: for `101 Switching Protocols`.
    pub fn into_upgraded(self) -> (Box<OriginIo>, Bytes) {
        (self.io, self.buf.freeze())
    }
}

/// How sending a request body went.
#[derive(Default)]
struct Sent {
    /// The origin's answer, when it came before the body was all sent (the rest was not).
    early: Option<ParsedHead>,
    /// Some bytes came from the origin meanwhile (so it did not close the connection idle).
    heard: bool,
}

/// Why sending a request body stopped.
enum SendError {
    /// Writing to the origin failed.
    Io(io::Error),
    /// The origin sent what is not a response head.
    Head(ExchangeError),
    /// The client's body failed (cut short, too large).
    Body(String),
}

/// A request body on its way out: frames from the client, each written (with its chunk
/// framing) before the next is asked for.
struct Outgoing {
    /// `None` once the body has ended (its last bytes may still be queued).
    body: Option<OutBody>,
    chunked: bool,
    /// Bytes to write, in order: a chunk-size line, data, a line end.
    queue: VecDeque<Bytes>,
}

impl Outgoing {
    /// Writes the whole body and flushes; `Pending` while the origin or the client is slow.
    fn poll_send<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        loop {
            while !self.queue.is_empty() {
                let slices: [io::IoSlice<'_>; 3] = std::array::from_fn(|i| {
                    io::IoSlice::new(self.queue.get(i).map_or(&[][..], |b| &b[..]))
                });
                let mut n = match Pin::new(&mut *io).poll_write_vectored(cx, &slices) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(SendError::Io(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SendError::Io(e))),
                    Poll::Pending => return Poll::Pending,
                };
                while n > 0 {
                    let Some(front) = self.queue.front_mut() else {
                        break;
                    };
                    if n < front.len() {
                        front.advance(n);
                        break;
                    }
                    n -= front.len();
                    self.queue.pop_front();
                }
            }
            let data = match &mut self.body {
                None => return Pin::new(&mut *io).poll_flush(cx).map_err(SendError::Io),
                Some(OutBody::Bytes(b)) => {
                    let b = std::mem::take(b);
                    self.body = None;
                    b
                }
                Some(OutBody::Stream(s)) => match Pin::new(s).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(SendError::Body(e.to_string())))
                    }
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue, // trailers are not forwarded
                    },
                    Poll::Ready(None) => {
                        self.body = None;
                        if self.chunked {
                            self.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                        }
                        continue;
                    }
                },
            };
            if data.is_empty() {
                continue;
            }
            if self.chunked {
                self.queue
                    .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                self.queue.push_back(data);
                self.queue.push_back(Bytes::from_static(b"\r\n"));
            } else {
                self.queue.push_back(data);
            }
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

// === the response body ===

/// An origin response body, read from the connection as the client side asks for it. When
/// it ends cleanly, the connection goes back to the pool (or is closed when it cannot be
/// reused); dropped before its end, it closes the connection.
pub struct OriginBody {
    conn: Option<OriginConn>,
    pool: Arc<Pool>,
    state: BodyState,
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Length(u64),
    Chunked(Chunk),
    Close,
    Upgrade,
    Ended,
}

impl OriginBody {
    pub fn new(conn: OriginConn, pool: Arc<Pool>, info: &HeadInfo) -> OriginBody {
        let state = match info.framing {
            Framing::Length(0) => BodyState::Ended,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(Chunk::Size),
            Framing::Close => BodyState::Close,
            Framing::Upgrade => BodyState::Upgrade,
        };
        let mut body = OriginBody {
            conn: Some(conn),
            pool,
            state,
            keep_alive: info.keep_alive,
        };
        if state == BodyState::Ended {
            body.finish();
        }
        body
    }

    /// For a `101` response: the origin stream and the bytes read past the head.
    pub fn into_upgraded(mut self) -> Option<(Box<OriginIo>, Bytes)> {
        if self.state != BodyState::Upgrade {
            return None;
        }
        self.conn.take().map(OriginConn::into_upgraded)
    }

    /// The body has ended: its connection is reusable if nothing is left over.
    fn finish(&mut self) {
        self.state = BodyState::Ended;
        if let Some(mut conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                conn.reused = true;
                self.pool.put(conn);
            }
        }
    }

    fn fail(&mut self, msg: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = BodyState::Ended;
        self.conn = None;
        Poll::Ready(Some(Err(msg.into())))
    }
}

impl HttpBody for OriginBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                BodyState::Ended | BodyState::Upgrade => return Poll::Ready(None),
                BodyState::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                BodyState::Length(n) if !conn.buf.is_empty() => {
                    let take = (*n).min(conn.buf.len() as u64) as usize;
                    *n -= take as u64;
                    let data = conn.buf.split_to(take).freeze();
                    if *n == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::Chunked(chunk) => match decode_chunk(&mut conn.buf, chunk, READ_SIZE) {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(None) if *chunk == Chunk::Done => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return this.fail(format!("origin response body: {e}")),
                },
                BodyState::Length(_) | BodyState::Close => {}
            }
            match conn.poll_read_more(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if this.state == BodyState::Close {
                        this.keep_alive = false;
                        this.finish();
                        return Poll::Ready(None);
                    }
                    return this.fail("origin closed the connection mid-body".into());
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(format!("reading origin body: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Ended | BodyState::Upgrade)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Ended | BodyState::Upgrade => SizeHint::with_exact(0),
            BodyState::Chunked(_) | BodyState::Close => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAX: usize = 64 * 1024;

    fn head(raw: &str, method: &Method) -> ParsedHead {
        parse_head(raw.as_bytes(), method, MAX).unwrap().unwrap()
    }

    #[test]
    fn request_head_has_our_framing_only() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.test"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.append("x-two", HeaderValue::from_static("1"));
        h.append("x-two", HeaderValue::from_static("2"));
        let none = HeaderMap::new();
        let encode = |method: &Method, h: &HeaderMap, body_len| {
            let mut out = Vec::new();
            let mut edits = HeaderEdits::default();
            encode_head(&mut out, method, "/p?q=1", h, &mut edits, &[], body_len);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            encode(&Method::POST, &h, Some(3)),
            "POST /p?q=1 HTTP/1.1\r\nhost: a.test\r\nx-two: 1\r\nx-two: 2\r\ncontent-length: 3\r\n\r\n"
        );
        assert_eq!(
            encode(&Method::PUT, &none, None),
            "PUT /p?q=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            encode(&Method::GET, &none, Some(0)),
            "GET /p?q=1 HTTP/1.1\r\n\r\n"
        );
        assert_eq!(
            encode(&Method::POST, &none, Some(0)),
            "POST /p?q=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
    }

    /// Edits replace a client header where it stood (all its lines), drop one, add new ones at
    /// the end in the order first set, and a later edit of a name wins; extra lines come last.
    #[test]
    fn request_head_edits() {
        let mut h = HeaderMap::new();
        h.append("x-first", HeaderValue::from_static("1"));
        h.append(header::HOST, HeaderValue::from_static("client.test"));
        h.append("x-gone", HeaderValue::from_static("a"));
        h.append("x-many", HeaderValue::from_static("1"));
        h.append("x-many", HeaderValue::from_static("2"));
        h.append("x-kept", HeaderValue::from_static("k"));
        let mut edits = HeaderEdits::with_capacity(4);
        edits.set(header::HOST, HeaderValue::from_static("origin.test"));
        edits.set(
            HeaderName::from_static("x-new"),
            HeaderValue::from_static("n1"),
        );
        edits.remove(HeaderName::from_static("x-gone"));
        edits.set(
            HeaderName::from_static("x-many"),
            HeaderValue::from_static("one"),
        );
        edits.set(
            HeaderName::from_static("x-new"),
            HeaderValue::from_static("n2"),
        );
        edits.remove(HeaderName::from_static("x-absent"));
        let extra = [(
            HeaderName::from_static("x-extra"),
            HeaderValue::from_static("e"),
        )];
        let mut out = Vec::new();
        encode_head(&mut out, &Method::GET, "/", &h, &mut edits, &extra, Some(0));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nx-first: 1\r\nhost: origin.test\r\nx-many: one\r\n\
             x-kept: k\r\nx-new: n2\r\nx-extra: e\r\n\r\n"
        );
    }

    #[test]
    fn response_framing() {
        let get = Method::GET;
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", &get);
        assert_eq!(
            h.info,
            HeadInfo {
                framing: Framing::Length(5),
                keep_alive: true
            }
        );
        assert_eq!(h.len, 38);
        assert!(h.reason.is_none());
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            &get,
        );
        assert_eq!(
            h.info,
            HeadInfo {
                framing: Framing::Chunked,
                keep_alive: true
            }
        );
        // A length beside chunked: chunked wins, the connection is not reused.
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            &get,
        );
        assert_eq!(
            h.info,
            HeadInfo {
                framing: Framing::Chunked,
                keep_alive: false
            }
        );
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", &get);
        assert_eq!(
            h.info,
            HeadInfo {
                framing: Framing::Close,
                keep_alive: false
            }
        );
        let h = head("HTTP/1.1 200 OK\r\n\r\n", &get);
        assert_eq!(
            h.info,
            HeadInfo {
                framing: Framing::Close,
                keep_alive: false
            }
        );
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
            &get,
        );
        assert_eq!(
            h.info,
            HeadInfo {
                framing: Framing::Length(4),
                keep_alive: false
            }
        );
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\n", &get);
        assert!(!h.info.keep_alive);
        let h = head(
            "HTTP/1.0 200 OK\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\n",
            &get,
        );
        assert!(h.info.keep_alive);
        for status in ["204 No Content", "304 Not Modified", "100 Continue"] {
            let h = head(
                &format!("HTTP/1.1 {status}\r\nContent-Length: 9\r\n\r\n"),
                &get,
            );
            assert_eq!(h.info.framing, Framing::Length(0), "{status}");
        }
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(h.info.framing, Framing::Length(0));
        let h = head(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            &get,
        );
        assert_eq!(
            h.info,
            HeadInfo {
                framing: Framing::Upgrade,
                keep_alive: false
            }
        );
        // Repeated equal lengths are one length; different ones are an error.
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\n",
            &get,
        );
        assert_eq!(h.info.framing, Framing::Length(2));
        for bad in [
            "Content-Length: 2\r\nContent-Length: 3",
            "Content-Length: +2",
            "Content-Length: 0x2",
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n");
            assert!(parse_head(raw.as_bytes(), &get, MAX).is_err(), "{bad}");
        }
    }

    #[test]
    fn response_head_details() {
        let h = head(
            "HTTP/1.1 299 Fine Indeed\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.status.as_u16(), 299);
        assert_eq!(h.reason.as_deref(), Some(&b"Fine Indeed"[..]));
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        let h = head("HTTP/1.1 404 Gone Fishing\r\n\r\n", &Method::GET);
        assert_eq!(h.reason.as_deref(), Some(&b"Gone Fishing"[..]));
        // Partial heads wait; garbage and oversized heads fail.
        let partial = b"HTTP/1.1 200 OK\r\nX-A: 1\r\n";
        assert!(parse_head(partial, &Method::GET, MAX).unwrap().is_none());
        assert!(parse_head(b"NOT HTTP\r\n\r\n", &Method::GET, MAX).is_err());
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(parse_head(&big, &Method::GET, MAX).is_err());
        // The limit counts the head only, complete or not.
        let complete = b"HTTP/1.1 200 OK\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        assert!(parse_head(complete, &Method::GET, 40).is_err());
        assert!(parse_head(complete, &Method::GET, complete.len())
            .unwrap()
            .is_some());
    }

    #[test]
    fn lengths_and_chunk_sizes() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"5 5",
            b"0x5",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"A ; name=value"), Some(10));
        for bad in [&b""[..], b";ext", b"zz", b"11111111111111111", b"-1"] {
            assert_eq!(
                parse_chunk_size(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Chunk, usize), String> {
        let mut buf = BytesMut::new();
        let mut state = Chunk::Size;
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(d) = decode_chunk(&mut buf, &mut state, 4)? {
                assert!(d.len() <= 4);
                out.extend_from_slice(&d);
            }
        }
        Ok((out, state, buf.len()))
    }

    #[test]
    fn chunked_bodies_decode_at_every_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (out, state, left) = decode_all(body, step).unwrap();
            assert_eq!(out, b"hello, world", "step {step}");
            assert_eq!(state, Chunk::Done);
            assert_eq!(left, 4, "bytes after the body are left alone");
        }
        let (out, state, _) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n", 3).unwrap();
        assert_eq!((out.len(), state), (10, Chunk::Done));
    }

    #[test]
    fn bad_chunked_bodies_fail() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; CHUNK_LINE_MAX + 2];
        assert!(decode_all(&long, CHUNK_LINE_MAX + 2).is_err());
    }

    /// A streamed body goes out whole and in order, with its chunk framing, even when the
    /// origin side takes a few bytes at a time (partial vectored writes); an empty frame
    /// writes nothing; a known-length body goes out as it is.
    #[tokio::test]
    async fn outgoing_body_survives_partial_writes() {
        use http_body_util::{BodyExt, StreamBody};
        for chunked in [true, false] {
            let frames: Vec<Result<Frame<Bytes>, BoxError>> = ["hello", "", " big world", "!"]
                .into_iter()
                .map(|d| Ok(Frame::data(Bytes::from(d))))
                .collect();
            let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
            let mut out = Outgoing {
                body: Some(OutBody::Stream(body)),
                chunked,
                queue: VecDeque::new(),
            };
            // A 3-byte pipe: every write is partial.
            let (mut near, mut far) = tokio::io::duplex(3);
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut far, &mut got)
                    .await
                    .unwrap();
                got
            });
            std::future::poll_fn(|cx| out.poll_send(&mut near, cx))
                .await
                .map_err(|_| "send failed")
                .unwrap();
            drop(near);
            let got = String::from_utf8(reader.await.unwrap()).unwrap();
            let want = if chunked {
                "5\r\nhello\r\na\r\n big world\r\n1\r\n!\r\n0\r\n\r\n"
            } else {
                "hello big world!"
            };
            assert_eq!(got, want, "chunked={chunked}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn method() -> impl Strategy<Value = Method> {
            prop_oneof![Just(Method::GET), Just(Method::HEAD), Just(Method::POST)]
        }

        /// Random bytes with a fair share of what heads and chunked bodies are made of.
        fn head_like() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    Just(b'\r'),
                    Just(b'\n'),
                    Just(b':'),
                    Just(b' '),
                    Just(b'0'),
                ],
                0..400,
            )
        }

        proptest! {
            /// An origin's response head, whatever its bytes: no panic, and a head is never
            /// longer than the bytes given or the limit.
            #[test]
            fn parse_head_is_total(
                mut raw in head_like(),
                prefix in prop_oneof![Just(&b""[..]), Just(&b"HTTP/1.1 200 OK\r\n"[..])],
                method in method(),
                head_max in 16usize..600,
            ) {
                raw.splice(0..0, prefix.iter().copied());
                if let Ok(Some(h)) = parse_head(&raw, &method, head_max) {
                    prop_assert!(h.len <= raw.len() && h.len <= head_max);
                }
            }

            /// The chunked decoder, whatever its bytes and however they are split: no panic,
            /// never more bytes out than in, never a frame over its limit.
            #[test]
            fn decode_chunk_is_total(raw in head_like(), step in 1usize..64, max in 1usize..32) {
                let mut buf = BytesMut::new();
                let mut state = Chunk::Size;
                let mut out = 0;
                'feed: for piece in raw.chunks(step) {
                    buf.extend_from_slice(piece);
                    loop {
                        match decode_chunk(&mut buf, &mut state, max) {
                            Ok(Some(d)) => {
                                prop_assert!(d.len() <= max);
                                out += d.len();
                            }
                            Ok(None) => break,
                            Err(_) => break 'feed,
                        }
                    }
                }
                prop_assert!(out <= raw.len());
            }

            /// Any chunked encoding of any body (extensions, trailers, chunk sizes in either
            /// case), split anywhere, decodes to that body and leaves what follows it alone.
            #[test]
            fn chunked_bodies_round_trip(
                chunks in proptest::collection::vec(
                    proptest::collection::vec(any::<u8>(), 1..300), 0..6),
                ext in prop_oneof![Just(""), Just(";a=b"), Just(";q=\"x y\"")],
                upper in any::<bool>(),
                trailers in prop_oneof![Just(""), Just("X-T: 1\r\n"), Just("A: 1\r\nB: 2\r\n")],
                step in 1usize..97,
                max in 1usize..200,
            ) {
                let mut wire = Vec::new();
                for c in &chunks {
                    let size = if upper { format!("{:X}", c.len()) } else { format!("{:x}", c.len()) };
                    wire.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
                    wire.extend_from_slice(c);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(format!("0{ext}\r\n{trailers}\r\nNEXT").as_bytes());
                let mut buf = BytesMut::new();
                let mut state = Chunk::Size;
                let mut out = Vec::new();
                for piece in wire.chunks(step) {
                    buf.extend_from_slice(piece);
                    while let Some(d) = decode_chunk(&mut buf, &mut state, max).unwrap() {
                        prop_assert!(d.len() <= max);
                        out.extend_from_slice(&d);
                    }
                }
                prop_assert_eq!(out, chunks.concat());
                prop_assert_eq!(state, Chunk::Done);
                prop_assert_eq!(&buf[..], b"NEXT");
            }
        }
    }
}
