//! A stand-in identity provider: serves a JSON Web Key Set (or an error status) at a URL,
//! over HTTP or HTTPS (the dev certificate for `localhost`), and counts the requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::certs;

/// What the provider answers: an HTTP status and a body.
type Answer = Arc<Mutex<(u16, String)>>;

/// A running provider; stops when dropped.
pub struct Idp {
    addr: SocketAddr,
    https: bool,
    answer: Answer,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Idp {
    /// Starts a provider answering 200 with an empty key set until told otherwise.
    pub async fn start(https: bool) -> Result<Idp> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = if https {
            let tls = gateway::config::TlsConfig {
                cert: certs().join("server.crt"),
                key: certs().join("server.key"),
                ..gateway::config::TlsConfig::default()
            };
            let config = gateway::tls::server_config(&tls)
                .map_err(|(key, problem)| anyhow::anyhow!("{key}: {problem}"))?;
            Some(TlsAcceptor::from(config))
        } else {
            None
        };
        let answer: Answer = Arc::new(Mutex::new((200, r#"{"keys":[]}"#.to_owned())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (a, h, acceptor) = (a.clone(), h.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = respond(tls, &a, &h).await;
                            }
                        }
                        None => {
                            let _ = respond(tcp, &a, &h).await;
                        }
                    }
                });
            }
        });
        Ok(Idp {
            addr,
            https,
            answer,
            hits,
            task,
        })
    }

    /// The key set's URL (`localhost` for HTTPS, as the dev certificate names it).
    pub fn url(&self) -> String {
        if self.https {
            format!("https://localhost:{}/realms/test/certs", self.addr.port())
        } else {
            format!("http://{}/realms/test/certs", self.addr)
        }
    }

    /// From now on, answers `status` with `body`.
    pub fn answer(&self, status: u16, body: String) {
        if let Ok(mut a) = self.answer.lock() {
            *a = (status, body);
        }
    }

    /// From now on, serves a key set of these JWKs.
    pub fn publish(&self, keys: &[&serde_json::Value]) {
        self.answer(200, serde_json::json!({ "keys": keys }).to_string());
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

/// Reads one request head and answers it, then closes.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    answer: &Answer,
    hits: &AtomicUsize,
) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    hits.fetch_add(1, Ordering::Relaxed);
    let (status, body) = answer.lock().ok().context("answer lock")?.clone();
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(reply.as_bytes()).await?;
    s.shutdown().await?;
    Ok(())
}
