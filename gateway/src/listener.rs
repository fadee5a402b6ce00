//! Listen: accept TCP connections, take a connection-limit slot, hand each to its task.
//!
//! Accept errors (EMFILE when descriptors run out, for one) back off and retry instead of
//! ending or spinning the loop.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, Instrument};

use crate::service::serve_connection;
use crate::state::Shared;

/// Accepts until `shutdown` resolves.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = Duration::from_millis(5);
                shared.metrics.accepted.inc();
                let conn_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                // Over the limit the connection is still answered (503), not left hanging.
                let slot = shared.limiter().try_acquire(peer.ip());
                let span = tracing::info_span!("conn", conn = conn_id, %peer);
                tokio::spawn(
                    serve_connection(shared.clone(), tcp, peer, conn_id, slot).instrument(span),
                );
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
