//! `wss://` backends: the gateway's connection to a backend over TLS, the certificate
//! checked against `[backend_tls] ca` and the URL's host, a client certificate for
//! backends that ask for one, the health check over TLS, and a reload of the settings.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fastwebsockets::{Frame, OpCode, Payload};
use support::probe::{self, Mode, Probe};
use support::process::{client_options, GatewayProc, ProcOptions};
use support::{certs, DEADLINE};

/// A TLS probe on `ip`, port 0, echoing.
async fn tls_probe(ip: [u8; 4], client_auth: bool) -> Result<Probe> {
    Probe::start_tls(
        SocketAddr::from((ip, 0)),
        Mode::Accept { protocol: None },
        probe::tls_server_config(client_auth)?,
    )
    .await
}

/// `[backend_tls]` trusting the CA file `ca` of the dev certs folder, with the gateway's
/// client certificate when `client_cert`.
fn backend_tls(ca: &str, client_cert: bool) -> String {
    let dir = certs();
    let mut toml = format!("\n[backend_tls]\nca = {:?}\n", dir.join(ca));
    if client_cert {
        toml.push_str(&format!(
            "cert = {:?}\nkey = {:?}\n",
            dir.join("client.crt"),
            dir.join("client.key")
        ));
    }
    toml
}

/// The `wss://` URL of `probe` by the name its certificate holds.
fn wss_url(probe: &Probe) -> String {
    format!("wss://localhost:{}/probe", probe.addr.port())
}

/// A gateway routing `id` to `url`, with `extra_toml` (such as [`backend_tls`]'s).
async fn gateway_to(id: &str, url: String, extra_toml: String) -> Result<GatewayProc> {
    gateway_for(&[(id, url)], extra_toml).await
}

/// A gateway routing each `(ID, URL)` of `backends`, with `extra_toml` (table entries go
/// first: it is appended inside `[backends]`).
async fn gateway_for(backends: &[(&str, String)], extra_toml: String) -> Result<GatewayProc> {
    GatewayProc::start(ProcOptions {
        backends: backends
            .iter()
            .map(|(id, url)| ((*id).to_owned(), url.clone()))
            .collect(),
        extra_toml,
        ..ProcOptions::default()
    })
    .await
}

/// An echoing TLS probe and a gateway that routes `Backend_TLS` to it, trusting the dev CA.
async fn trusted_tls_backend() -> Result<(Probe, GatewayProc)> {
    let probe = tls_probe([127, 0, 0, 1], false).await?;
    let gw = gateway_to("Backend_TLS", wss_url(&probe), backend_tls("ca.crt", false)).await?;
    Ok((probe, gw))
}

/// The headers of the next upgrade request that reached `probe`.
async fn handshake(probe: &mut Probe) -> Result<Vec<(String, String)>> {
    match probe.next().await? {
        probe::Event::Handshake(headers) => Ok(headers),
        other => bail!("expected the handshake, got {other:?}"),
    }
}

/// A client of `id` through `gw` that is refused; its status and reason.
async fn refused(gw: &GatewayProc, id: &str) -> Result<(u16, String)> {
    support::refused(&client_options(&gw.url(), id)?).await
}

/// Waits until `probe` has seen a failed TLS handshake.
async fn tls_failure(probe: &Probe) -> Result<()> {
    let started = Instant::now();
    while probe.tls_failed() == 0 {
        ensure!(
            started.elapsed() < DEADLINE,
            "the backend saw no failed TLS handshake"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_wss_backend_is_reached_over_tls_and_messages_pass_both_ways_intact() -> Result<()> {
    let mut probe = tls_probe([127, 0, 0, 1], false).await?;
    let url = format!("wss://localhost:{}/probe?x=1", probe.addr.port());
    let gw = gateway_to("Backend_TLS", url, backend_tls("ca.crt", false)).await?;
    let mut c = loadgen::client::connect(&client_options(&gw.url(), "Backend_TLS")?).await?;
    let headers = handshake(&mut probe).await?;
    let host = format!("localhost:{}", probe.addr.port());
    ensure!(
        probe::values(&headers, "host") == [host.as_str()],
        "backend got {headers:?}"
    );
    let seen = probe.tls_seen();
    ensure!(seen.len() == 1, "TLS handshakes: {seen:?}");
    ensure!(
        seen[0].sni.as_deref() == Some("localhost")
            && seen[0].alpn.as_deref() == Some(b"http/1.1".as_slice())
            && !seen[0].client_cert,
        "{seen:?}"
    );

    support::send(&mut c.ws, Frame::text(Payload::Borrowed(b"over TLS"))).await?;
    let (op, payload) = probe.next_frame().await?;
    ensure!(op == OpCode::Text && payload == b"over TLS", "{op:?}");
    let echoed = support::next_frame(&mut c.ws).await?;
    ensure!(&echoed.payload[..] == b"over TLS");
    // Larger than a TLS record and than the 64 KiB a frame is held whole below.
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    support::send(&mut c.ws, Frame::binary(Payload::Borrowed(&big))).await?;
    let (op, payload) = probe.next_frame().await?;
    ensure!(
        op == OpCode::Binary && payload == big,
        "{op:?} {}",
        payload.len()
    );
    let echoed = support::next_frame(&mut c.ws).await?;
    ensure!(
        echoed.payload[..] == big[..],
        "{} bytes back",
        echoed.payload.len()
    );

    ensure!(support::close_cleanly(&mut c.ws).await? == 1000);
    let (code, _) = probe.next_close().await?;
    ensure!(code == 1000, "backend got close {code}");
    Ok(())
}

#[tokio::test]
async fn a_certificate_not_valid_for_the_url_or_no_tls_at_all_is_a_502_and_others_are_served(
) -> Result<()> {
    // The certificate names 127.0.0.1 and localhost, not 127.0.0.2.
    let wrong_name = tls_probe([127, 0, 0, 2], false).await?;
    // A plain ws:// backend behind a wss:// URL.
    let plain = Probe::start(Mode::Accept { protocol: None }).await?;
    let mut good = tls_probe([127, 0, 0, 1], false).await?;
    let gw = gateway_for(
        &[
            (
                "Backend_NAME",
                format!("wss://127.0.0.2:{}/probe", wrong_name.addr.port()),
            ),
            (
                "Backend_PLAIN",
                format!("wss://127.0.0.1:{}/probe", plain.addr.port()),
            ),
            (
                "Backend_GOOD",
                format!("wss://127.0.0.1:{}/probe", good.addr.port()),
            ),
        ],
        backend_tls("ca.crt", false),
    )
    .await?;

    let (status, reason) = refused(&gw, "Backend_NAME").await?;
    ensure!(
        status == 502 && reason.contains("TLS") && reason.contains("not valid for name"),
        "{status} {reason:?}"
    );
    tls_failure(&wrong_name).await?;
    let started = Instant::now();
    let (status, reason) = refused(&gw, "Backend_PLAIN").await?;
    ensure!(
        status == 502 && reason.contains("TLS handshake failed"),
        "{status} {reason:?}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "a backend without TLS took {:?} to refuse",
        started.elapsed()
    );

    let mut c = loadgen::client::connect(&client_options(&gw.url(), "Backend_GOOD")?).await?;
    handshake(&mut good).await?;
    support::echo(&mut c.ws, b"still served").await?;
    Ok(())
}

#[tokio::test]
async fn a_backend_certificate_from_another_ca_is_refused_until_a_reload_trusts_its_ca(
) -> Result<()> {
    let mut probe = tls_probe([127, 0, 0, 1], false).await?;
    let url = wss_url(&probe);
    // The server certificate itself as the only root: the probe's chain goes to the
    // dev CA, which is not trusted then.
    let gw = gateway_to("Backend_TLS", url, backend_tls("server.crt", false)).await?;
    let (status, reason) = refused(&gw, "Backend_TLS").await?;
    ensure!(
        status == 502 && reason.contains("UnknownIssuer"),
        "{status} {reason:?}"
    );
    tls_failure(&probe).await?;
    ensure!(probe.tls_seen().is_empty(), "{:?}", probe.tls_seen());

    // The same backend table, so the pool is kept across the reload: it must take the
    // new [backend_tls] all the same.
    let config = std::fs::read_to_string(gw.config_path())?;
    let (untrusted, trusted) = (
        format!("ca = {:?}", certs().join("server.crt")),
        format!("ca = {:?}", certs().join("ca.crt")),
    );
    ensure!(config.contains(&untrusted), "{config}");
    std::fs::write(gw.config_path(), config.replace(&untrusted, &trusted))?;
    gw.hangup()?;
    gw.log_line("config reloaded").await?;
    let mut c = loadgen::client::connect(&client_options(&gw.url(), "Backend_TLS")?).await?;
    handshake(&mut probe).await?;
    support::echo(&mut c.ws, b"trusted now").await?;
    Ok(())
}

#[tokio::test]
async fn a_backend_that_asks_for_a_client_certificate_gets_the_configured_one() -> Result<()> {
    let mut probe = tls_probe([127, 0, 0, 1], true).await?;
    let url = wss_url(&probe);
    let without = gateway_to("Backend_MTLS", url.clone(), backend_tls("ca.crt", false)).await?;
    let (status, reason) = refused(&without, "Backend_MTLS").await?;
    ensure!(status == 502, "{status} {reason:?}");
    tls_failure(&probe).await?;

    let with = gateway_to("Backend_MTLS", url, backend_tls("ca.crt", true)).await?;
    let mut c = loadgen::client::connect(&client_options(&with.url(), "Backend_MTLS")?).await?;
    handshake(&mut probe).await?;
    let seen = probe.tls_seen();
    ensure!(
        seen.len() == 1 && seen[0].client_cert,
        "TLS handshakes completed: {seen:?}"
    );
    support::echo(&mut c.ws, b"mutual").await?;
    Ok(())
}

#[tokio::test]
async fn the_health_check_of_a_wss_instance_speaks_tls() -> Result<()> {
    let mut probe = tls_probe([127, 0, 0, 1], false).await?;
    let url = wss_url(&probe);
    let _gw = gateway_for(
        &[],
        format!(
            "Backend_TLS = {{ urls = [{url:?}], health_interval = \"100ms\" }}\n{}",
            backend_tls("ca.crt", false)
        ),
    )
    .await?;
    // No client has connected: this upgrade is the health check's, over TLS.
    let headers = handshake(&mut probe)
        .await
        .context("no health probe came")?;
    ensure!(
        probe::values(&headers, "user-agent") == ["wsgate-health-check"],
        "{headers:?}"
    );
    ensure!(
        probe
            .tls_seen()
            .first()
            .is_some_and(|s| s.sni.as_deref() == Some("localhost")),
        "{:?}",
        probe.tls_seen()
    );
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_without_its_key_stops_start_up_naming_the_key() -> Result<()> {
    let dir = certs();
    let started = gateway_to(
        "Backend_TLS",
        "wss://localhost:1/".into(),
        format!(
            "\n[backend_tls]\nca = {:?}\ncert = {:?}\n",
            dir.join("ca.crt"),
            dir.join("client.crt")
        ),
    )
    .await;
    let Err(e) = started else {
        bail!("the gateway started with a client certificate and no key");
    };
    let msg = format!("{e:#}");
    ensure!(
        msg.contains("exit status: 64") && msg.contains("backend_tls.key"),
        "{msg}"
    );
    Ok(())
}

#[tokio::test]
async fn a_backend_that_never_answers_the_tls_handshake_is_a_504_within_backend_connect(
) -> Result<()> {
    let silent = Probe::start(Mode::Hang).await?;
    let gw = gateway_to(
        "Backend_SILENT",
        wss_url(&silent),
        format!(
            "{}\n[timeouts]\nbackend_connect = \"500ms\"\n",
            backend_tls("ca.crt", false)
        ),
    )
    .await?;
    let started = Instant::now();
    let (status, reason) = refused(&gw, "Backend_SILENT").await?;
    let took = started.elapsed();
    ensure!(status == 504, "{status} {reason:?}");
    ensure!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "refused after {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_wss_backend_that_dies_mid_session_gets_its_client_a_1011() -> Result<()> {
    let (mut probe, gw) = trusted_tls_backend().await?;
    let mut c = loadgen::client::connect(&client_options(&gw.url(), "Backend_TLS")?).await?;
    handshake(&mut probe).await?;
    support::echo(&mut c.ws, b"before").await?;
    // Every connection goes at once, without a close frame or TLS close_notify.
    drop(probe);
    let (code, reason) = support::expect_close(&mut c.ws).await?;
    ensure!(
        code == 1011 && reason.contains("backend"),
        "got close {code} {reason:?}"
    );
    Ok(())
}

#[tokio::test]
async fn tls_name_checks_an_instance_reached_by_address_against_a_host_name() -> Result<()> {
    // Reached at 127.0.0.1; checked as `localhost`, which the certificate names too.
    let mut probe = tls_probe([127, 0, 0, 1], false).await?;
    let url = format!("wss://127.0.0.1:{}/probe", probe.addr.port());
    let gw = gateway_for(
        &[],
        format!(
            "Backend_NAMED = {{ urls = [{url:?}], tls_name = \"localhost\" }}\n\
         Backend_OTHER = {{ urls = [{url:?}], tls_name = \"backend.example\" }}\n{}",
            backend_tls("ca.crt", false)
        ),
    )
    .await?;
    let mut c = loadgen::client::connect(&client_options(&gw.url(), "Backend_NAMED")?).await?;
    handshake(&mut probe).await?;
    ensure!(
        probe
            .tls_seen()
            .first()
            .is_some_and(|s| s.sni.as_deref() == Some("localhost")),
        "{:?}",
        probe.tls_seen()
    );
    support::echo(&mut c.ws, b"named").await?;

    // A name the certificate does not hold is refused, though the address is in it.
    let (status, reason) = refused(&gw, "Backend_OTHER").await?;
    ensure!(
        status == 502 && reason.contains("not valid for name"),
        "{status} {reason:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_wss_backend_that_pings_but_never_reads_is_closed_as_not_reading() -> Result<()> {
    // As idle::a_backend_that_pings_but_never_reads_is_closed_as_not_reading, with the
    // TLS library's own send buffer between the gateway's writes and the socket: the
    // backlog must still be seen for what it is.
    let probe = Probe::start_tls(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Mode::Deaf {
            every: Duration::from_millis(200),
        },
        probe::tls_server_config(false)?,
    )
    .await?;
    let gw = gateway_to(
        "Backend_DEAF",
        wss_url(&probe),
        format!(
            "{}\n[timeouts]\nidle = \"1s\"\nclose = \"1s\"\n",
            backend_tls("ca.crt", false)
        ),
    )
    .await?;
    let mut c = loadgen::client::connect(&client_options(&gw.url(), "Backend_DEAF")?).await?;
    c.ws.set_auto_pong(false);
    c.ws.set_auto_close(false);
    let base_kib = gw.stats()?.rss_kib;
    // Send until every buffer on the way to the backend is full.
    let sent = support::send_until_blocked(&mut c.ws).await?;
    let grown_kib = gw.stats()?.rss_kib.saturating_sub(base_kib);
    ensure!(
        grown_kib < 2048,
        "the gateway held {grown_kib} KiB for one blocked session ({sent} frames of 16 KiB sent)"
    );
    support::closed_as_not_reading(&mut c.ws, sent).await
}

#[tokio::test]
async fn a_second_session_to_a_wss_backend_resumes_the_first_ones_tls_session() -> Result<()> {
    let (mut probe, gw) = trusted_tls_backend().await?;
    for n in 0..3 {
        let mut c = loadgen::client::connect(&client_options(&gw.url(), "Backend_TLS")?).await?;
        // The frames of the session before may still be reported first.
        while !matches!(probe.next().await?, probe::Event::Handshake(_)) {}
        support::echo(&mut c.ws, format!("session {n}").as_bytes()).await?;
    }
    let resumed: Vec<bool> = probe.tls_seen().iter().map(|s| s.resumed).collect();
    ensure!(resumed == [false, true, true], "resumed: {resumed:?}");
    Ok(())
}

/// A session through `gw` to `probe` (`Backend_TLS`) that echoes once; whether the
/// gateway's TLS connect to the probe resumed.
async fn session(gw: &GatewayProc, probe: &mut Probe, n: usize) -> Result<bool> {
    let mut c = loadgen::client::connect(&client_options(&gw.url(), "Backend_TLS")?).await?;
    while !matches!(probe.next().await?, probe::Event::Handshake(_)) {}
    support::echo(&mut c.ws, format!("session {n}").as_bytes()).await?;
    let resumed = probe.tls_seen().last().map(|s| s.resumed);
    resumed.context("no TLS handshake seen")
}

#[tokio::test]
async fn a_reload_keeps_the_backend_tickets_unless_the_cas_changed() -> Result<()> {
    // The dev CA in a file of the test's own, rewritten in place below.
    let dir = support::process::temp_dir("backend-cas")?;
    let cas = dir.join("cas.pem");
    let dev_ca = std::fs::read_to_string(certs().join("ca.crt"))?;
    std::fs::write(&cas, &dev_ca)?;
    let mut probe = tls_probe([127, 0, 0, 1], false).await?;
    let gw = gateway_to(
        "Backend_TLS",
        wss_url(&probe),
        format!("\n[backend_tls]\nca = {cas:?}\n"),
    )
    .await?;
    ensure!(
        !session(&gw, &mut probe, 0).await?,
        "the first connect resumed"
    );
    // The same settings: the tickets stay.
    gw.hangup()?;
    gw.log_line("config reloaded").await?;
    ensure!(
        session(&gw, &mut probe, 1).await?,
        "a connect after a reload made a full handshake: {:?}",
        probe
            .tls_seen()
            .iter()
            .map(|s| s.resumed)
            .collect::<Vec<_>>()
    );

    // The same file with one more CA: a resumption would skip the check under the new
    // CAs, so the tickets go; they come again.
    let other = support::test_ca::TestCa::new()?;
    std::fs::write(&cas, format!("{dev_ca}{}", other.issuer.pem()))?;
    gw.hangup()?;
    support::wait_for("the second reload", DEADLINE, || async {
        Ok(gw.log().matches("config reloaded").count() >= 2)
    })
    .await?;
    ensure!(
        !session(&gw, &mut probe, 2).await?,
        "a connect resumed on a ticket from before the CAs changed"
    );
    ensure!(
        session(&gw, &mut probe, 3).await?,
        "the connects under the new CAs did not resume"
    );
    Ok(())
}

#[tokio::test]
async fn more_sessions_resume_than_rustls_alone_keeps_tickets_for() -> Result<()> {
    // Two probes behind one name (`localhost`), sharing the server's session cache: the
    // first hands out 2 tickets per handshake, the second none. So the gateway's
    // sessions to the second can resume only on tickets its store kept from the first.
    let issuing = probe::tls_server_config(false)?;
    let mut silent_config = (*issuing).clone();
    silent_config.send_tls13_tickets = 0;
    let mut first = Probe::start_tls(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Mode::Accept { protocol: None },
        issuing,
    )
    .await?;
    let mut second = Probe::start_tls(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Mode::Accept { protocol: None },
        Arc::new(silent_config),
    )
    .await?;
    let gw = gateway_for(
        &[
            ("Backend_FIRST", wss_url(&first)),
            ("Backend_SECOND", wss_url(&second)),
        ],
        backend_tls("ca.crt", false),
    )
    .await?;
    // Each session takes a ticket (but the first) and brings two: 12 leave 13.
    const SESSIONS: usize = 12;
    for (probe, id) in [
        (&mut first, "Backend_FIRST"),
        (&mut second, "Backend_SECOND"),
    ] {
        for n in 0..SESSIONS {
            let mut c = loadgen::client::connect(&client_options(&gw.url(), id)?).await?;
            while !matches!(probe.next().await?, probe::Event::Handshake(_)) {}
            support::echo(&mut c.ws, format!("session {n}").as_bytes()).await?;
        }
    }
    let resumed = |p: &Probe| p.tls_seen().iter().filter(|s| s.resumed).count();
    ensure!(
        resumed(&first) == SESSIONS - 1,
        "first backend: {} of {SESSIONS} resumed",
        resumed(&first)
    );
    // rustls's own store would have kept 8.
    ensure!(
        resumed(&second) == SESSIONS,
        "second backend: {} of {SESSIONS} resumed on the tickets kept",
        resumed(&second)
    );
    Ok(())
}

#[tokio::test]
async fn a_pools_own_ca_and_client_certificate_take_the_place_of_backend_tls() -> Result<()> {
    // One backend under a CA of its own, one that asks for the dev client certificate;
    // [backend_tls] trusts the dev CA only and shows no certificate.
    let ca = support::test_ca::TestCa::new()?;
    let own = ca.issue("own", &["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let own_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![own.der.clone()], own.key.clone_key())?;
    let mut own_config = own_config;
    own_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let own_ca = Probe::start_tls(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Mode::Accept { protocol: None },
        Arc::new(own_config),
    )
    .await?;
    let mut asks = tls_probe([127, 0, 0, 1], true).await?;
    let dir = certs();
    let (own_url, asks_url) = (wss_url(&own_ca), wss_url(&asks));
    let gw = gateway_for(
        &[
            ("Plain_OWN", own_url.clone()),
            ("Plain_ASKS", asks_url.clone()),
        ],
        format!(
            "Backend_OWN = {{ urls = [{own_url:?}], tls_ca = {:?} }}\n\
             Backend_ASKS = {{ urls = [{asks_url:?}], tls_cert = {:?}, tls_key = {:?} }}\n{}",
            ca.ca_file()?,
            dir.join("client.crt"),
            dir.join("client.key"),
            backend_tls("ca.crt", false)
        ),
    )
    .await?;

    let mut c = loadgen::client::connect(&client_options(&gw.url(), "Backend_OWN")?).await?;
    support::echo(&mut c.ws, b"own CA").await?;
    let mut c = loadgen::client::connect(&client_options(&gw.url(), "Backend_ASKS")?).await?;
    handshake(&mut asks).await?;
    ensure!(
        asks.tls_seen().iter().any(|s| s.client_cert),
        "{:?}",
        asks.tls_seen()
    );
    support::echo(&mut c.ws, b"own certificate").await?;
    // The same backends under [backend_tls] alone: not trusted, no certificate shown.
    for id in ["Plain_OWN", "Plain_ASKS"] {
        let (status, reason) = refused(&gw, id).await?;
        ensure!(status == 502, "{id}: {status} {reason:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_pools_tls_files_that_cannot_work_stop_start_up_naming_the_key() -> Result<()> {
    let dir = certs();
    for (entry, key) in [
        (
            format!(
                "{{ urls = [\"wss://localhost:1/\"], tls_cert = {:?} }}",
                dir.join("client.crt")
            ),
            "backends.Backend_X.tls_key",
        ),
        (
            "{ urls = [\"ws://localhost:1/\"], tls_ca = \"ca.crt\" }".to_owned(),
            "backends.Backend_X.tls_ca",
        ),
        (
            "{ urls = [\"wss://localhost:1/\"], tls_ca = \"/nonexistent/ca.crt\" }".to_owned(),
            "backends.Backend_X.tls_ca",
        ),
    ] {
        let started = gateway_for(&[], format!("Backend_X = {entry}\n")).await;
        let Err(e) = started else {
            bail!("the gateway started with {entry}");
        };
        let msg = format!("{e:#}");
        ensure!(
            msg.contains("exit status: 64") && msg.contains(key),
            "{entry}: {msg}"
        );
    }
    Ok(())
}
