//! Pass-through proxying: what the client sees through gripd equals what the origin sends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gripd_tests::*;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An origin that echoes the request: method, path, selected headers and body.
async fn echo_origin() -> Origin {
    origin(|req: http::Request<hyper::body::Incoming>| async move {
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let sig = req
            .headers()
            .get("grip-sig")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let te = req
            .headers()
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let host = req
            .headers()
            .get("host")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut r = resp(
            201,
            &[
                ("X-Method", &method),
                ("X-Path", &path),
                ("X-Sig", &sig),
                ("X-TE", &te),
                ("X-Host", &host),
                ("X-Custom", "a"),
                ("X-Custom", "b"),
            ],
            body,
        );
        *r.status_mut() = if method == "DELETE" {
            http::StatusCode::NO_CONTENT
        } else {
            http::StatusCode::CREATED
        };
        if method == "DELETE" {
            *r.body_mut() = empty();
        }
        r
    })
    .await
}

fn comparable(r: &Reply) -> (u16, Vec<(String, String)>, Bytes) {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "connection" | "x-sig" | "x-host"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    h.sort();
    (r.status, h, r.body.clone())
}

#[tokio::test]
async fn methods_equal_direct() {
    let o = echo_origin().await;
    let p = Proxy::start(&[format!("* {}", o.addr)], "").await;
    for method in ["GET", "POST", "PUT", "DELETE", "HEAD"] {
        let body = if matches!(method, "POST" | "PUT") {
            "payload"
        } else {
            ""
        };
        let direct = request(o.addr, method, "/a/b?c=d", &[], body).await;
        let proxied = request(p.client, method, "/a/b?c=d", &[], body).await;
        assert_eq!(comparable(&direct), comparable(&proxied), "{method}");
        assert_eq!(proxied.headers.get_all("x-custom").iter().count(), 2);
    }
}

#[tokio::test]
async fn host_kept_and_hop_by_hop_removed() {
    let o = origin(|req: http::Request<hyper::body::Incoming>| async move {
        let seen: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
        resp(200, &[], seen.join(","))
    })
    .await;
    let p = Proxy::start(&[format!("* {}", o.addr)], "").await;
    let r = request(
        p.client,
        "GET",
        "/",
        &[
            ("Host", "example.com"),
            ("Connection", "x-hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "300"),
            ("Accept-Encoding", "gzip"),
            ("X-Keep", "1"),
        ],
        "",
    )
    .await;
    let seen = String::from_utf8_lossy(&r.body).to_string();
    assert!(seen.contains("x-keep"), "{seen}");
    for h in ["x-hop", "keep-alive", "accept-encoding"] {
        assert!(!seen.split(',').any(|s| s == h), "{h} forwarded: {seen}");
    }
    assert!(
        seen.contains("grip-sig") && seen.contains("grip-feature"),
        "{seen}"
    );
}

#[tokio::test]
async fn grip_sig_verifiable_and_client_sig_stripped() {
    let o = echo_origin().await;
    let p = Proxy::start(
        &[format!("* {}", o.addr)],
        "[proxy]\nsig_key = \"s3cret-key\"\nsig_iss = \"pushpin\"\n",
    )
    .await;
    let r = request(
        p.client,
        "GET",
        "/",
        &[("Grip-Sig", "forged"), ("Grip-Last", "x; last-id=1")],
        "",
    )
    .await;
    let sig = r
        .headers
        .get("x-sig")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(sig, "forged");
    let key = grip::SigKey::from_bytes(b"s3cret-key".to_vec());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        grip::validate(&sig, &key, now),
        "signature does not verify: {sig}"
    );
    let wrong = grip::SigKey::from_bytes(b"other".to_vec());
    assert!(!grip::validate(&sig, &wrong, now));
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    const MB: usize = 1024 * 1024;
    // The origin answers with `size` bytes generated on the fly, and counts uploaded bytes.
    let o = origin(|req: http::Request<hyper::body::Incoming>| async move {
        let size: usize = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("size="))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut body = req.into_body();
        let mut uploaded = 0usize;
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                uploaded += d.len();
            }
        }
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::iter(
            (0..size / chunk.len())
                .map(move |_| Ok::<_, BoxError>(hyper::body::Frame::data(chunk.clone()))),
        );
        let mut r = http::Response::new(http_body_util::StreamBody::new(stream).boxed());
        r.headers_mut()
            .insert("x-uploaded", uploaded.to_string().parse().unwrap());
        r
    })
    .await;
    let p = Proxy::start(&[format!("* {}", o.addr)], "").await;
    for size in [MB, 100 * MB] {
        let rss_before = rss_kb();
        // Upload `size` bytes as a chunked stream, download `size` bytes.
        let stream = tokio::net::TcpStream::connect(p.client).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
        let up = futures_util::stream::iter(
            (0..size / chunk.len())
                .map(move |_| Ok::<_, BoxError>(hyper::body::Frame::data(chunk.clone()))),
        );
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("/big?size={size}"))
            .header("host", "x")
            .body(http_body_util::StreamBody::new(up))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            resp.headers()["x-uploaded"].to_str().unwrap(),
            size.to_string()
        );
        let mut body = resp.into_body();
        let mut got = 0usize;
        let mut peak = 0u64;
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.unwrap().into_data() {
                    got += d.len();
                    if got % (8 * MB) < d.len() {
                        peak = peak.max(rss_kb());
                    }
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got, size);
        // Origin, proxy and client share this process: if any of them buffered the body,
        // the process would grow by ~100 MB.
        let growth_mb = peak.saturating_sub(rss_before) / 1024;
        assert!(
            growth_mb < 32,
            "process grew {growth_mb} MB while moving {} MB",
            size / MB
        );
    }
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn chunked_request_body_forwarded() {
    let o = echo_origin().await;
    let p = Proxy::start(&[format!("* {}", o.addr)], "").await;
    let reply = raw(
        p.client,
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    assert!(reply.contains("hello world"), "{reply}");
}

#[tokio::test]
async fn origin_down_gives_502_and_gripd_keeps_serving() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let o = echo_origin().await;
    let p = Proxy::start(
        &[
            format!("*,path_beg=/dead {dead_addr}"),
            format!("* {}", o.addr),
        ],
        "",
    )
    .await;
    let r = request(p.client, "GET", "/dead/x", &[], "").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body, "Error while proxying to origin.\n");
    let r = request(p.client, "GET", "/alive", &[], "").await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn failover_to_second_target() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let o = echo_origin().await;
    let p = Proxy::start(&[format!("* {dead_addr} {}", o.addr)], "").await;
    let r = request(p.client, "POST", "/x", &[], "body").await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body, "body");
}

/// An origin that answers `ok` at once, and to `/slow` only after `delay`.
async fn slow_path_origin(delay: Duration) -> Origin {
    origin(
        move |req: http::Request<hyper::body::Incoming>| async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(delay).await;
            }
            resp(200, &[("content-length", "2")], "ok")
        },
    )
    .await
}

#[tokio::test]
async fn origin_timeout_gives_504() {
    let o = slow_path_origin(Duration::from_secs(30)).await;
    let p = Proxy::start(
        &[format!("* {}", o.addr)],
        "[proxy]\nresponse_timeout_secs = 1\n",
    )
    .await;
    let r = request(p.client, "GET", "/slow", &[], "").await;
    assert_eq!(r.status, 504);

    // On a keep-alive connection whose earlier requests were answered in time, a slow one
    // still gets its whole second, then a 504.
    let mut s = tokio::net::TcpStream::connect(p.client).await.unwrap();
    for i in 0..3 {
        s.write_all(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(read_until_or_eof(&mut s, "\r\n\r\nok").await, "request {i}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let start = std::time::Instant::now();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_until_or_eof(&mut s, "HTTP/1.1 504").await);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(950), "504 after {waited:?}");
    assert!(waited < Duration::from_secs(5), "504 after {waited:?}");
}

#[tokio::test]
async fn https_origin_with_self_signed_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(resp(200, &[("X-TLS", "yes")], "secure"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let p = Proxy::start(
        &[
            format!("*,path_beg=/strict {addr},ssl"),
            format!("* {addr},ssl,insecure"),
        ],
        "",
    )
    .await;
    let r = request(p.client, "GET", "/x", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "secure");
    // Without `insecure` the self-signed certificate is refused.
    let r = request(p.client, "GET", "/strict", &[], "").await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn ambiguous_framing_rejected_before_origin() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let o = origin(move |_req| {
        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { resp(200, &[], "reached") }
    })
    .await;
    let p = Proxy::start(&[format!("* {}", o.addr)], "").await;
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
    ];
    for case in cases {
        let reply = raw(p.client, case).await;
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "{:?} got {reply:?}",
            String::from_utf8_lossy(case)
        );
    }
    // An oversized head is refused too (431 Request Header Fields Too Large).
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let reply = raw(p.client, &big).await;
    assert!(
        reply.starts_with("HTTP/1.1 431") || reply.starts_with("HTTP/1.1 400"),
        "{reply:?}"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a bad request reached the origin"
    );
}

/// A raw keep-alive origin: answers each request head with `reply(head, n)` (bytes, and
/// whether to close the connection after them; `n` counts requests on the connection), for at
/// most `per_conn` requests per connection. Counts connections.
async fn scripted_origin(
    per_conn: usize,
    reply: fn(&str, usize) -> (Vec<u8>, bool),
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for n in 0..per_conn {
                    let head = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break buf.drain(..end + 4).collect::<Vec<u8>>();
                        }
                        let mut chunk = [0u8; 4096];
                        match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    };
                    let (bytes, close) = reply(&String::from_utf8_lossy(&head), n);
                    if s.write_all(&bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// An origin that closes each connection, without saying so, after `per_conn` responses (as
/// an origin's keep-alive timeout does).
async fn closing_origin(per_conn: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    scripted_origin(per_conn, |head, _| {
        let reply: &[u8] = if head.starts_with("GET /empty") {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else if head.starts_with("HEAD") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        (reply.to_vec(), false)
    })
    .await
}

/// Every way an origin may delimit a response reaches the client whole, connections are
/// reused only after responses that allow it, and a response gripd cannot frame is a 502.
#[tokio::test]
async fn origin_response_framings() {
    let (addr, accepted) = scripted_origin(100, |head, _| {
        let path = head.split(' ').nth(1).unwrap_or("");
        let (reply, close): (&[u8], bool) = match path {
            "/chunked" => (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
                false,
            ),
            "/length" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfixed", false),
            "/hints" => (
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
                false,
            ),
            "/reason" => (
                b"HTTP/1.1 299 Quite Fine\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nto the end", true),
            "/http10" => (b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!", false),
            "/conflict" => (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
                true,
            ),
            _ => (b"NOT HTTP AT ALL\r\n\r\n", true),
        };
        (reply.to_vec(), close)
    })
    .await;
    let p = Proxy::start(&[format!("* {addr}")], "").await;
    let opened = || accepted.load(Ordering::SeqCst);
    let plan: [(&str, u16, &str, bool); 8] = [
        ("/chunked", 200, "hello world", true),
        ("/length", 200, "fixed", true),
        ("/hints", 200, "final", true),
        ("/reason", 299, "", true),
        ("/until-close", 200, "to the end", false),
        ("/http10", 200, "old!", false),
        ("/conflict", 502, "", false),
        ("/garbage", 502, "", false),
    ];
    for (path, status, body, reused) in plan {
        // Twice: whether the second request opens a connection shows whether the first
        // one's connection was kept.
        let mut after_first = 0;
        for round in 0..2 {
            let r = request(p.client, "GET", path, &[], "").await;
            assert_eq!(r.status, status, "{path} round {round}");
            if status == 200 {
                assert_eq!(r.body, body, "{path} round {round}");
            }
            if path == "/reason" {
                assert_eq!(r.reason, "Quite Fine");
            }
            // Time for gripd to see an origin's close.
            tokio::time::sleep(Duration::from_millis(30)).await;
            if round == 0 {
                after_first = opened();
            }
        }
        let opened_for_second = opened() - after_first;
        assert_eq!(
            opened_for_second,
            usize::from(!reused),
            "{path}: connections opened for the second request"
        );
    }
    // gripd still serves after the bad ones.
    assert_eq!(
        request(p.client, "GET", "/length", &[], "").await.status,
        200
    );
}

#[tokio::test]
async fn origin_connections_reused_and_closed_ones_replaced() {
    let (addr, accepted) = closing_origin(4).await;
    let p = Proxy::start(&[format!("* {addr}")], "").await;
    // Nine requests, one at a time: four per origin connection (bodiless answers included),
    // then the origin closes it and the next request must get a new one, not a 502.
    let plan = [
        ("GET", "/a", 200, "ok"),
        ("HEAD", "/a", 200, ""),
        ("GET", "/empty", 204, ""),
        ("GET", "/a", 200, "ok"),
    ];
    for (i, (method, path, status, body)) in plan.iter().cycle().take(9).enumerate() {
        let r = request(p.client, method, path, &[], "").await;
        assert_eq!(r.status, *status, "request {i}: {method} {path}");
        assert_eq!(r.body, *body, "request {i}: {method} {path}");
        // Time for gripd to see the origin's close of an idle connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "origin connections opened"
    );
}

/// An origin response head over `proxy.origin_head_max` is a 502; under it passes.
#[tokio::test]
async fn origin_head_limit_is_configurable() {
    let (addr, _) = scripted_origin(100, |head, _| {
        let size: usize = head
            .split(' ')
            .nth(1)
            .and_then(|p| p.trim_start_matches('/').parse().ok())
            .unwrap_or(0);
        let reply = format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(size)
        );
        (reply.into_bytes(), false)
    })
    .await;
    let p = Proxy::start(&[format!("* {addr}")], "[proxy]\norigin_head_max = 2048\n").await;
    assert_eq!(request(p.client, "GET", "/1500", &[], "").await.status, 200);
    assert_eq!(request(p.client, "GET", "/3000", &[], "").await.status, 502);
    assert_eq!(request(p.client, "GET", "/1500", &[], "").await.status, 200);
}

/// An origin that closes a kept connection when the next request arrives, without answering:
/// a GET is sent again on a new connection; a POST is not (it may have been acted on).
#[tokio::test]
async fn request_on_a_connection_closed_unanswered() {
    let (addr, accepted) = scripted_origin(2, |_, n| match n {
        0 => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            false,
        ),
        _ => (Vec::new(), true),
    })
    .await;
    let p = Proxy::start(&[format!("* {addr}")], "").await;
    for i in 0..2 {
        let r = request(p.client, "GET", "/a", &[], "").await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "GET {i}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the second GET was sent again"
    );
    let r = request(p.client, "POST", "/a", &[], "data").await;
    assert_eq!(r.status, 502, "a POST is not sent twice");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn origin_pool_can_be_turned_off() {
    let (addr, accepted) = closing_origin(100).await;
    let p = Proxy::start(
        &[format!("* {addr}")],
        "[proxy]\norigin_pool_max_idle = 0\n",
    )
    .await;
    for i in 0..3 {
        let r = request(p.client, "GET", "/a", &[], "").await;
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one origin connection per request"
    );
}

/// Reads from `s` until `needle` has arrived (true) or the peer closed (false), within `WAIT`.
async fn read_until_or_eof(s: &mut tokio::net::TcpStream, needle: &str) -> bool {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if String::from_utf8_lossy(&got).contains(needle) {
            return true;
        }
        match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("nothing from gripd in {WAIT:?}"),
        }
    }
}

/// `server.client_head_timeout_secs` bounds the wait for a request head, idle keep-alive
/// time included, yet requests that keep coming faster than that share one connection however
/// long it lives, and a slow origin is waited for.
#[tokio::test]
async fn client_head_timeout() {
    let o = slow_path_origin(Duration::from_millis(2500)).await;
    let p = Proxy::start(
        &[format!("* {}", o.addr)],
        "[server]\nclient_head_timeout_secs = 1\n",
    )
    .await;

    // A head that stalls halfway is cut after about a second.
    let mut s = tokio::net::TcpStream::connect(p.client).await.unwrap();
    let start = std::time::Instant::now();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    assert!(
        !read_until_or_eof(&mut s, "HTTP/1.1").await,
        "a stalled head was answered"
    );
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900), "cut after {waited:?}");
    assert!(waited < Duration::from_secs(5), "cut after {waited:?}");

    // Requests 0.6 s apart for 3 s: all on one connection. Then idle: closed.
    let mut s = tokio::net::TcpStream::connect(p.client).await.unwrap();
    for i in 0..5 {
        s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(read_until_or_eof(&mut s, "\r\n\r\nok").await, "request {i}");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let start = std::time::Instant::now();
    assert!(!read_until_or_eof(&mut s, "never").await);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "idle for {:?}",
        start.elapsed()
    );

    // An origin slower than the head timeout: the client still gets its answer.
    let mut s = tokio::net::TcpStream::connect(p.client).await.unwrap();
    let start = std::time::Instant::now();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_until_or_eof(&mut s, "\r\n\r\nok").await,
        "slow answer cut"
    );
    assert!(start.elapsed() >= Duration::from_millis(2500));
}

/// An origin that answers a large upload before reading it (a 413, a 401) is heard: the
/// client gets that answer, not a 502 or a wait for the response timeout, whether the origin
/// then closes the connection or leaves it open without reading, and whether the upload has a
/// length or is chunked.
#[tokio::test]
async fn origin_answers_before_the_upload_ends() {
    for (close, chunked) in [(true, false), (false, false), (true, true), (false, true)] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if !read_request_head(&mut s).await {
                        return;
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\
                              Connection: close\r\n\r\ntoo large",
                        )
                        .await;
                    if !close {
                        tokio::time::sleep(WAIT).await;
                    }
                });
            }
        });
        let p = Proxy::start(&[format!("* {addr}")], "").await;
        let mut s = tokio::net::TcpStream::connect(p.client).await.unwrap();
        let size = 64 * 1024 * 1024;
        let framing = match chunked {
            true => "Transfer-Encoding: chunked".to_string(),
            false => format!("Content-Length: {size}"),
        };
        s.write_all(format!("POST /upload HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (mut rd, mut wr) = s.into_split();
        // The upload goes on until gripd stops reading it.
        let upload = tokio::spawn(async move {
            let data = vec![b'x'; 64 * 1024];
            let piece = match chunked {
                true => [format!("{:x}\r\n", data.len()).as_bytes(), &data, b"\r\n"].concat(),
                false => data,
            };
            for _ in 0..size / (64 * 1024) {
                if wr.write_all(&piece).await.is_err() {
                    break;
                }
            }
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            match tokio::time::timeout(WAIT, rd.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                other => panic!(
                    "close={close} chunked={chunked}: no answer ({other:?}), got {:?}",
                    tail(&got)
                ),
            }
        }
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 413 "),
            "close={close} chunked={chunked}: the client got {got:?}"
        );
        upload.abort();
    }
}

/// An idle kept origin connection that the origin closes (its keep-alive timeout) is closed
/// by gripd too, without waiting for the next request to that origin: no socket is left in
/// CLOSE_WAIT holding a file descriptor.
#[tokio::test]
async fn idle_origin_connection_closed_by_the_origin_is_let_go() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        if !read_request_head(&mut s).await {
            return;
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        // The keep-alive timeout: our side ends; then wait for gripd's end.
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.shutdown().await.unwrap();
        let closed_at = std::time::Instant::now();
        let outcome = tokio::time::timeout(WAIT, s.read(&mut [0u8; 64])).await;
        let _ = seen_tx.send((
            outcome.map(|r| r.map_err(|e| e.kind())),
            closed_at.elapsed(),
        ));
    });
    let p = Proxy::start(&[format!("* {addr}")], "").await;
    let r = request(p.client, "GET", "/a", &[], "").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    let (outcome, after) = tokio::time::timeout(WAIT + WAIT, seen_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, Ok(Ok(0))),
        "gripd kept the connection the origin closed: {outcome:?}"
    );
    assert!(
        after < gripd::pool::SWEEP_EVERY + Duration::from_secs(3),
        "closed after {after:?}"
    );
}

/// Reads one request head (and whatever came with it) from `s`, within `WAIT`; false when the
/// peer went away or went quiet first.
async fn read_request_head(s: &mut tokio::net::TcpStream) -> bool {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
    true
}

/// X-Forwarded-For and X-Forwarded-Proto follow `proxy.x_forwarded_for` and
/// `proxy.set_x_forwarded_protocol` as Pushpin's options do; a route's `host=` replaces Host
/// where the client put it; other headers keep their order.
#[tokio::test]
async fn forwarded_headers_follow_the_config() {
    let o = origin(|req: http::Request<hyper::body::Incoming>| async move {
        let lines: Vec<String> = req
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        resp(200, &[], lines.join("\n"))
    })
    .await;
    let client = [
        ("X-First", "1"),
        ("Host", "example.com"),
        ("X-Forwarded-For", "192.0.2.1, 192.0.2.2"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Protocol", "https"),
        ("X-Last", "2"),
    ];
    let seen = |toml: &'static str, route: &'static str| {
        let addr = o.addr;
        async move {
            let p = Proxy::start(&[format!("* {addr}{route}")], toml).await;
            let r = request(p.client, "GET", "/", &client, "").await;
            assert_eq!(r.status, 200);
            String::from_utf8_lossy(&r.body)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        }
    };
    let has = |lines: &[String], line: &str| lines.iter().any(|l| l == line);
    let order = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.split(": ").next())
            .filter(|n| ["x-first", "host", "x-last"].contains(n))
            .map(str::to_string)
            .collect()
    };
    let named = |lines: &[String], name: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("{name}: ")))
            .count()
    };

    // Defaults: X-Forwarded-For untouched; the client's protocol claims removed for a
    // plain-http client (Pushpin's "proto-only" removes both, then sets only -Proto for https).
    let lines = seen("", "").await;
    assert!(
        has(&lines, "x-forwarded-for: 192.0.2.1, 192.0.2.2"),
        "{lines:?}"
    );
    assert_eq!(named(&lines, "x-forwarded-proto"), 0, "{lines:?}");
    assert_eq!(named(&lines, "x-forwarded-protocol"), 0, "{lines:?}");
    assert_eq!(order(&lines), ["x-first", "host", "x-last"], "{lines:?}");
    assert!(has(&lines, "host: example.com"), "{lines:?}");

    // Appended to, truncated, replaced.
    let lines = seen("[proxy]\nx_forwarded_for = \"append\"\n", "").await;
    assert!(
        has(&lines, "x-forwarded-for: 192.0.2.1, 192.0.2.2, 127.0.0.1"),
        "{lines:?}"
    );
    let lines = seen("[proxy]\nx_forwarded_for = \"truncate:1,append\"\n", "").await;
    assert!(
        has(&lines, "x-forwarded-for: 192.0.2.2, 127.0.0.1"),
        "{lines:?}"
    );
    let lines = seen("[proxy]\nx_forwarded_for = \"truncate:0\"\n", "").await;
    assert_eq!(named(&lines, "x-forwarded-for"), 0, "{lines:?}");

    // Untouched, or both protocol headers removed for a plain-http client.
    let lines = seen("[proxy]\nset_x_forwarded_protocol = \"\"\n", "").await;
    assert!(has(&lines, "x-forwarded-proto: https"), "{lines:?}");
    assert!(has(&lines, "x-forwarded-protocol: https"), "{lines:?}");
    let lines = seen("[proxy]\nset_x_forwarded_protocol = \"true\"\n", "").await;
    assert_eq!(named(&lines, "x-forwarded-proto"), 0, "{lines:?}");
    assert_eq!(named(&lines, "x-forwarded-protocol"), 0, "{lines:?}");

    // A route's host= replaces the client's Host in its place.
    let lines = seen("", ",host=origin.test").await;
    assert!(has(&lines, "host: origin.test"), "{lines:?}");
    assert_eq!(named(&lines, "host"), 1, "{lines:?}");
    assert_eq!(order(&lines), ["x-first", "host", "x-last"], "{lines:?}");
}
