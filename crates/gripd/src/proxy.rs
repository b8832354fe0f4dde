//! The client-facing service: `Request → Response`. Route lookup, forwarding to the origin,
//! and the decision between pass-through and GRIP handling (`hold`).
//!
//! Invariants:
//! - Ambiguous framing never reaches an origin (`framing.rs` rejects it below hyper).
//! - Pass-through bodies are streamed both ways; only small request bodies (≤
//!   `retry_body_max`, known length) are buffered, so that a held request can be retried.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::detach::DetachHandle;
use crate::error::{text_response, ProxyError};
use crate::hold::{self, HoldContext};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::origin::{self, Body, ClientRequest, Origin};
use crate::routes::{Route, Routes, TargetKind};
use crate::shutdown::Shutdown;
use crate::ws;

/// The current routes; replaced whole on reload, so a request keeps the routes it started with.
pub type RoutesHandle = Arc<RwLock<Arc<Routes>>>;

/// Shared state of the client-facing service.
pub struct State {
    pub config: Arc<Config>,
    pub routes: RoutesHandle,
    pub origin: Origin,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// Bounds next-link requests in flight toward origins (reconnect storms).
    pub link_permits: Arc<Semaphore>,
    /// Next-link fetches in flight, shared between sessions asking for the same one.
    pub link_flights: crate::hold::LinkFlights,
    pub shutdown: Shutdown,
}

/// Serves one client request. Never fails: errors become responses.
pub async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    https: bool,
    detach: DetachHandle,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // Copied only when logged: this runs for every request.
    let logged = state.config.access_log.then(|| {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        (req.method().clone(), path.to_string())
    });
    let resp = match serve(&state, peer, https, detach, req).await {
        Ok(r) => r,
        Err((route, e)) => {
            state.metrics.requests_error.inc();
            e.log(&route.map(|r| r.name()).unwrap_or_default());
            e.response(state.config.debug)
        }
    };
    if let Some((method, path)) = logged {
        tracing::info!(%peer, %method, path, status = resp.status().as_u16(), "request");
    }
    Ok(resp)
}

async fn serve(
    state: &Arc<State>,
    peer: SocketAddr,
    https: bool,
    detach: DetachHandle,
    req: Request<Incoming>,
) -> Result<Response<Body>, (Option<Arc<Route>>, ProxyError)> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let host_only = strip_port(&host);
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let route: Arc<Route> = {
        let routes = state
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let path = req.uri().path();
        match routes.find(host_only, path, is_ws, https) {
            Some(r) => r.clone(),
            None => return Err((None, ProxyError::NoRoute(host_only.to_string()))),
        }
    };
    // Errors name their route; the name is only made when one is logged.
    let blame = |e| (Some(route.clone()), e);
    if matches!(
        route.targets.first().map(|t| &t.kind),
        Some(TargetKind::Test)
    ) {
        return Ok(test_handler(&path_and_query));
    }

    if is_ws {
        let hs = ws::Handshake {
            peer,
            https,
            host,
            path_and_query,
        };
        return Box::pin(ws::serve(state, route.clone(), req, hs))
            .await
            .map_err(blame);
    }
    if route.targets.first().is_some_and(|t| t.over_http) && ws::is_events_request(req.headers()) {
        return Ok(text_response(
            StatusCode::FORBIDDEN,
            "Client not allowed to send WebSocket events directly.\n",
        ));
    }

    // Held streams may leave hyper once their head is written (see `detach.rs`); HEAD
    // responses have no body to hold.
    let detach = (req.method() != http::Method::HEAD)
        .then(|| (detach, req.version() == http::Version::HTTP_11));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    origin::clean_request_headers(&mut headers);
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = parts.version.eq(&http::Version::HTTP_11)
        && hyper::body::Body::size_hint(&body).exact().is_none();
    // Keep small bodies (retries, failover); stream the rest.
    let (kept, streamed) = match (content_length, chunked) {
        (Some(n), _) if n as usize <= state.config.retry_body_max => {
            let bytes = Limited::new(body, state.config.retry_body_max)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| blame(ProxyError::BadRequest(format!("reading request body: {e}"))))?;
            (Some(bytes), None)
        }
        (None, false) => (Some(Bytes::new()), None),
        _ => (None, Some(origin::boxed(body))),
    };
    let request = ClientRequest {
        method: parts.method,
        path_and_query,
        headers,
        body: kept,
        peer,
        https,
        host,
    };
    let (resp, target) = state
        .origin
        .send_with_failover(&route, &request, streamed, &[])
        .await
        .map_err(blame)?;

    if !route.props.no_grip && grip::is_grip_response(resp.headers()) {
        state.metrics.requests_grip.inc();
        let ctx = HoldContext {
            state: state.clone(),
            route: route.clone(),
            target,
            request,
            detach,
        };
        // Boxed, like the WebSocket branch: the pass-through future stays small.
        return Box::pin(hold::respond(ctx, resp)).await.map_err(blame);
    }
    state.metrics.requests_passthrough.inc();
    let (mut parts, body) = resp.into_parts();
    origin::clean_response_headers(&mut parts.headers);
    Ok(Response::from_parts(parts, origin::boxed(body)))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// Pushpin's built-in `test` target, for smoke tests without an origin.
fn test_handler(path_and_query: &str) -> Response<Body> {
    let path = path_and_query.split('?').next().unwrap_or("/");
    if path == "/" {
        return text_response(StatusCode::OK, "Hello from the Pushpin test handler!\n");
    }
    let mut resp = text_response(StatusCode::NOT_FOUND, "no such test resource\n");
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
