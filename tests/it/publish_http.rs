//! The HTTP control API (reference §3.3, §3.10).

use gripd_tests::*;
use serde_json::json;

#[tokio::test]
async fn answers_like_pushpin() {
    let p = Proxy::start(&["* 127.0.0.1:9".to_string()], "").await;
    let r = request(p.control, "GET", "/", &[], "").await;
    assert_eq!(r.status, 200);
    let ok = json!({"items": [{"channel": "x", "http-stream": {"content": "a"}}]}).to_string();
    for path in ["/publish/", "/publish"] {
        let r = request(p.control, "POST", path, &[], ok.clone()).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"Published\n"[..]));
    }
    let r = request(
        p.control,
        "POST",
        "/publish/",
        &[("Accept", "application/json")],
        ok.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, json!({"message": "Published"}));
    let r = request(
        p.control,
        "POST",
        "/publish/",
        &[("Accept", "image/png")],
        ok.clone(),
    )
    .await;
    assert_eq!(r.status, 406);
    let r = request(p.control, "GET", "/publish/", &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");
    let r = request(p.control, "GET", "/nope", &[], "").await;
    assert_eq!(r.status, 404);
    let r = request(p.control, "POST", "/recover", &[], "").await;
    assert_eq!(r.status, 200);
    let r = request(p.control, "GET", "/metrics", &[], "").await;
    assert!(String::from_utf8_lossy(&r.body).contains("gripd_deliveries_total"));
}

#[tokio::test]
async fn bad_input_is_rejected_and_nothing_delivered() {
    let o =
        origin(|_req| async { resp(200, &[("Grip-Hold", "stream"), ("Grip-Channel", "bad")], "") })
            .await;
    let p = Proxy::start(
        &[format!("* {}", o.addr)],
        "[hold]\nupdate_on_first_subscription = false\n",
    )
    .await;
    let mut s = Stream::open(p.client, "/", &[]).await;
    p.wait_subscribed("bad").await;
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "Body is not valid JSON.\n"),
        ("[1, 2]".into(), "Invalid format.\n"),
        (json!({"foo": 1}).to_string(), "Invalid format: object does not contain 'items'\n"),
        (json!({"items": "nope"}).to_string(), "Invalid format: object contains 'items' with wrong type\n"),
        // One good item and one bad one: the whole batch is rejected.
        (json!({"items": [{"channel": "bad", "http-stream": {"content": "leak"}}, {"channel": "bad"}]}).to_string(), ""),
        (json!({"items": [{"channel": "bad", "meta": {"a": 1}, "http-stream": {"content": "leak"}}]}).to_string(), ""),
        (json!({"items": [{"channel": "bad", "http-stream": {"content": 5}}]}).to_string(), ""),
        (json!({"items": [{"channel": "bad", "http-stream": {"action": "explode"}}]}).to_string(), ""),
    ];
    for (body, expected) in cases {
        let r = request(p.control, "POST", "/publish/", &[], body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            text.ends_with('\n') && !text.trim().is_empty(),
            "{body}: {text:?}"
        );
        if !expected.is_empty() {
            assert_eq!(text, expected, "{body}");
        }
    }
    let big = format!(
        "{{\"items\": [{{\"channel\": \"bad\", \"http-stream\": {{\"content\": \"{}\"}}}}]}}",
        "x".repeat(1_000_001)
    );
    let r = request(p.control, "POST", "/publish/", &[], big).await;
    assert_eq!(r.status, 413);
    s.expect_silence(std::time::Duration::from_millis(300))
        .await;
    // Still serving: a good publish arrives.
    p.publish_stream("bad", "good\n").await;
    let got = s.read_until("good\n").await;
    assert!(!got.contains("leak"));
}
