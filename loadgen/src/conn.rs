//! One load connection's life: open it (counting the failure if it does not), run its
//! [`session`](crate::session) until the end of the run, and sum up what it did.
//!
//! With a [`Reconnect`] policy, a stream the server ends (close frame, EOF, reset) while
//! the run is still sending is replaced: after a jittered, doubling back-off the same
//! connection (same id, backend and source address) opens again and carries on, up to
//! `attempts` failed tries in a row. Its unanswered messages count as lost at close.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::client::{Connector, WsStream};
use crate::session::Session;
use crate::stats::{Live, Recorder};
use crate::track::IntegrityErrors;

/// Where the run is; sent to every connection task over a watch channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Connections are being opened; nothing is sent yet.
    Connecting,
    /// Send. `interval_ns` is each connection's gap between messages in open loop (0 in
    /// closed loop).
    Run {
        /// Open loop: ns between two intended sends on one connection.
        interval_ns: u64,
    },
    /// Stop sending, wait (bounded) for outstanding echoes, then close.
    Stop,
    /// Stopped again while draining or closing (a Ctrl-C): end at once, as dropped.
    Abandon,
}

impl Phase {
    /// Whether the run has stopped sending (and so opens nothing new).
    pub fn stopped(&self) -> bool {
        matches!(self, Phase::Stop | Phase::Abandon)
    }
}

/// Why a connection ended by [`Phase::Abandon`] counts as dropped.
pub const ABANDONED: &str = "abandoned while closing: the run was interrupted";

/// Settings and sinks shared by every connection of a run.
pub struct Shared {
    /// Opens the connections.
    pub connector: Connector,
    /// Backend IDs; a connection's `backend` indexes this.
    pub backends: Vec<String>,
    /// Message size in bytes.
    pub size: usize,
    /// Closed loop: messages in flight per connection. Ignored in open loop.
    pub inflight: usize,
    /// An echo not seen within this long counts as missing.
    pub echo_timeout: Duration,
    /// After the run, how long to wait for outstanding echoes.
    pub drain_timeout: Duration,
    /// How long to wait for the server's close frame after sending ours.
    pub close_timeout: Duration,
    /// Time origin of message timestamps.
    pub epoch: Instant,
    /// Histograms.
    pub recorder: Recorder,
    /// Counters for the progress line.
    pub live: Live,
    /// Reopen streams the server ends (`None`: such a connection just ends).
    pub reconnect: Option<Reconnect>,
    /// Request headers that differ from one connection to the next.
    pub per_conn: PerConn,
}

/// What `{conn}` in a `--header` value stands for: the connection's number.
pub const CONN_PLACEHOLDER: &str = "{conn}";

/// Request headers that differ from one connection to the next.
#[derive(Debug, Clone, Default)]
pub struct PerConn {
    /// Headers whose value holds [`CONN_PLACEHOLDER`].
    pub headers: Vec<(String, String)>,
    /// Bearer tokens of distinct subjects (`--subjects`): connection i sends the one at
    /// i mod their count. Empty: the one token in the connector's headers, if any.
    pub tokens: Vec<String>,
}

impl PerConn {
    /// The headers of connection `id`, after `ID: backend`.
    fn for_conn(&self, id: u32, backend: &str) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(2 + self.headers.len());
        out.push(("ID".to_owned(), backend.to_owned()));
        let n = id.to_string();
        for (name, value) in &self.headers {
            out.push((name.clone(), value.replace(CONN_PLACEHOLDER, &n)));
        }
        if !self.tokens.is_empty() {
            let token = &self.tokens[id as usize % self.tokens.len()];
            out.push(("Authorization".to_owned(), format!("Bearer {token}")));
        }
        out
    }
}

/// How a connection whose stream the server ended opens a new one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconnect {
    /// Failed attempts in a row before the connection gives up.
    pub attempts: u32,
    /// Back-off before the first attempt; doubles after each failure (capped at 5 s), and
    /// each wait is a random 50–100 % of it, so a crowd of clients does not come back at
    /// once.
    pub backoff: Duration,
}

impl Reconnect {
    /// Longest back-off.
    const MAX_BACKOFF: Duration = Duration::from_secs(5);

    /// The wait before attempt `n` (0-based).
    pub fn delay(&self, n: u32) -> Duration {
        let base = self
            .backoff
            .saturating_mul(1u32 << n.min(16))
            .min(Self::MAX_BACKOFF);
        base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// Which connection to open.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Connection id, carried in every message.
    pub id: u32,
    /// Index into [`Shared::backends`].
    pub backend: usize,
    /// Source address to bind, if any.
    pub local: Option<IpAddr>,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// It never opened; the grouped reason (e.g. `HTTP 401: token expired`).
    Failed(String),
    /// Closed by us at the end of the run, and the server answered the close.
    Clean,
    /// Ended early or badly; why (e.g. `closed by server: 1011 backend lost`).
    Dropped(String),
}

/// What one connection did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Index into [`Shared::backends`].
    pub backend: usize,
    /// How it ended.
    pub end: End,
    /// Messages sent.
    pub sent: u64,
    /// Valid echoes.
    pub echoed: u64,
    /// Backend push messages received (recognised and ignored).
    pub pushes: u64,
    /// Integrity errors.
    pub errors: IntegrityErrors,
    /// Streams the server ended, by how: close code (`1001`), `eof`, `reset`, `io error`.
    pub closes: Vec<String>,
    /// New streams opened after the server ended one.
    pub reconnects: u64,
    /// Reconnect attempts that failed.
    pub reconnect_failures: u64,
    /// Messages unanswered on streams the server ended (with reconnects on; without, they
    /// are missing).
    pub lost_at_close: u64,
}

impl Outcome {
    /// An outcome with nothing done yet.
    pub fn new(backend: usize, end: End) -> Self {
        Outcome {
            backend,
            end,
            sent: 0,
            echoed: 0,
            pushes: 0,
            errors: IntegrityErrors::default(),
            closes: Vec::new(),
            reconnects: 0,
            reconnect_failures: 0,
            lost_at_close: 0,
        }
    }
}

/// Opens connection `plan` (releasing `permit` once the handshake is over) and runs it
/// until the end of the run.
pub async fn run(
    shared: Arc<Shared>,
    plan: Plan,
    permit: OwnedSemaphorePermit,
    mut phase: watch::Receiver<Phase>,
) -> Outcome {
    let live = shared.live.backend(plan.backend);
    let mut outcome = Outcome::new(plan.backend, End::Clean);
    let started = Instant::now();
    // A run stopped (Ctrl-C) while this connection is being opened does not wait out
    // its connect timeout.
    let res = tokio::select! {
        res = open(&shared, plan) => res.map_err(|e| e.to_string()),
        _ = phase.wait_for(Phase::stopped) => {
            Err("stopped before it opened: the run was interrupted".to_owned())
        }
    };
    drop(permit);
    let mut stream = match res {
        Ok(s) => s,
        Err(why) => {
            live.failed.fetch_add(1, Ordering::Relaxed);
            shared.live.connect_settled.notify_one();
            outcome.end = End::Failed(why);
            return outcome;
        }
    };
    let connect_us = started.elapsed().as_micros() as u64;
    shared
        .recorder
        .record_connect(plan.id, plan.backend, connect_us);
    live.opened.fetch_add(1, Ordering::Relaxed);
    shared.live.connect_settled.notify_one();

    let mut session = Session::new(&shared, plan, phase);
    let end = loop {
        let end = session.drive(stream).await;
        let Some(how) = session.take_server_close() else {
            break end;
        };
        outcome.closes.push(how);
        // Unanswered when the server ended the stream: lost at close, whether or not the
        // connection is opened again, not integrity errors (which a gateway's close at a
        // shutdown would otherwise read as).
        outcome.lost_at_close += session.reset_stream();
        let Some(policy) = shared.reconnect else {
            break end;
        };
        // Closed as the run was ending: it would have been opened again, and a close so
        // timed is no failure of the run.
        if !session.wants_stream() {
            break End::Clean;
        }
        match reopen(&shared, plan, policy, &mut session, &mut outcome).await {
            Ok(Some(s)) => {
                outcome.reconnects += 1;
                live.reconnects.fetch_add(1, Ordering::Relaxed);
                stream = s;
            }
            Ok(None) => break End::Clean,
            Err(why) => break End::Dropped(why),
        }
    };
    // Abandoned: what was still unanswered is lost at the close the run cut short, not
    // missing.
    if matches!(&end, End::Dropped(why) if why == ABANDONED) {
        outcome.lost_at_close += session.reset_stream();
    }
    session.tracker.finish();
    shared
        .recorder
        .record_rtts(plan.id, plan.backend, &session.samples);
    if matches!(end, End::Dropped(_)) {
        live.dropped.fetch_add(1, Ordering::Relaxed);
    }
    outcome.end = end;
    outcome.sent = session.tracker.sent();
    outcome.echoed = session.echoed;
    outcome.pushes = session.pushes;
    outcome.errors = session.tracker.errors;
    outcome
}

/// One TCP (+ TLS) connect and upgrade for `plan`.
async fn open(shared: &Shared, plan: Plan) -> Result<WsStream, crate::client::ConnectError> {
    let id = shared.backends.get(plan.backend).map_or("", String::as_str);
    let headers = shared.per_conn.for_conn(plan.id, id);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let upgraded = shared.connector.connect_raw(&headers, plan.local).await?;
    Ok(upgraded.stream)
}

/// Opens a new stream after the server ended one: back-off, try, repeat; gives up (with
/// the reason) after `policy.attempts` failures, or when the run stops sending after one
/// failed. `None`: the run stopped sending before any attempt failed.
async fn reopen(
    shared: &Shared,
    plan: Plan,
    policy: Reconnect,
    session: &mut Session<'_>,
    outcome: &mut Outcome,
) -> Result<Option<WsStream>, String> {
    let mut last_error = String::from("no attempt made");
    for n in 0..policy.attempts {
        let wait = tokio::time::sleep(policy.delay(n));
        tokio::pin!(wait);
        // The back-off ends early only to give up: when the run stops sending.
        loop {
            if !session.wants_stream() {
                // Before any attempt failed: the run's end, not the server's.
                if n == 0 {
                    return Ok(None);
                }
                return Err(format!(
                    "closed by the server and the run ended before a reconnect ({last_error})"
                ));
            }
            tokio::select! {
                () = &mut wait => break,
                changed = session.phase_mut().changed() => {
                    if changed.is_err() {
                        return Err("run over while reconnecting".to_owned());
                    }
                }
            }
        }
        // A stop while this attempt is under way does not wait out its connect timeout.
        let attempt = tokio::select! {
            r = open(shared, plan) => Some(r),
            _ = session.phase_mut().wait_for(Phase::stopped) => None,
        };
        let Some(attempt) = attempt else {
            if n == 0 {
                return Ok(None);
            }
            return Err(format!(
                "closed by the server and the run ended while reconnecting ({last_error})"
            ));
        };
        match attempt {
            Ok(s) => return Ok(Some(s)),
            Err(e) => {
                outcome.reconnect_failures += 1;
                last_error = e.to_string();
            }
        }
    }
    Err(format!(
        "reconnect failed {} times: {last_error}",
        policy.attempts
    ))
}

/// Whether a text message is a demo backend's push: a JSON object with a `message` field.
pub fn is_push(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .is_some_and(|v| v.get("message").is_some_and(serde_json::Value::is_string))
}

/// Code and reason of a close frame's payload (1005 when it has none).
pub fn describe_close(payload: &[u8]) -> (u16, String) {
    match payload {
        [a, b, reason @ ..] => (
            u16::from_be_bytes([*a, *b]),
            String::from_utf8_lossy(reason).into_owned(),
        ),
        _ => (1005, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_headers_carry_the_connection_number_and_its_subjects_token() {
        let per = PerConn {
            headers: vec![("X-Room".into(), "room-{conn}".into())],
            tokens: vec!["t0".into(), "t1".into()],
        };
        let got = per.for_conn(7, "Backend_ABC");
        let want: Vec<(String, String)> = [
            ("ID", "Backend_ABC"),
            ("X-Room", "room-7"),
            ("Authorization", "Bearer t1"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(got, want);
        let plain = PerConn::default().for_conn(7, "Backend_ABC");
        assert_eq!(plain, vec![("ID".to_owned(), "Backend_ABC".to_owned())]);
    }

    #[test]
    fn pushes_are_recognised() {
        assert!(is_push(br#"{"message":"Hello from ABC Backend"}"#));
        assert!(!is_push(br#"{"id":1}"#));
        assert!(!is_push(b"hello"));
    }

    #[test]
    fn close_payloads_are_described() {
        assert_eq!(describe_close(b"\x03\xe8bye"), (1000, "bye".to_owned()));
        assert_eq!(describe_close(b""), (1005, String::new()));
    }
}
