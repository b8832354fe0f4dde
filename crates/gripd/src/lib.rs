//! gripd: a GRIP proxy. Ordinary requests pass through to the origin; responses carrying GRIP
//! instructions are held open and fed by publishes. See docs/ARCHITECTURE.md for the codemap.
//!
//! Modules in reading order: `config` → `app` (composition root) → `server` (accept loops) →
//! `proxy` (client service) → `origin` (origin client) → `hold` (held connections) → `ws`
//! (WebSockets: pass-through and WebSocket-over-HTTP) → `hub` (channels and fan-out) →
//! `publish_http` (control API) → `publish_zmq` (ZeroMQ inputs) → `publish_cli`
//! (`gripd publish`) → `routes`, `metrics`, `error`, `shutdown`, `telemetry`.

pub mod app;
pub mod cli;
pub mod config;
pub mod detach;
pub mod error;
pub mod framing;
pub mod h1;
pub mod head_timer;
pub mod hold;
pub mod hub;
pub mod metrics;
pub mod origin;
pub mod pool;
pub mod proxy;
pub mod publish_cli;
pub mod publish_http;
pub mod publish_zmq;
pub mod queue;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod ws;
