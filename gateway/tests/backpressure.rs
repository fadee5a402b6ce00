//! Backpressure through the gateway binary: a backend floods a client that does not read.
//! The gateway's memory stays bounded (the flood is held back at the backend, not
//! buffered), another session keeps its round-trip time, and once the client reads
//! again every frame arrives, in order.

mod support;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use demo_services::{Backend, ServiceOptions};
use fastwebsockets::OpCode;
use loadgen::client::connect;
use support::probe::{flood_seq, Mode, Probe};
use support::process::{GatewayProc, ProcOptions};
use support::*;

/// Largest RSS growth of the gateway allowed for the one flooded connection.
const RSS_BOUND_KIB: u64 = 16 * 1024;
/// Flood frame size.
const FRAME: usize = 1024;

async fn slow_reader_under_flood(hold: Duration) -> Result<()> {
    let flood = Probe::start(Mode::Flood {
        size: FRAME,
        count: None,
    })
    .await?;
    let demo = demo_services::spawn_for_test(ServiceOptions {
        backend: Backend::Abc,
        push_interval: None,
    })
    .await?;
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![
            ("Backend_FLOOD".into(), flood.url()),
            ("Backend_ABC".into(), demo.url()),
        ],
        ..ProcOptions::default()
    })
    .await?;

    let mut other = connect(&gw.connect_options("Backend_ABC")?).await?;
    let mut calm_worst = Duration::ZERO;
    for _ in 0..20 {
        calm_worst = calm_worst.max(echo(&mut other.ws, &[1u8; 64]).await?);
    }
    let base_kib = gw.stats()?.rss_kib;

    // The slow client: connected, then not read for `hold`.
    let mut slow = connect(&gw.connect_options("Backend_FLOOD")?).await?;
    let started = Instant::now();
    let mut peak_kib = base_kib;
    let mut worst = Duration::ZERO;
    let mut round_trips = 0;
    while started.elapsed() < hold {
        worst = worst.max(echo(&mut other.ws, &[2u8; 64]).await?);
        round_trips += 1;
        peak_kib = peak_kib.max(gw.stats()?.rss_kib);
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing the probe
    }
    // The flood is held back at the backend: it no longer advances.
    let held_at = flood.flooded();
    let mut stalled_for = Duration::ZERO;
    let mut last = held_at;
    wait_for("the flood to stall", DEADLINE, || {
        let now = flood.flooded();
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
    let held = flood.flooded();
    let growth_kib = peak_kib.saturating_sub(base_kib);
    println!(
        "backpressure ({hold:?}): gateway RSS {base_kib} KiB -> peak {peak_kib} KiB \
         (+{growth_kib} KiB); flood held at {held} frames x {FRAME} B = {:.1} MiB in flight; \
         other session: {round_trips} round trips, worst {worst:?} (calm worst {calm_worst:?})",
        (held as f64) * (FRAME as f64) / (1 << 20) as f64
    );
    ensure!(
        growth_kib < RSS_BOUND_KIB,
        "gateway RSS grew {growth_kib} KiB for one slow reader"
    );
    ensure!(held > 0, "the backend never flooded");
    ensure!(
        worst < Duration::from_millis(500),
        "another session's round trip took {worst:?} during the flood"
    );

    // The client reads again: every frame, in order, none twice.
    flood.stop_flood();
    let mut expected: u64 = 0;
    loop {
        if expected >= flood.flooded() {
            // Everything counted is read: the flood ends, or one more frame comes.
            wait_for("the flood to end", DEADLINE, || {
                std::future::ready(Ok(flood.floods_done() > 0 || flood.flooded() > expected))
            })
            .await?;
            if flood.flooded() <= expected {
                break;
            }
        }
        let f = next_frame(&mut slow.ws).await?;
        ensure!(f.opcode == OpCode::Binary, "got {:?}", f.opcode);
        let seq = flood_seq(&f.payload);
        ensure!(
            seq == Some(expected) && f.payload.len() == FRAME,
            "frame {expected}: got seq {seq:?}, {} bytes",
            f.payload.len()
        );
        expected += 1;
    }
    ensure!(
        expected == flood.flooded() && expected >= held,
        "read {expected} of {} frames",
        flood.flooded()
    );
    println!("backpressure: read all {expected} frames in order");
    echo(&mut other.ws, b"after").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_not_reading_for_3s_holds_the_flood_back_without_gateway_memory() -> Result<()> {
    slow_reader_under_flood(Duration::from_secs(3)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "30 s; run with --ignored"]
async fn a_client_not_reading_for_30s_holds_the_flood_back_without_gateway_memory() -> Result<()> {
    slow_reader_under_flood(Duration::from_secs(30)).await
}
