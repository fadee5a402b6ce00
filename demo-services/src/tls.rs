//! TLS for the backends (`--tls-cert` / `--tls-key`): the rustls acceptor that lets each
//! backend serve `wss://`, so the gateway's TLS backend connections can be tried and
//! measured.
//!
//! Built the way the gateway builds its own listener's config (`gateway/src/tls.rs`):
//! rustls on the aws-lc-rs provider, TLS 1.2 and 1.3, ALPN `http/1.1` only. None of the
//! gateway's tuning (cipher suite order, ticket keys, secret extraction) is needed for a
//! demo backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::DemoError;

/// The PEM files a TLS backend serves with: both given, or TLS is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1), unencrypted.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Pairs the `--tls-cert` and `--tls-key` flags: both → `Some`, neither → `None`
    /// (plain `ws://`), one alone → [`DemoError::TlsFlagsUnpaired`], since serving
    /// plain text when the user asked for TLS would hide the mistake.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, DemoError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self { cert, key })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(DemoError::TlsFlagsUnpaired {
                given: "--tls-cert",
                missing: "--tls-key",
            }),
            (None, Some(_)) => Err(DemoError::TlsFlagsUnpaired {
                given: "--tls-key",
                missing: "--tls-cert",
            }),
        }
    }
}

/// Reads the certificate chain and key and builds the acceptor every backend shares.
///
/// Errors name the file and what is wrong with it, for the CLI's one-line message.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, DemoError> {
    Ok(TlsAcceptor::from(server_config(files)?))
}

/// The rustls server config: aws-lc-rs, safe default versions, no client certificates,
/// ALPN `http/1.1` (the backends speak HTTP/1.1 only, as the gateway offers).
fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, DemoError> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| DemoError::TlsKey {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let refused = |source| DemoError::TlsConfig {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(refused)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate of the PEM file at `path`; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, DemoError> {
    let problem = |reason: String| DemoError::TlsCert {
        path: path.to_owned(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| problem(e.to_string()))?;
    if certs.is_empty() {
        return Err(problem("no certificate in PEM".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_files() -> TlsFiles {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../certs");
        TlsFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        }
    }

    #[test]
    fn both_flags_or_neither() {
        let files = dev_files();
        assert_eq!(
            TlsFiles::from_flags(Some(files.cert.clone()), Some(files.key.clone())).ok(),
            Some(Some(files.clone()))
        );
        assert_eq!(TlsFiles::from_flags(None, None).ok(), Some(None));
        let cert_only = TlsFiles::from_flags(Some(files.cert.clone()), None);
        assert!(
            matches!(
                cert_only,
                Err(DemoError::TlsFlagsUnpaired {
                    given: "--tls-cert",
                    missing: "--tls-key"
                })
            ),
            "{cert_only:?}"
        );
        let key_only = TlsFiles::from_flags(None, Some(files.key));
        assert!(
            matches!(
                key_only,
                Err(DemoError::TlsFlagsUnpaired {
                    given: "--tls-key",
                    missing: "--tls-cert"
                })
            ),
            "{key_only:?}"
        );
    }

    #[test]
    fn the_dev_certificate_loads_with_alpn_http11() -> Result<(), DemoError> {
        let config = server_config(&dev_files())?;
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        Ok(())
    }

    #[test]
    fn swapped_or_missing_files_name_the_file() {
        let files = dev_files();
        let swapped = TlsFiles {
            cert: files.key.clone(),
            key: files.cert.clone(),
        };
        let err = acceptor(&swapped).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("server.key") && e.contains("certificate")),
            "{err:?}"
        );
        let missing = TlsFiles {
            key: files.cert.with_file_name("no-such.key"),
            ..files
        };
        let err = acceptor(&missing).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("no-such.key")),
            "{err:?}"
        );
    }
}
