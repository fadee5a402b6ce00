//! Backend name resolution with a small cache.
//!
//! Looking a name up on every backend connect costs a resolver round trip and a file
//! descriptor per connect; under a connection storm that alone exhausted descriptors.
//! Addresses are cached for a short time (so DNS changes are still followed), the
//! address that last completed a connect is tried first (one that took the connection
//! and failed the handshake, last), and a failed refresh keeps serving the last
//! known addresses.
//!
//! The name service itself is a [`Lookup`]: the system resolver ([`SystemLookup`],
//! getaddrinfo, which honours `/etc/hosts`) in production, or one a test controls.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a [`Lookup`] returns: the addresses of a name, or why there are none.
pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// A name service: `host:port` to socket addresses.
///
/// Injectable so tests can change a name's answers mid-run and watch backend pools
/// follow; production uses [`SystemLookup`].
pub trait Lookup: Send + Sync + 'static {
    /// Every address `host` has, each with `port`.
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> LookupFuture<'a>;
}

/// The system resolver (tokio's `lookup_host`, i.e. getaddrinfo).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> LookupFuture<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// How long resolved addresses are used before looking the name up again.
pub const TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Entry {
    addrs: Vec<SocketAddr>,
    fetched: Instant,
}

/// Caches `host:port` lookups.
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), Entry>>,
    /// Where names are looked up.
    lookup: Arc<dyn Lookup>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::with_lookup(Arc::new(SystemLookup))
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `lookup` for names.
    pub fn with_lookup(lookup: Arc<dyn Lookup>) -> Self {
        Self {
            cache: Mutex::default(),
            lookup,
        }
    }

    /// The name service behind the cache (DNS-discovered pools ask it directly, on their
    /// own refresh period).
    pub fn lookup(&self) -> &Arc<dyn Lookup> {
        &self.lookup
    }

    /// The addresses of `host:port`, best first.
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let key = (host.to_owned(), port);
        let cached = self.cache.lock().ok().and_then(|c| c.get(&key).cloned());
        if let Some(entry) = &cached {
            if entry.fetched.elapsed() < TTL {
                return Ok(entry.addrs.clone());
            }
        }
        match self.lookup.lookup(host, port).await {
            Ok(mut addrs) => {
                // Keep the address that last worked in front.
                if let Some(first) = cached.as_ref().and_then(|e| e.addrs.first()) {
                    if let Some(i) = addrs.iter().position(|a| a == first) {
                        addrs.swap(0, i);
                    }
                }
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(
                        key,
                        Entry {
                            addrs: addrs.clone(),
                            fetched: Instant::now(),
                        },
                    );
                }
                Ok(addrs)
            }
            Err(e) => match cached {
                Some(entry) if !entry.addrs.is_empty() => Ok(entry.addrs),
                _ => Err(e),
            },
        }
    }

    /// Records that `addr` failed the connect after taking the connection (a handshake
    /// that broke or never came), so it is tried last next time.
    pub fn failed(&self, host: &str, port: u16, addr: SocketAddr) {
        if let Ok(mut c) = self.cache.lock() {
            if let Some(entry) = c.get_mut(&(host.to_owned(), port)) {
                if let Some(i) = entry.addrs.iter().position(|a| *a == addr) {
                    let addr = entry.addrs.remove(i);
                    entry.addrs.push(addr);
                }
            }
        }
    }

    /// Records that `addr` completed a connect, so it is tried first next time.
    pub fn worked(&self, host: &str, port: u16, addr: SocketAddr) {
        if let Ok(mut c) = self.cache.lock() {
            if let Some(entry) = c.get_mut(&(host.to_owned(), port)) {
                if let Some(i) = entry.addrs.iter().position(|a| *a == addr) {
                    entry.addrs.swap(0, i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_skip_lookup_and_names_are_cached_with_the_good_address_first(
    ) -> io::Result<()> {
        let r = Resolver::default();
        assert_eq!(
            r.resolve("127.0.0.1", 9).await?,
            vec![SocketAddr::from(([127, 0, 0, 1], 9))]
        );
        let first = r.resolve("localhost", 9).await?;
        assert!(!first.is_empty());
        let last = *first.last().unwrap_or(&first[0]);
        r.worked("localhost", 9, last);
        assert_eq!(r.resolve("localhost", 9).await?[0], last);
        r.failed("localhost", 9, last);
        assert_eq!(r.resolve("localhost", 9).await?.last(), Some(&last));
        Ok(())
    }
}
