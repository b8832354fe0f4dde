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
/// answers: `ctl:<json>` → control message `c:<json>`, `unsub` → unsubscribe, `detach` → detach, `close` → `CLOSE 1000`,
/// `meta` → `Set-Meta-Color: blue`, anything else → `m:echo:<text>`. A client `CLOSE` is echoed.
/// `reject` in the path makes it refuse the OPEN with 403; `kai` makes it answer every request
/// with `Keep-Alive-Interval: 1` (the OPEN with an empty body, event-less requests with
/// `m:polled`).
async fn woh_origin() -> (gripd_tests::Origin, mpsc::UnboundedReceiver<Seen>) {
    use http_body_util::BodyExt;
    let (tx, rx) = mpsc::unbounded_channel();
    let o = origin(move |req| {
        let tx = tx.clone();
        async move {
            let query = req.uri().query().unwrap_or("").to_string();
            let reject = req.uri().path().contains("reject");
            let kai = req.uri().path().contains("kai");
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
            if kai {
                // Keep-alive stub: an empty OPEN reply (allowed with Keep-Alive-Interval), and
                // something to push whenever gripd asks without events.
                let body = if events.is_empty() {
                    grip::encode_events(&[WsEvent::Text(Bytes::from_static(b"m:polled"))])
                } else {
                    Vec::new()
                };
                return resp(
                    200,
                    &[
                        ("Content-Type", "application/websocket-events"),
                        ("Sec-WebSocket-Extensions", "grip"),
                        ("Keep-Alive-Interval", "1"),
                    ],
                    body,
                );
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
                        c if c.starts_with(b"ctl:") => {
                            out.push(WsEvent::Text(Bytes::from([b"c:", &c[4..]].concat())))
                        }
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

// ---------------------------------------------------------------------------------------------
// Keep-alive and delayed messages (GRIP control messages), and `Keep-Alive-Interval`

/// Upper bound for a timed message to arrive after its due time (generous: a loaded CI machine).
const LATE: Duration = Duration::from_secs(2);

/// The next message of any kind but pong (pings included), bounded by `WAIT`.
async fn next_any(ws: &mut WsClient) -> Message {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("timed out waiting for a websocket message")
}

/// The next message (as [`next_any`]) that is not `old`.
async fn next_skipping(ws: &mut WsClient, old: &Message) -> Message {
    loop {
        let m = next_any(ws).await;
        if m != *old {
            return m;
        }
    }
}

/// Sends `x` every `every` for `total`, then waits (bounded) for the `echo` of each, and returns
/// what arrived meanwhile (pings and pongs left out), each with the time since the start.
async fn chatter(
    ws: &mut WsClient,
    echo: &str,
    every: Duration,
    total: Duration,
) -> Vec<(Duration, Message)> {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(every);
    let mut got = Vec::new();
    let (mut sent, mut echoed) = (0, 0);
    let end = tokio::time::sleep(total);
    tokio::pin!(end);
    let mut send_due = false;
    let mut sending = true;
    tokio::time::timeout(total + WAIT, async {
        while sending || echoed < sent {
            if send_due {
                ws.send(Message::text("x")).await.unwrap();
                sent += 1;
                send_due = false;
            }
            tokio::select! {
                _ = &mut end, if sending => sending = false,
                _ = tick.tick(), if sending => send_due = true,
                m = ws.next() => match m {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(m)) => {
                        if m == Message::text(echo) {
                            echoed += 1;
                        }
                        got.push((start.elapsed(), m));
                    }
                    other => panic!("socket ended: {other:?}"),
                },
            }
        }
    })
    .await
    .expect("echoes did not arrive in time");
    got
}

/// Sends the control message `json` through the origin (its `ctl:` command, on both stubs).
async fn control(ws: &mut WsClient, json: &str) {
    ws.send(Message::text(format!("ctl:{json}"))).await.unwrap();
}

/// `keep-alive` in idle mode: the message comes after `timeout` s without traffic to the client,
/// again and again, and not while the origin keeps talking; without content it stops.
async fn keep_alive_idle(ws: &mut WsClient, echo: &str) {
    let t0 = tokio::time::Instant::now();
    control(ws, r#"{"type":"keep-alive","content":"ka","timeout":2}"#).await;
    assert_eq!(text(ws).await, "ka");
    let e = t0.elapsed();
    assert!(
        e >= Duration::from_secs(2) && e < Duration::from_secs(2) + LATE,
        "first keep-alive after {e:?}"
    );
    assert_eq!(text(ws).await, "ka", "keep-alive repeats");

    // Traffic every 500 ms keeps an idle keep-alive of 2 s away.
    let got = chatter(ws, echo, Duration::from_millis(500), Duration::from_secs(3)).await;
    assert!(got.len() >= 4, "echoes: {got:?}");
    for (at, m) in &got {
        assert_eq!(m, &Message::text(echo), "at {at:?} while busy");
    }
    let last = tokio::time::Instant::now();
    assert_eq!(text(ws).await, "ka");
    assert!(
        last.elapsed() >= Duration::from_millis(1500),
        "keep-alive {:?} after the traffic stopped",
        last.elapsed()
    );

    // No content: keep-alives off.
    control(ws, r#"{"type":"keep-alive"}"#).await;
    ws_silence(ws, Duration::from_millis(2500)).await;
}

/// `keep-alive` in interval mode (`content-bin`, then `message-type` binary and ping): sent
/// every `timeout` s even while there is traffic.
async fn keep_alive_interval_and_types(ws: &mut WsClient, echo: &str) {
    control(
        ws,
        r#"{"type":"keep-alive","content-bin":"AAEC","timeout":1,"mode":"interval"}"#,
    )
    .await;
    let got = chatter(
        ws,
        echo,
        Duration::from_millis(250),
        Duration::from_millis(2600),
    )
    .await;
    let kas: Vec<Duration> = got
        .iter()
        .filter(|(_, m)| *m == Message::binary(vec![0u8, 1, 2]))
        .map(|(at, _)| *at)
        .collect();
    assert!(
        (2..=3).contains(&kas.len()),
        "interval keep-alives at {kas:?} (all: {got:?})"
    );
    assert!(got
        .iter()
        .all(|(_, m)| *m == Message::binary(vec![0u8, 1, 2]) || *m == Message::text(echo)));

    // `message-type` overrides the kind of the content.
    control(
        ws,
        r#"{"type":"keep-alive","content":"tx","timeout":1,"message-type":"binary"}"#,
    )
    .await;
    // (A keep-alive of the previous kind may still come first.)
    assert_eq!(
        next_skipping(ws, &Message::binary(vec![0u8, 1, 2])).await,
        Message::binary(b"tx".to_vec())
    );
    let t0 = tokio::time::Instant::now();
    control(
        ws,
        r#"{"type":"keep-alive","content":"pp","timeout":1,"message-type":"ping"}"#,
    )
    .await;
    assert_eq!(
        next_skipping(ws, &Message::binary(b"tx".to_vec())).await,
        Message::Ping(Bytes::from_static(b"pp"))
    );
    assert!(t0.elapsed() >= Duration::from_secs(1));
    control(ws, r#"{"type":"keep-alive"}"#).await;
    // Off again: not even a ping comes (`ws_silence` would skip pings).
    let quiet = tokio::time::timeout(Duration::from_millis(2500), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "keep-alive not stopped: {quiet:?}");
}

/// `send-delayed` arrives after its timeout; `flush-delayed` sends it at once.
async fn send_delayed_and_flush(ws: &mut WsClient) {
    let t0 = tokio::time::Instant::now();
    control(
        ws,
        r#"{"type":"send-delayed","content":"later","timeout":2}"#,
    )
    .await;
    ws_silence(ws, Duration::from_millis(1500)).await;
    assert_eq!(text(ws).await, "later");
    let e = t0.elapsed();
    assert!(
        e >= Duration::from_secs(2) && e < Duration::from_secs(2) + LATE,
        "delayed message after {e:?}"
    );

    let t0 = tokio::time::Instant::now();
    control(
        ws,
        r#"{"type":"send-delayed","content":"soon","timeout":8,"message-type":"binary"}"#,
    )
    .await;
    ws_silence(ws, SILENCE).await;
    control(ws, r#"{"type":"flush-delayed"}"#).await;
    assert_eq!(ws_next(ws).await, Some(Message::binary(b"soon".to_vec())));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "flush-delayed waited"
    );

    // Nothing pending: a flush sends nothing.
    control(ws, r#"{"type":"flush-delayed"}"#).await;
    ws_silence(ws, SILENCE).await;

    // A second send-delayed while one waits: the first goes out at once (as Pushpin), the
    // second after its own timeout.
    let t0 = tokio::time::Instant::now();
    control(
        ws,
        r#"{"type":"send-delayed","content":"first","timeout":8}"#,
    )
    .await;
    ws_silence(ws, SILENCE).await;
    control(
        ws,
        r#"{"type":"send-delayed","content":"second","timeout":1}"#,
    )
    .await;
    assert_eq!(text(ws).await, "first");
    assert_eq!(text(ws).await, "second");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "the first delayed message waited for its own timeout"
    );
}

#[tokio::test]
async fn passthrough_grip_keep_alive_idle() {
    let o = ws_origin(true).await;
    let proxy = Proxy::start(&[format!("* {}", o.addr)], "").await;
    let mut ws = ws_connect(proxy.client, "/", &[]).await.unwrap();
    keep_alive_idle(&mut ws, "x").await;
}

#[tokio::test]
async fn passthrough_grip_keep_alive_interval_and_message_types() {
    let o = ws_origin(true).await;
    let proxy = Proxy::start(&[format!("* {}", o.addr)], "").await;
    let mut ws = ws_connect(proxy.client, "/", &[]).await.unwrap();
    keep_alive_interval_and_types(&mut ws, "x").await;
}

#[tokio::test]
async fn passthrough_grip_send_delayed_and_flush() {
    let o = ws_origin(true).await;
    let proxy = Proxy::start(&[format!("* {}", o.addr)], "").await;
    let mut ws = ws_connect(proxy.client, "/", &[]).await.unwrap();
    send_delayed_and_flush(&mut ws).await;
}

#[tokio::test]
async fn woh_keep_alive_idle() {
    let (o, mut seen) = woh_origin().await;
    let proxy = woh_proxy(&o).await;
    let mut ws = ws_connect(proxy.client, "/ws/?ch=k1", &[]).await.unwrap();
    recv(&mut seen, "OPEN").await;
    assert_eq!(text(&mut ws).await, "welcome");
    keep_alive_idle(&mut ws, "echo:x").await;
}

#[tokio::test]
async fn woh_keep_alive_interval_and_message_types() {
    let (o, mut seen) = woh_origin().await;
    let proxy = woh_proxy(&o).await;
    let mut ws = ws_connect(proxy.client, "/ws/?ch=k2", &[]).await.unwrap();
    recv(&mut seen, "OPEN").await;
    assert_eq!(text(&mut ws).await, "welcome");
    keep_alive_interval_and_types(&mut ws, "echo:x").await;
}

#[tokio::test]
async fn woh_send_delayed_and_flush() {
    let (o, mut seen) = woh_origin().await;
    let proxy = woh_proxy(&o).await;
    let mut ws = ws_connect(proxy.client, "/ws/?ch=k3", &[]).await.unwrap();
    recv(&mut seen, "OPEN").await;
    assert_eq!(text(&mut ws).await, "welcome");
    send_delayed_and_flush(&mut ws).await;
}

/// `Keep-Alive-Interval: 1` is raised to 20 s: after 20 s without a request gripd POSTs one
/// without events (same Connection-Id), and what the origin answers reaches the client. The
/// OPEN reply may have an empty body with the header, and the header is not relayed.
#[tokio::test]
async fn woh_keep_alive_interval_raised_to_20s() {
    const BOUND: Duration = Duration::from_secs(25);
    let (o, mut seen) = woh_origin().await;
    let proxy = woh_proxy(&o).await;
    let req = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        format!("ws://{}/kai/", proxy.client)
            .into_client_request()
            .unwrap()
    };
    let (mut ws, resp) = tokio::time::timeout(WAIT, async {
        let stream = tokio::net::TcpStream::connect(proxy.client).await.unwrap();
        tokio_tungstenite::client_async(req, stream).await.unwrap()
    })
    .await
    .expect("websocket connect timed out");
    assert!(!resp.headers().contains_key("keep-alive-interval"));
    let open = recv(&mut seen, "OPEN").await;
    let t0 = tokio::time::Instant::now();
    assert_eq!(open.events, vec![WsEvent::Open]);

    let r = tokio::time::timeout(BOUND, seen.recv())
        .await
        .expect("no keep-alive request within 25 s")
        .unwrap();
    let e = t0.elapsed();
    assert!(
        e >= Duration::from_secs(19),
        "keep-alive request after {e:?}: the 20 s minimum was not applied"
    );
    assert!(r.events.is_empty(), "events: {:?}", r.events);
    assert_eq!(
        r.headers.get("connection-id"),
        open.headers.get("connection-id")
    );
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/websocket-events"
    );
    assert_eq!(text(&mut ws).await, "polled");
}
