//! Backend connect: TCP (then TLS for `wss://`) plus the WebSocket client handshake, under
//! one timeout, made before the client is answered so that a dead backend is a 502/504,
//! not a broken session.
//!
//! [`connect_pool`] picks an instance of the backend's pool and, when it fails to connect,
//! ejects it and tries another, so one dead instance costs the client nothing.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::backend_tls::{self, BackendStream};
use crate::checks::has_token;
use crate::pool::{now_ms, Lease, Pool};
use crate::refusal::Refusal;
use crate::resolve::Resolver;
use crate::route::BackendTarget;
use crate::wsclient::{self, ClientRequest, HandshakeError};

/// An open, upgraded connection to a backend.
#[derive(Debug)]
pub struct BackendConn {
    /// The connection, positioned after the 101 response head.
    pub stream: BackendStream,
    /// Frame bytes the backend sent along with its 101.
    pub leftover: Bytes,
    /// The subprotocol the backend chose.
    pub protocol: Option<String>,
    /// The backend's `Sec-WebSocket-Extensions` answer: a `permessage-deflate` it was
    /// offered ([`crate::extensions`]), passed on to the client.
    pub extensions: Option<String>,
    /// The other end-to-end headers of the backend's 101, passed on to the client.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The pool instance this connection counts against; held for the session's life.
    pub lease: Option<Lease>,
}

/// A failed connect attempt: what the client would see, and who is to blame.
#[derive(Debug)]
pub struct AttemptError {
    /// The refusal the client gets if no other instance does better.
    pub refusal: Refusal,
    /// Whether the instance is ejected and another one tried.
    pub blame: Blame,
}

/// Who a failed connect attempt is held against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// TCP refused or timed out, the handshake broke, or the backend answered 5xx: the
    /// instance is ejected and another one tried.
    Instance,
    /// A 4xx answer, about this client's request: counted for the instance, not held
    /// against it.
    Request,
    /// The gateway itself ran out of descriptors, local ports or memory: no instance
    /// would do better, and none is held to blame (a full descriptor table used to eject
    /// every healthy instance in turn).
    Gateway,
}

impl AttemptError {
    fn instance(refusal: Refusal) -> Self {
        Self {
            refusal,
            blame: Blame::Instance,
        }
    }
}

/// Opens a backend connection on an instance of `pool`: a healthy one by the pool's
/// policy; on an instance fault that instance is ejected and the next one tried, up to
/// the pool's attempt count. The connection carries a [`Lease`] on its instance.
pub async fn connect_pool(
    pool: &Arc<Pool>,
    req: &BackendRequest<'_>,
    resolver: &Resolver,
    timeout: Duration,
) -> Result<BackendConn, Refusal> {
    pool.ensure_discovered(resolver.lookup()).await;
    let list = pool.instances();
    let attempts = pool.spec().attempts(list.len());
    let mut tried = 0u64;
    let mut last = None;
    let max = pool.spec().max_sessions;
    for _ in 0..attempts {
        let now = now_ms();
        let Some(i) = pool.pick(&list, tried, now, req.affinity) else {
            break;
        };
        // Every instance is ejected: if this one, which failed longest ago, does not
        // answer in time either, the client is answered. Trying the others too would make
        // each client of a silent pool wait out `connect_attempts` connect timeouts for
        // its 504; ones that refuse at once cost nothing and are all still tried.
        let all_ejected = !list[i].available(now);
        tried |= 1u64 << i;
        // Another connect may have taken its last place since the pick.
        let Some(lease) = Lease::try_new(list[i].clone(), max) else {
            continue;
        };
        let tls = pool.tls();
        match connect(&list[i].target, tls.as_ref(), req, resolver, timeout).await {
            Ok(mut conn) => {
                list[i].succeeded();
                conn.lease = Some(lease);
                return Ok(conn);
            }
            Err(e) => {
                let instance = &*list[i].addr;
                tracing::debug!(backend = &**pool.id(), instance, reason = %e.refusal, "backend connect attempt failed");
                match e.blame {
                    Blame::Instance => {}
                    Blame::Request => {
                        list[i].refused_request();
                        return Err(e.refusal);
                    }
                    Blame::Gateway => return Err(e.refusal),
                }
                list[i].failed(now_ms(), pool.spec().eject, &e.refusal);
                let timed_out = matches!(e.refusal, Refusal::GatewayTimeout);
                last = Some(e.refusal);
                if all_ejected && timed_out {
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        if list.iter().any(|i| i.full(max)) {
            Refusal::AtCapacity
        } else {
            Refusal::BadGateway("backend name resolved to no addresses".into())
        }
    }))
}

/// A `Cookie` header value without the cookies named `name` (`a=1; b=2` less `a`: `b=2`).
fn without_cookie(value: &str, name: &str) -> String {
    value
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split_once('=').map_or(*c, |(n, _)| n).trim() != name)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Client headers never passed on: hop-by-hop, WebSocket handshake headers the gateway
/// sets itself, and credentials meant for the gateway.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "expect",
    "proxy-authorization",
    "proxy-connection",
    "authorization",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "x-forwarded-for",
    "x-forwarded-proto",
];

/// Whether a backend's non-101 answer to an upgrade is about the request (a 4xx: a missing
/// credential, say), not a fault of the instance. Anything else but a 101 (a 5xx, a 200
/// from something that is not a WebSocket server, a redirect) is the instance's: passive
/// health and the health check both go by this.
pub(crate) fn about_the_request(status: u16) -> bool {
    (400..500).contains(&status)
}

/// Headers the gateway sets itself for the backend: a client's spelling of them with `_`
/// is dropped too, which a CGI-style backend would read as the gateway's.
/// Whether a verified claim may be sent under the header `name` (`[auth.forward_claims]`):
/// not under one the gateway writes itself toward a backend (`Host`, the handshake's,
/// `X-Forwarded-*`, `Cookie`), one that belongs to the hop (`Connection`,
/// `Transfer-Encoding`, …) or a credential, in any spelling `same_name` folds together. A
/// claim under such a name would make the upgrade request carry two of them, which a strict
/// backend refuses for every client, or would let whoever sets the claim frame the request.
pub fn claim_header_allowed(name: &str) -> bool {
    !NOT_FORWARDED
        .iter()
        .chain(&["cookie"])
        .any(|reserved| same_name(reserved, name))
}

const FORWARDING: [&str; 2] = ["x-forwarded-for", "x-forwarded-proto"];

/// Opens the backend connection to `target` for a client at `peer`, forwarding its
/// end-to-end headers; over TLS with `tls` when `target` is `wss://`.
pub async fn connect(
    target: &BackendTarget,
    tls: Option<&Arc<rustls::ClientConfig>>,
    req: &BackendRequest<'_>,
    resolver: &Resolver,
    timeout: Duration,
) -> Result<BackendConn, AttemptError> {
    let deadline = tokio::time::Instant::now() + timeout;
    connect_inner(target, tls, req, resolver, deadline).await
}

/// What the backend handshake carries from the client.
#[derive(Debug)]
pub struct BackendRequest<'a> {
    /// The client's request headers; end-to-end ones are passed on.
    pub headers: &'a HeaderMap,
    /// Subprotocols to offer.
    pub protocols: Option<&'a str>,
    /// Extensions to offer: the client's `permessage-deflate` offers, when passed on.
    pub extensions: Option<&'a str>,
    /// The client's address, for `X-Forwarded-For`.
    pub peer: SocketAddr,
    /// Identity headers from verified claims (`[auth.forward_claims]`).
    pub identity: &'a [(String, String)],
    /// Names of identity headers: client-sent headers of these names are dropped.
    pub identity_names: &'a [String],
    /// The cookie that carries the gateway's token (`[browser] token_cookie`): taken out
    /// of the `Cookie` headers passed on, as `Authorization` is never passed on.
    pub token_cookie: Option<&'a str>,
    /// The hash of the client's `hash_key`, for a `balance = "hash"` pool.
    pub affinity: Option<u64>,
}

async fn connect_inner(
    target: &BackendTarget,
    tls: Option<&Arc<rustls::ClientConfig>>,
    req: &BackendRequest<'_>,
    resolver: &Resolver,
    deadline: tokio::time::Instant,
) -> Result<BackendConn, AttemptError> {
    let timed_out = || AttemptError::instance(Refusal::GatewayTimeout);
    let (tcp, addr) =
        tokio::time::timeout_at(deadline, open_tcp(&target.host, target.port, resolver))
            .await
            .map_err(|_| timed_out())??;
    crate::tcp_opts::tune(&tcp);
    let upgraded = tokio::time::timeout_at(deadline, async {
        let mut stream = match &target.tls {
            None => BackendStream::Plain(tcp),
            Some(name) => BackendStream::Tls(Box::new(
                backend_tls::handshake(tls, name, tcp)
                    .await
                    .map_err(tls_failed)?,
            )),
        };
        let hs = upgrade(&mut stream, target, req).await?;
        Ok((stream, hs))
    })
    .await
    .unwrap_or_else(|_| Err(timed_out()));
    // The address that completed the handshake is tried first next time; one that took
    // the connection but failed or never answered goes last, or a name whose first
    // address accepts and never answers would send every client there while the next
    // address works.
    match &upgraded {
        Ok(_) => resolver.worked(&target.host, target.port, addr),
        Err(e) if e.blame == Blame::Instance => resolver.failed(&target.host, target.port, addr),
        Err(_) => {}
    }
    let (stream, hs) = upgraded?;
    Ok(BackendConn {
        stream,
        leftover: hs.leftover,
        protocol: hs.protocol,
        extensions: hs.extensions,
        headers: hs.headers,
        lease: None,
    })
}

/// A failed TLS handshake as the client sees it: the instance's fault (a certificate the
/// gateway does not trust, a backend that does not speak TLS), or the gateway's when it
/// has no TLS settings at all.
fn tls_failed(e: backend_tls::HandshakeError) -> AttemptError {
    let blame = match e {
        backend_tls::HandshakeError::NotConfigured => Blame::Gateway,
        _ => Blame::Instance,
    };
    AttemptError {
        refusal: Refusal::BadGateway(e.to_string()),
        blame,
    }
}

/// The WebSocket handshake on `stream` for `target`, with the client's end-to-end
/// headers, and the checks of its answer against what the client offered.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: &BackendTarget,
    req: &BackendRequest<'_>,
) -> Result<wsclient::Handshake, AttemptError> {
    let BackendRequest {
        headers: client_headers,
        protocols,
        extensions,
        peer,
        identity,
        identity_names,
        token_cookie,
        affinity: _,
    } = *req;
    // Every line the client sent, in order, then the client: the chain as nginx's
    // `$proxy_add_x_forwarded_for` builds it.
    let mut forwarded_for = String::new();
    for prior in client_headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        forwarded_for.push_str(prior);
        forwarded_for.push_str(", ");
    }
    forwarded_for.push_str(&peer.ip().to_string());
    // The client's cookies but the token's, when the token may come in one.
    let cookies: Vec<String> = match token_cookie {
        Some(token_name) => client_headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(|v| without_cookie(v, token_name))
            .filter(|v| !v.is_empty())
            .collect(),
        None => Vec::new(),
    };
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(client_headers.len() + 2);
    for (name, value) in client_headers {
        let name = name.as_str();
        if NOT_FORWARDED.contains(&name)
            || (token_cookie.is_some() && name == "cookie")
            || has_token(client_headers, header::CONNECTION, name)
            || identity_names.iter().any(|n| same_name(n, name))
            || (name.contains('_') && FORWARDING.iter().any(|n| same_name(n, name)))
        {
            continue;
        }
        // UTF-8 passes as the client sent it (a cookie with a name in it, say); only
        // other non-ASCII bytes, which no header of this gateway's writes can carry,
        // are left out.
        if let Ok(value) = std::str::from_utf8(value.as_bytes()) {
            headers.push((name, value));
        }
    }
    headers.extend(cookies.iter().map(|c| ("Cookie", c.as_str())));
    headers.push(("X-Forwarded-For", &forwarded_for));
    headers.push(("X-Forwarded-Proto", "https"));
    if let Some(offers) = extensions {
        headers.push(("Sec-WebSocket-Extensions", offers));
    }
    headers.extend(identity.iter().map(|(n, v)| (n.as_str(), v.as_str())));

    let req = ClientRequest {
        host: &target.host_header,
        path: &target.path,
        protocols,
        headers: &headers,
        refusal_body: false,
    };
    let hs = wsclient::handshake(stream, &req)
        .await
        .map_err(|e| match e {
            HandshakeError::Refused { status, .. } => AttemptError {
                refusal: Refusal::BadGateway(format!("backend answered HTTP {status}")),
                blame: if about_the_request(status) {
                    Blame::Request
                } else {
                    Blame::Instance
                },
            },
            HandshakeError::Io(e) => AttemptError::instance(Refusal::BadGateway(format!(
                "backend connection failed: {e}"
            ))),
            other => AttemptError::instance(Refusal::BadGateway(other.to_string())),
        })?;
    if let Some(answer) = &hs.extensions {
        crate::extensions::check_answer(answer, extensions.is_some())
            .map_err(|e| AttemptError::instance(Refusal::BadGateway(e.to_string())))?;
    }
    // A choice the client did not offer fails its handshake (RFC 6455 section 4.1): a
    // fault of this instance, as an unoffered extension is.
    if let Some(chosen) = &hs.protocol {
        if !offered(protocols, chosen) {
            return Err(AttemptError::instance(Refusal::BadGateway(
                "backend chose a subprotocol the client did not offer".into(),
            )));
        }
    }
    Ok(hs)
}

/// Whether `chosen` is one of the subprotocols of `offers` (a `Sec-WebSocket-Protocol`
/// list).
pub(crate) fn offered(offers: Option<&str>, chosen: &str) -> bool {
    offers.is_some_and(|o| o.split(',').any(|p| p.trim() == chosen))
}

/// Connects to the first address of `host` that accepts; returns it with the stream.
async fn open_tcp(
    host: &str,
    port: u16,
    resolver: &Resolver,
) -> Result<(TcpStream, SocketAddr), AttemptError> {
    let addrs = resolver.resolve(host, port).await.map_err(|e| {
        AttemptError::instance(Refusal::BadGateway(format!(
            "cannot resolve backend host: {e}"
        )))
    })?;
    match connect_any(&addrs).await {
        Ok(connected) => Ok(connected),
        Err(Some(e)) if out_of_local_resources(&e) => Err(AttemptError {
            refusal: Refusal::Unavailable("gateway out of descriptors or local ports"),
            blame: Blame::Gateway,
        }),
        Err(Some(e)) => Err(AttemptError::instance(Refusal::BadGateway(format!(
            "backend connection failed: {e}"
        )))),
        Err(None) => Err(AttemptError::instance(Refusal::BadGateway(
            "backend host has no addresses".into(),
        ))),
    }
}

/// Whether a connect failed for want of the gateway's own resources (descriptors, local
/// ports, buffers, memory) rather than anything the backend did.
pub(crate) fn out_of_local_resources(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::OutOfMemory
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS)
    )
}

/// How long one address of a backend name has to itself before the next one is tried
/// beside it (RFC 8305's connection attempt delay): an address that drops SYNs costs
/// this, not the whole connect timeout, and one that refuses costs nothing.
pub const NEXT_ADDRESS_AFTER: Duration = Duration::from_millis(250);

/// Connects to the first of `addrs` that accepts, trying them in order, a new one when
/// the last failed or after [`NEXT_ADDRESS_AFTER`]; the attempts still under way when one
/// succeeds are dropped. The error is the last failure (`None`: no addresses).
pub(crate) async fn connect_any(
    addrs: &[SocketAddr],
) -> Result<(TcpStream, SocketAddr), Option<io::Error>> {
    if let [addr] = addrs {
        return TcpStream::connect(*addr)
            .await
            .map(|s| (s, *addr))
            .map_err(Some);
    }
    let attempt = |addr| async move { (TcpStream::connect(addr).await, addr) };
    let mut next = addrs.iter().copied();
    let mut attempts = tokio::task::JoinSet::new();
    let mut last = None;
    // Each turn starts the next address: at first, and after a failure or the delay.
    loop {
        match next.next() {
            Some(addr) => drop(attempts.spawn(attempt(addr))),
            None if attempts.is_empty() => return Err(last),
            None => {}
        }
        let more = next.len() > 0;
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok((Ok(stream), addr))) => return Ok((stream, addr)),
                Some(Ok((Err(e), _))) => last = Some(e),
                Some(Err(e)) => last = Some(io::Error::other(e)),
                None => {}
            },
            () = tokio::time::sleep(NEXT_ADDRESS_AFTER), if more => {}
        }
    }
}

/// Whether two header names are one to a backend: case aside, and `_` taken as `-`, as
/// CGI-style servers do (`X_Auth_Subject` and `X-Auth-Subject` are both
/// `HTTP_X_AUTH_SUBJECT`), so a client cannot pass an identity header off under the other
/// spelling.
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_gateways_own_shortages_are_not_held_against_an_instance() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(
                out_of_local_resources(&io::Error::from_raw_os_error(errno)),
                "errno {errno}"
            );
        }
        // What a backend does: refuse, reset, not answer.
        for errno in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
        ] {
            assert!(
                !out_of_local_resources(&io::Error::from_raw_os_error(errno)),
                "errno {errno}"
            );
        }
        // A real refused connect is the instance's.
        let closed = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr,
            Err(e) => panic!("bind: {e}"),
        };
        let refused = open_tcp("127.0.0.1", closed.port(), &Resolver::default()).await;
        assert!(
            matches!(
                refused,
                Err(AttemptError {
                    blame: Blame::Instance,
                    ..
                })
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn the_token_cookie_is_taken_out_and_the_others_stay() {
        assert_eq!(
            without_cookie("a=1; wsgate_token=X; b=2", "wsgate_token"),
            "a=1; b=2"
        );
        assert_eq!(without_cookie("wsgate_token=X", "wsgate_token"), "");
        assert_eq!(
            without_cookie("my_wsgate_token=1;b", "wsgate_token"),
            "my_wsgate_token=1; b"
        );
        assert_eq!(
            without_cookie(" wsgate_token = X ;c=3", "wsgate_token"),
            "c=3"
        );
    }
}
