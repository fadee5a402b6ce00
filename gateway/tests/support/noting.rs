//! A rustls client that notes what the gateway showed it in the handshake: the
//! certificate and the stapled OCSP response, checked otherwise as any client checks them.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};

use super::certs;
use super::test_ca::TestCa;

/// What the last handshake showed.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    /// The leaf certificate (DER).
    pub cert: Vec<u8>,
    /// The stapled OCSP response; empty without one.
    pub ocsp: Vec<u8>,
}

/// Checks the server's certificate as rustls's own verifier does, against the test CA (if
/// any) and the dev CA, after noting it; offers only `schemes` when given (an RSA-only
/// client).
#[derive(Debug)]
pub struct Noting {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Shown>>,
    schemes: Option<Vec<SignatureScheme>>,
}

impl Noting {
    /// What the last handshake showed, and forgets it.
    pub fn take(&self) -> Option<Shown> {
        self.seen.lock().ok().and_then(|mut s| s.take())
    }
}

impl ServerCertVerifier for Noting {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(Shown {
                cert: end_entity.to_vec(),
                ocsp: ocsp.to_vec(),
            });
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes
            .clone()
            .unwrap_or_else(|| self.inner.supported_verify_schemes())
    }
}

/// A client of the TLS `versions` trusting `ca` (if any) and the dev CA that notes what it
/// is shown. Every handshake is a full one, so that every one is shown a certificate.
pub fn noting_client(
    ca: Option<&TestCa>,
    schemes: Option<Vec<SignatureScheme>>,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<(Arc<ClientConfig>, Arc<Noting>)> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        roots.add(ca.issuer.der().clone())?;
    }
    for dev in CertificateDer::pem_file_iter(certs().join("ca.crt"))? {
        roots.add(dev?)?;
    }
    let noting = Arc::new(Noting {
        inner: WebPkiServerVerifier::builder(Arc::new(roots)).build()?,
        seen: Mutex::new(None),
        schemes,
    });
    let mut config = ClientConfig::builder_with_protocol_versions(versions)
        .dangerous()
        .with_custom_certificate_verifier(noting.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok((Arc::new(config), noting))
}
