//! Detaching held streams from hyper, so that an idle held connection costs a few KB.
//!
//! hyper keeps two 8 KiB buffers and a task per connection for as long as a response is being
//! written; a held stream can last hours. So once hyper has written a held stream's head, the
//! stream's body ends *for hyper* and the socket moves to a small task of ours that writes the
//! published chunks itself (chunked framing for HTTP/1.1, raw for HTTP/1.0) and closes the
//! connection when the stream ends.
//!
//! How: every client connection's IO is a `ConnIo` sharing a `Detach` with the request (through
//! the request's extensions). A held stream's body (`hold::stream`) arms it on its first poll;
//! the next write is the response head; when hyper flushes it, the body takes the socket,
//! switches the `ConnIo` to "detached" (reads see end of file, writes are swallowed, so hyper's
//! terminating chunk and shutdown never reach the socket) and ends. hyper then closes its side
//! of a connection that no longer has a socket, and frees its buffers.
//!
//! Invariant: nothing is written to the socket by hyper after the head of a detached response,
//! and nothing by gripd before it.

use std::any::Any;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::framing::FramingGuard;

/// The socket type of a client connection.
pub type ClientSocket = FramingGuard<TcpStream>;

const OPEN: u8 = 0;
/// A held stream waits for its head to be written.
const ARMED: u8 = 1;
/// The head has been written (not yet flushed).
const WROTE: u8 = 2;
/// The head has been flushed: the socket can be taken.
const FLUSHED: u8 = 3;
/// The socket belongs to a detached stream.
const DETACHED: u8 = 4;

/// The state shared by a connection's `ConnIo` and its requests.
pub struct Detach {
    socket: Mutex<Option<ClientSocket>>,
    state: AtomicU8,
    waker: AtomicWaker,
    /// Whatever must live as long as the connection (its permit, its gauge), whoever owns it.
    keep: Mutex<Option<Box<dyn Any + Send>>>,
}

/// A handle to a connection's `Detach`, carried in request extensions.
pub type DetachHandle = Arc<Detach>;

/// The IO hyper drives for a client connection.
pub struct ConnIo {
    shared: DetachHandle,
}

// === impl Detach ===

impl Detach {
    /// Wraps a client socket; `keep` lives as long as the connection, detached or not.
    pub fn new(socket: ClientSocket, keep: Box<dyn Any + Send>) -> (ConnIo, DetachHandle) {
        let shared = Arc::new(Detach {
            socket: Mutex::new(Some(socket)),
            state: AtomicU8::new(OPEN),
            waker: AtomicWaker::new(),
            keep: Mutex::new(Some(keep)),
        });
        (
            ConnIo {
                shared: shared.clone(),
            },
            shared,
        )
    }

    /// Polled by a held stream's body: `Ready(Some(socket))` once the head is on the wire;
    /// afterwards hyper no longer touches the socket.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<ClientSocket>> {
        self.waker.register(cx.waker());
        match self
            .state
            .compare_exchange(OPEN, ARMED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Poll::Pending,
            Err(FLUSHED) => {
                self.state.store(DETACHED, Ordering::Release);
                Poll::Ready(lock(&self.socket).take())
            }
            Err(DETACHED) => Poll::Ready(None),
            Err(_) => Poll::Pending,
        }
    }

    /// Takes what must live as long as the connection, so that a detached stream can keep it
    /// without keeping this whole struct.
    pub fn take_keep(&self) -> Option<Box<dyn Any + Send>> {
        lock(&self.keep).take()
    }

    fn detached(&self) -> bool {
        self.state.load(Ordering::Acquire) == DETACHED
    }
}

impl Drop for Detach {
    fn drop(&mut self) {
        lock(&self.keep).take();
    }
}

// === impl ConnIo ===

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.shared.detached() {
            return Poll::Ready(Ok(()));
        }
        match lock(&self.shared.socket).as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.shared.detached() {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = match lock(&self.shared.socket).as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => return Poll::Ready(Ok(buf.len())),
        };
        self.note_write(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.shared.detached() {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let r = match lock(&self.shared.socket).as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum())),
        };
        self.note_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shared.detached() {
            return Poll::Ready(Ok(()));
        }
        let r = match lock(&self.shared.socket).as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => return Poll::Ready(Ok(())),
        };
        if r.is_ready()
            && self
                .shared
                .state
                .compare_exchange(WROTE, FLUSHED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.shared.waker.wake();
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shared.detached() {
            return Poll::Ready(Ok(()));
        }
        match lock(&self.shared.socket).as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl ConnIo {
    /// After the body armed the connection, the next successful write is its response head.
    fn note_write(&self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            let _ = self.shared.state.compare_exchange(
                ARMED,
                WROTE,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
