//! Secrets never reach the log: the gateway binary at `RUST_LOG=debug` refuses bad
//! tokens of every kind and serves a good one; no part of any token and no private-key
//! text appears in what it wrote to stderr.

mod support;

use std::time::Duration;

use anyhow::{ensure, Result};
use demo_services::{Backend, ServiceOptions};
use loadgen::client::connect;
use support::process::{GatewayProc, ProcOptions};
use support::*;

/// Base64 lines of a PEM file (the key material itself).
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

async fn secrets_stay_out_of_the_log(rust_log: &str) -> Result<()> {
    let demo = demo_services::spawn_for_test(ServiceOptions {
        backend: Backend::Abc,
        push_interval: None,
    })
    .await?;
    let mut gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), demo.url())],
        rust_log: Some(rust_log.into()),
        ..ProcOptions::default()
    })
    .await?;

    let now = jsonwebtoken::get_current_timestamp();
    let good = rs256(&loadgen::token::sample_claims())?;
    let bad = vec![
        (
            "expired",
            rs256(&claims_with(|c| {
                c.insert("exp".into(), (now - 600).into());
                c.insert("iat".into(), (now - 4200).into());
            }))?,
        ),
        ("bad signature", tampered_token()?),
        ("alg none", alg_none_token()?),
        ("HS256 with the public key", hs256_with_public_key_token()?),
        (
            "wrong audience",
            rs256(&claims_with(|c| {
                c.insert("aud".into(), serde_json::json!(["elsewhere"]));
            }))?,
        ),
        (
            "no scope",
            rs256(&claims_with(|c| {
                c.insert("scp".into(), "read".into());
            }))?,
        ),
        (
            "malformed",
            "eyJzZWNyZXQiOiJ0b3Atc2VjcmV0In0.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJlLXNlY3JldA".into(),
        ),
    ];
    for (what, token) in &bad {
        let mut opts = gw.connect_options("Backend_ABC")?;
        opts.set_header("Authorization", format!("Bearer {token}"));
        let (status, reason) = refused(&opts).await?;
        ensure!(
            status == 401 || status == 403,
            "{what}: got {status} {reason:?}"
        );
    }
    // A good token whose request fails later (unknown ID), and a token without "Bearer".
    let mut opts = gw.connect_options("Backend_NOPE")?;
    opts.set_header("Authorization", format!("Bearer {good}"));
    ensure!(refused(&opts).await?.0 == 404);
    let mut opts = gw.connect_options("Backend_ABC")?;
    opts.set_header("Authorization", good.clone());
    ensure!(refused(&opts).await?.0 == 401);
    // A session with the good token.
    let mut opts = gw.connect_options("Backend_ABC")?;
    opts.set_header("Authorization", format!("Bearer {good}"));
    let mut c = connect(&opts).await?;
    echo(&mut c.ws, b"hello").await?;
    ensure!(close_cleanly(&mut c.ws).await? == 1000);
    wait_for("the session's log line", DEADLINE, || {
        std::future::ready(Ok(gw.log().contains("session ended")))
    })
    .await?;
    gw.terminate()?;
    gw.wait_exit(Duration::from_secs(15)).await?;

    let log = gw.log();
    let refusals = log.matches("refused").count();
    ensure!(
        refusals >= bad.len() + 2,
        "expected a log line per refusal, found {refusals}:\n{log}"
    );
    println!(
        "log_secrets ({rust_log}): {} lines, {} bytes, {refusals} refusals",
        log.lines().count(),
        log.len()
    );
    ensure!(!log.contains("eyJ"), "a JWT segment is in the log");
    let tokens = bad
        .iter()
        .map(|(what, t)| (*what, t.as_str()))
        .chain([("good", good.as_str())]);
    for (what, token) in tokens {
        for segment in token.split('.').filter(|s| s.len() >= 8) {
            ensure!(
                !log.contains(segment),
                "part of the {what} token is in the log: {segment}"
            );
        }
    }
    for file in ["jwt-private.pem", "server.key"] {
        let pem = std::fs::read_to_string(certs().join(file))?;
        for line in pem_body_lines(&pem) {
            ensure!(!log.contains(&line), "{file} key material is in the log");
        }
    }
    ensure!(
        !log.contains("PRIVATE KEY"),
        "a PEM private key is in the log"
    );
    Ok(())
}

#[tokio::test]
async fn no_token_or_key_in_the_debug_log() -> Result<()> {
    secrets_stay_out_of_the_log("debug").await
}

#[tokio::test]
async fn no_token_or_key_in_the_trace_log() -> Result<()> {
    secrets_stay_out_of_the_log("trace").await
}
