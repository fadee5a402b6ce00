//! The client side of the WebSocket handshake (`wsclient::handshake`, used toward
//! backends) fed an arbitrary server response.
//!
//! Input: byte 0 sets how the response is delivered (low 7 bits: chunk size, 0 = all at
//! once; high bit: `Pending` between chunks); the rest is the server's response. The text
//! `@ACCEPT@` in it is replaced by the right `Sec-WebSocket-Accept` for the key the
//! client sent (the fuzzer cannot guess a SHA-1), so 101 answers can succeed. The stream
//! ends after the response; a real-time timeout catches a hang.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use gateway::wsclient::{accept_key, handshake, ClientRequest, HandshakeError};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PLACEHOLDER: &[u8] = b"@ACCEPT@";

/// The server end: records the request, answers with the (completed) response.
struct Server<'a> {
    raw: &'a [u8],
    request: Vec<u8>,
    response: Option<Vec<u8>>,
    pos: usize,
    chunk: usize,
    yield_between: bool,
    yielded: bool,
}

impl Server<'_> {
    fn response(&mut self) -> &[u8] {
        if self.response.is_none() {
            let key = self
                .request
                .split(|b| *b == b'\n')
                .find_map(|l| l.strip_prefix(b"Sec-WebSocket-Key: "))
                .map(|k| k.strip_suffix(b"\r").unwrap_or(k))
                .unwrap_or_default();
            let accept = accept_key(key);
            let mut out = Vec::with_capacity(self.raw.len() + 32);
            let mut rest = self.raw;
            while let Some(i) = rest
                .windows(PLACEHOLDER.len())
                .position(|w| w == PLACEHOLDER)
            {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(accept.as_bytes());
                rest = &rest[i + PLACEHOLDER.len()..];
            }
            out.extend_from_slice(rest);
            self.response = Some(out);
        }
        self.response.as_deref().unwrap_or_default()
    }
}

impl AsyncRead for Server<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let (pos, chunk) = (this.pos, this.chunk);
        let len = this.response().len();
        if pos >= len {
            return Poll::Ready(Ok(()));
        }
        if this.yield_between && !this.yielded {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.yielded = false;
        let mut n = (len - pos).min(buf.remaining());
        if chunk > 0 {
            n = n.min(chunk);
        }
        buf.put_slice(&this.response()[pos..pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Server<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.request.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, raw)) = data.split_first() else {
        return;
    };
    let mut server = Server {
        raw,
        request: Vec::new(),
        response: None,
        pos: 0,
        chunk: usize::from(mode & 0x7f),
        yield_between: mode & 0x80 != 0,
        yielded: false,
    };
    let req = ClientRequest {
        host: "localhost:8081",
        path: "/backend/abc",
        protocols: Some("chat, superchat"),
        headers: &[("X-Forwarded-For", "192.0.2.1")],
        refusal_body: true,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), handshake(&mut server, &req)).await
    });
    let Ok(result) = result else {
        panic!("handshake hung on a response that ends");
    };
    match result {
        Ok(hs) => {
            // Only a complete 101 head succeeds (after any interim 1xx heads), and the
            // bytes read past it are kept, in order: leftover + what is still unread ==
            // everything after the head.
            let response = server.response().to_vec();
            let mut head_len = 0;
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut headers);
                let n = match resp.parse(&response[head_len..]) {
                    Ok(httparse::Status::Complete(n)) => n,
                    other => panic!("handshake succeeded on an incomplete head: {other:?}"),
                };
                head_len += n;
                match resp.code {
                    Some(101) => break,
                    Some(100..=199) => continue,
                    other => panic!("handshake succeeded on a {other:?}"),
                }
            }
            assert_eq!(
                server.pos,
                head_len + hs.leftover.len(),
                "bytes lost or invented"
            );
            assert_eq!(&hs.leftover[..], &response[head_len..server.pos]);
        }
        Err(HandshakeError::Refused { status, reason }) => {
            assert_ne!(status, 101);
            assert!(
                !reason.contains('\n'),
                "multi-line refusal reason {reason:?}"
            );
        }
        Err(_) => {}
    }
});
