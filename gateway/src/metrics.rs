//! Prometheus metrics: what operators graph and alert on.
//!
//! Nothing here runs per message: sessions keep plain counters and fold them in when they
//! end; refusals, handshakes and backend connects are counted once each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::session::SessionReport;

mod backend_sessions;

pub use backend_sessions::BackendSessions;

/// Labels: the backend ID.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// Backend ID.
    pub backend: String,
}

/// Labels: a worker thread's number.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    /// 0-based, as in the thread's name `wsgate-worker-N`; `shared` with
    /// `threading = "shared"`.
    pub worker: String,
}

/// Labels: how a TLS handshake went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabel {
    /// `full`, or `resumed` (a session ticket saved the certificate signature).
    pub kind: String,
}

/// Labels: one of the gateway's own certificates.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// The config key naming it: `tls.cert`, `tls.certs[N].cert`, `backend_tls.cert`.
    pub key: String,
    /// Its file.
    pub file: String,
}

/// Labels: why a TLS handshake did not complete.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeFailureLabel {
    /// `timeout`, `client_closed`, `client_cert` (the client's certificate: missing where
    /// required, not trusted, revoked), `refused` (not TLS, or TLS the gateway does not
    /// speak: an alert says why) or `io`.
    pub reason: String,
}

/// Labels: how a fetch of the `jwks_url` key set went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabel {
    /// `ok`, or `error` (the keys in force stayed).
    pub result: String,
}

/// Labels: one instance of a backend pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// Backend ID.
    pub backend: String,
    /// The instance's `host:port` (from config or DNS, so the set stays bounded).
    pub instance: String,
}

/// Per-instance metrics of backend pools. Cloning shares the families; a default one is
/// registered nowhere (for route tables built outside a gateway, e.g. benchmarks).
#[derive(Clone, Debug, Default)]
pub struct PoolMetrics {
    /// Backend connections opened, per instance.
    pub opened: Family<InstanceLabels, Counter>,
    /// Sessions (and connects under way) on each instance now.
    pub active: Family<InstanceLabels, Gauge>,
    /// Failed connect attempts (TCP, handshake, timeout), per instance.
    pub connect_failures: Family<InstanceLabels, Counter>,
    /// Times an instance was put into its back-off period.
    pub ejections: Family<InstanceLabels, Counter>,
    /// Instances using each label set (an address can leave a pool while sessions still
    /// use it and come back as a new instance); labels go when the last one is done.
    holders: Arc<Mutex<HashMap<InstanceLabels, usize>>>,
}

impl PoolMetrics {
    /// Records one more instance using `labels`.
    pub fn hold(&self, labels: &InstanceLabels) {
        if let Ok(mut h) = self.holders.lock() {
            *h.entry(labels.clone()).or_default() += 1;
        }
    }

    /// Records that an instance using `labels` left its pool and has no session left;
    /// the last one removes the labels, so gone instances do not pile up.
    pub fn release(&self, labels: &InstanceLabels) {
        let Ok(mut h) = self.holders.lock() else {
            return;
        };
        let left = h.get_mut(labels).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            h.remove(labels);
            self.opened.remove(labels);
            self.active.remove(labels);
            self.connect_failures.remove(labels);
            self.ejections.remove(labels);
        }
    }
}

/// Labels: backend and how a session ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Backend ID.
    pub backend: String,
    /// See [`SessionReport::outcome`].
    pub outcome: String,
}

/// Labels: why an upgrade was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// HTTP status.
    pub status: String,
    /// Short reason label, see [`crate::refusal::Refusal::label`].
    pub reason: String,
}

/// Labels: backend and direction (`upstream` client to backend, `downstream` back).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// Backend ID.
    pub backend: String,
    /// `upstream` or `downstream`.
    pub direction: String,
}

/// Labels: a close frame the gateway itself sent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// `client` or `backend`: who received it.
    pub to: String,
    /// The close code; see [`close_code_label`].
    pub code: String,
}

/// A close code as a label: the protocol's own codes (below 3000) each as themselves,
/// the registered (3000–3999) and private (4000–4999) ranges folded to `3xxx` and
/// `4xxx`. The gateway echoes a peer's code when the other side does not answer a close,
/// and one label per code a client can pick would grow the series without bound.
pub fn close_code_label(code: u16) -> String {
    match code {
        3000..=3999 => "3xxx".to_owned(),
        4000..=4999 => "4xxx".to_owned(),
        _ => code.to_string(),
    }
}

/// Builds latency histograms: 0.5 ms to ~16 s.
#[derive(Clone, Debug)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    }
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// TCP connections accepted.
    pub accepted: Counter,
    /// Sessions open now, per backend; a backend a reload removed keeps its line only
    /// while it has sessions.
    pub active: BackendSessions,
    /// Sessions ended, per backend and outcome.
    pub sessions: Family<OutcomeLabels, Counter>,
    /// Upgrades refused, per status and reason.
    pub refusals: Family<RefusalLabels, Counter>,
    /// Messages (frames) forwarded.
    pub messages: Family<FlowLabels, Counter>,
    /// Payload bytes forwarded.
    pub bytes: Family<FlowLabels, Counter>,
    /// Upgrade request to 101, per backend.
    pub handshake_seconds: Family<BackendLabel, Histogram, LatencyBuckets>,
    /// Backend TCP connect + WebSocket handshake, per backend.
    pub backend_connect_seconds: Family<BackendLabel, Histogram, LatencyBuckets>,
    /// Backend connects that failed (502/504), per backend.
    pub backend_connect_failures: Family<BackendLabel, Counter>,
    /// Close frames the gateway itself sent, per receiver and code.
    pub closes_sent: Family<CloseLabels, Counter>,
    /// Connections handed to each worker thread.
    pub worker_connections: Family<WorkerLabel, Counter>,
    /// Completed TLS handshakes, full or resumed.
    pub tls_handshakes: Family<HandshakeLabel, Counter>,
    /// TLS handshakes that did not complete, by reason.
    pub tls_handshake_failures: Family<HandshakeFailureLabel, Counter>,
    /// Connections closed for a missing, malformed or late PROXY protocol header.
    pub proxy_header_refusals: Counter,
    /// Refreshes of the `jwks_url` key set, by result.
    pub jwks_fetches: Family<FetchLabel, Counter>,
    /// When each of the gateway's certificates in force expires (Unix time).
    pub cert_expiry: Family<CertLabels, Gauge>,
    /// When each stapled OCSP response stops being stapled (Unix time).
    pub ocsp_next_update: Family<CertLabels, Gauge>,
    /// Fetches of OCSP responses (`[tls] ocsp_fetch`), by result.
    pub ocsp_fetches: Family<FetchLabel, Counter>,
    /// Per-instance metrics of backend pools.
    pub pools: PoolMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `wsgate_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wsgate");
        let m = Self {
            accepted: Counter::default(),
            active: BackendSessions::default(),
            sessions: Family::default(),
            refusals: Family::default(),
            messages: Family::default(),
            bytes: Family::default(),
            handshake_seconds: Family::new_with_constructor(LatencyBuckets),
            backend_connect_seconds: Family::new_with_constructor(LatencyBuckets),
            backend_connect_failures: Family::default(),
            closes_sent: Family::default(),
            worker_connections: Family::default(),
            tls_handshakes: Family::default(),
            tls_handshake_failures: Family::default(),
            proxy_header_refusals: Counter::default(),
            jwks_fetches: Family::default(),
            cert_expiry: Family::default(),
            ocsp_next_update: Family::default(),
            ocsp_fetches: Family::default(),
            pools: PoolMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_accepted",
            "TCP connections accepted",
            m.accepted.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Completed TLS handshakes, full or resumed with a session ticket",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that did not complete: timeout, client_closed, client_cert (no client \
             certificate where one is required, or one not trusted or revoked), refused (not \
             TLS, or TLS the gateway does not speak), io",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When each certificate of the gateway in force expires (its notAfter, Unix time): \
             tls.cert, tls.certs[N].cert, backend_tls.cert",
            m.cert_expiry.clone(),
        );
        registry.register(
            "tls_ocsp_next_update_timestamp_seconds",
            "When each OCSP response the gateway staples stops being stapled (its nextUpdate, \
             Unix time): tls.ocsp, tls.certs[N].ocsp",
            m.ocsp_next_update.clone(),
        );
        registry.register(
            "tls_ocsp_fetches",
            "Fetches of OCSP responses from certificates' responders ([tls] ocsp_fetch), by \
             result (error: the response in force stayed)",
            m.ocsp_fetches.clone(),
        );
        registry.register(
            "proxy_header_refusals",
            "Connections closed for a missing, malformed, oversized or late PROXY protocol header, or from outside proxy_protocol_from",
            m.proxy_header_refusals.clone(),
        );
        registry.register(
            "jwks_fetches",
            "Refreshes of the [auth] jwks_url key set, by result (error: the keys in force stayed)",
            m.jwks_fetches.clone(),
        );
        registry.register(
            "worker_connections",
            "Connections handed to each worker thread (they stay on it)",
            m.worker_connections.clone(),
        );
        registry.register(
            "sessions_active",
            "Proxied sessions open now",
            m.active.family(),
        );
        registry.register(
            "sessions",
            "Proxied sessions ended, by outcome",
            m.sessions.clone(),
        );
        registry.register(
            "handshake_refusals",
            "Upgrade requests refused, by status and reason",
            m.refusals.clone(),
        );
        registry.register(
            "messages_forwarded",
            "WebSocket frames forwarded, by direction",
            m.messages.clone(),
        );
        registry.register(
            "bytes_forwarded",
            "Payload bytes forwarded, by direction",
            m.bytes.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Upgrade request to 101, including the backend connect",
            m.handshake_seconds.clone(),
        );
        registry.register(
            "backend_connect_duration_seconds",
            "Backend TCP connect plus WebSocket handshake",
            m.backend_connect_seconds.clone(),
        );
        registry.register(
            "backend_connect_failures",
            "Backend connects that failed (502/504)",
            m.backend_connect_failures.clone(),
        );
        registry.register(
            "close_frames_sent",
            "Close frames the gateway itself sent",
            m.closes_sent.clone(),
        );
        registry.register(
            "backend_instance_connections",
            "Backend connections opened, per pool instance",
            m.pools.opened.clone(),
        );
        registry.register(
            "backend_instance_sessions_active",
            "Sessions open now (and connects under way), per pool instance",
            m.pools.active.clone(),
        );
        registry.register(
            "backend_instance_connect_failures",
            "Failed connect attempts (TCP, handshake or timeout), per pool instance",
            m.pools.connect_failures.clone(),
        );
        registry.register(
            "backend_instance_ejections",
            "Times a pool instance was ejected for its back-off period",
            m.pools.ejections.clone(),
        );
        Self { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a connection handed to worker `worker` (`shared` when the threads share one
    /// runtime).
    pub fn worker_connection(&self, worker: &str) {
        self.worker_connections
            .get_or_create(&WorkerLabel {
                worker: worker.to_owned(),
            })
            .inc();
    }

    /// Counts a completed TLS handshake; `resumed` when a session ticket (or TLS 1.2
    /// session) was used.
    pub fn tls_handshake(&self, resumed: bool) {
        let kind = if resumed { "resumed" } else { "full" };
        self.tls_handshakes
            .get_or_create(&HandshakeLabel { kind: kind.into() })
            .inc();
    }

    /// The certificates in force are `certs`: a line each, and none for those no longer.
    pub fn certificates(&self, certs: &[crate::cert_expiry::CertExpiry]) {
        set_expiries(&self.cert_expiry, certs);
    }

    /// The OCSP responses stapled now are `staples` (their nextUpdate as `not_after`).
    pub fn staples(&self, staples: &[crate::cert_expiry::CertExpiry]) {
        set_expiries(&self.ocsp_next_update, staples);
    }

    /// A fetched OCSP response for the certificate of config key `key`, from `responder`,
    /// is stapled until `next_update` (Unix time).
    pub fn staple_in_force(&self, key: &str, responder: &str, next_update: i64) {
        set_expiry(&self.ocsp_next_update, key, responder, next_update);
    }

    /// Counts a fetch of an OCSP response.
    pub fn ocsp_fetch(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.ocsp_fetches
            .get_or_create(&FetchLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Counts a TLS handshake that did not complete, for `reason` (see
    /// [`HandshakeFailureLabel`]).
    pub fn tls_handshake_failed(&self, reason: &str) {
        self.tls_handshake_failures
            .get_or_create(&HandshakeFailureLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts an upgrade refused with `status` for `reason` (the gateway's own refusals,
    /// the HTTP parser's, and clients that left before their answer).
    pub fn refused(&self, status: u16, reason: &str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                status: status.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a refresh of the `jwks_url` key set.
    pub fn jwks_fetch(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.jwks_fetches
            .get_or_create(&FetchLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Folds an ended session in: outcome, tallies, and closes the gateway sent.
    pub fn session_ended(&self, backend: &str, report: &SessionReport) {
        let b = || backend.to_owned();
        self.sessions
            .get_or_create(&OutcomeLabels {
                backend: b(),
                outcome: report.outcome().into(),
            })
            .inc();
        for (direction, c) in [
            ("upstream", report.upstream),
            ("downstream", report.downstream),
        ] {
            let labels = FlowLabels {
                backend: b(),
                direction: direction.into(),
            };
            self.messages.get_or_create(&labels).inc_by(c.frames);
            self.bytes.get_or_create(&labels).inc_by(c.bytes);
        }
        for (to, code) in report.gateway_closes() {
            self.closes_sent
                .get_or_create(&CloseLabels {
                    to: to.into(),
                    code: close_code_label(code),
                })
                .inc();
        }
    }

    /// Observes a latency in a per-backend histogram.
    pub fn observe(
        family: &Family<BackendLabel, Histogram, LatencyBuckets>,
        backend: &str,
        took: Duration,
    ) {
        family
            .get_or_create(&BackendLabel {
                backend: backend.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}

/// `family` holds a line for each of `expiries` and no other.
fn set_expiries(family: &Family<CertLabels, Gauge>, expiries: &[crate::cert_expiry::CertExpiry]) {
    family.clear();
    for expiry in expiries {
        let file = expiry.file.display().to_string();
        set_expiry(family, &expiry.key, &file, expiry.not_after);
    }
}

/// `family`'s line for the config key `key` and `file` reads `at` (Unix time).
fn set_expiry(family: &Family<CertLabels, Gauge>, key: &str, file: &str, at: i64) {
    family
        .get_or_create(&CertLabels {
            key: key.to_owned(),
            file: file.to_owned(),
        })
        .set(at);
}
