//! Workers: the threads that serve connections, each on a single-threaded runtime of
//! its own (or all on one shared runtime).
//!
//! The listener accepts and hands each connection to the next worker in turn; from then
//! on the connection (its TLS handshake, upgrade and whole session, backend side
//! included) lives on that worker's thread. Nothing moves between threads while data
//! flows — no work stealing, no cross-thread wake-ups — which is how nginx's and
//! HAProxy's workers run, and what a session's per-thread scratch buffers assume.
//! Handing connections out in turn, rather than letting every worker accept from the
//! shared socket, keeps the spread even (epoll wakes the most recently idle worker first,
//! which piles connections onto one) and does not need `SO_REUSEPORT`, which would let
//! another process of the same user bind the port unnoticed.
//!
//! With `[server] threading = "shared"` the same number of threads run one tokio
//! multi-thread runtime instead, and take work from each other: more CPU per message, but
//! a thread the kernel does not run for a while does not hold up its connections.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, Instrument, Span};

use crate::config::Threading;
use crate::limits::Admission;
use crate::service::serve_connection;
use crate::state::Shared;

/// How long a stopping worker waits for its runtime's blocking tasks (name lookups).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// A connection the listener accepted, on its way to a worker.
pub struct Accepted {
    /// The client's socket, not yet registered with any runtime.
    pub tcp: std::net::TcpStream,
    /// The connection's peer address (the balancer's, with `[server] proxy_protocol`).
    pub peer: SocketAddr,
    /// The connection's id in logs.
    pub conn_id: u64,
    /// Its place under the connection limits.
    pub admission: Admission,
    /// The connection's tracing span.
    pub span: Span,
}

/// The running workers. Dropping this tells them to stop at once (their sessions end
/// without a close handshake); [`Workers::stop`] is the orderly way, after a drain.
pub struct Workers {
    count: usize,
    /// `threading = "per_worker"`: each worker's inbox, in turn.
    inboxes: Vec<mpsc::UnboundedSender<Accepted>>,
    next: AtomicUsize,
    exit: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// `threading = "shared"`: the one runtime all worker threads run.
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
}

impl Workers {
    /// Starts `count` (at least one) worker threads serving connections for `shared`,
    /// each with a runtime of its own or all on one, as `threading` says.
    pub fn start(count: usize, threading: Threading, shared: Arc<Shared>) -> io::Result<Self> {
        let count = count.max(1);
        let (exit, exit_rx) = watch::channel(false);
        let mut workers = Self {
            count,
            inboxes: Vec::new(),
            next: AtomicUsize::new(0),
            exit,
            threads: Vec::new(),
            runtime: None,
            shared: shared.clone(),
        };
        if threading == Threading::Shared {
            workers.runtime = Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(count)
                    .thread_name("wsgate-shared")
                    .enable_all()
                    .build()?,
            );
            return Ok(workers);
        }
        for worker in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let shared = shared.clone();
            let exit_rx = exit_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("wsgate-worker-{worker}"))
                .spawn(move || {
                    runtime.block_on(serve(worker, rx, exit_rx, shared));
                    // Its sessions are dropped here; a name lookup still running on the
                    // blocking pool is not waited for long.
                    runtime.shutdown_timeout(SHUTDOWN_WAIT);
                })?;
            workers.inboxes.push(tx);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// How many worker threads there are.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Hands `conn` to the next worker in turn (skipping any that has stopped), or to the
    /// shared runtime.
    pub fn dispatch(&self, mut conn: Accepted) {
        if let Some(runtime) = &self.runtime {
            let shared = self.shared.clone();
            runtime.spawn(async move { serve_one(&shared, "shared", conn).await });
            return;
        }
        for _ in 0..self.inboxes.len() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.inboxes.len();
            match self.inboxes[i].send(conn) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => conn = back,
            }
        }
        error!(
            conn = conn.conn_id,
            "no worker is running; connection dropped"
        );
    }

    /// Stops every worker (a session still open is dropped) and waits for their threads.
    pub async fn stop(mut self) {
        let _ = self.exit.send(true);
        let threads = std::mem::take(&mut self.threads);
        let runtime = self.runtime.take();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            if let Some(runtime) = runtime {
                runtime.shutdown_timeout(SHUTDOWN_WAIT);
            }
        })
        .await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // The per-worker threads see their exit sender go; a shared runtime is let go
        // without waiting (this may run inside another runtime, where blocking is not
        // allowed).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Registers `conn` with the runtime this runs on and serves it there.
async fn serve_one(shared: &Arc<Shared>, worker: &str, conn: Accepted) {
    shared.metrics.worker_connection(worker);
    let Accepted {
        tcp,
        peer,
        conn_id,
        admission,
        span,
    } = conn;
    match TcpStream::from_std(tcp) {
        Ok(tcp) => {
            serve_connection(shared.clone(), tcp, peer, conn_id, admission)
                .instrument(span)
                .await
        }
        Err(e) => debug!(conn = conn_id, %peer, error = %e, "cannot register connection"),
    }
}

/// One worker's loop: runs every connection it is handed, until told to exit.
async fn serve(
    worker: usize,
    mut inbox: mpsc::UnboundedReceiver<Accepted>,
    mut exit: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    let label: Arc<str> = worker.to_string().into();
    loop {
        let conn = tokio::select! {
            biased;
            // Also when the sender is gone: the gateway that owned these workers is gone.
            _ = exit.wait_for(|stop| *stop) => break,
            conn = inbox.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
        };
        let shared = shared.clone();
        let label = label.clone();
        tokio::spawn(async move { serve_one(&shared, &label, conn).await });
    }
}
