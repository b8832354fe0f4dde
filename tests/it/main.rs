//! The single integration-test binary: the real gripd in-process against real origins.

#![allow(clippy::unwrap_used)]

mod cli;
mod grip_hold;
mod passthrough;
mod publish_http;
mod publish_zmq;
mod reliability;
mod routes_reload;
mod ws;
