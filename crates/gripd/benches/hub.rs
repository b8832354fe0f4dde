//! Criterion benches for the hub's fan-out: one publish to 1, 100 and 10,000 subscribers.
//!
//! Each subscriber has its own bounded queue (as a held connection does); queues are drained
//! between iterations outside the measurement, so every publish really enqueues.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gripd::hub::{Hub, HubConfig, Mode};
use gripd::metrics::Metrics;

fn fan_out(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let mut g = c.benchmark_group("hub_publish");
    for n in [1usize, 100, 10_000] {
        let hub = Hub::new(
            HubConfig {
                message_wait: Duration::from_millis(5000),
                id_cache_ttl: Duration::ZERO,
                update_on_first_subscription: false,
                first_subscription_update: Duration::from_secs(1),
            },
            Arc::new(Metrics::new()),
        );
        let mut queues = Vec::with_capacity(n);
        let mut subs = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = Hub::queue(100);
            subs.push(hub.subscribe("bench", Mode::Stream, tx));
            queues.push(rx);
        }
        let item = Arc::new(
            grip::PublishItem::from_json(
                &serde_json::json!({"channel": "bench", "http-stream": {"content": "data: hello\n\n"}}),
                true,
            )
            .unwrap(),
        );
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}_subscribers"), |b| {
            b.iter_batched(
                || {
                    for q in queues.iter_mut() {
                        while q.try_recv().is_ok() {}
                    }
                    item.clone()
                },
                |item| assert_eq!(hub.publish(item), n),
                BatchSize::PerIteration,
            )
        });
        drop(subs);
    }
    g.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
