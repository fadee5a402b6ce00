//! JWKS fetch: the JSON Web Key Set an identity provider publishes at its `jwks_uri`
//! (`[auth] jwks_url`), fetched over HTTP or HTTPS and kept fresh.
//!
//! The set is fetched when the config is loaded (start, reload: a load that cannot fetch
//! it fails, as an unreadable key file does), then every `jwks_refresh` by
//! [`keep_fresh`], and when a token names a key the set in force lacks — the provider
//! has rotated — so that rotation needs no reload and refuses no one: that token's
//! connection waits for the fetch ([`after_refetch`]). A refresh that fails keeps the
//! keys in force and is logged; the next one tries again.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};
use url::Url;

use crate::auth::Verifier;
use crate::state::Shared;

/// The shortest `jwks_refresh` accepted (minutes are what providers' caching headers
/// usually suggest; seconds are for tests).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// How soon after one fetch a token with an unknown `kid` may cause the next: tokens
/// naming made-up keys then cost the provider at most one request per this long.
pub const UNKNOWN_KEY_REFETCH_AFTER: Duration = Duration::from_secs(5);

/// How long a connection whose token names an unknown key waits for the refetch that
/// may bring it, before it is refused: the provider's answer is usually a matter of
/// milliseconds, and a connection is held no longer than this for it.
pub const UNKNOWN_KEY_WAIT: Duration = Duration::from_secs(2);

/// Connect, TLS, request and the whole answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest key set taken (providers publish a few KiB).
const MAX_BODY: usize = 1 << 20;

/// Why a key set could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL or the CA file is unusable.
    #[error("{0}")]
    Setup(String),
    /// TCP connect or TLS handshake failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// The provider answered something other than 200.
    #[error("answered HTTP {0}, not 200")]
    Status(u16),
    /// No complete answer within [`FETCH_TIMEOUT`].
    #[error("no answer within {}s", FETCH_TIMEOUT.as_secs())]
    Timeout,
}

/// Checks that `url` is one a key set can be fetched from: `http://` or `https://` with
/// a host.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

/// `url` parsed, if it is `http://` or `https://` with a host.
fn parse_url(url: &str) -> Result<Url, String> {
    let shown = crate::route::without_userinfo(url);
    let parsed = Url::parse(url).map_err(|e| format!("{shown:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{shown:?}: scheme must be https:// or http://, not {}://",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{shown:?}: no host"));
    }
    crate::route::refuse_userinfo(&parsed, &shown)?;
    Ok(parsed)
}

/// Fetches the key set at `url`, trusting the CAs in `ca` (or the system's roots) for
/// `https://`. Returns the body.
pub async fn fetch(url: &str, ca: Option<&Path>) -> Result<Bytes, FetchError> {
    get(url, ca, "application/json, application/jwk-set+json").await
}

/// GETs `url` (`http://` or `https://`, trusting the CAs in `ca` or the system's roots)
/// asking for the media types in `accept`, within a time limit; the body of a 200 (at
/// most 1 MiB). Also what [`crate::ocsp_fetch`] asks responders with.
pub async fn get(url: &str, ca: Option<&Path>, accept: &'static str) -> Result<Bytes, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(url, ca, accept))
        .await
        .map_err(|_| FetchError::Timeout)?
}

/// [`fetch`] for callers that cannot await: config loading runs inside the gateway's
/// runtime, so the fetch gets a thread and a runtime of its own.
pub fn fetch_blocking(url: &str, ca: Option<&Path>) -> Result<Bytes, FetchError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| FetchError::Setup(format!("runtime: {e}")))?
                .block_on(fetch(url, ca))
        })
        .join()
        .unwrap_or_else(|_| Err(FetchError::Setup("fetch thread panicked".into())))
    })
}

async fn fetch_inner(
    url: &str,
    ca: Option<&Path>,
    accept: &'static str,
) -> Result<Bytes, FetchError> {
    let parsed = parse_url(url).map_err(FetchError::Setup)?;
    let host = parsed.host_str().unwrap_or_default();
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| FetchError::Setup(format!("{url:?}: no port")))?;
    // `[::1]` in a URL is `::1` to the resolver and to SNI.
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare_host, port))
        .await
        .map_err(FetchError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let request =
        hyper::Request::get(&parsed[url::Position::BeforePath..url::Position::AfterQuery])
            .header(
                header::HOST,
                &parsed[url::Position::BeforeHost..url::Position::AfterPort],
            )
            .header(header::ACCEPT, accept)
            .header(header::USER_AGENT, "wsgate")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
    if parsed.scheme() == "https" {
        let config = client_config(ca).map_err(FetchError::Setup)?;
        let name = ServerName::try_from(bare_host.to_owned())
            .map_err(|e| FetchError::Setup(format!("{host}: {e}")))?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(FetchError::Connect)?;
        exchange(tls, request).await
    } else {
        exchange(tcp, request).await
    }
}

/// One HTTP/1.1 request on `io`, and its body if the answer is 200.
async fn exchange<IO>(io: IO, request: hyper::Request<Empty<Bytes>>) -> Result<Bytes, FetchError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| FetchError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    let driver = tokio::spawn(conn);
    let answer = sender.send_request(request).await.map_err(http)?;
    let status = answer.status().as_u16();
    if status != 200 {
        driver.abort();
        return Err(FetchError::Status(status));
    }
    let body = Limited::new(answer.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| FetchError::Http(format!("reading the body: {e}")))?
        .to_bytes();
    driver.abort();
    Ok(body)
}

/// A TLS client config trusting `ca`'s certificates, or the system's roots.
fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = crate::tls::roots_or_system(
        ca,
        "no trusted root certificates on this system: set jwks_ca",
    )?;
    let mut config = crate::tls::client_builder(roots)?.with_no_client_auth();
    crate::tls::offer_http1(&mut config);
    Ok(Arc::new(config))
}

/// Refetches of the key set asked for by tokens that name a key it lacks, between the
/// connections that ask and [`keep_fresh`], which fetches.
#[derive(Debug)]
pub struct Refetch {
    /// Told when a token named a key the set lacks.
    wanted: Notify,
    /// Told when a reload put a verifier in force: its settings (`jwks_refresh`) may
    /// have changed, and it fetched the set itself.
    reloaded: Notify,
    /// When the last fetch began.
    last: Mutex<Instant>,
    /// Fetches ended so far (success or not), for connections waiting on one.
    ended: watch::Sender<u64>,
}

impl Default for Refetch {
    fn default() -> Self {
        Self {
            wanted: Notify::new(),
            reloaded: Notify::new(),
            last: Mutex::new(Instant::now()),
            ended: watch::Sender::new(0),
        }
    }
}

impl Refetch {
    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn began(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// A reload put a verifier in force, having fetched the key set if it has a
    /// `jwks_url`: the next fetch is a whole `jwks_refresh` (the reload's) from now, and
    /// a token naming an unknown key waits out the pause after this fetch too.
    pub fn after_reload(&self, fetched: bool) {
        if fetched {
            self.began();
        }
        self.reloaded.notify_one();
    }
}

/// For a token that names a key the set in force (`current`) lacks: asks for a refetch
/// and, when one may start at once (none began in the last
/// [`UNKNOWN_KEY_REFETCH_AFTER`]), waits for it, at most [`UNKNOWN_KEY_WAIT`]. Returns
/// the verifier put in force meanwhile, if one was; `None` means refuse. So the first
/// token of a rotated key is let through, and tokens naming made-up keys are refused at
/// once between refetches.
pub async fn after_refetch(shared: &Shared, current: &Arc<Verifier>) -> Option<Arc<Verifier>> {
    let refetch = &shared.refetch;
    let mut ended = refetch.ended.subscribe();
    // Read before asking: once asked, the fetcher (on another thread) may begin at once
    // and move `last` to now, which would make this very refetch look too recent to wait for.
    let may_start_now = refetch.last().elapsed() >= UNKNOWN_KEY_REFETCH_AFTER;
    refetch.wanted.notify_one();
    if !may_start_now {
        return None;
    }
    let _ = tokio::time::timeout(UNKNOWN_KEY_WAIT, ended.changed()).await;
    let now = shared.verifier();
    (!Arc::ptr_eq(&now, current)).then_some(now)
}

/// Keeps the key set of `[auth] jwks_url` fresh for as long as it runs: every
/// `jwks_refresh` (a reload's from that reload on), and [`UNKNOWN_KEY_REFETCH_AFTER`]
/// after the last fetch when a token named an unknown key. A fetched set is put in force with the settings of the verifier
/// it renews, unless a reload replaced that verifier meanwhile (the reload fetched for
/// itself). Logs "JWT key set loaded" when the set of `kid`s changes.
pub async fn keep_fresh(shared: Arc<Shared>) {
    let refetch = &shared.refetch;
    let mut failing = false;
    loop {
        let refresh = shared.verifier().auth().jwks_refresh;
        tokio::select! {
            _ = tokio::time::sleep_until(refetch.last() + refresh) => {}
            _ = refetch.wanted.notified() => {
                tokio::time::sleep_until(refetch.last() + UNKNOWN_KEY_REFETCH_AFTER).await;
            }
            // The wait is counted again, with the reload's interval and fetch.
            _ = refetch.reloaded.notified() => continue,
        }
        refetch.began();
        let current = shared.verifier();
        let auth = current.auth();
        let Some(url) = &auth.jwks_url else {
            continue;
        };
        let renewed = match fetch(url, auth.jwks_ca.as_deref()).await {
            Ok(body) => Verifier::with_key_set(auth, &body).map_err(|(_, problem)| problem),
            Err(e) => Err(format!("{url}: {e}")),
        };
        shared.metrics.jwks_fetch(renewed.is_ok());
        match renewed {
            Ok(renewed) => {
                if failing {
                    info!(jwks_url = %url, "JWT key set fetched again");
                    failing = false;
                }
                let kids: Vec<String> = renewed.kids().into_iter().map(str::to_owned).collect();
                let changed = kids != current.kids();
                if shared.renew_verifier(&current, renewed) && changed {
                    info!(jwks = %url, ?kids, "JWT key set loaded");
                }
            }
            Err(problem) => {
                warn!(jwks_url = %url, %problem, "JWT key set fetch failed; the keys in force stay");
                failing = true;
            }
        }
        refetch.ended.send_modify(|n| *n += 1);
    }
}
