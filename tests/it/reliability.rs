//! django-eventstream's reliability needs: next-link fetches are shared, bounded, and never
//! hold up live delivery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gripd_tests::*;
use serde_json::json;

const NO_FIRST_SUB: &str = "[hold]\nupdate_on_first_subscription = false\n";

#[tokio::test]
async fn identical_next_link_fetches_are_coalesced() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    let o = origin(move |req: http::Request<hyper::body::Incoming>| {
        let f = f.clone();
        async move {
            let hold = [
                ("Grip-Hold", "stream"),
                ("Grip-Channel", "storm; prev-id=1"),
                ("Grip-Link", "</next>; rel=next"),
            ];
            if req.uri().path() == "/next" {
                f.fetch_add(1, Ordering::SeqCst);
                // Slow enough that every session asks while the first request is in flight.
                tokio::time::sleep(Duration::from_millis(300)).await;
                resp(200, &hold, "replayed\n")
            } else {
                resp(200, &hold, "open\n")
            }
        }
    })
    .await;
    let p = Proxy::start(&[format!("* {}", o.addr)], NO_FIRST_SUB).await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut s = Stream::open(p.client, "/", &[]).await;
        s.read_until("open\n").await;
        streams.push(s);
    }
    p.wait_subscribed("storm").await;
    // A hint makes every session fetch its next link with the same Grip-Last.
    p.publish(json!({"items": [{"channel": "storm", "http-stream": {"action": "hint"}}]}))
        .await;
    for s in &mut streams {
        s.read_until("replayed\n").await;
    }
    let n = fetches.load(Ordering::SeqCst);
    assert!(n <= 3, "50 sessions caused {n} next-link requests");
}

#[tokio::test]
async fn slow_next_links_do_not_delay_live_delivery() {
    let o = origin(|req: http::Request<hyper::body::Incoming>| async move {
        match req.uri().path() {
            "/next" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                resp(200, &[], "")
            }
            "/recovering" => resp(
                200,
                &[
                    ("Grip-Hold", "stream"),
                    ("Grip-Channel", "slowlink; prev-id=1"),
                    ("Grip-Link", "</next>; rel=next"),
                ],
                "open\n",
            ),
            _ => resp(
                200,
                &[("Grip-Hold", "stream"), ("Grip-Channel", "live")],
                "open\n",
            ),
        }
    })
    .await;
    let p = Proxy::start(
        &[format!("* {}", o.addr)],
        "[hold]\nupdate_on_first_subscription = false\nnext_link_concurrency = 2\n",
    )
    .await;
    // 20 sessions stuck fetching a next link that hangs (more than the concurrency bound).
    let mut stuck = Vec::new();
    for _ in 0..20 {
        let mut s = Stream::open(p.client, "/recovering", &[]).await;
        s.read_until("open\n").await;
        stuck.push(s);
    }
    p.wait_subscribed("slowlink").await;
    p.publish(json!({"items": [{"channel": "slowlink", "http-stream": {"action": "hint"}}]}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Live delivery on another channel is immediate.
    let mut live = Stream::open(p.client, "/live", &[]).await;
    live.read_until("open\n").await;
    p.wait_subscribed("live").await;
    let started = std::time::Instant::now();
    p.publish_stream("live", "now\n").await;
    live.read_until("now\n").await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}
