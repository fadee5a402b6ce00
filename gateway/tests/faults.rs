//! Faults: hostile or broken bytes on the TLS port are dropped while others are served;
//! a backend that dies and comes back on the same address serves new sessions again.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use support::probe::{Mode, Probe};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `bytes` on a fresh TCP connection to `addr`, then reads until the gateway ends
/// the connection; returns what it sent back and when it ended.
async fn send_and_wait_for_drop(addr: SocketAddr, bytes: &[u8]) -> Result<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await?;
    if !bytes.is_empty() {
        tcp.write_all(bytes).await?;
    }
    let mut answer = Vec::new();
    // A reset ends the connection as well as a FIN does.
    let ended = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer)).await;
    ensure!(
        ended.is_ok(),
        "connection still open after {DEADLINE:?} ({} bytes sent)",
        bytes.len()
    );
    Ok((answer, started.elapsed()))
}

/// The first bytes a real TLS client sends: its ClientHello.
fn client_hello() -> Result<Vec<u8>> {
    let config = loadgen::tls::client_config(Some(&certs().join("ca.crt")), false)
        .map_err(anyhow::Error::msg)?;
    let mut conn = rustls::ClientConnection::new(config, "localhost".try_into()?)?;
    let mut hello = Vec::new();
    conn.write_tls(&mut hello)?;
    ensure!(
        hello.len() > 100,
        "short ClientHello: {} bytes",
        hello.len()
    );
    Ok(hello)
}

#[tokio::test]
async fn garbage_plain_http_and_stalled_handshakes_are_dropped_while_others_are_served(
) -> Result<()> {
    let tb = testbed_with_toml(&[], "[timeouts]\ntls_handshake = \"500ms\"\n").await?;
    let addr = tb.gateway_addr();
    let mut good = connect_ok(&tb, "Backend_ABC").await?;

    // Garbage: not TLS at all.
    let garbage: Vec<u8> = (0..1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (answer, _) = send_and_wait_for_drop(addr, &garbage).await?;
    ensure!(!answer.starts_with(b"HTTP/"), "garbage got an HTTP answer");

    // Plain HTTP on the TLS port.
    let plain = b"GET /gateway HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
                  Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nID: Backend_ABC\r\n\r\n";
    let (answer, _) = send_and_wait_for_drop(addr, plain).await?;
    ensure!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // Half a ClientHello, then nothing: dropped at the handshake timeout.
    let hello = client_hello()?;
    let (_, took) = send_and_wait_for_drop(addr, &hello[..hello.len() / 2]).await?;
    ensure!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "truncated ClientHello dropped after {took:?} (timeout 500 ms)"
    );

    // A TCP connection that never says anything: the same.
    let (answer, took) = send_and_wait_for_drop(addr, &[]).await?;
    ensure!(answer.is_empty(), "silent client got {answer:?}");
    ensure!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "silent connection dropped after {took:?} (timeout 500 ms)"
    );

    // The session open all along still works, and new ones do too.
    echo(&mut good.ws, b"still here").await?;
    let mut fresh = connect_ok(&tb, "Backend_PQR").await?;
    echo(&mut fresh.ws, b"fresh").await?;
    Ok(())
}

#[tokio::test]
async fn many_stalled_handshakes_at_once_do_not_block_good_clients() -> Result<()> {
    let tb = testbed_with_toml(&[], "[timeouts]\ntls_handshake = \"500ms\"\n").await?;
    let hello = client_hello()?;
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(tb.gateway_addr()).await?;
        tcp.write_all(&hello[..10]).await?;
        stalled.push(tcp);
    }
    let started = Instant::now();
    let mut c = connect_ok(&tb, "Backend_XYZ").await?;
    echo(&mut c.ws, b"through").await?;
    let took = started.elapsed();
    ensure!(
        took < Duration::from_secs(2),
        "a good client waited {took:?} behind stalled handshakes"
    );
    // Every stalled one is dropped.
    for mut tcp in stalled {
        let mut buf = Vec::new();
        tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut buf))
            .await
            .context("a stalled handshake was never dropped")?
            .ok();
    }
    Ok(())
}

#[tokio::test]
async fn a_backend_that_dies_and_comes_back_serves_new_sessions() -> Result<()> {
    let first = Probe::start(Mode::Accept { protocol: None }).await?;
    let addr = first.addr;
    let tb = testbed_with_toml(
        &[("Backend_FLAKY", first.url())],
        "[timeouts]\nbackend_connect = \"1s\"\n",
    )
    .await?;
    let mut c = connect_ok(&tb, "Backend_FLAKY").await?;
    echo(&mut c.ws, b"before").await?;

    // It dies: listener and connections go without a close.
    drop(first);
    let (code, reason) = expect_close(&mut c.ws).await?;
    ensure!(
        code == 1011 && reason.contains("backend"),
        "client got close {code} {reason:?}"
    );
    let (status, reason) = refused(&tb.connect_options("Backend_FLAKY")?).await?;
    ensure!(
        status == 502,
        "while down: {status} {reason:?}, expected 502"
    );

    // It comes back on the same address.
    let mut second = Probe::start_on(addr, Mode::Accept { protocol: None }).await?;
    let mut d = connect_ok(&tb, "Backend_FLAKY").await?;
    echo(&mut d.ws, b"after").await?;
    let (_, data) = second.next_frame().await?;
    ensure!(data == b"after", "the new backend got {data:?}");
    Ok(())
}
