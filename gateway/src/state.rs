//! What every connection shares: config, verifier, routes, TLS, counters, shutdown signal.
//!
//! Config and verifier sit behind atomic pointer swaps so a reload never blocks a
//! connection; each connection takes a snapshot at its start.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::auth::Verifier;
use crate::config::Config;
use crate::limits::ConnLimiter;
use crate::route::Router;

/// Process-wide counters, cheap enough to bump per connection.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sessions currently proxying.
    pub active: AtomicU64,
    /// Upgrade requests refused.
    pub refused: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
}

/// State shared by the listener and every connection.
pub struct Shared {
    config: ArcSwap<Config>,
    verifier: ArcSwap<Verifier>,
    /// Backend ID -> target.
    pub router: Router,
    /// TLS server side.
    pub tls: TlsAcceptor,
    /// Connection-limit slots.
    pub limiter: ConnLimiter,
    /// Counters.
    pub stats: Stats,
    /// Set once shutdown begins: new upgrades are refused with 503.
    pub draining: AtomicBool,
    /// Turns `true` when sessions must close with 1001.
    pub shutdown_rx: watch::Receiver<bool>,
    /// Source of connection ids.
    pub next_id: AtomicU64,
}

impl Shared {
    /// Builds the shared state.
    pub fn new(
        config: Config,
        verifier: Verifier,
        router: Router,
        tls: TlsAcceptor,
        shutdown_rx: watch::Receiver<bool>,
    ) -> Self {
        let limiter = ConnLimiter::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        );
        Self {
            config: ArcSwap::from_pointee(config),
            verifier: ArcSwap::from_pointee(verifier),
            router,
            tls,
            limiter,
            stats: Stats::default(),
            draining: AtomicBool::new(false),
            shutdown_rx,
            next_id: AtomicU64::new(1),
        }
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The token verifier in force now.
    pub fn verifier(&self) -> Arc<Verifier> {
        self.verifier.load_full()
    }
}
