//! Held connections: what happens after the origin answered with GRIP instructions.
//!
//! - **Response holds** (long-poll): nothing is sent until a publish (`http-response`) or the
//!   timeout; then one response, merged over the origin's original one.
//! - **Stream holds**: the origin's head and body go out at once; published `http-stream`
//!   content is appended. The body is a `Stream` polled by hyper only when the socket can take
//!   more, so a slow client only fills its own bounded queue.
//! - **Next links** (`Grip-Link rel=next`): followed for paging, on `hint`, after a gap in ids
//!   and when the link's timeout passes, with `Grip-Last` and without client headers.
//!
//! Invariants: everything queued for a connection when it is polled goes out in one write
//! (coalescing); a stream ends cleanly on `close`, on shutdown (the hub closes its queue) and
//! when a next-link response ends without a hold.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::h1::OriginBody;
use bytes::{Bytes, BytesMut};
use grip::{Action, ChannelSpec, HoldMode, Instruct, KeepAliveMode, ResponseBody};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::detach::DetachHandle;
use crate::error::ProxyError;
use crate::hub::{Delivery, DeliveryRx, DeliveryTx, Hub, Mode, Subscription, WeakDeliveryTx};
use crate::metrics::GaugeGuard;
use crate::origin::{clean_response_headers, full, Body, BoxError, ClientRequest};
use crate::proxy::State;
use crate::routes::{Route, Target, TargetKind};

/// Attempts for a next-link request before the stream ends (Pushpin: 5 retries).
pub const NEXT_LINK_RETRIES: u32 = 5;
/// Keep-alive jitter: keep-alives fire up to this much before their timeout (Pushpin: 1 s).
const KEEPALIVE_JITTER_MS: u64 = 1000;

/// Everything a held connection needs to talk to the origin again.
#[derive(Clone)]
pub struct HoldContext {
    pub state: Arc<State>,
    pub route: Arc<Route>,
    pub target: usize,
    pub request: ClientRequest,
    /// The client connection, for detaching a held stream from hyper, and whether the
    /// client speaks HTTP/1.1 (chunked framing) rather than 1.0 (close-delimited).
    pub detach: Option<(DetachHandle, bool)>,
}

/// Turns an origin response carrying GRIP instructions into the client's response.
pub async fn respond(
    ctx: HoldContext,
    resp: crate::origin::OriginResponse,
) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = resp.into_parts();
    let needs_body = grip::is_instruct_body(&parts.headers)
        || matches!(
            parts.headers.get("grip-hold").map(|v| v.as_bytes()),
            Some(b"response")
        );
    if needs_body {
        let max = ctx.state.config.response_body_max;
        let bytes = read_limited(body, max).await?;
        let instruct = Instruct::from_response(parts.status.as_u16(), &parts.headers, &bytes)
            .map_err(|e| ProxyError::Instruct(e.to_string()))?;
        let origin = OriginResponse::new(parts.status, &parts.headers, bytes, &instruct);
        return match instruct.hold {
            Some(HoldMode::Response) => Ok(long_poll(ctx, instruct, origin).await),
            Some(HoldMode::Stream) => stream(
                ctx,
                instruct,
                origin.head(),
                Some(full(origin.body.clone())),
            ),
            None => stream_or_plain(ctx, instruct, origin.head(), full(origin.body.clone())),
        };
    }
    let instruct =
        Instruct::from_headers(&parts.headers).map_err(|e| ProxyError::Instruct(e.to_string()))?;
    let head = OriginResponse::new(parts.status, &parts.headers, Bytes::new(), &instruct).head();
    let body = crate::origin::boxed(body);
    match instruct.hold {
        Some(HoldMode::Stream) => stream(ctx, instruct, head, Some(body)),
        Some(HoldMode::Response) => Err(ProxyError::Internal("response hold without body".into())),
        None => stream_or_plain(ctx, instruct, head, body),
    }
}

/// No hold: a plain response, or (with a next link) paging through next links.
fn stream_or_plain(
    ctx: HoldContext,
    instruct: Instruct,
    head: Response<()>,
    body: Body,
) -> Result<Response<Body>, ProxyError> {
    if instruct.next_link.is_some() {
        return stream(ctx, instruct, head, Some(body));
    }
    let (parts, ()) = head.into_parts();
    Ok(Response::from_parts(parts, body))
}

/// The origin's response as the client will see it on timeout (Grip-* removed, Grip-Status
/// and Grip-Expose-Headers applied).
struct OriginResponse {
    status: StatusCode,
    reason: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

impl OriginResponse {
    fn new(
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        instruct: &Instruct,
    ) -> OriginResponse {
        let mut status = status;
        let mut headers = headers.clone();
        let mut body = body;
        if let Some(r) = &instruct.response {
            status = StatusCode::from_u16(r.code).unwrap_or(StatusCode::OK);
            headers = HeaderMap::new();
            for (k, v) in &r.headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    headers.append(k, v);
                }
            }
            body = r.body.clone();
        }
        grip::strip_grip_headers(&mut headers);
        clean_response_headers(&mut headers);
        headers.remove(header::CONTENT_LENGTH);
        if let Some(expose) = &instruct.expose_headers {
            let keep: Vec<HeaderName> = expose
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect();
            let names: Vec<HeaderName> = headers.keys().cloned().collect();
            for n in names {
                if !keep.contains(&n) {
                    headers.remove(n);
                }
            }
        }
        let mut reason = None;
        if let Some((code, r)) = &instruct.status {
            status = StatusCode::from_u16(*code).unwrap_or(status);
            reason = r.clone();
        }
        OriginResponse {
            status,
            reason,
            headers,
            body,
        }
    }

    fn head(&self) -> Response<()> {
        let mut resp = Response::new(());
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        set_reason(&mut resp, self.reason.as_deref());
        resp
    }

    fn to_response(&self) -> Response<Body> {
        let (parts, ()) = self.head().into_parts();
        Response::from_parts(parts, full(self.body.clone()))
    }
}

fn set_reason<B>(resp: &mut Response<B>, reason: Option<&str>) {
    if let Some(r) = reason {
        if let Ok(p) = hyper::ext::ReasonPhrase::try_from(r.as_bytes().to_vec()) {
            resp.extensions_mut().insert(p);
        }
    }
}

async fn read_limited(body: OriginBody, max: usize) -> Result<Bytes, ProxyError> {
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(ProxyError::Instruct(format!(
                    "GRIP instruct response too large (over {max} bytes)"
                )))
            } else {
                Err(ProxyError::OriginFailed("origin".into(), e.to_string()))
            }
        }
    }
}

/// Reads a whole body of at most `max` bytes.
async fn collect_body(mut body: Body, max: usize) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(format!("body over {max} bytes"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Keeps only the first `connection_subscription_max` channels (Pushpin truncates too).
fn limit_channels(state: &State, mut channels: Vec<ChannelSpec>) -> Vec<ChannelSpec> {
    let max = state.config.connection_subscription_max;
    if channels.len() > max {
        tracing::warn!(
            count = channels.len(),
            max,
            "too many channels, keeping the first"
        );
        channels.truncate(max);
    }
    channels
}

fn prefixed(route: &Route, name: &str) -> String {
    match &route.props.prefix {
        Some(p) => format!("{p}{name}"),
        None => name.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Response holds

async fn long_poll(
    mut ctx: HoldContext,
    mut instruct: Instruct,
    mut origin: OriginResponse,
) -> Response<Body> {
    let state = ctx.state.clone();
    let _held = GaugeGuard::new(&state.metrics.held_response);
    // Only the hub holds strong senders, so closing the hub (shutdown) ends the wait.
    let (tx, mut rx) = Hub::queue(4);
    let mut weak = tx.downgrade();
    let mut strong = Some(tx);
    let mut subs: Vec<Subscription> = Vec::new();
    loop {
        let channels = limit_channels(&state, instruct.channels.clone());
        // Hub names (route prefix applied), made once per hold, not per message.
        let names: Vec<String> = channels
            .iter()
            .map(|c| prefixed(&ctx.route, &c.name))
            .collect();
        let tx = match strong.take().or_else(|| weak.upgrade()) {
            Some(tx) => tx,
            None => {
                let (tx, new_rx) = Hub::queue(4);
                rx = new_rx;
                tx
            }
        };
        // Subscribe before unsubscribing, so a retried hold never looks like a new channel.
        let old = std::mem::take(&mut subs);
        for name in &names {
            subs.push(state.hub.subscribe(name, Mode::Response, tx.clone()));
        }
        drop(old);
        weak = tx.downgrade();
        drop(tx);
        let meta: BTreeMap<String, String> = instruct.meta.iter().cloned().collect();
        let deadline = Instant::now() + Duration::from_secs(instruct.timeout_secs);
        // A known last id that differs from the hold's prev-id: the origin is behind, retry now.
        let mut retry = channels.iter().zip(&names).any(|(c, name)| {
            match (&c.prev_id, state.hub.last_id(name)) {
                (Some(p), Some(l)) => *p != l,
                _ => false,
            }
        });
        while !retry {
            tokio::select! {
                d = rx.recv() => match d {
                    None => return origin.to_response(),
                    Some(Delivery::Update) => retry = true,
                    Some(Delivery::Item(item)) => {
                        let Some(fmt) = item.http_response.as_ref() else { continue };
                        let spec = names.iter().position(|n| *n == item.channel).and_then(|i| channels.get(i));
                        if let (Some(spec), Some(prev)) = (spec, &item.prev_id) {
                            if spec.prev_id.as_ref().is_some_and(|p| p != prev) {
                                retry = true;
                                continue;
                            }
                        }
                        match fmt.action {
                            Action::Hint => { retry = true; continue; }
                            Action::Close | Action::Refresh => continue,
                            Action::Send => {}
                        }
                        let filters = spec.map(|s| s.filters.as_slice()).unwrap_or(&[]);
                        let prev_ids = BTreeMap::new();
                        let subscribed = |c: &str| names.iter().any(|n| n == c);
                        let fctx = grip::FilterContext { sub_meta: &meta, pub_meta: &item.meta, prev_ids: &prev_ids, subscribed: &subscribed };
                        if !grip::should_deliver(filters, &fctx) {
                            continue;
                        }
                        return published_response(&origin, fmt, filters, &fctx);
                    }
                },
                _ = sleep_until(deadline) => return origin.to_response(),
            }
        }
        // Retry: the original request again, with Grip-Last for channels that had a prev-id.
        state.metrics.origin_refreshes.inc();
        let extra = grip_last(&channels);
        let resp = match state
            .origin
            .send_with_failover(&ctx.route, &ctx.request, None, &extra)
            .await
        {
            Ok((resp, _)) => resp,
            Err(e) => {
                e.log(&ctx.route.name());
                return e.response(state.config.debug);
            }
        };
        if !grip::is_grip_response(resp.headers()) {
            let (mut parts, body) = resp.into_parts();
            clean_response_headers(&mut parts.headers);
            return Response::from_parts(parts, crate::origin::boxed(body));
        }
        let (parts, body) = resp.into_parts();
        if parts.headers.get("grip-hold").map(|v| v.as_bytes()) != Some(b"response") {
            // The origin changed its mind: handle the new answer as a fresh response.
            let resp = Response::from_parts(parts, body);
            ctx.target = 0;
            return match Box::pin(respond(ctx, resp)).await {
                Ok(r) => r,
                Err(e) => e.response(state.config.debug),
            };
        }
        let bytes = match read_limited(body, state.config.response_body_max).await {
            Ok(b) => b,
            Err(e) => return e.response(state.config.debug),
        };
        match Instruct::from_response(parts.status.as_u16(), &parts.headers, &bytes) {
            Ok(i) => {
                origin = OriginResponse::new(parts.status, &parts.headers, bytes, &i);
                instruct = i;
            }
            Err(e) => return ProxyError::Instruct(e.to_string()).response(state.config.debug),
        }
    }
}

fn published_response(
    origin: &OriginResponse,
    fmt: &grip::HttpResponseFormat,
    filters: &[String],
    fctx: &grip::FilterContext<'_>,
) -> Response<Body> {
    let mut headers = origin.headers.clone();
    for (k, v) in &fmt.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            if k.as_str().starts_with("grip-") {
                continue;
            }
            headers.insert(k, v);
        }
    }
    headers.remove(header::CONTENT_LENGTH);
    let body = match &fmt.body {
        ResponseBody::Body(b) => {
            grip::apply_content_filters(filters, fctx, b.clone()).unwrap_or_else(|_| b.clone())
        }
        ResponseBody::Patch(patch) => patch_body(&origin.body, patch),
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(fmt.code).unwrap_or(StatusCode::OK);
    *resp.headers_mut() = headers;
    set_reason(&mut resp, fmt.reason.as_deref());
    resp
}

/// Applies a JSON Patch to the original body, keeping its trailing newline; empty on failure.
fn patch_body(original: &Bytes, patch: &serde_json::Value) -> Bytes {
    let text = String::from_utf8_lossy(original);
    let trimmed = text.trim_end_matches(['\r', '\n']);
    let tail = &text[trimmed.len()..];
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(trimmed) else {
        return Bytes::new();
    };
    match grip::json_patch(&doc, patch) {
        Ok(v) => Bytes::from(format!("{v}{tail}")),
        Err(_) => Bytes::new(),
    }
}

fn grip_last(channels: &[ChannelSpec]) -> Vec<(HeaderName, HeaderValue)> {
    channels
        .iter()
        .filter_map(|c| {
            let id = c.prev_id.as_ref()?;
            grip_last_value(&c.name, id)
        })
        .collect()
}

fn grip_last_value(channel: &str, id: &str) -> Option<(HeaderName, HeaderValue)> {
    // Plain tokens go unquoted, as Pushpin sends them (`last-id=42`); anything else is quoted.
    let plain = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:!#$&'*+^`|~".contains(&b));
    let id = if plain {
        id.to_string()
    } else {
        grip::header::quote(id)
    };
    let v = format!("{channel}; last-id={id}");
    HeaderValue::from_str(&v)
        .ok()
        .map(|v| (HeaderName::from_static("grip-last"), v))
}

// ---------------------------------------------------------------------------------------------
// Stream holds and next links

/// A channel a stream session is subscribed to.
struct SessionChannel {
    spec: ChannelSpec,
    /// Full (prefixed) name.
    name: String,
    _sub: Subscription,
}

/// What `StreamSession::step` found.
enum Step {
    Data(Bytes),
    /// The response ends.
    End,
    /// Nothing to do until a message or a timer (only when not told to wait).
    Idle,
}

/// The state of one held stream (or a paging response following next links).
struct StreamSession {
    ctx: HoldContext,
    /// Weak, so that the hub dropping its senders (shutdown) ends the stream.
    tx: WeakDeliveryTx,
    rx: DeliveryRx,
    channels: Vec<SessionChannel>,
    /// Last id delivered per (prefixed) channel, for prev-id checks and `build-id`.
    prev_ids: BTreeMap<String, String>,
    meta: BTreeMap<String, String>,
    keep_alive: Option<grip::KeepAlive>,
    /// Fires when a keep-alive is due; reset, not recreated, on every write (timer-wheel cost).
    ka_sleep: Option<Pin<Box<Sleep>>>,
    next_link: Option<grip::NextLink>,
    /// When the next link must be fetched again (no message on some channel within its timeout).
    link_sleep: Option<Pin<Box<Sleep>>>,
    /// Origin body being relayed (the initial body, or a next-link response's).
    relay: Option<Body>,
    /// Content filters (`build-id`, `var-subst`) to apply to the relayed body as a whole, as
    /// Pushpin does for proxied content: django-eventstream escapes `%` as `%%` in replays.
    relay_filters: Option<Vec<String>>,
    /// After the relayed body: `true` to fetch the next link at once (paging, no hold yet).
    fetch_after_relay: bool,
    /// Whether the session holds (subscribed); without a hold it ends after the last page.
    holding: bool,
    /// A fetch is due (gap, hint, update).
    fetch_due: bool,
    recover: bool,
    closing: bool,
    _held: GaugeGuard,
}

fn stream(
    mut ctx: HoldContext,
    instruct: Instruct,
    head: Response<()>,
    initial: Option<Body>,
) -> Result<Response<Body>, ProxyError> {
    // Next-link requests carry no client headers or body: a held stream need not keep them.
    ctx.request.headers = HeaderMap::new();
    ctx.request.body = None;
    let state = ctx.state.clone();
    let (tx, rx) = Hub::queue(state.config.connection_queue_max);
    let weak = tx.downgrade();
    let mut session = StreamSession {
        ctx,
        tx: weak,
        rx,
        channels: Vec::new(),
        prev_ids: BTreeMap::new(),
        meta: BTreeMap::new(),
        keep_alive: None,
        ka_sleep: None,
        next_link: None,
        link_sleep: None,
        relay: initial,
        relay_filters: None,
        fetch_after_relay: false,
        holding: false,
        fetch_due: false,
        recover: false,
        closing: false,
        _held: GaugeGuard::new(&state.metrics.held_stream),
    };
    // Keep the only strong sender until the first subscriptions hold their own.
    session.apply_with(instruct, true, Some(&tx))?;
    drop(tx);
    let (mut parts, ()) = head.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some((handle, chunked)) = session.ctx.detach.take() {
        let body = DetachedBody {
            handle,
            chunked,
            session: Some(session),
        };
        return Ok(Response::from_parts(parts, body.boxed()));
    }
    let body = futures_util::stream::unfold(session, |mut s| async move {
        s.next_chunk()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), s))
    });
    Ok(Response::from_parts(parts, StreamBody::new(body).boxed()))
}

impl StreamSession {
    /// Applies (new) instructions: channels, meta, keep-alive, next link.
    fn apply(&mut self, instruct: Instruct, first: bool) -> Result<(), ProxyError> {
        self.apply_with(instruct, first, None)
    }

    fn apply_with(
        &mut self,
        instruct: Instruct,
        first: bool,
        strong: Option<&DeliveryTx>,
    ) -> Result<(), ProxyError> {
        let tx = match strong.cloned().or_else(|| self.tx.upgrade()) {
            Some(tx) => tx,
            None => {
                // Every subscription was dropped: start a fresh queue.
                let (tx, rx) = Hub::queue(self.ctx.state.config.connection_queue_max);
                self.rx = rx;
                self.tx = tx.downgrade();
                tx
            }
        };
        let state = self.ctx.state.clone();
        if !instruct.meta.is_empty() || first {
            self.meta = instruct.meta.iter().cloned().collect();
        }
        if let Some(link) = instruct.next_link.clone() {
            let at = Instant::now() + Duration::from_secs(link.timeout_secs);
            match self.link_sleep.as_mut() {
                Some(s) => s.as_mut().reset(at),
                None => self.link_sleep = Some(Box::pin(sleep_until(at))),
            }
            self.next_link = Some(link);
        } else {
            self.next_link = None;
            self.link_sleep = None;
        }
        // Proxied content gets the content filters of the instructions' channels.
        for spec in &instruct.channels {
            if let Some(p) = &spec.prev_id {
                self.prev_ids.insert(spec.name.clone(), p.clone());
            }
        }
        self.relay_filters = instruct
            .channels
            .iter()
            .map(|c| &c.filters)
            .find(|f| !grip::content_filters_of(f).is_empty())
            .cloned();
        match instruct.hold {
            Some(HoldMode::Stream) => {
                let specs = limit_channels(&state, instruct.channels);
                if specs.iter().any(|c| c.prev_id.is_some()) && self.next_link.is_none() {
                    let name = specs
                        .iter()
                        .find(|c| c.prev_id.is_some())
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    return Err(ProxyError::Instruct(format!(
                        "channel '{name}' specifies prev-id, but no next link found"
                    )));
                }
                // Re-subscribe: keep existing subscriptions for channels still wanted.
                let mut old: Vec<SessionChannel> = std::mem::take(&mut self.channels);
                for spec in specs {
                    let name = prefixed(&self.ctx.route, &spec.name);
                    let sub = match old.iter().position(|c| c.name == name) {
                        Some(i) => old.swap_remove(i)._sub,
                        None => state.hub.subscribe(&name, Mode::Stream, tx.clone()),
                    };
                    if let Some(p) = &spec.prev_id {
                        self.prev_ids.insert(spec.name.clone(), p.clone());
                        // The hub already published past this id: recover at once.
                        if let Some(last) = state.hub.last_id(&name) {
                            if &last != p {
                                self.fetch_due = true;
                                self.recover = true;
                            }
                        }
                    }
                    self.channels.push(SessionChannel {
                        spec,
                        name,
                        _sub: sub,
                    });
                }
                drop(old);
                self.keep_alive = instruct.keep_alive.clone();
                self.reset_keep_alive();
                self.holding = true;
                self.fetch_after_relay = false;
            }
            Some(HoldMode::Response) => {
                return Err(ProxyError::Instruct(
                    "Next link returned non-stream hold.".into(),
                ));
            }
            None => {
                // Paging: append this body, then follow the next link at once; without a
                // next link the response ends after this body.
                self.holding = false;
                self.channels.clear();
                self.keep_alive = None;
                self.fetch_after_relay = self.next_link.is_some();
                if self.next_link.is_none() {
                    self.closing = true;
                }
            }
        }
        Ok(())
    }

    fn reset_keep_alive(&mut self) {
        let Some(ka) = &self.keep_alive else {
            self.ka_sleep = None;
            return;
        };
        let jitter = rand::random::<u64>() % KEEPALIVE_JITTER_MS;
        let ms = (ka.timeout_secs * 1000).saturating_sub(jitter).max(500);
        let at = Instant::now() + Duration::from_millis(ms);
        match self.ka_sleep.as_mut() {
            Some(s) => s.as_mut().reset(at),
            None => self.ka_sleep = Some(Box::pin(sleep_until(at))),
        }
    }

    /// Data reached every channel: the next link need not be refreshed yet (Pushpin refreshes
    /// a stream's next link only after `timeout` without messages).
    fn reset_link_timer(&mut self) {
        if let (Some(link), Some(s)) = (&self.next_link, self.link_sleep.as_mut()) {
            s.as_mut()
                .reset(Instant::now() + Duration::from_secs(link.timeout_secs));
        }
    }

    /// Ready when `step` has something to do at once: a message or the queue's end, a
    /// timer due, or work pending (relay, fetch, close). Lets an idle stream wait without
    /// `step`'s state machine (see `run_detached`).
    fn poll_idle(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::Poll;
        if self.relay.is_some() || self.fetch_due || self.closing || !self.holding {
            return Poll::Ready(());
        }
        if self.rx.poll_ready(cx).is_ready() {
            return Poll::Ready(());
        }
        for sleep in [&mut self.ka_sleep, &mut self.link_sleep]
            .into_iter()
            .flatten()
        {
            if std::future::Future::poll(sleep.as_mut(), cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// The next chunk for the client; `None` ends the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        match self.step(true).await {
            Step::Data(b) => Some(b),
            Step::End | Step::Idle => None,
        }
    }

    /// The next thing to do for the client. With `wait` false it returns `Idle` instead of
    /// waiting for a message or a timer, so that the caller can wait in `poll_idle` without
    /// this (larger) future alive.
    async fn step(&mut self, wait: bool) -> Step {
        loop {
            if self.relay.is_some() && self.relay_filters.is_some() {
                // Boxed: rare paths must not bloat every held connection's state.
                let filtered = Box::pin(self.relay_filtered()).await;
                self.relay_done();
                match filtered {
                    Some(b) if !b.is_empty() => return Step::Data(b),
                    Some(_) => continue,
                    None => return Step::End,
                }
            }
            if let Some(relay) = self.relay.as_mut() {
                match relay.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            if !data.is_empty() {
                                return Step::Data(data);
                            }
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "origin body ended with error");
                        return Step::End;
                    }
                    None => self.relay_done(),
                }
            }
            if self.fetch_due {
                self.fetch_due = false;
                if !Box::pin(self.fetch_next()).await {
                    return Step::End;
                }
                continue;
            }
            if self.closing {
                return Step::End;
            }
            if !self.holding {
                return Step::End;
            }
            if !wait
                && std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(self.poll_idle(cx).is_pending())
                })
                .await
            {
                return Step::Idle;
            }
            tokio::select! {
                d = self.rx.recv() => {
                    let Some(d) = d else {
                        return Step::End;
                    };
                    let mut out = Chunk::default();
                    self.handle(d, &mut out);
                    while !self.closing && !self.fetch_due {
                        match self.rx.try_recv() {
                            Ok(d) => self.handle(d, &mut out),
                            Err(_) => break,
                        }
                    }
                    if let Some(bytes) = out.into_bytes() {
                        if self.keep_alive.as_ref().is_some_and(|ka| ka.mode == KeepAliveMode::Idle) {
                            self.reset_keep_alive();
                        }
                        self.reset_link_timer();
                        return Step::Data(bytes);
                    }
                }
                _ = poll_sleep(&mut self.ka_sleep) => {
                    self.reset_keep_alive();
                    if let Some(ka) = &self.keep_alive {
                        return Step::Data(ka.data.clone());
                    }
                }
                _ = poll_sleep(&mut self.link_sleep) => {
                    self.reset_link_timer();
                    self.fetch_due = true;
                }
            }
        }
    }

    /// The relayed body read whole (bounded) with the content filters applied; `None` ends
    /// the stream (the body failed or is too large to filter).
    async fn relay_filtered(&mut self) -> Option<Bytes> {
        let body = self.relay.take()?;
        let filters = self.relay_filters.take().unwrap_or_default();
        let max = self.ctx.state.config.response_body_max;
        let bytes = match collect_body(body, max).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, max, "origin body to filter failed or too large, ending stream");
                return None;
            }
        };
        let channels = &self.channels;
        let subscribed = |c: &str| channels.iter().any(|x| x.name == c);
        let no_meta = BTreeMap::new();
        let fctx = grip::FilterContext {
            sub_meta: &self.meta,
            pub_meta: &no_meta,
            prev_ids: &self.prev_ids,
            subscribed: &subscribed,
        };
        match grip::apply_content_filters(&filters, &fctx, bytes.clone()) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(error = %e, "content filter failed on origin body, relaying it unfiltered");
                Some(bytes)
            }
        }
    }

    /// The relayed body has ended: follow the next link now when paging.
    fn relay_done(&mut self) {
        self.relay = None;
        self.relay_filters = None;
        if self.fetch_after_relay {
            self.fetch_after_relay = false;
            self.fetch_due = true;
        }
    }

    /// Handles one delivery, appending any content to `buf`.
    fn handle(&mut self, d: Delivery, buf: &mut Chunk) {
        let item = match d {
            Delivery::Update => {
                if self.next_link.is_some() {
                    self.fetch_due = true;
                    self.recover = true;
                }
                return;
            }
            Delivery::Item(item) => item,
        };
        if self.fetch_due || self.closing {
            // A recovery is pending: what is queued will come back through the next link.
            return;
        }
        let Some(fmt) = item.http_stream.as_ref() else {
            return;
        };
        let Some(ch) = self.channels.iter().find(|c| c.name == item.channel) else {
            return;
        };
        match fmt.action {
            Action::Close => {
                self.closing = true;
                return;
            }
            Action::Hint | Action::Refresh => {
                if self.next_link.is_some() {
                    self.fetch_due = true;
                    self.recover = true;
                }
                return;
            }
            Action::Send => {}
        }
        if let (Some(expected), Some(prev)) = (self.prev_ids.get(&ch.spec.name), &item.prev_id) {
            if expected != prev {
                if self.next_link.is_some() {
                    tracing::debug!(channel = %ch.name, expected = %expected, got = %prev, "gap in ids, recovering");
                    self.fetch_due = true;
                    self.recover = true;
                }
                return;
            }
        }
        // After this item the channel's current id is the item's, whatever the filters decide.
        // Updated in place: this runs per delivery, so no key allocation once the entry exists.
        if let Some(id) = &item.id {
            match self.prev_ids.get_mut(&ch.spec.name) {
                Some(current) => id.clone_into(current),
                None => {
                    self.prev_ids.insert(ch.spec.name.clone(), id.clone());
                }
            }
        }
        if ch.spec.filters.is_empty() {
            // Fast path: the shared bytes, no per-subscriber work.
            buf.push(fmt.content.clone());
            return;
        }
        let channels = &self.channels;
        let subscribed = |c: &str| channels.iter().any(|x| x.name == c);
        let fctx = grip::FilterContext {
            sub_meta: &self.meta,
            pub_meta: &item.meta,
            prev_ids: &self.prev_ids,
            subscribed: &subscribed,
        };
        if !grip::should_deliver(&ch.spec.filters, &fctx) {
            return;
        }
        match grip::apply_content_filters(&ch.spec.filters, &fctx, fmt.content.clone()) {
            Ok(b) => buf.push(b),
            Err(e) => {
                tracing::debug!(channel = %ch.name, error = %e, "content filter failed, item skipped")
            }
        }
    }

    /// Fetches the next link; its body is relayed next and its instructions applied.
    /// Returns `false` when the stream must end.
    async fn fetch_next(&mut self) -> bool {
        let Some(link) = self.next_link.clone() else {
            return self.holding;
        };
        let state = self.ctx.state.clone();
        let recover = std::mem::take(&mut self.recover);
        let extra: Vec<(HeaderName, HeaderValue)> = if recover || self.holding {
            self.channels
                .iter()
                .filter_map(|c| {
                    let id = self.prev_ids.get(&c.spec.name)?;
                    grip_last_value(&c.spec.name, id)
                })
                .collect()
        } else {
            Vec::new()
        };
        let (target, path) = match resolve_link(&self.ctx, &link.uri) {
            Some(t) => t,
            None => {
                tracing::warn!(link = %link.uri, "cannot resolve next link");
                return false;
            }
        };
        // Drain what is queued: the next-link response reflects it.
        while self.rx.try_recv().is_ok() {}
        let mut attempt = 0;
        loop {
            let result = fetch_coalesced(&state, &self.ctx, &target, &path, &extra).await;
            let err = match result {
                Ok(fetched) if (200..300).contains(&fetched.status) => {
                    let parsed = if grip::is_instruct_body(&fetched.headers) {
                        Instruct::from_response(fetched.status, &fetched.headers, &fetched.body)
                            .map(|i| {
                                let b = i
                                    .response
                                    .as_ref()
                                    .map(|r| r.body.clone())
                                    .unwrap_or_default();
                                (i, b)
                            })
                    } else {
                        Instruct::from_headers(&fetched.headers).map(|i| (i, fetched.body.clone()))
                    };
                    let (instruct, next_body) = match parsed {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(error = %e, "next link returned bad instructions, ending stream");
                            return false;
                        }
                    };
                    if let Err(e) = self.apply(instruct, false) {
                        tracing::warn!(error = %e, "next link instructions rejected, ending stream");
                        return false;
                    }
                    self.relay = Some(full(next_body));
                    return true;
                }
                Ok(fetched) => format!("status {}", fetched.status),
                Err(e) => e,
            };
            attempt += 1;
            if attempt > NEXT_LINK_RETRIES {
                tracing::warn!(link = %link.uri, error = %err, "next link failed, ending stream");
                return false;
            }
            let backoff =
                Duration::from_millis(1000 * (1 << (attempt - 1)) + rand::random::<u64>() % 1000);
            tracing::debug!(link = %link.uri, error = %err, ?backoff, "next link failed, retrying");
            tokio::time::sleep(backoff).await;
        }
    }
}

/// A next-link response, read whole so that identical fetches can share it.
pub struct Fetched {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

/// Identical next-link fetches in flight, shared by every session that asks for the same one.
pub type LinkFlights =
    std::sync::Mutex<HashMap<String, Arc<OnceCell<Result<Arc<Fetched>, String>>>>>;

/// Fetches a next link, sharing one origin request among sessions asking for the same URL with
/// the same `Grip-Last` at the same time (a reconnect storm sends thousands), and bounding
/// the requests in flight with `link_permits`.
async fn fetch_coalesced(
    state: &Arc<State>,
    ctx: &HoldContext,
    target: &Target,
    path: &str,
    grip_last: &[(HeaderName, HeaderValue)],
) -> Result<Arc<Fetched>, String> {
    let mut key = format!(
        "{}{}{}",
        target.kind,
        if target.ssl { "s" } else { "" },
        path
    );
    for (_, v) in grip_last {
        key.push('\n');
        key.push_str(v.to_str().unwrap_or(""));
    }
    let cell = {
        let mut flights = state.link_flights.lock().unwrap_or_else(|p| p.into_inner());
        flights.entry(key.clone()).or_default().clone()
    };
    let result = cell
        .get_or_init(|| async {
            let _permit = state.link_permits.clone().acquire_owned().await;
            state.metrics.origin_refreshes.inc();
            let result = match state
                .origin
                .get_link(&ctx.route, target, &ctx.request, path, grip_last)
                .await
            {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    match read_limited(body, state.config.response_body_max).await {
                        Ok(body) => Ok(Arc::new(Fetched {
                            status: parts.status.as_u16(),
                            headers: parts.headers,
                            body,
                        })),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            // Later sessions must fetch afresh: only concurrent ones share this answer.
            let mut flights = state.link_flights.lock().unwrap_or_else(|p| p.into_inner());
            flights.remove(&key);
            result
        })
        .await;
    result.clone()
}

/// A held stream's body as hyper sees it: nothing, until hyper has flushed the head; then the
/// socket moves to `run_detached` and the body ends (see `detach.rs`).
struct DetachedBody {
    handle: DetachHandle,
    chunked: bool,
    session: Option<StreamSession>,
}

impl hyper::body::Body for DetachedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.handle.poll_take(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(socket) => {
                if let (Some(socket), Some(session)) = (socket, this.session.take()) {
                    let tracker = session.ctx.state.shutdown.tracker.clone();
                    // The connection's permit and gauge go with the socket; the rest of
                    // `Detach` is freed with hyper's connection.
                    let keep = this.handle.take_keep();
                    tracker.spawn(run_detached(
                        session,
                        socket.into_inner(),
                        this.chunked,
                        keep,
                    ));
                }
                std::task::Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

/// Writes a detached stream: the session's chunks, in chunked framing for HTTP/1.1 clients,
/// until the stream ends (terminating chunk, then close) or the client goes away.
///
/// Not an `async fn`: its arguments would be stored twice in the future (once as arguments,
/// once as the body's locals); an `async move` block keeps one copy of each.
/// `keep` (the connection's permit and gauge) lives as long as the stream. Client input is
/// ignored from here on, so the socket comes without its framing guard.
#[allow(clippy::manual_async_fn)] // deliberate: see above (888 bytes instead of 1,512)
fn run_detached(
    mut session: StreamSession,
    mut socket: tokio::net::TcpStream,
    chunked: bool,
    keep: Option<Box<dyn std::any::Any + Send>>,
) -> impl std::future::Future<Output = ()> {
    async move {
        // Mentioning it moves it into the future, which drops it when the stream ends.
        let _keep = &keep;
        loop {
            // Idle streams wait here, in a small future; `step`'s much larger state machine
            // lives on the heap only while there is work, so it is not part of every held
            // connection's task.
            tokio::select! {
                _ = std::future::poll_fn(|cx| session.poll_idle(cx)) => {}
                _ = client_gone(&socket) => return,
            }
            let next = tokio::select! {
                c = Box::pin(session.step(false)) => match c {
                    Step::Data(b) => Some(b),
                    Step::End => None,
                    // Nothing left to do at once (say, a refreshed next link had no news):
                    // wait above again, without this future.
                    Step::Idle => continue,
                },
                _ = client_gone(&socket) => return,
            };
            let written = match next {
                Some(data) => write_chunk(&mut socket, &data, chunked).await,
                None => {
                    if chunked {
                        let _ = socket.write_all(b"0\r\n\r\n").await;
                    }
                    let _ = socket.shutdown().await;
                    return;
                }
            };
            if written.is_err() {
                return;
            }
        }
    }
}

/// Resolves when the client closes its side (bytes it sends meanwhile are ignored).
///
/// Waits with `poll_read_ready`, which parks this task's waker in the socket's reader slot:
/// that replaces the waker hyper's (finished) connection task left there, which would
/// otherwise keep that task's memory (~1.6 KB) alive for as long as the stream is held.
async fn client_gone(socket: &tokio::net::TcpStream) {
    let mut scratch = [0u8; 16];
    loop {
        if std::future::poll_fn(|cx| socket.poll_read_ready(cx))
            .await
            .is_err()
        {
            return;
        }
        match socket.try_read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

/// Writes one chunk with a single vectored write where the socket allows.
async fn write_chunk(
    socket: &mut tokio::net::TcpStream,
    data: &[u8],
    chunked: bool,
) -> std::io::Result<()> {
    if !chunked {
        return socket.write_all(data).await;
    }
    let mut size = [0u8; 18];
    let n = chunk_size_line(data.len(), &mut size);
    let mut bufs = [
        std::io::IoSlice::new(&size[..n]),
        std::io::IoSlice::new(data),
        std::io::IoSlice::new(b"\r\n"),
    ];
    let mut slices = &mut bufs[..];
    while !slices.is_empty() {
        let n = socket.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Writes `<hex length>\r\n` into `out`; returns its length.
fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = 0;
    let mut v = len;
    loop {
        digits[n] = HEX[v & 0xf];
        n += 1;
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        out[i] = digits[n - 1 - i];
    }
    out[n] = b'\r';
    out[n + 1] = b'\n';
    n + 2
}

/// What goes out in one write: one item's shared bytes as they are (no copy), or several
/// items copied together (one write for everything queued).
#[derive(Default)]
struct Chunk {
    one: Option<Bytes>,
    many: Option<BytesMut>,
}

impl Chunk {
    fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if let Some(many) = self.many.as_mut() {
            many.extend_from_slice(&b);
        } else if let Some(first) = self.one.take() {
            let mut many = BytesMut::with_capacity(first.len() + b.len());
            many.extend_from_slice(&first);
            many.extend_from_slice(&b);
            self.many = Some(many);
        } else {
            self.one = Some(b);
        }
    }

    fn into_bytes(self) -> Option<Bytes> {
        self.many.map(BytesMut::freeze).or(self.one)
    }
}

/// Waits for an optional timer; never completes without one.
async fn poll_sleep(sleep: &mut Option<Pin<Box<Sleep>>>) {
    match sleep.as_mut() {
        Some(s) => s.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves a next link against the client's request: same host → the route's target;
/// another host → that host directly.
fn resolve_link(ctx: &HoldContext, uri: &str) -> Option<(Target, String)> {
    let current = ctx
        .route
        .targets
        .get(ctx.target)
        .or_else(|| ctx.route.targets.first())?
        .clone();
    if let Some(rest) = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
    {
        let ssl = uri.starts_with("https://");
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.eq_ignore_ascii_case(&ctx.request.host) {
            return Some((current, ctx.route.rewrite_path(path)));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (authority.to_string(), if ssl { 443 } else { 80 }),
        };
        let mut t = current;
        t.kind = TargetKind::Host { host, port };
        t.ssl = ssl;
        t.host_header = Some(authority.to_string());
        return Some((t, path.to_string()));
    }
    let path = if uri.starts_with('/') {
        uri.to_string()
    } else {
        let base = ctx.request.path_and_query.split('?').next().unwrap_or("/");
        let dir = &base[..base.rfind('/').map(|i| i + 1).unwrap_or(0)];
        format!("{dir}{uri}")
    };
    Some((current, ctx.route.rewrite_path(&path)))
}
