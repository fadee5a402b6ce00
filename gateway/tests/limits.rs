//! Size and connection limits, and the slow or oversized request heads they guard
//! against: over a message or frame limit the sender gets 1009 and the other side 1001
//! (and 1007 and 1001 for a text message that is not UTF-8, whole or in fragments);
//! over a connection limit a client gets 503 with a reason until a slot frees; a
//! slowloris head is cut off at the header-read timeout; an oversized head is refused.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use loadgen::client::{connect, ConnectError, ConnectOptions, Connected, WsStream};
use support::probe::{Event, Mode, Probe};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A probe backend behind a gateway with a 1000-byte message and 600-byte frame limit,
/// and a client connected to it. Keep the testbed alive for the test's length.
async fn probe_behind_small_limits() -> Result<(Probe, loadgen::testbed::Testbed, Connected)> {
    let probe = Probe::start(Mode::Accept { protocol: None }).await?;
    let tb = testbed_with_toml(
        &[("Backend_PROBE", probe.url())],
        "[limits]\nmax_message_size = 1000\nmax_frame_size = 600\n",
    )
    .await?;
    let c = connect_ok(&tb, "Backend_PROBE").await?;
    Ok((probe, tb, c))
}

/// The client gets a close with `to_client`, and the probe backend one with `to_backend`.
async fn closes_are(
    ws: &mut WebSocket<WsStream>,
    probe: &mut Probe,
    to_client: u16,
    to_backend: u16,
) -> Result<()> {
    let (code, reason) = expect_close(ws).await?;
    ensure!(
        code == to_client,
        "client got close {code} {reason:?}, expected {to_client}"
    );
    // The reason says which rule was broken.
    ensure!(
        code != 1009 || reason == "message too big",
        "a 1009 with reason {reason:?}"
    );
    let (code, reason) = probe.next_close().await?;
    ensure!(
        code == to_backend,
        "backend got close {code} {reason:?}, expected {to_backend}"
    );
    Ok(())
}

/// Sends one message as fragments of these sizes (first binary, then continuations).
async fn send_fragments(ws: &mut WebSocket<WsStream>, sizes: &[usize]) -> Result<()> {
    for (i, &size) in sizes.iter().enumerate() {
        let op = if i == 0 {
            OpCode::Binary
        } else {
            OpCode::Continuation
        };
        let fin = i + 1 == sizes.len();
        ws.write_frame(Frame::new(fin, op, None, Payload::Owned(vec![b'x'; size])))
            .await?;
    }
    ws.flush().await?;
    Ok(())
}

#[tokio::test]
async fn text_split_inside_a_character_passes_and_broken_fragmented_text_gets_1007() -> Result<()> {
    let (mut probe, _tb, mut c) = probe_behind_small_limits().await?;
    let euro = "€".as_bytes();
    let text = |fin, op, bytes: &[u8]| Frame::new(fin, op, None, Payload::Owned(bytes.to_vec()));

    // "a€b" with the euro sign split across the fragments: UTF-8 as a whole, passed on.
    c.ws.write_frame(text(false, OpCode::Text, &[b'a', euro[0]]))
        .await?;
    c.ws.write_frame(text(false, OpCode::Continuation, &euro[1..]))
        .await?;
    c.ws.write_frame(text(true, OpCode::Continuation, b"b"))
        .await?;
    c.ws.flush().await?;
    let mut echoed = Vec::new();
    for _ in 0..3 {
        echoed.extend_from_slice(&next_frame(&mut c.ws).await?.payload);
    }
    ensure!(echoed == "a€b".as_bytes(), "echo {echoed:?}");

    // A split character whose next fragment does not continue it.
    c.ws.write_frame(text(false, OpCode::Text, &[b'a', euro[0]]))
        .await?;
    c.ws.write_frame(text(true, OpCode::Continuation, b"xy"))
        .await?;
    c.ws.flush().await?;
    closes_are(&mut c.ws, &mut probe, 1007, 1001).await?;
    Ok(())
}

#[tokio::test]
async fn a_message_over_the_limit_in_fragments_gets_1009_and_the_backend_1001() -> Result<()> {
    let (mut probe, _tb, mut c) = probe_behind_small_limits().await?;

    // 900 bytes in three fragments: under both limits, passes as fragments.
    send_fragments(&mut c.ws, &[300, 300, 300]).await?;
    for (op, fin) in [
        (OpCode::Binary, false),
        (OpCode::Continuation, false),
        (OpCode::Continuation, true),
    ] {
        let f = next_frame(&mut c.ws).await?;
        ensure!(
            f.opcode == op && f.fin == fin && f.payload.len() == 300,
            "echo fragment: {:?} fin={} len={}",
            f.opcode,
            f.fin,
            f.payload.len()
        );
    }

    // 1200 bytes in three fragments, each under the frame limit: over the message limit.
    send_fragments(&mut c.ws, &[400, 400, 400]).await?;
    closes_are(&mut c.ws, &mut probe, 1009, 1001).await?;
    Ok(())
}

#[tokio::test]
async fn a_frame_over_the_frame_limit_gets_1009_either_way() -> Result<()> {
    // Client to backend: one 1500-byte frame against a 1000-byte frame limit.
    let mut probe = Probe::start(Mode::Accept { protocol: None }).await?;
    // Backend to client: the backend sends one 2000-byte frame.
    let mut flood = Probe::start(Mode::Flood {
        size: 2000,
        count: Some(1),
    })
    .await?;
    let tb = testbed_with_toml(
        &[("Backend_PROBE", probe.url()), ("Backend_BIG", flood.url())],
        "[limits]\nmax_frame_size = 1000\n",
    )
    .await?;

    let mut c = connect_ok(&tb, "Backend_PROBE").await?;
    echo(&mut c.ws, &[7u8; 1000]).await?; // at the limit: fine
    send(&mut c.ws, Frame::binary(Payload::Owned(vec![7u8; 1500]))).await?;
    closes_are(&mut c.ws, &mut probe, 1009, 1001).await?;

    let mut d = connect_ok(&tb, "Backend_BIG").await?;
    let (code, reason) = expect_close(&mut d.ws).await?;
    ensure!(
        code == 1001,
        "client got close {code} {reason:?}, expected 1001"
    );
    let (code, reason) = flood.next_close().await?;
    ensure!(
        code == 1009,
        "backend got close {code} {reason:?}, expected 1009"
    );
    Ok(())
}

/// Connects with `opts`, retrying while the gateway answers 503 (a slot not yet freed).
async fn connect_when_free(opts: &ConnectOptions) -> Result<Connected> {
    let started = Instant::now();
    loop {
        match connect(opts).await {
            Ok(c) => return Ok(c),
            Err(ConnectError::Refused { status: 503, .. }) if started.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("no slot freed: {e}"),
        }
    }
}

#[tokio::test]
async fn over_max_connections_is_503_until_a_session_ends() -> Result<()> {
    let tb = testbed_with_toml(&[], "[limits]\nmax_connections = 2\n").await?;
    let mut a = connect_ok(&tb, "Backend_ABC").await?;
    let mut b = connect_ok(&tb, "Backend_PQR").await?;
    let (status, reason) = refused(&tb.connect_options("Backend_XYZ")?).await?;
    ensure!(status == 503, "third client got {status} {reason:?}");
    ensure!(
        reason.contains("connection limit"),
        "503 reason {reason:?} does not name the limit"
    );
    // The two admitted sessions are untouched by the refusal.
    echo(&mut a.ws, b"a").await?;
    echo(&mut b.ws, b"b").await?;

    ensure!(close_cleanly(&mut a.ws).await? == 1000);
    drop(a);
    let mut c = connect_when_free(&tb.connect_options("Backend_XYZ")?).await?;
    echo(&mut c.ws, b"c").await?;
    // Full again.
    let (status, _) = refused(&tb.connect_options("Backend_ABC")?).await?;
    ensure!(status == 503, "over the limit again, got {status}");
    Ok(())
}

#[tokio::test]
async fn over_max_connections_per_ip_is_503_for_that_address_only() -> Result<()> {
    let tb = testbed_with_toml(&[], "[limits]\nmax_connections_per_ip = 2\n").await?;
    let from = |ip: [u8; 4]| -> Result<ConnectOptions> {
        let mut o = tb.connect_options("Backend_ABC")?;
        o.local_addr = Some(ip.into());
        Ok(o)
    };
    let mut a = connect(&from([127, 0, 0, 1])?).await?;
    let mut b = connect(&from([127, 0, 0, 1])?).await?;
    let (status, reason) = refused(&from([127, 0, 0, 1])?).await?;
    ensure!(
        status == 503,
        "third from 127.0.0.1 got {status} {reason:?}"
    );
    ensure!(
        reason.contains("per-address"),
        "503 reason {reason:?} does not name the per-address limit"
    );
    // Another address is not affected.
    let mut other = connect(&from([127, 0, 0, 2])?).await?;
    echo(&mut other.ws, b"other").await.context("other")?;
    echo(&mut b.ws, b"b").await.context("b")?;

    ensure!(close_cleanly(&mut a.ws).await.context("a close")? == 1000);
    drop(a);
    let mut c = connect_when_free(&from([127, 0, 0, 1])?).await?;
    echo(&mut c.ws, b"c").await.context("c")?;
    Ok(())
}

#[tokio::test]
async fn over_max_sessions_per_subject_is_503_for_that_subject_only_until_one_ends() -> Result<()> {
    let tb = testbed_with_toml(&[], "[limits]\nmax_sessions_per_subject = 2\n").await?;
    let as_user = |sub: &str, backend: &str| -> Result<ConnectOptions> {
        let token = rs256(&claims_with(|c| {
            c.insert("sub".into(), sub.into());
        }))?;
        let mut opts = tb.connect_options(backend)?;
        opts.set_header("Authorization", format!("Bearer {token}"));
        Ok(opts)
    };
    // Counted across backends: a subject's sessions anywhere.
    let mut a = connect(&as_user("alice", "Backend_ABC")?).await?;
    let mut b = connect(&as_user("alice", "Backend_PQR")?).await?;
    let (status, reason) = refused(&as_user("alice", "Backend_XYZ")?).await?;
    ensure!(
        status == 503,
        "alice's third session got {status} {reason:?}"
    );
    ensure!(
        reason.contains("per-subject"),
        "503 reason {reason:?} does not name the per-subject limit"
    );
    // Another subject is not affected, and alice's two sessions are untouched.
    let mut other = connect(&as_user("bob", "Backend_XYZ")?).await?;
    echo(&mut other.ws, b"bob").await.context("bob")?;
    echo(&mut a.ws, b"a").await.context("a")?;
    echo(&mut b.ws, b"b").await.context("b")?;
    // One of alice's ends: her place is free again.
    ensure!(close_cleanly(&mut a.ws).await.context("a close")? == 1000);
    drop(a);
    let mut c = connect_when_free(&as_user("alice", "Backend_XYZ")?).await?;
    echo(&mut c.ws, b"c").await.context("c")?;
    let (status, _) = refused(&as_user("alice", "Backend_ABC")?).await?;
    ensure!(status == 503, "alice over the limit again, got {status}");
    Ok(())
}

#[tokio::test]
async fn subject_claim_counts_sessions_by_another_claim_such_as_a_tenant() -> Result<()> {
    let tb = testbed_with_toml(
        &[],
        "[limits]\nmax_sessions_per_subject = 2\n[auth]\nsubject_claim = \"tenant\"\n",
    )
    .await?;
    let as_user = |sub: &str, tenant: Option<serde_json::Value>| -> Result<ConnectOptions> {
        let token = rs256(&claims_with(|c| {
            c.insert("sub".into(), sub.into());
            if let Some(tenant) = tenant {
                c.insert("tenant".into(), tenant);
            }
        }))?;
        let mut opts = tb.connect_options("Backend_ABC")?;
        opts.set_header("Authorization", format!("Bearer {token}"));
        Ok(opts)
    };
    let acme = || Some(serde_json::Value::from("acme"));
    // Three users of one tenant: the third is over the tenant's two.
    let mut a = connect(&as_user("alice", acme())?).await?;
    let mut b = connect(&as_user("bob", acme())?).await?;
    let (status, reason) = refused(&as_user("carol", acme())?).await?;
    ensure!(
        status == 503 && reason.contains("per-subject"),
        "acme's third user got {status} {reason:?}"
    );
    // Another tenant (a number is a name too), and tokens naming none, are not held back.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect(&as_user("carol", Some(42.into()))?).await?);
    }
    let (status, _) = refused(&as_user("dave", Some(42.into()))?).await?;
    ensure!(status == 503, "tenant 42's third session got {status}");
    for _ in 0..3 {
        held.push(connect(&as_user("alice", None)?).await?);
    }
    for c in held.iter_mut().chain([&mut a, &mut b]) {
        echo(&mut c.ws, b"open").await?;
    }
    Ok(())
}

#[tokio::test]
async fn over_max_connection_rate_per_ip_is_429_for_that_address_until_a_second_passes(
) -> Result<()> {
    let tb = testbed_with_toml(&[], "[limits]\nmax_connection_rate_per_ip = 3\n").await?;
    let from = |ip: [u8; 4]| -> Result<ConnectOptions> {
        let mut o = tb.connect_options("Backend_ABC")?;
        o.local_addr = Some(ip.into());
        Ok(o)
    };
    // Four at once (accepted within milliseconds, well inside the third of a second
    // that gives one back): three pass and stay open (a rate, not a cap), one gets 429.
    let opts = from([127, 0, 0, 1])?;
    let burst = tokio::join!(
        connect(&opts),
        connect(&opts),
        connect(&opts),
        connect(&opts)
    );
    let mut held = Vec::new();
    let mut refusals = Vec::new();
    for result in [burst.0, burst.1, burst.2, burst.3] {
        match result {
            Ok(c) => held.push(c),
            Err(ConnectError::Refused { status, reason }) => refusals.push((status, reason)),
            Err(e) => bail!("a connect failed: {e}"),
        }
    }
    ensure!(held.len() == 3, "{} of a burst of four passed", held.len());
    ensure!(
        refusals.len() == 1 && refusals[0].0 == 429 && refusals[0].1.contains("connection rate"),
        "refusals: {refusals:?}"
    );
    // Another address has its own allowance; the admitted sessions are untouched.
    let mut other = connect(&from([127, 0, 0, 2])?).await?;
    echo(&mut other.ws, b"other").await?;
    echo(&mut held[0].ws, b"held").await?;
    // The allowance comes back at three a second: one more within a second or so.
    let started = Instant::now();
    let mut again = loop {
        match connect(&from([127, 0, 0, 1])?).await {
            Ok(c) => break c,
            Err(ConnectError::Refused { status: 429, .. }) if started.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!("no new allowance: {e}"),
        }
    };
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "the allowance took {:?}",
        started.elapsed()
    );
    echo(&mut again.ws, b"again").await?;
    Ok(())
}

/// A full upgrade request head for the gateway.
fn upgrade_head(extra: &str) -> String {
    format!(
        "GET /gateway HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nID: Backend_ABC\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn a_slowloris_head_is_cut_off_at_the_header_read_timeout() -> Result<()> {
    let tb = testbed_with_toml(&[], "[timeouts]\nheader_read = \"500ms\"\n").await?;
    let mut good = connect_ok(&tb, "Backend_ABC").await?;

    let tls = tls_connect(&tb).await?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = upgrade_head("X-Slow: 1\r\n");
    let total = head.len();
    let written = Arc::new(AtomicUsize::new(0));
    let progress = written.clone();
    let started = Instant::now();
    // The slow client: one byte every 50 ms, 7+ s for the whole head.
    let trickle = tokio::spawn(async move {
        for byte in head.into_bytes() {
            if wr.write_all(&[byte]).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            progress.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Others are served meanwhile.
    echo(&mut good.ws, b"during").await?;
    let mut late = connect_ok(&tb, "Backend_PQR").await?;
    echo(&mut late.ws, b"late").await?;

    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut answer)).await;
    let elapsed = started.elapsed();
    trickle.abort();
    ensure!(
        ended.is_ok(),
        "slow connection still open after {elapsed:?}"
    );
    let sent = written.load(Ordering::SeqCst);
    ensure!(
        sent < total,
        "the whole head ({total} bytes) went through before the cut-off"
    );
    ensure!(
        elapsed >= Duration::from_millis(400),
        "cut off after {elapsed:?}, before the 500 ms timeout"
    );
    ensure!(
        !answer.starts_with(b"HTTP/1.1 101"),
        "slow client was upgraded"
    );
    echo(&mut good.ws, b"after").await?;
    Ok(())
}

#[tokio::test]
async fn a_head_over_max_header_bytes_is_refused_and_one_under_it_is_not() -> Result<()> {
    let tb = testbed_with_toml(&[], "[limits]\nmax_header_bytes = 8192\n").await?;

    let mut tls = tls_connect(&tb).await?;
    let big = format!("X-Big: {}\r\n", "a".repeat(12_000));
    // The gateway may stop reading (and reset) before the whole head is written.
    let _ = tls.write_all(upgrade_head(&big).as_bytes()).await;
    let _ = tls.flush().await;
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut answer)).await;
    ensure!(ended.is_ok(), "oversized head: connection still open");
    let text = String::from_utf8_lossy(&answer);
    ensure!(
        answer.is_empty() || text.starts_with("HTTP/1.1 431"),
        "oversized head answered {text:?}"
    );

    // A head well under the cap is served.
    let mut opts = tb.connect_options("Backend_ABC")?;
    opts.headers.push(("X-Pad".into(), "p".repeat(4000)));
    let mut c = connect(&opts).await?;
    echo(&mut c.ws, b"padded").await?;
    Ok(())
}

#[tokio::test]
async fn a_message_at_the_limit_reaches_the_backend_whole() -> Result<()> {
    let (mut probe, _tb, mut c) = probe_behind_small_limits().await?;
    send_fragments(&mut c.ws, &[500, 500]).await?;
    let mut got = 0;
    while got < 1000 {
        match probe.next().await? {
            Event::Frame(OpCode::Binary | OpCode::Continuation, data) => got += data.len(),
            Event::Frame(op, _) => bail!("backend got {op:?} before the message was whole"),
            _ => {}
        }
    }
    ensure!(got == 1000, "backend got {got} bytes");
    Ok(())
}

/// An upgrade request head for Backend_ABC with a good token, padded with an `X-Pad`
/// header to exactly `size` bytes.
fn head_of(size: usize) -> Result<String> {
    let token = rs256(&claims_with(|_| {}))?;
    let bare = upgrade_head(&format!("Authorization: Bearer {token}\r\nX-Pad: \r\n"));
    let pad = size
        .checked_sub(bare.len())
        .context("the bare head is longer than asked")?;
    let head = upgrade_head(&format!(
        "Authorization: Bearer {token}\r\nX-Pad: {}\r\n",
        "p".repeat(pad)
    ));
    ensure!(head.len() == size, "a head of {} bytes", head.len());
    Ok(head)
}

/// Sends `head` on a fresh connection and reads the answer's status line (empty when the
/// gateway closes without one).
async fn status_line_for(tb: &loadgen::testbed::Testbed, head: &str) -> Result<String> {
    let mut tls = tls_connect(tb).await?;
    // The gateway may stop reading (and reset) before the whole head is written.
    let _ = tls.write_all(head.as_bytes()).await;
    let _ = tls.flush().await;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n") {
        match tokio::time::timeout(DEADLINE, tls.read(&mut byte)).await? {
            Ok(1) => answer.push(byte[0]),
            _ => break,
        }
    }
    Ok(String::from_utf8_lossy(&answer).trim_end().to_owned())
}

#[tokio::test]
async fn max_header_bytes_is_the_largest_head_taken_to_the_byte_and_16384_by_default() -> Result<()>
{
    for (toml, max) in [("", 16384), ("[limits]\nmax_header_bytes = 40000\n", 40000)] {
        let tb = testbed_with_toml(&[], toml).await?;
        let at = status_line_for(&tb, &head_of(max)?).await?;
        ensure!(
            at.starts_with("HTTP/1.1 101"),
            "{toml:?}: a head of {max} bytes got {at:?}"
        );
        for over in [max + 1, max + 1000] {
            let got = status_line_for(&tb, &head_of(over)?).await?;
            ensure!(
                got.is_empty() || got.starts_with("HTTP/1.1 431"),
                "{toml:?}: a head of {over} bytes got {got:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_connection_silent_after_its_tls_handshake_is_closed_at_header_read() -> Result<()> {
    let tb = testbed_with_toml(&[], "[timeouts]\nheader_read = \"500ms\"\n").await?;
    let started = Instant::now();
    let mut silent = tls_connect(&tb).await?;
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(DEADLINE, silent.read_to_end(&mut answer)).await;
    let elapsed = started.elapsed();
    ensure!(ended.is_ok(), "still open after {elapsed:?}");
    ensure!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}, not at the 500 ms header_read"
    );
    ensure!(
        !answer.starts_with(b"HTTP/1.1 101"),
        "answered {:?}",
        String::from_utf8_lossy(&answer)
    );
    // Others are served.
    let mut c = connect_ok(&tb, "Backend_ABC").await?;
    echo(&mut c.ws, b"served").await?;
    Ok(())
}
