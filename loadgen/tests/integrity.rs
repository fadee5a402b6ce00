//! The integrity check catches a broken echo path: a tiny WebSocket echo server that
//! drops, corrupts, duplicates or reorders messages, driven directly over `ws://`.

use std::net::SocketAddr;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use loadgen::load::{self, LoadOptions};
use loadgen::testbed::accept_ws;
use loadgen::token::TokenSource;
use loadgen::track::IntegrityErrors;
use tokio::net::{TcpListener, TcpStream};

/// How the echo server misbehaves; `n` counts binary messages per connection from 1.
#[derive(Clone, Copy, Debug)]
enum Breakage {
    None,
    DropEvery10th,
    CorruptThe5th,
    DuplicateThe5th,
    SwapThe5thAnd6th,
}

async fn start_echo(breakage: Breakage) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = serve(stream, breakage).await;
            });
        }
    });
    Ok(addr)
}

async fn serve(stream: TcpStream, breakage: Breakage) -> anyhow::Result<()> {
    let mut ws = accept_ws(stream).await?;
    let mut n = 0u64;
    let mut held: Option<Vec<u8>> = None;
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Binary => {
                n += 1;
                let mut payload = frame.payload.to_vec();
                let copies = match breakage {
                    Breakage::DropEvery10th if n / 10 * 10 == n => 0,
                    Breakage::CorruptThe5th if n == 5 => {
                        if let Some(b) = payload.last_mut() {
                            *b ^= 0x20;
                        }
                        1
                    }
                    Breakage::DuplicateThe5th if n == 5 => 2,
                    Breakage::SwapThe5thAnd6th if n == 5 => {
                        held = Some(payload);
                        continue;
                    }
                    _ => 1,
                };
                for _ in 0..copies {
                    ws.write_frame(Frame::new(
                        true,
                        OpCode::Binary,
                        None,
                        Payload::Owned(payload.clone()),
                    ))
                    .await?;
                }
                if let Some(h) = held.take() {
                    ws.write_frame(Frame::new(true, OpCode::Binary, None, Payload::Owned(h)))
                        .await?;
                }
            }
            _ => {}
        }
    }
}

async fn run_against(breakage: Breakage) -> anyhow::Result<(IntegrityErrors, bool)> {
    let addr = start_echo(breakage).await?;
    let opts = LoadOptions {
        url: format!("ws://{addr}/echo"),
        backends: vec!["Backend_ABC".into()],
        conns: 4,
        inflight: 4,
        duration: Duration::from_millis(800),
        drain_timeout: Duration::from_millis(500),
        token: TokenSource::None,
        ca: None,
        ..Default::default()
    };
    let run = tokio::time::timeout(
        Duration::from_secs(30),
        load::run(&opts, tokio::sync::mpsc::unbounded_channel().1),
    )
    .await??;
    assert_eq!(run.report.total.connections.opened, 4);
    assert!(run.report.total.messages.echoed > 0);
    Ok((run.report.total.errors.kinds, run.report.passed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faithful_echo_passes() -> anyhow::Result<()> {
    let (errors, passed) = run_against(Breakage::None).await?;
    assert_eq!(errors, IntegrityErrors::default());
    assert!(passed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_10th_message_is_detected() -> anyhow::Result<()> {
    let (errors, passed) = run_against(Breakage::DropEvery10th).await?;
    assert!(errors.missing > 0, "{errors:?}");
    assert_eq!(errors.corrupted + errors.duplicate, 0, "{errors:?}");
    assert!(!passed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_message_is_detected() -> anyhow::Result<()> {
    let (errors, passed) = run_against(Breakage::CorruptThe5th).await?;
    assert_eq!(
        errors,
        IntegrityErrors {
            corrupted: 4,
            ..Default::default()
        },
        "one per connection"
    );
    assert!(!passed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_message_is_detected() -> anyhow::Result<()> {
    let (errors, _) = run_against(Breakage::DuplicateThe5th).await?;
    assert_eq!(
        errors,
        IntegrityErrors {
            duplicate: 4,
            ..Default::default()
        }
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reordered_message_is_detected() -> anyhow::Result<()> {
    let (errors, _) = run_against(Breakage::SwapThe5thAnd6th).await?;
    assert_eq!(
        errors,
        IntegrityErrors {
            reordered: 4,
            ..Default::default()
        }
    );
    Ok(())
}
