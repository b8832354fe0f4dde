//! WebSockets: the client's upgrade is answered by gripd itself (hyper's upgrade mechanism), and
//! the socket is then served by one tracked session task.
//!
//! - [`passthrough`]: routes without `over_http`. gripd opens a WebSocket to the origin and relays
//!   frames both ways. When the origin's 101 carries `Sec-WebSocket-Extensions: grip` (or the
//!   target has `sub=`) the session is GRIP-enabled: `c:` control messages, `m:`-prefixed data.
//! - [`woh`]: WebSocket-over-HTTP (`over_http`). gripd keeps the socket and speaks
//!   `application/websocket-events` to the origin in short POSTs, one in flight at a time.
//!
//! Both share [`GripSession`]: subscriptions in the hub (mode `Ws`, one bounded queue per
//! connection, the hub's drop-newest policy), `ws-message` publishes, control messages, meta and
//! keep-alives.
//!
//! Invariants:
//! - The session holds only a *weak* sender of its queue, so `Hub::close_all` (shutdown) closes
//!   it; the session also watches the shutdown token. Either way the client gets close 1001.
//! - Every session task is spawned through the shutdown tracker.
//! - Messages are bounded by `MESSAGE_MAX` in both directions; pongs are answered by gripd itself
//!   (tungstenite), so pongs from the other side are not relayed (they would arrive twice).
//! - A session never awaits a write while it stops reading: sockets are split, and what goes to a
//!   peer waits in that peer's [`Outbox`], written by its own `select!` arm. A side is read only
//!   while the outbox it feeds is (nearly) empty, so memory stays bounded and a peer that is slow
//!   to read slows down only the direction towards it (no deadlock when both peers send at once).

use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use grip::{Action, KeepAliveMode, PublishItem, WsControl, WsMessageType};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::error::ProxyError;
use crate::hub::{Delivery, DeliveryRx, Hub, Mode, Subscription, WeakDeliveryTx};
use crate::metrics::GaugeGuard;
use crate::origin::{self, Body, ClientRequest};
use crate::proxy::State;
use crate::routes::Route;

mod passthrough;
mod woh;

/// Largest WebSocket message or frame gripd accepts from either side (16 MiB).
pub const MESSAGE_MAX: usize = 16 << 20;
/// How long the client's upgrade may take to complete after the 101 was sent.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closing session waits for the other side's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a session ending on shutdown waits for the client's close answer (well inside the
/// default 5 s shutdown deadline).
const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Largest control-frame payload (RFC 6455 §5.5).
const CONTROL_PAYLOAD_MAX: usize = 125;
/// Close code sent on shutdown ("going away").
const CLOSE_GOING_AWAY: u16 = 1001;

/// The client's socket after the upgrade.
type ClientWs = WebSocketStream<TokioIo<Upgraded>>;

/// What the client asked for, as far as the WebSocket paths need it.
pub struct Handshake {
    pub peer: SocketAddr,
    pub https: bool,
    pub host: String,
    pub path_and_query: String,
}

/// Serves a WebSocket upgrade request on `route`.
pub async fn serve(
    state: &Arc<State>,
    route: Arc<Route>,
    mut req: Request<Incoming>,
    hs: Handshake,
) -> Result<Response<Body>, ProxyError> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or_else(|| ProxyError::BadRequest("Missing Sec-WebSocket-Key.".into()))?;
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    if req.method() != http::Method::GET || !version_ok {
        return Err(ProxyError::BadRequest(
            "Not a WebSocket handshake (GET with Sec-WebSocket-Version: 13).".into(),
        ));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();
    let mut headers = parts.headers;
    origin::clean_request_headers(&mut headers);
    headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    headers.remove(header::CONTENT_LENGTH);
    let request = ClientRequest {
        method: parts.method,
        path_and_query: hs.path_and_query,
        headers,
        body: Some(Bytes::new()),
        peer: hs.peer,
        https: hs.https,
        host: hs.host,
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let over_http = route.targets.first().is_some_and(|t| t.over_http);
    if over_http {
        woh::open(state, route, request, on_upgrade, accept).await
    } else {
        passthrough::open(state, route, request, on_upgrade, accept).await
    }
}

/// Whether a plain request carries WebSocket-over-HTTP events (clients may not send those).
pub fn is_events_request(headers: &HeaderMap) -> bool {
    woh::is_events(headers)
}

/// The 101 response to the client: `headers` (already cleaned) plus the upgrade headers.
fn switching_protocols(mut headers: HeaderMap, accept: &str) -> Response<Body> {
    origin::clean_response_headers(&mut headers);
    for name in [
        header::SEC_WEBSOCKET_EXTENSIONS,
        header::SEC_WEBSOCKET_ACCEPT,
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    let mut resp = Response::new(origin::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    resp
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MESSAGE_MAX))
        .max_frame_size(Some(MESSAGE_MAX))
}

/// Waits for the client's upgrade (bounded) and wraps it as a server-side WebSocket.
async fn client_socket(on_upgrade: OnUpgrade) -> Option<ClientWs> {
    match tokio::time::timeout(UPGRADE_TIMEOUT, on_upgrade).await {
        Ok(Ok(io)) => Some(
            WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(ws_config()))
                .await,
        ),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "client upgrade failed");
            None
        }
        Err(_) => {
            tracing::debug!("client upgrade timed out");
            None
        }
    }
}

/// Whether an origin's `Sec-WebSocket-Extensions` enables GRIP, and with which message prefix.
fn grip_extension(headers: &HeaderMap) -> Option<Bytes> {
    let items = grip::parse_header_items(
        headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .map(|v| v.as_bytes()),
    )
    .ok()?;
    let item = items
        .iter()
        .find(|i| i.first.eq_ignore_ascii_case("grip"))?;
    Some(Bytes::from(
        item.param_value("message-prefix")
            .unwrap_or(DEFAULT_PREFIX)
            .to_string(),
    ))
}

/// Data prefix of GRIP WebSocket messages when the origin names none.
const DEFAULT_PREFIX: &str = "m:";

/// A close frame with `code` and `reason`.
fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    }
}

/// A message of `kind` with `content`; invalid UTF-8 text goes out as binary, control payloads
/// are cut to 125 bytes.
fn message(kind: WsMessageType, content: Bytes) -> Message {
    match kind {
        WsMessageType::Text => match Utf8Bytes::try_from(content.clone()) {
            Ok(t) => Message::Text(t),
            Err(_) => Message::Binary(content),
        },
        WsMessageType::Binary => Message::Binary(content),
        WsMessageType::Ping => {
            Message::Ping(content.slice(..content.len().min(CONTROL_PAYLOAD_MAX)))
        }
        WsMessageType::Pong => {
            Message::Pong(content.slice(..content.len().min(CONTROL_PAYLOAD_MAX)))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GRIP session state, shared by both kinds of sessions

/// What a publish or a control message asks the session to do.
#[derive(Debug)]
enum Effect {
    /// Send this message to the client.
    Send(Message),
    /// Close the client with this frame.
    Close(Option<CloseFrame>),
    /// Drop the origin side; the client stays (`detach`).
    Detach,
    /// WebSocket-over-HTTP: ask the origin now (`action: refresh`).
    Refresh,
}

/// What an origin data message turned out to be in GRIP mode.
enum FromOrigin {
    Relay(Message),
    Control(WsControl),
    Drop,
}

/// A channel a WebSocket session is subscribed to.
struct WsChannel {
    /// Full (route-prefixed) name.
    name: String,
    filters: Vec<String>,
    /// From the target's `sub=`: cannot be unsubscribed.
    implicit: bool,
    _sub: Subscription,
}

struct WsKeepAlive {
    message: Message,
    every: Duration,
    mode: KeepAliveMode,
}

/// Subscriptions, meta, keep-alive and delayed message of one GRIP WebSocket session.
struct GripSession {
    state: Arc<State>,
    route: Arc<Route>,
    /// Weak: only subscriptions hold strong senders, so the hub closing them ends the session.
    tx: WeakDeliveryTx,
    rx: DeliveryRx,
    channels: Vec<WsChannel>,
    /// Connection meta (`set-meta`, `Set-Meta-*`), for filters and `Meta-*` headers.
    meta: BTreeMap<String, String>,
    /// Data prefix of origin messages (`None`: not in GRIP mode, relay as is).
    prefix: Option<Bytes>,
    keep_alive: Option<WsKeepAlive>,
    ka_deadline: Instant,
    delayed: Option<(Instant, Message)>,
    _held: GaugeGuard,
}

impl GripSession {
    fn new(state: &Arc<State>, route: &Arc<Route>, prefix: Option<Bytes>, subs: &[String]) -> Self {
        let (tx, rx) = Hub::queue(state.config.connection_queue_max);
        let mut s = GripSession {
            state: state.clone(),
            route: route.clone(),
            tx: tx.downgrade(),
            rx,
            channels: Vec::new(),
            meta: BTreeMap::new(),
            prefix,
            keep_alive: None,
            ka_deadline: Instant::now(),
            delayed: None,
            _held: GaugeGuard::new(&state.metrics.held_ws),
        };
        for c in subs {
            s.subscribe(c, Vec::new(), true);
        }
        drop(tx);
        s
    }

    fn subscribe(&mut self, channel: &str, filters: Vec<String>, implicit: bool) {
        let name = match &self.route.props.prefix {
            Some(p) => format!("{p}{channel}"),
            None => channel.to_string(),
        };
        if let Some(c) = self.channels.iter_mut().find(|c| c.name == name) {
            c.filters = filters;
            return;
        }
        let max = self.state.config.connection_subscription_max;
        if self.channels.len() >= max {
            tracing::debug!(channel = %name, max, "too many subscriptions, ignoring subscribe");
            return;
        }
        let tx = match self.tx.upgrade() {
            Some(tx) => tx,
            None => {
                // Every subscription was dropped, and the queue with them: start a fresh one.
                let (tx, rx) = Hub::queue(self.state.config.connection_queue_max);
                self.rx = rx;
                self.tx = tx.downgrade();
                tx
            }
        };
        let sub = self.state.hub.subscribe(&name, Mode::Ws, tx);
        self.channels.push(WsChannel {
            name,
            filters,
            implicit,
            _sub: sub,
        });
    }

    fn unsubscribe(&mut self, channel: &str) {
        let name = match &self.route.props.prefix {
            Some(p) => format!("{p}{channel}"),
            None => channel.to_string(),
        };
        self.channels.retain(|c| c.implicit || c.name != name);
    }

    /// The next delivery; `None` when the hub closed the queue (shutdown). Never resolves while
    /// the session has no subscriptions (its queue is then closed on purpose).
    async fn recv(&mut self) -> Option<Delivery> {
        if self.channels.is_empty() {
            return std::future::pending().await;
        }
        self.rx.recv().await
    }

    /// The effect of a publish on this session, if any.
    fn publish(&self, item: &PublishItem) -> Option<Effect> {
        let fmt = item.ws_message.as_ref()?;
        let ch = self.channels.iter().find(|c| c.name == item.channel)?;
        match fmt.action {
            Action::Send => {}
            Action::Close => {
                return Some(Effect::Close(fmt.close_code.map(|code| {
                    close_frame(code, fmt.close_reason.as_deref().unwrap_or(""))
                })))
            }
            Action::Refresh => return Some(Effect::Refresh),
            Action::Hint => return None,
        }
        let prev_ids = BTreeMap::new();
        let names: Vec<&str> = self.channels.iter().map(|c| c.name.as_str()).collect();
        let subscribed = |c: &str| names.contains(&c);
        let fctx = grip::FilterContext {
            sub_meta: &self.meta,
            pub_meta: &item.meta,
            prev_ids: &prev_ids,
            subscribed: &subscribed,
        };
        if !grip::should_deliver(&ch.filters, &fctx) {
            return None;
        }
        let content = if ch.filters.is_empty() {
            fmt.content.clone()
        } else {
            match grip::apply_content_filters(&ch.filters, &fctx, fmt.content.clone()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(channel = %ch.name, error = %e, "content filter failed, dropped");
                    return None;
                }
            }
        };
        Some(Effect::Send(message(fmt.kind, content)))
    }

    /// Classifies a data message from the origin (GRIP mode): control, prefixed data, or dropped.
    fn classify_origin(&self, kind: WsMessageType, data: Bytes) -> FromOrigin {
        let Some(prefix) = &self.prefix else {
            return FromOrigin::Relay(message(kind, data));
        };
        if kind == WsMessageType::Text {
            if let Some(json) = data.strip_prefix(b"c:") {
                return match grip::parse_ws_control(json) {
                    Ok(c) => FromOrigin::Control(c),
                    Err(e) => {
                        tracing::debug!(error = %e, "ignoring bad grip control message");
                        FromOrigin::Drop
                    }
                };
            }
        }
        if data.starts_with(prefix) {
            FromOrigin::Relay(message(kind, data.slice(prefix.len()..)))
        } else {
            tracing::debug!("dropping unprefixed message");
            FromOrigin::Drop
        }
    }

    /// Applies a control message from the origin.
    fn control(&mut self, c: WsControl) -> Option<Effect> {
        match c {
            WsControl::Subscribe { channel, filters } => self.subscribe(&channel, filters, false),
            WsControl::Unsubscribe { channel } => self.unsubscribe(&channel),
            WsControl::Detach => return Some(Effect::Detach),
            WsControl::Session { .. } => {}
            WsControl::SetMeta { name, value } => self.set_meta(&name, value),
            WsControl::KeepAlive {
                content,
                timeout_secs,
                mode,
                message_type,
            } => {
                self.keep_alive = content.map(|c| WsKeepAlive {
                    message: message(message_type, c),
                    every: Duration::from_secs(timeout_secs.max(1)),
                    mode,
                });
                self.sent();
                if let Some(ka) = &self.keep_alive {
                    self.ka_deadline = Instant::now() + ka.every;
                }
            }
            WsControl::SendDelayed {
                content,
                timeout_secs,
                message_type,
            } => {
                // As Pushpin: a message still waiting is sent now, then this one waits.
                let at = Instant::now() + Duration::from_secs(timeout_secs);
                let waiting = self.delayed.replace((at, message(message_type, content)));
                return waiting.map(|(_, m)| Effect::Send(m));
            }
            WsControl::FlushDelayed => {
                return self.delayed.take().map(|(_, m)| Effect::Send(m));
            }
            WsControl::Close { code, reason } => {
                return Some(Effect::Close(
                    code.map(|c| close_frame(c, reason.as_deref().unwrap_or(""))),
                ))
            }
        }
        None
    }

    fn set_meta(&mut self, name: &str, value: Option<String>) {
        let name = name.to_ascii_lowercase();
        match value.filter(|v| !v.is_empty()) {
            Some(v) => {
                self.meta.insert(name, v);
            }
            None => {
                self.meta.remove(&name);
            }
        }
    }

    /// A message went to the client: an idle keep-alive starts over.
    fn sent(&mut self) {
        if let Some(ka) = &self.keep_alive {
            if ka.mode == KeepAliveMode::Idle {
                self.ka_deadline = Instant::now() + ka.every;
            }
        }
    }

    /// When the session's next timer (keep-alive or delayed message) is due.
    fn next_timer(&self) -> Option<Instant> {
        let ka = self.keep_alive.as_ref().map(|_| self.ka_deadline);
        let delayed = self.delayed.as_ref().map(|(at, _)| *at);
        match (ka, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Messages due at `now` (a keep-alive, the delayed message).
    fn on_timer(&mut self, now: Instant) -> Vec<Message> {
        let mut out = Vec::new();
        if self.delayed.as_ref().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, m)) = self.delayed.take() {
                out.push(m);
            }
        }
        if let Some(ka) = &self.keep_alive {
            if self.ka_deadline <= now {
                out.push(ka.message.clone());
                self.ka_deadline = now + ka.every;
            }
        }
        out
    }
}

/// Messages on their way to one peer: filled by the session loop, written by its own `select!`
/// arm ([`Outbox::write`]) so that the loop keeps reading the other side meanwhile.
struct Outbox<S> {
    sink: S,
    queue: VecDeque<Message>,
    /// Payload bytes in `queue`.
    bytes: usize,
    /// Something went to the sink (or must be flushed) since the last completed flush.
    unflushed: bool,
}

impl<S: Sink<Message, Error = WsError> + Unpin> Outbox<S> {
    fn new(sink: S) -> Self {
        Outbox {
            sink,
            queue: VecDeque::new(),
            bytes: 0,
            unflushed: false,
        }
    }

    fn push(&mut self, m: Message) {
        self.bytes += m.len();
        self.queue.push_back(m);
    }

    /// No message waits (the last one may still be in the socket's buffer).
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Payload bytes waiting.
    fn bytes(&self) -> usize {
        self.bytes
    }

    /// There is something to write or flush: the writing arm should run.
    fn busy(&self) -> bool {
        !self.queue.is_empty() || self.unflushed
    }

    /// Asks for a flush (e.g. of an answer tungstenite queued by itself).
    fn request_flush(&mut self) {
        self.unflushed = true;
    }

    /// Forgets what is waiting (the peer is gone).
    fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
        self.unflushed = false;
    }

    /// Writes every waiting message and flushes. Cancel-safe: a message leaves the queue only
    /// when the sink takes it, and a cancelled flush is resumed by the next call.
    async fn write(&mut self) -> Result<(), WsError> {
        while !self.queue.is_empty() {
            poll_fn(|cx| self.sink.poll_ready_unpin(cx)).await?;
            if let Some(m) = self.queue.pop_front() {
                self.bytes = self.bytes.saturating_sub(m.len());
                self.unflushed = true;
                self.sink.start_send_unpin(m)?;
            }
        }
        self.sink.flush().await?;
        self.unflushed = false;
        Ok(())
    }

    /// [`Outbox::write`] if [`Outbox::busy`], errors ignored (ending a session).
    async fn finish(&mut self) {
        if self.busy() {
            let _ = self.write().await;
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
