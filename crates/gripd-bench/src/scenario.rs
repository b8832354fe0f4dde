//! The scenarios: hold, fanout and throughput. Each returns one JSON object.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::http::{items_body, push_item, Publisher};
use crate::load::{
    establish, now_ns, pct, r3, sort, subscriber, wait_received, Established, Shared, SubResult,
};
use crate::procfs;

/// Where the proxy under test listens and how to load it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// Name of the proxy under test, copied into the results (e.g. gripd, pushpin).
    #[arg(long, default_value = "proxy")]
    pub(crate) label: String,
    /// The proxy's client HTTP address.
    #[arg(long, default_value = "127.0.0.1:7999")]
    pub(crate) proxy: SocketAddr,
    /// pid of the proxy (its whole process tree is measured); no memory/CPU figures without it.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// Connections waiting for their response head at once (Pushpin answers 502 at ~256).
    #[arg(long, default_value_t = 100)]
    pub(crate) concurrency: usize,
    /// Seconds to wait for one response head.
    #[arg(long, default_value_t = 10)]
    pub(crate) connect_timeout: u64,
    /// Seconds to let the proxy settle after the connections are up, before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle: f64,
}

impl Target {
    fn check(&self) -> Result<()> {
        ensure!(
            self.proxy.ip().is_loopback(),
            "the benchmark only talks to loopback addresses"
        );
        Ok(())
    }

    async fn open(
        &self,
        n: usize,
        path: impl Fn(usize) -> String + Send + Sync + 'static,
    ) -> Established {
        establish(
            self.proxy,
            n,
            self.concurrency,
            Arc::new(path),
            Duration::from_secs(self.connect_timeout),
        )
        .await
    }

    fn rss_kb(&self) -> Option<u64> {
        self.pid.and_then(|p| procfs::tree_rss_kb(p).ok())
    }

    fn cpu_s(&self) -> Option<f64> {
        self.pid.and_then(|p| procfs::tree_cpu_s(p).ok())
    }

    async fn settle(&self) {
        tokio::time::sleep(Duration::from_secs_f64(self.settle.clamp(0.0, 60.0))).await;
    }
}

/// CPU seconds used so far by the load generator itself (to show it was not the bottleneck).
fn own_cpu_s() -> f64 {
    procfs::tree_cpu_s(std::process::id()).unwrap_or(f64::NAN)
}

fn errors_json(e: &Established) -> Value {
    json!(e
        .error_kinds
        .iter()
        .take(8)
        .map(|(k, v)| json!({"error": k, "count": v}))
        .collect::<Vec<_>>())
}

/// hold N: open N SSE connections, measure connections/s and RSS per held connection.
pub(crate) async fn hold(t: &Target, n: usize) -> Result<Value> {
    t.check()?;
    let rss_before = t.rss_kb();
    let est = t.open(n, |_| "/stream/hold".to_owned()).await;
    let held = est.held.len();
    t.settle().await;
    let rss_after = t.rss_kb();
    let mut head_ms = est.head_ms.clone();
    sort(&mut head_ms);
    let secs = est.elapsed.as_secs_f64();
    let per_conn_kb = match (rss_before, rss_after) {
        (Some(b), Some(a)) if held > 0 => Some(r3((a as f64 - b as f64) / held as f64)),
        _ => None,
    };
    let v = json!({
        "scenario": "hold",
        "label": t.label,
        "n": n,
        "concurrency": t.concurrency,
        "held": held,
        "errors": est.errors,
        "error_kinds": errors_json(&est),
        "elapsed_s": r3(secs),
        "conn_per_s": r3(held as f64 / secs.max(1e-9)),
        "head_ms_p50": r3(pct(&head_ms, 50.0)),
        "head_ms_p99": r3(pct(&head_ms, 99.0)),
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "rss_per_conn_kb": per_conn_kb,
    });
    eprintln!(
        "[{}] hold {n}: {held} held, {} errors, {:.0} conn/s, RSS {:?} -> {:?} KB, {:?} KB/conn",
        t.label,
        est.errors,
        held as f64 / secs.max(1e-9),
        rss_before,
        rss_after,
        per_conn_kb
    );
    drop(est);
    Ok(v)
}

struct Subscribed {
    handles: Vec<tokio::task::JoinHandle<SubResult>>,
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    /// Channel index of each subscriber, in the order of `handles`.
    channel_of: Vec<usize>,
}

fn subscribe_all(est: Established, channel_of: impl Fn(usize) -> usize) -> Subscribed {
    let (stop, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared::default());
    let mut handles = Vec::with_capacity(est.held.len());
    let mut chans = Vec::with_capacity(est.held.len());
    for h in est.held {
        chans.push(channel_of(h.idx));
        handles.push(tokio::spawn(subscriber(h, stop_rx.clone(), shared.clone())));
    }
    Subscribed {
        handles,
        stop,
        shared,
        channel_of: chans,
    }
}

async fn stop_all(s: Subscribed) -> (Vec<SubResult>, Vec<usize>) {
    let _ = s.stop.send(true);
    let mut out = Vec::with_capacity(s.handles.len());
    for h in s.handles {
        out.push(h.await.unwrap_or(SubResult {
            deliveries: Vec::new(),
            error: Some("task failed".into()),
        }));
    }
    (out, s.channel_of)
}

/// fanout N K: N subscribers on one channel, K messages at `rate`/s.
pub(crate) async fn fanout(
    t: &Target,
    publish: SocketAddr,
    n: usize,
    k: usize,
    rate: f64,
    drain: f64,
) -> Result<Value> {
    t.check()?;
    ensure!(
        publish.ip().is_loopback(),
        "publish address must be loopback"
    );
    ensure!(rate > 0.0 && k > 0, "rate and K must be positive");
    let channel = format!("fanout-{}", now_ns() % 1_000_000);
    let est = {
        let ch = channel.clone();
        t.open(n, move |_| format!("/stream/{ch}")).await
    };
    let held = est.held.len();
    let open_errors = est.errors;
    let open_kinds = errors_json(&est);
    let subs = subscribe_all(est, |_| 0);
    t.settle().await;

    let mut publisher = Publisher::new(publish);
    let gen0 = own_cpu_s();
    let cpu0 = t.cpu_s();
    let mut publish_errors = 0usize;
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut items = String::new();
    for seq in 0..k {
        interval.tick().await;
        items.clear();
        push_item(&mut items, &channel, seq as u64, now_ns());
        match publisher.publish(items_body(&items).as_bytes()).await {
            Ok(200) => {}
            Ok(_) | Err(_) => publish_errors += 1,
        }
    }
    let expected = (held * k) as u64;
    let deadline = Instant::now() + Duration::from_secs_f64(drain.clamp(0.1, 600.0));
    wait_received(
        &subs.shared,
        expected,
        Duration::from_secs_f64(drain.clamp(0.1, 600.0)),
        deadline,
    )
    .await;
    let cpu1 = t.cpu_s();
    let gen1 = own_cpu_s();
    let (results, _) = stop_all(subs).await;

    // Per delivery latency; per message the latency of the last subscriber to get it.
    let mut lat_ms = Vec::with_capacity(held * k);
    let mut last_ms = vec![f64::NAN; k];
    let mut unique = 0u64;
    let mut duplicates = 0u64;
    let mut sub_errors = 0usize;
    let mut seen = vec![false; k];
    for r in &results {
        seen.iter_mut().for_each(|s| *s = false);
        if r.error.is_some() {
            sub_errors += 1;
        }
        for &(seq, lat) in &r.deliveries {
            let Some(s) = seen.get_mut(seq as usize) else {
                continue;
            };
            if *s {
                duplicates += 1;
                continue;
            }
            *s = true;
            unique += 1;
            let ms = lat as f64 / 1e6;
            lat_ms.push(ms);
            let slot = &mut last_ms[seq as usize];
            if slot.is_nan() || *slot < ms {
                *slot = ms;
            }
        }
    }
    sort(&mut lat_ms);
    let mut last: Vec<f64> = last_ms.into_iter().filter(|x| !x.is_nan()).collect();
    sort(&mut last);
    let cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) if unique > 0 => Some(r3((b - a) * 1e6 / unique as f64)),
        _ => None,
    };
    let lost = expected.saturating_sub(unique);
    let v = json!({
        "scenario": "fanout",
        "label": t.label,
        "n": n,
        "k": k,
        "rate": rate,
        "held": held,
        "open_errors": open_errors,
        "open_error_kinds": open_kinds,
        "publish_errors": publish_errors,
        "expected": expected,
        "delivered": unique,
        "duplicates": duplicates,
        "lost": lost,
        "subscriber_errors": sub_errors,
        "latency_ms_p50": r3(pct(&lat_ms, 50.0)),
        "latency_ms_p99": r3(pct(&lat_ms, 99.0)),
        "latency_ms_max": r3(pct(&lat_ms, 100.0)),
        "last_subscriber_ms_p50": r3(pct(&last, 50.0)),
        "last_subscriber_ms_max": r3(pct(&last, 100.0)),
        "cpu_s": match (cpu0, cpu1) { (Some(a), Some(b)) => Some(r3(b - a)), _ => None },
        "cpu_us_per_delivery": cpu_us,
        "generator_cpu_s": r3(gen1 - gen0),
    });
    eprintln!(
        "[{}] fanout {n}x{k}: {held} subscribed, {unique}/{expected} delivered ({lost} lost), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, last-subscriber max {:.1} ms, {:?} us CPU/delivery",
        t.label,
        pct(&lat_ms, 50.0),
        pct(&lat_ms, 99.0),
        pct(&lat_ms, 100.0),
        pct(&last, 100.0),
        cpu_us
    );
    Ok(v)
}

/// Options of the throughput scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ThroughputOpts {
    /// Channels (M).
    pub(crate) channels: usize,
    /// Subscribers per channel (S).
    pub(crate) subs: usize,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Items per POST /publish/.
    #[arg(long, default_value_t = 100)]
    pub(crate) batch: usize,
    /// Concurrent publishing connections (each sends its next POST when the last is answered).
    #[arg(long, default_value_t = 4)]
    pub(crate) publishers: usize,
    /// Pause publishing while more than this many deliveries are outstanding (0: flat out).
    #[arg(long, default_value_t = 0)]
    pub(crate) window: u64,
    /// Seconds without a delivery after publishing ends before counting the rest as lost.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) drain: f64,
}

/// throughput M S: M channels x S subscribers, publish flat out for a fixed time.
pub(crate) async fn throughput(
    t: &Target,
    publish: SocketAddr,
    o: &ThroughputOpts,
) -> Result<Value> {
    t.check()?;
    ensure!(
        publish.ip().is_loopback(),
        "publish address must be loopback"
    );
    ensure!(
        o.channels > 0 && o.subs > 0 && o.batch > 0 && o.publishers > 0,
        "sizes must be positive"
    );
    let m = o.channels;
    let tag = now_ns() % 1_000_000;
    let est = t
        .open(m * o.subs, move |i| format!("/stream/tp{tag}-{}", i % m))
        .await;
    let held = est.held.len();
    let open_errors = est.errors;
    let open_kinds = errors_json(&est);
    let subs = subscribe_all(est, move |i| i % m);
    // Subscribers per channel that actually got held.
    let mut subs_on = vec![0u64; m];
    for &c in &subs.channel_of {
        subs_on[c] += 1;
    }
    let subs_on = Arc::new(subs_on);
    t.settle().await;

    let gen0 = own_cpu_s();
    let cpu0 = t.cpu_s();
    let start = Instant::now();
    let start_ns = now_ns();
    let end = start + Duration::from_secs_f64(o.duration.clamp(0.1, 3600.0));
    let published_deliveries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut pubs = Vec::new();
    for p in 0..o.publishers {
        let shared = subs.shared.clone();
        let published_deliveries = published_deliveries.clone();
        let subs_on = subs_on.clone();
        let (batch, window, n_pub) = (o.batch, o.window, o.publishers);
        pubs.push(tokio::spawn(async move {
            let mine: Vec<usize> = (p..m).step_by(n_pub).collect();
            let mut seqs = vec![0u64; mine.len()];
            let mut pending = vec![0u64; mine.len()];
            let names: Vec<String> = mine.iter().map(|c| format!("tp{tag}-{c}")).collect();
            let mut publisher = Publisher::new(publish);
            let mut errors = 0usize;
            let mut posts = 0usize;
            let mut cursor = 0usize;
            let mut items = String::new();
            if mine.is_empty() {
                return (mine, seqs, errors, posts);
            }
            // Bounded by the deadline `end`.
            while Instant::now() < end {
                if window > 0 {
                    let outstanding = published_deliveries
                        .load(Ordering::Relaxed)
                        .saturating_sub(shared.received.load(Ordering::Relaxed));
                    if outstanding > window {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                }
                items.clear();
                let mut deliveries = 0;
                let first = cursor;
                for _ in 0..batch {
                    let j = cursor % mine.len();
                    cursor += 1;
                    // Items of one batch on the same channel get consecutive seqs.
                    let seq = seqs[j] + pending[j];
                    pending[j] += 1;
                    push_item(&mut items, &names[j], seq, now_ns());
                    deliveries += subs_on[mine[j]];
                }
                posts += 1;
                let ok = matches!(
                    publisher.publish(items_body(&items).as_bytes()).await,
                    Ok(200)
                );
                for c in first..cursor {
                    let j = c % mine.len();
                    if ok {
                        seqs[j] += pending[j];
                    }
                    pending[j] = 0;
                }
                if ok {
                    published_deliveries.fetch_add(deliveries, Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            (mine, seqs, errors, posts)
        }));
    }
    let mut published = vec![0u64; m];
    let mut publish_errors = 0;
    let mut posts = 0;
    for p in pubs {
        if let Ok((mine, seqs, errors, n)) = p.await {
            for (c, s) in mine.into_iter().zip(seqs) {
                published[c] = s;
            }
            publish_errors += errors;
            posts += n;
        }
    }
    let publish_s = start.elapsed().as_secs_f64();
    let expected: u64 = published
        .iter()
        .zip(subs_on.iter())
        .map(|(p, s)| p * s)
        .sum();
    let drain = Duration::from_secs_f64(o.drain.clamp(0.1, 600.0));
    wait_received(&subs.shared, expected, drain, Instant::now() + drain * 10).await;
    let cpu1 = t.cpu_s();
    let gen1 = own_cpu_s();
    let last_rx_ns = subs.shared.last_rx_ns.load(Ordering::Relaxed);
    let (results, channel_of) = stop_all(subs).await;

    let mut unique = 0u64;
    let mut lat_ms = Vec::new();
    let mut sub_errors = 0;
    for (r, c) in results.iter().zip(&channel_of) {
        if r.error.is_some() {
            sub_errors += 1;
        }
        let mut seqs: Vec<u32> = r
            .deliveries
            .iter()
            .map(|d| d.0)
            .filter(|s| u64::from(*s) < published[*c])
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        unique += seqs.len() as u64;
        lat_ms.extend(r.deliveries.iter().map(|d| d.1 as f64 / 1e6));
    }
    sort(&mut lat_ms);
    let span_s = (last_rx_ns.saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    let per_s = unique as f64 / span_s;
    let lost = expected.saturating_sub(unique);
    let cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) if unique > 0 => Some(r3((b - a) * 1e6 / unique as f64)),
        _ => None,
    };
    let v = json!({
        "scenario": "throughput",
        "label": t.label,
        "channels": m,
        "subs": o.subs,
        "duration_s": o.duration,
        "batch": o.batch,
        "publishers": o.publishers,
        "window": o.window,
        "held": held,
        "open_errors": open_errors,
        "open_error_kinds": open_kinds,
        "posts": posts,
        "publish_errors": publish_errors,
        "published_items": published.iter().sum::<u64>(),
        "publish_s": r3(publish_s),
        "expected": expected,
        "delivered": unique,
        "lost": lost,
        "subscriber_errors": sub_errors,
        "span_s": r3(span_s),
        "deliveries_per_s": r3(per_s),
        "latency_ms_p50": r3(pct(&lat_ms, 50.0)),
        "latency_ms_p99": r3(pct(&lat_ms, 99.0)),
        "cpu_us_per_delivery": cpu_us,
        "generator_cpu_s": r3(gen1 - gen0),
    });
    eprintln!(
        "[{}] throughput {m}x{}: {held} subscribed, {unique}/{expected} delivered ({lost} lost) in {span_s:.2} s = {per_s:.0} deliveries/s, {:?} us CPU/delivery",
        t.label, o.subs, cpu_us
    );
    Ok(v)
}
