//! How the gateway ends a client's connection after a close of its own: it reads what the
//! client still sends, its close answer included, so that nothing arrives at a closed
//! socket (which TCP answers with a reset, on some stacks costing the client the close
//! frame it had not read yet).

mod support;

use anyhow::{ensure, Context, Result};
use demo_services::{Backend, ServiceOptions};
use fastwebsockets::{Frame, Payload};
use support::process::{GatewayProc, ProcOptions};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_client_told_1009_mid_frame_is_read_to_its_answer_not_reset() -> Result<()> {
    let demo = demo_services::spawn_for_test(ServiceOptions {
        backend: Backend::Abc,
        push_interval: None,
    })
    .await?;
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), demo.url())],
        extra_toml: "[limits]\nmax_frame_size = 65536\n\n[timeouts]\nclose = \"1s\"\n".into(),
        ..ProcOptions::default()
    })
    .await?;
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
