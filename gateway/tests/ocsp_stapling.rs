//! `[tls] ocsp` and `certs[N].ocsp`: an OCSP response (made here by `openssl ocsp`, the CA
//! answering for itself) stapled to the handshakes of its certificate, over TLS 1.3 and
//! 1.2, through the gateway binary over real sockets; a reload changes it; a response
//! that is not a current "good" one of its certificate stops the start (exit 64) or is
//! refused by a reload, with the key and the problem named.

mod support;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use rustls::SupportedProtocolVersion;
use support::noting::{noting_client, Shown};
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
