//! ZeroMQ publish inputs with real ZeroMQ peers (reference §3.4–3.6, §3.10): PULL encodings,
//! malformed frames, PUB → SUB with subscriptions seen on an XPUB (bind and connect modes, linger),
//! and the ZRPC command socket. Every zmq call runs on a blocking thread with a timeout.

use std::time::Duration;

use grip::tnetstring::{self, Tn};
use gripd_tests::*;
use serde_json::json;

/// Receive/send timeout of the test's own sockets, in milliseconds.
const ZMQ_TIMEOUT_MS: i32 = 10_000;

/// An origin holding every request as a stream on the channel named by its path (`/ch` → `ch`).
async fn stream_origin() -> Origin {
    origin(|req: http::Request<hyper::body::Incoming>| async move {
        let channel = req.uri().path().trim_start_matches('/').to_string();
        resp(
            200,
            &[("Grip-Hold", "stream"), ("Grip-Channel", &channel)],
            "",
        )
    })
    .await
}

async fn setup(extra: &str) -> (Origin, Proxy) {
    let o = stream_origin().await;
    let toml = format!("[hold]\nupdate_on_first_subscription = false\n{extra}");
    let p = Proxy::start(&[format!("* {}", o.addr)], &toml).await;
    (o, p)
}

/// Runs blocking zmq work off the runtime (the proxy shares it), bounded by `WAIT`.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(WAIT, tokio::task::spawn_blocking(f))
        .await
        .expect("zmq operation timed out")
        .unwrap()
}

fn socket(ctx: &zmq::Context, kind: zmq::SocketType) -> zmq::Socket {
    let s = ctx.socket(kind).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(ZMQ_TIMEOUT_MS).unwrap();
    s.set_sndtimeo(ZMQ_TIMEOUT_MS).unwrap();
    s
}

fn tn(v: serde_json::Value) -> Vec<u8> {
    tnetstring::encode(&Tn::from_json(&v))
}

fn j(v: serde_json::Value) -> Vec<u8> {
    let mut out = b"J".to_vec();
    out.extend_from_slice(v.to_string().as_bytes());
    out
}

fn stream_item(channel: &str, content: &str) -> serde_json::Value {
    json!({"channel": channel, "formats": {"http-stream": {"content": content}}})
}

/// Sends each message (a list of frames) on a PUSH socket connected to `endpoint`.
async fn push(ctx: &zmq::Context, endpoint: &str, messages: Vec<Vec<Vec<u8>>>) {
    let sock = socket(ctx, zmq::PUSH);
    // Closing right after sending must not discard what is still queued.
    sock.set_linger(ZMQ_TIMEOUT_MS).unwrap();
    sock.connect(endpoint).unwrap();
    blocking(move || {
        for frames in messages {
            sock.send_multipart(frames, 0).unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn pull_delivers_json_tnetstring_and_bare_items() {
    let (_o, p) = setup("").await;
    let mut s = Stream::open(p.client, "/pa", &[]).await;
    p.wait_subscribed("pa").await;
    let ctx = zmq::Context::new();
    let pull = p.zmq.pull.clone().expect("pull bound");
    assert!(!pull.ends_with(":*"), "real port read back: {pull}");
    let mut t = b"T".to_vec();
    t.extend_from_slice(&tn(stream_item("pa", "t\n")));
    push(
        &ctx,
        &pull,
        vec![
            vec![j(stream_item("pa", "j\n"))],
            vec![t],
            vec![tn(stream_item("pa", "bare\n"))],
        ],
    )
    .await;
    assert_eq!(s.read_until("bare\n").await, "j\nt\nbare\n");
    let metrics = p.running.as_ref().unwrap().metrics.clone();
    assert_eq!(metrics.publish_zmq.get(), 3);
}

#[tokio::test]
async fn pull_skips_malformed_messages_and_keeps_going() {
    let (_o, p) = setup("").await;
    let mut s = Stream::open(p.client, "/pm", &[]).await;
    p.wait_subscribed("pm").await;
    let ctx = zmq::Context::new();
    let pull = p.zmq.pull.clone().unwrap();
    let bad: Vec<Vec<Vec<u8>>> = vec![
        vec![b"T3:abc".to_vec()],
        vec![b"5:abc,".to_vec()],
        vec![b"J{\"channel\": \"pm\", oops".to_vec()],
        vec![b"J[\"pm\"]".to_vec()],
        // Multipart: two valid-looking frames, still rejected as a whole.
        vec![
            j(stream_item("pm", "leak1\n")),
            j(stream_item("pm", "leak2\n")),
        ],
        // No channel.
        vec![j(json!({"http-stream": {"content": "leak3\n"}}))],
    ];
    let n_bad = bad.len() as u64;
    let mut all = bad;
    all.push(vec![j(stream_item("pm", "ok\n"))]);
    push(&ctx, &pull, all).await;
    assert_eq!(s.read_until("ok\n").await, "ok\n");
    let metrics = p.running.as_ref().unwrap().metrics.clone();
    assert_eq!(metrics.dropped_zmq_invalid.get(), n_bad);
    // The socket still works after the garbage.
    push(&ctx, &pull, vec![vec![tn(stream_item("pm", "again\n"))]]).await;
    assert_eq!(s.read_until("again\n").await, "ok\nagain\n");
}

/// Waits for one subscription message (`\x01ch` or `\x00ch`) on an XPUB; `None` on timeout.
async fn xpub_event(xpub: zmq::Socket, timeout_ms: i32) -> (zmq::Socket, Option<Vec<u8>>) {
    blocking(move || {
        xpub.set_rcvtimeo(timeout_ms).unwrap();
        let got = xpub.recv_bytes(0).ok();
        (xpub, got)
    })
    .await
}

async fn publish_sub(xpub: zmq::Socket, frames: Vec<Vec<u8>>) -> zmq::Socket {
    blocking(move || {
        xpub.send_multipart(frames, 0).unwrap();
        xpub
    })
    .await
}

#[tokio::test]
async fn sub_bind_mode_receives_from_a_connecting_publisher() {
    let (_o, p) = setup("").await;
    let ctx = zmq::Context::new();
    assert!(!p.zmq.sub_connect);
    let sub = p.zmq.sub[0].clone();
    // An XPUB is a PUB that also shows the subscriptions it receives.
    let xpub = socket(&ctx, zmq::XPUB);
    xpub.connect(&sub).unwrap();
    let mut s = Stream::open(p.client, "/sb", &[]).await;
    p.wait_subscribed("sb").await;
    let (xpub, ev) = xpub_event(xpub, ZMQ_TIMEOUT_MS).await;
    assert_eq!(ev.as_deref(), Some(&b"\x01sb"[..]));
    // The topic frame names the channel; the payload's own `channel` is ignored.
    let xpub = publish_sub(
        xpub,
        vec![b"sb".to_vec(), j(stream_item("elsewhere", "via-sub\n"))],
    )
    .await;
    assert_eq!(s.read_until("via-sub\n").await, "via-sub\n");
    let _xpub = publish_sub(
        xpub,
        vec![
            b"sb".to_vec(),
            tn(json!({"http-stream": {"content": "tn\n"}})),
        ],
    )
    .await;
    assert_eq!(s.read_until("tn\n").await, "via-sub\ntn\n");
}

#[tokio::test]
async fn sub_connect_mode_follows_interest_with_linger() {
    let ctx = zmq::Context::new();
    let xpub = socket(&ctx, zmq::XPUB);
    xpub.bind(ZMQ_ANY).unwrap();
    let endpoint = xpub.get_last_endpoint().unwrap().unwrap();
    let (_o, p) = setup(&format!(
        "subscription_linger_secs = 1\n[publish]\nzmq_sub = [{endpoint:?}]\nzmq_sub_connect = true\n"
    ))
    .await;
    assert!(p.zmq.sub_connect);
    assert_eq!(p.zmq.sub, vec![endpoint.clone()]);

    // Nobody listens yet: no subscription.
    let (xpub, ev) = xpub_event(xpub, 300).await;
    assert_eq!(ev, None);

    let mut s = Stream::open(p.client, "/sc", &[]).await;
    let (xpub, ev) = xpub_event(xpub, ZMQ_TIMEOUT_MS).await;
    assert_eq!(ev.as_deref(), Some(&b"\x01sc"[..]));
    let xpub = publish_sub(
        xpub,
        vec![
            b"sc".to_vec(),
            j(json!({"http-stream": {"content": "one\n"}})),
        ],
    )
    .await;
    assert_eq!(s.read_until("one\n").await, "one\n");

    // The last subscriber leaves and comes back within the linger: no unsubscribe.
    let close = json!({"items": [{"channel": "sc", "http-stream": {"action": "close"}}]});
    assert_eq!(p.publish(close.clone()).await.0, 200);
    s.read_to_end().await;
    let mut s = Stream::open(p.client, "/sc", &[]).await;
    p.wait_subscribed("sc").await;
    let (xpub, ev) = xpub_event(xpub, 1500).await;
    assert_eq!(ev, None, "unsubscribed although the channel came back");

    // It leaves for good: `\x00sc` after the linger, not before.
    assert_eq!(p.publish(close).await.0, 200);
    s.read_to_end().await;
    let left = tokio::time::Instant::now();
    let (_xpub, ev) = xpub_event(xpub, ZMQ_TIMEOUT_MS).await;
    assert_eq!(ev.as_deref(), Some(&b"\x00sc"[..]));
    let waited = left.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "unsubscribed after {waited:?}, before the 1 s linger"
    );
}

fn command(method: &str, args: serde_json::Value, id: &str) -> Vec<u8> {
    tn(json!({"id": id, "method": method, "args": args}))
}

/// Sends one request on a REQ socket and decodes the reply.
async fn req(req: zmq::Socket, payload: Vec<u8>) -> (zmq::Socket, serde_json::Value) {
    blocking(move || {
        req.send(payload, 0).unwrap();
        let reply = req.recv_bytes(0).expect("command reply");
        let v = tnetstring::parse_exact(&reply).unwrap().to_json();
        (req, v)
    })
    .await
}

#[tokio::test]
async fn command_socket_publish_uris_and_errors() {
    let (_o, p) = setup("").await;
    let mut s = Stream::open(p.client, "/cmd", &[]).await;
    p.wait_subscribed("cmd").await;
    let ctx = zmq::Context::new();
    let endpoint = p.zmq.command.clone().unwrap();
    let sock = socket(&ctx, zmq::REQ);
    sock.connect(&endpoint).unwrap();

    let (sock, r) = req(
        sock,
        command(
            "publish",
            json!({"items": [stream_item("cmd", "by-command\n")]}),
            "1",
        ),
    )
    .await;
    assert_eq!(r, json!({"id": "1", "success": true, "value": null}));
    assert_eq!(s.read_until("by-command\n").await, "by-command\n");

    let (sock, r) = req(sock, command("get-zmq-uris", json!({}), "2")).await;
    assert_eq!(
        r,
        json!({"id": "2", "success": true, "value": {
            "command": endpoint,
            "publish-pull": p.zmq.pull.clone().unwrap(),
            "publish-sub": p.zmq.sub[0].clone(),
        }})
    );

    let (sock, r) = req(sock, command("frobnicate", json!({}), "3")).await;
    assert_eq!(r["success"], false);
    assert_eq!(r["condition"], "method-not-found");
    assert_eq!(r["id"], "3");

    // One invalid item rejects the batch; nothing is delivered.
    let (sock, r) = req(
        sock,
        command(
            "publish",
            json!({"items": [stream_item("cmd", "leak\n"), {"channel": "cmd"}]}),
            "4",
        ),
    )
    .await;
    assert_eq!(r["condition"], "bad-request");
    assert!(r["value"].as_str().unwrap().starts_with("Invalid format"));
    let (_sock, r) = req(sock, command("recover", json!({}), "5")).await;
    assert_eq!(r["success"], true);

    // A DEALER peer (no empty delimiter frame); garbage first, which gets no answer.
    let dealer = socket(&ctx, zmq::DEALER);
    dealer.connect(&endpoint).unwrap();
    let r = blocking(move || {
        dealer.send(&b"5:abc,"[..], 0).unwrap();
        dealer
            .send(
                command(
                    "publish",
                    json!({"items": [stream_item("cmd", "dealer\n")]}),
                    "6",
                ),
                0,
            )
            .unwrap();
        let reply = dealer.recv_bytes(0).expect("dealer reply");
        tnetstring::parse_exact(&reply).unwrap().to_json()
    })
    .await;
    assert_eq!(r, json!({"id": "6", "success": true, "value": null}));
    s.read_until("dealer\n").await;
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn empty_specs_disable_zeromq() {
    let (_o, p) = setup("[publish]\nzmq_pull = \"\"\nzmq_sub = []\nzmq_command = \"\"\n").await;
    assert!(p.running.as_ref().unwrap().zmq.is_none());
}

#[tokio::test]
async fn shutdown_stops_the_zeromq_thread() {
    let (_o, mut p) = setup("").await;
    let pull = p.zmq.pull.clone().unwrap();
    let running = p.running.take().unwrap();
    assert!(running.shutdown(Duration::from_secs(5)).await);
    // The port is free again: binding it succeeds.
    let ctx = zmq::Context::new();
    let sock = socket(&ctx, zmq::PULL);
    sock.bind(&pull).unwrap();
}
