//! The admin listener: plain HTTP for operators, on loopback by default. With
//! `[admin] token_file`, `/reload` and `/sessions…` need the file's secret as a bearer
//! token (401 without it); the probes and `/metrics` stay open. With `read_token_file`
//! too, that file's secret admits `GET /sessions` only (403 for the others).
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when accepting; 503 while draining |
//! | `POST /reload` | re-read the config file: 200 (naming start-up-only keys the file changed), or 400 with the reason (old config kept) |
//! | `GET /sessions?backend=&instance=&subject=&max=` | the open sessions that match (all, without a filter), the oldest first, as JSON |
//! | `POST /sessions/close?backend=&instance=&subject=&max=&code=&spread=` | close the open sessions that match (`all=true`: every one), the client hearing `code` (1001 unless set), all at once or evenly over `spread` (e.g. `30s`): 200 with how many |

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

use crate::registry::{Closing, Filter};
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

/// The answer to a request `[admin]`'s secrets do not admit, if it is one: `None` for
/// open endpoints and admitted requests. Reads (`GET /sessions`) take either secret,
/// the rest the admin secret only; the read-only secret on a write is a 403.
fn refused_access(
    admin: &crate::config::AdminConfig,
    method: &Method,
    path: &str,
    req: &Request<Incoming>,
) -> Option<Response<Full<Bytes>>> {
    let read_only = match path {
        "/sessions" => method == Method::GET,
        "/reload" | "/sessions/close" => false,
        _ => return None,
    };
    let token = admin.token.as_ref()?;
    let authorization = req.headers().get(header::AUTHORIZATION);
    let presented = authorization.map(|v| v.as_bytes());
    if token.admits(presented) {
        return None;
    }
    if admin
        .read_token
        .as_ref()
        .is_some_and(|t| t.admits(presented))
    {
        if read_only {
            return None;
        }
        tracing::warn!(
            path,
            "admin request refused: the read-only token may not write"
        );
        return Some(text(
            StatusCode::FORBIDDEN,
            "the read-only admin token admits GET /sessions only",
        ));
    }
    tracing::warn!(
        path,
        presented = authorization.is_some(),
        "admin request refused: no or wrong admin token"
    );
    let mut r = text(StatusCode::UNAUTHORIZED, "admin token required");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"wsgate-admin\""),
    );
    Some(r)
}

async fn answer(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    // HEAD is GET without the body (RFC 9110 section 9.3.2), which hyper leaves out; some
    // balancers' health checks send it.
    let method = match req.method() {
        &Method::HEAD => &Method::GET,
        other => other,
    };
    let path = req.uri().path();
    if let Some(refused) = refused_access(&shared.config().admin, method, path, req) {
        return refused;
    }
    match (method, path) {
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
        (&Method::GET, "/sessions") => match session_filter(req.uri().query()) {
            Ok(filter) => {
                let (sessions, total) = shared.sessions.list(&filter);
                let body = serde_json::json!({ "total": total, "sessions": sessions });
                reply(StatusCode::OK, "application/json", format!("{body}\n"))
            }
            Err(why) => text(StatusCode::BAD_REQUEST, &why),
        },
        (&Method::POST, "/sessions/close") => match close_order(req.uri().query()) {
            Ok(SessionQuery {
                filter,
                code,
                spread,
                ..
            }) => {
                let picked = shared.sessions.pick(&filter);
                let how = Closing::Operator(code);
                let (closed, over) = if spread.is_zero() {
                    (picked.close_now(how), String::new())
                } else {
                    let count = picked.len();
                    tokio::spawn(picked.close_over(how, spread).run());
                    (
                        count,
                        format!(" over {}", humantime::format_duration(spread)),
                    )
                };
                tracing::info!(
                    closed,
                    code,
                    backend = filter.backend.as_deref(),
                    instance = filter.instance.as_deref(),
                    subject = filter.subject.as_deref(),
                    max = filter.max,
                    spread = %humantime::format_duration(spread),
                    "sessions closed by the operator"
                );
                text(StatusCode::OK, &format!("closing {closed} sessions{over}"))
            }
            Err(why) => text(StatusCode::BAD_REQUEST, &why),
        },
        // RFC 9110 section 15.5.6: a 405 lists the methods the resource takes.
        (
            _,
            path @ ("/metrics" | "/healthz" | "/readyz" | "/reload" | "/sessions"
            | "/sessions/close"),
        ) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            let allow = if matches!(path, "/reload" | "/sessions/close") {
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

/// The sessions `GET /sessions` lists: `backend`, `instance`, `subject`, `max` as for
/// [`close_order`], none of them needed.
fn session_filter(query: Option<&str>) -> Result<Filter, String> {
    session_query(query).map(|q| q.filter)
}

/// The longest `spread` a close order may ask for.
const MAX_SPREAD: Duration = Duration::from_secs(24 * 3600);

/// What `POST /sessions/close` is to do, from its query (see [`session_query`]); with none
/// of `backend`, `instance` and `subject`, `all=true` must say so.
fn close_order(query: Option<&str>) -> Result<SessionQuery, String> {
    let order = session_query(query)?;
    if !order.filter.names_any() && !order.all {
        return Err("name backend, instance or subject (or all=true for every session)".into());
    }
    Ok(order)
}

/// A `/sessions` query as given.
#[derive(Debug, PartialEq, Eq)]
struct SessionQuery {
    /// The sessions it picks.
    filter: Filter,
    /// What their clients hear, if closed.
    code: u16,
    /// `all=true`: every session, by intent.
    all: bool,
    /// Over how long their closes are spread (zero: all at once).
    spread: Duration,
}

/// A `/sessions` query: `backend`, `instance`, `subject` (each at most once, all that are
/// given must match), `max`, `code` (1001 unless given), `spread` (a duration, at most a
/// day; none unless given), and whether `all=true` was given (not together with any of
/// the three).
fn session_query(query: Option<&str>) -> Result<SessionQuery, String> {
    let mut filter = Filter::default();
    let (mut code, mut all, mut spread) = (1001u16, false, Duration::ZERO);
    let mut seen = std::collections::HashSet::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !seen.insert(key.clone()) {
            return Err(format!("{key} given twice"));
        }
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what}: {value:?} is not a number"))
        };
        match &*key {
            "backend" => filter.backend = Some(value.into_owned()),
            "instance" => filter.instance = Some(value.into_owned()),
            "subject" => filter.subject = Some(value.into_owned()),
            "max" => filter.max = Some(usize::try_from(number("max")?).unwrap_or(usize::MAX)),
            "code" => {
                code = u16::try_from(number("code")?)
                    .ok()
                    .filter(|c| crate::registry::allowed_code(*c))
                    .ok_or_else(|| {
                        format!("code {value}: one of 1000, 1001, 1008, 1012, 1013 or 3000-4999")
                    })?;
            }
            "spread" => {
                spread = crate::config::parse_duration(&value)
                    .map_err(|e| format!("spread: {e}"))?;
                if spread > MAX_SPREAD {
                    return Err(format!("spread {value:?}: at most 1 day"));
                }
            }
            "all" => match &*value {
                "true" => all = true,
                "false" => {}
                other => return Err(format!("all: {other:?}: expected true or false")),
            },
            other => {
                return Err(format!(
                "unknown parameter {other:?} (expected backend, instance, subject, max, code, spread, all)"
            ))
            }
        }
    }
    if all && filter.names_any() {
        return Err("all=true with backend, instance or subject: say one".into());
    }
    Ok(SessionQuery {
        filter,
        code,
        all,
        spread,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_order_names_what_it_closes_and_refuses_what_it_cannot_do() {
        let parsed = close_order(Some(
            "backend=Backend_ABC&instance=10.0.0.2%3A8081&max=5&code=4001",
        ));
        let want = Filter {
            backend: Some("Backend_ABC".into()),
            instance: Some("10.0.0.2:8081".into()),
            subject: None,
            max: Some(5),
        };
        let order = |filter, code, all, spread| SessionQuery {
            filter,
            code,
            all,
            spread,
        };
        assert_eq!(parsed, Ok(order(want, 4001, false, Duration::ZERO)));
        assert_eq!(
            close_order(Some("subject=alice")).map(|o| (o.filter.subject, o.code)),
            Ok((Some("alice".into()), 1001))
        );
        assert_eq!(
            close_order(Some("all=true")),
            Ok(order(Filter::default(), 1001, true, Duration::ZERO))
        );
        assert_eq!(
            close_order(Some("all=true&spread=1m30s")),
            Ok(order(
                Filter::default(),
                1001,
                true,
                Duration::from_secs(90)
            ))
        );
        // A listing needs no filter; the query's other rules are the same.
        for query in [None, Some("all=false"), Some("all=true")] {
            assert_eq!(session_filter(query), Ok(Filter::default()), "{query:?}");
        }
        assert!(session_filter(Some("all=true&subject=a")).is_err_and(|e| e.contains("say one")));
        assert!(session_filter(Some("max=x")).is_err_and(|e| e.contains("not a number")));
        for (query, problem) in [
            (None, "name backend"),
            (Some("max=3"), "name backend"),
            (Some("all=true&subject=a"), "say one"),
            (Some("subject=a&code=1011"), "one of 1000"),
            (Some("subject=a&code=x"), "not a number"),
            (Some("subject=a&subject=b"), "twice"),
            (Some("subject=a&sub=b"), "unknown parameter"),
            (Some("all=yes"), "expected true or false"),
            (Some("all=true&spread=soon"), "spread: "),
            (Some("all=true&spread=2d"), "at most 1 day"),
        ] {
            let got = close_order(query);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(problem)),
                "{query:?}: {got:?}"
            );
        }
    }
}
