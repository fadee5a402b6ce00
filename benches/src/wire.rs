//! Pre-encoded WebSocket frames: the bench peers send a batch with one `write_all` and
//! count the bytes that come back, so they cost a memcpy, not a WebSocket codec.
//!
//! The gateway forwards a frame with the same header shape it arrived with (masked
//! toward the backend, unmasked toward the client), so a batch leaves the gateway exactly
//! as long as it entered; the receiving peer only needs to count bytes.

use fastwebsockets::{Frame, OpCode, Payload};

/// The mask key the bench client uses (any key will do; the gateway unmasks and re-masks).
const CLIENT_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Payload bytes aimed at per batch: large enough that per-batch overheads (a flush, a
/// task switch) vanish, small enough that a batch takes about a millisecond.
const BATCH_BYTES: usize = 256 * 1024;

/// A run of identical binary messages, encoded once.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The encoded frames, back to back, as the sending peer puts them on the wire.
    pub wire: Vec<u8>,
    /// Messages in `wire`.
    pub messages: u64,
    /// Payload bytes of each message.
    pub size: usize,
}

impl Batch {
    /// `messages` binary messages of `size` bytes each, masked when `masked` (as a
    /// client must send them).
    pub fn new(size: usize, messages: u64, masked: bool) -> Self {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut frame_buf = Vec::new();
        let mut wire = Vec::new();
        for _ in 0..messages {
            let mask = masked.then_some(CLIENT_MASK);
            let mut frame = Frame::new(true, OpCode::Binary, mask, Payload::Owned(payload.clone()));
            if masked {
                frame.mask();
            }
            wire.extend_from_slice(frame.write(&mut frame_buf));
        }
        Self {
            wire,
            messages,
            size,
        }
    }

    /// A batch of about 256 KiB of payload (at least 4 messages) of `size`-byte messages.
    pub fn sized(size: usize, masked: bool) -> Self {
        let messages = (BATCH_BYTES / size.max(1)).max(4);
        Self::new(size, messages as u64, masked)
    }

    /// Payload bytes in the batch (what `Throughput::Bytes` counts).
    pub fn payload_bytes(&self) -> u64 {
        self.messages * self.size as u64
    }
}

/// One decoded frame: its mask key, if any, and its unmasked payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The mask key the frame carried.
    pub key: Option<[u8; 4]>,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

/// Decodes back-to-back single-frame messages (for checking what the gateway sent).
pub fn decode(mut wire: &[u8]) -> Result<Vec<Decoded>, String> {
    let mut frames = Vec::new();
    while !wire.is_empty() {
        let short = || "truncated frame".to_owned();
        let (b0, b1) = (
            *wire.first().ok_or_else(short)?,
            *wire.get(1).ok_or_else(short)?,
        );
        if b0 != 0x80 | OpCode::Binary as u8 {
            return Err(format!("unexpected first byte {b0:#04x}"));
        }
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 => (usize::from(u16::from_be_bytes(take(wire, 2)?)), 4),
            127 => (u64::from_be_bytes(take(wire, 2)?) as usize, 10),
            n => (usize::from(n), 2),
        };
        let key = if masked {
            let key: [u8; 4] = take(wire, at)?;
            at += 4;
            Some(key)
        } else {
            None
        };
        let body = wire.get(at..at + len).ok_or_else(short)?;
        let payload = match key {
            Some(k) => body.iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect(),
            None => body.to_vec(),
        };
        frames.push(Decoded { key, payload });
        wire = &wire[at + len..];
    }
    Ok(frames)
}

/// `N` bytes of `wire` from `at`.
fn take<const N: usize>(wire: &[u8], at: usize) -> Result<[u8; N], String> {
    wire.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| "truncated frame head".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_through_decode() -> Result<(), String> {
        for (size, masked) in [(32, true), (1024, false), (65536, true), (70000, false)] {
            let batch = Batch::new(size, 3, masked);
            let frames = decode(&batch.wire)?;
            assert_eq!(frames.len(), 3);
            for f in frames {
                assert_eq!(f.key, masked.then_some(CLIENT_MASK));
                assert_eq!(f.payload.len(), size);
                assert!(f.payload.iter().enumerate().all(|(i, b)| *b == i as u8));
            }
        }
        Ok(())
    }

    #[test]
    fn sized_batches_hold_about_256_kib() {
        assert_eq!(Batch::sized(32, true).messages, 8192);
        assert_eq!(Batch::sized(65536, false).messages, 4);
        assert_eq!(Batch::sized(1024, false).payload_bytes(), 256 * 1024);
    }
}
