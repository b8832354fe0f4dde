//! A tiny GRIP origin on raw tokio with keep-alive HTTP/1.1:
//! `GET /stream/<channel>` answers a stream hold on `<channel>`, `GET /plain` a small
//! plain response (for pass-through), anything else 404.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_REQUEST_HEAD: usize = 32 * 1024;

pub(crate) async fn run(listen: SocketAddr) -> Result<()> {
    accept_forever("origin", listen, serve).await
}

/// Binds `listen` and serves every accepted connection with `serve` in a task of its own.
pub(crate) async fn accept_forever<F, Fut>(name: &str, listen: SocketAddr, serve: F) -> Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    eprintln!("{name} listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("{name} accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let conn = serve(stream);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn serve(mut stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(2048);
    let mut out = Vec::with_capacity(512);
    loop {
        // Answer every complete request in the buffer (pipelining), then write once.
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let n = match req.parse(&buf)? {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => break,
            };
            let mut body_len = 0usize;
            let mut close = req.version == Some(0);
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    body_len = std::str::from_utf8(h.value)?.trim().parse()?;
                } else if h.name.eq_ignore_ascii_case("connection") {
                    let v = h.value.to_ascii_lowercase();
                    if v.windows(5).any(|w| w == b"close") {
                        close = true;
                    } else if v.windows(10).any(|w| w == b"keep-alive") {
                        close = false;
                    }
                }
            }
            if buf.len() < n + body_len {
                // Wait for the (unexpected) request body; bounded by MAX_REQUEST_HEAD below.
                break;
            }
            respond(req.path.unwrap_or("/"), close, &mut out);
            buf.advance(n + body_len);
            if close {
                stream.write_all(&out).await?;
                return Ok(());
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if buf.len() > MAX_REQUEST_HEAD {
            anyhow::bail!("request too large");
        }
        buf.reserve(2048);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

fn respond(path: &str, close: bool, out: &mut Vec<u8>) {
    let conn = if close { "Connection: close\r\n" } else { "" };
    if let Some(channel) = path.strip_prefix("/stream/") {
        let channel = channel.split('?').next().unwrap_or(channel);
        if !channel.is_empty()
            && channel
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            let body = ":ok\n\n";
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nGrip-Hold: stream\r\nGrip-Channel: {channel}\r\nContent-Length: {}\r\n{conn}\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            return;
        }
    } else if path == "/plain" || path.starts_with("/plain?") {
        let body = "hello world\n";
        out.extend_from_slice(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{conn}\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        return;
    }
    let body = "Not Found\n";
    out.extend_from_slice(
        format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{conn}\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}
