//! Frame writing with batching: frames are encoded straight into one buffer per side and
//! reach the socket (and the TLS layer) in one write per burst, instead of one syscall and
//! one TLS record per frame.
//!
//! The forwarder flushes when its reader has no further frame ready. Past `limit`
//! buffered bytes a write drains first, which bounds memory per direction and makes a
//! slow reader slow down the writer feeding it (backpressure).

use std::io;
use std::pin::Pin;

use fastwebsockets::{Frame, Role};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Largest frame head: 2 + 8 length bytes + 4 mask bytes.
const MAX_HEAD: usize = 14;

/// Writes WebSocket frames for one role into a batch buffer over `inner`.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    /// Encoded frames not yet written to `inner`.
    buf: Vec<u8>,
    /// Client role masks every frame with a fresh key; server role never masks.
    mask: bool,
    /// Drain before buffering past this many bytes; frames this large bypass the buffer.
    limit: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer for `role` buffering up to about `limit` bytes.
    pub fn new(inner: W, role: Role, limit: usize) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            mask: role == Role::Client,
            limit,
        }
    }

    /// Bytes waiting to be written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Encodes `frame` into the batch (masking it in place for the client role); drains
    /// the batch first if it would grow past the limit.
    pub async fn write_frame(&mut self, mut frame: Frame<'_>) -> io::Result<()> {
        if self.mask {
            frame.mask();
        }
        let mut head = [0u8; MAX_HEAD];
        let head_len = frame.fmt_head(&mut head);
        let total = head_len + frame.payload.len();
        if self.buf.len() + total > self.limit {
            self.drain().await?;
            if total >= self.limit {
                self.inner.write_all(&head[..head_len]).await?;
                return self.inner.write_all(&frame.payload).await;
            }
        }
        self.buf.extend_from_slice(&head[..head_len]);
        self.buf.extend_from_slice(&frame.payload);
        Ok(())
    }

    /// Writes the batch out and flushes the stream below.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.drain().await?;
        self.inner.flush().await
    }

    /// Flushes, then shuts the stream's write side (TLS close_notify, TCP FIN).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.drain().await?;
        self.inner.shutdown().await
    }

    async fn drain(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        Pin::new(&mut self.inner).write_all(&self.buf).await?;
        self.buf.clear();
        // An idle session should not keep a burst-sized buffer.
        if self.buf.capacity() > 2 * self.limit {
            self.buf = Vec::new();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::{OpCode, Payload};
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn frames_wait_for_flush_and_keep_order() -> io::Result<()> {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a, Role::Server, 1024);
        w.write_frame(Frame::text(Payload::Borrowed(b"one")))
            .await?;
        w.write_frame(Frame::binary(Payload::Borrowed(b"two")))
            .await?;
        assert_eq!(w.buffered(), 10);
        w.flush().await?;
        assert_eq!(w.buffered(), 0);
        let mut out = [0u8; 10];
        b.read_exact(&mut out).await?;
        assert_eq!(
            &out,
            &[0x81, 3, b'o', b'n', b'e', 0x82, 3, b't', b'w', b'o']
        );
        Ok(())
    }

    #[tokio::test]
    async fn client_role_masks_with_a_fresh_key_and_large_frames_bypass() -> io::Result<()> {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = FrameWriter::new(a, Role::Client, 16);
        w.write_frame(Frame::new(
            true,
            OpCode::Binary,
            None,
            Payload::Owned(vec![0u8; 100]),
        ))
        .await?;
        assert_eq!(w.buffered(), 0, "a frame past the limit is written through");
        w.flush().await?;
        let mut out = vec![0u8; 2 + 4 + 100];
        b.read_exact(&mut out).await?;
        assert_eq!(out[1], 0x80 | 100, "masked, length 100");
        let key = [out[2], out[3], out[4], out[5]];
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ key[i % 4])
            .collect();
        assert!(unmasked.iter().all(|x| *x == 0));
        assert!(out[6..].iter().any(|x| *x != 0), "payload went out masked");
        Ok(())
    }
}
