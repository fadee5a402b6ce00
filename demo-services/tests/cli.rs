//! The `demo-services` binary's TLS flags: usage errors exit 64 with one line; with both
//! flags the backends serve `wss://`.

mod common;

use std::net::SocketAddr;
use std::process::{Output, Stdio};

use anyhow::Context as _;
use common::{connect_tls, dev_certs, got, next_frame, send, within};
use demo_services::Backend;
use fastwebsockets::OpCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The binary under test, with no inherited log filter.
fn demo_services() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo-services"));
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    cmd.kill_on_drop(true);
    cmd
}

/// Runs the binary with `args` and returns its output (it must exit on its own).
async fn run(args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = demo_services();
    cmd.args(args);
    Ok(within("the binary to exit", cmd.output()).await??)
}

/// Asserts the run was a usage error: exit code 64 and one line on stderr naming `word`.
fn assert_usage_error(out: &Output, word: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains(word), "names {word}: {stderr:?}");
}

#[tokio::test]
async fn one_tls_flag_without_the_other_exits_64_with_one_line() -> anyhow::Result<()> {
    let cert = dev_certs().join("server.crt");
    let key = dev_certs().join("server.key");
    let cert = cert.to_str().context("certs path is not UTF-8")?;
    let key = key.to_str().context("certs path is not UTF-8")?;

    let out = run(&["--tls-cert", cert]).await?;
    assert_usage_error(&out, "--tls-key");
    let out = run(&["--tls-key", key]).await?;
    assert_usage_error(&out, "--tls-cert");
    // Files that do not load are refused before anything binds.
    let out = run(&["--tls-cert", cert, "--tls-key", "/nonexistent/server.key"]).await?;
    assert_usage_error(&out, "/nonexistent/server.key");
    Ok(())
}

#[tokio::test]
async fn with_both_tls_flags_the_backends_serve_wss() -> anyhow::Result<()> {
    let cert = dev_certs().join("server.crt");
    let key = dev_certs().join("server.key");
    let mut child = demo_services()
        .args(["--only", "abc", "--abc-port", "0", "--push-interval", "0"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    // "Backend_ABC listening on wss://127.0.0.1:<port>/backend/abc"
    let addr: SocketAddr = within("the listening line", async {
        while let Some(line) = lines.next_line().await? {
            if let Some((_, rest)) = line.split_once("Backend_ABC listening on wss://") {
                let addr = rest.split('/').next().unwrap_or_default();
                return Ok(addr.parse()?);
            }
        }
        anyhow::bail!("the binary ended without a listening line")
    })
    .await??;

    let mut ws = connect_tls(addr, Backend::Abc.path()).await?;
    send(&mut ws, true, OpCode::Text, b"hello over wss").await?;
    assert_eq!(
        next_frame(&mut ws).await?,
        got(true, OpCode::Text, b"hello over wss")
    );
    child.kill().await?;
    Ok(())
}
