//! Test support: start a backend on port 0, connect a fastwebsockets client, wait with
//! deadlines.

#![allow(dead_code)] // each test file uses a different subset

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use demo_services::{spawn_for_test, Backend, RunningBackend, ServiceOptions};
use fastwebsockets::{handshake, Frame, OpCode, WebSocket, WebSocketError};
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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

/// WebSocket client handshake to `addr` + `path`.
pub async fn connect(addr: SocketAddr, path: &str) -> Result<Client, WebSocketError> {
    let stream = TcpStream::connect(addr).await?;
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
