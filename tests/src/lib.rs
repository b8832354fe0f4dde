//! Integration-test harness: the real gripd app in-process on 127.0.0.1:0, real hyper origins
//! on 127.0.0.1:0, and small clients. Every wait is bounded.

#![allow(clippy::unwrap_used, unreachable_pub)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use gripd::origin::{empty, full, Body, BoxError};

/// Default bound for any single wait in tests.
pub const WAIT: Duration = Duration::from_secs(10);

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// A running origin stub.
pub struct Origin {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a hyper HTTP/1.1 origin on 127.0.0.1:0 serving `f`.
pub async fn origin<F, Fut>(f: F) -> Origin
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    origin_on(listener, f)
}

/// Serves `f` on an already-bound listener.
pub fn origin_on<F, Fut>(listener: TcpListener, f: F) -> Origin
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let handler: Handler = Arc::new(move |req| Box::pin(f(req)));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Origin { addr, task }
}

/// A response builder for origin stubs.
pub fn resp(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    r
}

/// A running gripd.
pub struct Proxy {
    pub running: Option<gripd::app::Running>,
    pub client: SocketAddr,
    pub control: SocketAddr,
    /// ZeroMQ endpoints: each input the test config leaves at its default binds
    /// `tcp://127.0.0.1:*`, and this holds the real ports.
    pub zmq: gripd::publish_zmq::ZmqEndpoints,
}

/// What the harness binds ZeroMQ inputs to unless the test config says otherwise.
pub const ZMQ_ANY: &str = "tcp://127.0.0.1:*";

impl Proxy {
    /// Starts gripd in-process with `routes` lines and extra TOML config.
    pub async fn start(routes: &[String], toml: &str) -> Proxy {
        Self::start_with(routes, toml, None).await
    }

    /// Starts gripd with a routes file instead of route lines.
    pub async fn start_with(routes: &[String], toml: &str, routes_file: Option<&Path>) -> Proxy {
        init_log();
        let mut text = String::from(toml);
        if let Some(f) = routes_file {
            text = format!(
                "{text}\n[proxy]\nroutes_file = {:?}\n",
                f.display().to_string()
            );
        }
        let overrides = gripd::config::Overrides {
            routes: routes.to_vec(),
            ..Default::default()
        };
        let mut config = gripd::config::Config::from_toml_str(
            &text,
            Path::new("."),
            &BTreeMap::new(),
            &overrides,
            None,
        )
        .unwrap_or_else(|e| panic!("bad test config: {e}"));
        // Never the fixed default ZeroMQ ports: tests run in parallel.
        let defaults = gripd::config::Config::defaults(&Default::default()).unwrap();
        if config.zmq_pull == defaults.zmq_pull {
            config.zmq_pull = ZMQ_ANY.into();
        }
        if config.zmq_sub == defaults.zmq_sub {
            config.zmq_sub = vec![ZMQ_ANY.into()];
        }
        if config.zmq_command == defaults.zmq_command {
            config.zmq_command = ZMQ_ANY.into();
        }
        let (routes, errors) = gripd::app::load_routes(&config).unwrap();
        assert!(errors.is_empty(), "route errors: {errors:?}");
        let listeners = gripd::app::Listeners {
            client: vec![TcpListener::bind("127.0.0.1:0").await.unwrap()],
            control: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let running = gripd::app::start(config, listeners, routes).unwrap();
        Proxy {
            client: running.client_addrs[0],
            control: running.control_addr,
            zmq: running.zmq.clone().unwrap_or_default(),
            running: Some(running),
        }
    }

    /// Publishes a JSON body to `/publish/`; returns status and body.
    pub async fn publish(&self, body: serde_json::Value) -> (u16, String) {
        let r = request(
            self.control,
            "POST",
            "/publish/",
            &[("Content-Type", "application/json")],
            body.to_string(),
        )
        .await;
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    /// Publishes one `http-stream` item.
    pub async fn publish_stream(&self, channel: &str, content: &str) {
        let (status, body) = self
            .publish(serde_json::json!({"items": [{"channel": channel, "formats": {"http-stream": {"content": content}}}]}))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Waits until `channel` has a subscriber (bounded).
    pub async fn wait_subscribed(&self, channel: &str) {
        let hub = self.running.as_ref().unwrap().hub.clone();
        let ch = channel.to_string();
        tokio::time::timeout(WAIT, async move {
            loop {
                if hub.has_channel(&ch) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no subscriber on {channel}"));
    }
}

/// A complete response read by the simple client.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub reason: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A hyper HTTP/1.1 client connection to `addr`, its driver spawned.
async fn client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends one request with hyper's client and reads the whole response (bounded by `WAIT`).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    tokio::time::timeout(WAIT, async {
        let mut sender = client(addr).await;
        let mut req = Request::builder().method(method).uri(path);
        let mut has_host = false;
        for (k, v) in headers {
            has_host |= k.eq_ignore_ascii_case("host");
            req = req.header(*k, *v);
        }
        if !has_host {
            req = req.header("host", addr.to_string());
        }
        let resp = sender
            .send_request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .unwrap_or_else(|| resp.status().canonical_reason().unwrap_or("").to_string());
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            reason,
            headers,
            body,
        }
    })
    .await
    .expect("request timed out")
}

/// An open streaming response: read chunks as they come.
pub struct Stream {
    pub status: u16,
    pub headers: http::HeaderMap,
    body: Incoming,
    pub received: Vec<u8>,
    /// How much of `received` has been searched already.
    searched: usize,
    _sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Stream {
    /// Opens `GET path` and waits for the response head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Stream {
        tokio::time::timeout(WAIT, async {
            let mut sender = client(addr).await;
            let mut req = Request::builder()
                .uri(path)
                .header("host", addr.to_string());
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = sender
                .send_request(req.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            Stream {
                status,
                headers,
                body: resp.into_body(),
                received: Vec::new(),
                searched: 0,
                _sender: sender,
            }
        })
        .await
        .expect("stream open timed out")
    }

    /// Reads until `received` contains `needle` (bounded by `WAIT`).
    pub async fn read_until(&mut self, needle: &str) -> String {
        self.wait_for(needle).await;
        String::from_utf8_lossy(&self.received).into_owned()
    }

    /// Reads until `needle` appears, then forgets everything received up to and including it
    /// (for long streams where keeping and rescanning all the data would be quadratic).
    pub async fn skip_until(&mut self, needle: &str) {
        let end = self.wait_for(needle).await;
        self.received.drain(..end);
        self.searched = 0;
    }

    /// Reads until `needle` is in `received`; returns the offset just past it.
    async fn wait_for(&mut self, needle: &str) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        let n = needle.as_bytes();
        loop {
            let from = self.searched.saturating_sub(n.len());
            if let Some(i) = self.received[from..].windows(n.len()).position(|w| w == n) {
                return from + i + n.len();
            }
            self.searched = self.received.len();
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out waiting for {needle:?}; got {}",
                        tail(&self.received)
                    )
                });
            match frame {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.received.extend_from_slice(&d);
                    }
                }
                other => panic!(
                    "stream ended ({other:?}) waiting for {needle:?}; got {}",
                    tail(&self.received)
                ),
            }
        }
    }

    /// Reads until the body ends cleanly (bounded by `WAIT`); returns everything received.
    pub async fn read_to_end(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("stream did not end")
            {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.received.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => panic!("stream failed: {e}"),
                None => return String::from_utf8_lossy(&self.received).into_owned(),
            }
        }
    }

    /// Asserts nothing arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(Some(Ok(f))) = tokio::time::timeout(d, self.body.frame()).await {
            panic!("unexpected data: {:?}", f.into_data().ok());
        }
    }
}

/// The last bytes received, for failure messages (never the whole stream).
pub fn tail(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    let n = text.chars().count();
    if n <= 300 {
        format!("{text:?}")
    } else {
        let t: String = text.chars().skip(n - 300).collect();
        format!("({n} chars) ...{t:?}")
    }
}

/// Sends raw bytes and reads the raw reply until the server closes or `WAIT` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn init_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber_init();
    }
}

fn tracing_subscriber_init() -> Option<()> {
    gripd::telemetry::init("debug", gripd::config::LogFormat::Text, None);
    Some(())
}

// ---------------------------------------------------------------------------------------------
// WebSockets

/// A WebSocket client connection (plain TCP).
pub type WsClient = tokio_tungstenite::WebSocketStream<TcpStream>;
pub use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
pub use tokio_tungstenite::tungstenite::protocol::CloseFrame;
pub use tokio_tungstenite::tungstenite::Message;

/// Opens a WebSocket to `ws://addr{path}` with extra request headers (bounded by `WAIT`).
/// On a rejected handshake returns the error (for `Error::Http`, the status and head).
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    tokio::time::timeout(WAIT, async {
        let stream = TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async(req, stream)
            .await
            .map(|(ws, _)| ws)
    })
    .await
    .expect("websocket connect timed out")
}

/// The next message from `ws` that is not a ping or pong (bounded by `WAIT`); `None` at the end.
pub async fn ws_next(ws: &mut WsClient) -> Option<Message> {
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m @ Message::Close(_))) => {
                    // Send the answer tungstenite queued, as a real client does.
                    let _ = futures_util::SinkExt::flush(ws).await;
                    return Some(m);
                }
                Some(Ok(m)) => return Some(m),
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("timed out waiting for a websocket message")
}

/// Asserts no data message arrives on `ws` for `d`.
pub async fn ws_silence(ws: &mut WsClient, d: Duration) {
    use futures_util::StreamExt;
    let _ = tokio::time::timeout(d, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => panic!("unexpected websocket message: {m:?}"),
                _ => return,
            }
        }
    })
    .await;
}

/// What a WebSocket origin saw.
#[derive(Debug, Clone)]
pub struct WsSeen {
    /// Path and query of the handshake.
    pub path: String,
    pub headers: http::HeaderMap,
}

/// A WebSocket echo origin on 127.0.0.1:0.
///
/// Echoes text and binary (in GRIP mode with the `m:` prefix). Text commands: `close:<code>:<reason>`
/// makes it close with that code; `ctl:<json>` sends the control message `c:<json>`; `raw:<text>`
/// sends `<text>` unprefixed. Every handshake is reported on `handshakes`, every close frame it
/// receives on `closes`.
pub struct WsOrigin {
    pub addr: SocketAddr,
    pub handshakes: tokio::sync::mpsc::UnboundedReceiver<WsSeen>,
    pub closes: tokio::sync::mpsc::UnboundedReceiver<Option<(u16, String)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a WebSocket echo origin; `grip` makes it answer with `Sec-WebSocket-Extensions: grip`.
#[allow(clippy::result_large_err)] // tungstenite's handshake callback signature
pub async fn ws_origin(grip: bool) -> WsOrigin {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::server::{Request as HsReq, Response as HsResp};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hs_tx, handshakes) = tokio::sync::mpsc::unbounded_channel();
    let (close_tx, closes) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let hs_tx = hs_tx.clone();
            let close_tx = close_tx.clone();
            tokio::spawn(async move {
                let cb = |req: &HsReq, mut resp: HsResp| {
                    let _ = hs_tx.send(WsSeen {
                        path: req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_default(),
                        headers: req.headers().clone(),
                    });
                    if grip {
                        resp.headers_mut().insert(
                            "sec-websocket-extensions",
                            http::HeaderValue::from_static("grip"),
                        );
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                let prefix = |b: &[u8]| -> Vec<u8> {
                    if grip {
                        [b"m:".as_slice(), b].concat()
                    } else {
                        b.to_vec()
                    }
                };
                while let Some(Ok(m)) = ws.next().await {
                    let out = match m {
                        Message::Text(t) => {
                            let t = t.as_str();
                            if let Some(rest) = t.strip_prefix("close:") {
                                let (code, reason) = rest.split_once(':').unwrap();
                                let frame = CloseFrame {
                                    code: CloseCode::from(code.parse::<u16>().unwrap()),
                                    reason: reason.to_string().into(),
                                };
                                let _ = ws.close(Some(frame)).await;
                                continue;
                            } else if let Some(json) = t.strip_prefix("ctl:") {
                                Message::text(format!("c:{json}"))
                            } else if let Some(raw) = t.strip_prefix("raw:") {
                                Message::text(raw.to_string())
                            } else {
                                Message::text(String::from_utf8(prefix(t.as_bytes())).unwrap())
                            }
                        }
                        Message::Binary(b) => Message::binary(prefix(&b)),
                        Message::Close(f) => {
                            let _ =
                                close_tx.send(f.map(|f| (u16::from(f.code), f.reason.to_string())));
                            continue;
                        }
                        _ => continue,
                    };
                    if ws.send(out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    WsOrigin {
        addr,
        handshakes,
        closes,
        task,
    }
}
