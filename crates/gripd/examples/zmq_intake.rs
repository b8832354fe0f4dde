//! Benchmark: ZeroMQ items per second into the hub.
//!
//! Starts the real app in-process (PULL on `tcp://127.0.0.1:*`, one held subscriber draining the
//! channel), pushes N items from a PUSH socket on another thread, and reports how fast the zmq
//! thread parsed and published them (`gripd_publish_items_total{source="zmq"}`).
//!
//!     cargo run --release -p gripd --example zmq_intake -- [ITEMS] [json|tnetstring]

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gripd::app::{self, Listeners};
use gripd::config::{Config, Overrides};
use gripd::hub::{Hub, Mode};
use gripd::routes::Routes;
use tokio::net::TcpListener;

/// Longest the benchmark waits for all items to arrive.
const DEADLINE: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let items: u64 = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let encoding = args.next().unwrap_or_else(|| "tnetstring".into());
    let payload: Vec<u8> = {
        let v = serde_json::json!({"channel": "bench", "formats": {
            "http-stream": {"content": "data: 0123456789abcdef0123456789abcdef\n\n"}}});
        match encoding.as_str() {
            "json" => [b"J".as_slice(), v.to_string().as_bytes()].concat(),
            "tnetstring" => grip::tnetstring::encode(&grip::Tn::from_json(&v)),
            other => anyhow::bail!("encoding must be json or tnetstring, not {other:?}"),
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let config = Config::from_toml_str(
            "[publish]\nzmq_pull = \"tcp://127.0.0.1:*\"\nzmq_sub = []\nzmq_command = \"\"\n\
             zmq_hwm = 10000\n[hold]\nconnection_queue_max = 10000\n",
            Path::new("."),
            &BTreeMap::new(),
            &Overrides::default(),
            None,
        )?;
        let listeners = Listeners {
            client: vec![TcpListener::bind("127.0.0.1:0").await?],
            control: TcpListener::bind("127.0.0.1:0").await?,
        };
        let (routes, _) = Routes::from_lines(["* 127.0.0.1:9"]);
        let running = app::start(config, listeners, routes)?;
        let pull = running.zmq.as_ref().and_then(|z| z.pull.clone()).unwrap();

        // One held subscriber that drains its queue, as a held stream would.
        let (tx, mut rx) = Hub::queue(10_000);
        let _sub = running.hub.subscribe("bench", Mode::Stream, tx);
        let drain = tokio::spawn(async move {
            let mut n = 0u64;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        });

        let start = Instant::now();
        let pusher = std::thread::spawn(move || {
            let ctx = zmq::Context::new();
            let sock = ctx.socket(zmq::PUSH).unwrap();
            sock.set_sndhwm(100_000).unwrap();
            sock.set_linger(5000).unwrap();
            sock.connect(&pull).unwrap();
            for _ in 0..items {
                sock.send(&payload, 0).unwrap();
            }
        });
        let metrics = running.metrics.clone();
        while metrics.publish_zmq.get() < items {
            if start.elapsed() > DEADLINE {
                anyhow::bail!(
                    "only {} of {items} items arrived within {DEADLINE:?}",
                    metrics.publish_zmq.get()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = start.elapsed();
        pusher.join().ok();
        let delivered = metrics.deliveries.get();
        let dropped = metrics.dropped_queue_full.get();
        drop(_sub);
        running.hub.close_all();
        running.shutdown(Duration::from_secs(5)).await;
        let drained = drain.await?;
        println!(
            "{{\"scenario\": \"zmq_intake\", \"encoding\": \"{encoding}\", \"items\": {items}, \
             \"seconds\": {:.3}, \"items_per_sec\": {:.0}, \"delivered\": {delivered}, \
             \"dropped_queue_full\": {dropped}, \"drained\": {drained}}}",
            elapsed.as_secs_f64(),
            items as f64 / elapsed.as_secs_f64()
        );
        Ok(())
    })
}
