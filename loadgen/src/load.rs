//! Load mode: open the connections, run for the duration, drain, close, report.
//!
//! Phases: *connect* (at `connect_rate`, at most `connect_concurrency` handshakes at a
//! time; idle connections answer pings and count pushes), *hold* (optional: stay idle for
//! `hold`, or until the file `hold_until` exists), *run* (every connection sends:
//! closed or open loop), *drain* (stop sending, wait up to `drain_timeout` for
//! outstanding echoes), *close* (1000 to every connection), then the report.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::{ConnectOptions, Connector};
use crate::conn::{self, End, Outcome, Phase, Plan, Reconnect, Shared, CONN_PLACEHOLDER};
use crate::progress::Progress;
use crate::proxy_header::ProxyHeader;
use crate::report::{self, Report, Usage};
use crate::stats::{new_histogram, Live, Recorder};
use crate::sys::{self, CpuTime, SourceAddrs};
use crate::token::TokenSource;
use crate::wire;

/// The three demo backends, used for `--backend all`.
pub const ALL_BACKENDS: [&str; 3] = ["Backend_ABC", "Backend_PQR", "Backend_XYZ"];

/// The gateway's default URL.
pub const DEFAULT_URL: &str = "wss://localhost:9090/gateway";

/// Everything a load run needs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// Backend IDs sent in the `ID` header; connections are spread evenly over them.
    pub backends: Vec<String>,
    /// Connections to open.
    pub conns: usize,
    /// Length of the sending phase.
    pub duration: Duration,
    /// Message size in bytes (at least [`wire::HEADER_LEN`]).
    pub size: usize,
    /// Closed loop: messages in flight per connection.
    pub inflight: usize,
    /// Open loop: messages per second over all connections (`None`: closed loop).
    pub rate: Option<f64>,
    /// Connections opened per second (`None`: as fast as `connect_concurrency` allows).
    pub connect_rate: Option<f64>,
    /// Handshakes in progress at once.
    pub connect_concurrency: usize,
    /// PEM CA file to trust for `wss://`.
    pub ca: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure: bool,
    /// A client certificate every connection presents.
    pub client_cert: Option<crate::tls::ClientCert>,
    /// Resume TLS sessions across the run's connections, as one client reconnecting
    /// would (off: each connection stands for a distinct client, full handshake).
    pub resume: bool,
    /// A PROXY protocol header sent first on every connection, naming the connection's
    /// own address, as a TCP load balancer in front of the gateway would.
    pub proxy_header: Option<ProxyHeader>,
    /// Bearer token source.
    pub token: TokenSource,
    /// Extra request headers; `{conn}` in a value is each connection's number.
    pub headers: Vec<(String, String)>,
    /// Mint this many tokens of distinct subjects, one per connection in turn.
    pub subjects: Option<u32>,
    /// Source address policy.
    pub source_addrs: SourceAddrs,
    /// Limit on one connection's TCP + TLS + upgrade.
    pub connect_timeout: Duration,
    /// An echo not back within this long counts as missing.
    pub echo_timeout: Duration,
    /// After the run, how long to wait for outstanding echoes.
    pub drain_timeout: Duration,
    /// How long to wait for the server's close frame.
    pub close_timeout: Duration,
    /// Show the live progress line on stderr.
    pub progress: bool,
    /// Reopen connections the server closes (`None`: they end, and their unanswered
    /// messages count as missing).
    pub reconnect: Option<Reconnect>,
    /// After connecting, stay idle this long before sending (or until `hold_until`).
    pub hold: Duration,
    /// End the hold as soon as this file exists (to start several generators together).
    pub hold_until: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            backends: ALL_BACKENDS.iter().map(|s| (*s).to_owned()).collect(),
            conns: 100,
            duration: Duration::from_secs(30),
            size: 128,
            inflight: 1,
            rate: None,
            connect_rate: None,
            connect_concurrency: 64,
            ca: Some(PathBuf::from("certs/ca.crt")),
            insecure: false,
            client_cert: None,
            resume: false,
            proxy_header: None,
            token: TokenSource::Mint(PathBuf::from("certs/jwt-private.pem")),
            headers: Vec::new(),
            subjects: None,
            source_addrs: SourceAddrs::Auto,
            connect_timeout: Duration::from_secs(10),
            echo_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(10),
            progress: false,
            reconnect: None,
            hold: Duration::ZERO,
            hold_until: None,
        }
    }
}

/// A finished run: the report and the histograms behind it.
pub struct LoadRun {
    /// The numbers.
    pub report: Report,
    /// Round-trip histograms (µs): one per backend, then the total.
    pub rtt: Vec<(String, Histogram<u64>)>,
}

impl LoadRun {
    /// Writes the HTML percentile-spectrum page.
    pub fn html(&self) -> String {
        let series: Vec<crate::plot::Series<'_>> = self
            .rtt
            .iter()
            .map(|(name, h)| crate::plot::Series { name, histogram: h })
            .collect();
        crate::plot::html(&self.report, &series)
    }
}

/// A problem with the options themselves (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Largest `--size`: 64 MiB, four times the gateway's default `max_message_size`. Each
/// connection keeps up to 64 messages of it ready to send.
const MAX_SIZE: usize = 64 << 20;
/// Largest `--inflight`: each connection keeps that many messages' bookkeeping, and a
/// closed loop writes them all out at once.
pub const MAX_INFLIGHT: usize = 1 << 16;
/// Largest `--size` × `--inflight` (1 GiB): what one connection may have outstanding.
pub const MAX_OUTSTANDING_BYTES: usize = 1 << 30;

fn validate(opts: &LoadOptions) -> Result<(), UsageError> {
    let bad = |m: String| Err(UsageError(m));
    if opts.size < wire::HEADER_LEN || opts.size > MAX_SIZE {
        return bad(format!(
            "--size must be between {} and {MAX_SIZE} bytes",
            wire::HEADER_LEN
        ));
    }
    if opts.conns == 0 || u32::try_from(opts.conns).is_err() {
        return bad("--conns must be between 1 and 4294967295".to_owned());
    }
    if opts.inflight == 0 || opts.inflight > MAX_INFLIGHT {
        return bad(format!("--inflight must be between 1 and {MAX_INFLIGHT}"));
    }
    if opts
        .size
        .checked_mul(opts.inflight)
        .is_none_or(|b| b > MAX_OUTSTANDING_BYTES)
    {
        return bad(format!(
            "--size × --inflight must be at most 1 GiB ({MAX_OUTSTANDING_BYTES} bytes) per connection; {} × {} is more",
            opts.size, opts.inflight
        ));
    }
    if opts.backends.is_empty() {
        return bad("no backend given".to_owned());
    }
    if opts.backends.iter().any(|b| b.trim().is_empty()) {
        return bad(
            "--backend has an empty ID: give one, a comma-separated list, or all".to_owned(),
        );
    }
    if opts.backends.iter().any(|b| b.eq_ignore_ascii_case("all")) {
        return bad(
            "--backend all already names every backend: give all alone, or a list of IDs"
                .to_owned(),
        );
    }
    for (i, b) in opts.backends.iter().enumerate() {
        if opts.backends[..i].contains(b) {
            return bad(format!("--backend lists {b} twice"));
        }
    }
    // A rate's interval (1 / rate) must be a duration the clock can hold.
    let usable_rate =
        |r: f64| r > 0.0 && r.is_finite() && Duration::try_from_secs_f64(1.0 / r).is_ok();
    if opts.rate.is_some_and(|r| !usable_rate(r)) {
        return bad("--rate must be a positive number, not vanishingly small".to_owned());
    }
    if opts.connect_rate.is_some_and(|r| !usable_rate(r)) {
        return bad("--connect-rate must be a positive number, not vanishingly small".to_owned());
    }
    for (flag, value) in [
        ("--duration", opts.duration),
        ("--echo-timeout", opts.echo_timeout),
        ("--connect-timeout", opts.connect_timeout),
    ] {
        if value.is_zero() {
            return bad(format!("{flag} must be above 0s"));
        }
    }
    if opts.connect_concurrency == 0 {
        return bad("--connect-concurrency must be at least 1".to_owned());
    }
    if opts.reconnect.is_some_and(|r| r.attempts == 0) {
        return bad("--reconnect-attempts must be at least 1".to_owned());
    }
    Ok(())
}

/// Runs the load. A message on `stop` (a Ctrl-C) ends the run early, still reporting: in
/// the connect, hold or sending phase it goes on to the drain and close; during those, it
/// abandons the connections still closing. A closed `stop` never stops the run.
pub async fn run(
    opts: &LoadOptions,
    mut stop: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<LoadRun> {
    validate(opts)?;
    let nofile = match sys::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("could not raise the open-file limit: {e}");
            0
        }
    };
    if nofile > 0 && (opts.conns as u64) + 64 > nofile {
        tracing::warn!(
            "{} connections need more file descriptors than the limit of {nofile}: expect failures",
            opts.conns
        );
    }
    // Headers the same for every connection, and ones with a value per connection.
    let (per_conn_headers, mut headers): (Vec<_>, Vec<_>) = opts
        .headers
        .iter()
        .cloned()
        .partition(|(_, v)| v.contains(CONN_PLACEHOLDER));
    // A key file that does not make a token is a bad option, as a missing one is.
    let subject_tokens = match opts.subjects {
        Some(n) => opts
            .token
            .tokens_for_subjects(n)
            .map_err(|e| UsageError(format!("--subjects: {e:#}")))?,
        None => Vec::new(),
    };
    if subject_tokens.is_empty() {
        let token = opts
            .token
            .token()
            .map_err(|e| UsageError(format!("{e:#}")))?;
        if let Some(token) = token {
            headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
        }
    }
    let connect_opts = ConnectOptions {
        url: opts.url.clone(),
        ca: opts.ca.clone(),
        insecure: opts.insecure,
        client_cert: opts.client_cert.clone(),
        headers,
        protocols: None,
        local_addr: None,
        connect_timeout: opts.connect_timeout,
        resume: opts.resume,
        proxy_header: opts.proxy_header,
        recv_buffer: None,
    };
    let connector = Connector::new(&connect_opts).await.map_err(|e| match e {
        crate::client::ConnectError::Config(m) => anyhow::Error::new(UsageError(m)),
        other => {
            anyhow::Error::new(other).context(format!("preparing connections to {}", opts.url))
        }
    })?;
    let v4_loopback = connector
        .addrs()
        .iter()
        .any(|a| a.is_ipv4() && a.ip().is_loopback());
    let sources =
        sys::plan_source_addrs(&opts.source_addrs, opts.conns, v4_loopback).map_err(UsageError)?;

    let shared = Arc::new(Shared {
        connector,
        backends: opts.backends.clone(),
        size: opts.size,
        inflight: opts.inflight,
        echo_timeout: opts.echo_timeout,
        drain_timeout: opts.drain_timeout,
        close_timeout: opts.close_timeout,
        epoch: Instant::now(),
        recorder: Recorder::new(opts.backends.len()),
        live: Live::new(opts.backends.len()),
        reconnect: opts.reconnect,
        per_conn: crate::conn::PerConn {
            headers: per_conn_headers,
            tokens: subject_tokens,
        },
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let mut progress = Progress::new(opts.progress);
    let requested = opts.conns as u64;
    let clock = sys::CpuClock::open();
    let cpu_start = clock.now().unwrap_or_default();
    let mut stopped_early = false;

    // Connect phase.
    let connect_start = Instant::now();
    // Told to stop while connections are still being opened, the spawner opens no more;
    // those already open run on to the report.
    let (halt_tx, halt_rx) = watch::channel(false);
    let mut spawner = tokio::spawn(spawn_connections(
        shared.clone(),
        opts.clone(),
        sources.clone(),
        phase_rx,
        halt_rx,
    ));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut tasks: JoinSet<Outcome> = loop {
        tokio::select! {
            r = &mut spawner => break r.context("connection spawner")??,
            _ = tick.tick() => progress.update("connecting", requested, &shared.live.totals()),
            () = stop_asked(&mut stop), if !stopped_early => {
                stopped_early = true;
                let _ = halt_tx.send(true);
            }
        }
    };
    // Every connect is bounded by the connect timeout; this bound only guards the loop.
    let connects_done_by = Instant::now() + opts.connect_timeout + Duration::from_secs(2);
    // The phase ends as the last connection opens (or fails): woken by each one, not
    // found at the next progress tick, which rounded the phase up to 100 ms.
    let mut connect_end = Instant::now();
    while !stopped_early {
        let t = shared.live.totals();
        connect_end = Instant::now();
        if t.opened + t.failed >= requested || connect_end > connects_done_by {
            break;
        }
        tokio::select! {
            () = shared.live.connect_settled.notified() => {}
            _ = tick.tick() => progress.update("connecting", requested, &t),
            () = stop_asked(&mut stop) => {
                stopped_early = true;
                connect_end = Instant::now();
                break;
            }
        }
    }
    progress.update("connecting", requested, &shared.live.totals());
    let connect_phase = connect_end.saturating_duration_since(connect_start);
    let cpu_connected = clock.now().unwrap_or_default();
    // Every connection has failed or ended for good: nothing is left to hold or run, and
    // the report need not wait out the hold and the duration.
    let all_over =
        |t: &crate::stats::LiveTotals| t.opened + t.failed >= requested && t.dropped >= t.opened;

    // Hold phase.
    if !stopped_early && !opts.hold.is_zero() {
        let end = tokio::time::Instant::now() + opts.hold;
        loop {
            let t = shared.live.totals();
            progress.update("holding", requested, &t);
            if opts.hold_until.as_ref().is_some_and(|p| p.exists()) || all_over(&t) {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(end) => break,
                _ = tick.tick() => {}
                () = stop_asked(&mut stop) => { stopped_early = true; break; }
            }
        }
    }

    // Run phase.
    let opened = shared.live.totals().opened;
    let interval_ns = match opts.rate {
        Some(rate) if opened > 0 => (opened as f64 / rate * 1e9).max(1.0) as u64,
        _ => 0,
    };
    let run_start = Instant::now();
    if !stopped_early {
        let _ = phase_tx.send(Phase::Run { interval_ns });
        let end = tokio::time::Instant::now() + opts.duration;
        loop {
            let t = shared.live.totals();
            progress.update("running", requested, &t);
            if all_over(&t) {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(end) => break,
                _ = tick.tick() => {}
                () = stop_asked(&mut stop) => { stopped_early = true; break; }
            }
        }
    }
    let duration = run_start.elapsed();
    let _ = phase_tx.send(Phase::Stop);

    let spawned = tasks.len();
    // Drain and close: every task has its own deadlines; this bound only guards against
    // a task that would hang regardless.
    let limit = opts.drain_timeout + opts.close_timeout + Duration::from_secs(5);
    let (outcomes, abandoned) = collect(
        &mut tasks,
        limit,
        &mut progress,
        requested,
        &shared,
        (&mut stop, &phase_tx),
    )
    .await;
    stopped_early |= abandoned;
    let cpu_end = clock.now().unwrap_or_default();
    progress.finish();
    Ok(build(
        opts,
        &shared,
        &outcomes,
        [connect_phase, duration],
        [cpu_start, cpu_connected, cpu_end],
        Conditions {
            nofile,
            source_addrs: sources.len(),
            interrupted: stopped_early,
            spawned,
        },
    ))
}

/// What the run ran under and how it ended.
struct Conditions {
    /// Soft open-file limit in force.
    nofile: u64,
    /// Source addresses the connections were spread over.
    source_addrs: usize,
    /// Stopped early (Ctrl-C).
    interrupted: bool,
    /// Connections started (fewer than asked for when stopped while connecting).
    spawned: usize,
}

/// Why a connection an interrupted run never started counts as failed.
const NOT_STARTED: &str = "not started: the run was interrupted";

/// Spawns one task per connection, at the connect rate and concurrency asked for.
async fn spawn_connections(
    shared: Arc<Shared>,
    opts: LoadOptions,
    sources: Vec<IpAddr>,
    phase: watch::Receiver<Phase>,
    mut halt: watch::Receiver<bool>,
) -> anyhow::Result<JoinSet<Outcome>> {
    let permits = Arc::new(Semaphore::new(opts.connect_concurrency));
    let mut tasks = JoinSet::new();
    let start = tokio::time::Instant::now();
    for i in 0..opts.conns {
        if *halt.borrow() {
            break;
        }
        if let Some(rate) = opts.connect_rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                _ = halt.changed() => break,
            }
        }
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.context("connect permits")?,
            _ = halt.changed() => break,
        };
        let plan = Plan {
            id: i as u32,
            backend: i % shared.backends.len(),
            local: (!sources.is_empty()).then(|| sources[i % sources.len()]),
        };
        tasks.spawn(conn::run(shared.clone(), plan, permit, phase.clone()));
    }
    Ok(tasks)
}

/// Resolves at the next message on `stop`; never once it is closed.
pub(crate) async fn stop_asked(stop: &mut mpsc::UnboundedReceiver<()>) {
    if stop.recv().await.is_none() {
        std::future::pending::<()>().await;
    }
}

/// Waits for every connection task (up to `limit`), keeping the progress line alive; a
/// message on `stop` tells those still draining or closing to end at once, as abandoned
/// (returned `true`), with what they counted.
async fn collect(
    tasks: &mut JoinSet<Outcome>,
    limit: Duration,
    progress: &mut Progress,
    requested: u64,
    shared: &Shared,
    (stop, phase): (&mut mpsc::UnboundedReceiver<()>, &watch::Sender<Phase>),
) -> (Vec<Outcome>, bool) {
    let mut abandoned = false;
    let mut outcomes = Vec::with_capacity(tasks.len());
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(Ok(o)) => outcomes.push(o),
                Some(Err(e)) => tracing::warn!("a connection task failed: {e}"),
                None => break,
            },
            _ = tick.tick() => progress.update("closing", requested, &shared.live.totals()),
            () = &mut deadline => {
                tracing::warn!("{} connections did not finish closing in time", tasks.len());
                tasks.abort_all();
                break;
            }
            () = stop_asked(stop), if !abandoned => {
                abandoned = true;
                let _ = phase.send(Phase::Abandon);
            }
        }
    }
    (outcomes, abandoned)
}

fn build(
    opts: &LoadOptions,
    shared: &Shared,
    outcomes: &[Outcome],
    [connect_phase, duration]: [Duration; 2],
    [cpu_start, cpu_connected, cpu_end]: [CpuTime; 3],
    run: Conditions,
) -> LoadRun {
    let (rtt, connect) = shared.recorder.merged();
    let duration_s = duration.as_secs_f64();
    let nb = opts.backends.len();
    let requested_of = |b: usize| (opts.conns / nb + usize::from(b < opts.conns % nb)) as u64;
    // Connection i goes to backend i % nb: those an interrupted run never started are
    // failed as such; tasks that could not be collected still count, as dropped.
    let spawned_of = |b: usize| (run.spawned / nb + usize::from(b < run.spawned % nb)) as u64;
    let mut counted = vec![0u64; nb];
    for o in outcomes {
        counted[o.backend] += 1;
    }
    let mut lost: Vec<Outcome> = Vec::new();
    for (b, n) in counted.iter().enumerate() {
        for _ in *n..spawned_of(b) {
            lost.push(Outcome::new(
                b,
                End::Dropped("did not finish closing in time".to_owned()),
            ));
        }
        for _ in spawned_of(b).max(*n)..requested_of(b) {
            lost.push(Outcome::new(b, End::Failed(NOT_STARTED.to_owned())));
        }
    }
    let all: Vec<&Outcome> = outcomes.iter().chain(&lost).collect();
    let backends: Vec<_> = (0..nb)
        .map(|b| {
            report::section(
                &opts.backends[b],
                requested_of(b),
                all.iter().copied().filter(|o| o.backend == b),
                &rtt[b],
                &connect[b],
                opts.size,
                duration_s,
            )
        })
        .collect();
    let mut rtt_total = new_histogram();
    let mut connect_total = new_histogram();
    for h in &rtt {
        let _ = rtt_total.add(h);
    }
    for h in &connect {
        let _ = connect_total.add(h);
    }
    let total = report::section(
        "total",
        opts.conns as u64,
        all.iter().copied(),
        &rtt_total,
        &connect_total,
        opts.size,
        duration_s,
    );
    let sending = cpu_end.since(&cpu_connected);
    let echoed = total.messages.echoed;
    let loadgen = Usage {
        cpu_user_s: sending.user.as_secs_f64(),
        cpu_system_s: sending.system.as_secs_f64(),
        cpu_s: sending.total().as_secs_f64(),
        cpu_us_per_msg: (echoed > 0).then(|| sending.total().as_secs_f64() * 1e6 / echoed as f64),
        connect_cpu_s: cpu_connected.since(&cpu_start).total().as_secs_f64(),
        nofile_limit: run.nofile,
        source_addrs: run.source_addrs,
    };
    let report = Report {
        version: crate::report::JSON_VERSION,
        url: opts.url.clone(),
        mode: if opts.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .to_owned(),
        inflight: opts.inflight,
        rate: opts.rate,
        size: opts.size,
        duration_s,
        connect_phase_s: connect_phase.as_secs_f64(),
        conns_per_s: (connect_phase > Duration::ZERO)
            .then(|| total.connections.opened as f64 / connect_phase.as_secs_f64()),
        reconnect: opts.reconnect.is_some(),
        backends,
        total,
        loadgen,
        tls_suites: shared
            .connector
            .negotiated_suites()
            .into_iter()
            .map(|(suite, connections)| report::SuiteCount {
                suite: suite.to_owned(),
                connections,
            })
            .collect(),
        tls_resumed: shared.connector.resumed_handshakes(),
        interrupted: run.interrupted,
    };
    let mut named: Vec<(String, Histogram<u64>)> = opts.backends.iter().cloned().zip(rtt).collect();
    if nb > 1 {
        named.push(("total".to_owned(), rtt_total));
    }
    LoadRun { report, rtt: named }
}
