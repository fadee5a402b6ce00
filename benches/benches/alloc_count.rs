//! `alloc_count`: heap allocations per forwarded message, in steady state.
//!
//! Not a criterion benchmark: a counting global allocator (`benches::alloc`) wraps the
//! system allocator, one gateway session runs over in-memory pipes (`benches::harness`),
//! and after a warm-up the allocation calls (`alloc`, `alloc_zeroed`, `realloc`) made
//! while forwarding many messages are divided by the message count. The harness's own
//! share is measured alone (`direct`) so it can be told apart. The goal is 0; this prints
//! the figure and asserts nothing. The last column counts the allocations made by a fresh
//! session's start and first batch: channels, timers, read and batch buffers.
//!
//! Run with `cargo bench --bench alloc_count`.

use std::process::ExitCode;

use benches::alloc::{CountingAlloc, Counts};
use benches::harness::{check_forwarding, Session};
use benches::wire::Batch;
use gateway::session::Direction;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

/// Message sizes measured.
const SIZES: [usize; 3] = [32, 1024, 64 * 1024];

/// Messages counted per case (fewer for large messages: at most 1 GiB of payload).
fn messages(size: usize) -> u64 {
    100_000.min((1u64 << 30) / size as u64)
}

/// Batches sent before counting: buffers reach their working size.
const WARM_UP_BATCHES: u32 = 20;

/// What one case measured.
struct Measured {
    /// Allocations while a fresh session started and its first batch crossed.
    first_batch: Counts,
    /// Allocations while the counted messages crossed, after the warm-up.
    steady: Counts,
    /// Messages counted.
    messages: u64,
}

/// Forwards `messages(size)` messages along `direction`, through the gateway or
/// directly, counting allocations.
async fn measure(
    size: usize,
    direction: Direction,
    through_gateway: bool,
) -> Result<Measured, String> {
    let batch = Batch::sized(size, direction == Direction::Upstream);
    let mut session = if through_gateway {
        Session::through_gateway(&tokio::runtime::Handle::current())
    } else {
        Session::direct()
    };
    let failed = |e: std::io::Error| format!("forwarding failed: {e}");
    let before = ALLOC.snapshot();
    session.pipe(direction).send(&batch).await.map_err(failed)?;
    let first_batch = ALLOC.snapshot() - before;
    check_forwarding(&mut session, direction, &batch).await?;
    let pipe = session.pipe(direction);
    for _ in 0..WARM_UP_BATCHES {
        pipe.send(&batch).await.map_err(failed)?;
    }
    let batches = messages(size).div_ceil(batch.messages);
    let before = ALLOC.snapshot();
    for _ in 0..batches {
        pipe.send(&batch).await.map_err(failed)?;
    }
    let steady = ALLOC.snapshot() - before;
    session.close().await;
    Ok(Measured {
        first_batch,
        steady,
        messages: batches * batch.messages,
    })
}

/// Whether the counting allocator is really the global one (else every figure reads 0).
fn counter_works() -> bool {
    let before = ALLOC.snapshot();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(16)));
    ALLOC.snapshot().calls > before.calls
}

fn run() -> Result<(), String> {
    if !counter_works() {
        return Err("the counting allocator saw no allocation: is it the global allocator?".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    println!(
        "allocations per forwarded message, steady state (current-thread runtime, in-memory pipes)"
    );
    println!(
        "{:>7}  {:<16} {:>9} {:>11} {:>11} {:>13}",
        "size", "path", "messages", "allocs/msg", "bytes/msg", "start+batch 1"
    );
    let cases = [
        ("client->backend", Direction::Upstream, true),
        ("backend->client", Direction::Downstream, true),
        ("direct (harness)", Direction::Upstream, false),
    ];
    let mut summary = Vec::new();
    for size in SIZES {
        let mut per_dir = Vec::new();
        for (name, direction, through_gateway) in cases {
            let m = rt.block_on(measure(size, direction, through_gateway))?;
            let n = m.messages as f64;
            let (calls, bytes) = (m.steady.calls as f64 / n, m.steady.bytes as f64 / n);
            let first = m.first_batch.calls;
            println!(
                "{size:>5} B  {name:<16} {:>9} {calls:>11.4} {bytes:>11.1} {first:>6} allocs",
                m.messages
            );
            if through_gateway {
                per_dir.push(format!("{name} {calls:.4}"));
            }
        }
        summary.push(format!("{size} B: {}", per_dir.join(", ")));
    }
    println!("allocations per forwarded message: {}", summary.join("; "));
    Ok(())
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` and any filter; this target takes no options.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("alloc_count: {e}");
            ExitCode::FAILURE
        }
    }
}
