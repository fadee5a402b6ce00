//! Test support shared by this crate's integration tests: the server side of a
//! WebSocket handshake, for tiny misbehaving echo servers.

use bytes::BytesMut;
use fastwebsockets::{Role, WebSocket};
use gateway::prefixed::Prefixed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads the client's upgrade request from `stream`, answers 101, and returns the
/// server side of the WebSocket (bytes read past the request are kept).
pub async fn accept_ws(mut stream: TcpStream) -> anyhow::Result<WebSocket<Prefixed<TcpStream>>> {
    let mut buf = BytesMut::with_capacity(4096);
    let (key, head_len) = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("closed during the handshake");
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(n) = req.parse(&buf)? {
            let key = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                .map(|h| h.value.to_vec())
                .ok_or_else(|| anyhow::anyhow!("no key"))?;
            break (key, n);
        }
    };
    let accept = gateway::wsclient::accept_key(&key);
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).await?;
    let leftover = buf.split_off(head_len).freeze();
    Ok(WebSocket::after_handshake(
        Prefixed::new(leftover, stream),
        Role::Server,
    ))
}
