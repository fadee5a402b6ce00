//! A periodic tick that is cheap to poll between ticks.
//!
//! A pump polls its keepalive timer every time its task wakes, thousands of times
//! between two ticks. tokio's `Interval` hands the task's waker to the timer again on
//! each of those polls; this ticker polls the timer only once it has fired or when the
//! task's waker is a different one, and otherwise costs one load. The timer lives inside
//! the ticker (not boxed): that load then reads memory the pump has just used, where a
//! timer of its own allocation was a cache miss on nearly every poll under load.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{sleep_until, Instant, Sleep};

pin_project_lite::pin_project! {
    /// Ticks every `period`, the first a period after creation; a tick that is late
    /// delays the ones after it rather than being made up.
    #[derive(Debug)]
    pub struct Ticker {
        #[pin]
        sleep: Sleep,
        period: Duration,
        // The waker the timer holds, once it holds one.
        registered: Option<Waker>,
    }
}

impl Ticker {
    /// A ticker whose first tick comes `period` from now.
    pub fn new(period: Duration) -> Self {
        Self {
            sleep: sleep_until(Instant::now() + period),
            period,
            registered: None,
        }
    }

    /// Ready at the next tick.
    pub fn poll_tick(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Some(waker) = this.registered.as_ref() {
            if waker.will_wake(cx.waker()) && !this.sleep.is_elapsed() {
                return Poll::Pending;
            }
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let next = Instant::now() + *this.period;
                this.sleep.reset(next);
                *this.registered = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                *this.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Waits for the next tick.
    pub async fn tick(mut self: Pin<&mut Self>) {
        std::future::poll_fn(|cx| self.as_mut().poll_tick(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_once_a_period_and_not_between() {
        let start = Instant::now();
        let mut ticker = std::pin::pin!(Ticker::new(Duration::from_secs(10)));
        // Polled often between ticks, as a busy pump does: not ready.
        for _ in 0..100 {
            let early =
                tokio::time::timeout(Duration::from_millis(10), ticker.as_mut().tick()).await;
            assert!(early.is_err());
        }
        ticker.as_mut().tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        ticker.as_mut().tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_tick_delays_the_next() {
        let start = Instant::now();
        let mut ticker = std::pin::pin!(Ticker::new(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_secs(25)).await;
        ticker.as_mut().tick().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(25),
            "the late tick comes at once"
        );
        ticker.as_mut().tick().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(35),
            "the next a period later"
        );
    }
}
