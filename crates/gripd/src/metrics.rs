//! Every metric gripd exports, in one place, served in Prometheus text format at `/metrics`
//! on the control (publish) listener.
//!
//! Rules: names are `gripd_*`; channel names, paths and client addresses never become labels;
//! hot paths hold pre-resolved handles (plain atomics), never a label lookup per message.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Handles to every metric, shared as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    /// Open client connections.
    pub connections_active: Gauge,
    /// Requests answered by pass-through proxying.
    pub requests_passthrough: Counter,
    /// Requests that got GRIP instructions from the origin.
    pub requests_grip: Counter,
    /// Requests that failed (origin down, timeout, bad instructions).
    pub requests_error: Counter,
    /// Held long-polls.
    pub held_response: Gauge,
    /// Held streams.
    pub held_stream: Gauge,
    /// Held WebSockets.
    pub held_ws: Gauge,
    /// Channels with at least one subscriber.
    pub channels_active: Gauge,
    /// (connection, channel) subscriptions.
    pub subscriptions_active: Gauge,
    /// Items accepted over HTTP.
    pub publish_http: Counter,
    /// Items accepted over ZeroMQ.
    pub publish_zmq: Counter,
    /// Items queued to connections.
    pub deliveries: Counter,
    /// Items dropped because a connection's queue was full.
    pub dropped_queue_full: Counter,
    /// Items dropped as duplicates (id seen within `id_cache_ttl`).
    pub dropped_duplicate: Counter,
    /// Items dropped by the sequencer (too many waiting on a channel).
    pub dropped_sequence: Counter,
    /// ZeroMQ messages skipped as malformed (bad encoding, missing channel, wrong frame count).
    pub dropped_zmq_invalid: Counter,
    /// Next-link and retry requests made by gripd itself.
    pub origin_refreshes: Counter,
    /// The runtime's worker threads (`server.worker_threads`).
    pub worker_threads: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gripd");
        let connections_active = Gauge::default();
        registry.register(
            "connections_active",
            "Open client connections",
            connections_active.clone(),
        );

        let requests = Family::<Labels, Counter>::default();
        registry.register("requests", "Client requests by outcome", requests.clone());
        let held = Family::<Labels, Gauge>::default();
        registry.register("held_active", "Held connections by mode", held.clone());
        let channels_active = Gauge::default();
        registry.register(
            "channels_active",
            "Channels with subscribers",
            channels_active.clone(),
        );
        let subscriptions_active = Gauge::default();
        registry.register(
            "subscriptions_active",
            "Connection-channel subscriptions",
            subscriptions_active.clone(),
        );
        let publish = Family::<Labels, Counter>::default();
        registry.register(
            "publish_items",
            "Items published, by source",
            publish.clone(),
        );
        let deliveries = Counter::default();
        registry.register(
            "deliveries",
            "Items queued to held connections",
            deliveries.clone(),
        );
        let dropped = Family::<Labels, Counter>::default();
        registry.register("dropped", "Items not delivered, by reason", dropped.clone());
        let origin_refreshes = Counter::default();
        registry.register(
            "origin_refreshes",
            "Next-link fetches and long-poll retries made by gripd",
            origin_refreshes.clone(),
        );
        let worker_threads = Gauge::default();
        registry.register(
            "worker_threads",
            "Runtime worker threads serving connections",
            worker_threads.clone(),
        );

        let c = |f: &Family<Labels, Counter>, k: &'static str, v: &'static str| {
            f.get_or_create(&vec![(k, v)]).clone()
        };
        let g = |f: &Family<Labels, Gauge>, v: &'static str| {
            f.get_or_create(&vec![("mode", v)]).clone()
        };
        Metrics {
            connections_active,
            requests_passthrough: c(&requests, "outcome", "passthrough"),
            requests_grip: c(&requests, "outcome", "grip"),
            requests_error: c(&requests, "outcome", "error"),
            held_response: g(&held, "response"),
            held_stream: g(&held, "stream"),
            held_ws: g(&held, "ws"),
            channels_active,
            subscriptions_active,
            publish_http: c(&publish, "source", "http"),
            publish_zmq: c(&publish, "source", "zmq"),
            deliveries,
            dropped_queue_full: c(&dropped, "reason", "queue_full"),
            dropped_duplicate: c(&dropped, "reason", "duplicate"),
            dropped_sequence: c(&dropped, "reason", "sequence_overflow"),
            dropped_zmq_invalid: c(&dropped, "reason", "zmq_invalid"),
            origin_refreshes,
            worker_threads,
            registry,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Decrements a gauge when dropped: ties "active" gauges to the lifetime of what they count.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: &Gauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
