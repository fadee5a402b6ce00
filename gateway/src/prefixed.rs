//! A stream that first yields bytes already read past a handshake, then reads on.
//!
//! A client handshake (see [`crate::wsclient`]) may read beyond the end of the HTTP head:
//! a server is free to send its first WebSocket frames in the same packet. Those bytes
//! must reach the frame reader before anything else. The load generator's client uses
//! this; the gateway's own sessions hand leftovers to [`crate::reader::FrameReader`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads `prefix` first, then `inner`; writes go straight to `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    /// Bytes read ahead during the handshake; empty (and unallocated) once drained.
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Wraps `inner` so that `prefix` is read before it.
    ///
    /// An empty `prefix` is dropped at once: it may be a view into a handshake buffer
    /// (hyper's is 8 KiB) that would otherwise stay allocated for the session's life.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        let prefix = if prefix.is_empty() {
            Bytes::new()
        } else {
            prefix
        };
        Self { prefix, inner }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn prefix_is_read_before_the_stream() -> io::Result<()> {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"world").await?;
        drop(a);
        let mut s = Prefixed::new(Bytes::from_static(b"hello "), b);
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        assert_eq!(out, "hello world");
        Ok(())
    }
}
