//! Routing: the `ID` header names a backend; the table maps it to where to connect.
//!
//! Each ID names a [`Pool`] of instances (one for the sample's `ID = "ws://..."` form).
//! The table sits behind an atomic pointer swap so a reload replaces it without ever
//! blocking a lookup on the connection path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;

use crate::metrics::PoolMetrics;
use crate::pool::{Instance, Pool};
use crate::pool_config::PoolSpec;

/// One backend: where the gateway opens its `ws://` or `wss://` connection.
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
    /// `wss://`: the name the backend's certificate must be valid for (the URL's host,
    /// also sent as SNI when it is a DNS name). `None`: plain `ws://`.
    pub tls: Option<ServerName<'static>>,
}

/// `name` as a name a backend certificate is checked against: a DNS name or an IP
/// address, checked once when the config is loaded rather than at every connect.
pub fn certificate_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("{name:?}: not a DNS name or an IP address a certificate can name"))
}

/// Checks a backend ID: an HTTP token (RFC 9110 section 5.6.2), as it travels in the
/// `ID` header. That also keeps it safe as a metric label value, which the metrics
/// encoder writes as it is (a `"` or `\` would break every scrape).
pub fn check_id(id: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if id.is_empty() || !id.bytes().all(tchar) {
        return Err(format!(
            "backend ID {id:?} must be a non-empty HTTP token: letters, digits and !#$%&'*+-.^_`|~"
        ));
    }
    Ok(())
}

/// Why a user name or password in a configured URL (or host name) is refused: nothing
/// sends it, and the URL is logged and printed by check-config, so it would only leak.
pub const NO_USERINFO: &str =
    "a user name or password is not supported (it would not be sent, and it is logged)";

/// Refuses a URL that carries a user name or password, naming it as `shown` (see
/// [`without_userinfo`]).
pub fn refuse_userinfo(parsed: &url::Url, shown: &str) -> Result<(), String> {
    if parsed.username().is_empty() && parsed.password().is_none() {
        return Ok(());
    }
    Err(format!("{shown:?}: {NO_USERINFO}"))
}

/// `url` as it may be shown in an error or a log line: a `user:password@` in it (or
/// what looks like one, in a URL that does not parse) becomes `***@`.
pub fn without_userinfo(url: &str) -> String {
    let clean = |p: url::Url| {
        p.has_host() && p.username().is_empty() && p.password().is_none() && p.fragment().is_none()
    };
    if !url.contains('@') || url::Url::parse(url).is_ok_and(clean) {
        return url.to_owned();
    }
    // Anything up to the last `@`: a password may hold a `/`, `?` or `#` left unescaped,
    // which ends the authority early for a parser (the URL then does not parse, or parses
    // as another host and a fragment).
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    match rest.rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

impl BackendTarget {
    /// Parses a `ws://host[:port]/path` or `wss://host[:port]/path` URL configured for
    /// `id`.
    pub fn parse(id: &str, url: &str) -> Result<Self, String> {
        check_id(id)?;
        let shown = without_userinfo(url);
        let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL {shown:?}: {e}"))?;
        let secure = match parsed.scheme() {
            "ws" => false,
            "wss" => true,
            other => {
                return Err(format!(
                    "{shown:?}: scheme must be ws:// or wss://, not {other}://"
                ))
            }
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("{shown:?}: no host")),
        };
        refuse_userinfo(&parsed, &shown)?;
        // RFC 6455 section 3: no fragment in a WebSocket URI. A `#` in one is most often
        // a password's, unescaped, which made the part before it the host.
        if parsed.fragment().is_some() {
            return Err(format!(
                "{shown:?}: a WebSocket URL has no fragment (#...); write a # in it as %23"
            ));
        }
        // `url` leaves a scheme's default port out (`wss://h:443/` has none).
        let tls = secure
            .then(|| certificate_name(&host))
            .transpose()
            .map_err(|e| format!("{shown:?}: {e}"))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        if port == 0 {
            return Err(format!("{shown:?}: port 0 cannot be connected to"));
        }
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
            tls,
            host,
            port,
            host_header,
            path,
        })
    }
}

/// An immutable snapshot of the routes: backend ID -> its pool of instances.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: HashMap<Box<str>, Arc<Pool>>,
    /// Instances of IDs a reload removed that may still serve sessions: should the ID
    /// come back, they are taken back with them, counting against `max_sessions`.
    departed: HashMap<Box<str>, Vec<Arc<Instance>>>,
}

impl RouteTable {
    /// A table of one-instance pools, one per target (metrics registered nowhere).
    pub fn new(backends: &BTreeMap<String, BackendTarget>) -> Self {
        let specs = backends
            .iter()
            .map(|(id, t)| (id.clone(), PoolSpec::single(t.clone())))
            .collect();
        Self::from_specs(&specs, &PoolMetrics::default(), None)
    }

    /// Builds a table from the configured backends. Pools of `previous` (the table a
    /// reload replaces) whose entry did not change are kept as they are; changed ones
    /// keep the instances still configured, with their load and health.
    pub fn from_specs(
        specs: &BTreeMap<String, PoolSpec>,
        metrics: &PoolMetrics,
        previous: Option<&RouteTable>,
    ) -> Self {
        let departed_before = |id: &str| -> Vec<Arc<Instance>> {
            previous
                .and_then(|t| t.departed.get(id))
                .map(|d| d.to_vec())
                .unwrap_or_default()
        };
        let routes = specs
            .iter()
            .map(|(id, spec)| {
                let old = previous.and_then(|t| t.get(id));
                let pool = match old {
                    Some(old) if old.spec() == spec => old.clone(),
                    Some(old) => Arc::new(Pool::new(spec.clone(), metrics, Some(old))),
                    None => Arc::new(Pool::with_departed(
                        spec.clone(),
                        metrics,
                        None,
                        departed_before(id),
                    )),
                };
                (Box::from(id.as_str()), pool)
            })
            .collect();
        let mut departed = HashMap::new();
        if let Some(previous) = previous {
            let gone_ids = previous.departed.keys().chain(previous.routes.keys());
            for id in gone_ids.filter(|id| !specs.contains_key(&***id)) {
                let mut instances = departed_before(id);
                if let Some(pool) = previous.routes.get(id) {
                    instances.extend(pool.departing());
                }
                instances.retain(|i| i.live() > 0);
                if !instances.is_empty() {
                    departed.insert(id.clone(), instances);
                }
            }
        }
        Self { routes, departed }
    }

    /// The pool for `id`, if there is one.
    pub fn get(&self, id: &str) -> Option<&Arc<Pool>> {
        self.routes.get(id)
    }

    /// Every pool, in no particular order.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.routes.values()
    }

    /// Every backend ID it routes, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(|id| &**id)
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

    /// The pool for `id` in the current table.
    pub fn lookup(&self, id: &str) -> Option<Arc<Pool>> {
        self.table.load().get(id).cloned()
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Replaces the table; lookups already under way finish on the old one. Instances
    /// the new table drops are retired: they take no new connections, their open
    /// sessions go on.
    pub fn replace(&self, table: RouteTable) {
        let old = self.table.swap(Arc::new(table));
        let new = self.table.load();
        for pool in old.pools() {
            pool.retire_all_but(new.get(pool.id()).map(|p| &**p));
        }
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
        assert_eq!(t.tls, None);
        assert!(BackendTarget::parse("B", "http://x/").is_err());
        let secure = BackendTarget::parse("B", "wss://x/")?;
        assert_eq!((secure.port, secure.host_header.as_str()), (443, "x"));
        assert_eq!(secure.tls, Some(certificate_name("x")?));
        let ip = BackendTarget::parse("B", "wss://[::1]:8443/p")?;
        assert_eq!((ip.port, ip.tls), (8443, Some(certificate_name("::1")?)));
        assert_eq!(BackendTarget::parse("B", "ws://x/")?.port, 80);
        Ok(())
    }

    #[test]
    fn backend_ids_are_http_tokens() {
        for good in ["Backend_ABC", "pay.v2", "a-b~c|d"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        // A quote or backslash would also break the metrics output.
        for bad in ["", "Back\"end", "a\\b", "two words", "x,y", "caf\u{e9}"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert!(BackendTarget::parse("Back\"end", "ws://a:1/").is_err());
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
        assert_eq!(r.lookup("B").map(|p| p.instances().len()), Some(1));
        Ok(())
    }
}
