//! Idle HTTP/1.1 origin connections, kept per origin and reused last-in first-out.
//!
//! The response body (`h1::OriginBody`) hands its connection back itself when it ends, so a
//! request on a reused connection costs no extra task and no allocation in the pool.
//!
//! Invariants:
//! - A connection goes back to the pool only once its response body has ended; a body dropped
//!   early takes the connection with it (HTTP/1.1 cannot reuse it mid-message).
//! - A pooled connection is checked before reuse; one the origin closed is dropped, never used.
//! - At most `max_idle` idle connections per origin; a connection returned to a full pool
//!   pushes out the oldest.
//! - Idle connections older than `idle_timeout`, or that the origin closed (its keep-alive
//!   timeout), are dropped within `SWEEP_EVERY`, so none holds a file descriptor in CLOSE_WAIT
//!   for long; `take` checks both again before handing one out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::h1::OriginConn;

/// How a connection to an origin is secured; part of the pool key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tls {
    Plain,
    Verified,
    /// TLS without certificate verification (`insecure` targets).
    Insecure,
}

/// Which origin a connection belongs to.
#[derive(Clone, Debug)]
pub struct Key {
    pub tls: Tls,
    pub host: String,
    pub port: u16,
}

impl Key {
    fn is(&self, tls: Tls, host: &str, port: u16) -> bool {
        self.tls == tls && self.port == port && self.host == host
    }
}

/// How often every idle connection is looked at (`Pool::sweep`).
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

struct Idle {
    conn: OriginConn,
    since: Instant,
}

/// The pool, shared by every request.
pub struct Pool {
    /// Per origin, oldest first: taken from the back, expired from the front.
    idle: Mutex<Vec<(Arc<Key>, VecDeque<Idle>)>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        })
    }

    /// The most recently returned idle connection to this origin that is still open.
    pub fn take(&self, tls: Tls, host: &str, port: u16) -> Option<OriginConn> {
        loop {
            let idle = {
                let mut all = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let (_, conns) = all.iter_mut().find(|(k, _)| k.is(tls, host, port))?;
                conns.pop_back()?
            };
            let mut conn = idle.conn;
            if idle.since.elapsed() < self.idle_timeout && conn.is_open() {
                return Some(conn);
            }
        }
    }

    /// Puts a connection whose last response has ended back in the pool.
    pub fn put(&self, conn: OriginConn) {
        if self.max_idle == 0 {
            return;
        }
        let key = conn.key.clone();
        let idle = Idle {
            conn,
            since: Instant::now(),
        };
        let mut all = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let i = match all
            .iter()
            .position(|(k, _)| k.is(key.tls, &key.host, key.port))
        {
            Some(i) => i,
            None => {
                all.push((key, VecDeque::new()));
                all.len() - 1
            }
        };
        let conns = &mut all[i].1;
        // Full: the oldest goes (taking is last-in first-out, so it is the one least likely to
        // be used). Expired and closed ones are the sweep's business.
        let evicted = (conns.len() >= self.max_idle)
            .then(|| conns.pop_front())
            .flatten();
        conns.push_back(idle);
        drop(all);
        // Closed outside the lock.
        drop(evicted);
    }

    /// Drops every idle connection that has waited too long or that the origin has closed.
    /// Cheap: a connection nothing arrived on is judged without a system call.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut all = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for (_, conns) in all.iter_mut() {
            conns.retain_mut(|c| now - c.since < self.idle_timeout && c.conn.is_open());
        }
        all.retain(|(_, conns)| !conns.is_empty());
    }

    /// Sweeps every `SWEEP_EVERY` until `stop`.
    pub async fn sweep_until(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.sweep(),
            }
        }
    }
}
