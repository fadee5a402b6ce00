//! Measurements shared by the connection tasks: HDR histograms (sharded, so thousands of
//! tasks do not contend on one lock) and live counters for the progress line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Largest value a histogram tracks, in µs (10 minutes); larger values are clamped.
const MAX_US: u64 = 600_000_000;
/// Significant figures kept by every histogram.
const SIGFIG: u8 = 3;
/// Histogram shards; a connection records into shard `conn % SHARDS`.
const SHARDS: usize = 8;

/// A new empty histogram of µs values, 1 µs .. 10 min, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds, checked by the tests below: this cannot fail at run time.
    Histogram::new_with_bounds(1, MAX_US, SIGFIG).expect("valid constant histogram bounds")
}

/// One shard: per-backend histograms.
struct Shard {
    rtt: Vec<Histogram<u64>>,
    connect: Vec<Histogram<u64>>,
}

/// Round-trip and connect-time histograms per backend.
pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
    backends: usize,
}

impl Recorder {
    /// A recorder for `backends` backends.
    pub fn new(backends: usize) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    rtt: (0..backends).map(|_| new_histogram()).collect(),
                    connect: (0..backends).map(|_| new_histogram()).collect(),
                })
            })
            .collect();
        Self { shards, backends }
    }

    fn shard(&self, conn: u32) -> std::sync::MutexGuard<'_, Shard> {
        let m = &self.shards[conn as usize % SHARDS];
        // A poisoned lock only means another task panicked mid-record: the counts stay usable.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records round-trip times (µs) of connection `conn` to backend `backend`.
    pub fn record_rtts(&self, conn: u32, backend: usize, samples_us: &[u64]) {
        if samples_us.is_empty() {
            return;
        }
        let mut shard = self.shard(conn);
        if let Some(h) = shard.rtt.get_mut(backend) {
            for &v in samples_us {
                h.saturating_record(v);
            }
        }
    }

    /// Records how long connection `conn` took to open (µs).
    pub fn record_connect(&self, conn: u32, backend: usize, us: u64) {
        let mut shard = self.shard(conn);
        if let Some(h) = shard.connect.get_mut(backend) {
            h.saturating_record(us);
        }
    }

    /// Merged per-backend histograms: (round trip, connect).
    pub fn merged(&self) -> (Vec<Histogram<u64>>, Vec<Histogram<u64>>) {
        let mut rtt: Vec<_> = (0..self.backends).map(|_| new_histogram()).collect();
        let mut connect: Vec<_> = (0..self.backends).map(|_| new_histogram()).collect();
        for m in &self.shards {
            let shard = m.lock().unwrap_or_else(|e| e.into_inner());
            for (into, from) in rtt.iter_mut().zip(&shard.rtt) {
                let _ = into.add(from);
            }
            for (into, from) in connect.iter_mut().zip(&shard.connect) {
                let _ = into.add(from);
            }
        }
        (rtt, connect)
    }
}

/// Counters of one backend, updated in batches by the connection tasks.
#[derive(Debug, Default)]
pub struct LiveBackend {
    /// Connections opened.
    pub opened: AtomicU64,
    /// Connections that failed to open.
    pub failed: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Valid echoes received.
    pub echoed: AtomicU64,
    /// Connections that ended before the run did.
    pub dropped: AtomicU64,
    /// Streams reopened after the server ended one.
    pub reconnects: AtomicU64,
}

/// Live counters for the progress line.
#[derive(Debug)]
pub struct Live {
    /// Per backend, in the order of the run's backend list.
    pub backends: Vec<LiveBackend>,
    /// Notified each time a connection opens or fails to (after its count is updated),
    /// so the connect phase ends when the last one does, not at the next progress tick.
    pub connect_settled: tokio::sync::Notify,
}

/// A point-in-time sum of the live counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveTotals {
    /// Connections opened.
    pub opened: u64,
    /// Connections that failed to open.
    pub failed: u64,
    /// Messages sent.
    pub sent: u64,
    /// Valid echoes received.
    pub echoed: u64,
    /// Connections that ended early.
    pub dropped: u64,
    /// Streams reopened after the server ended one.
    pub reconnects: u64,
}

impl Live {
    /// Zeroed counters for `backends` backends.
    pub fn new(backends: usize) -> Self {
        Self {
            backends: (0..backends).map(|_| LiveBackend::default()).collect(),
            connect_settled: tokio::sync::Notify::new(),
        }
    }

    /// The counters of backend `i` (the first backend's if out of range).
    pub fn backend(&self, i: usize) -> &LiveBackend {
        &self.backends[i.min(self.backends.len().saturating_sub(1))]
    }

    /// Sums over all backends.
    pub fn totals(&self) -> LiveTotals {
        let mut t = LiveTotals::default();
        for b in &self.backends {
            t.opened += b.opened.load(Ordering::Relaxed);
            t.failed += b.failed.load(Ordering::Relaxed);
            t.sent += b.sent.load(Ordering::Relaxed);
            t.echoed += b.echoed.load(Ordering::Relaxed);
            t.dropped += b.dropped.load(Ordering::Relaxed);
            t.reconnects += b.reconnects.load(Ordering::Relaxed);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_per_backend() {
        let r = Recorder::new(2);
        for conn in 0..20u32 {
            r.record_rtts(conn, (conn % 2) as usize, &[100, 200]);
            r.record_connect(conn, (conn % 2) as usize, 5_000);
        }
        r.record_rtts(0, 0, &[u64::MAX]);
        let (rtt, connect) = r.merged();
        assert_eq!(rtt[0].len(), 21);
        assert_eq!(rtt[1].len(), 20);
        assert_eq!(connect[0].len() + connect[1].len(), 20);
        assert!(
            rtt[0].max() >= MAX_US / 2,
            "huge values are clamped, not dropped"
        );
    }
}
