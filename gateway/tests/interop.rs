//! Interop with software we did not write: Python's `websockets` as the client (over TLS,
//! OpenSSL's, 1.3 and each TLS 1.2 suite, with a token) and as the backend echo server
//! (plain, and over OpenSSL's TLS as a `wss://` backend), through the real gateway binary's
//! code. Both negotiate `permessage-deflate` through the gateway (their default), so
//! compressed messages cross it as they were sent.
//!
//! Needs `python3` with `websockets` (.ci/run installs it). Set WSGATE_SKIP_INTEROP=1 to
//! skip where it cannot be installed; otherwise a missing module fails the test.

mod support;

use anyhow::{ensure, Result};
use support::python;
use tokio::process::Command;

#[tokio::test]
async fn python_websockets_client_and_server_through_the_gateway() -> Result<()> {
    if !python::ready()? {
        eprintln!("skipped: WSGATE_SKIP_INTEROP is set");
        return Ok(());
    }
    // Third-party echo server as the backend.
    let server = python::EchoServer::start().await?;
    let tb = support::testbed_with(&[("Backend_PY", server.url())]).await?;
    let token = support::rs256(&loadgen::token::sample_claims())?;
    let url = tb.url();
    // OpenSSL's TLS 1.3 (its default), then each TLS 1.2 suite the gateway offers.
    for (cipher, tls) in [
        (None, "tls TLSv1.3"),
        (
            Some("ECDHE-ECDSA-AES128-GCM-SHA256"),
            "tls TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        (
            Some("ECDHE-ECDSA-AES256-GCM-SHA384"),
            "tls TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384",
        ),
        (
            Some("ECDHE-ECDSA-CHACHA20-POLY1305"),
            "tls TLSv1.2 ECDHE-ECDSA-CHACHA20-POLY1305",
        ),
    ] {
        python_client(&url, "Backend_PY", &token, cipher, tls).await?;
    }
    Ok(())
}

#[tokio::test]
async fn python_websockets_over_tls_as_a_wss_backend() -> Result<()> {
    if !python::ready()? {
        eprintln!("skipped: WSGATE_SKIP_INTEROP is set");
        return Ok(());
    }
    // OpenSSL on the backend's side this time: the gateway is its TLS client.
    let server = python::EchoServer::start_tls().await?;
    let ca = support::certs().join("ca.crt");
    let tb = support::testbed_with_toml(
        &[("Backend_PYTLS", server.url())],
        &format!("\n[backend_tls]\nca = {:?}\n", ca),
    )
    .await?;
    let token = support::rs256(&loadgen::token::sample_claims())?;
    python_client(&tb.url(), "Backend_PYTLS", &token, None, "tls TLSv1.3").await
}

/// Runs the Python client through the gateway at `url` to `backend` (TLS 1.2 with
/// `cipher`, else OpenSSL's default), and checks what it printed: the TLS it got (`tls`),
/// permessage-deflate, the text and binary round trips and the close.
async fn python_client(
    url: &str,
    backend: &str,
    token: &str,
    cipher: Option<&str>,
    tls: &str,
) -> Result<()> {
    let ca = support::certs().join("ca.crt");
    let mut args = vec![
        python::SCRIPT.to_owned(),
        "client".to_owned(),
        url.to_owned(),
        ca.display().to_string(),
        backend.to_owned(),
        token.to_owned(),
    ];
    args.extend(cipher.map(str::to_owned));
    let out = tokio::time::timeout(
        support::DEADLINE,
        Command::new("python3").args(&args).output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "python client ({tls}) failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains(tls)
            && stdout.contains("extensions permessage-deflate")
            && stdout.contains("text ok")
            && stdout.contains("binary ok")
            && stdout.contains("close 1000"),
        "{stdout}"
    );
    Ok(())
}
