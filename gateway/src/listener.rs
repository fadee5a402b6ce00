//! Listen: accept TCP connections, take a connection-limit slot, hand each to a worker.
//!
//! Accept errors (EMFILE when descriptors run out, for one) back off and retry instead of
//! ending or spinning the loop. [`bind`] opens the listening socket, optionally with
//! `SO_REUSEPORT` so several gateway processes share one port.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tracing::{debug, error, info};

use crate::limits::Admission;
use crate::state::Shared;
use crate::workers::{Accepted, Workers};

/// Pending connections the kernel queues per listener (as `TcpListener::bind` uses; the
/// kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 1024;

/// Binds the client listener on `addr`. With `reuse_port`, `SO_REUSEPORT` is set first:
/// every process (of the same user) binding the same address with it gets its own accept
/// queue, and the kernel spreads new connections over them by a hash of the addresses.
/// Without it, binding an address another process holds fails (`EADDRINUSE`).
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart need not wait for TIME_WAIT sockets to expire.
    socket.set_reuseaddr(true)?;
    if reuse_port {
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
        socket.set_reuseport(true)?;
        #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "[server] reuse_port is not supported on this system",
        ));
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A client's address as the rest of the gateway names it: an IPv4 client of a dual-stack
/// listener (`[::]`) is reported by the system as `::ffff:a.b.c.d`; it is `a.b.c.d` in
/// logs and in the `X-Forwarded-For` backends read (their IPv4 allow-lists would not
/// match the mapped form), as the per-address limits already count it.
pub fn unmapped(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// Accepts until `shutdown` resolves, handing every connection to one of `workers`.
///
/// With `[server] proxy_protocol` (read once, at start) a connection's limits wait for
/// its PROXY header, and its span names the balancer it came through (`via`) rather
/// than a peer.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    workers: &Workers,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let proxy_protocol = shared.config().server.proxy_protocol;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let peer = unmapped(peer);
                backoff = Duration::from_millis(5);
                shared.metrics.accepted.inc();
                let conn_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                // Over the limit the connection is still answered (503), not left hanging.
                let (admission, span) = if proxy_protocol {
                    let span = tracing::info_span!("conn", conn = conn_id, via = %peer);
                    (Admission::AfterProxyHeader, span)
                } else {
                    let slot = shared.limiter().try_acquire(peer.ip());
                    let span = tracing::info_span!("conn", conn = conn_id, %peer);
                    (Admission::Decided(slot), span)
                };
                // Unregistered here, registered again by the worker that serves it.
                match tcp.into_std() {
                    Ok(tcp) => workers.dispatch(Accepted {
                        tcp,
                        peer,
                        conn_id,
                        admission,
                        span,
                    }),
                    Err(e) => debug!(conn = conn_id, %peer, error = %e, "cannot hand over"),
                }
            }
            Err(e) => {
                error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    info!("listener stopped accepting");
}
