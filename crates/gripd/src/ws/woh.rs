//! WebSocket-over-HTTP (`over_http` targets): gripd keeps the client's socket and talks to the
//! origin in POSTs of `application/websocket-events`.
//!
//! - The handshake is a POST of `OPEN`; the origin must answer 200 with an events body starting
//!   with `OPEN`, else the client gets the origin's answer instead of a 101.
//! - Client messages are queued as events and sent in batches, one request in flight per
//!   connection, in order. The queue is bounded: the client is not read while it holds
//!   `BATCH_CONTENT_MAX` bytes or more.
//! - What goes to the client waits in an [`Outbox`] written by its own `select!` arm, so the client
//!   is read (and its events POSTed) while a write to it is pending. No new request starts while
//!   the outbox holds `RESPONSE_BODY_MAX` bytes or more, so it holds at most about two replies.
//! - Every request carries the same `Connection-Id`, a fresh `Grip-Sig` and the connection's meta
//!   as `Meta-*`; `Set-Meta-*` response headers change the meta.
//! - `Keep-Alive-Interval` (at least 20 s) makes gripd POST an empty request when idle.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::h1::OriginBody;
use crate::origin::OriginResponse;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::StreamExt;
use grip::{WsEvent, WsMessageType};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument;

use super::{
    client_socket, close_frame, grip_extension, sleep_until_opt, switching_protocols, ClientWs,
    Effect, FromOrigin, GripSession, Outbox, CLOSE_GOING_AWAY, CLOSE_WAIT, SHUTDOWN_CLOSE_WAIT,
};
use crate::error::ProxyError;
use crate::hub::Delivery;
use crate::origin::{self, Body, ClientRequest};
use crate::proxy::State;
use crate::routes::{Route, Target};

/// The events media type.
pub(super) const EVENTS_TYPE: &str = "application/websocket-events";
/// Content bytes of client events sent in one request (Pushpin: about 200,000).
pub(super) const BATCH_CONTENT_MAX: usize = 200_000;
/// Largest origin response body (Pushpin: 1,000,000 bytes).
pub(super) const RESPONSE_BODY_MAX: usize = 1_000_000;
/// Shortest `Keep-Alive-Interval` honoured (Pushpin: 20 s).
pub(super) const KEEP_ALIVE_INTERVAL_MIN: Duration = Duration::from_secs(20);
/// How long a best-effort `DISCONNECT` on shutdown may take.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// Request headers the client may not set for the origin (gripd sets them).
const STRIPPED: &[&str] = &[
    "accept",
    "connection-id",
    "content-type",
    "content-length",
    "sec-websocket-extensions",
];

/// Everything needed to send one events request.
#[derive(Clone)]
struct Link {
    state: Arc<State>,
    route: Arc<Route>,
    target: Target,
    request: ClientRequest,
    connection_id: HeaderValue,
}

/// An origin reply: the headers that matter and its events.
struct Reply {
    headers: HeaderMap,
    events: Vec<WsEvent>,
}

type InFlight = Pin<Box<dyn Future<Output = Result<Reply, ProxyError>> + Send>>;

/// Opens the session: POST `OPEN`, then 101 to the client and a tracked session task.
pub(super) async fn open(
    state: &Arc<State>,
    route: Arc<Route>,
    mut request: ClientRequest,
    on_upgrade: OnUpgrade,
    accept: String,
) -> Result<Response<Body>, ProxyError> {
    let target = route
        .targets
        .first()
        .cloned()
        .ok_or_else(|| ProxyError::Internal("route has no targets".into()))?;
    request.method = http::Method::POST;
    for name in STRIPPED {
        request.headers.remove(*name);
    }
    let metas: Vec<HeaderName> = request
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("meta-"))
        .cloned()
        .collect();
    for name in metas {
        request.headers.remove(name);
    }
    let link = Link {
        state: state.clone(),
        route: route.clone(),
        target,
        request,
        connection_id: HeaderValue::from_str(&uuid_v4())
            .map_err(|e| ProxyError::Internal(format!("connection id: {e}")))?,
    };
    let resp = link.send(vec![WsEvent::Open], &Default::default()).await?;
    if resp.status() != StatusCode::OK || !is_events(resp.headers()) {
        let (mut parts, body) = resp.into_parts();
        origin::clean_response_headers(&mut parts.headers);
        return Ok(Response::from_parts(parts, origin::boxed(body)));
    }
    let (parts, body) = resp.into_parts();
    let reply = read_reply(parts.headers, body).await?;
    let keep_alive_interval = keep_alive_interval(&reply.headers);
    let mut events = reply.events.into_iter();
    match events.next() {
        Some(WsEvent::Open) => {}
        None if keep_alive_interval.is_some() => {}
        _ => {
            return Err(ProxyError::OriginFailed(
                link.target.kind.to_string(),
                "websocket-over-http: first event is not OPEN".into(),
            ))
        }
    }
    let rest: Vec<WsEvent> = events.collect();
    let prefix = if route.props.no_grip {
        None
    } else {
        grip_extension(&reply.headers)
    };
    let mut client_headers = reply.headers.clone();
    let dropped: Vec<HeaderName> = client_headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.starts_with("set-meta-") || k == "keep-alive-interval"
        })
        .cloned()
        .collect();
    for name in dropped {
        client_headers.remove(name);
    }
    let resp101 = switching_protocols(client_headers, &accept);

    let st = state.clone();
    let span = tracing::debug_span!("ws", mode = "over_http", grip = prefix.is_some());
    state.shutdown.tracker.spawn(
        async move {
            let Some(client) = client_socket(on_upgrade).await else {
                // The client never completed its upgrade: tell the origin it is gone.
                let _ = tokio::time::timeout(
                    DISCONNECT_WAIT,
                    link.send(vec![WsEvent::Disconnect], &Default::default()),
                )
                .await;
                return;
            };
            let grip = GripSession::new(&st, &link.route, prefix, &link.target.subs);
            let (client_tx, client_rx) = client.split();
            let mut session = Session {
                link,
                client_rx,
                to_client: Outbox::new(client_tx),
                grip,
                pending: Vec::new(),
                pending_bytes: 0,
                in_flight: None,
                refresh: false,
                keep_alive_interval,
                last_request: Instant::now(),
                client_open: true,
                origin_open: true,
                close_deadline: None,
            };
            session.set_meta_from(&reply.headers);
            session.run(rest).await;
        }
        .instrument(span),
    );
    Ok(resp101)
}

struct Session {
    link: Link,
    client_rx: SplitStream<ClientWs>,
    to_client: Outbox<SplitSink<ClientWs, Message>>,
    grip: GripSession,
    /// Client events not sent yet, in order.
    pending: Vec<WsEvent>,
    pending_bytes: usize,
    in_flight: Option<InFlight>,
    /// Send a request even without events (keep-alive, `refresh`).
    refresh: bool,
    keep_alive_interval: Option<Duration>,
    last_request: Instant,
    /// The client may still send (no close or disconnect seen).
    client_open: bool,
    /// The origin still takes events (no CLOSE, DISCONNECT, detach or failure).
    origin_open: bool,
    /// After a close was sent to the client: when to stop waiting for its answer.
    close_deadline: Option<Instant>,
}

impl Session {
    async fn run(&mut self, first: Vec<WsEvent>) {
        self.run_loop(first).await;
        // What the client still has to get (e.g. the answer to its close), bounded.
        let _ = tokio::time::timeout(CLOSE_WAIT, self.to_client.finish()).await;
    }

    async fn run_loop(&mut self, first: Vec<WsEvent>) {
        if self.apply_events(first).is_err() {
            return;
        }
        let mut stopped = self.link.state.shutdown.stopped();
        loop {
            if !self.client_open
                && (self.in_flight.is_none() && (self.pending.is_empty() || !self.origin_open))
            {
                break;
            }
            if self.client_open && self.close_deadline.is_some_and(|d| d <= Instant::now()) {
                // The client did not answer our close in time: treat it as gone.
                self.client_open = false;
                if self.origin_open {
                    self.pending.push(WsEvent::Disconnect);
                }
                continue;
            }
            self.start_request();
            let ka = match (self.keep_alive_interval, &self.in_flight) {
                (Some(every), None) if self.origin_open && self.client_open => {
                    Some(self.last_request + every)
                }
                _ => None,
            };
            let timer = self.grip.next_timer();
            let read_client = self.client_open && self.pending_bytes < BATCH_CONTENT_MAX;
            let client_room = self.to_client.is_empty();
            tokio::select! {
                _ = &mut stopped => {
                    self.shutdown().await;
                    return;
                }
                r = self.to_client.write(), if self.to_client.busy() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "client send failed");
                        self.to_client.clear();
                        return;
                    }
                }
                r = poll_in_flight(&mut self.in_flight) => {
                    self.in_flight = None;
                    self.last_request = Instant::now();
                    match r {
                        Ok(reply) => {
                            self.set_meta_from(&reply.headers);
                            if let Some(i) = keep_alive_interval(&reply.headers) {
                                self.keep_alive_interval = Some(i);
                            }
                            if self.apply_events(reply.events).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            e.log(&self.link.route.name());
                            self.origin_open = false;
                            self.pending.clear();
                            if self.client_open {
                                self.close_client(Some(close_frame(1011, "")));
                            }
                        }
                    }
                }
                m = self.client_rx.next(), if read_client => {
                    let closing = matches!(m, Some(Ok(Message::Close(_))));
                    self.on_client_message(m);
                    if closing {
                        // Sends tungstenite's queued answer to the client's close.
                        self.to_client.request_flush();
                    }
                }
                d = self.grip.recv(), if client_room => match d {
                    None => {
                        self.shutdown().await;
                        return;
                    }
                    Some(Delivery::Update) => {}
                    Some(Delivery::Item(item)) => {
                        let effect = self.grip.publish(&item);
                        if let Some(e) = effect {
                            self.effect(e);
                        }
                    }
                },
                _ = sleep_until_opt(ka) => self.refresh = true,
                _ = sleep_until_opt(timer), if client_room => {
                    for m in self.grip.on_timer(Instant::now()) {
                        self.send_client(m);
                    }
                }
                _ = sleep_until_opt(self.close_deadline), if self.client_open => {}
            }
        }
    }

    /// Queues what the client sent as events for the origin.
    fn on_client_message(
        &mut self,
        m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) {
        let event = match m {
            Some(Ok(Message::Text(t))) => WsEvent::Text(t.into()),
            Some(Ok(Message::Binary(b))) => WsEvent::Binary(b),
            Some(Ok(Message::Ping(p))) => WsEvent::Ping(p),
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => return,
            Some(Ok(Message::Close(frame))) => {
                self.client_open = false;
                WsEvent::Close(frame.map(|f| (u16::from(f.code), Bytes::from(f.reason))))
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "client socket failed");
                self.client_open = false;
                WsEvent::Disconnect
            }
            None => {
                self.client_open = false;
                WsEvent::Disconnect
            }
        };
        if !self.origin_open {
            return;
        }
        self.pending_bytes += content_len(&event);
        self.pending.push(event);
    }

    /// Starts the next request when none is in flight and there is something to send.
    fn start_request(&mut self) {
        if self.in_flight.is_some() || !self.origin_open {
            return;
        }
        if self.pending.is_empty() && !self.refresh {
            return;
        }
        if self.client_open && self.to_client.bytes() >= RESPONSE_BODY_MAX {
            // The client is slow to read: its next replies wait until it catches up.
            return;
        }
        self.refresh = false;
        let mut take = 0;
        let mut bytes = 0;
        for e in &self.pending {
            if take > 0
                && (self.link.target.one_event || bytes + content_len(e) > BATCH_CONTENT_MAX)
            {
                break;
            }
            take += 1;
            bytes += content_len(e);
        }
        let batch: Vec<WsEvent> = self.pending.drain(..take).collect();
        self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
        let link = self.link.clone();
        let meta = self.grip.meta.clone();
        self.in_flight = Some(Box::pin(async move {
            let resp = link.send(batch, &meta).await?;
            if resp.status() != StatusCode::OK || !is_events(resp.headers()) {
                return Err(ProxyError::OriginFailed(
                    link.target.kind.to_string(),
                    format!("websocket-over-http: status {}", resp.status()),
                ));
            }
            let (parts, body) = resp.into_parts();
            read_reply(parts.headers, body).await
        }));
    }

    /// Applies the origin's events, in order. `Err` ends the session.
    fn apply_events(&mut self, events: Vec<WsEvent>) -> Result<(), ()> {
        for event in events {
            if !self.origin_open {
                break;
            }
            let out = match event {
                WsEvent::Open => None,
                WsEvent::Text(t) => self.origin_message(WsMessageType::Text, t),
                WsEvent::Binary(b) => self.origin_message(WsMessageType::Binary, b),
                WsEvent::Ping(p) => Some(Effect::Send(super::message(WsMessageType::Ping, p))),
                WsEvent::Pong(_) => None,
                WsEvent::Close(c) => {
                    self.origin_open = false;
                    self.pending.clear();
                    // django-grip sends code 0 for "no code": only real codes go out.
                    let c = c.filter(|(code, _)| *code >= 1000);
                    Some(Effect::Close(c.map(|(code, reason)| {
                        close_frame(code, &String::from_utf8_lossy(&reason))
                    })))
                }
                WsEvent::Disconnect => {
                    tracing::debug!("origin disconnected the client");
                    return Err(());
                }
            };
            if let Some(e) = out {
                self.effect(e);
            }
        }
        Ok(())
    }

    fn origin_message(&mut self, kind: WsMessageType, data: Bytes) -> Option<Effect> {
        match self.grip.classify_origin(kind, data) {
            FromOrigin::Relay(m) => Some(Effect::Send(m)),
            FromOrigin::Drop => None,
            FromOrigin::Control(c) => self.grip.control(c),
        }
    }

    fn effect(&mut self, e: Effect) {
        match e {
            Effect::Send(m) => self.send_client(m),
            Effect::Close(frame) => {
                if self.close_deadline.is_none() && self.client_open {
                    self.close_client(frame);
                }
            }
            Effect::Detach => {
                self.origin_open = false;
                self.pending.clear();
                self.in_flight = None;
            }
            Effect::Refresh => self.refresh = true,
        }
    }

    fn close_client(&mut self, frame: Option<CloseFrame>) {
        self.to_client.push(Message::Close(frame));
        self.close_sent();
    }

    fn close_sent(&mut self) {
        self.close_deadline = Some(Instant::now() + CLOSE_WAIT);
    }

    fn send_client(&mut self, m: Message) {
        if !self.client_open {
            return;
        }
        self.grip.sent();
        self.to_client.push(m);
    }

    fn set_meta_from(&mut self, headers: &HeaderMap) {
        for (name, value) in headers {
            if let Some(n) = name.as_str().strip_prefix("set-meta-") {
                let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
                self.grip.set_meta(n, Some(v));
            }
        }
    }

    /// Shutdown: close 1001 to the client (after what it still has to get), a best-effort
    /// `DISCONNECT` to the origin; all of it bounded by `SHUTDOWN_CLOSE_WAIT`.
    async fn shutdown(&mut self) {
        if self.client_open {
            self.to_client
                .push(Message::Close(Some(close_frame(CLOSE_GOING_AWAY, ""))));
        }
        let Session {
            link,
            grip,
            to_client,
            client_rx,
            origin_open,
            ..
        } = self;
        let meta = grip.meta.clone();
        let disconnect = async {
            if *origin_open {
                let _ = tokio::time::timeout(
                    DISCONNECT_WAIT,
                    link.send(vec![WsEvent::Disconnect], &meta),
                )
                .await;
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_CLOSE_WAIT, async {
            tokio::join!(to_client.finish(), disconnect, async {
                while client_rx.next().await.is_some() {}
            })
        })
        .await;
        to_client.clear();
    }
}

impl Link {
    /// POSTs `events` with the connection's headers and `meta` as `Meta-*`.
    async fn send(
        &self,
        events: Vec<WsEvent>,
        meta: &std::collections::BTreeMap<String, String>,
    ) -> Result<OriginResponse, ProxyError> {
        let mut extra = vec![
            (header::CONTENT_TYPE, HeaderValue::from_static(EVENTS_TYPE)),
            (header::ACCEPT, HeaderValue::from_static(EVENTS_TYPE)),
            (
                HeaderName::from_static("connection-id"),
                self.connection_id.clone(),
            ),
        ];
        if !self.route.props.no_grip {
            extra.push((
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static("grip"),
            ));
        }
        for (k, v) in meta {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(format!("meta-{k}").as_bytes()),
                HeaderValue::from_str(v),
            ) {
                extra.push((k, v));
            }
        }
        let body = Bytes::from(grip::encode_events(&events));
        let path = self.route.rewrite_path(&self.request.path_and_query);
        self.state
            .origin
            .send(
                &self.route,
                &self.target,
                &self.request,
                &path,
                crate::h1::OutBody::Bytes(body),
                &extra,
                true,
            )
            .await
    }
}

async fn read_reply(headers: HeaderMap, body: OriginBody) -> Result<Reply, ProxyError> {
    let bytes = Limited::new(body, RESPONSE_BODY_MAX)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ProxyError::OriginFailed("origin".into(), format!("events body: {e}")))?;
    let events = grip::parse_events(&bytes)
        .map_err(|e| ProxyError::OriginFailed("origin".into(), format!("events body: {e}")))?;
    Ok(Reply { headers, events })
}

async fn poll_in_flight(f: &mut Option<InFlight>) -> Result<Reply, ProxyError> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

pub(super) fn is_events(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(EVENTS_TYPE))
}

fn keep_alive_interval(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get("keep-alive-interval")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).max(KEEP_ALIVE_INTERVAL_MIN))
}

fn content_len(e: &WsEvent) -> usize {
    match e {
        WsEvent::Text(c) | WsEvent::Binary(c) | WsEvent::Ping(c) | WsEvent::Pong(c) => c.len(),
        WsEvent::Close(Some((_, r))) => r.len() + 2,
        _ => 0,
    }
}

/// A random (version 4) UUID, the `Connection-Id` of one connection.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
