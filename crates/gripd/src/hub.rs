//! The channel hub: which held connection listens to which channel, and fan-out of publishes.
//!
//! Architecture invariants:
//! - **Publishers never wait for subscribers.** `Hub::publish` takes one shard lock, runs the
//!   channel's sequencer and `try_send`s an `Arc` of the item to each subscriber's bounded queue.
//!   No per-subscriber allocation, no awaiting, no global lock (channels are spread over shards).
//! - **Drop policy:** each connection has one queue of `connection_queue_max` (default 100, as
//!   Pushpin's PUBLISH_QUEUE_MAX). When it is full the *newest* item is dropped for that
//!   connection (as Pushpin does) and counted in `gripd_dropped_total{reason="queue_full"}`.
//! - A channel's entry disappears when its last subscriber leaves; its sequencing state goes
//!   with it (as Pushpin forgets a channel's last id when it loses all subscribers).
//! - Every source of publishes (HTTP, ZeroMQ, later Redis/Postgres) calls `Hub::publish`.
//!
//! Sequencing (Pushpin's sequencer): when a channel has subscribers and an item has a `prev-id`
//! that does not follow the channel's last id, the item waits up to `message_wait` for its
//! predecessor; an item id seen on the channel within `id_cache_ttl` is dropped; `no-seq` skips
//! both.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use grip::PublishItem;
use slab::Slab;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::queue;

/// Number of independently locked channel maps.
const SHARDS: usize = 64;
/// Items waiting for a missing predecessor, per channel (Pushpin: 100); older ones are released.
pub const SEQUENCE_PENDING_MAX: usize = 100;
/// How often the hub's timer looks for due work (sequencer expiry, first-subscription updates).
pub const TICK: Duration = Duration::from_millis(100);

/// What a held connection receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A published item for one of its channels.
    Item(Arc<PublishItem>),
    /// Refresh from the origin: re-fetch the next link (streams) or retry the request
    /// (long-polls). Sent after a channel's first subscription, on `recover`, and on `hint`.
    Update,
}

/// Which publish format a subscriber takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Long-poll: takes `http-response`.
    Response,
    /// Streaming: takes `http-stream`.
    Stream,
    /// WebSocket: takes `ws-message`.
    Ws,
}

/// The sending half of a connection's queue.
pub type DeliveryTx = queue::Sender<Delivery>;
/// A sender that does not keep the queue open.
pub type WeakDeliveryTx = queue::WeakSender<Delivery>;
/// The receiving half of a connection's queue.
pub type DeliveryRx = queue::Receiver<Delivery>;

/// Hub settings, taken from `Config`.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub message_wait: Duration,
    pub id_cache_ttl: Duration,
    pub update_on_first_subscription: bool,
    pub first_subscription_update: Duration,
}

/// Channel interest changes, for inputs that subscribe upstream (ZeroMQ SUB, Redis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    Added(Arc<str>),
    Removed(Arc<str>),
}

/// The registry of channels and their subscribers.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    config: HubConfig,
    metrics: Arc<Metrics>,
    /// Channels that need attention from the ticker (first-subscription update, pending items).
    due: Mutex<Vec<(Instant, Arc<str>, DueKind)>>,
    /// Optional listener for channel interest changes.
    interest: Mutex<Option<mpsc::UnboundedSender<Interest>>>,
}

/// A connection's membership in one channel; leaving is dropping it.
pub struct Subscription {
    hub: Arc<Hub>,
    channel: Arc<str>,
    key: usize,
}

#[derive(Default)]
struct Shard {
    channels: HashMap<Arc<str>, Channel>,
}

struct Channel {
    /// The channel's name, shared with the map key.
    name: Arc<str>,
    subs: Slab<Subscriber>,
    /// Last sequenced id published on this channel.
    last_id: Option<String>,
    /// Items waiting for their predecessor, with their arrival time.
    pending: VecDeque<(Instant, Arc<PublishItem>)>,
    /// Recently seen ids, oldest first.
    seen: VecDeque<(Instant, String)>,
}

struct Subscriber {
    mode: Mode,
    tx: DeliveryTx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DueKind {
    FirstSubscription,
    Pending,
}

// === impl Hub ===

impl Hub {
    pub fn new(config: HubConfig, metrics: Arc<Metrics>) -> Arc<Hub> {
        Arc::new(Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            config,
            metrics,
            due: Mutex::new(Vec::new()),
            interest: Mutex::new(None),
        })
    }

    /// A new bounded queue for one connection.
    pub fn queue(capacity: usize) -> (DeliveryTx, DeliveryRx) {
        queue::bounded(capacity)
    }

    /// Registers a listener for channel interest changes; it first receives every current channel.
    pub fn watch_interest(&self) -> mpsc::UnboundedReceiver<Interest> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut guard = lock(&self.interest);
        for shard in self.shards.iter() {
            for name in lock(shard).channels.keys() {
                let _ = tx.send(Interest::Added(name.clone()));
            }
        }
        *guard = Some(tx);
        rx
    }

    /// Subscribes a connection's queue to `channel`.
    pub fn subscribe(self: &Arc<Self>, channel: &str, mode: Mode, tx: DeliveryTx) -> Subscription {
        let mut shard = self.shard(channel);
        let (name, created) = match shard.channels.get_key_value(channel) {
            Some((k, _)) => (k.clone(), false),
            None => (Arc::<str>::from(channel), true),
        };
        let ch = shard
            .channels
            .entry(name.clone())
            .or_insert_with(|| Channel {
                name: name.clone(),
                subs: Slab::new(),
                last_id: None,
                pending: VecDeque::new(),
                seen: VecDeque::new(),
            });
        let key = ch.subs.insert(Subscriber { mode, tx });
        drop(shard);
        self.metrics.subscriptions_active.inc();
        if created {
            self.metrics.channels_active.inc();
            if let Some(tx) = lock(&self.interest).as_ref() {
                let _ = tx.send(Interest::Added(name.clone()));
            }
            if self.config.update_on_first_subscription {
                lock(&self.due).push((
                    Instant::now() + self.config.first_subscription_update,
                    name.clone(),
                    DueKind::FirstSubscription,
                ));
            }
        }
        Subscription {
            hub: self.clone(),
            channel: name,
            key,
        }
    }

    /// Publishes one item; returns how many queues it reached. Never waits.
    pub fn publish(&self, item: Arc<PublishItem>) -> usize {
        let mut shard = self.shard(&item.channel);
        let Some(ch) = shard.channels.get_mut(item.channel.as_str()) else {
            return 0;
        };
        let now = Instant::now();
        if !item.no_seq {
            if let Some(id) = &item.id {
                if !self.config.id_cache_ttl.is_zero() {
                    ch.expire_seen(now, self.config.id_cache_ttl);
                    if ch.seen.iter().any(|(_, s)| s == id) {
                        self.metrics.dropped_duplicate.inc();
                        return 0;
                    }
                    ch.seen.push_back((now, id.clone()));
                }
            }
            if let (Some(last), Some(prev)) = (&ch.last_id, &item.prev_id) {
                if last != prev && !self.config.message_wait.is_zero() {
                    if ch.pending.len() >= SEQUENCE_PENDING_MAX {
                        self.metrics.dropped_sequence.inc();
                        return 0;
                    }
                    let first = ch.pending.is_empty();
                    ch.pending.push_back((now, item.clone()));
                    if first {
                        let name = ch.name.clone();
                        drop(shard);
                        lock(&self.due).push((
                            now + self.config.message_wait,
                            name,
                            DueKind::Pending,
                        ));
                    }
                    return 0;
                }
            }
        }
        let mut sent = self.deliver(ch, &item);
        if !item.no_seq {
            ch.last_id = item.id.clone();
            sent += self.release_chain(ch);
        }
        sent
    }

    /// Sends an `Update` to every subscriber of `channel` (hint, recover).
    pub fn update_channel(&self, channel: &str) {
        let shard = self.shard(channel);
        if let Some(ch) = shard.channels.get(channel) {
            for (_, sub) in ch.subs.iter() {
                let _ = sub.tx.try_send(Delivery::Update);
            }
        }
    }

    /// Forgets every channel's last id and refreshes every session (`recover`).
    pub fn recover(&self) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            for ch in shard.channels.values_mut() {
                ch.last_id = None;
                for (_, sub) in ch.subs.iter() {
                    if sub.mode != Mode::Ws {
                        let _ = sub.tx.try_send(Delivery::Update);
                    }
                }
            }
        }
    }

    /// The last sequenced id of a channel, if it has subscribers and one is known.
    pub fn last_id(&self, channel: &str) -> Option<String> {
        self.shard(channel)
            .channels
            .get(channel)
            .and_then(|c| c.last_id.clone())
    }

    /// Whether `channel` has at least one subscriber.
    pub fn has_channel(&self, channel: &str) -> bool {
        self.shard(channel).channels.contains_key(channel)
    }

    /// Number of channels with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).channels.len()).sum()
    }

    /// Closes every queue: held streams end, long-polls answer, WebSockets close.
    pub fn close_all(&self) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            for ch in shard.channels.values_mut() {
                ch.subs.clear();
            }
        }
    }

    /// Runs due work until the token is cancelled: releases items that waited `message_wait`
    /// and sends first-subscription updates.
    pub async fn run_ticker(self: Arc<Self>, token: tokio_util::sync::CancellationToken) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = interval.tick() => self.tick(Instant::now()),
            }
        }
    }

    fn tick(&self, now: Instant) {
        let due: Vec<_> = {
            let mut due = lock(&self.due);
            if due.is_empty() {
                return;
            }
            let (ready, later): (Vec<_>, Vec<_>) = due.drain(..).partition(|(t, _, _)| *t <= now);
            *due = later;
            ready
        };
        for (_, channel, kind) in due {
            match kind {
                DueKind::FirstSubscription => self.update_channel(&channel),
                DueKind::Pending => self.release_expired(&channel, now),
            }
        }
    }

    /// Delivers pending items that have waited `message_wait`, in arrival order.
    fn release_expired(&self, channel: &str, now: Instant) {
        let mut shard = self.shard(channel);
        let Some(ch) = shard.channels.get_mut(channel) else {
            return;
        };
        while let Some((at, _)) = ch.pending.front() {
            if *at + self.config.message_wait > now {
                break;
            }
            let Some((_, item)) = ch.pending.pop_front() else {
                break;
            };
            self.deliver(ch, &item);
            ch.last_id = item.id.clone();
            self.release_chain(ch);
        }
        if let Some((at, _)) = ch.pending.front() {
            let next = *at + self.config.message_wait;
            let name = ch.name.clone();
            drop(shard);
            lock(&self.due).push((next, name, DueKind::Pending));
        }
    }

    /// Delivers pending items whose predecessor has just gone out.
    fn release_chain(&self, ch: &mut Channel) -> usize {
        let mut sent = 0;
        while let Some(pos) = ch
            .pending
            .iter()
            .position(|(_, it)| it.prev_id.is_some() && it.prev_id == ch.last_id)
        {
            let Some((_, item)) = ch.pending.remove(pos) else {
                break;
            };
            sent += self.deliver(ch, &item);
            ch.last_id = item.id.clone();
        }
        sent
    }

    fn deliver(&self, ch: &Channel, item: &Arc<PublishItem>) -> usize {
        let mut sent = 0usize;
        let mut dropped = 0u64;
        for (_, sub) in ch.subs.iter() {
            let wanted = match sub.mode {
                Mode::Response => item.http_response.is_some(),
                Mode::Stream => item.http_stream.is_some(),
                Mode::Ws => item.ws_message.is_some(),
            };
            if !wanted {
                continue;
            }
            match sub.tx.try_send(Delivery::Item(item.clone())) {
                Ok(()) => sent += 1,
                Err(queue::TrySendError::Full(_)) => dropped += 1,
                Err(queue::TrySendError::Closed(_)) => {}
            }
        }
        self.metrics.deliveries.inc_by(sent as u64);
        if dropped > 0 {
            self.metrics.dropped_queue_full.inc_by(dropped);
        }
        sent
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        lock(&self.shards[(h.finish() as usize) % self.shards.len()])
    }

    fn unsubscribe(&self, channel: &Arc<str>, key: usize) {
        let mut shard = self.shard(channel);
        let removed = match shard.channels.entry(channel.clone()) {
            Entry::Occupied(mut e) => {
                if e.get().subs.contains(key) {
                    e.get_mut().subs.remove(key);
                }
                if e.get().subs.is_empty() {
                    e.remove();
                    true
                } else {
                    false
                }
            }
            Entry::Vacant(_) => false,
        };
        drop(shard);
        self.metrics.subscriptions_active.dec();
        if removed {
            self.metrics.channels_active.dec();
            if let Some(tx) = lock(&self.interest).as_ref() {
                let _ = tx.send(Interest::Removed(channel.clone()));
            }
        }
    }
}

// === impl Channel ===

impl Channel {
    fn expire_seen(&mut self, now: Instant, ttl: Duration) {
        while let Some((at, _)) = self.seen.front() {
            if *at + ttl > now {
                break;
            }
            self.seen.pop_front();
        }
    }
}

// === impl Subscription ===

impl Subscription {
    /// The channel this subscription is for.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.channel, self.key);
    }
}

/// Locks a mutex, recovering from poisoning: hub state stays usable even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hub() -> Arc<Hub> {
        Hub::new(
            HubConfig {
                message_wait: Duration::from_millis(5000),
                id_cache_ttl: Duration::from_secs(60),
                update_on_first_subscription: false,
                first_subscription_update: Duration::from_secs(1),
            },
            Arc::new(Metrics::new()),
        )
    }

    fn item(ch: &str, id: Option<&str>, prev: Option<&str>) -> Arc<PublishItem> {
        let mut v =
            serde_json::json!({"channel": ch, "http-stream": {"content": id.unwrap_or("x")}});
        if let Some(id) = id {
            v["id"] = id.into();
        }
        if let Some(p) = prev {
            v["prev-id"] = p.into();
        }
        Arc::new(PublishItem::from_json(&v, true).unwrap())
    }

    fn content(d: Delivery) -> String {
        match d {
            Delivery::Item(i) => {
                String::from_utf8(i.http_stream.as_ref().unwrap().content.to_vec()).unwrap()
            }
            Delivery::Update => "update".into(),
        }
    }

    #[tokio::test]
    async fn fan_out_and_gc() {
        let hub = hub();
        let (tx1, mut rx1) = Hub::queue(10);
        let (tx2, mut rx2) = Hub::queue(10);
        let s1 = hub.subscribe("a", Mode::Stream, tx1);
        let s2 = hub.subscribe("a", Mode::Stream, tx2);
        assert_eq!(hub.publish(item("a", None, None)), 2);
        assert_eq!(content(rx1.try_recv().unwrap()), "x");
        assert_eq!(content(rx2.try_recv().unwrap()), "x");
        drop(s1);
        assert_eq!(hub.channel_count(), 1);
        drop(s2);
        assert_eq!(hub.channel_count(), 0);
        assert_eq!(hub.publish(item("a", None, None)), 0);
    }

    #[tokio::test]
    async fn full_queue_drops_newest() {
        let hub = hub();
        let (tx, mut rx) = Hub::queue(2);
        let _s = hub.subscribe("a", Mode::Stream, tx);
        for i in 0..5 {
            hub.publish(item("a", Some(&i.to_string()), None));
        }
        assert_eq!(content(rx.try_recv().unwrap()), "0");
        assert_eq!(content(rx.try_recv().unwrap()), "1");
        assert!(rx.try_recv().is_err());
        assert_eq!(hub.metrics.dropped_queue_full.get(), 3);
    }

    #[tokio::test]
    async fn mode_selects_format() {
        let hub = hub();
        let (tx, mut rx) = Hub::queue(10);
        let _s = hub.subscribe("a", Mode::Response, tx);
        assert_eq!(hub.publish(item("a", None, None)), 0);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn reorders_by_prev_id() {
        let hub = hub();
        let (tx, mut rx) = Hub::queue(10);
        let _s = hub.subscribe("a", Mode::Stream, tx);
        hub.publish(item("a", Some("1"), None));
        hub.publish(item("a", Some("3"), Some("2")));
        assert_eq!(content(rx.try_recv().unwrap()), "1");
        assert!(rx.try_recv().is_err());
        hub.publish(item("a", Some("2"), Some("1")));
        assert_eq!(content(rx.try_recv().unwrap()), "2");
        assert_eq!(content(rx.try_recv().unwrap()), "3");
    }

    #[tokio::test(start_paused = true)]
    async fn gap_released_after_message_wait() {
        let hub = hub();
        let (tx, mut rx) = Hub::queue(10);
        let _s = hub.subscribe("a", Mode::Stream, tx);
        hub.publish(item("a", Some("1"), None));
        hub.publish(item("a", Some("3"), Some("2")));
        assert_eq!(content(rx.try_recv().unwrap()), "1");
        tokio::time::advance(Duration::from_millis(4900)).await;
        hub.tick(Instant::now());
        assert!(rx.try_recv().is_err());
        tokio::time::advance(Duration::from_millis(200)).await;
        hub.tick(Instant::now());
        assert_eq!(content(rx.try_recv().unwrap()), "3");
    }

    #[tokio::test]
    async fn duplicate_ids_dropped_and_no_seq_bypasses() {
        let hub = hub();
        let (tx, mut rx) = Hub::queue(10);
        let _s = hub.subscribe("a", Mode::Stream, tx);
        hub.publish(item("a", Some("1"), None));
        hub.publish(item("a", Some("1"), None));
        assert_eq!(content(rx.try_recv().unwrap()), "1");
        assert!(rx.try_recv().is_err());
        let mut v = serde_json::json!({"channel": "a", "id": "9", "prev-id": "8", "no-seq": true, "http-stream": {"content": "n"}});
        v["no-seq"] = true.into();
        hub.publish(Arc::new(PublishItem::from_json(&v, true).unwrap()));
        assert_eq!(content(rx.try_recv().unwrap()), "n");
    }
}
