//! Backend pools through the real gateway (in-process, real TLS and JWT checks) and real
//! demo backends: three instances of Backend_ABC on 127.0.0.2/3/4 (one port), told apart
//! by the sessions each one counts. Round robin spreads, least_conn fills the emptiest,
//! a dead instance is ejected and retried without the client noticing and readmitted
//! after its back-off, a DNS pool follows a name whose answers the test changes, and a
//! reload replaces a pool while sessions on removed instances go on.

mod support;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use demo_services::{Backend, RunningBackend, ServiceOptions};
use gateway::resolve::{Lookup, LookupFuture};
use loadgen::client::{connect, ConnectOptions, Connected};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const ID: &str = "Backend_POOL";
const NAME: &str = "abc.pool.test";
/// The live-sessions gauge of one instance.
const LIVE: &str = "backend_instance_sessions_active";

/// A name service the test controls.
#[derive(Default)]
struct StubDns {
    answers: Mutex<HashMap<String, Vec<IpAddr>>>,
    /// Lookups answered so far.
    calls: std::sync::atomic::AtomicU64,
}

impl StubDns {
    fn set(&self, name: &str, ips: &[IpAddr]) {
        if let Ok(mut a) = self.answers.lock() {
            a.insert(name.to_owned(), ips.to_vec());
        }
    }
}

impl Lookup for StubDns {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> LookupFuture<'a> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let found = self.answers.lock().ok().and_then(|a| a.get(host).cloned());
        Box::pin(async move {
            match found {
                Some(ips) => Ok(ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect()),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
            }
        })
    }
}

/// The instance IPs: 127.0.0.2, .3, .4.
fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))
}

/// Three Backend_ABC instances on one port, at 127.0.0.2, .3 and .4.
struct Instances {
    port: u16,
    running: Vec<Option<RunningBackend>>,
}

impl Instances {
    async fn start() -> Result<Instances> {
        let mut last = None;
        for _ in 0..10 {
            match Self::try_start().await {
                Ok(i) => return Ok(i),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no free port")))
    }

    async fn try_start() -> Result<Instances> {
        let first = spawn(SocketAddr::new(ip(0), 0)).await?;
        let port = first.addr().port();
        let mut running = vec![Some(first)];
        for i in 1..3 {
            running.push(Some(spawn(SocketAddr::new(ip(i), port)).await?));
        }
        Ok(Instances { port, running })
    }

    fn url(&self, i: usize) -> String {
        format!("ws://{}:{}{}", ip(i), self.port, Backend::Abc.path())
    }

    fn label(&self, i: usize) -> String {
        format!("{}:{}", ip(i), self.port)
    }

    /// Sessions each instance has served so far (a stopped one counts 0).
    fn started(&self) -> [u64; 3] {
        let mut out = [0; 3];
        for (i, r) in self.running.iter().enumerate() {
            out[i] = r.as_ref().map_or(0, |r| r.sessions_started());
        }
        out
    }

    fn open(&self) -> [u64; 3] {
        let mut out = [0; 3];
        for (i, r) in self.running.iter().enumerate() {
            out[i] = r.as_ref().map_or(0, |r| r.sessions_open());
        }
        out
    }

    async fn kill(&mut self, i: usize) -> Result<()> {
        let r = self.running[i].take().context("already stopped")?;
        r.stop_and_wait().await;
        Ok(())
    }

    async fn revive(&mut self, i: usize) -> Result<()> {
        self.running[i] = Some(spawn(SocketAddr::new(ip(i), self.port)).await?);
        Ok(())
    }
}

async fn spawn(addr: SocketAddr) -> Result<RunningBackend> {
    Ok(demo_services::spawn_for_test_on(
        addr,
        ServiceOptions {
            backend: Backend::Abc,
            push_interval: None,
        },
    )
    .await?)
}

/// The gateway in-process, with the test's name service and an admin listener.
struct Gw {
    addr: SocketAddr,
    admin: SocketAddr,
    reloader: gateway::Reloader,
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gw {
    /// Starts a gateway whose `[backends]` holds `backends` (TOML lines), from a file in
    /// `dir` when given (so it can be reloaded).
    async fn start(backends: &str, dns: Arc<StubDns>, dir: Option<&PathBuf>) -> Result<Gw> {
        let certs = certs();
        let toml = format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n\n[auth]\npublic_key = {:?}\n\n[timeouts]\nbackend_connect = \"2s\"\n\n[backends]\n{backends}",
            certs.join("server.crt"),
            certs.join("server.key"),
            certs.join("jwt-public.pem"),
        );
        let config = match dir {
            Some(dir) => {
                let path = dir.join("Config.toml");
                std::fs::write(&path, &toml)?;
                gateway::Config::load(&path)?
            }
            None => gateway::Config::from_toml_str(&toml, &loadgen::testbed::repo_root())?,
        };
        let gw = gateway::Gateway::with_lookup(config, dns)?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let admin_addr = admin.local_addr()?;
        gw.spawn_admin(admin);
        let reloader = gw.reloader();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = gw
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Gw {
            addr,
            admin: admin_addr,
            reloader,
            _stop: stop,
            task,
        })
    }

    fn options(&self) -> Result<ConnectOptions> {
        let pem = std::fs::read(certs().join("jwt-private.pem"))?;
        let token = loadgen::token::mint_sample(&pem)?;
        let mut opts = ConnectOptions::new(format!("wss://localhost:{}/gateway", self.addr.port()))
            .header("ID", ID)
            .header("Authorization", format!("Bearer {token}"));
        opts.ca = Some(certs().join("ca.crt"));
        Ok(opts)
    }

    /// Connects through the gateway and checks the session with an echo.
    async fn session(&self) -> Result<Connected> {
        let mut c = connect(&self.options()?)
            .await
            .context("connect through the gateway")?;
        echo(&mut c.ws, b"hello pool").await?;
        Ok(c)
    }

    async fn metrics(&self) -> Result<String> {
        let mut tcp = tokio::net::TcpStream::connect(self.admin).await?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut out)).await??;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// A per-instance sample (`None`: the instance has no such series).
    /// Backend connections the gateway opened for clients on each instance (health
    /// probes, which the backends count as sessions too, are not in it).
    async fn connections(&self, inst: &Instances) -> Result<[u64; 3]> {
        let mut out = [0; 3];
        for (i, n) in out.iter_mut().enumerate() {
            let v = self
                .instance_metric("backend_instance_connections_total", &inst.label(i))
                .await?;
            *n = v.unwrap_or(0.0) as u64;
        }
        Ok(out)
    }

    async fn instance_metric(&self, name: &str, instance: &str) -> Result<Option<f64>> {
        let m = self.metrics().await?;
        let prefix = format!("wsgate_{name}{{backend=\"{ID}\",instance=\"{instance}\"}} ");
        Ok(m.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok()))
    }
}

/// Polls a per-instance sample until `ok` holds; fails naming `what` after the deadline.
async fn wait_metric(
    gw: &Gw,
    what: &str,
    name: &str,
    instance: &str,
    ok: impl Fn(Option<f64>) -> bool,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let value = gw.instance_metric(name, instance).await?;
        if ok(value) {
            return Ok(());
        }
        if started.elapsed() > DEADLINE {
            bail!("timed out waiting for {what} ({name} of {instance} is {value:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens sessions until one goes to instance 0 (back after being ejected for a minute:
/// only the health check can readmit it in time).
async fn readmitted(gw: &Gw, inst: &Instances) -> Result<()> {
    let revived = Instant::now();
    while gw.connections(inst).await?[0] == 0 {
        ensure!(
            revived.elapsed() < DEADLINE,
            "the health check never readmitted the instance"
        );
        gw.session().await?;
    }
    Ok(())
}

/// Opens a session and says which instance took it (the one whose count rose).
async fn session_on(gw: &Gw, inst: &Instances) -> Result<(Connected, usize)> {
    session_with_on(inst, &gw.options()?).await
}

/// Opens a session with `opts` (checked with an echo) and says which instance took it.
async fn session_with_on(inst: &Instances, opts: &ConnectOptions) -> Result<(Connected, usize)> {
    let before = inst.started();
    let mut c = connect(opts).await.context("connect through the gateway")?;
    echo(&mut c.ws, b"hello pool").await?;
    let after = inst.started();
    let rose: Vec<usize> = (0..3).filter(|&i| after[i] > before[i]).collect();
    match rose[..] {
        [i] => Ok((c, i)),
        _ => bail!("expected one instance to take the session: {before:?} -> {after:?}"),
    }
}

fn urls_entry(inst: &Instances, idx: &[usize], extra: &str) -> String {
    let urls: Vec<String> = idx.iter().map(|&i| format!("{:?}", inst.url(i))).collect();
    format!("{ID} = {{ urls = [{}]{extra} }}\n", urls.join(", "))
}

#[tokio::test]
async fn round_robin_spreads_new_connections_evenly() -> Result<()> {
    let inst = Instances::start().await?;
    let gw = Gw::start(&urls_entry(&inst, &[0, 1, 2], ""), Arc::default(), None).await?;
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(gw.session().await?);
    }
    ensure!(
        inst.started() == [3, 3, 3],
        "sessions per instance: {:?}",
        inst.started()
    );
    ensure!(
        inst.open() == [3, 3, 3],
        "open per instance: {:?}",
        inst.open()
    );
    for i in 0..3 {
        let opened = gw
            .instance_metric("backend_instance_connections_total", &inst.label(i))
            .await?;
        let live = gw.instance_metric(LIVE, &inst.label(i)).await?;
        ensure!(
            opened == Some(3.0) && live == Some(3.0),
            "instance {i}: opened {opened:?}, live {live:?}"
        );
    }
    // Sessions ending release their instance: the live gauge falls back to zero.
    for mut c in held {
        close_cleanly(&mut c.ws).await?;
    }
    for i in 0..3 {
        let label = inst.label(i);
        wait_metric(&gw, "the live gauge to drop to 0", LIVE, &label, |v| {
            v == Some(0.0)
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn least_conn_sends_new_connections_to_the_least_loaded_instance() -> Result<()> {
    let inst = Instances::start().await?;
    let entry = urls_entry(&inst, &[0, 1, 2], ", balance = \"least_conn\"");
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    // Two sessions each, remembering where each went.
    let mut on: Vec<Vec<Connected>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..6 {
        let (c, i) = session_on(&gw, &inst).await?;
        on[i].push(c);
    }
    ensure!(
        inst.open() == [2, 2, 2],
        "least_conn with equal load spreads: {:?}",
        inst.open()
    );
    // Instance 0 drops to no session, instance 1 to one: live is 0 / 1 / 2.
    let mut closing: Vec<Connected> = on[0].drain(..).collect();
    closing.extend(on[1].drain(..1));
    for mut c in closing {
        close_cleanly(&mut c.ws).await?;
    }
    wait_metric(&gw, "0's sessions to end", LIVE, &inst.label(0), |v| {
        v == Some(0.0)
    })
    .await?;
    wait_metric(&gw, "one of 1's to end", LIVE, &inst.label(1), |v| {
        v == Some(1.0)
    })
    .await?;
    // The emptiest instance takes the next one; then 0 and 1 tie and share; 2 gets none.
    let (first, i) = session_on(&gw, &inst).await?;
    ensure!(
        i == 0,
        "least_conn sent the first new session to instance {i}, not 0"
    );
    let mut more = vec![first];
    for _ in 0..2 {
        more.push(session_on(&gw, &inst).await?.0);
    }
    // 0 took the first and one of the tie with 1; 2 (busiest) took none.
    ensure!(
        inst.started() == [4, 3, 2],
        "after three more: {:?}",
        inst.started()
    );
    Ok(())
}

#[tokio::test]
async fn a_dead_instance_is_ejected_retried_invisibly_and_readmitted_after_its_back_off(
) -> Result<()> {
    let mut inst = Instances::start().await?;
    let eject = Duration::from_millis(1500);
    let entry = urls_entry(&inst, &[0, 1, 2], ", eject = \"1500ms\"");
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    for _ in 0..3 {
        gw.session().await?;
    }
    ensure!(inst.started() == [1, 1, 1], "{:?}", inst.started());

    inst.kill(0).await?;
    let killed = Instant::now();
    let dead = inst.label(0);
    // Every new connection succeeds: the dead instance is retried on another, then ejected.
    let before = inst.started();
    let mut held = Vec::new();
    for n in 0..10 {
        held.push(
            gw.session()
                .await
                .with_context(|| format!("connection {n} after the kill"))?,
        );
    }
    let after = inst.started();
    let (got1, got2) = (after[1] - before[1], after[2] - before[2]);
    ensure!(got1 + got2 == 10, "{before:?} -> {after:?}");
    ensure!(
        got1 >= 3 && got2 >= 3,
        "not spread over the two left: {got1} / {got2}"
    );
    let failures = gw
        .instance_metric("backend_instance_connect_failures_total", &dead)
        .await?;
    let ejections = gw
        .instance_metric("backend_instance_ejections_total", &dead)
        .await?;
    ensure!(
        failures >= Some(1.0),
        "no connect failure counted on the dead instance: {failures:?}"
    );
    ensure!(ejections >= Some(1.0), "no ejection counted: {ejections:?}");
    let client_failures = gw.metrics().await?;
    ensure!(
        !client_failures.contains(&format!(
            "wsgate_backend_connect_failures_total{{backend=\"{ID}\"}}"
        )),
        "a client saw a backend failure"
    );

    // Back on the same address: it takes sessions again once its back-off is over.
    inst.revive(0).await?;
    while inst.started()[0] == 0 {
        ensure!(
            killed.elapsed() < DEADLINE,
            "the revived instance never got a session"
        );
        gw.session().await?;
    }
    let back_after = killed.elapsed();
    ensure!(
        back_after >= eject,
        "readmitted {back_after:?} after the kill, within the {eject:?} back-off"
    );
    let opened = gw
        .instance_metric("backend_instance_connections_total", &dead)
        .await?;
    ensure!(
        opened >= Some(2.0),
        "opened on the revived instance: {opened:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_health_check_ejects_a_dead_instance_before_any_client_and_readmits_it() -> Result<()> {
    let mut inst = Instances::start().await?;
    // A minute's back-off: only the health check can bring the instance back in time.
    let entry = urls_entry(
        &inst,
        &[0, 1, 2],
        ", eject = \"1m\", health_interval = \"100ms\"",
    );
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    inst.kill(0).await?;
    let dead = inst.label(0);
    wait_metric(
        &gw,
        "the health check to eject 0",
        "backend_instance_ejections_total",
        &dead,
        |v| v >= Some(1.0),
    )
    .await?;
    let before = gw.connections(&inst).await?;
    for _ in 0..6 {
        gw.session().await?;
    }
    let after = gw.connections(&inst).await?;
    ensure!(
        after[1] - before[1] == 3 && after[2] - before[2] == 3,
        "{before:?} -> {after:?}"
    );
    inst.revive(0).await?;
    readmitted(&gw, &inst).await?;
    // The probes' own sessions are closed, each right after its upgrade: once the
    // clients' are gone too, none is left open on any instance.
    let waiting = Instant::now();
    while inst.open() != [0, 0, 0] {
        ensure!(
            waiting.elapsed() < DEADLINE,
            "sessions left open on the instances: {:?}",
            inst.open()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_backend_name_with_an_address_that_drops_syns_is_served_by_its_next_address() -> Result<()>
{
    let mut inst = Instances::start().await?;
    // 127.0.0.2 holds a listener whose accept queue is full and never drained: the
    // kernel drops every SYN to it, as a dead host or a firewall would.
    inst.kill(0).await?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(ip(0), inst.port))?;
    let blackhole = socket.listen(0)?;
    let _filler = tokio::net::TcpStream::connect(blackhole.local_addr()?).await?;
    let dns = Arc::new(StubDns::default());
    dns.set(NAME, &[ip(0), ip(1)]);
    let url = format!("ws://{NAME}:{}{}", inst.port, Backend::Abc.path());
    // The test gateway's backend connect timeout is 2 s: trying the addresses one after
    // the other, the first would take all of it and the client would get a 504.
    let gw = Gw::start(&format!("{ID} = {url:?}\n"), dns, None).await?;
    let (_c, i) = session_on(&gw, &inst).await?;
    ensure!(i == 1, "session went to {i}");
    drop(blackhole);
    Ok(())
}

/// Stops instance `i` and puts in its place a listener that takes every connection and
/// never answers, as a hung backend process does; counts the connections it took.
async fn hung_instance(
    inst: &mut Instances,
    i: usize,
) -> Result<(
    tokio::task::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicUsize>,
)> {
    inst.kill(i).await?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(ip(i), inst.port))?;
    let silent = socket.listen(64)?;
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            conns.push(c);
        }
    });
    Ok((held, accepted))
}

#[tokio::test]
async fn a_names_address_that_takes_connections_but_never_answers_goes_last() -> Result<()> {
    let mut inst = Instances::start().await?;
    // 127.0.0.2 accepts every connection and never answers the upgrade, as a hung
    // backend process does.
    let (held, _) = hung_instance(&mut inst, 0).await?;
    let dns = Arc::new(StubDns::default());
    dns.set(NAME, &[ip(0), ip(1)]);
    let url = format!("ws://{NAME}:{}{}", inst.port, Backend::Abc.path());
    let gw = Gw::start(&format!("{ID} = {url:?}\n"), dns, None).await?;
    // The first client's connect goes to the first address, which takes it and all of
    // backend_connect: a 504.
    let (status, reason) = refused(&gw.options()?).await?;
    ensure!(status == 504, "{status} {reason}");
    // The next ones go to the address that works.
    for _ in 0..3 {
        let (_c, i) = session_on(&gw, &inst).await?;
        ensure!(i == 1, "session went to {i}");
    }
    held.abort();
    Ok(())
}

#[tokio::test]
async fn the_health_check_of_a_name_is_not_held_up_by_one_silent_address() -> Result<()> {
    let mut inst = Instances::start().await?;
    // 127.0.0.2 takes connections and never answers; 127.0.0.3 works.
    let (held, accepted) = hung_instance(&mut inst, 0).await?;
    let dns = Arc::new(StubDns::default());
    dns.set(NAME, &[ip(0), ip(1)]);
    let url = format!("ws://{NAME}:{}{}", inst.port, Backend::Abc.path());
    let gw = Gw::start(
        &format!("{ID} = {{ urls = [{url:?}], health_interval = \"200ms\" }}\n"),
        dns,
        None,
    )
    .await?;
    // Three rounds of probes have reached the silent address (each waits out its
    // timeout there), and the instance was never ejected: the other address answered.
    let started = Instant::now();
    while accepted.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        ensure!(
            started.elapsed() < DEADLINE,
            "the health check never probed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let instance = format!("{NAME}:{}", inst.port);
    let ejections = gw
        .instance_metric("backend_instance_ejections_total", &instance)
        .await?;
    ensure!(
        ejections.unwrap_or(0.0) == 0.0,
        "ejected {ejections:?} times while one of its addresses answered"
    );
    held.abort();
    Ok(())
}

/// Requests an HTTP server that answers every request with one status has had: from the
/// gateway's health check, and from anyone else.
#[derive(Default)]
struct Answered {
    probes: std::sync::atomic::AtomicUsize,
    others: std::sync::atomic::AtomicUsize,
}

/// Reads an HTTP request head (up to its blank line); `None` if the peer left first.
async fn request_head(tcp: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// Serves `status_line` (e.g. "503 Service Unavailable") to every request at `addr` until
/// the returned task is aborted: a backend that is up at TCP but not a WebSocket server.
async fn answering(
    addr: SocketAddr,
    status_line: &'static str,
) -> Result<(tokio::task::JoinHandle<()>, Arc<Answered>)> {
    let listener = TcpListener::bind(addr).await?;
    let answered = Arc::new(Answered::default());
    let counts = answered.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counts = counts.clone();
            tokio::spawn(async move {
                let Some(head) = request_head(&mut tcp).await else {
                    return;
                };
                let probe = String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .contains("user-agent: wsgate-health-check");
                let count = if probe {
                    &counts.probes
                } else {
                    &counts.others
                };
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let answer = format!(
                    "HTTP/1.1 {status_line}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok((task, answered))
}

#[tokio::test]
async fn the_health_check_upgrades_so_an_instance_that_answers_5xx_or_200_stays_out() -> Result<()>
{
    // A 200 or a 3xx is no WebSocket server either.
    for status_line in ["503 Service Unavailable", "200 OK"] {
        health_check_keeps_out(status_line).await?;
    }
    Ok(())
}

async fn health_check_keeps_out(status_line: &'static str) -> Result<()> {
    let mut inst = Instances::start().await?;
    let entry = urls_entry(
        &inst,
        &[0, 1, 2],
        ", eject = \"1m\", health_interval = \"100ms\"",
    );
    // Instance 0 accepts TCP but answers every upgrade 503 (a deploy in progress, say):
    // a TCP check would call it up; the WebSocket check, like a session's connect, not.
    inst.kill(0).await?;
    let (server, answered) = answering(SocketAddr::new(ip(0), inst.port), status_line).await?;
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    let down = inst.label(0);
    wait_metric(
        &gw,
        "the health check to eject 0",
        "backend_instance_ejections_total",
        &down,
        |v| v >= Some(1.0),
    )
    .await?;
    // Probes go on (at least two more), and no client's connect is sent to it.
    let probed = answered.probes.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let before = gw.connections(&inst).await?;
    while answered.probes.load(std::sync::atomic::Ordering::Relaxed) < probed + 2 {
        ensure!(
            started.elapsed() < DEADLINE,
            "the health check stopped probing"
        );
        gw.session().await?;
    }
    let after = gw.connections(&inst).await?;
    let others = answered.others.load(std::sync::atomic::Ordering::Relaxed);
    ensure!(
        others == 0,
        "{others} client connects were tried on the instance that answers {status_line}"
    );
    ensure!(
        after[1] > before[1] && after[2] > before[2],
        "the other two took the sessions: {before:?} -> {after:?}"
    );
    // A real backend there again: readmitted by the next probe.
    server.abort();
    let _ = server.await; // the listener is closed once the aborted task is gone
    inst.revive(0).await?;
    readmitted(&gw, &inst).await?;
    Ok(())
}

#[tokio::test]
async fn a_4xx_answer_to_the_health_check_keeps_an_instance_in() -> Result<()> {
    // A backend that wants credentials the probe does not carry is up, as a 4xx to a
    // client's connect does not eject it either.
    let mut inst = Instances::start().await?;
    inst.kill(0).await?;
    let (_server, answered) =
        answering(SocketAddr::new(ip(0), inst.port), "401 Unauthorized").await?;
    let entry = urls_entry(&inst, &[0, 1], ", health_interval = \"100ms\"");
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    let started = Instant::now();
    while answered.probes.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        ensure!(
            started.elapsed() < DEADLINE,
            "no probes reached the instance"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ejections = gw
        .instance_metric("backend_instance_ejections_total", &inst.label(0))
        .await?;
    ensure!(
        ejections.unwrap_or(0.0) == 0.0,
        "ejected after three 401s to the probe: {ejections:?}"
    );
    Ok(())
}

/// Requests to backends that accept, read the request and never answer.
#[derive(Default)]
struct Silent {
    /// Requests each silent backend has read.
    seen: [std::sync::atomic::AtomicUsize; 2],
    /// When the first request to backend 0 ended (the prober gave up on it), how many
    /// requests backend 1 had read by then (`usize::MAX`: not yet ended).
    seen_by_1_when_0_gave_up: std::sync::atomic::AtomicUsize,
}

/// Two silent backends, at instances 0 and 1 of `inst` (which must be stopped).
async fn silent(inst: &Instances) -> Result<(Vec<tokio::task::JoinHandle<()>>, Arc<Silent>)> {
    use std::sync::atomic::Ordering::Relaxed;
    let state = Arc::new(Silent::default());
    state.seen_by_1_when_0_gave_up.store(usize::MAX, Relaxed);
    let mut tasks = Vec::new();
    for n in 0..2 {
        let listener = TcpListener::bind(SocketAddr::new(ip(n), inst.port)).await?;
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    if request_head(&mut tcp).await.is_none() {
                        return;
                    }
                    let mut buf = [0u8; 1024];
                    let first = state.seen[n].fetch_add(1, Relaxed) == 0;
                    while matches!(tcp.read(&mut buf).await, Ok(k) if k > 0) {}
                    if n == 0 && first {
                        let seen = state.seen[1].load(Relaxed);
                        state.seen_by_1_when_0_gave_up.store(seen, Relaxed);
                    }
                });
            }
        }));
    }
    Ok((tasks, state))
}

#[tokio::test]
async fn silent_instances_are_probed_at_once_not_one_after_another() -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    // Two instances that take the upgrade request and never answer: each probe waits out
    // its timeout (the 1 s interval here). Probed one after the other, the second would be
    // asked only after the first was given up on, and a pool with many silent instances
    // would take that long per round to notice anything.
    let mut inst = Instances::start().await?;
    inst.kill(0).await?;
    inst.kill(1).await?;
    let (_servers, state) = silent(&inst).await?;
    let entry = urls_entry(&inst, &[0, 1, 2], ", health_interval = \"1s\"");
    let _gw = Gw::start(&entry, Arc::default(), None).await?;
    let started = Instant::now();
    while state.seen_by_1_when_0_gave_up.load(Relaxed) == usize::MAX {
        ensure!(
            started.elapsed() < DEADLINE,
            "the first probe was never given up on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = state.seen_by_1_when_0_gave_up.load(Relaxed);
    ensure!(
        seen >= 1,
        "instance 1 was first asked only after instance 0's probe had been given up on"
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_instance_does_not_slow_the_health_checks_rounds() -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    // Every 500 ms, each probe given up on after 500 ms (the interval bounds it). Rounds
    // used to start 500 ms after the last one ended: every second with a silent
    // instance, so the others were checked half as often as configured.
    let mut inst = Instances::start().await?;
    inst.kill(0).await?;
    inst.kill(1).await?;
    let (_servers, state) = silent(&inst).await?;
    let entry = urls_entry(&inst, &[0, 1, 2], ", health_interval = \"500ms\"");
    let _gw = Gw::start(&entry, Arc::default(), None).await?;
    wait_for("the first probe", DEADLINE, || {
        let seen = state.seen[0].load(Relaxed);
        async move { Ok(seen > 0) }
    })
    .await?;
    let from = state.seen[0].load(Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rounds = state.seen[0].load(Relaxed) - from;
    ensure!(
        rounds >= 5,
        "{rounds} probes of the silent instance in 3 s at health_interval = 500ms"
    );
    Ok(())
}

#[tokio::test]
async fn connects_fail_only_when_every_instance_is_down_and_all_ejected_are_still_tried(
) -> Result<()> {
    let mut inst = Instances::start().await?;
    let entry = urls_entry(&inst, &[0, 1], ", eject = \"1m\"");
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    inst.kill(0).await?;
    inst.kill(1).await?;
    let (status, _) = refused(&gw.options()?).await?;
    ensure!(status == 502, "both down: {status}");
    // Both are ejected for a minute; one comes back and is still tried at once.
    inst.revive(1).await?;
    let (_c, i) = session_on(&gw, &inst).await?;
    ensure!(i == 1, "session went to {i}");
    Ok(())
}

#[tokio::test]
async fn with_every_instance_ejected_one_that_stays_silent_ends_the_clients_wait() -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut inst = Instances::start().await?;
    inst.kill(0).await?;
    inst.kill(1).await?;
    let (_servers, state) = silent(&inst).await?;
    let entry = urls_entry(&inst, &[0, 1], ", eject = \"1m\"");
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    let asked = || state.seen[0].load(Relaxed) + state.seen[1].load(Relaxed);
    // The first client's connect tries both and gets a 504; both are ejected.
    let (status, _) = refused(&gw.options()?).await?;
    ensure!(status == 504, "{status}");
    let before = asked();
    ensure!(before == 2, "{before} instances asked");
    // The next client: one more silent instance, then its 504.
    let (status, _) = refused(&gw.options()?).await?;
    ensure!(status == 504, "{status}");
    // (The request reaches the silent backend before the gateway gives up on it.)
    ensure!(
        asked() == before + 1,
        "{} instances asked for a client of an all-ejected silent pool",
        asked() - before
    );
    Ok(())
}

#[tokio::test]
async fn a_dns_pool_follows_changed_answers_and_keeps_open_sessions() -> Result<()> {
    let inst = Instances::start().await?;
    let dns = Arc::new(StubDns::default());
    dns.set(NAME, &[ip(0), ip(1)]);
    let entry = format!(
        "{ID} = {{ dns = \"{NAME}:{}\", path = \"{}\", refresh = \"200ms\" }}\n",
        inst.port,
        Backend::Abc.path()
    );
    let gw = Gw::start(&entry, dns.clone(), None).await?;
    let mut on: Vec<Vec<Connected>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..4 {
        let (c, i) = session_on(&gw, &inst).await?;
        on[i].push(c);
    }
    ensure!(
        inst.started() == [2, 2, 0],
        "answers {{a,b}}: {:?}",
        inst.started()
    );
    let mut on_a = on[0].pop().context("no session on a")?;
    for mut c in on[0].drain(..) {
        close_cleanly(&mut c.ws).await?;
    }
    let mut held: Vec<Connected> = on.into_iter().flatten().collect();

    dns.set(NAME, &[ip(1), ip(2)]);
    wait_metric(&gw, "the pool to pick up c", LIVE, &inst.label(2), |v| {
        v.is_some()
    })
    .await?;
    let before = inst.started();
    for _ in 0..6 {
        held.push(gw.session().await?);
    }
    let after = inst.started();
    ensure!(
        after[0] == before[0],
        "a (gone from DNS) got new sessions: {before:?} -> {after:?}"
    );
    ensure!(
        after[1] - before[1] == 3 && after[2] - before[2] == 3,
        "b and c share the new sessions: {before:?} -> {after:?}"
    );
    // The session on a goes on; a's metrics stay while it lives and go when it ends.
    echo(&mut on_a.ws, b"still on a").await?;
    let a_label = inst.label(0);
    wait_metric(&gw, "a's one open session", LIVE, &a_label, |v| {
        v == Some(1.0)
    })
    .await?;
    close_cleanly(&mut on_a.ws).await?;
    wait_metric(&gw, "a's metric labels to go", LIVE, &a_label, |v| {
        v.is_none()
    })
    .await?;

    // A failed lookup keeps the last known instances.
    if let Ok(mut a) = dns.answers.lock() {
        a.remove(NAME);
    }
    let calls = |d: &StubDns| d.calls.load(std::sync::atomic::Ordering::Relaxed);
    let asked = calls(&dns);
    wait_for("two failed lookups", DEADLINE, || {
        std::future::ready(Ok(calls(&dns) >= asked + 2))
    })
    .await?;
    let before = inst.started();
    for _ in 0..2 {
        held.push(gw.session().await?);
    }
    let after = inst.started();
    ensure!(
        after[1] > before[1] && after[2] > before[2],
        "lookup failing: {before:?} -> {after:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_reload_replaces_the_pool_and_sessions_on_removed_instances_go_on() -> Result<()> {
    let inst = Instances::start().await?;
    let dir = support::process::temp_dir("pools")?;
    let gw = Gw::start(&urls_entry(&inst, &[0, 1], ""), Arc::default(), Some(&dir)).await?;
    let (mut on_a, i) = session_on(&gw, &inst).await?;
    ensure!(i == 0, "first session went to {i}");
    let (_on_b, _) = session_on(&gw, &inst).await?;

    let text = std::fs::read_to_string(dir.join("Config.toml"))?;
    let text = text.replace(
        &urls_entry(&inst, &[0, 1], ""),
        &urls_entry(&inst, &[1, 2], ""),
    );
    std::fs::write(dir.join("Config.toml"), text)?;
    gw.reloader.reload()?;

    let before = inst.started();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(gw.session().await?);
    }
    let after = inst.started();
    ensure!(
        after[0] == before[0],
        "a removed instance got sessions: {before:?} -> {after:?}"
    );
    ensure!(
        after[1] - before[1] == 2 && after[2] - before[2] == 2,
        "{before:?} -> {after:?}"
    );
    // b was kept across the reload with its live count: still one session from before.
    let b_live = gw.instance_metric(LIVE, &inst.label(1)).await?;
    ensure!(
        b_live == Some(3.0),
        "b's live gauge after the reload: {b_live:?}"
    );
    echo(&mut on_a.ws, b"after the reload").await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn max_sessions_caps_each_instance_and_a_full_pool_answers_503() -> Result<()> {
    let inst = Instances::start().await?;
    let entry = urls_entry(&inst, &[0, 1], ", max_sessions = 2");
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    // Four sessions fill both instances, two each, whatever the order.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(session_on(&gw, &inst).await?);
    }
    ensure!(
        inst.open()[..2] == [2, 2],
        "four sessions over two instances of two: {:?}",
        inst.open()
    );
    // The fifth finds both full: 503, and no backend is asked.
    let started = inst.started();
    let (status, reason) = refused(&gw.options()?).await?;
    ensure!(
        status == 503 && reason.contains("backend at capacity"),
        "{status} {reason}"
    );
    ensure!(
        inst.started() == started,
        "a full instance was connected to"
    );
    let metrics = gw.metrics().await?;
    ensure!(
        metrics.contains("reason=\"backend_at_capacity\"")
            && !metrics.contains("wsgate_backend_connect_failures_total{"),
        "a full pool's 503 is counted as a failed connect:\n{metrics}"
    );
    // One session on instance 1 ends: its place goes to the next client, and only there.
    let at = held
        .iter()
        .position(|(_, i)| *i == 1)
        .context("no session on instance 1")?;
    let (mut c, _) = held.swap_remove(at);
    close_cleanly(&mut c.ws).await?;
    wait_metric(&gw, "the session on 1 to end", LIVE, &inst.label(1), |v| {
        v == Some(1.0)
    })
    .await?;
    let (_next, i) = session_on(&gw, &inst).await?;
    ensure!(i == 1, "the freed place was on 1, the session went to {i}");
    let (status, _) = refused(&gw.options()?).await?;
    ensure!(status == 503, "full again: {status}");
    Ok(())
}

#[tokio::test]
async fn an_instance_the_health_check_finds_silent_stays_out_until_a_probe_answers() -> Result<()> {
    // `eject` shorter than the wait for the next probe's verdict (the 1 s interval plus
    // the 1 s a silent instance takes to fail): the ejection must not lapse in between,
    // or clients are sent to the silent instance and wait for their 504.
    let mut inst = Instances::start().await?;
    inst.kill(0).await?;
    inst.kill(1).await?;
    // Instances 0 and 1 take the upgrade request and never answer; the pool has 0 and 2.
    let (_servers, _state) = silent(&inst).await?;
    let entry = urls_entry(
        &inst,
        &[0, 2],
        ", health_interval = \"1s\", eject = \"1s\", connect_attempts = 1",
    );
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    let silent_one = inst.label(0);
    wait_metric(
        &gw,
        "the silent instance's ejection",
        "backend_instance_ejections_total",
        &silent_one,
        |v| v.unwrap_or(0.0) >= 1.0,
    )
    .await?;
    // Three more probe rounds, with clients arriving all along.
    let started = Instant::now();
    let mut sessions = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let c = tokio::time::timeout(Duration::from_secs(1), gw.session())
            .await
            .with_context(|| format!("session {sessions} waited on the silent instance"))??;
        drop(c);
        sessions += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ejections = gw
        .instance_metric("backend_instance_ejections_total", &silent_one)
        .await?;
    ensure!(
        ejections == Some(1.0),
        "the ejection lapsed between probes: {ejections:?} ejections"
    );
    ensure!(
        gw.connections(&inst).await?[0] == 0,
        "a client was sent to the silent instance"
    );
    println!("{sessions} sessions, all on the answering instance");
    Ok(())
}

#[tokio::test]
async fn a_4xx_answer_to_a_client_counts_as_a_failed_attempt_of_its_instance() -> Result<()> {
    let mut inst = Instances::start().await?;
    inst.kill(0).await?;
    let (_server, _) = answering(SocketAddr::new(ip(0), inst.port), "404 Not Found").await?;
    let gw = Gw::start(&urls_entry(&inst, &[0], ""), Arc::default(), None).await?;
    let (status, _) = refused(&gw.options()?).await?;
    ensure!(status == 502, "a backend's 404: {status}");
    let label = inst.label(0);
    let failures = gw
        .instance_metric("backend_instance_connect_failures_total", &label)
        .await?;
    ensure!(failures == Some(1.0), "instance failures {failures:?}");
    let ejections = gw
        .instance_metric("backend_instance_ejections_total", &label)
        .await?;
    ensure!(
        ejections.unwrap_or(0.0) == 0.0,
        "a 4xx ejected the instance: {ejections:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_instance_answering_200_or_a_redirect_is_ejected_and_its_clients_served_elsewhere(
) -> Result<()> {
    // Something that is not a WebSocket server on an instance's address: a web server's
    // 200, or a redirect. Not about the client's request, as a 4xx is.
    for status_line in ["200 OK", "302 Found"] {
        let mut inst = Instances::start().await?;
        inst.kill(0).await?;
        let (_server, answered) = answering(SocketAddr::new(ip(0), inst.port), status_line).await?;
        let gw = Gw::start(
            &urls_entry(&inst, &[0, 1], ", eject = \"1m\""),
            Arc::default(),
            None,
        )
        .await?;
        // Round robin sends one of the first two clients to instance 0: retried on 1.
        let _a = gw.session().await?;
        let _b = gw.session().await?;
        let others = answered.others.load(std::sync::atomic::Ordering::Relaxed);
        ensure!(
            others == 1,
            "{status_line}: {others} connects to instance 0"
        );
        let ejections = gw
            .instance_metric("backend_instance_ejections_total", &inst.label(0))
            .await?;
        ensure!(
            ejections == Some(1.0),
            "{status_line}: instance 0 ejections {ejections:?}"
        );
        ensure!(
            inst.started()[1] == 2,
            "{status_line}: sessions on instance 1: {:?}",
            inst.started()
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_instance_choosing_a_subprotocol_nobody_offered_is_ejected_and_its_clients_served_elsewhere(
) -> Result<()> {
    // A misconfigured instance: it picks a subprotocol whatever the client offered.
    let bad = support::probe::Probe::start(support::probe::Mode::Accept {
        protocol: Some("chosen.by.nobody".into()),
    })
    .await?;
    let inst = Instances::start().await?;
    let entry = format!(
        "{ID} = {{ urls = [{:?}, {:?}], eject = \"1m\" }}\n",
        bad.url(),
        inst.url(0)
    );
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    // Round robin sends one of the first two clients to the bad instance: its connect is
    // retried on the good one, and the client sees nothing.
    let _a = gw.session().await?;
    let _b = gw.session().await?;
    let bad_label = bad
        .url()
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let failures = gw
        .instance_metric("backend_instance_connect_failures_total", &bad_label)
        .await?;
    ensure!(
        failures == Some(1.0),
        "the bad instance's failures: {failures:?}"
    );
    ensure!(
        inst.started()[0] == 2,
        "sessions on the good one: {:?}",
        inst.started()
    );
    Ok(())
}

#[tokio::test]
async fn an_instance_place_is_free_once_its_backend_connection_is_gone() -> Result<()> {
    let mut inst = Instances::start().await?;
    let entry = urls_entry(&inst, &[0], ", max_sessions = 1");
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    let mut first = gw.session().await?;
    // The client does not answer the gateway's 1011: its session waits up to the close
    // timeout (5 s) for the answer, but the backend connection is gone at once.
    first.ws.set_auto_close(false);
    inst.kill(0).await?;
    let (code, _) = expect_close(&mut first.ws).await?;
    ensure!(code == 1011, "client got close {code}");
    inst.revive(0).await?;
    let freed = Instant::now();
    loop {
        let active = gw
            .instance_metric("backend_instance_sessions_active", &inst.label(0))
            .await?;
        if active.unwrap_or(0.0) == 0.0 {
            break;
        }
        ensure!(
            freed.elapsed() < Duration::from_secs(3),
            "the instance's place is still taken by a session without a backend connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling, bounded above
    }
    // The next client gets the place, not a 503.
    let _second = gw.session().await?;
    drop(first);
    Ok(())
}

#[tokio::test]
async fn hash_sends_each_key_to_its_own_instance_and_only_a_dead_ones_keys_move() -> Result<()> {
    let mut inst = Instances::start().await?;
    let entry = urls_entry(
        &inst,
        &[0, 1, 2],
        ", balance = \"hash\", hash_key = \"header:X-Room\", eject = \"1m\"",
    );
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    let room = |n: usize| -> Result<ConnectOptions> {
        Ok(gw.options()?.header("X-Room", format!("room-{n}")))
    };
    // Each room lands where it landed before, every time; the rooms spread.
    let mut home = Vec::new();
    for n in 0..12 {
        let (mut c, i) = session_with_on(&inst, &room(n)?).await?;
        close_cleanly(&mut c.ws).await?;
        home.push(i);
    }
    for _ in 0..2 {
        for (n, &was) in home.iter().enumerate() {
            let (mut c, i) = session_with_on(&inst, &room(n)?).await?;
            close_cleanly(&mut c.ws).await?;
            ensure!(i == was, "room-{n} went to {i}, before to {was}");
        }
    }
    let mut used = home.clone();
    used.sort();
    used.dedup();
    ensure!(used.len() >= 2, "12 rooms all on one instance: {home:?}");
    // Without the header: in turn, as round robin.
    for _ in 0..3 {
        gw.session().await?;
    }
    // Room 0's instance dies: its rooms are served by others (the client sees nothing),
    // and every other room stays where it was.
    let dead = home[0];
    inst.kill(dead).await?;
    for (n, &was) in home.iter().enumerate() {
        let (mut c, i) = session_with_on(&inst, &room(n)?).await?;
        close_cleanly(&mut c.ws).await?;
        ensure!(i != dead, "room-{n} sent to the dead instance");
        if was != dead {
            ensure!(
                i == was,
                "room-{n} moved from {was} to {i} though {was} is up"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn hash_by_a_token_claim_keeps_one_user_on_one_instance() -> Result<()> {
    let inst = Instances::start().await?;
    let entry = urls_entry(
        &inst,
        &[0, 1, 2],
        ", balance = \"hash\", hash_key = \"claim:sub\"",
    );
    let gw = Gw::start(&entry, Arc::default(), None).await?;
    let pem = std::fs::read(certs().join("jwt-private.pem"))?;
    let as_user = |sub: &str| -> Result<ConnectOptions> {
        let mut claims = loadgen::token::sample_claims();
        claims["sub"] = serde_json::Value::from(sub);
        let token = loadgen::token::mint(&claims, &pem)?;
        let mut opts = gw.options()?;
        opts.set_header("Authorization", format!("Bearer {token}"));
        Ok(opts)
    };
    let mut home = Vec::new();
    for n in 0..12 {
        // Two sessions of one user, open at once, share an instance.
        let (_a, i) = session_with_on(&inst, &as_user(&format!("user-{n}"))?).await?;
        let (_b, j) = session_with_on(&inst, &as_user(&format!("user-{n}"))?).await?;
        ensure!(i == j, "user-{n}'s two sessions went to {i} and {j}");
        home.push(i);
    }
    let mut used = home.clone();
    used.sort();
    used.dedup();
    ensure!(used.len() >= 2, "12 users all on one instance: {home:?}");
    Ok(())
}

impl Gw {
    /// A POST to the admin listener; returns (status, body).
    async fn post(&self, path_and_query: &str) -> Result<(u16, String)> {
        self.admin_request("POST", path_and_query).await
    }

    /// A request to the admin listener; returns (status, body).
    async fn admin_request(&self, method: &str, path_and_query: &str) -> Result<(u16, String)> {
        let mut tcp = tokio::net::TcpStream::connect(self.admin).await?;
        let req = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut out)).await??;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_owned());
        Ok((status, body.unwrap_or_default()))
    }
}

#[tokio::test]
async fn an_operator_closes_the_sessions_of_one_instance_and_of_one_subject() -> Result<()> {
    let inst = Instances::start().await?;
    let gw = Gw::start(&urls_entry(&inst, &[0, 1, 2], ""), Arc::default(), None).await?;
    let mut on: Vec<Vec<Connected>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..6 {
        let (c, i) = session_on(&gw, &inst).await?;
        on[i].push(c);
    }
    ensure!(inst.open() == [2, 2, 2], "{:?}", inst.open());
    // What is open, and on which instance.
    let (status, body) = gw.admin_request("GET", "/sessions").await?;
    ensure!(status == 200, "{status} {body}");
    let listed: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(listed["total"] == 6, "{listed}");
    let first = &listed["sessions"][0];
    ensure!(
        first["backend"] == ID && first["subject"] == "ballerina" && first["closing"] == false,
        "{first}"
    );
    let path = format!("/sessions?instance={}", inst.label(0));
    let (_, body) = gw.admin_request("GET", &path).await?;
    let on_0: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(
        on_0["total"] == 2 && on_0["sessions"][1]["instance"] == inst.label(0).as_str(),
        "{on_0}"
    );
    // Instance 0's two sessions, to move them elsewhere: their clients hear 1001 (go
    // reconnect), the backend's side ends too, the others go on.
    let (status, body) = gw
        .post(&format!(
            "/sessions/close?backend={ID}&instance={}",
            inst.label(0)
        ))
        .await?;
    ensure!(
        status == 200 && body == "closing 2 sessions",
        "{status} {body}"
    );
    for c in &mut on[0] {
        let (code, reason) = expect_close(&mut c.ws).await?;
        ensure!(
            code == 1001 && reason == "closed by the gateway operator",
            "{code} {reason:?}"
        );
    }
    wait_for("instance 0's sessions to end", DEADLINE, || async {
        Ok(inst.open()[0] == 0)
    })
    .await?;
    for c in on[1..].iter_mut().flatten() {
        echo(&mut c.ws, b"still here").await?;
    }
    // One subject's sessions (every client here is the sample's `ballerina`), one at most,
    // with the code for "access withdrawn".
    let (status, body) = gw
        .post("/sessions/close?subject=ballerina&max=1&code=1008")
        .await?;
    ensure!(
        status == 200 && body == "closing 1 sessions",
        "{status} {body}"
    );
    let (code, _) = expect_close(&mut on[1][0].ws).await?;
    ensure!(code == 1008, "the oldest open session got {code}");
    let (status, body) = gw.post("/sessions/close?subject=nobody").await?;
    ensure!(
        status == 200 && body == "closing 0 sessions",
        "{status} {body}"
    );
    // Nothing named: refused, nothing closed.
    let (status, body) = gw.post("/sessions/close").await?;
    ensure!(
        status == 400 && body.contains("all=true"),
        "{status} {body}"
    );
    echo(&mut on[2][0].ws, b"untouched").await?;
    // The three left, spread over 1.5 s: one at a time, a reconnect at a time.
    let (status, body) = gw
        .post("/sessions/close?all=true&spread=1500ms&code=4000")
        .await?;
    ensure!(
        status == 200 && body == "closing 3 sessions over 1s 500ms",
        "{status} {body}"
    );
    let asked = std::time::Instant::now();
    let left: Vec<Connected> = on.into_iter().flatten().skip(3).collect();
    ensure!(left.len() == 3);
    let closes = left.into_iter().map(|mut c| {
        tokio::spawn(async move {
            let (code, _) = expect_close(&mut c.ws).await?;
            Ok::<_, anyhow::Error>((code, asked.elapsed()))
        })
    });
    let mut at = Vec::new();
    for close in closes.collect::<Vec<_>>() {
        let (code, when) = close.await??;
        ensure!(code == 4000, "{code}");
        at.push(when);
    }
    at.sort();
    ensure!(
        at[2] - at[0] >= std::time::Duration::from_millis(750),
        "not spread over 1.5 s: {at:?}"
    );
    let m = gw.metrics().await?;
    let closed =
        format!("wsgate_sessions_total{{backend=\"{ID}\",outcome=\"closed_by_operator\"}} 6");
    wait_for("the closed sessions to be counted", DEADLINE, || async {
        Ok(gw.metrics().await?.contains(&closed))
    })
    .await
    .with_context(|| m.clone())?;
    Ok(())
}
