//! One gateway session over in-memory pipes, driven by cheap peers.
//!
//! [`gateway::session::proxy`] runs as a task with its client side (server role) and its
//! backend side (client role) on [`tokio::io::simplex`] pipes. The bench client and the
//! bench backend are raw-byte peers: the sender writes a pre-encoded [`Batch`] with one
//! `write_all`, the receiver reads into a fixed scratch buffer until as many bytes came
//! out as went in. So a measurement is the forwarder (frame parsing, unmasking, re-masking,
//! batching, flushing) plus the peers' copies into and out of the pipes;
//! [`Session::direct`] joins the peers with one bare pipe and measures that share alone.

use std::io;

use gateway::config::{LimitsConfig, TimeoutsConfig};
use gateway::session::{self, Direction, SessionOptions, SessionReport, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, SimplexStream, WriteHalf};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::wire::Batch;

/// Bytes each pipe holds before its writer waits, about a socket buffer's worth.
pub const PIPE_CAPACITY: usize = 256 * 1024;

/// Scratch the receiving peer reads into.
const SCRATCH: usize = 64 * 1024;

/// What one direction's sending peer writes into and its receiving peer reads from.
#[derive(Debug)]
pub struct Pipe {
    /// The sending peer's end: the bench client upstream, the bench backend downstream.
    tx: WriteHalf<SimplexStream>,
    /// The receiving peer's end.
    rx: ReadHalf<SimplexStream>,
    /// Where received bytes go; allocated once so a steady-state batch allocates nothing.
    scratch: Box<[u8]>,
}

impl Pipe {
    fn new(tx: WriteHalf<SimplexStream>, rx: ReadHalf<SimplexStream>) -> Self {
        Self {
            tx,
            rx,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
        }
    }

    /// Sends `batch` and waits until all of it came out the other end.
    pub async fn send(&mut self, batch: &Batch) -> io::Result<()> {
        self.transfer(&batch.wire, None).await
    }

    /// Sends `batch` and returns the bytes that came out the other end.
    pub async fn send_and_capture(&mut self, batch: &Batch) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(batch.wire.len());
        self.transfer(&batch.wire, Some(&mut out)).await?;
        Ok(out)
    }

    async fn transfer(&mut self, wire: &[u8], mut keep: Option<&mut Vec<u8>>) -> io::Result<()> {
        let Pipe { tx, rx, scratch } = self;
        let write = tx.write_all(wire);
        let read = async {
            let mut left = wire.len();
            while left > 0 {
                let want = left.min(scratch.len());
                let n = rx.read(&mut scratch[..want]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if let Some(out) = keep.as_deref_mut() {
                    out.extend_from_slice(&scratch[..n]);
                }
                left -= n;
            }
            Ok(())
        };
        tokio::try_join!(write, read)?;
        Ok(())
    }
}

/// A bench client and a bench backend, joined through a gateway session or directly.
pub struct Session {
    /// Client to backend.
    upstream: Pipe,
    /// Backend to client.
    downstream: Pipe,
    /// The gateway's session task; `None` for a direct connection.
    task: Option<JoinHandle<SessionReport>>,
    /// Held for the session's life: `proxy` reads a dropped sender as a shutdown.
    _shutdown: watch::Sender<bool>,
}

impl Session {
    /// A gateway session with [`default_options`], spawned on `rt`.
    pub fn through_gateway(rt: &Handle) -> Self {
        let (client_tx, gw_client_rx) = simplex();
        let (gw_client_tx, client_rx) = simplex();
        let (backend_tx, gw_backend_rx) = simplex();
        let (gw_backend_tx, backend_rx) = simplex();
        let opts = default_options();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let client = Side {
            read: gw_client_rx,
            write: gw_client_tx,
            leftover: Default::default(),
        };
        let backend = Side {
            read: gw_backend_rx,
            write: gw_backend_tx,
            leftover: Default::default(),
        };
        let task = rt.spawn(session::proxy(
            client,
            backend,
            opts,
            shutdown_rx,
            gateway::registry::CloseOrder::never(),
            (),
        ));
        Self {
            upstream: Pipe::new(client_tx, backend_rx),
            downstream: Pipe::new(backend_tx, client_rx),
            task: Some(task),
            _shutdown: shutdown,
        }
    }

    /// The same peers joined by bare pipes: the harness's own cost.
    pub fn direct() -> Self {
        let (up_tx, up_rx) = simplex();
        let (down_tx, down_rx) = simplex();
        Self {
            upstream: Pipe::new(up_tx, up_rx),
            downstream: Pipe::new(down_tx, down_rx),
            task: None,
            _shutdown: watch::channel(false).0,
        }
    }

    /// The pipe for frames flowing in `direction`.
    pub fn pipe(&mut self, direction: Direction) -> &mut Pipe {
        match direction {
            Direction::Upstream => &mut self.upstream,
            Direction::Downstream => &mut self.downstream,
        }
    }

    /// Ends the session as a vanished client would (EOF on both peers' writes), waits
    /// for the gateway task, and returns its report (`None` for a direct connection).
    pub async fn close(mut self) -> Option<SessionReport> {
        let _ = self.upstream.tx.shutdown().await;
        let _ = self.downstream.tx.shutdown().await;
        let task = self.task.take()?;
        // Drain whatever the gateway still sends (its close frames) so it never waits.
        let Session {
            mut upstream,
            mut downstream,
            ..
        } = self;
        let drain = async {
            let mut buf = [0u8; 256];
            while matches!(upstream.rx.read(&mut buf).await, Ok(n) if n > 0) {}
            while matches!(downstream.rx.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        let (report, ()) = tokio::join!(task, drain);
        report.ok()
    }
}

/// Checks that `batch` crosses the session in `direction` intact: every message arrives,
/// in order, with the same payload, masked toward the backend and unmasked toward the
/// client. Benchmarks call this once before measuring.
pub async fn check_forwarding(
    session: &mut Session,
    direction: Direction,
    batch: &Batch,
) -> Result<(), String> {
    let out = session
        .pipe(direction)
        .send_and_capture(batch)
        .await
        .map_err(|e| format!("forwarding failed: {e}"))?;
    let sent = crate::wire::decode(&batch.wire)?;
    let got = crate::wire::decode(&out)?;
    if got.len() != sent.len() {
        return Err(format!(
            "{} messages sent, {} arrived",
            sent.len(),
            got.len()
        ));
    }
    let through_gateway = session.task.is_some();
    for (i, (s, g)) in sent.iter().zip(&got).enumerate() {
        if s.payload != g.payload {
            return Err(format!("message {i} arrived changed"));
        }
        let mask_ok = match (through_gateway, direction) {
            (false, _) => g.key == s.key,
            // Re-masked with a fresh key (equal to the client's by chance once in 2^32).
            (true, Direction::Upstream) => g.key.is_some() && g.key != s.key,
            (true, Direction::Downstream) => g.key.is_none(),
        };
        if !mask_ok {
            return Err(format!(
                "message {i} arrived with the wrong masking: {:?}",
                g.key
            ));
        }
    }
    Ok(())
}

/// Session options as `gateway::service` derives them from a default config (keepalive
/// on, so its timer is part of what is measured). Keep in step with the service.
pub fn default_options() -> SessionOptions {
    SessionOptions::from_parts(&LimitsConfig::default(), &TimeoutsConfig::default())
}

/// A one-way in-memory pipe: (writing end, reading end).
fn simplex() -> (WriteHalf<SimplexStream>, ReadHalf<SimplexStream>) {
    let (rx, tx) = tokio::io::simplex(PIPE_CAPACITY);
    (tx, rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Batch;

    #[tokio::test]
    async fn both_directions_forward_intact_and_the_session_ends() -> Result<(), String> {
        let mut session = Session::through_gateway(&Handle::current());
        let mut frames = 0;
        for size in [32, 1024, 65536, 300_000] {
            for (direction, masked) in [(Direction::Upstream, true), (Direction::Downstream, false)]
            {
                let batch = Batch::new(size, 5, masked);
                check_forwarding(&mut session, direction, &batch).await?;
                frames += 5;
            }
        }
        let report = session.close().await.ok_or("the session task failed")?;
        // The close the gateway sends on its own (client lost) is not counted as forwarded.
        assert_eq!(report.upstream.frames + report.downstream.frames, frames);
        // Both peers' writes ended; which loss the session saw first is up to the scheduler.
        assert!(
            matches!(report.outcome(), "client_lost" | "backend_lost"),
            "{}",
            report.outcome()
        );
        Ok(())
    }

    #[tokio::test]
    async fn direct_pipes_pass_bytes_unchanged() -> Result<(), String> {
        let mut session = Session::direct();
        check_forwarding(
            &mut session,
            Direction::Upstream,
            &Batch::new(1024, 5, true),
        )
        .await?;
        assert!(session.close().await.is_none());
        Ok(())
    }
}
