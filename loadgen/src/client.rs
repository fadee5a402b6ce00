//! WebSocket client connections to the gateway (or any `ws://`/`wss://` server).
//!
//! A [`Connector`] is prepared once (URL parsed, name resolved, TLS config built) and then
//! opens as many connections as needed: TCP (optionally from a chosen source address),
//! TLS, and the opening handshake of [`gateway::wsclient`], all under one timeout.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastwebsockets::{Role, WebSocket};
use gateway::prefixed::Prefixed;
use gateway::wsclient::{self, ClientRequest, HandshakeError};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::proxy_header::ProxyHeader;
use crate::stream::ClientStream;
use crate::tls;

/// The stream under a client WebSocket: bytes read past the handshake first, then the
/// TCP or TLS stream.
pub type WsStream = Prefixed<ClientStream>;

/// What to connect to and how.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `ws://` or `wss://` URL; the host may be a name (`localhost`), `127.0.0.1` or `[::1]`.
    pub url: String,
    /// PEM file of the CA to trust for `wss://`. Needed unless `insecure`.
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (development only).
    pub insecure: bool,
    /// A client certificate to present (a gateway with `[tls] client_ca`).
    pub client_cert: Option<crate::tls::ClientCert>,
    /// Extra request headers, e.g. `ID` and `Authorization`.
    pub headers: Vec<(String, String)>,
    /// `Sec-WebSocket-Protocol` to offer.
    pub protocols: Option<String>,
    /// Source address to bind before connecting (to spread many connections over
    /// `127.0.0.x` when one address would run out of ephemeral ports).
    pub local_addr: Option<IpAddr>,
    /// Limit on TCP connect + TLS + WebSocket handshake together.
    pub connect_timeout: Duration,
    /// Resume TLS sessions across this connector's connections (session tickets), as one
    /// client reconnecting would; off, every connection makes a full handshake.
    pub resume: bool,
    /// A PROXY protocol header to send first, before TLS, as a TCP load balancer in front
    /// of the server would (for a gateway with `[server] proxy_protocol = true`).
    pub proxy_header: Option<ProxyHeader>,
    /// `SO_RCVBUF` for the connection's socket, in bytes: a fixed receive window, where
    /// the kernel's autotuning would make a slow reader's window open in steps that
    /// depend on the machine (tests of slow readers).
    pub recv_buffer: Option<u32>,
}

impl ConnectOptions {
    /// Options for `url` with no CA, no headers and a 10 s connect timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca: None,
            insecure: false,
            client_cert: None,
            headers: Vec::new(),
            protocols: None,
            local_addr: None,
            connect_timeout: Duration::from_secs(10),
            resume: false,
            proxy_header: None,
            recv_buffer: None,
        }
    }

    /// Adds a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces (or adds) a request header, matching the name case-insensitively.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.into()));
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The options cannot work: bad URL, unreadable CA file, `wss://` without a CA.
    #[error("{0}")]
    Config(String),
    /// Name resolution, TCP connect or the stream failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS handshake failed (certificate not trusted, protocol error, ...).
    #[error("TLS: {0}")]
    Tls(io::Error),
    /// The whole connect did not finish within the connect timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered the upgrade with something other than 101.
    #[error("HTTP {status}: {reason}")]
    Refused {
        /// HTTP status code.
        status: u16,
        /// The first line of the response body, or the status text.
        reason: String,
    },
    /// The WebSocket handshake failed otherwise (malformed answer, wrong accept key).
    #[error("WebSocket handshake: {0}")]
    Handshake(HandshakeError),
}

impl From<HandshakeError> for ConnectError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Refused { status, reason } => ConnectError::Refused { status, reason },
            HandshakeError::Io(e) => ConnectError::Io(e),
            other => ConnectError::Handshake(other),
        }
    }
}

/// An open client WebSocket.
pub struct Connected {
    /// The socket, role `Client` (frames written are masked). It never flushes by itself:
    /// call `ws.flush().await` after writing the frames of a burst.
    pub ws: WebSocket<WsStream>,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
    /// The server's `Sec-WebSocket-Extensions` answer (none is ever offered).
    pub extensions: Option<String>,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("protocol", &self.protocol)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

/// A completed handshake with the raw stream, for callers that frame messages themselves.
#[derive(Debug)]
pub struct Upgraded {
    /// Positioned right after the 101 response; starts with any bytes read past it.
    pub stream: WsStream,
    /// The subprotocol the server chose.
    pub protocol: Option<String>,
    /// The server's `Sec-WebSocket-Extensions` answer.
    pub extensions: Option<String>,
}

/// Opens one connection with `opts` (resolves and builds TLS config each time: for many
/// connections, make a [`Connector`] once).
pub async fn connect(opts: &ConnectOptions) -> Result<Connected, ConnectError> {
    Connector::new(opts).await?.connect().await
}

/// Everything needed to open connections to one URL, prepared once.
pub struct Connector {
    /// Whether to run TLS over the TCP stream, and with which config.
    tls: Option<TlsConnector>,
    /// Name presented in SNI and checked against the certificate.
    server_name: ServerName<'static>,
    /// `Host` header value.
    host_header: String,
    /// Request target (path and query).
    path: String,
    /// Resolved addresses of the host, tried in order.
    addrs: Vec<SocketAddr>,
    /// Index into `addrs` of the last address that accepted, tried first next time.
    preferred: AtomicUsize,
    headers: Vec<(String, String)>,
    protocols: Option<String>,
    local_addr: Option<IpAddr>,
    recv_buffer: Option<u32>,
    timeout: Duration,
    /// TLS cipher suites negotiated so far, with how many connections got each.
    suites: Mutex<Vec<(&'static str, u64)>>,
    /// TLS handshakes that resumed a session.
    resumed: AtomicU64,
    proxy_header: Option<ProxyHeader>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .field("host", &self.host_header)
            .field("path", &self.path)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Parses the URL, resolves the host and builds the TLS config.
    pub async fn new(opts: &ConnectOptions) -> Result<Self, ConnectError> {
        let url = url::Url::parse(&opts.url)
            .map_err(|e| ConnectError::Config(format!("URL {}: {e}", opts.url)))?;
        let secure = match url.scheme() {
            "ws" => false,
            "wss" => true,
            other => {
                return Err(ConnectError::Config(format!(
                    "URL {}: scheme {other} is not ws or wss",
                    opts.url
                )))
            }
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| ConnectError::Config(format!("URL {}: no port", opts.url)))?;
        let (server_name, addrs) = match url.host() {
            Some(url::Host::Domain(name)) => {
                let server_name = ServerName::try_from(name.to_owned())
                    .map_err(|e| ConnectError::Config(format!("host {name}: {e}")))?;
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port)).await?.collect();
                (server_name, addrs)
            }
            Some(url::Host::Ipv4(ip)) => (
                ServerName::IpAddress(IpAddr::V4(ip).into()),
                vec![SocketAddr::new(ip.into(), port)],
            ),
            Some(url::Host::Ipv6(ip)) => (
                ServerName::IpAddress(IpAddr::V6(ip).into()),
                vec![SocketAddr::new(ip.into(), port)],
            ),
            None => return Err(ConnectError::Config(format!("URL {}: no host", opts.url))),
        };
        if addrs.is_empty() {
            return Err(ConnectError::Config(format!(
                "URL {}: host has no address",
                opts.url
            )));
        }
        let host = url.host_str().unwrap_or_default();
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let tls = if secure {
            let mut config = tls::client_config_with(
                opts.ca.as_deref(),
                opts.insecure,
                opts.client_cert.as_ref(),
            )
            .map_err(ConnectError::Config)?;
            if opts.resume {
                let mut resuming = (*config).clone();
                resuming.resumption = rustls::client::Resumption::in_memory_sessions(256);
                config = Arc::new(resuming);
            }
            Some(TlsConnector::from(config))
        } else {
            None
        };
        Ok(Self {
            tls,
            server_name,
            host_header,
            path,
            addrs,
            preferred: AtomicUsize::new(0),
            headers: opts.headers.clone(),
            protocols: opts.protocols.clone(),
            local_addr: opts.local_addr,
            recv_buffer: opts.recv_buffer,
            timeout: opts.connect_timeout,
            suites: Mutex::new(Vec::new()),
            resumed: AtomicU64::new(0),
            proxy_header: opts.proxy_header,
        })
    }

    /// The TLS cipher suites servers chose for this connector's connections, with how many
    /// connections got each (empty for `ws://`).
    pub fn negotiated_suites(&self) -> Vec<(&'static str, u64)> {
        self.suites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many of this connector's TLS handshakes resumed a session (only with
    /// `resume`).
    pub fn resumed_handshakes(&self) -> u64 {
        self.resumed.load(Ordering::Relaxed)
    }

    fn note_suite(&self, suite: &'static str) {
        let mut suites = self.suites.lock().unwrap_or_else(|e| e.into_inner());
        match suites.iter_mut().find(|(s, _)| *s == suite) {
            Some((_, n)) => *n += 1,
            None => suites.push((suite, 1)),
        }
    }

    /// The resolved addresses of the target.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Whether every resolved address of the target is a loopback address.
    pub fn targets_loopback(&self) -> bool {
        self.addrs.iter().all(|a| a.ip().is_loopback())
    }

    /// Opens a connection with the configured headers and source address.
    pub async fn connect(&self) -> Result<Connected, ConnectError> {
        let up = self.connect_raw(&[], self.local_addr).await?;
        Ok(Connected {
            ws: WebSocket::after_handshake(up.stream, Role::Client),
            protocol: up.protocol,
            extensions: up.extensions,
        })
    }

    /// Opens a connection adding `extra_headers` to the configured ones, from source
    /// address `local` (or the system's choice), and returns the raw upgraded stream.
    pub async fn connect_raw(
        &self,
        extra_headers: &[(&str, &str)],
        local: Option<IpAddr>,
    ) -> Result<Upgraded, ConnectError> {
        tokio::time::timeout(self.timeout, self.connect_inner(extra_headers, local))
            .await
            .map_err(|_| ConnectError::Timeout(self.timeout))?
    }

    async fn connect_inner(
        &self,
        extra_headers: &[(&str, &str)],
        local: Option<IpAddr>,
    ) -> Result<Upgraded, ConnectError> {
        let mut tcp = self.connect_tcp(local).await?;
        if let Some(header) = self.proxy_header {
            let bytes = header.encode(tcp.local_addr()?, tcp.peer_addr()?)?;
            tcp.write_all(&bytes).await?;
        }
        let mut stream = match &self.tls {
            None => ClientStream::Plain(tcp),
            Some(tls) => {
                let s = tls
                    .connect(self.server_name.clone(), tcp)
                    .await
                    .map_err(ConnectError::Tls)?;
                let conn = s.get_ref().1;
                if let Some(suite) = conn.negotiated_cipher_suite() {
                    self.note_suite(suite.suite().as_str().unwrap_or("unknown"));
                }
                if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    self.resumed.fetch_add(1, Ordering::Relaxed);
                }
                ClientStream::Tls(Box::new(s))
            }
        };
        let mut headers: Vec<(&str, &str)> =
            Vec::with_capacity(self.headers.len() + extra_headers.len());
        headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        headers.extend_from_slice(extra_headers);
        let req = ClientRequest {
            host: &self.host_header,
            path: &self.path,
            protocols: self.protocols.as_deref(),
            headers: &headers,
            refusal_body: true,
        };
        let hs = wsclient::handshake(&mut stream, &req).await?;
        Ok(Upgraded {
            stream: Prefixed::new(hs.leftover, stream),
            protocol: hs.protocol,
            extensions: hs.extensions,
        })
    }

    /// Connects to the first address that accepts, starting with the last one that did.
    async fn connect_tcp(&self, local: Option<IpAddr>) -> Result<TcpStream, ConnectError> {
        let n = self.addrs.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last_err = None;
        for i in (0..n).map(|k| (first + k) % n) {
            let addr = self.addrs[i];
            if local.is_some_and(|l| l.is_ipv4() != addr.is_ipv4()) {
                continue;
            }
            match connect_tcp_from(addr, local, self.recv_buffer).await {
                Ok(s) => {
                    if i != first {
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return Ok(s);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(ConnectError::Io(last_err.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no target address of the source address's family",
            )
        })))
    }
}

/// One TCP connect, bound to `local` first if given, with `recv_buffer` as `SO_RCVBUF`
/// if given (set before the connect, which fixes the window scale); `TCP_NODELAY` on.
async fn connect_tcp_from(
    addr: SocketAddr,
    local: Option<IpAddr>,
    recv_buffer: Option<u32>,
) -> io::Result<TcpStream> {
    let stream = if local.is_none() && recv_buffer.is_none() {
        TcpStream::connect(addr).await?
    } else {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        socket.connect(addr).await?
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}
