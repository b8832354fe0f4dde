//! Proxy errors, who is to blame for them, and the one place they become responses.

use bytes::Bytes;
use http::{header, Response, StatusCode};

use crate::origin::{full, Body};

/// The body Pushpin sends for any failure on the origin side.
pub const ORIGIN_ERROR_BODY: &str = "Error while proxying to origin.\n";

/// Who caused a failure: decides the status code family and the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Origin,
    Internal,
}

/// Everything that can go wrong while proxying one request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("no route for host: {0}")]
    NoRoute(String),
    #[error("cannot connect to origin {0}: {1}")]
    OriginConnect(String, String),
    #[error("origin {0} failed: {1}")]
    OriginFailed(String, String),
    #[error("origin {0} timed out")]
    OriginTimeout(String),
    #[error("invalid GRIP instructions: {0}")]
    Instruct(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Who is to blame.
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::BadRequest(_) | ProxyError::NoRoute(_) => Blame::Client,
            ProxyError::OriginConnect(..)
            | ProxyError::OriginFailed(..)
            | ProxyError::OriginTimeout(_)
            | ProxyError::Instruct(_) => Blame::Origin,
            ProxyError::Internal(_) => Blame::Internal,
        }
    }

    /// The response the client gets; `debug` adds the details (Pushpin's `debug` option).
    pub fn response(&self, debug: bool) -> Response<Body> {
        let (status, body) = match self {
            ProxyError::BadRequest(m) => (StatusCode::BAD_REQUEST, format!("{m}\n")),
            ProxyError::NoRoute(host) => (
                StatusCode::BAD_GATEWAY,
                format!("No route for host: {host}\n"),
            ),
            ProxyError::OriginTimeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                if debug {
                    format!("{self}\n")
                } else {
                    "Timed out waiting for origin.\n".into()
                },
            ),
            ProxyError::OriginConnect(..)
            | ProxyError::OriginFailed(..)
            | ProxyError::Instruct(_) => (
                StatusCode::BAD_GATEWAY,
                if debug {
                    format!("{self}\n")
                } else {
                    ORIGIN_ERROR_BODY.into()
                },
            ),
            ProxyError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error.\n".into(),
            ),
        };
        text_response(status, body)
    }

    /// Logs the error once, at the level its blame calls for.
    pub fn log(&self, route: &str) {
        match self.blame() {
            Blame::Client => tracing::debug!(route, error = %self, "request rejected"),
            Blame::Origin => tracing::warn!(route, error = %self, "origin request failed"),
            Blame::Internal => tracing::error!(route, error = %self, "internal error"),
        }
    }
}

/// A `text/plain` response.
pub fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}
