//! How TLS connections the gateway ends, end: a handshake it refuses tells the client
//! why with an alert, and an answer it gives over TLS ends with close_notify before the
//! FIN, so that a client can tell a whole answer from a truncated one.

mod support;

use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use rustls::AlertDescription;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// An upgrade request for `id` on the gateway's path with `token`, by `method`.
fn upgrade_request(method: &str, id: &str, token: &str) -> String {
    format!(
        "{method} /gateway HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nID: {id}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_refused_upgrade_ends_with_close_notify() -> Result<()> {
    let tb = testbed().await?;
    let good = tb.token()?;
    let cases = [
        (
            "bad token",
            upgrade_request("GET", "Backend_ABC", "not.a.jwt"),
            401,
        ),
        (
            "unknown backend",
            upgrade_request("GET", "Backend_NOPE", &good),
            404,
        ),
        ("method", upgrade_request("POST", "Backend_ABC", &good), 405),
        (
            "bad key",
            upgrade_request("GET", "Backend_ABC", &good)
                .replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            400,
        ),
        // Not an upgrade: hyper shuts the stream down itself (this one always ended well).
        (
            "not an upgrade",
            "GET /gateway HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned(),
            400,
        ),
    ];
    let mut failed = Vec::new();
    for (what, request, status) in cases {
        if let Err(e) = ends_cleanly(&tb, &request, status).await {
            failed.push(format!("{what}: {e:#}"));
        }
    }
    ensure!(failed.is_empty(), "{failed:#?}");
    Ok(())
}

/// Sends `request` over a new TLS connection, reads the answer to the end of the stream,
/// and checks it is a `status` that ended with close_notify.
async fn ends_cleanly(tb: &loadgen::testbed::Testbed, request: &str, status: u16) -> Result<()> {
    let mut tls = tls_connect(tb).await?;
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    // To the end of the stream: rustls reports a TCP end without close_notify as an
    // UnexpectedEof error, and a clean end as the end of the data.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut answer))
        .await
        .context("the answer never ended")?;
    let text = String::from_utf8_lossy(&answer);
    ensure!(
        text.starts_with(&format!("HTTP/1.1 {status} ")),
        "answer {text:?}"
    );
    if let Err(e) = read {
        bail!("the {status} did not end cleanly: {e} ({:?})", e.kind());
    }
    // Nothing after the end: the next read is the end again, not an error.
    let again = tls.read(&mut [0u8; 16]).await;
    ensure!(matches!(again, Ok(0)), "read after the end: {again:?}");
    Ok(())
}
