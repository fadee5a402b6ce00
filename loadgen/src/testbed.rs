//! A whole system in-process for tests: the three demo backends and the real gateway (TLS
//! with the repository's dev certs, real JWT checks), all on port-0 listeners.
//!
//! Used by this crate's tests and the gateway's integration tests. Everything stops when
//! the [`Testbed`] is dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use demo_services::{Backend, RunningBackend, ServiceOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::ConnectOptions;

/// The repository root (where `Config.toml` and `certs/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// How to set the testbed up.
#[derive(Debug, Clone, Default)]
pub struct TestbedOptions {
    /// Period of the backends' hello pushes (`None`: no pushes).
    pub push_interval: Option<Duration>,
    /// TOML appended to the generated gateway config, which is only a `[backends]` table
    /// (so this may add backend entries first, then other tables such as `[limits]`).
    pub extra_toml: String,
}

/// Three demo backends and a gateway in front of them.
pub struct Testbed {
    gateway_addr: SocketAddr,
    backends: Vec<RunningBackend>,
    config: String,
    /// Dropping it shuts the gateway down.
    shutdown: Option<oneshot::Sender<()>>,
    gateway: JoinHandle<()>,
}

impl Testbed {
    /// Starts the backends and the gateway; returns once both are listening.
    pub async fn start(opts: TestbedOptions) -> anyhow::Result<Testbed> {
        let mut backends = Vec::with_capacity(Backend::ALL.len());
        for backend in Backend::ALL {
            let running = demo_services::spawn_for_test(ServiceOptions {
                backend,
                push_interval: opts.push_interval,
            })
            .await
            .with_context(|| format!("starting {}", backend.id()))?;
            backends.push(running);
        }
        let mut config = String::from("[backends]\n");
        for b in &backends {
            config.push_str(&format!("{} = \"{}\"\n", b.backend().id(), b.url()));
        }
        config.push_str(&opts.extra_toml);
        config.push('\n');
        let parsed =
            gateway::Config::from_toml_str(&config, &repo_root()).context("gateway config")?;
        let gw = gateway::Gateway::new(parsed).context("building the gateway")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let gateway_addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.await;
            };
            if let Err(e) = gw.serve(listener, stop).await {
                tracing::error!("testbed gateway: {e}");
            }
        });
        Ok(Testbed {
            gateway_addr,
            backends,
            config,
            shutdown: Some(tx),
            gateway: task,
        })
    }

    /// Where the gateway listens (`127.0.0.1:<port>`).
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway_addr
    }

    /// The gateway's URL: `wss://localhost:<port>/gateway` (the certificate names localhost).
    pub fn url(&self) -> String {
        format!("wss://localhost:{}/gateway", self.gateway_addr.port())
    }

    /// The running backend with this ID (`Backend_ABC`, ...).
    pub fn backend(&self, id: &str) -> Option<&RunningBackend> {
        self.backends.iter().find(|b| b.backend().id() == id)
    }

    /// All three backends.
    pub fn backends(&self) -> &[RunningBackend] {
        &self.backends
    }

    /// Stops one backend (its listener and connections), as if it died.
    pub fn kill_backend(&mut self, id: &str) -> bool {
        match self.backends.iter().position(|b| b.backend().id() == id) {
            Some(i) => {
                self.backends.remove(i).stop();
                true
            }
            None => false,
        }
    }

    /// The generated gateway config.
    pub fn config_toml(&self) -> &str {
        &self.config
    }

    /// The repository's `certs/` folder.
    pub fn certs_dir(&self) -> PathBuf {
        repo_root().join("certs")
    }

    /// A sample token, freshly minted with `certs/jwt-private.pem`.
    pub fn token(&self) -> anyhow::Result<String> {
        let pem = std::fs::read(self.certs_dir().join("jwt-private.pem"))
            .context("reading jwt-private.pem")?;
        crate::token::mint_sample(&pem)
    }

    /// Options to connect to the gateway for `backend_id`: the URL, the dev CA, `ID` and a
    /// fresh sample token, 10 s timeout.
    pub fn connect_options(&self, backend_id: &str) -> anyhow::Result<ConnectOptions> {
        let mut opts = ConnectOptions::new(self.url())
            .header("ID", backend_id)
            .header("Authorization", format!("Bearer {}", self.token()?));
        opts.ca = Some(self.certs_dir().join("ca.crt"));
        Ok(opts)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Sessions may wait for close timeouts; the test is over, so do not wait.
        self.gateway.abort();
    }
}

/// The server side of a WebSocket handshake, for tests' small misbehaving backends:
/// reads the client's upgrade request from `stream`, answers 101, and returns the
/// server side of the WebSocket (bytes read past the request are kept).
pub async fn accept_ws(
    mut stream: TcpStream,
) -> anyhow::Result<fastwebsockets::WebSocket<gateway::prefixed::Prefixed<TcpStream>>> {
    let mut buf = bytes::BytesMut::with_capacity(4096);
    let (key, head_len) = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("closed during the handshake");
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(n) = req.parse(&buf)? {
            let key = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                .map(|h| h.value.to_vec())
                .ok_or_else(|| anyhow::anyhow!("no key"))?;
            break (key, n);
        }
    };
    let accept = gateway::wsclient::accept_key(&key);
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).await?;
    let leftover = buf.split_off(head_len).freeze();
    Ok(fastwebsockets::WebSocket::after_handshake(
        gateway::prefixed::Prefixed::new(leftover, stream),
        fastwebsockets::Role::Server,
    ))
}
