//! The live progress line on stderr (only when stderr is a terminal).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::LiveTotals;

/// A one-line spinner with the run's counters, or nothing when disabled.
pub struct Progress {
    bar: Option<ProgressBar>,
    last: Option<(Instant, u64)>,
}

impl Progress {
    /// A progress line on stderr if `enabled`, else a no-op.
    pub fn new(enabled: bool) -> Self {
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Self { bar, last: None }
    }

    /// Shows the counters; `phase` names what is happening.
    pub fn update(&mut self, phase: &str, requested: u64, t: &LiveTotals) {
        let Some(bar) = &self.bar else { return };
        let now = Instant::now();
        let rate = match self.last {
            Some((at, echoed)) if now > at => {
                (t.echoed.saturating_sub(echoed)) as f64 / (now - at).as_secs_f64()
            }
            _ => 0.0,
        };
        self.last = Some((now, t.echoed));
        bar.set_message(format!(
            "{phase}: conns {}/{} open, {} failed, {} dropped, {} reconnects | sent {} echoed {} | {:.0} msg/s",
            t.opened, requested, t.failed, t.dropped, t.reconnects, t.sent, t.echoed, rate
        ));
    }

    /// Removes the line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
