//! TLS client configuration: trust a PEM CA file, or (for development only) any certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// Builds the client config shared by every connection of a run.
///
/// With `ca`, only servers whose chain leads to a certificate in that PEM file are
/// accepted. With `insecure`, any certificate is (handshake signatures are still checked).
/// ALPN offers `http/1.1`. Session resumption is off: each connection stands for a
/// distinct client, so each pays for a full handshake as a real one would (a
/// [`crate::client::Connector`] built with `resume` turns it on). Cipher suites
/// are offered in browsers' order ([`browser_order`]), so a server that follows the
/// client's preference picks what it would pick for a browser.
pub fn client_config(ca: Option<&Path>, insecure: bool) -> Result<Arc<ClientConfig>, String> {
    client_config_with(ca, insecure, None)
}

/// [`client_config`], presenting the certificate chain and key in the PEM files
/// `client_cert` (for a gateway that asks clients for one: `[tls] client_ca`).
pub fn client_config_with(
    ca: Option<&Path>,
    insecure: bool,
    client_cert: Option<&ClientCert>,
) -> Result<Arc<ClientConfig>, String> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    browser_order(&mut provider.cipher_suites);
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
    } else {
        let Some(ca) = ca else {
            return Err("wss:// needs a CA to trust (--ca FILE) or --insecure".to_owned());
        };
        builder.with_root_certificates(gateway::tls::trust_roots(ca)?)
    };
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(ClientCert { cert, key }) => gateway::tls::with_client_cert(builder, cert, key)
            .map_err(|(which, e)| format!("client {which}: {e}"))?,
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A client certificate to present: PEM chain (leaf first) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// Certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
}

/// Orders `suites` as Chrome and Firefox offer them: TLS 1.3 before 1.2, and within each
/// AES-128-GCM, then AES-256-GCM, then ChaCha20-Poly1305. rustls's own default puts
/// AES-256-GCM first, which no browser does; servers that honour the client's order
/// would then run the dearer suite (14 AES rounds instead of 10, and SHA-384 in the key
/// schedule) for loadgen only.
pub fn browser_order(suites: &mut [rustls::SupportedCipherSuite]) {
    suites.sort_by_key(|s| {
        let name = s.suite().as_str().unwrap_or("");
        let rank = if name.contains("AES_128_GCM") {
            0
        } else if name.contains("AES_256_GCM") {
            1
        } else if name.contains("CHACHA20") {
            2
        } else {
            3
        };
        (s.tls13().is_none(), rank)
    });
}

/// Accepts any server certificate; still verifies the handshake signatures.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_are_offered_in_a_browsers_order() {
        let mut suites = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
        browser_order(&mut suites);
        let names: Vec<&str> = suites
            .iter()
            .map(|s| s.suite().as_str().unwrap_or("?"))
            .collect();
        assert_eq!(
            names[..3],
            [
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_CHACHA20_POLY1305_SHA256"
            ]
        );
        let first_tls12 = suites.iter().position(|s| s.tls13().is_none());
        assert!(
            first_tls12.is_some_and(|i| suites[i..].iter().all(|s| s.tls13().is_none())),
            "TLS 1.2 suites come after every TLS 1.3 one: {names:?}"
        );
        assert!(
            names.get(3).is_some_and(|n| n.contains("AES_128_GCM")),
            "AES-128-GCM first among the TLS 1.2 suites too: {names:?}"
        );
    }
}
