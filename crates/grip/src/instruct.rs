//! GRIP instructions: what an origin response asks the proxy to do (hold, subscribe, keep alive).
//!
//! Instructions come from `Grip-*` response headers and, optionally, from an
//! `application/grip-instruct` JSON body. [`Instruct::from_response`] parses both the way
//! Pushpin 1.36 does, including its defaults and clamps (response-hold timeout default 55 s,
//! minimum 5 s; keep-alive timeout default 55 s, minimum 1 s; next-link timeout default 120 s).
//!
//! Leniency is deliberate and matches Pushpin: a `Grip-Channel`, `Grip-Set-Meta` or `Grip-Link`
//! value with broken quoting is skipped rather than failing the response, and unknown filter names
//! are kept (filters ignore them). Values are case-sensitive (`Grip-Hold: Stream` is an error).

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::HeaderMap;
use serde_json::Value;
use thiserror::Error;

use crate::header::{lossy, parse_item, parse_params, split_values};
use crate::value::{
    decode_base64, get_headers, get_int, get_list, get_object, get_string, get_string_list,
    get_string_map, Node,
};

/// Response-hold timeout when `Grip-Timeout` is absent.
pub const DEFAULT_RESPONSE_TIMEOUT_SECS: u64 = 55;
/// Smallest response-hold timeout; lower values are raised to this.
pub const MIN_RESPONSE_TIMEOUT_SECS: u64 = 5;
/// Keep-alive timeout when `Grip-Keep-Alive` has no `timeout`.
pub const DEFAULT_KEEP_ALIVE_TIMEOUT_SECS: u64 = 55;
/// Smallest keep-alive timeout; lower values are raised to this.
pub const MIN_KEEP_ALIVE_TIMEOUT_SECS: u64 = 1;
/// Next-link refresh timeout when `Grip-Link` has no `timeout`.
pub const DEFAULT_NEXT_LINK_TIMEOUT_SECS: u64 = 120;

/// The `Content-Type` of a JSON instruct body.
pub const INSTRUCT_CONTENT_TYPE: &str = "application/grip-instruct";

/// How the client request is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    /// Long-poll: nothing is sent until a publish or the timeout.
    Response,
    /// Streaming: the response is sent at once and published content is appended.
    Stream,
}

/// One channel to subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelSpec {
    /// Channel name as given by the origin (the route prefix is not applied here).
    pub name: String,
    /// Id of the last item the origin already reflected, if any.
    pub prev_id: Option<String>,
    /// Filter names in order; unknown names are kept and ignored by the filter code.
    pub filters: Vec<String>,
}

/// When keep-alive data is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveMode {
    /// After `timeout` seconds without any data.
    Idle,
    /// Every `timeout` seconds, whatever else is sent.
    Interval,
}

/// Stream keep-alive settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepAlive {
    /// Bytes to write (already decoded from cstring/base64).
    pub data: Bytes,
    /// Seconds, at least [`MIN_KEEP_ALIVE_TIMEOUT_SECS`].
    pub timeout_secs: u64,
    pub mode: KeepAliveMode,
}

/// `Grip-Link: <uri>; rel=next`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextLink {
    /// As given, unresolved (may be relative to the request URI).
    pub uri: String,
    /// Refresh timeout in seconds (default [`DEFAULT_NEXT_LINK_TIMEOUT_SECS`]).
    pub timeout_secs: u64,
}

/// The response described by a JSON instruct body (`response` member).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstructResponse {
    pub code: u16,
    /// `None` means "use the standard reason phrase" (see [`reason_phrase`]).
    pub reason: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Parsed GRIP instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruct {
    /// `None`: no hold (plain response, possibly with a next link).
    pub hold: Option<HoldMode>,
    pub channels: Vec<ChannelSpec>,
    /// Response-hold timeout, clamped: default 55, minimum 5.
    pub timeout_secs: u64,
    pub keep_alive: Option<KeepAlive>,
    /// Subscription meta from `Grip-Set-Meta` / JSON `hold.meta`; keys unique, later wins.
    pub meta: Vec<(String, String)>,
    /// `Grip-Status`: code and optional reason (none → standard phrase).
    pub status: Option<(u16, Option<String>)>,
    /// The last `Grip-Link` with `rel=next`.
    pub next_link: Option<NextLink>,
    /// The last `Grip-Link` with `rel=gone` (Pushpin 1.41+), unresolved.
    pub gone_link: Option<String>,
    /// `Grip-Expose-Headers`: when present, only these origin headers reach the client.
    pub expose_headers: Option<Vec<String>>,
    /// Only from an `application/grip-instruct` body: the response to use instead of the
    /// origin's (status from `Grip-Status` unless the body sets `code`).
    pub response: Option<InstructResponse>,
}

/// Why instructions were rejected. The daemon answers 502 and may show this text in debug mode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InstructError {
    #[error("Grip-Hold must be set to either 'response' or 'stream'")]
    InvalidHold,
    #[error("failed to parse Grip-Channel")]
    InvalidChannel,
    #[error("failed to parse Grip-Timeout")]
    InvalidTimeout,
    #[error("Grip-Timeout has invalid value")]
    NegativeTimeout,
    #[error("Grip-Keep-Alive cannot be empty")]
    EmptyKeepAlive,
    #[error("no such Grip-Keep-Alive mode '{0}'")]
    UnknownKeepAliveMode(String),
    #[error("no such Grip-Keep-Alive format '{0}'")]
    UnknownKeepAliveFormat(String),
    #[error("failed to parse Grip-Keep-Alive timeout value")]
    InvalidKeepAliveTimeout,
    #[error("failed to parse Grip-Keep-Alive cstring format")]
    InvalidKeepAliveCstring,
    #[error("failed to parse Grip-Keep-Alive base64 format")]
    InvalidKeepAliveBase64,
    #[error("Grip-Set-Meta cannot be empty")]
    EmptySetMeta,
    #[error("Grip-Status contains invalid status code")]
    InvalidStatus,
    #[error("failed to parse Grip-Link value")]
    InvalidLink,
    #[error("Grip-Link contains invalid link")]
    InvalidLinkUri,
    #[error("failed to parse Grip-Link timeout value")]
    InvalidLinkTimeout,
    #[error("response code for application/grip-instruct content must be 200")]
    InstructNotOk,
    #[error("failed to parse application/grip-instruct content as JSON")]
    InstructNotJson,
    /// A shape error inside the JSON body, in Pushpin's wording.
    #[error("{0}")]
    InstructBody(String),
}

/// Whether the proxy must process this origin response as GRIP: any header whose name starts
/// with `grip-` (case-insensitive), or a `application/grip-instruct` content type.
pub fn is_grip_response(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|k| k.as_str().as_bytes().starts_with(b"grip-"))
        || is_instruct_body(headers)
}

/// Whether the body is a JSON instruct (`Content-Type: application/grip-instruct`, params
/// ignored).
pub fn is_instruct_body(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let bytes = v.as_bytes();
        let first = bytes.split(|&b| b == b';').next().unwrap_or(bytes);
        first
            .trim_ascii()
            .eq_ignore_ascii_case(INSTRUCT_CONTENT_TYPE.as_bytes())
    })
}

/// Removes every `Grip-*` header (they never reach the client).
pub fn strip_grip_headers(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().as_bytes().starts_with(b"grip-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(&name);
    }
}

/// The standard reason phrase for a status code (Pushpin's table; unknown codes get
/// `Undefined Reason`, as in Pushpin).
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        306 => "Reserved",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Requested Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "Undefined Reason",
    }
}

// === impl Instruct ===

impl Default for Instruct {
    fn default() -> Self {
        Self {
            hold: None,
            channels: Vec::new(),
            timeout_secs: DEFAULT_RESPONSE_TIMEOUT_SECS,
            keep_alive: None,
            meta: Vec::new(),
            status: None,
            next_link: None,
            gone_link: None,
            expose_headers: None,
            response: None,
        }
    }
}

impl Instruct {
    /// Parses the `Grip-*` headers only (a JSON instruct body is ignored).
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, InstructError> {
        let mut out = Instruct::default();

        if let Some(v) = headers.get("grip-hold") {
            out.hold = Some(match v.as_bytes() {
                b"response" => HoldMode::Response,
                b"stream" => HoldMode::Stream,
                _ => return Err(InstructError::InvalidHold),
            });
        }

        out.channels = parse_channels(headers)?;

        if let Some(v) = headers.get("grip-timeout") {
            let t = parse_int(v.as_bytes()).ok_or(InstructError::InvalidTimeout)?;
            out.timeout_secs = u64::try_from(t).map_err(|_| InstructError::NegativeTimeout)?;
        }
        out.timeout_secs = out.timeout_secs.max(MIN_RESPONSE_TIMEOUT_SECS);

        let expose: Vec<String> = headers
            .get_all("grip-expose-headers")
            .iter()
            .flat_map(|v| split_values(v.as_bytes()))
            .filter(|p| !p.is_empty())
            .map(lossy)
            .collect();
        if !expose.is_empty() {
            out.expose_headers = Some(expose);
        }

        if let Some(v) = headers.get("grip-keep-alive") {
            out.keep_alive = parse_keep_alive(v.as_bytes())?;
        }

        for v in headers.get_all("grip-set-meta") {
            for part in split_values(v.as_bytes()) {
                let Ok(params) = parse_params(part) else {
                    continue;
                };
                let Some((name, value)) = params.into_iter().next() else {
                    return Err(InstructError::EmptySetMeta);
                };
                set_meta(&mut out.meta, name, value.unwrap_or_default());
            }
        }

        if let Some(v) = headers.get("grip-status") {
            out.status = parse_status(v.as_bytes())?;
        }

        parse_links(headers, &mut out)?;

        Ok(out)
    }

    /// Parses a whole origin response: the `Grip-*` headers, then, when the content type is
    /// `application/grip-instruct`, the JSON body (which must come with status 200).
    pub fn from_response(
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Self, InstructError> {
        let mut out = Self::from_headers(headers)?;
        if !is_instruct_body(headers) {
            return Ok(out);
        }
        if status != 200 {
            return Err(InstructError::InstructNotOk);
        }
        let doc: Value =
            serde_json::from_slice(body).map_err(|_| InstructError::InstructNotJson)?;
        if !doc.is_object() {
            return Err(InstructError::InstructBody(
                "instruct must be an object".to_owned(),
            ));
        }
        out.apply_json(&doc).map_err(InstructError::InstructBody)?;
        Ok(out)
    }

    fn apply_json(&mut self, doc: &Value) -> Result<(), String> {
        if let Some(hold) = get_object(doc, "instruct", "hold")? {
            let pn = "hold";
            self.hold = Some(match get_string(hold, pn, "mode", false)?.as_deref() {
                None | Some("response") => HoldMode::Response,
                Some("stream") => HoldMode::Stream,
                Some(_) => {
                    return Err("hold 'mode' must be set to either 'response' or 'stream'".into())
                }
            });
            for ch in get_list(hold, pn, "channels", true)?.unwrap_or_default() {
                if !ch.is_object() {
                    return Err("channel is not an object".into());
                }
                let cpn = "channel";
                self.channels.push(ChannelSpec {
                    name: get_string(ch, cpn, "name", true)?.unwrap_or_default(),
                    prev_id: get_string(ch, cpn, "prev-id", false)?,
                    filters: get_string_list(
                        ch,
                        cpn,
                        "filters",
                        "filters contains value with wrong type",
                    )?
                    .unwrap_or_default(),
                });
            }
            if let Some(t) = get_int(hold, pn, "timeout")? {
                let t = u64::try_from(t)
                    .map_err(|_| format!("{pn} contains 'timeout' with invalid value"))?;
                self.timeout_secs = t.max(MIN_RESPONSE_TIMEOUT_SECS);
            }
            if let Some(ka) = get_object(hold, pn, "keep-alive")? {
                self.apply_json_keep_alive(ka)?;
            }
            for (k, v) in get_string_map(hold, pn, "meta")? {
                set_meta(&mut self.meta, k, v);
            }
        }

        let base_code = self.status.as_ref().map_or(200, |(c, _)| *c);
        let mut response = InstructResponse {
            code: base_code,
            reason: self.status.as_ref().and_then(|(_, r)| r.clone()),
            headers: Vec::new(),
            body: Bytes::new(),
        };
        if let Some(r) = doc.field("response") {
            if !r.is_object() {
                return Err("instruct contains 'response' with wrong type".into());
            }
            let pn = "response";
            if let Some(code) = get_int(r, pn, "code")? {
                response.code = u16::try_from(code)
                    .ok()
                    .filter(|c| *c <= 999)
                    .ok_or_else(|| format!("{pn} contains 'code' with invalid value"))?;
                response.reason = None;
            }
            if let Some(reason) = get_string(r, pn, "reason", false)? {
                if !reason.is_empty() {
                    response.reason = Some(reason);
                }
            }
            response.headers = get_headers(r, pn)?;
            if let Some(b) = get_string(r, pn, "body-bin", false)? {
                response.body = decode_base64(b.as_bytes())
                    .map(Bytes::from)
                    .ok_or_else(|| format!("{pn} contains 'body-bin' with invalid value"))?;
            } else if let Some(b) = r.field("body") {
                response.body = b
                    .bytes()
                    .ok_or_else(|| format!("{pn} contains 'body' with wrong type"))?;
            }
        }
        self.response = Some(response);
        Ok(())
    }

    fn apply_json_keep_alive(&mut self, ka: &Value) -> Result<(), String> {
        let pn = "keep-alive";
        let data = if let Some(b) = get_string(ka, pn, "content-bin", false)? {
            Some(
                decode_base64(b.as_bytes())
                    .map(Bytes::from)
                    .ok_or_else(|| format!("{pn} contains 'content-bin' with invalid value"))?,
            )
        } else if let Some(c) = ka.field("content") {
            Some(
                c.bytes()
                    .ok_or_else(|| format!("{pn} contains 'content' with wrong type"))?,
            )
        } else {
            None
        };
        let timeout = match get_int(ka, pn, "timeout")? {
            Some(t) => u64::try_from(t)
                .map_err(|_| format!("{pn} contains 'timeout' with invalid value"))?,
            None => DEFAULT_KEEP_ALIVE_TIMEOUT_SECS,
        };
        let previous = self.keep_alive.take();
        // Pushpin keeps a header-given mode; a JSON-only keep-alive has no mode and its timer
        // is not reset by data, i.e. it behaves like `interval`.
        let mode = previous
            .as_ref()
            .map_or(KeepAliveMode::Interval, |k| k.mode);
        let data = data
            .or_else(|| previous.map(|k| k.data))
            .unwrap_or_default();
        if !data.is_empty() {
            self.keep_alive = Some(KeepAlive {
                data,
                timeout_secs: timeout.max(MIN_KEEP_ALIVE_TIMEOUT_SECS),
                mode,
            });
        }
        Ok(())
    }
}

fn parse_channels(headers: &HeaderMap) -> Result<Vec<ChannelSpec>, InstructError> {
    let mut out = Vec::new();
    for v in headers.get_all("grip-channel") {
        let parts = split_values(v.as_bytes());
        if parts.is_empty() {
            return Err(InstructError::InvalidChannel);
        }
        for part in parts {
            let Ok(item) = parse_item(part) else {
                continue;
            };
            if item.first.is_empty() {
                return Err(InstructError::InvalidChannel);
            }
            let prev_id = item
                .param_value("prev-id")
                .filter(|p| !p.is_empty())
                .map(str::to_owned);
            // Pushpin matches the `filter` name exactly (case-sensitive).
            let filters = item
                .params
                .iter()
                .filter(|(n, _)| n == "filter")
                .filter_map(|(_, v)| v.clone())
                .collect();
            out.push(ChannelSpec {
                name: item.first,
                prev_id,
                filters,
            });
        }
    }
    Ok(out)
}

fn parse_keep_alive(value: &[u8]) -> Result<Option<KeepAlive>, InstructError> {
    if value.is_empty() {
        return Ok(None);
    }
    // Not comma-split: the data may contain commas.
    let Ok(item) = parse_item(value) else {
        return Ok(None);
    };
    if item.first.is_empty() {
        return Err(InstructError::EmptyKeepAlive);
    }
    let mode = match item.param_value("mode").unwrap_or("") {
        "" | "idle" => KeepAliveMode::Idle,
        "interval" => KeepAliveMode::Interval,
        other => return Err(InstructError::UnknownKeepAliveMode(other.to_owned())),
    };
    let timeout_secs = match item.param("timeout") {
        None => DEFAULT_KEEP_ALIVE_TIMEOUT_SECS,
        Some(t) => {
            let t = parse_int(t.unwrap_or("").as_bytes())
                .ok_or(InstructError::InvalidKeepAliveTimeout)?;
            u64::try_from(t).map_err(|_| InstructError::InvalidKeepAliveTimeout)?
        }
    };
    let raw = item.first.as_bytes();
    let data = match item.param_value("format").unwrap_or("") {
        "" | "raw" => raw.to_vec(),
        "cstring" => unescape_cstring(raw).ok_or(InstructError::InvalidKeepAliveCstring)?,
        "base64" => decode_base64(raw).ok_or(InstructError::InvalidKeepAliveBase64)?,
        other => return Err(InstructError::UnknownKeepAliveFormat(other.to_owned())),
    };
    Ok(Some(KeepAlive {
        data: Bytes::from(data),
        timeout_secs: timeout_secs.max(MIN_KEEP_ALIVE_TIMEOUT_SECS),
        mode,
    }))
}

fn parse_status(value: &[u8]) -> Result<Option<(u16, Option<String>)>, InstructError> {
    if value.is_empty() {
        return Ok(None);
    }
    let (code, reason) = match value.iter().position(|&b| b == b' ') {
        Some(at) => (&value[..at], &value[at + 1..]),
        None => (value, &value[value.len()..]),
    };
    let code = parse_int(code)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c <= 999)
        .ok_or(InstructError::InvalidStatus)?;
    let reason = (!reason.is_empty()).then(|| lossy(reason));
    Ok(Some((code, reason)))
}

fn parse_links(headers: &HeaderMap, out: &mut Instruct) -> Result<(), InstructError> {
    for v in headers.get_all("grip-link") {
        for part in split_values(v.as_bytes()) {
            let Ok(item) = parse_item(part) else {
                continue;
            };
            // A link without any parameter cannot carry a rel: ignored, like Pushpin.
            if item.params.is_empty() {
                continue;
            }
            let uri = item
                .first
                .strip_prefix('<')
                .and_then(|s| s.strip_suffix('>'))
                .filter(|s| !s.is_empty())
                .ok_or(InstructError::InvalidLink)?;
            if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(InstructError::InvalidLinkUri);
            }
            match item.param_value("rel") {
                Some("next") => {
                    let timeout_secs = match item.param("timeout") {
                        None => DEFAULT_NEXT_LINK_TIMEOUT_SECS,
                        Some(t) => parse_int(t.unwrap_or("").as_bytes())
                            .and_then(|t| u64::try_from(t).ok())
                            .ok_or(InstructError::InvalidLinkTimeout)?,
                    };
                    out.next_link = Some(NextLink {
                        uri: uri.to_owned(),
                        timeout_secs,
                    });
                }
                Some("gone") => out.gone_link = Some(uri.to_owned()),
                _ => {}
            }
        }
    }
    Ok(())
}

fn set_meta(meta: &mut Vec<(String, String)>, name: String, value: String) {
    match meta.iter_mut().find(|(k, _)| *k == name) {
        Some(entry) => entry.1 = value,
        None => meta.push((name, value)),
    }
}

/// A decimal integer, surrounding ASCII whitespace allowed (as Qt's `toInt`).
fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b.trim_ascii()).ok()?.parse().ok()
}

/// Unescapes the `cstring` keep-alive format: `\\`, `\r`, `\n`, `\t`, `\xHH`. Pushpin silently
/// drops any other escaped character; a trailing `\` or a bad `\x` is an error (`None`).
fn unescape_cstring(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut it = input.iter().copied();
    while let Some(c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match it.next()? {
            b'\\' => out.push(b'\\'),
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'x' => {
                let hi = hex_value(it.next()?)?;
                let lo = hex_value(it.next()?)?;
                out.push((hi << 4) | lo);
            }
            _ => {}
        }
    }
    Some(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
