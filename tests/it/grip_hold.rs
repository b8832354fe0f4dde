//! GRIP holds end to end (reference §1.8): stream and response holds fed by HTTP publishes.

use std::time::Duration;

use gripd_tests::*;
use serde_json::json;

/// An origin answering every path with the GRIP headers encoded in the query, e.g.
/// `/?h=Grip-Hold:stream&h=Grip-Channel:a` — tests describe the origin's answer in the URL.
async fn grip_origin() -> Origin {
    origin(|req: http::Request<hyper::body::Incoming>| async move {
        let q = req.uri().query().unwrap_or("").to_string();
        let mut headers: Vec<(String, String)> = vec![
            ("Content-Type".into(), "text/plain".into()),
            ("X-Origin".into(), "1".into()),
        ];
        let mut body = String::from("initial\n");
        let mut status = 200;
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "h" => {
                    let (name, value) = v.split_once(':').unwrap();
                    headers.push((name.to_string(), value.to_string()));
                }
                "body" => body = v,
                "status" => status = v.parse().unwrap(),
                _ => {}
            }
        }
        let hs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        resp(status, &hs, body)
    })
    .await
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else if b[i] == b'+' {
            out.push(b' ');
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

async fn setup(extra: &str) -> (Origin, Proxy) {
    let o = grip_origin().await;
    let p = Proxy::start(&[format!("* {}", o.addr)], extra).await;
    (o, p)
}

const NO_FIRST_SUB: &str = "[hold]\nupdate_on_first_subscription = false\n";

#[tokio::test]
async fn stream_hold_sends_initial_then_publishes_then_close() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/s?h=Grip-Hold:stream&h=Grip-Channel:a", &[]).await;
    assert_eq!(s.status, 200);
    assert!(s.headers.keys().all(|k| !k.as_str().starts_with("grip-")));
    assert_eq!(s.headers["x-origin"], "1");
    assert_eq!(s.headers["transfer-encoding"], "chunked");
    s.read_until("initial\n").await;
    p.wait_subscribed("a").await;
    p.publish_stream("a", "hello\n").await;
    s.read_until("hello\n").await;
    let (st, _) = p
        .publish(json!({"items": [{"channel": "a", "http-stream": {"content-bin": "AAEC"}}]}))
        .await;
    assert_eq!(st, 200);
    let (st, _) = p
        .publish(json!({"items": [{"channel": "a", "http-stream": {"action": "close"}}]}))
        .await;
    assert_eq!(st, 200);
    let all = s.read_to_end().await;
    assert!(s.received.ends_with(&[0, 1, 2]), "{all:?}");
    assert_eq!(&s.received[..], b"initial\nhello\n\x00\x01\x02");
}

#[tokio::test]
async fn two_channel_headers_and_comma_list_subscribe_both() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let mut s1 = Stream::open(p.client, "/?h=Grip-Hold:stream&h=Grip-Channel:a,%20b", &[]).await;
    let mut s2 = Stream::open(
        p.client,
        "/?h=Grip-Hold:stream&h=Grip-Channel:a&h=Grip-Channel:b",
        &[],
    )
    .await;
    p.wait_subscribed("a").await;
    p.wait_subscribed("b").await;
    p.publish_stream("a", "A\n").await;
    p.publish_stream("b", "B\n").await;
    s1.read_until("B\n").await;
    s2.read_until("B\n").await;
    assert!(String::from_utf8_lossy(&s1.received).contains("A\n"));
    assert!(String::from_utf8_lossy(&s2.received).contains("A\n"));
}

#[tokio::test]
async fn response_hold_publish_merges_headers() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let client = p.client;
    let req = tokio::spawn(async move {
        request(
            client,
            "GET",
            "/?h=Grip-Hold:response&h=Grip-Channel:lp&h=X-Longpoll:timeout&body=timeout",
            &[],
            "",
        )
        .await
    });
    p.wait_subscribed("lp").await;
    let (st, _) = p
        .publish(json!({"items": [{"channel": "lp", "http-response": {"code": 200, "headers": {"X-Pub": "1", "Content-Type": "application/json"}, "body": "{\"x\":1}"}}]}))
        .await;
    assert_eq!(st, 200);
    let r = req.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "{\"x\":1}");
    assert_eq!(r.headers["x-longpoll"], "timeout");
    assert_eq!(r.headers["x-pub"], "1");
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(r.headers.keys().all(|k| !k.as_str().starts_with("grip-")));
}

#[tokio::test]
async fn response_hold_code_reason_and_first_publish_wins() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let client = p.client;
    let req = tokio::spawn(async move {
        request(
            client,
            "GET",
            "/?h=Grip-Hold:response&h=Grip-Channel:lp2",
            &[],
            "",
        )
        .await
    });
    p.wait_subscribed("lp2").await;
    p.publish(json!({"items": [
        {"channel": "lp2", "http-response": {"code": 404, "reason": "Nope", "body": "first"}},
        {"channel": "lp2", "http-response": {"body": "second"}}
    ]}))
    .await;
    let r = req.await.unwrap();
    assert_eq!(
        (r.status, r.reason.as_str(), &r.body[..]),
        (404, "Nope", &b"first"[..])
    );
}

#[tokio::test]
async fn response_hold_times_out_with_origin_response() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let started = std::time::Instant::now();
    // Grip-Timeout 1 is raised to the 5 s minimum.
    let r = request(
        p.client,
        "GET",
        "/?h=Grip-Hold:response&h=Grip-Channel:t&h=Grip-Timeout:1&h=Grip-Status:304&body=orig",
        &[],
        "",
    )
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(4900) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(r.status, 304);
    assert!(r.headers.keys().all(|k| !k.as_str().starts_with("grip-")));
}

#[tokio::test]
async fn response_hold_timeout_returns_origin_body() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let r = request(
        p.client,
        "GET",
        "/?h=Grip-Hold:response&h=Grip-Channel:t2&h=Grip-Timeout:5&body=orig%20body",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "orig body");
    assert_eq!(r.headers["x-origin"], "1");
}

#[tokio::test]
async fn instruction_errors_give_502() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    for q in [
        "h=Grip-Hold:response&h=Grip-Channel:a&h=Grip-Timeout:abc",
        "h=Grip-Hold:response&h=Grip-Channel:a&h=Grip-Timeout:-1",
        "h=Grip-Hold:Stream&h=Grip-Channel:a",
        "h=Grip-Hold:stream&h=Grip-Channel:a&h=Grip-Keep-Alive:x;%20format=hex",
        "h=Grip-Hold:stream&h=Grip-Channel:a&h=Grip-Keep-Alive:x;%20mode=foo",
    ] {
        let r = request(p.client, "GET", &format!("/?{q}"), &[], "").await;
        assert_eq!(r.status, 502, "{q}");
        assert_eq!(r.body, "Error while proxying to origin.\n", "{q}");
    }
    // gripd keeps serving.
    let r = request(p.client, "GET", "/", &[], "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn grip_status_and_meta_only_response_passes_without_grip_headers() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let r = request(
        p.client,
        "GET",
        "/?h=Grip-Status:404%20Nothing%20To%20See%20Here&body=gone",
        &[],
        "",
    )
    .await;
    assert_eq!((r.status, r.reason.as_str()), (404, "Nothing To See Here"));
    assert_eq!(r.body, "gone");
    assert!(r.headers.keys().all(|k| !k.as_str().starts_with("grip-")));
}

#[tokio::test]
async fn keep_alive_idle_and_base64() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/?h=Grip-Hold:stream&h=Grip-Channel:ka&h=Grip-Keep-Alive:cGluZzMK;%20format=base64;%20timeout=1", &[]).await;
    let started = std::time::Instant::now();
    s.read_until("initial\nping3\n").await;
    assert!(started.elapsed() < Duration::from_millis(1500));
    s.read_until("ping3\nping3\n").await;
}

#[tokio::test]
async fn keep_alive_cstring_interval_mode_fires_while_data_flows() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/?h=Grip-Hold:stream&h=Grip-Channel:kb&h=Grip-Keep-Alive:ka%5Cn;%20format=cstring;%20timeout=2;%20mode=interval", &[]).await;
    p.wait_subscribed("kb").await;
    let deadline = std::time::Instant::now() + Duration::from_millis(2600);
    while std::time::Instant::now() < deadline {
        p.publish_stream("kb", "d\n").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.read_until("ka\n").await;
}

#[tokio::test]
async fn json_instruct_stream_and_no_hold() {
    let o = origin(|req: http::Request<hyper::body::Incoming>| async move {
        let body = if req.uri().path() == "/hold" {
            json!({"hold": {"mode": "stream", "channels": [{"name": "j"}]}, "response": {"code": 200, "headers": {"Content-Type": "text/plain"}, "body": "from-json\n"}})
        } else if req.uri().path() == "/nohold" {
            json!({"response": {"code": 202, "body": "plain"}})
        } else {
            json!({"hold": {"mode": "response", "channels": [{"name": "j2"}]}})
        };
        let status = if req.uri().path() == "/bad" { 201 } else { 200 };
        resp(status, &[("Content-Type", "application/grip-instruct; charset=utf-8")], body.to_string())
    })
    .await;
    let p = Proxy::start(&[format!("* {}", o.addr)], NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/hold", &[]).await;
    s.read_until("from-json\n").await;
    p.wait_subscribed("j").await;
    p.publish_stream("j", "more\n").await;
    s.read_until("more\n").await;
    let r = request(p.client, "GET", "/nohold", &[], "").await;
    assert_eq!((r.status, &r.body[..]), (202, &b"plain"[..]));
    let r = request(p.client, "GET", "/bad", &[], "").await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn response_hold_body_over_limit_is_502() {
    let o = origin(|_req| async move {
        resp(
            200,
            &[("Grip-Hold", "response"), ("Grip-Channel", "big")],
            vec![b'a'; 150_000],
        )
    })
    .await;
    let p = Proxy::start(&[format!("* {}", o.addr)], NO_FIRST_SUB).await;
    let r = request(p.client, "GET", "/", &[], "").await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn stream_hold_initial_body_of_5mb_is_delivered() {
    let o = origin(|_req| async move {
        resp(
            200,
            &[("Grip-Hold", "stream"), ("Grip-Channel", "five")],
            vec![b'b'; 5 * 1024 * 1024],
        )
    })
    .await;
    let p = Proxy::start(&[format!("* {}", o.addr)], NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/", &[]).await;
    p.wait_subscribed("five").await;
    p.publish_stream("five", "END").await;
    s.read_until("END").await;
    assert_eq!(s.received.len(), 5 * 1024 * 1024 + 3);
}

#[tokio::test]
async fn route_prefix_applies_to_channels() {
    let o = grip_origin().await;
    let p = Proxy::start(&[format!("*,prefix=app1- {}", o.addr)], NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/?h=Grip-Hold:stream&h=Grip-Channel:c", &[]).await;
    p.wait_subscribed("app1-c").await;
    p.publish_stream("c", "wrong\n").await;
    p.publish_stream("app1-c", "right\n").await;
    let got = s.read_until("right\n").await;
    assert!(!got.contains("wrong"));
}

#[tokio::test]
async fn slow_client_does_not_delay_others() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    // A client that never reads: raw socket, request sent, nothing read.
    let mut stuck = tokio::net::TcpStream::connect(p.client).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stuck,
        b"GET /?h=Grip-Hold:stream&h=Grip-Channel:slow HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut good = Stream::open(p.client, "/?h=Grip-Hold:stream&h=Grip-Channel:slow", &[]).await;
    p.wait_subscribed("slow").await;
    while p
        .running
        .as_ref()
        .unwrap()
        .metrics
        .subscriptions_active
        .get()
        < 2
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let big = "x".repeat(64 * 1024);
    let started = std::time::Instant::now();
    // 400 x 64 KB: far more than the stuck client's socket buffers and queue can absorb.
    // Each item must reach the good client promptly while the stuck one falls behind.
    for i in 0..400 {
        p.publish_stream("slow", &format!("{big}{i:04}\n")).await;
        good.skip_until(&format!("{i:04}\n")).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(p.running.as_ref().unwrap().metrics.dropped_queue_full.get() > 0);
    drop(stuck);
}

#[tokio::test]
async fn connection_subscription_max_truncates() {
    let (_o, p) =
        setup("[hold]\nupdate_on_first_subscription = false\nconnection_subscription_max = 2\n")
            .await;
    let mut s = Stream::open(
        p.client,
        "/?h=Grip-Hold:stream&h=Grip-Channel:m1,m2,m3",
        &[],
    )
    .await;
    p.wait_subscribed("m2").await;
    assert!(!p.running.as_ref().unwrap().hub.has_channel("m3"));
    p.publish_stream("m2", "two\n").await;
    s.read_until("two\n").await;
}

#[tokio::test]
async fn shutdown_ends_held_streams() {
    let (_o, mut p) = setup(NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/?h=Grip-Hold:stream&h=Grip-Channel:bye", &[]).await;
    p.wait_subscribed("bye").await;
    let running = p.running.take().unwrap();
    let clean = running.shutdown(Duration::from_secs(5)).await;
    assert!(clean);
    s.read_to_end().await;
}

#[tokio::test]
async fn response_hold_body_bin_patch_and_close_ignored() {
    let o = origin(|_req| async move {
        resp(
            200,
            &[
                ("Grip-Hold", "response"),
                ("Grip-Channel", "bp"),
                ("Content-Type", "application/json"),
            ],
            "{\"a\":1,\"b\":[1]}\n",
        )
    })
    .await;
    let p = Proxy::start(&[format!("* {}", o.addr)], NO_FIRST_SUB).await;
    // body-bin delivers exact bytes.
    let client = p.client;
    let req = tokio::spawn(async move { request(client, "GET", "/", &[], "").await });
    p.wait_subscribed("bp").await;
    // action close is ignored by response holds: the next item answers.
    p.publish(json!({"items": [{"channel": "bp", "http-response": {"action": "close"}}]}))
        .await;
    p.publish(json!({"items": [{"channel": "bp", "http-response": {"body-bin": "AAH/"}}]}))
        .await;
    let r = req.await.unwrap();
    assert_eq!(&r.body[..], &[0u8, 1, 255]);
    // body-patch applies to the original body, keeping its trailing newline.
    let req = tokio::spawn(async move { request(client, "GET", "/", &[], "").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.wait_subscribed("bp").await;
    p.publish(json!({"items": [{"channel": "bp", "http-response": {"body-patch": [{"op": "replace", "path": "/a", "value": 2}]}}]}))
        .await;
    let r = req.await.unwrap();
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(text.ends_with('\n'), "{text:?}");
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(v, json!({"a": 2, "b": [1]}));
}

#[tokio::test]
async fn expose_headers_whitelists_origin_headers() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let r = request(
        p.client,
        "GET",
        "/?h=Grip-Status:200&h=Grip-Expose-Headers:Content-Type&h=X-Secret:1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.headers["content-type"], "text/plain");
    assert!(r.headers.get("x-secret").is_none());
    assert!(r.headers.get("x-origin").is_none());
}

#[tokio::test]
async fn next_link_without_hold_appends_and_response_hold_link_fails() {
    let o = origin(|req: http::Request<hyper::body::Incoming>| async move {
        let last = req
            .headers()
            .get("grip-last")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let cookie = req.headers().contains_key("cookie");
        match req.uri().path() {
            "/first" => resp(200, &[("Grip-Link", "</second>; rel=next")], "one\n"),
            "/second" => resp(
                200,
                &[("Grip-Link", "</third?x=1>; rel=next")],
                format!("two cookie={cookie} last={last:?}\n"),
            ),
            "/third" => resp(200, &[], "three\n"),
            "/bad" => resp(
                200,
                &[("Grip-Link", "</hold-response>; rel=next")],
                "start\n",
            ),
            _ => resp(
                200,
                &[("Grip-Hold", "response"), ("Grip-Channel", "x")],
                "held\n",
            ),
        }
    })
    .await;
    let p = Proxy::start(&[format!("* {}", o.addr)], NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/first", &[("Cookie", "secret=1")]).await;
    let all = s.read_to_end().await;
    // Next-link requests carry no client headers.
    assert_eq!(all, "one\ntwo cookie=false last=\"\"\nthree\n");
    let mut s = Stream::open(p.client, "/bad", &[]).await;
    let all = s.read_to_end().await;
    assert_eq!(all, "start\n");
}

#[tokio::test]
async fn stream_prev_id_gap_recovers_through_next_link_with_grip_last() {
    let o = origin(|req: http::Request<hyper::body::Incoming>| async move {
        let last = req
            .headers()
            .get("grip-last")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let hs = [
            ("Grip-Hold", "stream"),
            ("Grip-Channel", "g; prev-id=1"),
            ("Grip-Link", "</next>; rel=next"),
        ];
        if req.uri().path() == "/next" {
            resp(
                200,
                &[
                    ("Grip-Hold", "stream"),
                    ("Grip-Channel", "g; prev-id=3"),
                    ("Grip-Link", "</next>; rel=next"),
                ],
                format!("recovered with {last}\n"),
            )
        } else {
            resp(200, &hs, "open\n")
        }
    })
    .await;
    let p = Proxy::start(&[format!("* {}", o.addr)], NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/", &[]).await;
    s.read_until("open\n").await;
    p.wait_subscribed("g").await;
    // id 3 follows 2, which the session never saw: it must fetch the next link with Grip-Last.
    p.publish(json!({"items": [{"channel": "g", "id": "3", "prev-id": "2", "no-seq": true, "http-stream": {"content": "three\n"}}]}))
        .await;
    let got = s.read_until("recovered").await;
    assert!(!got.contains("three"), "{got}");
    let got = s.read_until("\n").await;
    assert!(got.contains("recovered with g; last-id=1"), "{got}");
    p.publish(json!({"items": [{"channel": "g", "id": "4", "prev-id": "3", "http-stream": {"content": "four\n"}}]})).await;
    s.read_until("four\n").await;
}

#[tokio::test]
async fn idle_keep_alive_is_reset_by_published_data() {
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/?h=Grip-Hold:stream&h=Grip-Channel:kr&h=Grip-Keep-Alive:ka%5Cn;%20format=cstring;%20timeout=2", &[]).await;
    p.wait_subscribed("kr").await;
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    let mut i = 0;
    while std::time::Instant::now() < until {
        p.publish_stream("kr", &format!("d{i}\n")).await;
        s.read_until(&format!("d{i}\n")).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        !String::from_utf8_lossy(&s.received).contains("ka\n"),
        "keep-alive sent while data flowed"
    );
    // Idle now: the keep-alive comes within its timeout.
    s.read_until("ka\n").await;
}

#[tokio::test]
async fn next_link_refetched_after_its_timeout_without_messages() {
    let (o, _) = next_link_origin("lt", "refreshed\n").await;
    let p = Proxy::start(&[format!("* {}", o.addr)], NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/", &[]).await;
    let started = std::time::Instant::now();
    s.read_until("refreshed\n").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn http10_client_gets_a_close_delimited_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let mut s = tokio::net::TcpStream::connect(p.client).await.unwrap();
    s.write_all(b"GET /?h=Grip-Hold:stream&h=Grip-Channel:old HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    p.wait_subscribed("old").await;
    p.publish_stream("old", "one\n").await;
    p.publish(json!({"items": [{"channel": "old", "http-stream": {"action": "close"}}]}))
        .await;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("stream did not close")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\ninitial\none\n"), "{text:?}");
}

#[tokio::test]
async fn chunked_framing_of_detached_streams_is_exact() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_o, p) = setup(NO_FIRST_SUB).await;
    let mut s = tokio::net::TcpStream::connect(p.client).await.unwrap();
    s.write_all(b"GET /?h=Grip-Hold:stream&h=Grip-Channel:raw HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    p.wait_subscribed("raw").await;
    let big = "z".repeat(300);
    p.publish_stream("raw", &big).await;
    p.publish(json!({"items": [{"channel": "raw", "http-stream": {"action": "close"}}]}))
        .await;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("stream did not close")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    let body = text.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body, format!("8\r\ninitial\n\r\n12c\r\n{big}\r\n0\r\n\r\n"));
}

/// A held stream keeps its connection slot while it lives and frees it when it ends, whether
/// the publisher closes it or the client goes away (the slot outlives hyper's connection:
/// held streams are detached from hyper).
#[tokio::test]
async fn held_stream_frees_its_connection_slot_when_it_ends() {
    let (_o, p) =
        setup("[server]\nmax_connections = 1\n[hold]\nupdate_on_first_subscription = false\n")
            .await;
    for round in 0..2 {
        let mut s = Stream::open(p.client, "/?h=Grip-Hold:stream&h=Grip-Channel:slot", &[]).await;
        s.read_until("initial\n").await;
        p.wait_subscribed("slot").await;
        // While it is held, the one slot is taken: a second client is not served.
        let mut waiting = tokio::net::TcpStream::connect(p.client).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut waiting, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::io::AsyncReadExt::read(&mut waiting, &mut buf),
        )
        .await;
        assert!(
            early.is_err(),
            "round {round}: served while the slot was held"
        );
        drop(waiting);
        if round == 0 {
            let (st, _) = p
                .publish(
                    json!({"items": [{"channel": "slot", "http-stream": {"action": "close"}}]}),
                )
                .await;
            assert_eq!(st, 200);
            s.read_to_end().await;
        } else {
            drop(s);
        }
        // Once the stream has ended, the slot serves the next client.
        let r = request(p.client, "GET", "/", &[], "").await;
        assert_eq!(r.status, 200, "round {round}");
    }
}

/// Next-link refreshes that bring nothing new leave the stream idle but alive: later
/// refreshes still happen, and a later publish is still delivered.
#[tokio::test]
async fn stream_works_after_next_link_refreshes_with_no_news() {
    use std::sync::atomic::Ordering;
    let (o, fetches) = next_link_origin("quiet", "").await;
    let p = Proxy::start(&[format!("* {}", o.addr)], NO_FIRST_SUB).await;
    let mut s = Stream::open(p.client, "/", &[]).await;
    s.read_until("open\n").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while fetches.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "next link refreshed {} times",
            fetches.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.wait_subscribed("quiet").await;
    p.publish_stream("quiet", "after\n").await;
    s.read_until("after\n").await;
}

/// Long-polls on a prefixed route: the hold finds its channel's filters and knows what it is
/// subscribed to under the prefixed names (`require-sub` needs both).
#[tokio::test]
async fn route_prefix_applies_to_response_hold_filters() {
    let o = grip_origin().await;
    let p = Proxy::start(&[format!("*,prefix=app1- {}", o.addr)], NO_FIRST_SUB).await;
    let client = p.client;
    let req = tokio::spawn(async move {
        request(
            client,
            "GET",
            "/?h=Grip-Hold:response&h=Grip-Channel:a%3B%20filter%3Drequire-sub&h=Grip-Channel:b",
            &[],
            "",
        )
        .await
    });
    p.wait_subscribed("app1-a").await;
    p.wait_subscribed("app1-b").await;
    p.publish(json!({"items": [
        {"channel": "app1-a", "meta": {"require_sub": "app1-zzz"}, "http-response": {"body": "wrong"}},
        {"channel": "app1-a", "meta": {"require_sub": "app1-b"}, "http-response": {"body": "right"}}
    ]}))
    .await;
    let r = req.await.unwrap();
    assert_eq!(r.body, "right");
}

/// An origin that holds every response as a stream on `channel` with a next link due every
/// second; `/next` answers `next_body` (and counts its fetches), anything else `open\n`.
async fn next_link_origin(
    channel: &'static str,
    next_body: &'static str,
) -> (Origin, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = fetches.clone();
    let o = origin(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let hs = [
                ("Grip-Hold", "stream"),
                ("Grip-Channel", channel),
                ("Grip-Link", "</next>; rel=next; timeout=1"),
            ];
            if req.uri().path() == "/next" {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                resp(200, &hs, next_body)
            } else {
                resp(200, &hs, "open\n")
            }
        }
    })
    .await;
    (o, fetches)
}
