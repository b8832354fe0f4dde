//! Shared load-generation pieces: opening many held connections with bounded
//! concurrency, subscriber tasks that timestamp every delivery, and small statistics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::http::{open_get, Head};
use crate::sse::EventReader;

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A held connection whose response head has arrived.
pub(crate) struct Held {
    pub(crate) idx: usize,
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
    pub(crate) head: Head,
}

pub(crate) struct Established {
    pub(crate) held: Vec<Held>,
    pub(crate) errors: usize,
    /// Error kinds and how often each happened.
    pub(crate) error_kinds: BTreeMap<String, usize>,
    /// Time from connect to response head, per successful connection, in ms.
    pub(crate) head_ms: Vec<f64>,
    pub(crate) elapsed: Duration,
}

pub(crate) type PathFn = Arc<dyn Fn(usize) -> String + Send + Sync>;

/// Opens `n` connections to `target`, `GET path(i)` on each, with at most
/// `concurrency` connections waiting for their response head at a time.
/// A connection counts as held when its head arrives with status 200.
pub(crate) async fn establish(
    target: SocketAddr,
    n: usize,
    concurrency: usize,
    path: PathFn,
    timeout: Duration,
) -> Established {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let next = next.clone();
        let path = path.clone();
        workers.push(tokio::spawn(async move {
            let mut held = Vec::new();
            let mut head_ms = Vec::new();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            // Bounded: each iteration takes a fresh index below n.
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                let p = path(i);
                match tokio::time::timeout(timeout, open_get(target, i, &p)).await {
                    Ok(Ok((stream, buf, head))) if head.status == 200 => {
                        head_ms.push(t.elapsed().as_secs_f64() * 1e3);
                        held.push(Held {
                            idx: i,
                            stream,
                            buf,
                            head,
                        });
                    }
                    Ok(Ok((_, _, head))) => {
                        *errors.entry(format!("status {}", head.status)).or_default() += 1;
                    }
                    Ok(Err(e)) => {
                        let mut kind = format!("{e:#}");
                        kind.truncate(80);
                        *errors.entry(kind).or_default() += 1;
                    }
                    Err(_) => *errors.entry("timeout".to_owned()).or_default() += 1,
                }
            }
            (held, head_ms, errors)
        }));
    }
    let mut out = Established {
        held: Vec::with_capacity(n),
        errors: 0,
        error_kinds: BTreeMap::new(),
        head_ms: Vec::with_capacity(n),
        elapsed: Duration::ZERO,
    };
    for w in workers {
        match w.await {
            Ok((held, head_ms, errors)) => {
                out.held.extend(held);
                out.head_ms.extend(head_ms);
                for (k, v) in errors {
                    out.errors += v;
                    *out.error_kinds.entry(k).or_default() += v;
                }
            }
            Err(e) => {
                out.errors += 1;
                *out.error_kinds.entry(format!("worker: {e}")).or_default() += 1;
            }
        }
    }
    out.elapsed = start.elapsed();
    out.held.sort_by_key(|h| h.idx);
    out
}

/// Counters shared by all subscriber tasks.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) received: AtomicU64,
    pub(crate) last_rx_ns: AtomicU64,
}

/// What one subscriber saw: `(seq, latency_ns)` per delivery.
pub(crate) struct SubResult {
    pub(crate) deliveries: Vec<(u32, u64)>,
    pub(crate) error: Option<String>,
}

/// Reads a held stream until `stop` fires or the body ends, timestamping each event.
pub(crate) async fn subscriber(
    held: Held,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> SubResult {
    let Held {
        mut stream,
        mut buf,
        head,
        ..
    } = held;
    let mut reader = EventReader::new(&head);
    let mut deliveries = Vec::new();
    let mut error = None;
    let mut record = |buf: &mut BytesMut, deliveries: &mut Vec<(u32, u64)>| {
        let now = now_ns();
        let before = deliveries.len();
        let alive = reader.feed(buf, |seq, ts| {
            deliveries.push((
                u32::try_from(seq).unwrap_or(u32::MAX),
                now.saturating_sub(ts),
            ));
        });
        let got = (deliveries.len() - before) as u64;
        if got > 0 {
            shared.received.fetch_add(got, Ordering::Relaxed);
            shared.last_rx_ns.fetch_max(now, Ordering::Relaxed);
        }
        alive
    };
    match record(&mut buf, &mut deliveries) {
        Ok(true) => {}
        Ok(false) => {
            return SubResult {
                deliveries,
                error: Some("body ended".into()),
            }
        }
        Err(e) => {
            return SubResult {
                deliveries,
                error: Some(format!("{e:#}")),
            }
        }
    }
    // Bounded by the stop signal, which the scenario always sends after its deadline.
    loop {
        if *stop.borrow() {
            break;
        }
        buf.reserve(4096);
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) => {
                    error = Some("closed by proxy".into());
                    break;
                }
                Ok(_) => match record(&mut buf, &mut deliveries) {
                    Ok(true) => {}
                    Ok(false) => {
                        error = Some("body ended".into());
                        break;
                    }
                    Err(e) => {
                        error = Some(format!("{e:#}"));
                        break;
                    }
                },
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            },
            _ = stop.changed() => break,
        }
    }
    SubResult { deliveries, error }
}

/// Waits until `shared.received` reaches `expected`, or nothing arrived for `idle`,
/// or `deadline` passes.
pub(crate) async fn wait_received(
    shared: &Shared,
    expected: u64,
    idle: Duration,
    deadline: Instant,
) {
    let mut last = shared.received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while Instant::now() < deadline {
        let now = shared.received.load(Ordering::Relaxed);
        if now >= expected {
            return;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= idle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Percentile `p` (0..=100) of sorted `v`; NaN (JSON null) when empty.
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn sort(v: &mut [f64]) {
    v.sort_by(f64::total_cmp);
}

/// Rounds for display in JSON.
pub(crate) fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 50.0), 50.0);
        assert_eq!(pct(&v, 99.0), 99.0);
        assert_eq!(pct(&v, 100.0), 100.0);
        assert!(pct(&[], 50.0).is_nan());
    }
}
