//! Backpressure through the gateway binary: a backend floods a client that does not read.
//! The gateway's memory stays bounded (the flood is held back at the backend, not
//! buffered), another session keeps its round-trip time, and once the client reads
//! again every frame arrives, in order.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use demo_services::{Backend, ServiceOptions};
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use loadgen::client::{connect, WsStream};
use support::probe::{flood_seq, Mode, Probe};
use support::process::{GatewayProc, ProcOptions};
use support::*;

/// Largest gateway RSS growth allowed per flooded connection, averaged over the slow
/// readers (the allocator commits memory in 4 MiB steps, so one connection alone would
/// mostly measure that granularity). The gateway's own buffers for a stalled direction
/// (a 64 KiB batch, TLS records, one frame, a bounded read buffer) justify well under it.
const BOUND_PER_CONN_KIB: u64 = 1024;
/// Slow readers per run.
const SLOW_READERS: usize = 8;
/// Flood frame size.
const FRAME: usize = 1024;

/// Reads a slow client's frames (of `frame` bytes) until the flood's end marker: all of
/// them, in order, none twice. Returns how many.
async fn read_back(ws: &mut WebSocket<WsStream>, client: usize, frame: usize) -> Result<u64> {
    let mut expected: u64 = 0;
    loop {
        let f = next_frame(ws).await?;
        match f.opcode {
            OpCode::Binary => {
                let seq = flood_seq(&f.payload);
                ensure!(
                    seq == Some(expected) && f.payload.len() == frame,
                    "client {client}, frame {expected}: got seq {seq:?}, {} bytes",
                    f.payload.len()
                );
                expected += 1;
            }
            OpCode::Text => {
                let text = String::from_utf8_lossy(&f.payload).into_owned();
                let sent: u64 = text
                    .strip_prefix("flood-end:")
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("client {client}: unexpected text {text:?}"))?;
                ensure!(
                    sent == expected,
                    "client {client}: the backend sent {sent} frames, {expected} arrived"
                );
                return Ok(expected);
            }
            other => bail!("client {client}: unexpected {other:?}"),
        }
    }
}

/// What a slow reader does while it does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhileNotReading {
    /// Nothing.
    Silent,
    /// Sends a short message every round (a chat client in a background tab).
    Talks,
}

async fn slow_readers_under_flood(
    slow_clients: usize,
    hold: Duration,
    bound_per_conn_kib: u64,
    meanwhile: WhileNotReading,
    frame: usize,
) -> Result<()> {
    slow_readers_under_flood_from(
        false,
        slow_clients,
        hold,
        bound_per_conn_kib,
        meanwhile,
        frame,
    )
    .await
}

/// [`slow_readers_under_flood`], the flooding backend behind a `wss://` URL when `tls`.
async fn slow_readers_under_flood_from(
    tls: bool,
    slow_clients: usize,
    hold: Duration,
    bound_per_conn_kib: u64,
    meanwhile: WhileNotReading,
    frame: usize,
) -> Result<()> {
    let mode = Mode::Flood {
        size: frame,
        count: None,
    };
    let (flood, flood_url, backend_tls) = if tls {
        let probe = Probe::start_tls(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            mode,
            support::probe::tls_server_config(false)?,
        )
        .await?;
        let url = format!("wss://localhost:{}/probe", probe.addr.port());
        let ca = format!("\n[backend_tls]\nca = {:?}\n", certs().join("ca.crt"));
        (probe, url, ca)
    } else {
        let probe = Probe::start(mode).await?;
        let url = probe.url();
        (probe, url, String::new())
    };
    let demo = demo_services::spawn_for_test(ServiceOptions {
        backend: Backend::Abc,
        push_interval: None,
    })
    .await?;
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![
            ("Backend_FLOOD".into(), flood_url),
            ("Backend_ABC".into(), demo.url()),
        ],
        extra_toml: backend_tls,
        ..ProcOptions::default()
    })
    .await?;

    let mut other = connect(&gw.connect_options("Backend_ABC")?).await?;
    let mut calm_worst = Duration::ZERO;
    for _ in 0..20 {
        calm_worst = calm_worst.max(echo(&mut other.ws, &[1u8; 64]).await?);
    }
    let base_kib = gw.stats()?.rss_kib;

    // The slow clients: connected, then not read for `hold`.
    let mut slow = Vec::new();
    for _ in 0..slow_clients {
        slow.push(connect(&gw.connect_options("Backend_FLOOD")?).await?);
    }
    let started = Instant::now();
    let mut peak_kib = base_kib;
    let mut worst = Duration::ZERO;
    let mut round_trips = 0;
    while started.elapsed() < hold {
        worst = worst.max(echo(&mut other.ws, &[2u8; 64]).await?);
        round_trips += 1;
        peak_kib = peak_kib.max(gw.stats()?.rss_kib);
        if meanwhile == WhileNotReading::Talks {
            for c in &mut slow {
                send(&mut c.ws, Frame::text(Payload::Borrowed(b"still here"))).await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing the probe
    }
    // The flood is held back at the backend: it no longer advances.
    let mut stalled_for = Duration::ZERO;
    let mut last = flood.flooded_bytes();
    wait_for("the flood to stall", DEADLINE, || {
        let now = flood.flooded_bytes();
        if now == last {
            stalled_for += Duration::from_millis(100);
        } else {
            stalled_for = Duration::ZERO;
            last = now;
        }
        let done = stalled_for >= Duration::from_millis(500);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(done)
        }
    })
    .await?;
    if meanwhile == WhileNotReading::Talks {
        // Once more with every buffer on the way full: the gateway's client-side write is
        // blocked while the client's message is read from the same stream.
        for c in &mut slow {
            send(&mut c.ws, Frame::text(Payload::Borrowed(b"still here"))).await?;
        }
    }
    peak_kib = peak_kib.max(gw.stats()?.rss_kib);
    let held = flood.flooded();
    let held_bytes = flood.flooded_bytes();
    let growth_kib = peak_kib.saturating_sub(base_kib);
    let per_conn_kib = growth_kib / slow_clients as u64;
    println!(
        "backpressure ({slow_clients} slow readers, {hold:?}): gateway RSS {base_kib} KiB -> \
         peak {peak_kib} KiB (+{growth_kib} KiB, {per_conn_kib} KiB per slow reader); flood \
         held at {:.1} MiB in flight ({held} whole frames of {frame} B); other session: \
         {round_trips} round trips, worst {worst:?} (calm worst {calm_worst:?})",
        (held_bytes as f64) / (1 << 20) as f64
    );
    // More than one read's worth per slow reader, so the flood filled the gateway's
    // buffers toward them and was then held back (a frame larger than every buffer on
    // the way never finishes: the backend is held inside it).
    ensure!(
        held_bytes > slow_clients as u64 * (256 << 10),
        "the backend flooded only {held_bytes} B"
    );
    ensure!(
        per_conn_kib < bound_per_conn_kib,
        "gateway RSS grew {growth_kib} KiB for {slow_clients} slow readers \
         (bound {bound_per_conn_kib} KiB each)"
    );
    ensure!(
        worst < Duration::from_millis(500),
        "another session's round trip took {worst:?} during the flood"
    );

    // The clients read again: everything arrives.
    flood.stop_flood();
    let mut total = 0;
    for (i, c) in slow.iter_mut().enumerate() {
        total += read_back(&mut c.ws, i, frame).await?;
    }
    ensure!(
        total == flood.flooded() && total >= held,
        "read {total} of {} frames",
        flood.flooded()
    );
    // What the sessions keep once the backlog has passed through (they are still open).
    let kept_kib = gw.stats()?.rss_kib.saturating_sub(base_kib);
    println!(
        "backpressure: read all {total} frames, in order; RSS then +{kept_kib} KiB \
         ({} KiB per slow reader)",
        kept_kib / slow_clients as u64
    );
    echo(&mut other.ws, b"after").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_for_3s_hold_the_flood_back_without_gateway_memory() -> Result<()> {
    slow_readers_under_flood(
        SLOW_READERS,
        Duration::from_secs(3),
        BOUND_PER_CONN_KIB,
        WhileNotReading::Silent,
        FRAME,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_a_wss_backend_hold_its_flood_back_without_gateway_memory() -> Result<()> {
    // The backend's bytes come through the TLS library's buffers: the flood must still be
    // held back at the backend, not in the gateway.
    slow_readers_under_flood_from(
        true,
        SLOW_READERS,
        Duration::from_secs(3),
        BOUND_PER_CONN_KIB,
        WhileNotReading::Silent,
        FRAME,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_that_send_while_not_reading_get_the_whole_flood_afterwards() -> Result<()> {
    // The gateway's read of a client's message used to take over the socket's write
    // wakeup from the blocked write toward that client, which then never resumed: the
    // flood stopped for good once the client read again.
    slow_readers_under_flood(
        SLOW_READERS,
        Duration::from_secs(2),
        BOUND_PER_CONN_KIB,
        WhileNotReading::Talks,
        FRAME,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_4_mib_frames_cost_the_gateway_no_more_than_of_small_ones() -> Result<()> {
    // Frames over one read's worth pass in pieces: a stalled one used to be held whole
    // (and copied once more into the write batch), about 12 MiB per session here.
    slow_readers_under_flood(
        4,
        Duration::from_secs(2),
        BOUND_PER_CONN_KIB,
        WhileNotReading::Silent,
        4 << 20,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "30 s; run with --ignored"]
async fn slow_readers_for_30s_hold_the_flood_back_without_gateway_memory() -> Result<()> {
    slow_readers_under_flood(
        SLOW_READERS,
        Duration::from_secs(30),
        BOUND_PER_CONN_KIB,
        WhileNotReading::Silent,
        FRAME,
    )
    .await
}
