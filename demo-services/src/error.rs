//! The library's one error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the demo services could not start or keep serving.
///
/// Errors of a single peer connection are not here: they end that connection (logged at
/// debug) and never the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A backend name that is none of ABC, PQR, XYZ (or their `Backend_*` IDs).
    #[error("unknown backend {0:?} (expected abc, pqr or xyz)")]
    UnknownBackend(String),
    /// A duration flag that could not be read, e.g. `--push-interval 2 parsecs`.
    #[error("invalid duration {input:?}: {reason}")]
    InvalidDuration {
        /// What the user wrote.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The listening socket could not be bound (port in use, bad address, no permission).
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The listener handed to [`serve`](crate::serve) has no local address (not bound).
    #[error("listener has no local address")]
    LocalAddr(#[source] std::io::Error),
    /// `--tls-cert` without `--tls-key` or the other way round: TLS needs both.
    #[error("{given} needs {missing} as well (give both for wss://, neither for ws://)")]
    TlsFlagsUnpaired {
        /// The flag that was given.
        given: &'static str,
        /// The flag that was not.
        missing: &'static str,
    },
    /// The TLS certificate file could not be read or holds no PEM certificate.
    #[error("TLS certificate {}: {reason}", path.display())]
    TlsCert {
        /// The `--tls-cert` file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS private key file could not be read or holds no PEM private key.
    #[error("TLS private key {}: {reason}", path.display())]
    TlsKey {
        /// The `--tls-key` file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate and key (e.g. a key that is not the certificate's).
    #[error("TLS certificate {} with key {}: {source}", cert.display(), key.display())]
    TlsConfig {
        /// The `--tls-cert` file.
        cert: PathBuf,
        /// The `--tls-key` file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
}
