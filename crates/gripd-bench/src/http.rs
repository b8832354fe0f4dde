//! Minimal HTTP/1.1 client pieces on raw tokio sockets: connect from a spread of
//! loopback source addresses, read a response head, decode a chunked body, publish.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body read by [`Publisher`].
const MAX_BODY: usize = 1024 * 1024;

/// Connects to `target` from `127.0.0.<1 + idx % 4>` so that held connections
/// are spread over four source addresses (four ephemeral port ranges).
pub(crate) async fn connect_spread(target: SocketAddr, idx: usize) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    // `idx % 4` is at most 3, so the cast is lossless.
    let ip = Ipv4Addr::new(127, 0, 0, 1 + (idx % 4) as u8);
    sock.bind(SocketAddr::new(ip.into(), 0))
        .with_context(|| format!("bind {ip}:0"))?;
    let stream = sock
        .connect(target)
        .await
        .with_context(|| format!("connect {target}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The parts of a response head the benchmark cares about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) chunked: bool,
    pub(crate) content_length: Option<usize>,
    pub(crate) close: bool,
}

/// Reads from `stream` into `buf` until a complete response head is there,
/// parses it and removes it from `buf` (body bytes stay in `buf`).
pub(crate) async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Head> {
    loop {
        if let Some(head) = parse_head(buf)? {
            return Ok(head);
        }
        if buf.len() > MAX_HEAD {
            bail!("response head larger than {MAX_HEAD} bytes");
        }
        buf.reserve(4096);
        let n = stream.read_buf(buf).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
    }
}

fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.unwrap_or(0);
    let mut chunked = false;
    let mut content_length = None;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = contains_token(h.value, b"chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = contains_token(h.value, b"close");
        }
    }
    buf.advance(n);
    Ok(Some(Head {
        status,
        chunked,
        content_length,
        close,
    }))
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Incremental decoder for `Transfer-Encoding: chunked` bodies.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Done,
}

impl Chunked {
    /// Moves decoded body bytes from `input` to `out`; leaves incomplete framing in `input`.
    pub(crate) fn decode(&mut self, input: &mut BytesMut, out: &mut Vec<u8>) -> Result<()> {
        loop {
            match self.state {
                ChunkState::Done => {
                    input.clear();
                    return Ok(());
                }
                ChunkState::Size => {
                    let Some(end) = find(input, b"\r\n") else {
                        if input.len() > 1024 {
                            bail!("chunk size line too long");
                        }
                        return Ok(());
                    };
                    let line = &input[..end];
                    let hex = line.split(|b| *b == b';').next().unwrap_or(line);
                    let hex = std::str::from_utf8(hex)?.trim();
                    let size = usize::from_str_radix(hex, 16)
                        .with_context(|| format!("bad chunk size {hex:?}"))?;
                    input.advance(end + 2);
                    self.state = if size == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let take = left.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input.advance(take);
                    self.state = if take == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataEnd => {
                    if input.len() < 2 {
                        return Ok(());
                    }
                    if &input[..2] != b"\r\n" {
                        bail!("chunk not followed by CRLF");
                    }
                    input.advance(2);
                    self.state = ChunkState::Size;
                }
            }
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `GET path` on a fresh connection and waits for the response head.
pub(crate) async fn open_get(
    target: SocketAddr,
    idx: usize,
    path: &str,
) -> Result<(TcpStream, BytesMut, Head)> {
    let mut stream = connect_spread(target, idx).await?;
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let head = read_head(&mut stream, &mut buf).await?;
    Ok((stream, buf, head))
}

/// A keep-alive connection to the proxy's HTTP control port for `POST /publish/`.
pub(crate) struct Publisher {
    target: SocketAddr,
    conn: Option<(TcpStream, BytesMut)>,
    timeout: Duration,
}

impl Publisher {
    pub(crate) fn new(target: SocketAddr) -> Self {
        Self {
            target,
            conn: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Posts `body` (a JSON `{"items":[...]}` document) and returns the status code.
    /// Reconnects once if the kept-alive connection turned out to be closed.
    pub(crate) async fn publish(&mut self, body: &[u8]) -> Result<u16> {
        match tokio::time::timeout(self.timeout, self.try_publish(body)).await {
            Ok(Ok(status)) => Ok(status),
            _ => {
                self.conn = None;
                tokio::time::timeout(self.timeout, self.try_publish(body))
                    .await
                    .context("publish timed out")?
            }
        }
    }

    async fn try_publish(&mut self, body: &[u8]) -> Result<u16> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.target)
                .await
                .with_context(|| format!("connect to control port {}", self.target))?;
            stream.set_nodelay(true)?;
            self.conn = Some((stream, BytesMut::with_capacity(1024)));
        }
        let Some((stream, buf)) = self.conn.as_mut() else {
            bail!("no control connection");
        };
        let mut req = format!(
            "POST /publish/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        stream.write_all(&req).await?;
        let head = read_head(stream, buf).await?;
        // Read and discard the body.
        if head.chunked {
            let mut dec = Chunked::default();
            let mut sink = Vec::new();
            loop {
                dec.decode(buf, &mut sink)?;
                if dec.done() {
                    break;
                }
                if sink.len() > MAX_BODY || stream.read_buf(buf).await? == 0 {
                    bail!("control response body truncated");
                }
            }
        } else if let Some(len) = head.content_length {
            if len > MAX_BODY {
                bail!("control response body too large");
            }
            while buf.len() < len {
                if stream.read_buf(buf).await? == 0 {
                    bail!("control response body truncated");
                }
            }
            buf.advance(len);
        } else {
            // Close-delimited: the connection cannot be reused.
            self.conn = None;
            return Ok(head.status);
        }
        if head.close {
            self.conn = None;
        }
        Ok(head.status)
    }
}

/// One publish item for an `http-stream` hold: the SSE event `data: <seq> <ts_ns>`.
pub(crate) fn push_item(out: &mut String, channel: &str, seq: u64, ts_ns: u64) {
    use std::fmt::Write as _;
    if !out.is_empty() {
        out.push(',');
    }
    // Channel names are generated by the benchmark (ASCII alphanumerics and '-'),
    // so no JSON escaping is needed.
    let _ = write!(
        out,
        r#"{{"channel":"{channel}","formats":{{"http-stream":{{"content":"data: {seq} {ts_ns}\n\n"}}}}}}"#
    );
}

pub(crate) fn items_body(items: &str) -> String {
    format!(r#"{{"items":[{items}]}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decoding_across_splits() -> Result<()> {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut dec = Chunked::default();
            let mut out = Vec::new();
            let mut input = BytesMut::from(&wire[..split]);
            dec.decode(&mut input, &mut out)?;
            input.extend_from_slice(&wire[split..]);
            dec.decode(&mut input, &mut out)?;
            assert_eq!(out, b"hello world");
            assert!(dec.done());
        }
        Ok(())
    }

    #[test]
    fn head_parsing() -> Result<()> {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n5\r\n"[..],
        );
        let head = parse_head(&mut buf)?.context("complete")?;
        assert_eq!(head.status, 200);
        assert!(head.chunked);
        assert!(!head.close);
        assert_eq!(&buf[..], b"5\r\n");
        Ok(())
    }

    #[test]
    fn item_json_is_valid() -> Result<()> {
        let mut items = String::new();
        push_item(&mut items, "c-1", 3, 42);
        push_item(&mut items, "c-2", 4, 43);
        let v: serde_json::Value = serde_json::from_str(&items_body(&items))?;
        assert_eq!(
            v["items"][1]["formats"]["http-stream"]["content"],
            "data: 4 43\n\n"
        );
        Ok(())
    }
}
