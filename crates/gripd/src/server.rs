//! Accept loops: a connection permit before `accept`, accept-error classification, one span and
//! one tracked task per connection, hyper's HTTP/1.1 connection driver with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::detach::{Detach, DetachHandle};
use crate::framing::FramingGuard;
use crate::head_timer::HeadTimer;
use crate::metrics::{GaugeGuard, Metrics};
use crate::origin::Body;
use crate::shutdown::Shutdown;

/// Time a control-port client has to send a request head (the client port's is configurable).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Listener settings.
#[derive(Clone)]
pub struct ListenerSettings {
    /// Name for logs ("client", "control").
    pub name: &'static str,
    /// Largest request head, in bytes.
    pub head_max: usize,
    /// Connection limit shared by this listener.
    pub permits: Arc<Semaphore>,
    /// Time to send a request head, counted from when the connection waits for one (so it
    /// also closes idle keep-alive connections).
    pub head_timeout: Duration,
}

/// Accepts connections until shutdown, serving each with `handler`.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    settings: ListenerSettings,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    handler: H,
) where
    H: Fn(SocketAddr, DetachHandle, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    loop {
        let permit = tokio::select! {
            _ = shutdown.token.cancelled() => break,
            p = settings.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    if is_connection_error(&e) {
                        continue;
                    }
                    tracing::error!(listener = settings.name, error = %e, "accept failed, pausing");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let gauge = GaugeGuard::new(&metrics.connections_active);
        // The permit and gauge live as long as the connection, even after a held stream has
        // been detached from hyper (see `detach.rs`).
        let (io, detach) = Detach::new(
            FramingGuard::new(stream, settings.head_max.max(8192)),
            Box::new((permit, gauge)),
        );
        let svc = service_fn(move |req: Request<Incoming>| handler(peer, detach.clone(), req));
        // A builder per connection: each has its own head timer (see `head_timer.rs`).
        let conn = http1::Builder::new()
            .timer(HeadTimer::new())
            .header_read_timeout(settings.head_timeout)
            .max_buf_size(settings.head_max.max(8192))
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        let span = tracing::debug_span!("conn", listener = settings.name, client.addr = %peer);
        let mut stopped = shutdown.stopped();
        shutdown.tracker.spawn(
            async move {
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = &mut stopped => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with error");
                }
            }
            .instrument(span),
        );
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
