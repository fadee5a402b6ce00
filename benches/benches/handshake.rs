//! `handshake`: the per-upgrade work besides the JWT — route lookup and request checks.
//!
//! - `route_hit` / `route_miss`: `Router::lookup` in the sample's three-backend table;
//! - `checks_valid_upgrade`: `checks::check` on a complete upgrade request as the sample
//!   client sends it (bearer token included, though `check` does not look at it);
//! - `checks_not_upgrade`: the same request without `Upgrade`, refused with 400.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::checks::check;
use gateway::route::{BackendTarget, RouteTable, Router};

/// The sample's `[backends]`.
const BACKENDS: [(&str, &str); 3] = [
    ("Backend_ABC", "ws://localhost:8081/backend/abc"),
    ("Backend_PQR", "ws://localhost:8082/backend/pqr"),
    ("Backend_XYZ", "ws://localhost:8083/backend/xyz"),
];

fn router() -> Router {
    let table: BTreeMap<String, BackendTarget> = BACKENDS
        .iter()
        .map(|(id, url)| {
            (
                id.to_string(),
                BackendTarget::parse(id, url).expect("a valid sample URL"),
            )
        })
        .collect();
    Router::new(RouteTable::new(&table))
}

/// The sample client's upgrade request; `upgrade: false` leaves out `Upgrade`.
fn request(upgrade: bool) -> http::Request<()> {
    let token = "x".repeat(700); // about an RS256 token's length
    let mut req = http::Request::get("/gateway")
        .header("Host", "localhost:9090")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("ID", "Backend_ABC")
        .header("Authorization", format!("Bearer {token}"))
        .header("User-Agent", "wsgate-bench");
    if upgrade {
        req = req.header("Upgrade", "websocket");
    }
    req.body(()).expect("a valid request")
}

fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let router = router();
    assert!(router.lookup("Backend_PQR").is_some() && router.lookup("Backend_QQQ").is_none());
    group.bench_function("route_hit", |b| {
        b.iter(|| router.lookup(black_box("Backend_PQR")))
    });
    group.bench_function("route_miss", |b| {
        b.iter(|| router.lookup(black_box("Backend_QQQ")))
    });

    let valid = request(true);
    let plain = request(false);
    assert!(check(&valid, "/gateway").is_ok() && check(&plain, "/gateway").is_err());
    group.bench_function("checks_valid_upgrade", |b| {
        b.iter(|| check(black_box(&valid), "/gateway").is_ok())
    });
    group.bench_function("checks_not_upgrade", |b| {
        b.iter(|| check(black_box(&plain), "/gateway").is_ok())
    });
    group.finish();
}

criterion_group!(benches, handshake);
criterion_main!(benches);
