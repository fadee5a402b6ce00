//! `[tls] ocsp` and `certs[N].ocsp`: an OCSP response (made here by `openssl ocsp`, the CA
//! answering for itself) stapled to the handshakes of its certificate, over TLS 1.3 and
//! 1.2, through the gateway binary over real sockets; a reload changes it; a response
//! that is not a current "good" one of its certificate stops the start (exit 64) or is
//! refused by a reload, with the key and the problem named. `[tls] ocsp_fetch`: the
//! responses fetched from a responder on a loopback port (`openssl ocsp` answering each
//! request), refreshed, and bad answers not stapled.

mod support;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use rustls::SupportedProtocolVersion;
use support::noting::{noting_client, Shown};
use support::ocsp_responder::{Answer, OcspResponder};
use support::process::{temp_dir, GatewayProc};
use support::test_ca::{openssl_ocsp, OcspStatus, TestCa};
use support::tls_client::{probe_gateway, tls_session};
use support::*;

/// A response from the dev CA on the dev server certificate (`[tls] cert` in every test
/// gateway), written to `dir/<name>`.
fn dev_response(dir: &Path, name: &str, status: OcspStatus) -> Result<(PathBuf, Vec<u8>)> {
    let out = dir.join(name);
    let der = openssl_ocsp(
        &certs().join("ca.crt"),
        &certs().join("ca.key"),
        &certs().join("server.crt"),
        status,
        &out,
    )?;
    Ok((out, der))
}

/// What a full handshake of a client of `version` asking for `name` was shown, after a
/// session through it (upgrade and an echo) worked.
async fn shown(
    gw: &GatewayProc,
    ca: &TestCa,
    version: &'static SupportedProtocolVersion,
    name: &str,
) -> Result<Shown> {
    let (config, noting) = noting_client(Some(ca), None, &[version])?;
    tls_session(gw.addr, config, name)
        .await
        .with_context(|| format!("a session as {name} over {:?}", version.version))?;
    noting.take().context("no certificate was shown")
}

/// The `wsgate_tls_ocsp_next_update_timestamp_seconds` line of `key` and `file`.
fn next_update_line(key: &str, file: &Path) -> String {
    format!(
        "wsgate_tls_ocsp_next_update_timestamp_seconds{{key=\"{key}\",file=\"{}\"}}",
        file.display()
    )
}

#[tokio::test]
async fn a_response_is_stapled_to_its_certificates_handshakes_until_a_reload_drops_it() -> Result<()>
{
    let dir = temp_dir("ocsp")?;
    let (dev_file, dev_der) = dev_response(&dir, "server.ocsp", OcspStatus::Good)?;
    let ca = TestCa::new()?;
    let a = ca.issue("a", &["a.example.test"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let a_file = dir.join("a.ocsp");
    let a_der = openssl_ocsp(
        &ca.ca_file()?,
        &ca.key_file()?,
        &a.cert_file,
        OcspStatus::Good,
        &a_file,
    )?;
    let b = ca.issue("b", &["b.example.test"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let (gw, _probe) = probe_gateway(&format!(
        "ocsp = {dev_file:?}\ncerts = [{{ cert = {:?}, key = {:?}, ocsp = {a_file:?} }}, {}]",
        a.cert_file,
        a.key_file,
        b.toml()
    ))
    .await?;

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let seen = shown(&gw, &ca, version, "localhost").await?;
        ensure!(
            seen.ocsp == dev_der,
            "{:?}: the default certificate came with {} bytes of OCSP, not its response",
            version.version,
            seen.ocsp.len()
        );
        let seen = shown(&gw, &ca, version, "a.example.test").await?;
        ensure!(
            seen.cert == a.der.to_vec() && seen.ocsp == a_der,
            "{:?}: a.example.test was not shown its certificate with its response",
            version.version
        );
        let seen = shown(&gw, &ca, version, "b.example.test").await?;
        ensure!(
            seen.cert == b.der.to_vec() && seen.ocsp.is_empty(),
            "{:?}: a certificate without a response came with one",
            version.version
        );
    }

    // `-ndays 1`: the nextUpdate is a day after the response was made, just now.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    for (key, file) in [("tls.ocsp", &dev_file), ("tls.certs[0].ocsp", &a_file)] {
        let next_update = gw.metric(&next_update_line(key, file)).await?;
        ensure!(
            (now + 86_000.0..now + 86_500.0).contains(&next_update),
            "{key}'s nextUpdate {next_update}, now {now}:\n{}",
            gw.metrics().await?
        );
    }

    // A revoked status in the file: the reload is refused, the response in force stays.
    dev_response(&dir, "server.ocsp", OcspStatus::Revoked)?;
    gw.hangup()?;
    let refused = gw.log_line("config reload rejected").await?;
    ensure!(
        refused.contains("ocsp") && refused.contains("revoked"),
        "{refused}"
    );
    let seen = shown(&gw, &ca, &rustls::version::TLS13, "localhost").await?;
    ensure!(
        seen.ocsp == dev_der,
        "a refused reload changed the response"
    );

    // A fresh good response in the file: a reload puts it in force.
    let (_, renewed) = dev_response(&dir, "server.ocsp", OcspStatus::Good)?;
    ensure!(renewed != dev_der, "openssl made the same response twice");
    gw.hangup()?;
    wait_for("the renewed response", DEADLINE, || async {
        Ok(shown(&gw, &ca, &rustls::version::TLS13, "localhost")
            .await?
            .ocsp
            == renewed)
    })
    .await?;

    // No `ocsp` any more: nothing stapled, and its metric line goes.
    let config = std::fs::read_to_string(gw.config_path())?;
    let line = format!("ocsp = {dev_file:?}\n");
    ensure!(config.contains(&line), "{config}");
    std::fs::write(gw.config_path(), config.replace(&line, ""))?;
    gw.hangup()?;
    wait_for("the reload without ocsp", DEADLINE, || async {
        Ok(shown(&gw, &ca, &rustls::version::TLS13, "localhost")
            .await?
            .ocsp
            .is_empty())
    })
    .await?;
    let page = gw.metrics().await?;
    ensure!(
        !page.contains("key=\"tls.ocsp\"") && page.contains("key=\"tls.certs[0].ocsp\""),
        "{page}"
    );
    Ok(())
}

/// Starts a gateway with `tls_toml` in `[tls]`; the start must fail with exit 64 and a
/// log naming each of `needles`.
async fn refused_at_start(tls_toml: &str, needles: &[&str]) -> Result<()> {
    let failed = match probe_gateway(tls_toml).await {
        Ok(_) => anyhow::bail!("a gateway started with {tls_toml}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(failed.contains("exit status: 64"), "{failed}");
    for needle in needles {
        ensure!(failed.contains(needle), "{needle:?} not in: {failed}");
    }
    Ok(())
}

#[tokio::test]
async fn a_response_that_is_not_a_good_one_of_its_certificate_stops_the_start() -> Result<()> {
    let dir = temp_dir("ocsp-bad")?;
    let (revoked, _) = dev_response(&dir, "revoked.ocsp", OcspStatus::Revoked)?;
    refused_at_start(
        &format!("ocsp = {revoked:?}"),
        &["tls.ocsp:", "revoked", "clients would refuse it"],
    )
    .await?;

    // A good response, but on the dev client certificate.
    let other = dir.join("other.ocsp");
    openssl_ocsp(
        &certs().join("ca.crt"),
        &certs().join("ca.key"),
        &certs().join("client.crt"),
        OcspStatus::Good,
        &other,
    )?;
    refused_at_start(
        &format!("ocsp = {other:?}"),
        &["tls.ocsp:", "about another certificate"],
    )
    .await?;

    // The same for an entry of `certs`, which is named by its place.
    let ca = TestCa::new()?;
    let a = ca.issue("a", &["a.example.test"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let (good_dev, _) = dev_response(&dir, "good.ocsp", OcspStatus::Good)?;
    refused_at_start(
        &format!(
            "certs = [{{ cert = {:?}, key = {:?}, ocsp = {good_dev:?} }}]",
            a.cert_file, a.key_file
        ),
        &["tls.certs[0].ocsp:", "about another certificate"],
    )
    .await?;

    // Not DER OCSP at all: a PEM file, and a certificate.
    let pem = dir.join("response.pem");
    std::fs::write(
        &pem,
        "-----BEGIN OCSP RESPONSE-----\nAAAA\n-----END OCSP RESPONSE-----\n",
    )?;
    refused_at_start(&format!("ocsp = {pem:?}"), &["tls.ocsp:", "PEM"]).await?;
    let not_ocsp = dir.join("cert.der");
    std::fs::write(&not_ocsp, b"\x30\x03\x02\x01\x05")?;
    refused_at_start(
        &format!("ocsp = {not_ocsp:?}"),
        &["tls.ocsp:", "not an OCSP response"],
    )
    .await?;
    let missing = dir.join("missing.ocsp");
    refused_at_start(
        &format!("ocsp = {missing:?}"),
        &["tls.ocsp:", "missing.ocsp", "cannot read it"],
    )
    .await?;
    Ok(())
}

/// The response a handshake for `a.example.test` was stapled with (empty: none).
async fn a_staple(gw: &GatewayProc, ca: &TestCa) -> Result<Vec<u8>> {
    Ok(shown(gw, ca, &rustls::version::TLS13, "a.example.test")
        .await?
        .ocsp)
}

/// `wsgate_tls_ocsp_fetches_total{result}`.
async fn fetches(gw: &GatewayProc, result: &str) -> Result<f64> {
    gw.metric(&format!(
        "wsgate_tls_ocsp_fetches_total{{result=\"{result}\"}}"
    ))
    .await
}

/// Waits until `n` more fetches than `before` ended with `result`.
async fn fetches_past(gw: &GatewayProc, result: &str, before: f64, n: f64) -> Result<()> {
    wait_for(&format!("{n} more {result} fetches"), DEADLINE, || async {
        Ok(fetches(gw, result).await? >= before + n)
    })
    .await
}

#[tokio::test]
async fn fetched_responses_are_stapled_refreshed_and_kept_through_bad_answers() -> Result<()> {
    let ca = TestCa::new()?;
    let responder = OcspResponder::start(&ca).await?;
    let a = ca.issue_with_responder("a", &["a.example.test"], &responder.url())?;
    let (gw, _probe) = probe_gateway(&format!(
        "ocsp_fetch = true\nocsp_refresh = \"1s\"\ncerts = [{}]",
        a.toml()
    ))
    .await?;
    // The dev certificate names no responder: it goes without, and the log says so.
    let line = gw.log_line("names no http:// OCSP responder").await?;
    ensure!(line.contains("tls.cert"), "{line}");

    let chain = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_file_iter(&a.cert_file)?
            .collect::<Result<Vec<_>, _>>()?
    };
    let good = |der: &[u8]| {
        gateway::ocsp::check(der.to_vec(), &chain, SystemTime::now())
            .is_ok_and(|s| s.fresh_at(SystemTime::now()))
    };
    // The start waited for the first response: the first handshake has it.
    let first = a_staple(&gw, &ca).await?;
    ensure!(
        good(&first),
        "the first handshake's staple is not a good response of a's"
    );
    let log = gw.log();
    let fetched = log.find("OCSP response fetched and stapled");
    let listening = log.find("wsgate listening");
    ensure!(
        fetched.is_some() && fetched < listening,
        "the first fetch was not before the listening:\n{log}"
    );
    let dev = shown(&gw, &ca, &rustls::version::TLS13, "localhost").await?;
    ensure!(dev.ocsp.is_empty(), "the dev certificate got a staple");

    // `ocsp_refresh = "1s"`: a newer response (openssl signs each anew) within seconds.
    wait_for("a refreshed response", DEADLINE, || async {
        Ok(a_staple(&gw, &ca).await? != first)
    })
    .await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let next_update = gw
        .metric(&next_update_line(
            "tls.certs[0].cert",
            Path::new(&responder.url()),
        ))
        .await?;
    ensure!(
        (now + 86_000.0..now + 86_500.0).contains(&next_update),
        "nextUpdate {next_update}, now {now}:\n{}",
        gw.metrics().await?
    );

    // Answers that must not be stapled: a refusal, a revoked status, a signature of a
    // CA that is not a's issuer, and of a certificate of a's CA not made for OCSP. Each
    // fails the fetch, and the response in force stays.
    let stranger_ca = TestCa::new()?;
    let stranger = stranger_ca.issue_responder("stranger", true)?;
    let not_for_ocsp = ca.issue_responder("web", false)?;
    for (answer, logged) in [
        (Answer::Fail, "answered HTTP 500"),
        (Answer::Revoked, "revoked"),
        (OcspResponder::signed_by(&stranger), "its signature is not"),
        (
            OcspResponder::signed_by(&not_for_ocsp),
            "its signature is not",
        ),
    ] {
        responder.answer(answer);
        let errors = fetches(&gw, "error").await?;
        fetches_past(&gw, "error", errors, 1.0).await?;
        let in_force = a_staple(&gw, &ca).await?;
        ensure!(good(&in_force), "a failed fetch took the response away");
        fetches_past(&gw, "error", errors, 2.0).await?;
        ensure!(
            a_staple(&gw, &ca).await? == in_force,
            "a failed fetch replaced the response"
        );
        let line = gw.log_line(logged).await?;
        ensure!(line.contains("OCSP fetch failed"), "{line}");
    }

    // A reload while the responder fails keeps the response: the reloaded config shares
    // the fetch of the same certificate.
    let in_force = a_staple(&gw, &ca).await?;
    gw.hangup()?;
    gw.log_line("config reloaded").await?;
    let errors = fetches(&gw, "error").await?;
    fetches_past(&gw, "error", errors, 1.0).await?;
    ensure!(
        a_staple(&gw, &ca).await? == in_force,
        "the reload lost the fetched response"
    );

    // A responder the CA delegated to (OCSPSigning): taken.
    let delegated = ca.issue_responder("delegated", true)?;
    responder.answer(OcspResponder::signed_by(&delegated));
    let oks = fetches(&gw, "ok").await?;
    fetches_past(&gw, "ok", oks, 1.0).await?;
    wait_for("the delegated responder's answer", DEADLINE, || async {
        let staple = a_staple(&gw, &ca).await?;
        Ok(staple != in_force && good(&staple))
    })
    .await?;
    ensure!(
        responder.requests() >= 8,
        "{} requests",
        responder.requests()
    );
    Ok(())
}

#[tokio::test]
async fn fetching_for_a_chain_without_its_issuer_stops_the_start() -> Result<()> {
    let ca = TestCa::new()?;
    // A responder URL, but the leaf alone in the file.
    let a = ca.issue_with_responder("a", &["a.example.test"], "http://127.0.0.1:9/ocsp")?;
    let leaf_only = {
        let pem = std::fs::read_to_string(&a.cert_file)?;
        let end = "-----END CERTIFICATE-----";
        pem[..pem.find(end).context("no PEM")? + end.len()].to_owned() + "\n"
    };
    std::fs::write(&a.cert_file, leaf_only)?;
    refused_at_start(
        &format!("ocsp_fetch = true\ncerts = [{}]", a.toml()),
        &["tls.certs[0].cert:", "issuer's certificate after the leaf"],
    )
    .await?;
    refused_at_start(
        "ocsp_fetch = true\nocsp_refresh = \"10ms\"",
        &["tls.ocsp_refresh:", "at least 1s"],
    )
    .await
}

#[tokio::test]
async fn a_must_staple_certificate_without_a_response_is_warned_of() -> Result<()> {
    let ca = TestCa::new()?;
    let strict = ca.issue_must_staple("strict", &["strict.example.test"])?;
    let plain = ca.issue(
        "plain",
        &["plain.example.test"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )?;
    let (gw, _probe) =
        probe_gateway(&format!("certs = [{}, {}]", plain.toml(), strict.toml())).await?;
    let line = gw.log_line("must-staple").await?;
    ensure!(
        line.contains("tls.certs[1].cert") && line.contains("set ocsp or ocsp_fetch"),
        "{line}"
    );
    ensure!(
        gw.log().matches("must-staple").count() == 1,
        "a certificate without must-staple was warned of:\n{}",
        gw.log()
    );
    Ok(())
}
