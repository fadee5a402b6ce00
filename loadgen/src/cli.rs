//! Command line: load mode by default, `demo` as a subcommand; exit codes.
//!
//! Relative paths (`--ca`, `--jwt-key`, `--json`, `--report`) are relative to the current
//! directory; the defaults (`certs/ca.crt`, `certs/jwt-private.pem`) fit a run from the
//! repository root, as `cargo run -p loadgen` is.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::demo::{self, DemoEnd, DemoError, DemoOptions};
use crate::load::{self, LoadOptions, UsageError, ALL_BACKENDS, DEFAULT_URL};
use crate::proxy_header::ProxyHeader;
use crate::sys::SourceAddrs;
use crate::token::TokenSource;

/// A duration flag that must be above zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be above 0s".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Exit code: a check failed (integrity errors, a connection that never opened or was
/// dropped).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad options or files (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code: stopped by Ctrl-C before the run's end, with no integrity error (the
/// shell's code for a SIGINT, so `loadgen … && next` does not go on).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Load generator and demo client for the wsgate WebSocket gateway.
///
/// Without a subcommand: load mode. Opens --conns WebSocket connections to --url with
/// `ID: <backend>` and a bearer token, sends --size byte messages for --duration (closed
/// loop with --inflight messages outstanding per connection, or open loop at --rate),
/// checks every echo, and reports throughput, round-trip percentiles and errors.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Run the sample's demo client instead of a load.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Load mode options.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The sample's client: send a RequestMessage every --interval, print both directions.
    Demo(DemoArgs),
}

/// How to reach and authenticate to the gateway (shared by both modes).
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Gateway URL (`ws://` also works, e.g. straight to a backend).
    #[arg(long, default_value = DEFAULT_URL)]
    pub url: String,
    /// PEM CA certificate to trust for wss://.
    #[arg(long, default_value = "certs/ca.crt")]
    pub ca: PathBuf,
    /// Accept any server certificate (development only).
    #[arg(long)]
    pub insecure: bool,
    /// PEM certificate chain to present to a gateway that asks clients for one
    /// (`[tls] client_ca`), e.g. certs/client.crt; with --client-key.
    #[arg(long, value_name = "PATH", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, value_name = "PATH", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Bearer token to send as is (default: mint one with --jwt-key).
    #[arg(long, conflicts_with = "jwt_key")]
    pub token: Option<String>,
    /// RSA private key (PEM) to mint the sample's RS256 token with.
    #[arg(long, value_name = "PATH")]
    pub jwt_key: Option<PathBuf>,
    /// Send no Authorization header at all.
    #[arg(long, conflicts_with_all = ["token", "jwt_key"])]
    pub no_token: bool,
    /// Limit on TCP connect + TLS + WebSocket upgrade, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub connect_timeout: Duration,
}

impl TargetArgs {
    /// The client certificate to present, if --client-cert and --client-key name one.
    pub fn client_cert(&self) -> Option<crate::tls::ClientCert> {
        Some(crate::tls::ClientCert {
            cert: self.client_cert.clone()?,
            key: self.client_key.clone()?,
        })
    }

    /// Where the token comes from: --token, --jwt-key, or the default key if it exists.
    pub fn token_source(&self) -> TokenSource {
        const DEFAULT_KEY: &str = "certs/jwt-private.pem";
        if self.no_token {
            TokenSource::None
        } else if let Some(t) = &self.token {
            TokenSource::Given(t.clone())
        } else if let Some(k) = &self.jwt_key {
            TokenSource::Mint(k.clone())
        } else if std::path::Path::new(DEFAULT_KEY).exists() {
            TokenSource::Mint(DEFAULT_KEY.into())
        } else {
            tracing::warn!("{DEFAULT_KEY} not found: connecting without a token (see --jwt-key)");
            TokenSource::None
        }
    }
}

/// Load mode options.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Backend ID for the `ID` header, a comma-separated list, or `all` (ABC, PQR, XYZ).
    #[arg(long, default_value = "all")]
    pub backend: String,
    /// Connections to open (spread evenly over the backends).
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// How long to send, e.g. `30s`, `2m`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Message size in bytes (at least 20: id, sequence number, timestamp).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Closed loop: messages outstanding per connection.
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// Open loop: messages per second over all connections; latency counts from each
    /// message's intended send time.
    #[arg(long, value_name = "MSGS_PER_S")]
    pub rate: Option<f64>,
    /// Open connections at this rate (default: as fast as --connect-concurrency allows).
    #[arg(long, value_name = "CONNS_PER_S")]
    pub connect_rate: Option<f64>,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Resume TLS sessions (session tickets) across this run's connections, as one client
    /// reconnecting would. Off by default: each connection stands for a distinct client
    /// and makes a full handshake.
    #[arg(long)]
    pub resume: bool,
    /// Send a PROXY protocol header (`v1` text or `v2` binary) first on every connection,
    /// naming the connection's own address, as a TCP load balancer would: for a gateway
    /// with `[server] proxy_protocol = true`.
    #[arg(long, value_name = "VERSION", value_parser = parse_proxy_protocol)]
    pub proxy_protocol: Option<ProxyHeader>,
    /// Extra request header `Name: value` (repeatable). `{conn}` in the value is each
    /// connection's number: `--header "X-Room: room-{conn}"` gives every connection a key
    /// of its own, for a gateway pool with `balance = "hash"`.
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Mint N tokens, of subjects (`sub`) `loadgen-0` to `loadgen-<N-1>`, and give
    /// connection i the one of subject i mod N: N users rather than one, for a pool that
    /// hashes `claim:sub` or a gateway with `max_sessions_per_subject`. Only when loadgen
    /// mints its tokens (not with --token or --no-token).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub subjects: Option<u32>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an HTML page with the latency percentile spectrum per backend.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Source addresses: `auto` (spread over 127.0.0.x beyond 20,000 connections to a
    /// loopback target), `system`, a range `127.0.0.1-127.0.0.20`, or a list.
    #[arg(long, default_value = "auto")]
    pub source_addrs: SourceAddrs,
    /// An echo not back within this long counts as missing.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub echo_timeout: Duration,
    /// After the run, how long to wait for outstanding echoes.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// After the drain, how long each connection waits for the server's close answer;
    /// longer than the gateway's own `[timeouts] close` (5s by default), within which it
    /// answers for a backend that does not.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub close_timeout: Duration,
    /// No progress line on stderr (it only shows on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// Reopen a connection the server closes (close frame such as 1001 on a gateway
    /// shutdown, EOF, reset) and carry on sending; its unanswered messages count as lost
    /// at close, not as errors.
    #[arg(long)]
    pub reconnect: bool,
    /// With --reconnect: failed attempts in a row before a connection gives up.
    #[arg(long, default_value_t = 10, requires = "reconnect")]
    pub reconnect_attempts: u32,
    /// With --reconnect: back-off before the first attempt; doubles after each failure
    /// (up to 5 s), each wait a random 50-100 % of it.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration, requires = "reconnect")]
    pub reconnect_backoff: Duration,
    /// After every connection is open, hold them idle this long before sending (e.g. to
    /// measure memory per idle session, or to let other generators finish connecting).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// End --hold as soon as this file exists (starts several generators together).
    #[arg(long, value_name = "FILE", requires = "hold")]
    pub hold_until: Option<PathBuf>,
    /// Target and credentials.
    #[command(flatten)]
    pub target: TargetArgs,
}

/// Demo mode options.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Backend ID to talk to.
    #[arg(long, default_value = "Backend_ABC", value_parser = one_backend_id)]
    pub backend: String,
    /// Pause between messages, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    pub interval: Duration,
    /// Stop after this many messages (once the last is echoed); at least 1.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Target and credentials.
    #[command(flatten)]
    pub target: TargetArgs,
}

/// The demo's one backend ID: not empty, not a list.
fn one_backend_id(s: &str) -> Result<String, String> {
    let id = s.trim();
    if id.is_empty() {
        Err("the backend ID is empty".to_owned())
    } else if id.contains(',') {
        Err(format!("{id:?}: the demo talks to one backend"))
    } else {
        Ok(id.to_owned())
    }
}

fn parse_proxy_protocol(s: &str) -> Result<ProxyHeader, String> {
    match s {
        "v1" => Ok(ProxyHeader::V1(None)),
        "v2" => Ok(ProxyHeader::V2(None)),
        other => Err(format!("{other:?}: the PROXY protocol version is v1 or v2")),
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not `Name: value`"))?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(format!("{name:?} is not a header name"));
    }
    let value = value.trim();
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err("header values cannot contain line breaks".to_owned());
    }
    Ok((name.to_owned(), value.to_owned()))
}

impl LoadArgs {
    /// The load options these arguments ask for.
    pub fn options(&self) -> LoadOptions {
        // Empty IDs, duplicates and `all` in a list are kept, for the run to refuse.
        let backends = if self.backend.trim().eq_ignore_ascii_case("all") {
            ALL_BACKENDS.iter().map(|s| (*s).to_owned()).collect()
        } else {
            self.backend
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect()
        };
        let t = &self.target;
        LoadOptions {
            url: t.url.clone(),
            backends,
            conns: self.conns,
            duration: self.duration,
            size: self.size,
            inflight: self.inflight,
            rate: self.rate,
            connect_rate: self.connect_rate,
            connect_concurrency: self.connect_concurrency,
            ca: Some(t.ca.clone()),
            insecure: t.insecure,
            client_cert: t.client_cert(),
            resume: self.resume,
            proxy_header: self.proxy_protocol,
            token: t.token_source(),
            headers: self.headers.clone(),
            subjects: self.subjects,
            source_addrs: self.source_addrs.clone(),
            connect_timeout: t.connect_timeout,
            echo_timeout: self.echo_timeout,
            drain_timeout: self.drain_timeout,
            close_timeout: self.close_timeout,
            progress: !self.no_progress && std::io::stderr().is_terminal(),
            reconnect: self.reconnect.then_some(crate::conn::Reconnect {
                attempts: self.reconnect_attempts,
                backoff: self.reconnect_backoff,
            }),
            hold: self.hold,
            hold_until: self.hold_until.clone(),
        }
    }
}

impl DemoArgs {
    /// The demo options these arguments ask for.
    pub fn options(&self) -> DemoOptions {
        let t = &self.target;
        DemoOptions {
            url: t.url.clone(),
            backend: self.backend.clone(),
            ca: Some(t.ca.clone()),
            insecure: t.insecure,
            client_cert: t.client_cert(),
            token: t.token_source(),
            interval: self.interval,
            count: self.count,
            connect_timeout: t.connect_timeout,
        }
    }
}

/// One message per Ctrl-C (SIGINT). The handler is installed now, not at the first
/// poll: a Ctrl-C while connections are being opened is a stop, not the default action
/// that kills the process without a report. Without signal handling: never a message.
fn interrupts() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    if let Ok(mut sigint) = signal(SignalKind::interrupt()) {
        tokio::spawn(async move {
            while sigint.recv().await.is_some() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Resolves at the first Ctrl-C (installed now, as [`interrupts`]).
fn ctrl_c() -> impl std::future::Future<Output = ()> {
    let mut interrupts = interrupts();
    async move { load::stop_asked(&mut interrupts).await }
}

/// Runs what `cli` asks for; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::Demo(args)) => run_demo(&args.options()).await,
        None => run_load(&cli.load).await,
    }
}

async fn run_demo(opts: &DemoOptions) -> ExitCode {
    let mut stdout = std::io::stdout();
    match demo::run(opts, &mut stdout, ctrl_c()).await {
        Ok(end) => ExitCode::from(demo_exit_code(&end)),
        Err(e @ DemoError::Token(_)) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(
            e @ DemoError::Connect {
                source: crate::client::ConnectError::Config(_),
                ..
            },
        ) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Whether `path` can be written, without changing what is there: an existing file is
/// opened for appending (nothing appended), a new one is created and removed again.
fn check_writable(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().append(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)?;
            std::fs::remove_file(path)
        }
        Err(e) => Err(e),
    }
}

/// The exit code of a demo that ended: a Ctrl-C is [`EXIT_INTERRUPTED`], whether it came
/// while connecting or later, as in load mode.
fn demo_exit_code(end: &DemoEnd) -> u8 {
    match end {
        DemoEnd::ClosedByServer { code, .. } if !matches!(code, 1000 | 1001) => EXIT_FAILED,
        DemoEnd::Unanswered { .. } => EXIT_FAILED,
        DemoEnd::Interrupted { .. } => EXIT_INTERRUPTED,
        DemoEnd::Finished { .. } | DemoEnd::ClosedByServer { .. } => 0,
    }
}

async fn run_load(args: &LoadArgs) -> ExitCode {
    // A report that cannot be written is found out now, not after the whole run; the
    // check leaves no file behind (a run refused next would leave an empty one).
    for path in [&args.json, &args.report].into_iter().flatten() {
        if let Err(e) = check_writable(path) {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let opts = args.options();
    let run = match load::run(&opts, interrupts()).await {
        Ok(run) => run,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            let usage = e.downcast_ref::<UsageError>().is_some()
                || e.chain().any(|c| c.is::<std::io::Error>());
            return ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILED });
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) =
        crate::report::write_table(&run.report, &mut stdout).and_then(|()| stdout.flush())
    {
        eprintln!("loadgen: writing the report: {e}");
    }
    let mut code = if run.report.passed() {
        ExitCode::SUCCESS
    } else if run.report.interrupted && run.report.total.errors.total == 0 {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::from(EXIT_FAILED)
    };
    if let Some(path) = &args.json {
        let written = serde_json::to_vec_pretty(&run.report)
            .map_err(std::io::Error::from)
            .and_then(|json| std::fs::write(path, json));
        if let Err(e) = written {
            eprintln!("loadgen: writing {}: {e}", path.display());
            code = ExitCode::from(EXIT_FAILED);
        }
    }
    if let Some(path) = &args.report {
        if let Err(e) = std::fs::write(path, run.html()) {
            eprintln!("loadgen: writing {}: {e}", path.display());
            code = ExitCode::from(EXIT_FAILED);
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_mode_is_the_default_and_demo_a_subcommand() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["loadgen", "--backend", "Backend_ABC", "--conns", "1000"])?;
        assert!(cli.command.is_none());
        let o = cli.load.options();
        assert_eq!(
            (o.backends, o.conns, o.size, o.inflight),
            (vec!["Backend_ABC".to_owned()], 1000, 128, 1)
        );
        let cli = Cli::try_parse_from([
            "loadgen",
            "demo",
            "--backend",
            "Backend_PQR",
            "--count",
            "2",
        ])?;
        let Some(Command::Demo(d)) = cli.command else {
            anyhow::bail!("expected demo")
        };
        assert_eq!(d.backend, "Backend_PQR");
        assert_eq!(d.interval, Duration::from_secs(5));
        assert_eq!(d.count, Some(2));
        Ok(())
    }

    #[test]
    fn a_demo_stopped_by_ctrl_c_exits_130_whenever_it_came() {
        for sent in [0, 3] {
            assert_eq!(
                demo_exit_code(&DemoEnd::Interrupted { sent }),
                EXIT_INTERRUPTED
            );
        }
        assert_eq!(demo_exit_code(&DemoEnd::Finished { sent: 2 }), 0);
        let closed = |code| DemoEnd::ClosedByServer {
            code,
            reason: String::new(),
        };
        assert_eq!(demo_exit_code(&closed(1001)), 0);
        assert_eq!(demo_exit_code(&closed(1011)), EXIT_FAILED);
    }

    #[test]
    fn the_close_wait_outlasts_the_gateways_own_close_timeout() -> anyhow::Result<()> {
        // The gateway answers a close for a backend that does not within its `close`;
        // a loadgen that gave up first counted every such connection as dropped.
        let o = Cli::try_parse_from(["loadgen"])?.load.options();
        let gateway = gateway::config::TimeoutsConfig::default().close;
        assert!(
            o.close_timeout > gateway,
            "{:?} <= {gateway:?}",
            o.close_timeout
        );
        assert!(LoadOptions::default().close_timeout > gateway);
        let o = Cli::try_parse_from(["loadgen", "--close-timeout", "30s"])?
            .load
            .options();
        assert_eq!(o.close_timeout, Duration::from_secs(30));
        assert!(Cli::try_parse_from(["loadgen", "--close-timeout", "0s"]).is_err());
        Ok(())
    }

    #[test]
    fn all_flags_parse() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from([
            "loadgen",
            "--backend",
            "all",
            "--conns",
            "30",
            "--duration",
            "3s",
            "--size",
            "256",
            "--inflight",
            "4",
            "--rate",
            "1000",
            "--connect-rate",
            "500",
            "--url",
            "ws://127.0.0.1:1/x",
            "--insecure",
            "--token",
            "abc",
            "--header",
            "X-A: 1",
            "--header",
            "X-B:2",
            "--json",
            "r.json",
            "--report",
            "r.html",
            "--source-addrs",
            "127.0.0.1-127.0.0.4",
            "--reconnect",
            "--reconnect-attempts",
            "3",
            "--hold",
            "1m",
            "--hold-until",
            "go",
        ])?;
        let o = cli.load.options();
        assert_eq!(o.backends.len(), 3);
        assert_eq!(o.rate, Some(1000.0));
        assert_eq!(o.token, TokenSource::Given("abc".into()));
        assert_eq!(
            o.headers,
            vec![("X-A".into(), "1".into()), ("X-B".into(), "2".into())]
        );
        assert!(matches!(o.source_addrs, SourceAddrs::List(ref l) if l.len() == 4));
        assert_eq!(
            o.reconnect,
            Some(crate::conn::Reconnect {
                attempts: 3,
                backoff: Duration::from_millis(100)
            })
        );
        assert_eq!(
            (o.hold, o.hold_until),
            (Duration::from_secs(60), Some(PathBuf::from("go")))
        );
        assert!(Cli::try_parse_from(["loadgen", "--reconnect-attempts", "3"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "--header", "bad header"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "--token", "a", "--jwt-key", "k"]).is_err());
        Ok(())
    }

    #[test]
    fn a_client_certificate_takes_both_files_in_either_mode() -> anyhow::Result<()> {
        let both = ["--client-cert", "c.crt", "--client-key", "c.key"];
        let want = Some(crate::tls::ClientCert {
            cert: "c.crt".into(),
            key: "c.key".into(),
        });
        let load = Cli::try_parse_from(["loadgen"].into_iter().chain(both))?;
        assert_eq!(load.load.options().client_cert, want);
        let demo = Cli::try_parse_from(["loadgen", "demo"].into_iter().chain(both))?;
        let Some(Command::Demo(args)) = demo.command else {
            anyhow::bail!("not the demo");
        };
        assert_eq!(args.options().client_cert, want);
        assert_eq!(
            Cli::try_parse_from(["loadgen"])?.load.options().client_cert,
            None
        );
        assert!(Cli::try_parse_from(["loadgen", "--client-cert", "c.crt"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "demo", "--client-key", "c.key"]).is_err());
        Ok(())
    }
}
