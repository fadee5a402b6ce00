//! The run's results, per backend and in total: built from the connections' outcomes and
//! the histograms, written as a plain table (stdout) and as JSON (`--json FILE`).
//!
//! # JSON document (`version` 2)
//!
//! ```text
//! {
//!   "version": 2,                  // 2: empty histograms' statistics are null (1: 0)
//!   "url": "wss://localhost:9090/gateway",
//!   "mode": "closed" | "open",
//!   "inflight": 1,                 // closed loop: messages outstanding per connection
//!   "rate": null | 50000.0,        // open loop: target msgs/s over all connections
//!   "size": 128,                   // message size, bytes
//!   "duration_s": 30.0,            // measured sending phase
//!   "connect_phase_s": 1.2,        // from the first connect to the last open or failure
//!   "conns_per_s": 833.0,          // opened / connect_phase_s (null if 0 s)
//!   "reconnect": false,            // --reconnect was on
//!   "backends": [ Section, ... ],  // one per backend, in the order used
//!   "total": Section,              // all backends together ("backend": "total")
//!   "loadgen": { "cpu_user_s", "cpu_system_s", "cpu_s", "cpu_us_per_msg",
//!                "connect_cpu_s", "nofile_limit", "source_addrs" },
//!   "tls_suites": [ { "suite": "TLS13_AES_128_GCM_SHA256", "connections": 100 } ],
//!   "tls_resumed": 0,              // handshakes that resumed a session (--resume)
//!   "interrupted": false           // stopped by Ctrl-C: the figures cover what ran
//! }
//! Section = {
//!   "backend": "Backend_ABC",
//!   "connections": { "requested", "opened", "failed",
//!                    "failures": [ { "reason": "HTTP 401: ...", "count": 3 } ],
//!                    "dropped", "drops": [ { "reason", "count" } ],
//!                    "closes": [ { "reason": "1001", "count": 40 } ],  // ended by the server
//!                    "reconnects", "reconnect_failures",
//!                    "connect_ms": { "p50", "p99", "max" } },  // null if none opened
//!   "messages": { "sent", "echoed", "pushes", "lost_at_close", "msgs_per_s", "bytes_per_s" },
//!   "rtt_us": { "count", "min", "mean", "p50", "p90", "p99", "p999", "max" },
//!                                  // all but count null when count is 0 (nothing echoed)
//!   "errors": { "missing", "duplicate", "reordered", "corrupted", "unexpected", "total" }
//! }
//! ```
//!
//! Every struct below is that document; their field docs are the reference.

use std::collections::HashMap;
use std::io::{self, Write};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::conn::{End, Outcome};
use crate::track::IntegrityErrors;

/// The JSON document's format version. 2 since an empty histogram's statistics became
/// `null` instead of 0: a reader that takes them as numbers must know.
pub const JSON_VERSION: u32 = 2;

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Format version of this document: [`JSON_VERSION`].
    pub version: u32,
    /// Target URL.
    pub url: String,
    /// `closed` (a fixed number of messages in flight per connection) or `open` (fixed
    /// rate, latency from each message's intended send time).
    pub mode: String,
    /// Closed loop: messages in flight per connection.
    pub inflight: usize,
    /// Open loop: target messages per second over all connections.
    pub rate: Option<f64>,
    /// Message size in bytes.
    pub size: usize,
    /// Length of the sending phase in seconds (rates divide by this).
    pub duration_s: f64,
    /// Length of the connect phase in seconds: first connect to the last connection open
    /// or failed (measured on a 100 ms tick).
    #[serde(default)]
    pub connect_phase_s: f64,
    /// Connections opened per second of the connect phase.
    #[serde(default)]
    pub conns_per_s: Option<f64>,
    /// Whether connections the server closed were reopened (`--reconnect`).
    #[serde(default)]
    pub reconnect: bool,
    /// One section per backend, in the order used.
    pub backends: Vec<Section>,
    /// All backends together; its `backend` is `total`.
    pub total: Section,
    /// The generator's own resource use.
    pub loadgen: Usage,
    /// TLS cipher suites the server chose, with how many connections got each (empty for
    /// `ws://`).
    #[serde(default)]
    pub tls_suites: Vec<SuiteCount>,
    /// TLS handshakes that resumed a session (`--resume`); 0 otherwise.
    #[serde(default)]
    pub tls_resumed: u64,
    /// Stopped by Ctrl-C before the run's end: the figures cover only what ran.
    #[serde(default)]
    pub interrupted: bool,
}

/// Connections that negotiated one TLS cipher suite.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteCount {
    /// rustls's name for it, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub suite: String,
    /// How many connections got it.
    pub connections: u64,
}

/// Results for one backend (or the total).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Section {
    /// Backend ID, or `total`.
    pub backend: String,
    /// Connection counts and connect times.
    pub connections: Connections,
    /// Message counts and rates.
    pub messages: Messages,
    /// Round-trip times in µs (open loop: from the intended send time).
    pub rtt_us: Latency,
    /// Integrity errors by kind.
    pub errors: Errors,
}

/// Connection counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connections {
    /// Connections asked for.
    pub requested: u64,
    /// Connections whose upgrade succeeded.
    pub opened: u64,
    /// Connections that never opened.
    pub failed: u64,
    /// Why they failed, grouped (e.g. `HTTP 401: token expired`), most frequent first.
    pub failures: Vec<Count>,
    /// Opened connections that ended before the run did, or did not close cleanly.
    pub dropped: u64,
    /// Why they ended, grouped, most frequent first.
    pub drops: Vec<Count>,
    /// Streams the server ended before we closed them, by close code (`1001`) or `eof`,
    /// `reset`, `io error`; most frequent first. With `--reconnect` a connection may
    /// count several.
    #[serde(default)]
    pub closes: Vec<Count>,
    /// Streams reopened after the server ended one (`--reconnect`).
    #[serde(default)]
    pub reconnects: u64,
    /// Reconnect attempts that failed.
    #[serde(default)]
    pub reconnect_failures: u64,
    /// Time to open (TCP + TLS + upgrade), ms.
    pub connect_ms: ConnectLatency,
}

/// A reason and how many connections it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// The reason.
    pub reason: String,
    /// How many.
    pub count: u64,
}

/// Connect-time percentiles, ms. Each is `None` (JSON `null`) when no connection opened:
/// a 0 would read as connections that opened in no time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectLatency {
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Slowest.
    pub max: Option<f64>,
}

/// Message counts and rates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Messages {
    /// Test messages sent.
    pub sent: u64,
    /// Valid echoes received.
    pub echoed: u64,
    /// Backend pushes received (recognised and ignored).
    pub pushes: u64,
    /// With `--reconnect`: messages unanswered on streams the server ended (sent or
    /// queued when the close arrived); not integrity errors. Without, they are missing.
    #[serde(default)]
    pub lost_at_close: u64,
    /// Echoes per second of the sending phase.
    pub msgs_per_s: f64,
    /// Echoed payload bytes per second (one direction).
    pub bytes_per_s: f64,
}

/// Round-trip percentiles, µs. With no samples (`count` 0: nothing echoed) every
/// statistic is `None` (JSON `null`): a 0 would read as a 0 µs round trip.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Fastest.
    pub min: Option<u64>,
    /// Mean.
    pub mean: Option<f64>,
    /// Median.
    pub p50: Option<u64>,
    /// 90th percentile.
    pub p90: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
    /// 99.9th percentile.
    pub p999: Option<u64>,
    /// Slowest.
    pub max: Option<u64>,
}

/// Integrity errors by kind, and their sum.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Errors {
    /// The kinds (see [`IntegrityErrors`]).
    #[serde(flatten)]
    pub kinds: IntegrityErrors,
    /// Sum of all kinds.
    pub total: u64,
}

/// The generator's own resource use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    /// User CPU seconds from the start of sending to the last connection's end.
    pub cpu_user_s: f64,
    /// System CPU seconds over the same span.
    pub cpu_system_s: f64,
    /// Their sum.
    pub cpu_s: f64,
    /// CPU µs per echoed message over that span (send, receive, check, record).
    pub cpu_us_per_msg: Option<f64>,
    /// CPU seconds spent opening connections (TLS handshakes), before sending.
    pub connect_cpu_s: f64,
    /// Soft open-file limit in force.
    pub nofile_limit: u64,
    /// Source addresses the connections were spread over (0: the system's choice).
    pub source_addrs: usize,
}

impl Latency {
    /// Percentiles of `h` (µs); all `None` when `h` is empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min: Some(h.min()),
            mean: Some(h.mean()),
            p50: Some(h.value_at_quantile(0.50)),
            p90: Some(h.value_at_quantile(0.90)),
            p99: Some(h.value_at_quantile(0.99)),
            p999: Some(h.value_at_quantile(0.999)),
            max: Some(h.max()),
        }
    }
}

impl ConnectLatency {
    /// Percentiles of `h` (µs in, ms out); all `None` when `h` is empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| Some(us as f64 / 1000.0);
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// Builds the section of `name` from the outcomes of its connections.
pub fn section<'a>(
    name: &str,
    requested: u64,
    outcomes: impl Iterator<Item = &'a Outcome>,
    rtt: &Histogram<u64>,
    connect: &Histogram<u64>,
    size: usize,
    duration_s: f64,
) -> Section {
    let mut failures: HashMap<&str, u64> = HashMap::new();
    let mut drops: HashMap<&str, u64> = HashMap::new();
    let mut closes: HashMap<&str, u64> = HashMap::new();
    let (mut reconnects, mut reconnect_failures) = (0, 0);
    let mut messages = Messages::default();
    let mut kinds = IntegrityErrors::default();
    let (mut opened, mut failed) = (0, 0);
    for o in outcomes {
        match &o.end {
            End::Failed(reason) => {
                failed += 1;
                *failures.entry(reason).or_default() += 1;
                continue;
            }
            End::Dropped(reason) => *drops.entry(reason).or_default() += 1,
            End::Clean => {}
        }
        opened += 1;
        for how in &o.closes {
            *closes.entry(how).or_default() += 1;
        }
        reconnects += o.reconnects;
        reconnect_failures += o.reconnect_failures;
        messages.lost_at_close += o.lost_at_close;
        messages.sent += o.sent;
        messages.echoed += o.echoed;
        messages.pushes += o.pushes;
        kinds.add(&o.errors);
    }
    if duration_s > 0.0 {
        messages.msgs_per_s = messages.echoed as f64 / duration_s;
        messages.bytes_per_s = messages.msgs_per_s * size as f64;
    }
    let dropped = drops.values().sum();
    Section {
        backend: name.to_owned(),
        connections: Connections {
            requested,
            opened,
            failed,
            failures: grouped(failures),
            dropped,
            drops: grouped(drops),
            closes: grouped(closes),
            reconnects,
            reconnect_failures,
            connect_ms: ConnectLatency::from_histogram(connect),
        },
        messages,
        rtt_us: Latency::from_histogram(rtt),
        errors: Errors {
            total: kinds.total(),
            kinds,
        },
    }
}

fn grouped(map: HashMap<&str, u64>) -> Vec<Count> {
    let mut v: Vec<Count> = map
        .into_iter()
        .map(|(r, count)| Count {
            reason: r.to_owned(),
            count,
        })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    v
}

impl Report {
    /// Whether the run passed: it ran to its end, every connection opened, none was
    /// dropped before the run ended (with `--reconnect`, one that came back is not
    /// dropped), and no integrity error was found.
    pub fn passed(&self) -> bool {
        self.verdict().is_none()
    }

    /// In open loop, the rate the messages went out at when it fell short of the rate
    /// asked (below 95 % of it): the generator, or what it sends through, could not keep
    /// up, and the run measured a lighter load than asked.
    pub fn rate_shortfall(&self) -> Option<f64> {
        let asked = self.rate?;
        if self.duration_s <= 0.0 {
            return None;
        }
        let sent = self.total.messages.sent as f64 / self.duration_s;
        (sent < 0.95 * asked).then_some(sent)
    }

    /// Why the run failed, if it did. Integrity errors come first; then an interrupted
    /// run is that (its connections were cut short by the stop, not by the server).
    pub fn verdict(&self) -> Option<String> {
        let c = &self.total.connections;
        let interrupted = format!(
            "INTERRUPTED: stopped by Ctrl-C after {:.1} s of sending; {} of {} connections had opened",
            self.duration_s, c.opened, c.requested
        );
        if self.total.errors.total > 0 {
            Some(if self.interrupted {
                format!("FAIL: integrity errors; {interrupted}")
            } else {
                "FAIL: integrity errors".to_owned()
            })
        } else if self.interrupted {
            Some(interrupted)
        } else if c.opened == 0 {
            Some("FAIL: no connection opened".to_owned())
        } else if c.failed > 0 {
            Some(format!(
                "FAIL: {} of {} connections never opened",
                c.failed, c.requested
            ))
        } else if c.dropped > 0 {
            Some(format!(
                "FAIL: {} of {} sessions dropped",
                c.dropped, c.opened
            ))
        } else {
            None
        }
    }
}

/// A duration in µs in the most readable unit: `850µs`, `1.25ms`, `2.50s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// [`fmt_us`] of a statistic, or `-` when there is none (no sample to take it from).
pub fn fmt_opt_us(us: Option<u64>) -> String {
    us.map_or_else(|| "-".to_owned(), fmt_us)
}

/// A statistic in ms as [`fmt_us`] writes it, or `-` when there is none.
fn fmt_opt_ms(ms: Option<f64>) -> String {
    fmt_opt_us(ms.map(|ms| (ms * 1000.0) as u64))
}

/// Writes the report as a plain table.
pub fn write_table(r: &Report, w: &mut dyn Write) -> io::Result<()> {
    let mode = match r.rate {
        Some(rate) => format!("open loop at {rate} msg/s"),
        None => format!("closed loop, {} in flight per connection", r.inflight),
    };
    writeln!(
        w,
        "{} — {mode}, {} B messages, {:.1} s",
        r.url, r.size, r.duration_s
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "{:<12} {:>13} {:>6} {:>9} {:>9} {:>11} {:>11} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "backend", "conns open/req", "failed", "conn p50", "conn p99", "sent", "echoed", "msg/s", "MB/s",
        "rtt p50", "p90", "p99", "p99.9", "max", "errors"
    )?;
    for s in r.backends.iter().chain(std::iter::once(&r.total)) {
        let c = &s.connections;
        let l = &s.rtt_us;
        writeln!(
            w,
            "{:<12} {:>13} {:>6} {:>9} {:>9} {:>11} {:>11} {:>10.0} {:>8.2} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            s.backend,
            format!("{}/{}", c.opened, c.requested),
            c.failed,
            fmt_opt_ms(c.connect_ms.p50),
            fmt_opt_ms(c.connect_ms.p99),
            s.messages.sent,
            s.messages.echoed,
            s.messages.msgs_per_s,
            s.messages.bytes_per_s / 1e6,
            fmt_opt_us(l.p50),
            fmt_opt_us(l.p90),
            fmt_opt_us(l.p99),
            fmt_opt_us(l.p999),
            fmt_opt_us(l.max),
            s.errors.total,
        )?;
    }
    for s in &r.backends {
        for f in &s.connections.failures {
            writeln!(
                w,
                "  {} failed to open ×{}: {}",
                s.backend, f.count, f.reason
            )?;
        }
        for f in &s.connections.drops {
            writeln!(
                w,
                "  {} connections dropped ×{}: {}",
                s.backend, f.count, f.reason
            )?;
        }
        let e = &s.errors.kinds;
        if s.errors.total > 0 {
            writeln!(
                w,
                "  {} integrity errors: missing {}, duplicate {}, reordered {}, corrupted {}, unexpected {}",
                s.backend, e.missing, e.duplicate, e.reordered, e.corrupted, e.unexpected
            )?;
        }
    }
    let t = &r.total;
    if r.reconnect || !t.connections.closes.is_empty() {
        let closes: Vec<String> = t
            .connections
            .closes
            .iter()
            .map(|c| format!("{} ×{}", c.reason, c.count))
            .collect();
        writeln!(
            w,
            "closed by the server: {}; reconnects {} ({} failed attempts); messages lost at close {}",
            if closes.is_empty() {
                "none".to_owned()
            } else {
                closes.join(", ")
            },
            t.connections.reconnects,
            t.connections.reconnect_failures,
            t.messages.lost_at_close,
        )?;
    } else if t.messages.lost_at_close > 0 {
        // Without that line (no close by the server, no --reconnect), the messages an
        // interrupted run's connections left unanswered would show only in the JSON.
        writeln!(
            w,
            "messages lost at close: {} (sent, not echoed before their connection closed)",
            t.messages.lost_at_close
        )?;
    }
    if let Some(rate) = r.conns_per_s {
        writeln!(
            w,
            "connect phase: {:.1} s, {rate:.0} connections/s",
            r.connect_phase_s
        )?;
    }
    let u = &r.loadgen;
    let per_msg = u
        .cpu_us_per_msg
        .map(|v| format!(", {v:.2} µs/msg"))
        .unwrap_or_default();
    writeln!(
        w,
        "loadgen CPU: {:.2} s user + {:.2} s system{per_msg} while sending; {:.2} s opening connections",
        u.cpu_user_s, u.cpu_system_s, u.connect_cpu_s
    )?;
    if !r.tls_suites.is_empty() {
        let suites: Vec<String> = r
            .tls_suites
            .iter()
            .map(|s| format!("{} ×{}", s.suite, s.connections))
            .collect();
        writeln!(w, "TLS cipher suite: {}", suites.join(", "))?;
    }
    if r.tls_resumed > 0 {
        writeln!(
            w,
            "TLS sessions resumed: {} of {} connections",
            r.tls_resumed, r.total.connections.opened
        )?;
    }
    if let (Some(sent), Some(asked)) = (r.rate_shortfall(), r.rate) {
        writeln!(
            w,
            "open loop behind: messages went out at {sent:.0} msg/s of the {asked} asked ({:.0} %)",
            100.0 * sent / asked
        )?;
    }
    let verdict = r
        .verdict()
        .unwrap_or_else(|| "PASS: no integrity errors".to_owned());
    writeln!(w, "{verdict}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(backend: usize, end: End, echoed: u64) -> Outcome {
        let mut o = Outcome::new(backend, end);
        o.sent = echoed;
        o.echoed = echoed;
        o.pushes = 1;
        o
    }

    #[test]
    fn sections_group_failures_and_sum_messages() -> anyhow::Result<()> {
        let outs = [
            outcome(0, End::Clean, 10),
            outcome(0, End::Failed("HTTP 401: expired".into()), 0),
            outcome(0, End::Failed("HTTP 401: expired".into()), 0),
            outcome(0, End::Dropped("closed by the server: 1011".into()), 4),
            Outcome {
                closes: vec!["1001".into(), "eof".into(), "1001".into()],
                reconnects: 3,
                lost_at_close: 5,
                ..outcome(0, End::Clean, 1)
            },
        ];
        let mut h = crate::stats::new_histogram();
        h.record(100)?;
        h.record(300)?;
        let s = section("Backend_ABC", 5, outs.iter(), &h, &h, 128, 2.0);
        assert_eq!(
            (
                s.connections.opened,
                s.connections.failed,
                s.connections.dropped
            ),
            (3, 2, 1)
        );
        assert_eq!(
            s.connections.closes,
            vec![
                Count {
                    reason: "1001".into(),
                    count: 2
                },
                Count {
                    reason: "eof".into(),
                    count: 1
                }
            ]
        );
        assert_eq!((s.connections.reconnects, s.messages.lost_at_close), (3, 5));
        assert_eq!(
            s.connections.failures,
            vec![Count {
                reason: "HTTP 401: expired".into(),
                count: 2
            }]
        );
        assert_eq!(s.messages.echoed, 15);
        assert!((s.messages.msgs_per_s - 7.5).abs() < 1e-9);
        assert_eq!(s.rtt_us.count, 2);
        let json = serde_json::to_value(&s)?;
        assert_eq!(json["errors"]["missing"], 0);
        assert_eq!(json["errors"]["total"], 0);
        assert_eq!(json["messages"]["lost_at_close"], 5);
        assert_eq!(json["connections"]["closes"][0]["reason"], "1001");
        Ok(())
    }

    /// A 2 s run of 128 B messages with these connections' outcomes; open loop at `rate`
    /// when given.
    fn report_of(outs: &[Outcome], rate: Option<f64>, interrupted: bool) -> Report {
        let h = crate::stats::new_histogram();
        Report {
            version: JSON_VERSION,
            url: "ws://x".into(),
            mode: if rate.is_some() { "open" } else { "closed" }.into(),
            inflight: 1,
            rate,
            size: 128,
            duration_s: 2.0,
            connect_phase_s: 0.1,
            conns_per_s: None,
            reconnect: false,
            backends: Vec::new(),
            total: section("total", 1, outs.iter(), &h, &h, 128, 2.0),
            loadgen: Usage::default(),
            tls_suites: Vec::new(),
            tls_resumed: 0,
            interrupted,
        }
    }

    #[test]
    fn an_interrupted_run_says_so_even_when_it_also_failed() -> anyhow::Result<()> {
        let mut bad = outcome(0, End::Clean, 3);
        bad.errors.missing = 2;
        let report = |outs: &[Outcome], interrupted: bool| report_of(outs, None, interrupted);
        let clean = [outcome(0, End::Clean, 3)];
        assert_eq!(report(&clean, false).verdict(), None);
        let v = report(&clean, true).verdict().unwrap_or_default();
        assert!(v.starts_with("INTERRUPTED: stopped by Ctrl-C"), "{v}");
        let v = report(&[bad.clone()], true).verdict().unwrap_or_default();
        assert!(
            v.starts_with("FAIL: integrity errors; INTERRUPTED: stopped by Ctrl-C"),
            "{v}"
        );
        let v = report(&[bad], false).verdict().unwrap_or_default();
        assert_eq!(v, "FAIL: integrity errors");
        Ok(())
    }

    #[test]
    fn an_open_loop_that_fell_behind_its_rate_says_so() -> anyhow::Result<()> {
        // 3 messages in 2 s: 1.5 msg/s.
        let outs = [outcome(0, End::Clean, 3)];
        let report = |rate: Option<f64>| report_of(&outs, rate, false);
        let table = |r: &Report| -> anyhow::Result<String> {
            let mut out = Vec::new();
            write_table(r, &mut out)?;
            Ok(String::from_utf8(out)?)
        };
        let behind = table(&report(Some(100.0)))?;
        assert!(
            behind.contains("open loop behind: messages went out at 2 msg/s of the 100 asked"),
            "{behind}"
        );
        for kept_up in [Some(1.5), None] {
            let t = table(&report(kept_up))?;
            assert!(!t.contains("behind"), "{t}");
        }
        Ok(())
    }

    #[test]
    fn an_empty_histogram_has_null_statistics_not_zeros() -> anyhow::Result<()> {
        // Nothing opened, nothing echoed: the histograms are empty. A 0 in the JSON read
        // as a 0 µs round trip (and a 0 ms connect).
        let r = report_of(
            &[outcome(0, End::Failed("HTTP 503".into()), 0)],
            None,
            false,
        );
        let json = serde_json::to_value(&r)?;
        let rtt = &json["total"]["rtt_us"];
        assert_eq!(rtt["count"], 0, "{rtt}");
        for key in ["min", "mean", "p50", "p90", "p99", "p999", "max"] {
            assert!(rtt[key].is_null(), "rtt_us.{key}: {rtt}");
        }
        let connect = &json["total"]["connections"]["connect_ms"];
        for key in ["p50", "p99", "max"] {
            assert!(connect[key].is_null(), "connect_ms.{key}: {connect}");
        }
        assert_eq!(json["total"]["messages"]["echoed"], 0);
        // The text table and the HTML page show no statistic either, not a 0.
        let mut text = Vec::new();
        write_table(&r, &mut text)?;
        let text = String::from_utf8(text)?;
        let html = crate::plot::html(&r, &[]);
        for page in [&text, &html] {
            assert!(!page.contains("0µs"), "{page}");
        }
        let total = text.lines().find(|l| l.starts_with("total")).unwrap_or("");
        assert_eq!(
            total.split_whitespace().filter(|w| *w == "-").count(),
            7,
            "{total}"
        );
        Ok(())
    }

    #[test]
    fn messages_lost_at_close_show_in_the_table_when_there_are_any() -> anyhow::Result<()> {
        let table = |r: &Report| -> anyhow::Result<String> {
            let mut out = Vec::new();
            write_table(r, &mut out)?;
            Ok(String::from_utf8(out)?)
        };
        // A Ctrl-C abandoned a connection with 4 messages unanswered: no close by the
        // server, no --reconnect, and the count was in the JSON only.
        let abandoned = Outcome {
            lost_at_close: 4,
            ..outcome(0, End::Dropped(crate::conn::ABANDONED.into()), 3)
        };
        let t = table(&report_of(&[abandoned], None, true))?;
        assert!(t.contains("messages lost at close: 4"), "{t}");
        let t = table(&report_of(&[outcome(0, End::Clean, 3)], None, false))?;
        assert!(!t.contains("lost at close"), "{t}");
        Ok(())
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_us(850), "850µs");
        assert_eq!(fmt_us(1_250), "1.25ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
    }
}
