//! The HTTP control API (Pushpin-compatible, default `127.0.0.1:5561`): `POST /publish/`,
//! `POST /recover`, `GET /` (health) and `GET /metrics` (Prometheus).
//!
//! Invariants: a publish batch is validated whole before any item reaches the hub (one bad
//! item rejects the batch, as in Pushpin); bodies are bounded by `publish.http_body_max`
//! (413 over it); every error is a 4xx with a one-line `text/plain` reason.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::error::text_response;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::origin::{full, Body};

/// Shared state of the control API.
pub struct ControlState {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub body_max: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

/// Serves one control request. Never fails: errors become responses.
pub async fn handle(
    state: Arc<ControlState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let resp = match path {
        "/" => text_response(StatusCode::OK, "gripd API\n"),
        "/metrics" => {
            let mut r = text_response(StatusCode::OK, state.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/publish" | "/recover" => {
            if req.method() != Method::POST {
                let mut r = text_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("Method not allowed: {}.\n", req.method()),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                r
            } else {
                match accept_format(&req) {
                    None => text_response(
                        StatusCode::NOT_ACCEPTABLE,
                        "Not Acceptable. Supported formats are text/plain and application/json.\n",
                    ),
                    Some(fmt) if path == "/recover" => {
                        state.hub.recover();
                        ok(fmt, "Updated")
                    }
                    Some(fmt) => publish(&state, req, fmt).await,
                }
            }
        }
        _ => text_response(StatusCode::NOT_FOUND, "Not Found\n"),
    };
    Ok(resp)
}

async fn publish(state: &ControlState, req: Request<Incoming>, fmt: Format) -> Response<Body> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.body_max as u64) {
        tracing::warn!(
            size = declared,
            max = state.body_max,
            "publish rejected: body too large"
        );
        return text_response(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large.\n");
    }
    let body: Bytes = match Limited::new(req.into_body(), state.body_max)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            tracing::warn!(max = state.body_max, "publish rejected: body too large");
            return text_response(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large.\n");
        }
        Err(e) => {
            return text_response(
                StatusCode::BAD_REQUEST,
                format!("Error reading body: {e}\n"),
            );
        }
    };
    let items = match grip::parse_publish_body(&body) {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(error = %e, "publish rejected");
            return text_response(StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    };
    let count = items.len();
    for item in items {
        state.hub.publish(Arc::new(item));
    }
    state.metrics.publish_http.inc_by(count as u64);
    tracing::debug!(items = count, "published");
    ok(fmt, "Published")
}

fn ok(fmt: Format, message: &str) -> Response<Body> {
    match fmt {
        Format::Text => text_response(StatusCode::OK, format!("{message}\n")),
        Format::Json => {
            let mut r = Response::new(full(Bytes::from(format!(
                "{{\"message\": \"{message}\"}}\n"
            ))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    }
}

/// Pushpin's negotiation: text unless the client prefers JSON; nothing acceptable → `None`.
fn accept_format(req: &Request<Incoming>) -> Option<Format> {
    let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return Some(Format::Text);
    };
    for part in accept.split(',') {
        let t = part.split(';').next().unwrap_or("").trim();
        match t {
            "text/plain" | "text/*" | "*/*" | "*" => return Some(Format::Text),
            "application/json" | "application/*" => return Some(Format::Json),
            _ => {}
        }
    }
    None
}
