//! TLS toward `wss://` backends: the rustls client config built from `[backend_tls]`, the
//! handshake, and the stream a backend connection runs on, plain or TLS.
//!
//! A backend connection over TLS costs a second encryption per message; the plain stream
//! stays a bare `TcpStream` so `ws://` sessions keep their split without a lock.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::BackendTlsConfig;
use crate::in_use::InUse;

/// Builds the client config for `wss://` backends from `[backend_tls]`. `needed`: some
/// backend is `wss://`; without one and without settings there is nothing to build
/// (`None`). Errors name the key (`ca`, `cert` or `key`) and the problem.
///
/// Sessions are resumed from [`crate::backend_tickets`]: a connect that finds a ticket
/// skips the backend's certificate check and signature. A config built before with the
/// same trusted roots and client certificate files ([`trust_of`]) and still in use is
/// returned instead of the new one, tickets and all: rustls resumes only under the
/// verifier and client certificate a ticket was issued under, so a reload that keeps them
/// keeps the tickets, and one that changes them (the `ca` file, or the system's roots
/// without one) starts afresh.
pub fn client_config(
    cfg: &BackendTlsConfig,
    needed: bool,
) -> Result<Option<Arc<ClientConfig>>, (&'static str, String)> {
    let configured = cfg.ca.is_some() || cfg.cert.is_some() || cfg.key.is_some();
    if !needed && !configured {
        return Ok(None);
    }
    let client_files = client_files_hash(cfg);
    let roots = crate::tls::roots_or_system(
        cfg.ca.as_deref(),
        "no trusted root certificates on this system: set ca (the CAs of the wss:// backends)",
    )
    .map_err(|e| ("ca", e))?;
    let trust = trust_of(&roots, client_files);
    let builder = crate::tls::client_builder(roots).map_err(|e| ("ca", e))?;
    let mut config = match (&cfg.cert, &cfg.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => crate::tls::with_client_cert(builder, cert, key)?,
        (Some(_), None) => return Err(("key", "cert needs key too".into())),
        (None, Some(_)) => return Err(("cert", "key needs cert too".into())),
    };
    crate::tls::offer_http1(&mut config);
    config.resumption =
        rustls::client::Resumption::store(Arc::new(crate::backend_tickets::Tickets::default()));
    // A client certificate file rewritten while it was read: this config is not known to
    // hold either version.
    if client_files_hash(cfg) != client_files {
        return Ok(Some(Arc::new(config)));
    }
    // The config in use that was built with the same trust, or this one from now on.
    static IN_USE: InUse<u64, ClientConfig> = InUse::new();
    let (config, _) = IN_USE.get_or_make(trust, || Ok(config))?;
    Ok(Some(config))
}

/// What decides how backends are checked and what they are shown, as a hash: the trust
/// anchors of `roots` (from `ca`, or the system's) and the client certificate files' hash.
fn trust_of(roots: &rustls::RootCertStore, client_files: u64) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for anchor in &roots.roots {
        let parts = [
            anchor.subject.as_ref(),
            anchor.subject_public_key_info.as_ref(),
            anchor.name_constraints.as_deref().unwrap_or_default(),
        ];
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    hasher.update(&client_files.to_le_bytes());
    hasher.digest()
}

/// The contents of the `cert` and `key` files, as a hash (read before and after the
/// config is built from them).
fn client_files_hash(cfg: &BackendTlsConfig) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for file in [&cfg.cert, &cfg.key] {
        match file {
            None => hasher.update(b"-"),
            Some(path) => {
                let contents = std::fs::read(path).unwrap_or_default();
                hasher.update(b"+");
                hasher.update(&(contents.len() as u64).to_le_bytes());
                hasher.update(&contents);
            }
        }
    }
    hasher.digest()
}

/// The client configs for `wss://` backends: `[backend_tls]`'s, and one per pool that
/// sets TLS files of its own (`tls_ca`, `tls_cert`/`tls_key`).
#[derive(Debug, Clone, Default)]
pub struct BackendTlsConfigs {
    /// From `[backend_tls]` (`None`: no backend is `wss://` and nothing is set).
    pub default: Option<Arc<ClientConfig>>,
    /// By backend ID, for pools with files of their own.
    pub pools: std::collections::HashMap<Arc<str>, Arc<ClientConfig>>,
}

impl BackendTlsConfigs {
    /// Builds every config `config` asks for. Errors name the section and key
    /// (`backend_tls`, `ca`; or `backends.ID`, `tls_ca`) and the problem.
    pub fn from_config(
        config: &crate::config::Config,
    ) -> Result<Self, (String, &'static str, String)> {
        let needed = config
            .backends
            .values()
            .any(|spec| spec.uses_tls() && !spec.tls_files.any());
        let default = client_config(&config.backend_tls, needed)
            .map_err(|(key, problem)| ("backend_tls".to_owned(), key, problem))?;
        let mut pools = std::collections::HashMap::new();
        for (id, spec) in &config.backends {
            let own = &spec.tls_files;
            if !own.any() {
                continue;
            }
            let global = &config.backend_tls;
            let (cert, key) = match &own.cert {
                Some(_) => (own.cert.clone(), own.key.clone()),
                None => (global.cert.clone(), global.key.clone()),
            };
            let merged = BackendTlsConfig {
                ca: own.ca.clone().or_else(|| global.ca.clone()),
                cert,
                key,
            };
            let pool_key = |key: &'static str| match key {
                "ca" => "tls_ca",
                "cert" => "tls_cert",
                _ => "tls_key",
            };
            if let Some(built) = client_config(&merged, true)
                .map_err(|(key, problem)| (format!("backends.{id}"), pool_key(key), problem))?
            {
                pools.insert(Arc::from(id.as_str()), built);
            }
        }
        Ok(Self { default, pools })
    }

    /// The config for the pool `id`: its own, or `[backend_tls]`'s.
    pub fn for_pool(&self, id: &str) -> Option<Arc<ClientConfig>> {
        self.pools.get(id).or(self.default.as_ref()).cloned()
    }
}

/// Whether a TLS handshake failed for want of the gateway's own setup (no client config
/// at all), as opposed to anything the backend did.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The backend is `wss://` but no client config is in force.
    #[error("no TLS settings for a wss:// backend")]
    NotConfigured,
    /// The handshake itself failed: refused certificate, wrong protocol, reset.
    #[error("backend TLS handshake failed: {0}")]
    Failed(io::Error),
}

/// The TLS handshake on `tcp` with a backend whose certificate must be valid for `name`
/// (sent as SNI when it is a DNS name).
pub async fn handshake(
    config: Option<&Arc<ClientConfig>>,
    name: &ServerName<'static>,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let config = config.ok_or(HandshakeError::NotConfigured)?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name.clone(), tcp)
        .await
        .map_err(HandshakeError::Failed)
}

/// A backend connection: plain (`ws://`) or TLS (`wss://`). (loadgen's client stream is
/// this type too.)
///
/// Over TLS, written bytes may stay in rustls until the stream is flushed.
#[derive(Debug)]
pub enum BackendStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://` (boxed: the TLS state is ~1 KiB, and most backends are plain).
    Tls(Box<TlsStream<TcpStream>>),
}

impl BackendStream {
    /// The underlying TCP stream (for addresses and socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            BackendStream::Plain(s) => s,
            BackendStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::dev_certs;

    #[test]
    fn nothing_is_built_without_a_wss_backend_or_settings() -> Result<(), (&'static str, String)> {
        assert!(client_config(&BackendTlsConfig::default(), false)?.is_none());
        let dir = dev_certs();
        let with_ca = BackendTlsConfig {
            ca: Some(dir.join("ca.crt")),
            ..Default::default()
        };
        let built = client_config(&with_ca, true)?;
        assert!(built.is_some_and(|c| c.alpn_protocols == [b"http/1.1".to_vec()]));
        // Settings are checked even before a wss:// backend needs them.
        assert!(client_config(&with_ca, false)?.is_some());
        Ok(())
    }

    #[test]
    fn errors_name_the_key() {
        let dir = dev_certs();
        let key = |cfg: BackendTlsConfig| client_config(&cfg, true).err().map(|(k, _)| k);
        let ca = Some(dir.join("ca.crt"));
        assert_eq!(
            key(BackendTlsConfig {
                ca: Some(dir.join("missing.pem")),
                ..Default::default()
            }),
            Some("ca")
        );
        assert_eq!(
            key(BackendTlsConfig {
                ca: ca.clone(),
                cert: Some(dir.join("client.crt")),
                key: None,
            }),
            Some("key")
        );
        assert_eq!(
            key(BackendTlsConfig {
                ca: ca.clone(),
                cert: None,
                key: Some(dir.join("client.key")),
            }),
            Some("cert")
        );
        // The server's key with the client's certificate.
        assert_eq!(
            key(BackendTlsConfig {
                ca: ca.clone(),
                cert: Some(dir.join("client.crt")),
                key: Some(dir.join("server.key")),
            }),
            Some("key")
        );
        assert_eq!(
            key(BackendTlsConfig {
                ca,
                cert: Some(dir.join("client.crt")),
                key: Some(dir.join("client.key")),
            }),
            None
        );
    }
}
