//! The client API the gateway's tests build on: connect through the testbed's gateway
//! (or straight to a backend) and talk with the fastwebsockets API.

use std::time::Duration;

use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use loadgen::{ConnectError, ConnectOptions, Testbed, TestbedOptions};

/// Reads frames until one that is not a backend push (or ping/pong noise) arrives.
async fn next_message<S>(ws: &mut FragmentCollector<S>) -> anyhow::Result<(OpCode, Vec<u8>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.read_frame()).await??;
        let push = frame.opcode == OpCode::Text && frame.payload.starts_with(br#"{"message""#);
        if !push {
            return Ok((frame.opcode, frame.payload.to_vec()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_fragments_pings_and_close_through_the_gateway() -> anyhow::Result<()> {
    let tb = Testbed::start(TestbedOptions::default()).await?;
    let mut c = loadgen::connect(&tb.connect_options("Backend_PQR")?).await?;
    assert_eq!(c.extensions, None);
    c.ws.set_auto_close(false);
    c.ws.write_frame(Frame::text(Payload::Borrowed(b"hello")))
        .await?;
    c.ws.write_frame(Frame::binary(Payload::Owned(vec![0, 1, 2, 255])))
        .await?;
    c.ws.write_frame(Frame::new(
        false,
        OpCode::Text,
        None,
        Payload::Borrowed(b"frag"),
    ))
    .await?;
    c.ws.write_frame(Frame::new(
        true,
        OpCode::Continuation,
        None,
        Payload::Borrowed(b"ment"),
    ))
    .await?;
    c.ws.write_frame(Frame::new(
        true,
        OpCode::Ping,
        None,
        Payload::Borrowed(b"p"),
    ))
    .await?;
    c.ws.flush().await?;
    let mut ws = FragmentCollector::new(c.ws);
    assert_eq!(
        next_message(&mut ws).await?,
        (OpCode::Text, b"hello".to_vec())
    );
    assert_eq!(
        next_message(&mut ws).await?,
        (OpCode::Binary, vec![0, 1, 2, 255])
    );
    assert_eq!(
        next_message(&mut ws).await?,
        (OpCode::Text, b"fragment".to_vec())
    );
    assert_eq!(next_message(&mut ws).await?, (OpCode::Pong, b"p".to_vec()));
    ws.write_frame(Frame::close(1000, b"bye")).await?;
    let (op, payload) = next_message(&mut ws).await?;
    assert_eq!(op, OpCode::Close);
    assert_eq!(payload.get(..2), Some(&1000u16.to_be_bytes()[..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ws_straight_to_a_backend() -> anyhow::Result<()> {
    let tb = Testbed::start(TestbedOptions::default()).await?;
    let url = tb
        .backend("Backend_ABC")
        .map(|b| b.url())
        .ok_or_else(|| anyhow::anyhow!("no ABC"))?;
    let c = loadgen::connect(&ConnectOptions::new(url)).await?;
    let mut ws = FragmentCollector::new(c.ws);
    let big = vec![7u8; 1 << 20];
    ws.write_frame(Frame::binary(Payload::Borrowed(&big)))
        .await?;
    assert_eq!(next_message(&mut ws).await?, (OpCode::Binary, big));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_are_typed() -> anyhow::Result<()> {
    let tb = Testbed::start(TestbedOptions::default()).await?;
    let mut opts = tb.connect_options("Backend_ABC")?;
    opts.set_header("Authorization", "Bearer nope");
    match loadgen::connect(&opts).await {
        Err(ConnectError::Refused {
            status: 401,
            reason,
        }) => assert!(!reason.is_empty()),
        other => anyhow::bail!("expected 401, got {other:?}"),
    }
    let mut opts = tb.connect_options("Backend_ABC")?;
    opts.ca = None;
    assert!(matches!(
        loadgen::connect(&opts).await,
        Err(ConnectError::Config(_))
    ));
    // A CA that did not sign the gateway's certificate.
    opts.ca = Some(tb.certs_dir().join("server.crt"));
    assert!(
        matches!(loadgen::connect(&opts).await, Err(ConnectError::Tls(_))),
        "untrusted certificate"
    );
    opts.ca = None;
    opts.insecure = true;
    loadgen::connect(&opts).await?;
    // Nobody listening.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let err = loadgen::connect(&ConnectOptions::new(format!("ws://{closed}/x")))
        .await
        .err();
    assert!(matches!(err, Some(ConnectError::Io(_))), "{err:?}");
    Ok(())
}
