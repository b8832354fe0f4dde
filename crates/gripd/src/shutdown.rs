//! Shutdown signalling: one root `CancellationToken` and a `TaskTracker` for every long-lived task.
//!
//! `signal()` resolves on the first SIGINT or SIGTERM; a second signal exits the process at once
//! (an operator who presses Ctrl-C twice means it).

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every long-lived task needs to stop cleanly.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the process should stop.
    pub token: CancellationToken,
    /// Tracks spawned tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, un-cancelled shutdown handle.
    pub fn new() -> Self {
        Self::default()
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
