//! Shutdown signalling: one root `CancellationToken` and a `TaskTracker` for every long-lived task.
//!
//! `signal()` resolves on the first SIGINT or SIGTERM; a second signal exits the process at once
//! (an operator who presses Ctrl-C twice means it).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// What every long-lived task needs to stop cleanly.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the process should stop. Cancel it with [`Shutdown::stop`] only:
    /// [`Stopped`] reads the flag that sets.
    pub token: CancellationToken,
    /// Tracks spawned tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Set just before `token` is cancelled.
    stopping: Arc<AtomicBool>,
}

impl Shutdown {
    /// A fresh, un-cancelled shutdown handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown: every `Stopped` and every waiter on `token` wakes.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// A future that resolves once `stop` has been called, made for a `select!` that is
    /// polled again and again (a connection's, a WebSocket session's).
    pub fn stopped(&self) -> Stopped {
        Stopped {
            stopping: self.stopping.clone(),
            cancelled: Box::pin(self.token.clone().cancelled_owned()),
            registered: None,
        }
    }
}

/// Resolves once shutdown has begun. The token's own future takes the token's lock on every
/// poll, and every connection shares that lock: a connection's task is polled a few times per
/// request, from both worker threads. This one registers with the token once per waker and
/// afterwards, while the waker is the same, costs one atomic load per poll.
pub struct Stopped {
    stopping: Arc<AtomicBool>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker the token will wake.
    registered: Option<Waker>,
}

impl Future for Stopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let same_waker = self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if same_waker && !self.stopping.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        match self.cancelled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                self.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Resolves on the first SIGINT/SIGTERM; spawns a watcher that exits on the second.
pub async fn signal() {
    wait_one().await;
    tokio::spawn(async {
        wait_one().await;
        tracing::warn!("second signal, exiting now");
        std::process::exit(1);
    });
}

#[cfg(unix)]
async fn wait_one() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_one() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Stopped` resolves on `stop`, whether it was polled before (the quiet path) or not, and
    /// follows a change of waker.
    #[tokio::test]
    async fn stopped_resolves_on_stop() {
        let shutdown = Shutdown::new();
        let mut early = shutdown.stopped();
        let mut moved = shutdown.stopped();
        let late = shutdown.stopped();
        // Registered, then polled again with the same waker: still pending.
        for _ in 0..3 {
            assert!(futures_util::poll!(&mut early).is_pending());
        }
        // Registered by this task, then awaited by another one.
        assert!(futures_util::poll!(&mut moved).is_pending());
        let other = tokio::spawn(moved);
        tokio::task::yield_now().await;
        shutdown.stop();
        let wait = std::time::Duration::from_secs(5);
        tokio::time::timeout(wait, early).await.expect("early");
        tokio::time::timeout(wait, other)
            .await
            .expect("moved")
            .expect("task");
        tokio::time::timeout(wait, late).await.expect("late");
        assert!(shutdown.token.is_cancelled());
    }
}
