//! Routing: the `ID` header names a backend; the table maps it to where to connect.
//!
//! The table sits behind an atomic pointer swap so a reload replaces it without ever
//! blocking a lookup on the connection path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// One backend: where the gateway opens its `ws://` connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTarget {
    /// The ID clients name in the `ID` header (shared by every session to it, for logs).
    pub id: Arc<str>,
    /// The configured URL, for logs.
    pub url: String,
    /// Host to resolve and connect to.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `Host` header value sent to the backend.
    pub host_header: String,
    /// Request target: path and query.
    pub path: String,
}

impl BackendTarget {
    /// Parses a `ws://host[:port]/path` URL configured for `id`.
    pub fn parse(id: &str, url: &str) -> Result<Self, String> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("backend ID must be non-empty visible ASCII".into());
        }
        let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        match parsed.scheme() {
            "ws" => {}
            "wss" => {
                return Err(format!(
                    "{url:?}: wss:// backends are not supported; use ws://"
                ))
            }
            other => return Err(format!("{url:?}: scheme must be ws://, not {other}://")),
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("{url:?}: no host")),
        };
        let port = parsed.port().unwrap_or(80);
        let host_header = match (parsed.host(), parsed.port()) {
            (Some(url::Host::Ipv6(ip)), Some(p)) => format!("[{ip}]:{p}"),
            (Some(url::Host::Ipv6(ip)), None) => format!("[{ip}]"),
            (_, Some(p)) => format!("{host}:{p}"),
            (_, None) => host.clone(),
        };
        let mut path = parsed.path().to_owned();
        if let Some(q) = parsed.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(Self {
            id: Arc::from(id),
            url: url.to_owned(),
            host,
            port,
            host_header,
            path,
        })
    }
}

/// An immutable snapshot of the routes.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: HashMap<Box<str>, Arc<BackendTarget>>,
}

impl RouteTable {
    /// Builds a table from the configured backends.
    pub fn new(backends: &BTreeMap<String, BackendTarget>) -> Self {
        let routes = backends
            .iter()
            .map(|(id, t)| (Box::from(id.as_str()), Arc::new(t.clone())))
            .collect();
        Self { routes }
    }

    /// The backend for `id`, if there is one.
    pub fn get(&self, id: &str) -> Option<&Arc<BackendTarget>> {
        self.routes.get(id)
    }
}

/// The live route table, swappable while connections use it.
#[derive(Debug)]
pub struct Router {
    table: ArcSwap<RouteTable>,
}

impl Router {
    /// A router serving `table`.
    pub fn new(table: RouteTable) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
        }
    }

    /// The backend for `id` in the current table.
    pub fn lookup(&self, id: &str) -> Option<Arc<BackendTarget>> {
        self.table.load().get(id).cloned()
    }

    /// Replaces the table; lookups already under way finish on the old one.
    pub fn replace(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_path_and_query() -> Result<(), String> {
        let t = BackendTarget::parse("B", "ws://localhost:8081/backend/abc?x=1")?;
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("localhost", 8081, "/backend/abc?x=1")
        );
        assert_eq!(t.host_header, "localhost:8081");
        let v6 = BackendTarget::parse("B", "ws://[::1]:9/")?;
        assert_eq!(
            (v6.host.as_str(), v6.host_header.as_str()),
            ("::1", "[::1]:9")
        );
        assert!(BackendTarget::parse("B", "http://x/").is_err());
        assert!(BackendTarget::parse("B", "wss://x/").is_err());
        Ok(())
    }

    #[test]
    fn replace_changes_lookups() -> Result<(), String> {
        let mut m = BTreeMap::new();
        m.insert("A".to_owned(), BackendTarget::parse("A", "ws://a:1/")?);
        let r = Router::new(RouteTable::new(&m));
        assert!(r.lookup("A").is_some());
        m.clear();
        m.insert("B".to_owned(), BackendTarget::parse("B", "ws://b:1/")?);
        r.replace(RouteTable::new(&m));
        assert!(r.lookup("A").is_none() && r.lookup("B").is_some());
        Ok(())
    }
}
