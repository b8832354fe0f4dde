//! The pass-through ceiling: a byte relay that does the least any HTTP/1.1 proxy must do.
//!
//! Each client connection gets its own origin connection (no pool); each request head is
//! parsed only to find where the message ends (`Content-Length` framing; no headers are
//! changed, no routing, no signing), then relayed whole, and the response likewise. What wrk
//! measures through it is what the kernel's loopback TCP costs a proxy on this machine: the
//! most any real proxy could reach here.

use std::net::SocketAddr;

use anyhow::{bail, Result};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEAD_MAX: usize = 64 * 1024;

pub(crate) async fn run(listen: SocketAddr, origin: SocketAddr) -> Result<()> {
    eprintln!("relay to {origin}");
    crate::origin::accept_forever("relay", listen, move |client| relay(client, origin)).await
}

async fn relay(mut client: TcpStream, origin: SocketAddr) -> Result<()> {
    client.set_nodelay(true)?;
    let mut upstream = TcpStream::connect(origin).await?;
    upstream.set_nodelay(true)?;
    let mut from_client = BytesMut::with_capacity(4096);
    let mut from_origin = BytesMut::with_capacity(4096);
    loop {
        let Some(request) = message(&mut client, &mut from_client, true).await? else {
            return Ok(());
        };
        upstream.write_all(&request).await?;
        let Some(response) = message(&mut upstream, &mut from_origin, false).await? else {
            return Ok(());
        };
        client.write_all(&response).await?;
    }
}

/// Reads one whole message (head and `Content-Length` body); `None` at a clean end.
async fn message(s: &mut TcpStream, buf: &mut BytesMut, request: bool) -> Result<Option<BytesMut>> {
    loop {
        if let Some(len) = framed_len(buf, request)? {
            if buf.len() >= len {
                return Ok(Some(buf.split_to(len)));
            }
        } else if buf.len() > HEAD_MAX {
            bail!("head too large");
        }
        buf.reserve(4096);
        if s.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Head plus body length, once the head is complete.
fn framed_len(buf: &[u8], request: bool) -> Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let (status, headers) = if request {
        let mut r = httparse::Request::new(&mut headers);
        (r.parse(buf)?, r.headers)
    } else {
        let mut r = httparse::Response::new(&mut headers);
        (r.parse(buf)?, r.headers)
    };
    let httparse::Status::Complete(head) = status else {
        return Ok(None);
    };
    let mut body = 0;
    for h in headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("the relay only frames Content-Length bodies");
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(h.value)?.trim().parse()?;
        }
    }
    Ok(Some(head + body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_messages() {
        assert_eq!(
            framed_len(b"GET / HTTP/1.1\r\n\r\n", true).unwrap(),
            Some(18)
        );
        assert_eq!(framed_len(b"GET / HTTP/1.1\r\n", true).unwrap(), None);
        let post = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(framed_len(post, true).unwrap(), Some(post.len()));
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(framed_len(resp, false).unwrap(), Some(resp.len()));
        assert!(framed_len(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        )
        .is_err());
    }
}
