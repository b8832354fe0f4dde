//! `gripd publish`: publishes one item, flag-compatible with Pushpin 1.36's `pushpin-publish`.
//!
//! The item is built as a tnetstring value, exactly as `pushpin-publish` builds it, then sent
//! either over HTTP (`POST <spec>/publish/` with `{"items": [item]}`; `body`/`content` that are
//! not UTF-8 become `body-bin`/`content-bin` in base64) or, for any other spec, as a bare
//! tnetstring on a ZeroMQ PUSH socket connected to the spec (needs the `zmq` feature).

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use clap::Args;
use grip::tnetstring::{self, Tn};
use serde_json::Value;

/// Where `--spec` points when neither it nor `GRIP_URL` is given.
pub const DEFAULT_SPEC: &str = "http://localhost:5561";
/// Longest the whole HTTP exchange (connect, send, read the answer) may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a ZeroMQ send (and closing the socket with the item still queued) may take.
const ZMQ_TIMEOUT_MS: i32 = 5000;

/// `gripd publish` arguments (those of `pushpin-publish`).
#[derive(Debug, Args, Clone)]
pub struct PublishArgs {
    /// Channel to send to.
    pub channel: String,
    /// Content to use for HTTP body and WebSocket message (`@FILE` reads a file, sent as is).
    pub content: Option<String>,
    /// Payload ID.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Previous payload ID.
    #[arg(long = "prev-id", value_name = "ID")]
    pub prev_id: Option<String>,
    /// Sender meta value.
    #[arg(long)]
    pub sender: Option<String>,
    /// HTTP response code to use.
    #[arg(long, default_value_t = 200)]
    pub code: u16,
    /// Add HTTP response header (takes several values: put it after the channel and content).
    #[arg(short = 'H', long = "header", value_name = "\"K: V\"", num_args = 1.., action = clap::ArgAction::Append)]
    pub headers: Vec<String>,
    /// Add meta variable (takes several values: put it after the channel and content).
    #[arg(short = 'M', long = "meta", value_name = "\"K=V\"", num_args = 1.., action = clap::ArgAction::Append)]
    pub meta: Vec<String>,
    /// Send hint instead of content.
    #[arg(long)]
    pub hint: bool,
    /// Close streaming and WebSocket connections.
    #[arg(long)]
    pub close: bool,
    /// Content is JSON patch.
    #[arg(long)]
    pub patch: bool,
    /// Bypass sequencing buffer.
    #[arg(long = "no-seq")]
    pub no_seq: bool,
    /// Don't add newline to HTTP payloads.
    #[arg(long = "no-eol")]
    pub no_eol: bool,
    /// GRIP URL (http/https control API) or ZeroMQ PUSH spec (e.g. tcp://127.0.0.1:5560).
    #[arg(long, env = "GRIP_URL", default_value = DEFAULT_SPEC)]
    pub spec: String,
    /// Authenticate using basic auth (https only).
    #[arg(short = 'u', long = "user", value_name = "user:pass")]
    pub user: Option<String>,
}

/// Publishes as `pushpin-publish` does; `Ok` means the server accepted the item.
pub fn run(args: &PublishArgs) -> Result<(), String> {
    let item = build_item(args, &|path| std::fs::read(path))?;
    if args.spec.starts_with("http:") || args.spec.starts_with("https:") {
        publish_http(&args.spec, args.user.as_deref(), &to_json(&item))
    } else {
        if args.user.is_some() {
            return Err("authentication is only supported over https".into());
        }
        publish_zmq(&args.spec, &tnetstring::encode(&item))
    }
}

/// Builds the item (`read` loads `@file` content).
pub fn build_item(
    args: &PublishArgs,
    read: &dyn Fn(&str) -> std::io::Result<Vec<u8>>,
) -> Result<Tn, String> {
    let mut formats = Vec::new();
    let action = |a: &'static str| dict(vec![("action", bytes(a))]);
    if args.hint {
        formats.push(("http-response", action("hint")));
        formats.push(("http-stream", action("hint")));
        formats.push(("ws-message", action("hint")));
    } else if args.close {
        formats.push(("http-stream", action("close")));
        formats.push(("ws-message", action("close")));
    } else {
        if args.code > 999 {
            return Err("code must be an integer between 0 and 999".into());
        }
        let content = args
            .content
            .as_deref()
            .ok_or_else(|| "must specify content".to_string())?;
        let mut response = vec![("code", Tn::Int(i64::from(args.code)))];
        if args.patch {
            let v: Value = serde_json::from_str(content)
                .map_err(|e| format!("patch content is not JSON: {e}"))?;
            if !v.is_array() {
                return Err("patch content must be a JSON array".into());
            }
            response.push(("body-patch", Tn::from_json(&v)));
        } else {
            let (http, ws) = match content.strip_prefix('@') {
                Some(path) => {
                    let data = read(path).map_err(|e| format!("can't read file {path}: {e}"))?;
                    (data.clone(), data)
                }
                None => {
                    let mut http = content.as_bytes().to_vec();
                    if !args.no_eol {
                        http.push(b'\n');
                    }
                    (http, content.as_bytes().to_vec())
                }
            };
            response.push(("body", Tn::Bytes(Bytes::from(http.clone()))));
            formats.push((
                "http-stream",
                dict(vec![("content", Tn::Bytes(http.into()))]),
            ));
            formats.push(("ws-message", dict(vec![("content", Tn::Bytes(ws.into()))])));
        }
        if !args.headers.is_empty() {
            let mut headers = Vec::new();
            for h in &args.headers {
                let (name, value) = h
                    .split_once(':')
                    .ok_or_else(|| "header must be in the form \"name: value\"".to_string())?;
                headers.push(Tn::List(vec![bytes(name), bytes(value.trim())]));
            }
            response.push(("headers", Tn::List(headers)));
        }
        formats.push(("http-response", dict(response)));
    }

    let mut meta = Vec::new();
    if let Some(s) = args.sender.as_deref().filter(|s| !s.is_empty()) {
        meta.push(("sender".to_string(), bytes(s)));
    }
    for m in &args.meta {
        let (name, value) = m
            .split_once('=')
            .ok_or_else(|| "meta must be in the form \"name=value\"".to_string())?;
        meta.retain(|(k, _)| k != name);
        meta.push((name.to_string(), bytes(value.trim())));
    }

    let mut item = vec![("channel", bytes(&args.channel))];
    if let Some(id) = args.id.as_deref().filter(|s| !s.is_empty()) {
        item.push(("id", bytes(id)));
    }
    if let Some(id) = args.prev_id.as_deref().filter(|s| !s.is_empty()) {
        item.push(("prev-id", bytes(id)));
    }
    item.push(("formats", dict(formats)));
    if !meta.is_empty() {
        item.push((
            "meta",
            Tn::Dict(
                meta.into_iter()
                    .map(|(k, v)| (Bytes::from(k.into_bytes()), v))
                    .collect(),
            ),
        ));
    }
    if args.no_seq {
        item.push(("no-seq", Tn::Bool(true)));
    }
    Ok(dict(item))
}

/// The item as the HTTP API takes it: `body`/`content` that are not UTF-8 become `*-bin`.
pub fn to_json(v: &Tn) -> Value {
    match v {
        Tn::Dict(d) => {
            let mut map = serde_json::Map::new();
            for (k, v) in d {
                let key = String::from_utf8_lossy(k).into_owned();
                match v {
                    Tn::Bytes(b)
                        if (key == "body" || key == "content")
                            && std::str::from_utf8(b).is_err() =>
                    {
                        let b64 = base64::engine::general_purpose::STANDARD.encode(b);
                        map.insert(format!("{key}-bin"), Value::String(b64));
                    }
                    _ => {
                        map.insert(key, to_json(v));
                    }
                }
            }
            Value::Object(map)
        }
        Tn::List(l) => Value::Array(l.iter().map(to_json).collect()),
        other => other.to_json(),
    }
}

fn bytes(s: &str) -> Tn {
    Tn::Bytes(Bytes::copy_from_slice(s.as_bytes()))
}

fn dict(entries: Vec<(&'static str, Tn)>) -> Tn {
    Tn::Dict(
        entries
            .into_iter()
            .map(|(k, v)| (Bytes::from_static(k.as_bytes()), v))
            .collect(),
    )
}

fn publish_http(spec: &str, user: Option<&str>, item: &Value) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};

    if user.is_some() && !spec.starts_with("https:") {
        return Err("Authentication requires https".into());
    }
    let url = format!("{}/publish/", spec.trim_end_matches('/'));
    let uri: http::Uri = url.parse().map_err(|_| format!("invalid URL {spec:?}"))?;
    let body = serde_json::json!({ "items": [item] }).to_string();
    let mut req = http::Request::post(uri).header(http::header::CONTENT_TYPE, "application/json");
    if let Some(u) = user {
        let token = base64::engine::general_purpose::STANDARD.encode(u);
        req = req.header(http::header::AUTHORIZATION, format!("Basic {token}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("invalid request: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, Full<Bytes>>(https);
        let exchange = async {
            let resp = client.request(req).await.map_err(|e| chain(&e))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| chain(&e))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(HTTP_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer from {url} within {HTTP_TIMEOUT:?}"))??;
        if status != http::StatusCode::OK {
            let text = String::from_utf8_lossy(&body).trim().to_string();
            return Err(if text.is_empty() {
                status.to_string()
            } else {
                text
            });
        }
        Ok(())
    })
}

/// An error with its causes, `a: b: c`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(&format!(": {c}"));
        cur = c.source();
    }
    out
}

#[cfg(feature = "zmq")]
fn publish_zmq(spec: &str, message: &[u8]) -> Result<(), String> {
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::PUSH).map_err(|e| e.to_string())?;
    let e = |e: zmq::Error| format!("{spec}: {e}");
    sock.set_sndtimeo(ZMQ_TIMEOUT_MS).map_err(e)?;
    // Closing waits this long for the queued item to leave.
    sock.set_linger(ZMQ_TIMEOUT_MS).map_err(e)?;
    sock.connect(spec).map_err(e)?;
    sock.send(message, 0).map_err(e)?;
    Ok(())
}

#[cfg(not(feature = "zmq"))]
fn publish_zmq(spec: &str, _message: &[u8]) -> Result<(), String> {
    let _ = ZMQ_TIMEOUT_MS;
    Err(format!(
        "{spec}: gripd was built without the zmq feature; use an http:// spec"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PublishArgs,
    }

    fn item(argv: &[&str]) -> Value {
        let mut full = vec!["publish"];
        full.extend_from_slice(argv);
        let cli = Cli::try_parse_from(full).unwrap();
        let read = |p: &str| -> std::io::Result<Vec<u8>> {
            assert_eq!(p, "f.bin");
            Ok(vec![0xff, b'x'])
        };
        to_json(&build_item(&cli.args, &read).unwrap())
    }

    #[test]
    fn same_json_as_pushpin_publish() {
        // The captures in wire-formats.md ("pushpin-publish CLI").
        assert_eq!(
            item(&["cli-ch", "hello"]),
            json!({"channel": "cli-ch", "formats": {
                "http-response": {"body": "hello\n", "code": 200},
                "http-stream": {"content": "hello\n"},
                "ws-message": {"content": "hello"}}})
        );
        assert_eq!(
            item(&[
                "cli-ch",
                "hello",
                "--id",
                "7",
                "--prev-id",
                "6",
                "--code",
                "202",
                "-H",
                "X-A: b"
            ]),
            json!({"channel": "cli-ch", "id": "7", "prev-id": "6", "formats": {
                "http-response": {"body": "hello\n", "code": 202, "headers": [["X-A", "b"]]},
                "http-stream": {"content": "hello\n"},
                "ws-message": {"content": "hello"}}})
        );
        assert_eq!(
            item(&["cli-ch", "--close"]),
            json!({"channel": "cli-ch", "formats": {
                "http-stream": {"action": "close"}, "ws-message": {"action": "close"}}})
        );
        assert_eq!(
            item(&["cli-ch", "--hint"]),
            json!({"channel": "cli-ch", "formats": {
                "http-response": {"action": "hint"}, "http-stream": {"action": "hint"},
                "ws-message": {"action": "hint"}}})
        );
        assert_eq!(
            item(&["cli-ch", "hello", "--no-eol", "-M", "k=v", "--sender", "me"]),
            json!({"channel": "cli-ch", "meta": {"sender": "me", "k": "v"}, "formats": {
                "http-response": {"body": "hello", "code": 200},
                "http-stream": {"content": "hello"},
                "ws-message": {"content": "hello"}}})
        );
    }

    #[test]
    fn patch_file_and_no_seq() {
        assert_eq!(
            item(&[
                "c",
                r#"[{"op": "add", "path": "/a", "value": 1}]"#,
                "--patch",
                "--no-seq"
            ]),
            json!({"channel": "c", "no-seq": true, "formats": {"http-response": {
                "code": 200, "body-patch": [{"op": "add", "path": "/a", "value": 1}]}}})
        );
        assert_eq!(
            item(&["c", "@f.bin"]),
            json!({"channel": "c", "formats": {
                "http-response": {"body-bin": "/3g=", "code": 200},
                "http-stream": {"content-bin": "/3g="},
                "ws-message": {"content-bin": "/3g="}}})
        );
    }

    #[test]
    fn errors() {
        let build = |argv: &[&str]| {
            let mut full = vec!["publish"];
            full.extend_from_slice(argv);
            let cli = Cli::try_parse_from(full).unwrap();
            build_item(&cli.args, &|_| Err(std::io::ErrorKind::NotFound.into()))
        };
        assert!(build(&["c"]).unwrap_err().contains("must specify content"));
        assert!(build(&["c", "x", "--code", "1000"]).is_err());
        assert!(build(&["c", "x", "-H", "nocolon"]).is_err());
        assert!(build(&["c", "x", "-M", "noequals"]).is_err());
        assert!(build(&["c", "{}", "--patch"]).is_err());
        assert!(build(&["c", "@missing"])
            .unwrap_err()
            .contains("can't read file"));
    }
}
