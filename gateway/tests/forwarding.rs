//! End to end through the real gateway (TLS, JWT) to the real demo backends: pushes,
//! round trips of every kind of message, pings, closes both ways, a backend dying.

mod support;

use anyhow::{ensure, Result};
use fastwebsockets::{Frame, OpCode, Payload};
use support::*;

const IDS: [&str; 3] = ["Backend_ABC", "Backend_PQR", "Backend_XYZ"];

#[tokio::test]
async fn every_backend_pushes_and_echoes_every_kind_of_message() -> Result<()> {
    let tb = testbed().await?;
    for id in IDS {
        let mut c = connect_ok(&tb, id).await?;
        ensure!(c.extensions.is_none());

        // The push arrives on its own.
        let name = &id["Backend_".len()..];
        let push = next_frame(&mut c.ws).await?;
        ensure!(push.opcode == OpCode::Text);
        let expected = format!("{{\"message\":\"Hello from {name} Backend\"}}");
        ensure!(
            push.payload[..] == *expected.as_bytes(),
            "{id}: push was {:?}",
            String::from_utf8_lossy(&push.payload)
        );

        // A RequestMessage round-trips unchanged.
        let msg = br#"{"id":1,"name":"John Doe","email":"john@example.com","phone":"+1-555-0100","dob":"1990-01-01"}"#;
        send(&mut c.ws, Frame::text(Payload::Borrowed(msg))).await?;
        let echo = next_non_push(&mut c.ws).await?;
        ensure!(
            echo.opcode == OpCode::Text && echo.payload[..] == msg[..],
            "{id}: text echo differs"
        );

        // Binary, including every byte value.
        let bin: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        send(&mut c.ws, Frame::binary(Payload::Borrowed(&bin))).await?;
        let echo = next_non_push(&mut c.ws).await?;
        ensure!(
            echo.opcode == OpCode::Binary && echo.payload[..] == bin[..],
            "{id}: binary echo differs"
        );

        // 1 MiB.
        let big: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        send(&mut c.ws, Frame::binary(Payload::Borrowed(&big))).await?;
        let echo = next_non_push(&mut c.ws).await?;
        ensure!(
            echo.payload.len() == big.len() && echo.payload[..] == big[..],
            "{id}: 1 MiB echo differs"
        );

        // A message in three fragments arrives as three fragments, intact.
        send(
            &mut c.ws,
            Frame::new(false, OpCode::Text, None, Payload::Borrowed(b"frag-")),
        )
        .await?;
        send(
            &mut c.ws,
            Frame::new(
                false,
                OpCode::Continuation,
                None,
                Payload::Borrowed(b"ment-"),
            ),
        )
        .await?;
        send(
            &mut c.ws,
            Frame::new(true, OpCode::Continuation, None, Payload::Borrowed(b"ed")),
        )
        .await?;
        let mut parts = Vec::new();
        while parts.len() < 3 {
            let f = next_non_push(&mut c.ws).await?;
            parts.push((f.fin, f.opcode, f.payload.to_vec()));
        }
        ensure!(
            parts[0] == (false, OpCode::Text, b"frag-".to_vec()),
            "{id}: {parts:?}"
        );
        ensure!(
            parts[1] == (false, OpCode::Continuation, b"ment-".to_vec()),
            "{id}: {parts:?}"
        );
        ensure!(
            parts[2] == (true, OpCode::Continuation, b"ed".to_vec()),
            "{id}: {parts:?}"
        );

        // A ping is answered with its payload.
        send(
            &mut c.ws,
            Frame::new(
                true,
                OpCode::Ping,
                None,
                Payload::Borrowed(b"are you there"),
            ),
        )
        .await?;
        let pong = next_non_push(&mut c.ws).await?;
        ensure!(
            pong.opcode == OpCode::Pong && pong.payload[..] == b"are you there"[..],
            "{id}: no pong"
        );

        // A close with code and reason reaches the backend, which answers it in kind.
        send(&mut c.ws, Frame::close(4001, b"client done")).await?;
        let (code, reason) = expect_close(&mut c.ws).await?;
        ensure!(
            (code, reason.as_str()) == (4001, "client done"),
            "{id}: close answer {code} {reason}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn close_codes_pass_through_both_ways() -> Result<()> {
    let probe = probe::Probe::start(probe::Mode::Accept { protocol: None }).await?;
    let tb = testbed_with(&[("Backend_PROBE", probe.url())]).await?;

    // Backend-initiated close reaches the client with its code and reason.
    let mut c = connect_ok(&tb, "Backend_PROBE").await?;
    send(
        &mut c.ws,
        Frame::text(Payload::Borrowed(b"close:4002:backend says bye")),
    )
    .await?;
    let (code, reason) = expect_close(&mut c.ws).await?;
    ensure!(
        (code, reason.as_str()) == (4002, "backend says bye"),
        "got {code} {reason}"
    );

    // Client-initiated close reaches the backend with its code and reason (a fresh probe,
    // so the first session's events cannot be mistaken for this one's).
    let mut probe = probe::Probe::start(probe::Mode::Accept { protocol: None }).await?;
    let tb = testbed_with(&[("Backend_PROBE", probe.url())]).await?;
    let mut c = connect_ok(&tb, "Backend_PROBE").await?;
    send(&mut c.ws, Frame::binary(Payload::Borrowed(b"masked?"))).await?;
    let echo = next_non_push(&mut c.ws).await?;
    ensure!(echo.payload[..] == b"masked?"[..]);
    send(&mut c.ws, Frame::close(4001, b"see you")).await?;
    loop {
        let (op, data) = probe.next_frame().await?;
        if op == OpCode::Close {
            ensure!(
                data[..2] == 4001u16.to_be_bytes() && &data[2..] == b"see you",
                "probe saw {data:?}"
            );
            break;
        }
    }
    let (code, _) = expect_close(&mut c.ws).await?;
    ensure!(code == 4001);
    Ok(())
}

#[tokio::test]
async fn backend_killed_mid_session_gets_the_client_a_close_and_others_keep_working() -> Result<()>
{
    let mut tb = testbed().await?;
    let mut victim = connect_ok(&tb, "Backend_XYZ").await?;
    let mut bystander = connect_ok(&tb, "Backend_ABC").await?;
    send(&mut victim.ws, Frame::binary(Payload::Borrowed(b"before"))).await?;
    ensure!(next_non_push(&mut victim.ws).await?.payload[..] == b"before"[..]);

    ensure!(tb.kill_backend("Backend_XYZ"));
    let (code, reason) = expect_close(&mut victim.ws).await?;
    ensure!(
        code == 1011 && reason.contains("backend"),
        "got close {code} {reason}"
    );

    send(
        &mut bystander.ws,
        Frame::binary(Payload::Borrowed(b"still here")),
    )
    .await?;
    ensure!(next_non_push(&mut bystander.ws).await?.payload[..] == b"still here"[..]);

    // New sessions to the dead backend are refused with 502 while it is down.
    let (status, reason) = refused(&tb.connect_options("Backend_XYZ")?).await?;
    ensure!(status == 502, "{status} {reason}");
    Ok(())
}

#[tokio::test]
async fn client_vanishing_gets_the_backend_a_1001() -> Result<()> {
    let mut probe = probe::Probe::start(probe::Mode::Accept { protocol: None }).await?;
    let tb = testbed_with(&[("Backend_PROBE", probe.url())]).await?;
    let mut c = connect_ok(&tb, "Backend_PROBE").await?;
    send(&mut c.ws, Frame::binary(Payload::Borrowed(b"hi"))).await?;
    ensure!(next_non_push(&mut c.ws).await?.payload[..] == b"hi"[..]);
    drop(c); // no close frame: the socket just goes
    loop {
        let (op, data) = probe.next_frame().await?;
        if op == OpCode::Close {
            ensure!(
                data[..2] == 1001u16.to_be_bytes(),
                "probe saw close {data:?}"
            );
            break;
        }
    }
    Ok(())
}

#[tokio::test]
async fn only_deflate_offers_reach_the_backend_and_subprotocols_pass_through() -> Result<()> {
    let mut probe = probe::Probe::start(probe::Mode::Accept {
        protocol: Some("chat.v2".into()),
    })
    .await?;
    let tb = testbed_with(&[("Backend_PROBE", probe.url())]).await?;
    let mut opts = tb.connect_options("Backend_PROBE")?;
    opts.headers.push((
        "Sec-WebSocket-Extensions".into(),
        "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits".into(),
    ));
    opts.headers.push(("X-Custom".into(), "kept".into()));
    opts.protocols = Some("chat.v1, chat.v2".into());
    let c = loadgen::client::connect(&opts).await?;
    ensure!(
        c.extensions.is_none(),
        "gateway answered extensions {:?}",
        c.extensions
    );
    ensure!(
        c.protocol.as_deref() == Some("chat.v2"),
        "protocol {:?}",
        c.protocol
    );
    let probe::Event::Handshake(headers) = probe.next().await? else {
        anyhow::bail!("expected the handshake")
    };
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // The backend accepted none, so the client was answered none.
    ensure!(
        get("sec-websocket-extensions").as_deref()
            == Some("permessage-deflate; client_max_window_bits"),
        "backend was offered {:?}",
        get("sec-websocket-extensions")
    );
    ensure!(
        get("authorization").is_none(),
        "the token was forwarded to the backend"
    );
    ensure!(get("sec-websocket-protocol").as_deref() == Some("chat.v1, chat.v2"));
    ensure!(get("x-forwarded-for").as_deref() == Some("127.0.0.1"));
    ensure!(get("x-forwarded-proto").as_deref() == Some("https"));
    ensure!(get("x-custom").as_deref() == Some("kept"));
    Ok(())
}

/// Sends one frame through `up` (first byte `b0`, `payload` of under 126 bytes masked
/// with `key`) and returns what reached the probe: its first two bytes, the masking key
/// it came with, and its payload unmasked with that key.
async fn through_to_probe(
    up: &mut loadgen::client::Upgraded,
    probe: &mut probe::Probe,
    b0: u8,
    payload: &[u8],
    key: [u8; 4],
) -> Result<([u8; 2], [u8; 4], Vec<u8>)> {
    use tokio::io::AsyncWriteExt;
    let mut frame = vec![b0, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    up.stream.write_all(&frame).await?;
    up.stream.flush().await?;
    let seen = loop {
        if let probe::Event::Raw(bytes) = probe.next().await? {
            break bytes;
        }
    };
    ensure!(
        seen.len() == 2 + 4 + payload.len(),
        "backend got {seen:02x?}"
    );
    let fresh = [seen[2], seen[3], seen[4], seen[5]];
    let unmasked = seen[6..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ fresh[i % 4])
        .collect();
    Ok(([seen[0], seen[1]], fresh, unmasked))
}

#[tokio::test]
async fn compressed_messages_pass_both_ways_when_the_backend_accepts_deflate() -> Result<()> {
    use tokio::io::AsyncReadExt;
    // Deflate's bytes for "hello" (not UTF-8: the gateway must not check them as text).
    let deflated = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let accepted = "permessage-deflate; server_no_context_takeover";
    let mut probe = probe::Probe::start(probe::Mode::Raw {
        reply: [&[0xC1, 7][..], &deflated].concat(),
        extensions: Some(accepted.into()),
    })
    .await?;
    let tb = testbed_with(&[("Backend_PROBE", probe.url())]).await?;
    let opts = tb.connect_options("Backend_PROBE")?;
    let connector = loadgen::client::Connector::new(&opts).await?;
    let offer = "permessage-deflate; server_no_context_takeover; client_max_window_bits";
    let mut up = connector
        .connect_raw(&[("Sec-WebSocket-Extensions", offer)], None)
        .await?;
    ensure!(
        up.extensions.as_deref() == Some(accepted),
        "client was answered {:?}",
        up.extensions
    );
    let probe::Event::Handshake(headers) = probe.next().await? else {
        anyhow::bail!("expected the handshake")
    };
    let offered = headers
        .iter()
        .find(|(k, _)| k == "sec-websocket-extensions")
        .map(|(_, v)| v.as_str());
    ensure!(offered == Some(offer), "backend was offered {offered:?}");

    // A compressed text message, RSV1 set.
    let key = [0x21u8, 0x43, 0x65, 0x87];
    let (head, fresh, payload) =
        through_to_probe(&mut up, &mut probe, 0xC1, &deflated, key).await?;
    ensure!(
        head == [0xC1, 0x80 | 7],
        "RSV1 or masking lost: {head:02x?}"
    );
    ensure!(fresh != key, "the client's mask key was reused");
    ensure!(
        payload == deflated,
        "payload changed on the way: {payload:02x?}"
    );

    let mut back = [0u8; 9];
    tokio::time::timeout(DEADLINE, up.stream.read_exact(&mut back)).await??;
    ensure!(
        back[..2] == [0xC1, 7] && back[2..] == deflated,
        "client got {back:02x?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_backend_accepting_an_extension_it_was_not_offered_is_refused() -> Result<()> {
    let probe = probe::Probe::start(probe::Mode::Raw {
        reply: Vec::new(),
        extensions: Some("permessage-deflate".into()),
    })
    .await?;
    let offer = (
        "Sec-WebSocket-Extensions".to_owned(),
        "permessage-deflate".to_owned(),
    );
    // The client offered nothing.
    let tb = testbed_with(&[("Backend_PROBE", probe.url())]).await?;
    let opts = tb.connect_options("Backend_PROBE")?;
    let (status, reason) = refused(&opts).await?;
    ensure!(
        status == 502 && reason.contains("not offered"),
        "{status} {reason}"
    );
    // The client offered it, but the gateway is told not to pass extensions.
    let tb = testbed_with_toml(
        &[("Backend_PROBE", probe.url())],
        "[server]\npermessage_deflate = false\n",
    )
    .await?;
    let mut opts = tb.connect_options("Backend_PROBE")?;
    opts.headers.push(offer);
    let (status, reason) = refused(&opts).await?;
    ensure!(
        status == 502 && reason.contains("not offered"),
        "{status} {reason}"
    );
    Ok(())
}

#[tokio::test]
async fn frames_are_remasked_toward_the_backend_and_unmasked_toward_the_client() -> Result<()> {
    use tokio::io::AsyncReadExt;
    // The backend replies with a raw unmasked binary frame "pong!".
    let mut probe = probe::Probe::start(probe::Mode::Raw {
        reply: vec![0x82, 5, b'p', b'o', b'n', b'g', b'!'],
        extensions: None,
    })
    .await?;
    let tb = testbed_with(&[("Backend_PROBE", probe.url())]).await?;
    let opts = tb.connect_options("Backend_PROBE")?;
    let connector = loadgen::client::Connector::new(&opts).await?;
    let mut up = connector.connect_raw(&[], None).await?;

    // Client frame: binary "hello".
    let key = [0x11u8, 0x22, 0x33, 0x44];
    let (head, fresh, payload) = through_to_probe(&mut up, &mut probe, 0x82, b"hello", key).await?;
    ensure!(
        head == [0x82, 0x80 | 5],
        "backend frame not masked: {head:?}"
    );
    ensure!(
        fresh != key,
        "the client's mask key was reused toward the backend"
    );
    ensure!(payload == b"hello", "payload {payload:?}");

    let mut back = [0u8; 7];
    tokio::time::timeout(DEADLINE, up.stream.read_exact(&mut back)).await??;
    ensure!(
        back == [0x82, 5, b'p', b'o', b'n', b'g', b'!'],
        "client got {back:?} (must be unmasked)"
    );
    Ok(())
}

#[tokio::test]
async fn verified_claims_reach_the_backend_and_spoofed_ones_do_not() -> Result<()> {
    let mut probe = probe::Probe::start(probe::Mode::Accept { protocol: None }).await?;
    let tb = testbed_with_toml(
        &[("Backend_PROBE", probe.url())],
        "[auth.forward_claims]\nX-Auth-Subject = \"sub\"\nX-Auth-Scopes = \"scp\"\nX-Auth-Audience = \"aud\"\n",
    )
    .await?;
    let mut opts = tb.connect_options("Backend_PROBE")?;
    opts.headers
        .push(("X-Auth-Subject".into(), "mallory".into()));
    opts.headers.push(("x-auth-scopes".into(), "root".into()));
    // The same header to a CGI-style backend (HTTP_X_AUTH_SUBJECT).
    opts.headers.push(("X_Auth_Subject".into(), "root".into()));
    // The gateway's own forwarding headers spelt so: the client's address and scheme.
    opts.headers
        .push(("X_Forwarded_For".into(), "6.6.6.6".into()));
    opts.headers
        .push(("X_Forwarded_Proto".into(), "http".into()));
    let _c = loadgen::client::connect(&opts).await?;
    let probe::Event::Handshake(headers) = probe.next().await? else {
        anyhow::bail!("expected the handshake")
    };
    let all = |name: &str| probe::values(&headers, name);
    ensure!(
        all("x-auth-subject") == ["ballerina"],
        "subject headers {:?}",
        all("x-auth-subject")
    );
    ensure!(
        all("x_auth_subject").is_empty(),
        "the underscore spelling passed: {:?}",
        all("x_auth_subject")
    );
    for spoofed in ["x_forwarded_for", "x_forwarded_proto"] {
        ensure!(
            all(spoofed).is_empty(),
            "{spoofed} passed: {:?}",
            all(spoofed)
        );
    }
    ensure!(
        all("x-forwarded-proto") == ["https"],
        "scheme headers {:?}",
        all("x-forwarded-proto")
    );
    ensure!(
        all("x-auth-scopes") == ["admin"],
        "scope headers {:?}",
        all("x-auth-scopes")
    );
    ensure!(
        all("x-auth-audience") == ["ballerina ballerina.org ballerina.io"],
        "audience headers {:?}",
        all("x-auth-audience")
    );
    Ok(())
}

#[tokio::test]
async fn the_backends_101_headers_reach_the_client_and_the_clients_reach_the_backend() -> Result<()>
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut probe = probe::Probe::start(probe::Mode::AcceptWith(vec![
        ("Set-Cookie".into(), "sticky=n1; Path=/".into()),
        ("Set-Cookie".into(), "seen=1".into()),
        ("X-Backend-Node".into(), "n1".into()),
        // Of this hop: not for the client.
        ("Keep-Alive".into(), "timeout=5".into()),
        ("Server".into(), "probe/1.0".into()),
    ]))
    .await?;
    let tb = testbed_with(&[("Backend_PROBE", probe.url())]).await?;
    let token = rs256(&claims_with(|_| {}))?;
    let mut tls = tls_connect(&tb).await?;
    let request = format!(
        "GET /gateway HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         ID: Backend_PROBE\r\nAuthorization: Bearer {token}\r\n\
         X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 192.0.2.2, 192.0.2.3\r\n\
         Expect: 100-continue\r\nX-Name: José\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(
            tokio::time::timeout(DEADLINE, tls.read(&mut byte)).await?? == 1,
            "closed inside the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    ensure!(head.starts_with("http/1.1 101"), "{head}");
    let lines: Vec<&str> = head.lines().collect();
    let count = |name: &str| lines.iter().filter(|l| l.starts_with(name)).count();
    for line in [
        "set-cookie: sticky=n1; path=/",
        "set-cookie: seen=1",
        "x-backend-node: n1",
    ] {
        ensure!(
            lines.contains(&line),
            "{line:?} missing from the client's 101:\n{head}"
        );
    }
    ensure!(count("keep-alive:") == 0 && count("server:") == 0, "{head}");
    ensure!(count("date:") <= 1 && count("connection:") == 1, "{head}");

    let probe::Event::Handshake(headers) = probe.next().await? else {
        anyhow::bail!("expected the handshake")
    };
    let all = |name: &str| probe::values(&headers, name);
    ensure!(
        all("x-forwarded-for") == ["192.0.2.1, 192.0.2.2, 192.0.2.3, 127.0.0.1"],
        "x-forwarded-for: {:?}",
        all("x-forwarded-for")
    );
    ensure!(all("expect").is_empty(), "expect: {:?}", all("expect"));
    // A UTF-8 value passes as it came.
    ensure!(all("x-name") == ["José"], "x-name: {:?}", all("x-name"));
    Ok(())
}

/// A short `[timeouts] close`, for the tests of closes left unanswered.
const QUICK_CLOSE: &str = "[timeouts]\nclose = \"1s\"\n";

#[tokio::test]
async fn a_client_close_the_backend_never_answers_is_answered_by_the_gateway() -> Result<()> {
    // The backend reads the passed-on close and then says nothing.
    let mut probe = probe::Probe::start(probe::Mode::Raw {
        reply: Vec::new(),
        extensions: None,
    })
    .await?;
    let tb = testbed_with_toml(&[("Backend_PROBE", probe.url())], QUICK_CLOSE).await?;
    let mut c = connect_ok(&tb, "Backend_PROBE").await?;
    send(&mut c.ws, Frame::close(1000, b"bye")).await?;
    let code = tokio::time::timeout(DEADLINE, async {
        loop {
            match c.ws.read_frame().await {
                Ok(f) if f.opcode == OpCode::Close => break close_of(&f),
                Ok(_) | Err(fastwebsockets::WebSocketError::ConnectionClosed) => {}
                Err(e) => anyhow::bail!("no close answer, the connection ended: {e}"),
            }
        }
    })
    .await??;
    ensure!(
        code == (1000, "backend did not answer the close".into()),
        "client got {code:?}"
    );
    // The backend did get the client's close.
    let probe::Event::Handshake(_) = probe.next().await? else {
        anyhow::bail!("expected the handshake")
    };
    let probe::Event::Raw(bytes) = probe.next().await? else {
        anyhow::bail!("expected the passed-on close")
    };
    ensure!(bytes.first() == Some(&0x88), "backend got {bytes:02x?}");
    Ok(())
}

#[tokio::test]
async fn a_backend_close_the_client_never_answers_is_answered_by_the_gateway() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut probe = probe::Probe::start(probe::Mode::Accept { protocol: None }).await?;
    let tb = testbed_with_toml(&[("Backend_PROBE", probe.url())], QUICK_CLOSE).await?;
    let opts = tb.connect_options("Backend_PROBE")?;
    let connector = loadgen::client::Connector::new(&opts).await?;
    // A client that asks the backend to close, then neither reads nor answers.
    let mut raw = connector.connect_raw(&[], None).await?;
    let key = [1u8, 2, 3, 4];
    let text = b"close:1000:bye";
    let mut frame = vec![0x81, 0x80 | u8::try_from(text.len())?];
    frame.extend_from_slice(&key);
    frame.extend(text.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    raw.stream.write_all(&frame).await?;
    raw.stream.flush().await?;
    let (code, reason) = probe.next_close().await?;
    ensure!(
        (code, reason.as_str()) == (1000, "client did not answer the close"),
        "backend got {code} {reason:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_backend_that_answers_and_leaves_while_the_client_uploads_is_heard_out() -> Result<()> {
    // The backend reads a little of a large upload, sends a last message and close 1009,
    // and closes its socket with the rest unread (so its kernel resets the connection).
    // The gateway's write to it then fails; what it sent first must still reach the client.
    let reply = [vec![0x81, 3, b'b', b'y', b'e'], vec![0x88, 2, 0x03, 0xF1]].concat();
    let probe = probe::Probe::start(probe::Mode::Raw {
        reply,
        extensions: None,
    })
    .await?;
    let tb = testbed_with(&[("Backend_PROBE", probe.url())]).await?;
    let c = connect_ok(&tb, "Backend_PROBE").await?;
    let (mut rd, mut wr) = c.ws.split(tokio::io::split);
    rd.set_auto_close(false);
    let upload = tokio::spawn(async move {
        // Its fate does not matter: the session ends under it.
        let _ = wr
            .write_frame(Frame::binary(Payload::Owned(vec![9u8; 8 << 20])))
            .await;
        wr
    });
    let mut ignore =
        |_: Frame<'_>| std::future::ready(Ok::<(), fastwebsockets::WebSocketError>(()));
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Ok(f) = rd.read_frame(&mut ignore).await {
            let end = f.opcode == OpCode::Close;
            got.push((f.opcode, f.payload.to_vec()));
            if end {
                break;
            }
        }
    })
    .await?;
    upload.abort();
    ensure!(
        got.first() == Some(&(OpCode::Text, b"bye".to_vec())),
        "the backend's last message was lost: {got:?}"
    );
    ensure!(
        got.get(1)
            .is_some_and(|(op, p)| *op == OpCode::Close && p[..2] == [0x03, 0xF1]),
        "the backend's 1009 was not passed on: {got:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_claim_that_cannot_be_a_header_value_is_left_out_and_the_clients_copy_still_dropped(
) -> Result<()> {
    let mut probe = probe::Probe::start(probe::Mode::Accept { protocol: None }).await?;
    let tb = testbed_with_toml(
        &[("Backend_PROBE", probe.url())],
        "[auth.forward_claims]\nX-Auth-Subject = \"sub\"\nX-Auth-Name = \"name\"\nX-Auth-Groups = \"groups\"\n",
    )
    .await?;
    let mut opts = tb.connect_options("Backend_PROBE")?;
    let token = rs256(&claims_with(|c| {
        // A line break: the backend would read a header of the token holder's making.
        c.insert("sub".into(), "ballerina\r\nX-Admin: yes".into());
        // A tab is a header value's own.
        c.insert("name".into(), "Jane\tDoe".into());
        // Array items that are not strings go as JSON, joined with spaces all the same.
        c.insert("groups".into(), serde_json::json!(["ops", 7, true]));
    }))?;
    opts.set_header("Authorization", format!("Bearer {token}"));
    opts.headers
        .push(("X-Auth-Subject".into(), "mallory".into()));
    opts.headers.push(("X-Auth-Groups".into(), "root".into()));
    let mut c = loadgen::client::connect(&opts).await?;
    let probe::Event::Handshake(headers) = probe.next().await? else {
        anyhow::bail!("expected the handshake")
    };
    let all = |name: &str| probe::values(&headers, name);
    ensure!(
        all("x-auth-subject").is_empty() && all("x-admin").is_empty(),
        "subject {:?}, x-admin {:?}",
        all("x-auth-subject"),
        all("x-admin")
    );
    ensure!(
        all("x-auth-name") == ["Jane\tDoe"],
        "name headers {:?}",
        all("x-auth-name")
    );
    ensure!(
        all("x-auth-groups") == ["ops 7 true"],
        "groups headers {:?}",
        all("x-auth-groups")
    );
    echo(&mut c.ws, b"still served").await?;
    Ok(())
}

#[tokio::test]
async fn with_permessage_deflate_false_no_offer_reaches_the_backend_and_none_comes_back(
) -> Result<()> {
    let offer = "permessage-deflate; client_max_window_bits";
    let mut probe = probe::Probe::start(probe::Mode::Accept { protocol: None }).await?;
    for (toml, passed) in [
        ("", true),
        ("[server]\npermessage_deflate = false\n", false),
    ] {
        let tb = testbed_with_toml(&[("Backend_PROBE", probe.url())], toml).await?;
        let opts = tb
            .connect_options("Backend_PROBE")?
            .header("Sec-WebSocket-Extensions", offer);
        let mut c = loadgen::client::connect(&opts).await?;
        // Past the events of the previous round's session.
        let headers = loop {
            if let probe::Event::Handshake(headers) = probe.next().await? {
                break headers;
            }
        };
        let offers = probe::values(&headers, "sec-websocket-extensions");
        let expected: &[&str] = if passed { &[offer] } else { &[] };
        ensure!(offers == expected, "{toml:?}: the backend got {offers:?}");
        ensure!(
            c.extensions.is_none(),
            "{toml:?}: the client got {:?}",
            c.extensions
        );
        echo(&mut c.ws, b"uncompressed").await?;
    }
    Ok(())
}
