//! Options every proxied TCP connection gets, on the client side and the backend side.

use tokio::net::TcpStream;

/// Unsent bytes a connection's kernel send queue may hold before the gateway's writes to
/// it wait (`TCP_NOTSENT_LOWAT`). Without it the queue grows with the kernel's send
/// buffer autotuning (to 4 MiB), and a writer blocked on a full queue is woken only once
/// about a third of it has drained: a client or backend that reads a backlog slowly (say
/// 64 KiB/s) let no write of the gateway's complete for tens of seconds, so it looked
/// idle and was closed as such. With a cap the gateway's writes follow the reader's pace,
/// and a reader that stopped holds ~156 KiB of the gateway's socket memory instead of
/// ~3.7 MiB. 128 KiB keeps a queue deep enough that a writer woken late still finds data
/// to send.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Sets the options on a connection: no Nagle delay (frames are batched by the gateway
/// already), and [`NOTSENT_LOWAT`]. Failures are ignored: the connection works without.
pub fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT);
}
