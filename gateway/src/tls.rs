//! TLS: the rustls server config built from PEM files, offering only HTTP/1.1, and the
//! read-ahead stream rustls reads client bytes through.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Builds the server config. Errors name the offending key (`cert` or `key`) and problem.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, (&'static str, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| ("cert", format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(("cert", format!("{}: no certificate in PEM", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ("key", format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            (
                "key",
                format!("{} does not match the certificate: {e}", key.display()),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Clients of a gateway hold long sessions and rarely resume: tickets only cost memory.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client connection as the gateway holds it: TLS over a read-ahead TCP stream.
pub type ClientStream = tokio_rustls::server::TlsStream<ReadAhead<tokio::net::TcpStream>>;

/// Most bytes one socket read takes, and the size of each worker's read scratch buffer.
const READ_AHEAD_LEN: usize = 64 * 1024;

thread_local! {
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; READ_AHEAD_LEN].into_boxed_slice());
}

/// A stream whose reads take everything the socket holds (up to 64 KiB) in one syscall.
///
/// rustls asks its transport for at most 4 KiB per `read_tls` call, so a burst of client
/// records larger than that cost one `recvfrom` per 4 KiB, plus a short one for the rest.
/// Here the socket is read into a per-thread scratch buffer and whatever the caller did
/// not take is kept until its next read. The kept bytes live in a buffer allocated only
/// while they exist, so an idle connection holds nothing extra. Writes pass straight
/// through.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Bytes read from the socket that the caller has not taken yet.
    ahead: bytes::BytesMut,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            ahead: bytes::BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.advance(n);
            if this.ahead.is_empty() {
                this.ahead = bytes::BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_AHEAD_LEN {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        READ_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut rb = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            let n = got.len().min(buf.remaining());
            buf.put_slice(&got[..n]);
            if n < got.len() {
                this.ahead.extend_from_slice(&got[n..]);
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_from_one_big_read() -> io::Result<()> {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        a.write_all(&data).await?;
        let mut r = ReadAhead::new(b);
        let mut small = [0u8; 4096];
        let n = r.read(&mut small).await?;
        assert_eq!(n, 4096);
        assert_eq!(r.ahead.len(), data.len() - 4096, "the rest was read ahead");
        let mut got = small[..n].to_vec();
        while got.len() < data.len() {
            let n = r.read(&mut small).await?;
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(r.ahead.capacity(), 0, "nothing is held once drained");
        drop(a);
        assert_eq!(r.read(&mut small).await?, 0, "end of stream passes through");
        Ok(())
    }
}
