//! A held connection's bounded delivery queue: one receiver, any number of senders.
//!
//! Why not tokio's mpsc: it allocates about 800 bytes per channel up front (its first block of
//! slots and its semaphore), for every idle held connection. This queue is one small
//! allocation and holds a buffer only while items wait, so an idle connection costs ~100
//! bytes here. Senders never wait: a full queue refuses the item (the hub counts it dropped).
//!
//! Semantics (as tokio's bounded mpsc with `WeakSender`):
//! - `recv` yields items in order, then `None` once every strong sender is gone and the queue
//!   is empty. Weak senders do not keep the queue open.
//! - `try_send` fails with `Full` at `capacity` items, with `Closed` once the receiver is gone.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// A bounded queue's capacity is at least this (a zero capacity could never deliver).
const MIN_CAPACITY: usize = 1;
/// A drained buffer larger than this is freed rather than kept for the next burst.
const KEEP_BUFFER: usize = 16;

struct Shared<T> {
    state: Mutex<State<T>>,
    rx_waker: AtomicWaker,
    capacity: usize,
    /// Strong senders alive.
    senders: AtomicUsize,
}

struct State<T> {
    items: VecDeque<T>,
    rx_closed: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates a queue holding at most `capacity` items.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            rx_closed: false,
        }),
        rx_waker: AtomicWaker::new(),
        capacity: capacity.max(MIN_CAPACITY),
        senders: AtomicUsize::new(1),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

/// Why `try_send` refused an item (the item comes back).
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    Full(T),
    Closed(T),
}

/// `try_recv` found nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    /// Empty, and every strong sender is gone.
    Disconnected,
}

/// Keeps the queue open while it lives.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// Refers to the queue without keeping it open.
pub struct WeakSender<T> {
    shared: Arc<Shared<T>>,
}

/// The one receiving end.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or its receiver is gone. Never waits.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        {
            let mut state = self.shared.lock();
            if state.rx_closed {
                return Err(TrySendError::Closed(item));
            }
            if state.items.len() >= self.shared.capacity {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
        }
        self.shared.rx_waker.wake();
        Ok(())
    }

    pub fn downgrade(&self) -> WeakSender<T> {
        WeakSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.rx_waker.wake();
        }
    }
}

impl<T> WeakSender<T> {
    /// A strong sender, if one is still alive (the queue is still open).
    pub fn upgrade(&self) -> Option<Sender<T>> {
        let mut n = self.shared.senders.load(Ordering::Acquire);
        loop {
            if n == 0 {
                return None;
            }
            match self.shared.senders.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Sender {
                        shared: self.shared.clone(),
                    })
                }
                Err(actual) => n = actual,
            }
        }
    }
}

impl<T> Clone for WeakSender<T> {
    fn clone(&self) -> Self {
        WeakSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once the queue is empty and closed.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self.try_recv() {
            Ok(item) => return Poll::Ready(Some(item)),
            Err(TryRecvError::Disconnected) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        self.shared.rx_waker.register(cx.waker());
        match self.try_recv() {
            Ok(item) => Poll::Ready(Some(item)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }

    /// Ready once an item waits or the queue has closed; takes nothing.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_ready() {
            return Poll::Ready(());
        }
        self.shared.rx_waker.register(cx.waker());
        if self.is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn is_ready(&self) -> bool {
        // Senders first: an item queued before the last sender left is still seen below.
        let closed = self.shared.senders.load(Ordering::Acquire) == 0;
        closed || !self.shared.lock().items.is_empty()
    }

    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let closed = self.shared.senders.load(Ordering::Acquire) == 0;
        let mut state = self.shared.lock();
        match state.items.pop_front() {
            Some(item) => {
                if state.items.is_empty() && state.items.capacity() > KEEP_BUFFER {
                    state.items = VecDeque::new();
                }
                Ok(item)
            }
            None if closed => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.lock();
            state.rx_closed = true;
            std::mem::take(&mut state.items)
        };
        drop(items);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bounded_in_order_and_refuses_when_full() {
        let (tx, mut rx) = bounded(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(tx.try_send(4), Ok(()));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(4));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn closes_with_the_last_strong_sender_after_draining() {
        let (tx, mut rx) = bounded(4);
        let weak = tx.downgrade();
        let tx2 = weak.upgrade().unwrap();
        tx.try_send("a").unwrap();
        drop(tx);
        tx2.try_send("b").unwrap();
        drop(tx2);
        assert!(
            weak.upgrade().is_none(),
            "weak senders do not reopen a closed queue"
        );
        assert_eq!(rx.try_recv(), Ok("a"));
        assert_eq!(rx.try_recv(), Ok("b"));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn sending_to_a_dropped_receiver_fails() {
        let (tx, rx) = bounded(4);
        tx.try_send(1).unwrap();
        drop(rx);
        assert_eq!(tx.try_send(2), Err(TrySendError::Closed(2)));
    }

    #[test]
    fn drained_large_buffer_is_freed() {
        let (tx, mut rx) = bounded(100);
        for i in 0..100 {
            tx.try_send(i).unwrap();
        }
        for i in 0..100 {
            assert_eq!(rx.try_recv(), Ok(i));
        }
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn recv_wakes_on_send_and_on_close() {
        let (tx, mut rx) = bounded(4);
        let weak = tx.downgrade();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.try_send(7).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(tx);
        });
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.unwrap(), Some(7));
        let ready = tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| rx.poll_ready(cx)));
        ready.await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(end.unwrap(), None);
        assert!(weak.upgrade().is_none());
        sender.await.unwrap();
    }

    #[test]
    fn many_senders_on_threads_lose_nothing_below_capacity() {
        let (tx, mut rx) = bounded(10_000);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        tx.try_send(t * 1000 + i).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        while let Ok(v) = rx.try_recv() {
            got.push(v);
        }
        got.sort_unstable();
        assert_eq!(got, (0..4000).collect::<Vec<_>>());
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }
}
