//! `[tls] client_ca`: clients authenticate with a certificate as well as the token (mutual
//! TLS), through the gateway binary over real sockets, and `client_cert_header` tells the
//! backend which certificate that was. The good client presents the dev client certificate
//! (`certs/client.crt`, from the dev CA); the others none, or one of a CA of their own.

mod support;

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ClientConfig;
use support::probe::{values, Event, Probe};
use support::process::GatewayProc;
use support::test_ca::TestCa;
use support::tls_client::{probe_gateway, tls_session_with};
use support::*;

/// A client trusting the dev CA, presenting `cert` (chain and key) if given.
fn client(
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(certs().join("ca.crt"))? {
        roots.add(ca?)?;
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The dev client certificate and key.
fn dev_client_cert() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    Ok((
        vec![CertificateDer::from_pem_file(certs().join("client.crt"))?],
        PrivateKeyDer::from_pem_file(certs().join("client.key"))?,
    ))
}

/// A certificate for a client of the same name that no CA the gateway trusts signed.
fn stranger_cert() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let made = rcgen::generate_simple_self_signed(vec!["wsgate dev gateway client".into()])?;
    Ok((
        vec![made.cert.der().clone()],
        PrivateKeyDer::try_from(made.signing_key.serialize_der()).map_err(anyhow::Error::msg)?,
    ))
}

/// What the backend is told of the dev client certificate.
fn dev_described() -> Result<String> {
    let der = CertificateDer::from_pem_file(certs().join("client.crt"))?;
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "Hash={hex};Subject=\"CN=wsgate dev gateway client\""
    ))
}

async fn gateway(tls_toml: &str) -> Result<(GatewayProc, Probe)> {
    gateway_with(&certs().join("ca.crt"), tls_toml).await
}

/// A gateway trusting `ca` for client certificates, with `tls_toml` in `[tls]`.
async fn gateway_with(ca: &std::path::Path, tls_toml: &str) -> Result<(GatewayProc, Probe)> {
    probe_gateway(&format!("client_ca = {ca:?}\n{tls_toml}")).await
}

/// The `x-client-cert` values of the next upgrade the probe saw.
async fn told(probe: &mut Probe) -> Result<Vec<String>> {
    loop {
        if let Event::Handshake(headers) = probe.next().await? {
            return Ok(values(&headers, "x-client-cert")
                .into_iter()
                .map(str::to_owned)
                .collect());
        }
    }
}

const FORGED: &str = "X-Client-Cert: Hash=forged\r\n";

#[tokio::test]
async fn a_required_certificate_refuses_clients_without_one_of_the_ca_and_tells_the_backend(
) -> Result<()> {
    let (gw, mut probe) = gateway("client_cert_header = \"X-Client-Cert\"").await?;

    let none = tls_session_with(gw.addr, client(None)?, "localhost", "").await;
    let err = format!(
        "{:#}",
        none.err()
            .context("a client without a certificate got in")?
    );
    ensure!(err.contains("CertificateRequired"), "{err}");
    let stranger =
        tls_session_with(gw.addr, client(Some(stranger_cert()?))?, "localhost", "").await;
    let err = format!(
        "{:#}",
        stranger
            .err()
            .context("a certificate of another CA got in")?
    );
    ensure!(
        err.contains("UnknownCA") || err.contains("BadCertificate"),
        "{err}"
    );

    // The good client is served after them, and its forged header does not reach the backend.
    let good = client(Some(dev_client_cert()?))?;
    tls_session_with(gw.addr, good.clone(), "localhost", FORGED)
        .await
        .context("the dev client certificate")?;
    ensure!(
        told(&mut probe).await? == [dev_described()?],
        "the backend was told otherwise"
    );
    // A session resumed on a ticket of that one carries its certificate along.
    let again = tls_session_with(gw.addr, good, "localhost", "").await?;
    ensure!(
        again.kind == Some(rustls::HandshakeKind::Resumed),
        "{again:?}"
    );
    ensure!(
        told(&mut probe).await? == [dev_described()?],
        "a resumed session's backend"
    );
    wait_for(
        "2 client certificate refusals counted",
        DEADLINE,
        || async {
            let name = "wsgate_tls_handshake_failures_total{reason=\"client_cert\"}";
            Ok(gw.metric(name).await? >= 2.0)
        },
    )
    .await
}

#[tokio::test]
async fn an_optional_certificate_lets_clients_without_one_in_but_checks_one_presented() -> Result<()>
{
    let (gw, mut probe) =
        gateway("client_cert = \"optional\"\nclient_cert_header = \"X-Client-Cert\"").await?;

    tls_session_with(gw.addr, client(None)?, "localhost", FORGED)
        .await
        .context("a client without a certificate")?;
    ensure!(
        told(&mut probe).await?.is_empty(),
        "a forged header reached the backend"
    );
    tls_session_with(gw.addr, client(Some(dev_client_cert()?))?, "localhost", "")
        .await
        .context("the dev client certificate")?;
    ensure!(
        told(&mut probe).await? == [dev_described()?],
        "the backend was told otherwise"
    );
    let stranger =
        tls_session_with(gw.addr, client(Some(stranger_cert()?))?, "localhost", "").await;
    ensure!(stranger.is_err(), "a certificate of another CA got in");
    Ok(())
}

#[tokio::test]
async fn without_a_header_the_backend_is_told_nothing_and_a_clients_header_passes() -> Result<()> {
    let (gw, mut probe) = gateway("").await?;
    tls_session_with(
        gw.addr,
        client(Some(dev_client_cert()?))?,
        "localhost",
        FORGED,
    )
    .await
    .context("the dev client certificate")?;
    // Not a name the gateway writes: a client's header of it is the client's business.
    ensure!(
        told(&mut probe).await? == ["Hash=forged"],
        "the client's own header"
    );
    Ok(())
}

#[tokio::test]
async fn loadgen_presents_the_certificate_it_is_given() -> Result<()> {
    let (gw, mut probe) = gateway("client_cert_header = \"X-Client-Cert\"").await?;
    let mut opts = gw.connect_options("Backend_PROBE")?;
    ensure!(
        loadgen::client::connect(&opts).await.is_err(),
        "loadgen without a certificate got in"
    );
    opts.client_cert = Some(loadgen::tls::ClientCert {
        cert: certs().join("client.crt"),
        key: certs().join("client.key"),
    });
    let mut connected = loadgen::client::connect(&opts).await?;
    echo(&mut connected.ws, b"with a certificate").await?;
    ensure!(
        told(&mut probe).await? == [dev_described()?],
        "the backend was told otherwise"
    );
    // The log names the certificate: a refusal's line, and the session's.
    let mut unknown = gw.connect_options("Backend_NONE")?;
    unknown.client_cert = opts.client_cert.clone();
    let (status, _) = refused(&unknown).await?;
    ensure!(status == 404, "{status}");
    let line = gw.log_line("refused").await?;
    ensure!(line.contains("CN=wsgate dev gateway client"), "{line}");
    close_cleanly(&mut connected.ws).await?;
    let line = gw.log_line("session ended").await?;
    ensure!(line.contains("CN=wsgate dev gateway client"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_and_a_reload_reads_the_list_again() -> Result<()> {
    let ca = TestCa::new()?;
    let (revoked, kept) = (
        ca.issue_client("revoked", 42)?,
        ca.issue_client("kept", 43)?,
    );
    let crl = ca.crl("clients", &[42])?;
    let (gw, _probe) = gateway_with(&ca.ca_file()?, &format!("client_crl = {crl:?}")).await?;

    let refused = tls_session_with(
        gw.addr,
        client(Some(revoked.client_auth()))?,
        "localhost",
        "",
    )
    .await;
    let err = format!(
        "{:#}",
        refused.err().context("a revoked certificate got in")?
    );
    ensure!(err.contains("CertificateRevoked"), "{err}");
    let kept_client = client(Some(kept.client_auth()))?;
    tls_session_with(gw.addr, kept_client.clone(), "localhost", "")
        .await
        .context("a certificate the list does not name")?;
    let resumed = tls_session_with(gw.addr, kept_client.clone(), "localhost", "").await?;
    ensure!(
        resumed.kind == Some(rustls::HandshakeKind::Resumed),
        "{resumed:?}"
    );
    // A reload that leaves the client trust as it was keeps the tickets good.
    gw.hangup()?;
    gw.log_line("config reloaded").await?;
    let resumed = tls_session_with(gw.addr, kept_client.clone(), "localhost", "").await?;
    ensure!(
        resumed.kind == Some(rustls::HandshakeKind::Resumed),
        "after a reload that changed nothing: {resumed:?}"
    );

    // The list no longer names the first, and names the second: after a reload, the
    // first gets in.
    ca.crl("clients", &[43])?;
    gw.hangup()?;
    let again = client(Some(revoked.client_auth()))?;
    wait_for("the reloaded list", DEADLINE, || async {
        Ok(tls_session_with(gw.addr, again.clone(), "localhost", "")
            .await
            .is_ok())
    })
    .await?;
    // The second, revoked since, cannot resume on a ticket it got before: it shows its
    // certificate again, and is refused.
    let after = tls_session_with(gw.addr, kept_client, "localhost", "").await;
    let err = format!(
        "{:#}",
        after
            .err()
            .context("a certificate revoked since resumed its session")?
    );
    ensure!(err.contains("CertificateRevoked"), "{err}");
    Ok(())
}
