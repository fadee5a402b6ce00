//! A rustls client of a test's own making through the gateway: the TLS handshake, the
//! upgrade to a probe backend and one echoed frame, and what the handshake negotiated.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use rustls::pki_types::ServerName;
use rustls::{CipherSuite, ClientConfig, HandshakeKind, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::probe::{Mode, Probe};
use super::process::{GatewayProc, ProcOptions};
use super::{claims_with, rs256, DEADLINE};

/// A gateway with `tls_toml` in `[tls]`, in front of an echoing probe as `Backend_PROBE`
/// (what [`tls_session`] upgrades to).
pub async fn probe_gateway(tls_toml: &str) -> Result<(GatewayProc, Probe)> {
    let probe = Probe::start(Mode::Accept { protocol: None }).await?;
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_PROBE".into(), probe.url())],
        tls_toml: tls_toml.into(),
        ..ProcOptions::default()
    })
    .await?;
    Ok((gw, probe))
}

/// What one connection negotiated.
#[derive(Debug)]
pub struct Negotiated {
    pub version: Option<ProtocolVersion>,
    pub suite: Option<CipherSuite>,
    pub kind: Option<HandshakeKind>,
    /// The gateway's answer head (the 101), status line and headers.
    pub head: String,
}

/// Connects to the gateway at `addr` with `config`, asking for `server_name` (SNI, when
/// a name), upgrades to `Backend_PROBE` and echoes a frame through it.
pub async fn tls_session(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> Result<Negotiated> {
    tls_session_with(addr, config, server_name, "").await
}

/// [`tls_session`] with `extra_head` (whole header lines, each ending in `\r\n`) in the
/// upgrade request.
pub async fn tls_session_with(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
    extra_head: &str,
) -> Result<Negotiated> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned())?;
    let mut tls = tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")?
    .context("TLS handshake")?;
    let token = rs256(&claims_with(|_| {}))?;
    let head = format!(
        "GET /gateway HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         ID: Backend_PROBE\r\nAuthorization: Bearer {token}\r\n{extra_head}\r\n"
    );
    tls.write_all(head.as_bytes()).await?;
    tls.flush().await?;
    // Byte by byte, so that nothing past the head is taken from the WebSocket.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, tls.read(&mut byte)).await??;
        ensure!(
            n == 1,
            "closed inside the answer: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.push(byte[0]);
    }
    ensure!(
        answer.starts_with(b"HTTP/1.1 101"),
        "answer {}",
        String::from_utf8_lossy(&answer)
    );
    let (_, conn) = tls.get_ref();
    let negotiated = Negotiated {
        version: conn.protocol_version(),
        suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
        kind: conn.handshake_kind(),
        head: String::from_utf8_lossy(&answer).into_owned(),
    };
    let mut ws = WebSocket::after_handshake(tls, Role::Client);
    ws.write_frame(Frame::binary(Payload::Borrowed(b"through")))
        .await?;
    let frame = tokio::time::timeout(DEADLINE, ws.read_frame()).await??;
    ensure!(
        frame.opcode == OpCode::Binary && frame.payload[..] == b"through"[..],
        "echo {:?} {:?}",
        frame.opcode,
        &frame.payload[..]
    );
    ws.write_frame(Frame::close(1000, b"")).await?;
    Ok(negotiated)
}
