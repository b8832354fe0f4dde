//! grip: the GRIP protocol as Pushpin speaks it, with no I/O.
//!
//! This crate turns bytes into typed values and back; the `gripd` daemon does everything that
//! waits, stores or sends. It knows nothing about tokio, hyper or ZeroMQ, and every parser is
//! total: any input yields `Ok` or `Err`, never a panic (each has a proptest on arbitrary bytes).
//!
//! - [`header`]: the `Grip-*` header-value syntax (comma lists, `; name=value` params, quoting).
//! - [`instruct`]: origin response → [`Instruct`] (hold mode, channels, keep-alive, next link…).
//! - [`publish`]: publish items from JSON or tnetstring → [`PublishItem`]; control API body
//!   errors with Pushpin's exact texts; JSON Patch for `body-patch`.
//! - [`filter`]: subscription filters (`skip-self`, `skip-users`, `require-sub`, `build-id`,
//!   `var-subst`).
//! - [`sig`]: `Grip-Sig` HS256 JWT signing and validation.
//! - [`tnetstring`]: the ZeroMQ publish encoding.
//! - [`wsevent`]: WebSocket-over-HTTP events and `c:` control messages.

pub mod filter;
pub mod header;
pub mod instruct;
pub mod publish;
pub mod sig;
pub mod tnetstring;
mod value;
pub mod wsevent;

pub use filter::{
    apply_content_filters, content_filters_of, should_deliver, FilterContext, FilterError,
};
pub use header::{parse_header_items, quote, HeaderError, HeaderItem};
pub use instruct::{
    is_grip_response, is_instruct_body, reason_phrase, strip_grip_headers, ChannelSpec, HoldMode,
    Instruct, InstructError, InstructResponse, KeepAlive, KeepAliveMode, NextLink,
};
pub use publish::{
    json_patch, parse_publish_body, Action, HttpResponseFormat, HttpStreamFormat, PatchError,
    PublishError, PublishItem, ResponseBody, WsMessageFormat, WsMessageType,
};
pub use sig::{sign, validate, SigError, SigKey, SigKeyError};
pub use tnetstring::{Tn, TnError};
pub use wsevent::{
    encode_events, parse_events, parse_ws_control, WsControl, WsEvent, WsEventError,
};

/// The `Grip-Feature` request header value Pushpin 1.36 sends to origins.
pub const GRIP_FEATURE: &str = "status, session, link:next, filter:skip-self, filter:skip-users, filter:require-sub, filter:build-id, filter:var-subst";
