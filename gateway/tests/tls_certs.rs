//! `[tls] certs`: more certificates than the default one, each served by the server name a
//! client asks for (SNI) and the kind of key it can verify, through the gateway binary over
//! real sockets. The certificates are made here (rcgen) for names the dev CA's server
//! certificate does not hold; the clients trust their CA and the dev CA, check names as
//! any client does, and note the certificate they were shown.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, SignatureScheme};
use support::noting::{noting_client, Noting};
use support::probe::Probe;
use support::process::GatewayProc;
use support::test_ca::TestCa;
use support::tls_client::{probe_gateway, tls_session};
use support::*;

/// A client trusting `ca` and the dev CA that notes the certificate it is shown.
fn client(
    ca: &TestCa,
    schemes: Option<Vec<SignatureScheme>>,
) -> Result<(Arc<ClientConfig>, Arc<Noting>)> {
    noting_client(Some(ca), schemes, rustls::ALL_VERSIONS)
}

/// The certificate a session asking for `name` was shown, and whether the session (TLS,
/// upgrade, one echo through the probe) worked.
async fn shown(
    gw: &GatewayProc,
    config: &(Arc<ClientConfig>, Arc<Noting>),
    name: &str,
) -> Result<(Vec<u8>, Result<()>)> {
    let (config, noting) = config;
    noting.take();
    let session = tls_session(gw.addr, config.clone(), name).await.map(|_| ());
    let seen = noting.take().context("no certificate was shown")?;
    Ok((seen.cert, session))
}

/// The dev server certificate's DER (`[tls] cert`, the default).
fn default_cert() -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    Ok(CertificateDer::from_pem_file(certs().join("server.crt"))?.to_vec())
}

async fn gateway(certs_toml: &str) -> Result<(GatewayProc, Probe)> {
    probe_gateway(&format!("certs = [{certs_toml}]")).await
}

#[tokio::test]
async fn each_name_gets_its_certificate_and_every_other_client_the_default() -> Result<()> {
    let ca = TestCa::new()?;
    let a = ca.issue("a", &["a.example.test"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let b = ca.issue("b", &["*.b.example.test"], &rcgen::PKCS_ECDSA_P384_SHA384)?;
    let (gw, _probe) = gateway(&format!("{}, {}", a.toml(), b.toml())).await?;
    let client = client(&ca, None)?;

    for (name, want, which) in [
        ("a.example.test", a.der.to_vec(), "a's"),
        ("x.b.example.test", b.der.to_vec(), "the wildcard's"),
        ("localhost", default_cert()?, "the default"),
    ] {
        let (seen, session) = shown(&gw, &client, name).await?;
        ensure!(seen == want, "{name} was not shown {which} certificate");
        session.with_context(|| format!("a session as {name}"))?;
    }
    // A name no certificate holds, and no name at all (an address): the default, which
    // the client then finds not valid for the name it wanted.
    for name in ["nobody.example.test", "a.b.c.example.test", "127.0.0.1"] {
        let (seen, session) = shown(&gw, &client, name).await?;
        ensure!(seen == default_cert()?, "{name} was not shown the default");
        if name == "127.0.0.1" {
            session.context("the default holds 127.0.0.1")?;
        } else {
            let err = format!(
                "{:#}",
                session.err().context("a session with the wrong name")?
            );
            ensure!(err.contains("not valid for name"), "{name}: {err}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn one_name_with_ecdsa_and_rsa_certificates_serves_each_client_the_kind_it_verifies(
) -> Result<()> {
    let ca = TestCa::new()?;
    let ec = ca.issue("ec", &["dual.example.test"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let rsa = ca.issue("rsa", &["dual.example.test"], &rcgen::PKCS_RSA_SHA256)?;
    let (gw, _probe) = gateway(&format!("{}, {}", ec.toml(), rsa.toml())).await?;

    let (seen, session) = shown(&gw, &client(&ca, None)?, "dual.example.test").await?;
    ensure!(
        seen == ec.der.to_vec(),
        "a client of every scheme was not shown the ECDSA certificate (listed first)"
    );
    session?;
    let rsa_only = vec![
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PSS_SHA384,
        SignatureScheme::RSA_PKCS1_SHA256,
    ];
    let rsa_client = client(&ca, Some(rsa_only))?;
    let (seen, session) = shown(&gw, &rsa_client, "dual.example.test").await?;
    ensure!(
        seen == rsa.der.to_vec(),
        "an RSA-only client was not shown the RSA certificate"
    );
    session.context("an RSA-only client's session")?;
    // Without a name (an address), the RSA-only client still gets the one key it can
    // verify rather than a handshake failure; that certificate does not hold the address.
    let (seen, _) = shown(&gw, &rsa_client, "127.0.0.1").await?;
    ensure!(
        seen == rsa.der.to_vec(),
        "an RSA-only client without a name was not shown the RSA certificate"
    );
    Ok(())
}

#[tokio::test]
async fn a_reload_puts_a_new_certificate_in_force_for_new_handshakes() -> Result<()> {
    let ca = TestCa::new()?;
    let a = ca.issue("a", &["a.example.test"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let (gw, _probe) = gateway("").await?;
    let client = client(&ca, None)?;
    let (seen, session) = shown(&gw, &client, "a.example.test").await?;
    ensure!(
        seen == default_cert()? && session.is_err(),
        "before: the default"
    );

    let config = std::fs::read_to_string(gw.config_path())?;
    ensure!(config.contains("certs = []"), "{config}");
    std::fs::write(
        gw.config_path(),
        config.replace("certs = []", &format!("certs = [{}]", a.toml())),
    )?;
    gw.hangup()?;
    wait_for("the new certificate", Duration::from_secs(10), || async {
        Ok(shown(&gw, &client, "a.example.test").await?.0 == a.der.to_vec())
    })
    .await?;
    let (_, session) = shown(&gw, &client, "a.example.test").await?;
    session.context("a session on the reloaded certificate")
}

#[tokio::test]
async fn each_certificates_expiry_is_a_metric_and_an_expired_one_is_warned_of() -> Result<()> {
    let ca = TestCa::new()?;
    let old = ca.issue_expired("old", &["old.example.test"])?;
    let (gw, _probe) = gateway(&old.toml()).await?;
    let line = |key: &str, file: &std::path::Path| {
        format!(
            "wsgate_tls_certificate_expiry_timestamp_seconds{{key=\"{key}\",file=\"{}\"}}",
            file.display()
        )
    };
    let old_line = line("tls.certs[0].cert", &old.cert_file);
    // 2020-01-01T00:00:00Z.
    ensure!(
        gw.metric(&old_line).await? == 1_577_836_800.0,
        "{}",
        gw.metrics().await?
    );
    let dev = gw
        .metric(&line("tls.cert", &certs().join("server.crt")))
        .await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    ensure!(
        dev > now.as_secs_f64(),
        "the dev certificate's expiry: {dev}"
    );
    let warned = gw.log_line("certificate has expired").await?;
    ensure!(warned.contains("tls.certs[0].cert"), "{warned}");

    // Gone from the config, gone from the metrics.
    let config = std::fs::read_to_string(gw.config_path())?;
    std::fs::write(gw.config_path(), config.replace(&old.toml(), ""))?;
    gw.hangup()?;
    wait_for("the reload", DEADLINE, || async {
        Ok(!gw.metrics().await?.contains("tls.certs[0].cert"))
    })
    .await?;
    ensure!(
        gw.metric(&line("tls.cert", &certs().join("server.crt")))
            .await?
            == dev
    );
    Ok(())
}
