//! Helpers shared by the wsgate fuzz targets: building a `hyper::Request` the way the
//! gateway's HTTP layer would, in-memory streams that deliver fuzz bytes in chunks, and
//! the opt-in strict checks (`WSGATE_FUZZ_STRICT`).

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The repository root (the parent of `fuzz/`), for `certs/` and `Config.toml`.
pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Whether the strict check `name` is on: `WSGATE_FUZZ_STRICT` is `all` or a comma list
/// of check names. Strict checks look for protocol or format properties rather than
/// panics; they are off by default so that a plain run looks for crashes and hangs only.
pub fn strict(name: &str) -> bool {
    static ON: OnceLock<Vec<String>> = OnceLock::new();
    let on = ON.get_or_init(|| {
        std::env::var("WSGATE_FUZZ_STRICT")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    on.iter().any(|s| s == "all" || s == name)
}

/// Parses `data` as an HTTP/1.1 request head and builds the `hyper::Request` hyper would
/// hand the gateway's service. `None` where hyper itself would answer 400 (bad method,
/// target, header name or value, or too many headers).
pub fn http_request(data: &[u8]) -> Option<hyper::Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    // A partial head is still worth checking: use what parsed.
    let _ = req.parse(data).ok()?;
    let method = req.method?;
    let path = req.path?;
    let mut builder = hyper::Request::builder()
        .method(hyper::Method::from_bytes(method.as_bytes()).ok()?)
        .uri(hyper::Uri::try_from(path).ok()?);
    for h in req.headers.iter().take_while(|h| !h.name.is_empty()) {
        let name = hyper::header::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = hyper::header::HeaderValue::from_bytes(h.value).ok()?;
        builder = builder.header(name, value);
    }
    builder.body(()).ok()
}

/// A read half that yields `data` in chunks of at most `chunk` bytes (0: all at once),
/// optionally returning `Pending` (after waking itself) between chunks, and at the end
/// either EOF or silence: `Pending` forever, with no wake-up, like an open idle socket.
pub struct ChunkReader<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
    yield_between: bool,
    yielded: bool,
    eof_at_end: bool,
}

impl<'a> ChunkReader<'a> {
    pub fn new(data: &'a [u8], chunk: usize, yield_between: bool, eof_at_end: bool) -> Self {
        Self {
            data,
            pos: 0,
            chunk,
            yield_between,
            yielded: false,
            eof_at_end,
        }
    }

    /// Bytes handed out so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl AsyncRead for ChunkReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos >= this.data.len() {
            return if this.eof_at_end {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
        if this.yield_between && !this.yielded {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.yielded = false;
        let left = this.data.len() - this.pos;
        let mut n = left.min(buf.remaining());
        if this.chunk > 0 {
            n = n.min(this.chunk);
        }
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// What a [`FuzzWriter`] does once its byte budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenSpent {
    /// Fail every write (a peer that reset the connection).
    Fail,
    /// Return `Pending` forever, without a wake-up (a peer that stopped reading).
    Stall,
}

/// A write half that accepts at most `chunk` bytes per call, keeps the first `keep`
/// bytes it was given (for the strict output checks), and after `budget` bytes fails or
/// stalls.
pub struct FuzzWriter {
    pub out: Vec<u8>,
    pub written: usize,
    keep: usize,
    chunk: usize,
    budget: Option<(usize, WhenSpent)>,
    /// Whether the budget ran out (the output is then cut short).
    pub spent: bool,
}

impl FuzzWriter {
    pub fn new(chunk: usize, budget: Option<(usize, WhenSpent)>, keep: usize) -> Self {
        Self {
            out: Vec::new(),
            written: 0,
            keep,
            chunk,
            budget,
            spent: false,
        }
    }
}

impl AsyncWrite for FuzzWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut n = buf.len();
        if this.chunk > 0 {
            n = n.min(this.chunk);
        }
        if let Some((budget, when)) = this.budget {
            let left = budget.saturating_sub(this.written);
            if left == 0 && n > 0 {
                this.spent = true;
                return match when {
                    WhenSpent::Fail => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "fuzz: reset",
                    ))),
                    WhenSpent::Stall => Poll::Pending,
                };
            }
            n = n.min(left);
        }
        let room = this.keep.saturating_sub(this.out.len());
        this.out.extend_from_slice(&buf[..n.min(room)]);
        this.written += n;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One WebSocket frame as seen on the wire, payload unmasked.
#[derive(Debug)]
pub struct WireFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

/// Splits `buf` into frames (RFC 6455 §5.2); `Err` names a frame cut short.
pub fn wire_frames(mut buf: &[u8]) -> Result<Vec<WireFrame>, String> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        if buf.len() < 2 {
            return Err(format!(
                "truncated frame head after {} frames",
                frames.len()
            ));
        }
        let (b0, b1) = (buf[0], buf[1]);
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
            127 if buf.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            126 | 127 => return Err("truncated extended length".into()),
            l => (l as u64, 2),
        };
        let mut key = None;
        if masked {
            if buf.len() < at + 4 {
                return Err("truncated mask key".into());
            }
            key = Some([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            at += 4;
        }
        let len = usize::try_from(len).map_err(|_| "length overflow".to_string())?;
        if buf.len() - at < len {
            return Err(format!(
                "truncated payload: {len} announced, {} present",
                buf.len() - at
            ));
        }
        let mut payload = buf[at..at + len].to_vec();
        if let Some(k) = key {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        frames.push(WireFrame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0f,
            masked,
            payload,
        });
        buf = &buf[at + len..];
    }
    Ok(frames)
}

/// Close codes an endpoint may put on the wire.
pub fn close_code_ok(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
