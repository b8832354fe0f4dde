//! Configuration: `RawConfig` (what the TOML file says) becomes `Config` (typed, validated).
//!
//! Invariants:
//! - Config is parsed from a `&str` plus an injected environment map; this module does no I/O
//!   except resolving `file:` secrets, which `main` asks for explicitly.
//! - Every problem is reported at once, each with its key (`ConfigErrors`).
//! - All defaults live here as `DEFAULT_*` constants; `--port-offset` shifts only the default ports.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default client listener port (Pushpin's `http_port`).
pub const DEFAULT_CLIENT_PORT: u16 = 7999;
/// Default ZeroMQ PULL publish port.
pub const DEFAULT_ZMQ_PULL_PORT: u16 = 5560;
/// Default HTTP publish (control) port.
pub const DEFAULT_PUBLISH_HTTP_PORT: u16 = 5561;
/// Default ZeroMQ SUB publish port.
pub const DEFAULT_ZMQ_SUB_PORT: u16 = 5562;
/// Default ZeroMQ command (ZRPC) port.
pub const DEFAULT_ZMQ_COMMAND_PORT: u16 = 5563;
/// Receive high-water mark of each ZeroMQ input socket (messages queued inside libzmq).
pub const DEFAULT_ZMQ_HWM: i32 = 1000;
/// Default route when no routes file and no `--route` is given.
pub const DEFAULT_ROUTE: &str = "* 127.0.0.1:8000";
/// Maximum simultaneous client connections (Pushpin's `client_maxconn`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Largest request head accepted from a client, in bytes (Pushpin's `client_buffer_size`).
pub const DEFAULT_CLIENT_HEAD_MAX: usize = 8192;
/// Time allowed for a clean shutdown before connections are cut.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 5;
/// Time allowed to connect to an origin.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Time allowed for an origin to send its response head (504 after that).
pub const DEFAULT_RESPONSE_TIMEOUT_SECS: u64 = 60;
/// Idle keep-alive connections kept per origin for reuse.
pub const DEFAULT_ORIGIN_POOL_MAX_IDLE: usize = 1024;
/// An idle origin connection unused this long is not reused.
pub const DEFAULT_ORIGIN_IDLE_TIMEOUT_SECS: u64 = 90;
/// Seconds a client has to send a request head.
pub const DEFAULT_CLIENT_HEAD_TIMEOUT_SECS: u64 = 30;
/// Largest origin response head, in bytes.
pub const DEFAULT_ORIGIN_HEAD_MAX: usize = 64 * 1024;
/// `iss` claim of `Grip-Sig` (Pushpin's `sig_iss`).
pub const DEFAULT_SIG_ISS: &str = "pushpin";
/// Pushpin's shipped placeholder signing key; accepted, but warned about loudly.
pub const PLACEHOLDER_SIG_KEY: &str = "changeme";
/// Largest publish request body (Pushpin: 1,000,000 bytes).
pub const DEFAULT_PUBLISH_BODY_MAX: usize = 1_000_000;
/// Largest publish request head (Pushpin: 10,000 bytes).
pub const DEFAULT_PUBLISH_HEAD_MAX: usize = 10_000;
/// Channels one connection may subscribe to (Pushpin's `connection_subscription_max`).
pub const DEFAULT_CONNECTION_SUBSCRIPTION_MAX: usize = 20;
/// Delay before a channel with no subscribers is forgotten (Pushpin's `subscription_linger`).
pub const DEFAULT_SUBSCRIPTION_LINGER_SECS: u64 = 60;
/// How long an out-of-order item waits for its predecessor (Pushpin's `message_wait`).
pub const DEFAULT_MESSAGE_WAIT_MS: u64 = 5000;
/// How long a published (channel, id) is remembered to drop duplicates (Pushpin's `id_cache_ttl`).
pub const DEFAULT_ID_CACHE_TTL_SECS: u64 = 60;
/// Items queued per held connection before newer items are dropped (Pushpin's PUBLISH_QUEUE_MAX).
pub const DEFAULT_CONNECTION_QUEUE_MAX: usize = 100;
/// Largest origin body buffered for response holds and JSON instructions (Pushpin: 100,000).
pub const DEFAULT_RESPONSE_BODY_MAX: usize = 100_000;
/// Largest client request body kept for retries (Pushpin: 100,000).
pub const DEFAULT_RETRY_BODY_MAX: usize = 100_000;
/// Delay after a channel's first subscriber before its sessions are refreshed (Pushpin: 1 s).
pub const DEFAULT_FIRST_SUBSCRIPTION_UPDATE_MS: u64 = 1000;
/// Next-link requests in flight at once toward origins.
pub const DEFAULT_NEXT_LINK_CONCURRENCY: usize = 32;

/// Most runtime worker threads `server.worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

/// The `[server]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub http_addrs: Option<Vec<String>>,
    pub port_offset: Option<u16>,
    pub max_connections: Option<usize>,
    pub client_head_max: Option<usize>,
    pub client_head_timeout_secs: Option<u64>,
    pub shutdown_timeout_secs: Option<u64>,
    pub worker_threads: Option<usize>,
}

/// The `[proxy]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    pub routes_file: Option<String>,
    pub sig_iss: Option<String>,
    pub sig_key: Option<String>,
    pub x_forwarded_for: Option<String>,
    pub set_x_forwarded_protocol: Option<String>,
    pub connect_timeout_secs: Option<u64>,
    pub response_timeout_secs: Option<u64>,
    pub origin_pool_max_idle: Option<usize>,
    pub origin_idle_timeout_secs: Option<u64>,
    pub origin_head_max: Option<usize>,
    pub response_body_max: Option<usize>,
    pub retry_body_max: Option<usize>,
    pub debug: Option<bool>,
}

/// The `[publish]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPublish {
    pub http_addr: Option<String>,
    pub http_body_max: Option<usize>,
    pub http_head_max: Option<usize>,
    pub zmq_pull: Option<String>,
    pub zmq_sub: Option<Vec<String>>,
    pub zmq_sub_connect: Option<bool>,
    pub zmq_command: Option<String>,
    pub zmq_hwm: Option<i32>,
}

/// The `[hold]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHold {
    pub connection_subscription_max: Option<usize>,
    pub connection_queue_max: Option<usize>,
    pub subscription_linger_secs: Option<u64>,
    pub message_wait_ms: Option<u64>,
    pub id_cache_ttl_secs: Option<u64>,
    pub update_on_first_subscription: Option<bool>,
    pub first_subscription_update_ms: Option<u64>,
    pub next_link_concurrency: Option<usize>,
}

/// The `[log]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
    pub access_log: Option<bool>,
}

/// The whole file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub version: Option<u32>,
    pub server: RawServer,
    pub proxy: RawProxy,
    pub publish: RawPublish,
    pub hold: RawHold,
    pub log: RawLog,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where `X-Forwarded-Proto` handling stands (Pushpin's `set_x_forwarded_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedProto {
    /// Leave the client's headers untouched.
    Untouched,
    /// Remove client-sent values; set `X-Forwarded-Proto` only for https/wss clients.
    ProtoOnly,
    /// As `ProtoOnly`, and also `X-Forwarded-Protocol`.
    Both,
}

/// One step of the `X-Forwarded-For` rule (Pushpin's `x_forwarded_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedForStep {
    /// Keep only the last N entries of the client's header.
    Truncate(usize),
    /// Append the peer address.
    Append,
}

/// Where the `Grip-Sig` key comes from, after resolution.
#[derive(Clone)]
pub enum SigKeySource {
    /// Configured by the operator.
    Configured(Vec<u8>),
    /// Nothing configured: a random per-process key (origins cannot verify it).
    Random(Vec<u8>),
}

impl fmt::Debug for SigKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigKeySource::Configured(_) => f.write_str("Configured(<redacted>)"),
            SigKeySource::Random(_) => f.write_str("Random(<redacted>)"),
        }
    }
}

impl SigKeySource {
    /// The key bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            SigKeySource::Configured(k) | SigKeySource::Random(k) => k,
        }
    }
}

/// The typed, validated configuration. Nothing downstream sees `RawConfig`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory relative paths are resolved against (the config file's directory).
    pub base_dir: PathBuf,
    pub client_addrs: Vec<SocketAddr>,
    pub max_connections: usize,
    pub client_head_max: usize,
    /// Time a client has to send a request head, idle keep-alive time included.
    pub client_head_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Runtime worker threads; 0: one per CPU core.
    pub worker_threads: usize,

    /// Routes file path; `None` when routes come from `--route` or the built-in default.
    pub routes_file: Option<PathBuf>,
    /// Route lines given on the command line (replace the routes file).
    pub route_lines: Vec<String>,
    pub sig_iss: String,
    pub sig_key: SigKeySource,
    pub x_forwarded_for: Vec<ForwardedForStep>,
    pub forwarded_proto: ForwardedProto,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Idle connections kept per origin (0: no reuse).
    pub origin_pool_max_idle: usize,
    pub origin_idle_timeout: Duration,
    /// Largest origin response head, in bytes (else 502).
    pub origin_head_max: usize,
    pub response_body_max: usize,
    pub retry_body_max: usize,
    pub debug: bool,

    pub publish_http_addr: SocketAddr,
    pub publish_body_max: usize,
    pub publish_head_max: usize,
    pub zmq_pull: String,
    pub zmq_sub: Vec<String>,
    pub zmq_sub_connect: bool,
    pub zmq_command: String,
    /// Receive high-water mark of the ZeroMQ input sockets.
    pub zmq_hwm: i32,

    pub connection_subscription_max: usize,
    pub connection_queue_max: usize,
    pub subscription_linger: Duration,
    pub message_wait: Duration,
    pub id_cache_ttl: Duration,
    pub update_on_first_subscription: bool,
    pub first_subscription_update: Duration,
    pub next_link_concurrency: usize,

    pub log_level: String,
    pub log_format: LogFormat,
    pub access_log: bool,
}

/// Command-line settings that override the file (Pushpin-compatible flags).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--port [ADDR:]PORT`, repeatable: replaces the client listeners.
    pub ports: Vec<String>,
    /// `--route LINE`, repeatable: replaces the routes file.
    pub routes: Vec<String>,
    /// `--port-offset N`: added to every default port.
    pub port_offset: Option<u16>,
    /// `--log-level` / `--verbose`.
    pub log_level: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
}

/// One configuration problem, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Every problem found, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

// === impl ConfigError ===

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === impl Config ===

/// Reads a `file:` secret (injected so config parsing does no I/O of its own).
pub type SecretReader = dyn Fn(&Path) -> std::io::Result<Vec<u8>>;

/// Sections the file may contain; environment overrides `GRIPD_<SECTION>_<KEY>` target these.
const SECTIONS: &[&str] = &["server", "proxy", "publish", "hold", "log"];

impl Config {
    /// The built-in configuration (no file), with command-line overrides.
    pub fn defaults(overrides: &Overrides) -> Result<Config, ConfigErrors> {
        Config::from_toml_str("", Path::new("."), &BTreeMap::new(), overrides, None)
    }

    /// Parses and validates a TOML document.
    ///
    /// `env` is the process environment (injected so tests never mutate the real one);
    /// `GRIPD_<SECTION>_<KEY>=<value>` overrides `[section] key` (value read as TOML, else as a
    /// string). `read_secret` resolves `file:` signing keys; `None` means such keys are an error.
    pub fn from_toml_str(
        text: &str,
        base_dir: &Path,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
        read_secret: Option<&SecretReader>,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                return Err(ConfigErrors(vec![ConfigError {
                    key: String::new(),
                    message: format!("not valid TOML: {}", e.message()),
                }]))
            }
        };
        apply_env(&mut table, env, &mut errors);
        let raw = parse_raw(table, &mut errors);
        let config = Config::from_raw(raw, base_dir, overrides, read_secret, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn from_raw(
        raw: RawConfig,
        base_dir: &Path,
        ov: &Overrides,
        read_secret: Option<&SecretReader>,
        errors: &mut Vec<ConfigError>,
    ) -> Config {
        let mut err = |key: &str, message: String| {
            errors.push(ConfigError {
                key: key.to_string(),
                message,
            })
        };
        if let Some(v) = raw.version {
            if v != 1 {
                err("version", format!("unsupported version {v} (expected 1)"));
            }
        }
        let offset = ov.port_offset.or(raw.server.port_offset).unwrap_or(0);
        let shifted = |port: u16, key: &str, err: &mut dyn FnMut(&str, String)| -> u16 {
            port.checked_add(offset).unwrap_or_else(|| {
                err(
                    key,
                    format!("port {port} plus port offset {offset} exceeds 65535"),
                );
                port
            })
        };

        // [server]
        let client_addrs = if !ov.ports.is_empty() {
            ov.ports
                .iter()
                .filter_map(|p| match parse_listen_addr(p, "0.0.0.0") {
                    Ok(a) => Some(a),
                    Err(m) => {
                        err("--port", m);
                        None
                    }
                })
                .collect()
        } else if let Some(addrs) = &raw.server.http_addrs {
            if addrs.is_empty() {
                err(
                    "server.http_addrs",
                    "at least one address is required".into(),
                );
            }
            addrs
                .iter()
                .filter_map(|p| match parse_listen_addr(p, "0.0.0.0") {
                    Ok(a) => Some(a),
                    Err(m) => {
                        err("server.http_addrs", m);
                        None
                    }
                })
                .collect()
        } else {
            let port = shifted(DEFAULT_CLIENT_PORT, "server.port_offset", &mut err);
            vec![SocketAddr::from(([0, 0, 0, 0], port))]
        };
        let max_connections = positive(
            raw.server.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            "server.max_connections",
            &mut err,
        );
        let client_head_max = raw
            .server
            .client_head_max
            .unwrap_or(DEFAULT_CLIENT_HEAD_MAX);
        if client_head_max < 8192 {
            err(
                "server.client_head_max",
                format!("must be at least 8192 (got {client_head_max})"),
            );
        }
        let shutdown_timeout = Duration::from_secs(
            raw.server
                .shutdown_timeout_secs
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
        );
        let worker_threads = raw.server.worker_threads.unwrap_or(0);
        if worker_threads > MAX_WORKER_THREADS {
            err(
                "server.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (got {worker_threads})"),
            );
        }

        // [proxy]
        let routes_file = if ov.routes.is_empty() {
            raw.proxy.routes_file.as_ref().map(|f| base_dir.join(f))
        } else {
            None
        };
        let route_lines = if !ov.routes.is_empty() {
            ov.routes.clone()
        } else if routes_file.is_none() {
            vec![DEFAULT_ROUTE.to_string()]
        } else {
            Vec::new()
        };
        let sig_iss = raw
            .proxy
            .sig_iss
            .clone()
            .unwrap_or_else(|| DEFAULT_SIG_ISS.to_string());
        let sig_key = match raw.proxy.sig_key.as_deref() {
            None | Some("") => SigKeySource::Random(random_key()),
            Some(spec) => match resolve_secret(spec, base_dir, read_secret) {
                Ok(k) if k.is_empty() => {
                    err("proxy.sig_key", "the key is empty".into());
                    SigKeySource::Random(random_key())
                }
                Ok(k) => SigKeySource::Configured(k),
                Err(m) => {
                    err("proxy.sig_key", m);
                    SigKeySource::Random(random_key())
                }
            },
        };
        let x_forwarded_for = match parse_xff(raw.proxy.x_forwarded_for.as_deref().unwrap_or("")) {
            Ok(v) => v,
            Err(m) => {
                err("proxy.x_forwarded_for", m);
                Vec::new()
            }
        };
        let forwarded_proto = match raw
            .proxy
            .set_x_forwarded_protocol
            .as_deref()
            .unwrap_or("proto-only")
        {
            "" | "false" => ForwardedProto::Untouched,
            "proto-only" => ForwardedProto::ProtoOnly,
            "true" => ForwardedProto::Both,
            other => {
                err(
                    "proxy.set_x_forwarded_protocol",
                    format!("expected \"proto-only\", \"true\" or \"\" (got {other:?})"),
                );
                ForwardedProto::ProtoOnly
            }
        };
        let connect_timeout = Duration::from_secs(positive(
            raw.proxy.connect_timeout_secs,
            DEFAULT_CONNECT_TIMEOUT_SECS,
            "proxy.connect_timeout_secs",
            &mut err,
        ));
        let response_timeout = Duration::from_secs(positive(
            raw.proxy.response_timeout_secs,
            DEFAULT_RESPONSE_TIMEOUT_SECS,
            "proxy.response_timeout_secs",
            &mut err,
        ));
        let origin_pool_max_idle = raw
            .proxy
            .origin_pool_max_idle
            .unwrap_or(DEFAULT_ORIGIN_POOL_MAX_IDLE);
        let origin_idle_timeout = Duration::from_secs(positive(
            raw.proxy.origin_idle_timeout_secs,
            DEFAULT_ORIGIN_IDLE_TIMEOUT_SECS,
            "proxy.origin_idle_timeout_secs",
            &mut err,
        ));
        let client_head_timeout = Duration::from_secs(positive(
            raw.server.client_head_timeout_secs,
            DEFAULT_CLIENT_HEAD_TIMEOUT_SECS,
            "server.client_head_timeout_secs",
            &mut err,
        ));
        let origin_head_max = raw.proxy.origin_head_max.unwrap_or(DEFAULT_ORIGIN_HEAD_MAX);
        if origin_head_max < 1024 {
            err(
                "proxy.origin_head_max",
                format!("must be at least 1024 (got {origin_head_max})"),
            );
        }
        let response_body_max = positive(
            raw.proxy.response_body_max,
            DEFAULT_RESPONSE_BODY_MAX,
            "proxy.response_body_max",
            &mut err,
        );
        let retry_body_max = raw.proxy.retry_body_max.unwrap_or(DEFAULT_RETRY_BODY_MAX);

        // [publish]
        let publish_http_addr = match &raw.publish.http_addr {
            Some(a) => parse_listen_addr(a, "127.0.0.1").unwrap_or_else(|m| {
                err("publish.http_addr", m);
                SocketAddr::from(([127, 0, 0, 1], DEFAULT_PUBLISH_HTTP_PORT))
            }),
            None => SocketAddr::from((
                [127, 0, 0, 1],
                shifted(DEFAULT_PUBLISH_HTTP_PORT, "server.port_offset", &mut err),
            )),
        };
        let publish_body_max = positive(
            raw.publish.http_body_max,
            DEFAULT_PUBLISH_BODY_MAX,
            "publish.http_body_max",
            &mut err,
        );
        let publish_head_max = positive(
            raw.publish.http_head_max,
            DEFAULT_PUBLISH_HEAD_MAX,
            "publish.http_head_max",
            &mut err,
        );
        let zmq_default = |port: u16, err: &mut dyn FnMut(&str, String)| {
            format!(
                "tcp://127.0.0.1:{}",
                shifted(port, "server.port_offset", err)
            )
        };
        let zmq_pull = raw
            .publish
            .zmq_pull
            .clone()
            .unwrap_or_else(|| zmq_default(DEFAULT_ZMQ_PULL_PORT, &mut err));
        let zmq_sub = raw
            .publish
            .zmq_sub
            .clone()
            .unwrap_or_else(|| vec![zmq_default(DEFAULT_ZMQ_SUB_PORT, &mut err)]);
        let zmq_command = raw
            .publish
            .zmq_command
            .clone()
            .unwrap_or_else(|| zmq_default(DEFAULT_ZMQ_COMMAND_PORT, &mut err));
        for (key, spec) in [
            ("publish.zmq_pull", &zmq_pull),
            ("publish.zmq_command", &zmq_command),
        ]
        .into_iter()
        .chain(zmq_sub.iter().map(|s| ("publish.zmq_sub", s)))
        {
            if !(spec.is_empty() || spec.starts_with("tcp://") || spec.starts_with("ipc://")) {
                err(
                    key,
                    format!("expected a tcp:// or ipc:// spec (got {spec:?})"),
                );
            }
        }

        let zmq_hwm = positive(
            raw.publish.zmq_hwm,
            DEFAULT_ZMQ_HWM,
            "publish.zmq_hwm",
            &mut err,
        );

        // [hold]
        let h = &raw.hold;
        let connection_subscription_max = positive(
            h.connection_subscription_max,
            DEFAULT_CONNECTION_SUBSCRIPTION_MAX,
            "hold.connection_subscription_max",
            &mut err,
        );
        let connection_queue_max = positive(
            h.connection_queue_max,
            DEFAULT_CONNECTION_QUEUE_MAX,
            "hold.connection_queue_max",
            &mut err,
        );
        let next_link_concurrency = positive(
            h.next_link_concurrency,
            DEFAULT_NEXT_LINK_CONCURRENCY,
            "hold.next_link_concurrency",
            &mut err,
        );

        // [log]
        let log_level = ov
            .log_level
            .clone()
            .or_else(|| raw.log.level.clone())
            .unwrap_or_else(|| "info".into());
        let log_level = match normalize_log_level(&log_level) {
            Ok(l) => l,
            Err(m) => {
                err("log.level", m);
                "info".into()
            }
        };
        let log_format = match ov
            .log_format
            .as_deref()
            .or(raw.log.format.as_deref())
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                err(
                    "log.format",
                    format!("expected \"text\" or \"json\" (got {other:?})"),
                );
                LogFormat::Text
            }
        };

        Config {
            base_dir: base_dir.to_path_buf(),
            client_addrs,
            max_connections,
            client_head_max,
            client_head_timeout,
            shutdown_timeout,
            worker_threads,
            routes_file,
            route_lines,
            sig_iss,
            sig_key,
            x_forwarded_for,
            forwarded_proto,
            connect_timeout,
            response_timeout,
            origin_pool_max_idle,
            origin_idle_timeout,
            origin_head_max,
            response_body_max,
            retry_body_max,
            debug: raw.proxy.debug.unwrap_or(false),
            publish_http_addr,
            publish_body_max,
            publish_head_max,
            zmq_pull,
            zmq_sub,
            zmq_sub_connect: raw.publish.zmq_sub_connect.unwrap_or(false),
            zmq_command,
            zmq_hwm,
            connection_subscription_max,
            connection_queue_max,
            subscription_linger: Duration::from_secs(
                h.subscription_linger_secs
                    .unwrap_or(DEFAULT_SUBSCRIPTION_LINGER_SECS),
            ),
            message_wait: Duration::from_millis(
                h.message_wait_ms.unwrap_or(DEFAULT_MESSAGE_WAIT_MS),
            ),
            id_cache_ttl: Duration::from_secs(
                h.id_cache_ttl_secs.unwrap_or(DEFAULT_ID_CACHE_TTL_SECS),
            ),
            update_on_first_subscription: h.update_on_first_subscription.unwrap_or(true),
            first_subscription_update: Duration::from_millis(
                h.first_subscription_update_ms
                    .unwrap_or(DEFAULT_FIRST_SUBSCRIPTION_UPDATE_MS),
            ),
            next_link_concurrency,
            log_level,
            log_format,
            access_log: raw.log.access_log.unwrap_or(false),
        }
    }
}

/// Applies `GRIPD_<SECTION>_<KEY>` environment overrides to the parsed table.
fn apply_env(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
    errors: &mut Vec<ConfigError>,
) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("GRIPD_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            continue;
        };
        let key = &rest[section.len() + 1..];
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.to_string(), parsed);
            }
            _ => errors.push(ConfigError {
                key: name.clone(),
                message: format!("[{section}] is not a table"),
            }),
        }
    }
}

/// Deserializes every key on its own, so that every bad key is reported, not just the first.
fn parse_raw(table: toml::Table, errors: &mut Vec<ConfigError>) -> RawConfig {
    let mut good = toml::Table::new();
    for (key, value) in table {
        match &value {
            toml::Value::Table(section) if SECTIONS.contains(&key.as_str()) => {
                let mut kept = toml::Table::new();
                for (k, v) in section {
                    let mut probe = toml::Table::new();
                    let mut inner = toml::Table::new();
                    inner.insert(k.clone(), v.clone());
                    probe.insert(key.clone(), toml::Value::Table(inner));
                    match RawConfig::deserialize(toml::Value::Table(probe)) {
                        Ok(_) => {
                            kept.insert(k.clone(), v.clone());
                        }
                        Err(e) => errors.push(ConfigError {
                            key: format!("{key}.{k}"),
                            message: clean_serde_message(e.message()),
                        }),
                    }
                }
                good.insert(key, toml::Value::Table(kept));
            }
            _ => {
                let mut probe = toml::Table::new();
                probe.insert(key.clone(), value.clone());
                match RawConfig::deserialize(toml::Value::Table(probe)) {
                    Ok(_) => {
                        good.insert(key, value);
                    }
                    Err(e) => errors.push(ConfigError {
                        key,
                        message: clean_serde_message(e.message()),
                    }),
                }
            }
        }
    }
    RawConfig::deserialize(toml::Value::Table(good)).unwrap_or_else(|e| {
        errors.push(ConfigError {
            key: String::new(),
            message: clean_serde_message(e.message()),
        });
        RawConfig::default()
    })
}

fn clean_serde_message(m: &str) -> String {
    m.lines().next().unwrap_or(m).trim().to_string()
}

fn positive<T: Copy + PartialOrd + Default + fmt::Display>(
    v: Option<T>,
    default: T,
    key: &str,
    err: &mut dyn FnMut(&str, String),
) -> T {
    match v {
        Some(v) if v <= T::default() => {
            err(key, format!("must be greater than 0 (got {v})"));
            default
        }
        Some(v) => v,
        None => default,
    }
}

/// Parses `[ADDR:]PORT` (Pushpin's `--port` syntax) or a full socket address.
pub fn parse_listen_addr(s: &str, default_ip: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(port) = s.parse::<u16>() {
        return format!("{default_ip}:{port}")
            .parse()
            .map_err(|e| format!("{s:?}: {e}"));
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        if host == "localhost" {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
            }
        }
    }
    Err(format!("{s:?} is not [ADDR:]PORT"))
}

fn parse_xff(rule: &str) -> Result<Vec<ForwardedForStep>, String> {
    let mut steps = Vec::new();
    for part in rule.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "append" {
            steps.push(ForwardedForStep::Append);
        } else if let Some(n) = part.strip_prefix("truncate:") {
            let n = n
                .parse()
                .map_err(|_| format!("bad truncate count in {part:?}"))?;
            steps.push(ForwardedForStep::Truncate(n));
        } else {
            return Err(format!(
                "unknown step {part:?} (expected truncate:N or append)"
            ));
        }
    }
    Ok(steps)
}

/// Accepts tracing filter directives, level names, or Pushpin's numeric levels 0–4.
fn normalize_log_level(s: &str) -> Result<String, String> {
    let s = s.trim();
    let mapped = match s {
        "0" => "error",
        "1" => "warn",
        "2" => "info",
        "3" => "debug",
        "4" | "5" => "trace",
        other => other,
    };
    tracing_subscriber::EnvFilter::try_new(mapped)
        .map(|_| mapped.to_string())
        .map_err(|e| format!("{s:?} is not a log level or filter: {e}"))
}

/// Resolves a secret spec: plain text, `base64:<b64>`, or `file:<path>` (relative to the config).
pub fn resolve_secret(
    spec: &str,
    base_dir: &Path,
    read_secret: Option<&SecretReader>,
) -> Result<Vec<u8>, String> {
    use base64::Engine;
    if let Some(b64) = spec.strip_prefix("base64:") {
        return base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("invalid base64 key: {e}"));
    }
    if let Some(path) = spec.strip_prefix("file:") {
        let path = base_dir.join(path);
        let read = read_secret.ok_or_else(|| "file: keys cannot be read here".to_string())?;
        let mut bytes = read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        return Ok(bytes);
    }
    Ok(spec.as_bytes().to_vec())
}

fn random_key() -> Vec<u8> {
    use rand::RngCore;
    let mut k = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    k
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml_str(
            text,
            Path::new("/etc/gripd"),
            &BTreeMap::new(),
            &Overrides::default(),
            None,
        )
    }

    #[test]
    fn empty_is_pushpin_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.client_addrs, vec!["0.0.0.0:7999".parse().unwrap()]);
        assert_eq!(c.publish_http_addr, "127.0.0.1:5561".parse().unwrap());
        assert_eq!(c.zmq_pull, "tcp://127.0.0.1:5560");
        assert_eq!(c.zmq_sub, vec!["tcp://127.0.0.1:5562".to_string()]);
        assert_eq!(c.zmq_command, "tcp://127.0.0.1:5563");
        assert_eq!(c.zmq_hwm, DEFAULT_ZMQ_HWM);
        assert_eq!(c.route_lines, vec![DEFAULT_ROUTE.to_string()]);
        assert!(matches!(c.sig_key, SigKeySource::Random(_)));
        assert_eq!(c.sig_iss, "pushpin");
        assert_eq!(c.forwarded_proto, ForwardedProto::ProtoOnly);
    }

    /// conf/gripd.toml lists every key with its default: it must parse, and (but for the
    /// routes file it names) configure exactly what no file at all does.
    #[test]
    fn shipped_config_states_the_defaults() {
        let shipped = parse(include_str!("../../../conf/gripd.toml")).unwrap();
        let empty = parse("").unwrap();
        let mut shipped = format!("{shipped:?}");
        let mut empty = format!("{empty:?}");
        for text in [&mut shipped, &mut empty] {
            // Differences by design: the random per-process key, and the routes file.
            for field in ["sig_key: ", "routes_file: ", "route_lines: "] {
                if let Some(at) = text.find(field) {
                    let end = text[at..].find(", ").map_or(text.len(), |e| at + e);
                    text.replace_range(at..end, field);
                }
            }
        }
        assert_eq!(shipped, empty);
    }

    #[test]
    fn port_offset_moves_only_defaults() {
        let ov = Overrides {
            ports: vec!["127.0.0.1:17999".into()],
            port_offset: Some(10000),
            ..Default::default()
        };
        let c = Config::defaults(&ov).unwrap();
        assert_eq!(c.client_addrs, vec!["127.0.0.1:17999".parse().unwrap()]);
        assert_eq!(c.publish_http_addr, "127.0.0.1:15561".parse().unwrap());
        assert_eq!(c.zmq_pull, "tcp://127.0.0.1:15560");
        assert_eq!(c.zmq_command, "tcp://127.0.0.1:15563");
    }

    #[test]
    fn every_problem_reported() {
        let e = parse(
            "bogus = 1\n[server]\nhttp_addrs = [\"nope\"]\nmax_connections = \"many\"\nfrobnicate = true\nworker_threads = 5000\n[log]\nformat = \"xml\"\n[publish]\nzmq_hwm = 0\n[nosuch]\n",
        )
        .unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "bogus",
            "server.max_connections",
            "server.frobnicate",
            "server.worker_threads",
            "nosuch",
            "server.http_addrs",
            "log.format",
            "publish.zmq_hwm",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn env_overrides_file() {
        let mut env = BTreeMap::new();
        env.insert(
            "GRIPD_PUBLISH_HTTP_ADDR".to_string(),
            "127.0.0.1:9999".to_string(),
        );
        env.insert(
            "GRIPD_HOLD_CONNECTION_QUEUE_MAX".to_string(),
            "7".to_string(),
        );
        env.insert("GRIPD_LOG".to_string(), "debug".to_string());
        let c = Config::from_toml_str(
            "[publish]\nhttp_addr = \"127.0.0.1:1\"\n",
            Path::new("."),
            &env,
            &Overrides::default(),
            None,
        )
        .unwrap();
        assert_eq!(c.publish_http_addr, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.connection_queue_max, 7);
    }

    #[test]
    fn secrets() {
        let read = |p: &Path| -> std::io::Result<Vec<u8>> {
            assert_eq!(p, Path::new("/etc/gripd/key"));
            Ok(b"s3cret\n".to_vec())
        };
        let c = Config::from_toml_str(
            "[proxy]\nsig_key = \"file:key\"\n",
            Path::new("/etc/gripd"),
            &BTreeMap::new(),
            &Overrides::default(),
            Some(&read),
        )
        .unwrap();
        assert_eq!(c.sig_key.bytes(), b"s3cret");
        let c = parse("[proxy]\nsig_key = \"base64:aGk=\"\n").unwrap();
        assert_eq!(c.sig_key.bytes(), b"hi");
        assert!(parse("[proxy]\nsig_key = \"base64:!!\"\n").is_err());
    }

    #[test]
    fn listen_addr_forms() {
        assert_eq!(
            parse_listen_addr("8080", "0.0.0.0").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("127.0.0.1:8080", "0.0.0.0").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("[::1]:80", "0.0.0.0").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(parse_listen_addr("x:y", "0.0.0.0").is_err());
    }

    #[test]
    fn log_levels() {
        assert_eq!(normalize_log_level("3").unwrap(), "debug");
        assert_eq!(
            normalize_log_level("gripd=trace,info").unwrap(),
            "gripd=trace,info"
        );
    }
}
