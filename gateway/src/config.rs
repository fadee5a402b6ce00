//! Config.toml: parsing, defaults and validation, with errors that name the key and line.
//!
//! Parsing is separate from loading key and certificate files (done when the gateway is
//! built) so tests can build a config inline from a string.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::pool_config::PoolSpec;

/// The whole gateway configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the client listener binds and which path it serves.
    pub server: ServerConfig,
    /// Certificate chain and key for WSS.
    pub tls: TlsConfig,
    /// How `wss://` backends are trusted, and the certificate shown to them.
    pub backend_tls: BackendTlsConfig,
    /// How bearer tokens are checked.
    pub auth: AuthConfig,
    /// Backend ID -> its instances (one URL, a list, or a DNS name) and how to balance
    /// over them, in ID order.
    pub backends: BTreeMap<String, PoolSpec>,
    /// Size and count limits.
    pub limits: LimitsConfig,
    /// Timeouts of each stage.
    pub timeouts: TimeoutsConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// Browser-friendly credential sources.
    pub browser: BrowserConfig,
    /// The file named in messages (the loaded file, or `Config.toml` in the base folder).
    pub source: PathBuf,
    /// The file this was loaded from, which a reload re-reads.
    pub loaded_from: Option<PathBuf>,
}

/// `[browser]`: where browsers, which cannot set headers on a WebSocket, may put the
/// backend ID and the token. Every source is off unless named here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrowserConfig {
    /// Query parameter holding the backend ID when there is no `ID` header (e.g. `"id"`).
    pub id_query: Option<String>,
    /// Query parameter holding the token when there is no `Authorization` header (e.g.
    /// `"access_token"`). URLs end up in access logs and browser history: prefer the
    /// subprotocol form.
    pub token_query: Option<String>,
    /// Prefix of a `Sec-WebSocket-Protocol` entry carrying the token (e.g. `"bearer."`:
    /// the client offers `["chat", "bearer.<JWT>"]`). The entry is not offered to the
    /// backend.
    pub token_protocol_prefix: Option<String>,
    /// Web origins (`"https://app.example.com"`) whose pages may open sessions. A request
    /// carrying an `Origin` header (every browser's does) from anywhere else gets 403, as
    /// RFC 6455 (10.2) advises: a page on another site cannot use the gateway through a
    /// visitor's browser. Requests without `Origin` (other clients) are not affected.
    /// `"https://*.example.com"` allows the pages of every subdomain of `example.com` (not
    /// `example.com` itself), with that scheme and port. Empty: any origin.
    pub allowed_origins: Vec<String>,
    /// Cookie holding the token when no other source has one (e.g. `"wsgate_token"`), for
    /// pages on the same site as the gateway. Only with `allowed_origins`: a browser sends
    /// the cookie with requests from any page, so the origin check is what keeps other
    /// sites out. The cookie is not passed on to the backend.
    pub token_cookie: Option<String>,
}

impl BrowserConfig {
    /// Whether a request with this `Origin` header value (`None`: without one) may pass.
    /// Origins compare as the browser serializes them (scheme, host and port, lower case,
    /// default port left out).
    pub fn origin_allowed(&self, origin: Option<&[u8]>) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        let Some(origin) = origin else {
            return true;
        };
        let Some(origin) = std::str::from_utf8(origin).ok().and_then(serialized_origin) else {
            return false;
        };
        self.allowed_origins
            .iter()
            .any(|allowed| origin_matches(allowed, &origin))
    }
}

/// Marks a wildcard entry's subdomain part: `scheme://*.domain[:port]`.
const WILDCARD: &str = "://*.";

/// Whether the serialized `origin` is the serialized entry `allowed`, or one of the
/// subdomains a wildcard entry stands for.
fn origin_matches(allowed: &str, origin: &str) -> bool {
    let Some((scheme, domain_and_port)) = allowed.split_once(WILDCARD) else {
        return allowed == origin;
    };
    // `origin` is serialized, so what follows the scheme is the host and maybe `:port`.
    origin
        .strip_prefix(scheme)
        .and_then(|rest| rest.strip_prefix("://"))
        .and_then(|rest| rest.strip_suffix(domain_and_port))
        .and_then(|sub| sub.strip_suffix('.'))
        .is_some_and(|sub| !sub.is_empty() && !sub.contains(':'))
}

/// An `allowed_origins` entry as it is compared: the origin serialized as a browser sends
/// it, with a leading `*.` of a wildcard entry kept; `None` if it is neither.
fn allowed_origin_entry(text: &str) -> Option<String> {
    let Some((scheme, rest)) = text.trim().split_once(WILDCARD) else {
        // A `*` anywhere else is a wildcard misplaced, not a host to match literally.
        return (!text.contains('*'))
            .then(|| serialized_origin(text))
            .flatten();
    };
    // Serialized with a stand-in label (which also checks and normalises the domain: lower
    // case, IDNA), then the stand-in turned back into the wildcard. At least two labels
    // must stay under it: `*.com` would allow a whole top-level domain.
    const STAND_IN: &str = "wsgate-wildcard-label";
    let domain = rest.split([':', '/']).next().unwrap_or_default();
    if domain.contains('*') || !domain.contains('.') {
        return None;
    }
    let serialized = serialized_origin(&format!("{scheme}://{STAND_IN}.{rest}"))?;
    let (head, tail) = serialized.split_once(&format!("://{STAND_IN}."))?;
    Some(format!("{head}{WILDCARD}{tail}"))
}

/// `scheme://host[:port]` as a browser sends it in `Origin`, or `None` for anything that
/// is not an origin (a path, `null`, an opaque URL).
fn serialized_origin(text: &str) -> Option<String> {
    let url = url::Url::parse(text.trim()).ok()?;
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return None;
    }
    let origin = url.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

/// `[admin]`: the plain-HTTP admin listener (`/metrics`, `/healthz`, `/readyz`,
/// `POST /reload`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether to serve it.
    pub enabled: bool,
    /// Where it listens: keep it on loopback or a private network.
    pub listen: SocketAddr,
    /// A file holding a secret that `POST /reload`, `GET /sessions` and
    /// `POST /sessions/close` require as `Authorization: Bearer <secret>`, for an admin
    /// listener others can reach (in Kubernetes the kubelet's probes need it on the pod's
    /// address). `/metrics`, `/healthz` and `/readyz` stay open. Read at start and at
    /// every reload (a new secret in the file takes over with the reload).
    pub token_file: Option<PathBuf>,
    /// The secret `token_file` holds, read by [`crate::reload::build_parts`].
    #[serde(skip)]
    pub token: Option<AdminToken>,
    /// With `token_file`: a file holding a second secret that admits reads only
    /// (`GET /sessions`), for dashboards and on-call tools that must not reload or close
    /// sessions; with it, a write answers 403. Read as `token_file` is.
    pub read_token_file: Option<PathBuf>,
    /// The secret `read_token_file` holds.
    #[serde(skip)]
    pub read_token: Option<AdminToken>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            token_file: None,
            token: None,
            read_token_file: None,
            read_token: None,
        }
    }
}

/// The shortest admin secret taken: guessing one of 16 random characters is out of reach.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The admin listener's secret ([`AdminConfig::token_file`]); never shown.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl PartialEq for AdminToken {
    /// Whether two secrets are the same (for telling configs apart, not for requests:
    /// [`AdminToken::admits`] compares in constant time).
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl AdminToken {
    /// Reads the secret from `path`'s contents, surrounding whitespace left out: at least
    /// [`MIN_ADMIN_TOKEN_LEN`] visible ASCII characters, what a header carries.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let token = text.trim();
        if token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(format!(
                "{}: the secret must be at least {MIN_ADMIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)",
                path.display()
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{}: the secret must be visible ASCII characters only",
                path.display()
            ));
        }
        Ok(Self(token.into()))
    }

    /// Whether an `Authorization` header's value is `Bearer <this secret>`, compared in
    /// time that does not depend on where they differ.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(value) = authorization else {
            return false;
        };
        let Some(given) = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .and(value.get(7..))
        else {
            return false;
        };
        bool::from(given.ct_eq(self.0.as_bytes()))
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the WSS listener binds.
    pub listen: SocketAddr,
    /// The only path that is upgraded.
    pub path: String,
    /// Bind the listener with `SO_REUSEPORT`, so several gateway processes can listen on
    /// the same address and the kernel spreads new connections over them (one process
    /// per few thousand sessions when the open-file limit is low; rolling restarts).
    /// Read at start-up only.
    pub reuse_port: bool,
    /// Threads that serve connections, each running its own single-threaded runtime; a
    /// connection stays on the thread it was handed to for its whole life (no hand-offs
    /// between threads, as in nginx's and HAProxy's workers). 0: one per CPU the process
    /// may use. Read at start-up only.
    pub workers: usize,
    /// How the worker threads share the connections. Read at start-up only.
    pub threading: Threading,
    /// Every connection starts with a PROXY protocol header (v1 or v2), as a TCP load
    /// balancer sends it; the client address in it stands for the peer's everywhere
    /// (`X-Forwarded-For`, `max_connections_per_ip`, logs). A connection without one is
    /// closed. Read at start-up only.
    pub proxy_protocol: bool,
    /// With `proxy_protocol`: the balancers' addresses (`"10.0.0.0/8"`, `"192.0.2.7"`).
    /// A connection from anywhere else is closed before its header is read, so a client
    /// that reaches the port past the balancer cannot claim an address. Empty: any source.
    #[serde(deserialize_with = "nets::deserialize")]
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Pass the client's `permessage-deflate` offers to the backend and its acceptance
    /// back, so messages stay compressed end to end (the gateway forwards them as they
    /// are, never inflating them). Off: no extension is negotiated on either side.
    pub permessage_deflate: bool,
    /// A header that carries a fresh id for each upgrade request (a UUID): sent to the
    /// backend with its handshake, given back to the client with its answer (101 or
    /// refusal) and written on the gateway's log lines of the request and its session,
    /// so one connection can be followed through the client's, the gateway's and the
    /// backend's logs (Envoy's `x-request-id`, nginx's `$request_id`). A client's own
    /// header of that name is dropped. `None`: no id.
    pub request_id_header: Option<String>,
}

impl ServerConfig {
    /// Whether a connection from `ip` may send a PROXY protocol header.
    pub fn proxy_source_allowed(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.proxy_protocol_from.is_empty()
            || self.proxy_protocol_from.iter().any(|net| net.contains(&ip))
    }
}

/// `[server] threading`: how connections are spread over the worker threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threading {
    /// Each worker thread runs its own connections on a runtime of its own (nginx and
    /// HAProxy work this way): less CPU per message and lower median latency.
    #[default]
    PerWorker,
    /// One runtime whose threads take work from each other (tokio's multi-thread
    /// scheduler): a thread the kernel does not run for a while does not hold up its
    /// connections, so tail latency holds up better where the gateway shares its cores
    /// with other busy processes.
    Shared,
}

impl Threading {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Threading::PerWorker => "per_worker",
            Threading::Shared => "shared",
        }
    }
}

/// The most `[server] workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// The least `[timeouts]` `tls_handshake`, `header_read`, `backend_connect` and `close`
/// may be, and `idle` unless it is 0 (none).
const MIN_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(100);

/// The most `[auth] leeway_secs` may be: a day of clock skew is already far beyond any
/// clock worth trusting.
pub const MAX_LEEWAY_SECS: u64 = 24 * 3600;

impl ServerConfig {
    /// How many worker threads serve connections: `workers`, or one per CPU when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            path: "/gateway".into(),
            reuse_port: false,
            workers: 0,
            threading: Threading::PerWorker,
            proxy_protocol: false,
            proxy_protocol_from: Vec::new(),
            permessage_deflate: true,
            request_id_header: None,
        }
    }
}

/// `[tls]`: PEM files, relative to the config file's folder, the cipher suites and session
/// resumption.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// Cipher suites offered, in the gateway's order of preference, which then overrides
    /// the client's. Empty (the default): every suite rustls supports, and the client's
    /// order decides. Checked when the TLS config is built (start-up and reload).
    pub cipher_suites: Vec<String>,
    /// TLS 1.3 session tickets sent after each handshake (each resumes one reconnect
    /// without the certificate signature); 0 turns resumption off, TLS 1.2's too. Default
    /// 2, as rustls, OpenSSL (so nginx and HAProxy) send. The tickets are encrypted with
    /// keys made at start-up that rotate every 6 hours; clients hold them, the gateway
    /// keeps no state per ticket.
    pub session_tickets: usize,
    /// More certificates, each served to the clients whose server name (SNI) it holds (its
    /// subjectAltName DNS names, wildcards included) and whose signature schemes fit its
    /// key; `cert` goes to every other client. Several host names on one gateway, or one
    /// name with an ECDSA and an RSA certificate.
    pub certs: Vec<CertPair>,
    /// An OCSP response for `cert` (DER, as `openssl ocsp -respout` or an ACME client
    /// writes it), stapled to the handshakes that get `cert`, so clients learn it is not
    /// revoked without asking its CA. Checked when read (start-up and reload); stapled only
    /// until its nextUpdate. `None` (the default): nothing stapled.
    pub ocsp: Option<PathBuf>,
    /// Fetch an OCSP response for each certificate without an `ocsp` file from the
    /// responder its authorityInfoAccess names (`http://`), at start-up and then before
    /// the response in force goes stale, and staple it (nginx's `ssl_stapling on`).
    /// Default: off.
    pub ocsp_fetch: bool,
    /// With `ocsp_fetch`: the longest time between two fetches of a certificate's
    /// response (sooner when its nextUpdate comes sooner; a failed fetch is tried again
    /// after at most 5 minutes). Default 1 hour, as HAProxy's `ocsp-update`.
    #[serde(with = "humane")]
    pub ocsp_refresh: Duration,
    /// CAs a client's certificate must chain to (PEM). Set, clients authenticate with a
    /// certificate too (mutual TLS), besides the token; `None` (the default): no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether a client without a certificate is refused in the TLS
    /// handshake (`required`, the default) or let on to the token check (`optional`); a
    /// certificate it does present must chain to `client_ca` either way.
    pub client_cert: ClientCertMode,
    /// With `client_ca`: certificate revocation lists (PEM, one file, one or more CRLs): a
    /// client certificate they list is refused. Given, every client certificate's status
    /// must be known, so the file holds a CRL of each CA that issues them.
    pub client_crl: Option<PathBuf>,
    /// With `client_ca`: the request header that tells the backend which certificate the
    /// client presented (its hash, subject and names; see [`crate::client_cert`]). A
    /// client's own header of that name is dropped.
    pub client_cert_header: Option<String>,
}

/// `[tls] client_cert`: whether a client certificate is a must.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertMode {
    /// A client without a certificate fails the TLS handshake.
    #[default]
    Required,
    /// A client may present none; one it presents is checked.
    Optional,
}

impl ClientCertMode {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientCertMode::Required => "required",
            ClientCertMode::Optional => "optional",
        }
    }
}

/// A certificate chain and its key, PEM files relative to the config file's folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf.
    pub key: PathBuf,
    /// An OCSP response for this certificate, as `[tls] ocsp` is for `cert`.
    #[serde(default)]
    pub ocsp: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: "certs/server.crt".into(),
            key: "certs/server.key".into(),
            cipher_suites: Vec::new(),
            session_tickets: 2,
            certs: Vec::new(),
            ocsp: None,
            ocsp_fetch: false,
            ocsp_refresh: Duration::from_secs(3600),
            client_ca: None,
            client_cert: ClientCertMode::Required,
            client_crl: None,
            client_cert_header: None,
        }
    }
}

/// `[backend_tls]`: TLS toward `wss://` backends (a URL's scheme, or `tls = true` on a
/// DNS pool). PEM files, relative to the config file's folder.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// CAs a backend's certificate must chain to (a private CA, typically); `None`: the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// Certificate chain (leaf first) the gateway presents to backends that ask for one
    /// (mutual TLS); with `key`.
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    pub key: Option<PathBuf>,
}

/// `[auth]`: JWT validation settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required member of `aud`.
    pub audience: String,
    /// Accepted signature algorithms: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384.
    pub algorithms: Vec<String>,
    /// PEM public key that verifies signatures (not read when `jwks` is set).
    pub public_key: PathBuf,
    /// A JSON Web Key Set file (what identity providers publish at their `jwks_uri`):
    /// tokens are verified with the key their `kid` names, so keys can be rotated by
    /// adding the new one, reloading, and removing the old one later.
    pub jwks: Option<PathBuf>,
    /// The URL of an identity provider's JSON Web Key Set (its `jwks_uri`), instead of
    /// `jwks` or `public_key`: fetched at start (a start that cannot fetch it fails), at
    /// every reload, every `jwks_refresh`, and a few seconds after a token names a key the
    /// set lacks, so the provider's own rotations are followed without a reload.
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again; a failed fetch keeps the keys in force.
    #[serde(with = "humane")]
    pub jwks_refresh: Duration,
    /// PEM file of the CA(s) to trust for an `https://` `jwks_url`; without it, the
    /// system's trusted roots.
    pub jwks_ca: Option<PathBuf>,
    /// Claim that carries scopes (space-separated string or array of strings).
    pub scope_claim: String,
    /// Claim that names whom a token is for (a string or a number): what
    /// `[limits] max_sessions_per_subject` counts by and the admin listener's `/sessions`
    /// show and filter as `subject`. `sub` by default; e.g. `oid` (Microsoft Entra ID),
    /// `client_id`, or a tenant claim to cap sessions per tenant.
    pub subject_claim: String,
    /// Scopes every token must hold.
    pub required_scopes: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most [`MAX_LEEWAY_SECS`]).
    pub leeway_secs: u64,
    /// End a session when its token expires (`exp` + `leeway_secs`): the client gets
    /// close 1008 "token expired", the backend 1001. Off: a token is checked at the
    /// upgrade only (as nginx, HAProxy and Envoy do), and a session outlives it.
    pub close_at_expiry: bool,
    /// `[auth.forward_claims]`: header name = claim name. Verified claims are sent to the
    /// backend in these headers (arrays joined with spaces); client-sent headers of the
    /// same names are dropped, so a backend can trust them.
    pub forward_claims: BTreeMap<String, String>,
}

impl AuthConfig {
    /// Whether `[auth.forward_claims]` writes a header named `name` (in any case or
    /// spelling a backend would take for it).
    pub fn forwards_header(&self, name: &str) -> bool {
        self.forward_claims
            .keys()
            .any(|h| crate::backend::same_name(h, name))
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "wso2".into(),
            audience: "ballerina".into(),
            algorithms: vec!["RS256".into()],
            public_key: "certs/jwt-public.pem".into(),
            jwks: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_ca: None,
            scope_claim: "scp".into(),
            subject_claim: "sub".into(),
            required_scopes: vec!["admin".into()],
            leeway_secs: 5,
            close_at_expiry: false,
            forward_claims: BTreeMap::new(),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most client connections open at once; more are refused with 503.
    pub max_connections: usize,
    /// Most client connections open at once from one IP address (0: no per-IP limit).
    pub max_connections_per_ip: usize,
    /// Most new connections per second from one IP address, in bursts of as many (0: no
    /// limit); more get 429. A client stuck in a reconnect loop then costs each backend
    /// a few connects a second, not one per attempt.
    pub max_connection_rate_per_ip: u32,
    /// Most sessions open at once whose tokens name one subject (`sub`), in this process;
    /// more get 503 before any backend is asked (0: no limit). One user, or one leaked
    /// token, cannot hold thousands of backend connections.
    pub max_sessions_per_subject: usize,
    /// Leading bits of an IPv6 client address that the two per-IP limits count as one
    /// client (64 by default: a host commonly has a whole /64 to pick addresses from;
    /// 128 counts each address). IPv4 addresses are always counted whole.
    pub ipv6_prefix: u8,
    /// Largest WebSocket message accepted from either side, in bytes, counted across its
    /// fragments. Over it, the sender gets close 1009 and the other side 1001.
    pub max_message_size: usize,
    /// Largest single WebSocket frame payload, in bytes (1009 past it, as above).
    pub max_frame_size: usize,
    /// Largest HTTP request head accepted from a client, in bytes (at least 8192).
    pub max_header_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_ip: 0,
            max_connection_rate_per_ip: 0,
            max_sessions_per_subject: 0,
            ipv6_prefix: crate::limits::DEFAULT_IPV6_PREFIX,
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            max_header_bytes: 16 << 10,
        }
    }
}

/// `[timeouts]`: humane durations such as `"10s"` or `"500ms"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TLS handshake with a client.
    #[serde(with = "humane")]
    pub tls_handshake: Duration,
    /// Reading the client's HTTP request head.
    #[serde(with = "humane")]
    pub header_read: Duration,
    /// TCP connect plus WebSocket handshake with the backend (then 504).
    #[serde(with = "humane")]
    pub backend_connect: Duration,
    /// How long the other side gets to answer a forwarded close.
    #[serde(with = "humane")]
    pub close: Duration,
    /// A side that sends nothing for half of this is pinged; if it still sends nothing
    /// (not even the pong) for the other half, both sides are closed with 1001.
    /// `"0s"` disables keepalive and idle closing.
    #[serde(with = "humane")]
    pub idle: Duration,
    /// On SIGTERM/Ctrl-C: how long open sessions get to finish their close handshakes
    /// before the process exits anyway.
    #[serde(with = "humane")]
    pub drain: Duration,
    /// On SIGTERM/Ctrl-C: close the open sessions a few at a time over this period, the
    /// oldest first, rather than all at once, so that their clients' reconnects reach the
    /// other gateways and the backends as a trickle, not a storm (HAProxy's
    /// `close-spread-time`). `"0s"`: all at once. Shorter than `drain`.
    #[serde(with = "humane")]
    pub drain_spread: Duration,
    /// The longest a session lives: at a moment drawn between 90 % and 100 % of it (so
    /// that sessions opened together do not all end together), both sides get 1001
    /// "session time limit" and the client reconnects — to wherever the load balancer
    /// now sends it, which spreads long-lived sessions over gateways added since.
    /// `"0s"`: no limit.
    #[serde(with = "humane")]
    pub max_session: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            tls_handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            backend_connect: Duration::from_secs(10),
            close: Duration::from_secs(5),
            idle: Duration::from_secs(120),
            drain: Duration::from_secs(10),
            drain_spread: Duration::ZERO,
            max_session: Duration::ZERO,
        }
    }
}

/// Address ranges: `"10.0.0.0/8"`, or a single address (`"192.0.2.7"`, `"::1"`).
mod nets {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<ipnet::IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| {
                text.parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        serde::de::Error::custom(format!(
                            "{text:?}: expected an address or a range such as \"10.0.0.0/8\""
                        ))
                    })
            })
            .collect()
    }
}

/// The longest duration a setting takes: far beyond any use, and far from where adding
/// it to the clock would overflow. 100 of humantime's years (365.25 days each), so that
/// `"100years"` is within the bound the refusal names.
const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A duration setting such as `"10s"` or `"2m"`, at most 100 years.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("{text:?}: too long (at most 100 years)"));
    }
    Ok(d)
}

mod humane {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    backend_tls: BackendTlsConfig,
    #[serde(default)]
    auth: AuthConfig,
    backends: BTreeMap<String, toml::Value>,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    timeouts: TimeoutsConfig,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    browser: BrowserConfig,
}

/// A config that cannot be used: which file, line and key, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line of the offending key, when known.
    pub line: Option<usize>,
    /// Dotted key, e.g. `tls.cert`, when known.
    pub key: Option<String>,
    /// What is wrong, one line.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl Config {
    /// Reads and validates the file at `path`; relative paths in it resolve against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            problem: format!("cannot read config file: {e}"),
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
        let mut config = Self::from_toml_str(&text, &base).map_err(|e| ConfigError {
            file: path.to_owned(),
            ..e
        })?;
        config.source = path.to_owned();
        config.loaded_from = Some(path.to_owned());
        Ok(config)
    }

    /// Parses and validates TOML text; relative paths resolve against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let source = base_dir.join("Config.toml");
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of_offset(text, s.start));
            let key = line.and_then(|l| dotted_key_at(text, l));
            ConfigError {
                file: source.clone(),
                line,
                key,
                problem: one_line(e.message(), "invalid TOML"),
            }
        })?;
        let err = |section: &str, key: &str, problem: String| ConfigError {
            file: source.clone(),
            line: find_key_line(text, section, key),
            key: Some(format!("{section}.{key}")),
            problem,
        };

        let mut backends = BTreeMap::new();
        for (id, value) in &raw.backends {
            let spec = PoolSpec::parse(id, value).map_err(|e| {
                let section = format!("backends.{id}");
                let (line, key) = match &e.key {
                    Some(key) => (
                        find_key_line(text, &section, key)
                            .or_else(|| find_key_line(text, "backends", id)),
                        format!("{section}.{key}"),
                    ),
                    None => (
                        find_key_line(text, "backends", id)
                            .or_else(|| find_key_line(text, &section, "")),
                        section,
                    ),
                };
                ConfigError {
                    file: source.clone(),
                    line,
                    key: Some(one_line(&key, "backends")),
                    problem: e.problem,
                }
            })?;
            backends.insert(id.clone(), spec);
        }
        if backends.is_empty() {
            return Err(err(
                "backends",
                "",
                "at least one backend is required".into(),
            ));
        }
        if raw.server.workers > MAX_WORKERS {
            return Err(err(
                "server",
                "workers",
                format!("at most {MAX_WORKERS} (0: one per CPU)"),
            ));
        }
        if !raw.server.proxy_protocol_from.is_empty() && !raw.server.proxy_protocol {
            return Err(err(
                "server",
                "proxy_protocol_from",
                "only with proxy_protocol = true".into(),
            ));
        }
        let mut allowed_origins = Vec::with_capacity(raw.browser.allowed_origins.len());
        for origin in &raw.browser.allowed_origins {
            let Some(serialized) = allowed_origin_entry(origin) else {
                return Err(err(
                    "browser",
                    "allowed_origins",
                    format!(
                        "{origin:?}: expected an origin, scheme://host[:port], or scheme://*.domain[:port]"
                    ),
                ));
            };
            allowed_origins.push(serialized);
        }
        raw.browser.allowed_origins = allowed_origins;
        if let Some(name) = &raw.browser.token_cookie {
            if raw.browser.allowed_origins.is_empty() {
                return Err(err(
                    "browser",
                    "token_cookie",
                    "only with allowed_origins: a browser sends the cookie with requests from any site".into(),
                ));
            }
            let token_char = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
            if name.is_empty() || !name.chars().all(token_char) {
                return Err(err(
                    "browser",
                    "token_cookie",
                    format!("{name:?}: not a cookie name"),
                ));
            }
        }
        if !raw.server.path.starts_with('/') {
            return Err(err("server", "path", "must start with '/'".into()));
        }
        if raw.auth.algorithms.is_empty() {
            return Err(err(
                "auth",
                "algorithms",
                "at least one algorithm is required".into(),
            ));
        }
        for header_name in raw.auth.forward_claims.keys() {
            if let Some(problem) =
                added_header_problem(header_name, "name the claim's header otherwise (X-Auth-…)")
            {
                return Err(err("auth.forward_claims", header_name, problem));
            }
        }
        if let Some(header_name) = &raw.server.request_id_header {
            let problem = added_header_problem(header_name, "name it otherwise (X-Request-Id)")
                .or_else(|| {
                    let taken = raw.auth.forwards_header(header_name)
                        || raw
                            .tls
                            .client_cert_header
                            .as_deref()
                            .is_some_and(|h| crate::backend::same_name(h, header_name));
                    taken.then(|| {
                        "also a header of auth.forward_claims or tls.client_cert_header".into()
                    })
                });
            if let Some(problem) = problem {
                return Err(err("server", "request_id_header", problem));
            }
        }
        if let Some(header_name) = &raw.tls.client_cert_header {
            let problem = if raw.tls.client_ca.is_none() {
                Some("needs tls.client_ca: without it no client presents a certificate".into())
            } else if let Some(problem) =
                added_header_problem(header_name, "name it otherwise (X-Client-Cert)")
            {
                Some(problem)
            } else if raw.auth.forwards_header(header_name) {
                Some("also a header of auth.forward_claims".into())
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(err("tls", "client_cert_header", problem));
            }
        }
        if raw.tls.client_crl.is_some() && raw.tls.client_ca.is_none() {
            return Err(err(
                "tls",
                "client_crl",
                "needs tls.client_ca: revocation lists are of client certificates".into(),
            ));
        }
        if raw.tls.client_cert == ClientCertMode::Optional && raw.tls.client_ca.is_none() {
            return Err(err(
                "tls",
                "client_cert",
                "needs tls.client_ca: the CAs a client's certificate must chain to".into(),
            ));
        }
        for alg in &raw.auth.algorithms {
            crate::auth::parse_algorithm(alg).map_err(|p| err("auth", "algorithms", p))?;
        }
        if let Some(url) = &raw.auth.jwks_url {
            if raw.auth.jwks.is_some() {
                return Err(err(
                    "auth",
                    "jwks_url",
                    "give jwks (a file) or jwks_url, not both".into(),
                ));
            }
            crate::jwks_fetch::check_url(url).map_err(|p| err("auth", "jwks_url", p))?;
        }
        if raw.auth.leeway_secs > MAX_LEEWAY_SECS {
            // Larger, `now - leeway` is before 1970 and every token counts as expired.
            return Err(err(
                "auth",
                "leeway_secs",
                format!("at most {MAX_LEEWAY_SECS} (a day)"),
            ));
        }
        if raw.auth.subject_claim.is_empty() {
            return Err(err("auth", "subject_claim", "must name a claim".into()));
        }
        for (section, key, interval, min) in [
            (
                "tls",
                "ocsp_refresh",
                raw.tls.ocsp_refresh,
                crate::ocsp_fetch::MIN_REFRESH,
            ),
            (
                "auth",
                "jwks_refresh",
                raw.auth.jwks_refresh,
                crate::jwks_fetch::MIN_REFRESH,
            ),
        ] {
            if interval < min {
                let problem = format!("at least {}", humantime::format_duration(min));
                return Err(err(section, key, problem));
            }
        }
        if raw.limits.ipv6_prefix > 128 {
            return Err(err(
                "limits",
                "ipv6_prefix",
                "an IPv6 prefix has at most 128 bits".into(),
            ));
        }
        if raw.limits.max_header_bytes < 8192 {
            return Err(err(
                "limits",
                "max_header_bytes",
                "must be at least 8192".into(),
            ));
        }
        for (key, size) in [
            ("max_message_size", raw.limits.max_message_size),
            ("max_frame_size", raw.limits.max_frame_size),
        ] {
            if size == 0 {
                return Err(err("limits", key, "must be at least 1".into()));
            }
        }
        for (key, bound) in [
            ("tls_handshake", raw.timeouts.tls_handshake),
            ("header_read", raw.timeouts.header_read),
            ("backend_connect", raw.timeouts.backend_connect),
        ] {
            // Unlike the others, these cannot be "0s" for none: a handshake or a request
            // head with no bound would let a silent connection hold its place for ever.
            // Below a tenth of a second they would refuse clients and backends that are
            // merely a network away.
            if bound < MIN_HANDSHAKE_TIMEOUT {
                return Err(err(
                    "timeouts",
                    key,
                    format!(
                        "must be at least {}",
                        humantime::format_duration(MIN_HANDSHAKE_TIMEOUT)
                    ),
                ));
            }
        }
        // A close answer takes a round trip: with less, the gateway would answer every
        // close itself before the other side could. An idle timeout so short that half
        // of it rounds to nothing would silently be none.
        if raw.timeouts.close < MIN_HANDSHAKE_TIMEOUT {
            return Err(err(
                "timeouts",
                "close",
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_HANDSHAKE_TIMEOUT)
                ),
            ));
        }
        if !raw.timeouts.idle.is_zero() && raw.timeouts.idle < MIN_HANDSHAKE_TIMEOUT {
            return Err(err(
                "timeouts",
                "idle",
                format!(
                    "must be \"0s\" (none) or at least {}",
                    humantime::format_duration(MIN_HANDSHAKE_TIMEOUT)
                ),
            ));
        }
        // The last sessions told must still have time to close before the drain ends.
        if !raw.timeouts.drain_spread.is_zero() && raw.timeouts.drain_spread >= raw.timeouts.drain {
            return Err(err(
                "timeouts",
                "drain_spread",
                format!(
                    "must be shorter than drain ({}), which also bounds the closes it spreads",
                    humantime::format_duration(raw.timeouts.drain)
                ),
            ));
        }
        let (admin, server) = (raw.admin.listen, raw.server.listen);
        if raw.admin.enabled && listeners_overlap(admin, server) {
            return Err(err(
                "admin",
                "listen",
                format!("{admin} overlaps server.listen {server}: give the admin listener a port of its own"),
            ));
        }
        if raw.admin.read_token_file.is_some() && raw.admin.token_file.is_none() {
            return Err(err(
                "admin",
                "read_token_file",
                "needs token_file: without it, POST /reload and /sessions/close would be open to anyone".into(),
            ));
        }
        if raw.limits.max_connections == 0 {
            return Err(err(
                "limits",
                "max_connections",
                "must be at least 1".into(),
            ));
        }
        let resolve = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base_dir.join(p)
            }
        };
        let mut tls = raw.tls;
        tls.cert = resolve(&tls.cert);
        tls.key = resolve(&tls.key);
        tls.client_ca = tls.client_ca.as_ref().map(resolve);
        tls.client_crl = tls.client_crl.as_ref().map(resolve);
        tls.ocsp = tls.ocsp.as_ref().map(resolve);
        for pair in &mut tls.certs {
            pair.cert = resolve(&pair.cert);
            pair.key = resolve(&pair.key);
            pair.ocsp = pair.ocsp.as_ref().map(resolve);
        }
        for spec in backends.values_mut() {
            let files = &mut spec.tls_files;
            for file in [&mut files.ca, &mut files.cert, &mut files.key] {
                *file = file.as_ref().map(resolve);
            }
        }
        let mut backend_tls = raw.backend_tls;
        backend_tls.ca = backend_tls.ca.as_ref().map(resolve);
        backend_tls.cert = backend_tls.cert.as_ref().map(resolve);
        backend_tls.key = backend_tls.key.as_ref().map(resolve);
        let mut auth = raw.auth;
        auth.public_key = resolve(&auth.public_key);
        auth.jwks = auth.jwks.as_ref().map(resolve);
        auth.jwks_ca = auth.jwks_ca.as_ref().map(resolve);
        let mut admin = raw.admin;
        admin.token_file = admin.token_file.as_ref().map(resolve);
        admin.read_token_file = admin.read_token_file.as_ref().map(resolve);

        Ok(Config {
            server: raw.server,
            tls,
            backend_tls,
            auth,
            backends,
            limits: raw.limits,
            timeouts: raw.timeouts,
            admin,
            browser: raw.browser,
            loaded_from: None,
            source,
        })
    }

    /// An error about `section.key` of this config, located in its source file if readable.
    pub fn error(&self, section: &str, key: &str, problem: impl Into<String>) -> ConfigError {
        let text = std::fs::read_to_string(&self.source).unwrap_or_default();
        // A key of a backend's inline table is on the backend's own line.
        let entry_line = || {
            let id = section.strip_prefix("backends.")?;
            find_key_line(&text, "backends", id)
        };
        ConfigError {
            file: self.source.clone(),
            line: find_key_line(&text, section, key).or_else(entry_line),
            key: Some(format!("{section}.{key}")),
            problem: problem.into(),
        }
    }
}

impl Config {
    /// The effective config as TOML: defaults filled in, paths resolved. Holds no secret:
    /// keys are only named by path.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        // A TOML string literal (escapes as TOML wants them, not as Rust's Debug writes them).
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
            )
        };
        let secs = |d: Duration| q(&humantime::format_duration(d).to_string());
        let opt = |name: &str, v: &Option<String>| match v.as_deref() {
            Some(v) => format!("{name} = {}", q(v)),
            None => format!("# {name} is off"),
        };
        let _ = writeln!(
            o,
            "[server]\nlisten = {}\npath = {}\nreuse_port = {}\nworkers = {}{}\nthreading = {}\nproxy_protocol = {}\nproxy_protocol_from = {}\npermessage_deflate = {}\n{}\n",
            q(&self.server.listen.to_string()),
            q(&self.server.path),
            self.server.reuse_port,
            self.server.workers,
            if self.server.workers == 0 {
                format!(" # one per CPU: {}", self.server.worker_count())
            } else {
                String::new()
            },
            q(self.server.threading.as_str()),
            self.server.proxy_protocol,
            list(&self.server.proxy_protocol_from.iter().map(ToString::to_string).collect::<Vec<_>>()),
            self.server.permessage_deflate,
            opt("request_id_header", &self.server.request_id_header)
        );
        let _ = writeln!(
            o,
            "[tls]\ncert = {}\nkey = {}\n{}\nocsp_fetch = {}\nocsp_refresh = {}\ncipher_suites = {}\nsession_tickets = {}\ncerts = [{}]\n{}\n",
            q(&self.tls.cert.display().to_string()),
            q(&self.tls.key.display().to_string()),
            opt(
                "ocsp",
                &self.tls.ocsp.as_ref().map(|p| p.display().to_string())
            ),
            self.tls.ocsp_fetch,
            secs(self.tls.ocsp_refresh),
            list(&self.tls.cipher_suites),
            self.tls.session_tickets,
            self.tls
                .certs
                .iter()
                .map(|p| format!(
                    "{{ cert = {}, key = {}{} }}",
                    q(&p.cert.display().to_string()),
                    q(&p.key.display().to_string()),
                    p.ocsp
                        .as_ref()
                        .map(|o| format!(", ocsp = {}", q(&o.display().to_string())))
                        .unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(", "),
            match &self.tls.client_ca {
                None => "# client_ca is off: no client certificate asked for".to_owned(),
                Some(ca) => format!(
                    "client_ca = {}\nclient_cert = {}\n{}\n{}",
                    q(&ca.display().to_string()),
                    q(self.tls.client_cert.as_str()),
                    opt(
                        "client_crl",
                        &self.tls.client_crl.as_ref().map(|p| p.display().to_string())
                    ),
                    opt("client_cert_header", &self.tls.client_cert_header)
                ),
            }
        );
        let path = |p: &Path| q(&p.display().to_string());
        let bt = &self.backend_tls;
        let _ = writeln!(
            o,
            "[backend_tls]\n{}\n{}\n{}\n",
            bt.ca
                .as_deref()
                .map_or("# ca: the system's roots".into(), |c| format!(
                    "ca = {}",
                    path(c)
                )),
            bt.cert
                .as_deref()
                .map_or("# cert is off".into(), |c| format!("cert = {}", path(c))),
            bt.key
                .as_deref()
                .map_or("# key is off".into(), |c| format!("key = {}", path(c))),
        );
        let a = &self.auth;
        // Where the keys come from, besides `public_key`: a key set file or URL.
        let mut key_set = String::new();
        if let Some(j) = &a.jwks {
            let _ = writeln!(key_set, "jwks = {}", path(j));
        }
        if let Some(u) = &a.jwks_url {
            let _ = writeln!(
                key_set,
                "jwks_url = {}\njwks_refresh = {}",
                q(u),
                secs(a.jwks_refresh)
            );
            if let Some(c) = &a.jwks_ca {
                let _ = writeln!(key_set, "jwks_ca = {}", path(c));
            }
        }
        let _ = writeln!(
            o,
            "[auth]\nissuer = {}\naudience = {}\nalgorithms = {}\npublic_key = {}\n{key_set}scope_claim = {}\nsubject_claim = {}\nrequired_scopes = {}\nleeway_secs = {}\nclose_at_expiry = {}\n",
            q(&a.issuer), q(&a.audience), list(&a.algorithms), path(&a.public_key),
            q(&a.scope_claim), q(&a.subject_claim), list(&a.required_scopes), a.leeway_secs, a.close_at_expiry
        );
        if !a.forward_claims.is_empty() {
            let _ = writeln!(o, "[auth.forward_claims]");
            for (h, c) in &a.forward_claims {
                let _ = writeln!(o, "{h} = {}", q(c));
            }
            o.push('\n');
        }
        let l = &self.limits;
        let _ = writeln!(
            o,
            "[limits]\nmax_connections = {}\nmax_connections_per_ip = {}\nmax_connection_rate_per_ip = {}\nmax_sessions_per_subject = {}\nipv6_prefix = {}\nmax_message_size = {}\nmax_frame_size = {}\nmax_header_bytes = {}\n",
            l.max_connections, l.max_connections_per_ip, l.max_connection_rate_per_ip, l.max_sessions_per_subject, l.ipv6_prefix, l.max_message_size, l.max_frame_size, l.max_header_bytes
        );
        let t = &self.timeouts;
        let _ = writeln!(
            o,
            "[timeouts]\ntls_handshake = {}\nheader_read = {}\nbackend_connect = {}\nclose = {}\nidle = {}\ndrain = {}\ndrain_spread = {}\nmax_session = {}\n",
            secs(t.tls_handshake), secs(t.header_read), secs(t.backend_connect), secs(t.close), secs(t.idle), secs(t.drain), secs(t.drain_spread), secs(t.max_session)
        );
        let _ = writeln!(
            o,
            "[admin]\nenabled = {}\nlisten = {}\n{}\n",
            self.admin.enabled,
            q(&self.admin.listen.to_string()),
            match (&self.admin.token_file, &self.admin.read_token_file) {
                (Some(p), Some(r)) =>
                    format!("token_file = {}\nread_token_file = {}", path(p), path(r)),
                (Some(p), None) => format!("token_file = {}", path(p)),
                _ => "# token_file is off".into(),
            }
        );
        let b = &self.browser;
        let _ = writeln!(
            o,
            "[browser]\n{}\n{}\n{}\nallowed_origins = {}\n{}\n",
            opt("id_query", &b.id_query),
            opt("token_query", &b.token_query),
            opt("token_protocol_prefix", &b.token_protocol_prefix),
            list(&b.allowed_origins),
            opt("token_cookie", &b.token_cookie)
        );
        let _ = writeln!(o, "[backends]");
        for (id, spec) in &self.backends {
            let _ = writeln!(o, "{} = {}", toml_key(id), spec.describe());
        }
        o
    }
}

/// `id` as a TOML key: bare when it can be, quoted otherwise.
fn toml_key(id: &str) -> String {
    let bare = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        id.to_owned()
    } else {
        toml::Value::String(id.to_owned()).to_string()
    }
}

/// `section.key` for a `key = value` line (1-based), when the line is one.
fn dotted_key_at(text: &str, line: usize) -> Option<String> {
    let mut section = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            section = name.trim().to_owned();
        }
        if i + 1 == line {
            let (key, _) = t.split_once('=')?;
            let key = key.trim().trim_matches('"');
            if key.chars().all(char::is_control) {
                return None;
            }
            let dotted = if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            };
            // The section header is raw text too: neither part may break the line.
            return Some(dotted.chars().filter(|c| !c.is_control()).collect());
        }
    }
    None
}

/// `text` as one printable line (control characters become spaces), or `fallback`.
fn one_line(text: &str, fallback: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        fallback.to_owned()
    } else {
        line
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

/// Why `name` cannot name a header the gateway adds to a backend's upgrade request (a
/// claim's, the client certificate's), if it cannot; `instead` says what to do.
fn added_header_problem(name: &str, instead: &str) -> Option<String> {
    if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Some("not a valid header name".into());
    }
    (!crate::backend::claim_header_allowed(name)).then(|| {
        format!("a header the gateway writes itself or one of the connection's own; {instead}")
    })
}

/// The line on which `key` is set inside `[section]`, if it is.
fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    if let Some((array, item)) = key.split_once('[') {
        return find_item_key_line(text, section, array, item)
            .or_else(|| find_key_line(text, section, array));
    }
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            current = name.trim().to_owned();
            if key.is_empty() && current == section {
                return Some(i + 1);
            }
            continue;
        }
        if current == section && !key.is_empty() {
            let k = t.split('=').next().unwrap_or("").trim().trim_matches('"');
            if k == key {
                return Some(i + 1);
            }
        }
    }
    None
}

/// The line of `field` in the `n`th `[[section.array]]` table, for a key `array[n].field`
/// (`item` is `n].field`); `None` when the array is written inline (`array = [{ … }]`).
fn find_item_key_line(text: &str, section: &str, array: &str, item: &str) -> Option<usize> {
    let (n, field) = item.split_once("].")?;
    let n: usize = n.parse().ok()?;
    let header = format!("[[{section}.{array}]]");
    let (mut seen, mut inside) = (0, false);
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == header && {
                seen += 1;
                seen == n + 1
            };
            continue;
        }
        if inside && t.split('=').next().unwrap_or("").trim().trim_matches('"') == field {
            return Some(i + 1);
        }
    }
    None
}

/// Whether listeners on `a` and `b` would claim the same connections: the same port (not
/// 0, which picks a free one) and addresses that meet. An IPv4-mapped IPv6 address is its
/// IPv4 address; `[::]` takes IPv4 too (sockets are dual-stack unless the system says
/// otherwise), `0.0.0.0` only IPv4.
fn listeners_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |wild: IpAddr, other: IpAddr| {
        wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4() || other.is_unspecified())
    };
    x == y || covers(x, y) || covers(y, x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_secret_is_read_trimmed_and_taken_only_as_a_whole_bearer_token() {
        let dir = std::env::temp_dir().join(format!("wsgate-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("token");
        std::fs::write(&file, "  0123456789abcdef\n").expect("write");
        let token = AdminToken::read(&file).expect("a good secret");
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
        for good in [
            "Bearer 0123456789abcdef",
            "bearer 0123456789abcdef",
            "BEARER 0123456789abcdef",
        ] {
            assert!(token.admits(Some(good.as_bytes())), "{good}");
        }
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer 0123456789abcde",
            "Bearer 0123456789abcdefg",
            "Bearer  0123456789abcdef",
            "Basic 0123456789abcdef",
            "0123456789abcdef",
        ] {
            assert!(!token.admits(Some(bad.as_bytes())), "{bad:?}");
        }
        assert!(!token.admits(None));
        std::fs::write(&file, "0123456789abcde").expect("write");
        assert!(AdminToken::read(&file).is_err_and(|e| e.contains("at least 16")));
        std::fs::write(&file, "0123456789 abcdef").expect("write");
        assert!(AdminToken::read(&file).is_err_and(|e| e.contains("visible ASCII")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    const MINIMAL: &str = "[backends]\nBackend_ABC = \"ws://localhost:8081/backend/abc\"\n";

    #[test]
    fn a_key_of_an_array_item_is_found_in_its_table_or_at_the_inline_array() {
        let tables = "[tls]\ncert = \"a\"\n[[tls.certs]]\ncert = \"b\"\nkey = \"c\"\n[[tls.certs]]\ncert = \"d\"\nkey = \"e\"\n[auth]\n";
        assert_eq!(find_key_line(tables, "tls", "certs[0].key"), Some(5));
        assert_eq!(find_key_line(tables, "tls", "certs[1].cert"), Some(7));
        assert_eq!(find_key_line(tables, "tls", "cert"), Some(2));
        let inline = "[tls]\ncert = \"a\"\ncerts = [{ cert = \"b\", key = \"c\" }]\n";
        assert_eq!(find_key_line(inline, "tls", "certs[0].key"), Some(3));
    }

    /// The key a config with `server_line` in `[server]` is refused for, if refused.
    fn refused_key(server_line: &str) -> Option<String> {
        let text = format!("[server]\n{server_line}\n{MINIMAL}");
        Config::from_toml_str(&text, Path::new("."))
            .err()
            .and_then(|e| e.key)
    }

    #[test]
    fn durations_up_to_100_years_are_taken() {
        assert!(parse_duration("100years").is_ok());
        assert!(parse_duration("36524d").is_ok());
        assert!(parse_duration("101years").is_err());
    }

    #[test]
    fn listeners_overlap_where_their_addresses_meet_on_one_port() {
        let at = |s: &str| -> SocketAddr { s.parse().unwrap_or_else(|e| panic!("{s}: {e}")) };
        for (a, b) in [
            ("127.0.0.1:9443", "127.0.0.1:9443"),
            ("[::ffff:127.0.0.1]:9443", "127.0.0.1:9443"),
            ("0.0.0.0:9443", "127.0.0.1:9443"),
            ("0.0.0.0:9443", "[::ffff:10.0.0.1]:9443"),
            ("[::]:9443", "127.0.0.1:9443"),
            ("[::]:9443", "[::1]:9443"),
            ("[::]:9443", "0.0.0.0:9443"),
        ] {
            assert!(listeners_overlap(at(a), at(b)), "{a} and {b}");
            assert!(listeners_overlap(at(b), at(a)), "{b} and {a}");
        }
        for (a, b) in [
            ("127.0.0.1:9443", "127.0.0.1:9444"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("127.0.0.1:9443", "127.0.0.2:9443"),
            ("0.0.0.0:9443", "[::1]:9443"),
            ("[::1]:9443", "127.0.0.1:9443"),
        ] {
            assert!(!listeners_overlap(at(a), at(b)), "{a} and {b}");
            assert!(!listeners_overlap(at(b), at(a)), "{b} and {a}");
        }
    }

    #[test]
    fn defaults_match_the_design() -> Result<(), ConfigError> {
        let c = Config::from_toml_str(MINIMAL, Path::new("/etc/wsgate"))?;
        assert_eq!(c.server.listen.port(), 9090);
        assert_eq!(c.server.path, "/gateway");
        assert!(!c.server.reuse_port);
        assert_eq!(c.server.workers, 0);
        assert!(c.server.worker_count() >= 1, "0 means one per CPU");
        let text = format!("[server]\nworkers = 3\n{MINIMAL}");
        assert_eq!(
            Config::from_toml_str(&text, Path::new("."))?
                .server
                .worker_count(),
            3
        );
        assert_eq!(c.server.threading, Threading::PerWorker);
        assert!(!c.server.proxy_protocol);
        let text = format!("[server]\nthreading = \"shared\"\n{MINIMAL}");
        assert_eq!(
            Config::from_toml_str(&text, Path::new("."))?
                .server
                .threading,
            Threading::Shared
        );
        assert_eq!(
            refused_key("threading = \"stealing\"").as_deref(),
            Some("server.threading"),
            "an unknown threading is refused by name"
        );
        assert_eq!(
            refused_key("workers = 5000").as_deref(),
            Some("server.workers"),
            "too many workers is refused by name"
        );
        let text = format!("[server]\nreuse_port = true\n{MINIMAL}");
        assert!(
            Config::from_toml_str(&text, Path::new("."))?
                .server
                .reuse_port
        );
        assert_eq!(c.auth.issuer, "wso2");
        assert_eq!(c.auth.required_scopes, vec!["admin"]);
        assert_eq!(c.tls.cert, Path::new("/etc/wsgate/certs/server.crt"));
        let abc = &c.backends["Backend_ABC"];
        assert!(abc.single, "the one-string form stays one instance");
        assert!(matches!(&abc.members, crate::pool_config::Members::Urls(t) if t[0].port == 8081));
        Ok(())
    }

    #[test]
    fn the_ipv6_prefix_defaults_to_64_round_trips_and_stops_at_128() -> Result<(), ConfigError> {
        assert_eq!(
            Config::from_toml_str(MINIMAL, Path::new("."))?
                .limits
                .ipv6_prefix,
            64
        );
        let c = Config::from_toml_str(
            &format!("[limits]\nipv6_prefix = 128\n{MINIMAL}"),
            Path::new("."),
        )?;
        assert_eq!(c.limits.ipv6_prefix, 128);
        let again = Config::from_toml_str(&c.describe(), Path::new("."))?;
        assert_eq!(again.limits.ipv6_prefix, 128);
        let e = Config::from_toml_str(
            &format!("[limits]\nipv6_prefix = 129\n{MINIMAL}"),
            Path::new("."),
        );
        assert_eq!(
            e.err().and_then(|e| e.key).as_deref(),
            Some("limits.ipv6_prefix")
        );
        Ok(())
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = format!("[server]\npath = \"/gateway\"\nlisten_addr = \"x\"\n{MINIMAL}");
        let e = Config::from_toml_str(&text, Path::new(".")).err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(":3:"), "{msg}");
        assert!(msg.contains("listen_addr"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn proxy_protocol_sources_are_ranges_or_addresses() -> Result<(), ConfigError> {
        let text = format!(
            "[server]\nproxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]\n{MINIMAL}"
        );
        let s = Config::from_toml_str(&text, Path::new("."))?.server;
        for (ip, allowed) in [
            ("10.1.2.3", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("::ffff:10.9.9.9", true),
            ("2001:db8::5", true),
            ("127.0.0.1", false),
        ] {
            let parsed: std::net::IpAddr =
                ip.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
            assert_eq!(s.proxy_source_allowed(parsed), allowed, "{ip}");
        }
        assert!(ServerConfig::default().proxy_source_allowed([203, 0, 113, 1].into()));
        assert_eq!(
            refused_key("proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/33\"]")
                .as_deref(),
            Some("server.proxy_protocol_from")
        );
        assert_eq!(
            refused_key("proxy_protocol_from = [\"10.0.0.0/8\"]").as_deref(),
            Some("server.proxy_protocol_from"),
            "a source list without the protocol is refused"
        );
        Ok(())
    }

    #[test]
    fn jwks_url_settings_are_checked_by_name() {
        let refused = |auth: &str| {
            Config::from_toml_str(&format!("[auth]\n{auth}\n{MINIMAL}"), Path::new("."))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let msg = refused("jwks_url = \"ftp://idp/certs\"");
        assert!(
            msg.contains("auth.jwks_url: ") && msg.contains("https://"),
            "{msg}"
        );
        let msg = refused("jwks_url = \"idp.example.com/certs\"");
        assert!(msg.contains("auth.jwks_url: "), "{msg}");
        let msg = refused("jwks_url = \"https://idp/certs\"\njwks = \"keys.json\"");
        assert!(
            msg.contains("auth.jwks_url: ") && msg.contains("not both"),
            "{msg}"
        );
        let msg = refused("jwks_url = \"https://idp/certs\"\njwks_refresh = \"100ms\"");
        assert!(msg.contains("auth.jwks_refresh: at least 1s"), "{msg}");
        assert_eq!(refused("jwks_url = \"https://idp:8443/certs?realm=a\""), "");
    }

    #[test]
    fn bad_url_names_the_backend() {
        let text =
            "[backends]\nBackend_ABC = \"ws://localhost:8081/a\"\nBackend_BAD = \"http//nope\"\n";
        let msg = Config::from_toml_str(text, Path::new("."))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains(":3: backends.Backend_BAD"), "{msg}");
    }

    #[test]
    fn pool_errors_name_backend_key_and_line() {
        let text = "[backends]\nA = \"ws://a:1/\"\nB = { urls = [\"ws://b:1/\"], balance = \"fastest\" }\n\n[backends.C]\ndns = \"c:1\"\nrefesh = \"1s\"\n";
        let msg = Config::from_toml_str(text, Path::new("."))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains(":3: backends.B.balance: "), "{msg}");
        let text = text.replace("fastest", "least_conn");
        let msg = Config::from_toml_str(&text, Path::new("."))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains(":7: backends.C.refesh: unknown key"), "{msg}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let text = "[server\nlisten = 1\n";
        let msg = Config::from_toml_str(text, Path::new("."))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains(":1"), "{msg}");
    }

    #[test]
    fn errors_stay_one_printable_line() {
        // Found by the config fuzzer: a key made of control characters, and control
        // characters in a section header.
        for text in ["#\r\0=", "[a'b = \"c'\r\0\x0ed]\nB"] {
            let msg = Config::from_toml_str(text, Path::new("."))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                !msg.is_empty() && !msg.chars().any(char::is_control),
                "{msg:?}"
            );
            assert!(
                !msg.trim_end().ends_with(':'),
                "the problem is named: {msg:?}"
            );
        }
    }

    #[test]
    fn describe_round_trips_through_the_parser() -> Result<(), ConfigError> {
        // Found by the config fuzzer: Debug escapes are not TOML, and off was written as "".
        let text = format!("[server]\npath = \"/\\u0085\"\n{MINIMAL}");
        let c = Config::from_toml_str(&text, Path::new("/etc/wsgate"))?;
        let again = Config::from_toml_str(&c.describe(), Path::new("/etc/wsgate"))?;
        assert_eq!(again.server.path, "/\u{85}");
        assert!(again.browser.id_query.is_none() && again.browser.token_query.is_none());
        // The keys' source and the listener's PROXY protocol survive the round trip.
        let text = format!(
            "[server]\nproxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"::1\"]\n[auth]\njwks_url = \"https://idp/certs\"\n\
             jwks_refresh = \"90s\"\njwks_ca = \"ca.pem\"\nclose_at_expiry = true\n{MINIMAL}"
        );
        let c = Config::from_toml_str(&text, Path::new("/etc/wsgate"))?;
        let again = Config::from_toml_str(&c.describe(), Path::new("/etc/wsgate"))?;
        assert!(again.server.proxy_protocol);
        assert_eq!(
            again.server.proxy_protocol_from,
            c.server.proxy_protocol_from
        );
        assert_eq!(again.auth.jwks_url.as_deref(), Some("https://idp/certs"));
        assert_eq!(again.auth.jwks_refresh, Duration::from_secs(90));
        assert!(c.auth.close_at_expiry && again.auth.close_at_expiry);
        assert_eq!(
            again.auth.jwks_ca,
            Some(PathBuf::from("/etc/wsgate/ca.pem"))
        );
        assert!(again.backend_tls.ca.is_none() && again.backend_tls.cert.is_none());
        let text = format!(
            "[backend_tls]\nca = \"ca.pem\"\ncert = \"/k/gw.crt\"\nkey = \"gw.key\"\n{MINIMAL}"
        );
        let c = Config::from_toml_str(&text, Path::new("/etc/wsgate"))?;
        let again = Config::from_toml_str(&c.describe(), Path::new("/etc/wsgate"))?;
        assert_eq!(
            (
                again.backend_tls.ca,
                again.backend_tls.cert,
                again.backend_tls.key
            ),
            (
                Some(PathBuf::from("/etc/wsgate/ca.pem")),
                Some(PathBuf::from("/k/gw.crt")),
                Some(PathBuf::from("/etc/wsgate/gw.key"))
            )
        );
        Ok(())
    }

    #[test]
    fn allowed_origins_are_origins_compared_as_browsers_send_them() -> Result<(), ConfigError> {
        let text = format!(
            "[browser]\nallowed_origins = [\"HTTPS://App.Example.com:443/\", \"http://[::1]:8080\"]\n{MINIMAL}"
        );
        let c = Config::from_toml_str(&text, Path::new("."))?;
        assert_eq!(
            c.browser.allowed_origins,
            ["https://app.example.com", "http://[::1]:8080"]
        );
        let allowed = |o: &str| c.browser.origin_allowed(Some(o.as_bytes()));
        assert!(allowed("https://app.example.com"));
        assert!(allowed("https://APP.example.com"));
        assert!(allowed("http://[::1]:8080"));
        assert!(!allowed("http://app.example.com"), "another scheme");
        assert!(!allowed("https://app.example.com:8443"), "another port");
        assert!(!allowed("https://app.example.com.evil"), "a suffix");
        assert!(!allowed("null"));
        assert!(!allowed("\u{ff}"));
        assert!(c.browser.origin_allowed(None), "no Origin: not a browser");
        assert!(
            BrowserConfig::default().origin_allowed(Some(b"https://any")),
            "no list: any origin"
        );
        let again = Config::from_toml_str(&c.describe(), Path::new("."))?;
        assert_eq!(again.browser.allowed_origins, c.browser.allowed_origins);
        assert_origin_entries_refused(&[
            "app.example.com",
            "https://app.example.com/path",
            "null",
            "data:text/plain,x",
        ]);
        Ok(())
    }

    /// Each of `entries`, alone in `allowed_origins`, is refused by the key's name.
    fn assert_origin_entries_refused(entries: &[&str]) {
        for bad in entries {
            let text = format!("[browser]\nallowed_origins = [{bad:?}]\n{MINIMAL}");
            let key = Config::from_toml_str(&text, Path::new("."))
                .err()
                .and_then(|e| e.key);
            assert_eq!(key.as_deref(), Some("browser.allowed_origins"), "{bad}");
        }
    }

    #[test]
    fn a_wildcard_origin_allows_the_subdomains_with_its_scheme_and_port() -> Result<(), ConfigError>
    {
        let text = format!(
            "[browser]\nallowed_origins = [\"HTTPS://*.Example.com:443/\", \"http://*.b\u{fc}cher.de:8080\"]\n{MINIMAL}"
        );
        let c = Config::from_toml_str(&text, Path::new("."))?;
        assert_eq!(
            c.browser.allowed_origins,
            ["https://*.example.com", "http://*.xn--bcher-kva.de:8080"]
        );
        let allowed = |o: &str| c.browser.origin_allowed(Some(o.as_bytes()));
        assert!(allowed("https://app.example.com"));
        assert!(allowed("https://a.b.EXAMPLE.com"));
        assert!(allowed("http://shop.xn--bcher-kva.de:8080"));
        assert!(!allowed("https://example.com"), "the domain itself");
        assert!(!allowed("https://app.example.com:8443"), "another port");
        assert!(!allowed("http://app.example.com"), "another scheme");
        assert!(!allowed("https://appexample.com"), "not a subdomain");
        assert!(!allowed("https://app.example.com.evil"), "a suffix");
        assert!(!allowed("https://evil.com#.example.com"), "not an origin");
        assert!(
            !allowed("http://shop.xn--bcher-kva.de"),
            "the default port, not 8080"
        );
        let again = Config::from_toml_str(&c.describe(), Path::new("."))?;
        assert_eq!(again.browser.allowed_origins, c.browser.allowed_origins);
        assert_origin_entries_refused(&[
            "https://*.com",
            "https://*",
            "https://*.*.example.com",
            "https://app.*.example.com",
            "https://*.example.com/path",
            "*.example.com",
        ]);
        Ok(())
    }

    #[test]
    fn token_cookie_needs_allowed_origins_and_a_cookie_name() -> Result<(), ConfigError> {
        let browser = |lines: &str| format!("[browser]\n{lines}\n{MINIMAL}");
        let c = Config::from_toml_str(
            &browser("allowed_origins = [\"https://a.example\"]\ntoken_cookie = \"wsgate_token\""),
            Path::new("."),
        )?;
        assert_eq!(c.browser.token_cookie.as_deref(), Some("wsgate_token"));
        let again = Config::from_toml_str(&c.describe(), Path::new("."))?;
        assert_eq!(again.browser.token_cookie, c.browser.token_cookie);
        for bad in [
            "token_cookie = \"wsgate_token\"",
            "allowed_origins = [\"https://a.example\"]\ntoken_cookie = \"a b\"",
            "allowed_origins = [\"https://a.example\"]\ntoken_cookie = \"a=b\"",
            "allowed_origins = [\"https://a.example\"]\ntoken_cookie = \"\"",
        ] {
            let key = Config::from_toml_str(&browser(bad), Path::new("."))
                .err()
                .and_then(|e| e.key);
            assert_eq!(key.as_deref(), Some("browser.token_cookie"), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn none_algorithm_is_rejected() {
        let text = format!("[auth]\nalgorithms = [\"none\"]\n{MINIMAL}");
        let msg = Config::from_toml_str(&text, Path::new("."))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("auth.algorithms"), "{msg}");
    }
}
