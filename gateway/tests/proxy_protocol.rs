//! `[server] proxy_protocol`: behind a TCP load balancer every connection starts with a
//! PROXY protocol header, and the client it names is the one the gateway forwards in
//! `X-Forwarded-For`, counts under `max_connections_per_ip` and logs. A connection
//! without a good header is closed and counted; everyone else is served. The real
//! gateway binary, a probe backend, clients sending v1 and v2 headers over loopback,
//! and HAProxy as the balancer (needs `haproxy`, which .ci/run installs; set
//! WSGATE_SKIP_INTEROP=1 to skip that test where it cannot be installed).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use loadgen::client::{connect, ConnectError, ConnectOptions, Connected};
use loadgen::proxy_header::ProxyHeader;
use support::probe::{Event, Mode, Probe};
use support::process::{GatewayProc, ProcOptions};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway process reading PROXY headers, routing `Backend_PROBE` to `probe`.
async fn gateway_behind_balancer(probe: &Probe, extra_toml: &str) -> Result<GatewayProc> {
    gateway_behind(probe, "", extra_toml).await
}

/// The same, with more `[server]` lines.
async fn gateway_behind(probe: &Probe, server_toml: &str, extra_toml: &str) -> Result<GatewayProc> {
    GatewayProc::start(ProcOptions {
        backends: vec![("Backend_PROBE".into(), probe.url())],
        server_toml: format!("proxy_protocol = true\n{server_toml}"),
        extra_toml: extra_toml.into(),
        ..ProcOptions::default()
    })
    .await
}

fn with_header(gw: &GatewayProc, header: ProxyHeader) -> Result<ConnectOptions> {
    let mut opts = gw.connect_options("Backend_PROBE")?;
    opts.proxy_header = Some(header);
    Ok(opts)
}

fn addr(s: &str) -> Result<SocketAddr> {
    s.parse().with_context(|| format!("address {s}"))
}

/// The `X-Forwarded-For` of the next upgrade that reaches the probe (skipping what the
/// sessions before it sent).
async fn forwarded_for(probe: &mut Probe) -> Result<Option<String>> {
    loop {
        if let Event::Handshake(headers) = probe.next().await? {
            return Ok(headers
                .into_iter()
                .find(|(k, _)| k == "x-forwarded-for")
                .map(|(_, v)| v));
        }
    }
}

/// Opens a session with `opts` (`what` names it in errors), checks that the backend was
/// told the client is `client`, echoes through it and closes it.
async fn session_seen_as(
    opts: &ConnectOptions,
    probe: &mut Probe,
    client: &str,
    what: &str,
) -> Result<()> {
    let mut c = connect(opts)
        .await
        .with_context(|| format!("connect {what}"))?;
    let xff = forwarded_for(probe).await?;
    ensure!(
        xff.as_deref() == Some(client),
        "{what}: backend got X-Forwarded-For {xff:?}, expected {client}"
    );
    echo(&mut c.ws, what.as_bytes()).await?;
    close_cleanly(&mut c.ws).await?;
    Ok(())
}

#[tokio::test]
async fn the_client_named_in_the_header_is_the_one_forwarded_and_logged() -> Result<()> {
    let mut probe = Probe::start(Mode::Accept { protocol: None }).await?;
    let gw = gateway_behind_balancer(&probe, "").await?;
    let cases = [
        (
            ProxyHeader::V1(Some(addr("203.0.113.7:40000")?)),
            "203.0.113.7",
        ),
        (
            ProxyHeader::V2(Some(addr("[2001:db8::7]:40001")?)),
            "2001:db8::7",
        ),
        // The balancer's own connection (a health check): the socket's address stands.
        (ProxyHeader::V2Local, "127.0.0.1"),
        (ProxyHeader::V1(None), "127.0.0.1"),
    ];
    for (header, client) in cases {
        let what = format!("with {header:?}");
        session_seen_as(&with_header(&gw, header)?, &mut probe, client, &what).await?;
    }
    // The session's log lines carry the client's address, not the balancer's.
    wait_for("a log line naming 203.0.113.7:40000", DEADLINE, || async {
        Ok(gw.log().contains("peer=203.0.113.7:40000"))
    })
    .await?;
    Ok(())
}

/// Options for a connection whose PROXY header (v2 or v1) names the client at `client`.
fn as_client(gw: &GatewayProc, client: &str, v2: bool) -> Result<ConnectOptions> {
    let at = Some(addr(client)?);
    with_header(
        gw,
        if v2 {
            ProxyHeader::V2(at)
        } else {
            ProxyHeader::V1(at)
        },
    )
}

/// A session for the client at `client`.
async fn connect_as(gw: &GatewayProc, client: &str, v2: bool) -> Result<Connected> {
    connect(&as_client(gw, client, v2)?)
        .await
        .with_context(|| format!("client {client}"))
}

/// Checks that a connection for the client at `client` is refused under the per-address
/// limit (`why` says whose it counts as).
async fn refused_per_address(gw: &GatewayProc, client: &str, v2: bool, why: &str) -> Result<()> {
    let (status, reason) = refused(&as_client(gw, client, v2)?).await?;
    ensure!(
        status == 503 && reason.contains("per-address"),
        "{client} ({why}) got {status} {reason:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_per_address_limit_counts_the_clients_the_headers_name() -> Result<()> {
    let probe = Probe::start(Mode::Accept { protocol: None }).await?;
    let gw = gateway_behind_balancer(&probe, "[limits]\nmax_connections_per_ip = 1\n").await?;
    // Every socket comes from 127.0.0.1; only the headers tell the clients apart.
    let first = connect_as(&gw, "198.51.100.1:1000", true).await?;
    refused_per_address(&gw, "198.51.100.1:1001", false, "a second connection").await?;
    let mut other = connect_as(&gw, "198.51.100.2:1000", false).await?;
    echo(&mut other.ws, b"mine").await?;
    // The first client's slot frees when it leaves.
    drop(first);
    let same = as_client(&gw, "198.51.100.1:1001", false)?;
    wait_for("198.51.100.1 admitted again", DEADLINE, || async {
        Ok(connect(&same).await.is_ok())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn ipv6_clients_are_counted_per_network_and_mapped_ipv4_as_ipv4() -> Result<()> {
    let probe = Probe::start(Mode::Accept { protocol: None }).await?;
    // The default: one client per /64, so a host rotating addresses in its network is
    // still one client.
    let gw = gateway_behind_balancer(&probe, "[limits]\nmax_connections_per_ip = 1\n").await?;
    let first = connect_as(&gw, "[2001:db8:1:2::1]:1000", true).await?;
    refused_per_address(&gw, "[2001:db8:1:2:aaaa::9]:1001", false, "the same /64").await?;
    let mut next_network = connect_as(&gw, "[2001:db8:1:3::1]:1000", true).await?;
    echo(&mut next_network.ws, b"mine").await?;
    // An IPv4 client is the same client when a header writes it IPv4-mapped.
    let _v4 = connect_as(&gw, "198.51.100.9:1000", false).await?;
    refused_per_address(&gw, "[::ffff:198.51.100.9]:1001", true, "IPv4-mapped").await?;
    drop(first);

    // `ipv6_prefix = 128`: every address is a client of its own.
    let gw = gateway_behind_balancer(
        &probe,
        "[limits]\nmax_connections_per_ip = 1\nipv6_prefix = 128\n",
    )
    .await?;
    let _first = connect_as(&gw, "[2001:db8:1:2::1]:1000", true).await?;
    let mut second = connect_as(&gw, "[2001:db8:1:2:aaaa::9]:1001", false).await?;
    echo(&mut second.ws, b"also mine").await?;
    Ok(())
}

#[tokio::test]
async fn only_the_balancers_named_in_proxy_protocol_from_may_send_a_header() -> Result<()> {
    let mut probe = Probe::start(Mode::Accept { protocol: None }).await?;
    let gw = gateway_behind(&probe, "proxy_protocol_from = [\"127.0.0.2\"]", "").await?;
    // From the balancer's address: the header's client is believed.
    let mut from_balancer = with_header(&gw, ProxyHeader::V1(Some(addr("203.0.113.9:1")?)))?;
    from_balancer.local_addr = Some("127.0.0.2".parse()?);
    session_seen_as(
        &from_balancer,
        &mut probe,
        "203.0.113.9",
        "from the balancer",
    )
    .await?;
    // From anywhere else, the same header is not even read: the connection is closed.
    let mut elsewhere = from_balancer.clone();
    elsewhere.local_addr = Some("127.0.0.3".parse()?);
    match connect(&elsewhere).await {
        Ok(_) => bail!("a header from outside proxy_protocol_from was believed"),
        Err(ConnectError::Refused { status, .. }) => bail!("answered HTTP {status}"),
        Err(_) => {}
    }
    wait_for("the closed connection counted", DEADLINE, || async {
        Ok(gw.metric("wsgate_proxy_header_refusals_total").await? == 1.0)
    })
    .await?;
    // The log line can follow the metric by a moment (it comes through a pipe).
    wait_for("the close logged", DEADLINE, || async {
        Ok(gw.log().contains("outside proxy_protocol_from"))
    })
    .await?;
    session_seen_as(&from_balancer, &mut probe, "203.0.113.9", "again").await?;
    Ok(())
}

/// Sends `bytes` on a fresh connection and waits for the gateway to close it; returns
/// what it answered and how long the close took.
async fn closed_after(gw: &GatewayProc, bytes: &[u8]) -> Result<(Vec<u8>, Duration)> {
    let mut tcp = TcpStream::connect(gw.addr).await?;
    tcp.write_all(bytes).await?;
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer))
        .await
        .with_context(|| format!("connection sending {bytes:?} was never closed"))?
        .ok();
    Ok((answer, started.elapsed()))
}

#[tokio::test]
async fn connections_without_a_good_header_are_closed_and_the_rest_served() -> Result<()> {
    let probe = Probe::start(Mode::Accept { protocol: None }).await?;
    let gw = gateway_behind_balancer(&probe, "[timeouts]\ntls_handshake = \"1s\"\n").await?;
    let mut good = connect(&with_header(&gw, ProxyHeader::V2(None))?).await?;

    // A client reaching the gateway past the balancer: its TLS handshake is refused.
    match connect(&gw.connect_options("Backend_PROBE")?).await {
        Ok(_) => bail!("a connection without a PROXY header was served"),
        Err(ConnectError::Refused { status, .. }) => {
            bail!("a connection without a PROXY header got HTTP {status}")
        }
        Err(_) => {}
    }
    let (answer, _) = closed_after(&gw, b"PROXY TCP4 not-an-address 192.0.2.1 1 2\r\n").await?;
    ensure!(answer.is_empty(), "a malformed header got {answer:?}");
    let mut too_long = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff".to_vec();
    too_long.extend_from_slice(&[0; 64]);
    let (answer, _) = closed_after(&gw, &too_long).await?;
    ensure!(answer.is_empty(), "an oversized v2 header got {answer:?}");
    // Half a header, then nothing: closed at the handshake timeout.
    let (answer, took) = closed_after(&gw, b"PROXY TCP4 203.0").await?;
    ensure!(answer.is_empty(), "a stalled header got {answer:?}");
    ensure!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "a stalled header was closed after {took:?} (timeout 1 s)"
    );

    wait_for("four refusals counted", DEADLINE, || async {
        Ok(gw.metric("wsgate_proxy_header_refusals_total").await? == 4.0)
    })
    .await?;
    // Each refusal's log line (it can follow the metric by a moment).
    for reason in [
        "no PROXY protocol header",
        "malformed PROXY protocol header",
        "over the 4096-byte limit",
        "PROXY protocol header timed out",
    ] {
        wait_for(reason, DEADLINE, || async { Ok(gw.log().contains(reason)) }).await?;
    }
    // The session open all along, and a new one, are served.
    echo(&mut good.ws, b"still here").await?;
    let mut fresh = connect(&with_header(&gw, ProxyHeader::V1(None))?).await?;
    echo(&mut fresh.ws, b"fresh").await?;
    Ok(())
}

/// HAProxy, killed when dropped.
struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bound, read back, released for HAProxy to bind).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test]
async fn haproxy_as_the_balancer_in_front_with_send_proxy_and_send_proxy_v2() -> Result<()> {
    if std::env::var_os("WSGATE_SKIP_INTEROP").is_some() {
        eprintln!("skipped: WSGATE_SKIP_INTEROP is set");
        return Ok(());
    }
    let mut probe = Probe::start(Mode::Accept { protocol: None }).await?;
    let gw = gateway_behind_balancer(&probe, "").await?;
    let (v1_port, v2_port) = (free_port()?, free_port()?);
    let dir = support::process::temp_dir("haproxy")?;
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 100\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             listen v1\n  bind 127.0.0.1:{v1_port}\n  server gw {gw} send-proxy\n\
             listen v2\n  bind 127.0.0.1:{v2_port}\n  server gw {gw} send-proxy-v2\n",
            gw = gw.addr
        ),
    )?;
    let haproxy = std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting haproxy (apt-get install haproxy, or set WSGATE_SKIP_INTEROP=1)")?;
    let _haproxy = Haproxy(haproxy);
    for port in [v1_port, v2_port] {
        wait_for("haproxy listening", DEADLINE, || async move {
            Ok(TcpStream::connect(("127.0.0.1", port)).await.is_ok())
        })
        .await?;
    }
    // Each client from an address of its own; HAProxy connects to the gateway from
    // 127.0.0.1 and names the client in the header.
    for (port, client) in [(v1_port, "127.0.0.7"), (v2_port, "127.0.0.8")] {
        let mut opts = support::process::client_options(
            &format!("wss://localhost:{port}/gateway"),
            "Backend_PROBE",
        )?;
        opts.local_addr = Some(client.parse()?);
        // HAProxy's own connections to the gateway (the waits above) came with headers
        // too and were closed before TLS; the next upgrade is this client's.
        let what = format!("through haproxy :{port}");
        session_seen_as(&opts, &mut probe, client, &what).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
