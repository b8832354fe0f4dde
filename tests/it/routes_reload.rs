//! Routes: Pushpin routing from the command line, and reloading the routes file.

use std::time::Duration;

use gripd_tests::*;

#[tokio::test]
async fn reload_takes_effect_without_dropping_open_connections() {
    let a = origin(|req: http::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/" {
            resp(
                200,
                &[("Grip-Hold", "stream"), ("Grip-Channel", "r")],
                "from-a\n",
            )
        } else {
            resp(200, &[], "from-a")
        }
    })
    .await;
    let b = origin(|_req| async { resp(200, &[], "from-b") }).await;
    let dir = std::env::temp_dir().join(format!("gripd-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("routes");
    std::fs::write(&file, format!("* {}\n", a.addr)).unwrap();
    let p = Proxy::start_with(
        &[],
        "[hold]\nupdate_on_first_subscription = false\n",
        Some(&file),
    )
    .await;
    let mut held = Stream::open(p.client, "/", &[]).await;
    held.read_until("from-a\n").await;
    p.wait_subscribed("r").await;

    // A broken file keeps the old routes.
    std::fs::write(&file, "* nothost\n").unwrap();
    assert!(!p.running.as_ref().unwrap().reload_routes());
    let r = request(p.client, "GET", "/x", &[], "").await;
    assert_eq!(r.body, "from-a");

    std::fs::write(&file, format!("* {}\n", b.addr)).unwrap();
    // The watcher notices within a couple of seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = request(p.client, "GET", "/x", &[], "").await;
        if r.body == "from-b" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection held before the reload still gets publishes.
    p.publish_stream("r", "still-here\n").await;
    held.read_until("still-here\n").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn pushpin_style_command_line_routes() {
    let ws = origin(|_req| async { resp(200, &[], "ws-origin") }).await;
    let plain = origin(|_req| async { resp(200, &[], "plain-origin") }).await;
    let p = Proxy::start(
        &[
            format!("*,path_beg=/ws/ {},over_http", ws.addr),
            format!("* {}", plain.addr),
        ],
        "",
    )
    .await;
    assert_eq!(
        request(p.client, "GET", "/x", &[], "").await.body,
        "plain-origin"
    );
    assert_eq!(
        request(p.client, "GET", "/ws/x", &[], "").await.body,
        "ws-origin"
    );
}
