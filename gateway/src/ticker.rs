//! A periodic tick that is cheap to poll between ticks.
//!
//! A pump polls its keepalive timer every time its task wakes, thousands of times
//! between two ticks. tokio's `Interval` hands the task's waker to the timer again on
//! each of those polls; this ticker polls the timer only once it has fired or when the
//! task's waker is a different one, and otherwise costs one atomic load.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{sleep_until, Instant, Sleep};

/// Ticks every `period`, the first a period after creation; a tick that is late delays
/// the ones after it rather than being made up.
#[derive(Debug)]
pub struct Ticker {
    sleep: Pin<Box<Sleep>>,
    period: Duration,
    /// The waker the timer holds, once it holds one.
    registered: Option<Waker>,
}

impl Ticker {
    /// A ticker whose first tick comes `period` from now.
    pub fn new(period: Duration) -> Self {
        Self {
            sleep: Box::pin(sleep_until(Instant::now() + period)),
            period,
            registered: None,
        }
    }

    /// Ready at the next tick.
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(waker) = &self.registered {
            if waker.will_wake(cx.waker()) && !self.sleep.is_elapsed() {
                return Poll::Pending;
            }
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.sleep.as_mut().reset(Instant::now() + self.period);
                self.registered = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                self.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Waits for the next tick.
    pub async fn tick(&mut self) {
        std::future::poll_fn(|cx| self.poll_tick(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_once_a_period_and_not_between() {
        let start = Instant::now();
        let mut ticker = Ticker::new(Duration::from_secs(10));
        // Polled often between ticks, as a busy pump does: not ready.
        for _ in 0..100 {
            let early = tokio::time::timeout(Duration::from_millis(10), ticker.tick()).await;
            assert!(early.is_err());
        }
        ticker.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        ticker.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_tick_delays_the_next() {
        let start = Instant::now();
        let mut ticker = Ticker::new(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(25)).await;
        ticker.tick().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(25),
            "the late tick comes at once"
        );
        ticker.tick().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(35),
            "the next a period later"
        );
    }
}
