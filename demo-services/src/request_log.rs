//! Logging of received `RequestMessage`s, rate-limited per backend so a load test cannot
//! turn the backends into log writers.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tracing::info;

use crate::message::{may_be_json_object, RequestMessage};
use crate::Backend;

/// At most this many `RequestMessage` inspections (parse + log line) per second per
/// backend; the rest are echoed unparsed and counted.
pub const LOG_LINES_PER_SECOND: u32 = 20;

/// One backend's request log: a budget of inspections per one-second window, shared by
/// all of that backend's sessions.
///
/// The hot path is one relaxed atomic load (plus an add while under budget); the window
/// is reset by [`RequestLog::report_every_second`] rather than by reading a clock per
/// message.
#[derive(Debug)]
pub(crate) struct RequestLog {
    /// Whose messages these are (for the log lines).
    backend: Backend,
    /// Inspections allowed per window.
    per_second: u32,
    /// Inspections taken in the current window.
    used: AtomicU32,
    /// JSON-looking text messages not inspected in the current window.
    suppressed: AtomicU64,
}

impl RequestLog {
    /// A log for `backend` allowing `per_second` inspections per window.
    pub(crate) fn new(backend: Backend, per_second: u32) -> Self {
        Self {
            backend,
            per_second,
            used: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Looks at one complete text message: if it may be JSON and the window has budget,
    /// parses it and logs it when it is a `RequestMessage`; otherwise does nothing beyond
    /// counting a suppressed message.
    pub(crate) fn inspect(&self, payload: &[u8]) {
        if !may_be_json_object(payload) {
            return;
        }
        if !self.try_acquire() {
            return;
        }
        if let Some(m) = RequestMessage::parse(payload) {
            info!(
                backend = self.backend.name(),
                id = %m.id,
                name = %m.name,
                email = %m.email,
                phone = %m.phone,
                dob = %m.dob,
                "received RequestMessage"
            );
        }
    }

    /// Takes one inspection from the current window's budget; `false` (and one more
    /// suppressed message) when it is spent.
    fn try_acquire(&self) -> bool {
        if self.used.load(Relaxed) < self.per_second
            && self.used.fetch_add(1, Relaxed) < self.per_second
        {
            return true;
        }
        self.suppressed.fetch_add(1, Relaxed);
        false
    }

    /// Starts a new window and returns how many messages the one that ended suppressed.
    fn next_window(&self) -> u64 {
        self.used.store(0, Relaxed);
        self.suppressed.swap(0, Relaxed)
    }

    /// Runs forever: once a second opens a new window and logs how many messages the
    /// last one suppressed (if any). Spawned once per served backend.
    pub(crate) async fn report_every_second(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let suppressed = self.next_window();
            if suppressed > 0 {
                info!(
                    backend = self.backend.name(),
                    suppressed,
                    limit_per_second = self.per_second,
                    "text messages not inspected or logged (rate limit)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_per_window_and_suppressed_count() {
        let log = RequestLog::new(Backend::Abc, 2);
        let msg = br#"{"id":1,"name":"n","email":"e","phone":"p","dob":"d"}"#;
        for _ in 0..5 {
            log.inspect(msg);
        }
        assert_eq!(log.next_window(), 3);
        log.inspect(msg);
        log.inspect(b"not json");
        assert_eq!(log.used.load(Relaxed), 1);
        assert_eq!(log.next_window(), 0);
    }
}
