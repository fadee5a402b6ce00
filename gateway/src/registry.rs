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
use std::time::{Duration, Instant};

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
    /// Its token's subject (`[auth] subject_claim`, `sub` by default).
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

/// Why a session is told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// An operator closed it: the client hears this code, "closed by the gateway operator".
    Operator(u16),
    /// The gateway is shutting down and spreads its closes (`[timeouts] drain_spread`):
    /// closed as every session is at shutdown, 1001 "gateway shutting down" to both sides.
    Shutdown,
}

/// [`Closing::Shutdown`] in [`Order::code`]: above every close code.
const SHUTDOWN: u32 = 1 << 16;

impl Closing {
    fn encode(self) -> u32 {
        match self {
            Closing::Operator(code) => u32::from(code),
            Closing::Shutdown => SHUTDOWN,
        }
    }

    fn decode(value: u32) -> Self {
        match u16::try_from(value) {
            Ok(code) => Closing::Operator(code),
            Err(_) => Closing::Shutdown,
        }
    }
}

/// The order to close, shared by a session and its registry entry.
#[derive(Debug, Default)]
struct Order {
    /// 0: none yet; else [`Closing::encode`] of the first order given.
    code: AtomicU32,
    waker: AtomicWaker,
}

impl Order {
    /// Gives the order unless one was already given; whether this one was.
    fn give(&self, how: Closing) -> bool {
        let given = self
            .code
            .compare_exchange(0, how.encode(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if given {
            self.waker.wake();
        }
        given
    }

    fn given(&self) -> bool {
        self.code.load(Ordering::Acquire) != 0
    }
}

/// Resolves to why the session must close once it is told to; never, for a session that
/// is not registered.
#[derive(Debug)]
pub struct CloseOrder(Option<Arc<Order>>);

impl CloseOrder {
    /// An order that never comes.
    pub fn never() -> Self {
        Self(None)
    }
}

impl Future for CloseOrder {
    type Output = Closing;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Closing> {
        let Some(order) = &self.0 else {
            return Poll::Pending;
        };
        let code = order.code.load(Ordering::Acquire);
        if code != 0 {
            return Poll::Ready(Closing::decode(code));
        }
        order.waker.register(cx.waker());
        match order.code.load(Ordering::Acquire) {
            0 => Poll::Pending,
            code => Poll::Ready(Closing::decode(code)),
        }
    }
}

/// Sessions picked to be closed ([`Registry::pick`]), not yet told.
#[derive(Debug, Default)]
pub struct Picked(Vec<Arc<Order>>);

impl Picked {
    /// How many were picked.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Tells them all now; returns how many were told (one told otherwise meanwhile, by
    /// another order, is not counted).
    pub fn close_now(self, how: Closing) -> usize {
        self.0.iter().filter(|o| o.give(how)).count()
    }

    /// Tells them a few at a time, evenly over `over` (the oldest first), so that the
    /// clients' reconnects do not all come at once (HAProxy's `close-spread-time`).
    pub fn close_over(self, how: Closing, over: Duration) -> Spread {
        Spread {
            orders: self.0,
            how,
            start: tokio::time::Instant::now(),
            over,
            done: 0,
        }
    }
}

/// How often a [`Spread`] tells the next ones: its closes come in 50 steps a second.
pub const SPREAD_STEP: Duration = Duration::from_millis(20);

/// Closes under way, spread over a period ([`Picked::close_over`]).
#[derive(Debug)]
pub struct Spread {
    orders: Vec<Arc<Order>>,
    how: Closing,
    start: tokio::time::Instant,
    over: Duration,
    done: usize,
}

impl Spread {
    /// Tells the sessions whose turn has come by `now`: the i-th of n once i/n of the
    /// period has passed. Returns whether every one has been told.
    pub fn close_due(&mut self, now: tokio::time::Instant) -> bool {
        let n = self.orders.len();
        let due = if self.over.is_zero() {
            n
        } else {
            let passed = now.saturating_duration_since(self.start).as_secs_f64();
            let share = (passed / self.over.as_secs_f64()).min(1.0);
            ((n as f64 * share).ceil() as usize).min(n)
        };
        if due > self.done {
            for order in &self.orders[self.done..due] {
                order.give(self.how);
            }
            self.done = due;
        }
        self.done == n
    }

    /// Tells them all, each in its turn, and ends with the last.
    pub async fn run(mut self) {
        while !self.close_due(tokio::time::Instant::now()) {
            tokio::time::sleep(SPREAD_STEP).await;
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
        // Under the lock (which every session's start and end take) only the matching
        // entries' handles are copied; sorting and formatting come after.
        let mut picked: Vec<(u64, SessionInfo, Instant, bool)> = self
            .lock()
            .iter()
            .filter(|(_, e)| filter.matches(&e.info))
            .map(|(conn, e)| (*conn, e.info.clone(), e.started, e.order.given()))
            .collect();
        let total = picked.len();
        picked.sort_unstable_by_key(|(conn, _, started, _)| (*started, *conn));
        picked.truncate(filter.max.unwrap_or(usize::MAX));
        let listed = picked
            .into_iter()
            .map(|(conn, info, started, closing)| Listed {
                conn,
                backend: info.backend.to_string(),
                instance: info.instance.as_deref().map(str::to_owned),
                subject: info.subject.as_deref().map(str::to_owned),
                peer: info.peer.map(|p| p.to_string()),
                age_s: now.saturating_duration_since(started).as_secs(),
                closing,
            })
            .collect();
        (listed, total)
    }

    /// The sessions `filter` picks that have not been told to close yet, the oldest first
    /// (`max` of them, if set), to be closed with [`Picked::close_now`] or
    /// [`Picked::close_over`].
    pub fn pick(&self, filter: &Filter) -> Picked {
        let mut picked: Vec<(Instant, u64, Arc<Order>)> = self
            .lock()
            .iter()
            .filter(|(_, e)| !e.order.given() && filter.matches(&e.info))
            .map(|(conn, e)| (e.started, *conn, e.order.clone()))
            .collect();
        picked.sort_unstable_by_key(|(started, conn, _)| (*started, *conn));
        picked.truncate(filter.max.unwrap_or(usize::MAX));
        Picked(picked.into_iter().map(|(_, _, order)| order).collect())
    }

    /// Orders the sessions `filter` picks to close now, the client hearing `code`; returns
    /// how many were ordered (a session already ordered is not counted again).
    pub fn close(&self, filter: &Filter, code: u16) -> usize {
        self.pick(filter).close_now(Closing::Operator(code))
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

    /// The code an operator's order gives the client, or 0 for a shutdown's order.
    fn ordered(order: &mut CloseOrder) -> Option<u16> {
        let waker = std::task::Waker::noop();
        match Pin::new(order).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(Closing::Operator(code)) => Some(code),
            Poll::Ready(Closing::Shutdown) => Some(0),
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

    #[tokio::test(start_paused = true)]
    async fn a_spread_closes_the_oldest_first_evenly_over_its_period() {
        let r = Registry::default();
        let mut orders: Vec<CloseOrder> = (0..10)
            .map(|i| r.insert(i, info("A", "10.0.0.1:80", None)))
            .collect();
        // One is told by an operator first: the spread's order does not replace it.
        assert_eq!(
            r.close(
                &Filter {
                    max: Some(1),
                    ..Filter::default()
                },
                4000
            ),
            1
        );
        let start = tokio::time::Instant::now();
        let mut spread = r
            .pick(&Filter::default())
            .close_over(Closing::Shutdown, Duration::from_secs(9));
        let told = |orders: &mut Vec<CloseOrder>| -> Vec<Option<u16>> {
            orders.iter_mut().map(ordered).collect()
        };
        assert!(!spread.close_due(start));
        assert_eq!(told(&mut orders)[1..], [None; 9], "nothing at the start");
        assert!(!spread.close_due(start + Duration::from_millis(10)));
        assert_eq!(
            told(&mut orders),
            [
                Some(4000),
                Some(0),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ],
            "the oldest not yet told goes first"
        );
        assert!(!spread.close_due(start + Duration::from_millis(4500)));
        assert_eq!(
            told(&mut orders).iter().filter(|t| t.is_some()).count(),
            1 + 5,
            "half the period: half of the nine"
        );
        assert!(spread.close_due(start + Duration::from_secs(9)));
        assert!(told(&mut orders).iter().all(|t| t.is_some()));
        assert_eq!(
            ordered(&mut orders[0]),
            Some(4000),
            "the first order stands"
        );

        // Run on its own, it ends when the period does.
        let mut more: Vec<CloseOrder> = (10..14)
            .map(|i| r.insert(i, info("B", "10.0.0.2:80", None)))
            .collect();
        let picked = r.pick(&Filter {
            backend: Some("B".into()),
            ..Filter::default()
        });
        assert_eq!(picked.len(), 4);
        let began = tokio::time::Instant::now();
        picked
            .close_over(Closing::Operator(1012), Duration::from_secs(2))
            .run()
            .await;
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took <= Duration::from_secs(2) + SPREAD_STEP,
            "{took:?}"
        );
        assert!(more.iter_mut().all(|o| ordered(o) == Some(1012)));
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
