//! One client connection: TLS, HTTP, the handshake phases, and the upgrade into a session.
//!
//! Phases run in the order of DESIGN.md: checks, auth, route, backend connect, accept.
//! A failure in any of them is a [`Refusal`], turned into the HTTP answer in one place.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::{debug, info, warn, Instrument};

use crate::auth::AuthError;
use crate::backend::{self, BackendConn};
use crate::backend_tls::BackendStream;
use crate::checks;
use crate::credentials;
use crate::limits::{Admission, LimitHit, Slot, SubjectSlot};
use crate::metrics::{BackendLabel, Metrics};
use crate::proxy_header;
use crate::refusal::Refusal;
use crate::registry::{CloseOrder, SessionInfo};
use crate::session::{self, Side};
use crate::state::Shared;
use crate::tls_stream::{self, TlsStream};
use crate::wsclient::accept_key;

type Body = Full<Bytes>;

/// Serves one accepted TCP connection to its end. Holds its slot (its place under the
/// connection limits) for as long as the connection or its session lives; without one,
/// every request gets 503. With `[server] proxy_protocol` the PROXY header comes first,
/// within the TLS handshake's time, and names the `peer` the rest sees.
pub async fn serve_connection(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    conn_id: u64,
    admission: Admission,
) {
    let _handshaking = Handshaking::start(&shared);
    crate::tcp_opts::tune(&tcp);
    let config = shared.config();
    let deadline = tokio::time::Instant::now() + config.timeouts.tls_handshake;
    let slot = match admission {
        Admission::Decided(slot) => slot,
        Admission::AfterProxyHeader => {
            if !config.server.proxy_source_allowed(peer.ip()) {
                shared.metrics.proxy_header_refusals.inc();
                info!(
                    conn = conn_id,
                    "connection from outside proxy_protocol_from closed"
                );
                return;
            }
            match tokio::time::timeout_at(deadline, proxy_header::read(&mut tcp)).await {
                Ok(Ok(client)) => {
                    peer = client.map_or(peer, crate::listener::unmapped);
                    shared.limiter().try_acquire(peer.ip())
                }
                Ok(Err(e)) => {
                    shared.metrics.proxy_header_refusals.inc();
                    info!(conn = conn_id, error = %e, "PROXY protocol header refused");
                    return;
                }
                Err(_) => {
                    shared.metrics.proxy_header_refusals.inc();
                    info!(conn = conn_id, "PROXY protocol header timed out");
                    return;
                }
            }
        }
    };
    let accepting = tls_stream::accept_client(shared.tls(), tcp);
    let (tls, client_cert) = match tokio::time::timeout_at(deadline, accepting).await {
        Ok(Ok((tls, client_cert))) => {
            let resumed = tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            shared.metrics.tls_handshake(resumed);
            (tls, client_cert)
        }
        // Counted, and logged at debug only: scanners and port checks fail handshakes
        // all day (nginx logs them at info, below its default level).
        Ok(Err(e)) => {
            let reason = match e.kind() {
                std::io::ErrorKind::InvalidData if crate::client_cert::refused(&e) => "client_cert",
                std::io::ErrorKind::InvalidData => "refused",
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => "client_closed",
                _ => "io",
            };
            shared.metrics.tls_handshake_failed(reason);
            debug!(conn = conn_id, %peer, error = %e, reason, "TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.tls_handshake_failed("timeout");
            debug!(conn = conn_id, %peer, "TLS handshake timed out");
            return;
        }
    };
    // Described once per connection, for every request on it: its log lines name it, and
    // a backend is told of it if `client_cert_header` says so.
    let client_cert: Option<Arc<str>> =
        client_cert.map(|leaf| crate::client_cert::describe(&leaf).into());
    let (slot, limit_hit) = match slot {
        Ok(slot) => (Some(slot), None),
        Err(hit) => (None, Some(hit)),
    };
    let permit = Arc::new(std::sync::Mutex::new(slot));
    let svc_shared = shared.clone();
    let requested = Requested::new(&shared);
    let refused_upgrade = RefusedUpgrade::default();
    let svc_refused_upgrade = refused_upgrade.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        let permit = permit.clone();
        requested.mark();
        // Only upgrade requests carry one; `handle` takes its own on the way to a 101.
        let on_upgrade = req.extensions().get::<hyper::upgrade::OnUpgrade>().cloned();
        let refused_upgrade = svc_refused_upgrade.clone();
        let client_cert = client_cert.clone();
        async move {
            let from = Client {
                peer,
                conn_id,
                client_cert,
                request_id: None,
            };
            let response = handle(shared, req, from, permit, limit_hit).await;
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                refused_upgrade.keep(on_upgrade);
            }
            Ok::<_, Infallible>(response)
        }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.timeouts.header_read)
        // The read buffer's cap alone lets a head through that the last read took whole
        // past it (up to ~1.75 times the cap): the head itself is counted too.
        .max_buf_size(config.limits.max_header_bytes)
        .max_header_size(config.limits.max_header_bytes)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await;
    refused_upgrade.close(config.timeouts.close).await;
    if let Err(e) = result {
        match parser_refusal(&e) {
            Some((status, label)) => {
                shared.metrics.refused(status, label);
                info!(conn = conn_id, %peer, status, reason = %e, "refused");
            }
            None => {
                debug!(conn = conn_id, %peer, error = %e, "HTTP connection ended with an error")
            }
        }
    }
}

/// An upgrade request of the connection that was answered with anything but a 101 (one
/// of the gateway's refusals), kept to end the connection with TLS close_notify.
///
/// hyper ends a connection whose answer it wrote with `Connection: close` by shutting its
/// stream down, which sends close_notify before the FIN. An upgrade request is an
/// exception: hyper prepares its upgrade when the request comes, and once the refusal is
/// written it hands the stream over as upgraded whatever the status was. No one waits
/// for that upgrade after a refusal, so the stream was dropped without close_notify, and
/// clients reading the refusal saw a truncated answer ("unexpected EOF").
#[derive(Clone, Default)]
struct RefusedUpgrade(Arc<std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>>);

impl RefusedUpgrade {
    /// Keeps `on_upgrade`, the refused request's (none for a request that was no upgrade).
    fn keep(&self, on_upgrade: Option<hyper::upgrade::OnUpgrade>) {
        if let (Some(on_upgrade), Ok(mut kept)) = (on_upgrade, self.0.lock()) {
            *kept = Some(on_upgrade);
        }
    }

    /// Once the HTTP connection has ended: shuts down the stream hyper handed over for the
    /// refused upgrade, if it did (close_notify, then the FIN), within `timeout` (a
    /// client that reads nothing must not hold the connection).
    async fn close(&self, timeout: std::time::Duration) {
        let kept = self.0.lock().ok().and_then(|mut kept| kept.take());
        let Some(on_upgrade) = kept else {
            return;
        };
        let _ = tokio::time::timeout(timeout, async {
            // Ready at once: the stream was handed over as the connection ended. An error
            // (the connection failed first) leaves nothing to close.
            if let Ok(upgraded) = on_upgrade.await {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut TokioIo::new(upgraded)).await;
            }
        })
        .await;
    }
}

/// The status of a request the HTTP parser refused itself, as hyper answers it (a
/// request head it cannot take), or as nginx logs it (no whole head within
/// `[timeouts] header_read`: the connection is closed with no answer), and its label.
fn parser_refusal(e: &hyper::Error) -> Option<(u16, &'static str)> {
    if e.is_timeout() {
        Some((408, "header_timeout"))
    } else if e.is_parse_too_large() {
        // hyper's two kinds of too large: the request line's target, or the whole head.
        if e.to_string().contains("URI") {
            Some((414, "uri_too_long"))
        } else {
            Some((431, "header_too_large"))
        }
    } else if e.is_parse() && e.to_string().contains("HTTP2 preface") {
        // hyper closes at once, with no answer; logged as nginx logs it.
        Some((400, "http2_preface"))
    } else if e.is_parse() {
        Some((400, "bad_request"))
    } else {
        None
    }
}

type PermitSlot = Arc<std::sync::Mutex<Option<Slot>>>;

async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    from: Client,
    permit: PermitSlot,
    limit_hit: Option<LimitHit>,
) -> Response<Body> {
    let (peer, conn_id) = (from.peer, from.conn_id);
    let started = std::time::Instant::now();
    let from = &Client {
        request_id: RequestId::new(&shared),
        ..from
    };
    if let Some(hit) = limit_hit {
        return refuse(&shared, hit.refusal(), from, &req);
    }
    if shared.draining.load(Ordering::Relaxed) {
        return refuse(
            &shared,
            Refusal::Unavailable("gateway is shutting down"),
            from,
            &req,
        );
    }
    // The one wait: what a client that leaves leaves during.
    let waiting = ClientWaiting {
        shared: Some(&shared),
        conn_id,
        peer,
        req: &req,
        request_id: from.request_id.as_ref().map(|id| &*id.value),
    };
    let client_cert = from.client_cert.as_deref();
    let prepared = prepare(&shared, &req, peer, client_cert, from.request_id.as_ref()).await;
    waiting.answered();
    match prepared {
        Ok(Prepared {
            target,
            conn,
            response,
            token_expiry,
            subject,
        }) => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            let subject_name = subject.as_ref().map(|s| s.key().clone());
            let places = Places {
                _conn: permit.lock().ok().and_then(|mut p| p.take()),
                _subject: subject,
            };
            Metrics::observe(
                &shared.metrics.handshake_seconds,
                &target,
                started.elapsed(),
            );
            let handshake_ms = started.elapsed().as_secs_f64() * 1e3;
            let instance = conn.lease.as_ref().map(|l| l.instance().addr.clone());
            let deflate = conn.extensions.is_some();
            let request_id = from.request_id.as_ref().map(|id| &*id.value);
            debug!(conn = conn_id, %peer, backend = %target, instance = instance.as_deref(), client_cert, request_id, handshake_ms, deflate, "upgrading");
            // A root span carrying the connection's fields itself: as a child it would keep
            // the connection's span (and its formatted fields) alive for the session's life.
            let span = tracing::info_span!(parent: None, "session", conn = conn_id, %peer, backend = %target, instance = instance.as_deref(), client_cert, request_id);
            // Counted from the moment the 101 goes out, so a drain that starts before the
            // session task runs still waits for it and closes it with 1001.
            let active = ActiveSession::start(
                &shared,
                conn_id,
                SessionInfo {
                    backend: target.clone(),
                    instance: instance.clone(),
                    subject: subject_name,
                    peer: Some(peer),
                },
            );
            // This task only waits for the upgrade; the session gets a task of its own
            // (see `start_session`), so what is needed here is not held for its life.
            tokio::spawn(
                async move {
                    match on_upgrade.await {
                        Ok(upgraded) => {
                            let ids = (conn_id, peer);
                            start_session(upgraded, conn, ids, token_expiry, places, active)
                        }
                        Err(e) => {
                            // The client left as its 101 went out: the backend, already
                            // upgraded, is closed as for a client lost mid-session, and the
                            // session counted as one.
                            let shared = active.shared.clone();
                            let close_timeout = shared.config().timeouts.close;
                            let report =
                                session::client_left_at_upgrade(conn.stream, close_timeout)
                                    .await;
                            drop(active);
                            shared.metrics.session_ended(&target, &report);
                            info!(conn = conn_id, %peer, backend = %target, error = %e, outcome = report.outcome(), "client left before its session began");
                        }
                    }
                }
                .instrument(span),
            );
            response
        }
        Err(refusal) => refuse(&shared, refusal, from, &req),
    }
}

/// Answers `req` with `refusal`, counted and logged with the backend ID it named (cut to
/// a log-sized length: the client chose it).
fn refuse<B>(shared: &Shared, refusal: Refusal, from: &Client, req: &Request<B>) -> Response<Body> {
    let (conn_id, peer, client_cert) = (from.conn_id, from.peer, from.client_cert.as_deref());
    let request_id = from.request_id.as_ref();
    let request_id_text = request_id.map(|id| &*id.value);
    let status = refusal.status().as_u16();
    shared.metrics.refused(status, refusal.label());
    let backend = credentials::logged_backend(req, &shared.config().browser);
    let backend = backend.as_deref();
    if refusal.status().is_server_error() {
        warn!(conn = conn_id, %peer, backend, client_cert, request_id = request_id_text, status, reason = %refusal, "refused");
    } else {
        info!(conn = conn_id, %peer, backend, client_cert, request_id = request_id_text, status, reason = %refusal, "refused");
    }
    let mut response = refusal.into_response();
    if let Some(id) = request_id {
        id.answer(response.headers_mut());
    }
    response
}

/// The id of one upgrade request (`[server] request_id_header`): sent to the backend,
/// given back to the client, and on the log lines of the request and its session.
struct RequestId {
    name: HeaderName,
    value: Arc<str>,
}

impl RequestId {
    /// A fresh id, when the config in force asks for one.
    fn new(shared: &Shared) -> Option<Self> {
        let config = shared.config();
        let name = config.server.request_id_header.as_deref()?;
        Some(Self {
            name: HeaderName::from_bytes(name.as_bytes()).ok()?,
            value: uuid::Uuid::new_v4().to_string().into(),
        })
    }

    /// Puts the id on an answer to the client.
    fn answer(&self, headers: &mut hyper::HeaderMap) {
        if let Ok(value) = HeaderValue::from_str(&self.value) {
            headers.insert(self.name.clone(), value);
        }
    }
}

/// A request waiting for its answer (the token check, the backend connect). Dropped
/// unanswered, the client left first: logged and counted as nginx does, 499
/// `client_closed`, so that an upgrade given up during a slow backend connect is seen.
struct ClientWaiting<'r, B> {
    /// `None` once answered.
    shared: Option<&'r Shared>,
    conn_id: u64,
    peer: SocketAddr,
    /// The request, for the backend ID it named.
    req: &'r Request<B>,
    request_id: Option<&'r str>,
}

impl<B> ClientWaiting<'_, B> {
    fn answered(mut self) {
        self.shared = None;
    }
}

impl<B> Drop for ClientWaiting<'_, B> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        shared.metrics.refused(499, "client_closed");
        let backend = credentials::logged_backend(self.req, &shared.config().browser);
        info!(conn = self.conn_id, peer = %self.peer, backend = backend.as_deref(), request_id = self.request_id, status = 499, "client left before its answer");
    }
}

/// What the phases up to the 101 produced.
struct Prepared {
    /// The backend ID routed to.
    target: Arc<str>,
    /// The backend connection, upgraded.
    conn: BackendConn,
    /// The 101 for the client.
    response: Response<Body>,
    /// When the session must end because its token expires (`[auth] close_at_expiry`).
    token_expiry: Option<std::time::SystemTime>,
    /// Its place among its token subject's sessions (`max_sessions_per_subject`).
    subject: Option<SubjectSlot>,
}

/// Who sent a request: the client's address, its connection, and the certificate it
/// authenticated with as its backend is told of it ([`crate::client_cert`]).
struct Client {
    peer: SocketAddr,
    conn_id: u64,
    client_cert: Option<Arc<str>>,
    /// The id of the request being answered (`[server] request_id_header`).
    request_id: Option<RequestId>,
}

/// Runs every phase up to the 101: checks, auth, route, backend connect, accept.
async fn prepare(
    shared: &Shared,
    req: &Request<Incoming>,
    peer: SocketAddr,
    client_cert: Option<&str>,
    request_id: Option<&RequestId>,
) -> Result<Prepared, Refusal> {
    let config = shared.config();
    let upgrade = checks::check(req, &config.server.path)?;
    // A browser sends one Origin; with two, the one checked might not be the one a
    // backend reads, so a list to check against refuses them.
    let mut origins = req.headers().get_all(hyper::header::ORIGIN).iter();
    let origin = origins.next().map(|v| v.as_bytes());
    let repeated = origins.next().is_some() && !config.browser.allowed_origins.is_empty();
    if repeated || !config.browser.origin_allowed(origin) {
        return Err(Refusal::OriginNotAllowed);
    }
    let creds = credentials::extract(req, &config.browser)?;
    let mut verifier = shared.verifier();
    let token = creds.token.as_deref().map_err(Clone::clone)?;
    let claims = match verifier.verify(token) {
        // The provider may have rotated: its key set, fetched again, may hold the key.
        Err(AuthError::UnknownKey) if verifier.auth().jwks_url.is_some() => {
            verifier = crate::jwks_fetch::after_refetch(shared, &verifier)
                .await
                .ok_or(AuthError::UnknownKey)?;
            verifier.verify(token)?
        }
        checked => checked?,
    };
    let token_expiry = verifier
        .auth()
        .close_at_expiry
        .then(|| crate::auth::expires_at(&claims, verifier.auth().leeway_secs))
        .flatten();
    let mut identity = crate::auth::claim_headers(&config.auth.forward_claims, &claims);
    let mut identity_names: Vec<String> = config.auth.forward_claims.keys().cloned().collect();
    if let Some(name) = &config.tls.client_cert_header {
        // A client's own header of that name is dropped whether or not it has a certificate.
        identity_names.push(name.clone());
        if let Some(described) = client_cert {
            identity.push((name.clone(), described.to_owned()));
        }
    }
    if let Some(id) = request_id {
        // A client's own header of that name is dropped; the backend gets the gateway's.
        identity_names.push(id.name.as_str().to_owned());
        identity.push((id.name.as_str().to_owned(), id.value.to_string()));
    }
    let pool = shared
        .router
        .lookup(&creds.backend_id)
        .ok_or(Refusal::UnknownBackend)?;
    verifier.check_scopes(&claims, &pool.spec().required_scopes)?;
    // Counted from here to the session's end: a refused subject costs no backend connect.
    let subject = match crate::auth::claim_name(&claims, &config.auth.subject_claim) {
        Some(sub) => Some(
            shared
                .limiter()
                .try_subject(&sub)
                .map_err(LimitHit::refusal)?,
        ),
        None => None,
    };
    let target = pool.id().clone();
    let connect_started = std::time::Instant::now();
    let deflate_offers = config
        .server
        .permessage_deflate
        .then(|| crate::extensions::deflate_offers(req.headers()))
        .flatten();
    let backend_req = backend::BackendRequest {
        headers: req.headers(),
        protocols: creds.backend_protocols.as_deref(),
        extensions: deflate_offers.as_deref(),
        peer,
        identity: &identity,
        identity_names: &identity_names,
        token_cookie: config.browser.token_cookie.as_deref(),
        affinity: pool
            .spec()
            .hash_key
            .as_ref()
            .and_then(|key| key.of(req, peer, &claims)),
    };
    // A shutdown does not wait for a backend that is slow to answer: the client gets its
    // 503 now, not a dropped connection when the drain runs out.
    let mut shutdown = shared.handshakes_stop.clone();
    let conn = tokio::select! {
        conn = backend::connect_pool(
            &pool,
            &backend_req,
            &shared.resolver,
            config.timeouts.backend_connect,
        ) => conn,
        _ = shutdown.wait_for(|stop| *stop) => {
            return Err(Refusal::Unavailable("gateway is shutting down"));
        }
    };
    let metrics = &shared.metrics;
    let conn = match conn {
        Ok(conn) => {
            Metrics::observe(
                &metrics.backend_connect_seconds,
                &target,
                connect_started.elapsed(),
            );
            conn
        }
        // A full pool refuses before any backend is asked: not a failed connect.
        Err(refusal @ Refusal::AtCapacity) => return Err(refusal),
        Err(refusal) => {
            metrics
                .backend_connect_failures
                .get_or_create(&BackendLabel {
                    backend: target.to_string(),
                })
                .inc();
            return Err(refusal);
        }
    };
    let mut response = accept(
        upgrade.key,
        creds.backend_protocols.as_deref(),
        creds.token_protocol,
        &conn,
    )?;
    if let Some(id) = request_id {
        id.answer(response.headers_mut());
    }
    Ok(Prepared {
        target,
        conn,
        response,
        token_expiry,
        subject,
    })
}

/// The 101 answer: the accept key, the backend's chosen subprotocol, which must be one
/// the client offered, and the extension the backend accepted (a `permessage-deflate`
/// the client offered; see [`crate::extensions`]). A client whose only offer was its
/// token entry gets that entry back, since browsers fail a handshake that answers none
/// of their offers.
fn accept(
    key: &[u8],
    offered: Option<&str>,
    token_protocol: Option<&str>,
    backend: &BackendConn,
) -> Result<Response<Body>, Refusal> {
    let mut builder = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept_key(key));
    for (name, value) in &backend.headers {
        builder = builder.header(name, value);
    }
    let chosen = backend.protocol.as_deref();
    if let Some(accepted) = backend.extensions.as_deref() {
        let value = HeaderValue::from_str(accepted)
            .map_err(|_| Refusal::BadGateway("backend accepted an invalid extension".into()))?;
        builder = builder.header(header::SEC_WEBSOCKET_EXTENSIONS, value);
    }
    if let Some(chosen) = chosen {
        if !backend::offered(offered, chosen) {
            return Err(Refusal::BadGateway(
                "backend chose a subprotocol the client did not offer".into(),
            ));
        }
        let value = HeaderValue::from_str(chosen)
            .map_err(|_| Refusal::BadGateway("backend chose an invalid subprotocol".into()))?;
        builder = builder.header(header::SEC_WEBSOCKET_PROTOCOL, value);
    } else if let Some(entry) = token_protocol {
        // Browsers fail a handshake that answers none of their offers: with no choice
        // from the backend, the client's token entry is answered.
        if let Ok(value) = HeaderValue::from_str(entry) {
            builder = builder.header(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
    }
    builder
        .body(Full::new(Bytes::new()))
        .map_err(|_| Refusal::BadGateway("could not build the upgrade response".into()))
}

/// The places under `[limits]` a session holds until its end: its connection's slot, and
/// its place among its token subject's sessions.
struct Places {
    _conn: Option<Slot>,
    _subject: Option<SubjectSlot>,
}

/// Starts the session of an upgraded connection in a task of its own, which holds only
/// what the session needs for its life (the proxy future, its `places` under the limits,
/// the bookkeeping at its end), not what waiting for the upgrade needed.
fn start_session(
    upgraded: hyper::upgrade::Upgraded,
    backend: BackendConn,
    (conn_id, peer): (u64, SocketAddr),
    token_expiry: Option<std::time::SystemTime>,
    places: Places,
    active: ActiveSession,
) {
    let shared = active.shared.clone();
    let parts = match upgraded.downcast::<TokioIo<TlsStream>>() {
        Ok(parts) => parts,
        Err(_) => {
            warn!(conn = conn_id, %peer, "upgraded connection is not the expected TLS stream");
            return;
        }
    };
    let (client_read, client_write) = tokio::io::split(parts.io.into_inner());
    let client = Side {
        read: client_read,
        write: client_write,
        leftover: parts.read_buf,
    };
    let config = shared.config();
    let mut opts = session::SessionOptions::from_config(&config);
    let deflate = backend.extensions.is_some();
    opts.permessage_deflate = deflate;
    let max_session = config.timeouts.max_session;
    drop(config);
    let token_left = token_expiry.map(|at| {
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
    });
    let share = rand::Rng::gen_range(&mut rand::thread_rng(), 0.9..=1.0);
    opts.ends_at = session::deadline(tokio::time::Instant::now(), token_left, max_session, share);
    let end = SessionEnd {
        conn_id,
        peer,
        deflate,
        places,
        active,
    };
    let (lease, leftover) = (backend.lease, backend.leftover);
    // A plain backend's socket splits without a lock; a TLS one shares its state.
    match backend.stream {
        BackendStream::Plain(tcp) => {
            let (read, write) = tcp.into_split();
            run_session(
                client,
                Side {
                    read,
                    write,
                    leftover,
                },
                opts,
                lease,
                end,
            );
        }
        BackendStream::Tls(tls) => {
            let (read, write) = tokio::io::split(*tls);
            run_session(
                client,
                Side {
                    read,
                    write,
                    leftover,
                },
                opts,
                lease,
                end,
            );
        }
    }
}

/// What a session's task keeps for its end: who it was, for the log line, and what it
/// holds until then (its places under the limits, its place among the active sessions).
struct SessionEnd {
    conn_id: u64,
    peer: SocketAddr,
    deflate: bool,
    places: Places,
    active: ActiveSession,
}

/// Spawns the task that proxies `client` and `backend` and logs and counts the session
/// at its end.
fn run_session<BR, BW>(
    client: Side<ClientRead, ClientWrite>,
    backend: Side<BR, BW>,
    opts: session::SessionOptions,
    lease: Option<crate::pool::Lease>,
    end: SessionEnd,
) where
    BR: tokio::io::AsyncRead + Unpin + Send + 'static,
    BW: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let SessionEnd {
        conn_id,
        peer,
        deflate,
        places,
        mut active,
    } = end;
    let close_order = active.close_order.take().unwrap_or_else(CloseOrder::never);
    let shared = active.shared.clone();
    // Boxed: awaiting a future held by value stores it twice in the awaiting future (the
    // captured value and the awaited one), which was ~2 KiB per idle session.
    let proxy = Box::pin(session::proxy(
        client,
        backend,
        opts,
        shared.shutdown_rx.clone(),
        close_order,
        // Counts this session against its pool instance while its backend connection lasts.
        lease,
    ));
    let backend_id = active.backend.clone();
    tokio::spawn(
        async move {
            let _places = places;
            let report = proxy.await;
            drop(active);
            shared.metrics.session_ended(&backend_id, &report);
            let violation = report.violation();
            info!(
                conn = conn_id,
                %peer,
                backend = %backend_id,
                outcome = report.outcome(),
                violation_code = violation.map(|(code, _)| code),
                violation = violation.map(|(_, why)| why),
                up_msgs = report.upstream.frames,
                up_bytes = report.upstream.bytes,
                down_msgs = report.downstream.frames,
                down_bytes = report.downstream.bytes,
                duration_ms = report.duration.as_millis() as u64,
                deflate,
                "session ended"
            );
        }
        .in_current_span(),
    );
}

/// The client side's halves of a session.
type ClientRead = tokio::io::ReadHalf<TlsStream>;
type ClientWrite = tokio::io::WriteHalf<TlsStream>;

/// One connection counted in `Shared::handshaking` until its HTTP phase ends (refused,
/// upgraded, or dropped); an upgraded one is counted in `Shared::active` by then.
struct Handshaking(Arc<Shared>);

impl Handshaking {
    fn start(shared: &Arc<Shared>) -> Self {
        shared.handshaking.fetch_add(1, Ordering::Relaxed);
        Self(shared.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's HTTP service counted in `Shared::requested` from its first request
/// until the service is dropped with the connection's HTTP phase.
struct Requested {
    shared: Arc<Shared>,
    counted: std::sync::atomic::AtomicBool,
}

impl Requested {
    fn new(shared: &Arc<Shared>) -> Self {
        Self {
            shared: shared.clone(),
            counted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A request came: counted once per connection.
    fn mark(&self) {
        if !self.counted.swap(true, Ordering::Relaxed) {
            self.shared.requested.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Requested {
    fn drop(&mut self) {
        if *self.counted.get_mut() {
            self.shared.requested.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One session counted as active, in `Shared::active` (what a drain waits for) and in the
/// per-backend gauge, from its 101 until the value is dropped at the session's end or a
/// failed upgrade.
struct ActiveSession {
    shared: Arc<Shared>,
    conn_id: u64,
    backend: Arc<str>,
    /// What an operator closing it sends it; taken by the session when it starts.
    close_order: Option<CloseOrder>,
}

impl ActiveSession {
    fn start(shared: &Arc<Shared>, conn_id: u64, info: SessionInfo) -> Self {
        shared.active.fetch_add(1, Ordering::Relaxed);
        // By name, not a gauge handle kept for the session's life: the line of a backend
        // a reload removes goes with its last session, and one that came back since is
        // another gauge.
        shared.metrics.active.opened(&info.backend);
        let backend = info.backend.clone();
        let close_order = shared.sessions.insert(conn_id, info);
        Self {
            shared: shared.clone(),
            conn_id,
            backend,
            close_order: Some(close_order),
        }
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.shared.sessions.remove(self.conn_id);
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.active.closed(&self.backend);
        if self.shared.drain_over.load(Ordering::Relaxed) {
            warn!(
                conn = self.conn_id,
                backend = %self.backend,
                "session cut: still open at the end of the drain"
            );
        }
    }
}
