//! Proxy header: the PROXY protocol header (v1 text or v2 binary) a TCP load balancer
//! sends before the client's first byte, naming the client's address.
//!
//! Behind an L4 balancer (AWS NLB, HAProxy in TCP mode, GCP and Azure load balancers)
//! every connection comes from the balancer's address. With `[server] proxy_protocol`
//! the gateway reads this header first and uses the address in it wherever it would use
//! the peer's: `X-Forwarded-For`, the per-address connection limit, logs. The header is
//! read to its last byte and no further, so the TLS handshake that follows sees the
//! client's bytes untouched.

use std::io;
use std::net::SocketAddr;

use ppp::v1;
use ppp::v2;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest v1 header, `\r\n` included (the protocol's own limit).
const V1_MAX: usize = 107;

/// A v2 header's fixed part: the 12-byte signature, version and command, family and
/// protocol, and the length of what follows.
const V2_FIXED: usize = 16;

/// Where a v2 header holds its version (high nibble) and command (low nibble).
const V2_VERSION_COMMAND: usize = 12;

/// Version 2, command `LOCAL`.
const V2_LOCAL: u8 = 0x20;

/// The longest v2 header taken: its 16 fixed bytes, addresses and TLVs (balancers add a
/// few tens of bytes of TLVs, e.g. AWS's VPC endpoint id). Longer is refused rather
/// than buffered.
pub const V2_MAX: usize = 4096;

/// Why a connection's PROXY protocol header was refused. The connection is closed: no
/// TLS, no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The first bytes are neither a v1 nor a v2 header: the balancer is not sending
    /// the protocol, or this is a client reaching the gateway past it.
    #[error("no PROXY protocol header (the connection's first bytes are not one)")]
    Missing,
    /// It starts as a header but does not parse.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    /// A v2 header longer than [`V2_MAX`].
    #[error("PROXY protocol v2 header of {0} bytes is over the {V2_MAX}-byte limit")]
    TooLong(usize),
    /// The connection ended or failed before the header was complete.
    #[error("connection ended during the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// Reads the header at the start of `tcp` and returns the client's address it names.
///
/// `None` when the header names no client: a v2 `LOCAL` command (the balancer's own
/// health check), v1 `UNKNOWN`, or an address family other than IPv4/IPv6; the
/// connection's own peer address stands then, as the protocol says.
pub async fn read(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // 12 bytes tell the versions apart and are shorter than either's shortest header
    // (v1 "PROXY UNKNOWN\r\n" is 15), so nothing past the header is read.
    let mut header = vec![0u8; v2::PROTOCOL_PREFIX.len()];
    tcp.read_exact(&mut header).await?;
    if header == v2::PROTOCOL_PREFIX {
        read_v2_rest(tcp, &mut header).await?;
        if header[V2_VERSION_COMMAND] == V2_LOCAL {
            // The balancer's own connection: whatever family and addresses follow are to
            // be ignored (the protocol's words), and some balancers fill them in.
            return Ok(None);
        }
        let parsed = v2::Header::try_from(&header[..])
            .map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
        Ok(v2_source(&parsed))
    } else if header.starts_with(b"PROXY ") {
        read_v1_rest(tcp, &mut header).await?;
        let parsed = v1::Header::try_from(&header[..])
            .map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
        Ok(v1_source(&parsed))
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

/// Reads the rest of a v2 header: 4 more fixed bytes, then the length they give.
async fn read_v2_rest(tcp: &mut TcpStream, header: &mut Vec<u8>) -> Result<(), ProxyHeaderError> {
    let mut fixed = [0u8; 4];
    tcp.read_exact(&mut fixed).await?;
    header.extend_from_slice(&fixed);
    let total = V2_FIXED + usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
    if total > V2_MAX {
        return Err(ProxyHeaderError::TooLong(total));
    }
    let start = header.len();
    header.resize(total, 0);
    tcp.read_exact(&mut header[start..]).await?;
    Ok(())
}

/// Reads the rest of a v1 header, up to its `\r\n` and not a byte further: what has
/// arrived is peeked, and only the bytes up to the line end (or all of them, when it
/// has not arrived yet) are taken off the socket.
async fn read_v1_rest(tcp: &mut TcpStream, header: &mut Vec<u8>) -> Result<(), ProxyHeaderError> {
    let mut discard = [0u8; V1_MAX];
    loop {
        let old = header.len();
        if old >= V1_MAX {
            return Err(ProxyHeaderError::Malformed(format!(
                "v1 header without a line end in its first {V1_MAX} bytes"
            )));
        }
        header.resize(V1_MAX, 0);
        let n = tcp.peek(&mut header[old..]).await?;
        if n == 0 {
            header.truncate(old);
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let end = line_end(&header[..old + n], old);
        let take = end.map_or(n, |end| end - old);
        tcp.read_exact(&mut discard[..take]).await?;
        header.truncate(old + take);
        if end.is_some() {
            return Ok(());
        }
    }
}

/// Where the first `\r\n` in `header` ends, looking from `old` on (what came before
/// has none), or `None`. The `\r` may be the last byte that came before.
fn line_end(header: &[u8], old: usize) -> Option<usize> {
    let from = old.saturating_sub(1);
    header[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|at| from + at + 2)
}

fn v1_source(header: &v1::Header<'_>) -> Option<SocketAddr> {
    match header.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Both ends of a loopback TCP connection: (client, server).
    async fn pair() -> io::Result<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        Ok((client, server))
    }

    /// What a client sends after the header: the start of a TLS record.
    const AFTER: &[u8] = b"\x16\x03\x01 hello";

    /// Sends `bytes` then [`AFTER`] in one write, reads the header, and checks that
    /// `AFTER` is what follows it on the socket.
    async fn read_sent(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
        let (mut client, mut server) = pair().await?;
        client.write_all(&[bytes, AFTER].concat()).await?;
        let source = read(&mut server).await?;
        drop(client);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await?;
        assert_eq!(rest, AFTER, "bytes after the header were taken");
        Ok(source)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = v2::PROTOCOL_PREFIX.to_vec();
        h.extend_from_slice(&[command, family]);
        h.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[tokio::test]
    async fn v1_and_v2_name_the_client_and_leave_what_follows() -> Result<(), ProxyHeaderError> {
        let v1 = read_sent(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 443\r\n").await?;
        assert_eq!(v1, Some(addr("203.0.113.7:40000")));
        let v1 = read_sent(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n").await?;
        assert_eq!(v1, Some(addr("[2001:db8::7]:40000")));
        assert_eq!(read_sent(b"PROXY UNKNOWN\r\n").await?, None);

        // v2, TCP over IPv4 with a TLV (as AWS's NLB adds), 198.51.100.9:5000 -> :443.
        let mut body = vec![198, 51, 100, 9, 192, 0, 2, 1, 0x13, 0x88, 0x01, 0xbb];
        body.extend_from_slice(&[0xEA, 0x00, 0x04, 1, 2, 3, 4]);
        let v2_proxy = read_sent(&v2(0x21, 0x11, &body)).await?;
        assert_eq!(v2_proxy, Some(addr("198.51.100.9:5000")));
        // LOCAL: the balancer's own health check names no client.
        assert_eq!(read_sent(&v2(0x20, 0x00, &[])).await?, None);
        // LOCAL with a family and addresses filled in: they are ignored, not parsed.
        assert_eq!(read_sent(&v2(0x20, 0x11, &body)).await?, None);
        assert_eq!(read_sent(&v2(0x20, 0x11, &[])).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn a_v1_header_split_across_packets_is_read_to_its_line_end() -> io::Result<()> {
        let (mut client, mut server) = pair().await?;
        client
            .write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 400")
            .await?;
        let mut first = [0u8; 1];
        server.peek(&mut first).await?;
        // On this single-threaded runtime the reader takes the first part and waits.
        let reading = tokio::spawn(async move {
            let source = read(&mut server).await;
            (source, server)
        });
        tokio::task::yield_now().await;
        client.write_all(b"00 443\r\nafter").await?;
        drop(client);
        let (source, mut server) = reading.await.map_err(io::Error::other)?;
        assert_eq!(source.ok().flatten(), Some(addr("203.0.113.7:40000")));
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await?;
        assert_eq!(rest, b"after");
        Ok(())
    }

    #[test]
    fn a_line_end_is_found_where_it_straddles_two_reads() {
        assert_eq!(line_end(b"PROXY UNKNOWN\r\n", 12), Some(15));
        // "\r" came with the previous read, "\n" with this one.
        assert_eq!(line_end(b"PROXY UNKNOWN\r\nx", 14), Some(15));
        assert_eq!(line_end(b"PROXY UNKNOWN\r", 12), None);
    }

    #[tokio::test]
    async fn what_is_not_a_good_header_is_refused() -> io::Result<()> {
        let refused = |r: Result<Option<SocketAddr>, ProxyHeaderError>| match r {
            Err(e) => e.to_string(),
            Ok(a) => panic!("accepted, naming {a:?}"),
        };
        // A TLS ClientHello straight away: no header.
        let e = refused(read_sent(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00").await);
        assert!(e.starts_with("no PROXY protocol header"), "{e}");
        let e = refused(read_sent(b"PROXY TCP4 not-an-address 192.0.2.1 1 2\r\n").await);
        assert!(e.starts_with("malformed"), "{e}");
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        let e = refused(read_sent(long.as_bytes()).await);
        assert!(e.contains("without a line end"), "{e}");
        let e = refused(read_sent(&v2(0x21, 0x11, &[0; 5000])).await);
        assert!(e.contains("over the 4096-byte limit"), "{e}");
        // v2 with addresses shorter than its family needs.
        let e = refused(read_sent(&v2(0x21, 0x11, &[1, 2, 3])).await);
        assert!(e.starts_with("malformed"), "{e}");
        // The connection ends half-way.
        let (mut client, mut server) = pair().await?;
        client.write_all(b"PROXY TCP4 203.0").await?;
        drop(client);
        let e = refused(read(&mut server).await);
        assert!(e.starts_with("connection ended"), "{e}");
        Ok(())
    }
}
