//! Graceful shutdown of the gateway binary on SIGTERM, with live sessions: what was
//! accepted is delivered, every client and backend gets 1001 "gateway shutting down",
//! new connections are refused, and the process exits 0 within the drain timeout.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use demo_services::{Backend, ServiceOptions};
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use loadgen::client::{connect, ConnectError, Connected, WsStream};
use support::probe::{Event, Mode, Probe};
use support::process::{abc_gateway, GatewayProc, ProcOptions};
use support::*;

const MESSAGES: usize = 20;

fn message(client: usize, n: usize) -> Vec<u8> {
    format!("client {client} message {n:04}").into_bytes()
}

/// Reads until the close: the echoes must continue `message(client, from..)` in order,
/// each once; returns how many arrived and the close.
async fn echoes_then_close(
    ws: &mut WebSocket<WsStream>,
    client: usize,
    from: usize,
    to: usize,
) -> Result<(usize, (u16, String))> {
    let mut next = from;
    loop {
        let f = next_frame(ws).await?;
        match f.opcode {
            OpCode::Close => return Ok((next - from, close_of(&f)?)),
            OpCode::Binary => {
                ensure!(
                    next < to && f.payload[..] == message(client, next)[..],
                    "client {client}: expected echo {next}, got {:?}",
                    String::from_utf8_lossy(&f.payload)
                );
                next += 1;
            }
            other => bail!("client {client}: unexpected {other:?}"),
        }
    }
}

async fn send_burst(
    ws: &mut WebSocket<WsStream>,
    client: usize,
    range: std::ops::Range<usize>,
) -> Result<()> {
    for n in range {
        ws.write_frame(Frame::binary(Payload::Owned(message(client, n))))
            .await?;
    }
    ws.flush().await?;
    Ok(())
}

async fn client(gw: &GatewayProc, id: &str) -> Result<Connected> {
    let mut c = connect(&gw.connect_options(id)?).await?;
    // The close is checked by hand; an automatic answer could race the gateway's exit.
    c.ws.set_auto_close(false);
    Ok(c)
}

#[tokio::test]
async fn sigterm_delivers_in_order_closes_everyone_with_1001_and_exits_0() -> Result<()> {
    let mut probe = Probe::start(Mode::Accept { protocol: None }).await?;
    let demo = demo_services::spawn_for_test(ServiceOptions {
        backend: Backend::Abc,
        push_interval: None,
    })
    .await?;
    let drain = Duration::from_secs(3);
    let mut gw = GatewayProc::start(ProcOptions {
        backends: vec![
            ("Backend_PROBE".into(), probe.url()),
            ("Backend_ABC".into(), demo.url()),
        ],
        extra_toml: "[timeouts]\ndrain = \"3s\"\nclose = \"2s\"\n".into(),
        ..ProcOptions::default()
    })
    .await?;

    // Three sessions to the probe, three to the demo backend; a first burst on each is
    // echoed in full, a second is sent just before the signal and not waited for.
    let mut clients = Vec::new();
    for i in 0..6 {
        let id = if i < 3 {
            "Backend_PROBE"
        } else {
            "Backend_ABC"
        };
        clients.push(client(&gw, id).await?);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        send_burst(&mut c.ws, i, 0..MESSAGES).await?;
        for n in 0..MESSAGES {
            let f = next_frame(&mut c.ws).await?;
            ensure!(f.payload[..] == message(i, n)[..], "client {i}: echo {n}");
        }
    }
    for (i, c) in clients.iter_mut().enumerate() {
        send_burst(&mut c.ws, i, MESSAGES..2 * MESSAGES).await?;
    }
    let signalled = Instant::now();
    gw.terminate()?;

    let mut echoed = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let (got, (code, reason)) = echoes_then_close(&mut c.ws, i, MESSAGES, 2 * MESSAGES)
            .await
            .with_context(|| format!("client {i}"))?;
        ensure!(
            code == 1001 && reason == "gateway shutting down",
            "client {i} got close {code} {reason:?}"
        );
        echoed.push(got);
        if i == 0 {
            // The listener is gone: a new client is refused, never upgraded.
            match connect(&gw.connect_options("Backend_ABC")?).await {
                Ok(_) => bail!("a client was admitted after SIGTERM"),
                Err(ConnectError::Refused { status, .. }) => {
                    ensure!(status == 503, "after SIGTERM: HTTP {status}")
                }
                Err(_) => {} // connection refused or reset
            }
        }
    }

    // The probe backend got each client's messages in order, without gaps, then 1001.
    let mut received = [0usize; 3];
    let mut closes = 0;
    while closes < 3 {
        match probe.next().await? {
            Event::Frame(OpCode::Binary, data) => {
                let text = String::from_utf8_lossy(&data).into_owned();
                let i = received
                    .iter()
                    .enumerate()
                    .position(|(i, &n)| data == message(i, n))
                    .with_context(|| format!("backend got {text:?} out of order"))?;
                received[i] += 1;
            }
            Event::Frame(OpCode::Close, data) => {
                ensure!(
                    data.len() >= 2 && data[..2] == 1001u16.to_be_bytes(),
                    "backend got close {data:?}"
                );
                ensure!(
                    data[2..] == *b"gateway shutting down",
                    "backend close reason {:?}",
                    String::from_utf8_lossy(&data[2..])
                );
                closes += 1;
            }
            _ => {}
        }
    }
    ensure!(
        received.iter().all(|&n| n >= MESSAGES),
        "the backend lost messages echoed before the signal: {received:?}"
    );

    let status = gw.wait_exit(drain + Duration::from_secs(2)).await?;
    let took = signalled.elapsed();
    println!(
        "shutdown: {status} {took:?} after SIGTERM; of the last burst of {MESSAGES}, \
         echoed per client {echoed:?}, reached the probe {:?}",
        received.map(|n| n - MESSAGES)
    );
    ensure!(status.success(), "exit status {status}:\n{}", gw.log());
    ensure!(took < drain, "exit took {took:?}, drain timeout {drain:?}");
    let log = gw.log();
    ensure!(
        log.contains("gateway stopped") && log.contains("remaining=0"),
        "no clean stop in the log:\n{log}"
    );
    ensure!(!log.contains("session cut"), "{log}");
    Ok(())
}

#[tokio::test]
async fn a_stuck_session_does_not_hold_the_exit_past_the_drain_timeout() -> Result<()> {
    exit_with_a_stuck_session("1s", false).await
}

#[tokio::test]
async fn a_reloaded_drain_timeout_is_the_one_a_sigterm_uses() -> Result<()> {
    // The drain the process started with (20 s, beyond the close timeout) used to be used.
    exit_with_a_stuck_session("20s", true).await
}

/// A gateway started with `drain` (made 1 s by a reload if `reload`), stopped by SIGTERM
/// with a session that cannot finish its close: it exits once the 1 s drain is over.
async fn exit_with_a_stuck_session(drain_at_start: &str, reload: bool) -> Result<()> {
    // The backend floods a client that never reads: the gateway's writes to that client
    // block, so its session cannot finish its close.
    let flood = Probe::start(Mode::Flood {
        size: 16 * 1024,
        count: None,
    })
    .await?;
    let drain = Duration::from_secs(1);
    let timeouts = |drain: &str| format!("[timeouts]\ndrain = \"{drain}\"\nclose = \"5s\"\n");
    let mut gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_FLOOD".into(), flood.url())],
        extra_toml: timeouts(drain_at_start),
        ..ProcOptions::default()
    })
    .await?;
    if reload {
        let file = std::fs::read_to_string(gw.config_path())?;
        std::fs::write(
            gw.config_path(),
            file.replace(&timeouts(drain_at_start), &timeouts("1s")),
        )?;
        gw.hangup()?;
        wait_for("the reload", DEADLINE, || {
            let reloaded = gw.log().contains("config reloaded");
            async move { Ok(reloaded) }
        })
        .await?;
    }
    let _stuck = connect(&gw.connect_options("Backend_FLOOD")?).await?;
    // Wait until the flood is held back: every buffer on the way is full.
    let mut last = 0;
    wait_for("the flood to stall", DEADLINE, || {
        let now = flood.flooded_bytes();
        let stalled = now > 0 && now == last;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(stalled)
        }
    })
    .await?;

    let signalled = Instant::now();
    gw.terminate()?;
    let status = gw.wait_exit(Duration::from_secs(15)).await?;
    let took = signalled.elapsed();
    println!("shutdown with a stuck session: exit {status} after {took:?} (drain {drain:?})");
    ensure!(status.success(), "exit status {status}");
    ensure!(
        took < drain + Duration::from_millis(1500),
        "exit took {took:?} with drain = {drain:?}"
    );
    // The session cut is named, with its backend, and the stop is a warning.
    let log = gw.log();
    let cut = log
        .lines()
        .find(|l| l.contains("session cut"))
        .with_context(|| format!("no line for the cut session:\n{log}"))?;
    ensure!(
        cut.contains("WARN") && cut.contains("Backend_FLOOD"),
        "{cut}"
    );
    ensure!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("gateway stopped")
            && l.contains("remaining=1")),
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn a_request_still_on_its_way_at_sigterm_gets_a_503() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_demo, mut gw) = abc_gateway("[timeouts]\ndrain = \"5s\"\n").await?;
    // Through TLS before the signal; the request comes after it.
    let mut tls = tls_connect_to(gw.addr).await?;
    let signalled = Instant::now();
    gw.terminate()?;
    let addr = gw.addr;
    wait_for("the listener to close", DEADLINE, || async move {
        Ok(tokio::net::TcpStream::connect(addr).await.is_err())
    })
    .await?;
    tls.write_all(b"GET /gateway HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, tls.read_to_end(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer);
    ensure!(
        text.starts_with("HTTP/1.1 503") && text.contains("gateway is shutting down"),
        "the request after SIGTERM got {text:?}"
    );
    let status = gw.wait_exit(Duration::from_secs(10)).await?;
    ensure!(status.success(), "exit status {status}");
    ensure!(
        signalled.elapsed() < Duration::from_secs(5),
        "the exit waited for the drain timeout"
    );
    Ok(())
}

#[tokio::test]
async fn the_client_hears_1001_whatever_the_backend_answers_to_the_shutdown() -> Result<()> {
    // The backend answers the gateway's 1001 with a 1000 of its own.
    let probe = Probe::start(Mode::Raw {
        reply: vec![0x88, 0x02, 0x03, 0xE8],
        extensions: None,
    })
    .await?;
    let mut gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_PROBE".into(), probe.url())],
        extra_toml: "[timeouts]\ndrain = \"3s\"\nclose = \"2s\"\n".into(),
        ..ProcOptions::default()
    })
    .await?;
    let mut c = client(&gw, "Backend_PROBE").await?;
    gw.terminate()?;
    let (code, reason) = expect_close(&mut c.ws).await?;
    ensure!(
        code == 1001 && reason == "gateway shutting down",
        "client got close {code} {reason:?}"
    );
    let status = gw.wait_exit(Duration::from_secs(10)).await?;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test]
async fn a_client_answering_the_shutdown_close_gets_no_reset() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The gateway used to close the socket right after its close frame and TLS close, so
    // the client's close answer met a closed socket, which TCP answers with a reset (on
    // some stacks the reset also discards what the client had not read yet).
    let (_demo, mut gw) = abc_gateway("[timeouts]\ndrain = \"5s\"\nclose = \"1s\"\n").await?;
    let mut c = client(&gw, "Backend_ABC").await?;
    gw.terminate()?;
    let (code, reason) = expect_close(&mut c.ws).await?;
    ensure!(
        code == 1001 && reason == "gateway shutting down",
        "client got close {code} {reason:?}"
    );
    // A client that reads on to the end of the stream (the TLS close, then the gateway's
    // FIN) before it answers: the answer comes after the gateway has ended its side.
    let mut stream = c.ws.into_inner();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
        .await
        .context("no end of stream")??;
    ensure!(rest.is_empty(), "after the close: {rest:?}");
    // The close answer it owes (masked, 1001, no reason).
    stream
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE9])
        .await?;
    stream.flush().await?;
    // No end of stream from the client (its TLS close would consume a reset's error): the
    // gateway waits out the close timeout for it.
    let status = gw.wait_exit(Duration::from_secs(10)).await?;
    ensure!(status.success(), "exit status {status}");
    // Any reset came in answer to the close answer, long before the exit.
    let error = stream.get_ref().tcp().take_error()?;
    ensure!(error.is_none(), "the client's socket saw {error:?}");
    Ok(())
}

/// A second SIGTERM while the gateway drains ends it at once, exit 1, rather than after
/// the drain timeout (60 s here), as an operator who asks twice expects.
#[tokio::test]
async fn a_second_sigterm_during_the_drain_stops_the_gateway_at_once() -> Result<()> {
    let (_demo, mut gw) = abc_gateway("[timeouts]\ndrain = \"60s\"\nclose = \"60s\"\n").await?;
    // A client that will not answer the gateway's close: its session holds the drain.
    let _silent = client(&gw, "Backend_ABC").await?;
    gw.terminate()?;
    let addr = gw.addr;
    wait_for("the listener to close", DEADLINE, || async move {
        Ok(tokio::net::TcpStream::connect(addr).await.is_err())
    })
    .await?;
    gw.terminate()?;
    let status = gw.wait_exit(DEADLINE).await?;
    ensure!(
        status.code() == Some(1),
        "exit status {status} after the second SIGTERM"
    );
    ensure!(
        gw.log().contains("second stop signal"),
        "no log line for the second signal:\n{}",
        gw.log()
    );
    Ok(())
}

/// A request whose backend has not answered yet when SIGTERM comes gets its 503 at once,
/// not a dropped connection when the drain (20 s here) runs out.
#[tokio::test]
async fn a_request_waiting_on_its_backend_at_sigterm_gets_a_503() -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;
    // A backend that takes connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/", silent.local_addr()?);
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    let _held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            seen.fetch_add(1, Relaxed);
            conns.push(c);
        }
    });
    let mut gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_SILENT".into(), url)],
        extra_toml: "[timeouts]\ndrain = \"20s\"\nbackend_connect = \"30s\"\n".into(),
        ..ProcOptions::default()
    })
    .await?;
    let opts = gw.connect_options("Backend_SILENT")?;
    let answer = tokio::spawn(async move { refused(&opts).await });
    wait_for("the backend connect", DEADLINE, || {
        let n = accepted.load(Relaxed);
        async move { Ok(n > 0) }
    })
    .await?;
    gw.terminate()?;
    let (status, body) = tokio::time::timeout(DEADLINE, answer)
        .await
        .context("no answer while the drain ran")???;
    ensure!(
        status == 503 && body.contains("gateway is shutting down"),
        "{status} {body:?}"
    );
    let exit = gw.wait_exit(DEADLINE).await?;
    ensure!(exit.success(), "exit status {exit}");
    Ok(())
}

/// Connections no request has come on (one that sent nothing, one done with TLS and
/// silent since: a browser's pre-connection) hold the exit only for a moment, not for the
/// drain (60 s here) or their own handshake and head timeouts (30 s).
#[tokio::test]
async fn silent_connections_do_not_hold_the_exit_for_the_drain() -> Result<()> {
    let (_demo, mut gw) = abc_gateway(
        "[timeouts]\ndrain = \"60s\"\ntls_handshake = \"30s\"\nheader_read = \"30s\"\n",
    )
    .await?;
    let _nothing_sent = tokio::net::TcpStream::connect(gw.addr).await?;
    let _tls_only = tls_connect_to(gw.addr).await?;
    wait_for("both connections to be accepted", DEADLINE, || async {
        Ok(gw.metric("wsgate_connections_accepted_total").await? >= 2.0)
    })
    .await?;
    gw.terminate()?;
    let status = gw.wait_exit(DEADLINE).await?;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}

/// With `[timeouts] drain_spread`, SIGTERM closes the open sessions one after another over
/// that period, the oldest first, each as a shutdown closes it (1001 "gateway shutting
/// down"), while the ones not yet told go on echoing; the process exits 0 once the last
/// has closed.
#[tokio::test]
async fn a_spread_drain_closes_sessions_in_turn_while_the_rest_still_echo() -> Result<()> {
    const CLIENTS: usize = 8;
    let spread = Duration::from_secs(2);
    let (_demo, mut gw) =
        abc_gateway("[timeouts]\ndrain = \"8s\"\ndrain_spread = \"2s\"\nclose = \"2s\"\n").await?;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        // Opened one after another: client i is the i-th oldest session.
        let mut c = client(&gw, "Backend_ABC").await?;
        echo(&mut c.ws, b"before").await?;
        clients.push(c);
    }
    gw.terminate()?;
    let signalled = Instant::now();
    // Each client echoes until its close comes: when it came, and when its last echo did.
    let runs = clients.into_iter().enumerate().map(|(i, mut c)| {
        tokio::spawn(async move {
            let mut last_echo = None;
            loop {
                c.ws.write_frame(Frame::binary(Payload::Owned(message(i, 0))))
                    .await?;
                c.ws.flush().await?;
                let f = next_frame(&mut c.ws).await?;
                match f.opcode {
                    OpCode::Binary => {
                        ensure!(f.payload[..] == message(i, 0)[..], "client {i}: echo");
                        last_echo = Some(signalled.elapsed());
                    }
                    OpCode::Close => {
                        let (code, reason) = close_of(&f)?;
                        ensure!(
                            code == 1001 && reason == "gateway shutting down",
                            "client {i}: close {code} {reason:?}"
                        );
                        c.ws.write_frame(Frame::close(1001, b"")).await?;
                        c.ws.flush().await?;
                        return Ok::<_, anyhow::Error>((signalled.elapsed(), last_echo));
                    }
                    other => bail!("client {i}: unexpected {other:?}"),
                }
            }
        })
    });
    let mut ended = Vec::new();
    for run in runs.collect::<Vec<_>>() {
        ended.push(tokio::time::timeout(DEADLINE, run).await???);
    }
    let closes: Vec<Duration> = ended.iter().map(|(at, _)| *at).collect();
    println!("closes after SIGTERM: {closes:?}");
    ensure!(
        closes.windows(2).all(|w| w[0] < w[1]),
        "not the oldest first: {closes:?}"
    );
    let (first, last) = (closes[0], closes[CLIENTS - 1]);
    ensure!(
        last - first >= spread / 2,
        "closes not spread over {spread:?}: {closes:?}"
    );
    ensure!(
        last < spread + Duration::from_secs(1),
        "the last close came at {last:?}"
    );
    let served_late = ended.iter().filter_map(|(_, echo)| *echo).max();
    ensure!(
        served_late.is_some_and(|e| e > first),
        "no session echoed after the first close ({first:?}): {served_late:?}"
    );
    // No newcomer meanwhile: the listener is closed.
    match connect(&gw.connect_options("Backend_ABC")?).await {
        Ok(_) => bail!("a client was admitted during the spread drain"),
        Err(ConnectError::Refused { status, .. }) => ensure!(status == 503, "HTTP {status}"),
        Err(_) => {}
    }
    let status = gw.wait_exit(DEADLINE).await?;
    ensure!(status.success(), "exit status {status}:\n{}", gw.log());
    let log = gw.log();
    ensure!(
        log.contains("closing the open sessions spread over drain_spread")
            && log.contains("sessions=8"),
        "{log}"
    );
    ensure!(
        log.contains("remaining=0") && !log.contains("session cut"),
        "{log}"
    );
    Ok(())
}
