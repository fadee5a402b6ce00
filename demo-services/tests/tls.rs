//! Backends serving `wss://` (the dev certificate), with a tokio-rustls client trusting
//! certs/ca.crt.

mod common;

use std::time::Duration;

use common::{connect_tls, got, next_frame, send, start_tls, tls_stream, within, Client};
use demo_services::Backend;
use fastwebsockets::OpCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `payload` as one text frame and expects it back unchanged.
async fn echoes(ws: &mut Client, payload: &[u8]) -> anyhow::Result<()> {
    send(ws, true, OpCode::Text, payload).await?;
    assert_eq!(next_frame(ws).await?, got(true, OpCode::Text, payload));
    Ok(())
}

#[tokio::test]
async fn a_tls_backend_upgrades_echoes_and_pushes_over_tls() -> anyhow::Result<()> {
    let server = start_tls(Backend::Abc, None).await?;
    assert_eq!(
        server.url(),
        format!("wss://{}/backend/abc", server.addr()),
        "the URL names the scheme"
    );

    // The handshake offers ALPN http/1.1 and the backend takes it.
    let tls = tls_stream(server.addr()).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(tls);

    let mut ws = connect_tls(server.addr(), Backend::Abc.path()).await?;
    echoes(&mut ws, br#"{"id":1,"name":"Alice"}"#).await?;
    // Larger than one TLS record (16 KiB), binary.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    send(&mut ws, true, OpCode::Binary, &big).await?;
    assert_eq!(next_frame(&mut ws).await?, got(true, OpCode::Binary, &big));
    send(&mut ws, true, OpCode::Ping, b"there?").await?;
    assert_eq!(
        next_frame(&mut ws).await?,
        got(true, OpCode::Pong, b"there?")
    );
    assert_eq!(server.sessions_started(), 1);

    // The push timer runs over TLS too.
    let pushing = start_tls(Backend::Xyz, Some(Duration::from_millis(100))).await?;
    let mut ws = connect_tls(pushing.addr(), Backend::Xyz.path()).await?;
    let push = got(true, OpCode::Text, Backend::Xyz.push_text().as_bytes());
    assert_eq!(next_frame(&mut ws).await?, push);
    assert_eq!(next_frame(&mut ws).await?, push);
    Ok(())
}

#[tokio::test]
async fn plain_http_to_a_tls_port_gets_no_101_and_tls_clients_carry_on() -> anyhow::Result<()> {
    let server = start_tls(Backend::Pqr, None).await?;
    // A session open before the bad client must outlive it.
    let mut before = connect_tls(server.addr(), Backend::Pqr.path()).await?;
    echoes(&mut before, b"before").await?;

    let mut plain = TcpStream::connect(server.addr()).await?;
    let request = "GET /backend/pqr HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    plain.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    // The backend closes the connection (at most a TLS alert first): EOF or a reset.
    let _ = within("the plain client's connection to close", async {
        plain.read_to_end(&mut answer).await
    })
    .await?;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plain HTTP client got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        server.sessions_started(),
        1,
        "no session for the plain client"
    );

    echoes(&mut before, b"still there").await?;
    let mut after = connect_tls(server.addr(), Backend::Pqr.path()).await?;
    echoes(&mut after, b"after").await?;
    assert_eq!(server.sessions_started(), 2);
    Ok(())
}

#[tokio::test]
async fn a_client_stalled_in_its_tls_handshake_does_not_hold_up_others() -> anyhow::Result<()> {
    let server = start_tls(Backend::Abc, None).await?;
    // Half a ClientHello record header, then nothing: its task waits, the others do not.
    let mut stalled = TcpStream::connect(server.addr()).await?;
    stalled.write_all(&[0x16, 0x03]).await?;
    let mut ws = connect_tls(server.addr(), Backend::Abc.path()).await?;
    echoes(&mut ws, b"not blocked").await?;
    drop(stalled);
    Ok(())
}
