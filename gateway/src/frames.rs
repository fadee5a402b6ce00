//! WebSocket frame heads (RFC 6455 §5.2): parsed from a byte slice without consuming it,
//! and encoded for frames the gateway writes.
//!
//! Parsing never needs more than the bytes at hand: an incomplete frame costs nothing but
//! waiting for more, which is what lets a session hold no read buffer while idle.

/// Continuation frame.
pub const CONTINUATION: u8 = 0x0;
/// Text frame.
pub const TEXT: u8 = 0x1;
/// Binary frame.
pub const BINARY: u8 = 0x2;
/// Close frame.
pub const CLOSE: u8 = 0x8;
/// Ping frame.
pub const PING: u8 = 0x9;
/// Pong frame.
pub const PONG: u8 = 0xA;

/// Largest frame head: 2 + 8 length bytes + 4 mask bytes.
pub const MAX_HEAD: usize = 14;

/// A parsed frame head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Final fragment of its message.
    pub fin: bool,
    /// RSV1: the message this frame starts is compressed (`permessage-deflate`).
    pub rsv1: bool,
    /// One of the opcode constants.
    pub opcode: u8,
    /// The sender's masking key, if masked.
    pub mask: Option<[u8; 4]>,
    /// Bytes of head before the payload.
    pub head_len: usize,
    /// Payload bytes.
    pub payload_len: usize,
}

impl Head {
    /// Head plus payload.
    pub fn frame_len(&self) -> usize {
        self.head_len + self.payload_len
    }

    /// Whether this is a control frame (close, ping, pong).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// Whether this frame starts a text message whose bytes are text to check for UTF-8:
    /// a compressed one's (RSV1) are deflate's, which the endpoints inflate and check.
    #[inline]
    pub fn starts_checked_text(&self) -> bool {
        self.opcode == TEXT && !self.rsv1
    }
}

/// What the bytes at hand hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not yet a whole head; or a head whose payload has not fully arrived (`Some`).
    Incomplete(Option<Head>),
    /// A whole frame is available.
    Frame(Head),
    /// The sender broke the protocol; close it with this code.
    Violation(u16),
}

/// Parses the frame at the start of `data`.
///
/// `expect_masked`: frames from clients must be masked, frames from servers must not be.
/// `max_frame`: larger payloads are refused (1009) as soon as the head is seen.
/// `rsv1_ok`: `permessage-deflate` is in force, so the first frame of a message (text or
/// binary) may set RSV1; RSV1 anywhere else, and RSV2 or RSV3 ever, is a violation.
pub fn parse(data: &[u8], expect_masked: bool, max_frame: usize, rsv1_ok: bool) -> Parsed {
    if data.len() < 2 {
        return Parsed::Incomplete(None);
    }
    let (b0, b1) = (data[0], data[1]);
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    let opcode = b0 & 0x0F;
    if b0 & 0x30 != 0 || (rsv1 && !(rsv1_ok && matches!(opcode, TEXT | BINARY))) {
        return Parsed::Violation(1002);
    }
    if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
        return Parsed::Violation(1002);
    }
    let masked = b1 & 0x80 != 0;
    if masked != expect_masked {
        return Parsed::Violation(1002);
    }
    let (len_bytes, short) = match b1 & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(n as usize)),
    };
    let mask_at = 2 + len_bytes;
    let head_len = mask_at + if masked { 4 } else { 0 };
    if data.len() < head_len {
        return Parsed::Incomplete(None);
    }
    let payload_len = match short {
        Some(n) => n,
        None if len_bytes == 2 => u16::from_be_bytes([data[2], data[3]]) as usize,
        None => {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&data[2..10]);
            let n = u64::from_be_bytes(raw);
            if n >> 63 != 0 {
                return Parsed::Violation(1002);
            }
            match usize::try_from(n) {
                Ok(n) => n,
                Err(_) => return Parsed::Violation(1009),
            }
        }
    };
    // A control frame's length is always in the 7-bit field (RFC 6455 section 5.2: the
    // minimal encoding, and 125 bytes at most), whatever the longer field says.
    let control = opcode & 0x8 != 0;
    if control && (!fin || short.is_none() || payload_len > 125) {
        return Parsed::Violation(1002);
    }
    if payload_len > max_frame {
        return Parsed::Violation(1009);
    }
    let mask = if masked {
        // `head_len` covers the key and `data` holds the whole head (checked above), so
        // this always finds it; a slice of known length is cheaper than four indexings.
        match data
            .get(mask_at..head_len)
            .and_then(|key| <[u8; 4]>::try_from(key).ok())
        {
            Some(key) => Some(key),
            None => return Parsed::Incomplete(None),
        }
    } else {
        None
    };
    let head = Head {
        fin,
        rsv1,
        opcode,
        mask,
        head_len,
        payload_len,
    };
    if data.len() - head_len < payload_len {
        Parsed::Incomplete(Some(head))
    } else {
        Parsed::Frame(head)
    }
}

/// The common case of [`parse`], answered with less work: the head of the frame at the
/// start of `data` if it is a plain data frame, that is whole (payload included), final,
/// text or binary, masked exactly when `expect_masked`, with a 7- or 16-bit length and a
/// payload of at most `max_payload` bytes; compressed (RSV1) too when `rsv1_ok`. `None`
/// means "not that": [`parse`] then says what the frame is, incomplete, another kind or a
/// violation.
///
/// Nearly all traffic is such frames; checking the two first bytes against the few
/// values they can have skips the opcode, reserved-bit and control-frame rules.
#[inline]
pub fn parse_plain(
    data: &[u8],
    expect_masked: bool,
    max_payload: usize,
    rsv1_ok: bool,
) -> Option<Head> {
    let [b0, b1, ..] = *data else {
        return None;
    };
    // RSV1 cleared when it is allowed; then: FIN set, no reserved bits, text or binary
    // (0x81, 0x82); masked exactly when expected.
    let rsv1_allowed = if rsv1_ok { 0x40 } else { 0 };
    if (b0 & !rsv1_allowed).wrapping_sub(0x80 | TEXT) > 1 || (b1 >= 0x80) != expect_masked {
        return None;
    }
    let (len_bytes, payload_len) = match (b1 & 0x7F, data) {
        (126, &[_, _, hi, lo, ..]) => (2, usize::from(u16::from_be_bytes([hi, lo]))),
        (126 | 127, _) => return None,
        (n, _) => (0, usize::from(n)),
    };
    let key_at = 2 + len_bytes;
    let head_len = key_at + if expect_masked { 4 } else { 0 };
    if payload_len > max_payload || data.len() < head_len + payload_len {
        return None;
    }
    let mask = match data.get(key_at..head_len) {
        Some(&[k0, k1, k2, k3]) => Some([k0, k1, k2, k3]),
        _ => None,
    };
    Some(Head {
        fin: true,
        rsv1: b0 & 0x40 != 0,
        opcode: b0 & 0x0F,
        mask,
        head_len,
        payload_len,
    })
}

/// Encodes a frame head into `out`; returns its length.
pub fn encode_head(
    out: &mut [u8; MAX_HEAD],
    fin: bool,
    opcode: u8,
    len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= 0xFFFF {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// XORs `data` with `key` (masking and unmasking are the same operation).
///
/// Eight bytes at a time from the start of `data`, wherever it lies in memory: frames
/// sit back to back in a read buffer, so their payloads start at every alignment, and a
/// loop that first aligns (as `fastwebsockets::unmask` does) takes a different number of
/// head bytes from one frame to the next, which costs mispredicted branches per frame.
#[inline]
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = data.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    for (byte, k) in words.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_matches_the_byte_by_byte_rule_at_every_length_and_alignment() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let source: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..8 {
            for len in [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 63, 128, 131, 292] {
                let mut data = source.clone();
                apply_mask(&mut data[start..start + len], key);
                for (i, (&got, &was)) in data.iter().zip(&source).enumerate() {
                    let want = if (start..start + len).contains(&i) {
                        was ^ key[(i - start) % 4]
                    } else {
                        was
                    };
                    assert_eq!(got, want, "start {start}, len {len}, byte {i}");
                }
            }
        }
    }

    #[test]
    fn heads_round_trip_at_every_length_size() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 1 << 20] {
            let mut h = [0u8; MAX_HEAD];
            let n = encode_head(&mut h, true, BINARY, len, Some([1, 2, 3, 4]));
            let mut frame = h[..n].to_vec();
            frame.resize(n + len, 0);
            assert_eq!(
                parse(&frame, true, usize::MAX, false),
                Parsed::Frame(Head {
                    fin: true,
                    rsv1: false,
                    opcode: BINARY,
                    mask: Some([1, 2, 3, 4]),
                    head_len: n,
                    payload_len: len
                })
            );
            assert!(
                matches!(
                    parse(&frame[..frame.len() - 1], true, usize::MAX, false),
                    Parsed::Incomplete(_)
                ) || len == 0
            );
        }
    }

    #[test]
    fn parse_plain_is_parse_for_whole_final_data_frames_and_declines_the_rest() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9a75e);
        let mut plain = 0;
        for _ in 0..20_000 {
            let masked: bool = rng.gen();
            let rsv1_ok: bool = rng.gen();
            let max = [0, 100, 200, 70_000][rng.gen_range(0..4)];
            // Heads biased towards the interesting values, then anything.
            let b0 = [
                0x81,
                0x82,
                0x01,
                0x80,
                0x88,
                0x89,
                0xC2,
                0xC1,
                0x41,
                0xC9,
                0xA2,
                0x83,
                rng.gen(),
            ][rng.gen_range(0..13)];
            let len = [0, 5, 125, 126, 300, 65_535, 70_000, max, max + 1][rng.gen_range(0..9)];
            let mut h = [0u8; MAX_HEAD];
            let n = encode_head(&mut h, true, 0, len, masked.then_some([1, 2, 3, 4]));
            h[0] = b0;
            if rng.gen_ratio(1, 8) {
                h[1] ^= 0x80; // the wrong masking for this direction
            }
            let mut frame = h[..n].to_vec();
            frame.resize(n + len, 7);
            let cut = if rng.gen() {
                frame.len()
            } else {
                rng.gen_range(0..=frame.len())
            };
            let data = &frame[..cut];
            let whole = parse(data, masked, max, rsv1_ok);
            match parse_plain(data, masked, max, rsv1_ok) {
                Some(head) => {
                    plain += 1;
                    assert_eq!(whole, Parsed::Frame(head), "{data:02x?}");
                    assert!(head.fin && matches!(head.opcode, TEXT | BINARY));
                    assert!(rsv1_ok || !head.rsv1);
                }
                None => assert!(
                    !matches!(whole, Parsed::Frame(h) if h.fin
                        && matches!(h.opcode, TEXT | BINARY)
                        && h.payload_len <= 65_535),
                    "declined a plain frame: {data:02x?}"
                ),
            }
        }
        assert!(plain > 500, "only {plain} plain frames generated");
    }

    #[test]
    fn protocol_violations_are_named() {
        assert_eq!(
            parse(&[0x82, 0x00], true, 10, false),
            Parsed::Violation(1002),
            "unmasked from a client"
        );
        assert_eq!(
            parse(&[0x82, 0x80, 0, 0, 0, 0], false, 10, false),
            Parsed::Violation(1002),
            "masked from a server"
        );
        assert_eq!(
            parse(&[0xC2, 0x00], false, 10, false),
            Parsed::Violation(1002),
            "RSV1 without an extension"
        );
        assert!(
            matches!(parse(&[0xC2, 0x00], false, 10, true), Parsed::Frame(h) if h.rsv1),
            "RSV1 on a binary frame with permessage-deflate"
        );
        assert!(
            matches!(parse(&[0x41, 0x00], false, 10, true), Parsed::Frame(h) if h.rsv1 && !h.fin),
            "RSV1 on a message's first fragment"
        );
        for (frame, what) in [
            ([0xC0, 0x00], "RSV1 on a continuation"),
            ([0xC9, 0x00], "RSV1 on a ping"),
            ([0xC8, 0x00], "RSV1 on a close"),
            ([0xA2, 0x00], "RSV2"),
            ([0x92, 0x00], "RSV3"),
        ] {
            assert_eq!(
                parse(&frame, false, 10, true),
                Parsed::Violation(1002),
                "{what}"
            );
        }
        assert_eq!(
            parse(&[0x83, 0x00], false, 10, false),
            Parsed::Violation(1002),
            "reserved opcode"
        );
        assert_eq!(
            parse(&[0x09, 0x00], false, 10, false),
            Parsed::Violation(1002),
            "fragmented ping"
        );
        assert_eq!(
            parse(&[0x89, 126, 0, 200], false, 1000, false),
            Parsed::Violation(1002),
            "ping over 125"
        );
        // Five bytes, but in the 16- or 64-bit field: not the minimal encoding a control
        // frame must have, which a strict receiver (Node's ws) would fail on.
        let mut long = vec![0x89, 127];
        long.extend_from_slice(&5u64.to_be_bytes());
        long.extend_from_slice(&[1, 2, 3, 4, 5]);
        for (frame, what) in [
            (
                vec![0x8A, 126, 0, 5, 1, 2, 3, 4, 5],
                "pong with a 16-bit length",
            ),
            (long, "ping with a 64-bit length"),
        ] {
            assert_eq!(
                parse(&frame, false, 1000, false),
                Parsed::Violation(1002),
                "{what}"
            );
        }
        assert_eq!(
            parse(&[0x82, 11], false, 10, false),
            Parsed::Violation(1009),
            "over the frame limit"
        );
        assert_eq!(parse(&[0x82], false, 10, false), Parsed::Incomplete(None));
    }
}
