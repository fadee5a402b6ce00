//! Reading with no buffer held while idle.
//!
//! Bytes are read into a per-thread scratch buffer and handed, in the same poll, to a
//! processor that forwards every whole frame. Only an incomplete frame's bytes (or frames
//! left over when the writer's batch filled) are kept per session. The buffer that holds
//! them is reused while the session is busy (a frame split across reads costs no
//! allocation) and given back by [`FrameReader::release`] once the session idles, so an
//! idle session holds no read buffer at all. Nothing is consumed before it is processed,
//! which also makes a pending read safe to drop.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

/// Size of each worker thread's scratch buffer: the most one read takes.
const SCRATCH_LEN: usize = 64 * 1024;

/// A drained buffer larger than this is freed at once rather than kept for reuse, so one
/// big message does not pin its memory until the session next idles.
const KEEP_LIMIT: usize = 2 * SCRATCH_LEN;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_LEN].into_boxed_slice());
}

/// Why processing stopped before the bytes at hand were used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The writer's batch is full: flush, then go on (the rest is kept).
    Full,
    /// A close frame was forwarded (its code, if any); reading ends.
    Close(Option<u16>),
    /// The sender broke the protocol; close it with this code. Reading ends.
    Violation(u16),
}

/// A stream read frame by frame through a processor.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    /// Bytes received but not yet processed; its allocation is kept for reuse while the
    /// session is busy and freed by `release`.
    pending: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads `inner`, starting with `leftover` (bytes read past a handshake).
    pub fn new(inner: R, leftover: &[u8]) -> Self {
        Self {
            inner,
            pending: BytesMut::from(leftover),
        }
    }

    /// Bytes kept between reads.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Hands available bytes to `process`, which returns how many it used (whole frames)
    /// and whether to stop. It may rewrite the bytes it uses (they are not looked at again);
    /// the rest it must leave as they are, unless it stops the stream (a close or a
    /// violation), after which they are dropped. Ready(Ok(None)): progress was made, call again. End of stream
    /// is an `UnexpectedEof` error.
    pub fn poll_process<F>(
        &mut self,
        cx: &mut Context<'_>,
        process: &mut F,
    ) -> Poll<io::Result<Option<Stop>>>
    where
        F: FnMut(&mut Context<'_>, &mut [u8]) -> (usize, Option<Stop>),
    {
        if !self.pending.is_empty() {
            let (used, stop) = process(cx, &mut self.pending);
            if used > 0 || stop.is_some() {
                self.consume(used, stop);
                return Poll::Ready(Ok(stop));
            }
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut rb = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            if self.pending.is_empty() {
                let (used, stop) = process(cx, &mut scratch[..n]);
                if matches!(stop, None | Some(Stop::Full)) && used < n {
                    self.pending.extend_from_slice(&scratch[used..n]);
                }
                Poll::Ready(Ok(stop))
            } else {
                self.pending.extend_from_slice(&scratch[..n]);
                let (used, stop) = process(cx, &mut self.pending);
                self.consume(used, stop);
                Poll::Ready(Ok(stop))
            }
        })
    }

    fn consume(&mut self, used: usize, stop: Option<Stop>) {
        if matches!(stop, Some(Stop::Close(_) | Stop::Violation(_))) {
            self.pending = BytesMut::new();
            return;
        }
        self.pending.advance(used);
        if self.pending.is_empty() {
            if self.pending.capacity() > KEEP_LIMIT {
                self.pending = BytesMut::new();
            } else {
                // Keeps the allocation: the next partial frame reuses it from the start.
                self.pending.clear();
            }
        }
    }

    /// Frees the buffer if nothing is waiting in it; called when the session idles.
    pub fn release(&mut self) {
        if self.pending.is_empty() {
            self.pending = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A processor that takes 3-byte "frames".
    fn threes(_: &mut Context<'_>, data: &mut [u8]) -> (usize, Option<Stop>) {
        (data.len() / 3 * 3, None)
    }

    #[tokio::test]
    async fn partial_frames_are_kept_and_completed() -> io::Result<()> {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, b"x");
        tokio::io::AsyncWriteExt::write_all(&mut a, b"yzab").await?;
        let got = std::future::poll_fn(|cx| r.poll_process(cx, &mut threes)).await?;
        assert_eq!(got, None);
        assert_eq!(r.pending(), 2, "'ab' waits for its third byte");
        tokio::io::AsyncWriteExt::write_all(&mut a, b"c").await?;
        std::future::poll_fn(|cx| r.poll_process(cx, &mut threes)).await?;
        assert_eq!(r.pending(), 0);
        let kept = r.pending.capacity();
        assert!(kept > 0, "the buffer is kept while the session is busy");
        tokio::io::AsyncWriteExt::write_all(&mut a, b"de").await?;
        std::future::poll_fn(|cx| r.poll_process(cx, &mut threes)).await?;
        assert_eq!(r.pending(), 2);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"f").await?;
        std::future::poll_fn(|cx| r.poll_process(cx, &mut threes)).await?;
        r.release();
        assert_eq!(
            r.pending.capacity(),
            0,
            "no buffer is held once the session idles"
        );
        drop(a);
        let end = std::future::poll_fn(|cx| r.poll_process(cx, &mut threes)).await;
        assert_eq!(
            end.err().map(|e| e.kind()),
            Some(io::ErrorKind::UnexpectedEof)
        );
        Ok(())
    }
}
