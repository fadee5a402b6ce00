//! Backend pools: the instances behind one backend ID, which one a new connection gets,
//! passive health (ejection for a back-off period after a failed connect), and DNS
//! discovery.
//!
//! Picking reads a snapshot of the instance list (an atomic pointer load) and per-instance
//! atomics: no lock, no allocation. A session holds a [`Lease`] on its instance for its
//! whole life, which is what `least_conn` counts; instances that leave the pool (DNS
//! change, reload) keep serving the sessions that hold them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{debug, info, warn};

use crate::metrics::{InstanceLabels, PoolMetrics};
use crate::pool_config::{Balance, Members, PoolSpec, MAX_INSTANCES};
use crate::route::BackendTarget;

pub mod discovery;

/// Milliseconds on a process-wide monotonic clock, starting at 1 (0 means "never").
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One backend instance: where to connect, and its health and load as atomics.
pub struct Instance {
    /// Where to connect and what to send.
    pub target: BackendTarget,
    /// `host:port`, for logs and metric labels.
    pub addr: Arc<str>,
    /// Leases held: sessions open on it plus connects under way.
    live: AtomicUsize,
    /// No new connections before this time (ms, [`now_ms`]) while others are healthy.
    ejected_until: AtomicU64,
    /// When a connect last failed (ms), to try the longest-failed first when all are out.
    last_failure: AtomicU64,
    /// Ejected and not yet readmitted by a good connect: logs the two transitions once.
    down: AtomicBool,
    /// Left its pool: its metric labels go when its last lease ends.
    retired: AtomicBool,
    /// Its hold on its metric labels was given up (once): it has left its pool and has no
    /// session left, and is never taken back.
    released: AtomicBool,
    /// Serialises retiring, taking back and releasing, so an instance taken back into a
    /// pool never loses its labels to its last old session ending at that moment.
    leaving: Mutex<()>,
    /// This instance's metric handles and the families to drop them from.
    metrics: InstanceMetrics,
}

struct InstanceMetrics {
    labels: InstanceLabels,
    families: PoolMetrics,
    opened: Counter,
    active: Gauge,
    failures: Counter,
    ejections: Counter,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("addr", &self.addr)
            .field("live", &self.live())
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// An instance of backend `target.id`, counted in `metrics` under `addr`.
    pub fn new(target: BackendTarget, metrics: &PoolMetrics) -> Self {
        let addr: Arc<str> = if target.host.contains(':') {
            format!("[{}]:{}", target.host, target.port).into()
        } else {
            format!("{}:{}", target.host, target.port).into()
        };
        let labels = InstanceLabels {
            backend: target.id.to_string(),
            instance: addr.to_string(),
        };
        metrics.hold(&labels);
        let metrics = InstanceMetrics {
            opened: metrics.opened.get_or_create(&labels).clone(),
            active: metrics.active.get_or_create(&labels).clone(),
            failures: metrics.connect_failures.get_or_create(&labels).clone(),
            ejections: metrics.ejections.get_or_create(&labels).clone(),
            families: metrics.clone(),
            labels,
        };
        Self {
            target,
            addr,
            live: AtomicUsize::new(0),
            ejected_until: AtomicU64::new(0),
            last_failure: AtomicU64::new(0),
            down: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            released: AtomicBool::new(false),
            leaving: Mutex::new(()),
            metrics,
        }
    }

    /// Leases held now (sessions plus connects under way).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Whether it holds `max` leases or more (never, without a cap).
    pub fn full(&self, max: Option<usize>) -> bool {
        max.is_some_and(|max| self.live() >= max)
    }

    /// Whether it takes new connections at `now` (not in a back-off period).
    pub fn available(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// Records a failed connect at `now`: counted, and ejected for `eject` unless it
    /// already is. Logs the ejection once per outage.
    pub fn failed(&self, now: u64, eject: Duration, reason: &dyn std::fmt::Display) {
        self.metrics.failures.inc();
        self.last_failure.store(now, Ordering::Relaxed);
        if eject.is_zero() {
            return;
        }
        let until = now.saturating_add(millis(eject));
        // Never shortened: a health probe's longer ejection outlasts the failed connects that
        // were in flight when it came.
        let previous = self.ejected_until.fetch_max(until, Ordering::Relaxed);
        if previous > now {
            return; // already out; the back-off now runs from this failure
        }
        self.metrics.ejections.inc();
        let backend = &*self.target.id;
        let instance = &*self.addr;
        let eject_ms = millis(eject);
        if self.down.swap(true, Ordering::Relaxed) {
            debug!(backend, instance, eject_ms, %reason, "backend instance failed again; ejected again");
        } else {
            warn!(backend, instance, eject_ms, %reason, "backend instance ejected");
        }
    }

    /// Records a failed attempt that is not the instance's fault (it answered the client's
    /// request with a 4xx): counted in its failures, not held against it.
    pub fn refused_request(&self) {
        self.metrics.failures.inc();
    }

    /// Records a good connect: counted, and readmitted if it was ejected.
    pub fn succeeded(&self) {
        self.metrics.opened.inc();
        if self.down.swap(false, Ordering::Relaxed) {
            self.ejected_until.store(0, Ordering::Relaxed);
            info!(
                backend = &*self.target.id,
                instance = &*self.addr,
                "backend instance readmitted"
            );
        }
    }

    /// A health probe reached it: readmitted at once if it was ejected.
    pub fn answered_probe(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            self.ejected_until.store(0, Ordering::Relaxed);
            info!(
                backend = &*self.target.id,
                instance = &*self.addr,
                "backend instance readmitted by the health check"
            );
        }
    }

    /// Marks it as gone from its pool; its metric labels go with its last lease.
    pub fn retire(&self) {
        let _leaving = self.leaving.lock();
        self.retired.store(true, Ordering::Relaxed);
        if self.live() == 0 {
            self.release();
        }
    }

    /// Takes it back into a pool (its address came back in a reload or a lookup while
    /// sessions still use it), so those sessions count against its `max_sessions` and
    /// `least_conn` still. `false`: it has no session left and is gone; a fresh instance
    /// serves as well.
    fn take_back(&self) -> bool {
        let _leaving = self.leaving.lock();
        if self.released.load(Ordering::Relaxed) {
            return false;
        }
        self.retired.store(false, Ordering::Relaxed);
        true
    }

    /// Whether it left its pool and its last session has ended.
    fn gone(&self) -> bool {
        self.released.load(Ordering::Relaxed)
    }

    /// Its last lease ended: if it has left its pool, its labels go.
    fn last_lease_ended(&self) {
        let _leaving = self.leaving.lock();
        if self.retired.load(Ordering::Relaxed) && self.live() == 0 {
            self.release();
        }
    }

    fn release(&self) {
        if !self.released.swap(true, Ordering::Relaxed) {
            self.metrics.families.release(&self.metrics.labels);
        }
    }
}

/// A claim on one instance, held by a connect under way and then by its session: what
/// `least_conn` counts and the live-sessions gauge shows. Released when dropped.
#[derive(Debug)]
pub struct Lease {
    instance: Arc<Instance>,
}

impl Lease {
    /// Takes a lease on `instance`.
    pub fn new(instance: Arc<Instance>) -> Self {
        instance.live.fetch_add(1, Ordering::Relaxed);
        instance.metrics.active.inc();
        Self { instance }
    }

    /// Takes a lease on `instance` unless it already holds `max` (`None`: no cap). Checked
    /// and taken in one step, so connects racing for the last place cannot both get it.
    pub fn try_new(instance: Arc<Instance>, max: Option<usize>) -> Option<Self> {
        let Some(max) = max else {
            return Some(Self::new(instance)).filter(|l| !l.instance.gone());
        };
        instance
            .live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        instance.metrics.active.inc();
        // An instance a reload retired while this connect waited, and whose last session
        // has ended, is gone: its place counts nowhere any more (dropping the lease gives
        // it back).
        Some(Self { instance }).filter(|l| !l.instance.gone())
    }

    /// The leased instance.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let i = &self.instance;
        i.metrics.active.dec();
        if i.live.fetch_sub(1, Ordering::Relaxed) == 1 && i.retired.load(Ordering::Relaxed) {
            i.last_lease_ended();
        }
    }
}

/// The instances of one backend ID and how new connections are spread over them.
pub struct Pool {
    /// The configured entry.
    spec: PoolSpec,
    /// The instances in force; swapped whole by discovery, read without a lock.
    instances: ArcSwap<Vec<Arc<Instance>>>,
    /// Instances that left this pool (or the pools it replaced) with sessions still on
    /// them: one whose address comes back is taken back with its sessions, not
    /// started afresh at none.
    retired: Mutex<Vec<Arc<Instance>>>,
    /// Where round robin (and least_conn's tie-break) starts next.
    cursor: AtomicUsize,
    /// Per-instance metric families, for instances discovery adds.
    metrics: PoolMetrics,
    /// DNS pools: whether a lookup has ever answered.
    resolved: AtomicBool,
    /// DNS pools: the refresh task was started.
    discovering: AtomicBool,
    /// `health_interval` set: the health-check task was started.
    checking: AtomicBool,
    /// How long a health probe may take, in ms: `[timeouts] backend_connect` as the
    /// last reload set it (a pool kept across reloads keeps its task).
    probe_timeout_ms: AtomicU64,
    /// The client config for `wss://` instances as the last reload built it (a pool kept
    /// across reloads takes a new `[backend_tls]` too).
    tls: ArcSwapOption<rustls::ClientConfig>,
    /// DNS pools: the last lookup failed (logged once until one works again).
    lookup_failing: AtomicBool,
    /// DNS pools: serialises applying lookup answers (never held across an await).
    applying: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("id", &self.spec.id)
            .field("instances", &self.instances.load().len())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for `spec`. Instances of `previous` (the pool this ID had before a reload)
    /// that are still configured are kept, with their load and health, and so are ones
    /// that had left it and still serve sessions.
    pub fn new(spec: PoolSpec, metrics: &PoolMetrics, previous: Option<&Pool>) -> Self {
        Self::with_departed(spec, metrics, previous, Vec::new())
    }

    /// [`Pool::new`], with `departed`: instances of an earlier pool for this ID, which a
    /// reload removed, that may still serve sessions and are taken back if listed again.
    pub fn with_departed(
        spec: PoolSpec,
        metrics: &PoolMetrics,
        previous: Option<&Pool>,
        departed: Vec<Arc<Instance>>,
    ) -> Self {
        let old = previous
            .map(|p| p.instances.load_full())
            .unwrap_or_default();
        let mut retired = previous.map(Pool::take_retired).unwrap_or_default();
        retired.extend(departed.into_iter().filter(|i| !i.gone()));
        let (list, resolved): (Vec<Arc<Instance>>, bool) = match &spec.members {
            Members::Urls(targets) => {
                let list = targets
                    .iter()
                    .map(|t| {
                        old.iter()
                            .find(|i| i.target == *t)
                            .cloned()
                            .or_else(|| take_back(&mut retired, t))
                            .unwrap_or_else(|| Arc::new(Instance::new(t.clone(), metrics)))
                    })
                    .collect();
                (list, true)
            }
            Members::Dns {
                host,
                port,
                path,
                tls,
                ..
            } => {
                // Same name, port, path, scheme and certificate name: the old answer holds
                // until the next lookup.
                let same = previous.is_some_and(|p| {
                    p.spec.tls_name == spec.tls_name
                        && matches!(&p.spec.members, Members::Dns { host: h, port: o, path: q, tls: s, .. }
                            if h == host && o == port && q == path && s == tls)
                });
                if same {
                    let resolved = previous.is_some_and(|p| p.resolved.load(Ordering::Relaxed));
                    (old.to_vec(), resolved)
                } else {
                    (Vec::new(), false)
                }
            }
        };
        // The previous pool's instances this one does not keep are retired with it
        // ([`Pool::retire_all_but`]); those still serving sessions may come back.
        retired.extend(
            old.iter()
                .filter(|i| !list.iter().any(|k| Arc::ptr_eq(i, k)))
                .cloned(),
        );
        Self {
            spec,
            instances: ArcSwap::from_pointee(list),
            retired: Mutex::new(retired),
            cursor: AtomicUsize::new(0),
            metrics: metrics.clone(),
            resolved: AtomicBool::new(resolved),
            discovering: AtomicBool::new(false),
            checking: AtomicBool::new(false),
            probe_timeout_ms: AtomicU64::new(0),
            tls: ArcSwapOption::empty(),
            lookup_failing: AtomicBool::new(false),
            applying: Mutex::new(()),
        }
    }

    /// The backend ID.
    pub fn id(&self) -> &Arc<str> {
        &self.spec.id
    }

    /// The configured entry.
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    /// The TLS client config for `wss://` instances in force now (`None`: no backend of
    /// the config in force is `wss://` and `[backend_tls]` is empty).
    pub fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.load_full()
    }

    /// The instances in force now (a snapshot: discovery may replace the list meanwhile).
    pub fn instances(&self) -> Arc<Vec<Arc<Instance>>> {
        self.instances.load_full()
    }

    /// Picks an instance of `list` not in `tried` (bit i = index i) and not at its
    /// `max_sessions`: a healthy one by the pool's policy, else (all ejected) the one that
    /// failed longest ago, or in a `hash` pool the key's own choice. `affinity`: the hash
    /// of the client's `hash_key`, for a `hash` pool (without one, it takes its instances
    /// in turn). `None` when every instance was tried or is full.
    pub fn pick(
        &self,
        list: &[Arc<Instance>],
        tried: u64,
        now: u64,
        affinity: Option<u64>,
    ) -> Option<usize> {
        let n = list.len().min(MAX_INSTANCES);
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let max = self.spec.max_sessions;
        // A reload may have dropped an instance since `list` was taken: it takes no new
        // connection.
        let untried = |i: usize| {
            tried & (1u64 << i) == 0
                && !list[i].full(max)
                && !list[i].retired.load(Ordering::Relaxed)
        };
        // least_conn and hash: the lowest cost wins (ties: the first in turn).
        let mut best: Option<(usize, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !untried(i) || !list[i].available(now) {
                continue;
            }
            let cost = match (self.spec.balance, affinity) {
                (Balance::LeastConn, _) => list[i].live() as u64,
                // The instance the key ranks highest.
                (Balance::Hash, Some(key)) => !crate::affinity::score(key, &list[i].target.url),
                (Balance::RoundRobin | Balance::Hash, _) => {
                    // Skipped ejected instances do not hand their turns to the next one.
                    if k > 0 {
                        self.cursor.fetch_add(k, Ordering::Relaxed);
                    }
                    return Some(i);
                }
            };
            if best.is_none_or(|(_, lowest)| cost < lowest) {
                best = Some((i, cost));
            }
        }
        if let Some((i, _)) = best {
            return Some(i);
        }
        let untried = (0..n).filter(|&i| untried(i));
        match (self.spec.balance, affinity) {
            // A key keeps its own order: when the whole pool went out together (a network
            // blip), each key tries its own instance first, so that they spread as before
            // rather than all landing on the one that failed longest ago.
            (Balance::Hash, Some(key)) => {
                untried.max_by_key(|&i| crate::affinity::score(key, &list[i].target.url))
            }
            _ => untried.min_by_key(|&i| list[i].last_failure.load(Ordering::Relaxed)),
        }
    }

    /// Every instance of this pool that may still serve a session: its own and those
    /// that left it, for when its ID leaves the routes.
    pub(crate) fn departing(&self) -> Vec<Arc<Instance>> {
        let mut all = self.take_retired();
        all.extend(self.instances.load().iter().filter(|i| !i.gone()).cloned());
        all
    }

    /// The instances that left this pool and still serve sessions.
    fn take_retired(&self) -> Vec<Arc<Instance>> {
        let mut retired = self.retired.lock().map(|r| r.clone()).unwrap_or_default();
        retired.retain(|i| !i.gone());
        retired
    }

    /// Records instances that left this pool (discovery), so they can come back.
    fn keep_retired(&self, gone: impl Iterator<Item = Arc<Instance>>) {
        if let Ok(mut retired) = self.retired.lock() {
            retired.retain(|i| !i.gone());
            retired.extend(gone);
        }
    }

    /// Takes back the retired instance for `target`, if one still serves sessions.
    fn take_back_retired(&self, target: &BackendTarget) -> Option<Arc<Instance>> {
        let mut retired = self.retired.lock().ok()?;
        take_back(&mut retired, target)
    }

    /// Retires every instance of this pool that `next` (its replacement) does not keep.
    pub fn retire_all_but(&self, next: Option<&Pool>) {
        let kept = next.map(|p| p.instances.load_full()).unwrap_or_default();
        for i in self.instances.load().iter() {
            if !kept.iter().any(|k| Arc::ptr_eq(i, k)) {
                i.retire();
            }
        }
    }
}

/// Takes the instance for `target` out of `retired` and back into service, if it still
/// serves sessions.
fn take_back(retired: &mut Vec<Arc<Instance>>, target: &BackendTarget) -> Option<Arc<Instance>> {
    let at = retired.iter().position(|i| i.target == *target)?;
    let instance = retired.swap_remove(at);
    instance.take_back().then_some(instance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool_config::{PoolSpec, DEFAULT_EJECT};
    use crate::route::{RouteTable, Router};
    use std::collections::BTreeMap;

    fn pool(n: usize, balance: Balance) -> Pool {
        pool_capped(n, balance, None)
    }

    fn pool_capped(n: usize, balance: Balance, max_sessions: Option<usize>) -> Pool {
        let targets = (0..n)
            .map(|i| BackendTarget::parse("B", &format!("ws://127.0.0.{}:1/", i + 2)))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_default();
        let spec = PoolSpec {
            id: Arc::from("B"),
            members: Members::Urls(targets),
            balance,
            hash_key: (balance == Balance::Hash).then_some(crate::affinity::HashKey::Ip),
            eject: DEFAULT_EJECT,
            connect_attempts: None,
            health_interval: None,
            health_check: Default::default(),
            required_scopes: Vec::new(),
            max_sessions,
            tls_name: None,
            tls_files: Default::default(),
            single: false,
        };
        Pool::new(spec, &PoolMetrics::default(), None)
    }

    fn picks(p: &Pool, count: usize, now: u64) -> Vec<usize> {
        let list = p.instances();
        (0..count)
            .filter_map(|_| p.pick(&list, 0, now, None))
            .collect()
    }

    #[test]
    fn full_instances_are_not_picked_and_a_lease_never_passes_the_cap() {
        let p = pool_capped(2, Balance::RoundRobin, Some(2));
        let list = p.instances();
        let held: Vec<Lease> = (0..4)
            .filter_map(|_| {
                let i = p.pick(&list, 0, 1, None)?;
                Lease::try_new(list[i].clone(), Some(2))
            })
            .collect();
        assert_eq!(held.len(), 4);
        assert_eq!((list[0].live(), list[1].live()), (2, 2));
        assert_eq!(
            p.pick(&list, 0, 1, None),
            None,
            "a full instance was picked"
        );
        // Not even as the all-ejected fallback.
        list[0].failed(1, Duration::from_secs(60), &"refused");
        assert_eq!(p.pick(&list, 0, 2, None), None);
        assert!(Lease::try_new(list[1].clone(), Some(2)).is_none());
        assert_eq!(list[1].live(), 2, "a refused lease was counted");
        // Uncapped, the same instance takes more.
        let extra = Lease::try_new(list[1].clone(), None);
        assert_eq!((extra.is_some(), list[1].live()), (true, 3));
        drop(extra);
        drop(held);
        assert_eq!((list[0].live(), list[1].live()), (0, 0));
        assert_eq!(
            p.pick(&list, 0, 3, None),
            Some(1),
            "a freed instance is picked again"
        );
    }

    /// A router whose one route, `B`, is a pool of `n` instances with `max_sessions`; the
    /// backend table that lists it, for reloads that put it back; the metrics.
    fn routes_of_b(
        n: usize,
        max_sessions: Option<usize>,
    ) -> (Router, BTreeMap<String, PoolSpec>, PoolMetrics) {
        let metrics = PoolMetrics::default();
        let spec = pool_capped(n, Balance::RoundRobin, max_sessions)
            .spec
            .clone();
        let with_b = BTreeMap::from([("B".to_owned(), spec)]);
        let router = Router::new(RouteTable::from_specs(&with_b, &metrics, None));
        (router, with_b, metrics)
    }

    #[test]
    fn an_id_removed_and_listed_again_takes_back_its_instances_with_their_sessions() {
        let (router, with_b, metrics) = routes_of_b(1, Some(2));
        let first = router.current().get("B").map(|p| p.instances()[0].clone());
        let Some(first) = first else {
            panic!("no pool for B")
        };
        let held: Vec<Lease> = (0..2)
            .filter_map(|_| Lease::try_new(first.clone(), Some(2)))
            .collect();
        assert_eq!(held.len(), 2);
        // B leaves the routes with its two sessions open, then comes back; and a second
        // reload in between forgets nothing.
        for table in [BTreeMap::new(), BTreeMap::new(), with_b] {
            let next = RouteTable::from_specs(&table, &metrics, Some(&router.current()));
            router.replace(next);
        }
        let back = router.current().get("B").map(|p| p.instances()[0].clone());
        assert!(
            back.is_some_and(|i| Arc::ptr_eq(&i, &first)),
            "a fresh instance"
        );
        assert!(
            Lease::try_new(first.clone(), Some(2)).is_none(),
            "max_sessions exceeded"
        );
        drop(held);
        assert!(Lease::try_new(first, Some(2)).is_some());
    }

    #[test]
    fn a_connect_under_way_takes_no_instance_a_reload_dropped() {
        let (router, with_b, metrics) = routes_of_b(2, Some(1));
        // A connect took the pool and its list, then waits on its first instance.
        let Some(pool) = router.current().get("B").cloned() else {
            panic!("no pool for B")
        };
        let list = pool.instances();
        // B is removed and listed again meanwhile.
        for table in [BTreeMap::new(), with_b] {
            let next = RouteTable::from_specs(&table, &metrics, Some(&router.current()));
            router.replace(next);
        }
        assert_eq!(
            pool.pick(&list, 1, 0, None),
            None,
            "a dropped instance was picked"
        );
        assert!(Lease::try_new(list[1].clone(), Some(1)).is_none());
        assert!(Lease::try_new(list[1].clone(), None).is_none());
        // The instance in force for B takes its one session.
        let Some(now) = router.current().get("B").map(|p| p.instances()[1].clone()) else {
            panic!("no pool for B")
        };
        assert!(Lease::try_new(now, Some(1)).is_some());
    }

    #[test]
    fn round_robin_takes_turns_and_skips_ejected_fairly() {
        let p = pool(3, Balance::RoundRobin);
        assert_eq!(picks(&p, 6, 1), vec![0, 1, 2, 0, 1, 2]);
        p.instances()[1].failed(1, Duration::from_secs(1), &"refused");
        let mut counts = [0usize; 3];
        for i in picks(&p, 100, 2) {
            counts[i] += 1;
        }
        assert_eq!(counts[1], 0, "ejected instance picked: {counts:?}");
        assert!(counts[0].abs_diff(counts[2]) <= 2, "uneven: {counts:?}");
        // After the back-off it is picked again.
        assert!(picks(&p, 3, 1002).contains(&1));
    }

    #[test]
    fn least_conn_picks_the_fewest_leases_and_leases_release() {
        let p = pool(3, Balance::LeastConn);
        let list = p.instances();
        let held: Vec<Lease> = [0, 0, 2]
            .iter()
            .map(|&i| Lease::new(list[i].clone()))
            .collect();
        assert_eq!(picks(&p, 5, 1), vec![1; 5]);
        let second = Lease::new(list[1].clone());
        let third = Lease::new(list[1].clone());
        // 0: 2, 1: 2, 2: 1.
        assert_eq!(picks(&p, 3, 1), vec![2; 3]);
        drop((held, second, third));
        assert!(list.iter().all(|i| i.live() == 0));
        let spread = picks(&p, 3, 1);
        assert!(
            spread.contains(&0) && spread.contains(&1) && spread.contains(&2),
            "{spread:?}"
        );
    }

    #[test]
    fn hash_keeps_a_key_on_its_instance_and_moves_it_only_while_that_one_cannot_take_it() {
        let p = pool_capped(4, Balance::Hash, Some(2));
        let list = p.instances();
        let keys: Vec<u64> = (0..64u64)
            .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let home = |key: u64, now: u64| p.pick(&list, 0, now, Some(key));
        let homes: Vec<Option<usize>> = keys.iter().map(|&k| home(k, 1)).collect();
        // The same key, the same instance, every time; and the keys spread over all four.
        for _ in 0..3 {
            assert_eq!(keys.iter().map(|&k| home(k, 1)).collect::<Vec<_>>(), homes);
        }
        for i in 0..4 {
            assert!(
                homes.contains(&Some(i)),
                "instance {i} is no key's home: {homes:?}"
            );
        }
        // Ejected: its keys go elsewhere, the others stay; readmitted: they come back.
        let Some(first) = homes[0] else {
            panic!("no pick")
        };
        list[first].failed(1, Duration::from_secs(1), &"refused");
        for (&k, &was) in keys.iter().zip(&homes) {
            let now = home(k, 2);
            assert!(now.is_some() && now != Some(first));
            if was != Some(first) {
                assert_eq!(now, was, "a key of a healthy instance moved");
            }
        }
        list[first].succeeded();
        assert_eq!(home(keys[0], 3), Some(first));
        // All ejected at once: each key still tries its own first, not the one that failed
        // longest ago.
        for (i, instance) in list.iter().enumerate() {
            instance.failed(4 + i as u64, Duration::from_secs(1), &"refused");
        }
        assert_eq!(
            keys.iter().map(|&k| home(k, 10)).collect::<Vec<_>>(),
            homes,
            "all ejected: the keys left their instances"
        );
        let next = p.pick(&list, 1 << first, 10, Some(keys[0]));
        assert!(next.is_some() && next != Some(first));
        for instance in list.iter() {
            instance.succeeded();
        }
        // Tried (its connect failed): the key's next choice, which is the same each time.
        let second = p.pick(&list, 1 << first, 3, Some(keys[0]));
        assert!(second.is_some() && second != Some(first));
        assert_eq!(p.pick(&list, 1 << first, 3, Some(keys[0])), second);
        // Full: the same next choice.
        let held: Vec<Lease> = (0..2)
            .filter_map(|_| Lease::try_new(list[first].clone(), Some(2)))
            .collect();
        assert_eq!(held.len(), 2);
        assert_eq!(home(keys[0], 3), second);
        drop(held);
        // No key: in turn.
        let turns: Vec<Option<usize>> = (0..4).map(|_| p.pick(&list, 0, 3, None)).collect();
        let mut seen = turns.clone();
        seen.sort();
        assert_eq!(seen, vec![Some(0), Some(1), Some(2), Some(3)], "{turns:?}");
    }

    #[test]
    fn tried_instances_are_skipped_and_all_ejected_falls_back_to_the_oldest_failure() {
        let p = pool(3, Balance::RoundRobin);
        let list = p.instances();
        assert_eq!(p.pick(&list, 0b011, 1, None), Some(2));
        assert_eq!(p.pick(&list, 0b111, 1, None), None);
        let eject = Duration::from_secs(10);
        list[0].failed(30, eject, &"x");
        list[1].failed(10, eject, &"x");
        list[2].failed(20, eject, &"x");
        assert_eq!(p.pick(&list, 0, 40, None), Some(1));
        assert_eq!(p.pick(&list, 0b010, 40, None), Some(2));
        // Readmission clears the back-off at once.
        list[0].succeeded();
        assert!(list[0].available(40));
    }

    #[test]
    fn ejection_is_counted_once_per_back_off() {
        let metrics = PoolMetrics::default();
        let p = Pool::new(pool(1, Balance::RoundRobin).spec.clone(), &metrics, None);
        let i = p.instances()[0].clone();
        let eject = Duration::from_millis(100);
        i.failed(10, eject, &"x");
        i.failed(50, eject, &"x"); // still out: no second ejection
        i.failed(500, eject, &"x"); // back-off over, failed again
        let labels = i.metrics.labels.clone();
        assert_eq!(metrics.ejections.get_or_create(&labels).get(), 2);
        assert_eq!(metrics.connect_failures.get_or_create(&labels).get(), 3);
        assert!(!i.available(550) && i.available(600));
    }

    #[test]
    fn a_shorter_ejection_never_cuts_a_longer_one_short() {
        let metrics = PoolMetrics::default();
        let p = Pool::new(pool(1, Balance::RoundRobin).spec.clone(), &metrics, None);
        let i = p.instances()[0].clone();
        // A health probe's ejection, then a client's connect that was in flight fails.
        i.failed(1_000, Duration::from_secs(9), &"health check: no answer");
        i.failed(1_100, Duration::from_secs(1), &"no answer");
        assert!(
            !i.available(5_000),
            "readmitted before the probe's ejection ran out"
        );
        assert!(i.available(10_000));
    }

    #[test]
    fn a_reload_keeps_instances_still_configured() {
        let metrics = PoolMetrics::default();
        let old = Pool::new(pool(2, Balance::RoundRobin).spec.clone(), &metrics, None);
        let kept = old.instances()[1].clone();
        let lease = Lease::new(old.instances()[0].clone());
        let mut spec = pool(3, Balance::LeastConn).spec.clone();
        if let Members::Urls(t) = &mut spec.members {
            t.remove(0);
        }
        let new = Pool::new(spec, &metrics, Some(&old));
        old.retire_all_but(Some(&new));
        assert!(Arc::ptr_eq(&new.instances()[0], &kept));
        // The removed instance still serves its session; its labels go when it ends.
        let gone = lease.instance().metrics.labels.clone();
        assert_eq!(metrics.active.get_or_create(&gone).get(), 1);
        drop(lease);
        assert!(
            !metrics.active.remove(&gone),
            "labels of a gone instance were kept"
        );
    }

    fn urls_spec(hosts: &[u8], max_sessions: Option<usize>) -> PoolSpec {
        let targets = hosts
            .iter()
            .map(|h| BackendTarget::parse("B", &format!("ws://127.0.0.{h}:1/")))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_default();
        PoolSpec {
            members: Members::Urls(targets),
            max_sessions,
            ..pool(1, Balance::RoundRobin).spec.clone()
        }
    }

    /// Replaces `old` by a pool for `spec`, as a reload does.
    fn reload(old: &Pool, spec: PoolSpec, metrics: &PoolMetrics) -> Pool {
        let new = Pool::new(spec, metrics, Some(old));
        old.retire_all_but(Some(&new));
        new
    }

    #[test]
    fn an_instance_that_comes_back_brings_its_sessions_back_under_its_cap() {
        let metrics = PoolMetrics::default();
        let first = Pool::new(urls_spec(&[2], Some(2)), &metrics, None);
        let u1 = first.instances()[0].clone();
        let held: Vec<Lease> = (0..2)
            .filter_map(|_| Lease::try_new(u1.clone(), Some(2)))
            .collect();
        assert_eq!(held.len(), 2);
        // Away to another address, then back (a rollback).
        let second = reload(&first, urls_spec(&[3], Some(2)), &metrics);
        let third = reload(&second, urls_spec(&[2], Some(2)), &metrics);
        let back = third.instances()[0].clone();
        assert!(
            Arc::ptr_eq(&back, &u1),
            "the address came back as a new instance"
        );
        assert_eq!(back.live(), 2);
        assert_eq!(
            third.pick(&third.instances(), 0, 1, None),
            None,
            "a full instance was picked"
        );
        assert!(Lease::try_new(back.clone(), Some(2)).is_none());
        // Back in a pool, its labels outlive its old sessions.
        drop(held);
        assert_eq!(metrics.active.get_or_create(&back.metrics.labels).get(), 0);
        assert!(!back.gone());
        assert!(Lease::try_new(back.clone(), Some(2)).is_some());
    }

    #[test]
    fn an_address_that_comes_back_after_its_sessions_ended_starts_afresh() {
        let metrics = PoolMetrics::default();
        let first = Pool::new(urls_spec(&[2], Some(2)), &metrics, None);
        let u1 = first.instances()[0].clone();
        let lease = Lease::new(u1.clone());
        let second = reload(&first, urls_spec(&[3], Some(2)), &metrics);
        drop(lease);
        assert!(
            u1.gone(),
            "a retired instance with no session kept its labels"
        );
        let third = reload(&second, urls_spec(&[2], Some(2)), &metrics);
        let fresh = third.instances()[0].clone();
        assert!(!Arc::ptr_eq(&fresh, &u1));
        let lease = Lease::new(fresh.clone());
        assert_eq!(metrics.active.get_or_create(&fresh.metrics.labels).get(), 1);
        drop(lease);
    }
}
