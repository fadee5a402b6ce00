//! The client side of the WebSocket opening handshake (RFC 6455 §4.1), over any stream.
//!
//! The gateway uses it toward backends; the load generator and tests use it toward the
//! gateway. Written on `httparse` rather than a hyper client connection so that the
//! stream stays concrete (no boxed IO, no extra task per connection), bytes read past the
//! response head are kept, `Sec-WebSocket-Accept` is verified, and a refusal's status and
//! one-line reason reach the caller.

use std::fmt::Write as _;
use std::io;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest response head accepted from the server.
const MAX_HEAD: usize = 16 * 1024;
/// Most bytes of a refusal body kept as its reason.
const MAX_REASON: usize = 1024;
/// Most response headers parsed: as many as the gateway takes in a client's request.
const MAX_HEADERS: usize = 100;
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What to ask the server for.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    /// `Host` header value (`host[:port]`).
    pub host: &'a str,
    /// Request target: path and query.
    pub path: &'a str,
    /// Offered subprotocols, as the `Sec-WebSocket-Protocol` header value.
    pub protocols: Option<&'a str>,
    /// Further headers, sent as given (names and values must be valid header text).
    pub headers: &'a [(&'a str, &'a str)],
    /// Whether a refusal's body is read for its reason. A caller that only needs the
    /// status does not wait for a body the server may be slow to send, or never finish.
    pub refusal_body: bool,
}

/// A completed handshake.
#[derive(Debug)]
pub struct Handshake {
    /// Bytes the server sent after its response head: the start of its first frames.
    pub leftover: Bytes,
    /// The subprotocol the server chose, if any.
    pub protocol: Option<String>,
    /// The `Sec-WebSocket-Extensions` the server answered with, if any (several headers
    /// joined with `, `).
    pub extensions: Option<String>,
    /// The other end-to-end headers of the 101 (a session cookie, say): for a proxy to
    /// pass on, as nginx and HAProxy do.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The stream failed or closed.
    #[error("i/o error during handshake: {0}")]
    Io(#[from] io::Error),
    /// The server answered with something other than 101.
    #[error("refused with HTTP {status}: {reason}")]
    Refused {
        /// HTTP status code.
        status: u16,
        /// The response body's first line (or the status text when empty).
        reason: String,
    },
    /// The response was not valid HTTP or too large.
    #[error("malformed handshake response: {0}")]
    Malformed(&'static str),
    /// A 101 that does not complete a WebSocket handshake correctly.
    #[error("invalid 101 response: {0}")]
    Invalid(&'static str),
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn generate_key() -> String {
    let raw: [u8; 16] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The `Sec-WebSocket-Accept` value a server must answer `key` with.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// Sends the upgrade request on `stream` and reads the response.
///
/// On success the stream is positioned right after the response head; bytes already read
/// beyond it are in [`Handshake::leftover`].
pub async fn handshake<S>(
    stream: &mut S,
    req: &ClientRequest<'_>,
) -> Result<Handshake, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = generate_key();
    let mut head = String::with_capacity(256);
    // Writing to a String cannot fail.
    let _ = write!(
        head,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        req.path, req.host
    );
    if let Some(p) = req.protocols {
        let _ = write!(head, "Sec-WebSocket-Protocol: {p}\r\n");
    }
    for (name, value) in req.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;

    let mut buf = BytesMut::with_capacity(1024);
    // Bytes of interim (1xx) responses already passed over: they count toward MAX_HEAD.
    let mut interim = 0;
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the response").into(),
            );
        }
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            let parsed = resp.parse(&buf).map_err(|e| {
                HandshakeError::Malformed(match e {
                    httparse::Error::TooManyHeaders => "more than 100 response headers",
                    _ => "not an HTTP/1.1 response",
                })
            })?;
            // One bound for the whole response head, however TCP cut it: the head, or
            // while it is incomplete all that has come of it.
            let head_so_far = match parsed {
                httparse::Status::Complete(head_len) => head_len,
                httparse::Status::Partial => buf.len(),
            };
            if interim + head_so_far > MAX_HEAD {
                return Err(HandshakeError::Malformed("response head too large"));
            }
            let httparse::Status::Complete(head_len) = parsed else {
                break;
            };
            let status = resp.code.unwrap_or(0);
            // An interim answer (100 Continue, 103 Early Hints) comes before the final
            // one, which a client must wait for (RFC 9110 section 15.2).
            if (100..200).contains(&status) && status != 101 {
                interim += head_len;
                let _ = buf.split_to(head_len);
                continue;
            }
            if status != 101 {
                let status_text = resp.reason.unwrap_or("").to_owned();
                let content_length = header(resp.headers, "content-length")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok());
                let _ = buf.split_to(head_len);
                let reason = match content_length {
                    Some(len) if req.refusal_body => {
                        body_line(stream, &mut buf, len.min(MAX_REASON)).await?
                    }
                    _ => String::new(),
                };
                let reason = if reason.is_empty() {
                    status_text
                } else {
                    reason
                };
                return Err(HandshakeError::Refused { status, reason });
            }
            let upgraded = upgraded(&resp, &key)?;
            let _ = buf.split_to(head_len);
            return Ok(Handshake {
                leftover: buf.freeze(),
                ..upgraded
            });
        }
    }
}

/// The first line of a body of `len` bytes at the start of `buf`, read as far as it
/// comes before the stream ends.
async fn body_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    len: usize,
) -> io::Result<String> {
    while buf.len() < len {
        if stream.read_buf(buf).await? == 0 {
            break;
        }
    }
    let body = &buf[..buf.len().min(len)];
    Ok(String::from_utf8_lossy(body)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned())
}

/// Checks a 101 against the request whose key was `key` (RFC 6455 section 4.1) and takes
/// what it agreed to; `leftover` is left for the caller.
fn upgraded(resp: &httparse::Response<'_, '_>, key: &str) -> Result<Handshake, HandshakeError> {
    if resp.version != Some(1) {
        return Err(HandshakeError::Invalid("a 101 in HTTP/1.0"));
    }
    if !header_has_token(resp.headers, "upgrade", "websocket") {
        return Err(HandshakeError::Invalid("missing Upgrade: websocket"));
    }
    if !header_has_token(resp.headers, "connection", "upgrade") {
        return Err(HandshakeError::Invalid("missing Connection: Upgrade"));
    }
    let named = |name: &'static str| {
        resp.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    // Each of these may appear once (RFC 6455 sections 11.3.3 and 11.3.4): a second one
    // would leave the client and the server in different sessions.
    if named("sec-websocket-accept").count() > 1 {
        return Err(HandshakeError::Invalid(
            "more than one Sec-WebSocket-Accept",
        ));
    }
    if header(resp.headers, "sec-websocket-accept") != Some(accept_key(key.as_bytes()).as_bytes()) {
        return Err(HandshakeError::Invalid("wrong Sec-WebSocket-Accept"));
    }
    let protocol = match named("sec-websocket-protocol").collect::<Vec<_>>()[..] {
        [] => None,
        [h] => match std::str::from_utf8(h.value).map(str::trim) {
            Ok(p) if !p.is_empty() && !p.contains(',') => Some(p.to_owned()),
            _ => {
                return Err(HandshakeError::Invalid(
                    "Sec-WebSocket-Protocol is not one name",
                ))
            }
        },
        _ => {
            return Err(HandshakeError::Invalid(
                "more than one Sec-WebSocket-Protocol",
            ))
        }
    };
    // Every such header, joined: an extension the server lists in a second header is as
    // much in force as one in the first. An empty one lists none.
    let extensions: Vec<String> = named("sec-websocket-extensions")
        .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    let extensions = (!extensions.is_empty()).then(|| extensions.join(", "));
    // What else the server said, for the caller to pass on: all but the headers of
    // this hop and of the handshake itself, and those its `Connection` names.
    let headers = resp
        .headers
        .iter()
        .filter(|h| {
            !NOT_PASSED_ON.iter().any(|n| h.name.eq_ignore_ascii_case(n))
                && !header_has_token(resp.headers, "connection", h.name)
        })
        .filter_map(|h| {
            Some((
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_bytes(h.value).ok()?,
            ))
        })
        .collect();
    Ok(Handshake {
        leftover: Bytes::new(),
        protocol,
        extensions,
        headers,
    })
}

/// Headers of a 101 that belong to its hop or to the handshake itself, or that the
/// answering side sets for itself (`Date`, and `Server`, which nginx hides too).
const NOT_PASSED_ON: &[&str] = &[
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "date",
    "server",
];

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether any header `name` lists `token` (comma-separated, case-insensitive).
fn header_has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn refusal_reports_status_and_first_body_line() -> anyhow::Result<()> {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            let _ = server.read(&mut buf).await;
            let _ = server
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\n\r\nunknown backend ID\r\n",
                )
                .await;
        });
        let req = ClientRequest {
            host: "x",
            path: "/",
            protocols: None,
            headers: &[],
            refusal_body: true,
        };
        match handshake(&mut client, &req).await {
            Err(HandshakeError::Refused { status, reason }) => {
                assert_eq!(status, 404);
                assert_eq!(reason, "unknown backend ID");
            }
            other => anyhow::bail!("expected a refusal, got {other:?}"),
        }
        srv.await?;
        Ok(())
    }
}
