//! Operations through the real binary: Prometheus metrics after a known sequence,
//! readiness during a drain, and config reload (SIGHUP and `POST /reload`) with live
//! sessions.

mod support;

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use fastwebsockets::{Frame, Payload};
use gateway::jwks_fetch::{UNKNOWN_KEY_REFETCH_AFTER, UNKNOWN_KEY_WAIT};
use support::process::{GatewayProc, ProcOptions};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 request to the admin listener; returns (status, body).
async fn admin(proc: &GatewayProc, method: &str, path: &str) -> Result<(u16, String)> {
    admin_as(proc, method, path, "").await
}

/// [`admin`], with these header lines (each ending in `\r\n`) in the request.
async fn admin_as(
    proc: &GatewayProc,
    method: &str,
    path: &str,
    headers: &str,
) -> Result<(u16, String)> {
    let text = admin_response_as(proc, method, path, headers).await?;
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The whole answer of the admin listener, head and body.
async fn admin_response(proc: &GatewayProc, method: &str, path: &str) -> Result<String> {
    admin_response_as(proc, method, path, "").await
}

/// [`admin_response`], with these header lines in the request.
async fn admin_response_as(
    proc: &GatewayProc,
    method: &str,
    path: &str,
    headers: &str,
) -> Result<String> {
    let addr = proc.admin_addr().context("no admin address in the log")?;
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The value of a metric sample line starting with `prefix` (name and labels), 0 when
/// there is none.
fn sample(metrics: &str, prefix: &str) -> f64 {
    sample_line(metrics, prefix).unwrap_or(0.0)
}

/// The value of a metric sample line starting with `prefix`, `None` when there is none.
fn sample_line(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A gateway routing `Backend_ABC` and `Backend_PQR` to the first two of `bs` (a reload
/// may then change the table).
async fn abc_and_pqr_gateway(bs: &[demo_services::RunningBackend]) -> Result<GatewayProc> {
    GatewayProc::start(ProcOptions {
        backends: vec![
            ("Backend_ABC".into(), bs[0].url()),
            ("Backend_PQR".into(), bs[1].url()),
        ],
        ..ProcOptions::default()
    })
    .await
}

async fn backends() -> Result<Vec<demo_services::RunningBackend>> {
    let mut out = Vec::new();
    for backend in demo_services::Backend::ALL {
        out.push(
            demo_services::spawn_for_test(demo_services::ServiceOptions {
                backend,
                push_interval: None,
            })
            .await?,
        );
    }
    Ok(out)
}

/// A WebSocket backend that accepts one upgrade and then never reads or answers: on
/// shutdown the gateway waits for its close answer for the whole close timeout, which
/// keeps a drain going long enough to observe. Returns its URL and the task holding it.
async fn silent_backend() -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/silent", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        if let Ok(_ws) = loadgen::testbed::accept_ws(tcp).await {
            // Hold the connection, reading nothing, until the test ends.
            std::future::pending::<()>().await;
        }
    });
    Ok((url, task))
}

#[tokio::test]
async fn metrics_count_a_known_sequence_and_readyz_flips_on_drain() -> Result<()> {
    let bs = backends().await?;
    let (silent_url, _silent) = silent_backend().await?;
    let mut backends: Vec<(String, String)> = bs
        .iter()
        .map(|b| (b.backend().id().to_owned(), b.url()))
        .collect();
    backends.push(("Backend_SILENT".to_owned(), silent_url));
    let mut proc = GatewayProc::start(ProcOptions {
        backends,
        // How long the drain waits on the silent backend's close answer.
        extra_toml: "[timeouts]\nclose = \"2s\"\n".to_owned(),
        ..ProcOptions::default()
    })
    .await?;
    ensure!(admin(&proc, "GET", "/healthz").await?.0 == 200);
    ensure!(admin(&proc, "GET", "/readyz").await? == (200, "ready\n".into()));
    // HEAD, as some balancers' health checks send it: the status, no body.
    ensure!(admin(&proc, "HEAD", "/readyz").await? == (200, String::new()));
    let wrong = admin_response(&proc, "DELETE", "/healthz").await?;
    ensure!(
        wrong.starts_with("HTTP/1.1 405")
            && wrong.to_lowercase().contains("\r\nallow: get, head\r\n"),
        "a 405 must list the methods: {wrong:?}"
    );

    // Two sessions with 3 and 2 echoed messages; one 401 and one 404.
    for (id, n) in [("Backend_ABC", 3), ("Backend_PQR", 2)] {
        let mut c = loadgen::client::connect(&proc.connect_options(id)?).await?;
        for i in 0..n {
            let msg = format!("message {i}");
            send(
                &mut c.ws,
                Frame::text(Payload::Owned(msg.clone().into_bytes())),
            )
            .await?;
            ensure!(next_non_push(&mut c.ws).await?.payload[..] == *msg.as_bytes());
        }
        send(&mut c.ws, Frame::close(1000, b"bye")).await?;
        expect_close(&mut c.ws).await?;
    }
    let mut bad = proc.connect_options("Backend_ABC")?;
    bad.set_header("Authorization", "Bearer nope");
    ensure!(refused(&bad).await?.0 == 401);
    let mut unknown = proc.connect_options("Backend_ABC")?;
    unknown.set_header("ID", "Backend_NOPE");
    ensure!(refused(&unknown).await?.0 == 404);
    // One client connecting twice: the second TLS handshake resumes with a ticket.
    let mut resuming = proc.connect_options("Backend_XYZ")?;
    resuming.resume = true;
    let connector = loadgen::client::Connector::new(&resuming).await?;
    for _ in 0..2 {
        let mut c = connector.connect().await?;
        close_cleanly(&mut c.ws).await?;
    }
    ensure!(connector.resumed_handshakes() == 1);

    let deadline = std::time::Instant::now() + DEADLINE;
    let metrics = loop {
        let m = admin(&proc, "GET", "/metrics").await?.1;
        if sample(&m, "wsgate_sessions_total{backend=\"Backend_PQR\"") >= 1.0 {
            break m;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "sessions never reached the metrics:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let m = &metrics;
    ensure!(
        sample(
            m,
            "wsgate_sessions_total{backend=\"Backend_ABC\",outcome=\"client_closed\"}"
        ) == 1.0,
        "{m}"
    );
    ensure!(
        sample(
            m,
            "wsgate_messages_forwarded_total{backend=\"Backend_ABC\",direction=\"upstream\"}"
        ) == 4.0,
        "3 + close: {m}"
    );
    ensure!(
        sample(
            m,
            "wsgate_messages_forwarded_total{backend=\"Backend_PQR\",direction=\"downstream\"}"
        ) == 3.0,
        "2 + close: {m}"
    );
    ensure!(
        sample(
            m,
            "wsgate_bytes_forwarded_total{backend=\"Backend_PQR\",direction=\"upstream\"}"
        ) == 2.0 * 9.0 + 5.0,
        "{m}"
    );
    ensure!(
        sample(
            m,
            "wsgate_handshake_refusals_total{status=\"401\",reason=\"unauthorized\"}"
        ) == 1.0,
        "{m}"
    );
    ensure!(
        sample(
            m,
            "wsgate_handshake_refusals_total{status=\"404\",reason=\"unknown_backend\"}"
        ) == 1.0,
        "{m}"
    );
    ensure!(
        sample(m, "wsgate_sessions_active{backend=\"Backend_ABC\"}") == 0.0,
        "{m}"
    );
    ensure!(
        sample(
            m,
            "wsgate_handshake_duration_seconds_count{backend=\"Backend_ABC\"}"
        ) == 1.0,
        "{m}"
    );
    ensure!(sample(m, "wsgate_connections_accepted_total") >= 4.0, "{m}");
    ensure!(
        sample(m, "wsgate_tls_handshakes_total{kind=\"full\"}") == 5.0
            && sample(m, "wsgate_tls_handshakes_total{kind=\"resumed\"}") == 1.0,
        "two sessions, two refusals and the resuming client's first connection full, its second resumed: {m}"
    );

    // A live session to a backend that never answers a close keeps the drain going (for
    // the close timeout) long enough to see /readyz turn 503. It counts as active as soon
    // as the client has its 101.
    let mut live = loadgen::client::connect(&proc.connect_options("Backend_SILENT")?).await?;
    let m = admin(&proc, "GET", "/metrics").await?.1;
    ensure!(
        sample(&m, "wsgate_sessions_active{backend=\"Backend_SILENT\"}") == 1.0,
        "{m}"
    );
    proc.terminate()?;
    wait_for("readyz 503 while draining", DEADLINE, || {
        let proc = &proc;
        async move { Ok(matches!(admin(proc, "GET", "/readyz").await, Ok((503, _)))) }
    })
    .await?;
    let (code, _) = expect_close(&mut live.ws).await?;
    ensure!(code == 1001);
    let status = proc.wait_exit(Duration::from_secs(20)).await?;
    ensure!(status.success(), "{status}");
    Ok(())
}

/// Asks the process to reload: SIGHUP, or `POST /reload` (which must answer 200).
async fn reload(proc: &GatewayProc, via_signal: bool) -> Result<()> {
    if via_signal {
        proc.hangup()?;
    } else {
        let (status, body) = admin(proc, "POST", "/reload").await?;
        ensure!(status == 200, "{status} {body}");
    }
    Ok(())
}

async fn reload_case(via_signal: bool) -> Result<()> {
    let bs = backends().await?;
    let url = |i: usize| bs[i].url();
    let proc = abc_and_pqr_gateway(&bs).await?;
    let mut old = loadgen::client::connect(&proc.connect_options("Backend_PQR")?).await?;

    // New table: PQR removed, XYZ added.
    let path = proc.config_path();
    let text = std::fs::read_to_string(&path)?;
    let new_text = text.replace(
        &format!("Backend_PQR = \"{}\"", url(1)),
        &format!("Backend_XYZ = \"{}\"", url(2)),
    );
    ensure!(new_text != text, "the test could not edit the config");
    std::fs::write(&path, &new_text)?;
    reload(&proc, via_signal).await?;
    wait_for("the new route", DEADLINE, || {
        let proc = &proc;
        async move {
            Ok(
                loadgen::client::connect(&proc.connect_options("Backend_XYZ")?)
                    .await
                    .is_ok(),
            )
        }
    })
    .await?;
    let (status, _) = refused(&proc.connect_options("Backend_PQR")?).await?;
    ensure!(status == 404, "removed backend gave {status}");
    // The session opened before the reload continues.
    send(&mut old.ws, Frame::text(Payload::Borrowed(b"still routed"))).await?;
    ensure!(next_non_push(&mut old.ws).await?.payload[..] == b"still routed"[..]);

    // An invalid file is rejected and the old config stays in force.
    std::fs::write(
        &path,
        format!("{new_text}\n[limits]\nmax_connections = \"lots\"\n"),
    )?;
    if via_signal {
        reload(&proc, true).await?;
        wait_for("the rejection logged", DEADLINE, || {
            let log = proc.log();
            async move { Ok(log.contains("config reload rejected")) }
        })
        .await?;
    } else {
        let (status, body) = admin(&proc, "POST", "/reload").await?;
        ensure!(
            status == 400 && body.contains("max_connections"),
            "{status} {body}"
        );
    }
    ensure!(
        loadgen::client::connect(&proc.connect_options("Backend_XYZ")?)
            .await
            .is_ok()
    );
    // The log line may follow the admin endpoint's answer by a moment.
    let logged = wait_for("the rejection logged", DEADLINE, || {
        let log = proc.log();
        async move { Ok(log.contains("config reload rejected")) }
    })
    .await;
    if logged.is_err() {
        bail!("no log line for the rejected reload:\n{}", proc.log());
    }
    Ok(())
}

#[tokio::test]
async fn reload_by_signal_adds_and_removes_backends_without_touching_sessions() -> Result<()> {
    reload_case(true).await
}

#[tokio::test]
async fn reload_by_admin_endpoint_and_bad_files_are_rejected() -> Result<()> {
    reload_case(false).await
}

#[tokio::test]
async fn a_removed_backends_sessions_active_line_stays_while_it_has_sessions_then_goes(
) -> Result<()> {
    let bs = backends().await?;
    let url = |i: usize| bs[i].url();
    let proc = abc_and_pqr_gateway(&bs).await?;
    const A: &str = "wsgate_sessions_active{backend=\"Backend_ABC\"}";
    const B: &str = "wsgate_sessions_active{backend=\"Backend_PQR\"}";
    let mut on_a = loadgen::client::connect(&proc.connect_options("Backend_ABC")?).await?;
    let mut on_b = loadgen::client::connect(&proc.connect_options("Backend_PQR")?).await?;
    let m = proc.metrics().await?;
    ensure!(
        (sample_line(&m, A), sample_line(&m, B)) == (Some(1.0), Some(1.0)),
        "{m}"
    );

    // A reload removes Backend_ABC while its session is open.
    let path = proc.config_path();
    let text = std::fs::read_to_string(&path)?;
    let new_text = text.replace(&format!("Backend_ABC = \"{}\"", url(0)), "");
    ensure!(new_text != text, "the test could not edit the config");
    std::fs::write(&path, &new_text)?;
    proc.hangup()?;
    proc.log_line("config reloaded").await?;
    let (status, _) = refused(&proc.connect_options("Backend_ABC")?).await?;
    ensure!(status == 404, "removed backend gave {status}");
    let m = proc.metrics().await?;
    ensure!(
        (sample_line(&m, A), sample_line(&m, B)) == (Some(1.0), Some(1.0)),
        "the open sessions stopped being counted:\n{m}"
    );
    echo(&mut on_a.ws, b"still routed").await?;

    // Its last session ends: its line goes; Backend_PQR's stays as it was.
    close_cleanly(&mut on_a.ws).await?;
    let gone = wait_for("Backend_ABC's line to go", DEADLINE, || {
        let proc = &proc;
        async move { Ok(sample_line(&proc.metrics().await?, A).is_none()) }
    })
    .await;
    ensure!(gone.is_ok(), "{}", proc.metrics().await?);
    let m = proc.metrics().await?;
    ensure!(sample_line(&m, B) == Some(1.0), "{m}");
    // A backend still listed keeps its line at 0 once its sessions end.
    close_cleanly(&mut on_b.ws).await?;
    wait_for("Backend_PQR's line at 0", DEADLINE, || {
        let proc = &proc;
        async move { Ok(sample_line(&proc.metrics().await?, B) == Some(0.0)) }
    })
    .await?;
    Ok(())
}

/// `opts` with `token` as its bearer token instead of the dev RS256 one.
fn with_token(
    mut opts: loadgen::client::ConnectOptions,
    token: &str,
) -> loadgen::client::ConnectOptions {
    opts.set_header("Authorization", format!("Bearer {token}"));
    opts
}

#[tokio::test]
async fn signing_keys_rotate_through_a_key_set_and_a_reload_without_refusing_anyone() -> Result<()>
{
    let bs = backends().await?;
    let proc = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), bs[0].url())],
        ..ProcOptions::default()
    })
    .await?;
    let (old_key, old_jwk) = es256_key("2026-11", "sig")?;
    let (new_key, new_jwk) = es256_key("2026-12", "sig")?;
    let old = es256_token(&old_key, Some("2026-11"))?;
    let new = es256_token(&new_key, Some("2026-12"))?;
    let opts = proc.connect_options("Backend_ABC")?;
    let jwks = proc.config_path().with_file_name("jwks.json");
    let set = |keys: &[&serde_json::Value]| -> Result<()> {
        std::fs::write(&jwks, serde_json::json!({ "keys": keys }).to_string())?;
        Ok(())
    };
    // From the PEM key to a key set holding the old key.
    set(&[&old_jwk])?;
    let path = proc.config_path();
    let text = std::fs::read_to_string(&path)?;
    let auth = format!("[auth]\nalgorithms = [\"ES256\"]\njwks = {:?}\n", jwks);
    let new_text = text.replacen("[auth]\n", &auth, 1);
    ensure!(new_text != text, "the test could not edit the config");
    std::fs::write(&path, new_text)?;
    reload(&proc, false).await?;
    let mut session = loadgen::client::connect(&with_token(opts.clone(), &old)).await?;
    let (status, body) = refused(&with_token(opts.clone(), &new)).await?;
    ensure!(
        status == 401 && body.contains("unknown key"),
        "{status} {body}"
    );

    // The new key published beside the old one: both kinds of token pass.
    set(&[&old_jwk, &new_jwk])?;
    reload(&proc, false).await?;
    // The reload says which keys are in force.
    wait_for("the key set logged", DEADLINE, || {
        let log = proc.log();
        async move { Ok(log.contains(r#"kids=["2026-11", "2026-12"]"#)) }
    })
    .await?;
    loadgen::client::connect(&with_token(opts.clone(), &new)).await?;
    loadgen::client::connect(&with_token(opts.clone(), &old)).await?;

    // The old key retired: its tokens are refused, the session it opened goes on.
    set(&[&new_jwk])?;
    reload(&proc, false).await?;
    let (status, body) = refused(&with_token(opts.clone(), &old)).await?;
    ensure!(
        status == 401 && body.contains("unknown key"),
        "{status} {body}"
    );
    loadgen::client::connect(&with_token(opts.clone(), &new)).await?;
    send(
        &mut session.ws,
        Frame::text(Payload::Borrowed(b"still here")),
    )
    .await?;
    ensure!(next_non_push(&mut session.ws).await?.payload[..] == b"still here"[..]);

    // A key set that cannot be used is rejected and the one in force stays.
    std::fs::write(&jwks, "{ \"keys\": [] }")?;
    let (status, body) = admin(&proc, "POST", "/reload").await?;
    ensure!(status == 400 && body.contains("jwks"), "{status} {body}");
    loadgen::client::connect(&with_token(opts, &new)).await?;
    Ok(())
}

/// A verifier (`[auth]` defaults, ES256) on the key set `keys`, written to a file of its
/// own.
fn verifier_on(
    keys: &[&serde_json::Value],
) -> Result<Result<gateway::auth::Verifier, (&'static str, String)>> {
    let path = support::process::temp_dir("jwks")?.join("jwks.json");
    std::fs::write(&path, serde_json::json!({ "keys": keys }).to_string())?;
    let auth = gateway::config::AuthConfig {
        algorithms: vec!["ES256".into()],
        jwks: Some(path.clone()),
        ..gateway::config::AuthConfig::default()
    };
    let verifier = gateway::auth::Verifier::from_config(&auth);
    let _ = std::fs::remove_dir_all(path.parent().context("no folder")?);
    Ok(verifier)
}

#[test]
fn a_key_set_verifies_with_the_key_the_kid_names_so_keys_can_rotate() -> Result<()> {
    use gateway::auth::AuthError;
    let (old_key, old) = es256_key("old", "sig")?;
    let (new_key, new) = es256_key("new", "sig")?;
    let (enc_key, enc) = es256_key("enc", "enc")?;
    let hmac = serde_json::json!({ "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" });
    let both = verifier_on(&[&old, &new, &enc, &hmac])?
        .map_err(|(key, problem)| anyhow::anyhow!("{key}: {problem}"))?;
    let verify = |verifier: &gateway::auth::Verifier, pkcs8: &[u8], kid: Option<&str>| {
        es256_token(pkcs8, kid).map(|t| verifier.verify(&t).err())
    };
    // During a rotation both keys are in the set: tokens of either pass.
    ensure!(verify(&both, &old_key, Some("old"))?.is_none());
    ensure!(verify(&both, &new_key, Some("new"))?.is_none());
    // Without a kid, each key is tried.
    ensure!(verify(&both, &new_key, None)?.is_none());
    // A kid picks its key and no other: a token claiming the wrong one fails.
    ensure!(verify(&both, &new_key, Some("old"))? == Some(AuthError::BadSignature));
    // Encryption keys and symmetric keys are not signing keys here.
    ensure!(verify(&both, &enc_key, Some("enc"))? == Some(AuthError::UnknownKey));
    ensure!(verify(&both, &enc_key, None)? == Some(AuthError::BadSignature));
    // The old key removed: its tokens are refused, the new key's still pass.
    let rotated =
        verifier_on(&[&new])?.map_err(|(key, problem)| anyhow::anyhow!("{key}: {problem}"))?;
    ensure!(verify(&rotated, &old_key, Some("old"))? == Some(AuthError::UnknownKey));
    ensure!(verify(&rotated, &new_key, Some("new"))?.is_none());
    Ok(())
}

#[test]
fn a_key_without_a_kid_is_tried_for_a_token_whose_kid_the_set_lacks() -> Result<()> {
    // Some identity providers publish keys without a `kid` (RFC 7517 makes it optional)
    // while their tokens carry one; Envoy tries such keys too.
    use gateway::auth::AuthError;
    let (named_key, named) = es256_key("named", "sig")?;
    let (bare_key, mut bare) = es256_key("unused", "sig")?;
    bare.as_object_mut()
        .context("jwk is an object")?
        .remove("kid");
    let (stranger_key, _) = es256_key("stranger", "sig")?;
    let set = verifier_on(&[&named, &bare])?
        .map_err(|(key, problem)| anyhow::anyhow!("{key}: {problem}"))?;
    let verify =
        |pkcs8: &[u8], kid: Option<&str>| es256_token(pkcs8, kid).map(|t| set.verify(&t).err());
    ensure!(verify(&bare_key, Some("issued-by-the-idp"))?.is_none());
    ensure!(verify(&bare_key, None)?.is_none());
    // A kid the set holds still picks that key alone.
    ensure!(verify(&named_key, Some("named"))?.is_none());
    ensure!(verify(&bare_key, Some("named"))? == Some(AuthError::BadSignature));
    // A key neither named nor without a kid: the set lacks it (a jwks_url fetches again).
    ensure!(verify(&named_key, Some("other"))? == Some(AuthError::UnknownKey));
    ensure!(verify(&stranger_key, Some("stranger"))? == Some(AuthError::UnknownKey));
    Ok(())
}

#[test]
fn a_key_set_of_rsa_and_ec_keys_verifies_tokens_of_both_families() -> Result<()> {
    // An identity provider publishing an RSA and an EC key (both signing): RSA and EC
    // algorithms could not be named together, so one family's tokens were all refused.
    use gateway::auth::AuthError;
    let private = std::fs::read(certs().join("jwt-private.pem"))?;
    let mut rsa_jwk = serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private)?,
        jsonwebtoken::Algorithm::RS256,
    )?)?;
    // The kid the sample's token names.
    rsa_jwk["kid"] = loadgen::token::SAMPLE_KID.into();
    let (ec_key, ec_jwk) = es256_key("ec", "sig")?;
    let path = support::process::temp_dir("jwks")?.join("jwks.json");
    std::fs::write(
        &path,
        serde_json::json!({ "keys": [&rsa_jwk, &ec_jwk] }).to_string(),
    )?;
    let auth = |algorithms: &[&str]| gateway::config::AuthConfig {
        algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        jwks: Some(path.clone()),
        ..gateway::config::AuthConfig::default()
    };
    let both = gateway::auth::Verifier::from_config(&auth(&["RS256", "ES256"]))
        .map_err(|(key, problem)| anyhow::anyhow!("{key}: {problem}"))?;
    ensure!(
        both.kids() == [loadgen::token::SAMPLE_KID, "ec"],
        "{:?}",
        both.kids()
    );
    let rsa_token = rs256(&loadgen::token::sample_claims())?;
    // With and without a kid, whichever key comes first in the set.
    ensure!(
        both.verify(&rsa_token).err().is_none(),
        "{:?}",
        both.verify(&rsa_token).err()
    );
    ensure!(both
        .verify(&es256_token(&ec_key, Some("ec"))?)
        .err()
        .is_none());
    ensure!(both.verify(&es256_token(&ec_key, None)?).err().is_none());
    // A kid naming the other family's key, and an algorithm not named, still fail.
    let wrong_kid = es256_token(&ec_key, Some(loadgen::token::SAMPLE_KID))?;
    ensure!(both.verify(&wrong_kid).is_err());
    let ec_only = gateway::auth::Verifier::from_config(&auth(&["ES256"]))
        .map_err(|(key, problem)| anyhow::anyhow!("{key}: {problem}"))?;
    ensure!(ec_only.kids() == ["ec"], "{:?}", ec_only.kids());
    ensure!(ec_only.verify(&rsa_token).err() == Some(AuthError::Malformed));
    // One PEM key is of one family: naming both is refused there.
    let pem = gateway::config::AuthConfig {
        algorithms: vec!["RS256".into(), "ES256".into()],
        ..gateway::config::AuthConfig::default()
    };
    let refused = gateway::auth::Verifier::from_config(&pem).err();
    ensure!(
        refused
            .as_ref()
            .is_some_and(|(key, problem)| *key == "algorithms" && problem.contains("key set")),
        "{refused:?}"
    );
    let _ = std::fs::remove_dir_all(path.parent().context("no folder")?);
    Ok(())
}

#[test]
fn a_key_set_without_a_usable_key_or_with_a_repeated_kid_is_refused() -> Result<()> {
    let (_, a) = es256_key("a", "sig")?;
    let (_, a_again) = es256_key("a", "sig")?;
    let (_, enc) = es256_key("e", "enc")?;
    let hmac = serde_json::json!({ "kty": "oct", "kid": "h", "k": "c2VjcmV0" });
    for (keys, says) in [
        (vec![&enc, &hmac], "no EC signing key"),
        (vec![&a, &a_again], "two keys with kid"),
    ] {
        let refused = verifier_on(&keys)?.err();
        ensure!(
            refused
                .as_ref()
                .is_some_and(|(key, problem)| *key == "jwks" && problem.contains(says)),
            "{refused:?}"
        );
    }
    Ok(())
}

/// A gateway process verifying ES256 tokens with the key set at `idp`'s URL, refreshed
/// every `refresh`, routing `Backend_ABC` to a demo backend.
async fn gateway_on_idp(
    idp: &support::idp::Idp,
    refresh: &str,
    bs: &[demo_services::RunningBackend],
) -> Result<GatewayProc> {
    GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), bs[0].url())],
        auth_toml: format!(
            "algorithms = [\"ES256\"]\njwks_url = {:?}\njwks_refresh = {refresh:?}\njwks_ca = {:?}",
            idp.url(),
            certs().join("ca.crt")
        ),
        ..ProcOptions::default()
    })
    .await
}

/// A provider about to rotate: two ES256 signing keys `k1` and `k2` (their JWKs and a
/// token of each), `k1` published.
struct Rotation {
    idp: support::idp::Idp,
    jwk1: serde_json::Value,
    jwk2: serde_json::Value,
    t1: String,
    t2: String,
}

impl Rotation {
    async fn start(https: bool) -> Result<Rotation> {
        let idp = support::idp::Idp::start(https).await?;
        let (k1, jwk1) = es256_key("k1", "sig")?;
        let (k2, jwk2) = es256_key("k2", "sig")?;
        let (t1, t2) = (es256_token(&k1, Some("k1"))?, es256_token(&k2, Some("k2"))?);
        idp.publish(&[&jwk1]);
        Ok(Rotation {
            idp,
            jwk1,
            jwk2,
            t1,
            t2,
        })
    }
}

/// Waits until a connection with `token` is let through.
async fn until_admitted(
    opts: &loadgen::client::ConnectOptions,
    token: &str,
    within: Duration,
) -> Result<()> {
    wait_for("the token admitted", within, || async {
        Ok(admitted(opts, token).await)
    })
    .await
}

/// Whether a connection with `token` is let through.
async fn admitted(opts: &loadgen::client::ConnectOptions, token: &str) -> bool {
    loadgen::client::connect(&with_token(opts.clone(), token))
        .await
        .is_ok()
}

#[tokio::test]
async fn keys_come_from_the_providers_url_and_its_rotations_need_no_reload() -> Result<()> {
    let Rotation {
        idp,
        jwk1,
        jwk2,
        t1,
        t2,
    } = Rotation::start(true).await?;
    let bs = backends().await?;
    // Over HTTPS, trusting jwks_ca; refreshed hourly, so only a rotation fetches again.
    let proc = gateway_on_idp(&idp, "1h", &bs).await?;
    let fetched_by = tokio::time::Instant::now();
    let opts = proc.connect_options("Backend_ABC")?;
    ensure!(idp.hits() == 1, "{} fetches at start", idp.hits());
    ensure!(
        admitted(&opts, &t1).await,
        "a token of the published key was refused"
    );

    // The provider rotates. Once the pause between refetches has passed since the start's
    // fetch (the time itself is what is waited for), the first token of the new key has
    // the gateway fetch the set again, waits for it and is let through: no one is refused.
    idp.publish(&[&jwk1, &jwk2]);
    tokio::time::sleep_until(fetched_by + UNKNOWN_KEY_REFETCH_AFTER + Duration::from_millis(200))
        .await;
    ensure!(
        admitted(&opts, &t2).await,
        "the first token of the rotated key was refused:\n{}",
        proc.log()
    );
    ensure!(idp.hits() == 2, "{} fetches after the rotation", idp.hits());
    ensure!(admitted(&opts, &t1).await, "the old key stopped working");
    ensure!(
        proc.log().contains(r#"kids=["k1", "k2"]"#),
        "the refreshed key set was not logged:\n{}",
        proc.log()
    );
    // Tokens naming made-up keys do not make the gateway hammer the provider, and
    // between refetches they are refused without waiting for one.
    let hits = idp.hits();
    let (made_up, _) = es256_key("made-up", "sig")?;
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let forged = es256_token(&made_up, Some("made-up"))?;
        let (status, _) = refused(&with_token(opts.clone(), &forged)).await?;
        ensure!(status == 401);
    }
    ensure!(
        started.elapsed() < 5 * UNKNOWN_KEY_WAIT,
        "20 refusals took {:?}: they waited for refetches",
        started.elapsed()
    );
    ensure!(
        idp.hits() <= hits + 1,
        "{} fetches for 20 unknown kids",
        idp.hits() - hits
    );

    // A reload fetches too: the old key retired at the provider is refused at once.
    idp.publish(&[&jwk2]);
    reload(&proc, false).await?;
    let (status, body) = refused(&with_token(opts.clone(), &t1)).await?;
    ensure!(
        status == 401 && body.contains("unknown key"),
        "{status} {body}"
    );
    ensure!(admitted(&opts, &t2).await);
    Ok(())
}

#[tokio::test]
async fn a_reloads_key_set_fetch_is_counted_with_the_refreshes() -> Result<()> {
    let Rotation { idp, jwk2, t2, .. } = Rotation::start(false).await?;
    let bs = backends().await?;
    // No refresh falls due in the test: every fetch after the start's is a reload's.
    let proc = gateway_on_idp(&idp, "1h", &bs).await?;
    let opts = proc.connect_options("Backend_ABC")?;
    let proc = &proc;
    let fetches = |result: &'static str| async move {
        proc.metric(&format!("wsgate_jwks_fetches_total{{result=\"{result}\"}}"))
            .await
    };
    ensure!(fetches("ok").await? == 0.0 && fetches("error").await? == 0.0);

    idp.publish(&[&jwk2]);
    reload(proc, false).await?;
    ensure!(idp.hits() == 2, "{} fetches", idp.hits());
    ensure!(
        fetches("ok").await? == 1.0,
        "the reload's fetch counted {} times",
        fetches("ok").await?
    );
    // A reload whose fetch fails is refused, counted as a failed fetch, and the keys
    // in force stay.
    idp.answer(503, "down for maintenance".into());
    let (status, body) = admin(proc, "POST", "/reload").await?;
    ensure!(
        status == 400 && body.contains("jwks_url"),
        "{status} {body}"
    );
    ensure!(
        fetches("error").await? == 1.0 && fetches("ok").await? == 1.0,
        "after a failed reload: {} failed and {} successful fetches counted",
        fetches("error").await?,
        fetches("ok").await?
    );
    ensure!(admitted(&opts, &t2).await, "the keys in force were dropped");
    Ok(())
}

#[tokio::test]
async fn a_failing_provider_leaves_the_keys_in_force_until_it_answers_again() -> Result<()> {
    let Rotation {
        idp, jwk2, t1, t2, ..
    } = Rotation::start(false).await?;
    let bs = backends().await?;
    let proc = gateway_on_idp(&idp, "1s", &bs).await?;
    let opts = proc.connect_options("Backend_ABC")?;
    ensure!(admitted(&opts, &t1).await);

    idp.answer(503, "down for maintenance".into());
    wait_for("a failed refresh counted", DEADLINE, || async {
        Ok(proc
            .metric("wsgate_jwks_fetches_total{result=\"error\"}")
            .await?
            >= 1.0)
    })
    .await?;
    ensure!(
        proc.log().contains("JWT key set fetch failed"),
        "{}",
        proc.log()
    );
    ensure!(admitted(&opts, &t1).await, "the keys in force were dropped");

    // Back, with a rotated set: the next refresh takes it.
    idp.publish(&[&jwk2]);
    until_admitted(&opts, &t2, DEADLINE).await?;
    ensure!(!admitted(&opts, &t1).await, "the retired key still works");
    ensure!(proc.log().contains("JWT key set fetched again"));
    Ok(())
}

#[tokio::test]
async fn a_start_without_the_providers_key_set_fails_naming_jwks_url() -> Result<()> {
    let idp = support::idp::Idp::start(false).await?;
    let bs = backends().await?;
    for (status, body, says) in [
        (404, "not here".to_owned(), "answered HTTP 404"),
        (200, r#"{"keys":[]}"#.to_owned(), "no EC signing key"),
        (200, "<html>".to_owned(), "not a JSON Web Key Set"),
    ] {
        idp.answer(status, body);
        let Err(e) = gateway_on_idp(&idp, "1h", &bs).await else {
            bail!("the gateway started though the key set answered {status}");
        };
        let e = e.to_string();
        ensure!(
            e.contains("auth.jwks_url") && e.contains(says) && e.contains("exit status: 64"),
            "{e}"
        );
    }
    // Unreachable, and HTTPS from a provider the system's roots do not trust.
    let https = support::idp::Idp::start(true).await?;
    // (A machine with no trusted roots at all says so instead.)
    for (url, says) in [
        (
            "http://127.0.0.1:9/certs".to_owned(),
            ["cannot connect", "cannot connect"],
        ),
        (
            https.url(),
            ["cannot connect", "no trusted root certificates"],
        ),
    ] {
        let Err(e) = GatewayProc::start(ProcOptions {
            backends: vec![("Backend_ABC".into(), bs[0].url())],
            auth_toml: format!("algorithms = [\"ES256\"]\njwks_url = {url:?}"),
            ..ProcOptions::default()
        })
        .await
        else {
            bail!("the gateway started with its key set at {url}");
        };
        let e = e.to_string();
        ensure!(
            e.contains("auth.jwks_url") && says.iter().any(|s| e.contains(s)),
            "{e}"
        );
    }
    ensure!(https.hits() == 0, "the untrusted provider got a request");
    Ok(())
}

#[tokio::test]
async fn a_reload_waiting_on_a_silent_provider_holds_up_neither_the_admin_endpoints_nor_clients(
) -> Result<()> {
    let Rotation { idp, t1, .. } = Rotation::start(false).await?;
    let bs = backends().await?;
    let proc = gateway_on_idp(&idp, "1h", &bs).await?;
    let opts = proc.connect_options("Backend_ABC")?;
    ensure!(admitted(&opts, &t1).await);

    // A provider that takes connections and never answers; the file now names it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_url = format!("http://{}/certs", silent.local_addr()?);
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    let holder = tokio::spawn(async move {
        while let Ok((tcp, _)) = silent.accept().await {
            let _ = held_tx.send(tcp);
        }
    });
    let file = std::fs::read_to_string(proc.config_path())?;
    ensure!(
        file.contains(&idp.url()),
        "the provider's URL is not in the file"
    );
    std::fs::write(proc.config_path(), file.replace(&idp.url(), &silent_url))?;

    let addr = proc.admin_addr().context("no admin address in the log")?;
    let reload = tokio::spawn(async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut out)).await??;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    });
    // The reload's fetch is under way, and waits.
    let _fetch = tokio::time::timeout(DEADLINE, held.recv())
        .await
        .context("the reload did not fetch")?;
    for path in ["/healthz", "/metrics"] {
        let (status, _) = tokio::time::timeout(Duration::from_secs(2), admin(&proc, "GET", path))
            .await
            .with_context(|| format!("{path} waited for the reload"))??;
        ensure!(status == 200, "{path} answered {status}");
    }
    ensure!(admitted(&opts, &t1).await, "a client waited for the reload");
    ensure!(
        !reload.is_finished(),
        "the reload did not wait for the provider"
    );

    // The fetch times out: the reload is rejected, and the keys in force stay.
    let answer = reload.await??;
    ensure!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("auth.jwks_url"),
        "{answer}"
    );
    ensure!(admitted(&opts, &t1).await, "the keys in force were dropped");
    holder.abort();
    Ok(())
}

#[tokio::test]
async fn a_reload_that_lowers_max_connections_counts_the_connections_already_open() -> Result<()> {
    let bs = backends().await?;
    let proc = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), bs[0].url())],
        extra_toml: "[limits]\nmax_connections = 10\n".into(),
        ..ProcOptions::default()
    })
    .await?;
    let opts = proc.connect_options("Backend_ABC")?;
    let first = loadgen::client::connect(&opts).await?;
    let _second = loadgen::client::connect(&opts).await?;
    let path = proc.config_path();
    let text = std::fs::read_to_string(&path)?;
    let lowered = text.replace("max_connections = 10", "max_connections = 2");
    ensure!(lowered != text, "the test could not edit the config");
    std::fs::write(&path, lowered)?;
    reload(&proc, false).await?;
    let (status, reason) = refused(&opts).await?;
    ensure!(
        status == 503 && reason.contains("over the connection limit"),
        "a third connection under a cap of 2 with 2 open: {status} {reason}"
    );
    // A place freed by a connection from before the reload is a place under the new cap.
    drop(first);
    wait_for("a freed place", DEADLINE, || {
        let opts = &opts;
        async move { Ok(loadgen::client::connect(opts).await.is_ok()) }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_reload_names_start_up_only_keys_that_differ_from_what_the_gateway_started_with(
) -> Result<()> {
    let bs = backends().await?;
    let proc = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), bs[0].url())],
        server_toml: "workers = 2".into(),
        ..ProcOptions::default()
    })
    .await?;
    let path = proc.config_path();
    let started = std::fs::read_to_string(&path)?;
    let one = started.replace("workers = 2", "workers = 1");
    ensure!(one != started, "the test could not edit the config");
    let answer = |text: String| {
        let (path, proc) = (&path, &proc);
        async move {
            std::fs::write(path, text)?;
            let (status, body) = admin(proc, "POST", "/reload").await?;
            ensure!(status == 200, "{status} {body}");
            Ok::<_, anyhow::Error>(body)
        }
    };
    let body = answer(one.clone()).await?;
    ensure!(
        body.contains("server.workers"),
        "a changed key not named: {body}"
    );
    // Put back as it started with: nothing waits for a restart, whatever the last file said.
    let body = answer(started).await?;
    ensure!(
        body.trim() == "reloaded",
        "the key put back was named: {body}"
    );
    let body = answer(one).await?;
    ensure!(body.contains("server.workers"), "{body}");
    Ok(())
}

#[tokio::test]
async fn a_client_that_leaves_during_the_backend_connect_is_logged_and_counted_as_499() -> Result<()>
{
    // A backend that accepts and never answers: the upgrade waits on its connect.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/silent", silent.local_addr()?);
    let proc = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), url)],
        extra_toml: "[timeouts]\nbackend_connect = \"30s\"\n".to_owned(),
        ..ProcOptions::default()
    })
    .await?;
    let mut tls = tls_connect_to(proc.addr).await?;
    let token = rs256(&claims_with(|_| {}))?;
    let request = format!(
        "GET /gateway HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nID: Backend_ABC\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    // The gateway is connecting to the backend once the backend has the connection.
    let (_held, _) = tokio::time::timeout(DEADLINE, silent.accept()).await??;
    drop(tls);
    let metric = "wsgate_handshake_refusals_total{status=\"499\",reason=\"client_closed\"}";
    wait_for("the 499 to be counted", DEADLINE, || {
        let proc = &proc;
        async move { Ok(sample(&proc.metrics().await?, metric) == 1.0) }
    })
    .await?;
    // The line is written just after the count; it names the backend the client waited
    // for.
    let line = proc.log_line("client left before its answer").await?;
    ensure!(line.contains("Backend_ABC"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_huge_backend_id_is_cut_short_in_the_refusal_log_line() -> Result<()> {
    // The ID went to the log whole: a 12 KB header made a 12 KB line per refusal.
    let proc = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), "ws://127.0.0.1:9/abc".into())],
        ..ProcOptions::default()
    })
    .await?;
    let mut tls = tls_connect_to(proc.addr).await?;
    let token = rs256(&claims_with(|_| {}))?;
    let id = format!("Backend_{}", "Z".repeat(12 << 10));
    let request = format!(
        "GET /gateway HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nID: {id}\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    let mut answer = vec![0; 12];
    tokio::time::timeout(DEADLINE, tls.read_exact(&mut answer)).await??;
    ensure!(answer.starts_with(b"HTTP/1.1 404"), "{answer:?}");
    let line = proc.log_line("unknown backend ID").await?;
    // The start of the ID is there to recognise, and the line stays short.
    let start: String = line.chars().take(300).collect();
    ensure!(line.contains("Backend_ZZZ"), "{start}");
    ensure!(line.contains('…'), "{start}");
    ensure!(line.len() < 512, "a {}-byte line: {start}…", line.len());
    Ok(())
}

#[tokio::test]
async fn requests_the_http_parser_refuses_are_logged_and_counted_too() -> Result<()> {
    let proc = GatewayProc::start(ProcOptions {
        // Never connected to: both requests are refused before routing.
        backends: vec![("Backend_ABC".into(), "ws://127.0.0.1:9/abc".into())],
        extra_toml: "[limits]\nmax_header_bytes = 8192\n\n[timeouts]\nheader_read = \"300ms\"\n"
            .to_owned(),
        ..ProcOptions::default()
    })
    .await?;
    // A head over max_header_bytes: hyper answers 431 itself.
    let mut tls = tls_connect_to(proc.addr).await?;
    let big = format!(
        "GET /gateway HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(12_000)
    );
    let _ = tls.write_all(big.as_bytes()).await;
    let _ = tls.flush().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut answer)).await?;
    // A head that never ends: closed at header_read, with no answer.
    let mut slow = tls_connect_to(proc.addr).await?;
    slow.write_all(b"GET /gateway HTTP/1.1\r\nHost: loc")
        .await?;
    slow.flush().await?;
    let mut none = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, slow.read_to_end(&mut none)).await?;
    ensure!(none.is_empty(), "the cut-off head got an answer: {none:?}");
    // HTTP/2's connection preface: hyper closes with no answer, which is counted apart
    // from its 400s.
    let mut h2 = tls_connect_to(proc.addr).await?;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    h2.flush().await?;
    let mut nothing = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, h2.read_to_end(&mut nothing)).await?;
    ensure!(nothing.is_empty(), "the preface got an answer: {nothing:?}");

    let expected = [
        (
            "wsgate_handshake_refusals_total{status=\"431\",reason=\"header_too_large\"}",
            1.0,
        ),
        (
            "wsgate_handshake_refusals_total{status=\"408\",reason=\"header_timeout\"}",
            1.0,
        ),
        (
            "wsgate_handshake_refusals_total{status=\"400\",reason=\"http2_preface\"}",
            1.0,
        ),
        (
            "wsgate_handshake_refusals_total{status=\"400\",reason=\"bad_request\"}",
            0.0,
        ),
    ];
    let logged = |log: &str| {
        ["status=431", "status=408", "status=400"]
            .iter()
            .all(|status| {
                log.lines()
                    .any(|l| l.contains("refused") && l.contains(status))
            })
    };
    let deadline = std::time::Instant::now() + DEADLINE;
    let seen = loop {
        let seen = proc.metrics().await?;
        let done = expected.iter().all(|(m, n)| sample(&seen, m) == *n) && logged(&proc.log());
        if done || std::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling, bounded by the deadline
    };
    for (metric, n) in expected {
        ensure!(sample(&seen, metric) == n, "{metric} is not {n}:\n{seen}");
    }
    ensure!(logged(&proc.log()), "no refusal lines:\n{}", proc.log());
    Ok(())
}

#[tokio::test]
async fn a_sighup_while_the_gateway_starts_is_a_reload_once_it_serves() -> Result<()> {
    // A SIGHUP (a `systemctl reload`, a log rotation) that came before the handler was
    // set up ended the process: here it comes while the start waits for the key set.
    let (key, jwk) = es256_key("k1", "sig")?;
    let body = serde_json::json!({ "keys": [jwk] }).to_string();
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let provider = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/certs", provider.local_addr()?);
    let bs = backends().await?;
    let (pid_tx, mut pid_rx) = tokio::sync::mpsc::unbounded_channel();
    let starting = tokio::spawn(GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), bs[0].url())],
        auth_toml: format!("algorithms = [\"ES256\"]\njwks_url = {url:?}"),
        spawned: Some(pid_tx),
        ..ProcOptions::default()
    }));
    let pid = tokio::time::timeout(DEADLINE, pid_rx.recv())
        .await?
        .context("no process id")?;
    // The start's fetch is held while the signal comes.
    let (mut fetch, _) = tokio::time::timeout(DEADLINE, provider.accept()).await??;
    support::process::signal(pid, "HUP")?;
    // Then it is answered, as is every fetch after it (the reload's).
    serve_once(&mut fetch, &answer).await?;
    drop(fetch);
    let later = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = provider.accept().await {
            let _ = serve_once(&mut tcp, &answer).await;
        }
    });
    let proc = starting.await??;
    wait_for("the reload", DEADLINE, || {
        let reloaded = proc.log().contains("config reloaded");
        async move { Ok(reloaded) }
    })
    .await?;
    let opts = proc.connect_options("Backend_ABC")?;
    ensure!(
        admitted(&opts, &es256_token(&key, Some("k1"))?).await,
        "a client was refused after the reload:\n{}",
        proc.log()
    );
    later.abort();
    Ok(())
}

/// Reads an HTTP request head from `tcp` and writes `answer`.
async fn serve_once(tcp: &mut tokio::net::TcpStream, answer: &str) -> Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).await? == 1 {
        head.push(byte[0]);
    }
    tcp.write_all(answer.as_bytes()).await?;
    Ok(())
}

#[tokio::test]
async fn tls_handshakes_that_fail_are_counted_by_reason() -> Result<()> {
    // They were logged at debug only and counted nowhere: a certificate clients do not
    // trust, or a port scan, left no trace at the default level.
    let bs = backends().await?;
    let proc = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), bs[0].url())],
        extra_toml: "[timeouts]\ntls_handshake = \"500ms\"\n".into(),
        ..ProcOptions::default()
    })
    .await?;
    // Until the gateway drops it: what it sent.
    let until_dropped = async |sent: &[u8]| -> Result<Vec<u8>> {
        let mut tcp = tokio::net::TcpStream::connect(proc.addr).await?;
        tcp.write_all(sent).await?;
        let mut answer = Vec::new();
        tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer)).await??;
        Ok(answer)
    };
    // Plain HTTP on the TLS port: refused with an alert record.
    let answer = until_dropped(b"GET /gateway HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    ensure!(answer.first() == Some(&21), "no alert: {answer:?}");
    // Silent: dropped at the handshake timeout.
    until_dropped(b"").await?;
    // Gone before its ClientHello.
    drop(tokio::net::TcpStream::connect(proc.addr).await?);
    let seen = wait_for("the failures counted", DEADLINE, || async {
        let m = proc.metrics().await?;
        let counted = ["refused", "timeout", "client_closed"].iter().all(|r| {
            sample(
                &m,
                &format!("wsgate_tls_handshake_failures_total{{reason=\"{r}\"}}"),
            ) == 1.0
        });
        Ok(counted)
    })
    .await;
    ensure!(seen.is_ok(), "{}", proc.metrics().await?);
    // A good client is still served, and counted as a handshake, not a failure.
    let opts = proc.connect_options("Backend_ABC")?;
    let mut c = loadgen::client::connect(&opts).await?;
    echo(&mut c.ws, b"still here").await?;
    let m = proc.metrics().await?;
    ensure!(
        sample(&m, "wsgate_tls_handshakes_total{kind=\"full\"}") >= 1.0
            && sample(&m, "wsgate_tls_handshake_failures_total{reason=\"io\"}") == 0.0,
        "{m}"
    );
    Ok(())
}

#[tokio::test]
async fn a_full_admin_listener_closes_its_oldest_idle_connection_for_a_health_check() -> Result<()>
{
    // Connections holding half a request used to fill every place, and the listener then
    // closed each newcomer: a liveness probe failed for as long as they stayed.
    let bs = backends().await?;
    let proc = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), bs[0].url())],
        ..ProcOptions::default()
    })
    .await?;
    let addr = proc.admin_addr().context("no admin address in the log")?;
    let mut held = Vec::new();
    for _ in 0..gateway::admin::MAX_CONNECTIONS {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: adm").await?;
        held.push(tcp);
    }
    // Every place is taken (the last held connection is the newest); a health check
    // still gets its answer.
    let (status, body) = admin(&proc, "GET", "/healthz").await?;
    ensure!(status == 200, "{status} {body}");
    // The oldest held connection made room: it is closed without an answer (with a reset
    // when its half request was still unread in the gateway's socket).
    let mut oldest = held.remove(0);
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, oldest.read_to_end(&mut answer))
        .await
        .context("the oldest idle connection was kept")?;
    if let Err(e) = read {
        ensure!(e.kind() == std::io::ErrorKind::ConnectionReset, "{e}");
    }
    ensure!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // The newest held one is still open: it finishes its request and is answered.
    let newest = held.last_mut().context("no held connection")?;
    newest.write_all(b"\r\nConnection: close\r\n\r\n").await?;
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, newest.read_to_end(&mut answer))
        .await
        .context("the newest held connection was not answered")??;
    let answer = String::from_utf8_lossy(&answer);
    ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn a_reloaded_jwks_refresh_counts_from_the_reload() -> Result<()> {
    // A new interval used to apply only once the old one (an hour here) had run out.
    let Rotation { idp, .. } = Rotation::start(false).await?;
    let bs = backends().await?;
    let proc = gateway_on_idp(&idp, "1h", &bs).await?;
    ensure!(idp.hits() == 1, "{} fetches at start", idp.hits());
    let file = std::fs::read_to_string(proc.config_path())?;
    ensure!(file.contains("jwks_refresh = \"1h\""), "{file}");
    std::fs::write(
        proc.config_path(),
        file.replace("jwks_refresh = \"1h\"", "jwks_refresh = \"1s\""),
    )?;
    let (status, body) = admin(&proc, "POST", "/reload").await?;
    ensure!(status == 200, "{status} {body}");
    ensure!(idp.hits() == 2, "{} fetches after the reload", idp.hits());
    // The reload's fetch is the last one: the next is a second after it, not an hour
    // after the start's.
    wait_for("a fetch at the new interval", DEADLINE, || async {
        Ok(idp.hits() >= 3)
    })
    .await
    .with_context(|| proc.log())?;
    Ok(())
}

#[tokio::test]
async fn a_reload_waiting_on_its_provider_does_not_hold_up_the_exit() -> Result<()> {
    // The runtime waited for the reload's thread at exit: up to the fetch's 10 s past
    // the drain.
    let Rotation { idp, .. } = Rotation::start(false).await?;
    let bs = backends().await?;
    let mut proc = gateway_on_idp(&idp, "1h", &bs).await?;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_url = format!("http://{}/certs", silent.local_addr()?);
    let file = std::fs::read_to_string(proc.config_path())?;
    std::fs::write(proc.config_path(), file.replace(&idp.url(), &silent_url))?;
    proc.hangup()?;
    // The reload's fetch is under way, and waits.
    let _fetch = tokio::time::timeout(DEADLINE, silent.accept())
        .await
        .context("the reload did not fetch")??;
    let signalled = std::time::Instant::now();
    proc.terminate()?;
    let status = proc.wait_exit(DEADLINE).await?;
    let took = signalled.elapsed();
    ensure!(status.success(), "exit status {status}");
    ensure!(
        took < Duration::from_secs(5),
        "the exit took {took:?}, waiting on the reload"
    );
    Ok(())
}

#[tokio::test]
async fn a_request_id_goes_to_the_backend_the_client_and_the_log_lines() -> Result<()> {
    let mut probe =
        support::probe::Probe::start(support::probe::Mode::Accept { protocol: None }).await?;
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_PROBE".into(), probe.url())],
        server_toml: "request_id_header = \"X-Request-Id\"\n".into(),
        ..ProcOptions::default()
    })
    .await?;
    let config = loadgen::tls::client_config(Some(&certs().join("ca.crt")), false)
        .map_err(anyhow::Error::msg)?;
    let id_in = |head: &str| -> Option<String> {
        head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_owned())
        })
    };
    // The client's own id is replaced: a fresh one reaches the backend and comes back.
    let forged = "X-Request-Id: forged\r\n";
    let session =
        support::tls_client::tls_session_with(gw.addr, config.clone(), "localhost", forged).await?;
    let answered = id_in(&session.head).context("no id in the 101")?;
    ensure!(
        uuid::Uuid::parse_str(&answered).is_ok(),
        "not a UUID: {answered:?}"
    );
    let support::probe::Event::Handshake(headers) = probe.next().await? else {
        bail!("expected the handshake")
    };
    let told = support::probe::values(&headers, "x-request-id");
    ensure!(told == [answered.as_str()], "the backend was told {told:?}");
    let line = gw.log_line("session ended").await?;
    ensure!(line.contains(&answered), "{line}");
    // A refusal carries one too, and its log line names it; each request gets its own.
    let mut tls = tls_connect_to(gw.addr).await?;
    tls.write_all(b"GET /elsewhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, tls.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer);
    ensure!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let refused_id = id_in(&answer).context("no id in the 404")?;
    ensure!(refused_id != answered, "two requests, one id");
    let line = gw.log_line("refused").await?;
    ensure!(line.contains(&refused_id), "{line}");
    Ok(())
}

/// With `[admin] token_file`, reloads and the sessions' view and close need the secret as
/// a bearer token; probes and metrics do not; the secret is never logged; a reload puts a
/// new secret from the file in force.
#[tokio::test]
async fn an_admin_token_guards_reload_and_sessions_but_not_probes_or_metrics() -> Result<()> {
    let dir = support::process::temp_dir("admin-token")?;
    let file = dir.join("admin-token");
    let first = "first-secret-0123456789abcdef";
    std::fs::write(&file, format!("{first}\n"))?;
    let (_demo, gw) = support::process::abc_gateway_with(ProcOptions {
        admin_toml: format!("token_file = {file:?}\n"),
        ..ProcOptions::default()
    })
    .await?;
    let mut c = loadgen::client::connect(&gw.connect_options("Backend_ABC")?).await?;
    let bearer = |secret: &str| format!("Authorization: Bearer {secret}\r\n");
    for (method, path) in [
        ("GET", "/sessions"),
        ("POST", "/sessions/close?all=true"),
        ("POST", "/reload"),
    ] {
        for headers in [
            String::new(),
            bearer("wrong-secret-0123456789abcdef"),
            bearer(&first[..first.len() - 1]),
            "Authorization: Basic Zmlyc3Q=\r\n".to_owned(),
        ] {
            let text = admin_response_as(&gw, method, path, &headers).await?;
            ensure!(
                text.starts_with("HTTP/1.1 401")
                    && text.contains("admin token required")
                    && text
                        .to_ascii_lowercase()
                        .contains("www-authenticate: bearer"),
                "{method} {path} with {headers:?}: {text}"
            );
        }
    }
    echo(&mut c.ws, b"not closed by a refused order").await?;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = admin(&gw, "GET", path).await?;
        ensure!(status == 200, "{path} without the token: {status}");
    }
    let (status, body) = admin_as(&gw, "GET", "/sessions", &bearer(first)).await?;
    ensure!(
        status == 200 && body.contains("\"total\":1"),
        "{status} {body}"
    );
    // The scheme's case does not matter (RFC 9110 section 11.1).
    let (status, _) = admin_as(
        &gw,
        "GET",
        "/sessions",
        &format!("authorization: bearer {first}\r\n"),
    )
    .await?;
    ensure!(status == 200, "lower-case bearer: {status}");
    // A new secret in the file takes over with a reload.
    let second = "second-secret-0123456789abcdef";
    std::fs::write(&file, second)?;
    let (status, body) = admin_as(&gw, "POST", "/reload", &bearer(first)).await?;
    ensure!(
        status == 200 && body.starts_with("reloaded"),
        "{status} {body}"
    );
    let (status, _) = admin_as(&gw, "GET", "/sessions", &bearer(first)).await?;
    ensure!(status == 401, "the old secret after the reload: {status}");
    let (status, body) = admin_as(&gw, "POST", "/sessions/close?all=true", &bearer(second)).await?;
    ensure!(
        status == 200 && body.trim() == "closing 1 sessions",
        "{status} {body}"
    );
    let (code, _) = expect_close(&mut c.ws).await?;
    ensure!(code == 1001, "{code}");
    // A secret too short to be one is refused at reload; the one in force stays.
    std::fs::write(&file, "short")?;
    let (status, body) = admin_as(&gw, "POST", "/reload", &bearer(second)).await?;
    ensure!(
        status == 400 && body.contains("admin.token_file") && body.contains("at least 16"),
        "{status} {body}"
    );
    let (status, _) = admin_as(&gw, "GET", "/sessions", &bearer(second)).await?;
    ensure!(
        status == 200,
        "the secret in force after a refused reload: {status}"
    );
    let log = gw.log();
    ensure!(log.contains("admin request refused"), "{log}");
    for secret in [first, second] {
        ensure!(!log.contains(secret), "a secret reached the log:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// With `[admin] read_token_file` beside `token_file`, the read-only secret lists the
/// sessions and nothing more (403 for a reload or a close, which closes nothing); the
/// admin secret still does everything; the two must differ.
#[tokio::test]
async fn a_read_only_admin_token_lists_sessions_but_cannot_reload_or_close() -> Result<()> {
    let dir = support::process::temp_dir("admin-read-token")?;
    let (admin_file, read_file) = (dir.join("admin-token"), dir.join("read-token"));
    let (admin_secret, read_secret) = (
        "admin-secret-0123456789abcdef",
        "reader-secret-0123456789abcdef",
    );
    std::fs::write(&admin_file, admin_secret)?;
    std::fs::write(&read_file, format!("{read_secret}\n"))?;
    let (_demo, gw) = support::process::abc_gateway_with(ProcOptions {
        admin_toml: format!("token_file = {admin_file:?}\nread_token_file = {read_file:?}\n"),
        ..ProcOptions::default()
    })
    .await?;
    let mut c = loadgen::client::connect(&gw.connect_options("Backend_ABC")?).await?;
    let bearer = |secret: &str| format!("Authorization: Bearer {secret}\r\n");

    let (status, body) = admin_as(&gw, "GET", "/sessions", &bearer(read_secret)).await?;
    ensure!(
        status == 200 && body.contains("\"total\":1"),
        "{status} {body}"
    );
    for (method, path) in [("POST", "/sessions/close?all=true"), ("POST", "/reload")] {
        let (status, body) = admin_as(&gw, method, path, &bearer(read_secret)).await?;
        ensure!(
            status == 403 && body.contains("read-only"),
            "{method} {path} with the read-only secret: {status} {body}"
        );
        let (status, _) = admin_as(&gw, method, path, "").await?;
        ensure!(status == 401, "{method} {path} without a secret: {status}");
    }
    echo(&mut c.ws, b"not closed by the read-only secret").await?;
    let (status, _) = admin_as(
        &gw,
        "GET",
        "/sessions",
        &bearer("reader-secret-0123456789abcdeX"),
    )
    .await?;
    ensure!(status == 401, "a wrong read secret: {status}");

    // The admin secret does everything.
    let (status, _) = admin_as(&gw, "GET", "/sessions", &bearer(admin_secret)).await?;
    ensure!(status == 200, "the admin secret listing: {status}");
    // A read-only secret equal to the admin one is refused at reload.
    std::fs::write(&read_file, admin_secret)?;
    let (status, body) = admin_as(&gw, "POST", "/reload", &bearer(admin_secret)).await?;
    ensure!(
        status == 400 && body.contains("admin.read_token_file") && body.contains("must differ"),
        "{status} {body}"
    );
    let (status, body) = admin_as(
        &gw,
        "POST",
        "/sessions/close?all=true",
        &bearer(admin_secret),
    )
    .await?;
    ensure!(
        status == 200 && body.trim() == "closing 1 sessions",
        "{status} {body}"
    );
    let (code, _) = expect_close(&mut c.ws).await?;
    ensure!(code == 1001, "{code}");
    let log = gw.log();
    ensure!(log.contains("the read-only token may not write"), "{log}");
    for secret in [admin_secret, read_secret] {
        ensure!(!log.contains(secret), "a secret reached the log:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
