//! hyper's request-head timeout, without a timer-wheel operation per request.
//!
//! hyper arms its header-read timer each time it starts waiting for a request head and drops
//! it once the head is parsed: with a keep-alive client that is a new boxed timer, a timer
//! wheel insertion and a removal for every request (about 7 % of pass-through throughput).
//! One [`HeadTimer`] serves one client connection and keeps a single tokio timer for its whole
//! life. A new deadline is only written down: deadlines only move later, so the armed timer
//! firing early just means it is re-armed once, to the deadline then current. The wheel is
//! touched about once per timeout period per connection instead of once per request.
//!
//! Invariant: while hyper waits for a head, the connection is woken no later than the current
//! deadline, and the head read fails at or after it (never before).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

/// A connection's head timer (see the module docs); give each connection its own.
#[derive(Clone, Default)]
pub struct HeadTimer {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    /// The deadline hyper asked for, while it waits for a head.
    deadline: Option<tokio::time::Instant>,
    /// The one tokio timer; armed at or before `deadline`, or elapsed.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What hyper polls; ends hyper's wait when dropped.
struct HeadSleep {
    shared: Arc<Mutex<Shared>>,
}

impl HeadTimer {
    pub fn new() -> HeadTimer {
        HeadTimer::default()
    }

    fn arm(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        lock(&self.shared).deadline = Some(deadline.into());
        Box::pin(HeadSleep {
            shared: self.shared.clone(),
        })
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.arm(self.now() + duration)
    }

    /// tokio's clock, so that deadlines and the timer agree (also under a paused test clock).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.arm(deadline)
    }

    fn reset(&self, _sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        // hyper resets only the sleep this connection's timer made.
        lock(&self.shared).deadline = Some(new_deadline.into());
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut shared = lock(&self.shared);
        let Some(deadline) = shared.deadline else {
            return Poll::Pending;
        };
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Poll::Ready(());
            }
            let timer = shared
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            // Armed later than needed (a deadline moved earlier), or spent: re-arm.
            if timer.is_elapsed() || timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Fired at an earlier deadline: look again.
                Poll::Ready(()) => continue,
            }
        }
    }
}

impl hyper::rt::Sleep for HeadSleep {}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        lock(&self.shared).deadline = None;
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use hyper::rt::Timer;

    use super::*;

    /// A head wait ends exactly at its deadline, measured on tokio's paused clock.
    async fn ends_after(timer: &HeadTimer, d: Duration) -> Duration {
        let start = tokio::time::Instant::now();
        timer.sleep(d).await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline() {
        let timer = HeadTimer::new();
        assert_eq!(
            ends_after(&timer, Duration::from_secs(30)).await,
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_lasts_its_whole_length_after_earlier_ones_ended_early() {
        let timer = HeadTimer::new();
        // Many short waits that end early (heads that arrived), each with a later deadline.
        for _ in 0..10 {
            let mut s = timer.sleep(Duration::from_secs(30));
            let early = tokio::time::timeout(Duration::from_secs(5), &mut s).await;
            assert!(early.is_err(), "fired before its deadline");
            drop(s);
        }
        // The first armed deadline (30 s after the start) has passed by now; a new wait still
        // lasts its whole 30 s, not what was left of an older one.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            ends_after(&timer, Duration::from_secs(30)).await,
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reset_moves_the_deadline() {
        let timer = HeadTimer::new();
        let mut s = timer.sleep(Duration::from_secs(30));
        let start = tokio::time::Instant::now();
        timer.reset(&mut s, (start + Duration::from_secs(5)).into_std());
        s.await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
