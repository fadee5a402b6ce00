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
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

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

/// Instructions from the session (or the other pump) to a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Send a keepalive ping to your destination (the other pump's silent source).
    Ping,
    /// Stop forwarding, send this to your destination, and end.
    Stop(StopWith),
}

/// A pump's inbox: instructions from the session or the other pump.
///
/// Both pumps and the session run in one task, so an instruction needs no channel: the
/// sender sets a flag, and the task polls the pump again (the session does so right
/// after sending; the other pump wakes the task, see [`wake_task`]). Checking the inbox
/// costs one atomic load per frame.
#[derive(Debug, Default)]
pub struct Mailbox {
    flags: AtomicU8,
    stop: Mutex<Option<StopWith>>,
}

const PING: u8 = 1;
const STOP: u8 = 2;

impl Mailbox {
    /// Asks the pump to stop; the first instruction wins.
    pub fn stop(&self, how: StopWith) {
        if let Ok(mut s) = self.stop.lock() {
            s.get_or_insert(how);
        }
        self.flags.fetch_or(STOP, Ordering::Release);
    }

    /// Asks the pump to send a keepalive ping to its destination.
    pub fn ping(&self) {
        self.flags.fetch_or(PING, Ordering::Release);
    }

    /// The next instruction, if any (a stop before a ping).
    fn take(&self) -> Option<Control> {
        let flags = self.flags.load(Ordering::Acquire);
        if flags == 0 {
            return None;
        }
        if flags & STOP != 0 {
            let how = self
                .stop
                .lock()
                .ok()
                .and_then(|s| *s)
                .unwrap_or(StopWith::Nothing);
            return Some(Control::Stop(how));
        }
        self.flags.fetch_and(!PING, Ordering::AcqRel);
        Some(Control::Ping)
    }

    /// Resolves when an instruction is there. Registers no waker: senders live in the
    /// same task and make sure it is polled again.
    async fn next(&self) -> Control {
        std::future::poll_fn(|_| match self.take() {
            Some(c) => Poll::Ready(c),
            None => Poll::Pending,
        })
        .await
    }
}

/// Makes the runtime poll the current task again (so a pump in the same task sees a
/// flag just set in its [`Mailbox`]).
pub async fn wake_task() {
    std::future::poll_fn(|cx| {
        cx.waker().wake_by_ref();
        Poll::Ready(())
    })
    .await
}

/// Why a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// The source's close frame was passed on; its code, if it had one.
    Closed(Option<u16>),
    /// The source ended without a close; the destination was sent the lost-source close.
    SourceLost,
    /// The source broke the protocol (or a size limit) and should be closed with this
    /// code; the destination was sent 1001.
    SourceViolation(u16),
    /// The source sent nothing, not even a pong to a keepalive ping, for the idle timeout;
    /// the destination was sent 1001.
    SourceIdle,
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

/// Limits and keepalive settings a pump enforces on its source.
#[derive(Debug, Clone, Copy)]
pub struct PumpLimits {
    /// Largest message, counted across its fragments (1009 past it).
    pub max_message_size: usize,
    /// Ping the source after this long without a frame from it; close it after a second
    /// such period (`None`: never).
    pub keepalive: Option<Duration>,
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
    /// Size limits and keepalive.
    pub limits: PumpLimits,
}

/// Payload of the gateway's own keepalive pings; pongs carrying it are not forwarded.
pub const KEEPALIVE_PAYLOAD: &[u8] = b"wsgate-keepalive";

const PROTOCOL_ERROR_TO_PEER: CloseMsg = CloseMsg {
    code: 1001,
    reason: "peer protocol error",
};
/// Sent to both sides when one side idles past the timeout.
pub const IDLE: CloseMsg = CloseMsg {
    code: 1001,
    reason: "idle timeout",
};

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Pump<'_, R, W> {
    /// Forwards frames until the source closes or fails, the destination fails, or `inbox`
    /// says stop. Asks the other pump (through its inbox, `peer`) to ping a silent source.
    pub async fn run(self, inbox: &Mailbox, peer: &Mailbox) -> PumpEnd {
        let Pump {
            src,
            dst,
            lost,
            counters,
            limits,
        } = self;
        let mut obligated = |_: Frame<'_>| std::future::ready(Ok::<(), std::io::Error>(()));
        let mut dirty = false;
        // Keepalive: frames received from the source, as of the last tick.
        let mut ticker = limits.keepalive.map(|period| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut received: u64 = 0;
        let mut received_at_tick: u64 = 0;
        let mut pinged = false;
        // Bytes of the message being received, across its fragments.
        let mut message_len: usize = 0;
        loop {
            // Instructions first, so a flood from the source cannot hold off a stop.
            match inbox.take() {
                Some(Control::Stop(how)) => return stopped(dst, how, lost).await,
                Some(Control::Ping) => {
                    if write_ping(dst).await.is_err() {
                        return PumpEnd::DestLost;
                    }
                    dirty = true;
                }
                None => {}
            }
            let read = src.read_frame(&mut obligated);
            tokio::pin!(read);
            let mut next = None;
            if dirty {
                // A frame already buffered: take it now and keep batching.
                next = poll_once(read.as_mut()).await;
                if next.is_none() {
                    let mut ping_due = false;
                    let flushed = loop {
                        tokio::select! {
                            biased;
                            c = inbox.next() => match c {
                                Control::Ping => ping_due = true,
                                Control::Stop(how) => return stopped(dst, how, lost).await,
                            },
                            r = dst.flush() => break r,
                        }
                    };
                    if flushed.is_err() || (ping_due && write_ping(dst).await.is_err()) {
                        return PumpEnd::DestLost;
                    }
                }
            }
            let result = match next {
                Some(r) => r,
                None => loop {
                    // The read future is never dropped mid-frame: every branch but the
                    // read either ends the pump or loops back to the same future.
                    tokio::select! {
                        biased;
                        c = inbox.next() => match c {
                            Control::Ping => {
                                if write_ping(dst).await.is_err() {
                                    return PumpEnd::DestLost;
                                }
                            }
                            Control::Stop(how) => return stopped(dst, how, lost).await,
                        },
                        r = &mut read => break r,
                        _ = tick(&mut ticker) => {
                            if received != received_at_tick {
                                received_at_tick = received;
                                pinged = false;
                            } else if pinged {
                                let _ = send_close(dst, IDLE).await;
                                return PumpEnd::SourceIdle;
                            } else {
                                pinged = true;
                                peer.ping();
                                wake_task().await;
                            }
                        }
                    }
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
            received += 1;
            let (fin, opcode) = (frame.fin, frame.opcode);
            let len = frame.payload.len();
            let mut close_code = None;
            match opcode {
                OpCode::Text | OpCode::Binary => message_len = len,
                OpCode::Continuation => message_len = message_len.saturating_add(len),
                OpCode::Pong if frame.payload[..] == *KEEPALIVE_PAYLOAD => continue,
                OpCode::Close => match check_close(&frame.payload) {
                    Ok(code) => close_code = code,
                    Err(code) => {
                        let _ = send_close(dst, PROTOCOL_ERROR_TO_PEER).await;
                        return PumpEnd::SourceViolation(code);
                    }
                },
                _ => {}
            }
            if message_len > limits.max_message_size {
                let _ = send_close(dst, PROTOCOL_ERROR_TO_PEER).await;
                return PumpEnd::SourceViolation(1009);
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

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn write_ping<W: AsyncWrite + Unpin>(dst: &mut FrameWriter<W>) -> std::io::Result<()> {
    dst.write_frame(Frame::new(
        true,
        OpCode::Ping,
        None,
        Payload::Borrowed(KEEPALIVE_PAYLOAD),
    ))
    .await?;
    dst.flush().await
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
