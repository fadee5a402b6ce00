//! Python's `websockets` as a third-party peer (`tests/interop.py`): its echo server as a
//! backend, and its client.

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The script that runs `websockets` as server or client.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop.py");

/// Whether the Python peers can run: `false` when WSGATE_SKIP_INTEROP is set; an error
/// when `python3` cannot import `websockets`.
pub fn ready() -> Result<bool> {
    if std::env::var_os("WSGATE_SKIP_INTEROP").is_some() {
        return Ok(false);
    }
    let ok = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .status()?
        .success();
    if !ok {
        bail!("python3 -c 'import websockets' failed: install it (pip install websockets) or set WSGATE_SKIP_INTEROP=1");
    }
    Ok(true)
}

/// A running `websockets` echo server (any path; it accepts `permessage-deflate`, its
/// default), killed when dropped.
pub struct EchoServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Serving over TLS (OpenSSL's, with the dev server certificate).
    tls: bool,
    _child: Child,
}

impl EchoServer {
    /// Starts the server and waits for the port it prints.
    pub async fn start() -> Result<EchoServer> {
        Self::spawn(false).await
    }

    /// Starts the server over TLS with the dev server certificate (`localhost`), and
    /// waits for the port it prints.
    pub async fn start_tls() -> Result<EchoServer> {
        Self::spawn(true).await
    }

    async fn spawn(tls: bool) -> Result<EchoServer> {
        let mut args = vec![SCRIPT.to_owned(), "server".to_owned()];
        if tls {
            let certs = super::certs();
            args.push(certs.join("server.crt").display().to_string());
            args.push(certs.join("server.key").display().to_string());
        }
        let mut child = Command::new("python3")
            .args(&args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port_line = tokio::time::timeout(super::DEADLINE, lines.next_line())
            .await??
            .context("server port")?;
        let port: u16 = port_line.trim().parse().context("server port line")?;
        Ok(EchoServer {
            port,
            tls,
            _child: child,
        })
    }

    /// Its URL for a backend table.
    pub fn url(&self) -> String {
        match self.tls {
            false => format!("ws://127.0.0.1:{}/echo", self.port),
            true => format!("wss://localhost:{}/echo", self.port),
        }
    }
}
