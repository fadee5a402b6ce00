//! A pool's background work: DNS discovery (look the name up every `refresh`, follow
//! the answer, keep the last one when a lookup fails) and the optional active health
//! check (a TCP connect to every instance every `health_interval`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{info, warn};

use super::{now_ms, Instance, Pool};
use crate::pool_config::{Members, MAX_INSTANCES};
use crate::resolve::Lookup;
use crate::route::BackendTarget;

impl Pool {
    /// DNS pools: makes sure the name was looked up once (waiting for it the first time)
    /// and that the refresh task runs. Other pools: nothing.
    pub async fn ensure_discovered(self: &Arc<Self>, lookup: &Arc<dyn Lookup>) {
        if !matches!(self.spec.members, Members::Dns { .. }) {
            return;
        }
        if !self.resolved.load(Ordering::Relaxed) {
            self.refresh(lookup.as_ref()).await;
        }
        self.start_discovery(lookup);
    }

    /// DNS pools: starts the task that looks the name up every `refresh` while the pool
    /// exists (once; needs a tokio runtime, else the next connect starts it).
    pub fn start_discovery(self: &Arc<Self>, lookup: &Arc<dyn Lookup>) {
        let Members::Dns { refresh, .. } = self.spec.members else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.discovering.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        let lookup = lookup.clone();
        runtime.spawn(async move {
            loop {
                match pool.upgrade() {
                    Some(p) => p.refresh(lookup.as_ref()).await,
                    None => return, // replaced by a reload
                }
                tokio::time::sleep(refresh).await;
            }
        });
    }

    /// Starts the pool's background tasks (once each; needs a tokio runtime): DNS refresh,
    /// and the health check when `health_interval` is set, each probe under `timeout`.
    pub fn start_tasks(self: &Arc<Self>, lookup: &Arc<dyn Lookup>, timeout: Duration) {
        self.start_discovery(lookup);
        let Some(interval) = self.spec.health_interval else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.checking.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        let lookup = lookup.clone();
        let timeout = timeout.min(interval);
        // Out until a probe answers, even if `eject` is shorter than the interval.
        let eject = self.spec.eject.max(interval);
        runtime.spawn(async move {
            loop {
                let Some(list) = pool.upgrade().map(|p| p.instances()) else {
                    return; // replaced by a reload
                };
                for i in list.iter() {
                    match probe(i, lookup.as_ref(), timeout).await {
                        Ok(()) => i.answered_probe(),
                        Err(e) => i.failed(now_ms(), eject, &format_args!("health check: {e}")),
                    }
                }
                drop(list);
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// Looks the name up once and applies the answer; a failed or empty answer keeps the
    /// last known instances (logged once until a lookup works again).
    pub async fn refresh(&self, lookup: &dyn Lookup) {
        let Members::Dns {
            host, port, path, ..
        } = &self.spec.members
        else {
            return;
        };
        let answer = lookup.lookup(host, *port).await;
        let backend = &*self.spec.id;
        let mut addrs = match answer {
            Ok(addrs) if !addrs.is_empty() => addrs,
            other => {
                let error = match other {
                    Err(e) => e.to_string(),
                    Ok(_) => "no addresses".to_owned(),
                };
                if !self.lookup_failing.swap(true, Ordering::Relaxed) {
                    let known = self.instances.load().len();
                    warn!(backend, name = %host, %error, known, "backend name lookup failed; keeping the last known instances");
                }
                return;
            }
        };
        if self.lookup_failing.swap(false, Ordering::Relaxed) {
            info!(backend, name = %host, "backend name lookup works again");
        }
        addrs.sort();
        addrs.dedup();
        if addrs.len() > MAX_INSTANCES {
            warn!(backend, name = %host, found = addrs.len(), kept = MAX_INSTANCES, "backend name has too many addresses; using the first");
            addrs.truncate(MAX_INSTANCES);
        }
        let Ok(_applying) = self.applying.lock() else {
            return;
        };
        let old = self.instances.load_full();
        let unchanged = old.len() == addrs.len()
            && old
                .iter()
                .all(|i| addrs.iter().any(|a| dns_addr(i) == Some(*a)));
        self.resolved.store(true, Ordering::Relaxed);
        if unchanged {
            return;
        }
        let list: Vec<Arc<Instance>> = addrs
            .iter()
            .map(|a| {
                old.iter()
                    .find(|i| dns_addr(i) == Some(*a))
                    .cloned()
                    .unwrap_or_else(|| {
                        let target = dns_target(&self.spec.id, host, *port, path, *a);
                        Arc::new(Instance::new(target, &self.metrics))
                    })
            })
            .collect();
        for gone in old
            .iter()
            .filter(|i| !list.iter().any(|n| Arc::ptr_eq(i, n)))
        {
            gone.retire();
        }
        let instances: Vec<&str> = list.iter().map(|i| &*i.addr).collect();
        info!(backend, name = %host, ?instances, "backend instances changed");
        self.instances.store(Arc::new(list));
    }
}

/// One health probe: a TCP connect to the instance under `timeout`.
async fn probe(i: &Instance, lookup: &dyn Lookup, timeout: Duration) -> std::io::Result<()> {
    let connect = async {
        let addr = match i.target.host.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, i.target.port),
            Err(_) => lookup
                .lookup(&i.target.host, i.target.port)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"))?,
        };
        tokio::net::TcpStream::connect(addr).await.map(drop)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

/// The socket address of a DNS-discovered instance (its host is an IP literal).
fn dns_addr(i: &Instance) -> Option<SocketAddr> {
    let ip = i.target.host.parse().ok()?;
    Some(SocketAddr::new(ip, i.target.port))
}

fn dns_target(id: &Arc<str>, host: &str, port: u16, path: &str, addr: SocketAddr) -> BackendTarget {
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    BackendTarget {
        id: id.clone(),
        url: format!("ws://{addr}{path}"),
        host: addr.ip().to_string(),
        port: addr.port(),
        host_header,
        path: path.to_owned(),
    }
}
