//! Publish items: what a publisher sends to a channel, in up to three transport formats.
//!
//! Items arrive as JSON over the HTTP control API (`{"items": [...]}`) and ZMQ (`J` prefix), or
//! as tnetstrings over ZMQ. Both are validated by the same code, with Pushpin's error texts, so
//! the HTTP server can answer `400 <Display>\n` exactly like Pushpin. Format keys may sit in a
//! `formats` object or directly on the item (django-eventstream does the latter).
//!
//! `body-patch` (JSON Patch, RFC 6902) is parsed here and applied by [`json_patch`] when a
//! response hold is answered.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;
use thiserror::Error;

use crate::tnetstring::Tn;
use crate::value::{
    decode_base64, get_headers, get_int, get_list, get_object, get_string, get_string_list,
    get_string_map, Node,
};

/// What a format asks the receiving session to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Deliver the content (the default).
    Send,
    /// Fetch fresh state from the origin (retry / next link); content is ignored.
    Hint,
    /// End the stream / close the WebSocket.
    Close,
    /// WebSocket-over-HTTP: make a request to the origin now (Pushpin 1.38+).
    Refresh,
}

/// The body of an `http-response` publish.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseBody {
    /// Replace the body (`body`, or base64 `body-bin`).
    Body(Bytes),
    /// Apply a JSON Patch (a JSON list) to the held response's original body.
    Patch(Value),
}

/// `http-response`: delivered to response (long-poll) holds.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponseFormat {
    pub action: Action,
    /// 0–999, default 200.
    pub code: u16,
    /// `None`: use the standard phrase for `code`.
    pub reason: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: ResponseBody,
    /// Content filters the publisher declared, if any.
    pub content_filters: Option<Vec<String>>,
}

/// `http-stream`: appended to stream holds.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpStreamFormat {
    pub action: Action,
    pub content: Bytes,
    pub content_filters: Option<Vec<String>>,
}

/// WebSocket message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsMessageType {
    Text,
    Binary,
    Ping,
    Pong,
}

/// `ws-message`: delivered to GRIP WebSocket sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct WsMessageFormat {
    pub action: Action,
    /// Text for `content`, binary for `content-bin`, unless `type` says otherwise.
    pub kind: WsMessageType,
    pub content: Bytes,
    pub content_filters: Option<Vec<String>>,
    /// `close` only.
    pub close_code: Option<u16>,
    /// `close` only.
    pub close_reason: Option<String>,
}

/// One published item.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PublishItem {
    /// Empty when parsed with `require_channel = false` and no channel given (ZMQ SUB: the
    /// topic frame supplies it).
    pub channel: String,
    pub id: Option<String>,
    pub prev_id: Option<String>,
    pub meta: BTreeMap<String, String>,
    /// Bypass the sequencer.
    pub no_seq: bool,
    pub http_response: Option<HttpResponseFormat>,
    pub http_stream: Option<HttpStreamFormat>,
    pub ws_message: Option<WsMessageFormat>,
}

/// Why a publish was rejected. `Display` is Pushpin's exact text (without the trailing newline).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublishError {
    #[error("Body is not valid JSON.")]
    NotJson,
    #[error("Invalid format.")]
    NotObject,
    #[error("Invalid format: object does not contain 'items'")]
    MissingItems,
    #[error("Invalid format: object contains 'items' with wrong type")]
    ItemsWrongType,
    /// An item failed validation; the detail is Pushpin's (empty for an unknown `action`,
    /// exactly as Pushpin answers).
    #[error("Invalid format: {0}")]
    Invalid(String),
}

/// Why a JSON Patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PatchError {
    #[error("patch is not a list")]
    NotAList,
    #[error("patch operation {0} is invalid")]
    InvalidOperation(usize),
    #[error("patch operation {0}: path not found")]
    PathNotFound(usize),
    #[error("patch operation {0}: test failed")]
    TestFailed(usize),
}

/// Parses an HTTP control API body, `{"items": [...]}`. One invalid item rejects the batch.
pub fn parse_publish_body(body: &[u8]) -> Result<Vec<PublishItem>, PublishError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| PublishError::NotJson)?;
    let obj = doc.as_object().ok_or(PublishError::NotObject)?;
    let items = obj.get("items").ok_or(PublishError::MissingItems)?;
    let items = items.as_array().ok_or(PublishError::ItemsWrongType)?;
    items
        .iter()
        .map(|v| PublishItem::from_json(v, true))
        .collect()
}

// === impl PublishItem ===

impl PublishItem {
    /// Parses one item from JSON. With `require_channel`, a missing `channel` is an error.
    pub fn from_json(v: &Value, require_channel: bool) -> Result<Self, PublishError> {
        from_node(v, require_channel).map_err(PublishError::Invalid)
    }

    /// Parses one item from a tnetstring (`*-bin` fields are raw bytes, not base64).
    pub fn from_tnetstring(v: &Tn, require_channel: bool) -> Result<Self, PublishError> {
        from_node(v, require_channel).map_err(PublishError::Invalid)
    }
}

fn from_node<N: Node>(v: &N, require_channel: bool) -> Result<PublishItem, String> {
    let pn = "publish item object";
    if !v.is_object() {
        return Err(format!("{pn} is not an object"));
    }
    let channel = if require_channel {
        get_string(v, pn, "channel", true)?.unwrap_or_default()
    } else {
        v.field("channel").and_then(N::text).unwrap_or_default()
    };
    let mut item = PublishItem {
        channel,
        id: get_string(v, pn, "id", false)?,
        prev_id: get_string(v, pn, "prev-id", false)?,
        ..PublishItem::default()
    };

    let formats = get_object(v, pn, "formats")?.unwrap_or(v);
    let response = formats.field("http-response");
    let stream = formats.field("http-stream");
    let ws = formats.field("ws-message");
    if response.is_none() && stream.is_none() && ws.is_none() {
        return Err("no formats specified".to_owned());
    }
    item.http_response = response.map(parse_http_response).transpose()?;
    item.http_stream = stream.map(parse_http_stream).transpose()?;
    item.ws_message = ws.map(parse_ws_message).transpose()?;

    item.meta = get_string_map(v, pn, "meta")?.into_iter().collect();

    if let Some(size) = get_int(v, pn, "size")? {
        if size < 0 {
            return Err(format!("{pn} contains 'size' with invalid value"));
        }
    }
    if let Some(no_seq) = v.field("no-seq") {
        item.no_seq = no_seq
            .boolean()
            .ok_or_else(|| format!("{pn} contains 'no-seq' with wrong type"))?;
    }
    Ok(item)
}

fn parse_action<N: Node>(v: &N, pn: &str) -> Result<Action, String> {
    match get_string(v, pn, "action", false)?.as_deref() {
        None | Some("send") => Ok(Action::Send),
        Some("hint") => Ok(Action::Hint),
        Some("close") => Ok(Action::Close),
        Some("refresh") => Ok(Action::Refresh),
        // Pushpin 1.36 rejects the item with an empty message; gripd names the problem.
        Some(other) => Err(format!("{pn} contains unknown action '{other}'")),
    }
}

fn parse_content_filters<N: Node>(v: &N, pn: &str) -> Result<Option<Vec<String>>, String> {
    get_string_list(
        v,
        pn,
        "content-filters",
        "content-filters contains element with wrong type",
    )
}

/// A base64 `*-bin` member (JSON only).
fn get_base64<N: Node>(v: &N, pn: &str, key: &str) -> Result<Option<Bytes>, String> {
    let Some(text) = get_string(v, pn, key, false)? else {
        return Ok(None);
    };
    decode_base64(text.as_bytes())
        .map(|b| Some(Bytes::from(b)))
        .ok_or_else(|| format!("{pn} contains '{key}' with invalid value"))
}

fn get_content<N: Node>(v: &N, pn: &str, key: &str) -> Result<Option<Bytes>, String> {
    match v.field(key) {
        None => Ok(None),
        Some(c) => c
            .bytes()
            .map(Some)
            .ok_or_else(|| format!("{pn} contains '{key}' with wrong type")),
    }
}

fn parse_http_response<N: Node>(v: &N) -> Result<HttpResponseFormat, String> {
    let pn = "'http-response'";
    if !v.is_object() {
        return Err(format!("{pn} is not an object"));
    }
    let mut out = HttpResponseFormat {
        action: parse_action(v, pn)?,
        code: 200,
        reason: None,
        headers: Vec::new(),
        body: ResponseBody::Body(Bytes::new()),
        content_filters: None,
    };
    if out.action != Action::Send {
        return Ok(out);
    }
    if let Some(code) = get_int(v, pn, "code")? {
        out.code = u16::try_from(code)
            .ok()
            .filter(|c| *c <= 999)
            .ok_or_else(|| format!("{pn} contains 'code' with invalid value"))?;
    }
    out.reason = get_string(v, pn, "reason", false)?.filter(|r| !r.is_empty());
    out.headers = get_headers(v, pn)?;
    out.content_filters = parse_content_filters(v, pn)?;
    let body_bin = if N::IS_JSON {
        get_base64(v, pn, "body-bin")?
    } else {
        None
    };
    out.body = if let Some(b) = body_bin {
        ResponseBody::Body(b)
    } else if let Some(b) = get_content(v, pn, "body")? {
        ResponseBody::Body(b)
    } else if let Some(patch) = get_list(v, pn, "body-patch", false)? {
        ResponseBody::Patch(Value::Array(patch.iter().map(N::to_json).collect()))
    } else if N::IS_JSON {
        return Err(format!(
            "{pn} does not contain 'body', 'body-bin', or 'body-patch'"
        ));
    } else {
        return Err(format!("{pn} does not contain 'body' or 'body-patch'"));
    };
    Ok(out)
}

fn parse_http_stream<N: Node>(v: &N) -> Result<HttpStreamFormat, String> {
    let pn = "'http-stream'";
    if !v.is_object() {
        return Err(format!("{pn} is not an object"));
    }
    let mut out = HttpStreamFormat {
        action: parse_action(v, pn)?,
        content: Bytes::new(),
        content_filters: None,
    };
    if out.action != Action::Send {
        return Ok(out);
    }
    out.content_filters = parse_content_filters(v, pn)?;
    let content_bin = if N::IS_JSON {
        get_base64(v, pn, "content-bin")?
    } else {
        None
    };
    out.content = match content_bin {
        Some(b) => b,
        None => match get_content(v, pn, "content")? {
            Some(c) => c,
            None if N::IS_JSON => {
                return Err(format!("{pn} does not contain 'content' or 'content-bin'"))
            }
            None => return Err(format!("{pn} does not contain 'content'")),
        },
    };
    Ok(out)
}

fn parse_ws_message<N: Node>(v: &N) -> Result<WsMessageFormat, String> {
    let pn = "'ws-message'";
    if !v.is_object() {
        return Err(format!("{pn} is not an object"));
    }
    let mut out = WsMessageFormat {
        action: parse_action(v, pn)?,
        kind: WsMessageType::Text,
        content: Bytes::new(),
        content_filters: None,
        close_code: None,
        close_reason: None,
    };
    match out.action {
        Action::Send => {
            let kind = match get_string(v, pn, "type", false)?.as_deref() {
                None => None,
                Some("text") => Some(WsMessageType::Text),
                Some("binary") => Some(WsMessageType::Binary),
                Some("ping") => Some(WsMessageType::Ping),
                Some("pong") => Some(WsMessageType::Pong),
                Some(_) => return Err(format!("{pn} contains 'type' with unknown value")),
            };
            out.content_filters = parse_content_filters(v, pn)?;
            if let Some(bin) = v.field("content-bin") {
                let wrong = || format!("{pn} contains 'content-bin' with wrong type");
                out.content = if N::IS_JSON {
                    let text = bin.text().ok_or_else(wrong)?;
                    decode_base64(text.as_bytes())
                        .map(Bytes::from)
                        .ok_or_else(|| format!("{pn} contains 'content-bin' with invalid value"))?
                } else {
                    bin.bytes().ok_or_else(wrong)?
                };
                out.kind = kind.unwrap_or(WsMessageType::Binary);
            } else if let Some(c) = get_content(v, pn, "content")? {
                out.content = c;
                out.kind = kind.unwrap_or(WsMessageType::Text);
            } else {
                match kind {
                    Some(k @ (WsMessageType::Ping | WsMessageType::Pong)) => out.kind = k,
                    _ => return Err(format!("{pn} does not contain 'content' or 'content-bin'")),
                }
            }
        }
        Action::Close => {
            if let Some(code) = get_int(v, pn, "code")? {
                out.close_code = Some(
                    u16::try_from(code)
                        .map_err(|_| format!("{pn} contains 'code' with invalid value"))?,
                );
            }
            out.close_reason = get_string(v, pn, "reason", false)?.filter(|r| !r.is_empty());
        }
        Action::Hint | Action::Refresh => {}
    }
    Ok(out)
}

/// Applies a JSON Patch (RFC 6902: add, remove, replace, move, copy, test) to `doc`. Atomic:
/// on error the input is untouched and nothing is returned.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch.as_array().ok_or(PatchError::NotAList)?;
    let mut out = doc.clone();
    for (n, op) in ops.iter().enumerate() {
        apply_op(&mut out, op, n)?;
    }
    Ok(out)
}

fn apply_op(doc: &mut Value, op: &Value, n: usize) -> Result<(), PatchError> {
    let invalid = || PatchError::InvalidOperation(n);
    let not_found = || PatchError::PathNotFound(n);
    let name = op.get("op").and_then(Value::as_str).ok_or_else(invalid)?;
    let path = op.get("path").and_then(Value::as_str).ok_or_else(invalid)?;
    let path = parse_pointer(path).ok_or_else(invalid)?;
    let value = || op.get("value").cloned().ok_or_else(invalid);
    let from = || {
        op.get("from")
            .and_then(Value::as_str)
            .and_then(parse_pointer)
            .ok_or_else(invalid)
    };
    match name {
        "add" => pointer_add(doc, &path, value()?).ok_or_else(not_found),
        "remove" => pointer_remove(doc, &path).map(drop).ok_or_else(not_found),
        "replace" => {
            let v = value()?;
            let target = pointer_get_mut(doc, &path).ok_or_else(not_found)?;
            *target = v;
            Ok(())
        }
        "move" => {
            let from = from()?;
            if path.len() > from.len() && path[..from.len()] == from[..] {
                return Err(invalid());
            }
            let v = pointer_remove(doc, &from).ok_or_else(not_found)?;
            pointer_add(doc, &path, v).ok_or_else(not_found)
        }
        "copy" => {
            let v = pointer_get_mut(doc, &from()?)
                .map(|v| v.clone())
                .ok_or_else(not_found)?;
            pointer_add(doc, &path, v).ok_or_else(not_found)
        }
        "test" => {
            let expected = value()?;
            let actual = pointer_get_mut(doc, &path).ok_or_else(not_found)?;
            if *actual == expected {
                Ok(())
            } else {
                Err(PatchError::TestFailed(n))
            }
        }
        _ => Err(invalid()),
    }
}

/// Splits a JSON Pointer into unescaped tokens (`""` is the whole document).
fn parse_pointer(p: &str) -> Option<Vec<String>> {
    if p.is_empty() {
        return Some(Vec::new());
    }
    let rest = p.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Option<usize> {
    if allow_end && token == "-" {
        return Some(len);
    }
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    let i: usize = token.parse().ok()?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    (i <= max && (allow_end || len > 0)).then_some(i)
}

fn pointer_get_mut<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = doc;
    for token in path {
        cur = match cur {
            Value::Object(o) => o.get_mut(token)?,
            Value::Array(a) => {
                let i = array_index(token, a.len(), false)?;
                a.get_mut(i)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

fn pointer_add(doc: &mut Value, path: &[String], value: Value) -> Option<()> {
    let Some((last, parent)) = path.split_last() else {
        *doc = value;
        return Some(());
    };
    match pointer_get_mut(doc, parent)? {
        Value::Object(o) => {
            o.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = array_index(last, a.len(), true)?;
            a.insert(i, value);
        }
        _ => return None,
    }
    Some(())
}

fn pointer_remove(doc: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parent) = path.split_last()?;
    match pointer_get_mut(doc, parent)? {
        Value::Object(o) => o.remove(last),
        Value::Array(a) => {
            let i = array_index(last, a.len(), false)?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
