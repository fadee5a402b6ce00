//! Forwarding: frames from one side to the other until a close, a loss or a stop.
//!
//! Each received frame is rebuilt with no mask key and handed to the other side's writer
//! (a move of the payload, not a copy): toward a backend the client-role writer masks it
//! with a fresh key, toward a client the server-role writer sends it unmasked. Writes go
//! into a [`FrameWriter`]; the pump flushes only when its reader has no further frame
//! ready, so a burst costs one syscall and one TLS record, not one per frame. Fragments
//! pass through as fragments, pings and pongs pass through, and close frames are passed
//! on with their code and reason.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketRead};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::batch::FrameWriter;

/// A close frame the gateway itself sends: code and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseMsg {
    /// RFC 6455 close code.
    pub code: u16,
    /// One-line reason (at most 123 bytes).
    pub reason: &'static str,
}

/// What a stopped pump sends its destination before ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWith {
    /// Nothing: the destination already knows or is gone.
    Nothing,
    /// The close this pump sends when its own source is lost.
    LostSource,
    /// A specific close.
    Close(CloseMsg),
}

/// Why a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// The source's close frame was passed on; its code, if it had one.
    Closed(Option<u16>),
    /// The source ended without a close; the destination was sent the lost-source close.
    SourceLost,
    /// The source broke the protocol and should be closed with this code; the destination
    /// was sent 1001.
    SourceViolation(u16),
    /// Writing to the destination failed.
    DestLost,
    /// Stopped by the session.
    Stopped,
}

/// Frames and payload bytes a pump passed on.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Frames forwarded (data, control and close).
    pub frames: u64,
    /// Payload bytes forwarded.
    pub bytes: u64,
}

/// One direction of a session.
pub struct Pump<'a, R, W> {
    /// Where frames come from.
    pub src: &'a mut WebSocketRead<R>,
    /// Where they go.
    pub dst: &'a mut FrameWriter<W>,
    /// Sent to `dst` when `src` vanishes without a close.
    pub lost: CloseMsg,
    /// Tallies for the session log and metrics.
    pub counters: &'a mut Counters,
}

const PROTOCOL_ERROR_TO_PEER: CloseMsg = CloseMsg {
    code: 1001,
    reason: "peer protocol error",
};

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Pump<'_, R, W> {
    /// Forwards frames until the source closes or fails, the destination fails, or `stop`
    /// delivers an instruction.
    pub async fn run(self, stop: &mut oneshot::Receiver<StopWith>) -> PumpEnd {
        let Pump {
            src,
            dst,
            lost,
            counters,
        } = self;
        let mut obligated = |_: Frame<'_>| std::future::ready(Ok::<(), std::io::Error>(()));
        let mut dirty = false;
        loop {
            let read = src.read_frame(&mut obligated);
            tokio::pin!(read);
            let mut next = None;
            if dirty {
                // A frame already buffered: take it now and keep batching.
                next = poll_once(read.as_mut()).await;
                if next.is_none() {
                    let flushed = tokio::select! {
                        biased;
                        how = &mut *stop => return stopped(dst, how.unwrap_or(StopWith::Nothing), lost).await,
                        r = dst.flush() => r,
                    };
                    if flushed.is_err() {
                        return PumpEnd::DestLost;
                    }
                }
            }
            let result = match next {
                Some(r) => r,
                None => tokio::select! {
                    biased;
                    how = &mut *stop => return stopped(dst, how.unwrap_or(StopWith::Nothing), lost).await,
                    r = &mut read => r,
                },
            };
            let frame = match result {
                Ok(frame) => frame,
                Err(e) => {
                    let end = classify(&e);
                    let close = match end {
                        PumpEnd::SourceViolation(_) => PROTOCOL_ERROR_TO_PEER,
                        _ => lost,
                    };
                    let _ = send_close(dst, close).await;
                    return end;
                }
            };
            let (fin, opcode) = (frame.fin, frame.opcode);
            let len = frame.payload.len();
            let mut close_code = None;
            if opcode == OpCode::Close {
                match check_close(&frame.payload) {
                    Ok(code) => close_code = code,
                    Err(code) => {
                        let _ = send_close(dst, PROTOCOL_ERROR_TO_PEER).await;
                        return PumpEnd::SourceViolation(code);
                    }
                }
            }
            let out = Frame::new(fin, opcode, None, frame.payload);
            if dst.write_frame(out).await.is_err() {
                return PumpEnd::DestLost;
            }
            counters.frames += 1;
            counters.bytes += len as u64;
            if opcode == OpCode::Close {
                return match dst.flush().await {
                    Ok(()) => PumpEnd::Closed(close_code),
                    Err(_) => PumpEnd::DestLost,
                };
            }
            dirty = true;
        }
    }
}

/// Polls `fut` once: its output if ready now, `None` if it would wait.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

async fn stopped<W: AsyncWrite + Unpin>(
    dst: &mut FrameWriter<W>,
    how: StopWith,
    lost: CloseMsg,
) -> PumpEnd {
    let close = match how {
        StopWith::Nothing => None,
        StopWith::LostSource => Some(lost),
        StopWith::Close(msg) => Some(msg),
    };
    match close {
        Some(msg) => {
            let _ = send_close(dst, msg).await;
        }
        None => {
            let _ = dst.flush().await;
        }
    }
    PumpEnd::Stopped
}

/// Sends a close frame after what is already buffered, and flushes.
pub async fn send_close<W: AsyncWrite + Unpin>(
    dst: &mut FrameWriter<W>,
    msg: CloseMsg,
) -> std::io::Result<()> {
    dst.write_frame(Frame::close(msg.code, msg.reason.as_bytes()))
        .await?;
    dst.flush().await
}

/// Maps a read failure to how the pump ends.
fn classify(e: &WebSocketError) -> PumpEnd {
    match e {
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => PumpEnd::SourceLost,
        WebSocketError::InvalidUTF8 => PumpEnd::SourceViolation(1007),
        WebSocketError::FrameTooLarge => PumpEnd::SourceViolation(1009),
        _ => PumpEnd::SourceViolation(1002),
    }
}

/// Validates a close payload: `Ok(code)` to pass it on, `Err(code)` to close its sender.
fn check_close(payload: &Payload<'_>) -> Result<Option<u16>, u16> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(1002),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_allowed(code) {
                return Err(1002);
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(1007);
            }
            Ok(Some(code))
        }
    }
}

/// Codes a peer may send (RFC 6455 §7.4 and the IANA registry): 1000-1003, 1007-1014,
/// and 3000-4999. 1004-1006 and 1015 must never appear on the wire.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_payloads_are_checked() {
        let ok: &[u8] = &[0x0f, 0xa1, b'b', b'y', b'e'];
        assert_eq!(check_close(&Payload::Borrowed(ok)), Ok(Some(4001)));
        assert_eq!(check_close(&Payload::Borrowed(&[])), Ok(None));
        assert_eq!(check_close(&Payload::Borrowed(&[3])), Err(1002));
        // 1005 must never appear on the wire.
        assert_eq!(check_close(&Payload::Borrowed(&[0x03, 0xed])), Err(1002));
        assert_eq!(
            check_close(&Payload::Borrowed(&[0x03, 0xe8, 0xff])),
            Err(1007)
        );
        // 1014 (bad gateway) is registered and passes.
        assert_eq!(
            check_close(&Payload::Borrowed(&[0x03, 0xf6])),
            Ok(Some(1014))
        );
    }
}
