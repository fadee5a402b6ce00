//! TLS: the rustls server config built from PEM files, offering only HTTP/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Builds the server config. Errors name the offending key (`cert` or `key`) and problem.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, (&'static str, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| ("cert", format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(("cert", format!("{}: no certificate in PEM", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ("key", format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            (
                "key",
                format!("{} does not match the certificate: {e}", key.display()),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Clients of a gateway hold long sessions and rarely resume: tickets only cost memory.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}
