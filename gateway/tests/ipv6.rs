//! IPv6: a gateway listening on `[::1]` in front of a backend on `ws://[::1]:…`, and a
//! dual-stack listener (`[::]`) naming its IPv4 clients as IPv4 addresses.

mod support;

use std::net::SocketAddr;

use anyhow::{bail, ensure, Result};
use fastwebsockets::{Frame, OpCode, Payload};
use support::probe::{self, Mode, Probe};
use support::process::{client_options, GatewayProc, ProcOptions};

/// Whether this machine has an IPv6 loopback to test on (a container may not).
fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// The headers of the upgrade request that reached the backend.
async fn handshake(probe: &mut Probe) -> Result<Vec<(String, String)>> {
    let probe::Event::Handshake(headers) = probe.next().await? else {
        bail!("expected the handshake")
    };
    Ok(headers)
}

#[tokio::test]
async fn a_gateway_on_ipv6_loopback_reaches_a_backend_on_ipv6_loopback() -> Result<()> {
    if !ipv6_loopback() {
        eprintln!("skipped: no IPv6 loopback ([::1]) on this machine");
        return Ok(());
    }
    let mut probe = Probe::start_on("[::1]:0".parse()?, Mode::Accept { protocol: None }).await?;
    ensure!(probe.url().starts_with("ws://[::1]:"), "{}", probe.url());
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_V6".into(), probe.url())],
        listen: Some("[::1]:0".parse()?),
        ..ProcOptions::default()
    })
    .await?;
    ensure!(gw.addr.is_ipv6(), "listening on {}", gw.addr);

    // The certificate names ::1, so the client checks it against the address it dialled.
    let url = format!("wss://[::1]:{}/gateway", gw.addr.port());
    let mut c = loadgen::client::connect(&client_options(&url, "Backend_V6")?).await?;
    let headers = handshake(&mut probe).await?;
    let host = format!("[::1]:{}", probe.addr.port());
    ensure!(
        probe::values(&headers, "host") == [host.as_str()]
            && probe::values(&headers, "x-forwarded-for") == ["::1"],
        "backend got {headers:?}"
    );
    support::send(
        &mut c.ws,
        Frame::text(Payload::Borrowed(b"over IPv6".as_slice())),
    )
    .await?;
    let (op, payload) = probe.next_frame().await?;
    ensure!(
        op == OpCode::Text && payload == b"over IPv6",
        "{op:?} {payload:?}"
    );
    let echoed = support::next_frame(&mut c.ws).await?;
    ensure!(&echoed.payload[..] == b"over IPv6");
    Ok(())
}

#[tokio::test]
async fn a_dual_stack_listener_names_an_ipv4_client_by_its_ipv4_address() -> Result<()> {
    if !ipv6_loopback() {
        eprintln!("skipped: no IPv6 loopback ([::1]) on this machine");
        return Ok(());
    }
    let mut probe = Probe::start(Mode::Accept { protocol: None }).await?;
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_PROBE".into(), probe.url())],
        listen: Some("[::]:0".parse()?),
        ..ProcOptions::default()
    })
    .await?;
    // A system with IPv6-only sockets by default (net.ipv6.bindv6only = 1) takes no IPv4
    // client on [::]: nothing to test there.
    let v4 = SocketAddr::from(([127, 0, 0, 1], gw.addr.port()));
    if tokio::net::TcpStream::connect(v4).await.is_err() {
        eprintln!("skipped: [::] takes no IPv4 client here (bindv6only)");
        return Ok(());
    }
    let url = format!("wss://127.0.0.1:{}/gateway", gw.addr.port());
    let _c = loadgen::client::connect(&client_options(&url, "Backend_PROBE")?).await?;
    // Was "::ffff:127.0.0.1": a backend's IPv4 allow-list would not match it.
    let headers = handshake(&mut probe).await?;
    ensure!(
        probe::values(&headers, "x-forwarded-for") == ["127.0.0.1"],
        "backend got {headers:?}"
    );
    // And the logs name it so.
    let (status, _) = support::refused(&client_options(&url, "Backend_NONE")?).await?;
    ensure!(status == 404);
    let line = gw.log_line("status=404").await?;
    ensure!(
        line.contains("peer=127.0.0.1:") && !line.contains("::ffff:"),
        "{line}"
    );
    Ok(())
}
