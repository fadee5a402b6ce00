//! TLS session tickets of `wss://` backends, kept for resumption: rustls's in-memory store,
//! with room for a burst of connects per backend.
//!
//! rustls's own store keeps 8 TLS 1.3 tickets per server name, each good for one connect.
//! The gateway opens a backend connection per client, and a burst of clients (a reconnect
//! wave after a restart, a balancer moving sessions over) makes dozens of connects to one
//! backend at once: past the 8th, each one made a full handshake, certificate check and
//! signature included, on both sides. Every handshake brings 2 new tickets (what rustls,
//! OpenSSL and Go servers send), so a store that keeps more catches up within a burst.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// TLS 1.3 tickets kept per backend name (a few hundred bytes each); the oldest go first.
pub const TICKETS_PER_SERVER: usize = 256;

/// Backend names whose tickets are kept; a new one past it replaces another.
pub const SERVERS: usize = 64;

/// What is kept for one backend name.
#[derive(Debug, Default)]
struct Server {
    /// The key exchange group it chose last (saves a round trip).
    kx_hint: Option<NamedGroup>,
    /// Its last TLS 1.2 session.
    tls12: Option<Tls12ClientSessionValue>,
    /// Its TLS 1.3 tickets, oldest first; each is handed out once.
    tls13: VecDeque<Tls13ClientSessionValue>,
}

/// The session store of the backend TLS client config (see the module docs).
#[derive(Debug, Default)]
pub struct Tickets {
    servers: Mutex<HashMap<ServerName<'static>, Server>>,
}

impl Tickets {
    /// The kept sessions, also after a panic elsewhere while they were held (each change
    /// under the lock is a whole one).
    fn lock(&self) -> MutexGuard<'_, HashMap<ServerName<'static>, Server>> {
        self.servers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `edit` to what is kept for `name`, making room for it if it is new.
    fn edit(&self, name: ServerName<'static>, edit: impl FnOnce(&mut Server)) {
        let mut servers = self.lock();
        if !servers.contains_key(&name) && servers.len() >= SERVERS {
            if let Some(other) = servers.keys().next().cloned() {
                servers.remove(&other);
            }
        }
        edit(servers.entry(name).or_default());
    }
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.edit(server_name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.lock().get(server_name).and_then(|s| s.kx_hint)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.edit(server_name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.lock().get(server_name).and_then(|s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        if let Some(s) = self.lock().get_mut(server_name) {
            s.tls12 = None;
        }
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.edit(server_name, |s| {
            if s.tls13.len() >= TICKETS_PER_SERVER {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // The newest: the one least likely to have expired.
        self.lock().get_mut(server_name)?.tls13.pop_back()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::InvalidDnsNameError;

    #[test]
    fn names_past_the_bound_replace_others_and_hints_are_per_name(
    ) -> Result<(), InvalidDnsNameError> {
        let store = Tickets::default();
        let name = |i: usize| ServerName::try_from(format!("b{i}.internal"));
        for i in 0..SERVERS + 10 {
            store.set_kx_hint(name(i)?, NamedGroup::X25519);
        }
        assert_eq!(store.lock().len(), SERVERS);
        assert_eq!(store.kx_hint(&name(SERVERS + 9)?), Some(NamedGroup::X25519));
        let unknown = ServerName::try_from("other.internal")?;
        assert_eq!(store.kx_hint(&unknown), None);
        assert!(store.take_tls13_ticket(&unknown).is_none());
        Ok(())
    }
}
