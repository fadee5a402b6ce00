//! OCSP fetch (`[tls] ocsp_fetch`): the gateway asks each certificate's OCSP responder
//! (the `http://` URL in its authorityInfoAccess) for its status at start-up, and again
//! before the response in force goes stale, and staples what it gets, as nginx's
//! `ssl_stapling on` and HAProxy's `ocsp-update on` do.
//!
//! A response is put in force only if [`crate::ocsp::check_signed`] takes it: a current
//! "good" status of this certificate, signed by its issuer (or a responder the issuer
//! certified), since it came over plain HTTP. A failed fetch keeps the response in force,
//! which is stapled until its nextUpdate, and is tried again after [`RETRY`] at most.
//!
//! The fetches are [`Target`]s, one per certificate and responder, shared by the configs
//! that serve the certificate: a reload that keeps a certificate keeps its response and
//! its schedule. [`keep_stapled`] runs them for as long as a config in force holds them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::in_use::InUse;
use crate::metrics::Metrics;
use crate::server_certs::StapleSlot;
use crate::state::Shared;

/// The shortest `ocsp_refresh` accepted (an hour is usual; seconds are for tests).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// After a failed fetch, the next one comes this soon (or after `ocsp_refresh`, if that is
/// shorter), as HAProxy's `ocsp-update.mindelay`.
pub const RETRY: Duration = Duration::from_secs(300);

/// How long the start waits for the first responses ([`first_round`]) at most.
pub const FIRST_ROUND: Duration = Duration::from_secs(5);

/// A fetched response is refreshed this long before its nextUpdate at the latest, so that
/// a responder slow to answer leaves time for retries.
const AHEAD_OF_NEXT_UPDATE: Duration = Duration::from_secs(3600);

/// The OCSP responses of one certificate, asked of one responder.
#[derive(Debug)]
pub struct Target {
    /// Where the fetched response is put in force.
    pub slot: Arc<StapleSlot>,
    /// The certificate (chain, leaf first, issuer second) and key it is stapled to.
    key: CertifiedKey,
    /// The responder, as the certificate names it.
    responder: String,
    /// The GET that asks it.
    request: String,
    /// `ocsp_refresh`, in milliseconds: the config most recently built sets it.
    refresh_ms: AtomicU64,
    /// When the next fetch is due.
    due: Mutex<Instant>,
    /// Whether the last fetch succeeded and was logged: the first success, and the first
    /// after a failure, are logged at info, the others at debug.
    quiet: AtomicBool,
}

impl Target {
    fn due(&self) -> Instant {
        *self.due.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_due(&self, at: Instant) {
        *self.due.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    fn refresh(&self) -> Duration {
        Duration::from_millis(self.refresh_ms.load(Ordering::Relaxed))
    }

    fn issuer(&self) -> Option<&CertificateDer<'static>> {
        self.key.cert.get(1)
    }
}

/// The targets the configs in force hold, by certificate (leaf), key name and responder.
static TARGETS: InUse<(CertificateDer<'static>, String, String), Target> = InUse::new();

/// Told when a target is added, so that [`keep_stapled`] fetches its response at once.
static ADDED: Notify = Notify::const_new();

/// The fetch of OCSP responses for the certificate of `key` (named `named_by` in the log,
/// e.g. `tls.cert`): `None` if the certificate names no `http://` OCSP responder (logged
/// at warn: its handshakes go without a staple). A target of a config built before for
/// the same certificate, key name and responder is the one returned, with its response
/// and schedule; else a new one, due at once. Errors: the chain lacks the issuer's
/// certificate, which the request names.
pub fn target_for(
    key: &CertifiedKey,
    named_by: String,
    refresh: Duration,
) -> Result<Option<Arc<Target>>, String> {
    let Some(leaf) = key.cert.first() else {
        return Err("no certificate".into());
    };
    let Some(responder) = crate::ocsp::responder_url(leaf) else {
        warn!(key = %named_by, "ocsp_fetch: the certificate names no http:// OCSP responder; its handshakes go without a staple");
        return Ok(None);
    };
    let Some(issuer) = key.cert.get(1) else {
        return Err(format!(
            "with ocsp_fetch, the file must hold the issuer's certificate after the leaf: the request to {responder} names the issuer's key"
        ));
    };
    let refresh_ms = u64::try_from(refresh.as_millis()).unwrap_or(u64::MAX);
    let id = (leaf.clone(), named_by.clone(), responder.clone());
    let (target, made) = TARGETS.get_or_make(id, || {
        Ok::<_, String>(Target {
            request: crate::ocsp::request_url(&responder, leaf, issuer)?,
            slot: Arc::new(StapleSlot::new(named_by)),
            key: key.clone(),
            responder,
            refresh_ms: AtomicU64::new(refresh_ms),
            due: Mutex::new(Instant::now()),
            quiet: AtomicBool::new(false),
        })
    })?;
    if made {
        ADDED.notify_one();
    } else {
        target.refresh_ms.store(refresh_ms, Ordering::Relaxed);
    }
    Ok(Some(target))
}

/// The fetched responses in force, as the certificate key that names each (`tls.cert`,
/// `tls.certs[N].cert`), its responder, and its nextUpdate: for the metrics a reload
/// rebuilds.
pub fn in_force() -> Vec<crate::cert_expiry::CertExpiry> {
    TARGETS
        .all()
        .iter()
        .filter_map(|t| {
            Some(crate::cert_expiry::CertExpiry {
                key: t.slot.named_by().to_owned(),
                file: t.responder.clone().into(),
                not_after: crate::cert_expiry::unix(t.slot.next_update()?),
            })
        })
        .collect()
}

/// Fetches every target's first response at once, waiting at most [`FIRST_ROUND`]: run
/// before the listener accepts, so that the first clients get a staple too (a
/// must-staple certificate's would otherwise be refused by Firefox until the first fetch).
/// A fetch not done by then is left to [`keep_stapled`], which starts on it at once.
pub async fn first_round(shared: &Arc<Shared>) {
    let targets = TARGETS.all();
    if targets.is_empty() {
        return;
    }
    let mut fetches = tokio::task::JoinSet::new();
    for target in targets {
        let shared = shared.clone();
        fetches.spawn(async move { fetch_into(&target, &shared.metrics).await });
    }
    let all = async { while fetches.join_next().await.is_some() {} };
    if tokio::time::timeout(FIRST_ROUND, all).await.is_err() {
        warn!(
            waited = ?FIRST_ROUND,
            "OCSP responders slow to answer: serving without waiting for the rest of the first responses"
        );
    }
}

/// Fetches each target's response when it is due, for as long as it runs (the gateway's
/// lifetime): one fetch at a time, each within the fetch time limit.
pub async fn keep_stapled(shared: Arc<Shared>) {
    let metrics = &shared.metrics;
    loop {
        // Only the list's due times are kept across the wait: a target no config holds
        // any more must be let go.
        let next = {
            let targets = TARGETS.all();
            let now = Instant::now();
            if let Some(target) = targets.iter().find(|t| t.due() <= now) {
                fetch_into(target, metrics).await;
                continue;
            }
            targets.iter().map(|t| t.due()).min()
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = ADDED.notified() => {}
                }
            }
            None => ADDED.notified().await,
        }
    }
}

/// Fetches `target`'s response and puts it in force if it checks out; schedules the next.
async fn fetch_into(target: &Target, metrics: &Metrics) {
    let refresh = target.refresh();
    let fetched =
        match crate::jwks_fetch::get(&target.request, None, "application/ocsp-response").await {
            Err(e) => Err(e.to_string()),
            Ok(body) => match target.issuer() {
                None => Err("no issuer certificate".to_owned()),
                Some(issuer) => crate::ocsp::check_signed(
                    body.to_vec(),
                    &target.key.cert,
                    issuer,
                    SystemTime::now(),
                )
                .map_err(|e| e.to_string())
                .and_then(|staple| match staple.fresh_at(SystemTime::now()) {
                    true => Ok(staple),
                    false => Err("it is past its nextUpdate already".to_owned()),
                }),
            },
        };
    metrics.ocsp_fetch(fetched.is_ok());
    let key = target.slot.named_by();
    match fetched {
        Ok(staple) => {
            let next_update = staple.next_update;
            let wait = next_fetch_after(next_update, SystemTime::now(), refresh);
            if let Some(at) = next_update {
                metrics.staple_in_force(key, &target.responder, crate::cert_expiry::unix(at));
            }
            target.slot.put(&target.key, staple);
            target.set_due(Instant::now() + wait);
            let next_update = next_update.map(crate::ocsp::rfc3339);
            let next_update = next_update.as_deref().unwrap_or("-");
            if !target.quiet.swap(true, Ordering::Relaxed) {
                info!(%key, responder = %target.responder, next_update, "OCSP response fetched and stapled");
            } else {
                debug!(%key, responder = %target.responder, next_update, "OCSP response fetched and stapled");
            }
        }
        Err(problem) => {
            target.quiet.store(false, Ordering::Relaxed);
            target.set_due(Instant::now() + RETRY.min(refresh));
            warn!(%key, responder = %target.responder, %problem, "OCSP fetch failed; the response in force, if any, stays while fresh");
        }
    }
}

/// How long after a fetch at `now` of a response valid until `next_update` the next one
/// is: [`AHEAD_OF_NEXT_UPDATE`] before that, but at most `refresh` and at least
/// [`RETRY`] (or `refresh`, if shorter).
fn next_fetch_after(
    next_update: Option<SystemTime>,
    now: SystemTime,
    refresh: Duration,
) -> Duration {
    let shortest = RETRY.min(refresh);
    match next_update {
        None => refresh,
        Some(until) => until
            .duration_since(now)
            .unwrap_or_default()
            .saturating_sub(AHEAD_OF_NEXT_UPDATE)
            .clamp(shortest, refresh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_next_fetch_comes_an_hour_before_the_next_update_within_the_bounds() {
        let now = SystemTime::now();
        // A week-long response: refreshed every `refresh`.
        assert_eq!(next_fetch_after(Some(now + 168 * HOUR), now, HOUR), HOUR);
        // Two hours left: an hour before the end.
        assert_eq!(next_fetch_after(Some(now + 2 * HOUR), now, 12 * HOUR), HOUR);
        // Nearly stale: not sooner than the retry delay.
        assert_eq!(
            next_fetch_after(Some(now + 60 * Duration::from_secs(1)), now, HOUR),
            RETRY
        );
        assert_eq!(next_fetch_after(Some(now), now, HOUR), RETRY);
        // No nextUpdate: every `refresh`; a refresh shorter than the retry delay bounds it.
        assert_eq!(next_fetch_after(None, now, HOUR), HOUR);
        assert_eq!(
            next_fetch_after(Some(now + 168 * HOUR), now, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
