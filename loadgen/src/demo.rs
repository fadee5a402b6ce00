//! Demo mode: the sample's client. Connects to the gateway with `ID: <backend>` and a
//! freshly minted token, sends a `RequestMessage` every interval and prints each message
//! both ways, `Client >> Backend_ABC: …` and `Backend_ABC >> Client: …`.

use std::future::Future;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocketWrite};
use tokio::io::WriteHalf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::{self, ConnectError, ConnectOptions, WsStream};
use crate::conn::describe_close;
use crate::token::TokenSource;

/// How long to wait for the server's answer to our close, or for the last echo.
const GRACE: Duration = Duration::from_secs(5);

/// Settings of the demo client.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Gateway URL.
    pub url: String,
    /// Backend ID to ask for (`ID` header).
    pub backend: String,
    /// PEM CA file to trust for `wss://`.
    pub ca: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure: bool,
    /// A client certificate to present.
    pub client_cert: Option<crate::tls::ClientCert>,
    /// Bearer token source.
    pub token: TokenSource,
    /// Pause between two messages (the first goes at once).
    pub interval: Duration,
    /// Stop after this many messages (and their echo); `None`: until interrupted.
    pub count: Option<u64>,
    /// Limit on TCP + TLS + upgrade.
    pub connect_timeout: Duration,
}

/// How a demo session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoEnd {
    /// `count` messages were sent and the last one came back; we closed with 1000.
    Finished {
        /// Messages sent.
        sent: u64,
    },
    /// `count` messages were sent and the last one's echo did not come back in time; we
    /// closed with 1000.
    Unanswered {
        /// Messages sent; the last one, number `sent`, is the one unanswered.
        sent: u64,
    },
    /// Stopped by the shutdown signal (Ctrl-C); we closed with 1000 (or, stopped while
    /// connecting, had nothing to close).
    Interrupted {
        /// Messages sent.
        sent: u64,
    },
    /// The server closed the connection.
    ClosedByServer {
        /// Close code (1005 if none was given).
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The gateway answered the upgrade with an HTTP error (the refusal is the gateway's,
    /// for its own reasons or on the backend's behalf; the backend may never have been
    /// reached).
    #[error("the gateway refused the connection to {backend}: HTTP {status}: {reason}")]
    Refused {
        /// Backend ID asked for.
        backend: String,
        /// HTTP status.
        status: u16,
        /// The one-line reason from the response body.
        reason: String,
    },
    /// Could not connect (network, TLS, timeout, bad handshake).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// What went wrong.
        #[source]
        source: ConnectError,
    },
    /// The token could not be made.
    #[error("{0}")]
    Token(String),
    /// The connection broke without a close frame.
    #[error("connection to {backend} lost: {reason}")]
    Lost {
        /// Backend ID.
        backend: String,
        /// What happened.
        reason: String,
    },
    /// Writing to the output failed.
    #[error("writing output: {0}")]
    Output(#[from] io::Error),
}

/// What the reader task saw.
enum Incoming {
    Text(String),
    Binary(usize),
    Ping(Vec<u8>),
    Close(u16, String),
    Lost(String),
}

/// Aborts the reader task when the session ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Writer = WebSocketWrite<WriteHalf<WsStream>>;

/// Runs the demo client, printing to `out`, until `count` is reached, the server closes,
/// or `shutdown` resolves.
pub async fn run<W: Write>(
    opts: &DemoOptions,
    out: &mut W,
    shutdown: impl Future<Output = ()>,
) -> Result<DemoEnd, DemoError> {
    let backend = opts.backend.as_str();
    let mut copts = ConnectOptions::new(&opts.url).header("ID", backend);
    copts.ca = opts.ca.clone();
    copts.insecure = opts.insecure;
    copts.client_cert = opts.client_cert.clone();
    copts.connect_timeout = opts.connect_timeout;
    if let Some(token) = opts
        .token
        .token()
        .map_err(|e| DemoError::Token(format!("{e:#}")))?
    {
        copts.set_header("Authorization", format!("Bearer {token}"));
    }
    tokio::pin!(shutdown);
    // A Ctrl-C while connecting stops the demo at once, not after the connect timeout.
    let connected = tokio::select! {
        connected = client::connect(&copts) => connected,
        () = &mut shutdown => return Ok(DemoEnd::Interrupted { sent: 0 }),
    };
    let connected = connected.map_err(|e| match e {
        ConnectError::Refused { status, reason } => DemoError::Refused {
            backend: backend.to_owned(),
            status,
            reason,
        },
        source => DemoError::Connect {
            url: opts.url.clone(),
            source,
        },
    })?;
    let (rd, mut wr) = connected.ws.split(tokio::io::split);
    let (tx, mut rx) = mpsc::channel(64);
    let _reader = AbortOnDrop(tokio::spawn(read_loop(rd, tx)));
    let lost = |reason: String| DemoError::Lost {
        backend: backend.to_owned(),
        reason,
    };

    // `interval` panics on zero; the command line refuses it, a library caller gets 1 ms.
    let mut ticker = tokio::time::interval(opts.interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    // After the last message: its text, and how long we wait for its echo.
    let mut last: Option<(String, tokio::time::Instant)> = None;
    let end = loop {
        let more = opts.count.is_none_or(|c| sent < c);
        let echo_deadline = last.as_ref().map(|(_, d)| *d);
        tokio::select! {
            () = &mut shutdown => break DemoEnd::Interrupted { sent },
            _ = ticker.tick(), if more => {
                sent += 1;
                let text = request_message(sent);
                writeln!(out, "Client >> {backend}: {text}")?;
                out.flush()?;
                send(&mut wr, Frame::text(Payload::Owned(text.clone().into_bytes()))).await.map_err(lost)?;
                if opts.count == Some(sent) {
                    last = Some((text, tokio::time::Instant::now() + GRACE));
                }
            }
            () = sleep_until_opt(echo_deadline), if echo_deadline.is_some() => {
                writeln!(
                    out,
                    "No echo from {backend} for message {sent} of {sent} (id {sent}) within {}",
                    humantime::format_duration(GRACE)
                )?;
                out.flush()?;
                break DemoEnd::Unanswered { sent };
            }
            ev = rx.recv() => match ev {
                Some(Incoming::Text(t)) => {
                    writeln!(out, "{backend} >> Client: {t}")?;
                    out.flush()?;
                    if last.as_ref().is_some_and(|(l, _)| *l == t) {
                        break DemoEnd::Finished { sent };
                    }
                }
                Some(Incoming::Binary(n)) => {
                    writeln!(out, "{backend} >> Client: <{n} bytes of binary data>")?;
                }
                Some(Incoming::Ping(p)) => send(&mut wr, Frame::pong(Payload::Owned(p))).await.map_err(lost)?,
                Some(Incoming::Close(code, reason)) => {
                    writeln!(out, "{}", format!("{backend} closed the connection: {code} {reason}").trim_end())?;
                    out.flush()?;
                    // Answer with the same code; the server may already be gone.
                    let _ = send(&mut wr, Frame::close(code_to_echo(code), b"")).await;
                    return Ok(DemoEnd::ClosedByServer { code, reason });
                }
                Some(Incoming::Lost(reason)) => return Err(lost(reason)),
                None => return Err(lost("reader stopped".to_owned())),
            },
        }
    };
    // We close: 1000, then wait (bounded) for the server's close.
    send(&mut wr, Frame::close(1000, b"bye"))
        .await
        .map_err(lost)?;
    let wait = tokio::time::timeout(GRACE, async {
        while let Some(ev) = rx.recv().await {
            match ev {
                Incoming::Text(t) => {
                    writeln!(out, "{backend} >> Client: {t}")?;
                }
                Incoming::Close(..) | Incoming::Lost(_) => break,
                Incoming::Binary(_) | Incoming::Ping(_) => {}
            }
        }
        Ok::<(), io::Error>(())
    });
    if let Ok(res) = wait.await {
        res?;
    }
    out.flush()?;
    Ok(end)
}

/// The `RequestMessage` JSON for message number `n`.
pub fn request_message(n: u64) -> String {
    let msg = demo_services::RequestMessage {
        id: serde_json::json!(n),
        name: "John Doe".to_owned(),
        email: "john.doe@example.com".to_owned(),
        phone: "+1-202-555-0143".to_owned(),
        dob: "1990-05-17".to_owned(),
    };
    serde_json::to_string(&msg).unwrap_or_default()
}

/// Codes that may be sent back in a close frame (1005/1006/1015 may not).
fn code_to_echo(code: u16) -> u16 {
    match code {
        1005 | 1006 | 1015 => 1000,
        c => c,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn send(wr: &mut Writer, frame: Frame<'_>) -> Result<(), String> {
    wr.write_frame(frame).await.map_err(|e| e.to_string())?;
    wr.flush().await.map_err(|e| e.to_string())
}

/// Reads messages and hands them to the session loop; pings and closes are answered there.
async fn read_loop(
    rd: fastwebsockets::WebSocketRead<tokio::io::ReadHalf<WsStream>>,
    tx: mpsc::Sender<Incoming>,
) {
    let mut rd = rd;
    rd.set_auto_close(false);
    rd.set_auto_pong(false);
    rd.set_max_message_size(16 << 20);
    let mut rd = FragmentCollectorRead::new(rd);
    let mut no_obligations = |_: Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) };
    loop {
        let ev = match rd.read_frame(&mut no_obligations).await {
            Ok(frame) => match frame.opcode {
                OpCode::Text => {
                    Incoming::Text(String::from_utf8_lossy(&frame.payload).into_owned())
                }
                OpCode::Binary => Incoming::Binary(frame.payload.len()),
                OpCode::Ping => Incoming::Ping(frame.payload.to_vec()),
                OpCode::Close => {
                    let (code, reason) = describe_close(&frame.payload);
                    Incoming::Close(code, reason)
                }
                OpCode::Pong | OpCode::Continuation => continue,
            },
            Err(e) => Incoming::Lost(e.to_string()),
        };
        let done = matches!(ev, Incoming::Close(..) | Incoming::Lost(_));
        if tx.send(ev).await.is_err() || done {
            return;
        }
    }
}
