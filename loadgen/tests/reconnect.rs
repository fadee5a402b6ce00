//! `--reconnect`: a connection the server ends (close 1001, or a bare EOF) opens again and
//! carries on; what was unanswered at the close is counted as lost at close, not as an
//! integrity error, while the live streams are still checked message by message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use loadgen::conn::Reconnect;
use loadgen::load::{self, LoadOptions, LoadRun};
use loadgen::report::Count;
use loadgen::testbed::accept_ws;
use loadgen::token::TokenSource;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNS: usize = 4;
/// Messages echoed on a stream before the server ends it (the next one is not echoed).
const ECHOED_BEFORE_CLOSE: u64 = 20;

/// How the server ends the first stream of every connection.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Close frame 1001, then the TCP connection is closed.
    GoingAway,
    /// The TCP connection is closed without a close frame.
    Eof,
}

/// An echo server that ends the first `CONNS` streams it accepts (the run's first
/// connections: nothing is sent before all are open) after `ECHOED_BEFORE_CLOSE` echoes.
/// With `accept_at_most`, it stops listening after that many streams.
async fn start(ending: Ending, accept_at_most: Option<usize>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let n = accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = serve(stream, (n < CONNS).then_some(ending)).await;
            });
            if accept_at_most.is_some_and(|max| n + 1 >= max) {
                break; // drops the listener: later connects are refused
            }
        }
    });
    Ok(addr)
}

/// Like [`start`] with [`Ending::GoingAway`], but every later connection is taken and
/// never answered: a reconnect attempt that hangs until its connect timeout.
async fn start_then_hang() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut n = 0;
        while let Ok((stream, _)) = listener.accept().await {
            if n < CONNS {
                tokio::spawn(async move {
                    let _ = serve(stream, Some(Ending::GoingAway)).await;
                });
            } else {
                held.push(stream);
            }
            n += 1;
        }
    });
    Ok(addr)
}

/// Ends the TCP connection with a FIN, not a reset: half-closes, then discards what the
/// client still sends until it goes. Closing with unread bytes waiting would make the
/// kernel answer with RST, which can overtake (and discard) a close frame just written.
async fn hang_up<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> anyhow::Result<()> {
    io.shutdown().await?;
    let mut sink = [0u8; 4096];
    while io.read(&mut sink).await? > 0 {}
    Ok(())
}

async fn serve(stream: TcpStream, ending: Option<Ending>) -> anyhow::Result<()> {
    let mut ws = accept_ws(stream).await?;
    let mut n = 0u64;
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Binary => {
                n += 1;
                match ending {
                    Some(Ending::GoingAway) if n > ECHOED_BEFORE_CLOSE => {
                        ws.write_frame(Frame::close(1001, b"going away")).await?;
                        return hang_up(ws.into_inner()).await;
                    }
                    Some(Ending::Eof) if n > ECHOED_BEFORE_CLOSE => {
                        return hang_up(ws.into_inner()).await;
                    }
                    _ => {}
                }
                let payload = frame.payload.to_vec();
                ws.write_frame(Frame::new(
                    true,
                    OpCode::Binary,
                    None,
                    Payload::Owned(payload),
                ))
                .await?;
            }
            _ => {}
        }
    }
}

/// The runs' options: `CONNS` connections to the server at `addr` for 1.5 s.
fn options(addr: SocketAddr, reconnect: Option<Reconnect>) -> LoadOptions {
    LoadOptions {
        url: format!("ws://{addr}/echo"),
        backends: vec!["Backend_ABC".into()],
        conns: CONNS,
        inflight: 4,
        duration: Duration::from_millis(1500),
        drain_timeout: Duration::from_millis(500),
        token: TokenSource::None,
        ca: None,
        reconnect,
        ..Default::default()
    }
}

async fn run(addr: SocketAddr, reconnect: Option<Reconnect>) -> anyhow::Result<LoadRun> {
    let opts = options(addr, reconnect);
    tokio::time::timeout(
        Duration::from_secs(30),
        load::run(&opts, tokio::sync::mpsc::unbounded_channel().1),
    )
    .await?
}

fn policy(attempts: u32) -> Option<Reconnect> {
    Some(Reconnect {
        attempts,
        backoff: Duration::from_millis(20),
    })
}

/// Every connection was closed once by the server (1001) and the run ended before it
/// came back, with none counted as dropped.
fn assert_closed_and_not_back_yet(run: &LoadRun) {
    let t = &run.report.total;
    assert_eq!(closes(run), count("1001", CONNS as u64));
    assert_eq!(
        (t.connections.reconnects, t.connections.dropped),
        (0, 0),
        "{:?}",
        t.connections.drops
    );
}

fn closes(run: &LoadRun) -> Vec<Count> {
    run.report.total.connections.closes.clone()
}

fn count(reason: &str, count: u64) -> Vec<Count> {
    vec![Count {
        reason: reason.to_owned(),
        count,
    }]
}

/// Every message sent is accounted for: echoed, or unanswered at a close.
fn assert_accounted(run: &LoadRun) {
    let m = &run.report.total.messages;
    assert_eq!(
        m.sent,
        m.echoed + m.lost_at_close,
        "sent = echoed + lost at close: {m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1001_close_is_followed_by_a_reconnect_and_the_counts_add_up() -> anyhow::Result<()> {
    let addr = start(Ending::GoingAway, None).await?;
    let run = run(addr, policy(5)).await?;
    let t = &run.report.total;
    assert_eq!(t.connections.opened, CONNS as u64);
    assert_eq!(t.connections.reconnects, CONNS as u64);
    assert_eq!(t.connections.reconnect_failures, 0);
    assert_eq!(closes(&run), count("1001", CONNS as u64));
    assert_eq!(t.errors.total, 0, "{:?}", t.errors);
    assert_eq!(t.connections.dropped, 0, "{:?}", t.connections.drops);
    // At least the message the server kept, per connection; at most the window.
    assert!(
        (CONNS as u64..=4 * CONNS as u64).contains(&t.messages.lost_at_close),
        "{:?}",
        t.messages
    );
    assert!(
        t.messages.echoed > CONNS as u64 * ECHOED_BEFORE_CLOSE,
        "sending carried on after the reconnect: {:?}",
        t.messages
    );
    assert_accounted(&run);
    assert!(run.report.passed());
    let json = serde_json::to_value(&run.report)?;
    assert_eq!(json["reconnect"], true);
    assert_eq!(json["total"]["connections"]["reconnects"], CONNS);
    assert_eq!(json["total"]["connections"]["closes"][0]["reason"], "1001");
    assert_eq!(
        json["total"]["messages"]["lost_at_close"],
        t.messages.lost_at_close
    );
    let mut table = Vec::new();
    loadgen::report::write_table(&run.report, &mut table)?;
    let table = String::from_utf8(table)?;
    assert!(
        table.contains(&format!(
            "closed by the server: 1001 ×{CONNS}; reconnects {CONNS} (0 failed attempts); messages lost at close {}",
            t.messages.lost_at_close
        )),
        "{table}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eof_without_a_close_frame_is_reconnected_too() -> anyhow::Result<()> {
    let addr = start(Ending::Eof, None).await?;
    let run = run(addr, policy(5)).await?;
    let t = &run.report.total;
    assert_eq!(t.connections.reconnects, CONNS as u64);
    assert_eq!(closes(&run), count("eof", CONNS as u64));
    assert_eq!(t.errors.total, 0, "{:?}", t.errors);
    assert!(t.messages.lost_at_close >= CONNS as u64);
    assert_accounted(&run);
    assert!(run.report.passed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_the_connection_ends_and_its_unanswered_messages_are_lost_at_close(
) -> anyhow::Result<()> {
    let addr = start(Ending::GoingAway, None).await?;
    let run = run(addr, None).await?;
    let t = &run.report.total;
    assert_eq!(t.connections.reconnects, 0);
    assert_eq!(t.connections.dropped, CONNS as u64);
    assert_eq!(closes(&run), count("1001", CONNS as u64));
    // Not integrity errors: the run fails for the dropped sessions, and says so.
    assert!(t.messages.lost_at_close >= CONNS as u64);
    assert_eq!(t.errors.total, 0, "{:?}", t.errors);
    assert!(!run.report.passed());
    assert!(
        run.report
            .verdict()
            .is_some_and(|v| v.contains("sessions dropped")),
        "{:?}",
        run.report.verdict()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_whose_back_off_outlasts_the_run_is_no_drop() -> anyhow::Result<()> {
    // Closed early in the run, with a back-off (5-10 s) the run ends inside: each would
    // have come back; the run's end is not the server's doing.
    let addr = start(Ending::GoingAway, None).await?;
    let run = run(
        addr,
        Some(Reconnect {
            attempts: 3,
            backoff: Duration::from_secs(10),
        }),
    )
    .await?;
    assert_closed_and_not_back_yet(&run);
    let t = &run.report.total;
    assert!(t.messages.lost_at_close >= CONNS as u64);
    assert!(run.report.passed(), "{:?}", run.report.verdict());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_under_way_when_the_run_ends_is_not_waited_for() -> anyhow::Result<()> {
    // The reconnects hang (60 s connect timeout): the run ends at its time all the same,
    // and the connections, closed by the server and not yet back, are no drop.
    let addr = start_then_hang().await?;
    let opts = LoadOptions {
        connect_timeout: Duration::from_secs(60),
        ..options(addr, policy(3))
    };
    let run = tokio::time::timeout(
        Duration::from_secs(20),
        load::run(&opts, tokio::sync::mpsc::unbounded_channel().1),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the run waited for the hanging reconnects"))??;
    assert_closed_and_not_back_yet(&run);
    assert!(run.report.passed(), "{:?}", run.report.verdict());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_gives_up_after_the_attempts_allowed() -> anyhow::Result<()> {
    // Only the first streams are accepted; then the port is closed.
    let addr = start(Ending::GoingAway, Some(CONNS)).await?;
    let run = run(addr, policy(3)).await?;
    let t = &run.report.total;
    assert_eq!(t.connections.reconnects, 0);
    assert_eq!(t.connections.reconnect_failures, 3 * CONNS as u64);
    assert_eq!(t.connections.dropped, CONNS as u64);
    assert!(
        t.connections.drops[0]
            .reason
            .starts_with("reconnect failed 3 times"),
        "{:?}",
        t.connections.drops
    );
    assert_eq!(t.errors.total, 0, "{:?}", t.errors);
    assert_accounted(&run);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_resumes_at_the_reconnect_without_the_messages_due_meanwhile(
) -> anyhow::Result<()> {
    // 100 msg/s per connection for 1.5 s, and 600 ms without a stream after the first
    // close (the back-off): ~60 messages per connection fall due while there is none.
    let addr = start(Ending::GoingAway, None).await?;
    let opts = LoadOptions {
        url: format!("ws://{addr}/echo"),
        backends: vec!["Backend_ABC".into()],
        conns: CONNS,
        duration: Duration::from_millis(1500),
        drain_timeout: Duration::from_millis(500),
        rate: Some(100.0 * CONNS as f64),
        token: TokenSource::None,
        ca: None,
        reconnect: Some(Reconnect {
            attempts: 5,
            backoff: Duration::from_millis(600),
        }),
        ..Default::default()
    };
    let run = tokio::time::timeout(
        Duration::from_secs(30),
        load::run(&opts, tokio::sync::mpsc::unbounded_channel().1),
    )
    .await??;
    let t = &run.report.total;
    assert_eq!(t.connections.reconnects, CONNS as u64);
    assert_accounted(&run);
    let scheduled = 150 * CONNS as u64;
    assert!(
        t.messages.sent < scheduled * 4 / 5,
        "the messages due without a stream were sent at the reconnect: {} of {scheduled}",
        t.messages.sent
    );
    assert!(
        t.rtt_us.max.is_some_and(|max| max < 300_000),
        "a round trip counted across the gap: max {:?} µs",
        t.rtt_us.max
    );
    Ok(())
}
