//! The origin side: HTTP/1.1 connections (plain, or TLS through rustls) kept in `pool.rs`, and
//! the rewriting of client requests into origin requests (hop-by-hop removal, `Grip-Sig`,
//! `Grip-Feature`, X-Forwarded-*).
//!
//! Invariants:
//! - A client can never make the origin see its own `Grip-*` headers (no forged `Grip-Sig`).
//! - Every request to an origin of a GRIP-enabled route carries a fresh-enough `Grip-Sig`.
//! - Connect and response-head waits are bounded (`connect_timeout`, `response_timeout`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tower_service::Service;

use crate::config::{Config, ForwardedForStep, ForwardedProto};
use crate::error::ProxyError;
use crate::h1::{self, ExchangeError, OriginBody, OriginConn, OutBody};
use crate::pool::{Key, Pool, Tls};
use crate::routes::{Route, Target, TargetKind};

/// Error type of every body gripd moves.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type used on both sides.
pub type Body = BoxBody<Bytes, BoxError>;

/// How long a cached `Grip-Sig` is reused before a new one is signed (tokens live 3600 s).
const SIG_REUSE: Duration = Duration::from_secs(60);

/// Request headers that never travel to the origin (hop-by-hop, plus what Pushpin removes).
const STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "accept-encoding",
    "content-encoding",
];

/// Response headers never relayed to the client.
pub const STRIPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

type Connector = HttpsConnector<HttpConnector>;

/// An origin's response; its body returns the connection to the pool when it ends.
pub type OriginResponse = Response<OriginBody>;

const GRIP_SIG: HeaderName = HeaderName::from_static("grip-sig");
const GRIP_FEATURE: HeaderName = HeaderName::from_static("grip-feature");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PROTOCOL: HeaderName = HeaderName::from_static("x-forwarded-protocol");

/// Signs `Grip-Sig` tokens, reusing one for up to `SIG_REUSE`. Each thread keeps its own
/// current token: a shared cache was a lock taken by every request on every thread.
pub struct Signer {
    iss: String,
    key: grip::SigKey,
    /// Tells this signer's tokens from another's in a thread's cache.
    id: u64,
}

thread_local! {
    /// The current token of the signer this thread used last: (signer id, signed at, token).
    static SIG_CACHE: std::cell::RefCell<Option<(u64, Instant, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// The origin client.
pub struct Origin {
    pool: Arc<Pool>,
    verified: Connector,
    insecure: Connector,
    response_timeout: Duration,
    head_max: usize,
    signer: Signer,
    forwarded_for: Vec<ForwardedForStep>,
    forwarded_proto: ForwardedProto,
}

/// What a client asked for, kept so the request can be sent again (retries, next links).
#[derive(Clone)]
pub struct ClientRequest {
    pub method: Method,
    /// Path and query as the client sent them.
    pub path_and_query: String,
    /// Client headers, already cleaned (no hop-by-hop, no Grip-*).
    pub headers: HeaderMap,
    /// The body, when small enough to keep; `None` when it was streamed.
    pub body: Option<Bytes>,
    pub peer: SocketAddr,
    pub https: bool,
    /// Host the client addressed (Host header, or the URI authority).
    pub host: String,
}

// === impl Signer ===

impl Signer {
    pub fn new(iss: &str, key: &[u8]) -> Signer {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Signer {
            iss: iss.to_string(),
            key: grip::SigKey::from_bytes(key.to_vec()),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A current token for the global key.
    pub fn token(&self) -> Option<HeaderValue> {
        if self.iss.is_empty() {
            return None;
        }
        let now = Instant::now();
        SIG_CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some((id, at, v)) = cache.as_ref() {
                if *id == self.id && now.duration_since(*at) < SIG_REUSE {
                    return Some(v.clone());
                }
            }
            let v =
                HeaderValue::from_str(&grip::sign(&self.iss, &self.key, unix_now()).ok()?).ok()?;
            *cache = Some((self.id, now, v.clone()));
            Some(v)
        })
    }
}

// === impl Origin ===

impl Origin {
    pub fn new(config: &Config) -> Origin {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        let verified = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http.clone());
        let insecure_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify))
                .with_no_client_auth()
        });
        let insecure_conn = match insecure_tls {
            Ok(tls) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http),
            Err(_) => verified.clone(),
        };
        Origin {
            pool: Pool::new(config.origin_pool_max_idle, config.origin_idle_timeout),
            verified,
            insecure: insecure_conn,
            response_timeout: config.response_timeout,
            head_max: config.origin_head_max,
            signer: Signer::new(&config.sig_iss, config.sig_key.bytes()),
            forwarded_for: config.x_forwarded_for.clone(),
            forwarded_proto: config.forwarded_proto,
        }
    }

    /// Builds the origin request for `target` and sends it, waiting at most `response_timeout`
    /// for the response head.
    #[allow(clippy::too_many_arguments)] // one internal call site per kind of request
    pub async fn send(
        &self,
        route: &Route,
        target: &Target,
        req: &ClientRequest,
        path_and_query: &str,
        body: OutBody,
        extra: &[(HeaderName, HeaderValue)],
        client_headers: bool,
    ) -> Result<OriginResponse, ProxyError> {
        let TargetKind::Host { host, port } = &target.kind else {
            return Err(ProxyError::Internal("test target has no origin".into()));
        };
        let mut edits = h1::HeaderEdits::with_capacity(6 + route.props.headers.len());
        let host_header = target
            .host_header
            .as_deref()
            .or(route.props.as_host.as_deref())
            .unwrap_or(&req.host);
        if let Ok(v) = HeaderValue::from_str(host_header) {
            edits.set(header::HOST, v);
        }
        let client = if client_headers {
            &req.headers
        } else {
            &HeaderMap::new()
        };
        self.forwarded(&mut edits, client, req);
        for (name, value) in &route.props.headers {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                if value.is_empty() {
                    edits.remove(name);
                } else if let Ok(v) = HeaderValue::from_str(value) {
                    edits.set(name, v);
                }
            }
        }
        if !route.props.no_grip {
            let sig = match (&route.props.sig_iss, &route.props.sig_key) {
                (Some(iss), Some(key)) => {
                    let key = grip::SigKey::from_bytes(key.as_bytes().to_vec());
                    grip::sign(iss, &key, unix_now())
                        .ok()
                        .and_then(|t| HeaderValue::from_str(&t).ok())
                }
                _ => self.signer.token(),
            };
            if let Some(sig) = sig {
                edits.set(GRIP_SIG, sig);
            }
            edits.set(GRIP_FEATURE, HeaderValue::from_static(grip::GRIP_FEATURE));
        }
        let mut head = Vec::with_capacity(512);
        h1::encode_head(
            &mut head,
            &req.method,
            path_and_query,
            client,
            &mut edits,
            extra,
            body.known_len(),
        );
        let tls = match (target.ssl, target.insecure) {
            (false, _) => Tls::Plain,
            (true, false) => Tls::Verified,
            (true, true) => Tls::Insecure,
        };
        // `host:port`, bracketed for IPv6: for error messages and the connector.
        let authority = || target.kind.to_string();
        let idempotent = is_idempotent(&req.method);
        let exchange = async {
            let mut body = body;
            let mut pooled = self.pool.take(tls, host, *port);
            loop {
                let mut conn = match pooled.take() {
                    Some(c) => c,
                    None => Box::pin(self.connect(tls, host, *port, authority())).await?,
                };
                // Only known bytes can go out again, and only for an idempotent method.
                let again = match &body {
                    OutBody::Bytes(b) if idempotent => Some(b.clone()),
                    _ => None,
                };
                match conn
                    .exchange(&mut head, body, &req.method, self.head_max)
                    .await
                {
                    Ok(parsed) => return Ok(self.response(parsed, conn)),
                    // A kept connection the origin closed as we sent: once more on a new one.
                    Err(ExchangeError::Stale) => match again {
                        Some(b) => body = OutBody::Bytes(b),
                        None => {
                            return Err(ProxyError::OriginFailed(
                                authority(),
                                "origin closed the connection before responding".into(),
                            ))
                        }
                    },
                    Err(ExchangeError::Failed(e)) => {
                        return Err(ProxyError::OriginFailed(authority(), e))
                    }
                }
            }
        };
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Err(_) => Err(ProxyError::OriginTimeout(authority())),
            Ok(r) => r,
        }
    }

    /// The idle connection pool (swept by a task of the app's).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    fn response(&self, head: h1::ParsedHead, conn: OriginConn) -> OriginResponse {
        let mut resp = Response::new(OriginBody::new(conn, self.pool.clone(), &head.info));
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        if let Some(reason) = head.reason {
            if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason) {
                resp.extensions_mut().insert(r);
            }
        }
        resp
    }

    /// Opens a new connection: TCP, then TLS for `ssl` targets.
    async fn connect(
        &self,
        tls: Tls,
        host: &str,
        port: u16,
        authority: String,
    ) -> Result<OriginConn, ProxyError> {
        let scheme = if tls == Tls::Plain { "http" } else { "https" };
        let fail = |e: String| ProxyError::OriginConnect(authority.clone(), e);
        let uri: Uri = format!("{scheme}://{authority}/")
            .parse()
            .map_err(|e: http::uri::InvalidUri| fail(e.to_string()))?;
        let mut connector = match tls {
            Tls::Insecure => self.insecure.clone(),
            Tls::Plain | Tls::Verified => self.verified.clone(),
        };
        // In a task of its own: the connector's future is not `Sync`, and held-stream bodies
        // that fetch next links must be.
        let opened =
            tokio::spawn(async move { connector.call(uri).await.map_err(|e| e.to_string()) });
        let io = match opened.await {
            Ok(r) => r.map_err(fail)?,
            Err(e) => return Err(fail(e.to_string())),
        };
        let key = Arc::new(Key {
            tls,
            host: host.to_string(),
            port,
        });
        Ok(OriginConn::new(TokioIo::new(io), key))
    }

    /// Sends `req` to the route's targets in order, moving on when a target refuses the
    /// connection (failover). Only a kept (buffered) body can be sent more than once.
    pub async fn send_with_failover(
        &self,
        route: &Route,
        req: &ClientRequest,
        mut streamed: Option<Body>,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<(OriginResponse, usize), ProxyError> {
        let path = route.rewrite_path(&req.path_and_query);
        let mut last = None;
        for (i, target) in route.targets.iter().enumerate() {
            let body = match (&req.body, streamed.take()) {
                (_, Some(b)) => OutBody::Stream(b),
                (Some(bytes), None) => OutBody::Bytes(bytes.clone()),
                (None, None) => break,
            };
            match self
                .send(route, target, req, &path, body, extra, true)
                .await
            {
                Ok(resp) => return Ok((resp, i)),
                Err(e @ ProxyError::OriginConnect(..)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ProxyError::Internal("route has no targets".into())))
    }

    /// A `GET` the proxy makes itself (next links): no client headers, only `Grip-Last`.
    pub async fn get_link(
        &self,
        route: &Route,
        target: &Target,
        req: &ClientRequest,
        path_and_query: &str,
        grip_last: &[(HeaderName, HeaderValue)],
    ) -> Result<OriginResponse, ProxyError> {
        let get = ClientRequest {
            method: Method::GET,
            path_and_query: path_and_query.to_string(),
            headers: HeaderMap::new(),
            body: None,
            peer: req.peer,
            https: req.https,
            host: req.host.clone(),
        };
        self.send(
            route,
            target,
            &get,
            path_and_query,
            OutBody::Bytes(Bytes::new()),
            grip_last,
            false,
        )
        .await
    }

    /// X-Forwarded-For and -Proto as configured, from the client's lines (`client`).
    fn forwarded(&self, edits: &mut h1::HeaderEdits, client: &HeaderMap, req: &ClientRequest) {
        if !self.forwarded_for.is_empty() {
            let mut entries: Vec<String> = client
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            for step in &self.forwarded_for {
                match step {
                    ForwardedForStep::Truncate(n) => {
                        let skip = entries.len().saturating_sub(*n);
                        entries.drain(..skip);
                    }
                    ForwardedForStep::Append => entries.push(req.peer.ip().to_string()),
                }
            }
            match HeaderValue::from_str(&entries.join(", ")) {
                Ok(v) if !entries.is_empty() => edits.set(X_FORWARDED_FOR, v),
                _ => edits.remove(X_FORWARDED_FOR),
            }
        }
        if self.forwarded_proto != ForwardedProto::Untouched {
            let https = HeaderValue::from_static("https");
            match req.https {
                true => edits.set(X_FORWARDED_PROTO, https.clone()),
                false => edits.remove(X_FORWARDED_PROTO),
            }
            match (req.https, self.forwarded_proto) {
                (true, ForwardedProto::Both) => edits.set(X_FORWARDED_PROTOCOL, https),
                _ => edits.remove(X_FORWARDED_PROTOCOL),
            }
        }
    }
}

/// Cleans client request headers: hop-by-hop (including those named in `Connection`), and
/// every `Grip-*` header (clients must not forge `Grip-Sig` or `Grip-Last`).
pub fn clean_request_headers(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers, STRIPPED_REQUEST_HEADERS, true);
}

/// Removes hop-by-hop headers from an origin response (including those named in `Connection`).
pub fn clean_response_headers(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers, STRIPPED_RESPONSE_HEADERS, false);
}

/// Removes the headers `Connection` names, those in `fixed`, and with `grip` every `Grip-*`.
/// One pass over the names present (usually none goes): no lookup per listed name.
fn remove_hop_by_hop(headers: &mut HeaderMap, fixed: &[&str], grip: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let n = name.as_str();
        if fixed.contains(&n) || (grip && n.starts_with("grip-")) {
            doomed.push(name.clone());
        }
    }
    if doomed.is_empty() {
        return;
    }
    let listed = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(h1::tokens)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok());
    doomed.extend(listed);
    for name in doomed {
        headers.remove(name);
    }
}

/// A body of known bytes.
pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// An origin (or client) body, boxed with our error type.
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}

/// Requests that may be sent again when a reused connection turns out closed (RFC 9110 §9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Accepts any server certificate: only for targets marked `insecure` (self-signed origins).
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn request_headers_cleaned() {
        let mut h = map(&[
            ("host", "a"),
            ("connection", "keep-alive, X-Private"),
            ("connection", "upgrade"),
            ("x-private", "1"),
            ("upgrade", "h2c"),
            ("accept-encoding", "gzip"),
            ("grip-sig", "forged"),
            ("Grip-Last", "ch; last-id=1"),
            ("te", "trailers"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-gripped", "kept"),
        ]);
        clean_request_headers(&mut h);
        assert_eq!(names(&h), ["cookie", "host", "x-gripped"]);
        assert_eq!(h.get_all("cookie").iter().count(), 2);
        // Nothing to remove: untouched.
        let mut h = map(&[("host", "a"), ("accept", "*/*")]);
        clean_request_headers(&mut h);
        assert_eq!(names(&h), ["accept", "host"]);
    }

    #[test]
    fn response_headers_cleaned_but_grip_kept() {
        let mut h = map(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "timeout=5"),
            ("grip-hold", "stream"),
            ("content-type", "text/plain"),
            ("accept-encoding", "kept in responses"),
        ]);
        clean_response_headers(&mut h);
        assert_eq!(names(&h), ["accept-encoding", "content-type", "grip-hold"]);
    }

    /// A token is reused on a thread, each signer (another app in the same process, another
    /// key) gets its own, and every one verifies with its signer's key.
    #[test]
    fn signer_reuses_its_own_token_per_thread() {
        let a = Signer::new("pushpin", b"key-a");
        let b = Signer::new("pushpin", b"key-b");
        let a1 = a.token().unwrap();
        let b1 = b.token().unwrap();
        let a2 = a.token().unwrap();
        assert_eq!(a.token().unwrap(), a2, "reused");
        assert_ne!(a1, b1);
        let now = unix_now();
        let key = |k: &[u8]| grip::SigKey::from_bytes(k.to_vec());
        for (token, k) in [(&a1, b"key-a"), (&a2, b"key-a"), (&b1, b"key-b")] {
            assert!(grip::validate(token.to_str().unwrap(), &key(k), now));
        }
        assert!(!grip::validate(a1.to_str().unwrap(), &key(b"key-b"), now));
        // Another thread signs for itself, with the same key.
        let other = std::thread::scope(|s| s.spawn(|| a.token().unwrap()).join().unwrap());
        assert!(grip::validate(other.to_str().unwrap(), &key(b"key-a"), now));
        // No issuer: no token.
        assert!(Signer::new("", b"k").token().is_none());
    }
}
