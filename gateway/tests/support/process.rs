//! The gateway binary as a child process, for tests that need what only a real process
//! shows: its signals and exit status, its log output, its descriptors, memory and CPU
//! time (read from `/proc/<pid>`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use loadgen::client::ConnectOptions;

use super::{certs, wait_for, DEADLINE};

/// How to run the gateway binary.
#[derive(Debug, Default, Clone)]
pub struct ProcOptions {
    /// `ID = URL` routes.
    pub backends: Vec<(String, String)>,
    /// TOML appended after `[backends]` (e.g. `[limits]`, `[timeouts]`).
    pub extra_toml: String,
    /// Run under `prlimit --nofile=N:N`.
    pub nofile: Option<u64>,
    /// `RUST_LOG` for the process (default `info`).
    pub rust_log: Option<String>,
    /// Where the client listener binds (default `127.0.0.1:0`).
    pub listen: Option<SocketAddr>,
    /// Extra lines for the `[server]` table (e.g. `reuse_port = true`).
    pub server_toml: String,
    /// Extra lines for the `[auth]` table (e.g. `jwks_url = "…"`).
    pub auth_toml: String,
    /// Extra lines for the `[tls]` table (e.g. `session_tickets = 0`).
    pub tls_toml: String,
    /// Extra lines for the `[admin]` table (e.g. `token_file = "…"`).
    pub admin_toml: String,
    /// Told the process id as soon as the process exists, before it is ready.
    pub spawned: Option<tokio::sync::mpsc::UnboundedSender<u32>>,
}

/// A running gateway process; killed (SIGKILL) when dropped if still running.
pub struct GatewayProc {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    dir: PathBuf,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty folder under the system temp folder.
pub fn temp_dir(tag: &str) -> Result<PathBuf> {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("wsgate-{tag}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl GatewayProc {
    /// Writes a config (listen on 127.0.0.1:0 unless told, the repository's certs), starts the
    /// binary and waits for its "wsgate listening" line.
    pub async fn start(opts: ProcOptions) -> Result<GatewayProc> {
        let certs = certs();
        let dir = temp_dir("gw")?;
        let listen = opts
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut toml = format!(
            "[server]\nlisten = \"{listen}\"\n{}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\n\n\
             [tls]\ncert = {:?}\nkey = {:?}\n{}\n\n[auth]\npublic_key = {:?}\n{}\n\n[backends]\n",
            opts.server_toml,
            opts.admin_toml,
            certs.join("server.crt"),
            certs.join("server.key"),
            opts.tls_toml,
            certs.join("jwt-public.pem"),
            opts.auth_toml,
        );
        for (id, url) in &opts.backends {
            toml.push_str(&format!("{id} = \"{url}\"\n"));
        }
        toml.push_str(&opts.extra_toml);
        toml.push('\n');
        let config = dir.join("Config.toml");
        std::fs::write(&config, toml)?;

        let bin = env!("CARGO_BIN_EXE_gateway");
        let mut cmd = match opts.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--config")
            .arg(&config)
            .env("RUST_LOG", opts.rust_log.as_deref().unwrap_or("info"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting the gateway binary")?;
        if let Some(tx) = &opts.spawned {
            let _ = tx.send(child.id());
        }
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let mut proc = GatewayProc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            dir,
            reader: Some(reader),
        };
        let started = Instant::now();
        loop {
            if let Some(addr) = listen_addr(&proc.log()) {
                proc.addr = addr;
                return Ok(proc);
            }
            if let Some(status) = proc.child.try_wait()? {
                // Its last lines (why it exited) may still be in the pipe: the reader
                // has them once it has read to the end.
                if let Some(reader) = proc.reader.take() {
                    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
                }
                bail!(
                    "gateway exited ({status}) before listening:\n{}",
                    proc.log()
                );
            }
            if started.elapsed() > DEADLINE {
                bail!("gateway did not log its listen address:\n{}", proc.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The first line it logged holding `text`, waited for (with a deadline): a line is
    /// read from the process's stderr by another thread, a moment after what it tells of
    /// (a count, an answer) can be seen.
    pub async fn log_line(&self, text: &str) -> Result<String> {
        let found = || {
            self.log()
                .lines()
                .find(|l| l.contains(text))
                .map(str::to_owned)
        };
        wait_for(&format!("a log line with {text:?}"), DEADLINE, || {
            let seen = found().is_some();
            async move { Ok(seen) }
        })
        .await
        .with_context(|| self.log())?;
        found().context("the line went away")
    }

    /// The config file the process was started with (rewrite it, then reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("Config.toml")
    }

    /// The admin listener's address, from the start-up log.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("admin listening"))?;
        line.split("listen=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The `/metrics` page from the admin listener.
    pub async fn metrics(&self) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.admin_addr().context("no admin address in the log")?;
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut out)).await??;
        let text = String::from_utf8_lossy(&out).into_owned();
        ensure!(text.starts_with("HTTP/1.1 200"), "metrics answered {text}");
        Ok(text)
    }

    /// A counter or gauge without labels from `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let page = self.metrics().await?;
        Ok(page
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// The gateway URL (`wss://localhost:<port>/gateway`).
    pub fn url(&self) -> String {
        format!("wss://localhost:{}/gateway", self.addr.port())
    }

    /// Options for a good client of `backend_id`.
    pub fn connect_options(&self, backend_id: &str) -> Result<ConnectOptions> {
        client_options(&self.url(), backend_id)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<()> {
        signal(self.pid(), "TERM")
    }

    /// Sends SIGHUP (a reload).
    pub fn hangup(&self) -> Result<()> {
        signal(self.pid(), "HUP")
    }

    /// Waits (polling) for the process to exit, at most `within`; then the stderr reader
    /// has seen the whole log.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                if let Some(reader) = self.reader.take() {
                    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
                }
                return Ok(status);
            }
            if started.elapsed() > within {
                bail!("gateway still running after {within:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Its counters from `/proc`.
    pub fn stats(&self) -> Result<ProcStats> {
        ProcStats::read(self.pid())
    }

    /// Waits until its open descriptor count is at most `max`; returns the last count.
    pub async fn wait_fds_at_most(&self, max: usize, within: Duration) -> Result<usize> {
        let mut last = usize::MAX;
        let reached = wait_for("gateway descriptors to settle", within, || {
            last = self.stats().map(|s| s.fds).unwrap_or(usize::MAX);
            std::future::ready(Ok(last <= max))
        })
        .await;
        reached.with_context(|| format!("{last} descriptors open, expected at most {max}"))?;
        Ok(last)
    }
}

/// The address in a "wsgate listening listen=ADDR" log line.
fn listen_addr(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("wsgate listening"))?;
    let rest = line.split("listen=").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Options for a good client of `backend_id` at `url`: the dev CA, `ID`, a fresh token.
pub fn client_options(url: &str, backend_id: &str) -> Result<ConnectOptions> {
    let pem = std::fs::read(certs().join("jwt-private.pem"))?;
    let token = loadgen::token::mint_sample(&pem)?;
    let mut opts = ConnectOptions::new(url)
        .header("ID", backend_id)
        .header("Authorization", format!("Bearer {token}"));
    opts.ca = Some(certs().join("ca.crt"));
    Ok(opts)
}

/// What `/proc/<pid>` says about a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Open descriptors (entries of `/proc/<pid>/fd`).
    pub fds: usize,
    /// User + system CPU time, in clock ticks (1/100 s on Linux).
    pub cpu_ticks: u64,
    /// Threads.
    pub threads: u64,
}

impl ProcStats {
    /// Reads them now.
    pub fn read(pid: u32) -> Result<ProcStats> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
            let value = line
                .split_whitespace()
                .nth(1)
                .with_context(|| format!("empty {name}"))?;
            Ok(value.parse()?)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) start at field 3.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("malformed stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15, i.e. indices 11 and 12 after the name.
        let utime: u64 = fields.get(11).context("no utime")?.parse()?;
        let stime: u64 = fields.get(12).context("no stime")?.parse()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        Ok(ProcStats {
            rss_kib: field("VmRSS:")?,
            fds,
            cpu_ticks: utime + stime,
            threads: field("Threads:")?,
        })
    }
}

/// Sends signal `name` (`TERM`, `HUP`) to process `pid`.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -{name} failed: {status}");
    Ok(())
}

/// A demo Backend_ABC and a gateway in front of it with `extra_toml`.
pub async fn abc_gateway(extra_toml: &str) -> Result<(demo_services::RunningBackend, GatewayProc)> {
    abc_gateway_with(ProcOptions {
        extra_toml: extra_toml.into(),
        ..ProcOptions::default()
    })
    .await
}

/// A demo Backend_ABC and a gateway in front of it, run with `opts` (its `backends` are
/// replaced by the one route).
pub async fn abc_gateway_with(
    opts: ProcOptions,
) -> Result<(demo_services::RunningBackend, GatewayProc)> {
    let demo = demo_services::spawn_for_test(demo_services::ServiceOptions {
        backend: demo_services::Backend::Abc,
        push_interval: None,
    })
    .await?;
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), demo.url())],
        ..opts
    })
    .await?;
    Ok((demo, gw))
}
