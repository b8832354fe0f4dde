//! The `gripd` binary itself: Pushpin-compatible flags, exit codes, startup.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The gripd binary next to this test binary (`cargo build -p gripd` builds it; scripts/test does).
fn gripd_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("gripd");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p gripd` first",
        bin.display()
    );
    bin
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bad_config_exits_64_listing_every_problem() {
    let dir = std::env::temp_dir().join(format!("gripd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nhttp_addrs = [\"nope\"]\nmystery = 1\n[log]\nformat = \"xml\"\n[hold]\nconnection_queue_max = 0\n",
    )
    .unwrap();
    let out = Command::new(gripd_bin())
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.http_addrs",
        "server.mystery",
        "log.format",
        "hold.connection_queue_max",
    ] {
        assert!(err.contains(key), "{key} not reported in:\n{err}");
    }
    let out = Command::new(gripd_bin())
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(gripd_bin())
        .args(["check-config", "--route", "* nohost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(gripd_bin())
        .args(["check-config", "--route", "* 127.0.0.1:8000"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version_flag() {
    let out = Command::new(gripd_bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("gripd "));
}

#[tokio::test]
async fn pushpin_command_line_with_port_offset() {
    // Find a free offset: the client port is explicit, the control port is 5561 + offset.
    let mut last_err = String::new();
    for offset in [10000u16, 20000, 30000, 40000] {
        let client = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client_port = client.local_addr().unwrap().port();
        drop(client);
        if std::net::TcpListener::bind(("127.0.0.1", 5561 + offset)).is_err() {
            continue;
        }
        let origin =
            gripd_tests::origin(|_req| async { gripd_tests::resp(200, &[], "plain-origin") }).await;
        let ws_origin =
            gripd_tests::origin(|_req| async { gripd_tests::resp(200, &[], "ws-origin") }).await;
        let mut child = Child(
            Command::new(gripd_bin())
                .args([
                    "--port",
                    &format!("127.0.0.1:{client_port}"),
                    "--port-offset",
                    &offset.to_string(),
                ])
                .args([
                    "--route",
                    &format!("*,path_beg=/ws/ {},over_http", ws_origin.addr),
                ])
                .args(["--route", &format!("* {}", origin.addr)])
                .env("GRIPD_PUBLISH_ZMQ_PULL", "\"\"")
                .env("GRIPD_PUBLISH_ZMQ_SUB", "[]")
                .env("GRIPD_PUBLISH_ZMQ_COMMAND", "\"\"")
                .env("GRIPD_SERVER_WORKER_THREADS", "3")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stderr = child.0.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut log = String::new();
        while Instant::now() < deadline
            && !(log.contains(&format!("127.0.0.1:{client_port}"))
                && log.contains(&format!("127.0.0.1:{}", 5561 + offset)))
        {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                log.push_str(&line);
                log.push('\n');
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                last_err = format!("exited {status}: {log}");
                break;
            }
        }
        if !last_err.is_empty() {
            continue;
        }
        let pid = child.0.id().to_string();
        let client: std::net::SocketAddr = format!("127.0.0.1:{client_port}").parse().unwrap();
        let control: std::net::SocketAddr = format!("127.0.0.1:{}", 5561 + offset).parse().unwrap();
        assert_eq!(
            gripd_tests::request(client, "GET", "/x", &[], "")
                .await
                .body,
            "plain-origin"
        );
        assert_eq!(
            gripd_tests::request(client, "GET", "/ws/x", &[], "")
                .await
                .body,
            "ws-origin"
        );
        assert_eq!(
            gripd_tests::request(control, "GET", "/", &[], "")
                .await
                .status,
            200
        );
        // `server.worker_threads` (here from the environment) sets the runtime's threads.
        let metrics = gripd_tests::request(control, "GET", "/metrics", &[], "").await;
        let metrics = String::from_utf8_lossy(&metrics.body);
        assert!(
            metrics.lines().any(|l| l == "gripd_worker_threads 3"),
            "{metrics}"
        );
        // SIGTERM: clean exit with code 0.
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                assert_eq!(status.code(), Some(0));
                return;
            }
            assert!(Instant::now() < deadline, "gripd did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("could not start gripd on any offset: {last_err}");
}
