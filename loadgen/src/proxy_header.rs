//! PROXY protocol headers, sent first on a connection as a TCP load balancer (AWS NLB,
//! HAProxy `send-proxy`) sends them, to drive a gateway run with
//! `[server] proxy_protocol = true`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ppp::{v1, v2};

/// Which header to send, and which client it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// Version 1 (text), naming the given client, or the connection's own source address
    /// when `None` (what a balancer forwarding this connection would say).
    V1(Option<SocketAddr>),
    /// Version 2 (binary), `PROXY` command, naming a client as for `V1`.
    V2(Option<SocketAddr>),
    /// Version 2 `LOCAL` command: the balancer's own connection (its health check); it
    /// names no client.
    V2Local,
}

impl ProxyHeader {
    /// The header's bytes for a connection from `local` to `peer`.
    pub fn encode(self, local: SocketAddr, peer: SocketAddr) -> io::Result<Vec<u8>> {
        let pair = |client: Option<SocketAddr>| {
            let source = client.unwrap_or(local);
            (source, same_family(peer, source.ip()))
        };
        match self {
            ProxyHeader::V1(client) => {
                let (s, d) = pair(client);
                let addresses = match (s, d) {
                    (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                        v1::Addresses::new_tcp4(*s.ip(), *d.ip(), s.port(), d.port())
                    }
                    (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                        v1::Addresses::new_tcp6(*s.ip(), *d.ip(), s.port(), d.port())
                    }
                    _ => v1::Addresses::Unknown,
                };
                Ok(addresses.to_string().into_bytes())
            }
            ProxyHeader::V2(client) => v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                pair(client),
            )
            .build(),
            ProxyHeader::V2Local => v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Local,
                v2::Protocol::Stream,
                v2::Addresses::Unspecified,
            )
            .build(),
        }
    }
}

/// `addr` in the address family of `like` (both of a header's addresses must share one):
/// an IPv4 address as IPv4-mapped IPv6, an IPv6 one as its IPv4 form if it has one.
fn same_family(addr: SocketAddr, like: IpAddr) -> SocketAddr {
    let ip = match (addr.ip(), like) {
        (IpAddr::V4(v4), IpAddr::V6(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
        (IpAddr::V6(v6), IpAddr::V4(_)) => {
            IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))
        }
        (ip, _) => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn v1_names_the_client_or_the_connection_itself() -> io::Result<()> {
        let (local, peer) = (addr("127.0.0.1:5000"), addr("127.0.0.1:9090"));
        assert_eq!(
            ProxyHeader::V1(None).encode(local, peer)?,
            b"PROXY TCP4 127.0.0.1 127.0.0.1 5000 9090\r\n"
        );
        assert_eq!(
            ProxyHeader::V1(Some(addr("[2001:db8::7]:40000"))).encode(local, peer)?,
            b"PROXY TCP6 2001:db8::7 ::ffff:127.0.0.1 40000 9090\r\n"
        );
        Ok(())
    }

    #[test]
    fn v2_headers_parse_back_to_what_they_name() -> io::Result<()> {
        let (local, peer) = (addr("127.0.0.1:5000"), addr("127.0.0.1:9090"));
        let bytes = ProxyHeader::V2(Some(addr("203.0.113.7:40000"))).encode(local, peer)?;
        let parsed = v2::Header::try_from(&bytes[..]).map_err(io::Error::other)?;
        assert_eq!(parsed.command, v2::Command::Proxy);
        assert_eq!(
            parsed.addresses,
            v2::Addresses::IPv4(ppp::v2::IPv4::new(
                [203, 0, 113, 7],
                [127, 0, 0, 1],
                40000,
                9090
            ))
        );
        let bytes = ProxyHeader::V2Local.encode(local, peer)?;
        let parsed = v2::Header::try_from(&bytes[..]).map_err(io::Error::other)?;
        assert_eq!(parsed.command, v2::Command::Local);
        assert_eq!(parsed.addresses, v2::Addresses::Unspecified);
        Ok(())
    }
}
