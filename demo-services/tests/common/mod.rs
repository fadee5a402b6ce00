//! Test support: start a backend on port 0 (plain or TLS), connect a fastwebsockets
//! client (over TCP or TLS), wait with deadlines.

#![allow(dead_code)] // each test file uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use demo_services::tls::TlsFiles;
use demo_services::{spawn_for_test, spawn_tls_for_test, Backend, RunningBackend, ServiceOptions};
use fastwebsockets::{handshake, Frame, OpCode, WebSocket, WebSocketError};
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Generous upper bound for anything a test waits on; never a synchronisation sleep.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The client side of a test connection.
pub type Client = WebSocket<TokioIo<Upgraded>>;

/// Runs `fut`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<F: Future>(what: &str, fut: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .with_context(|| format!("timed out waiting for {what}"))
}

/// Spawns tasks for hyper's client connection (required by `handshake::client`).
struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

/// Starts `backend` on a free port with the given push period.
pub async fn start(
    backend: Backend,
    push_interval: Option<Duration>,
) -> anyhow::Result<RunningBackend> {
    Ok(spawn_for_test(ServiceOptions {
        backend,
        push_interval,
    })
    .await?)
}

/// The repository's development certificates (`certs/`).
pub fn dev_certs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../certs")
}

/// The dev server certificate and key (SAN localhost, 127.0.0.1; signed by certs/ca.crt).
pub fn dev_tls_files() -> TlsFiles {
    TlsFiles {
        cert: dev_certs().join("server.crt"),
        key: dev_certs().join("server.key"),
    }
}

/// Starts `backend` serving `wss://` with the dev certificate on a free port.
pub async fn start_tls(
    backend: Backend,
    push_interval: Option<Duration>,
) -> anyhow::Result<RunningBackend> {
    let acceptor = demo_services::tls::acceptor(&dev_tls_files())?;
    let opts = ServiceOptions {
        backend,
        push_interval,
    };
    Ok(spawn_tls_for_test(opts, acceptor).await?)
}

/// A TLS client trusting only certs/ca.crt, on the aws-lc-rs provider, offering ALPN
/// http/1.1 as the gateway does.
pub fn tls_connector() -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dev_certs().join("ca.crt"))? {
        roots.add(ca?)?;
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS connection to `addr`, checking the certificate is valid for "localhost".
pub async fn tls_stream(addr: SocketAddr) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    Ok(within("TLS handshake", tls_connector()?.connect(name, tcp)).await??)
}

/// WebSocket client handshake over TLS to `addr` + `path`.
pub async fn connect_tls(addr: SocketAddr, path: &str) -> anyhow::Result<Client> {
    let stream = tls_stream(addr).await?;
    Ok(within("handshake", handshake_on(stream, addr, path)).await??)
}

/// WebSocket client handshake to `addr` + `path`.
pub async fn connect(addr: SocketAddr, path: &str) -> Result<Client, WebSocketError> {
    let stream = TcpStream::connect(addr).await?;
    handshake_on(stream, addr, path).await
}

/// WebSocket client handshake for `path` on an open stream to `addr`.
async fn handshake_on<S>(stream: S, addr: SocketAddr, path: &str) -> Result<Client, WebSocketError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request = Request::builder()
        .method("GET")
        .uri(format!("http://{addr}{path}"))
        .header(HOST, addr.to_string())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| WebSocketError::SendError(Box::new(e)))?;
    let (mut ws, _response) = handshake::client(&SpawnExecutor, request, stream).await?;
    // Tests look at the close frames themselves.
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    Ok(ws)
}

/// Connects to a running backend's own path.
pub async fn connect_to(server: &RunningBackend) -> anyhow::Result<Client> {
    let path = server.backend().path();
    Ok(within("handshake", connect(server.addr(), path)).await??)
}

/// A received frame, owned, for comparisons.
#[derive(Debug, PartialEq, Eq)]
pub struct Got {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

/// Reads the next frame within the deadline.
pub async fn next_frame(ws: &mut Client) -> anyhow::Result<Got> {
    let frame = within("a frame", ws.read_frame()).await??;
    Ok(Got {
        fin: frame.fin,
        opcode: frame.opcode,
        payload: frame.payload.to_vec(),
    })
}

/// Sends one frame (the client masks it).
pub async fn send(
    ws: &mut Client,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
) -> anyhow::Result<()> {
    let frame = Frame::new(fin, opcode, None, payload.to_vec().into());
    within("a write", ws.write_frame(frame)).await??;
    within("a flush", ws.flush()).await??;
    Ok(())
}

/// Expected frame.
pub fn got(fin: bool, opcode: OpCode, payload: &[u8]) -> Got {
    Got {
        fin,
        opcode,
        payload: payload.to_vec(),
    }
}

/// A close payload: code then reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}
