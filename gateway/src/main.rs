//! The `gateway` binary: parse flags, set up logs, load config, bind, serve.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// wsgate: WebSocket gateway with WSS, JWT authentication and routing by the `ID` header.
///
/// Signals: SIGTERM/Ctrl-C drain and stop; SIGHUP reloads the config file.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file; relative paths inside it resolve against its folder.
    #[arg(long, short, default_value = "Config.toml", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
    /// Log level: error, warn, info, debug, trace or off, or directives such as
    /// `info,gateway=debug` (overridden by RUST_LOG). rustls logs errors only unless a
    /// directive names it (`info,rustls=warn`): its warnings are about what clients send.
    #[arg(long, default_value = "info", value_parser = log_filter)]
    log_level: String,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Validate the config (and the files it names), print the effective config, exit.
    CheckConfig,
}

/// `directives`, with rustls's own lines limited to errors unless they name rustls: its
/// warnings are about what clients send (an IP address as the server name, say), one
/// line per connection that any client can ask for.
fn with_quiet_tls(directives: &str) -> String {
    if directives.contains("rustls") {
        directives.to_owned()
    } else {
        format!("{directives},rustls=error")
    }
}

/// A `--log-level` value: a bare word must be a level, for a misspelt one (`warnn`) would
/// read as a target's name and silence every log line.
fn log_filter(value: &str) -> Result<String, String> {
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !part.contains('=') && part.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "{part:?} is not a level (error, warn, info, debug, trace, off) nor a target=level directive"
            ));
        }
    }
    EnvFilter::try_new(value)
        .map(|_| value.to_owned())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // This runtime accepts and runs the admin endpoints, signals and pool health checks;
    // connections are served on the gateway's worker threads (`[server] workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Taken first: until then a SIGHUP (a `systemctl reload` or a log rotation right
    // after a start) would end the process. One that comes while the gateway starts
    // (a key-set fetch can take seconds) is a reload once it serves.
    let hangups = {
        let _in_runtime = runtime.enter();
        hangups()
    };
    let args = Args::parse();
    if matches!(args.command, Some(Command::CheckConfig)) {
        return check_config(&args.config);
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(with_quiet_tls(&args.log_level)));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let config = match gateway::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: bad config: {e}");
            return ExitCode::from(64);
        }
    };
    // Each session needs two descriptors: take the hard limit, not the (often 1024) soft one.
    let open_files = rlimit::increase_nofile_limit(u64::MAX);
    let code = runtime.block_on(async move {
        let listen = config.server.listen;
        let reuse_port = config.server.reuse_port;
        let gateway = match gateway::Gateway::new(config) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("gateway: bad config: {e}");
                return ExitCode::from(64);
            }
        };
        match open_files {
            Ok(limit) => tracing::info!(
                open_files = limit,
                session_capacity = limit.saturating_sub(64) / 2,
                max_connections = gateway.config_snapshot().limits.max_connections,
                "open-file limit"
            ),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
        let admin = gateway.config_snapshot().admin.clone();
        if admin.enabled {
            match tokio::net::TcpListener::bind(admin.listen).await {
                Ok(l) => {
                    let bound = l.local_addr().unwrap_or(admin.listen);
                    tracing::info!(listen = %bound, "admin listening (/metrics /healthz /readyz POST /reload)");
                    gateway.spawn_admin(l);
                }
                Err(e) => {
                    eprintln!("gateway: cannot listen on admin address {}: {e}", admin.listen);
                    return ExitCode::FAILURE;
                }
            }
        }
        spawn_reload_on_sighup(gateway.reloader(), hangups);
        let listener = match gateway::listener::bind(listen, reuse_port) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("gateway: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        match gateway.serve(listener, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gateway: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // Without waiting for a reload still under way (its key-set fetch can take seconds):
    // the exit is due once the drain is over.
    runtime.shutdown_background();
    code
}

/// `gateway check-config`: 0 and the effective config, or 64 and the problem.
fn check_config(path: &std::path::Path) -> ExitCode {
    let checked = gateway::Config::load(path).and_then(|c| {
        gateway::reload::build_parts(c.clone())?;
        Ok(c)
    });
    match checked {
        Ok(config) => {
            // Written, not printed: a reader that stops early (`| head`) is no panic. The
            // check's verdict is the exit status either way.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "# {}: OK\n\n{}", path.display(), config.describe());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway: bad config: {e}");
            ExitCode::from(64)
        }
    }
}

/// SIGHUPs from now on (`None` where there are none, or if they cannot be taken).
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<std::convert::Infallible>;

/// Takes SIGHUP over from its default action (the end of the process); in a runtime.
fn hangups() -> Hangups {
    #[cfg(unix)]
    return tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    None
}

/// Reloads the config file on every SIGHUP.
fn spawn_reload_on_sighup(reloader: gateway::Reloader, hangups: Hangups) {
    #[cfg(unix)]
    if let Some(mut hup) = hangups {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // The outcome is logged by the reload itself.
                let _ = reloader.reload_off_runtime().await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (reloader, hangups);
}

/// Resolves on Ctrl-C or SIGTERM. A second one during the drain ends the process at once
/// (exit 1), as an operator who asks twice expects, dropping the sessions still open.
async fn shutdown_signal() {
    let mut stops = StopSignals::new();
    stops.next().await;
    tokio::spawn(async move {
        stops.next().await;
        tracing::warn!("second stop signal: exiting without waiting for the drain");
        std::process::exit(1);
    });
}

/// Ctrl-C (SIGINT) and SIGTERM, each taken once and for the process's life, so that a
/// second one is seen as such.
struct StopSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next Ctrl-C or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.interrupt) => {}
                () = recv(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
