//! Starting a backend inside a test: port 0, on the test's runtime, stopped by a handle.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::server::{serve_with_tls, SessionCounts};
use crate::{Backend, DemoError, ServiceOptions};

/// Binds `127.0.0.1:0`, spawns [`serve`] on the current tokio runtime and returns a
/// handle with the bound address.
///
/// For the gateway's and the load generator's tests, which need real backends on free
/// ports. Must be called inside a tokio runtime.
pub async fn spawn_for_test(opts: ServiceOptions) -> std::io::Result<RunningBackend> {
    spawn_for_test_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), opts).await
}

/// Like [`spawn_for_test`], bound to `addr`: several instances of one backend on
/// 127.0.0.2, 127.0.0.3, ... (one port), or one coming back on the address it had.
pub async fn spawn_for_test_on(
    addr: SocketAddr,
    opts: ServiceOptions,
) -> std::io::Result<RunningBackend> {
    spawn(addr, opts, None).await
}

/// Like [`spawn_for_test`], serving `wss://` with `tls` (see [`crate::tls::acceptor`]).
pub async fn spawn_tls_for_test(
    opts: ServiceOptions,
    tls: TlsAcceptor,
) -> std::io::Result<RunningBackend> {
    spawn(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), opts, Some(tls)).await
}

/// Binds `addr` and spawns the server, plain or TLS.
async fn spawn(
    addr: SocketAddr,
    opts: ServiceOptions,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<RunningBackend> {
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let counts = Arc::new(SessionCounts::default());
    let backend = opts.backend;
    let (stop, stopped) = oneshot::channel::<()>();
    // A dropped sender also resolves `stopped`: dropping the handle stops the server.
    let task = tokio::spawn(serve_with_tls(
        listener,
        opts,
        tls,
        async move {
            let _ = stopped.await;
        },
        counts.clone(),
    ));
    Ok(RunningBackend {
        addr,
        backend,
        scheme,
        counts,
        _stop: stop,
        task,
    })
}

/// A backend started by [`spawn_for_test`]; stops it (listener and every open
/// connection) when dropped or on [`RunningBackend::stop`].
#[derive(Debug)]
pub struct RunningBackend {
    /// Where it listens (`127.0.0.1:<free port>`).
    addr: SocketAddr,
    /// Which backend it serves (for its path).
    backend: Backend,
    /// "ws", or "wss" when started by [`spawn_tls_for_test`] (for its URL).
    scheme: &'static str,
    /// Sessions it served.
    counts: Arc<SessionCounts>,
    /// Dropping this tells the server to shut down.
    _stop: oneshot::Sender<()>,
    /// The server task, awaited by [`RunningBackend::stop_and_wait`].
    task: JoinHandle<Result<(), DemoError>>,
}

impl RunningBackend {
    /// The bound address, e.g. `127.0.0.1:40123`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// WebSocket sessions upgraded so far.
    pub fn sessions_started(&self) -> u64 {
        self.counts.started()
    }

    /// WebSocket sessions open now.
    pub fn sessions_open(&self) -> u64 {
        self.counts.open()
    }

    /// The WebSocket URL to connect to, e.g. `ws://127.0.0.1:40123/backend/abc`
    /// (`wss://` for a TLS backend).
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.addr, self.backend.path())
    }

    /// Stops the server: the listener closes and open WebSocket connections are dropped
    /// without a close frame (a backend dying mid-session). Returns at once; the sockets
    /// close moments later on the runtime. Use [`RunningBackend::stop_and_wait`] to wait.
    pub fn stop(self) {
        drop(self);
    }

    /// Like [`RunningBackend::stop`], but returns only once the listener and every
    /// connection of this backend are closed.
    pub async fn stop_and_wait(self) {
        let RunningBackend { _stop, task, .. } = self;
        drop(_stop);
        // The result only repeats `serve`'s error, which cannot occur after binding.
        let _ = task.await;
    }
}
