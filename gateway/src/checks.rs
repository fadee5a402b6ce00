//! Handshake checks: is this a WebSocket upgrade for our path?

use base64::Engine;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Version};

use crate::refusal::Refusal;

/// What the checks extract from a valid upgrade request.
#[derive(Debug)]
pub struct UpgradeRequest<'r> {
    /// The client's `Sec-WebSocket-Key`, answered in the 101.
    pub key: &'r [u8],
}

/// Checks path, method, HTTP version, `Host` and the WebSocket upgrade headers, in that
/// order.
pub fn check<'r, B>(req: &'r Request<B>, path: &str) -> Result<UpgradeRequest<'r>, Refusal> {
    if req.uri().path() != path {
        return Err(Refusal::UnknownPath);
    }
    if req.method() != Method::GET {
        return Err(Refusal::MethodNotAllowed);
    }
    // HTTP/1.0 has no upgrade (RFC 9110 section 7.8: a server ignores `Upgrade` there);
    // answering one with a 101 would leave the client a connection nobody serves.
    if req.version() != Version::HTTP_11 {
        return Err(Refusal::BadRequest("WebSocket needs HTTP/1.1"));
    }
    let headers = req.headers();
    // RFC 9112 section 3.2: exactly one Host in an HTTP/1.1 request, or 400.
    let mut hosts = headers.get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Err(Refusal::BadRequest("missing or repeated Host header"));
    };
    if !is_host(host.as_bytes()) {
        return Err(Refusal::BadRequest("invalid Host header"));
    }
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(Refusal::BadRequest("not a WebSocket upgrade request"));
    }
    // RFC 9110 section 9.3.1: a body on a GET means nothing. Bytes of one would be read
    // as the body by the HTTP layer when they came with the head and as frames when they
    // came later: the same bytes dropped or forwarded by how TCP cut them.
    if headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| !is_zero(v.as_bytes()))
    {
        return Err(Refusal::BadRequest("an upgrade request has no body"));
    }
    // RFC 6455 section 11.3.5: the version line appears once in a request.
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes() == b"13" => {}
        (Some(_), Some(_)) => {
            return Err(Refusal::BadRequest("repeated Sec-WebSocket-Version header"))
        }
        _ => {
            return Err(Refusal::BadRequest(
                "unsupported Sec-WebSocket-Version: use 13",
            ))
        }
    }
    // RFC 6455 section 4.1: one key, the base64 of 16 bytes.
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if is_nonce(key.as_bytes()) => key.as_bytes(),
        _ => return Err(Refusal::BadRequest("missing or invalid Sec-WebSocket-Key")),
    };
    Ok(UpgradeRequest { key })
}

/// Whether `value` is a `Host` an `https` request can carry (RFC 9110 section 7.2): a
/// host, with a port if any, not empty (the URI's authority is never missing) and with no
/// user information.
fn is_host(value: &[u8]) -> bool {
    !value.is_empty()
        && !value.contains(&b'@')
        && hyper::http::uri::Authority::try_from(value).is_ok_and(|a| {
            // What follows the host is nothing or a port (the parser lets `:x` through).
            let after_host = a.as_str().len() - a.host().len();
            !a.host().is_empty() && (after_host == 0 || a.port_u16().is_some())
        })
}

/// Whether a `Content-Length` value is zero: digits only (RFC 9110 section 8.6), all `0`.
fn is_zero(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(|&b| b == b'0')
}

/// Whether `key` is the base64 of 16 bytes (24 characters, two of them padding).
fn is_nonce(key: &[u8]) -> bool {
    let mut nonce = [0u8; 18];
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode_slice(key, &mut nonce)
            .is_ok_and(|n| n == 16)
}

/// Whether header `name` lists `token` (comma-separated, case-insensitive).
pub fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade() -> hyper::http::request::Builder {
        Request::get("/gateway")
            .header("Host", "gateway.example")
            .header("Upgrade", "websocket")
            .header("Connection", "keep-alive, Upgrade")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn accepts_a_valid_upgrade() -> Result<(), Box<dyn std::error::Error>> {
        let req = upgrade().header("ID", "Backend_ABC").body(())?;
        let u = check(&req, "/gateway").map_err(|e| e.to_string())?;
        assert_eq!(u.key, b"dGhlIHNhbXBsZSBub25jZQ==");
        Ok(())
    }

    #[test]
    fn refusals_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let wrong_path = Request::get("/x").body(())?;
        assert_eq!(
            check(&wrong_path, "/gateway").err().map(|e| e.status()),
            Some(hyper::StatusCode::NOT_FOUND)
        );
        let plain = Request::get("/gateway").body(())?;
        assert_eq!(
            check(&plain, "/gateway").err().map(|e| e.status()),
            Some(hyper::StatusCode::BAD_REQUEST)
        );
        let post = Request::post("/gateway").body(())?;
        assert!(matches!(
            check(&post, "/gateway"),
            Err(Refusal::MethodNotAllowed)
        ));
        Ok(())
    }

    fn refusal<B>(req: &Request<B>) -> Option<String> {
        check(req, "/gateway").err().map(|e| e.to_string())
    }

    #[test]
    fn http_1_0_host_and_key_are_held_to_the_rfcs() -> Result<(), Box<dyn std::error::Error>> {
        let http10 = upgrade().version(Version::HTTP_10).body(())?;
        assert_eq!(
            refusal(&http10).as_deref(),
            Some("WebSocket needs HTTP/1.1")
        );
        let mut no_host = upgrade().body(())?;
        no_host.headers_mut().remove("Host");
        assert_eq!(
            refusal(&no_host).as_deref(),
            Some("missing or repeated Host header")
        );
        let two_hosts = upgrade().header("Host", "other.example").body(())?;
        assert_eq!(
            refusal(&two_hosts).as_deref(),
            Some("missing or repeated Host header")
        );
        for host in [
            "",
            ":443",
            "user@gateway.example",
            "a b",
            "gateway.example:x",
            "[::1",
        ] {
            let mut req = upgrade().body(())?;
            req.headers_mut()
                .insert("Host", hyper::header::HeaderValue::from_str(host)?);
            assert_eq!(
                refusal(&req).as_deref(),
                Some("invalid Host header"),
                "{host:?}"
            );
        }
        for host in [
            "gateway.example:9090",
            "127.0.0.1",
            "[::1]:9090",
            "localhost",
        ] {
            let mut req = upgrade().body(())?;
            req.headers_mut()
                .insert("Host", hyper::header::HeaderValue::from_str(host)?);
            assert_eq!(refusal(&req), None, "{host:?}");
        }
        let bad_key = "missing or invalid Sec-WebSocket-Key";
        for key in [
            "!!!!!!!!!!!!!!!!!!!!!!!!",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZXg=",
        ] {
            let mut req = upgrade().body(())?;
            req.headers_mut().insert(
                "Sec-WebSocket-Key",
                hyper::header::HeaderValue::from_static(key),
            );
            assert_eq!(refusal(&req).as_deref(), Some(bad_key), "{key}");
        }
        let two_keys = upgrade()
            .header("Sec-WebSocket-Key", "AQIDBAUGBwgJCgsMDQ4PEA==")
            .body(())?;
        assert_eq!(refusal(&two_keys).as_deref(), Some(bad_key));
        let mut other_key = upgrade().body(())?;
        other_key.headers_mut().insert(
            "Sec-WebSocket-Key",
            hyper::header::HeaderValue::from_static("AQIDBAUGBwgJCgsMDQ4PEA=="),
        );
        assert!(check(&other_key, "/gateway").is_ok());
        Ok(())
    }

    #[test]
    fn one_version_line_and_no_body() -> Result<(), Box<dyn std::error::Error>> {
        for second in ["8", "13"] {
            let two = upgrade().header("Sec-WebSocket-Version", second).body(())?;
            assert_eq!(
                refusal(&two).as_deref(),
                Some("repeated Sec-WebSocket-Version header"),
                "13 then {second}"
            );
        }
        let mut eight = upgrade().body(())?;
        eight.headers_mut().insert(
            "Sec-WebSocket-Version",
            hyper::header::HeaderValue::from_static("8"),
        );
        assert_eq!(
            refusal(&eight).as_deref(),
            Some("unsupported Sec-WebSocket-Version: use 13")
        );
        let no_body = Some("an upgrade request has no body");
        let sized = upgrade().header("Content-Length", "5").body(())?;
        assert_eq!(refusal(&sized).as_deref(), no_body);
        let chunked = upgrade().header("Transfer-Encoding", "chunked").body(())?;
        assert_eq!(refusal(&chunked).as_deref(), no_body);
        let empty = upgrade().header("Content-Length", "0").body(())?;
        assert!(check(&empty, "/gateway").is_ok());
        let zeros = upgrade().header("Content-Length", "00").body(())?;
        assert!(check(&zeros, "/gateway").is_ok());
        for sized in ["", "+0", "0x0", "01"] {
            let mut req = upgrade().body(())?;
            req.headers_mut().insert(
                "Content-Length",
                hyper::header::HeaderValue::from_str(sized)?,
            );
            assert_eq!(refusal(&req).as_deref(), no_body, "{sized:?}");
        }
        Ok(())
    }
}
