//! The admin listener: plain HTTP for operators, on loopback by default.
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when accepting; 503 while draining |
//! | `POST /reload` | re-read the config file: 200 (naming start-up-only keys the file changed), or 400 with the reason (old config kept) |

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::debug;

use crate::state::Shared;

/// Admin connections open at once. Scrapers, health checks and reloads need a few; what
/// is above that would take descriptors the sessions keep in reserve. When all are taken,
/// the one that has waited longest without a request in progress is closed to make room,
/// so that idle or half-sent connections cannot keep a health check out (a liveness probe
/// that fails restarts the gateway and drops every session).
pub const MAX_CONNECTIONS: usize = 32;

/// How long an admin connection lives: a request head must come within a tenth of it,
/// and a scraper on a keep-alive connection connects again after it (the request it
/// was answering, if any, is answered first).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// The open admin connections, oldest first, and how to close each.
#[derive(Default)]
struct Places {
    open: Mutex<BTreeMap<u64, Place>>,
}

struct Place {
    /// A request is being answered: the connection is not closed to make room.
    busy: Arc<AtomicBool>,
    evict: Arc<Notify>,
}

impl Places {
    /// Takes a place for connection `id`, closing the oldest idle connection if all are
    /// taken. `None` when every place is answering a request.
    fn take(self: &Arc<Self>, id: u64) -> Option<PlaceGuard> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= MAX_CONNECTIONS {
            let oldest_idle = open
                .iter()
                .find(|(_, p)| !p.busy.load(Ordering::Acquire))
                .map(|(&id, _)| id)?;
            if let Some(evicted) = open.remove(&oldest_idle) {
                evicted.evict.notify_one();
            }
        }
        let busy = Arc::new(AtomicBool::new(false));
        let evict = Arc::new(Notify::new());
        open.insert(
            id,
            Place {
                busy: busy.clone(),
                evict: evict.clone(),
            },
        );
        Some(PlaceGuard {
            places: self.clone(),
            id,
            busy,
            evict,
        })
    }
}

/// A connection's place, given back when its task ends.
struct PlaceGuard {
    places: Arc<Places>,
    id: u64,
    busy: Arc<AtomicBool>,
    evict: Arc<Notify>,
}

impl Drop for PlaceGuard {
    fn drop(&mut self) {
        let mut open = self.places.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&self.id);
    }
}

/// Marks a connection busy while one of its requests is answered.
struct Busy(Arc<AtomicBool>);

impl Busy {
    fn new(flag: &Arc<AtomicBool>) -> Busy {
        flag.store(true, Ordering::Release);
        Busy(flag.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Serves admin requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let places = Arc::new(Places::default());
    let mut next_id = 0u64;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        next_id += 1;
        let Some(place) = places.take(next_id) else {
            debug!(
                limit = MAX_CONNECTIONS,
                "admin connection closed: every place is answering a request"
            );
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let busy = place.busy.clone();
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                let busy = Busy::new(&busy);
                async move {
                    let response = answer(&shared, &req).await;
                    drop(busy);
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CONNECTION_LIFETIME / 10)
                .serve_connection(TokioIo::new(tcp), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = place.evict.notified() => {
                    debug!(limit = MAX_CONNECTIONS, "idle admin connection closed to make room");
                }
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    // A request under way (a reload waiting on a key-set fetch, say) is
                    // answered first.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME / 4, conn).await;
                }
            }
            drop(place);
        });
    }
}

async fn answer(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    // HEAD is GET without the body (RFC 9110 section 9.3.2), which hyper leaves out; some
    // balancers' health checks send it.
    let method = match req.method() {
        &Method::HEAD => &Method::GET,
        other => other,
    };
    match (method, req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            if shared.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else {
                text(StatusCode::OK, "ready")
            }
        }
        (&Method::POST, "/reload") => match crate::reload::reload_off_runtime(shared.clone()).await
        {
            Ok(done) if done.start_up_only.is_empty() => text(StatusCode::OK, "reloaded"),
            Ok(done) => text(
                StatusCode::OK,
                &format!(
                    "reloaded; read at start-up only, not applied until a restart: {}",
                    done.start_up_only.join(", ")
                ),
            ),
            Err(e) => text(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        // RFC 9110 section 15.5.6: a 405 lists the methods the resource takes.
        (_, path @ ("/metrics" | "/healthz" | "/readyz" | "/reload")) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            let allow = if path == "/reload" {
                "POST"
            } else {
                "GET, HEAD"
            };
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        "text/plain; charset=utf-8",
        format!("{}\n", body.replace('\n', " ")),
    )
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}
