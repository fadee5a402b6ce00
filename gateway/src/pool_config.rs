//! One `[backends]` entry: a URL (the sample's form), a list of URLs, or a DNS name whose
//! addresses are the instances, with how new connections are spread over them.
//!
//! ```toml
//! [backends]
//! Backend_ABC = "ws://localhost:8081/backend/abc"
//! Backend_PQR = { urls = ["ws://10.0.0.2:8082/backend/pqr", "ws://10.0.0.3:8082/backend/pqr"], balance = "least_conn" }
//! Backend_XYZ = { dns = "xyz.backends.svc:8083", path = "/backend/xyz", refresh = "10s" }
//! ```

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::route::BackendTarget;

/// Most instances one pool holds (a longer list is refused; a DNS answer is cut). Bounds
/// the metric labels a pool creates and lets a connect attempt track tried instances in
/// one `u64`.
pub const MAX_INSTANCES: usize = 64;

/// Back-off of an instance that failed to connect, unless `eject` says otherwise.
pub const DEFAULT_EJECT: Duration = Duration::from_secs(10);

/// How often a DNS-discovered pool looks its name up, unless `refresh` says otherwise.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);

/// Instances tried for one client before it gets 502/504, unless `connect_attempts`
/// says otherwise (never more than the pool has).
pub const DEFAULT_ATTEMPTS: usize = 3;

/// How a new connection picks among healthy instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// The instance with the fewest live sessions (ties in turn).
    LeastConn,
    /// The instance the client's key ranks first ([`crate::affinity`], `hash_key`), so a
    /// user, room or device keeps landing on the same one.
    Hash,
}

impl Balance {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::Hash => "hash",
        }
    }
}

/// What the active health check asks of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthCheck {
    /// The WebSocket upgrade a session's connect makes (then a close): an instance that
    /// accepts TCP but answers 5xx or breaks the handshake counts as down, as it does for
    /// passive health. A 4xx answer is about the probe's request and counts as up.
    #[default]
    WebSocket,
    /// A TCP connect only.
    Tcp,
}

impl HealthCheck {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCheck::WebSocket => "websocket",
            HealthCheck::Tcp => "tcp",
        }
    }
}

/// Where a pool's instances come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// Fixed instances, one per configured URL.
    Urls(Vec<BackendTarget>),
    /// Every address `host:port` resolves to is an instance, looked up every `refresh`.
    Dns {
        /// Name to look up.
        host: String,
        /// Port of every instance.
        port: u16,
        /// Request target (path and query) sent to every instance.
        path: String,
        /// How often the name is looked up again.
        refresh: Duration,
        /// `tls = true`: every instance is connected to over TLS (`wss://`), its
        /// certificate checked against `host`.
        tls: bool,
    },
}

/// A validated `[backends]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// The backend ID (shared by every session to it, for logs).
    pub id: Arc<str>,
    /// The instances, or where to discover them.
    pub members: Members,
    /// How a healthy instance is picked.
    pub balance: Balance,
    /// `hash_key`, with `balance = "hash"`: what is hashed.
    pub hash_key: Option<crate::affinity::HashKey>,
    /// How long an instance that failed to connect takes no new connections (while a
    /// healthy one is left).
    pub eject: Duration,
    /// `connect_attempts`, when set: instances tried before the client sees 502/504.
    pub connect_attempts: Option<usize>,
    /// `health_interval`, when set: every instance is probed this often; one that fails
    /// is ejected, an ejected one that answers is readmitted.
    pub health_interval: Option<Duration>,
    /// `health_check`: what a probe asks.
    pub health_check: HealthCheck,
    /// `required_scopes`: scopes a token must hold for this backend, beyond
    /// `[auth] required_scopes` (missing one: 403).
    pub required_scopes: Vec<String>,
    /// `max_sessions`: the most sessions (and connects under way) one instance is given,
    /// as nginx's `max_conns` and HAProxy's `maxconn` on a server; with every instance
    /// at it, new clients get 503. `None`: no cap.
    pub max_sessions: Option<usize>,
    /// `tls_name`: the name its TLS instances' certificates are checked against (and
    /// sent as SNI when it is a DNS name), instead of each URL's host or the `dns` name;
    /// for instances reached by address whose certificates name a host.
    pub tls_name: Option<String>,
    /// `tls_ca`, `tls_cert`/`tls_key`: this pool's own `[backend_tls]` `ca`, and `cert`
    /// with `key` (files, relative to the config file's folder), in place of the global
    /// ones: backends under a CA of their own, or asking for another client certificate.
    pub tls_files: PoolTlsFiles,
    /// Written as one URL string, so [`PoolSpec::describe`] writes it back that way.
    pub single: bool,
}

/// A pool's own TLS files (see [`PoolSpec::tls_files`]); each `None` takes `[backend_tls]`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolTlsFiles {
    /// CAs its instances' certificates must chain to.
    pub ca: Option<std::path::PathBuf>,
    /// Certificate chain the gateway shows its instances, with `key`.
    pub cert: Option<std::path::PathBuf>,
    /// Private key of `cert`.
    pub key: Option<std::path::PathBuf>,
}

impl PoolTlsFiles {
    /// Whether the pool sets any of its own.
    pub fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// A problem with a `[backends]` entry: the key under the ID (`None`: the entry itself)
/// and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct SpecError {
    /// The key inside the entry's table, e.g. `balance`.
    pub key: Option<String>,
    /// What is wrong, one line.
    pub problem: String,
}

fn at(key: &str, problem: impl Into<String>) -> SpecError {
    SpecError {
        key: Some(key.to_owned()),
        problem: problem.into(),
    }
}

const KEYS: &str = "urls, dns, path, refresh, tls, tls_name, tls_ca, tls_cert, tls_key, balance, \
                    hash_key, eject, connect_attempts, health_interval, health_check, required_scopes, \
                    max_sessions";

impl PoolSpec {
    /// One instance at `target`: the sample's `ID = "ws://..."` form.
    pub fn single(target: BackendTarget) -> Self {
        Self {
            id: target.id.clone(),
            members: Members::Urls(vec![target]),
            balance: Balance::default(),
            hash_key: None,
            eject: DEFAULT_EJECT,
            connect_attempts: None,
            health_interval: None,
            health_check: HealthCheck::default(),
            required_scopes: Vec::new(),
            max_sessions: None,
            tls_name: None,
            tls_files: PoolTlsFiles::default(),
            single: true,
        }
    }

    /// Parses the value configured for `id`: a URL string or a table.
    pub fn parse(id: &str, value: &toml::Value) -> Result<Self, SpecError> {
        let whole = |problem: String| SpecError { key: None, problem };
        let table = match value {
            toml::Value::String(url) => return BackendTarget::parse(id, url).map(Self::single).map_err(whole),
            toml::Value::Table(t) => t,
            other => {
                return Err(whole(format!(
                    "expected a ws:// or wss:// URL or a table ({{ urls = [...] }} or {{ dns = \"host:port\" }}), found {}",
                    other.type_str()
                )))
            }
        };
        if let Some(unknown) = table
            .keys()
            .find(|k| !KEYS.split(", ").any(|known| known == k.as_str()))
        {
            let key: String = unknown.chars().filter(|c| !c.is_control()).collect();
            return Err(at(&key, format!("unknown key (expected one of {KEYS})")));
        }
        let string = |key: &'static str| -> Result<Option<&str>, SpecError> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.as_str())),
                Some(other) => Err(at(
                    key,
                    format!("expected a string, found {}", other.type_str()),
                )),
            }
        };
        let duration = |key: &'static str| -> Result<Option<Duration>, SpecError> {
            string(key)?
                .map(|s| crate::config::parse_duration(s).map_err(|e| at(key, e)))
                .transpose()
        };
        let balance = match string("balance")? {
            None | Some("round_robin") => Balance::RoundRobin,
            Some("least_conn") => Balance::LeastConn,
            Some("hash") => Balance::Hash,
            Some(other) => {
                return Err(at(
                    "balance",
                    format!("{other:?}: expected \"round_robin\", \"least_conn\" or \"hash\""),
                ))
            }
        };
        let hash_key = match (string("hash_key")?, balance) {
            (Some(text), Balance::Hash) => {
                Some(crate::affinity::HashKey::parse(text).map_err(|e| at("hash_key", e))?)
            }
            (None, Balance::Hash) => {
                return Err(at(
                    "hash_key",
                    format!(
                        "balance = \"hash\" needs hash_key: {}",
                        crate::affinity::FORMS
                    ),
                ))
            }
            (Some(_), _) => return Err(at("hash_key", "only with balance = \"hash\"")),
            (None, _) => None,
        };
        let eject = duration("eject")?.unwrap_or(DEFAULT_EJECT);
        let health_interval = duration("health_interval")?;
        if health_interval.is_some_and(|d| d < Duration::from_millis(100)) {
            return Err(at("health_interval", "must be at least 100ms"));
        }
        let health_check = match string("health_check")? {
            None | Some("websocket") => HealthCheck::WebSocket,
            Some("tcp") => HealthCheck::Tcp,
            Some(other) => {
                return Err(at(
                    "health_check",
                    format!("{other:?}: expected \"websocket\" or \"tcp\""),
                ))
            }
        };
        if table.contains_key("health_check") && health_interval.is_none() {
            return Err(at(
                "health_check",
                "only with health_interval (which turns the check on)",
            ));
        }
        let required_scopes = match table.get("required_scopes") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s)
                        if !s.is_empty() && !s.chars().any(|c| c.is_whitespace()) =>
                    {
                        Ok(s.clone())
                    }
                    _ => Err(at(
                        "required_scopes",
                        "expected scope names: non-empty strings without spaces",
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(at(
                    "required_scopes",
                    format!("expected an array of strings, found {}", other.type_str()),
                ))
            }
        };
        let connect_attempts = match table.get("connect_attempts") {
            None => None,
            Some(toml::Value::Integer(n)) if (1..=MAX_INSTANCES as i64).contains(n) => {
                usize::try_from(*n).ok()
            }
            Some(toml::Value::Integer(_)) => {
                return Err(at(
                    "connect_attempts",
                    format!("must be 1 to {MAX_INSTANCES}"),
                ))
            }
            Some(other) => {
                return Err(at(
                    "connect_attempts",
                    format!("expected an integer, found {}", other.type_str()),
                ))
            }
        };
        let max_sessions = match table.get("max_sessions") {
            None => None,
            Some(toml::Value::Integer(n)) if *n >= 1 => {
                Some(usize::try_from(*n).unwrap_or(usize::MAX))
            }
            Some(toml::Value::Integer(_)) => return Err(at("max_sessions", "must be at least 1")),
            Some(other) => {
                return Err(at(
                    "max_sessions",
                    format!("expected an integer, found {}", other.type_str()),
                ))
            }
        };
        let tls_name = string("tls_name")?
            .map(|name| {
                crate::route::certificate_name(name)
                    .map(|checked| (name.to_owned(), checked))
                    .map_err(|e| at("tls_name", e))
            })
            .transpose()?;
        let mut members = match (table.get("urls"), string("dns")?) {
            (Some(_), Some(_)) => return Err(at("dns", "give either urls or dns, not both")),
            (None, None) => {
                return Err(whole(
                    "a table entry needs urls = [...] or dns = \"host:port\"".into(),
                ))
            }
            (Some(urls), None) => {
                if table.contains_key("path") {
                    return Err(at("path", "only with dns (each URL carries its own path)"));
                }
                if table.contains_key("refresh") {
                    return Err(at("refresh", "only with dns"));
                }
                if table.contains_key("tls") {
                    return Err(at("tls", "only with dns (a URL says it with wss://)"));
                }
                Members::Urls(parse_urls(id, urls)?)
            }
            (None, Some(dns)) => {
                crate::route::check_id(id).map_err(whole)?;
                if dns.contains('@') {
                    return Err(at("dns", crate::route::NO_USERINFO));
                }
                let (host, port) = split_host_port(dns)
                    .ok_or_else(|| at("dns", format!("{dns:?}: expected host:port")))?;
                let path = string("path")?.unwrap_or("/");
                if !path.starts_with('/') || path.chars().any(|c| c.is_control() || c == ' ') {
                    return Err(at(
                        "path",
                        format!("{path:?}: must start with '/' and hold no spaces"),
                    ));
                }
                let refresh = duration("refresh")?.unwrap_or(DEFAULT_REFRESH);
                if refresh < Duration::from_millis(100) {
                    return Err(at("refresh", "must be at least 100ms"));
                }
                let tls = match table.get("tls") {
                    None => false,
                    Some(toml::Value::Boolean(b)) => *b,
                    Some(other) => {
                        return Err(at(
                            "tls",
                            format!("expected true or false, found {}", other.type_str()),
                        ))
                    }
                };
                Members::Dns {
                    host,
                    port,
                    path: path.to_owned(),
                    refresh,
                    tls,
                }
            }
        };
        // A DNS pool's instances are checked against its name, unless `tls_name` says
        // otherwise: that name must be one a certificate can hold.
        if let (
            Members::Dns {
                host, tls: true, ..
            },
            None,
        ) = (&members, &tls_name)
        {
            crate::route::certificate_name(host).map_err(|e| at("dns", e))?;
        }
        let tls_files = PoolTlsFiles {
            ca: string("tls_ca")?.map(Into::into),
            cert: string("tls_cert")?.map(Into::into),
            key: string("tls_key")?.map(Into::into),
        };
        match (&tls_files.cert, &tls_files.key) {
            (Some(_), None) => return Err(at("tls_key", "tls_cert needs tls_key too")),
            (None, Some(_)) => return Err(at("tls_cert", "tls_key needs tls_cert too")),
            _ => {}
        }
        let secure = match &members {
            Members::Urls(targets) => targets.iter().any(|t| t.tls.is_some()),
            Members::Dns { tls, .. } => *tls,
        };
        if !secure {
            for (key, set) in [
                ("tls_ca", tls_files.ca.is_some()),
                ("tls_cert", tls_files.cert.is_some()),
            ] {
                if set {
                    return Err(at(key, "only with wss:// URLs or dns with tls = true"));
                }
            }
        }
        if let Some((_, checked)) = &tls_name {
            match &mut members {
                Members::Urls(targets) if targets.iter().any(|t| t.tls.is_some()) => {
                    for t in targets.iter_mut().filter(|t| t.tls.is_some()) {
                        t.tls = Some(checked.clone());
                    }
                }
                Members::Dns { tls: true, .. } => {}
                _ => {
                    return Err(at(
                        "tls_name",
                        "only with wss:// URLs or dns with tls = true",
                    ))
                }
            }
        }
        Ok(Self {
            id: Arc::from(id),
            members,
            balance,
            hash_key,
            eject,
            connect_attempts,
            health_interval,
            health_check,
            required_scopes,
            max_sessions,
            tls_name: tls_name.map(|(name, _)| name),
            tls_files,
            single: false,
        })
    }

    /// Whether its instances are connected to over TLS (`wss://`, or `tls = true`).
    pub fn uses_tls(&self) -> bool {
        match &self.members {
            Members::Urls(targets) => targets.iter().any(|t| t.tls.is_some()),
            Members::Dns { tls, .. } => *tls,
        }
    }

    /// Instances tried for one client when the pool holds `instances`.
    pub fn attempts(&self, instances: usize) -> usize {
        self.connect_attempts
            .unwrap_or(DEFAULT_ATTEMPTS)
            .min(instances)
            .max(1)
    }

    /// The entry as a TOML value, as it would be written in `[backends]`.
    pub fn describe(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let secs = |d: Duration| q(&humantime::format_duration(d).to_string());
        let mut o = String::new();
        match &self.members {
            Members::Urls(targets) if self.single && targets.len() == 1 => {
                return q(&targets[0].url)
            }
            Members::Urls(targets) => {
                let urls: Vec<String> = targets.iter().map(|t| q(&t.url)).collect();
                let _ = write!(o, "{{ urls = [{}]", urls.join(", "));
            }
            Members::Dns {
                host,
                port,
                path,
                refresh,
                tls,
            } => {
                let dns = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                let _ = write!(
                    o,
                    "{{ dns = {}, path = {}, refresh = {}",
                    q(&dns),
                    q(path),
                    secs(*refresh)
                );
                if *tls {
                    o.push_str(", tls = true");
                }
            }
        }
        let _ = write!(
            o,
            ", balance = {}, eject = {}",
            q(self.balance.as_str()),
            secs(self.eject)
        );
        if let Some(key) = &self.hash_key {
            let _ = write!(o, ", hash_key = {}", q(&key.describe()));
        }
        if let Some(n) = self.connect_attempts {
            let _ = write!(o, ", connect_attempts = {n}");
        }
        if let Some(d) = self.health_interval {
            let _ = write!(
                o,
                ", health_interval = {}, health_check = {}",
                secs(d),
                q(self.health_check.as_str())
            );
        }
        if !self.required_scopes.is_empty() {
            let scopes: Vec<String> = self.required_scopes.iter().map(|s| q(s)).collect();
            let _ = write!(o, ", required_scopes = [{}]", scopes.join(", "));
        }
        if let Some(n) = self.max_sessions {
            let _ = write!(o, ", max_sessions = {n}");
        }
        if let Some(name) = &self.tls_name {
            let _ = write!(o, ", tls_name = {}", q(name));
        }
        for (key, file) in [
            ("tls_ca", &self.tls_files.ca),
            ("tls_cert", &self.tls_files.cert),
            ("tls_key", &self.tls_files.key),
        ] {
            if let Some(file) = file {
                let _ = write!(o, ", {key} = {}", q(&file.display().to_string()));
            }
        }
        o.push_str(" }");
        o
    }
}

fn parse_urls(id: &str, urls: &toml::Value) -> Result<Vec<BackendTarget>, SpecError> {
    let toml::Value::Array(list) = urls else {
        return Err(at(
            "urls",
            format!(
                "expected an array of ws:// or wss:// URLs, found {}",
                urls.type_str()
            ),
        ));
    };
    if list.is_empty() {
        return Err(at("urls", "at least one URL is required"));
    }
    if list.len() > MAX_INSTANCES {
        return Err(at("urls", format!("at most {MAX_INSTANCES} URLs")));
    }
    let mut targets: Vec<BackendTarget> = Vec::with_capacity(list.len());
    for v in list {
        let toml::Value::String(url) = v else {
            return Err(at(
                "urls",
                format!(
                    "expected ws:// or wss:// URL strings, found {}",
                    v.type_str()
                ),
            ));
        };
        let t = BackendTarget::parse(id, url).map_err(|p| at("urls", p))?;
        if targets.iter().any(|o| o.url == t.url) {
            return Err(at(
                "urls",
                format!("{:?} is listed twice", crate::route::without_userinfo(url)),
            ));
        }
        targets.push(t);
    }
    Ok(targets)
}

/// `host:port` or `[v6]:port`, with a non-empty host and a non-zero port.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    valid.then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PoolSpec, SpecError> {
        let v: toml::Table =
            toml::from_str(&format!("x = {text}")).map_err(|e| at("urls", e.to_string()))?;
        PoolSpec::parse("B", &v["x"])
    }

    #[test]
    fn the_three_forms_parse() -> Result<(), SpecError> {
        let one = parse("\"ws://localhost:8081/a\"")?;
        assert!(one.single && one.balance == Balance::RoundRobin && one.eject == DEFAULT_EJECT);
        let urls = parse("{ urls = [\"ws://127.0.0.2:1/a\", \"ws://127.0.0.3:1/a\"], balance = \"least_conn\", eject = \"300ms\", connect_attempts = 2, health_interval = \"1s\" }")?;
        assert!(matches!(&urls.members, Members::Urls(t) if t.len() == 2));
        assert_eq!(
            (urls.balance, urls.eject, urls.connect_attempts),
            (Balance::LeastConn, Duration::from_millis(300), Some(2))
        );
        let dns = parse("{ dns = \"abc.svc:8081\", path = \"/backend/abc\", refresh = \"2s\" }")?;
        assert_eq!(
            dns.members,
            Members::Dns {
                host: "abc.svc".into(),
                port: 8081,
                path: "/backend/abc".into(),
                refresh: Duration::from_secs(2),
                tls: false,
            }
        );
        let secure = parse("{ dns = \"abc.svc:8443\", tls = true }")?;
        assert!(matches!(secure.members, Members::Dns { tls: true, .. }));
        let named = parse(
            "{ urls = [\"wss://10.0.0.2:8443/a\", \"ws://10.0.0.3:80/a\"], tls_name = \"b.internal\" }",
        )?;
        let Members::Urls(targets) = &named.members else {
            return Err(at("urls", "expected urls"));
        };
        assert_eq!(
            targets
                .iter()
                .map(|t| t.tls.as_ref().map(|n| n.to_str().into_owned()))
                .collect::<Vec<_>>(),
            [Some("b.internal".to_owned()), None],
            "the name is for the wss:// instances only"
        );
        assert_eq!(
            urls.health_check,
            HealthCheck::WebSocket,
            "the default probe"
        );
        let tcp = parse(
            "{ urls = [\"ws://127.0.0.2:1/a\"], health_interval = \"1s\", health_check = \"tcp\" }",
        )?;
        assert_eq!(tcp.health_check, HealthCheck::Tcp);
        let scoped =
            parse("{ dns = \"abc.svc:8081\", required_scopes = [\"billing\", \"write\"] }")?;
        assert_eq!(scoped.required_scopes, ["billing", "write"]);
        assert!(urls.required_scopes.is_empty());
        for spec in [one, urls, dns, tcp, scoped, secure, named] {
            assert_eq!(parse(&spec.describe())?, spec, "{}", spec.describe());
        }
        Ok(())
    }

    #[test]
    fn errors_name_the_key() {
        let key = |text: &str| {
            parse(text)
                .err()
                .map(|e| (e.key.as_deref().map(str::to_owned), e.problem))
        };
        assert_eq!(
            key("{ urls = [], }").map(|k| k.0),
            Some(Some(String::from("urls")))
        );
        assert_eq!(
            key("{ urls = [\"ws://a:1/\"], balance = \"random\" }").map(|k| k.0),
            Some(Some(String::from("balance")))
        );
        assert_eq!(
            key("{ dns = \"nope\" }").map(|k| k.0),
            Some(Some(String::from("dns")))
        );
        assert_eq!(
            key("{ dns = \"a:1\", refresh = \"soon\" }").map(|k| k.0),
            Some(Some(String::from("refresh")))
        );
        assert_eq!(
            key("{ urls = [\"ws://a:1/\"], connect_attempts = 0 }").map(|k| k.0),
            Some(Some(String::from("connect_attempts")))
        );
        // Above the most instances a pool holds: refused, not quietly cut to it.
        assert_eq!(
            key("{ urls = [\"ws://a:1/\"], connect_attempts = 100 }").map(|k| k.0),
            Some(Some(String::from("connect_attempts")))
        );
        assert_eq!(
            key("{ urls = [\"ws://a:1/\"], path = \"/x\" }").map(|k| k.0),
            Some(Some(String::from("path")))
        );
        // A DNS pool over TLS checks certificates against its name: one no certificate
        // can hold is refused at load, not at every connect.
        assert_eq!(
            key("{ dns = \"-x-:1\", tls = true }").map(|k| k.0),
            Some(Some(String::from("dns")))
        );
        assert!(key("{ dns = \"-x-:1\", tls = true, tls_name = \"x\" }").is_none());
        for tls in [
            "{ urls = [\"wss://a:1/\"], tls = true }",
            "{ dns = \"a:1\", tls = 1 }",
        ] {
            assert_eq!(
                key(tls).map(|k| k.0),
                Some(Some(String::from("tls"))),
                "{tls}"
            );
        }
        for named in [
            "{ urls = [\"ws://a:1/\"], tls_name = \"a\" }",
            "{ dns = \"a:1\", tls_name = \"a\" }",
            "{ urls = [\"wss://a:1/\"], tls_name = \"not a name\" }",
        ] {
            assert_eq!(
                key(named).map(|k| k.0),
                Some(Some(String::from("tls_name"))),
                "{named}"
            );
        }
        assert_eq!(
            key("{ urls = [\"ws://a:1/\", \"ws://a:1/\"] }").map(|k| k.0),
            Some(Some(String::from("urls")))
        );
        assert_eq!(
            key("{ urls = [\"ws://a:1/\"], health_interval = \"1s\", health_check = \"http\" }")
                .map(|k| k.0),
            Some(Some(String::from("health_check")))
        );
        for scopes in ["\"billing\"", "[\"bil ling\"]", "[\"\"]", "[1]"] {
            assert_eq!(
                key(&format!(
                    "{{ urls = [\"ws://a:1/\"], required_scopes = {scopes} }}"
                ))
                .map(|k| k.0),
                Some(Some(String::from("required_scopes"))),
                "{scopes}"
            );
        }
        let alone = key("{ urls = [\"ws://a:1/\"], health_check = \"tcp\" }");
        assert!(
            alone.as_ref().is_some_and(
                |(k, p)| k.as_deref() == Some("health_check") && p.contains("health_interval")
            ),
            "{alone:?}"
        );
        let unknown = key("{ urls = [\"ws://a:1/\"], weight = 2 }");
        assert!(
            unknown
                .as_ref()
                .is_some_and(|(k, p)| k.as_deref() == Some("weight") && p.contains("unknown")),
            "{unknown:?}"
        );
        assert!(key("{ balance = \"least_conn\" }").is_some());
        assert!(key("3").is_some());
    }

    #[test]
    fn a_hash_pool_needs_its_key_and_round_trips() -> Result<(), SpecError> {
        let spec = parse("{ urls = [\"ws://a:1/\", \"ws://b:1/\"], balance = \"hash\", hash_key = \"claim:sub\" }")?;
        let key = Some(crate::affinity::HashKey::Claim("sub".into()));
        assert_eq!((spec.balance, &spec.hash_key), (Balance::Hash, &key));
        let again = parse(&spec.describe())?;
        assert_eq!((again.balance, again.hash_key), (Balance::Hash, key));
        for (entry, problem) in [
            (
                "{ urls = [\"ws://a:1/\"], balance = \"hash\" }",
                "needs hash_key",
            ),
            (
                "{ urls = [\"ws://a:1/\"], hash_key = \"ip\" }",
                "only with balance",
            ),
            (
                "{ urls = [\"ws://a:1/\"], balance = \"hash\", hash_key = \"cookie:a\" }",
                "expected \"ip\"",
            ),
        ] {
            let err = parse(entry).err();
            assert!(
                err.as_ref().is_some_and(
                    |e| e.key.as_deref() == Some("hash_key") && e.problem.contains(problem)
                ),
                "{entry}: {err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_pools_tls_files_parse_in_pairs_on_tls_pools_and_round_trip() -> Result<(), SpecError> {
        let spec = parse(
            "{ dns = \"a:1\", tls = true, tls_ca = \"ca.pem\", tls_cert = \"c.pem\", tls_key = \"k.pem\" }",
        )?;
        let want = PoolTlsFiles {
            ca: Some("ca.pem".into()),
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
        };
        assert_eq!(spec.tls_files, want);
        assert_eq!(parse(&spec.describe())?.tls_files, want);
        assert!(!parse("\"wss://a:1/\"")?.tls_files.any());
        for (entry, key) in [
            ("{ urls = [\"wss://a:1/\"], tls_key = \"k\" }", "tls_cert"),
            ("{ urls = [\"wss://a:1/\"], tls_cert = \"c\" }", "tls_key"),
            ("{ urls = [\"ws://a:1/\"], tls_ca = \"ca\" }", "tls_ca"),
            (
                "{ dns = \"a:1\", tls_cert = \"c\", tls_key = \"k\" }",
                "tls_cert",
            ),
            ("{ urls = [\"wss://a:1/\"], tls_ca = 1 }", "tls_ca"),
        ] {
            assert_eq!(
                parse(entry).err().map(|e| e.key),
                Some(Some(key.to_owned())),
                "{entry}"
            );
        }
        Ok(())
    }

    #[test]
    fn max_sessions_is_a_positive_integer_and_round_trips() -> Result<(), SpecError> {
        let spec = parse("{ urls = [\"ws://a:1/\"], max_sessions = 500 }")?;
        assert_eq!(spec.max_sessions, Some(500));
        assert_eq!(parse(&spec.describe())?.max_sessions, Some(500));
        assert_eq!(parse("\"ws://a:1/\"")?.max_sessions, None);
        for bad in ["0", "-3", "\"500\""] {
            let got = parse(&format!(
                "{{ urls = [\"ws://a:1/\"], max_sessions = {bad} }}"
            ));
            assert_eq!(
                got.err().map(|e| e.key),
                Some(Some(String::from("max_sessions"))),
                "max_sessions = {bad}"
            );
        }
        Ok(())
    }

    #[test]
    fn attempts_never_exceed_the_instances() -> Result<(), SpecError> {
        let spec = parse("{ urls = [\"ws://a:1/\"], connect_attempts = 5 }")?;
        assert_eq!(
            (spec.attempts(1), spec.attempts(4), spec.attempts(9)),
            (1, 4, 5)
        );
        assert_eq!(parse("\"ws://a:1/\"")?.attempts(10), DEFAULT_ATTEMPTS);
        Ok(())
    }
}
