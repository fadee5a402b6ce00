//! wsgate: a WebSocket gateway. Clients connect over WSS, prove who they are with a JWT,
//! name a backend in the `ID` header, and frames flow both ways between the client and
//! that backend's `ws://` service.
//!
//! One connection passes through these modules, in order:
//!
//! | module | job |
//! |---|---|
//! | [`listener`] | accept TCP, accept-error back-off, hand to a worker |
//! | [`workers`] | threads with a runtime each; a connection lives on one |
//! | [`limits`] | connection slots: total and per client IP |
//! | [`tcp_opts`] | options on client and backend sockets: no Nagle, a cap on unsent bytes |
//! | [`proxy_header`] | PROXY protocol v1/v2 header from a TCP load balancer: the client's address |
//! | [`tls`] | rustls server config from PEM, ALPN `http/1.1` |
//! | [`server_certs`] | which of the gateway's certificates a handshake gets: by SNI and key kind |
//! | [`in_use`] | values the configs using them share across reloads, by key |
//! | [`ocsp`] | OCSP responses stapled to a certificate's handshakes, checked, while fresh |
//! | [`ocsp_fetch`] | OCSP responses fetched from each certificate's responder, kept fresh |
//! | [`client_cert`] | a client's certificate (mutual TLS) described to its backend |
//! | [`tls_stream`] | TLS on rustls's unbuffered API: no buffers held while idle |
//! | [`service`] | TLS handshake, hyper HTTP/1 with upgrades, the handshake phases |
//! | [`checks`] | path, method, WebSocket upgrade headers |
//! | [`extensions`] | `permessage-deflate` offered to the backend, its answer passed back |
//! | [`credentials`] | backend ID and token: headers, or query / subprotocol for browsers |
//! | [`auth`] | bearer JWT: pinned algorithms, signature, `exp`/`nbf`, `iss`, `aud`, scopes |
//! | [`jwks_fetch`] | an identity provider's key set from `jwks_url`, kept fresh |
//! | [`route`] | `ID` -> backend pool, in an atomically swappable table |
//! | [`pool`] | a backend's instances: balancing, ejection, DNS discovery |
//! | [`affinity`] | which instance a `balance = "hash"` pool gives a client |
//! | [`backend`] | TCP + WebSocket client handshake to an instance, retried on another |
//! | [`resolve`] | backend name lookups, cached briefly, last good address first |
//! | [`refusal`] | every pre-upgrade failure -> HTTP status and one-line reason |
//! | [`session`] | both directions of a session, close coordination, shutdown |
//! | [`forward`] | one direction: frames parsed, checked, readied in place, written per read |
//! | [`reader`] | reads through a per-thread scratch buffer: no read buffer while idle |
//! | [`frames`] | frame heads: parse without consuming, encode, mask |
//! | [`pair`] | a session's two pumps on one task, each polled only when woken |
//! | [`mailbox`] | instructions between a session's two pumps |
//! | [`ticker`] | a pump's keepalive tick, cheap to poll between ticks |
//! | [`batch`] | frames re-keyed in place and written at once; the rest kept in a batch |
//! | [`utf8`] | UTF-8 checks of text messages, whole or fragment by fragment |
//!
//! Operations: [`admin`] (metrics, health, readiness, reload and session-closing
//! endpoints), [`metrics`] (Prometheus), [`reload`] (re-read the config file),
//! [`registry`] (the open sessions, for an operator to close), [`cert_expiry`] (when the
//! gateway's certificates expire).
//!
//! Support: [`config`] (Config.toml), [`pool_config`] (one `[backends]` entry), [`state`] (what connections share), [`wsclient`]
//! (client handshake, also used by the load generator), [`prefixed`] (bytes read ahead).

pub mod admin;
pub mod affinity;
pub mod auth;
pub mod backend;
pub mod backend_tickets;
pub mod backend_tls;
pub mod batch;
pub mod cert_expiry;
pub mod checks;
pub mod client_cert;
pub mod config;
pub mod credentials;
pub mod extensions;
pub mod forward;
pub mod frames;
pub mod in_use;
pub mod jwks_fetch;
pub mod limits;
pub mod listener;
pub mod mailbox;
pub mod metrics;
pub mod ocsp;
pub mod ocsp_fetch;
pub mod pacing;
pub mod pair;
pub mod pool;
pub mod pool_config;
pub mod prefixed;
pub mod proxy_header;
pub mod reader;
pub mod records;
pub mod refusal;
pub mod registry;
pub mod reload;
pub mod resolve;
pub mod route;
pub mod server_certs;
pub mod service;
pub mod session;
pub mod state;
pub mod tcp_opts;
pub mod ticker;
pub mod tls;
pub mod tls_stream;
pub mod utf8;
pub mod workers;
pub mod wsclient;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::{Config, ConfigError};

use crate::state::Shared;

/// How long a shutdown's drain waits for a connection no request has come on yet (one
/// still in its TLS handshake, or open with nothing sent): a request that comes within it
/// gets its 503, and a connection that stays silent holds the exit no longer than this,
/// as nginx closes its idle connections at a graceful stop.
pub const IDLE_CONNECTION_GRACE: Duration = Duration::from_secs(2);

/// Why the gateway could not be built or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The config, or a file it names, is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener failed.
    #[error("listener error: {0}")]
    Io(#[from] std::io::Error),
    /// A worker thread (or its runtime) could not be started.
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

/// Reloads the gateway's config file on demand.
#[derive(Clone)]
pub struct Reloader(Arc<Shared>);

impl Reloader {
    /// Re-reads the config file; on error the old config stays in force. Blocks while it
    /// loads: from async code, use [`Reloader::reload_off_runtime`].
    pub fn reload(&self) -> Result<reload::Reloaded, reload::ReloadError> {
        reload::reload(&self.0)
    }

    /// [`Reloader::reload`] on a thread of the blocking pool, so that the runtime goes on
    /// while a slow `jwks_url` answers.
    pub async fn reload_off_runtime(&self) -> Result<reload::Reloaded, reload::ReloadError> {
        reload::reload_off_runtime(self.0.clone()).await
    }
}

/// A gateway ready to serve: config validated, keys and certificates loaded.
pub struct Gateway {
    shared: Arc<Shared>,
    /// Sessions close (see [`Shared::shutdown_rx`]).
    shutdown_tx: watch::Sender<bool>,
    /// Handshakes waiting on backends give up (see [`Shared::handshakes_stop`]).
    handshakes_stop_tx: watch::Sender<bool>,
}

impl Gateway {
    /// Loads the files `config` names (TLS cert and key, JWT public key) and builds the
    /// gateway. Errors name the config key and file at fault.
    pub fn new(config: Config) -> Result<Self, GatewayError> {
        Self::with_lookup(config, Arc::new(resolve::SystemLookup))
    }

    /// As [`Gateway::new`], looking backend names up with `lookup` instead of the system
    /// resolver (tests use this to change what a DNS-discovered pool sees).
    pub fn with_lookup(
        config: Config,
        lookup: Arc<dyn resolve::Lookup>,
    ) -> Result<Self, GatewayError> {
        let fd_capacity = limits::fd_session_capacity();
        let mut parts = reload::build_parts(config)?;
        let config = &mut parts.config;
        if let Some(capacity) = fd_capacity {
            if capacity < config.limits.max_connections {
                info!(
                    capacity,
                    configured = config.limits.max_connections,
                    "open-file limit caps sessions below max_connections; using the lower"
                );
                config.limits.max_connections = capacity.max(1);
            }
        }
        let (shutdown_tx, sessions) = watch::channel(false);
        let (handshakes_stop_tx, handshakes) = watch::channel(false);
        let shared = Shared::with_lookup(
            parts,
            state::Stops {
                sessions,
                handshakes,
            },
            lookup,
        );
        Ok(Self {
            shared: Arc::new(shared),
            shutdown_tx,
            handshakes_stop_tx,
        })
    }

    /// Serves the admin endpoints (`/metrics`, `/healthz`, `/readyz`, `POST /reload`) on
    /// `listener`, in a task that lives as long as the runtime.
    pub fn spawn_admin(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        tokio::spawn(admin::serve(listener, self.shared.clone()))
    }

    /// The config in force now.
    pub fn config_snapshot(&self) -> Arc<Config> {
        self.shared.config()
    }

    /// A handle that reloads the config file (what SIGHUP and `POST /reload` do).
    pub fn reloader(&self) -> Reloader {
        Reloader(self.shared.clone())
    }

    /// Serves clients on `listener` until `shutdown` resolves; then stops accepting,
    /// closes every session with 1001 and waits for them up to the close timeout.
    ///
    /// Connections are served on `[server] workers` threads of their own; this future
    /// only accepts and hands them out. Dropping it stops the workers at once.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let config = self.shared.config();
        let workers = workers::Workers::start(
            config.server.worker_count(),
            config.server.threading,
            self.shared.clone(),
        )
        .map_err(GatewayError::Workers)?;
        ocsp_fetch::first_round(&self.shared).await;
        info!(listen = %listener.local_addr()?, path = %config.server.path, workers = workers.count(), threading = config.server.threading.as_str(), "wsgate listening");
        for (id, spec) in &config.backends {
            info!(backend = %id, to = %spec.describe(), "route");
        }
        let key_set_refresh = tokio::spawn(jwks_fetch::keep_fresh(self.shared.clone()));
        let staples_refresh = tokio::spawn(ocsp_fetch::keep_stapled(self.shared.clone()));
        listener::run(listener, self.shared.clone(), &workers, shutdown).await;
        key_set_refresh.abort();
        staples_refresh.abort();
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.handshakes_stop_tx.send(true);
        // The drain in force now: a reload may have changed it since the start.
        let timeouts = self.shared.config().timeouts.clone();
        let deadline = tokio::time::Instant::now() + timeouts.drain;
        // With a spread, the sessions open now are told in turn, and the shutdown signal
        // (for sessions whose handshakes were under way) waits for its end.
        let mut spread = if timeouts.drain_spread.is_zero() {
            let _ = self.shutdown_tx.send(true);
            None
        } else {
            let picked = self.shared.sessions.pick(&registry::Filter::default());
            info!(
                sessions = picked.len(),
                over = %humantime::format_duration(timeouts.drain_spread),
                "draining: closing the open sessions spread over drain_spread"
            );
            Some(picked.close_over(registry::Closing::Shutdown, timeouts.drain_spread))
        };
        // Connections still in their handshake are waited for too: their requests get a
        // 503 (or, if already past the checks, a session closed with 1001: at once, or
        // with a spread at its end). One no request has come on yet only for a moment: a
        // browser's pre-connection or a port check would otherwise hold every restart for
        // the whole drain.
        let idle_grace_end = tokio::time::Instant::now() + IDLE_CONNECTION_GRACE;
        let busy = || {
            let connections = if tokio::time::Instant::now() < idle_grace_end {
                self.shared.handshaking.load(Ordering::Relaxed)
            } else {
                self.shared.requested.load(Ordering::Relaxed)
            };
            self.shared.active.load(Ordering::Relaxed) + connections
        };
        while busy() > 0 && tokio::time::Instant::now() < deadline {
            if spread
                .as_mut()
                .is_some_and(|s| s.close_due(tokio::time::Instant::now()))
            {
                spread = None;
                let _ = self.shutdown_tx.send(true);
            }
            tokio::time::sleep(registry::SPREAD_STEP).await;
        }
        let remaining = self.shared.active.load(Ordering::Relaxed);
        let handshaking = self.shared.handshaking.load(Ordering::Relaxed);
        if remaining > 0 {
            // Each one cut logs its own line as the workers stop.
            self.shared.drain_over.store(true, Ordering::Relaxed);
            warn!(
                remaining,
                handshaking, "gateway stopped: sessions still open at the end of the drain are cut"
            );
        } else {
            info!(remaining, handshaking, "gateway stopped");
        }
        workers.stop().await;
        Ok(())
    }
}
