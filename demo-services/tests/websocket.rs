//! The demo backends over real sockets, with a fastwebsockets client.

mod common;

use std::time::Duration;

use common::{close_payload, connect, connect_to, got, next_frame, send, start, within};
use demo_services::Backend;
use fastwebsockets::{OpCode, WebSocketError};

const REQUEST: &[u8] =
    br#"{"id":1,"name":"Alice","email":"alice@example.com","phone":"555-0100","dob":"1990-01-01"}"#;

#[tokio::test]
async fn push_arrives_repeatedly_with_the_exact_text() -> anyhow::Result<()> {
    for backend in Backend::ALL {
        let server = start(backend, Some(Duration::from_millis(100))).await?;
        let mut ws = connect_to(&server).await?;
        let expected = got(true, OpCode::Text, backend.push_text().as_bytes());
        assert_eq!(next_frame(&mut ws).await?, expected);
        assert_eq!(next_frame(&mut ws).await?, expected);
    }
    Ok(())
}

#[tokio::test]
async fn push_text_is_the_samples_json() {
    assert_eq!(
        Backend::Abc.push_text(),
        r#"{"message":"Hello from ABC Backend"}"#
    );
}

#[tokio::test]
async fn text_request_message_round_trips() -> anyhow::Result<()> {
    let server = start(Backend::Abc, None).await?;
    let mut ws = connect_to(&server).await?;
    send(&mut ws, true, OpCode::Text, REQUEST).await?;
    assert_eq!(next_frame(&mut ws).await?, got(true, OpCode::Text, REQUEST));
    send(&mut ws, true, OpCode::Text, b"not json at all").await?;
    assert_eq!(
        next_frame(&mut ws).await?,
        got(true, OpCode::Text, b"not json at all")
    );
    Ok(())
}

#[tokio::test]
async fn binary_round_trips() -> anyhow::Result<()> {
    let server = start(Backend::Pqr, None).await?;
    let mut ws = connect_to(&server).await?;
    let payload: Vec<u8> = (0..=255u8).collect();
    send(&mut ws, true, OpCode::Binary, &payload).await?;
    assert_eq!(
        next_frame(&mut ws).await?,
        got(true, OpCode::Binary, &payload)
    );
    send(&mut ws, true, OpCode::Binary, b"").await?;
    assert_eq!(next_frame(&mut ws).await?, got(true, OpCode::Binary, b""));
    Ok(())
}

#[tokio::test]
async fn one_mib_messages_round_trip() -> anyhow::Result<()> {
    let server = start(Backend::Xyz, None).await?;
    let mut ws = connect_to(&server).await?;
    let binary: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
    send(&mut ws, true, OpCode::Binary, &binary).await?;
    assert_eq!(
        next_frame(&mut ws).await?,
        got(true, OpCode::Binary, &binary)
    );
    let text = vec![b'x'; 1 << 20];
    send(&mut ws, true, OpCode::Text, &text).await?;
    assert_eq!(next_frame(&mut ws).await?, got(true, OpCode::Text, &text));
    Ok(())
}

#[tokio::test]
async fn fragments_come_back_as_the_same_fragments() -> anyhow::Result<()> {
    let server = start(Backend::Abc, None).await?;
    let mut ws = connect_to(&server).await?;
    send(&mut ws, false, OpCode::Text, b"{\"id\":").await?;
    send(&mut ws, false, OpCode::Continuation, b"1,").await?;
    send(&mut ws, true, OpCode::Continuation, b"\"x\":2}").await?;
    assert_eq!(
        next_frame(&mut ws).await?,
        got(false, OpCode::Text, b"{\"id\":")
    );
    assert_eq!(
        next_frame(&mut ws).await?,
        got(false, OpCode::Continuation, b"1,")
    );
    assert_eq!(
        next_frame(&mut ws).await?,
        got(true, OpCode::Continuation, b"\"x\":2}")
    );
    // A complete message afterwards is still fine.
    send(&mut ws, true, OpCode::Binary, b"after").await?;
    assert_eq!(
        next_frame(&mut ws).await?,
        got(true, OpCode::Binary, b"after")
    );
    Ok(())
}

#[tokio::test]
async fn ping_is_answered_with_the_same_payload() -> anyhow::Result<()> {
    let server = start(Backend::Abc, None).await?;
    let mut ws = connect_to(&server).await?;
    send(&mut ws, true, OpCode::Ping, b"are you there?").await?;
    assert_eq!(
        next_frame(&mut ws).await?,
        got(true, OpCode::Pong, b"are you there?")
    );
    Ok(())
}

#[tokio::test]
async fn close_is_echoed_with_code_and_reason_then_the_connection_ends() -> anyhow::Result<()> {
    let server = start(Backend::Abc, None).await?;
    let mut ws = connect_to(&server).await?;
    send(&mut ws, true, OpCode::Close, &close_payload(4001, "bye")).await?;
    assert_eq!(
        next_frame(&mut ws).await?,
        got(true, OpCode::Close, &close_payload(4001, "bye"))
    );
    let after = within("the end of the connection", ws.read_frame()).await?;
    assert!(after.is_err(), "connection should end after the close");
    Ok(())
}

#[tokio::test]
async fn invalid_close_code_gets_protocol_error() -> anyhow::Result<()> {
    let server = start(Backend::Abc, None).await?;
    let mut ws = connect_to(&server).await?;
    send(&mut ws, true, OpCode::Close, &close_payload(1005, "")).await?;
    assert_eq!(
        next_frame(&mut ws).await?,
        got(true, OpCode::Close, &close_payload(1002, ""))
    );
    Ok(())
}

#[tokio::test]
async fn stray_continuation_gets_protocol_error() -> anyhow::Result<()> {
    let server = start(Backend::Abc, None).await?;
    let mut ws = connect_to(&server).await?;
    send(&mut ws, true, OpCode::Continuation, b"orphan").await?;
    assert_eq!(
        next_frame(&mut ws).await?,
        got(true, OpCode::Close, &close_payload(1002, ""))
    );
    Ok(())
}

#[tokio::test]
async fn many_pipelined_messages_come_back_in_order() -> anyhow::Result<()> {
    let server = start(Backend::Abc, None).await?;
    let ws = connect_to(&server).await?;
    let (mut rx, mut tx) = ws.split(tokio::io::split);
    const N: usize = 5_000;
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let payload = format!("message {i}").into_bytes();
            let frame = fastwebsockets::Frame::text(payload.into());
            tx.write_frame(frame).await?;
        }
        tx.flush().await?;
        Ok::<_, WebSocketError>(tx)
    });
    let mut ignore = |_| async { Ok::<_, WebSocketError>(()) };
    for i in 0..N {
        let frame = within("an echo", rx.read_frame(&mut ignore)).await??;
        assert_eq!(frame.opcode, OpCode::Text);
        assert_eq!(&frame.payload[..], format!("message {i}").as_bytes());
    }
    within("the writer", writer).await???;
    Ok(())
}

#[tokio::test]
async fn pushes_and_echoes_interleave() -> anyhow::Result<()> {
    let server = start(Backend::Pqr, Some(Duration::from_millis(20))).await?;
    let mut ws = connect_to(&server).await?;
    let push = Backend::Pqr.push_text().as_bytes();
    let (mut sent, mut echoes, mut pushes) = (0, 0, 0);
    while echoes < 20 || pushes < 3 {
        // One message in flight at a time.
        if sent == echoes && sent < 20 {
            send(&mut ws, true, OpCode::Binary, &[sent]).await?;
            sent += 1;
        }
        let frame = next_frame(&mut ws).await?;
        if frame.opcode == OpCode::Text {
            assert_eq!(frame.payload, push);
            pushes += 1;
        } else {
            assert_eq!(frame, got(true, OpCode::Binary, &[echoes]));
            echoes += 1;
        }
    }
    Ok(())
}

#[tokio::test]
async fn wrong_path_gets_404() -> anyhow::Result<()> {
    let server = start(Backend::Abc, None).await?;
    let refused = within("handshake", connect(server.addr(), "/backend/pqr")).await?;
    assert!(
        matches!(refused, Err(WebSocketError::InvalidStatusCode(404))),
        "expected 404, got {:?}",
        refused.err()
    );
    Ok(())
}

#[tokio::test]
async fn stop_closes_open_connections_and_the_listener() -> anyhow::Result<()> {
    let server = start(Backend::Abc, Some(Duration::from_secs(3600))).await?;
    let addr = server.addr();
    let mut ws = connect_to(&server).await?;
    // The first push comes at once; once it is here the session is surely running.
    next_frame(&mut ws).await?;
    server.stop();
    let after = within("the connection to drop", ws.read_frame()).await?;
    assert!(
        after.is_err(),
        "expected the connection to end without a frame"
    );
    let again = within("handshake", connect(addr, Backend::Abc.path())).await?;
    assert!(again.is_err(), "listener should be closed");
    Ok(())
}
