//! A write buffer that turns many small frame writes into one socket write.
//!
//! fastwebsockets writes each frame straight to its stream and never flushes; over a
//! bare socket that is one `write` syscall per frame. Under load the session writes
//! echoes into this buffer and flushes only when the reader has nothing more ready
//! (see `session`), which measured several times faster for small messages.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

/// Once this much is buffered, it is written out before more is accepted, and a single
/// write at least this large bypasses the buffer (no point copying a 1 MiB payload).
pub const DEFAULT_BATCH_LIMIT: usize = 64 * 1024;

/// Keep the buffer's allocation after a write-out only up to this size, so idle sessions
/// do not each hold a batch-sized buffer.
const RETAIN_CAPACITY: usize = 8 * 1024;

/// An [`AsyncWrite`] that collects writes in memory and passes them to `inner` on flush,
/// when `limit` would be exceeded, or directly when a single write is that large.
///
/// Unlike `tokio::io::BufWriter` the buffer grows on demand and is released after
/// large batches, so an idle session costs (almost) nothing.
#[derive(Debug)]
pub struct BatchWriter<W> {
    /// Where the bytes finally go (the socket's write half).
    inner: W,
    /// Bytes accepted but not yet written to `inner`.
    buf: Vec<u8>,
    /// How much of `buf` has already been written (a write-out may stop half-way).
    written: usize,
    /// Write-out threshold; see [`DEFAULT_BATCH_LIMIT`].
    limit: usize,
}

impl<W: AsyncWrite + Unpin> BatchWriter<W> {
    /// Wraps `inner` with the [`DEFAULT_BATCH_LIMIT`].
    pub fn new(inner: W) -> Self {
        Self::with_limit(inner, DEFAULT_BATCH_LIMIT)
    }

    /// Wraps `inner`, writing out whenever `limit` bytes would be exceeded.
    pub fn with_limit(inner: W, limit: usize) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            limit: limit.max(1),
        }
    }

    /// Bytes accepted but not yet handed to the inner writer.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Writes the whole buffer to `inner` (without flushing `inner`).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.written = 0;
        if self.buf.capacity() > RETAIN_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for `incoming` bytes: writes the buffer out if they would push it past
    /// the limit. Ready(true) means "write them straight to `inner`" (they alone reach
    /// the limit).
    fn poll_make_room(&mut self, cx: &mut Context<'_>, incoming: usize) -> Poll<io::Result<bool>> {
        if self.buf.len() + incoming > self.limit && self.buffered() > 0 {
            ready!(self.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(incoming >= self.limit))
    }
}

/// Maps a zero-length write of non-empty input to an error, so callers' write loops
/// cannot spin.
fn non_zero(n: usize, wanted: usize) -> io::Result<usize> {
    if n == 0 && wanted > 0 {
        Err(io::ErrorKind::WriteZero.into())
    } else {
        Ok(n)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for BatchWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if ready!(this.poll_make_room(cx, data.len()))? {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
            return Poll::Ready(non_zero(n, data.len()));
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if ready!(this.poll_make_room(cx, total))? {
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
            return Poll::Ready(non_zero(n, total));
        }
        this.buf.reserve(total);
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Records every write call it receives.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_writes_become_one_write_on_flush() -> io::Result<()> {
        let mut w = BatchWriter::with_limit(Recorder::default(), 16);
        w.write_all(b"abc").await?;
        let n = w
            .write_vectored(&[IoSlice::new(b"de"), IoSlice::new(b"f")])
            .await?;
        assert_eq!(n, 3, "a vectored write is taken whole");
        assert!(w.inner.writes.is_empty());
        assert_eq!(w.buffered(), 6);
        w.flush().await?;
        assert_eq!(w.inner.writes, [b"abcdef".to_vec()]);
        assert_eq!(w.buffered(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn limit_writes_out_first_and_large_writes_bypass() -> io::Result<()> {
        let mut w = BatchWriter::with_limit(Recorder::default(), 8);
        w.write_all(b"12345").await?;
        w.write_all(b"6789").await?; // 9 > 8: "12345" goes out first
        assert_eq!(w.inner.writes, [b"12345".to_vec()]);
        w.write_all(b"0123456789").await?; // >= limit: "6789" out, then direct
        assert_eq!(
            w.inner.writes,
            [b"12345".to_vec(), b"6789".to_vec(), b"0123456789".to_vec()]
        );
        assert_eq!(w.buffered(), 0);
        Ok(())
    }
}
