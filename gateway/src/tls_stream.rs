//! Server-side TLS over TCP that holds no buffers while the connection idles.
//!
//! rustls's buffered connection keeps a 4 KiB record buffer for the connection's whole
//! life; with thousands of idle sessions that was the largest single cost per session.
//! This stream drives rustls's unbuffered API instead. A read takes whatever the socket
//! has (up to 64 KiB, one syscall) into a per-thread scratch buffer and decrypts it there;
//! a write encrypts into another per-thread buffer and hands it to the socket at once.
//! Only what cannot be finished within the call stays with the connection (the start of
//! a record whose rest has not arrived, plaintext the reader had no room for, ciphertext
//! the socket would not take yet), and that memory is given back as soon as it drains.
//!
//! Once the handshake is done (TLS 1.3 or 1.2), rustls hands the connection's keys over
//! and [`crate::records`] seals and opens its records from then on, without rustls's
//! connection state machine around every read and write (and without the connection
//! object, the larger part of an idle session's TLS memory).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::pki_types::CertificateDer;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{AlertDescription, HandshakeKind, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::pacing::Pacer;
use crate::records::{Records, Refused, HEADER_LEN, RECORD_OVERHEAD, SEAL_OVERHEAD};

/// Size of each worker thread's read and write scratch buffers.
const SCRATCH_LEN: usize = 64 * 1024;

/// Most plaintext taken by one write: what fits the write scratch with room for what
/// sealing adds (at most four 16 KiB records, and a key update or two).
const MAX_WRITE: usize = SCRATCH_LEN - SEAL_OVERHEAD;

thread_local! {
    static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_LEN].into_boxed_slice());
    static WRITE_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_LEN].into_boxed_slice());
}

/// A TLS server connection on a TCP stream; see the module docs.
pub struct TlsStream {
    tcp: TcpStream,
    conn: Conn,
    /// Full or resumed.
    kind: Option<HandshakeKind>,
    /// Received bytes not finished with: a record (or handshake message) whose rest has
    /// not arrived, or (at the end of the handshake) the records the client sent after
    /// its Finished.
    incoming: Vec<u8>,
    /// Decrypted application data not read yet, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes the socket has not taken yet, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    /// Writes in pieces to a socket that fell behind (see [`crate::pacing`]).
    pacer: Pacer,
    /// The peer sent close_notify or ended its TCP stream: reads return end of stream.
    read_closed: bool,
    /// Our close_notify is queued: writes fail.
    write_closed: bool,
}

/// Who handles the records: rustls through the handshake, [`Records`] once it is done.
enum Conn {
    Rustls(Handshake),
    Records(Box<Records>),
}

/// rustls while the handshake lasts, and how much of the received bytes it has seen.
struct Handshake {
    conn: Box<UnbufferedServerConnection>,
    /// The end of the last whole record rustls was given, counted from the first byte
    /// not yet done with. A handshake message split over several records is joined in
    /// place, and rustls remembers how far into the bytes it has read: every later call
    /// must give it at least that much again (less made it slice out of range).
    seen: usize,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .finish_non_exhaustive()
    }
}

/// Runs the server side of a TLS handshake on `tcp`. Bounding its time is the caller's.
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<TlsStream> {
    Ok(accept_client(config, tcp).await?.0)
}

/// [`accept`], also returning the certificate the client authenticated with (mutual
/// TLS: a `config` that asks for one), which the stream itself does not keep.
pub async fn accept_client(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
) -> io::Result<(TlsStream, Option<CertificateDer<'static>>)> {
    let mut stream = TlsStream::starting(config, tcp)?;
    if let Err(e) = std::future::poll_fn(|cx| stream.poll_handshake(cx)).await {
        // The alert saying why goes out before the connection is closed: without it the
        // client sees the connection end unexplained. Only what is left after the try
        // with the error waits here, within the caller's bound.
        let _ = std::future::poll_fn(|cx| stream.poll_send(cx)).await;
        return Err(e);
    }
    let Conn::Rustls(Handshake { conn, .. }) = stream.conn else {
        return Err(io::Error::other(
            "TLS records taken over before the handshake ended",
        ));
    };
    stream.kind = conn.handshake_kind();
    let client_cert = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.clone().into_owned());
    stream.conn = Conn::Records(Box::new(
        Records::take_over(*conn, &mut stream.out).map_err(invalid)?,
    ));
    // Records the client sent right after its Finished (a browser sends its upgrade
    // request then) were left for whoever handles the records from now on. They are
    // processed now: no read of the socket would come for them while the client waits.
    if !stream.incoming.is_empty() {
        stream.process_received(None, None)?;
    }
    std::future::poll_fn(|cx| stream.poll_send(cx)).await?;
    Ok((stream, client_cert))
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Why received records could not be processed.
enum Failure {
    /// rustls's verdict (the alert saying why is in `out`).
    Rustls(rustls::Error),
    /// Ours, with the alert to send.
    Records(Refused),
}

/// Where decrypted application data goes: the caller's buffer first, the rest is kept.
struct Sink<'a, 'b> {
    read_buf: Option<&'a mut ReadBuf<'b>>,
    plain: &'a mut Vec<u8>,
}

impl Sink<'_, '_> {
    fn put(&mut self, mut data: &[u8]) {
        if let Some(buf) = self.read_buf.as_deref_mut() {
            let n = data.len().min(buf.remaining());
            buf.put_slice(&data[..n]);
            data = &data[n..];
        }
        self.plain.extend_from_slice(data);
    }
}

/// Feeds `records` to rustls until it needs more bytes from the peer. Application data
/// goes to `sink`; handshake and alert records rustls wants sent are appended to `out`.
/// Returns how many bytes at the front of `records` rustls is done with; the caller keeps
/// the rest, in place, and gives them again followed by what comes next.
///
/// During the handshake rustls is given one record more at a time, and none after the
/// one that ends it: given more, it would go on in the same call to handle what the
/// client sent after its Finished, and a TLS 1.3 KeyUpdate it answered itself would be
/// lost in the take-over (see [`Records::take_over`]). Those records are left for the
/// caller to process once the handshake is done.
fn process(
    hs: &mut Handshake,
    records: &mut [u8],
    sink: &mut Sink<'_, '_>,
    out: &mut Vec<u8>,
    read_closed: &mut bool,
) -> Result<usize, rustls::Error> {
    let Handshake { conn, seen } = hs;
    let mut done = 0;
    // The end of the last whole record given to rustls, in this call or before.
    let mut whole = (*seen).min(records.len());
    // The end of the bytes rustls is given.
    let mut offered = if !conn.is_handshaking() {
        whole = records.len();
        records.len()
    } else if whole > 0 {
        whole
    } else {
        next_record(records, 0, &mut whole)
    };
    let failed = 'records: loop {
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut records[done..offered]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                done += discard;
                break e;
            }
        };
        match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = match record {
                        Ok(record) => record,
                        Err(e) => {
                            done += discard;
                            break 'records e;
                        }
                    };
                    discard += record.discard;
                    sink.put(record.payload);
                }
            }
            ConnectionState::EncodeTlsData(data) => encode(data, out),
            // What was encoded is in `out`, which goes out before anything written later.
            ConnectionState::TransmitTlsData(data) => data.done(),
            // Said once; what follows is writing (our close_notify may still go out).
            ConnectionState::PeerClosed => *read_closed = true,
            ConnectionState::Closed => {
                *read_closed = true;
                done += discard;
                *seen = whole.saturating_sub(done);
                return Ok(done);
            }
            // rustls has handled all it was given; while the handshake lasts, the next
            // record is what it waits for.
            ConnectionState::WriteTraffic(_) | ConnectionState::BlockedHandshake => {
                if !conn.is_handshaking() || offered == records.len() {
                    done += discard;
                    *seen = whole.saturating_sub(done);
                    return Ok(done);
                }
                offered = next_record(records, offered, &mut whole);
            }
            // Early data is never enabled; anything else is from a newer rustls.
            _ => {
                return Err(rustls::Error::General(
                    "unexpected TLS connection state".into(),
                ))
            }
        }
        done += discard;
    };
    // The alert rustls queued with its verdict comes out of the next calls, one queued
    // record each, before it would look at the records again (once more, it would refuse
    // them again, and would slice out of range if given fewer than before). It may not be
    // the first: a TLS 1.3 refusal in the ClientHello's extensions (no common ALPN
    // protocol) comes after the ServerHello and ChangeCipherSpec already queued, and is
    // encrypted with the keys the ServerHello set; the client needs all of them. The alert
    // is the last thing rustls queues, and rustls must not be called past it: with
    // nothing left to send it would refuse the records again and queue a second fatal
    // alert (which it asserts never happens).
    while let Ok(ConnectionState::EncodeTlsData(data)) =
        conn.process_tls_records(&mut records[done..offered]).state
    {
        let start = out.len();
        encode(data, out);
        if out.len() == start || is_alert(&out[start..]) {
            break;
        }
    }
    Err(failed)
}

/// Payload length of a TLS 1.3 alert record sealed during the handshake: the alert's two
/// bytes, the inner content type and a 16-byte AEAD tag (every TLS 1.3 suite rustls
/// offers has one). A sealed handshake message is longer: its header alone is 4 bytes.
const SEALED_ALERT_LEN: u16 = 2 + 1 + 16;

/// Whether `record`, one record rustls queued during the handshake, is an alert: a
/// plaintext or TLS 1.2 alert has its own content type; a TLS 1.3 one is application
/// data of an alert's length.
fn is_alert(record: &[u8]) -> bool {
    match record {
        [21, ..] => true,
        [23, _, _, hi, lo, ..] => u16::from_be_bytes([*hi, *lo]) == SEALED_ALERT_LEN,
        _ => false,
    }
}

/// Appends the records rustls has for the peer to `out`.
fn encode(
    mut data: rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.resize(start + 1024, 0);
    loop {
        match data.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(e)) => out.resize(start + e.required_size, 0),
            Err(EncodeError::AlreadyEncoded) => {
                out.truncate(start);
                return;
            }
        }
    }
}

/// The end of the record at `at` in `data` (`whole` moves there), or `data.len()` if it
/// is not all there (rustls then sees what there is, and waits for the rest or refuses
/// the header).
fn next_record(data: &[u8], at: usize, whole: &mut usize) -> usize {
    let end = match data.get(at..at + HEADER_LEN) {
        Some(&[_, _, _, hi, lo]) => at + HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo])),
        _ => return data.len(),
    };
    if end > data.len() {
        return data.len();
    }
    *whole = end;
    end
}

impl Conn {
    /// Processes received `data`: application data goes to `sink`, records to send to
    /// `out`. Returns how many bytes at the front of `data` are done with.
    fn receive(
        &mut self,
        data: &mut [u8],
        sink: &mut Sink<'_, '_>,
        out: &mut Vec<u8>,
        read_closed: &mut bool,
    ) -> Result<usize, Failure> {
        match self {
            Conn::Rustls(hs) => process(hs, data, sink, out, read_closed).map_err(Failure::Rustls),
            Conn::Records(records) => records
                .open(data, |d| sink.put(d))
                .map(|opened| {
                    *read_closed |= opened.closed;
                    opened.used
                })
                .map_err(Failure::Records),
        }
    }
}

impl TlsStream {
    /// A stream whose handshake has not started.
    fn starting(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<TlsStream> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
        Ok(TlsStream {
            tcp,
            conn: Conn::Rustls(Handshake {
                conn: Box::new(conn),
                seen: 0,
            }),
            kind: None,
            incoming: Vec::new(),
            plain: Vec::new(),
            plain_at: 0,
            out: Vec::new(),
            out_at: 0,
            pacer: Pacer::with_piece(crate::pacing::PACED_WRITE + RECORD_OVERHEAD),
            read_closed: false,
            write_closed: false,
        })
    }

    /// Whether the handshake was a full one or resumed a session (a ticket).
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.kind
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send(cx))?;
            let Conn::Rustls(Handshake { conn, .. }) = &self.conn else {
                return Poll::Ready(Ok(()));
            };
            if !conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                )));
            }
            ready!(self.poll_receive(cx, None))?;
        }
    }

    /// Reads once from the socket and processes what came. Application data goes to
    /// `read_buf` as far as it fits, the rest to `plain`.
    fn poll_receive(
        &mut self,
        cx: &mut Context<'_>,
        read_buf: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        READ_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut rb = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                self.read_closed = true;
                self.incoming = Vec::new();
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(self.received(&mut scratch[..n], read_buf))
        })
    }

    /// Processes `read`, what one read of the socket took.
    fn received(&mut self, read: &mut [u8], read_buf: Option<&mut ReadBuf<'_>>) -> io::Result<()> {
        // What came is processed where it was read, unless the start of a record waits.
        if self.incoming.is_empty() {
            return self.process_received(Some(read), read_buf);
        }
        self.incoming.extend_from_slice(read);
        self.process_received(None, read_buf)
    }

    /// Processes `read`, bytes just read with none waiting before them, or else those
    /// waiting in `incoming`; what is not done with is kept in `incoming`. Application
    /// data goes to `read_buf` as far as it fits, the rest to `plain`. A refused record
    /// fails it, after the alert that says why (if the socket takes it now).
    fn process_received(
        &mut self,
        read: Option<&mut [u8]>,
        read_buf: Option<&mut ReadBuf<'_>>,
    ) -> io::Result<()> {
        let Self {
            conn,
            incoming,
            plain,
            out,
            read_closed,
            ..
        } = self;
        let mut sink = Sink { read_buf, plain };
        let result = match read {
            Some(read) => conn
                .receive(read, &mut sink, out, read_closed)
                .map(|done| incoming.extend_from_slice(&read[done..])),
            None => conn
                .receive(incoming, &mut sink, out, read_closed)
                .map(|done| drop(incoming.drain(..done))),
        };
        if incoming.is_empty() || *read_closed || result.is_err() {
            *incoming = Vec::new();
        }
        match result {
            Ok(()) => Ok(()),
            Err(Failure::Rustls(e)) => {
                // The alert saying why: sent if the socket takes it now.
                let _ = self.try_send();
                Err(invalid(e))
            }
            Err(Failure::Records(Refused { alert, error })) => {
                if let (Some(alert), Conn::Records(records)) = (alert, &mut self.conn) {
                    if records.seal_alert(alert, &mut self.out).is_ok() {
                        let _ = self.try_send();
                    }
                }
                Err(invalid(error))
            }
        }
    }

    /// Writes what `out` holds as far as the socket takes it now, without registering for
    /// the socket's write readiness (see `poll_read`): for the read side.
    fn try_send(&mut self) -> io::Result<()> {
        while self.out_at < self.out.len() {
            match self.tcp.try_write(&self.out[self.out_at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if !self.out.is_empty() {
            self.out = Vec::new();
            self.out_at = 0;
        }
        Ok(())
    }

    /// Writes out what `out` holds; ready once it is all with the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(self
                .pacer
                .poll_write(&mut self.tcp, cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        if !self.out.is_empty() {
            self.out = Vec::new();
            self.out_at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_at);
                buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                if this.plain_at == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Records the read side queued (an alert, a key update answer) go before we
            // wait, as far as the socket takes them now. Without waiting: the socket keeps
            // one waker for writing, and this task's read side must not take the place of
            // a write side blocked on a full socket (the session's two directions poll this
            // one stream, each with its own waker), which would then never be woken. Left
            // over, they go with the write side's next write or flush.
            if this.out_at < this.out.len() {
                this.try_send()?;
            }
            let before = buf.filled().len();
            ready!(this.poll_receive(cx, Some(buf)))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Earlier ciphertext first: a socket that does not take it is the backpressure.
        ready!(this.poll_send(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        let Conn::Records(records) = &mut this.conn else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "TLS handshake not done",
            )));
        };
        let written: Result<io::Result<usize>, rustls::Error> = WRITE_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = records.seal_data(data, &mut scratch[..])?;
            // Straight from the scratch to the socket (`out` is empty: it was sent above);
            // what the socket does not take now is kept.
            let mut at = 0;
            while at < n {
                match this.pacer.poll_write(&mut this.tcp, cx, &scratch[at..n]) {
                    Poll::Ready(Ok(0)) => return Ok(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(k)) => at += k,
                    Poll::Ready(Err(e)) => return Ok(Err(e)),
                    Poll::Pending => break,
                }
            }
            this.out.extend_from_slice(&scratch[at..n]);
            Ok(Ok(data.len()))
        });
        match written {
            Ok(done) => Poll::Ready(done),
            // No more records under this key (a TLS 1.2 key at its limit; sealing itself
            // does not otherwise fail): the stream ends, with `close_notify` if it can.
            Err(e) => {
                this.write_closed = true;
                if records
                    .seal_alert(AlertDescription::CloseNotify, &mut this.out)
                    .is_ok()
                {
                    let _ = this.poll_send(cx);
                }
                Poll::Ready(Err(io::Error::other(e.to_string())))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            if let Conn::Records(records) = &mut this.conn {
                // Unsent, the stream still ends; the client then sees no close_notify.
                let _ = records.seal_alert(AlertDescription::CloseNotify, &mut this.out);
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{self, ClientRecords};
    use rustls::ContentType;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    /// A TLS client trusting the dev CA, offering only `versions`.
    fn connector(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> io::Result<tokio_rustls::TlsConnector> {
        client_config(versions).map(tokio_rustls::TlsConnector::from)
    }

    /// The client config of [`connector`].
    fn client_config(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> io::Result<Arc<rustls::ClientConfig>> {
        client_config_for(rustls::crypto::aws_lc_rs::default_provider(), versions)
    }

    /// As [`client_config`], offering the suites of `provider`.
    fn client_config_for(
        provider: rustls::crypto::CryptoProvider,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> io::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in
            rustls::pki_types::CertificateDer::pem_file_iter(crate::tls::dev_certs().join("ca.crt"))
                .map_err(io::Error::other)?
        {
            roots
                .add(ca.map_err(io::Error::other)?)
                .map_err(io::Error::other)?;
        }
        let mut client_config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // For tests that go on with the client's keys by hand ([`hand_pair_on`]).
        client_config.enable_secret_extraction = true;
        Ok(Arc::new(client_config))
    }

    /// A real TLS client and the server stream it connected to, over loopback TCP.
    async fn pair() -> io::Result<(Client, TlsStream)> {
        pair_with(rustls::DEFAULT_VERSIONS).await
    }

    /// As [`pair`], the client offering only `versions`.
    async fn pair_with(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> io::Result<(Client, TlsStream)> {
        pair_using(connector(versions)?).await
    }

    /// As [`pair`], on `suite` and `version` only; checks they were negotiated and that the
    /// server's records are the gateway's.
    async fn pair_on(
        suite: rustls::SupportedCipherSuite,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> io::Result<(Client, TlsStream)> {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: vec![suite],
            ..rustls::crypto::aws_lc_rs::default_provider()
        };
        let config = client_config_for(provider, &[version])?;
        let (client, server) = pair_using(tokio_rustls::TlsConnector::from(config)).await?;
        assert_eq!(client.get_ref().1.negotiated_cipher_suite(), Some(suite));
        assert!(matches!(server.conn, Conn::Records(_)));
        Ok((client, server))
    }

    /// As [`pair`], the client connecting through `connector`.
    async fn pair_using(connector: tokio_rustls::TlsConnector) -> io::Result<(Client, TlsStream)> {
        let server_config = crate::tls::server_config(&crate::tls::dev_tls())
            .map_err(|(_, e)| io::Error::other(e))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let client = async {
            let tcp = TcpStream::connect(addr).await?;
            let name =
                rustls::pki_types::ServerName::try_from("localhost").map_err(io::Error::other)?;
            connector.connect(name, tcp).await
        };
        let server = async {
            let (tcp, _) = listener.accept().await?;
            accept(server_config, tcp).await
        };
        tokio::try_join!(client, server)
    }

    use rustls::pki_types::pem::PemObject;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn data_crosses_both_ways_intact_at_every_size() -> io::Result<()> {
        let (mut client, mut server) = pair().await?;
        for len in [1usize, 100, 16_384, 16_385, 70_000, 300_000] {
            round_trip(&mut client, &mut server, len).await?;
        }
        Ok(())
    }

    /// Writes `data` to `w` while reading as many bytes from `r` (together, so no
    /// socket buffer has to hold it all); returns what was read.
    async fn cross(
        w: &mut (impl AsyncWrite + Unpin),
        r: &mut (impl AsyncRead + Unpin),
        data: &[u8],
    ) -> io::Result<Vec<u8>> {
        let (sent, got) = tokio::join!(
            async {
                w.write_all(data).await?;
                w.flush().await
            },
            async {
                let mut got = vec![0u8; data.len()];
                r.read_exact(&mut got).await.map(|_| got)
            }
        );
        sent?;
        got
    }

    /// Sends `len` bytes each way, different bytes each way, and checks they arrive intact.
    async fn round_trip(client: &mut Client, server: &mut TlsStream, len: usize) -> io::Result<()> {
        let up = pattern(len, len as u8);
        let down = pattern(len, 100u8.wrapping_add(len as u8));
        assert!(
            cross(client, server, &up).await? == up,
            "client -> server, {len} bytes"
        );
        assert!(
            cross(server, client, &down).await? == down,
            "server -> client, {len} bytes"
        );
        Ok(())
    }

    /// The client updates its keys, asking for ours too; then data crosses both ways.
    async fn key_update_round_trip(client: &mut Client, server: &mut TlsStream) -> io::Result<()> {
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .map_err(io::Error::other)?;
        round_trip(client, server, 20_000).await
    }

    #[tokio::test]
    async fn a_tls_1_2_client_is_served() -> io::Result<()> {
        let (mut client, mut server) = pair_with(&[&rustls::version::TLS12]).await?;
        assert_eq!(
            client.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert!(
            matches!(server.conn, Conn::Records(_)),
            "TLS 1.2 records are taken over too"
        );
        for len in [1, 16 * 1024, 16 * 1024 + 1, 200_000] {
            round_trip(&mut client, &mut server, len).await?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn every_tls_1_2_suite_is_sealed_and_opened() -> io::Result<()> {
        use rustls::crypto::aws_lc_rs::cipher_suite;
        // AES-GCM with its explicit nonce in each record, ChaCha20-Poly1305 without.
        for suite in [
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ] {
            let (mut client, mut server) = pair_on(suite, &rustls::version::TLS12).await?;
            for len in [1, 16 * 1024 + 1, 200_000] {
                round_trip(&mut client, &mut server, len).await?;
            }
            // Its close_notify and ours end each direction cleanly.
            server.write_all(b"last words").await?;
            server.shutdown().await?;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await?;
            assert_eq!(got, b"last words");
            client.shutdown().await?;
            assert_eq!(
                server.read(&mut [0u8; 8]).await?,
                0,
                "the client's close_notify"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_tls_1_2_key_at_its_record_limit_ends_the_connection() -> io::Result<()> {
        let (mut client, mut server) = pair_with(&[&rustls::version::TLS12]).await?;
        let Conn::Records(records) = &mut server.conn else {
            panic!("a TLS 1.2 connection is taken over");
        };
        // TLS 1.2 has no new key to move to. The server's Finished was record 0; with
        // the limit at 4, records 1 to 3 go out and the next write fails.
        records.limit_records_per_key(4);
        for _ in 0..3 {
            cross(&mut server, &mut client, b"x").await?;
        }
        let refused = server.write_all(b"x").await.err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .unwrap_or("")
                .contains("as many records as is safe"),
            "no record past the key's limit: {refused:?}"
        );
        // The stream ends with close_notify (a truncation would be an error here).
        drop(server);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await?;
        assert!(rest.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn tls_1_3_records_are_taken_over_after_the_handshake() -> io::Result<()> {
        let (mut client, mut server) = pair().await?;
        assert!(matches!(server.conn, Conn::Records(_)));
        // Records of every size, both ways, past the first key's records.
        for len in [1, 16 * 1024, 16 * 1024 + 1, 200_000] {
            round_trip(&mut client, &mut server, len).await?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn every_tls_1_3_suite_is_sealed_and_opened() -> io::Result<()> {
        use rustls::crypto::aws_lc_rs::cipher_suite;
        // AES-GCM records are sealed with aws-lc's record key straight into the output,
        // ChaCha20-Poly1305 records in place after a copy; each after a key update too.
        for suite in [
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let (mut client, mut server) = pair_on(suite, &rustls::version::TLS13).await?;
            for len in [1, 16 * 1024 + 1, 200_000] {
                round_trip(&mut client, &mut server, len).await?;
            }
            key_update_round_trip(&mut client, &mut server).await?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_key_that_reaches_its_record_limit_is_replaced() -> io::Result<()> {
        let (mut client, mut server) = pair().await?;
        let Conn::Records(records) = &mut server.conn else {
            panic!("a TLS 1.3 connection is taken over");
        };
        // AES-GCM's real limit is 2^24.5 records; at 3 the server sends a KeyUpdate before
        // every third record, and the client must follow each one to read on.
        records.limit_records_per_key(3);
        for len in [1, 100, 16 * 1024 + 1, 200_000, 5] {
            round_trip(&mut client, &mut server, len).await?;
        }
        Ok(())
    }

    /// A connection whose client then sends `raw` bytes of its own on the TCP stream: what
    /// the server's read returned, and what the client's TLS read got after that.
    async fn after_raw_bytes(
        versions: &[&'static rustls::SupportedProtocolVersion],
        raw: &[u8],
    ) -> io::Result<(io::Result<usize>, io::Result<usize>)> {
        let (mut client, mut server) = pair_with(versions).await?;
        round_trip(&mut client, &mut server, 100).await?;
        client.get_mut().0.write_all(raw).await?;
        let mut buf = [0u8; 64];
        let served = server.read(&mut buf).await;
        let answered = client.read(&mut buf).await;
        Ok((served, answered))
    }

    #[tokio::test]
    async fn a_forged_or_oversized_record_is_refused_with_an_alert() -> io::Result<()> {
        // Application data whose tag cannot be right.
        let mut forged = vec![23, 3, 3, 0, 40];
        forged.extend_from_slice(&[0x5a; 40]);
        // A record longer than TLS 1.3 allows (16 KiB + 256).
        let oversized = [23, 3, 3, 0x41, 0x01];
        // A plaintext alert after the handshake.
        let plaintext = [21, 3, 3, 0, 2, 2, 40];
        // A handshake record after the handshake: in TLS 1.2 a renegotiation.
        let handshake = [22, 3, 3, 0, 4, 1, 0, 0, 0];
        let (tls13, tls12) = (&rustls::version::TLS13, &rustls::version::TLS12);
        for (version, raw, alert) in [
            (tls13, &forged[..], "BadRecordMac"),
            (tls13, &oversized[..], "RecordOverflow"),
            (tls13, &plaintext[..], "UnexpectedMessage"),
            (tls13, &handshake[..], "UnexpectedMessage"),
            (tls12, &forged[..], "BadRecordMac"),
            (tls12, &oversized[..], "RecordOverflow"),
            // TLS 1.2 alerts are records of their own type, and this one has no tag.
            (tls12, &plaintext[..], "BadRecordMac"),
            (tls12, &handshake[..], "UnexpectedMessage"),
        ] {
            let (served, answered) = after_raw_bytes(&[version], raw).await?;
            assert_eq!(
                served.map_err(|e| e.kind()).err(),
                Some(io::ErrorKind::InvalidData),
                "{alert}: the server's read fails"
            );
            let told = answered.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                told.contains(alert),
                "{alert}: the client was told: {told:?}"
            );
        }
        Ok(())
    }

    /// As [`pair_on`], after one round trip the client's records go on by hand, on its
    /// extracted keys, over the raw TCP stream.
    async fn hand_pair_on(
        suite: rustls::SupportedCipherSuite,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> io::Result<(ClientRecords, TcpStream, TlsStream)> {
        let (mut client, mut server) = pair_on(suite, version).await?;
        round_trip(&mut client, &mut server, 100).await?;
        let (tcp, conn) = client.into_inner();
        let secrets = conn.dangerous_extract_secrets().map_err(io::Error::other)?;
        let records = ClientRecords::new(suite, secrets).map_err(io::Error::other)?;
        Ok((records, tcp, server))
    }

    /// The next whole record the server sent, opened by the client's `records`.
    async fn next_record(
        records: &mut ClientRecords,
        tcp: &mut TcpStream,
    ) -> io::Result<(ContentType, Vec<u8>)> {
        let mut record = vec![0u8; records::HEADER_LEN];
        tcp.read_exact(&mut record).await?;
        let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
        record.resize(records::HEADER_LEN + len, 0);
        tcp.read_exact(&mut record[records::HEADER_LEN..]).await?;
        records.open(&mut record).map_err(io::Error::other)
    }

    /// The server's read after the client's `raw` records: it fails, and the client is
    /// sent a fatal alert `alert` (its code); returns the server's error.
    async fn refused_with(
        records: &mut ClientRecords,
        tcp: &mut TcpStream,
        server: &mut TlsStream,
        raw: &[u8],
        alert: u8,
    ) -> io::Result<String> {
        tcp.write_all(raw).await?;
        let deadline = std::time::Duration::from_secs(20);
        let served = tokio::time::timeout(deadline, server.read(&mut [0u8; 8])).await?;
        let Err(e) = served else {
            panic!("the server read on: {served:?}");
        };
        let told = tokio::time::timeout(deadline, next_record(records, tcp)).await??;
        assert_eq!(told, (ContentType::Alert, vec![2, alert]), "{e}");
        Ok(e.to_string())
    }

    /// The client's `alerts`, then application data: the server reads the data.
    async fn data_passes_after(
        records: &mut ClientRecords,
        tcp: &mut TcpStream,
        server: &mut TlsStream,
        alerts: &[[u8; 2]],
    ) -> io::Result<()> {
        let mut raw = Vec::new();
        for alert in alerts {
            raw.extend(
                records
                    .seal(ContentType::Alert, alert)
                    .map_err(io::Error::other)?,
            );
        }
        raw.extend(
            records
                .seal(ContentType::ApplicationData, b"still here")
                .map_err(io::Error::other)?,
        );
        tcp.write_all(&raw).await?;
        let mut got = [0u8; 10];
        server.read_exact(&mut got).await?;
        assert_eq!(&got, b"still here", "data after {alerts:?}");
        Ok(())
    }

    #[tokio::test]
    async fn warning_alerts_pass_as_with_rustls_and_a_stream_of_them_is_refused() -> io::Result<()>
    {
        use rustls::crypto::aws_lc_rs::cipher_suite;
        const WARNING: u8 = 1;
        let no_renegotiation = [WARNING, 100];
        let user_canceled = [WARNING, 90];

        // TLS 1.2: any warning passes, four in a connection's life.
        let (mut records, mut tcp, mut server) = hand_pair_on(
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            &rustls::version::TLS12,
        )
        .await?;
        let four = [
            no_renegotiation,
            user_canceled,
            no_renegotiation,
            no_renegotiation,
        ];
        data_passes_after(&mut records, &mut tcp, &mut server, &four).await?;
        let fifth = records
            .seal(ContentType::Alert, &no_renegotiation)
            .map_err(io::Error::other)?;
        let error = refused_with(&mut records, &mut tcp, &mut server, &fifth, 10).await?;
        assert!(error.contains("TooManyWarningAlerts"), "{error}");

        // TLS 1.3: only user_canceled passes; any other warning is a decode_error.
        let (mut records, mut tcp, mut server) = hand_pair_on(
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            &rustls::version::TLS13,
        )
        .await?;
        data_passes_after(&mut records, &mut tcp, &mut server, &[user_canceled]).await?;
        let warning = records
            .seal(ContentType::Alert, &no_renegotiation)
            .map_err(io::Error::other)?;
        let error = refused_with(&mut records, &mut tcp, &mut server, &warning, 50).await?;
        assert!(error.contains("NoRenegotiation"), "{error}");

        // An alert level that does not exist: illegal_parameter.
        let (mut records, mut tcp, mut server) = hand_pair_on(
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            &rustls::version::TLS12,
        )
        .await?;
        let unknown = records
            .seal(ContentType::Alert, &[3, 100])
            .map_err(io::Error::other)?;
        refused_with(&mut records, &mut tcp, &mut server, &unknown, 47).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_stream_of_key_updates_is_refused() -> io::Result<()> {
        // 32 in a row pass (rustls's and BoringSSL's figure), application data starts
        // the count again, and a 33rd in a row ends the connection.
        let (mut client, mut server) = pair().await?;
        for updates in [32, 32, 33] {
            for _ in 0..updates {
                client
                    .get_mut()
                    .1
                    .refresh_traffic_keys()
                    .map_err(io::Error::other)?;
            }
            client.write_all(b"data").await?;
            client.flush().await?;
            let mut got = [0u8; 4];
            let read = server.read_exact(&mut got).await;
            if updates <= 32 {
                read?;
                assert_eq!(&got, b"data");
            } else {
                let error = read.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(error.contains("TooManyKeyUpdateRequests"), "{error:?}");
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_followed_both_ways() -> io::Result<()> {
        let (mut client, mut server) = pair().await?;
        round_trip(&mut client, &mut server, 1_000).await?;
        // After the client's KeyUpdate the server must decrypt with the new keys, and the
        // KeyUpdate it answers with must go out ahead of its next application record, or
        // the client cannot decrypt that record.
        for _ in 0..3 {
            key_update_round_trip(&mut client, &mut server).await?;
        }
        Ok(())
    }

    /// What the client of [`finished_and_data_at_once`] sends, and the server's answer.
    const ASK: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
    const ANSWER: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";

    /// The dev server config, sending `session_tickets` tickets.
    fn server_config_with(session_tickets: usize) -> io::Result<Arc<ServerConfig>> {
        crate::tls::server_config(&crate::config::TlsConfig {
            session_tickets,
            ..crate::tls::dev_tls()
        })
        .map_err(|(_, e)| io::Error::other(e))
    }

    /// Reads what the server sent next into the client `tls` and processes it.
    fn receive(
        tls: &mut rustls::ClientConnection,
        tcp: &mut std::net::TcpStream,
    ) -> io::Result<()> {
        match tls.read_tls(tcp) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => tls
                .process_new_packets()
                .map(drop)
                .map_err(io::Error::other),
            // The socket's read timeout: the server sent nothing.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the server sent nothing for 20 s",
            )),
            Err(e) => Err(e),
        }
    }

    /// One connection to `listener` from a client driven by hand (rustls on a blocking
    /// socket), whose Finished, then (TLS 1.3) a KeyUpdate asking for ours, then [`ASK`]
    /// go out in one TCP write; the server answers [`ANSWER`]. Returns the handshake kind
    /// the client saw, what the server read and what the client read.
    async fn finished_and_data_at_once(
        listener: &TcpListener,
        server_config: Arc<ServerConfig>,
        client_config: Arc<rustls::ClientConfig>,
    ) -> io::Result<(Option<HandshakeKind>, Vec<u8>, Vec<u8>)> {
        use std::io::{Read, Write};
        let addr = listener.local_addr()?;
        let client = tokio::task::spawn_blocking(move || {
            let mut tcp = std::net::TcpStream::connect(addr)?;
            // Bounds a broken server's silence; the test never waits for it to pass.
            tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
            let name =
                rustls::pki_types::ServerName::try_from("localhost").map_err(io::Error::other)?;
            let mut tls =
                rustls::ClientConnection::new(client_config, name).map_err(io::Error::other)?;
            // Up to the server's Finished; the client's own Finished stays queued.
            while tls.is_handshaking() {
                if tls.wants_write() {
                    tls.write_tls(&mut tcp)?;
                } else {
                    receive(&mut tls, &mut tcp)?;
                }
            }
            if tls.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
                tls.refresh_traffic_keys().map_err(io::Error::other)?;
            }
            tls.writer().write_all(ASK)?;
            let mut flight = Vec::new();
            while tls.wants_write() {
                tls.write_tls(&mut flight)?;
            }
            tcp.write_all(&flight)?;
            let mut answer = vec![0u8; ANSWER.len()];
            let mut got = 0;
            while got < answer.len() {
                match tls.reader().read(&mut answer[got..]) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        receive(&mut tls, &mut tcp)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, io::Error>((tls.handshake_kind(), answer))
        });
        let server = async {
            let (tcp, _) = listener.accept().await?;
            let mut tls = accept(server_config, tcp).await?;
            let mut ask = vec![0u8; ASK.len()];
            tls.read_exact(&mut ask).await?;
            tls.write_all(ANSWER).await?;
            tls.flush().await?;
            Ok::<_, io::Error>(ask)
        };
        let (client, ask) = tokio::join!(client, server);
        let (kind, answer) = client.map_err(io::Error::other)??;
        Ok((kind, ask?, answer))
    }

    /// A server stream before its handshake, a ClientHello for it (the message, without
    /// its record header) from a rustls client, that client, and the other end of the
    /// stream's socket. The test hands the stream bytes as its reads would.
    async fn unstarted() -> io::Result<(TlsStream, Vec<u8>, rustls::ClientConnection, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client_tcp = TcpStream::connect(listener.local_addr()?).await?;
        let (tcp, _) = listener.accept().await?;
        let stream = TlsStream::starting(server_config_with(0)?, tcp)?;
        let name =
            rustls::pki_types::ServerName::try_from("localhost").map_err(io::Error::other)?;
        let mut client =
            rustls::ClientConnection::new(client_config(rustls::DEFAULT_VERSIONS)?, name)
                .map_err(io::Error::other)?;
        let mut hello = Vec::new();
        client.write_tls(&mut hello)?;
        assert_eq!(hello.first(), Some(&22), "one handshake record");
        Ok((stream, hello.split_off(HEADER_LEN), client, client_tcp))
    }

    /// `message` (a handshake message) in records of `len` bytes of it each.
    fn in_records(message: &[u8], len: usize) -> Vec<u8> {
        let mut records = Vec::new();
        for piece in message.chunks(len) {
            records.extend_from_slice(&[22, 3, 1]);
            records.extend_from_slice(&u16::try_from(piece.len()).unwrap_or(0).to_be_bytes());
            records.extend_from_slice(piece);
        }
        records
    }

    #[tokio::test]
    async fn a_client_hello_in_many_records_over_many_reads_is_answered() -> io::Result<()> {
        // rustls joins a handshake message's records in place and remembers how far it has
        // read; given less on a later read (three records or more over two reads), it
        // sliced out of range and the gateway died of it (panic = "abort").
        for (record_len, read_len) in [(100, 210), (100, 105), (100, 1), (1, 7), (1, 4000)] {
            let (mut server, hello, mut client, _client_tcp) = unstarted().await?;
            let mut records = in_records(&hello, record_len);
            for read in records.chunks_mut(read_len) {
                server.received(read, None)?;
            }
            // The server answered, and the client takes the answer and goes on.
            let case = format!("records of {record_len} B, reads of {read_len} B");
            assert!(!server.out.is_empty(), "{case}: no answer");
            client.read_tls(&mut &server.out[..])?;
            client
                .process_new_packets()
                .map_err(|e| io::Error::other(format!("{case}: {e}")))?;
            assert!(
                client.wants_write(),
                "{case}: the client has no Finished to send"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_bad_record_inside_a_split_client_hello_is_refused() -> io::Result<()> {
        // After its verdict rustls is asked once more, for the alert it queued, with the
        // bytes it had already read: given none, it sliced out of range as above whenever
        // it had queued no alert.
        // Not a record at all (an alert is sent), and an alert record, which rustls
        // refuses between the pieces of a handshake message without one.
        for (bad, alert) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], true),
            (&[21, 3, 3, 0, 2, 1, 0][..], false),
        ] {
            let (mut server, hello, _client, mut client_tcp) = unstarted().await?;
            let mut records = in_records(&hello[..200], 100);
            server.received(&mut records, None)?;
            let refused = server.received(&mut bad.to_vec(), None);
            assert_eq!(
                refused.map_err(|e| e.kind()),
                Err(io::ErrorKind::InvalidData),
                "{bad:?}"
            );
            // The client is told why with an alert record (content type 21).
            drop(server);
            let mut answer = Vec::new();
            client_tcp.read_to_end(&mut answer).await?;
            if alert {
                assert_eq!(answer.first(), Some(&21), "{bad:?}: answer {answer:?}");
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_key_update_in_the_same_read_as_the_finished_is_answered() -> io::Result<()> {
        // rustls must not handle the KeyUpdate (it would switch keys and keep the answer),
        // and the request after it must be read without waiting for more from the client.
        // With tickets rustls stops after the Finished to send them; without, it would not.
        let mut failed = Vec::new();
        for tickets in [crate::tls::dev_tls().session_tickets, 0] {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let server_config = server_config_with(tickets)?;
            let client_config = client_config(&[&rustls::version::TLS13])?;
            match finished_and_data_at_once(&listener, server_config, client_config).await {
                Ok((_, ask, answer)) if ask == ASK && answer == ANSWER => {}
                other => failed.push(format!("session_tickets = {tickets}: {other:?}")),
            }
        }
        assert!(failed.is_empty(), "{failed:#?}");
        Ok(())
    }

    #[tokio::test]
    async fn tls_1_2_data_in_the_same_read_as_the_finished_is_read() -> io::Result<()> {
        // Only a resumed TLS 1.2 handshake ends with the client's Finished.
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let server_config = server_config_with(crate::tls::dev_tls().session_tickets)?;
        let client_config = client_config(&[&rustls::version::TLS12])?;
        finished_and_data_at_once(&listener, server_config.clone(), client_config.clone()).await?;
        let (kind, ask, answer) =
            finished_and_data_at_once(&listener, server_config, client_config).await?;
        assert_eq!(kind, Some(HandshakeKind::Resumed));
        assert_eq!((&ask[..], &answer[..]), (ASK, ANSWER));
        Ok(())
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffers() -> io::Result<()> {
        let (mut client, mut server) = pair().await?;
        // A record split across reads: its start waits in `incoming` until the rest comes.
        let big = pattern(100_000, 7);
        let (sent, got) = tokio::join!(
            async {
                client.write_all(&big).await?;
                client.flush().await
            },
            async {
                // Small reads leave decrypted data waiting in `plain` between them.
                let mut got = Vec::new();
                let mut chunk = [0u8; 7];
                while got.len() < big.len() {
                    let n = server.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&chunk[..n]);
                }
                Ok::<_, io::Error>(got)
            }
        );
        sent?;
        assert!(got? == big);
        server.write_all(&big).await?;
        server.flush().await?;
        let mut back = vec![0u8; big.len()];
        client.read_exact(&mut back).await?;
        assert!(back == big);
        assert_eq!(
            (
                server.incoming.capacity(),
                server.plain.capacity(),
                server.out.capacity()
            ),
            (0, 0, 0),
            "buffers held after the traffic drained (plain {} at {})",
            server.plain.len(),
            server.plain_at
        );
        Ok(())
    }

    #[tokio::test]
    async fn close_notify_ends_each_direction_cleanly() -> io::Result<()> {
        let (mut client, mut server) = pair().await?;
        server.write_all(b"last words").await?;
        server.shutdown().await?;
        let mut got = Vec::new();
        // A clean end (close_notify then FIN): rustls's client would report a truncation
        // as an error.
        client.read_to_end(&mut got).await?;
        assert_eq!(got, b"last words");
        assert!(
            server.write_all(b"more").await.is_err(),
            "writes after shutdown fail"
        );
        client.write_all(b"bye").await?;
        client.shutdown().await?;
        let mut got = Vec::new();
        server.read_to_end(&mut got).await?;
        assert_eq!(got, b"bye");
        Ok(())
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_gets_backpressure_not_a_growing_buffer() -> io::Result<()>
    {
        let (_client, mut server) = pair().await?;
        let chunk = vec![0x5au8; 60_000];
        let mut written = 0usize;
        // Write until the socket stops taking data: what waits must stay one write's worth.
        let stalled = loop {
            match tokio::time::timeout(std::time::Duration::from_millis(300), server.write(&chunk))
                .await
            {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => return Err(e),
                Err(_) => break true,
            }
            if written > 512 * 1024 * 1024 {
                break false;
            }
        };
        assert!(stalled, "writes never blocked");
        assert!(
            server.out.len() - server.out_at <= SCRATCH_LEN,
            "{} bytes queued",
            server.out.len() - server.out_at
        );
        Ok(())
    }

    /// Two connections in turn from one client (one session cache) to a server with
    /// `session_tickets`; the second one's handshake kind, as the client and the server
    /// saw it. The first carries a byte each way, so its tickets have reached the client.
    async fn reconnect(
        session_tickets: usize,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> io::Result<(Option<rustls::HandshakeKind>, Option<rustls::HandshakeKind>)> {
        let server_config = server_config_with(session_tickets)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // One connector: one client session cache across both connections.
        let connector = connector(versions)?;
        let mut kinds = (None, None);
        for _ in 0..2 {
            let client = async {
                let tcp = TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(io::Error::other)?;
                let mut tls = connector.connect(name, tcp).await?;
                tls.write_all(b"?").await?;
                let mut one = [0u8; 1];
                tls.read_exact(&mut one).await?;
                Ok::<_, io::Error>(tls.get_ref().1.handshake_kind())
            };
            let server = async {
                let (tcp, _) = listener.accept().await?;
                let mut tls = accept(server_config.clone(), tcp).await?;
                let mut one = [0u8; 1];
                tls.read_exact(&mut one).await?;
                tls.write_all(b"!").await?;
                tls.flush().await?;
                Ok::<_, io::Error>(tls.handshake_kind())
            };
            kinds = tokio::try_join!(client, server)?;
        }
        Ok(kinds)
    }

    #[tokio::test]
    async fn a_reconnect_resumes_with_a_ticket() -> io::Result<()> {
        use rustls::HandshakeKind::{Full, Resumed};
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            assert_eq!(
                reconnect(2, versions).await?,
                (Some(Resumed), Some(Resumed)),
                "{versions:?}"
            );
            assert_eq!(
                reconnect(0, versions).await?,
                (Some(Full), Some(Full)),
                "session_tickets = 0: {versions:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn garbage_instead_of_a_client_hello_is_an_error() -> io::Result<()> {
        let config = crate::tls::server_config(&crate::tls::dev_tls())
            .map_err(|(_, e)| io::Error::other(e))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let client = async {
            let mut tcp = TcpStream::connect(addr).await?;
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
            let mut answer = Vec::new();
            tcp.read_to_end(&mut answer).await?;
            Ok::<_, io::Error>(answer)
        };
        let server = async {
            let (tcp, _) = listener.accept().await?;
            Ok::<_, io::Error>(accept(config, tcp).await)
        };
        let (answer, accepted) = tokio::try_join!(client, server)?;
        let err = accepted.err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::InvalidData));
        // The client is told why with a TLS alert record (content type 21).
        assert_eq!(answer.first(), Some(&21), "answer: {answer:?}");
        Ok(())
    }
}
