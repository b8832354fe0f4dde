//! ZeroMQ publish intake (Pushpin-compatible): a PULL socket (default `tcp://127.0.0.1:5560`),
//! a SUB socket (default bind `tcp://127.0.0.1:5562`, or connect to several publishers) and a
//! ZRPC command socket (ROUTER, default `tcp://127.0.0.1:5563`).
//!
//! Architecture invariants:
//! - This is the only module that touches the `zmq` crate, and every zmq socket lives on one
//!   dedicated OS thread (`gripd-zmq`). The thread polls with a timeout of at most
//!   [`POLL_INTERVAL`] and leaves when the shutdown token is cancelled (or `Running` is dropped).
//! - The thread calls `Hub::publish` directly: it is synchronous and never waits for
//!   subscribers (one short shard lock), so ZeroMQ floods cannot block the tokio runtime. Each
//!   socket gives up the turn after [`BATCH_MAX`] messages, so one busy socket cannot starve the
//!   others; what cannot be read yet waits inside libzmq, bounded by `publish.zmq_hwm`.
//! - Malformed input (truncated tnetstrings, invalid JSON, multipart PULL messages, missing
//!   channel) is logged and skipped, never fatal: Pushpin 1.36's handler exits on `T3:abc`.
//!   Warnings are rate-limited ([`WARN_BURST`] per [`WARN_WINDOW`], then a summary line) and
//!   counted in `gripd_dropped_total{reason="zmq_invalid"}`.
//! - The SUB socket is subscribed to a channel only while the hub has subscribers for it
//!   (`Hub::watch_interest`), and unsubscribed `hold.subscription_linger_secs` after the last one
//!   leaves, so an XPUB publisher sees `\x01ch` / `\x00ch` and can skip idle channels.
//!
//! The message parsing and the ZRPC command handling are plain functions over bytes (always
//! compiled and unit-tested); only the socket thread needs the `zmq` cargo feature.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use grip::tnetstring::{self, Tn};
use grip::PublishItem;

use crate::hub::Hub;
use crate::metrics::Metrics;

/// Messages read from one socket per loop turn before the next socket gets its turn.
pub const BATCH_MAX: usize = 256;
/// Longest `zmq_poll` wait: bounds how late shutdown, subscription changes and linger expiry
/// are noticed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Malformed-message warnings logged per socket in one [`WARN_WINDOW`]; the rest are counted
/// and summarised in one line when the window ends.
pub const WARN_BURST: u32 = 10;
/// See [`WARN_BURST`].
pub const WARN_WINDOW: Duration = Duration::from_secs(10);

/// The ZeroMQ endpoints gripd actually uses (a `tcp://host:*` spec resolved to its real port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZmqEndpoints {
    /// The PULL socket's bound endpoint; `None` when disabled (empty spec).
    pub pull: Option<String>,
    /// The SUB socket's bound endpoints, or the publisher specs it connects to.
    pub sub: Vec<String>,
    /// Whether the SUB socket connects (`publish.zmq_sub_connect`) rather than binds.
    pub sub_connect: bool,
    /// The command (ROUTER) socket's bound endpoint; `None` when disabled.
    pub command: Option<String>,
}

/// ZRPC error conditions (Pushpin's names).
const BAD_REQUEST: &str = "bad-request";
const METHOD_NOT_FOUND: &str = "method-not-found";

// === impl ZmqEndpoints ===

impl ZmqEndpoints {
    /// The `get-zmq-uris` answer: `command`, `publish-pull`, and `publish-sub` (the first SUB
    /// endpoint, only when bound, as Pushpin does).
    fn uris(&self) -> Tn {
        let mut d = Vec::new();
        let mut put = |k: &'static str, v: &str| {
            d.push((
                Bytes::from_static(k.as_bytes()),
                Tn::Bytes(Bytes::copy_from_slice(v.as_bytes())),
            ))
        };
        if let Some(c) = &self.command {
            put("command", c);
        }
        if let Some(p) = &self.pull {
            put("publish-pull", p);
        }
        if let (false, Some(s)) = (self.sub_connect, self.sub.first()) {
            put("publish-sub", s);
        }
        Tn::Dict(d)
    }
}

/// Decodes one item payload: `J` + JSON object, `T` + tnetstring, or a bare tnetstring.
pub fn decode_item(payload: &[u8], require_channel: bool) -> Result<PublishItem, String> {
    match payload.first() {
        None => Err("empty message".into()),
        Some(b'J') => {
            let v: serde_json::Value =
                serde_json::from_slice(&payload[1..]).map_err(|e| format!("invalid JSON: {e}"))?;
            if !v.is_object() {
                return Err("JSON item is not an object".into());
            }
            PublishItem::from_json(&v, require_channel).map_err(|e| e.to_string())
        }
        Some(b'T') => tn_item(&payload[1..], require_channel),
        Some(_) => tn_item(payload, require_channel),
    }
}

fn tn_item(bytes: &[u8], require_channel: bool) -> Result<PublishItem, String> {
    let v = tnetstring::parse_exact(bytes).map_err(|e| e.to_string())?;
    if !matches!(v, Tn::Dict(_)) {
        return Err("tnetstring item is not a dict".into());
    }
    PublishItem::from_tnetstring(&v, require_channel).map_err(|e| e.to_string())
}

/// A PULL message: exactly one frame carrying an item with its `channel`.
pub fn decode_pull(frames: &[Vec<u8>]) -> Result<PublishItem, String> {
    match frames {
        [frame] => decode_item(frame, true),
        _ => Err(format!(
            "expected 1 frame, got {} (multipart messages are not accepted)",
            frames.len()
        )),
    }
}

/// A SUB message: `[channel, payload]`; the topic frame is the channel, whatever the payload says.
pub fn decode_sub(frames: &[Vec<u8>]) -> Result<PublishItem, String> {
    let [topic, payload] = frames else {
        return Err(format!("expected 2 frames, got {}", frames.len()));
    };
    let channel =
        std::str::from_utf8(topic).map_err(|_| "channel frame is not UTF-8".to_string())?;
    if channel.is_empty() {
        return Err("empty channel frame".into());
    }
    let mut item = decode_item(payload, false)?;
    item.channel = channel.to_string();
    Ok(item)
}

/// Answers one ZRPC request (a tnetstring dict `{id, method, args}`) and returns the encoded
/// reply. `Err` means the request is not even a tnetstring: there is nothing to answer.
///
/// Methods: `publish` (`{items: [...]}`, validated whole before any item is published, as the
/// HTTP API does), `get-zmq-uris`, `recover`, `refresh` (`{channel}` refreshes that channel's
/// sessions; `{cid}` is accepted and ignored: gripd has no zhttp connection ids), `conncheck`
/// (always an empty list, for the same reason). Anything else: `method-not-found`.
pub fn handle_command(
    payload: &[u8],
    hub: &Hub,
    metrics: &Metrics,
    endpoints: &ZmqEndpoints,
) -> Result<Vec<u8>, String> {
    let req = tnetstring::parse_exact(payload).map_err(|e| e.to_string())?;
    let id = req.get("id").cloned();
    let result = run_command(&req, hub, metrics, endpoints);
    let mut reply = Vec::new();
    if let Some(id) = id {
        reply.push((Bytes::from_static(b"id"), id));
    }
    let key = |k: &'static str| Bytes::from_static(k.as_bytes());
    match result {
        Ok(value) => {
            reply.push((key("success"), Tn::Bool(true)));
            reply.push((key("value"), value));
        }
        Err((condition, message)) => {
            tracing::debug!(condition, %message, "zmq command failed");
            reply.push((key("success"), Tn::Bool(false)));
            reply.push((key("condition"), text(condition)));
            reply.push((key("value"), text(&message)));
        }
    }
    Ok(tnetstring::encode(&Tn::Dict(reply)))
}

type CommandResult = Result<Tn, (&'static str, String)>;

fn run_command(req: &Tn, hub: &Hub, metrics: &Metrics, endpoints: &ZmqEndpoints) -> CommandResult {
    let bad = |m: &str| Err((BAD_REQUEST, m.to_string()));
    if !matches!(req, Tn::Dict(_)) {
        return bad("request is not a dict");
    }
    let method = match req.get("method") {
        Some(Tn::Bytes(m)) => String::from_utf8_lossy(m).into_owned(),
        Some(_) => return bad("'method' is not a string"),
        None => return bad("request has no 'method'"),
    };
    let empty = Tn::Dict(Vec::new());
    let args = match req.get("args") {
        None | Some(Tn::Null) => &empty,
        Some(a @ Tn::Dict(_)) => a,
        Some(_) => return bad("'args' is not a dict"),
    };
    tracing::debug!(%method, "zmq command");
    match method.as_str() {
        "publish" => {
            let Some(items) = args.get("items") else {
                return bad("Invalid format: object does not contain 'items'");
            };
            let Tn::List(items) = items else {
                return bad("Invalid format: object contains 'items' with wrong type");
            };
            let items = items
                .iter()
                .map(|v| PublishItem::from_tnetstring(v, true))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| (BAD_REQUEST, e.to_string()))?;
            let count = items.len();
            for item in items {
                hub.publish(Arc::new(item));
            }
            metrics.publish_zmq.inc_by(count as u64);
            Ok(Tn::Null)
        }
        "get-zmq-uris" => Ok(endpoints.uris()),
        "recover" => {
            hub.recover();
            Ok(Tn::Null)
        }
        "refresh" => match (args.get("channel"), args.get("cid")) {
            (Some(Tn::Bytes(ch)), _) => {
                hub.update_channel(&String::from_utf8_lossy(ch));
                Ok(Tn::Null)
            }
            // gripd has no zhttp connection ids: nothing to refresh by id.
            (None, Some(Tn::Bytes(_))) => Ok(Tn::Null),
            _ => bad("refresh needs a 'channel' or 'cid' string"),
        },
        "conncheck" => match args.get("ids") {
            // No zhttp connection ids exist in gripd, so none is "still connected".
            Some(Tn::List(_)) => Ok(Tn::List(Vec::new())),
            _ => bad("conncheck needs an 'ids' list"),
        },
        _ => Err((METHOD_NOT_FOUND, format!("unknown method {method:?}"))),
    }
}

fn text(s: &str) -> Tn {
    Tn::Bytes(Bytes::copy_from_slice(s.as_bytes()))
}

#[cfg(feature = "zmq")]
pub use socket::start;

/// Without the `zmq` feature: warn when ZeroMQ inputs are configured, and run without them.
#[cfg(not(feature = "zmq"))]
pub fn start(
    config: &crate::config::Config,
    _hub: Arc<Hub>,
    _metrics: Arc<Metrics>,
    _shutdown: &crate::shutdown::Shutdown,
) -> std::io::Result<Option<(ZmqEndpoints, tokio_util::sync::DropGuard)>> {
    if !(config.zmq_pull.is_empty()
        && config.zmq_command.is_empty()
        && config.zmq_sub.iter().all(String::is_empty))
    {
        tracing::warn!("gripd was built without the zmq feature: ZeroMQ publish inputs are off");
    }
    Ok(None)
}

#[cfg(feature = "zmq")]
mod socket {
    //! The socket thread.

    use std::collections::{HashMap, HashSet};
    use std::io;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc::error::TryRecvError;
    use tokio::sync::mpsc::UnboundedReceiver;
    use tokio::time::Instant;
    use tokio_util::sync::{CancellationToken, DropGuard};

    use super::{
        decode_pull, decode_sub, handle_command, ZmqEndpoints, BATCH_MAX, POLL_INTERVAL,
        WARN_BURST, WARN_WINDOW,
    };
    use crate::config::Config;
    use crate::hub::{Hub, Interest};
    use crate::metrics::Metrics;
    use crate::shutdown::Shutdown;

    /// How long `start` waits for the thread to bind its sockets.
    const BIND_TIMEOUT: Duration = Duration::from_secs(10);

    /// What the thread needs from `Config`.
    struct Settings {
        pull: String,
        sub: Vec<String>,
        sub_connect: bool,
        command: String,
        hwm: i32,
        linger: Duration,
    }

    struct Sockets {
        pull: Option<zmq::Socket>,
        sub: Option<zmq::Socket>,
        command: Option<zmq::Socket>,
        endpoints: ZmqEndpoints,
    }

    /// The SUB socket's subscriptions, following the hub's channel interest.
    struct SubState {
        interest: UnboundedReceiver<Interest>,
        subscribed: HashSet<Arc<str>>,
        /// Channels that lost their last subscriber, and when to unsubscribe them.
        lingering: HashMap<Arc<str>, Instant>,
        linger: Duration,
    }

    /// Rate-limits "message skipped" warnings for one socket.
    struct WarnLimit {
        socket: &'static str,
        window_start: Instant,
        logged: u32,
        suppressed: u64,
    }

    /// Starts the ZeroMQ thread when at least one socket is configured. Binds (or connects)
    /// every socket before returning, so a taken port fails startup; returns the endpoints and
    /// a guard that stops the thread when dropped (it also stops on `shutdown.token`).
    pub fn start(
        config: &Config,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        shutdown: &Shutdown,
    ) -> io::Result<Option<(ZmqEndpoints, DropGuard)>> {
        let settings = Settings {
            pull: config.zmq_pull.clone(),
            sub: config
                .zmq_sub
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            sub_connect: config.zmq_sub_connect,
            command: config.zmq_command.clone(),
            hwm: config.zmq_hwm,
            linger: config.subscription_linger,
        };
        if settings.pull.is_empty() && settings.sub.is_empty() && settings.command.is_empty() {
            return Ok(None);
        }
        let token = shutdown.token.child_token();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_token = token.clone();
        std::thread::Builder::new()
            .name("gripd-zmq".into())
            .spawn(move || {
                let ctx = zmq::Context::new();
                let sockets = match open(&ctx, &settings) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(sockets.endpoints.clone()));
                run(sockets, &settings, &hub, &metrics, &thread_token);
                drop(ctx);
                drop(done_tx);
            })?;
        let endpoints = match ready_rx.recv_timeout(BIND_TIMEOUT) {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => return Err(io::Error::other(e)),
            Err(_) => return Err(io::Error::other("zeromq thread did not start")),
        };
        if let Some(p) = &endpoints.pull {
            tracing::info!(endpoint = %p, "zmq pull listener ready");
        }
        for s in &endpoints.sub {
            if endpoints.sub_connect {
                tracing::info!(endpoint = %s, "zmq sub connecting");
            } else {
                tracing::info!(endpoint = %s, "zmq sub listener ready");
            }
        }
        if let Some(c) = &endpoints.command {
            tracing::info!(endpoint = %c, "zmq command listener ready");
        }
        // Shutdown waits (bounded by its deadline) for the thread to close its sockets.
        shutdown.tracker.spawn(async move {
            let _ = done_rx.await;
        });
        Ok(Some((endpoints, token.drop_guard())))
    }

    fn open(ctx: &zmq::Context, s: &Settings) -> Result<Sockets, String> {
        let mut endpoints = ZmqEndpoints {
            sub_connect: s.sub_connect,
            ..Default::default()
        };
        let pull = if s.pull.is_empty() {
            None
        } else {
            let sock = socket(ctx, zmq::PULL, s.hwm, "publish.zmq_pull")?;
            endpoints.pull = Some(bind(&sock, &s.pull, "publish.zmq_pull")?);
            Some(sock)
        };
        let sub = if s.sub.is_empty() {
            None
        } else {
            let sock = socket(ctx, zmq::SUB, s.hwm, "publish.zmq_sub")?;
            for spec in &s.sub {
                if s.sub_connect {
                    sock.connect(spec)
                        .map_err(|e| format!("publish.zmq_sub: cannot connect to {spec}: {e}"))?;
                    endpoints.sub.push(spec.clone());
                } else {
                    endpoints.sub.push(bind(&sock, spec, "publish.zmq_sub")?);
                }
            }
            Some(sock)
        };
        let command = if s.command.is_empty() {
            None
        } else {
            let sock = socket(ctx, zmq::ROUTER, s.hwm, "publish.zmq_command")?;
            endpoints.command = Some(bind(&sock, &s.command, "publish.zmq_command")?);
            Some(sock)
        };
        Ok(Sockets {
            pull,
            sub,
            command,
            endpoints,
        })
    }

    fn socket(
        ctx: &zmq::Context,
        kind: zmq::SocketType,
        hwm: i32,
        key: &str,
    ) -> Result<zmq::Socket, String> {
        let e = |e: zmq::Error| format!("{key}: cannot create socket: {e}");
        let sock = ctx.socket(kind).map_err(e)?;
        // Closing must never wait for unsent replies.
        sock.set_linger(0).map_err(e)?;
        sock.set_rcvhwm(hwm).map_err(e)?;
        sock.set_sndhwm(hwm).map_err(e)?;
        Ok(sock)
    }

    /// Binds and reads back the real endpoint (`tcp://127.0.0.1:*` → the chosen port).
    fn bind(sock: &zmq::Socket, spec: &str, key: &str) -> Result<String, String> {
        sock.bind(spec)
            .map_err(|e| format!("{key}: cannot bind {spec}: {e}"))?;
        match sock.get_last_endpoint() {
            Ok(Ok(ep)) => Ok(ep),
            _ => Ok(spec.to_string()),
        }
    }

    fn run(
        sockets: Sockets,
        settings: &Settings,
        hub: &Hub,
        metrics: &Metrics,
        token: &CancellationToken,
    ) {
        let mut sub_state = sockets.sub.as_ref().map(|_| SubState {
            interest: hub.watch_interest(),
            subscribed: HashSet::new(),
            lingering: HashMap::new(),
            linger: settings.linger,
        });
        let mut pull_warn = WarnLimit::new("pull");
        let mut sub_warn = WarnLimit::new("sub");
        let mut cmd_warn = WarnLimit::new("command");
        while !token.is_cancelled() {
            let now = Instant::now();
            let mut timeout = POLL_INTERVAL;
            if let (Some(state), Some(sock)) = (sub_state.as_mut(), sockets.sub.as_ref()) {
                state.update(sock, hub, now);
                if let Some(next) = state.next_deadline() {
                    timeout = timeout.min(next.saturating_duration_since(now));
                }
            }
            for w in [&mut pull_warn, &mut sub_warn, &mut cmd_warn] {
                w.flush(now);
            }
            let (pull_ready, sub_ready, cmd_ready) = match wait(&sockets, timeout) {
                Ok(r) => r,
                Err(e) => {
                    if e != zmq::Error::EINTR {
                        tracing::warn!(error = %e, "zmq poll failed");
                        std::thread::sleep(POLL_INTERVAL);
                    }
                    continue;
                }
            };
            if let (true, Some(sock)) = (pull_ready, sockets.pull.as_ref()) {
                drain(sock, &mut pull_warn, metrics, |frames| {
                    let item = decode_pull(&frames)?;
                    hub.publish(Arc::new(item));
                    metrics.publish_zmq.inc();
                    Ok(())
                });
            }
            if let (true, Some(sock)) = (sub_ready, sockets.sub.as_ref()) {
                drain(sock, &mut sub_warn, metrics, |frames| {
                    let item = decode_sub(&frames)?;
                    hub.publish(Arc::new(item));
                    metrics.publish_zmq.inc();
                    Ok(())
                });
            }
            if let (true, Some(sock)) = (cmd_ready, sockets.command.as_ref()) {
                drain(sock, &mut cmd_warn, metrics, |mut frames| {
                    // ROUTER: [peer id, (empty delimiter from REQ), payload]. Everything before the
                    // payload is the envelope, echoed back so REQ and DEALER peers both work.
                    let payload = match frames.pop() {
                        Some(p) if !frames.is_empty() => p,
                        _ => return Err("command message without an envelope".into()),
                    };
                    let reply = handle_command(&payload, hub, metrics, &sockets.endpoints)
                        .map_err(|e| format!("command is not a tnetstring: {e}"))?;
                    frames.push(reply);
                    if let Err(e) = sock.send_multipart(frames, zmq::DONTWAIT) {
                        tracing::debug!(error = %e, "zmq command reply not sent");
                    }
                    Ok(())
                });
            }
        }
        tracing::debug!("zmq thread stopped");
    }

    /// Waits up to `timeout` for any socket to be readable.
    fn wait(s: &Sockets, timeout: Duration) -> Result<(bool, bool, bool), zmq::Error> {
        let socks = [s.pull.as_ref(), s.sub.as_ref(), s.command.as_ref()];
        let mut items: Vec<zmq::PollItem<'_>> = socks
            .iter()
            .flatten()
            .map(|s| s.as_poll_item(zmq::POLLIN))
            .collect();
        let ms = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        zmq::poll(&mut items, ms)?;
        let mut ready = items.iter().map(|i| i.is_readable());
        let mut next = |present: bool| present && ready.next().unwrap_or(false);
        Ok((
            next(socks[0].is_some()),
            next(socks[1].is_some()),
            next(socks[2].is_some()),
        ))
    }

    /// Handles up to `BATCH_MAX` waiting messages; a message `handle` rejects is logged and
    /// counted, and the next one is read.
    fn drain(
        sock: &zmq::Socket,
        warn: &mut WarnLimit,
        metrics: &Metrics,
        mut handle: impl FnMut(Vec<Vec<u8>>) -> Result<(), String>,
    ) {
        for _ in 0..BATCH_MAX {
            match sock.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => {
                    if let Err(reason) = handle(frames) {
                        metrics.dropped_zmq_invalid.inc();
                        warn.warn(&reason);
                    }
                }
                Err(zmq::Error::EAGAIN) => return,
                Err(e) => {
                    tracing::warn!(socket = warn.socket, error = %e, "zmq receive failed");
                    return;
                }
            }
        }
    }

    // === impl SubState ===

    impl SubState {
        /// Applies interest changes and expired lingers to the SUB socket's subscriptions.
        fn update(&mut self, sock: &zmq::Socket, hub: &Hub, now: Instant) {
            loop {
                match self.interest.try_recv() {
                    Ok(Interest::Added(ch)) => {
                        self.lingering.remove(&ch);
                        if !ch.is_empty() && self.subscribed.insert(ch.clone()) {
                            set(sock, &ch, true);
                        }
                    }
                    Ok(Interest::Removed(ch)) => {
                        if self.subscribed.contains(&ch) {
                            self.lingering.insert(ch, now + self.linger);
                        }
                    }
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            }
            if self.lingering.values().any(|t| *t <= now) {
                let expired: Vec<Arc<str>> = self
                    .lingering
                    .iter()
                    .filter(|(_, t)| **t <= now)
                    .map(|(c, _)| c.clone())
                    .collect();
                for ch in expired {
                    self.lingering.remove(&ch);
                    // Interest events are sent outside the hub's locks and may arrive out of
                    // order: the hub's current state decides.
                    if !hub.has_channel(&ch) && self.subscribed.remove(&ch) {
                        set(sock, &ch, false);
                    }
                }
            }
        }

        fn next_deadline(&self) -> Option<Instant> {
            self.lingering.values().min().copied()
        }
    }

    fn set(sock: &zmq::Socket, channel: &str, subscribe: bool) {
        let r = if subscribe {
            sock.set_subscribe(channel.as_bytes())
        } else {
            sock.set_unsubscribe(channel.as_bytes())
        };
        match r {
            Ok(()) => tracing::debug!(channel, subscribe, "zmq sub subscription changed"),
            Err(e) => tracing::warn!(channel, error = %e, "zmq sub subscription change failed"),
        }
    }

    // === impl WarnLimit ===

    impl WarnLimit {
        fn new(socket: &'static str) -> WarnLimit {
            WarnLimit {
                socket,
                window_start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }
        }

        fn warn(&mut self, reason: &str) {
            self.flush(Instant::now());
            if self.logged < WARN_BURST {
                self.logged += 1;
                tracing::warn!(socket = self.socket, error = %reason, "zmq message skipped");
            } else {
                self.suppressed += 1;
            }
        }

        /// Ends the window when it is over, summarising what was not logged.
        fn flush(&mut self, now: Instant) {
            if now.saturating_duration_since(self.window_start) < WARN_WINDOW {
                return;
            }
            if self.suppressed > 0 {
                tracing::warn!(
                    socket = self.socket,
                    skipped = self.suppressed,
                    window = ?WARN_WINDOW,
                    "more malformed zmq messages skipped (warnings suppressed)"
                );
            }
            self.window_start = now;
            self.logged = 0;
            self.suppressed = 0;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
