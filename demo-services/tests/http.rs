//! The HTTP side of the backends and the wire format of echoes, with a raw TCP client.

mod common;

use common::{start, within};
use demo_services::Backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` and returns everything the server answers until it closes.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    within("the answer", stream.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8(answer)?)
}

fn get(path: &str, extra_headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra_headers}\r\n")
}

#[tokio::test]
async fn refusals_are_plain_answers_with_a_one_line_reason() -> anyhow::Result<()> {
    let server = start(Backend::Abc, None).await?;
    let addr = server.addr();

    let answer = exchange(addr, &get("/backend/abc", "")).await?;
    assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("upgrade: websocket"),
        "{answer}"
    );
    assert!(
        answer.ends_with("\r\n\r\nthis path only accepts WebSocket upgrades\n"),
        "{answer}"
    );

    let answer = exchange(addr, &get("/elsewhere", "")).await?;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\nnot found\n"), "{answer}");

    let post = "POST /backend/abc HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    let answer = exchange(addr, post).await?;
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");

    let bad_version = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n";
    let answer = exchange(addr, &get("/backend/abc", bad_version)).await?;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    Ok(())
}

#[tokio::test]
async fn frame_sent_with_the_handshake_is_echoed_unmasked() -> anyhow::Result<()> {
    let server = start(Backend::Xyz, None).await?;
    let mut stream = TcpStream::connect(server.addr()).await?;

    // Handshake and a masked text frame in one write, so hyper reads past the request.
    let mut bytes =
        b"GET /backend/xyz HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .to_vec();
    let mask = [0x12, 0x34, 0x56, 0x78];
    let payload = b"hello";
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&bytes).await?;

    // Response head, then exactly one unmasked frame: 0x81, length 5, "hello".
    let expected_frame = [&[0x81u8, 0x05][..], payload].concat();
    let mut received = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = within("the answer", stream.read(&mut chunk)).await??;
        anyhow::ensure!(n > 0, "server closed early: {received:?}");
        received.extend_from_slice(&chunk[..n]);
        if let Some(pos) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            if received.len() >= pos + 4 + expected_frame.len() {
                break pos + 4;
            }
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "wrong Sec-WebSocket-Accept: {head}"
    );
    assert_eq!(&received[head_end..], &expected_frame[..]);
    Ok(())
}

/// A client frame (fin set, masked) with a payload under 126 bytes.
fn masked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x0a, 0x0b, 0x0c, 0x0d];
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn echoes_are_delivered_to_a_peer_that_half_closed() -> anyhow::Result<()> {
    let server = start(Backend::Abc, None).await?;
    let mut stream = TcpStream::connect(server.addr()).await?;
    let mut bytes = b"GET /backend/abc HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    for payload in [&b"one"[..], b"two", b"three"] {
        bytes.extend(masked_frame(0x82, payload));
    }
    stream.write_all(&bytes).await?;
    stream.shutdown().await?;

    let mut received = Vec::new();
    within("the server to finish", stream.read_to_end(&mut received)).await??;
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .ok_or_else(|| anyhow::anyhow!("no response head"))?;
    let expected = [&b"\x82\x03one"[..], b"\x82\x03two", b"\x82\x05three"].concat();
    assert_eq!(&received[head_end..], &expected[..]);
    Ok(())
}
