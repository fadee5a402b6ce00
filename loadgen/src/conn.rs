//! One load connection's life: open it (counting the failure if it does not), run its
//! [`session`](crate::session) until the end of the run, and sum up what it did.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::client::Connector;
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
}

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
}

/// Opens connection `plan` (releasing `permit` once the handshake is over) and runs it
/// until the end of the run.
pub async fn run(
    shared: Arc<Shared>,
    plan: Plan,
    permit: OwnedSemaphorePermit,
    phase: watch::Receiver<Phase>,
) -> Outcome {
    let live = shared.live.backend(plan.backend);
    let mut outcome = Outcome {
        backend: plan.backend,
        end: End::Clean,
        sent: 0,
        echoed: 0,
        pushes: 0,
        errors: IntegrityErrors::default(),
    };
    let started = Instant::now();
    let id = shared.backends.get(plan.backend).map_or("", String::as_str);
    let res = shared
        .connector
        .connect_raw(&[("ID", id)], plan.local)
        .await;
    drop(permit);
    let upgraded = match res {
        Ok(u) => u,
        Err(e) => {
            live.failed.fetch_add(1, Ordering::Relaxed);
            outcome.end = End::Failed(e.to_string());
            return outcome;
        }
    };
    let connect_us = started.elapsed().as_micros() as u64;
    shared
        .recorder
        .record_connect(plan.id, plan.backend, connect_us);
    live.opened.fetch_add(1, Ordering::Relaxed);

    let mut session = Session::new(&shared, plan, phase);
    let end = session.drive(upgraded.stream).await;
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
