//! The open sessions, by connection, with what an operator picks them by (backend,
//! instance, token subject): what the admin listener's `POST /sessions/close` closes.
//!
//! Long-lived sessions stay where they were opened: on an instance that is to be taken
//! down, on the old instances after new ones were added, or held by a user whose access
//! was withdrawn. Closing them with a code that tells clients to reconnect (1001, the
//! default) moves them to wherever the pool sends new connections now (HAProxy's
//! `shutdown sessions server`). A session is told through its [`CloseOrder`], which it
//! waits on beside its traffic; it then closes both sides as a deadline would.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use atomic_waker::AtomicWaker;

/// Close codes an operator may send a client: normal closure, going away (reconnect),
/// policy violation (access withdrawn), service restart, try again later, and the
/// registered (3000–3999) and private (4000–4999) ranges.
pub fn allowed_code(code: u16) -> bool {
    matches!(code, 1000 | 1001 | 1008 | 1012 | 1013 | 3000..=4999)
}

/// What a session is known by here.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    /// Backend ID.
    pub backend: Arc<str>,
    /// The pool instance (`host:port`) its backend connection is on.
    pub instance: Option<Arc<str>>,
    /// Its token's subject (`sub`).
    pub subject: Option<Arc<str>>,
    /// The client's address.
    pub peer: Option<std::net::SocketAddr>,
}

/// One open session as `GET /sessions` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    /// The connection id of the gateway's log lines.
    pub conn: u64,
    /// Backend ID.
    pub backend: String,
    /// Pool instance.
    pub instance: Option<String>,
    /// Token subject.
    pub subject: Option<String>,
    /// Client address.
    pub peer: Option<String>,
    /// Seconds since the session began.
    pub age_s: u64,
    /// An operator ordered it closed, and it is closing.
    pub closing: bool,
}

/// Which sessions to close: each filter set must match; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Backend ID.
    pub backend: Option<String>,
    /// Pool instance, `host:port` as in the metrics' `instance` label.
    pub instance: Option<String>,
    /// Token subject.
    pub subject: Option<String>,
    /// At most this many (the oldest first); `None`: all that match.
    pub max: Option<usize>,
}

impl Filter {
    /// Whether it names a backend, an instance or a subject (else it matches every session).
    pub fn names_any(&self) -> bool {
        self.backend.is_some() || self.instance.is_some() || self.subject.is_some()
    }

    fn matches(&self, info: &SessionInfo) -> bool {
        let same = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        same(&self.backend, Some(&info.backend))
            && same(&self.instance, info.instance.as_deref())
            && same(&self.subject, info.subject.as_deref())
    }
}

/// The order to close, shared by a session and its registry entry.
#[derive(Debug, Default)]
struct Order {
    /// 0: none yet; else the close code for the client.
    code: AtomicU32,
    waker: AtomicWaker,
}

/// Resolves to the close code once an operator closes the session; never, for a session
/// that is not registered.
#[derive(Debug)]
pub struct CloseOrder(Option<Arc<Order>>);

impl CloseOrder {
    /// An order that never comes.
    pub fn never() -> Self {
        Self(None)
    }
}

impl Future for CloseOrder {
    type Output = u16;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u16> {
        let Some(order) = &self.0 else {
            return Poll::Pending;
        };
        let code = order.code.load(Ordering::Acquire);
        if code != 0 {
            return Poll::Ready(code as u16);
        }
        order.waker.register(cx.waker());
        match order.code.load(Ordering::Acquire) {
            0 => Poll::Pending,
            code => Poll::Ready(code as u16),
        }
    }
}

struct Entry {
    info: SessionInfo,
    started: Instant,
    order: Arc<Order>,
}

/// The open sessions.
#[derive(Default)]
pub struct Registry {
    open: Mutex<HashMap<u64, Entry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("open", &self.lock().len())
            .finish()
    }
}

impl Registry {
    /// The map, also after a panic elsewhere while it was held (each change is whole).
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the session of connection `conn_id`; the order it must close comes through
    /// the returned [`CloseOrder`]. [`Registry::remove`] takes it out at its end.
    pub fn insert(&self, conn_id: u64, info: SessionInfo) -> CloseOrder {
        let order = Arc::new(Order::default());
        self.lock().insert(
            conn_id,
            Entry {
                info,
                started: Instant::now(),
                order: order.clone(),
            },
        );
        CloseOrder(Some(order))
    }

    /// Forgets the session of connection `conn_id` (it ended).
    pub fn remove(&self, conn_id: u64) {
        self.lock().remove(&conn_id);
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sessions `filter` picks, the oldest first (`max` of them, if set), and how many
    /// it picks in all.
    pub fn list(&self, filter: &Filter) -> (Vec<Listed>, usize) {
        let now = Instant::now();
        let open = self.lock();
        let mut picked: Vec<(&u64, &Entry)> = open
            .iter()
            .filter(|(_, e)| filter.matches(&e.info))
            .collect();
        let total = picked.len();
        picked.sort_by_key(|(_, e)| e.started);
        picked.truncate(filter.max.unwrap_or(usize::MAX));
        let listed = picked
            .into_iter()
            .map(|(conn, e)| Listed {
                conn: *conn,
                backend: e.info.backend.to_string(),
                instance: e.info.instance.as_deref().map(str::to_owned),
                subject: e.info.subject.as_deref().map(str::to_owned),
                peer: e.info.peer.map(|p| p.to_string()),
                age_s: now.saturating_duration_since(e.started).as_secs(),
                closing: e.order.code.load(Ordering::Acquire) != 0,
            })
            .collect();
        (listed, total)
    }

    /// Orders the sessions `filter` picks to close, the client hearing `code`; returns
    /// how many were ordered (a session already ordered is not counted again).
    pub fn close(&self, filter: &Filter, code: u16) -> usize {
        let open = self.lock();
        let mut picked: Vec<&Entry> = open
            .values()
            .filter(|e| e.order.code.load(Ordering::Acquire) == 0 && filter.matches(&e.info))
            .collect();
        picked.sort_by_key(|e| e.started);
        picked.truncate(filter.max.unwrap_or(usize::MAX));
        for e in &picked {
            e.order.code.store(u32::from(code), Ordering::Release);
            e.order.waker.wake();
        }
        picked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(backend: &str, instance: &str, subject: Option<&str>) -> SessionInfo {
        SessionInfo {
            backend: backend.into(),
            instance: Some(instance.into()),
            subject: subject.map(Into::into),
            peer: None,
        }
    }

    fn ordered(order: &mut CloseOrder) -> Option<u16> {
        let waker = std::task::Waker::noop();
        match Pin::new(order).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(code) => Some(code),
            Poll::Pending => None,
        }
    }

    #[test]
    fn filters_pick_sessions_and_max_takes_the_oldest() {
        let r = Registry::default();
        let mut orders: Vec<CloseOrder> = [
            info("A", "10.0.0.1:80", Some("alice")),
            info("A", "10.0.0.2:80", Some("bob")),
            info("A", "10.0.0.1:80", None),
            info("B", "10.0.0.1:80", Some("alice")),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, info)| r.insert(i as u64, info))
        .collect();
        assert!(orders.iter_mut().all(|o| ordered(o).is_none()));
        let by_subject = Filter {
            subject: Some("alice".into()),
            ..Filter::default()
        };
        assert_eq!(r.close(&by_subject, 1008), 2);
        let got: Vec<Option<u16>> = orders.iter_mut().map(ordered).collect();
        assert_eq!(got, [Some(1008), None, None, Some(1008)]);
        // Already ordered ones are not counted again.
        assert_eq!(r.close(&by_subject, 1001), 0);
        let one_of_instance = Filter {
            backend: Some("A".into()),
            instance: Some("10.0.0.1:80".into()),
            max: Some(1),
            ..Filter::default()
        };
        assert_eq!(r.close(&one_of_instance, 1001), 1);
        assert_eq!(ordered(&mut orders[2]), Some(1001));
        assert_eq!(ordered(&mut orders[1]), None);
        let (listed, total) = r.list(&Filter {
            backend: Some("A".into()),
            max: Some(2),
            ..Filter::default()
        });
        assert_eq!(total, 3);
        let conns: Vec<(u64, bool)> = listed.iter().map(|l| (l.conn, l.closing)).collect();
        assert_eq!(
            conns,
            [(0, true), (1, false)],
            "the oldest two of backend A"
        );
        r.remove(1);
        assert_eq!(
            r.close(&Filter::default(), 1001),
            0,
            "only ended or ordered ones left"
        );
        assert_eq!(r.len(), 3);
        assert_eq!(ordered(&mut CloseOrder::never()), None);
    }

    #[test]
    fn operators_send_only_codes_a_client_may_receive() {
        for ok in [1000, 1001, 1008, 1012, 1013, 3000, 4999] {
            assert!(allowed_code(ok), "{ok}");
        }
        for bad in [0, 999, 1002, 1005, 1006, 1011, 1015, 2999, 5000] {
            assert!(!allowed_code(bad), "{bad}");
        }
    }
}
