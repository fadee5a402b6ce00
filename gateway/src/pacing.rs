//! Writes that keep a slow reader's socket queue at its cap, not beyond it.
//!
//! A socket whose unsent queue is at its cap ([`crate::tcp_opts::NOTSENT_LOWAT`]) wakes a
//! blocked writer once half of that has drained, and then takes a whole write on top:
//! with writes of a batch (64 KiB and more) the next wake came only after the batch had
//! drained too, and a reader of 32 KB/s saw one of the gateway's writes every 4 s. The
//! idle rule takes a write to a side that was behind as that side's sign of life, so it
//! closed that reader as idle while it read on. After a write had to wait, writes go in
//! [`PACED_WRITE`] pieces, which stop at the cap, so that a write goes through for every
//! half-cap the reader frees, until the socket takes more in a row than a wake leaves
//! room for ([`ROOM_AFTER_WAKE`]): the reader keeps up again.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

/// The most one write hands a socket that has been full: one TLS record's worth.
pub const PACED_WRITE: usize = 16 * 1024;

/// Bytes a socket takes in a row, without waiting, once its reader keeps up again: more
/// than the whole unsent cap (a wake leaves room for half of it, and a little more by the
/// time the writer runs: ~98 KB measured at 32 KB/s).
pub const ROOM_AFTER_WAKE: usize = crate::tcp_opts::NOTSENT_LOWAT as usize + PACED_WRITE;

/// Whether a writer's destination has been full, and what it took since.
#[derive(Debug)]
pub struct Pacer {
    /// Bytes taken in a row since the last wait (counted up to just past
    /// [`ROOM_AFTER_WAKE`]). Small fields: every idle session holds three pacers.
    taken: u32,
    /// The most one write hands the destination while paced.
    piece: u16,
    /// A write had to wait, and the socket has not shown room since.
    full: bool,
}

impl Default for Pacer {
    /// Pieces of [`PACED_WRITE`]: for a writer of frames.
    fn default() -> Self {
        Self::with_piece(PACED_WRITE)
    }
}

impl Pacer {
    /// Pieces of `piece` bytes: a TLS stream's are one record's ciphertext, so that a
    /// record of a frame writer's paced write goes out whole, in one write.
    pub fn with_piece(piece: usize) -> Self {
        Self {
            taken: 0,
            piece: u16::try_from(piece).unwrap_or(u16::MAX),
            full: false,
        }
    }

    /// Writes as much of `buf` as `w` takes now: all of it at once while the destination
    /// keeps up, a piece of at most [`PACED_WRITE`] after it fell behind.
    pub fn poll_write<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.full {
            let written = Pin::new(w).poll_write(cx, buf);
            if written.is_pending() {
                self.full = true;
                self.taken = 0;
            }
            return written;
        }
        let piece = &buf[..buf.len().min(usize::from(self.piece))];
        let written = Pin::new(w).poll_write(cx, piece);
        if written.is_pending() {
            self.taken = 0;
            return Poll::Pending;
        }
        let n = ready!(written)?;
        let taken = (self.taken as usize).saturating_add(n);
        self.taken = u32::try_from(taken).unwrap_or(u32::MAX);
        if taken > ROOM_AFTER_WAKE {
            self.full = false;
        }
        Poll::Ready(Ok(n))
    }

    /// Whether writes currently go in pieces.
    pub fn is_paced(&self) -> bool {
        self.full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination that takes at most `room` bytes, then waits until given more.
    struct Limited {
        room: usize,
        writes: Vec<usize>,
    }

    impl AsyncWrite for Limited {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.room == 0 {
                return Poll::Pending;
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.writes.push(n);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes `buf` until the destination waits; returns the bytes taken.
    fn write_until_pending(p: &mut Pacer, w: &mut Limited, buf: &[u8]) -> usize {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut at = 0;
        while at < buf.len() {
            match p.poll_write(w, &mut cx, &buf[at..]) {
                Poll::Ready(Ok(n)) => at += n,
                _ => break,
            }
        }
        at
    }

    #[test]
    fn a_destination_that_fell_behind_gets_pieces_until_it_has_room_again() {
        let buf = vec![0u8; 256 * 1024];
        let mut p = Pacer::default();
        let mut w = Limited {
            room: 100_000,
            writes: Vec::new(),
        };
        // Keeping up: one write takes what there is room for.
        assert_eq!(write_until_pending(&mut p, &mut w, &buf), 100_000);
        assert_eq!(w.writes, [100_000]);
        assert!(p.is_paced(), "a write waited: the next ones go in pieces");
        for _ in 0..3 {
            // A wake: the reader has freed half the cap and a little more (~98 KB seen
            // at 32 KB/s). It is filled piece by piece, and the writes stay paced.
            w.room = 100_000;
            w.writes.clear();
            write_until_pending(&mut p, &mut w, &buf);
            assert_eq!(w.writes[..6], [PACED_WRITE; 6]);
            assert_eq!(w.writes[6..], [100_000 - 6 * PACED_WRITE]);
            assert!(p.is_paced());
        }
        // More room than the whole cap: the reader keeps up again, writes are whole.
        w.room = 1 << 20;
        w.writes.clear();
        write_until_pending(&mut p, &mut w, &buf);
        assert_eq!(w.writes[..10], [PACED_WRITE; 10]);
        assert_eq!(w.writes[10..], [256 * 1024 - 10 * PACED_WRITE]);
        assert!(!p.is_paced());
    }

    #[test]
    fn a_tls_streams_pieces_hold_a_whole_record() {
        // A frame writer's paced write of 16 KiB is one record of 16,406 bytes (TLS 1.3):
        // in pieces of 16 KiB it went out as 16,384 + 22, two writes for every record.
        let record = vec![0u8; PACED_WRITE + 22];
        let mut p = Pacer::with_piece(PACED_WRITE + crate::records::RECORD_OVERHEAD);
        let mut w = Limited {
            room: 0,
            writes: Vec::new(),
        };
        write_until_pending(&mut p, &mut w, &record);
        assert!(p.is_paced());
        w.room = 64 * 1024;
        write_until_pending(&mut p, &mut w, &record);
        assert_eq!(w.writes, [record.len()]);
    }
}
