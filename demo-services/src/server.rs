//! Accept loop and HTTP upgrade: one task per TCP connection, which makes the TLS
//! handshake when the backend serves `wss://`, answers the HTTP upgrade and then runs
//! the WebSocket session.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::upgrade::{is_upgrade_request, UpgradeFut};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn, Instrument};

use crate::request_log::{RequestLog, LOG_LINES_PER_SECOND};
use crate::session::{self, SessionConfig};
use crate::{Backend, DemoError};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client of a `wss://` backend may take over its TLS handshake (the header
/// timeout starts after it), so a stalled handshake cannot hold its task forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// First and longest pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// What to serve: one backend, and how often it pushes.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// Which demo backend (its path and push text).
    pub backend: Backend,
    /// Period of the hello push to every open connection; `None` = no push.
    pub push_interval: Option<Duration>,
}

/// WebSocket sessions one server has served: lets a test with several instances of the
/// same backend tell which instance a connection reached.
#[derive(Debug, Default)]
pub struct SessionCounts {
    /// Sessions upgraded so far.
    started: AtomicU64,
    /// Sessions open now.
    open: AtomicU64,
}

impl SessionCounts {
    /// Sessions upgraded so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Sessions open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

/// Counts one session as open until dropped (also when its task is aborted).
struct OpenSession<'a>(&'a SessionCounts);

impl<'a> OpenSession<'a> {
    fn new(counts: &'a SessionCounts) -> Self {
        counts.started.fetch_add(1, Ordering::Relaxed);
        counts.open.fetch_add(1, Ordering::Relaxed);
        Self(counts)
    }
}

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// State every connection of one backend shares.
struct Shared {
    /// Backend and push period.
    opts: ServiceOptions,
    /// The backend's rate-limited `RequestMessage` log.
    log: RequestLog,
    /// Sessions served, for tests.
    counts: Arc<SessionCounts>,
    /// `Some` when the backend serves `wss://`: every connection starts with a handshake.
    tls: Option<TlsAcceptor>,
}

/// Binds a TCP listener on `addr`, naming the address in the error (for the CLI).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Bind { addr, source })
}

/// Serves one demo backend on an already-bound listener until `shutdown` resolves.
///
/// Binding is left to the caller so tests can pass a port-0 listener. When `shutdown`
/// resolves the listener is dropped and every open connection is aborted (closed without
/// a close frame, as if the backend died), then this returns.
pub async fn serve(
    listener: TcpListener,
    opts: ServiceOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    serve_counted(listener, opts, shutdown, Arc::default()).await
}

/// Like [`serve`], counting the sessions it serves in `counts`.
pub async fn serve_counted(
    listener: TcpListener,
    opts: ServiceOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    counts: Arc<SessionCounts>,
) -> Result<(), DemoError> {
    serve_with_tls(listener, opts, None, shutdown, counts).await
}

/// Like [`serve_counted`]; with `tls` (from [`crate::tls::acceptor`]) the backend serves
/// `wss://`: each connection's task first makes the TLS handshake, then the same HTTP
/// upgrade and session run over the TLS stream. A client whose handshake fails or stalls
/// is dropped (logged at debug) without affecting the others. `None` is plain `ws://`.
pub async fn serve_with_tls(
    listener: TcpListener,
    opts: ServiceOptions,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    counts: Arc<SessionCounts>,
) -> Result<(), DemoError> {
    let addr = listener.local_addr().map_err(DemoError::LocalAddr)?;
    let backend = opts.backend;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    info!(
        backend = backend.name(),
        push_interval = ?opts.push_interval,
        "{} listening on {scheme}://{addr}{}",
        backend.id(),
        backend.path(),
    );
    let shared = Arc::new(Shared {
        log: RequestLog::new(backend, LOG_LINES_PER_SECOND),
        opts,
        counts,
        tls,
    });
    let _reporter = AbortOnDrop(tokio::spawn({
        let shared = Arc::clone(&shared);
        async move { shared.log.report_every_second().await }
    }));

    let mut connections = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF.0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        error!(backend = backend.name(), error = %e, "connection task panicked");
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    let span = tracing::debug_span!("conn", backend = backend.name(), %peer);
                    connections.spawn(
                        handle_connection(stream, Arc::clone(&shared)).instrument(span),
                    );
                }
                Err(e) => {
                    warn!(backend = backend.name(), error = %e, ?backoff, "accept failed; retrying");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                }
            },
        }
    }
    drop(listener);
    connections.shutdown().await;
    debug!(backend = backend.name(), "stopped");
    Ok(())
}

/// Serves one TCP connection: the TLS handshake for a `wss://` backend, HTTP/1 until a
/// WebSocket upgrade, then the session.
///
/// Either way the upgraded connection is unwrapped back to its own stream type, so the
/// session reads and writes the socket (or the TLS stream) without hyper in between.
async fn handle_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Batching happens above the socket; Nagle would only add latency to each flush.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "set_nodelay failed");
    }
    let Some(acceptor) = &shared.tls else {
        let Some(upgraded) = http_upgrade(stream, shared.opts.backend).await else {
            return;
        };
        return match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                // Fast path: the bare socket, split without a lock. Bytes hyper read past
                // the request go in front of the reader (copied, so hyper's buffer is freed).
                let (read, write) = parts.io.into_inner().into_split();
                let early = Bytes::copy_from_slice(&parts.read_buf);
                run_session(std::io::Cursor::new(early).chain(read), write, &shared).await;
            }
            Err(upgraded) => run_upgraded(upgraded, &shared).await,
        };
    };
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(timeout = ?TLS_HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            return;
        }
    };
    let Some(upgraded) = http_upgrade(stream, shared.opts.backend).await else {
        return;
    };
    match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
        Ok(parts) => {
            // A TLS stream has no owned halves; tokio's split shares it behind a lock.
            let (read, write) = tokio::io::split(parts.io.into_inner());
            let early = Bytes::copy_from_slice(&parts.read_buf);
            run_session(std::io::Cursor::new(early).chain(read), write, &shared).await;
        }
        Err(upgraded) => run_upgraded(upgraded, &shared).await,
    }
}

/// Serves HTTP/1 on `io` until a WebSocket upgrade and returns the upgraded connection;
/// `None` when the connection ended without one (a refusal, a plain request, an error).
///
/// The service only stores the upgrade future and returns the 101; the connection
/// future completes once hyper has written it and handed the stream over, and the
/// caller's task then runs the session (one task per connection, so shutdown can abort
/// it).
async fn http_upgrade<S>(io: S, backend: Backend) -> Option<Upgraded>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let pending: Arc<Mutex<Option<UpgradeFut>>> = Arc::default();
    let service = {
        let pending = Arc::clone(&pending);
        service_fn(move |req| {
            std::future::ready(Ok::<_, Infallible>(respond(req, backend, &pending)))
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = connection.await {
        debug!(error = %e, "http connection failed");
        return None;
    }
    let upgrade = match pending.lock() {
        Ok(mut slot) => slot.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    // None: a plain HTTP connection that ended.
    match upgrade?.await {
        Ok(ws) => Some(ws.into_inner().into_inner()),
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            None
        }
    }
}

/// The session over hyper's upgraded connection, when it is not the stream type the
/// caller expected (hyper keeps the bytes it read past the request itself).
async fn run_upgraded(upgraded: Upgraded, shared: &Shared) {
    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
    run_session(read, write, shared).await;
}

/// Runs one WebSocket session, counted as open while it lasts, and logs its end.
async fn run_session<R, W>(read: R, write: W, shared: &Shared)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let _open = OpenSession::new(&shared.counts);
    let cfg = SessionConfig {
        backend: shared.opts.backend,
        push_interval: shared.opts.push_interval,
        log: &shared.log,
    };
    let (outcome, summary) = session::run(read, write, &cfg).await;
    debug!(
        %outcome,
        frames = summary.frames,
        bytes = summary.bytes,
        pushes = summary.pushes,
        duration_ms = started.elapsed().as_millis() as u64,
        "session ended"
    );
}

/// Answers one HTTP request: the 101 for a valid upgrade on the backend's path (storing
/// the upgrade future in `pending`), otherwise a refusal with a one-line reason.
fn respond(
    mut req: Request<Incoming>,
    backend: Backend,
    pending: &Mutex<Option<UpgradeFut>>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != backend.path() {
        return refuse(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET {
        let mut resp = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET (a WebSocket upgrade) is allowed\n",
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    if !is_upgrade_request(&req) {
        let mut resp = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this path only accepts WebSocket upgrades\n",
        );
        let headers = resp.headers_mut();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
        return resp;
    }
    match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((resp, upgrade)) => {
            match pending.lock() {
                Ok(mut slot) => *slot = Some(upgrade),
                Err(poisoned) => *poisoned.into_inner() = Some(upgrade),
            }
            resp.map(|_| Full::default())
        }
        Err(e) => {
            debug!(error = %e, "invalid upgrade request");
            refuse(
                StatusCode::BAD_REQUEST,
                "invalid WebSocket upgrade (key or version 13 missing)\n",
            )
        }
    }
}

/// A plain-text refusal.
fn refuse(status: StatusCode, reason: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(reason.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Aborts the task when dropped, so helper tasks end with the server future even when it
/// is itself dropped or aborted.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
