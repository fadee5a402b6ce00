//! Handshake checks: is this a WebSocket upgrade for our path?

use hyper::header::{self, HeaderMap};
use hyper::{Method, Request};

use crate::refusal::Refusal;

/// What the checks extract from a valid upgrade request.
#[derive(Debug)]
pub struct UpgradeRequest<'r> {
    /// The client's `Sec-WebSocket-Key`, answered in the 101.
    pub key: &'r [u8],
}

/// Checks path, method and the WebSocket upgrade headers, in that order.
pub fn check<'r, B>(req: &'r Request<B>, path: &str) -> Result<UpgradeRequest<'r>, Refusal> {
    if req.uri().path() != path {
        return Err(Refusal::UnknownPath);
    }
    if req.method() != Method::GET {
        return Err(Refusal::MethodNotAllowed);
    }
    let headers = req.headers();
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(Refusal::BadRequest("not a WebSocket upgrade request"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Refusal::BadRequest(
            "unsupported Sec-WebSocket-Version: use 13",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|v| v.as_bytes())
        .filter(|k| k.len() == 24)
        .ok_or(Refusal::BadRequest("missing or invalid Sec-WebSocket-Key"))?;
    Ok(UpgradeRequest { key })
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
}
