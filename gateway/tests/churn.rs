//! Churn through the gateway binary: many connect / exchange / disconnect cycles, ending
//! cleanly, abruptly (FIN or RST, no close frame) or before the upgrade. Afterwards every
//! session has ended (one "session ended" log line each) and the gateway's descriptor
//! count is back at its baseline; RSS is reported.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use demo_services::{Backend, ServiceOptions};
use fastwebsockets::{Frame, Payload};
use loadgen::client::Connector;
use support::process::{GatewayProc, ProcOptions};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How one cycle ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Close handshake, 1000.
    Clean,
    /// After an echo, the socket is dropped: FIN, no close frame, no TLS close_notify.
    Vanish,
    /// A message is sent and the socket reset (RST) before its echo arrives.
    Reset,
    /// TCP and part of an HTTP request head, then gone: no session at all.
    BeforeUpgrade,
}

const ENDINGS: [Ending; 4] = [
    Ending::Clean,
    Ending::Vanish,
    Ending::Reset,
    Ending::BeforeUpgrade,
];

/// One cycle; returns whether a session was opened.
async fn cycle(connector: &Connector, addr: std::net::SocketAddr, i: usize) -> Result<bool> {
    let ending = ENDINGS[i % ENDINGS.len()];
    if let Ending::BeforeUpgrade = ending {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(b"\x16\x03\x01").await?; // the start of a TLS record
        drop(tcp);
        return Ok(false);
    }
    let mut c = connector.connect().await.context("connect")?;
    let payload = format!("cycle {i}");
    match ending {
        Ending::Clean => {
            echo(&mut c.ws, payload.as_bytes()).await?;
            ensure!(close_cleanly(&mut c.ws).await? == 1000, "cycle {i}");
        }
        Ending::Vanish => {
            echo(&mut c.ws, payload.as_bytes()).await?;
            drop(c);
        }
        Ending::Reset => {
            send(
                &mut c.ws,
                Frame::binary(Payload::Borrowed(payload.as_bytes())),
            )
            .await?;
            c.ws.into_inner().get_ref().tcp().set_zero_linger()?;
        }
        Ending::BeforeUpgrade => {}
    }
    Ok(true)
}

async fn churn(cycles: usize, concurrency: usize) -> Result<()> {
    let demo = demo_services::spawn_for_test(ServiceOptions {
        backend: Backend::Abc,
        push_interval: None,
    })
    .await?;
    let gw = Arc::new(
        GatewayProc::start(ProcOptions {
            backends: vec![("Backend_ABC".into(), demo.url())],
            // Bound how long a vanished client's backend gets to answer its 1001.
            extra_toml: "[timeouts]\nclose = \"2s\"\n".into(),
            ..ProcOptions::default()
        })
        .await?,
    );
    let connector = Arc::new(Connector::new(&gw.connect_options("Backend_ABC")?).await?);
    let sessions_ended = |gw: &GatewayProc| gw.log().matches("session ended").count();

    // Warm up (runtime threads, allocator, TLS), then take the baseline.
    let mut warm = Vec::new();
    for i in 0..concurrency {
        let mut c = connector.connect().await?;
        echo(&mut c.ws, format!("warm {i}").as_bytes()).await?;
        warm.push(c);
    }
    for mut c in warm {
        ensure!(close_cleanly(&mut c.ws).await? == 1000);
    }
    wait_for("warm-up sessions to end", DEADLINE, || {
        std::future::ready(Ok(sessions_ended(&gw) == concurrency))
    })
    .await?;
    let base = gw.stats()?;
    let base_fds = base.fds;

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (connector, gw, next, opened) =
            (connector.clone(), gw.clone(), next.clone(), opened.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cycles {
                    return Ok::<(), anyhow::Error>(());
                }
                if cycle(&connector, gw.addr, i)
                    .await
                    .with_context(|| format!("cycle {i}"))?
                {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let ran = started.elapsed();
    let opened = opened.load(Ordering::Relaxed);
    let peak = gw.stats()?;

    // Every session ends and gives its descriptors back.
    let expected = concurrency + opened;
    wait_for("every session to end", Duration::from_secs(30), || {
        std::future::ready(Ok(sessions_ended(&gw) >= expected))
    })
    .await
    .with_context(|| format!("{} of {expected} sessions ended", sessions_ended(&gw)))?;
    let fds = gw
        .wait_fds_at_most(base_fds + 2, Duration::from_secs(15))
        .await?;
    let after = gw.stats()?;
    println!(
        "churn: {cycles} cycles ({opened} sessions) in {ran:?}; fds {} -> {} (at the end of \
         the run {}); RSS {} KiB -> {} KiB ({:+} KiB); threads {} -> {}",
        base.fds,
        fds,
        peak.fds,
        base.rss_kib,
        after.rss_kib,
        after.rss_kib as i64 - base.rss_kib as i64,
        base.threads,
        after.threads
    );
    ensure!(
        sessions_ended(&gw) == expected,
        "{} sessions ended, {expected} opened",
        sessions_ended(&gw)
    );
    ensure!(
        after.rss_kib < base.rss_kib + 64 * 1024,
        "RSS grew from {} KiB to {} KiB",
        base.rss_kib,
        after.rss_kib
    );
    // Still serving.
    let mut c = connector.connect().await?;
    echo(&mut c.ws, b"after the churn").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_300_cycles_leaves_no_descriptors_or_sessions_behind() -> Result<()> {
    churn(300, 8).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "10,000 cycles; run with --ignored"]
async fn churn_10000_cycles_leaves_no_descriptors_or_sessions_behind() -> Result<()> {
    churn(10_000, 32).await
}
