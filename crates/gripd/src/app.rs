//! Composition root: binds (or takes) listeners, builds the hub, origin client and routes, and
//! spawns the accept loops, the hub timer, the ZeroMQ thread and the routes watcher. `Running`
//! stops them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Config, SigKeySource, PLACEHOLDER_SIG_KEY};
use crate::hub::{Hub, HubConfig};
use crate::metrics::Metrics;
use crate::origin::Origin;
use crate::proxy::{self, RoutesHandle, State};
use crate::publish_http::{self, ControlState};
use crate::publish_zmq::{self, ZmqEndpoints};
use crate::routes::{RouteError, Routes};
use crate::server::{self, ListenerSettings};
use crate::shutdown::Shutdown;

/// How often the routes file is checked for changes.
pub const ROUTES_POLL: Duration = Duration::from_secs(1);

/// Bound sockets, so tests can pass listeners on port 0.
pub struct Listeners {
    pub client: Vec<TcpListener>,
    pub control: TcpListener,
}

/// A started gripd.
pub struct Running {
    pub client_addrs: Vec<SocketAddr>,
    pub control_addr: SocketAddr,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub routes: RoutesHandle,
    /// The ZeroMQ endpoints in use (real ports when configured as `tcp://host:*`); `None` when
    /// every ZeroMQ input is disabled.
    pub zmq: Option<ZmqEndpoints>,
    /// Stops the ZeroMQ thread when `Running` is dropped without `shutdown`.
    _zmq_stop: Option<tokio_util::sync::DropGuard>,
    routes_file: Option<std::path::PathBuf>,
    shutdown: Shutdown,
}

impl Listeners {
    /// Binds every configured address.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let mut client = Vec::new();
        for addr in &config.client_addrs {
            client.push(bind(*addr).await?);
        }
        let control = bind(config.publish_http_addr).await?;
        Ok(Listeners { client, control })
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Loads routes from `--route` lines or the routes file.
pub fn load_routes(config: &Config) -> Result<(Routes, Vec<RouteError>), String> {
    match &config.routes_file {
        None => Ok(Routes::from_lines(
            config.route_lines.iter().map(String::as_str),
        )),
        Some(path) => std::fs::read_to_string(path)
            .map(|text| Routes::parse(&text))
            .map_err(|e| format!("cannot read routes file {}: {e}", path.display())),
    }
}

/// Starts gripd on the given listeners.
pub fn start(config: Config, listeners: Listeners, routes: Routes) -> std::io::Result<Running> {
    let config = Arc::new(config);
    match &config.sig_key {
        SigKeySource::Random(_) => tracing::warn!(
            "no proxy.sig_key configured: signing Grip-Sig with a random per-process key, which origins cannot verify"
        ),
        SigKeySource::Configured(k) if k.as_slice() == PLACEHOLDER_SIG_KEY.as_bytes() => tracing::warn!(
            "proxy.sig_key is Pushpin's placeholder \"changeme\": anyone can forge Grip-Sig; set a secret key"
        ),
        SigKeySource::Configured(_) => {}
    }
    let metrics = Arc::new(Metrics::new());
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    metrics.worker_threads.set(workers as i64);
    let hub = Hub::new(
        HubConfig {
            message_wait: config.message_wait,
            id_cache_ttl: config.id_cache_ttl,
            update_on_first_subscription: config.update_on_first_subscription,
            first_subscription_update: config.first_subscription_update,
        },
        metrics.clone(),
    );
    let shutdown = Shutdown::new();
    let routes: RoutesHandle = Arc::new(RwLock::new(Arc::new(routes)));
    let state = Arc::new(State {
        config: config.clone(),
        routes: routes.clone(),
        origin: Origin::new(&config),
        hub: hub.clone(),
        metrics: metrics.clone(),
        link_permits: Arc::new(Semaphore::new(config.next_link_concurrency)),
        link_flights: Default::default(),
        shutdown: shutdown.clone(),
    });

    let client_permits = Arc::new(Semaphore::new(config.max_connections));
    let mut client_addrs = Vec::new();
    for listener in listeners.client {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "client listener ready");
        client_addrs.push(addr);
        let state = state.clone();
        // Boxed so hyper's per-connection slot for the in-flight request stays small: the
        // request future is large and finished long before a held response ends.
        let handler = move |peer, detach, req| {
            Box::pin(proxy::handle(state.clone(), peer, false, detach, req))
        };
        shutdown.tracker.spawn(server::serve(
            listener,
            ListenerSettings {
                name: "client",
                head_max: config.client_head_max,
                permits: client_permits.clone(),
                head_timeout: config.client_head_timeout,
            },
            shutdown.clone(),
            metrics.clone(),
            handler,
        ));
    }

    let control_addr = listeners.control.local_addr()?;
    tracing::info!(addr = %control_addr, "http publish listener ready");
    let control = Arc::new(ControlState {
        hub: hub.clone(),
        metrics: metrics.clone(),
        body_max: config.publish_body_max,
    });
    let handler = move |_peer, _detach, req| publish_http::handle(control.clone(), req);
    shutdown.tracker.spawn(server::serve(
        listeners.control,
        ListenerSettings {
            name: "control",
            head_max: config.publish_head_max,
            permits: Arc::new(Semaphore::new(1024)),
            head_timeout: crate::server::HEADER_READ_TIMEOUT,
        },
        shutdown.clone(),
        metrics.clone(),
        handler,
    ));

    shutdown
        .tracker
        .spawn(hub.clone().run_ticker(shutdown.token.clone()));
    shutdown.tracker.spawn(
        state
            .origin
            .pool()
            .clone()
            .sweep_until(shutdown.token.clone()),
    );

    let (zmq, zmq_stop) = publish_zmq::start(&config, hub.clone(), metrics.clone(), &shutdown)?
        .map_or((None, None), |(e, stop)| (Some(e), Some(stop)));

    if let Some(path) = config.routes_file.clone() {
        shutdown
            .tracker
            .spawn(watch_routes(path, routes.clone(), shutdown.clone()));
    }

    Ok(Running {
        client_addrs,
        control_addr,
        hub,
        metrics,
        routes,
        zmq,
        _zmq_stop: zmq_stop,
        routes_file: config.routes_file.clone(),
        shutdown,
    })
}

/// Re-reads the routes file; a broken file keeps the old routes and logs each error.
pub fn reload_routes(path: &Path, routes: &RoutesHandle) -> bool {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read routes file, keeping old routes");
            return false;
        }
    };
    let (new, errors) = Routes::parse(&text);
    if !errors.is_empty() {
        for e in &errors {
            tracing::warn!(path = %path.display(), error = %e, "routes file error");
        }
        tracing::warn!(path = %path.display(), "routes file has errors, keeping old routes");
        return false;
    }
    *routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
    tracing::info!(path = %path.display(), "routes reloaded");
    true
}

async fn watch_routes(path: std::path::PathBuf, routes: RoutesHandle, shutdown: Shutdown) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = mtime(&path);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(ROUTES_POLL);
    loop {
        #[cfg(unix)]
        let hup_fut = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fut = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = shutdown.token.cancelled() => return,
            _ = hup_fut => {
                tracing::info!("SIGHUP: reloading routes");
                last = mtime(&path);
                reload_routes(&path, &routes);
            }
            _ = tick.tick() => {
                let now = mtime(&path);
                if now != last {
                    last = now;
                    tracing::info!("routes file changed, reloading");
                    reload_routes(&path, &routes);
                }
            }
        }
    }
}

impl Running {
    /// Reloads the routes file now (as SIGHUP does).
    pub fn reload_routes(&self) -> bool {
        match &self.routes_file {
            Some(p) => reload_routes(p, &self.routes),
            None => false,
        }
    }

    /// Stops accepting, ends held connections, and waits up to `deadline` for the rest.
    /// Returns whether everything finished in time.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        tracing::info!("shutting down");
        self.shutdown.stop();
        self.hub.close_all();
        self.shutdown.tracker.close();
        let clean = tokio::time::timeout(deadline, self.shutdown.tracker.wait())
            .await
            .is_ok();
        if clean {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!(
                ?deadline,
                "shutdown deadline passed, closing remaining connections"
            );
        }
        clean
    }
}
