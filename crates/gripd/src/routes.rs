//! Pushpin-compatible routes: parsing the `routes` file and picking the route for a request.
//!
//! The syntax is Pushpin's, so an existing `routes` file works unchanged. One route per line:
//!
//! ```text
//! <condition>[,prop[=value]]* <target>[,prop[=value]]* [<target>[,prop[=value]]*]*
//! ```
//!
//! Sections are separated by spaces, props by `,`; `#` outside quotes starts a comment; a value may
//! be double-quoted, with `\"` and `\\` as the only escapes. The condition is an exact domain, `*`
//! (any domain) or empty: a first section that contains `=` is read as props with an empty domain,
//! and such a route is reachable only through its id.
//!
//! Matching (see [`Routes::find`]) follows Pushpin: the routes of the request's domain are used if
//! the file names that domain at all, otherwise the `*` routes; among the routes that match, an
//! explicit `proto` beats an unspecified one, then a longer `path_beg` wins, then an explicit `ssl`.
//!
//! Where gripd is stricter than Pushpin it is on purpose: an unknown prop is an error for its line
//! (Pushpin ignores it silently, so a typo such as `path_beg` → `pathbeg` would route everything),
//! and `zhttp/` targets are rejected because gripd has no ZeroMQ HTTP transport. Props that Pushpin
//! knows but gripd does not implement are accepted and listed in [`RouteProps::ignored`] and
//! [`Target::ignored`], so the caller can warn about them.
//!
//! Invariants: this module does no I/O, and parsing is total: any input yields routes and errors,
//! never a panic. A bad line is reported and skipped; the other lines still load.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

#[cfg(test)]
mod tests;

/// Parsed routes, indexed for lookup by domain and by id.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Every route that loaded, in file order; shared so a request can keep its route cheaply.
    routes: Vec<Arc<Route>>,
    /// Indexes into `routes` of the routes of each exact domain, keyed by the lowercased domain.
    by_domain: HashMap<String, Vec<usize>>,
    /// Indexes into `routes` of the `*` routes.
    wildcard: Vec<usize>,
    /// Route ids (explicit `id=` or generated from the condition); `None` when the id is shared
    /// by several routes, which makes it unusable, as in Pushpin.
    by_id: HashMap<String, Option<usize>>,
}

/// One line of the routes file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The explicit `id=` of the route, if any.
    pub id: Option<String>,
    /// Which requests the route applies to.
    pub condition: Condition,
    /// What to do with those requests.
    pub props: RouteProps,
    /// Where to send them; never empty.
    pub targets: Vec<Target>,
    /// 1-based line number in the routes file (or position among the `--route` lines).
    pub line: usize,
}

/// The matching part of a route.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Condition {
    /// Exact domain as written in the file; `None` means `*` (any domain).
    pub domain: Option<String>,
    /// True when the condition had no domain at all (`id=foo target:80`): the route is then only
    /// reachable by id, never by [`Routes::find`]. `domain` is `None` in that case.
    pub id_only: bool,
    /// Byte prefix the encoded request path must start with; never empty when set.
    pub path_beg: Option<String>,
    /// Restricts the route to plain HTTP requests or to WebSocket handshakes.
    pub proto: Option<Proto>,
    /// Restricts the route to TLS (`ssl=yes`) or plain (`ssl=no`) client connections.
    pub ssl: Option<bool>,
}

/// The request protocol a route can be restricted to (`proto=http|ws`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Ordinary HTTP requests (not WebSocket handshakes).
    Http,
    /// WebSocket handshakes.
    Ws,
}

/// Route-level props, other than the condition ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteProps {
    /// `sig_iss=`: the `iss` claim of the `Grip-Sig` token for this route.
    pub sig_iss: Option<String>,
    /// `sig_key=`: the signing key as written; see [`RouteProps::sig_key_bytes`].
    pub sig_key: Option<String>,
    /// `prefix=`: prepended to every channel name the origin uses.
    pub prefix: Option<String>,
    /// `as_host=host[:port]`: the Host to present to the origin.
    pub as_host: Option<String>,
    /// `path_rem=N`: number of leading bytes to strip from the path.
    pub path_rem: Option<usize>,
    /// `replace_beg=X`: replaces the `path_beg` prefix with `X` (overrides `path_rem`).
    pub replace_beg: Option<String>,
    /// `debug`: return debug details in error responses.
    pub debug: bool,
    /// `aco`: automatic cross-origin (CORS) headers.
    pub aco: bool,
    /// `header=Name:value` (repeatable): headers added to requests to the origin, in file order.
    pub headers: Vec<(String, String)>,
    /// `no_grip`: pass responses through without GRIP processing.
    pub no_grip: bool,
    /// `session`: enable session handling (cookies) for the route.
    pub session: bool,
    /// Names of props Pushpin accepts that gripd parses but does not implement (`jsonp_*`,
    /// `sockjs*`, `orig_headers`, `log_level`), in file order, so the caller can warn.
    pub ignored: Vec<String>,
}

/// What a target is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// An HTTP origin. `host` has no brackets for IPv6 (`[::1]:80` gives `::1`).
    Host {
        /// Host name or IP address to connect to.
        host: String,
        /// TCP port, never 0.
        port: u16,
    },
    /// The built-in test handler.
    Test,
}

/// One target (origin) of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where requests go.
    pub kind: TargetKind,
    /// `ssl`: connect with TLS (https/wss).
    pub ssl: bool,
    /// `insecure`: do not verify the origin's certificate.
    pub insecure: bool,
    /// `host=`: Host header (and URI host) to use instead of the client's.
    pub host_header: Option<String>,
    /// `over_http`: WebSocket-over-HTTP to this origin.
    pub over_http: bool,
    /// `one_event`: send one event per WebSocket-over-HTTP request.
    pub one_event: bool,
    /// `sub=` (repeatable): channels every session on this target is subscribed to.
    pub subs: Vec<String>,
    /// `untrusted`: apply the outbound access policy (Pushpin trusts targets by default).
    pub untrusted: bool,
    /// `trust_connect_host`: verify the certificate against the connect host, not the Host.
    pub trust_connect_host: bool,
    /// Names of accepted-but-unimplemented target props (`ipc_file_mode`, `client_cert`,
    /// `client_key`), in file order.
    pub ignored: Vec<String>,
}

/// A problem with one line; that line was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RouteError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, lowercase, without a trailing period.
    pub message: String,
}

/// One whitespace-separated section of a line: a value and its props, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Section {
    value: String,
    props: Vec<(String, String)>,
}

/// Route-level props gripd acts on; with `IGNORED_ROUTE_PROPS`, every prop Pushpin knows
/// (anything else is an error).
const ROUTE_PROPS: &[&str] = &[
    "id",
    "path_beg",
    "proto",
    "ssl",
    "sig_iss",
    "sig_key",
    "prefix",
    "as_host",
    "path_rem",
    "replace_beg",
    "debug",
    "aco",
    "header",
    "no_grip",
    "session",
];

/// Route props Pushpin knows that gripd accepts but ignores (listed in `RouteProps::ignored`).
const IGNORED_ROUTE_PROPS: &[&str] = &[
    "orig_headers",
    "jsonp_mode",
    "jsonp_cb",
    "jsonp_body",
    "jsonp_defcb",
    "jsonp_defmethod",
    "sockjs",
    "sockjs_as_path",
    "log_level",
];

/// Target props gripd acts on; with `IGNORED_TARGET_PROPS`, every prop Pushpin knows.
const TARGET_PROPS: &[&str] = &[
    "ssl",
    "untrusted",
    "trust_connect_host",
    "insecure",
    "host",
    "sub",
    "over_http",
    "one_event",
];

/// Target props Pushpin knows that gripd accepts but ignores (zhttp targets, [master] mTLS).
const IGNORED_TARGET_PROPS: &[&str] = &["ipc_file_mode", "client_cert", "client_key"];

/// Every route prop Pushpin knows.
const ROUTE_KNOWN: &[&[&str]] = &[ROUTE_PROPS, IGNORED_ROUTE_PROPS];
/// Every target prop Pushpin knows.
const TARGET_KNOWN: &[&[&str]] = &[TARGET_PROPS, IGNORED_TARGET_PROPS];

/// Base64 for `sig_key=base64:...`; like Qt's decoder, padding is optional.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// === impl Routes ===

impl Routes {
    /// Parses a whole routes file. Returns the routes and every per-line error (a bad line is
    /// skipped, the others kept). Blank and comment-only lines are fine.
    pub fn parse(text: &str) -> (Routes, Vec<RouteError>) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Self::from_lines(text.lines())
    }

    /// Parses `--route` command-line lines; each item is one line, numbered from 1 in errors.
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> (Routes, Vec<RouteError>) {
        let mut routes = Routes::default();
        let mut errors = Vec::new();
        for (index, text) in lines.into_iter().enumerate() {
            let line = index + 1;
            let result = parse_route(text, line).and_then(|route| match route {
                Some(route) => routes.insert(route),
                None => Ok(()),
            });
            if let Err(message) = result {
                errors.push(RouteError { line, message });
            }
        }
        (routes, errors)
    }

    /// True when no route loaded.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Number of routes that loaded.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// The routes in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> + '_ {
        self.routes.iter().map(|r| r.as_ref())
    }

    /// Picks the route for a request.
    ///
    /// `host` is the Host header value (a port is ignored, case does not matter), `path` the
    /// encoded path (anything from `?` on is ignored). As in Pushpin, when the file has routes
    /// for the request's domain only those are considered, even if none of them matches; the `*`
    /// routes are used only for domains the file does not name.
    pub fn find(&self, host: &str, path: &str, is_ws: bool, is_https: bool) -> Option<&Arc<Route>> {
        let path = path.split('?').next().unwrap_or(path);
        let domain = host_without_port(host).to_ascii_lowercase();
        let candidates = self.by_domain.get(&domain).unwrap_or(&self.wildcard);
        let mut best: Option<&Arc<Route>> = None;
        for route in candidates.iter().filter_map(|&i| self.routes.get(i)) {
            if !route.condition.matches(path, is_ws, is_https) {
                continue;
            }
            // Strictly greater: on a tie the earlier line wins. Ties cannot happen between
            // matching routes of one domain, since duplicates are rejected on insert.
            let better = match best {
                Some(b) => route.condition.specificity() > b.condition.specificity(),
                None => true,
            };
            if better {
                best = Some(route);
            }
        }
        best
    }

    /// Looks a route up by id: its explicit `id=`, or for routes without one the id Pushpin
    /// generates from the condition (see [`Route::condition_id`]). An id shared by several routes
    /// finds nothing. The path is not checked: call [`Route::matches_path`] before using the route.
    pub fn find_by_id(&self, id: &str) -> Option<&Arc<Route>> {
        self.by_id
            .get(id)
            .copied()
            .flatten()
            .and_then(|i| self.routes.get(i))
    }

    /// Adds a parsed route, rejecting a duplicate condition within the same domain.
    fn insert(&mut self, route: Route) -> Result<(), String> {
        let index = self.routes.len();
        let cond = &route.condition;
        if !cond.id_only {
            let list = match &cond.domain {
                Some(domain) => self
                    .by_domain
                    .entry(domain.to_ascii_lowercase())
                    .or_default(),
                None => &mut self.wildcard,
            };
            let duplicate = list
                .iter()
                .filter_map(|&i| self.routes.get(i))
                .find(|other| other.condition.same_as(cond));
            if let Some(other) = duplicate {
                return Err(format!("duplicate condition (same as line {})", other.line));
            }
            list.push(index);
        }
        let id = route.id.clone().unwrap_or_else(|| route.condition_id());
        self.by_id
            .entry(id)
            .and_modify(|slot| *slot = None)
            .or_insert(Some(index));
        self.routes.push(Arc::new(route));
        Ok(())
    }
}

// === impl Route ===

impl Route {
    /// How logs name the route: its `id`, or its line in the routes file.
    pub fn name(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("line {}", self.line))
    }

    /// Applies `path_rem` / `replace_beg` to a path-and-query, keeping the query.
    ///
    /// `replace_beg` strips the `path_beg` prefix and puts its value in front; otherwise
    /// `path_rem=N` strips N bytes. The result always starts with `/` (Pushpin could produce an
    /// empty or relative path here, which is not a valid request target).
    pub fn rewrite_path(&self, path_and_query: &str) -> String {
        let (path, query) = match path_and_query.find('?') {
            Some(at) => path_and_query.split_at(at),
            None => (path_and_query, ""),
        };
        let remove = match &self.props.replace_beg {
            Some(_) => self.condition.path_beg.as_ref().map_or(0, String::len),
            None => self.props.path_rem.unwrap_or(0),
        };
        let rest = strip_bytes(path, remove);
        let prepend = self.props.replace_beg.as_deref().unwrap_or("");
        let mut out = String::with_capacity(prepend.len() + rest.len() + query.len() + 1);
        let leading_slash = if prepend.is_empty() { rest } else { prepend }.starts_with('/');
        if !leading_slash {
            out.push('/');
        }
        out.push_str(prepend);
        out.push_str(rest);
        out.push_str(query);
        out
    }

    /// The path the built-in test handler sees: Pushpin strips `path_beg` except for its
    /// trailing `/`, so `path_beg=/t/` turns `/t/stream` into `/stream`.
    pub fn test_handler_path<'p>(&self, path: &'p str) -> &'p str {
        let Some(beg) = &self.condition.path_beg else {
            return path;
        };
        let remove = beg.len() - usize::from(beg.ends_with('/'));
        match path.get(remove..) {
            Some(rest) if path.starts_with(beg.as_str()) => rest,
            _ => path,
        }
    }

    /// True when `path` starts with the route's `path_beg` (or it has none). Needed after
    /// [`Routes::find_by_id`], which ignores the path.
    pub fn matches_path(&self, path: &str) -> bool {
        has_prefix(path, self.condition.path_beg.as_deref())
    }

    /// The id Pushpin generates for a route without `id=`: `domain,proto,ssl,path_beg`, each
    /// `*` when unspecified. Pushpin labels `ssl=no` as `ssl` and `ssl=yes` as `no-ssl`; that
    /// is kept so ids (and stats names) are the same as Pushpin's.
    pub fn condition_id(&self) -> String {
        let c = &self.condition;
        let domain = c.domain.as_deref().unwrap_or("*");
        let proto = match c.proto {
            Some(Proto::Http) => "http",
            Some(Proto::Ws) => "ws",
            None => "*",
        };
        let ssl = match c.ssl {
            Some(false) => "ssl",
            Some(true) => "no-ssl",
            None => "*",
        };
        let path_beg = c.path_beg.as_deref().unwrap_or("*");
        format!("{domain},{proto},{ssl},{path_beg}")
    }
}

// === impl Condition ===

impl Condition {
    /// Whether a request with this path, protocol and TLS state matches (the domain is checked
    /// by the caller).
    fn matches(&self, path: &str, is_ws: bool, is_https: bool) -> bool {
        let proto_ok = match self.proto {
            None => true,
            Some(Proto::Ws) => is_ws,
            Some(Proto::Http) => !is_ws,
        };
        let ssl_ok = self.ssl.is_none() || self.ssl == Some(is_https);
        let path_ok = has_prefix(path, self.path_beg.as_deref());
        proto_ok && ssl_ok && path_ok
    }

    /// Sort key of a matching route: explicit proto, then path_beg length, then explicit ssl.
    fn specificity(&self) -> (bool, usize, bool) {
        (
            self.proto.is_some(),
            self.path_beg.as_ref().map_or(0, String::len),
            self.ssl.is_some(),
        )
    }

    /// Same condition, apart from the domain (which the caller has already compared).
    fn same_as(&self, other: &Condition) -> bool {
        self.proto == other.proto && self.ssl == other.ssl && self.path_beg == other.path_beg
    }
}

// === impl RouteProps ===

impl RouteProps {
    /// The signing key bytes: `base64:...` is decoded, anything else is used as UTF-8 bytes.
    pub fn sig_key_bytes(&self) -> Option<Vec<u8>> {
        self.sig_key
            .as_deref()
            .map(|key| match key.strip_prefix("base64:") {
                // Validated at parse time; fall back to the raw text for hand-built props.
                Some(b64) => KEY_BASE64
                    .decode(b64)
                    .unwrap_or_else(|_| key.as_bytes().to_vec()),
                None => key.as_bytes().to_vec(),
            })
    }
}

// === impl Target ===

impl Target {
    fn new(kind: TargetKind) -> Target {
        Target {
            kind,
            ssl: false,
            insecure: false,
            host_header: None,
            over_http: false,
            one_event: false,
            subs: Vec::new(),
            untrusted: false,
            trust_connect_host: false,
            ignored: Vec::new(),
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetKind::Host { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            TargetKind::Host { host, port } => write!(f, "{host}:{port}"),
            TargetKind::Test => f.write_str("test"),
        }
    }
}

// === line parsing ===

/// Parses one line into a route; `Ok(None)` for a blank or comment-only line.
fn parse_route(text: &str, line: usize) -> Result<Option<Route>, String> {
    let sections = split_sections(text)?;
    let Some((first, rest)) = sections.split_first() else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Err("must specify condition and at least one target".to_owned());
    }

    let props = Props::check(&first.props, ROUTE_KNOWN, "route", TARGET_KNOWN)?;
    let mut condition = Condition {
        domain: match first.value.as_str() {
            "" | "*" => None,
            domain => Some(domain.to_owned()),
        },
        id_only: first.value.is_empty(),
        ..Condition::default()
    };
    condition.proto = match props.value("proto") {
        None => None,
        Some("http") => Some(Proto::Http),
        Some("ws") => Some(Proto::Ws),
        Some(_) => return Err("proto must be set to 'http' or 'ws'".to_owned()),
    };
    condition.ssl = match props.value("ssl") {
        None => None,
        Some("yes") => Some(true),
        Some("no") => Some(false),
        Some(_) => return Err("ssl must be set to 'yes' or 'no'".to_owned()),
    };
    condition.path_beg = match props.value("path_beg") {
        Some("") => return Err("path_beg cannot be empty".to_owned()),
        other => other.map(str::to_owned),
    };

    let mut route_props = RouteProps {
        sig_iss: props.owned("sig_iss"),
        sig_key: props.owned("sig_key"),
        prefix: props.owned("prefix"),
        as_host: props.owned("as_host"),
        replace_beg: props.owned("replace_beg"),
        debug: props.has("debug"),
        aco: props.has("aco"),
        no_grip: props.has("no_grip"),
        session: props.has("session"),
        ignored: props.names_in(IGNORED_ROUTE_PROPS),
        ..RouteProps::default()
    };
    if let Some(b64) = props
        .value("sig_key")
        .and_then(|k| k.strip_prefix("base64:"))
    {
        if KEY_BASE64.decode(b64).is_err() {
            return Err("sig_key has invalid base64".to_owned());
        }
    }
    if let Some(n) = props.value("path_rem") {
        let n = parse_digits(n).ok_or("path_rem must be a non-negative integer")?;
        route_props.path_rem = Some(n);
    }
    if let Some(mode) = props.value("jsonp_mode") {
        if mode != "basic" && mode != "extended" {
            return Err("jsonp_mode must be set to 'basic' or 'extended'".to_owned());
        }
    }
    for header in props.values("header") {
        let (name, value) = match header.split_once(':') {
            Some((name, value)) if !name.is_empty() => (name, value),
            _ => return Err("header must use format 'name:value'".to_owned()),
        };
        let value = value.trim_start_matches(' ');
        route_props
            .headers
            .push((name.to_owned(), value.to_owned()));
    }

    let targets = rest.iter().map(parse_target).collect::<Result<_, _>>()?;

    Ok(Some(Route {
        // Pushpin treats an empty `id=` as no id.
        id: props.owned("id").filter(|id| !id.is_empty()),
        condition,
        props: route_props,
        targets,
        line,
    }))
}

/// Parses one target section.
fn parse_target(section: &Section) -> Result<Target, String> {
    let value = section.value.as_str();
    let kind = if value == "test" {
        TargetKind::Test
    } else if value.starts_with("zhttp/") || value.starts_with("zhttpreq/") {
        return Err("zhttp targets are not supported".to_owned());
    } else {
        let (host, port) = match value.strip_prefix('[') {
            Some(v6) => v6.split_once("]:"),
            None => value.split_once(':'),
        }
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| format!("target bad format: '{value}' (expected host:port or test)"))?;
        let port = parse_digits(port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("target invalid port: '{port}'"))?;
        TargetKind::Host {
            host: host.to_owned(),
            port,
        }
    };
    let props = Props::check(&section.props, TARGET_KNOWN, "target", ROUTE_KNOWN)?;
    let mut target = Target::new(kind);
    target.ssl = props.has("ssl");
    target.untrusted = props.has("untrusted");
    target.trust_connect_host = props.has("trust_connect_host");
    target.insecure = props.has("insecure");
    target.host_header = props.owned("host");
    target.over_http = props.has("over_http");
    target.one_event = props.has("one_event");
    // Pushpin drops empty `sub=` values.
    target.subs = props
        .values("sub")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    target.ignored = props.names_in(IGNORED_TARGET_PROPS);
    Ok(target)
}

/// Props of one section, checked against the known names.
struct Props<'a> {
    list: &'a [(String, String)],
}

impl<'a> Props<'a> {
    /// Rejects unknown prop names. `known` are the props of this kind of section, `other` those
    /// of the other kind, only to say where a misplaced prop belongs.
    fn check(
        list: &'a [(String, String)],
        known: &[&[&str]],
        what: &str,
        other: &[&[&str]],
    ) -> Result<Props<'a>, String> {
        let has = |sets: &[&[&str]], name: &str| sets.iter().any(|set| set.contains(&name));
        if let Some((name, _)) = list.iter().find(|(n, _)| !has(known, n)) {
            let hint = if has(other, name) {
                if what == "route" {
                    " (it is a target option)"
                } else {
                    " (it is a route option)"
                }
            } else {
                ""
            };
            return Err(format!("unknown {what} option '{name}'{hint}"));
        }
        Ok(Props { list })
    }

    /// The last value given for `name` (Pushpin keeps the last one).
    fn value(&self, name: &str) -> Option<&'a str> {
        self.list
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn owned(&self, name: &str) -> Option<String> {
        self.value(name).map(str::to_owned)
    }

    /// Every value given for `name`, in order.
    fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.list
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a flag is present; like Pushpin, any value it carries is ignored.
    fn has(&self, name: &str) -> bool {
        self.list.iter().any(|(n, _)| n == name)
    }

    /// The distinct names from `names` that are present, in order of first appearance.
    fn names_in(&self, names: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (name, _) in self.list {
            if names.contains(&name.as_str()) && !out.contains(name) {
                out.push(name.clone());
            }
        }
        out
    }
}

/// Splits a line into sections, decoding quotes and dropping the comment.
///
/// Grammar (Pushpin's): sections are separated by spaces (tabs too, here); inside a section,
/// `,` separates the value from props and props from each other; `"..."` may appear anywhere in
/// a token and is decoded in place; `#` outside quotes ends the line. If the first token of a
/// section contains `=` (after decoding), the section has an empty value and that token is its
/// first prop.
fn split_sections(line: &str) -> Result<Vec<Section>, String> {
    let bytes = line.as_bytes();
    let mut sections: Vec<Section> = Vec::new();
    let mut at = 0;
    loop {
        while at < bytes.len() && is_space(bytes[at]) {
            at += 1;
        }
        if at >= bytes.len() || bytes[at] == b'#' {
            return Ok(sections);
        }
        let mut section = Section::default();
        let mut first = true;
        loop {
            let (token, end) = read_token(line, at)?;
            at = end;
            if first && !token.contains('=') {
                section.value = token;
            } else {
                if token.is_empty() {
                    return Err("expecting prop".to_owned());
                }
                let (name, value) = token.split_once('=').unwrap_or((&token, ""));
                if name.is_empty() {
                    return Err("empty prop name".to_owned());
                }
                section.props.push((name.to_owned(), value.to_owned()));
            }
            first = false;
            if bytes.get(at) == Some(&b',') {
                at += 1;
            } else {
                break;
            }
        }
        sections.push(section);
    }
}

/// Reads one token starting at byte `start`, up to an unquoted `,`, space or `#` (or the end).
/// Returns the decoded token and the byte index of its terminator.
fn read_token(line: &str, start: usize) -> Result<(String, usize), String> {
    let bytes = line.as_bytes();
    let mut token = String::new();
    let mut at = start;
    loop {
        let stop = bytes[at..]
            .iter()
            .position(|&b| b == b'"' || b == b',' || b == b'#' || is_space(b))
            .map_or(bytes.len(), |n| at + n);
        // Every stop byte is ASCII, so `at` and `stop` are char boundaries.
        token.push_str(line.get(at..stop).unwrap_or_default());
        if bytes.get(stop) != Some(&b'"') {
            return Ok((token, stop));
        }
        let mut chars = line.get(stop + 1..).unwrap_or_default().char_indices();
        let mut closed = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    closed = Some(stop + 1 + i + 1);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => token.push(e),
                    Some((_, e)) => return Err(format!("invalid escape '\\{e}' in quotes")),
                    None => return Err("unterminated quote".to_owned()),
                },
                c => token.push(c),
            }
        }
        at = closed.ok_or("unterminated quote")?;
    }
}

/// Whether `path` starts with `prefix`; no prefix matches every path.
fn has_prefix(path: &str, prefix: Option<&str>) -> bool {
    match prefix {
        Some(prefix) => path.starts_with(prefix),
        None => true,
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses a non-empty run of ASCII digits (no sign, no spaces).
fn parse_digits(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `::1`; a bare IPv6 address is kept whole.
fn host_without_port(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => name,
        _ => host,
    }
}

/// `path` without its first `n` bytes, moving forward to a char boundary if needed.
fn strip_bytes(path: &str, n: usize) -> &str {
    (n..=path.len())
        .find_map(|i| path.get(i..))
        .unwrap_or_default()
}
