//! Forwarding: frames from one side to the other until a close, a loss or a stop.
//!
//! Bytes read from the source are parsed where they were read ([`crate::frames`]); every
//! whole frame is readied there for its destination (a fresh masking key toward a
//! backend) and the read's frames go to the destination in one write, straight from the
//! read buffer ([`FrameWriter`]), so a burst costs one syscall and one TLS record, not one
//! per frame, and no copy of its own. Fragments pass through as fragments, pings and
//! pongs pass through, and close frames are passed on with their code and reason. Runs of
//! plain data frames (whole, final, unfragmented), nearly all the traffic, take a short
//! path that skips the bookkeeping only fragments and control frames need.

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::batch::{forward_in_place, FrameWriter, InvalidUtf8, Utf8Check};
use crate::frames::{self, Parsed};
pub use crate::mailbox::{wake_task, CloseMsg, Control, Mailbox, StopWith};
use crate::reader::{FrameReader, Stop};
use crate::session::{BACKEND_STALLED, CLIENT_STALLED, SHUTTING_DOWN};
use crate::ticker::Ticker;

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
    /// The source went on sending but took none of the bytes the other pump had waiting
    /// for it for 1.5 to 2 × the idle timeout (a peer whose handler hangs while its
    /// library still pings); the destination was sent 1001 saying so.
    SourceStalled,
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
    /// Largest single frame payload (1009 past it).
    pub max_frame_size: usize,
    /// Ping the source after this long without a frame from it; close it after a second
    /// such period (`None`: never).
    pub keepalive: Option<Duration>,
    /// `permessage-deflate` is in force: RSV1 (compressed) is allowed on a message's
    /// first frame, and such a text message is not checked for UTF-8.
    pub permessage_deflate: bool,
}

/// One direction of a session.
pub struct Pump<'a, R, W> {
    /// Where frames come from.
    pub src: &'a mut FrameReader<R>,
    /// Whether the source is a client (its frames must be masked).
    pub src_is_client: bool,
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

/// Ticks of the keepalive ticker (half the idle timeout each) a source may take none of
/// the bytes waiting for it before it is taken for stalled: 1.5 to 2 × idle. A
/// slow reader of a backlog shows progress at least once an idle period (see `idle` in
/// the README), a hung one never.
const STALL_TICKS: u8 = 4;
// Rare paths (stop, close, keepalive ping) are awaited boxed: a future awaited inline is
// part of the pump's state for the session's whole life, and every idle session pays for
// the largest of them; boxed, they cost an allocation only when they run.

/// How often an idle pump gives its buffers back when keepalive is off.
const RELEASE_PERIOD: Duration = Duration::from_secs(30);

/// Per-pump parsing state.
#[derive(Debug, Default)]
struct Progress {
    /// Frames received from the source (keepalive pongs included).
    received: u64,
    /// Inside a fragmented message.
    in_message: bool,
    /// The gateway is shutting down: the source's close is answered to the destination
    /// with [`SHUTTING_DOWN`], not passed on.
    shutting_down: bool,
    /// Keepalive pings the gateway sent the source whose pongs have not come: only while
    /// some are owed is a pong with [`KEEPALIVE_PAYLOAD`] the gateway's own, and not
    /// passed on. More than one when the source was pinged again before it could answer
    /// (it went on sending, say, a large frame, between two idle ticks).
    pongs_owed: u8,
    /// Bytes of the message being received, across its fragments.
    message_len: usize,
    /// The message being received is text; its UTF-8 check, carried across fragments.
    text: Option<Utf8Check>,
    /// The frame being passed on in pieces, if one is.
    piecewise: Piecewise,
}

/// Frames with a larger payload than this (one read's worth) are passed on in pieces as
/// their payload arrives, instead of whole: a session then never holds a whole large
/// frame (up to `max_frame_size`) in memory, only what one read and one batch hold.
const PIECEWISE_FROM: usize = 64 * 1024;

/// A data frame being passed on in pieces: its head went out with the first piece.
#[derive(Debug, Default, Clone, Copy)]
struct Piecewise {
    /// Payload bytes still to come; 0 when no frame is in pieces.
    left: u64,
    /// The sender's masking key and the fresh one toward the destination (masked frames).
    keys: Option<([u8; 4], [u8; 4])>,
    /// Where the next piece starts in the payload, modulo 4: the keys' phase.
    phase: u8,
    /// The frame ends its message: the UTF-8 check's last piece must end a character.
    fin: bool,
}

impl<'a, R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Pump<'a, R, W> {
    /// Forwards frames until the source closes or fails, the destination fails, or `inbox`
    /// says stop. Asks the other pump (through its inbox, `peer`) to ping a silent source.
    ///
    /// Not an `async fn`, which would keep the `Pump` in its state beside the fields taken
    /// out of it, for the session's whole life.
    pub fn run<'m>(
        self,
        inbox: &'m Mailbox,
        peer: &'m Mailbox,
    ) -> impl Future<Output = PumpEnd> + use<'a, 'm, R, W> {
        let Pump {
            src,
            src_is_client,
            dst,
            lost,
            counters,
            limits,
        } = self;
        async move {
            let mut progress = Progress::default();
            // Ticks at which the source sent but took none of what the other pump has
            // been waiting to write to it.
            let mut stalled_ticks = 0u8;
            let period = limits.keepalive.unwrap_or(RELEASE_PERIOD);
            let mut ticker = std::pin::pin!(Ticker::new(period));
            // What the source had sent at the last tick: frames received, and bytes of a
            // frame still arriving (a large frame sent slowly is activity too). Kept in 32
            // bits each, to keep the pump's state small; a wrap needs 2^32 frames per tick.
            let mut seen_at_tick: (u32, u32) = (0, 0);
            let mut pinged = false;
            // Told to stop: what the source is half-way through may be finished first.
            macro_rules! stop {
                ($how:expr) => {{
                    let mut frame = FrameInFlight {
                        src: &mut *src,
                        src_is_client,
                        limits: &limits,
                        progress: &mut progress,
                        counters: &mut *counters,
                    };
                    return Box::pin(stopped(dst, $how, lost, &mut frame)).await;
                }};
            }
            loop {
                // Instructions first, so a flood from the source cannot hold off a stop.
                match inbox.take() {
                    Some(Control::Stop(how)) => stop!(how),
                    Some(Control::Ping) if Box::pin(write_ping(dst)).await.is_err() => {
                        return PumpEnd::DestLost
                    }
                    _ => {}
                }
                // Take whatever is ready now, without waiting: this is what batches a burst.
                let ready = std::future::poll_fn(|cx| {
                    let mut process = |cx: &mut Context<'_>, data: &mut [u8]| {
                        progress.shutting_down |= inbox.shutting_down();
                        process::<true, _>(
                            cx,
                            data,
                            src_is_client,
                            &limits,
                            &mut progress,
                            dst,
                            counters,
                        )
                    };
                    Poll::Ready(match src.poll_process(cx, &mut process) {
                        Poll::Ready(r) => Some(r),
                        Poll::Pending => None,
                    })
                })
                .await;
                let step = match ready {
                    Some(step) => step,
                    None => {
                        // Nothing more is ready: send the burst, then wait.
                        if dst.needs_flush() {
                            let mut ping_due = false;
                            inbox.flushing(true);
                            let flushed = loop {
                                tokio::select! {
                                    biased;
                                    c = inbox.next() => match c {
                                        Control::Ping => ping_due = true,
                                        Control::Stop(how) => stop!(how),
                                    },
                                    // Step by step: each write a slow reader takes shows
                                    // the other pump's tick that it is reading.
                                    r = dst.flush_some() => match r {
                                        Ok(true) => break Ok(()),
                                        Ok(false) => inbox.delivered(),
                                        Err(e) => break Err(e),
                                    },
                                }
                            };
                            inbox.flushing(false);
                            if flushed.is_err()
                                || (ping_due && Box::pin(write_ping(dst)).await.is_err())
                            {
                                return PumpEnd::DestLost;
                            }
                            // Only a destination that was behind shows by what it
                            // takes that it reads (see `FrameWriter::take_waited`); or
                            // one inside a frame passed on in pieces, which can be sent
                            // no ping to show it otherwise.
                            if dst.take_waited() || dst.mid_frame() {
                                inbox.delivered();
                            }
                        }
                        loop {
                            tokio::select! {
                                biased;
                                c = inbox.next() => match c {
                                    Control::Ping => {
                                        if Box::pin(write_ping(dst)).await.is_err() {
                                            return PumpEnd::DestLost;
                                        }
                                    }
                                    Control::Stop(how) => stop!(how),
                                },
                                r = std::future::poll_fn(|cx| {
                                    let mut process = |cx: &mut Context<'_>, data: &mut [u8]| {
                                        progress.shutting_down |= inbox.shutting_down();
                                        process::<true, _>(cx, data, src_is_client, &limits, &mut progress, dst, counters)
                                    };
                                    src.poll_process(cx, &mut process)
                                }) => break r,
                                _ = ticker.as_mut().tick() => {
                                    let seen = (
                                        progress.received as u32,
                                        u32::try_from(src.pending())
                                            .unwrap_or(u32::MAX)
                                            .wrapping_add(progress.piecewise.left as u32),
                                    );
                                    // What the source sent, or took: the other pump's
                                    // writes to it went through.
                                    let took = peer.take_delivered();
                                    if seen != seen_at_tick || took {
                                        seen_at_tick = seen;
                                        pinged = false;
                                        // Sending, but taking none of what waits for it:
                                        // a hung reader whose pings go on.
                                        if took || !peer.is_flushing() || limits.keepalive.is_none() {
                                            stalled_ticks = 0;
                                        } else {
                                            stalled_ticks += 1;
                                            if stalled_ticks >= STALL_TICKS {
                                                let stalled = if src_is_client { CLIENT_STALLED } else { BACKEND_STALLED };
                                                let _ = Box::pin(send_close(dst, stalled)).await;
                                                return PumpEnd::SourceStalled;
                                            }
                                        }
                                        continue;
                                    }
                                    // Idle since the last tick: hold no read or batch memory.
                                    dst.release();
                                    src.release();
                                    if limits.keepalive.is_none() {
                                        continue;
                                    }
                                    if pinged {
                                        let _ = Box::pin(send_close(dst, IDLE)).await;
                                        return PumpEnd::SourceIdle;
                                    }
                                    pinged = true;
                                    progress.pongs_owed = progress.pongs_owed.saturating_add(1);
                                    peer.ping();
                                    wake_task().await;
                                }
                            }
                        }
                    }
                };
                match step {
                    Ok(None) => {}
                    Ok(Some(Stop::Full)) => {
                        inbox.flushing(true);
                        loop {
                            match dst.flush_some().await {
                                Ok(done) => {
                                    if !done || dst.take_waited() || dst.mid_frame() {
                                        inbox.delivered();
                                    }
                                    if done {
                                        break;
                                    }
                                }
                                Err(_) => return PumpEnd::DestLost,
                            }
                        }
                        inbox.flushing(false);
                    }
                    Ok(Some(Stop::Close(code))) => {
                        return match dst.flush().await {
                            Ok(()) => PumpEnd::Closed(code),
                            Err(_) => PumpEnd::DestLost,
                        };
                    }
                    Ok(Some(Stop::Violation(code))) => {
                        let _ = Box::pin(send_close(dst, PROTOCOL_ERROR_TO_PEER)).await;
                        return PumpEnd::SourceViolation(code);
                    }
                    Err(_) => {
                        let _ = Box::pin(send_close(dst, lost)).await;
                        return PumpEnd::SourceLost;
                    }
                }
            }
        }
    }
}

/// Forwards every whole frame at the start of `data` to `dst`; returns the bytes used and
/// why it stopped early, if it did.
///
/// Frames are readied for the destination in place in `data` (a fresh masking key when
/// the destination is a backend) and handed to `dst` as one run, written straight from
/// `data` where the stream takes them at once ([`FrameWriter::send_encoded`]). Frames the
/// gateway answers itself (its keepalive pongs) end the run and are left out.
///
/// `PLAIN`: runs of plain data frames are readied by [`plain_run`] (what the pumps use);
/// without it every frame is taken one by one. The two must agree, which the tests check.
fn process<const PLAIN: bool, W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    data: &mut [u8],
    src_is_client: bool,
    limits: &PumpLimits,
    progress: &mut Progress,
    dst: &mut FrameWriter<W>,
    counters: &mut Counters,
) -> (usize, Option<Stop>) {
    // Frames readied in place from `run` to `used`, not yet in the batch.
    let mut run = 0;
    let mut used = 0;
    let stop = loop {
        if progress.piecewise.left > 0 {
            // The next piece of a frame passed on in pieces: whatever of it has arrived.
            if dst.is_full(used - run) {
                break Some(Stop::Full);
            }
            let available = data.len() - used;
            if available == 0 {
                break None;
            }
            let left = progress.piecewise.left;
            let n = usize::try_from(left).map_or(available, |left| left.min(available));
            let last = n as u64 == left;
            let piece = &mut data[used..used + n];
            if forward_piece(piece, &mut progress.piecewise, last, progress.text.as_mut()).is_err()
            {
                break Some(Stop::Violation(1007));
            }
            used += n;
            // Counted as they pass: a sender that stops mid-frame sent no more than this.
            counters.bytes += n as u64;
            if last {
                dst.set_mid_frame(false);
                if dst.take_owed_ping() {
                    dst.send_encoded(cx, &data[run..used]);
                    run = used;
                    let _ = dst.push(true, false, frames::PING, KEEPALIVE_PAYLOAD, None, None);
                }
            }
            continue;
        }
        if PLAIN && !progress.in_message && src_is_client == dst.masks() {
            // One copy of the run's loop per direction, each with its masking rule fixed.
            let plain = if src_is_client {
                plain_run::<true, _>(data, used, run, limits, dst)
            } else {
                plain_run::<false, _>(data, used, run, limits, dst)
            };
            progress.received += plain.frames;
            counters.frames += plain.frames;
            counters.bytes += plain.bytes;
            used = plain.end;
            if plain.bad_text {
                progress.received += 1;
                break Some(Stop::Violation(1007));
            }
        }
        if dst.is_full(used - run) {
            break Some(Stop::Full);
        }
        let head = match frames::parse(
            &data[used..],
            src_is_client,
            limits.max_frame_size,
            limits.permessage_deflate,
        ) {
            Parsed::Frame(head) => head,
            Parsed::Incomplete(Some(head))
                if head.payload_len > PIECEWISE_FROM
                    && !head.is_control()
                    && src_is_client == dst.masks() =>
            {
                let frame = &mut data[used..];
                if let Err(code) = start_piecewise(frame, &head, progress, limits) {
                    break Some(Stop::Violation(code));
                }
                dst.set_mid_frame(true);
                counters.frames += 1;
                used += head.head_len;
                continue;
            }
            Parsed::Incomplete(_) => break None,
            Parsed::Violation(code) => break Some(Stop::Violation(code)),
        };
        let at = used;
        let end = at + head.frame_len();
        let payload = &data[at + head.head_len..end];
        let mut close_code = None;
        match head.opcode {
            frames::TEXT | frames::BINARY => {
                if progress.in_message {
                    break Some(Stop::Violation(1002));
                }
                progress.in_message = !head.fin;
                progress.message_len = payload.len();
                progress.text = head.starts_checked_text().then(Utf8Check::default);
            }
            frames::CONTINUATION => {
                if !progress.in_message {
                    break Some(Stop::Violation(1002));
                }
                progress.in_message = !head.fin;
                progress.message_len = progress.message_len.saturating_add(payload.len());
            }
            frames::PONG | frames::CLOSE => {
                let mut plain = [0u8; 125];
                let plain = &mut plain[..payload.len()];
                plain.copy_from_slice(payload);
                if let Some(key) = head.mask {
                    frames::apply_mask(plain, key);
                }
                if head.opcode == frames::PONG
                    && progress.pongs_owed > 0
                    && plain == KEEPALIVE_PAYLOAD
                {
                    // The answer to our own keepalive ping: not passed on.
                    progress.pongs_owed -= 1;
                    progress.received += 1;
                    dst.send_encoded(cx, &data[run..at]);
                    used = end;
                    run = end;
                    continue;
                }
                if head.opcode == frames::CLOSE {
                    match check_close(plain) {
                        Ok(code) => close_code = code,
                        Err(code) => break Some(Stop::Violation(code)),
                    }
                    if progress.shutting_down {
                        // The destination hears that the gateway is going away, whatever
                        // the source answered to the shutdown close it was sent.
                        dst.send_encoded(cx, &data[run..at]);
                        // The source's close is not passed on (the gateway's own close,
                        // counted as such, goes in its place).
                        push_close(dst, SHUTTING_DOWN);
                        used = end;
                        run = end;
                        break Some(Stop::Close(close_code));
                    }
                }
            }
            _ => {}
        }
        progress.received += 1;
        if progress.message_len > limits.max_message_size {
            break Some(Stop::Violation(1009));
        }
        let text = match head.opcode {
            frames::TEXT | frames::CONTINUATION => progress.text.as_mut(),
            _ => None,
        };
        let payload_len = head.payload_len as u64;
        if src_is_client == dst.masks() {
            if forward_in_place(&mut data[at..end], &head, text, &mut rand::thread_rng()).is_err() {
                break Some(Stop::Violation(1007));
            }
        } else {
            // Masking changes the head's size: this frame is encoded anew.
            dst.send_encoded(cx, &data[run..at]);
            run = end;
            let payload = &data[at + head.head_len..end];
            if dst
                .push(head.fin, head.rsv1, head.opcode, payload, head.mask, text)
                .is_err()
            {
                break Some(Stop::Violation(1007));
            }
        }
        used = end;
        counters.frames += 1;
        counters.bytes += payload_len;
        if head.opcode == frames::CLOSE {
            break Some(Stop::Close(close_code));
        }
    };
    dst.send_encoded(cx, &data[run..used]);
    (used, stop)
}

/// Takes the head of a data frame at the start of `frame` (its payload still arriving)
/// as the start of a frame passed on in pieces: the checks a whole frame gets, and a
/// fresh masking key written into the head when the frame is masked. `Err`: the close
/// code for the sender.
fn start_piecewise(
    frame: &mut [u8],
    head: &frames::Head,
    progress: &mut Progress,
    limits: &PumpLimits,
) -> Result<(), u16> {
    if head.opcode == frames::CONTINUATION {
        if !progress.in_message {
            return Err(1002);
        }
        progress.message_len = progress.message_len.saturating_add(head.payload_len);
    } else {
        if progress.in_message {
            return Err(1002);
        }
        progress.message_len = head.payload_len;
        progress.text = head.starts_checked_text().then(Utf8Check::default);
    }
    progress.in_message = !head.fin;
    progress.received += 1;
    if progress.message_len > limits.max_message_size {
        return Err(1009);
    }
    let keys = head.mask.map(|theirs| {
        // One 32-bit draw: sampling `[u8; 4]` would draw a 32-bit word per byte.
        let ours = rand::thread_rng().next_u32().to_ne_bytes();
        let key_at = head.head_len - 4;
        frame[key_at..head.head_len].copy_from_slice(&ours);
        (theirs, ours)
    });
    progress.piecewise = Piecewise {
        left: head.payload_len as u64,
        keys,
        phase: 0,
        fin: head.fin,
    };
    Ok(())
}

/// Readies the next `piece` of a frame passed on in pieces, in place: re-masked with the
/// frame's fresh key where it was masked, checked where it is text (`last`: it ends the
/// frame).
fn forward_piece(
    piece: &mut [u8],
    frame: &mut Piecewise,
    last: bool,
    text: Option<&mut Utf8Check>,
) -> Result<(), InvalidUtf8> {
    let phase = usize::from(frame.phase);
    // A key as it applies from `phase` bytes into the payload.
    let at_phase = |k: [u8; 4]| {
        [
            k[phase],
            k[(phase + 1) % 4],
            k[(phase + 2) % 4],
            k[(phase + 3) % 4],
        ]
    };
    match (frame.keys, text) {
        (Some((theirs, ours)), Some(check)) => {
            frames::apply_mask(piece, at_phase(theirs));
            check.feed(piece, frame.fin && last)?;
            frames::apply_mask(piece, at_phase(ours));
        }
        (Some((theirs, ours)), None) => {
            let both = [
                theirs[0] ^ ours[0],
                theirs[1] ^ ours[1],
                theirs[2] ^ ours[2],
                theirs[3] ^ ours[3],
            ];
            frames::apply_mask(piece, at_phase(both));
        }
        (None, Some(check)) => check.feed(piece, frame.fin && last)?,
        (None, None) => {}
    }
    frame.left -= piece.len() as u64;
    frame.phase = ((phase + piece.len()) % 4) as u8;
    Ok(())
}

/// What [`plain_run`] readied.
struct PlainRun {
    /// Where the run ends: the first byte it left for `process`.
    end: usize,
    /// Frames in the run.
    frames: u64,
    /// Their payload bytes.
    bytes: u64,
    /// The frame at `end` is text that is not UTF-8.
    bad_text: bool,
}

/// Readies, in place, the run of plain data frames starting at `data[at..]`: whole, final
/// text or binary frames outside a fragmented message, masked as the source must mask
/// them and within the size limits, for a destination that masks exactly when the source
/// does. Such frames are nearly all the traffic, and none of the fragment, control-frame
/// or close bookkeeping of [`process`] applies to them. The run ends at the first frame
/// that is anything else, is incomplete, or would overfill `dst`'s batch (with the frames
/// from `run` on still to be sent); `process` takes it from there, and reports any
/// violation the frame holds.
#[inline]
fn plain_run<const FROM_CLIENT: bool, W: AsyncWrite + Unpin>(
    data: &mut [u8],
    mut at: usize,
    run: usize,
    limits: &PumpLimits,
    dst: &FrameWriter<W>,
) -> PlainRun {
    let max_payload = limits.max_frame_size.min(limits.max_message_size);
    let rsv1_ok = limits.permessage_deflate;
    let mut frames = 0;
    let mut bytes = 0;
    // The thread's key generator, looked up once for the run.
    let mut keys = rand::thread_rng();
    let bad_text = loop {
        let Some(head) = frames::parse_plain(&data[at..], FROM_CLIENT, max_payload, rsv1_ok) else {
            break false;
        };
        if dst.is_full(at - run) {
            break false;
        }
        let frame_len = head.frame_len();
        // A backend's binary or compressed frame goes on as it came.
        let text = head.starts_checked_text();
        if head.mask.is_some() || text {
            let mut check = Utf8Check::default();
            let text = text.then_some(&mut check);
            if forward_in_place(&mut data[at..at + frame_len], &head, text, &mut keys).is_err() {
                break true;
            }
        }
        at += frame_len;
        frames += 1;
        bytes += head.payload_len as u64;
    };
    PlainRun {
        end: at,
        frames,
        bytes,
        bad_text,
    }
}

async fn write_ping<W: AsyncWrite + Unpin>(dst: &mut FrameWriter<W>) -> std::io::Result<()> {
    if dst.mid_frame() {
        // Not inside a frame: it goes when the frame is whole.
        dst.owe_ping();
        return Ok(());
    }
    let _ = dst.push(true, false, frames::PING, KEEPALIVE_PAYLOAD, None, None);
    dst.flush().await
}

async fn stopped<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    dst: &mut FrameWriter<W>,
    how: StopWith,
    lost: CloseMsg,
    frame: &mut FrameInFlight<'_, R>,
) -> PumpEnd {
    let close = match how {
        StopWith::Nothing => None,
        StopWith::LostSource => Some(lost),
        StopWith::Close(msg) => {
            // A close the gateway sends (shutdown, a session deadline, the other side's
            // violation) follows the frame the source is half-way through, not cuts it.
            frame.finish(dst).await;
            Some(msg)
        }
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

/// A pump's source and what it is reading, for the rest of a frame over
/// [`PIECEWISE_FROM`] that is being passed on in pieces when the pump is told to stop.
struct FrameInFlight<'f, R> {
    src: &'f mut FrameReader<R>,
    src_is_client: bool,
    limits: &'f PumpLimits,
    progress: &'f mut Progress,
    counters: &'f mut Counters,
}

impl<R: AsyncRead + Unpin> FrameInFlight<'_, R> {
    /// Passes on the rest of the frame the source is in the middle of, if it is, and
    /// nothing after it. Gives up when the source ends or breaks a rule, or the
    /// destination fails; the session bounds the wait by its close timeout.
    async fn finish<W: AsyncWrite + Unpin>(&mut self, dst: &mut FrameWriter<W>) {
        let FrameInFlight {
            src,
            src_is_client,
            limits,
            progress,
            counters,
        } = self;
        while progress.piecewise.left > 0 {
            let step = std::future::poll_fn(|cx| {
                let mut piece = |cx: &mut Context<'_>, data: &mut [u8]| {
                    let rest = usize::try_from(progress.piecewise.left)
                        .map_or(data.len(), |left| left.min(data.len()));
                    let rest = &mut data[..rest];
                    process::<true, _>(cx, rest, *src_is_client, limits, progress, dst, counters)
                };
                src.poll_process(cx, &mut piece)
            })
            .await;
            match step {
                Ok(None) => {}
                Ok(Some(Stop::Full)) => {
                    if dst.flush().await.is_err() {
                        return;
                    }
                }
                Ok(Some(_)) | Err(_) => return,
            }
        }
    }
}

/// Sends a close frame after what is already buffered, and flushes.
pub async fn send_close<W: AsyncWrite + Unpin>(
    dst: &mut FrameWriter<W>,
    msg: CloseMsg,
) -> std::io::Result<()> {
    push_close(dst, msg);
    dst.flush().await
}

/// Adds a close frame to the batch, after what is already there.
fn push_close<W: AsyncWrite + Unpin>(dst: &mut FrameWriter<W>, msg: CloseMsg) {
    if dst.mid_frame() {
        // A close cannot go inside a frame that will never be finished: the destination
        // gets the end of the connection alone.
        return;
    }
    let mut payload = [0u8; 125];
    let reason = msg.reason.as_bytes();
    let reason = &reason[..reason.len().min(123)];
    payload[..2].copy_from_slice(&msg.code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason);
    if dst
        .push(
            true,
            false,
            frames::CLOSE,
            &payload[..2 + reason.len()],
            None,
            None,
        )
        .is_ok()
    {
        dst.queued_close(msg.code);
    }
}

/// Validates a close payload: `Ok(code)` to pass it on, `Err(code)` to close its sender.
fn check_close(payload: &[u8]) -> Result<Option<u16>, u16> {
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
    use fastwebsockets::Role;
    use tokio::io::AsyncReadExt;

    const LIMITS: PumpLimits = PumpLimits {
        max_message_size: 1 << 20,
        max_frame_size: 1 << 20,
        keepalive: None,
        permessage_deflate: false,
    };

    /// A masked frame as a client sends it.
    fn client_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        client_fragment(true, opcode, payload, key)
    }

    /// A masked frame, final (`fin`) or not, as a client sends it.
    fn client_fragment(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut head = [0u8; frames::MAX_HEAD];
        let n = frames::encode_head(&mut head, fin, opcode, payload.len(), Some(key));
        let mut frame = head[..n].to_vec();
        let at = frame.len();
        frame.extend_from_slice(payload);
        frames::apply_mask(&mut frame[at..], key);
        frame
    }

    /// Runs `process` over `input` as a client's bytes bound for a backend; returns what
    /// it returned and the frames that reached the batch, unmasked, with their keys.
    async fn forward_up(
        input: &mut [u8],
        limit: usize,
    ) -> std::io::Result<((usize, Option<Stop>), Vec<(u8, Vec<u8>, [u8; 4])>)> {
        forward_up_after(input, limit, Progress::default()).await
    }

    /// As [`forward_up`], from this parsing state.
    async fn forward_up_after(
        input: &mut [u8],
        limit: usize,
        mut progress: Progress,
    ) -> std::io::Result<((usize, Option<Stop>), Vec<(u8, Vec<u8>, [u8; 4])>)> {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut dst = FrameWriter::new(a, Role::Client, limit);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ret = process::<true, _>(
            &mut cx,
            input,
            true,
            &LIMITS,
            &mut progress,
            &mut dst,
            &mut Counters::default(),
        );
        let seen = sent_frames(dst, &mut b, true).await?;
        let seen = seen
            .into_iter()
            .map(|(head, payload)| (head.opcode, payload, head.mask.unwrap_or_default()))
            .collect();
        Ok((ret, seen))
    }

    /// Flushes `dst` and closes it, then parses what reached its other end `b`: each
    /// frame's head and payload, unmasked (`masked`: the frames must be masked).
    async fn sent_frames(
        mut dst: FrameWriter<tokio::io::DuplexStream>,
        b: &mut tokio::io::DuplexStream,
        masked: bool,
    ) -> std::io::Result<Vec<(frames::Head, Vec<u8>)>> {
        dst.flush().await?;
        drop(dst);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await?;
        let mut seen = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let Parsed::Frame(head) = frames::parse(&out[at..], masked, usize::MAX, true) else {
                return Err(std::io::Error::other("the batch holds a broken frame"));
            };
            let mut payload = out[at + head.head_len..at + head.frame_len()].to_vec();
            if let Some(key) = head.mask {
                frames::apply_mask(&mut payload, key);
            }
            at += head.frame_len();
            seen.push((head, payload));
        }
        Ok(seen)
    }

    #[tokio::test]
    async fn a_run_of_frames_is_rekeyed_and_our_keepalive_pong_left_out() -> std::io::Result<()> {
        let key = [1, 2, 3, 4];
        let mut input = [
            client_frame(frames::BINARY, b"first", key),
            client_frame(frames::PONG, KEEPALIVE_PAYLOAD, key),
            client_frame(frames::TEXT, "zweite \u{2713}".as_bytes(), key),
            client_frame(frames::PING, b"theirs", key),
        ]
        .concat();
        let whole = input.len();
        let pinged = Progress {
            pongs_owed: 1,
            ..Progress::default()
        };
        let ((used, stop), seen) = forward_up_after(&mut input, 1 << 16, pinged).await?;
        assert_eq!((used, stop), (whole, None));
        let kinds: Vec<(u8, &[u8])> = seen.iter().map(|(o, p, _)| (*o, &p[..])).collect();
        assert_eq!(
            kinds,
            [
                (frames::BINARY, &b"first"[..]),
                (frames::TEXT, "zweite \u{2713}".as_bytes()),
                (frames::PING, &b"theirs"[..]),
            ]
        );
        assert!(
            seen.iter().all(|(_, _, k)| *k != key),
            "the client's key was reused"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_pong_with_our_payload_passes_when_the_gateway_did_not_ping() -> std::io::Result<()> {
        // The answer to the other side's ping, which happens to carry the keepalive
        // payload; and a second pong after the gateway's own was taken.
        let key = [5, 6, 7, 8];
        let pong = client_frame(frames::PONG, KEEPALIVE_PAYLOAD, key);
        let mut input = pong.clone();
        let (_, seen) = forward_up(&mut input, 1 << 16).await?;
        assert_eq!(seen.len(), 1, "the pong was not passed on");
        let mut input = [pong.clone(), pong.clone()].concat();
        let pinged = Progress {
            pongs_owed: 1,
            ..Progress::default()
        };
        let (_, seen) = forward_up_after(&mut input, 1 << 16, pinged).await?;
        assert_eq!(seen.len(), 1, "one pong answers one ping");
        assert_eq!(
            (seen[0].0, &seen[0].1[..]),
            (frames::PONG, KEEPALIVE_PAYLOAD)
        );
        // Pinged twice before it could answer: both answers are the gateway's.
        let mut input = [pong.clone(), pong.clone(), pong].concat();
        let twice = Progress {
            pongs_owed: 2,
            ..Progress::default()
        };
        let (_, seen) = forward_up_after(&mut input, 1 << 16, twice).await?;
        assert_eq!(seen.len(), 1, "two pongs answer two pings");
        Ok(())
    }

    #[tokio::test]
    async fn bad_text_stops_the_run_after_the_frames_before_it() -> std::io::Result<()> {
        let key = [9, 9, 9, 9];
        let first = client_frame(frames::BINARY, b"ok", key);
        let mut input = [
            first.clone(),
            client_frame(frames::TEXT, &[0xff, 0xfe], key),
            client_frame(frames::BINARY, b"never", key),
        ]
        .concat();
        let ((used, stop), seen) = forward_up(&mut input, 1 << 16).await?;
        assert_eq!((used, stop), (first.len(), Some(Stop::Violation(1007))));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1, b"ok");
        Ok(())
    }

    #[tokio::test]
    async fn compressed_messages_pass_as_they_came_only_with_permessage_deflate(
    ) -> std::io::Result<()> {
        use frames::{BINARY, CONTINUATION, TEXT};
        let key = [7, 7, 1, 2];
        // Deflate's bytes for "hello": not UTF-8, and not the gateway's to check.
        let deflated = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut whole = client_frame(TEXT, &deflated, key);
        whole[0] |= 0x40;
        let mut first = client_fragment(false, BINARY, b"ab", key);
        first[0] |= 0x40;
        let last = client_fragment(true, CONTINUATION, b"cd", key);
        let input = [whole, first.clone(), last.clone()].concat();
        let mut rsv1_continuation = last.clone();
        rsv1_continuation[0] |= 0x40;
        let bad = [first.clone(), rsv1_continuation].concat();
        let from_backend = [&[0xC1, 7][..], &deflated].concat();
        let deflate = PumpLimits {
            permessage_deflate: true,
            ..LIMITS
        };
        for plain in [true, false] {
            let run = |input: &[u8], from_client, limits| {
                run_frames(
                    input.to_vec(),
                    plain,
                    from_client,
                    limits,
                    1 << 16,
                    Progress::default(),
                )
            };
            let (used, stop, seen, ..) = run(&input, true, &deflate).await?;
            assert_eq!((used, stop), (input.len(), None));
            assert_eq!(
                seen,
                [
                    (TEXT, true, true, deflated.to_vec()),
                    (BINARY, false, true, b"ab".to_vec()),
                    (CONTINUATION, true, false, b"cd".to_vec()),
                ],
                "plain runs: {plain}"
            );
            let (used, stop, seen, ..) = run(&from_backend, false, &deflate).await?;
            assert_eq!((used, stop), (from_backend.len(), None));
            assert_eq!(seen, [(TEXT, true, true, deflated.to_vec())]);
            // Without the extension, RSV1 is a protocol error at the first frame.
            let (used, stop, seen, ..) = run(&input, true, &LIMITS).await?;
            assert_eq!(
                (used, stop, seen.len()),
                (0, Some(Stop::Violation(1002)), 0)
            );
            // RSV1 on a continuation is one even with it.
            let (used, stop, ..) = run(&bad, true, &deflate).await?;
            assert_eq!((used, stop), (first.len(), Some(Stop::Violation(1002))));
        }
        Ok(())
    }

    #[tokio::test]
    async fn fragmented_text_is_checked_across_fragments() -> std::io::Result<()> {
        let key = [3, 1, 4, 1];
        let euro = "€".as_bytes();
        // "a€" split inside the euro sign, then "b": UTF-8 as a whole, passed on.
        let good = [
            client_fragment(false, frames::TEXT, &[b'a', euro[0]], key),
            client_fragment(false, frames::CONTINUATION, &euro[1..], key),
            client_fragment(true, frames::CONTINUATION, b"b", key),
        ];
        let mut input = good.concat();
        let whole = input.len();
        let ((used, stop), seen) = forward_up(&mut input, 1 << 16).await?;
        assert_eq!((used, stop), (whole, None));
        let text: Vec<u8> = seen.iter().flat_map(|(_, p, _)| p.clone()).collect();
        assert_eq!(text, "a€b".as_bytes());
        // The same start, then a fragment that breaks the split character: 1007, and the
        // fragments before it passed on.
        let mut input = [
            good[0].clone(),
            client_fragment(true, frames::CONTINUATION, b"xy", key),
        ]
        .concat();
        let ((used, stop), seen) = forward_up(&mut input, 1 << 16).await?;
        assert_eq!((used, stop), (good[0].len(), Some(Stop::Violation(1007))));
        assert_eq!(seen.len(), 1);
        // A message that ends inside a character is refused too.
        let mut input = [
            client_fragment(false, frames::TEXT, b"a", key),
            client_fragment(true, frames::CONTINUATION, &euro[..2], key),
        ]
        .concat();
        let (ret, _) = forward_up(&mut input, 1 << 16).await?;
        assert_eq!(ret.1, Some(Stop::Violation(1007)));
        Ok(())
    }

    #[tokio::test]
    async fn a_full_batch_stops_with_the_rest_untouched() -> std::io::Result<()> {
        let key = [5, 6, 7, 8];
        let frame = client_frame(frames::BINARY, &[7u8; 100], key);
        let mut input = [frame.clone(), frame.clone(), frame.clone()].concat();
        // Room for two frames: the third waits for a flush, as the client sent it.
        let ((used, stop), seen) = forward_up(&mut input, 2 * frame.len()).await?;
        assert_eq!((used, stop), (2 * frame.len(), Some(Stop::Full)));
        assert_eq!(seen.len(), 2);
        assert_eq!(&input[used..], &frame[..]);
        Ok(())
    }

    /// A random frame stream from a client (`masked`) or a backend: mostly plain data
    /// frames, with fragments, control frames, the gateway's own keepalive pong, bad UTF-8,
    /// every length encoding, oversized frames, protocol violations and a cut last frame.
    fn random_stream(rng: &mut impl rand::Rng, masked: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.gen_range(1..16) {
            let mut payload: Vec<u8> = match rng.gen_range(0..12) {
                0 => Vec::new(),
                1 => "grüße €😀".as_bytes().to_vec(),
                2 => vec![0xff, b'a'],
                3..=8 => vec![b'x'; rng.gen_range(1..140)],
                9 => vec![b'y'; rng.gen_range(200..400)],
                _ => (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect(),
            };
            let (mut b0, wrong_mask) = match rng.gen_range(0..43) {
                0..=27 => (frames::BINARY | 0x80, false),
                28..=32 => (frames::TEXT | 0x80, false),
                33 => (frames::TEXT, false),
                34 => (frames::CONTINUATION | (rng.gen::<u8>() & 0x80), false),
                35 => {
                    payload.truncate(125);
                    (frames::PING | 0x80, false)
                }
                36 => {
                    payload = KEEPALIVE_PAYLOAD.to_vec();
                    (frames::PONG | 0x80, false)
                }
                37 => {
                    payload = [&[0x03, 0xe8][..], b"bye"].concat();
                    (frames::CLOSE | 0x80, false)
                }
                38 => (frames::BINARY | 0x80 | 0x40, false),
                // Compressed text: deflate's bytes, not UTF-8.
                39 => {
                    payload = vec![0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
                    (frames::TEXT | 0x80 | 0x40, false)
                }
                40 => (frames::TEXT | 0x40, false),
                41 => (frames::CONTINUATION | 0x80 | 0x40, false),
                _ => (frames::BINARY | 0x80, true),
            };
            if rng.gen_ratio(1, 100) {
                b0 = 0x83; // reserved opcode
            }
            let key = rng.gen::<[u8; 4]>();
            let masked = masked != wrong_mask;
            let len = payload.len();
            out.push(b0);
            let mask_bit = if masked { 0x80 } else { 0 };
            match rng.gen_range(0..8) {
                // Longer length encodings than needed are allowed.
                0 => {
                    out.push(mask_bit | 126);
                    out.extend_from_slice(&(len as u16).to_be_bytes());
                }
                1 => {
                    out.push(mask_bit | 127);
                    out.extend_from_slice(&(len as u64).to_be_bytes());
                }
                _ if len < 126 => out.push(mask_bit | len as u8),
                _ => {
                    out.push(mask_bit | 126);
                    out.extend_from_slice(&(len as u16).to_be_bytes());
                }
            }
            if masked {
                out.extend_from_slice(&key);
                frames::apply_mask(&mut payload, key);
            }
            out.extend_from_slice(&payload);
        }
        if rng.gen_ratio(1, 3) {
            let cut = rng.gen_range(0..out.len());
            out.truncate(cut);
        }
        out
    }

    /// Runs `process` over `input`, with plain runs or without (`plain`); returns what it
    /// returned, the frames that reached the destination (opcode, fin, RSV1, unmasked
    /// payload), the tallies and the state.
    async fn run_frames(
        mut input: Vec<u8>,
        plain: bool,
        src_is_client: bool,
        limits: &PumpLimits,
        batch_limit: usize,
        mut progress: Progress,
    ) -> std::io::Result<(
        usize,
        Option<Stop>,
        Vec<(u8, bool, bool, Vec<u8>)>,
        u64,
        u64,
        u64,
        bool,
    )> {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let role = if src_is_client {
            Role::Client
        } else {
            Role::Server
        };
        let mut dst = FrameWriter::new(a, role, batch_limit);
        let mut counters = Counters::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let process = if plain {
            process::<true, _>
        } else {
            process::<false, _>
        };
        let (used, stop) = process(
            &mut cx,
            &mut input,
            src_is_client,
            limits,
            &mut progress,
            &mut dst,
            &mut counters,
        );
        let seen = sent_frames(dst, &mut b, src_is_client)
            .await?
            .into_iter()
            .map(|(head, payload)| (head.opcode, head.fin, head.rsv1, payload))
            .collect();
        Ok((
            used,
            stop,
            seen,
            counters.frames,
            counters.bytes,
            progress.received,
            progress.in_message,
        ))
    }

    /// A frame as the side `from_client` sends it: masked with `key` from a client.
    fn frame_from(from_client: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        if from_client {
            return client_frame(opcode, payload, key);
        }
        let mut head = [0u8; frames::MAX_HEAD];
        let n = frames::encode_head(&mut head, true, opcode, payload.len(), None);
        [&head[..n], payload].concat()
    }

    /// Feeds `input` to `process` in pieces of pseudo-random sizes (up to 70,000 bytes), as
    /// a reader would: what `process` does not use is kept and comes first next time.
    /// Returns the largest amount kept between calls, how it stopped (if it did), the
    /// writer, and the counters.
    async fn feed_in_pieces(
        input: &[u8],
        src_is_client: bool,
        dst: &mut FrameWriter<tokio::io::DuplexStream>,
        owe_ping_at: Option<usize>,
    ) -> (usize, Option<Stop>, Counters) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9ece);
        let mut progress = Progress::default();
        let mut counters = Counters::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut kept: Vec<u8> = Vec::new();
        let mut most_kept = 0;
        let mut at = 0;
        while at < input.len() {
            let n = rng.gen_range(1..70_000).min(input.len() - at);
            kept.extend_from_slice(&input[at..at + n]);
            at += n;
            if owe_ping_at.is_some_and(|p| at >= p) && dst.mid_frame() {
                dst.owe_ping();
            }
            let (used, stop) = process::<true, _>(
                &mut cx,
                &mut kept,
                src_is_client,
                &LIMITS,
                &mut progress,
                dst,
                &mut counters,
            );
            kept.drain(..used);
            most_kept = most_kept.max(kept.len());
            match stop {
                None => {}
                Some(Stop::Full) => {
                    if dst.flush().await.is_err() {
                        return (most_kept, Some(Stop::Full), counters);
                    }
                }
                other => return (most_kept, other, counters),
            }
        }
        (most_kept, None, counters)
    }

    /// 300,000 bytes of text with characters of 1 and 3 bytes.
    fn big_text() -> Vec<u8> {
        let mut text = "zweite \u{2713} ".repeat(300_000 / 11).into_bytes();
        text.truncate(text.len() - text.len() % 11);
        text
    }

    #[tokio::test]
    async fn a_large_frame_is_passed_on_in_pieces_without_being_held() -> std::io::Result<()> {
        let text = big_text();
        let key = [7, 1, 9, 3];
        for from_client in [true, false] {
            let input = [
                frame_from(from_client, frames::TEXT, &text, key),
                frame_from(from_client, frames::BINARY, b"after", key),
            ]
            .concat();
            let (a, mut b) = tokio::io::duplex(1 << 20);
            let role = if from_client {
                Role::Client
            } else {
                Role::Server
            };
            let mut dst = FrameWriter::new(a, role, 1 << 16);
            let (most_kept, stop, counters) =
                feed_in_pieces(&input, from_client, &mut dst, None).await;
            assert_eq!(stop, None);
            assert!(
                most_kept <= frames::MAX_HEAD,
                "{most_kept} bytes of the frame were held (from client: {from_client})"
            );
            assert_eq!(
                (counters.frames, counters.bytes),
                (2, text.len() as u64 + 5)
            );
            assert!(!dst.mid_frame());
            let seen = sent_frames(dst, &mut b, from_client).await?;
            assert_eq!(seen.len(), 2);
            assert_eq!((seen[0].0.opcode, seen[0].0.fin), (frames::TEXT, true));
            assert!(seen[0].1 == text, "the text changed on the way");
            assert_eq!(seen[1].1, b"after");
            if from_client {
                assert_ne!(seen[0].0.mask, Some(key), "the client's key was reused");
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_ping_asked_for_inside_a_large_frame_goes_after_it() -> std::io::Result<()> {
        let text = big_text();
        let key = [2, 4, 6, 8];
        let input = [
            client_frame(frames::TEXT, &text, key),
            client_frame(frames::BINARY, b"after", key),
        ]
        .concat();
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut dst = FrameWriter::new(a, Role::Client, 1 << 16);
        let (_, stop, _) = feed_in_pieces(&input, true, &mut dst, Some(100_000)).await;
        assert_eq!(stop, None);
        let seen = sent_frames(dst, &mut b, true).await?;
        let kinds: Vec<u8> = seen.iter().map(|(h, _)| h.opcode).collect();
        assert_eq!(kinds, [frames::TEXT, frames::PING, frames::BINARY]);
        assert_eq!(seen[1].1, KEEPALIVE_PAYLOAD);
        Ok(())
    }

    #[tokio::test]
    async fn bad_text_inside_a_large_frame_stops_it_and_no_close_lands_inside(
    ) -> std::io::Result<()> {
        let mut text = big_text();
        text[200_000] = 0xff;
        let input = client_frame(frames::TEXT, &text, [1, 1, 2, 2]);
        let (a, _b) = tokio::io::duplex(1 << 20);
        let mut dst = FrameWriter::new(a, Role::Client, 1 << 16);
        let (_, stop, counters) = feed_in_pieces(&input, true, &mut dst, None).await;
        assert_eq!(stop, Some(Stop::Violation(1007)));
        // Bytes count as they pass, not as the head declares them.
        assert!(
            counters.bytes <= 200_000,
            "{} bytes counted of a frame stopped at byte 200,000",
            counters.bytes
        );
        // The destination has part of the frame: nothing else may follow it.
        assert!(dst.mid_frame());
        let before = dst.buffered();
        push_close(&mut dst, PROTOCOL_ERROR_TO_PEER);
        assert_eq!(
            dst.buffered(),
            before,
            "a close was written inside the frame"
        );
        Ok(())
    }

    #[tokio::test]
    async fn plain_runs_forward_exactly_what_frame_by_frame_forwards() -> std::io::Result<()> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_f0a4);
        let mut plain_frames = 0;
        let mut compressed = 0;
        for case in 0..4000 {
            let src_is_client = rng.gen();
            let input = random_stream(&mut rng, src_is_client);
            let limits = PumpLimits {
                max_message_size: [100, 300, 1 << 20, 1 << 20][rng.gen_range(0..4)],
                max_frame_size: [50, 200, 1 << 20, 1 << 20][rng.gen_range(0..4)],
                keepalive: None,
                permessage_deflate: rng.gen(),
            };
            let batch_limit = [64, 700, 1 << 16, 1 << 16][rng.gen_range(0..4)];
            let in_message = rng.gen_ratio(1, 10);
            let shutting_down = rng.gen_ratio(1, 10);
            let pongs_owed = rng.gen_range(0..3);
            let progress = || Progress {
                received: 0,
                in_message,
                shutting_down,
                pongs_owed,
                message_len: 10,
                text: None,
                piecewise: Piecewise::default(),
            };
            let mut outcomes = Vec::new();
            for plain in [true, false] {
                let progress = progress();
                let run = run_frames(
                    input.clone(),
                    plain,
                    src_is_client,
                    &limits,
                    batch_limit,
                    progress,
                );
                outcomes.push(run.await?);
            }
            let (fast, slow) = (&outcomes[0], &outcomes[1]);
            assert_eq!(fast, slow, "case {case}: input {input:02x?}");
            plain_frames += fast.3;
            compressed += fast.2.iter().filter(|f| f.2).count();
        }
        // The streams really were mostly forwarded, not refused at their first frame.
        assert!(plain_frames > 5000, "only {plain_frames} frames forwarded");
        assert!(
            compressed > 200,
            "only {compressed} compressed frames forwarded"
        );
        Ok(())
    }

    #[test]
    fn close_payloads_are_checked() {
        let ok: &[u8] = &[0x0f, 0xa1, b'b', b'y', b'e'];
        assert_eq!(check_close(ok), Ok(Some(4001)));
        assert_eq!(check_close(&[]), Ok(None));
        assert_eq!(check_close(&[3]), Err(1002));
        // 1005 must never appear on the wire.
        assert_eq!(check_close(&[0x03, 0xed]), Err(1002));
        assert_eq!(check_close(&[0x03, 0xe8, 0xff]), Err(1007));
        // 1014 (bad gateway) is registered and passes.
        assert_eq!(check_close(&[0x03, 0xf6]), Ok(Some(1014)));
    }
}
