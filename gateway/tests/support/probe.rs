//! A probe backend for tests: a real WebSocket server on port 0 that records the
//! handshake it receives and the frames after it, and can be told to misbehave.
//!
//! Dropping a [`Probe`] stops it as a dying backend would: the listener and every open
//! connection go at once, without close frames.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// How the probe answers upgrades.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Accept; choose this subprotocol if given; echo data; on a text frame
    /// `close:<code>:<reason>` send that close.
    Accept { protocol: Option<String> },
    /// Answer with this HTTP status instead of 101.
    Refuse(u16),
    /// Accept TCP and never answer.
    Hang,
    /// Answer an upgrade with this text as it stands (`{accept}` replaced by the accept
    /// key of the request's `Sec-WebSocket-Key`), then read and drop whatever comes until
    /// the gateway closes: a backend whose answer is written by hand.
    Answer(String),
    /// Accept, with these headers added to the 101, and echo as `Accept` does.
    AcceptWith(Vec<(String, String)>),
    /// Accept (answering `Sec-WebSocket-Extensions: <extensions>` if given), report the
    /// first raw bytes received after the upgrade, then send `reply` as raw bytes.
    Raw {
        reply: Vec<u8>,
        extensions: Option<String>,
    },
    /// Accept, then send binary frames of `size` bytes (at least 8) as fast as the
    /// connection takes them: the first 8 bytes of frame `n` hold `n` (big-endian, from
    /// 0). Stops after `count` frames (`None`: never) or at [`Probe::stop_flood`], which
    /// is followed by the text frame `flood-end:<frames sent>`. Frames received
    /// meanwhile are reported as [`Event::Frame`], not echoed.
    Flood { size: usize, count: Option<u64> },
    /// Accept, then never read again, and send a ping every `every`: a backend whose
    /// handler hangs while its library's keepalive still runs.
    Deaf { every: std::time::Duration },
}

/// What the probe saw.
#[derive(Debug)]
pub enum Event {
    /// Request headers of an upgrade, lower-cased names.
    Handshake(Vec<(String, String)>),
    /// A frame received after the upgrade (close included).
    Frame(OpCode, Vec<u8>),
    /// The connection ended.
    Ended,
    /// Raw bytes received after the upgrade (Mode::Raw).
    Raw(Vec<u8>),
    /// A flood ended after this many frames were written (Mode::Flood).
    Flooded(u64),
}

/// A server config for [`Probe::start_tls`]: the dev server certificate (localhost, 127.0.0.1, ::1),
/// asking for a client certificate from the dev CA when `client_auth`.
pub fn tls_server_config(client_auth: bool) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let dir = super::certs();
    let chain =
        CertificateDer::pem_file_iter(dir.join("server.crt"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(dir.join("ca.crt"))? {
            roots.add(ca?)?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS handshake a [`Probe::start_tls`] probe completed.
#[derive(Debug, Clone)]
pub struct TlsSeen {
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The ALPN protocol agreed.
    pub alpn: Option<Vec<u8>>,
    /// Whether the client presented a certificate.
    pub client_cert: bool,
    /// Whether the client resumed an earlier session (no certificate exchanged).
    pub resumed: bool,
}

/// TLS handshakes of a [`Probe::start_tls`] probe, shared with the test.
#[derive(Debug, Default)]
struct TlsLog {
    done: Mutex<Vec<TlsSeen>>,
    failed: AtomicU64,
}

/// Progress of the probe's floods, shared with the test.
#[derive(Debug, Default)]
struct FloodState {
    /// Frames written so far, over all connections.
    sent: AtomicU64,
    /// Bytes the floods' sockets have taken so far, frame heads included: a frame larger
    /// than every buffer on the way is under way long before it counts in `sent`.
    bytes: Arc<AtomicU64>,
    /// Set by the test: floods stop after their current frame.
    stop: AtomicBool,
    /// Floods that have ended.
    done: AtomicU64,
}

/// What every connection of a probe shares.
#[derive(Clone)]
struct Ctx {
    mode: Mode,
    tx: mpsc::UnboundedSender<Event>,
    /// Every task the probe spawned, aborted when it is dropped.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    flood: Arc<FloodState>,
}

impl Ctx {
    fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(fut).abort_handle();
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(handle);
        }
    }
}

/// A running probe.
pub struct Probe {
    pub addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    flood: Arc<FloodState>,
    tls: Arc<TlsLog>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

impl Probe {
    /// Starts a probe on 127.0.0.1:0.
    pub async fn start(mode: Mode) -> anyhow::Result<Probe> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), mode).await
    }

    /// Starts a probe on `addr` (`SO_REUSEADDR` set, so a stopped probe's port can be
    /// taken again while its old connections linger in TIME_WAIT).
    pub async fn start_on(addr: SocketAddr, mode: Mode) -> anyhow::Result<Probe> {
        Self::serve(addr, mode, None).await
    }

    /// Starts a probe on `addr` that speaks WebSocket over TLS with `config` (`wss://`).
    pub async fn start_tls(
        addr: SocketAddr,
        mode: Mode,
        config: Arc<rustls::ServerConfig>,
    ) -> anyhow::Result<Probe> {
        Self::serve(addr, mode, Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn serve(
        addr: SocketAddr,
        mode: Mode,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> anyhow::Result<Probe> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener: TcpListener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        let (tx, events) = mpsc::unbounded_channel();
        let ctx = Ctx {
            mode,
            tx,
            tasks: Arc::new(Mutex::new(Vec::new())),
            flood: Arc::new(FloodState::default()),
        };
        let (tasks, flood) = (ctx.tasks.clone(), ctx.flood.clone());
        let tls_log = Arc::new(TlsLog::default());
        let log = tls_log.clone();
        let held = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if matches!(ctx.mode, Mode::Hang) {
                    held.lock().map(|mut h| h.push(tcp)).ok();
                    continue;
                }
                if let Mode::Answer(text) = &ctx.mode {
                    ctx.spawn(answer_by_hand(tcp, text.clone(), ctx.tx.clone()));
                    continue;
                }
                let conn_ctx = ctx.clone();
                let (acceptor, log) = (tls.clone(), log.clone());
                ctx.spawn(async move {
                    let svc_ctx = conn_ctx.clone();
                    let svc = service_fn(move |req| answer(req, svc_ctx.clone()));
                    let http = http1::Builder::new();
                    let Some(acceptor) = acceptor else {
                        let _ = http
                            .serve_connection(TokioIo::new(tcp), svc)
                            .with_upgrades()
                            .await;
                        return;
                    };
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        log.failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let (_, conn) = stream.get_ref();
                    let seen = TlsSeen {
                        sni: conn.server_name().map(str::to_owned),
                        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                        client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                    };
                    log.done.lock().map(|mut d| d.push(seen)).ok();
                    let _ = http
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Probe {
            addr,
            events,
            task,
            tasks,
            flood,
            tls: tls_log,
        })
    }

    /// The probe's URL for a backend table.
    pub fn url(&self) -> String {
        format!("ws://{}/probe", self.addr)
    }

    /// TLS handshakes completed so far ([`Probe::start_tls`]).
    pub fn tls_seen(&self) -> Vec<TlsSeen> {
        self.tls.done.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// TLS handshakes that failed so far ([`Probe::start_tls`]).
    pub fn tls_failed(&self) -> u64 {
        self.tls.failed.load(Ordering::SeqCst)
    }

    /// Next event within the deadline.
    pub async fn next(&mut self) -> anyhow::Result<Event> {
        tokio::time::timeout(super::DEADLINE, self.events.recv())
            .await
            .map_err(|_| anyhow::anyhow!("probe saw nothing before the deadline"))?
            .ok_or_else(|| anyhow::anyhow!("probe stopped"))
    }

    /// Next received frame, skipping other events.
    pub async fn next_frame(&mut self) -> anyhow::Result<(OpCode, Vec<u8>)> {
        loop {
            if let Event::Frame(op, data) = self.next().await? {
                return Ok((op, data));
            }
        }
    }

    /// The next close frame received (skipping other events): its code and reason.
    pub async fn next_close(&mut self) -> anyhow::Result<(u16, String)> {
        loop {
            let (op, data) = self.next_frame().await?;
            if op == OpCode::Close {
                anyhow::ensure!(data.len() >= 2, "close without a code: {data:?}");
                let code = u16::from_be_bytes([data[0], data[1]]);
                return Ok((code, String::from_utf8_lossy(&data[2..]).into_owned()));
            }
        }
    }

    /// Frames written by this probe's floods so far.
    pub fn flooded(&self) -> u64 {
        self.flood.sent.load(Ordering::SeqCst)
    }

    /// Bytes the floods' sockets have taken so far, partly written frames included.
    pub fn flooded_bytes(&self) -> u64 {
        self.flood.bytes.load(Ordering::SeqCst)
    }

    /// Floods that have ended.
    pub fn floods_done(&self) -> u64 {
        self.flood.done.load(Ordering::SeqCst)
    }

    /// Tells every flood to stop after the frame it is writing.
    pub fn stop_flood(&self) {
        self.flood.stop.store(true, Ordering::SeqCst);
    }
}

/// Every value of header `name` (lower case) in a [`Event::Handshake`]'s headers, in order.
pub fn values<'h>(headers: &'h [(String, String)], name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The sequence number a flood frame carries.
pub fn flood_seq(payload: &[u8]) -> Option<u64> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

async fn answer(
    mut req: Request<hyper::body::Incoming>,
    ctx: Ctx,
) -> Result<Response<Empty<Bytes>>, std::convert::Infallible> {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_owned(), v)
        })
        .collect();
    let _ = ctx.tx.send(Event::Handshake(headers));
    let protocol = match ctx.mode.clone() {
        Mode::Refuse(status) => {
            let mut r = Response::new(Empty::new());
            *r.status_mut() =
                hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
            return Ok(r);
        }
        Mode::Accept { protocol } => protocol,
        Mode::Hang | Mode::Answer(_) | Mode::AcceptWith(_) => None,
        Mode::Raw { reply, extensions } => {
            let Ok((mut response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                return Ok(Response::new(Empty::new()));
            };
            if let Some(v) = extensions.and_then(|e| e.parse().ok()) {
                response.headers_mut().insert("sec-websocket-extensions", v);
            }
            let tx = ctx.tx.clone();
            ctx.spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(ws) = upgrade.await else { return };
                let mut io = ws.into_inner();
                let mut buf = vec![0u8; 4096];
                if let Ok(n) = io.read(&mut buf).await {
                    let _ = tx.send(Event::Raw(buf[..n].to_vec()));
                }
                let _ = io.write_all(&reply).await;
                let _ = io.flush().await;
                let _ = io.read(&mut buf).await;
            });
            return Ok(response);
        }
        Mode::Deaf { every } => {
            let Ok((response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                return Ok(Response::new(Empty::new()));
            };
            ctx.spawn(async move {
                use tokio::io::AsyncWriteExt;
                let Ok(ws) = upgrade.await else { return };
                let mut io = ws.into_inner();
                // Unmasked pings (a server's), for as long as the connection takes them.
                while io
                    .write_all(&[0x89, 0x04, b'd', b'e', b'a', b'f'])
                    .await
                    .is_ok()
                    && io.flush().await.is_ok()
                {
                    tokio::time::sleep(every).await;
                }
            });
            return Ok(response);
        }
        Mode::Flood { size, count } => {
            let Ok((response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                return Ok(Response::new(Empty::new()));
            };
            let inner = ctx.clone();
            ctx.spawn(async move {
                let Ok(ws) = upgrade.await else { return };
                flood(ws, size, count, inner).await;
            });
            return Ok(response);
        }
    };
    let Ok((mut response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut req) else {
        let mut r = Response::new(Empty::new());
        *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
        return Ok(r);
    };
    if let Some(p) = protocol {
        if let Ok(v) = p.parse() {
            response.headers_mut().insert("sec-websocket-protocol", v);
        }
    }
    if let Mode::AcceptWith(extra) = &ctx.mode {
        for (name, value) in extra {
            if let (Ok(n), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(name.as_bytes()),
                value.parse(),
            ) {
                response.headers_mut().append(n, v);
            }
        }
    }
    let tx = ctx.tx.clone();
    ctx.spawn(async move {
        let Ok(mut ws) = upgrade.await else { return };
        ws.set_auto_close(false);
        ws.set_auto_pong(true);
        while let Ok(frame) = ws.read_frame().await {
            let (op, data) = (frame.opcode, frame.payload.to_vec());
            let _ = tx.send(Event::Frame(op, data.clone()));
            match op {
                OpCode::Close => {
                    let _ = ws.write_frame(Frame::close_raw(Payload::Owned(data))).await;
                    break;
                }
                OpCode::Text if data.starts_with(b"close:") => {
                    let text = String::from_utf8_lossy(&data[6..]).into_owned();
                    let (code, reason) = text.split_once(':').unwrap_or((&text, ""));
                    let code: u16 = code.parse().unwrap_or(1000);
                    let _ = ws.write_frame(Frame::close(code, reason.as_bytes())).await;
                }
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    let _ = ws
                        .write_frame(Frame::new(frame.fin, op, None, Payload::Owned(data)))
                        .await;
                }
                _ => {}
            }
        }
        let _ = tx.send(Event::Ended);
    });
    Ok(response)
}

/// [`Mode::Answer`] on one connection: reports the request's headers, writes `text`
/// with the accept key filled in, then drains the connection until it ends.
async fn answer_by_hand(
    mut tcp: tokio::net::TcpStream,
    text: String,
    tx: mpsc::UnboundedSender<Event>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let headers: Vec<(String, String)> = String::from_utf8_lossy(&head)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let key = headers
        .iter()
        .find(|(k, _)| k == "sec-websocket-key")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let _ = tx.send(Event::Handshake(headers));
    let text = text.replace("{accept}", &gateway::wsclient::accept_key(key.as_bytes()));
    if tcp.write_all(text.as_bytes()).await.is_err() {
        return;
    }
    while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    let _ = tx.send(Event::Ended);
}

type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// Mode::Flood on one upgraded connection: a writer task floods, this task reports
/// what arrives.
async fn flood(ws: fastwebsockets::WebSocket<Upgraded>, size: usize, count: Option<u64>, ctx: Ctx) {
    let io = Counted {
        inner: ws.into_inner(),
        written: ctx.flood.bytes.clone(),
    };
    let ws = fastwebsockets::WebSocket::after_handshake(io, fastwebsockets::Role::Server);
    let (mut read, mut write) = ws.split(tokio::io::split);
    read.set_auto_close(false);
    read.set_auto_pong(false);
    let state = ctx.flood.clone();
    let tx = ctx.tx.clone();
    ctx.spawn(async move {
        let mut payload = vec![0u8; size.max(8)];
        let mut n: u64 = 0;
        while count.is_none_or(|c| n < c) && !state.stop.load(Ordering::SeqCst) {
            payload[..8].copy_from_slice(&n.to_be_bytes());
            let frame = Frame::binary(Payload::Borrowed(&payload));
            if write.write_frame(frame).await.is_err() {
                break;
            }
            n += 1;
            state.sent.fetch_add(1, Ordering::SeqCst);
        }
        if state.stop.load(Ordering::SeqCst) {
            let end = format!("flood-end:{n}");
            let _ = write
                .write_frame(Frame::text(Payload::Borrowed(end.as_bytes())))
                .await;
        }
        state.done.fetch_add(1, Ordering::SeqCst);
        let _ = tx.send(Event::Flooded(n));
    });
    let mut ignore = |_: Frame<'_>| std::future::ready(Ok::<(), WebSocketError>(()));
    while let Ok(frame) = read.read_frame(&mut ignore).await {
        let op = frame.opcode;
        let _ = ctx.tx.send(Event::Frame(op, frame.payload.to_vec()));
        if op == OpCode::Close {
            ctx.flood.stop.store(true, Ordering::SeqCst);
            break;
        }
    }
    let _ = ctx.tx.send(Event::Ended);
}

/// A stream that counts the bytes its writes took.
struct Counted<S> {
    inner: S,
    written: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.written.fetch_add(*n as u64, Ordering::SeqCst);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
