//! WebSockets: pass-through to a WebSocket origin (plain and GRIP), and WebSocket-over-HTTP
//! against an origin stub speaking `application/websocket-events`.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use grip::WsEvent;
use gripd_tests::{
    origin, request, resp, ws_connect, ws_next, ws_origin, ws_silence, CloseCode, CloseFrame,
    Message, Proxy, WsClient, WAIT,
};
use http::HeaderMap;
use tokio::sync::mpsc;

const SILENCE: Duration = Duration::from_millis(300);

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    }))
}

fn close_of(m: Option<Message>) -> (u16, String) {
    match m {
        Some(Message::Close(Some(f))) => (u16::from(f.code), f.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("{what}: channel closed"))
}

async fn text(ws: &mut WsClient) -> String {
    match ws_next(ws).await {
        Some(Message::Text(t)) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Pass-through

#[tokio::test]
async fn passthrough_echo_text_binary_large_ping() {
    let mut o = ws_origin(false).await;
    let proxy = Proxy::start(&[format!("* {}", o.addr)], "").await;
    let mut ws = ws_connect(
        proxy.client,
        "/chat/room?x=1",
        &[("Sec-WebSocket-Extensions", "permessage-deflate")],
    )
    .await
    .unwrap();
    let seen = recv(&mut o.handshakes, "origin handshake").await;
    assert_eq!(seen.path, "/chat/room?x=1");
    assert_eq!(
        seen.headers.get("sec-websocket-extensions").unwrap(),
        "grip"
    );
    assert!(seen.headers.contains_key("grip-sig"));
    assert!(seen.headers.contains_key("grip-feature"));

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(text(&mut ws).await, "hello");
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws_next(&mut ws).await,
        Some(Message::binary(vec![0u8, 1, 2, 255]))
    );
    let big: Vec<u8> = (0..(1 << 20) + 17).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws_next(&mut ws).await, Some(Message::binary(big)));
    let big_text = "x".repeat(1 << 20);
    ws.send(Message::text(big_text.clone())).await.unwrap();
    assert_eq!(text(&mut ws).await, big_text);

    // A ping is answered with a pong carrying its payload.
    ws.send(Message::Ping(Bytes::from_static(b"p1")))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, async {
        use futures_util::StreamExt;
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"p1");
}

#[tokio::test]
async fn passthrough_close_codes_both_directions() {
    let mut o = ws_origin(false).await;
    let proxy = Proxy::start(&[format!("* {}", o.addr)], "").await;

    // Client closes with 4000 + reason: the origin gets exactly that.
    let mut ws = ws_connect(proxy.client, "/", &[]).await.unwrap();
    ws.send(close(4000, "client bye")).await.unwrap();
    assert_eq!(
        recv(&mut o.closes, "origin close").await,
        Some((4000, "client bye".into()))
    );
    assert_eq!(close_of(ws_next(&mut ws).await).0, 4000);

    // Origin closes with 4000 + reason, then 1000: the client gets them.
    for (code, reason) in [(4000u16, "origin bye"), (1000, "")] {
        let mut ws = ws_connect(proxy.client, "/", &[]).await.unwrap();
        ws.send(Message::text(format!("close:{code}:{reason}")))
            .await
            .unwrap();
        assert_eq!(close_of(ws_next(&mut ws).await), (code, reason.to_string()));
    }

    // Client closes with 1000.
    let mut ws = ws_connect(proxy.client, "/", &[]).await.unwrap();
    ws.send(close(1000, "")).await.unwrap();
    assert_eq!(
        recv(&mut o.closes, "origin close").await,
        Some((1000, String::new()))
    );
}

/// Both peers send 64 × 256 KB at once (16 MiB each way, far more than the sockets buffer). The
/// origin reads only once its own sends are done, and the client starts reading only after a
/// delay: gripd, stuck writing to the origin, must keep reading the origin meanwhile (a relay that
/// awaits the write to the origin before reading the origin again deadlocks here).
#[tokio::test]
async fn passthrough_both_sides_send_large_at_once() {
    const COUNT: usize = 64;
    const SIZE: usize = 256 << 10;
    const DEADLINE: Duration = Duration::from_secs(30);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    let origin = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        for i in 0..COUNT {
            ws.send(Message::binary(vec![i as u8; SIZE])).await.unwrap();
        }
        let mut got = 0;
        while got < COUNT {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(b.len(), SIZE);
                    assert!(b.iter().all(|&x| x == got as u8), "origin: out of order");
                    got += 1;
                }
                Some(Ok(_)) => {}
                other => panic!("origin: expected binary, got {other:?}"),
            }
        }
        let _ = got_tx.send(got);
        while ws.next().await.is_some() {}
    });
    let proxy = Proxy::start(&[format!("* {addr}")], "").await;
    let ws = ws_connect(proxy.client, "/", &[]).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..COUNT {
            tx.send(Message::binary(vec![i as u8; SIZE])).await.unwrap();
        }
        tx
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let read = async {
        let mut got = 0;
        while got < COUNT {
            match rx.next().await {
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(b.len(), SIZE);
                    assert!(b.iter().all(|&x| x == got as u8), "client: out of order");
                    got += 1;
                }
                Some(Ok(_)) => {}
                other => panic!("client: expected binary, got {other:?}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("client did not get the origin's messages in time (relay deadlock)");
    let _tx = tokio::time::timeout(DEADLINE, sender)
        .await
        .expect("client sends did not complete in time (relay deadlock)")
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, got_rx.recv())
        .await
        .expect("origin did not get the client's messages in time (relay deadlock)");
    assert_eq!(got, Some(COUNT));
    origin.abort();
}

#[tokio::test]
async fn passthrough_origin_rejection_passes_status_and_body() {
    let o = origin(|_req| async { resp(403, &[("X-Why", "nope")], "go away\n") }).await;
    let proxy = Proxy::start(&[format!("* {}", o.addr)], "").await;
    let r = request(
        proxy.client,
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.headers.get("x-why").unwrap(), "nope");
    assert_eq!(&r.body[..], b"go away\n");
}

#[tokio::test]
async fn passthrough_grip_prefix_control_and_publish() {
    let o = ws_origin(true).await;
    let proxy = Proxy::start(&[format!("* {}", o.addr)], "").await;
    let mut ws = ws_connect(proxy.client, "/", &[]).await.unwrap();

    // Data from the origin loses its prefix; unprefixed data is dropped.
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(text(&mut ws).await, "hello");
    ws.send(Message::text("raw:unprefixed")).await.unwrap();
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(text(&mut ws).await, "after");

    // Subscribe through a control message; publishes reach the client.
    ws.send(Message::text(r#"ctl:{"type":"subscribe","channel":"pt"}"#))
        .await
        .unwrap();
    proxy.wait_subscribed("pt").await;
    let (status, body) = proxy
        .publish(serde_json::json!({"items": [{"channel": "pt", "formats": {"ws-message": {"content": "pushed"}}}]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text(&mut ws).await, "pushed");

    // Unsubscribe: no more deliveries.
    ws.send(Message::text(
        r#"ctl:{"type":"unsubscribe","channel":"pt"}"#,
    ))
    .await
    .unwrap();
    ws.send(Message::text("sync")).await.unwrap();
    assert_eq!(text(&mut ws).await, "sync");
    assert!(!proxy.running.as_ref().unwrap().hub.has_channel("pt"));
}

// ---------------------------------------------------------------------------------------------
// WebSocket-over-HTTP

/// One request the WebSocket-over-HTTP stub received.
struct Seen {
    headers: HeaderMap,
    events: Vec<WsEvent>,
}

/// A WebSocket-over-HTTP origin stub. On `OPEN` it answers `OPEN`, subscribes the socket to the
/// channel named by `?ch=`, sends `m:welcome` and `Set-Meta-User: bob`. For client text it
/// answers: `unsub` → unsubscribe, `detach` → detach, `close` → `CLOSE 1000`,
/// `meta` → `Set-Meta-Color: blue`, anything else → `m:echo:<text>`. A client `CLOSE` is echoed.
/// `reject` in the path makes it refuse the OPEN with 403.
async fn woh_origin() -> (gripd_tests::Origin, mpsc::UnboundedReceiver<Seen>) {
    use http_body_util::BodyExt;
    let (tx, rx) = mpsc::unbounded_channel();
    let o = origin(move |req| {
        let tx = tx.clone();
        async move {
            let query = req.uri().query().unwrap_or("").to_string();
            let reject = req.uri().path().contains("reject");
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let events = grip::parse_events(&body).unwrap();
            let _ = tx.send(Seen {
                headers: parts.headers.clone(),
                events: events.clone(),
            });
            if reject {
                return resp(403, &[], "denied\n");
            }
            let ch = query.strip_prefix("ch=").unwrap_or("woh").to_string();
            let mut out = Vec::new();
            let mut headers = vec![("Content-Type", "application/websocket-events")];
            for e in events {
                match e {
                    WsEvent::Open => {
                        headers.push(("Sec-WebSocket-Extensions", "grip"));
                        headers.push(("Set-Meta-User", "bob"));
                        out.push(WsEvent::Open);
                        out.push(WsEvent::Text(Bytes::from(format!(
                            r#"c:{{"type":"subscribe","channel":"{ch}"}}"#
                        ))));
                        out.push(WsEvent::Text(Bytes::from_static(b"m:welcome")));
                    }
                    WsEvent::Text(t) => match &t[..] {
                        b"unsub" => out.push(WsEvent::Text(Bytes::from(format!(
                            r#"c:{{"type":"unsubscribe","channel":"{ch}"}}"#
                        )))),
                        b"detach" => {
                            out.push(WsEvent::Text(Bytes::from_static(br#"c:{"type":"detach"}"#)))
                        }
                        b"close" => out.push(WsEvent::Close(Some((1000, Bytes::new())))),
                        b"meta" => headers.push(("Set-Meta-Color", "blue")),
                        _ => out.push(WsEvent::Text(Bytes::from(
                            [b"m:echo:".as_slice(), &t].concat(),
                        ))),
                    },
                    WsEvent::Close(c) => out.push(WsEvent::Close(c)),
                    _ => {}
                }
            }
            resp(200, &headers, grip::encode_events(&out))
        }
    })
    .await;
    (o, rx)
}

async fn woh_proxy(o: &gripd_tests::Origin) -> Proxy {
    Proxy::start(&[format!("* {},over_http", o.addr)], "").await
}

async fn publish_ws(proxy: &Proxy, channel: &str, fmt: serde_json::Value) {
    let (status, body) = proxy
        .publish(
            serde_json::json!({"items": [{"channel": channel, "formats": {"ws-message": fmt}}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn woh_open_exchange_echo_publish_meta_and_close() {
    let (o, mut seen) = woh_origin().await;
    let proxy = woh_proxy(&o).await;
    let mut ws = ws_connect(proxy.client, "/ws/?ch=w1", &[]).await.unwrap();

    let open = recv(&mut seen, "OPEN request").await;
    assert_eq!(open.events, vec![WsEvent::Open]);
    let h = &open.headers;
    assert_eq!(
        h.get("content-type").unwrap(),
        "application/websocket-events"
    );
    assert_eq!(h.get("accept").unwrap(), "application/websocket-events");
    assert_eq!(h.get("sec-websocket-extensions").unwrap(), "grip");
    assert!(h.contains_key("grip-sig"));
    assert!(h.contains_key("grip-feature"));
    assert!(h.contains_key("sec-websocket-key"));
    assert_eq!(h.get("sec-websocket-version").unwrap(), "13");
    assert!(!h.contains_key("upgrade"));
    let conn_id = h.get("connection-id").unwrap().clone();
    assert_eq!(conn_id.len(), 36);

    assert_eq!(text(&mut ws).await, "welcome");

    // Client text → TEXT event with the same Connection-Id and the stored meta.
    ws.send(Message::text("hi")).await.unwrap();
    let r = recv(&mut seen, "TEXT request").await;
    assert_eq!(r.events, vec![WsEvent::Text(Bytes::from_static(b"hi"))]);
    assert_eq!(r.headers.get("connection-id").unwrap(), &conn_id);
    assert_eq!(r.headers.get("meta-user").unwrap(), "bob");
    assert_eq!(text(&mut ws).await, "echo:hi");

    // set-meta by header: echoed on later requests.
    ws.send(Message::text("meta")).await.unwrap();
    recv(&mut seen, "meta request").await;
    ws.send(Message::text("again")).await.unwrap();
    let r = recv(&mut seen, "request after meta").await;
    assert_eq!(r.headers.get("meta-color").unwrap(), "blue");
    assert_eq!(r.headers.get("meta-user").unwrap(), "bob");
    assert_eq!(text(&mut ws).await, "echo:again");

    // Publishes: text, binary, ping.
    proxy.wait_subscribed("w1").await;
    publish_ws(&proxy, "w1", serde_json::json!({"content": "pushed"})).await;
    assert_eq!(text(&mut ws).await, "pushed");
    publish_ws(&proxy, "w1", serde_json::json!({"content-bin": "AAEC"})).await;
    assert_eq!(
        ws_next(&mut ws).await,
        Some(Message::binary(vec![0u8, 1, 2]))
    );
    assert_eq!(proxy.running.as_ref().unwrap().metrics.held_ws.get(), 1);

    // Client close 1000 → CLOSE event with the code.
    ws.send(close(1000, "")).await.unwrap();
    let r = recv(&mut seen, "CLOSE request").await;
    assert_eq!(r.events, vec![WsEvent::Close(Some((1000, Bytes::new())))]);
    assert_eq!(close_of(ws_next(&mut ws).await).0, 1000);
}

#[tokio::test]
async fn woh_unsubscribe_stops_delivery() {
    let (o, mut seen) = woh_origin().await;
    let proxy = woh_proxy(&o).await;
    let mut ws = ws_connect(proxy.client, "/ws/?ch=w2", &[]).await.unwrap();
    recv(&mut seen, "OPEN").await;
    assert_eq!(text(&mut ws).await, "welcome");
    proxy.wait_subscribed("w2").await;
    ws.send(Message::text("unsub")).await.unwrap();
    recv(&mut seen, "unsub request").await;
    tokio::time::timeout(WAIT, async {
        while proxy.running.as_ref().unwrap().hub.has_channel("w2") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("still subscribed");
    publish_ws(&proxy, "w2", serde_json::json!({"content": "late"})).await;
    ws_silence(&mut ws, SILENCE).await;
}

#[tokio::test]
async fn woh_detach_keeps_client_and_publishes() {
    let (o, mut seen) = woh_origin().await;
    let proxy = woh_proxy(&o).await;
    let mut ws = ws_connect(proxy.client, "/ws/?ch=w3", &[]).await.unwrap();
    recv(&mut seen, "OPEN").await;
    assert_eq!(text(&mut ws).await, "welcome");
    ws.send(Message::text("detach")).await.unwrap();
    recv(&mut seen, "detach request").await;
    // Client messages no longer reach the origin; publishes still reach the client.
    ws.send(Message::text("ignored")).await.unwrap();
    proxy.wait_subscribed("w3").await;
    publish_ws(&proxy, "w3", serde_json::json!({"content": "still here"})).await;
    assert_eq!(text(&mut ws).await, "still here");
    assert!(
        tokio::time::timeout(SILENCE, seen.recv()).await.is_err(),
        "origin got a request after detach"
    );
}

#[tokio::test]
async fn woh_publish_close_and_origin_close() {
    let (o, mut seen) = woh_origin().await;
    let proxy = woh_proxy(&o).await;

    // A published close reaches the client with its code and reason.
    let mut ws = ws_connect(proxy.client, "/ws/?ch=w4", &[]).await.unwrap();
    recv(&mut seen, "OPEN").await;
    assert_eq!(text(&mut ws).await, "welcome");
    proxy.wait_subscribed("w4").await;
    publish_ws(
        &proxy,
        "w4",
        serde_json::json!({"action": "close", "code": 4001, "reason": "bye"}),
    )
    .await;
    assert_eq!(close_of(ws_next(&mut ws).await), (4001, "bye".into()));
    // The client's answer goes to the origin as CLOSE.
    let r = recv(&mut seen, "CLOSE after publish").await;
    assert_eq!(
        r.events,
        vec![WsEvent::Close(Some((4001, Bytes::from_static(b"bye"))))]
    );

    // The origin's CLOSE event becomes a close frame.
    let mut ws = ws_connect(proxy.client, "/ws/?ch=w5", &[]).await.unwrap();
    recv(&mut seen, "OPEN").await;
    assert_eq!(text(&mut ws).await, "welcome");
    ws.send(Message::text("close")).await.unwrap();
    recv(&mut seen, "close request").await;
    assert_eq!(close_of(ws_next(&mut ws).await), (1000, String::new()));
}

#[tokio::test]
async fn woh_client_drop_sends_disconnect() {
    let (o, mut seen) = woh_origin().await;
    let proxy = woh_proxy(&o).await;
    let mut ws = ws_connect(proxy.client, "/ws/?ch=w6", &[]).await.unwrap();
    recv(&mut seen, "OPEN").await;
    assert_eq!(text(&mut ws).await, "welcome");
    drop(ws);
    let r = recv(&mut seen, "DISCONNECT").await;
    assert_eq!(r.events, vec![WsEvent::Disconnect]);
}

#[tokio::test]
async fn woh_rejected_open_and_direct_events_forbidden() {
    let (o, mut seen) = woh_origin().await;
    let proxy = woh_proxy(&o).await;
    let r = request(
        proxy.client,
        "GET",
        "/reject/",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(&r.body[..], b"denied\n");
    recv(&mut seen, "OPEN").await;

    let r = request(
        proxy.client,
        "POST",
        "/ws/",
        &[("Content-Type", "application/websocket-events")],
        "OPEN\r\n",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        &r.body[..],
        b"Client not allowed to send WebSocket events directly.\n"
    );
}

#[tokio::test]
async fn woh_shutdown_closes_with_1001() {
    let (o, mut seen) = woh_origin().await;
    let mut proxy = woh_proxy(&o).await;
    let mut ws = ws_connect(proxy.client, "/ws/?ch=w7", &[]).await.unwrap();
    recv(&mut seen, "OPEN").await;
    assert_eq!(text(&mut ws).await, "welcome");
    proxy.wait_subscribed("w7").await;
    let running = proxy.running.take().unwrap();
    let (clean, m) = tokio::join!(running.shutdown(Duration::from_secs(5)), ws_next(&mut ws));
    assert_eq!(close_of(m).0, 1001);
    assert!(clean, "shutdown hit its deadline");
}

#[tokio::test]
async fn passthrough_shutdown_closes_with_1001() {
    let mut o = ws_origin(true).await;
    let mut proxy = Proxy::start(&[format!("* {}", o.addr)], "").await;
    let mut ws = ws_connect(proxy.client, "/", &[]).await.unwrap();
    ws.send(Message::text(r#"ctl:{"type":"subscribe","channel":"sd"}"#))
        .await
        .unwrap();
    proxy.wait_subscribed("sd").await;
    assert_eq!(proxy.running.as_ref().unwrap().metrics.held_ws.get(), 1);
    let running = proxy.running.take().unwrap();
    let (clean, m) = tokio::join!(running.shutdown(Duration::from_secs(5)), ws_next(&mut ws));
    assert_eq!(close_of(m).0, 1001);
    assert!(clean, "shutdown hit its deadline");
    // The origin is told too.
    assert_eq!(
        recv(&mut o.closes, "origin close").await.map(|c| c.0),
        Some(1001)
    );
}
