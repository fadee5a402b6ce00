//! One upgraded WebSocket connection: echo every data frame, answer pings and the close,
//! log `RequestMessage`s, and push the backend's hello message on a timer.
//!
//! A single task owns both halves. Echoes go into a [`BatchWriter`] and are flushed only
//! when the next read would wait, so a burst of N messages costs one socket write, not
//! N. `read_frame` is not cancel-safe, so the read future is kept pinned and polled again
//! (never dropped) while the session flushes or pushes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketWrite};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::MissedTickBehavior;

use crate::batch::BatchWriter;
use crate::close::{close_for_read_error, reply_to_close, PROTOCOL_ERROR};
use crate::request_log::RequestLog;
use crate::Backend;

/// Largest frame a peer may send (fastwebsockets' default is 64 MiB); tests send 1 MiB.
pub const MAX_FRAME_SIZE: usize = 16 << 20;

/// How long the last writes of a session (close reply, owed echoes) may take.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a session needs besides its socket.
pub(crate) struct SessionConfig<'a> {
    /// Which backend this is (push text, log field).
    pub(crate) backend: Backend,
    /// Push period; `None` disables pushing.
    pub(crate) push_interval: Option<Duration>,
    /// The backend's shared, rate-limited request log.
    pub(crate) log: &'a RequestLog,
}

/// How a session ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The peer sent a close frame (code, if any) and it was answered.
    Closed(Option<u16>),
    /// The peer broke the protocol; a close with an error code was sent.
    ProtocolError(WebSocketError),
    /// The connection failed or the peer vanished without a close.
    Lost(WebSocketError),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Closed(Some(code)) => write!(f, "closed by peer with {code}"),
            Outcome::Closed(None) => f.write_str("closed by peer without a code"),
            Outcome::ProtocolError(e) => write!(f, "peer protocol error: {e}"),
            Outcome::Lost(e) => write!(f, "connection lost: {e}"),
        }
    }
}

/// Counters for the one log line at the end of a session.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// Data frames received (and echoed).
    pub(crate) frames: u64,
    /// Payload bytes received (and echoed).
    pub(crate) bytes: u64,
    /// Push messages sent.
    pub(crate) pushes: u64,
}

/// Runs a session on the two halves of an upgraded connection until it ends.
pub(crate) async fn run<R, W>(read: R, write: W, cfg: &SessionConfig<'_>) -> (Outcome, Summary)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut reader, mut writer) =
        fastwebsockets::after_handshake_split(read, BatchWriter::new(write), Role::Server);
    // Pings and closes are answered here, through the batch writer; the reader's
    // obligated-send callback is then never used.
    reader.set_auto_close(false);
    reader.set_auto_pong(false);
    reader.set_max_message_size(MAX_FRAME_SIZE);
    // Every non-empty frame goes through `write_vectored`: header and payload are copied
    // once, straight into the batch buffer (or bypass it when large).
    writer.set_writev_threshold(0);

    let mut push = cfg.push_interval.map(|period| {
        let mut timer = tokio::time::interval(period);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    });
    let mut no_obligated_send = |_: Frame<'_>| std::future::ready(Ok::<(), Infallible>(()));
    let mut summary = Summary::default();
    // True between a non-final data frame and the final continuation of its message.
    let mut in_message = false;

    let outcome = loop {
        let read = reader.read_frame(&mut no_obligated_send);
        tokio::pin!(read);
        let received = loop {
            if let Poll::Ready(result) = poll_once(read.as_mut()).await {
                break result;
            }
            // Nothing more to read right now: send what the echoes batched up.
            if let Err(e) = writer.flush().await {
                return (Outcome::Lost(e), summary);
            }
            let Some(timer) = push.as_mut() else {
                break read.as_mut().await;
            };
            tokio::select! {
                biased;
                _ = timer.tick() => {
                    if let Err(e) = send_push(&mut writer, cfg.backend).await {
                        return (Outcome::Lost(e), summary);
                    }
                    summary.pushes += 1;
                }
                result = read.as_mut() => break result,
            }
        };

        let frame = match received {
            Ok(frame) => frame,
            Err(e) => match close_for_read_error(&e) {
                Some(close) => {
                    // Best effort: the peer already misbehaved.
                    let _ = send_final(&mut writer, Some(close)).await;
                    break Outcome::ProtocolError(e);
                }
                None => {
                    // The peer may only have half-closed: deliver the echoes owed to it.
                    if matches!(e, WebSocketError::UnexpectedEOF) {
                        let _ = send_final(&mut writer, None).await;
                    }
                    break Outcome::Lost(e);
                }
            },
        };

        let written = match frame.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let starts_message = frame.opcode != OpCode::Continuation;
                if starts_message == in_message {
                    let close = Frame::close(PROTOCOL_ERROR, b"");
                    let _ = send_final(&mut writer, Some(close)).await;
                    break Outcome::ProtocolError(if starts_message {
                        WebSocketError::InvalidFragment
                    } else {
                        WebSocketError::InvalidContinuationFrame
                    });
                }
                in_message = !frame.fin;
                if frame.opcode == OpCode::Text && frame.fin {
                    cfg.log.inspect(&frame.payload);
                }
                summary.frames += 1;
                summary.bytes += frame.payload.len() as u64;
                // Rebuilt without the client's mask key, so it leaves unmasked.
                writer
                    .write_frame(Frame::new(frame.fin, frame.opcode, None, frame.payload))
                    .await
            }
            OpCode::Ping => writer.write_frame(Frame::pong(frame.payload)).await,
            OpCode::Pong => Ok(()),
            OpCode::Close => {
                let code = (frame.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                match send_final(&mut writer, Some(reply_to_close(frame.payload))).await {
                    Ok(()) => break Outcome::Closed(code),
                    Err(e) => break Outcome::Lost(e),
                }
            }
        };
        if let Err(e) = written {
            break Outcome::Lost(e);
        }
    };
    (outcome, summary)
}

/// Polls `fut` exactly once (registering the task's waker) and reports whether it is done.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// Writes the backend's hello message and flushes it at once (pushes are not batched).
async fn send_push<W: AsyncWrite + Unpin>(
    writer: &mut WebSocketWrite<BatchWriter<W>>,
    backend: Backend,
) -> Result<(), WebSocketError> {
    let text = Payload::Borrowed(backend.push_text().as_bytes());
    writer.write_frame(Frame::text(text)).await?;
    writer.flush().await
}

/// Writes the session's last frame (a close), if any, and flushes everything before it,
/// giving up after [`FINAL_WRITE_TIMEOUT`] so a peer that stopped reading cannot keep the
/// session alive.
async fn send_final<W: AsyncWrite + Unpin>(
    writer: &mut WebSocketWrite<BatchWriter<W>>,
    frame: Option<Frame<'_>>,
) -> Result<(), WebSocketError> {
    let write = async {
        if let Some(frame) = frame {
            writer.write_frame(frame).await?;
        }
        writer.flush().await
    };
    match tokio::time::timeout(FINAL_WRITE_TIMEOUT, write).await {
        Ok(result) => result,
        Err(_) => Err(WebSocketError::IoError(std::io::ErrorKind::TimedOut.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame (fin set, masked) with a payload under 126 bytes.
    fn masked(first_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![first_byte, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    async fn run_on(input: &[u8]) -> (Outcome, Summary, Vec<u8>) {
        let log = RequestLog::new(Backend::Abc, 20);
        let cfg = SessionConfig {
            backend: Backend::Abc,
            push_interval: None,
            log: &log,
        };
        let mut out = Vec::new();
        let (outcome, summary) = run(input, &mut out, &cfg).await;
        (outcome, summary, out)
    }

    #[tokio::test]
    async fn echoes_owed_at_eof_are_flushed() {
        // Frames and EOF are available at once: the reader never waits, so only the
        // end-of-session flush can deliver the echoes.
        let input = [masked(0x82, b"one"), masked(0x81, b"two")].concat();
        let (outcome, summary, out) = run_on(&input).await;
        assert!(matches!(
            outcome,
            Outcome::Lost(WebSocketError::UnexpectedEOF)
        ));
        assert_eq!(summary.frames, 2);
        assert_eq!(out, [&b"\x82\x03one"[..], b"\x81\x03two"].concat());
    }

    #[tokio::test]
    async fn close_reply_follows_the_batched_echoes() {
        let input = [
            masked(0x82, b"x"),
            masked(0x89, b"p"),
            masked(0x88, b"\x03\xe8ok"),
            masked(0x82, b"after close: ignored"),
        ]
        .concat();
        let (outcome, _, out) = run_on(&input).await;
        assert!(matches!(outcome, Outcome::Closed(Some(1000))));
        assert_eq!(
            out,
            [&b"\x82\x01x"[..], b"\x8a\x01p", b"\x88\x04\x03\xe8ok"].concat()
        );
    }
}
