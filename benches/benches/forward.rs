//! `forward` and `forward_msgs`: frames through one gateway session, in steady state.
//!
//! Each iteration sends a pre-encoded batch of about 256 KiB of binary messages through
//! [`gateway::session::proxy`] over in-memory pipes and waits until the last byte came out
//! the other side (see `benches::harness`). Cases per message size (32 B, 1 KiB, 64 KiB):
//!
//! - `client_to_backend`: masked frames in, unmasked, re-masked with a fresh key, out;
//! - `backend_to_client`: unmasked frames in and out;
//! - `direct`: the same peers joined by a bare pipe, the harness's own cost.
//!
//! `forward` reports payload bytes per second, `forward_msgs` messages per second; both
//! measure the same work. The runtime is current-thread, as one session is one task in the
//! gateway: the figures are what one core forwards, peers included.
//!
//! `mask` re-masks the 128-byte payloads of 32 back-to-back masked frames in a read buffer
//! (each at a different alignment, as they arrive) with the gateway's
//! `frames::apply_mask` and, for comparison, `fastwebsockets::unmask`. Each has a loop of
//! its own, so both are inlined as they are in their callers (through a function pointer
//! the gateway's took 207 ns instead of 89).

use std::time::{Duration, Instant};

use benches::harness::{check_forwarding, Session};
use benches::wire::Batch;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gateway::session::Direction;
use tokio::runtime::Runtime;

/// Message sizes measured.
const SIZES: [usize; 3] = [32, 1024, 64 * 1024];

/// Where a case's frames flow.
#[derive(Clone, Copy)]
enum Path {
    /// Through the gateway, in this direction.
    Gateway(Direction),
    /// Through a bare pipe.
    Direct,
}

const CASES: [(&str, Path); 3] = [
    ("client_to_backend", Path::Gateway(Direction::Upstream)),
    ("backend_to_client", Path::Gateway(Direction::Downstream)),
    ("direct", Path::Direct),
];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn size_label(size: usize) -> String {
    match size {
        s if s >= 1024 && s % 1024 == 0 => format!("{}KiB", s / 1024),
        s => format!("{s}B"),
    }
}

/// Runs every case into group `name`, counting throughput per message or per byte.
fn forward_group(c: &mut Criterion, name: &str, per_message: bool) {
    let rt = runtime();
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for size in SIZES {
        for (case, path) in CASES {
            // A client masks what it sends; a backend does not.
            let direction = match path {
                Path::Gateway(d) => d,
                Path::Direct => Direction::Upstream,
            };
            let batch = Batch::sized(size, direction == Direction::Upstream);
            let mut session = match path {
                Path::Gateway(_) => Session::through_gateway(rt.handle()),
                Path::Direct => Session::direct(),
            };
            rt.block_on(check_forwarding(&mut session, direction, &batch))
                .expect("frames forwarded intact");
            group.throughput(if per_message {
                Throughput::Elements(batch.messages)
            } else {
                Throughput::Bytes(batch.payload_bytes())
            });
            group.bench_with_input(
                BenchmarkId::new(case, size_label(size)),
                &batch,
                |b, batch| {
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            let pipe = session.pipe(direction);
                            let start = Instant::now();
                            for _ in 0..iters {
                                pipe.send(batch).await.expect("a batch forwarded");
                            }
                            start.elapsed()
                        })
                    })
                },
            );
            rt.block_on(session.close());
        }
    }
    group.finish();
}

fn forward(c: &mut Criterion) {
    forward_group(c, "forward", false);
}

fn forward_msgs(c: &mut Criterion) {
    forward_group(c, "forward_msgs", true);
}

fn mask(c: &mut Criterion) {
    // 32 frames of 2 + 4 head bytes and 128 payload bytes, back to back.
    const FRAME: usize = 134;
    const FRAMES: usize = 32;
    let mut buf: Vec<u8> = (0..FRAME * FRAMES).map(|i| i as u8).collect();
    let mut group = c.benchmark_group("mask");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("gateway/32x128B", |b| {
        b.iter(|| {
            for f in 0..FRAMES {
                let at = f * FRAME + 6;
                gateway::frames::apply_mask(&mut buf[at..at + 128], [1, 2, 3, f as u8]);
            }
        })
    });
    group.bench_function("fastwebsockets/32x128B", |b| {
        b.iter(|| {
            for f in 0..FRAMES {
                let at = f * FRAME + 6;
                fastwebsockets::unmask(&mut buf[at..at + 128], [1, 2, 3, f as u8]);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, forward, forward_msgs, mask);
criterion_main!(benches);
