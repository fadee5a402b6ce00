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
//! A second table counts the TLS layer the pipes leave out: the gateway's side of a real
//! TLS connection on loopback ([`gateway::tls_stream`] over rustls), per record read and
//! per record written, with the client's own allocations left out of the count.
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

/// Record sizes measured on the TLS layer: one (b)-style batch (32 × 128 B) and a full record.
const RECORDS: [usize; 2] = [32 * (128 + 6), 16 * 1024];

/// Records counted per TLS case.
const TLS_RECORDS: u32 = 2_000;

/// The suites the TLS table covers: what browsers pick first, what clients without AES
/// hardware (many phones) pick, and TLS 1.2.
const SUITES: [&str; 3] = [
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
];

/// Allocations on the gateway's side of a TLS connection on `suite`, per record read and
/// written.
async fn measure_tls(record_len: usize, suite: &str) -> Result<(Counts, Counts), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = |what: &'static str| move |err: std::io::Error| format!("TLS {what}: {err}");
    let certs = loadgen::testbed::repo_root().join("certs");
    let server_config = gateway::tls::server_config(&gateway::config::TlsConfig {
        cert: certs.join("server.crt"),
        key: certs.join("server.key"),
        cipher_suites: vec![suite.to_owned()],
        ..Default::default()
    })
    .map_err(|(_, err)| err)?;
    let client_config = loadgen::tls::client_config(Some(&certs.join("ca.crt")), false)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(e("bind"))?;
    let addr = listener.local_addr().map_err(e("bind"))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|x| x.to_string())?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(client_config)
            .connect(name, tcp)
            .await
    };
    let accept = async {
        let (tcp, _) = listener.accept().await?;
        gateway::tls_stream::accept(server_config, tcp).await
    };
    let (mut client, mut server) = tokio::try_join!(connect, accept).map_err(e("handshake"))?;
    let negotiated = client.get_ref().1.negotiated_cipher_suite();
    if negotiated.and_then(|s| s.suite().as_str()) != Some(suite) {
        return Err(format!("TLS: {negotiated:?} negotiated instead of {suite}"));
    }
    let data = vec![0x42u8; record_len];
    let mut buf = vec![0u8; record_len];
    let (mut reads, mut writes) = (Counts::default(), Counts::default());
    for round in 0..WARM_UP_BATCHES + TLS_RECORDS {
        let counted = round >= WARM_UP_BATCHES;
        client.write_all(&data).await.map_err(e("client write"))?;
        client.flush().await.map_err(e("client write"))?;
        let before = ALLOC.snapshot();
        server.read_exact(&mut buf).await.map_err(e("read"))?;
        let read = ALLOC.snapshot() - before;
        let before = ALLOC.snapshot();
        server.write_all(&data).await.map_err(e("write"))?;
        server.flush().await.map_err(e("write"))?;
        let written = ALLOC.snapshot() - before;
        client
            .read_exact(&mut buf)
            .await
            .map_err(e("client read"))?;
        if counted {
            reads = reads + read;
            writes = writes + written;
        }
    }
    Ok((reads, writes))
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
    println!();
    println!("TLS layer, gateway side (tls_stream over rustls, loopback TCP), per record");
    println!(
        "{:>7}  {:<40} {:>9} {:>13} {:>13}",
        "record", "suite", "records", "allocs/read", "allocs/write"
    );
    for suite in SUITES {
        for len in RECORDS {
            let (reads, writes) = rt.block_on(measure_tls(len, suite))?;
            let n = f64::from(TLS_RECORDS);
            println!(
                "{len:>5} B  {suite:<40} {TLS_RECORDS:>9} {:>13.3} {:>13.3}",
                reads.calls as f64 / n,
                writes.calls as f64 / n
            );
        }
    }
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
