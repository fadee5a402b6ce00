//! A pool's background work: DNS discovery (look the name up every `refresh`, follow
//! the answer, keep the last one when a lookup fails) and the optional active health
//! check (every instance probed every `health_interval`: the WebSocket upgrade a session
//! makes, or a TCP connect).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::{now_ms, Instance, Pool};
use crate::batch::FrameWriter;
use crate::forward::{send_close, CloseMsg};
use crate::pool_config::{HealthCheck, Members, MAX_INSTANCES};
use crate::resolve::Lookup;
use crate::route::BackendTarget;
use crate::wsclient::{self, ClientRequest, HandshakeError};

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
    /// and the health check when `health_interval` is set, each probe under `timeout`,
    /// and puts `tls` in force for its `wss://` instances. A pool kept across a reload is
    /// called again: its probes and connects take the new `timeout` and `tls`.
    pub fn start_tasks(
        self: &Arc<Self>,
        lookup: &Arc<dyn Lookup>,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) {
        self.probe_timeout_ms.store(
            u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.tls.store(tls);
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
        let check = self.spec.health_check;
        runtime.spawn(async move {
            loop {
                // Rounds start every `interval`, however long a silent instance's probe
                // took (at most `timeout`, which is at most `interval`): the others are
                // probed as often as configured.
                let next_round = tokio::time::Instant::now() + interval;
                let Some((list, timeout, eject, tls)) = pool.upgrade().map(|p| {
                    let ms = p.probe_timeout_ms.load(Ordering::Relaxed);
                    let timeout = Duration::from_millis(ms).min(interval);
                    // Out until a probe answers, even if `eject` is shorter than the wait
                    // for the next verdict: the next round starts `interval` after this one
                    // started (at most that after this probe failed) and takes up to
                    // `timeout` itself.
                    let eject = p.spec.eject.max(interval + 2 * timeout);
                    (p.instances(), timeout, eject, p.tls())
                }) else {
                    return; // replaced by a reload
                };
                // All at once: a round takes one probe's time, however many are silent.
                let mut probes = tokio::task::JoinSet::new();
                for i in list.iter() {
                    let (i, lookup, tls) = (i.clone(), lookup.clone(), tls.clone());
                    probes.spawn(async move {
                        match probe(&i, check, tls, lookup.as_ref(), timeout).await {
                            Ok(()) => i.answered_probe(),
                            // The gateway's own shortage says nothing of the instance.
                            Err(e) if crate::backend::out_of_local_resources(&e) => {
                                tracing::debug!(instance = &*i.addr, error = %e, "health check skipped: out of descriptors or local ports");
                            }
                            Err(e) => i.failed(now_ms(), eject, &format_args!("health check: {e}")),
                        }
                    });
                }
                drop(list);
                while probes.join_next().await.is_some() {}
                tokio::time::sleep_until(next_round).await;
            }
        });
    }

    /// Looks the name up once and applies the answer; a failed or empty answer keeps the
    /// last known instances (logged once until a lookup works again).
    pub async fn refresh(&self, lookup: &dyn Lookup) {
        let Members::Dns {
            host,
            port,
            path,
            tls,
            ..
        } = &self.spec.members
        else {
            return;
        };
        // The name TLS instances' certificates are checked against (checked when the
        // config was loaded).
        let tls_name = match tls
            .then(|| crate::route::certificate_name(self.spec.tls_name.as_deref().unwrap_or(host)))
            .transpose()
        {
            Ok(name) => name,
            Err(error) => {
                warn!(backend = &*self.spec.id, %error, "backend name cannot be checked against a certificate");
                return;
            }
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
                        let target =
                            dns_target(&self.spec.id, host, *port, path, tls_name.as_ref(), *a);
                        self.take_back_retired(&target)
                            .unwrap_or_else(|| Arc::new(Instance::new(target, &self.metrics)))
                    })
            })
            .collect();
        let gone: Vec<Arc<Instance>> = old
            .iter()
            .filter(|i| !list.iter().any(|n| Arc::ptr_eq(i, n)))
            .cloned()
            .collect();
        for i in &gone {
            i.retire();
        }
        self.keep_retired(gone.into_iter());
        let instances: Vec<&str> = list.iter().map(|i| &*i.addr).collect();
        info!(backend, name = %host, ?instances, "backend instances changed");
        self.instances.store(Arc::new(list));
    }
}

/// One health probe under `timeout`, to every address of the instance at once (up if one
/// answers): a TCP connect, then for [`HealthCheck::WebSocket`] the upgrade (see
/// [`upgrade`]), after the TLS handshake with `tls` for a `wss://` instance.
async fn probe(
    i: &Instance,
    check: HealthCheck,
    tls: Option<Arc<rustls::ClientConfig>>,
    lookup: &dyn Lookup,
    timeout: Duration,
) -> std::io::Result<()> {
    let connect = async {
        let addrs = match i.target.host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, i.target.port)],
            Err(_) => lookup.lookup(&i.target.host, i.target.port).await?,
        };
        // Every address at once, up if one answers: sessions move an address that takes
        // connections and never answers to the back, so one such address must not keep
        // the whole instance out.
        let mut probes = tokio::task::JoinSet::new();
        for addr in addrs {
            let (target, tls) = (i.target.clone(), tls.clone());
            probes.spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                match (check, &target.tls) {
                    (HealthCheck::Tcp, _) => Ok(()),
                    (HealthCheck::WebSocket, None) => upgrade(tcp, &target).await,
                    (HealthCheck::WebSocket, Some(name)) => {
                        let stream = crate::backend_tls::handshake(tls.as_ref(), name, tcp)
                            .await
                            .map_err(std::io::Error::other)?;
                        upgrade(stream, &target).await
                    }
                }
            });
        }
        let mut last = None;
        while let Some(done) = probes.join_next().await {
            match done {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = Some(e),
                Err(e) => last = Some(std::io::Error::other(e)),
            }
        }
        Err(last
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses")))
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer in time",
        )),
    }
}

/// The upgrade a session's connect makes to `target`: as for passive health, a 101 or a
/// 4xx answer (about the probe's request, such as a missing credential) means up; any
/// other status (a 5xx, a 2xx or 3xx from something that is not a WebSocket server), a
/// broken handshake or silence, down. After a 101 the probe closes the session as a
/// client should (see [`close`]), on its own task, so that the verdict does not wait.
async fn upgrade<S>(mut stream: S, target: &BackendTarget) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let req = ClientRequest {
        host: &target.host_header,
        path: &target.path,
        protocols: None,
        headers: &[("User-Agent", "wsgate-health-check")],
        refusal_body: false,
    };
    match wsclient::handshake(&mut stream, &req).await {
        Ok(_) => {
            tokio::spawn(close(stream));
            Ok(())
        }
        Err(HandshakeError::Refused { status, .. })
            if crate::backend::about_the_request(status) =>
        {
            Ok(())
        }
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// Ends a probe's session: a close (1000), then whatever the backend still sends is read
/// and dropped until it closes (for at most [`CLOSE_WAIT`]), so that the backend sees a
/// clean close rather than a reset.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    use tokio::io::AsyncReadExt;
    let drain = async {
        // Masked, as a client's frames must be: the writer a session's backend side uses.
        let mut writer = FrameWriter::new(&mut stream, fastwebsockets::Role::Client, 64);
        send_close(
            &mut writer,
            CloseMsg {
                code: 1000,
                reason: "",
            },
        )
        .await?;
        writer.shutdown().await?;
        let mut sink = [0u8; 512];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
}

/// How long a probe's session is given to close after the probe's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The socket address of a DNS-discovered instance (its host is an IP literal).
fn dns_addr(i: &Instance) -> Option<SocketAddr> {
    let ip = i.target.host.parse().ok()?;
    Some(SocketAddr::new(ip, i.target.port))
}

fn dns_target(
    id: &Arc<str>,
    host: &str,
    port: u16,
    path: &str,
    tls_name: Option<&ServerName<'static>>,
    addr: SocketAddr,
) -> BackendTarget {
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    BackendTarget {
        id: id.clone(),
        url: format!(
            "{}://{addr}{path}",
            if tls_name.is_some() { "wss" } else { "ws" }
        ),
        host: addr.ip().to_string(),
        port: addr.port(),
        host_header,
        path: path.to_owned(),
        // The certificate is checked against the name looked up (or `tls_name`), not the
        // address.
        tls: tls_name.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PoolMetrics;
    use crate::pool_config::PoolSpec;
    use crate::resolve::SystemLookup;

    /// The TLS names of a DNS pool's instances after a lookup of `localhost`.
    async fn names(entry: &str) -> Result<Vec<(String, Option<String>)>, String> {
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("e = {entry}"))
            .map_err(|e| e.to_string())?
            .get("e")
            .cloned()
            .ok_or("no entry")?;
        let spec = PoolSpec::parse("B", &value).map_err(|e| e.problem)?;
        let pool = Pool::new(spec, &PoolMetrics::default(), None);
        pool.refresh(&SystemLookup).await;
        Ok(pool
            .instances()
            .iter()
            .map(|i| {
                let tls = i.target.tls.as_ref().map(|n| n.to_str().into_owned());
                (i.target.url.clone(), tls)
            })
            .collect())
    }

    #[tokio::test]
    async fn a_tls_dns_pool_checks_its_instances_against_the_name_or_tls_name() -> Result<(), String>
    {
        let plain = names("{ dns = \"localhost:8443\" }").await?;
        assert!(!plain.is_empty(), "localhost did not resolve");
        assert!(plain
            .iter()
            .all(|(url, tls)| url.starts_with("ws://") && tls.is_none()));
        let secure = names("{ dns = \"localhost:8443\", tls = true }").await?;
        assert!(secure
            .iter()
            .all(|(url, tls)| url.starts_with("wss://") && tls.as_deref() == Some("localhost")));
        let named =
            names("{ dns = \"localhost:8443\", tls = true, tls_name = \"b.internal\" }").await?;
        assert!(named
            .iter()
            .all(|(_, tls)| tls.as_deref() == Some("b.internal")));
        Ok(())
    }
}
