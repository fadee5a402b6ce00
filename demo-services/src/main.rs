//! `demo-services`: runs the ABC, PQR and XYZ demo backends (or a selection) until
//! Ctrl-C / SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use demo_services::duration::parse_duration;
use demo_services::tls::{self, TlsFiles};
use demo_services::{bind, serve_with_tls, Backend, DemoError, ServiceOptions};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The three demo WebSocket backends of the wsgate sample: each pushes a hello message
/// on a timer, logs RequestMessage JSON and echoes every message back.
///
/// Logging follows RUST_LOG (default: info).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Run only these backends (repeat the flag or separate with commas); default: all three.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<BackendArg>,
    /// Address every backend binds to. The default accepts local connections only, which
    /// is what the gateway's default Config.toml (ws://localhost:...) needs; use 0.0.0.0
    /// to accept connections from other hosts.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port of the ABC backend (path /backend/abc).
    #[arg(long, default_value_t = Backend::Abc.default_port())]
    abc_port: u16,
    /// Port of the PQR backend (path /backend/pqr).
    #[arg(long, default_value_t = Backend::Pqr.default_port())]
    pqr_port: u16,
    /// Port of the XYZ backend (path /backend/xyz).
    #[arg(long, default_value_t = Backend::Xyz.default_port())]
    xyz_port: u16,
    /// How often each backend pushes {"message":"Hello from <NAME> Backend"} to every open
    /// connection, e.g. 2s or 500ms; 0 disables pushing.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    push_interval: Duration,
    /// PEM certificate chain: with --tls-key, every backend serves wss:// instead of ws://
    /// (TLS 1.2/1.3, ALPN http/1.1). Give both or neither.
    #[arg(long, value_name = "PATH")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert's certificate (unencrypted).
    #[arg(long, value_name = "PATH")]
    tls_key: Option<PathBuf>,
}

/// `--only` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// Backend_ABC
    Abc,
    /// Backend_PQR
    Pqr,
    /// Backend_XYZ
    Xyz,
}

impl Cli {
    /// The TLS acceptor every backend shares, or `None` for plain ws://. Fails on one
    /// flag without the other and on certificate or key files that do not load.
    fn tls(&self) -> Result<Option<TlsAcceptor>, DemoError> {
        TlsFiles::from_flags(self.tls_cert.clone(), self.tls_key.clone())?
            .map(|files| tls::acceptor(&files))
            .transpose()
    }

    /// The selected backends with the address each should bind.
    fn backends(&self) -> Vec<(Backend, SocketAddr)> {
        Backend::ALL
            .into_iter()
            .filter(|b| {
                self.only.is_empty()
                    || self.only.iter().any(|arg| {
                        matches!(
                            (arg, b),
                            (BackendArg::Abc, Backend::Abc)
                                | (BackendArg::Pqr, Backend::Pqr)
                                | (BackendArg::Xyz, Backend::Xyz)
                        )
                    })
            })
            .map(|b| {
                let port = match b {
                    Backend::Abc => self.abc_port,
                    Backend::Pqr => self.pqr_port,
                    Backend::Xyz => self.xyz_port,
                };
                (b, SocketAddr::new(self.host, port))
            })
            .collect()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let tls = match cli.tls() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("demo-services: {e}");
            return ExitCode::from(64);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run(cli, tls).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Binds every selected backend (all or none start), serves them (over TLS with `tls`)
/// until a stop signal, then waits for each to close its connections.
async fn run(cli: Cli, tls: Option<TlsAcceptor>) -> anyhow::Result<()> {
    let push_interval = (!cli.push_interval.is_zero()).then_some(cli.push_interval);
    let mut listeners = Vec::new();
    for (backend, addr) in cli.backends() {
        listeners.push((backend, bind(addr).await?));
    }

    let (stop, stopped) = watch::channel(false);
    let mut servers = Vec::new();
    for (backend, listener) in listeners {
        let mut stopped = stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|&s| s).await;
        };
        let opts = ServiceOptions {
            backend,
            push_interval,
        };
        servers.push(tokio::spawn(serve_with_tls(
            listener,
            opts,
            tls.clone(),
            shutdown,
            Default::default(),
        )));
    }

    stop_signal().await?;
    tracing::info!("stopping");
    let _ = stop.send(true);
    for server in servers {
        server.await??;
    }
    Ok(())
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
