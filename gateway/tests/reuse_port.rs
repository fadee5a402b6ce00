//! `[server] reuse_port = true`: two gateway processes listen on the same port, the
//! kernel spreads new connections over both, and when one drains and exits (SIGTERM) its
//! clients get 1001 while the other keeps its sessions and takes every new connection.
//! Without the option a second process cannot bind the port.

mod support;

use anyhow::{ensure, Context, Result};
use demo_services::{Backend, ServiceOptions};
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use loadgen::client::{connect, WsStream};
use support::process::{GatewayProc, ProcOptions};
use support::*;

const CLIENTS: usize = 32;
const ACCEPTED: &str = "wsgate_connections_accepted_total";

async fn gateway(
    backend_url: &str,
    listen: Option<std::net::SocketAddr>,
    reuse_port: bool,
) -> Result<GatewayProc> {
    GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), backend_url.to_owned())],
        listen,
        server_toml: format!("reuse_port = {reuse_port}"),
        // Clients here do not answer the shutdown's close: do not wait long for them.
        extra_toml: "[timeouts]\nclose = \"1s\"\ndrain = \"3s\"\n".into(),
        ..ProcOptions::default()
    })
    .await
}

async fn open_client(gw: &GatewayProc) -> Result<WebSocket<WsStream>> {
    let mut ws = connect(&gw.connect_options("Backend_ABC")?).await?.ws;
    ws.set_auto_close(false);
    echo(&mut ws, b"hello").await?;
    Ok(ws)
}

#[tokio::test]
async fn two_processes_share_a_port_and_one_can_leave() -> Result<()> {
    let backend = demo_services::spawn_for_test(ServiceOptions {
        backend: Backend::Abc,
        push_interval: None,
    })
    .await?;
    let url = backend.url();
    let mut a = gateway(&url, None, true).await?;
    let port = a.addr;
    let b = gateway(&url, Some(port), true).await?;
    ensure!(b.addr == port, "second process listens on {}", b.addr);

    // Without the option, the port is taken.
    match gateway(&url, Some(port), false).await {
        Ok(_) => anyhow::bail!("a third process bound {port} without reuse_port"),
        Err(e) => ensure!(
            format!("{e:#}").contains("cannot listen"),
            "unexpected start-up failure: {e:#}"
        ),
    }

    // Both processes take part of the connections (each lands on one by a hash of its
    // addresses: all 32 on one process would be a 1 in 2^31 chance).
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(open_client(&a).await?);
    }
    let on_a = a.metric(ACCEPTED).await? as usize;
    let on_b = b.metric(ACCEPTED).await? as usize;
    ensure!(
        on_a + on_b == CLIENTS && on_a > 0 && on_b > 0,
        "accepted: {on_a} by one process, {on_b} by the other"
    );

    // One process drains and exits; its clients get 1001, the other's keep working.
    a.terminate()?;
    let status = a.wait_exit(DEADLINE).await?;
    ensure!(status.success(), "drained process exited with {status}");
    let (mut alive, mut closed) = (0, 0);
    for ws in &mut clients {
        // An echo request to every client: the drained one's first frame is its 1001
        // (or, its process gone, the stream fails), the other's the echo.
        let _ = send(ws, Frame::binary(Payload::Borrowed(b"still there?"))).await;
        match tokio::time::timeout(DEADLINE, ws.read_frame()).await {
            Ok(Ok(f)) if f.opcode == OpCode::Binary && &f.payload[..] == b"still there?" => {
                alive += 1
            }
            Ok(Ok(f)) if f.opcode == OpCode::Close => {
                let (code, reason) = close_of(&f)?;
                ensure!(code == 1001, "drained client got close {code} {reason}");
                closed += 1;
            }
            Ok(Ok(f)) => anyhow::bail!("unexpected {:?}", f.opcode),
            Ok(Err(_)) => closed += 1,
            Err(_) => anyhow::bail!("no answer from a client's gateway before the deadline"),
        }
    }
    ensure!(
        (alive, closed) == (on_b, on_a),
        "{alive} sessions alive and {closed} closed; expected {on_b} and {on_a}"
    );

    // The port still takes new connections: all go to the process left.
    for _ in 0..8 {
        let mut ws = open_client(&b)
            .await
            .context("connect after one process left")?;
        close_cleanly(&mut ws).await?;
    }
    let after = b.metric(ACCEPTED).await? as usize;
    ensure!(
        after == on_b + 8,
        "remaining process accepted {after}, expected {}",
        on_b + 8
    );
    for ws in &mut clients {
        let _ = send(ws, Frame::close(1000, b"")).await;
    }
    Ok(())
}
