//! The frame forwarder: `session::proxy` between an in-memory client and backend whose
//! incoming bytes are the fuzz input, on a current-thread runtime with a paused clock
//! (close timeouts, keepalive and idle closing run in virtual time, at no wall cost).
//!
//! Checked always: nothing panics, and the session ends in bounded (virtual) time — the
//! gateway shutdown signal is sent at a fixed time, so every session must have returned
//! by then plus three close timeouts (the backend's close answer, then the client's when
//! the backend did not answer, then the writers' shutdown) and a second.
//!
//! Input layout (missing bytes read as 0; `seeds.py` writes seeds in this form):
//!
//! | byte | meaning |
//! |---|---|
//! | 0 | flags: 0x01 client EOF after its bytes (else it stays open, silent); 0x02 same for the backend; 0x04 keepalive on (30 s); 0x08 small size limits (bytes 4, 5); 0x10 the client's writer has a byte budget (bytes 8, 9); 0x20 same for the backend's; 0x40 a spent budget stalls the writer (else writes fail); 0x80 shutdown at 1 s (else at 1 h) |
//! | 1 | reads: low 6 bits chunk size (0: all at once), 0x40 `permessage-deflate` in force, high bit `Pending` between chunks |
//! | 2, 3 | how many of the client's / backend's bytes come as handshake leftover |
//! | 4, 5 | with 0x08: max frame size = 4·b4 + 1, max message size = 16·b5 + 1 |
//! | 6, 7 | client byte count, u16 little-endian; the backend gets the rest |
//! | 8, 9 | writer byte budget, u16 little-endian |
//! | 10.. | the client's bytes (frames it sends, masked), then the backend's |
//!
//! Strict checks (`WSGATE_FUZZ_STRICT=all` or a comma list), on what reached each side
//! when its writer never failed: `wire` — output is whole frames, masked toward the
//! backend only, RSV bits clear (but RSV1 on a message's first frame with 0x40 in byte 1),
//! known opcodes; `control` — control frames unfragmented,
//! payload ≤ 125 bytes; `close` — close payloads valid (code allowed, UTF-8 reason),
//! nothing after a close; `fragments` — continuation frames only inside a fragmented
//! message, no new message inside one; `utf8` — whole text messages are UTF-8 (but
//! compressed ones);
//! `preshutdown` — flag 0x80 also means the shutdown was signalled before the session
//! began, and the session must still end.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use gateway::session::{proxy, SessionOptions, Side};
use libfuzzer_sys::fuzz_target;
use tokio::sync::watch;
use wsgate_fuzz::{close_code_ok, strict, wire_frames, ChunkReader, FuzzWriter, WhenSpent};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE: Duration = Duration::from_secs(30);
/// The most a session may take after the shutdown signal: up to three close timeouts in
/// turn (see `session::proxy`), one more for both sides' ends, and a second.
const AFTER_SHUTDOWN: Duration = Duration::from_secs(4 * CLOSE_TIMEOUT.as_secs() + 1);
const HEADER: usize = 10;
/// Output kept per side for the strict checks.
const KEEP: usize = 1 << 20;

fn check_output(side: &str, out: &[u8], masked: bool, deflate: bool) {
    let frames = match wire_frames(out) {
        Ok(f) => f,
        Err(e) => {
            if strict("wire") {
                panic!("to {side}: {e}");
            }
            return;
        }
    };
    let mut in_message: Option<u8> = None;
    let mut text = Vec::new();
    // The message being received is compressed (its first frame had RSV1).
    let mut compressed = false;
    let mut closed = false;
    for (i, f) in frames.iter().enumerate() {
        if strict("wire") {
            assert_eq!(f.masked, masked, "to {side}: frame {i} mask bit wrong");
            let rsv1_ok = deflate && f.rsv == 0b100 && matches!(f.opcode, 1 | 2);
            assert!(
                f.rsv == 0 || rsv1_ok,
                "to {side}: frame {i} has RSV bits {:03b}",
                f.rsv
            );
            assert!(
                matches!(f.opcode, 0 | 1 | 2 | 8 | 9 | 10),
                "to {side}: frame {i} opcode {}",
                f.opcode
            );
        }
        if strict("close") {
            assert!(!closed, "to {side}: frame {i} after a close");
        }
        if f.opcode >= 8 {
            if strict("control") {
                assert!(f.fin, "to {side}: fragmented control frame {i}");
                assert!(
                    f.payload.len() <= 125,
                    "to {side}: control frame {i} (opcode {}) carries {} bytes",
                    f.opcode,
                    f.payload.len()
                );
            }
            if f.opcode == 8 {
                closed = true;
                if strict("close") {
                    assert_ne!(f.payload.len(), 1, "to {side}: close with a 1-byte payload");
                    if f.payload.len() >= 2 {
                        let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                        assert!(close_code_ok(code), "to {side}: close code {code}");
                        assert!(
                            std::str::from_utf8(&f.payload[2..]).is_ok(),
                            "to {side}: close reason not UTF-8"
                        );
                    }
                }
            }
            continue;
        }
        match (f.opcode, in_message) {
            (0, None) if strict("fragments") => {
                panic!("to {side}: continuation frame {i} outside a message")
            }
            (1 | 2, Some(_)) if strict("fragments") => {
                panic!("to {side}: new message at frame {i} inside a fragmented one")
            }
            _ => {}
        }
        let kind = if f.opcode == 0 {
            in_message
        } else {
            Some(f.opcode)
        };
        if f.opcode != 0 {
            compressed = f.rsv & 0b100 != 0;
        }
        if kind == Some(1) && !compressed {
            if f.opcode == 1 {
                text.clear();
            }
            text.extend_from_slice(&f.payload);
            if f.fin && strict("utf8") {
                assert!(
                    std::str::from_utf8(&text).is_ok(),
                    "to {side}: text message ending at frame {i} is not UTF-8"
                );
            }
        }
        in_message = if f.fin { None } else { kind };
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = [0u8; HEADER];
    let n = data.len().min(HEADER);
    h[..n].copy_from_slice(&data[..n]);
    let body = &data[n..];
    let flags = h[0];
    let chunk = usize::from(h[1] & 0x3f);
    let deflate = h[1] & 0x40 != 0;
    let yield_between = h[1] & 0x80 != 0;
    let client_len = usize::from(u16::from_le_bytes([h[6], h[7]])).min(body.len());
    let (client_bytes, backend_bytes) = body.split_at(client_len);
    let ck = usize::from(h[2]).min(client_bytes.len());
    let bk = usize::from(h[3]).min(backend_bytes.len());
    let (client_leftover, client_stream) = client_bytes.split_at(ck);
    let (backend_leftover, backend_stream) = backend_bytes.split_at(bk);

    let opts = SessionOptions {
        max_message_size: if flags & 0x08 != 0 {
            16 * usize::from(h[5]) + 1
        } else {
            16 << 20
        },
        max_frame_size: if flags & 0x08 != 0 {
            4 * usize::from(h[4]) + 1
        } else {
            16 << 20
        },
        keepalive: (flags & 0x04 != 0).then_some(KEEPALIVE),
        close_timeout: CLOSE_TIMEOUT,
        ends_at: None,
        permessage_deflate: deflate,
    };
    let when = if flags & 0x40 != 0 {
        WhenSpent::Stall
    } else {
        WhenSpent::Fail
    };
    let budget = usize::from(u16::from_le_bytes([h[8], h[9]]));
    let mut client_out =
        FuzzWriter::new(chunk, (flags & 0x10 != 0).then_some((budget, when)), KEEP);
    let mut backend_out =
        FuzzWriter::new(chunk, (flags & 0x20 != 0).then_some((budget, when)), KEEP);
    let shutdown_at = if flags & 0x80 != 0 {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3600)
    };
    let preshutdown = flags & 0x80 != 0 && strict("preshutdown");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let report = rt.block_on(async {
        let (tx, rx) = watch::channel(preshutdown);
        let session = proxy(
            Side {
                read: ChunkReader::new(client_stream, chunk, yield_between, flags & 0x01 != 0),
                write: &mut client_out,
                leftover: Bytes::copy_from_slice(client_leftover),
            },
            Side {
                read: ChunkReader::new(backend_stream, chunk, yield_between, flags & 0x02 != 0),
                write: &mut backend_out,
                leftover: Bytes::copy_from_slice(backend_leftover),
            },
            opts,
            rx,
            gateway::registry::CloseOrder::never(),
            (),
        );
        let signal = async {
            tokio::time::sleep(shutdown_at).await;
            let _ = tx.send(true);
            std::future::pending::<()>().await
        };
        let bounded = async {
            tokio::select! {
                r = session => r,
                _ = signal => unreachable!(),
            }
        };
        let limit = shutdown_at + AFTER_SHUTDOWN;
        tokio::time::timeout(limit, bounded).await
    });
    let Ok(report) = report else {
        panic!(
            "session did not end within {AFTER_SHUTDOWN:?} of virtual time after the shutdown signal"
        );
    };
    let _ = (report.outcome(), report.gateway_closes());
    if !client_out.spent && client_out.written <= KEEP {
        check_output("client", &client_out.out, false, deflate);
    }
    if !backend_out.spent && backend_out.written <= KEEP {
        check_output("backend", &backend_out.out, true, deflate);
    }
});
