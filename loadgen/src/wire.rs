//! Load-mode wire format: the test message payload, and client-side frame encoding and
//! decoding straight into and out of reusable buffers (no allocation per message).
//!
//! Payload layout (little-endian): connection id `u32`, sequence number `u64`, send
//! timestamp `u64` (ns since the run's start; the *intended* time in open loop), then a
//! padding pattern derived from the sequence number up to the message size, so that any
//! corrupted byte is noticed.

/// Bytes of the payload header: connection id, sequence number, timestamp.
pub const HEADER_LEN: usize = 4 + 8 + 8;

/// Frame opcodes (RFC 6455 §5.2), the gateway's own.
pub mod opcode {
    pub use gateway::frames::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};
}

/// What a test message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Connection that sent it.
    pub conn: u32,
    /// Its sequence number on that connection, from 0.
    pub seq: u64,
    /// Send (or intended send) time, ns since the run's start.
    pub ts_ns: u64,
}

/// Writes a test message of `payload.len()` bytes (at least [`HEADER_LEN`]).
pub fn fill_payload(payload: &mut [u8], stamp: Stamp) {
    payload[0..4].copy_from_slice(&stamp.conn.to_le_bytes());
    payload[4..12].copy_from_slice(&stamp.seq.to_le_bytes());
    payload[12..20].copy_from_slice(&stamp.ts_ns.to_le_bytes());
    let s = stamp.seq as u8;
    for (i, b) in payload[HEADER_LEN..].iter_mut().enumerate() {
        *b = pad_byte(s, i);
    }
}

#[inline]
fn pad_byte(seq_low: u8, i: usize) -> u8 {
    seq_low.wrapping_add(i as u8).wrapping_mul(0x9D)
}

/// The result of reading an echoed payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Intact message.
    Intact(Stamp),
    /// The header reads, but the length or padding is wrong.
    Damaged(Stamp),
    /// Too short to hold a header.
    Unreadable,
}

/// Reads an echoed test message, expected to be `size` bytes long.
pub fn read_payload(payload: &[u8], size: usize) -> Echo {
    if payload.len() < HEADER_LEN {
        return Echo::Unreadable;
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut c = [0u8; 4];
    c.copy_from_slice(&payload[0..4]);
    let stamp = Stamp {
        conn: u32::from_le_bytes(c),
        seq: u64_at(4),
        ts_ns: u64_at(12),
    };
    let s = stamp.seq as u8;
    let pad_ok = payload[HEADER_LEN..]
        .iter()
        .enumerate()
        .fold(true, |ok, (i, b)| ok & (*b == pad_byte(s, i)));
    if payload.len() == size && pad_ok {
        Echo::Intact(stamp)
    } else {
        Echo::Damaged(stamp)
    }
}

/// A cheap generator of frame masking keys (xorshift64*), seeded per connection.
#[derive(Debug, Clone)]
pub struct MaskGen(u64);

impl MaskGen {
    /// A generator seeded from the system's randomness.
    pub fn new() -> Self {
        Self(rand::random::<u64>() | 1)
    }

    /// The next masking key.
    pub fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32).to_le_bytes()
    }
}

impl Default for MaskGen {
    fn default() -> Self {
        Self::new()
    }
}

/// Appends a frame head for a masked client frame of `len` payload bytes.
fn put_head(out: &mut Vec<u8>, opcode: u8, len: usize, mask: [u8; 4]) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
}

/// Appends a masked binary frame carrying a `size`-byte test message.
pub fn put_message(out: &mut Vec<u8>, size: usize, stamp: Stamp, mask: [u8; 4]) {
    put_head(out, opcode::BINARY, size, mask);
    let at = out.len();
    out.resize(at + size, 0);
    fill_payload(&mut out[at..], stamp);
    fastwebsockets::unmask(&mut out[at..], mask);
}

/// Appends a masked control frame (pong or close) with `payload` (at most 125 bytes).
pub fn put_control(out: &mut Vec<u8>, op: u8, payload: &[u8], mask: [u8; 4]) {
    let payload = &payload[..payload.len().min(125)];
    put_head(out, op, payload.len(), mask);
    let at = out.len();
    out.extend_from_slice(payload);
    fastwebsockets::unmask(&mut out[at..], mask);
}

/// A frame head read from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Final fragment of its message.
    pub fin: bool,
    /// One of [`opcode`].
    pub opcode: u8,
    /// Bytes of the head, mask included.
    pub head_len: usize,
    /// Bytes of the payload.
    pub payload_len: usize,
    /// Masking key (servers must not mask, but it is undone if they do).
    pub mask: Option<[u8; 4]>,
}

/// A frame the load generator cannot accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV bits set (no extension was negotiated).
    #[error("reserved bits set")]
    Reserved,
    /// Unknown opcode.
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    /// A control frame fragmented or over 125 bytes.
    #[error("bad control frame")]
    Control,
    /// Payload longer than the limit.
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(u64),
}

/// Parses the frame head at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_head(buf: &[u8], max_payload: usize) -> Result<Option<Head>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let fin = b0 & 0x80 != 0;
    let op = b0 & 0x0F;
    let control = match op {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => false,
        opcode::CLOSE | opcode::PING | opcode::PONG => true,
        other => return Err(FrameError::Opcode(other)),
    };
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        l => (u64::from(l), 2),
    };
    if control && (!fin || len > 125) {
        return Err(FrameError::Control);
    }
    let payload_len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= max_payload)
        .ok_or(FrameError::TooLarge(len))?;
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(Head {
        fin,
        opcode: op,
        head_len: at,
        payload_len,
        mask,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmasked_payload(frame: &[u8]) -> Option<(Head, Vec<u8>)> {
        let head = parse_head(frame, 1 << 20).ok()??;
        let mut p = frame[head.head_len..head.head_len + head.payload_len].to_vec();
        if let Some(m) = head.mask {
            fastwebsockets::unmask(&mut p, m);
        }
        Some((head, p))
    }

    #[test]
    fn message_round_trips_through_the_frame_codec() {
        for size in [HEADER_LEN, 125, 126, 1000, 65_535, 65_536, 100_000] {
            let mut out = Vec::new();
            let stamp = Stamp {
                conn: 7,
                seq: 300,
                ts_ns: 123_456_789,
            };
            put_message(&mut out, size, stamp, MaskGen::new().next_key());
            let (head, payload) = unmasked_payload(&out).expect("complete frame");
            assert_eq!(head.opcode, opcode::BINARY);
            assert!(head.fin);
            assert_eq!(head.head_len + head.payload_len, out.len());
            assert_eq!(
                read_payload(&payload, size),
                Echo::Intact(stamp),
                "size {size}"
            );
        }
    }

    #[test]
    fn any_flipped_byte_is_noticed() {
        let stamp = Stamp {
            conn: 1,
            seq: 2,
            ts_ns: 3,
        };
        let mut p = vec![0u8; 64];
        fill_payload(&mut p, stamp);
        for i in HEADER_LEN..64 {
            let mut q = p.clone();
            q[i] ^= 0x01;
            assert_eq!(read_payload(&q, 64), Echo::Damaged(stamp));
        }
        assert_eq!(read_payload(&p[..63], 64), Echo::Damaged(stamp));
        assert_eq!(read_payload(&p[..10], 64), Echo::Unreadable);
    }

    #[test]
    fn partial_heads_ask_for_more_bytes() {
        let mut out = Vec::new();
        put_message(
            &mut out,
            70_000,
            Stamp {
                conn: 0,
                seq: 0,
                ts_ns: 0,
            },
            [1, 2, 3, 4],
        );
        for cut in 0..14 {
            assert_eq!(parse_head(&out[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
        assert!(parse_head(&out, 1000).is_err());
    }

    #[test]
    fn control_frames_are_checked() {
        assert_eq!(
            parse_head(&[0x09, 0x7E, 0, 200], 1 << 20),
            Err(FrameError::Control)
        );
        assert_eq!(parse_head(&[0x0A, 0x00], 1 << 20), Err(FrameError::Control));
        assert_eq!(
            parse_head(&[0x83, 0x00], 1 << 20),
            Err(FrameError::Opcode(3))
        );
        assert_eq!(
            parse_head(&[0xC2, 0x00], 1 << 20),
            Err(FrameError::Reserved)
        );
        let mut out = Vec::new();
        put_control(
            &mut out,
            opcode::CLOSE,
            &1000u16.to_be_bytes(),
            [9, 9, 9, 9],
        );
        let (head, p) = unmasked_payload(&out).expect("complete frame");
        assert_eq!(head.opcode, opcode::CLOSE);
        assert_eq!(p, 1000u16.to_be_bytes());
    }
}
