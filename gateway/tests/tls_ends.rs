//! How TLS connections the gateway ends, end: a handshake it refuses tells the client
//! why with an alert.

mod support;

use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use rustls::AlertDescription;
use support::*;

/// A client trusting the dev CA, offering only `versions` and only ALPN `h2` (the
/// gateway serves http/1.1 only).
fn h2_only_client(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = gateway::tls::trust_roots(&certs().join("ca.crt")).map_err(anyhow::Error::msg)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[tokio::test]
async fn a_client_offering_only_h2_is_told_no_application_protocol() -> Result<()> {
    let tb = testbed().await?;
    for (name, version) in [
        ("TLS 1.3", &rustls::version::TLS13),
        ("TLS 1.2", &rustls::version::TLS12),
    ] {
        let connector = h2_only_client(&[version])?;
        let tcp = tokio::net::TcpStream::connect(tb.gateway_addr()).await?;
        let server = rustls::pki_types::ServerName::try_from("localhost")?;
        let connected = tokio::time::timeout(DEADLINE, connector.connect(server, tcp))
            .await
            .with_context(|| format!("{name}: no end to the handshake"))?;
        let Err(e) = connected else {
            bail!("{name}: the handshake succeeded without a common protocol");
        };
        // What the client saw: the gateway's alert, not the connection ending unexplained.
        let seen = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        ensure!(
            seen == Some(&rustls::Error::AlertReceived(
                AlertDescription::NoApplicationProtocol
            )),
            "{name}: the client saw {e:?} (kind {:?})",
            e.kind()
        );
    }
    Ok(())
}
