//! WebSocket-over-HTTP events (`application/websocket-events`) and GRIP WebSocket control
//! messages (`c:` + JSON).
//!
//! Event encoding: `TYPE[ <hex length>]\r\n[<content>\r\n]`. We emit lowercase hex and a bare
//! `TYPE\r\n` for OPEN, DISCONNECT, empty PING/PONG and CLOSE without code, like Pushpin; we parse
//! both `TEXT\r\n` and `TEXT 0\r\n\r\n`. Unknown event types are skipped (Pushpin ignores them).
//! Unlike Pushpin, a content shorter than its declared length is an error, not silently cut.
//!
//! Control messages follow Pushpin's validation; its defaults (keep-alive timeout 55 s,
//! send-delayed timeout 1 s, timeout 0 meaning "default") are applied here.

use bytes::Bytes;
use serde_json::Value;
use thiserror::Error;

use crate::instruct::KeepAliveMode;
use crate::publish::WsMessageType;
use crate::value::{decode_base64, get_int, get_string, get_string_list, Node};

/// Keep-alive interval for WebSocket sessions when the control message gives none.
pub const DEFAULT_WS_KEEP_ALIVE_TIMEOUT_SECS: u64 = 55;
/// Delay for `send-delayed` when the control message gives none.
pub const DEFAULT_WS_SEND_DELAYED_TIMEOUT_SECS: u64 = 1;
/// Longest hex length prefix accepted (8 digits: up to 4 GiB, far above any body limit).
const HEX_DIGITS_MAX: usize = 8;

/// One WebSocket-over-HTTP event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    Open,
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// Close code and reason; `None` when the event carries no code.
    Close(Option<(u16, Bytes)>),
    Disconnect,
}

/// A GRIP WebSocket control message from the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsControl {
    Subscribe {
        channel: String,
        filters: Vec<String>,
    },
    Unsubscribe {
        channel: String,
    },
    Detach,
    /// `None` (absent or empty id) clears the session id.
    Session {
        id: Option<String>,
    },
    /// `value: None` deletes the meta entry.
    SetMeta {
        name: String,
        value: Option<String>,
    },
    /// `content: None` turns keep-alives off.
    KeepAlive {
        content: Option<Bytes>,
        timeout_secs: u64,
        mode: KeepAliveMode,
        message_type: WsMessageType,
    },
    SendDelayed {
        content: Bytes,
        timeout_secs: u64,
        message_type: WsMessageType,
    },
    FlushDelayed,
    /// Not a Pushpin control message (Pushpin ignores unknown types); parsed for callers that
    /// want to support it.
    Close {
        code: Option<u16>,
        reason: Option<String>,
    },
}

/// Why events or a control message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WsEventError {
    #[error("event line not terminated by CRLF")]
    UnterminatedLine,
    #[error("invalid event content length")]
    InvalidLength,
    #[error("event content truncated")]
    Truncated,
    #[error("event content not followed by CRLF")]
    MissingContentTerminator,
    #[error("grip control message is not valid json")]
    ControlNotJson,
    /// Validation failure, in Pushpin's wording.
    #[error("{0}")]
    Control(String),
}

/// Parses an `application/websocket-events` body.
pub fn parse_events(body: &[u8]) -> Result<Vec<WsEvent>, WsEventError> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let at = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(WsEventError::UnterminatedLine)?;
        let line = &rest[..at];
        rest = &rest[at + 2..];
        let (kind, content) = match line.iter().position(|&b| b == b' ') {
            Some(sp) => {
                let len = parse_hex(&line[sp + 1..]).ok_or(WsEventError::InvalidLength)?;
                if rest.len() < len {
                    return Err(WsEventError::Truncated);
                }
                let content = Bytes::copy_from_slice(&rest[..len]);
                rest = &rest[len..];
                if rest.starts_with(b"\r\n") {
                    rest = &rest[2..];
                } else if !rest.is_empty() {
                    return Err(WsEventError::MissingContentTerminator);
                }
                (&line[..sp], content)
            }
            None => (line, Bytes::new()),
        };
        let event = match kind {
            b"OPEN" => WsEvent::Open,
            b"TEXT" => WsEvent::Text(content),
            b"BINARY" => WsEvent::Binary(content),
            b"PING" => WsEvent::Ping(content),
            b"PONG" => WsEvent::Pong(content),
            b"CLOSE" if content.len() >= 2 => {
                let code = u16::from_be_bytes([content[0], content[1]]);
                WsEvent::Close(Some((code, content.slice(2..))))
            }
            b"CLOSE" => WsEvent::Close(None),
            b"DISCONNECT" => WsEvent::Disconnect,
            _ => continue,
        };
        out.push(event);
    }
    Ok(out)
}

/// Encodes events as an `application/websocket-events` body.
pub fn encode_events(events: &[WsEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        let (kind, content): (&[u8], Option<Vec<u8>>) = match event {
            WsEvent::Open => (b"OPEN", None),
            WsEvent::Text(c) => (b"TEXT", Some(c.to_vec())),
            WsEvent::Binary(c) => (b"BINARY", Some(c.to_vec())),
            WsEvent::Ping(c) => (b"PING", (!c.is_empty()).then(|| c.to_vec())),
            WsEvent::Pong(c) => (b"PONG", (!c.is_empty()).then(|| c.to_vec())),
            WsEvent::Close(None) => (b"CLOSE", None),
            WsEvent::Close(Some((code, reason))) => {
                let mut c = code.to_be_bytes().to_vec();
                c.extend_from_slice(reason);
                (b"CLOSE", Some(c))
            }
            WsEvent::Disconnect => (b"DISCONNECT", None),
        };
        out.extend_from_slice(kind);
        if let Some(c) = content {
            out.extend_from_slice(format!(" {:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(&c);
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses a control message body (the JSON after the `c:` prefix).
pub fn parse_ws_control(json: &[u8]) -> Result<WsControl, WsEventError> {
    let doc: Value = serde_json::from_slice(json).map_err(|_| WsEventError::ControlNotJson)?;
    control_from(&doc).map_err(WsEventError::Control)
}

fn control_from(v: &Value) -> Result<WsControl, String> {
    if !v.is_object() {
        return Err("grip control packet is not an object".to_owned());
    }
    let pn = "grip control object";
    let kind = get_string(v, pn, "type", true)?.unwrap_or_default();
    let channel = || -> Result<String, String> {
        let c = get_string(v, pn, "channel", true)?.unwrap_or_default();
        if c.is_empty() {
            return Err(format!("{pn} contains 'channel' with invalid value"));
        }
        Ok(c)
    };
    Ok(match kind.as_str() {
        "subscribe" => WsControl::Subscribe {
            channel: channel()?,
            filters: get_string_list(v, pn, "filters", "filters contains value with wrong type")?
                .unwrap_or_default(),
        },
        "unsubscribe" => WsControl::Unsubscribe {
            channel: channel()?,
        },
        "detach" => WsControl::Detach,
        "session" => WsControl::Session {
            id: get_string(v, pn, "id", false)?.filter(|s| !s.is_empty()),
        },
        "set-meta" => {
            let name = get_string(v, pn, "name", true)?.unwrap_or_default();
            if name.is_empty() {
                return Err(format!("{pn} contains 'name' with invalid value"));
            }
            WsControl::SetMeta {
                name,
                value: get_string(v, pn, "value", false)?,
            }
        }
        "keep-alive" => {
            let (content, timeout, message_type) = delayed_fields(v, pn)?;
            let mode = match get_string(v, pn, "mode", false)?.as_deref() {
                Some("interval") => KeepAliveMode::Interval,
                _ => KeepAliveMode::Idle,
            };
            WsControl::KeepAlive {
                content,
                timeout_secs: timeout.unwrap_or(DEFAULT_WS_KEEP_ALIVE_TIMEOUT_SECS),
                mode,
                message_type,
            }
        }
        "send-delayed" => {
            let (content, timeout, message_type) = delayed_fields(v, pn)?;
            WsControl::SendDelayed {
                content: content.unwrap_or_default(),
                timeout_secs: timeout.unwrap_or(DEFAULT_WS_SEND_DELAYED_TIMEOUT_SECS),
                message_type,
            }
        }
        "flush-delayed" => WsControl::FlushDelayed,
        "close" => {
            let code = get_int(v, pn, "code")?
                .map(|c| {
                    u16::try_from(c).map_err(|_| format!("{pn} contains 'code' with invalid value"))
                })
                .transpose()?;
            WsControl::Close {
                code,
                reason: get_string(v, pn, "reason", false)?,
            }
        }
        other => return Err(format!("'type' contains unknown value: {other}")),
    })
}

/// Content, timeout (`None` = use the default; 0 also means default) and message type of a
/// `keep-alive` or `send-delayed` message.
fn delayed_fields(
    v: &Value,
    pn: &str,
) -> Result<(Option<Bytes>, Option<u64>, WsMessageType), String> {
    let explicit_type = match get_string(v, pn, "message-type", false)?.as_deref() {
        None => None,
        Some("text") => Some(WsMessageType::Text),
        Some("binary") => Some(WsMessageType::Binary),
        Some("ping") => Some(WsMessageType::Ping),
        Some("pong") => Some(WsMessageType::Pong),
        Some(_) => return Err(format!("{pn} contains 'message-type' with unknown value")),
    };
    let (content, default_type) = if let Some(bin) = v.field("content-bin") {
        let text = bin
            .text()
            .ok_or_else(|| format!("{pn} contains 'content-bin' with wrong type"))?;
        let bytes = decode_base64(text.as_bytes())
            .ok_or_else(|| format!("{pn} contains 'content-bin' with invalid value"))?;
        (Some(Bytes::from(bytes)), WsMessageType::Binary)
    } else if let Some(c) = v.field("content") {
        let bytes = c
            .bytes()
            .ok_or_else(|| format!("{pn} contains 'content' with wrong type"))?;
        (Some(bytes), WsMessageType::Text)
    } else {
        (None, WsMessageType::Text)
    };
    let mut timeout = None;
    if content.is_some() {
        if let Some(t) = get_int(v, pn, "timeout")? {
            let t = u64::try_from(t)
                .map_err(|_| format!("{pn} contains 'timeout' with invalid value"))?;
            timeout = (t > 0).then_some(t);
        }
    }
    Ok((content, timeout, explicit_type.unwrap_or(default_type)))
}

fn parse_hex(b: &[u8]) -> Option<usize> {
    let b = b.trim_ascii();
    if b.is_empty() || b.len() > HEX_DIGITS_MAX {
        return None;
    }
    usize::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    fn check(input: &[u8], expected: Result<Vec<WsEvent>, WsEventError>) {
        assert_eq!(
            parse_events(input),
            expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn parses_events() {
        use WsEvent::*;
        check(b"OPEN\r\n", Ok(vec![Open]));
        check(b"", Ok(vec![]));
        check(
            b"OPEN\r\nTEXT 2f\r\nc:{\"channel\": \"ws-c2e97a\", \"type\": \"subscribe\"}\r\nTEXT 9\r\nm:welcome\r\n",
            Ok(vec![
                Open,
                Text(b(b"c:{\"channel\": \"ws-c2e97a\", \"type\": \"subscribe\"}")),
                Text(b(b"m:welcome")),
            ]),
        );
        check(b"TEXT 2\r\nhi\r\n", Ok(vec![Text(b(b"hi"))]));
        check(
            b"CLOSE 2\r\n\x03\xe8\r\n",
            Ok(vec![Close(Some((1000, b(b""))))]),
        );
        check(
            b"CLOSE 5\r\n\x0f\xa1bye\r\n",
            Ok(vec![Close(Some((4001, b(b"bye"))))]),
        );
        check(b"CLOSE\r\n", Ok(vec![Close(None)]));
        check(
            b"TEXT\r\nTEXT 0\r\n\r\n",
            Ok(vec![Text(b(b"")), Text(b(b""))]),
        );
        check(
            b"PING\r\nPONG 1\r\nx\r\nDISCONNECT\r\n",
            Ok(vec![Ping(b(b"")), Pong(b(b"x")), Disconnect]),
        );
        check(
            b"BINARY 3\r\n\x00\r\n\r\n",
            Ok(vec![Binary(b(b"\x00\r\n"))]),
        );
        check(
            b"TEXT A\r\n0123456789\r\n",
            Ok(vec![Text(b(b"0123456789"))]),
        );
        check(b"FOO 1\r\nx\r\nOPEN\r\n", Ok(vec![Open]));
        check(b"TEXT 2\r\nhi", Ok(vec![Text(b(b"hi"))]));
        check(b"OPEN", Err(WsEventError::UnterminatedLine));
        check(b"TEXT 5\r\nhi\r\n", Err(WsEventError::Truncated));
        check(b"TEXT zz\r\nhi\r\n", Err(WsEventError::InvalidLength));
        check(b"TEXT 123456789\r\n", Err(WsEventError::InvalidLength));
        check(
            b"TEXT 1\r\nhiX\r\n",
            Err(WsEventError::MissingContentTerminator),
        );
    }

    #[test]
    fn encodes_events() {
        use WsEvent::*;
        let cases: &[(WsEvent, &[u8])] = &[
            (Open, b"OPEN\r\n"),
            (Disconnect, b"DISCONNECT\r\n"),
            (Text(b(b"hi")), b"TEXT 2\r\nhi\r\n"),
            (Text(b(b"")), b"TEXT 0\r\n\r\n"),
            (
                Binary(b(&[0u8; 26])),
                b"BINARY 1a\r\n\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\r\n",
            ),
            (Ping(b(b"")), b"PING\r\n"),
            (Pong(b(b"p")), b"PONG 1\r\np\r\n"),
            (Close(None), b"CLOSE\r\n"),
            (Close(Some((1000, b(b"")))), b"CLOSE 2\r\n\x03\xe8\r\n"),
        ];
        for (event, expected) in cases {
            assert_eq!(
                encode_events(std::slice::from_ref(event)),
                *expected,
                "{event:?}"
            );
        }
    }

    fn ctl(json: &str) -> Result<WsControl, WsEventError> {
        parse_ws_control(json.as_bytes())
    }

    #[test]
    fn control_messages() {
        use WsControl::*;
        let cases: &[(&str, WsControl)] = &[
            (
                r#"{"channel": "ws-c2e97a", "type": "subscribe"}"#,
                Subscribe {
                    channel: "ws-c2e97a".into(),
                    filters: vec![],
                },
            ),
            (
                r#"{"type":"subscribe","channel":"c","filters":["skip-self"]}"#,
                Subscribe {
                    channel: "c".into(),
                    filters: vec!["skip-self".into()],
                },
            ),
            (
                r#"{"type":"unsubscribe","channel":"c"}"#,
                Unsubscribe {
                    channel: "c".into(),
                },
            ),
            (r#"{"type":"detach"}"#, Detach),
            (
                r#"{"type":"session","id":"sid"}"#,
                Session {
                    id: Some("sid".into()),
                },
            ),
            (r#"{"type":"session"}"#, Session { id: None }),
            (
                r#"{"type":"set-meta","name":"user","value":"alice"}"#,
                SetMeta {
                    name: "user".into(),
                    value: Some("alice".into()),
                },
            ),
            (
                r#"{"type":"set-meta","name":"user"}"#,
                SetMeta {
                    name: "user".into(),
                    value: None,
                },
            ),
            (
                r#"{"type":"keep-alive","content":"{}","timeout":30,"mode":"interval","message-type":"ping"}"#,
                KeepAlive {
                    content: Some(b(b"{}")),
                    timeout_secs: 30,
                    mode: KeepAliveMode::Interval,
                    message_type: WsMessageType::Ping,
                },
            ),
            (
                r#"{"type":"keep-alive","content":"ka","timeout":3}"#,
                KeepAlive {
                    content: Some(b(b"ka")),
                    timeout_secs: 3,
                    mode: KeepAliveMode::Idle,
                    message_type: WsMessageType::Text,
                },
            ),
            (
                r#"{"type":"keep-alive","content-bin":"AAE=","timeout":0}"#,
                KeepAlive {
                    content: Some(b(&[0, 1])),
                    timeout_secs: 55,
                    mode: KeepAliveMode::Idle,
                    message_type: WsMessageType::Binary,
                },
            ),
            (
                r#"{"type":"keep-alive"}"#,
                KeepAlive {
                    content: None,
                    timeout_secs: 55,
                    mode: KeepAliveMode::Idle,
                    message_type: WsMessageType::Text,
                },
            ),
            (
                r#"{"type":"send-delayed","content":"x","timeout":2}"#,
                SendDelayed {
                    content: b(b"x"),
                    timeout_secs: 2,
                    message_type: WsMessageType::Text,
                },
            ),
            (
                r#"{"type":"send-delayed","content":"x"}"#,
                SendDelayed {
                    content: b(b"x"),
                    timeout_secs: 1,
                    message_type: WsMessageType::Text,
                },
            ),
            (r#"{"type":"flush-delayed"}"#, FlushDelayed),
            (
                r#"{"type":"close","code":4000,"reason":"r"}"#,
                Close {
                    code: Some(4000),
                    reason: Some("r".into()),
                },
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(&ctl(json).unwrap(), expected, "{json}");
        }
        let errors: &[(&str, WsEventError)] = &[
            ("nope", WsEventError::ControlNotJson),
            (
                "[1]",
                WsEventError::Control("grip control packet is not an object".into()),
            ),
            (
                "{}",
                WsEventError::Control("grip control object does not contain 'type'".into()),
            ),
            (
                r#"{"type":"jump"}"#,
                WsEventError::Control("'type' contains unknown value: jump".into()),
            ),
            (
                r#"{"type":"subscribe"}"#,
                WsEventError::Control("grip control object does not contain 'channel'".into()),
            ),
            (
                r#"{"type":"subscribe","channel":""}"#,
                WsEventError::Control(
                    "grip control object contains 'channel' with invalid value".into(),
                ),
            ),
            (
                r#"{"type":"subscribe","channel":"c","filters":[1]}"#,
                WsEventError::Control("filters contains value with wrong type".into()),
            ),
            (
                r#"{"type":"set-meta","name":""}"#,
                WsEventError::Control(
                    "grip control object contains 'name' with invalid value".into(),
                ),
            ),
            (
                r#"{"type":"keep-alive","content":"x","message-type":"blob"}"#,
                WsEventError::Control(
                    "grip control object contains 'message-type' with unknown value".into(),
                ),
            ),
            (
                r#"{"type":"keep-alive","content":"x","timeout":-1}"#,
                WsEventError::Control(
                    "grip control object contains 'timeout' with invalid value".into(),
                ),
            ),
            (
                r#"{"type":"keep-alive","content":1}"#,
                WsEventError::Control(
                    "grip control object contains 'content' with wrong type".into(),
                ),
            ),
        ];
        for (json, expected) in errors {
            assert_eq!(&ctl(json).unwrap_err(), expected, "{json}");
        }
    }

    fn arb_event() -> impl Strategy<Value = WsEvent> {
        let content = || proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from);
        prop_oneof![
            Just(WsEvent::Open),
            Just(WsEvent::Disconnect),
            content().prop_map(WsEvent::Text),
            content().prop_map(WsEvent::Binary),
            content().prop_map(WsEvent::Ping),
            content().prop_map(WsEvent::Pong),
            Just(WsEvent::Close(None)),
            (any::<u16>(), content()).prop_map(|(c, r)| WsEvent::Close(Some((c, r)))),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(events in proptest::collection::vec(arb_event(), 0..8)) {
            prop_assert_eq!(parse_events(&encode_events(&events)), Ok(events));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = parse_events(&bytes);
            let _ = parse_ws_control(&bytes);
        }

        #[test]
        fn never_panics_structured(s in "(OPEN|TEXT|CLOSE|PING| |[0-9a-f]|\r\n|x){0,24}") {
            let _ = parse_events(s.as_bytes());
        }
    }
}
