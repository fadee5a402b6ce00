//! A bare TCP relay (no TLS, no HTTP: bytes in, bytes out) on one of two I/O models, so
//! their cost per forwarded message can be compared on the same job:
//!
//! - `tokio`: readiness through epoll, as the gateway's runtime does it;
//! - `uring`: completions through io_uring (monoio), each read and write a submission;
//!   `uring-defer`: the same on a ring whose completion work waits for the thread.
//!
//! Both run one single-threaded runtime per thread with its own `SO_REUSEPORT` listener,
//! as the gateway's workers do, and connect every accepted client to `BACKEND`.
//!
//! Usage: `relay-io tokio|uring|uring-defer BACKEND_ADDR [THREADS]`; prints `listening on PORT`.

use std::error::Error;
use std::net::SocketAddr;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const BUF: usize = 64 * 1024;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(model), Some(backend)) = (args.get(1), args.get(2)) else {
        return Err("usage: relay-io tokio|uring|uring-defer BACKEND_ADDR [THREADS]".into());
    };
    let backend: SocketAddr = backend.parse()?;
    let threads: usize = args.get(3).map_or(Ok(2), |t| t.parse())?;
    // The first listener picks the port; the others share it through SO_REUSEPORT.
    let first = listener("127.0.0.1:0".parse()?)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(listener(addr)?);
    }
    println!("listening on {}", addr.port());
    let workers: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let model = model.clone();
            std::thread::spawn(move || match model.as_str() {
                "tokio" => tokio_relay(l, backend),
                "uring" => uring_relay(l, backend, false),
                "uring-defer" => uring_relay(l, backend, true),
                other => Err(format!("unknown model {other}: tokio, uring or uring-defer").into()),
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "a worker panicked")??;
    }
    Ok(())
}

fn listener(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// epoll: one task per connection, both directions in it (`copy_bidirectional`).
fn tokio_relay(l: std::net::TcpListener, backend: SocketAddr) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let l = tokio::net::TcpListener::from_std(l)?;
        loop {
            let (mut client, _) = l.accept().await?;
            tokio::task::spawn_local(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let _ =
                    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUF, BUF)
                        .await;
            });
        }
    })
}

/// io_uring: one task per direction, each a loop of read and write submissions on one
/// owned buffer.
/// `defer`: the ring set up so completions' work runs only when the thread asks for
/// completions (`DEFER_TASKRUN`, `SINGLE_ISSUER`), not as soon as data arrives.
fn uring_relay(l: std::net::TcpListener, backend: SocketAddr, defer: bool) -> Result<()> {
    use monoio::io::Splitable;
    let mut ring = io_uring::IoUring::builder();
    if defer {
        ring.setup_single_issuer().setup_defer_taskrun();
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(4096)
        .uring_builder(ring)
        .build()?;
    rt.block_on(async move {
        let l = monoio::net::TcpListener::from_std(l)?;
        loop {
            let (client, _) = l.accept().await?;
            monoio::spawn(async move {
                let Ok(server) = monoio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = monoio::spawn(async move { uring_copy(&mut cr, &mut sw).await });
                uring_copy(&mut sr, &mut cw).await;
                up.await;
            });
        }
    })
}

async fn uring_copy<R, W>(from: &mut R, to: &mut W)
where
    R: monoio::io::AsyncReadRent,
    W: monoio::io::AsyncWriteRent,
{
    use monoio::buf::IoBuf;
    use monoio::io::AsyncWriteRentExt;
    let mut buf = vec![0u8; BUF];
    loop {
        let (read, b) = from.read(buf).await;
        buf = b;
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (written, b) = to.write_all(buf.slice(0..n)).await;
        buf = b.into_inner();
        if written.is_err() {
            return;
        }
    }
}
