//! Sessions with a deadline of their own. `[auth] close_at_expiry`: a session ends when its
//! token expires (the client hears 1008 "token expired", the backend 1001), other sessions
//! are untouched; without it, a session outlives its token as with nginx, HAProxy and
//! Envoy. `[timeouts] max_session`: every session ends (1001 "session time limit" to both
//! sides) between 90 % and 100 % of the limit after it began, and the client reconnects.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use support::probe::{Mode, Probe};
use support::process::{GatewayProc, ProcOptions};
use support::*;

/// Unix seconds `ahead` from now (rounded up to a whole second, as `exp` is).
fn unix_in(ahead: Duration) -> Result<u64> {
    let at = SystemTime::now().duration_since(UNIX_EPOCH)? + ahead;
    Ok(at.as_secs() + u64::from(at.subsec_nanos() > 0))
}

/// A gateway in front of a probe backend, with `auth` lines in `[auth]` (no leeway) and
/// `max_session` in `[timeouts]`.
async fn gateway(auth: &str, max_session: &str) -> Result<(GatewayProc, Probe)> {
    let probe = Probe::start(Mode::Accept { protocol: None }).await?;
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_PROBE".into(), probe.url())],
        auth_toml: format!("leeway_secs = 0\n{auth}"),
        extra_toml: format!("[timeouts]\nmax_session = {max_session:?}\n"),
        ..ProcOptions::default()
    })
    .await?;
    Ok((gw, probe))
}

/// Whether the gateway's metrics count `n` sessions ended with `outcome`.
/// Whether the metrics count `n` sessions ended with `outcome`, within the deadline: a
/// session is counted once it has ended, after the client's answer to its close.
async fn ended_with(gw: &GatewayProc, outcome: &str, n: u32) -> Result<bool> {
    let label = format!("outcome=\"{outcome}\"");
    let counted = wait_for("the sessions to be counted", DEADLINE, || {
        let label = &label;
        async move {
            let seen = gw.metrics().await?;
            Ok(seen.lines().any(|l| {
                l.starts_with("wsgate_sessions_total{")
                    && l.contains(label)
                    && l.ends_with(&format!(" {n}"))
            }))
        }
    })
    .await;
    Ok(counted.is_ok())
}

/// Options for a client of the probe whose token expires at `exp` (Unix seconds).
fn options_until(gw: &GatewayProc, exp: u64) -> Result<loadgen::client::ConnectOptions> {
    let token = rs256(&claims_with(|c| {
        c.insert("exp".into(), exp.into());
    }))?;
    let mut opts = gw.connect_options("Backend_PROBE")?;
    opts.set_header("Authorization", format!("Bearer {token}"));
    Ok(opts)
}

/// A client of the probe whose token expires at `exp` (Unix seconds).
async fn client_until(gw: &GatewayProc, exp: u64) -> Result<loadgen::client::Connected> {
    loadgen::client::connect(&options_until(gw, exp)?)
        .await
        .context("connect with a short-lived token")
}

#[tokio::test]
async fn a_session_ends_when_its_token_expires_and_others_go_on() -> Result<()> {
    // The token's expiry comes before the hour's limit: it is the one that ends it.
    let (gw, mut probe) = gateway("close_at_expiry = true", "1h").await?;
    let exp = unix_in(Duration::from_secs(2))?;
    let mut short = client_until(&gw, exp).await?;
    let mut long = connect_ok_proc(&gw).await?;
    echo(&mut short.ws, b"before expiry").await?;

    let (code, reason) = expect_close(&mut short.ws).await?;
    let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    ensure!(
        (code, reason.as_str()) == (1008, "token expired"),
        "client got close {code} {reason:?}"
    );
    ensure!(
        at >= exp as f64 - 0.05,
        "closed at {at:.2}, before the token's exp {exp}"
    );
    ensure!(
        at < exp as f64 + 3.0,
        "closed at {at:.2}, long after exp {exp}"
    );
    let (code, reason) = probe.next_close().await?;
    ensure!(
        (code, reason.as_str()) == (1001, "client token expired"),
        "backend got close {code} {reason:?}"
    );

    // The session with a token good for an hour is untouched.
    echo(&mut long.ws, b"still here").await?;
    ensure!(
        ended_with(&gw, "token_expired", 1).await?,
        "no token_expired session in the metrics:\n{}",
        gw.metrics().await?
    );
    let seen = gw.metrics().await?;
    ensure!(
        seen.lines()
            .any(|l| l.starts_with("wsgate_close_frames_sent_total{")
                && l.contains("to=\"client\"")
                && l.contains("code=\"1008\"")),
        "the 1008 is not counted:\n{seen}"
    );
    Ok(())
}

#[tokio::test]
async fn without_close_at_expiry_a_session_outlives_its_token() -> Result<()> {
    let (gw, _probe) = gateway("", "0s").await?;
    let exp = unix_in(Duration::from_secs(1))?;
    let mut c = client_until(&gw, exp).await?;
    // Keep the session busy across the expiry and a second past it.
    let past = UNIX_EPOCH + Duration::from_secs(exp) + Duration::from_secs(1);
    let mut echoes = 0;
    while SystemTime::now() < past {
        echo(&mut c.ws, b"after exp too").await?;
        echoes += 1;
    }
    ensure!(echoes > 0, "no echo at all");
    // And a fresh connection with that token is refused now: it did expire.
    let (status, _) = refused(&options_until(&gw, exp)?).await?;
    ensure!(status == 401, "expired token got {status}");
    echo(&mut c.ws, b"the old session still forwards").await?;
    Ok(())
}

/// A client of the probe with the dev token (valid for an hour).
async fn connect_ok_proc(gw: &GatewayProc) -> Result<loadgen::client::Connected> {
    let opts = gw.connect_options("Backend_PROBE")?;
    loadgen::client::connect(&opts)
        .await
        .context("connect with the dev token")
}

#[tokio::test]
async fn sessions_end_within_their_time_limit_and_the_client_can_come_back() -> Result<()> {
    let (gw, mut probe) = gateway("", "2s").await?;
    let started = std::time::Instant::now();
    let mut a = connect_ok_proc(&gw).await?;
    let mut b = connect_ok_proc(&gw).await?;
    // Both forward first: either may reach its limit (drawn from 1.8 to 2 s) first.
    echo(&mut a.ws, b"within the limit").await?;
    echo(&mut b.ws, b"within the limit").await?;
    for c in [&mut a, &mut b] {
        let (code, reason) = expect_close(&mut c.ws).await?;
        let after = started.elapsed();
        ensure!(
            (code, reason.as_str()) == (1001, "session time limit"),
            "client got close {code} {reason:?}"
        );
        // 90-100 % of 2 s after its start (the second began a little after the first).
        ensure!(
            after >= Duration::from_millis(1800) && after < Duration::from_secs(4),
            "closed {after:?} after the start"
        );
    }
    for _ in 0..2 {
        let (code, reason) = probe.next_close().await?;
        ensure!(
            (code, reason.as_str()) == (1001, "session time limit"),
            "backend got close {code} {reason:?}"
        );
    }
    ensure!(
        ended_with(&gw, "session_limit", 2).await?,
        "no session_limit sessions in the metrics:\n{}",
        gw.metrics().await?
    );
    // The client comes back, with a new limit of its own.
    let mut again = connect_ok_proc(&gw).await?;
    echo(&mut again.ws, b"reconnected").await?;
    Ok(())
}

#[tokio::test]
async fn close_at_expiry_turned_on_by_a_reload_ends_new_sessions_at_exp_plus_leeway_only(
) -> Result<()> {
    let (gw, mut probe) = gateway("", "0s").await?;
    // Both tokens end in the same second, a little ahead.
    let exp = unix_in(Duration::from_secs(2))?;
    let mut before = client_until(&gw, exp).await?;
    let config = std::fs::read_to_string(gw.config_path())?;
    ensure!(config.contains("leeway_secs = 0\n"), "config:\n{config}");
    std::fs::write(
        gw.config_path(),
        config.replace(
            "leeway_secs = 0\n",
            "leeway_secs = 1\nclose_at_expiry = true\n",
        ),
    )?;
    gw.hangup()?;
    gw.log_line("config reloaded").await?;
    let mut after = client_until(&gw, exp).await?;
    echo(&mut after.ws, b"before expiry").await?;

    let (code, reason) = expect_close(&mut after.ws).await?;
    let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    ensure!(
        (code, reason.as_str()) == (1008, "token expired"),
        "client got close {code} {reason:?}"
    );
    // The end of second exp + leeway_secs: the last one the upgrade check accepts.
    let end = (exp + 2) as f64;
    ensure!(
        at >= end - 0.05,
        "closed at {at:.2}, before {end} (exp {exp} + 1 s of leeway, to its end)"
    );
    ensure!(at < end + 2.0, "closed at {at:.2}, long after {end}");
    let (code, reason) = probe.next_close().await?;
    ensure!(
        (code, reason.as_str()) == (1001, "client token expired"),
        "backend got close {code} {reason:?}"
    );
    // The session from before the reload keeps the setting it began with.
    echo(&mut before.ws, b"after its token's expiry").await?;
    Ok(())
}
