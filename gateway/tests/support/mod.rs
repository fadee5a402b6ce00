//! Shared support for the gateway's integration tests: a testbed (gateway + demo
//! backends on port 0, from the load generator's library), token variants, a probe
//! backend that records what reaches it, and frame helpers with deadlines.

#![allow(dead_code, clippy::unwrap_used)]

pub mod idp;
pub mod noting;
pub mod ocsp_responder;
pub mod probe;
pub mod process;
pub mod python;
pub mod test_ca;
pub mod tls_client;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use loadgen::client::{connect, ConnectError, ConnectOptions, Connected, WsStream};
use loadgen::testbed::{Testbed, TestbedOptions};
use serde_json::Value;

/// Sends 16 KiB binary frames until one is not taken within 500 ms, when every buffer on
/// the way to a peer that does not read is full; returns how many were taken.
pub async fn send_until_blocked(ws: &mut WebSocket<WsStream>) -> Result<usize> {
    let started = Instant::now();
    let mut sent = 0usize;
    loop {
        let frame = Frame::binary(Payload::Owned(vec![7u8; 16 * 1024]));
        match tokio::time::timeout(Duration::from_millis(500), ws.write_frame(frame)).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(e)) => bail!("the connection failed after {sent} frames: {e}"),
            Err(_) => return Ok(sent),
        }
        ensure!(
            started.elapsed() < DEADLINE,
            "{sent} frames taken: the peer's buffers never filled"
        );
    }
}

/// Expects the close a client gets when its backend pings but never reads (1001 "backend
/// not reading"), after any pings; `sent` is how many frames the client sent, for the
/// message.
pub async fn closed_as_not_reading(ws: &mut WebSocket<WsStream>, sent: usize) -> Result<()> {
    let (code, reason) = close_after_pings(ws)
        .await
        .context("no close while the backend went on pinging")?;
    ensure!(
        (code, reason.as_str()) == (1001, "backend not reading"),
        "client got close {code} {reason:?} after {sent} frames"
    );
    Ok(())
}

/// The close frame that comes after any pings, within the deadline: its code and reason.
async fn close_after_pings(ws: &mut WebSocket<WsStream>) -> Result<(u16, String)> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let f = next_frame(ws).await?;
            match f.opcode {
                OpCode::Close => break close_of(&f),
                OpCode::Ping => {}
                other => bail!("unexpected {other:?} frame"),
            }
        }
    })
    .await?
}

/// Generous deadline for anything that should happen "promptly".
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Starts the gateway and the three demo backends with a fast push interval.
pub async fn testbed() -> Result<Testbed> {
    Testbed::start(TestbedOptions {
        push_interval: Some(Duration::from_millis(200)),
        ..TestbedOptions::default()
    })
    .await
}

/// A testbed whose gateway also routes the given extra backends.
pub async fn testbed_with(backends: &[(&str, String)]) -> Result<Testbed> {
    testbed_with_toml(backends, "").await
}

/// A testbed with extra backends and extra config sections.
pub async fn testbed_with_toml(backends: &[(&str, String)], extra_toml: &str) -> Result<Testbed> {
    // The generated config ends inside `[backends]`: extra routes go first.
    let mut toml: String = backends
        .iter()
        .map(|(id, url)| format!("{id} = \"{url}\"\n"))
        .collect();
    toml.push_str(extra_toml);
    Testbed::start(TestbedOptions {
        push_interval: Some(Duration::from_millis(200)),
        extra_toml: toml,
    })
    .await
}

/// Connects to `backend_id` through the gateway with a good token.
pub async fn connect_ok(tb: &Testbed, backend_id: &str) -> Result<Connected> {
    let opts = tb.connect_options(backend_id)?;
    connect(&opts)
        .await
        .with_context(|| format!("connect to {backend_id}"))
}

/// Connects with `opts`, expecting a refusal; returns its status and reason.
pub async fn refused(opts: &ConnectOptions) -> Result<(u16, String)> {
    match connect(opts).await {
        Err(ConnectError::Refused { status, reason }) => Ok((status, reason)),
        Err(other) => bail!("expected an HTTP refusal, got error {other}"),
        Ok(_) => bail!("expected an HTTP refusal, got a 101"),
    }
}

/// A TLS connection to the gateway, trusting the dev CA, for speaking raw HTTP.
pub async fn tls_connect(
    tb: &Testbed,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tls_connect_to(tb.gateway_addr()).await
}

/// [`tls_connect`] to a gateway at `addr` (a gateway process, say).
pub async fn tls_connect_to(
    addr: std::net::SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = loadgen::tls::client_config(Some(&certs().join("ca.crt")), false)
        .map_err(anyhow::Error::msg)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?)
}

/// The repository's certs folder.
pub fn certs() -> std::path::PathBuf {
    loadgen::testbed::repo_root().join("certs")
}

/// Signs `claims` with the dev RS256 key.
pub fn rs256(claims: &Value) -> Result<String> {
    let key = std::fs::read(certs().join("jwt-private.pem"))?;
    loadgen::token::mint(claims, &key)
}

/// The sample's claims, changed by `edit`.
pub fn claims_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut claims = loadgen::token::sample_claims();
    if let Value::Object(map) = &mut claims {
        edit(map);
    }
    claims
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// An unsigned token (`alg: none`) with the sample's claims.
pub fn alg_none_token() -> Result<String> {
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(serde_json::to_string(&loadgen::token::sample_claims())?.as_bytes());
    Ok(format!("{header}.{payload}."))
}

/// The algorithm-confusion attack: HS256 "signed" with the public key's PEM bytes.
pub fn hs256_with_public_key_token() -> Result<String> {
    let public = std::fs::read(certs().join("jwt-public.pem"))?;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &loadgen::token::sample_claims(),
        &jsonwebtoken::EncodingKey::from_secret(&public)?,
    )?;
    Ok(token)
}

/// A fresh P-256 key: its PKCS#8 private key and its public key as a JSON Web Key with
/// `kid`, for `usage` (`"sig"`, or `"enc"` for a key a verifier must not use).
pub fn es256_key(kid: &str, usage: &str) -> Result<(Vec<u8>, Value)> {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?;
    let pkcs8 = pair.to_pkcs8v1()?.as_ref().to_vec();
    // Uncompressed point: 0x04, x, y.
    let point = pair.public_key().as_ref();
    anyhow::ensure!(point.len() == 65, "unexpected point encoding");
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": usage, "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    });
    Ok((pkcs8, jwk))
}

/// The sample's claims signed ES256 with `pkcs8`, naming `kid` in the header when given.
pub fn es256_token(pkcs8: &[u8], kid: Option<&str>) -> Result<String> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    Ok(jsonwebtoken::encode(
        &header,
        &loadgen::token::sample_claims(),
        &jsonwebtoken::EncodingKey::from_ec_der(pkcs8),
    )?)
}

/// A good token whose payload was changed after signing.
pub fn tampered_token() -> Result<String> {
    let good = rs256(&loadgen::token::sample_claims())?;
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = b64(serde_json::to_string(&claims_with(|c| {
        c.insert("sub".into(), "mallory".into());
    }))?
    .as_bytes());
    parts[1] = &forged;
    Ok(parts.join("."))
}

/// Is this frame one of the demo backends' periodic pushes?
pub fn is_push(frame: &Frame<'_>) -> bool {
    frame.opcode == OpCode::Text && frame.payload.starts_with(b"{\"message\":\"Hello from")
}

/// Next frame within the deadline.
pub async fn next_frame(ws: &mut WebSocket<WsStream>) -> Result<Frame<'static>> {
    let frame = tokio::time::timeout(DEADLINE, ws.read_frame())
        .await
        .context("no frame before the deadline")??;
    Ok(Frame::new(
        frame.fin,
        frame.opcode,
        None,
        fastwebsockets::Payload::Owned(frame.payload.to_vec()),
    ))
}

/// Next frame that is not a push.
pub async fn next_non_push(ws: &mut WebSocket<WsStream>) -> Result<Frame<'static>> {
    loop {
        let f = next_frame(ws).await?;
        if !is_push(&f) {
            return Ok(f);
        }
    }
}

/// Sends one frame and flushes.
pub async fn send(ws: &mut WebSocket<WsStream>, frame: Frame<'_>) -> Result<()> {
    ws.write_frame(frame).await?;
    ws.flush().await?;
    Ok(())
}

/// Close code and reason of a close frame.
pub fn close_of(frame: &Frame<'_>) -> Result<(u16, String)> {
    if frame.opcode != OpCode::Close {
        bail!("expected a close frame, got {:?}", frame.opcode);
    }
    if frame.payload.len() < 2 {
        return Ok((1005, String::new()));
    }
    let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
    Ok((
        code,
        String::from_utf8_lossy(&frame.payload[2..]).into_owned(),
    ))
}

/// Polls `check` every 20 ms until it holds; fails naming `what` after `within`.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if started.elapsed() > within {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `payload` as a binary frame and waits for its echo (skipping pushes); returns
/// the round-trip time.
pub async fn echo(ws: &mut WebSocket<WsStream>, payload: &[u8]) -> Result<Duration> {
    let started = Instant::now();
    send(
        ws,
        Frame::binary(fastwebsockets::Payload::Borrowed(payload)),
    )
    .await?;
    let f = next_non_push(ws).await?;
    if f.opcode != OpCode::Binary || f.payload[..] != *payload {
        bail!("expected the echo, got {:?} {:?}", f.opcode, &f.payload[..]);
    }
    Ok(started.elapsed())
}

/// Closes with 1000 and waits for the answering close (skipping frames still in
/// flight); returns its code.
pub async fn close_cleanly(ws: &mut WebSocket<WsStream>) -> Result<u16> {
    send(ws, Frame::close(1000, b"bye")).await?;
    let started = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, ws.read_frame()).await {
            Err(_) => bail!("no close answer before the deadline"),
            Ok(Ok(f)) if f.opcode == OpCode::Close => return Ok(close_of(&f)?.0),
            Ok(Ok(_)) => {}
            // fastwebsockets reports data arriving after our close this way.
            Ok(Err(fastwebsockets::WebSocketError::ConnectionClosed)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Waits for a close frame (skipping pushes and data), returning its code and reason.
pub async fn expect_close(ws: &mut WebSocket<WsStream>) -> Result<(u16, String)> {
    loop {
        let f = next_frame(ws).await?;
        if f.opcode == OpCode::Close {
            return close_of(&f);
        }
    }
}
