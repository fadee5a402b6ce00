//! Frame writing with batching: a read's worth of frames reaches the socket (and the TLS
//! layer) in one write, instead of one syscall and one TLS record per frame.
//!
//! Forwarded frames are readied in place in the reader's buffer ([`forward_in_place`])
//! and written from there at once ([`FrameWriter::send_encoded`]); only what the stream
//! does not take without waiting, and frames the gateway writes itself (pings, closes),
//! are copied into the writer's batch buffer. The forwarder flushes when its reader has
//! no further bytes ready, and whenever the batch passes `limit`, which bounds memory per
//! direction and makes a slow reader slow down the writer feeding it (backpressure).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use fastwebsockets::Role;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::frames::{apply_mask, encode_head, Head, MAX_HEAD};
use crate::pacing::Pacer;
pub use crate::utf8::{InvalidUtf8, Utf8Check};

/// Writes WebSocket frames for one role into a batch buffer over `inner`.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    /// Encoded frames not yet written to `inner`.
    buf: Vec<u8>,
    /// Client role masks every frame with a fresh key; server role never masks.
    mask: bool,
    /// Flush once the batch holds this many bytes.
    limit: usize,
    /// Bytes were handed to `inner` without a flush after them.
    unflushed: bool,
    /// A write straight to `inner` failed; reported by the next flush.
    failed: Option<io::Error>,
    /// A frame is being passed on in pieces (see [`FrameWriter::set_mid_frame`]): no other
    /// frame may be written until it is whole.
    mid_frame: bool,
    /// A keepalive ping was asked for while a frame was in the middle: it goes once the
    /// frame is whole.
    ping_owed: bool,
    /// The stream had to be waited for (it was full) since [`FrameWriter::take_waited`].
    waited: bool,
    /// The code of a close of the gateway's own in the batch, not yet flushed.
    close_queued: Option<u16>,
    /// The code of a close of the gateway's own that was flushed to the stream.
    close_sent: Option<u16>,
    /// Writes in pieces to a stream that fell behind (see [`crate::pacing`]).
    pacer: Pacer,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer for `role` batching up to about `limit` bytes.
    pub fn new(inner: W, role: Role, limit: usize) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            mask: role == Role::Client,
            limit,
            unflushed: false,
            failed: None,
            mid_frame: false,
            ping_owed: false,
            waited: false,
            close_queued: None,
            close_sent: None,
            pacer: Pacer::default(),
        }
    }

    /// Marks the start (`true`) or the end of a frame passed on in pieces: its head and the
    /// part of its payload that has arrived are sent, the rest follows as it comes. While it
    /// is in the middle, a control frame cannot be written (it would land inside the
    /// frame): a ping is owed until the end, and a close cannot be sent at all.
    pub fn set_mid_frame(&mut self, mid: bool) {
        self.mid_frame = mid;
    }

    /// Whether a frame is in the middle (see [`FrameWriter::set_mid_frame`]).
    pub fn mid_frame(&self) -> bool {
        self.mid_frame
    }

    /// Notes a ping that must wait for the end of the frame in the middle.
    pub fn owe_ping(&mut self) {
        self.ping_owed = true;
    }

    /// Whether a ping was owed (and is no longer).
    pub fn take_owed_ping(&mut self) -> bool {
        std::mem::take(&mut self.ping_owed)
    }

    /// Bytes waiting to be written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether a flush has anything to do: bytes in the batch, bytes handed to the stream
    /// below without a flush, or a failed write to report.
    pub fn needs_flush(&self) -> bool {
        !self.buf.is_empty() || self.unflushed || self.failed.is_some()
    }

    /// Whether the batch, with `more` bytes about to be appended, is full enough that it
    /// should be flushed before anything else is added.
    pub fn is_full(&self, more: usize) -> bool {
        self.buf.len() + more >= self.limit
    }

    /// Whether this writer masks its frames (client role).
    pub fn masks(&self) -> bool {
        self.mask
    }

    /// Sends frames already encoded the way this writer would send them (see
    /// [`forward_in_place`]). When nothing is waiting before them they go to the stream at
    /// once, straight from the caller's buffer, as far as it takes them without waiting;
    /// only the rest is copied into the batch. A failed write is kept for the next flush.
    pub fn send_encoded(&mut self, cx: &mut Context<'_>, mut frames: &[u8]) {
        if self.buf.is_empty() && self.failed.is_none() {
            while !frames.is_empty() {
                match self.pacer.poll_write(&mut self.inner, cx, frames) {
                    Poll::Ready(Ok(0)) => {
                        self.failed = Some(io::ErrorKind::WriteZero.into());
                        return;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.unflushed = true;
                        frames = &frames[n..];
                    }
                    Poll::Ready(Err(e)) => {
                        self.failed = Some(e);
                        return;
                    }
                    Poll::Pending => {
                        self.waited = true;
                        break;
                    }
                }
            }
        }
        self.buf.extend_from_slice(frames);
    }

    /// Appends one frame to the batch: `payload` as received, masked with `src_mask` if
    /// the sender masked it, RSV1 set if `rsv1` (a compressed message's first frame). The
    /// payload is copied once; unmasking, the UTF-8 check of a text message's frame
    /// (`text`: its message's check) and masking with a fresh key happen in place in the
    /// batch. On invalid UTF-8 nothing is appended.
    pub fn push(
        &mut self,
        fin: bool,
        rsv1: bool,
        opcode: u8,
        payload: &[u8],
        src_mask: Option<[u8; 4]>,
        text: Option<&mut Utf8Check>,
    ) -> Result<(), InvalidUtf8> {
        // One 32-bit draw: `rand::random::<[u8; 4]>()` would draw a 32-bit word per byte.
        let key: Option<[u8; 4]> = self.mask.then(|| rand::random::<u32>().to_ne_bytes());
        let mut head = [0u8; MAX_HEAD];
        let head_len = encode_head(&mut head, fin, opcode, payload.len(), key);
        if rsv1 {
            head[0] |= 0x40;
        }
        let start = self.buf.len();
        self.buf.reserve(MAX_HEAD + payload.len());
        // The whole fixed-size head array, then cut back: a copy of known size is a few
        // moves, where a slice of the head's own length is a call to memcpy.
        self.buf.extend_from_slice(&head);
        self.buf.truncate(start + head_len);
        let body_at = self.buf.len();
        self.buf.extend_from_slice(payload);
        let body = &mut self.buf[body_at..];
        match (src_mask, key, text) {
            // Re-mask in one pass: (x ^ k1) ^ (k1 ^ k2) = x ^ k2.
            (Some(k1), Some(k2), None) => apply_mask(
                body,
                [k1[0] ^ k2[0], k1[1] ^ k2[1], k1[2] ^ k2[2], k1[3] ^ k2[3]],
            ),
            (_, _, text) => {
                if let Some(k1) = src_mask {
                    apply_mask(body, k1);
                }
                if let Some(check) = text {
                    if check.feed(body, fin).is_err() {
                        self.buf.truncate(start);
                        return Err(InvalidUtf8);
                    }
                }
                if let Some(k2) = key {
                    apply_mask(body, k2);
                }
            }
        }
        Ok(())
    }

    /// Writes the batch out and flushes the stream below.
    pub async fn flush(&mut self) -> io::Result<()> {
        while !self.flush_some().await? {}
        Ok(())
    }

    /// Writes as much of the batch as the stream takes, waiting until it takes some, and
    /// once all of it is out flushes the stream below: `true` when done, `false` when some
    /// is left. A pump flushing to a slow reader sees each step of its progress, not only
    /// the end of the batch. Cancelled, it has lost and will repeat nothing.
    pub async fn flush_some(&mut self) -> io::Result<bool> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if !self.buf.is_empty() {
            self.write_some().await?;
            if !self.buf.is_empty() {
                return Ok(false);
            }
        }
        self.unflushed = false;
        let waited = &mut self.waited;
        let inner = &mut self.inner;
        std::future::poll_fn(|cx| {
            let flushed = Pin::new(&mut *inner).poll_flush(cx);
            *waited |= flushed.is_pending();
            flushed
        })
        .await?;
        if let Some(code) = self.close_queued.take() {
            self.close_sent = Some(code);
        }
        Ok(true)
    }

    /// Notes that the frame just pushed is a close of the gateway's own with `code`: it
    /// counts as sent once a flush has taken it to the stream.
    pub fn queued_close(&mut self, code: u16) {
        self.close_queued = Some(code);
    }

    /// The code of the gateway's own close this writer got out, if one did: what
    /// `wsgate_close_frames_sent_total` counts.
    pub fn close_sent(&self) -> Option<u16> {
        self.close_sent
    }

    /// Whether the stream was full at some write or flush since the last call: the
    /// destination is behind, and what it takes from then on is it reading its backlog.
    /// A stream with room shows nothing of the peer: a frozen process's kernel takes its
    /// bytes for megabytes.
    pub fn take_waited(&mut self) -> bool {
        std::mem::take(&mut self.waited)
    }

    /// One write of the batch's start; what it took leaves the batch at once, so that a
    /// write abandoned after it (a flush cancelled) does not send it again.
    async fn write_some(&mut self) -> io::Result<()> {
        let (inner, buf, waited, pacer) = (
            &mut self.inner,
            &self.buf,
            &mut self.waited,
            &mut self.pacer,
        );
        let n = std::future::poll_fn(|cx| {
            let written = pacer.poll_write(&mut *inner, cx, buf);
            *waited |= written.is_pending();
            written
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.unflushed = true;
        self.buf.drain(..n);
        // A burst of large frames should not leave a large buffer behind.
        if self.buf.is_empty() && self.buf.capacity() > 2 * self.limit {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Flushes, then shuts the stream's write side (TLS close_notify, TCP FIN).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.drain().await?;
        self.inner.shutdown().await
    }

    /// Gives the batch buffer's memory back (an idle session keeps none).
    pub fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }

    async fn drain(&mut self) -> io::Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        // Write by write, each taken out of the batch as it goes: `write_all` would forget
        // what it had written if its future were dropped half-way, and the next flush
        // would send those bytes again, in the middle of the stream.
        while !self.buf.is_empty() {
            self.write_some().await?;
        }
        self.unflushed = false;
        Ok(())
    }
}

/// Readies a received frame, in place, to be sent on by a writer that masks exactly when
/// the sender did: a masked frame gets a fresh masking key (head and payload rewritten),
/// and a text message's frame has its payload checked (`text`: its message's check). The
/// frame's length and head size do not change, so a run of such frames can be sent in
/// one piece with [`FrameWriter::send_encoded`]. On invalid UTF-8 the frame is left
/// unusable. `keys` draws the fresh key: the thread's generator, taken once by a caller
/// that readies a run of frames rather than once per frame.
#[inline]
pub fn forward_in_place(
    frame: &mut [u8],
    head: &Head,
    text: Option<&mut Utf8Check>,
    keys: &mut impl rand::RngCore,
) -> Result<(), InvalidUtf8> {
    let (head_bytes, body) = frame.split_at_mut(head.head_len);
    let Some(k1) = head.mask else {
        return match text {
            Some(check) => check.feed(body, head.fin),
            None => Ok(()),
        };
    };
    // One 32-bit draw: sampling `[u8; 4]` would draw a 32-bit word per byte.
    let k2 = keys.next_u32().to_ne_bytes();
    let key_at = head.head_len - 4;
    head_bytes[key_at..].copy_from_slice(&k2);
    match text {
        Some(check) => {
            apply_mask(body, k1);
            check.feed(body, head.fin)?;
            apply_mask(body, k2);
        }
        // Re-mask in one pass: (x ^ k1) ^ (k1 ^ k2) = x ^ k2.
        None => apply_mask(
            body,
            [k1[0] ^ k2[0], k1[1] ^ k2[1], k1[2] ^ k2[2], k1[3] ^ k2[3]],
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{BINARY, TEXT};
    use std::future::Future;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn frames_wait_for_flush_and_keep_order() -> io::Result<()> {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a, Role::Server, 1024);
        assert!(w
            .push(
                true,
                false,
                TEXT,
                b"one",
                None,
                Some(&mut Utf8Check::default())
            )
            .is_ok());
        assert!(w.push(true, false, BINARY, b"two", None, None).is_ok());
        assert!(w.push(true, true, BINARY, b"z", None, None).is_ok());
        assert_eq!(w.buffered(), 13);
        w.flush().await?;
        assert_eq!(w.buffered(), 0);
        let mut out = [0u8; 13];
        b.read_exact(&mut out).await?;
        assert_eq!(
            &out,
            &[0x81, 3, b'o', b'n', b'e', 0x82, 3, b't', b'w', b'o', 0xC2, 1, b'z'],
            "in order, RSV1 kept on the compressed frame"
        );
        Ok(())
    }

    #[tokio::test]
    async fn client_role_remasks_with_a_fresh_key() -> io::Result<()> {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = FrameWriter::new(a, Role::Client, 1 << 16);
        let k1 = [9u8, 8, 7, 6];
        let mut masked = vec![0u8; 100];
        apply_mask(&mut masked, k1);
        assert!(w.push(true, false, BINARY, &masked, Some(k1), None).is_ok());
        w.flush().await?;
        let mut out = vec![0u8; 2 + 4 + 100];
        b.read_exact(&mut out).await?;
        assert_eq!(out[1], 0x80 | 100, "masked, length 100");
        let k2 = [out[2], out[3], out[4], out[5]];
        assert_ne!(k2, k1, "the sender's key must not be reused");
        apply_mask(&mut out[6..], k2);
        assert!(out[6..].iter().all(|x| *x == 0));
        Ok(())
    }

    /// A batch of `frames` binary frames of `size` bytes, frame `i` filled with byte `i`.
    fn numbered(w: &mut FrameWriter<tokio::io::DuplexStream>, frames: u8, size: usize) {
        for i in 0..frames {
            assert!(w
                .push(true, false, BINARY, &vec![i; size], None, None)
                .is_ok());
        }
    }

    /// Reads `frames` frames as [`numbered`] wrote them; `false` at the first that differs.
    async fn read_numbered(b: &mut tokio::io::DuplexStream, frames: u8, size: usize) -> bool {
        let mut frame = vec![0u8; 4 + size];
        for i in 0..frames {
            if b.read_exact(&mut frame).await.is_err()
                || frame[..4] != [0x82, 126, (size >> 8) as u8, size as u8]
                || frame[4..].iter().any(|x| *x != i)
            {
                return false;
            }
        }
        true
    }

    #[tokio::test]
    async fn a_flush_given_up_half_way_loses_and_repeats_nothing() -> io::Result<()> {
        // A pump gives up waiting on a flush when its inbox speaks (a ping to send, say),
        // and flushes again after: what the first attempt wrote must not go twice.
        let (a, mut b) = tokio::io::duplex(10_000);
        let mut w = FrameWriter::new(a, Role::Server, 1 << 20);
        numbered(&mut w, 8, 4_000);
        for _ in 0..3 {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let attempt = std::pin::pin!(w.flush());
            assert!(attempt.poll(&mut cx).is_pending(), "the pipe took it all");
        }
        let reader = tokio::spawn(async move { read_numbered(&mut b, 8, 4_000).await });
        // A reader that stopped at a bad frame leaves the flush waiting: bounded.
        let flushed = tokio::time::timeout(std::time::Duration::from_secs(10), w.flush()).await;
        assert!(reader.await.unwrap_or(false), "bytes were lost or repeated");
        assert!(matches!(flushed, Ok(Ok(()))), "{flushed:?}");
        Ok(())
    }

    #[tokio::test]
    async fn flush_some_reports_each_step_of_a_slow_reader() -> io::Result<()> {
        let (a, mut b) = tokio::io::duplex(10_000);
        let mut w = FrameWriter::new(a, Role::Server, 1 << 20);
        numbered(&mut w, 8, 4_000);
        let reader = tokio::spawn(async move { read_numbered(&mut b, 8, 4_000).await });
        let mut steps = 0;
        while !w.flush_some().await? {
            steps += 1;
        }
        assert!(
            steps >= 2,
            "{steps} partial steps for 32 KB through a 10 KB pipe"
        );
        assert!(!w.needs_flush());
        assert!(reader.await.unwrap_or(false), "bytes were lost or repeated");
        Ok(())
    }

    #[test]
    fn invalid_utf8_appends_nothing() {
        let mut w = FrameWriter::new(tokio::io::sink(), Role::Server, 1024);
        assert_eq!(
            w.push(
                true,
                false,
                TEXT,
                &[0xff, 0xfe],
                None,
                Some(&mut Utf8Check::default())
            ),
            Err(InvalidUtf8)
        );
        assert_eq!(w.buffered(), 0);
    }
}
