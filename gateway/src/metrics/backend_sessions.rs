//! The per-backend `sessions_active` gauge, whose line goes once a reload has removed the
//! backend and its last session has ended.
//!
//! A line left at 0 for every backend ID ever configured would pile up across reloads and
//! show a removed backend as if it were still served. So a backend's line has holders, as
//! a pool instance's labels do ([`super::PoolMetrics`]): the sessions open on it and its
//! listing in the route table in force. It goes when neither is left. One lock covers
//! the count, the listing and the line, so a session that began on a table a reload has
//! just replaced is still counted (it brings its line back if it was gone), and no line
//! is removed, or set below zero, while a session of its backend is open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::BackendLabel;

/// Sessions open now, per backend, with lines only for backends that are listed or have
/// a session. Cloning shares the family and the counts.
#[derive(Clone, Debug, Default)]
pub struct BackendSessions {
    /// The exported gauge family (`wsgate_sessions_active`); its values are only ever set
    /// from `holders`, under its lock.
    family: Family<BackendLabel, Gauge>,
    /// What holds each backend's line: the source of truth the gauge mirrors.
    holders: Arc<Mutex<HashMap<String, Holders>>>,
}

/// What keeps one backend's line on `/metrics`.
#[derive(Debug, Default)]
struct Holders {
    /// Sessions open on it now (from their 101 to their end).
    sessions: u64,
    /// Whether the route table in force lists it (new sessions can come).
    listed: bool,
}

impl Holders {
    /// Whether nothing holds the line any more.
    fn idle(&self) -> bool {
        self.sessions == 0 && !self.listed
    }
}

impl BackendSessions {
    /// The gauge family, to register for export.
    pub fn family(&self) -> Family<BackendLabel, Gauge> {
        self.family.clone()
    }

    /// Counts a session of `backend` from its 101 (whatever table it was routed by).
    pub fn opened(&self, backend: &str) {
        let mut holders = self.lock();
        let h = match holders.get_mut(backend) {
            Some(h) => h,
            // Not listed: routed by a table a reload has replaced since.
            None => holders.entry(backend.to_owned()).or_default(),
        };
        h.sessions += 1;
        let sessions = h.sessions;
        self.show(backend, sessions);
    }

    /// Counts a session of `backend` as ended; the line goes if it was its last and the
    /// backend is no longer listed.
    pub fn closed(&self, backend: &str) {
        let mut holders = self.lock();
        let Some(h) = holders.get_mut(backend) else {
            return;
        };
        h.sessions = h.sessions.saturating_sub(1);
        if h.idle() {
            holders.remove(backend);
            self.family.remove(&label(backend));
        } else {
            let sessions = h.sessions;
            self.show(backend, sessions);
        }
    }

    /// Records the backend IDs the route table in force lists (at start and on every
    /// reload): the lines of the others go now if they have no session, or with their
    /// last. A listed backend gets its line with its first session, as at start.
    pub fn listed<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut holders = self.lock();
        for h in holders.values_mut() {
            h.listed = false;
        }
        for id in ids {
            holders.entry(id.to_owned()).or_default().listed = true;
        }
        holders.retain(|id, h| {
            let idle = h.idle();
            if idle {
                self.family.remove(&label(id));
            }
            !idle
        });
    }

    /// Sets `backend`'s line to `sessions`. Called with the lock held.
    fn show(&self, backend: &str, sessions: u64) {
        self.family
            .get_or_create(&label(backend))
            .set(i64::try_from(sessions).unwrap_or(i64::MAX));
    }

    /// The holders, also after a panic elsewhere while they were held (every change
    /// under the lock is a whole one).
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Holders>> {
        self.holders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn label(backend: &str) -> BackendLabel {
    BackendLabel {
        backend: backend.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `backend`'s line: its value, or `None` when it is not exported.
    fn line(s: &BackendSessions, backend: &str) -> Option<i64> {
        let mut out = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("sessions_active", "", s.family());
        prometheus_client::encoding::text::encode(&mut out, &registry).ok()?;
        let prefix = format!("sessions_active{{backend=\"{backend}\"}} ");
        out.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
    }

    #[test]
    fn a_removed_backends_line_goes_with_its_last_session() {
        let s = BackendSessions::default();
        s.listed(["A", "B"]);
        assert_eq!(line(&s, "A"), None, "no line before the first session");
        s.opened("A");
        s.opened("B");
        s.closed("B");
        s.listed(["B"]);
        assert_eq!(line(&s, "A"), Some(1), "still open");
        assert_eq!(line(&s, "B"), Some(0), "a listed backend keeps its line");
        s.closed("A");
        assert_eq!(line(&s, "A"), None);
        assert_eq!(line(&s, "B"), Some(0));
        // A stray end never takes a line below zero or brings it back.
        s.closed("A");
        assert_eq!(line(&s, "A"), None);
    }

    #[test]
    fn a_session_routed_by_the_replaced_table_is_counted_to_its_end() {
        let s = BackendSessions::default();
        s.listed(["A"]);
        // The reload lands between the route lookup and the 101.
        s.listed(["B"]);
        s.opened("A");
        assert_eq!(line(&s, "A"), Some(1));
        s.listed(["B"]);
        assert_eq!(line(&s, "A"), Some(1), "removed while open");
        s.closed("A");
        assert_eq!(line(&s, "A"), None);
    }

    #[test]
    fn a_backend_listed_again_counts_the_sessions_still_open() {
        let s = BackendSessions::default();
        s.listed(["A"]);
        s.opened("A");
        s.listed([]);
        s.listed(["A"]);
        s.opened("A");
        assert_eq!(line(&s, "A"), Some(2));
        s.closed("A");
        s.closed("A");
        assert_eq!(line(&s, "A"), Some(0), "listed: the line stays");
    }
}
