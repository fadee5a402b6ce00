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

/// A closed-loop run (4 in flight per connection) of `conns` connections against the echo
/// server at `addr`, sending for `duration` and waiting up to `drain` for the last echoes.
async fn run_on(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    drain: Duration,
) -> anyhow::Result<load::LoadRun> {
    let opts = LoadOptions {
        url: format!("ws://{addr}/echo"),
        backends: vec!["Backend_ABC".into()],
        conns,
        inflight: 4,
        duration,
        drain_timeout: drain,
        token: TokenSource::None,
        ca: None,
        ..Default::default()
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        load::run(&opts, tokio::sync::mpsc::unbounded_channel().1),
    )
    .await?
}

async fn run_against(breakage: Breakage) -> anyhow::Result<(IntegrityErrors, bool)> {
    let addr = start_echo(breakage).await?;
    let run = run_on(
        addr,
        4,
        Duration::from_millis(800),
        Duration::from_millis(500),
    )
    .await?;
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

/// Echoes every connection's first message `late` after it came, behind those sent after
/// it, unless the client closes first: then it answers the close at once and that echo is
/// never sent, as a server ending the session would.
async fn serve_first_late(stream: TcpStream, late: Duration) -> anyhow::Result<()> {
    let ws = accept_ws(stream).await?;
    let (mut rd, mut wr) = ws.split(tokio::io::split);
    rd.set_auto_close(false);
    rd.set_auto_pong(false);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(OpCode, Vec<u8>)>(64);
    tokio::spawn(async move {
        let mut no_obligations = |_: Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) };
        while let Ok(frame) = rd.read_frame(&mut no_obligations).await {
            if tx
                .send((frame.opcode, frame.payload.to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut first = true;
    let mut held: Option<(Vec<u8>, tokio::time::Instant)> = None;
    loop {
        let release = held.as_ref().map(|(_, at)| *at);
        tokio::select! {
            () = async {
                match release {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((payload, _)) = held.take() {
                    wr.write_frame(Frame::binary(Payload::Owned(payload))).await?;
                }
            }
            msg = rx.recv() => match msg {
                None => return Ok(()),
                Some((OpCode::Close, _)) => {
                    wr.write_frame(Frame::close(1000, b"")).await?;
                    return Ok(());
                }
                Some((OpCode::Binary, payload)) if first => {
                    first = false;
                    held = Some((payload, tokio::time::Instant::now() + late));
                }
                Some((OpCode::Binary, payload)) => {
                    wr.write_frame(Frame::binary(Payload::Owned(payload))).await?;
                }
                Some(_) => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overtaken_echo_that_comes_within_the_drain_is_reordered_not_missing(
) -> anyhow::Result<()> {
    // The first message's echo comes 1 s late: after the 300 ms run, well within the 5 s
    // drain. The drain waited only for the messages not overtaken, closed at once, and
    // the echo never came: it was counted missing.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_first_late(stream, Duration::from_secs(1)));
        }
    });
    let run = run_on(addr, 2, Duration::from_millis(300), Duration::from_secs(5)).await?;
    let total = &run.report.total;
    assert_eq!(total.connections.opened, 2);
    assert_eq!(
        total.errors.kinds,
        IntegrityErrors {
            reordered: 2,
            ..Default::default()
        },
        "one late echo per connection, waited for: {:?}",
        total.connections
    );
    assert_eq!(total.messages.echoed, total.messages.sent);
    Ok(())
}
