//! Idle HTTP/1.1 origin connections, kept per origin and reused last-in first-out.
//!
//! Why not hyper-util's pooled client: it spawns a task per request to wait for the connection
//! to become idle again, and keys its pool with an allocated string per request. Here the
//! response body hands its connection back itself when it ends, so a request on a reused
//! connection costs no extra task and no allocation in the pool.
//!
//! Invariants:
//! - A connection goes back to the pool only once its response body has ended; a body dropped
//!   early takes the connection with it (HTTP/1.1 cannot reuse it mid-message).
//! - A pooled connection is polled ready before reuse; a closed one is dropped, never used.
//! - At most `max_idle` idle connections per origin; idle ones older than `idle_timeout` are
//!   dropped (oldest first, whenever a connection of that origin is returned).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use crate::origin::Body;

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

/// A connection checked out of (or new for) the pool.
pub struct Conn {
    pub send: SendRequest<Body>,
    pub key: Arc<Key>,
}

struct Idle {
    send: SendRequest<Body>,
    key: Arc<Key>,
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
    pub async fn take(&self, tls: Tls, host: &str, port: u16) -> Option<Conn> {
        loop {
            let idle = {
                let mut all = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let (_, conns) = all.iter_mut().find(|(k, _)| k.is(tls, host, port))?;
                conns.pop_back()?
            };
            if idle.send.is_closed() || idle.since.elapsed() >= self.idle_timeout {
                continue;
            }
            let mut send = idle.send;
            // Normally ready at once; a connection whose last body just ended may still be
            // finishing that message. A closed one errors: try the next.
            if send.ready().await.is_ok() {
                return Some(Conn {
                    send,
                    key: idle.key,
                });
            }
        }
    }

    /// Puts a connection whose last response has ended back in the pool.
    fn put(&self, conn: Conn) {
        if conn.send.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut all = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let idle = Idle {
            send: conn.send,
            key: conn.key,
            since: now,
        };
        let key = &idle.key;
        match all
            .iter_mut()
            .find(|(k, _)| k.is(key.tls, &key.host, key.port))
        {
            Some((_, conns)) => {
                while conns
                    .front()
                    .is_some_and(|c| now - c.since >= self.idle_timeout || c.send.is_closed())
                {
                    conns.pop_front();
                }
                if conns.len() < self.max_idle {
                    conns.push_back(idle);
                }
            }
            None => all.push((idle.key.clone(), VecDeque::from([idle]))),
        }
    }
}

/// An origin response body that returns its connection to the pool when it ends.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Arc<Pool>, Conn)>,
    ended: bool,
}

impl PooledBody {
    pub fn new(inner: Incoming, pool: Arc<Pool>, conn: Conn) -> PooledBody {
        PooledBody {
            inner,
            back: Some((pool, conn)),
            ended: false,
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => {
                self.ended = true;
                if let Some((pool, conn)) = self.back.take() {
                    pool.put(conn);
                }
            }
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body nobody needed to read (empty, HEAD, 204/304) has ended all the same.
        if self.inner.is_end_stream() {
            if let Some((pool, conn)) = self.back.take() {
                pool.put(conn);
            }
        }
    }
}
