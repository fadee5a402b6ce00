//! What every connection shares: config, verifier, routes, TLS, limits, metrics, and the
//! shutdown signal.
//!
//! Everything a reload replaces sits behind an atomic pointer swap, so a reload never
//! blocks a connection; each connection takes a snapshot at its start and open sessions
//! keep what they started with.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::sync::watch;

use crate::auth::Verifier;
use crate::config::Config;
use crate::limits::ConnLimiter;
use crate::metrics::Metrics;
use crate::resolve::{Lookup, Resolver, SystemLookup};
use crate::route::{RouteTable, Router};

/// The parts of the gateway a reload rebuilds from a config file.
pub struct Parts {
    /// The validated config.
    pub config: Config,
    /// Token checks.
    pub verifier: Verifier,
    /// TLS server config.
    pub tls: Arc<ServerConfig>,
    /// TLS client configs for `wss://` backends: `[backend_tls]`'s and pools' own.
    pub backend_tls: crate::backend_tls::BackendTlsConfigs,
}

/// State shared by the listener and every connection.
pub struct Shared {
    config: ArcSwap<Config>,
    /// The config the gateway started with: what its sockets and threads were set up by,
    /// which a reload cannot change.
    started_with: Arc<Config>,
    verifier: ArcSwap<Verifier>,
    tls: ArcSwap<ServerConfig>,
    limiter: ArcSwap<ConnLimiter>,
    /// Backend ID -> pool of instances.
    pub router: Router,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Cached backend name lookups, and the name service DNS pools ask.
    pub resolver: Resolver,
    /// Sessions proxying now (all backends), for the drain wait.
    pub active: AtomicU64,
    /// The open sessions, for an operator to close (`POST /sessions/close`).
    pub sessions: crate::registry::Registry,
    /// Connections not upgraded yet (TLS handshake, request, backend connect), for the
    /// drain wait too: a request that arrives while draining gets its 503.
    pub handshaking: AtomicU64,
    /// Of those, the ones a request has come on: a drain waits for these to the end, for
    /// the others (a browser's pre-connection, say) only [`crate::IDLE_CONNECTION_GRACE`].
    pub requested: AtomicU64,
    /// Set once shutdown begins: new upgrades get 503 and `/readyz` turns not-ready.
    pub draining: AtomicBool,
    /// Set once the drain's time is up: a session still open then is cut, and says so.
    pub drain_over: AtomicBool,
    /// Turns `true` when sessions must close with 1001: as the shutdown begins, or with
    /// `[timeouts] drain_spread` once the spread is over (the sessions open before are
    /// each told in turn through [`Shared::sessions`]).
    pub shutdown_rx: watch::Receiver<bool>,
    /// Turns `true` as the shutdown begins: a handshake still waiting on its backend
    /// gives up, and its client gets 503.
    pub handshakes_stop: watch::Receiver<bool>,
    /// Source of connection ids.
    pub next_id: AtomicU64,
    /// The file a reload re-reads (`None`: config built from a string, no reload).
    pub config_path: Option<PathBuf>,
    /// Refetches of the `jwks_url` key set that tokens naming a key it lacks ask for (see
    /// [`crate::jwks_fetch::after_refetch`]).
    pub refetch: crate::jwks_fetch::Refetch,
}

/// What tells connections that the gateway is shutting down.
#[derive(Debug, Clone)]
pub struct Stops {
    /// See [`Shared::shutdown_rx`].
    pub sessions: watch::Receiver<bool>,
    /// See [`Shared::handshakes_stop`].
    pub handshakes: watch::Receiver<bool>,
}

impl Shared {
    /// Builds the shared state, looking backend names up with the system resolver.
    pub fn new(parts: Parts, stops: Stops) -> Self {
        Self::with_lookup(parts, stops, Arc::new(SystemLookup))
    }

    /// Builds the shared state, looking backend names up with `lookup`.
    pub fn with_lookup(parts: Parts, stops: Stops, lookup: Arc<dyn Lookup>) -> Self {
        let Parts {
            config,
            verifier,
            tls,
            backend_tls,
        } = parts;
        let limiter = ConnLimiter::from_config(&config.limits);
        let metrics = Metrics::new();
        certificates_in_force(&metrics, &config);
        let table = RouteTable::from_specs(&config.backends, &metrics.pools, None);
        let resolver = Resolver::with_lookup(lookup);
        for pool in table.pools() {
            pool.start_tasks(
                resolver.lookup(),
                config.timeouts.backend_connect,
                backend_tls.for_pool(pool.id()),
            );
        }
        metrics.active.listed(table.ids());
        let router = Router::new(table);
        let config_path = config.loaded_from.clone();
        let config = Arc::new(config);
        Self {
            started_with: config.clone(),
            config: ArcSwap::new(config),
            verifier: ArcSwap::from_pointee(verifier),
            tls: ArcSwap::new(tls),
            limiter: ArcSwap::from_pointee(limiter),
            router,
            metrics,
            resolver,
            active: AtomicU64::new(0),
            sessions: crate::registry::Registry::default(),
            handshaking: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            drain_over: AtomicBool::new(false),
            shutdown_rx: stops.sessions,
            handshakes_stop: stops.handshakes,
            next_id: AtomicU64::new(1),
            config_path,
            refetch: crate::jwks_fetch::Refetch::default(),
        }
    }

    /// Puts freshly built parts in force for new connections.
    pub fn replace(&self, parts: Parts) {
        let Parts {
            config,
            verifier,
            tls,
            backend_tls,
        } = parts;
        let table = RouteTable::from_specs(
            &config.backends,
            &self.metrics.pools,
            Some(&self.router.current()),
        );
        for pool in table.pools() {
            pool.start_tasks(
                self.resolver.lookup(),
                config.timeouts.backend_connect,
                backend_tls.for_pool(pool.id()),
            );
        }
        // Backends the new table drops keep their sessions-open line until their last
        // session ends (in either order: see `BackendSessions`).
        self.metrics.active.listed(table.ids());
        self.router.replace(table);
        let old = self.config.load();
        if old.limits.max_connections != config.limits.max_connections
            || old.limits.max_connections_per_ip != config.limits.max_connections_per_ip
            || old.limits.max_connection_rate_per_ip != config.limits.max_connection_rate_per_ip
            || old.limits.ipv6_prefix != config.limits.ipv6_prefix
        {
            let limiter = self.limiter.load().reconfigured(&config.limits);
            self.limiter.store(Arc::new(limiter));
        }
        self.verifier.store(Arc::new(verifier));
        self.tls.store(tls);
        certificates_in_force(&self.metrics, &config);
        self.config.store(Arc::new(config));
    }

    /// The config the gateway started with, whose start-up-only keys (listeners,
    /// threads, PROXY protocol, admin) are the ones in force whatever was reloaded since.
    pub fn started_with(&self) -> &Config {
        &self.started_with
    }

    /// The config in force for new connections.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The token verifier in force now.
    pub fn verifier(&self) -> Arc<Verifier> {
        self.verifier.load_full()
    }

    /// Puts `renewed` (the same auth settings, a freshly fetched key set) in force, unless
    /// the verifier in force is no longer `current` (a reload came in between: its own
    /// fetch is newer). Returns whether it did.
    pub fn renew_verifier(&self, current: &Arc<Verifier>, renewed: Verifier) -> bool {
        let previous = self.verifier.compare_and_swap(current, Arc::new(renewed));
        Arc::ptr_eq(&*previous, current)
    }

    /// The TLS server config in force now.
    pub fn tls(&self) -> Arc<ServerConfig> {
        self.tls.load_full()
    }

    /// The connection limiter in force now.
    pub fn limiter(&self) -> Arc<ConnLimiter> {
        self.limiter.load_full()
    }
}

/// Shows when `config`'s certificates expire and its OCSP responses lapse (metrics), and
/// warns of those that soon do.
fn certificates_in_force(metrics: &Metrics, config: &Config) {
    let now = std::time::SystemTime::now();
    let certs = crate::cert_expiry::of_config(config);
    metrics.certificates(&certs);
    crate::cert_expiry::warn_if_soon(&certs, now);
    let mut staples = crate::cert_expiry::staples_of_config(config, now);
    staples.extend(crate::ocsp_fetch::in_force());
    metrics.staples(&staples);
    crate::cert_expiry::warn_if_stale_soon(&staples, now);
}
