//! How the gateway ends a client's connection after a close of its own: it reads what the
//! client still sends, its close answer included, so that nothing arrives at a closed
//! socket (which TCP answers with a reset, on some stacks costing the client the close
//! frame it had not read yet).

mod support;

use anyhow::{ensure, Context, Result};
use fastwebsockets::{Frame, Payload};
use support::process::{abc_gateway, GatewayProc, ProcOptions};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_client_told_1009_mid_frame_is_read_to_its_answer_not_reset() -> Result<()> {
    let (_demo, gw) =
        abc_gateway("[limits]\nmax_frame_size = 65536\n\n[timeouts]\nclose = \"1s\"\n").await?;
    let mut c = loadgen::client::connect(&gw.connect_options("Backend_ABC")?).await?;
    c.ws.set_auto_close(false);
    // Over the frame limit: refused at its head, while the rest of it is still coming.
    c.ws.write_frame(Frame::binary(Payload::Owned(vec![7u8; 300_000])))
        .await
        .context("the gateway stopped reading the client")?;
    c.ws.flush().await?;
    let (code, _) = expect_close(&mut c.ws).await?;
    ensure!(code == 1009, "client got close {code}");
    let mut stream = c.ws.into_inner();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
        .await
        .context("no end of stream")??;
    // The close answer it owes (masked, 1009, no reason), after the end of the stream.
    stream
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xF1])
        .await?;
    stream.flush().await?;
    let ended = wait_for("the session to end", DEADLINE, || async {
        Ok(gw.log().contains("session ended"))
    })
    .await;
    ensure!(ended.is_ok(), "no session end:\n{}", gw.log());
    // Any reset came in answer to the data or the close answer, before the session ended.
    let error = stream.get_ref().tcp().take_error()?;
    ensure!(error.is_none(), "the client's socket saw {error:?}");
    Ok(())
}

/// A client that leaves inside a frame over 64 KiB on its way to the backend: no close
/// can follow the unfinished frame, so the backend, waiting for the rest of it, would
/// never end first. Its connection ends at once, not after `[timeouts] close` (its place
/// in the pool held meanwhile).
#[tokio::test]
async fn a_client_gone_mid_frame_does_not_hold_its_backend_for_the_close_timeout() -> Result<()> {
    use support::probe::{Event, Mode, Probe};
    let mut backend = Probe::start(Mode::Accept { protocol: None }).await?;
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), backend.url())],
        extra_toml: "[timeouts]\nclose = \"60s\"\n".into(),
        ..ProcOptions::default()
    })
    .await?;
    let c = loadgen::client::connect(&gw.connect_options("Backend_ABC")?).await?;
    ensure!(
        matches!(backend.next().await?, Event::Handshake(_)),
        "no upgrade at the backend"
    );
    let mut stream = c.ws.into_inner();
    // A masked binary frame of 1 MB (mask key 0): its head and the first 200 KB.
    let mut head = vec![0x82, 0xFF];
    head.extend_from_slice(&1_000_000u64.to_be_bytes());
    head.extend_from_slice(&[0; 4]);
    stream.write_all(&head).await?;
    stream.write_all(&vec![5u8; 200_000]).await?;
    stream.flush().await?;
    // The data comes before the end of the stream: the gateway is inside the frame when
    // it finds its client gone.
    drop(stream);
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Event::Ended = backend.next().await? {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await;
    ensure!(
        matches!(ended, Ok(Ok(()))),
        "the backend connection was held after its client left mid-frame:\n{}",
        gw.log()
    );
    Ok(())
}

/// A client's own close code, echoed back by the gateway when the backend does not
/// answer it, is counted under its range (`4xxx`), not a label of its own: a client
/// picking codes would otherwise add a series per code.
#[tokio::test]
async fn a_private_close_code_the_gateway_echoes_is_counted_under_its_range() -> Result<()> {
    // The backend reads the passed-on close and then says nothing.
    let (_backend, gw) = gateway_on_raw_backend(Vec::new()).await?;
    let mut c = loadgen::client::connect(&gw.connect_options("Backend_PROBE")?).await?;
    c.ws.set_auto_close(false);
    send(&mut c.ws, Frame::close(4321, b"mine")).await?;
    let (code, _) = expect_close(&mut c.ws).await?;
    ensure!(code == 4321, "client got close {code}");
    let counted = "wsgate_close_frames_sent_total{to=\"client\",code=\"4xxx\"} 1";
    let seen = wait_for("the echoed close to be counted", DEADLINE, || async {
        Ok(gw.metrics().await?.contains(counted))
    })
    .await;
    let metrics = gw.metrics().await?;
    ensure!(seen.is_ok(), "{metrics}");
    ensure!(!metrics.contains("code=\"4321\""), "{metrics}");
    Ok(())
}

/// A backend that breaks the protocol is named in the session's log line with the close
/// code it was sent and why: the line said only `backend_error`, the same for a masking
/// bug, bad UTF-8 or an oversized message.
#[tokio::test]
async fn a_protocol_violation_is_logged_with_its_code_and_reason() -> Result<()> {
    // A masked frame from a server: 1002.
    let (_backend, gw) =
        gateway_on_raw_backend(vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]).await?;
    let mut c = loadgen::client::connect(&gw.connect_options("Backend_PROBE")?).await?;
    send(&mut c.ws, Frame::text(Payload::Borrowed(b"go"))).await?;
    let (code, reason) = expect_close(&mut c.ws).await?;
    ensure!(
        (code, reason.as_str()) == (1001, "peer protocol error"),
        "client got close {code} {reason:?}"
    );
    let line = gw.log_line("session ended").await?;
    ensure!(
        line.contains("outcome=\"backend_error\"")
            && line.contains("violation_code=1002")
            && line.contains("violation=\"protocol error\""),
        "{line}"
    );
    Ok(())
}

/// A gateway (`[timeouts] close = "1s"`) routing `Backend_PROBE` to a backend that reads
/// what the client sends first and answers `reply`, as raw bytes.
async fn gateway_on_raw_backend(reply: Vec<u8>) -> Result<(support::probe::Probe, GatewayProc)> {
    use support::probe::{Mode, Probe};
    let backend = Probe::start(Mode::Raw {
        reply,
        extensions: None,
    })
    .await?;
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_PROBE".into(), backend.url())],
        extra_toml: "[timeouts]\nclose = \"1s\"\n".into(),
        ..ProcOptions::default()
    })
    .await?;
    Ok((backend, gw))
}
