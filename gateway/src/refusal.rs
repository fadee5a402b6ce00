//! The one place a failure before the upgrade becomes what the client sees: an HTTP
//! status with a one-line reason.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};

use crate::auth::AuthError;

/// Why an upgrade request was refused. Each variant maps to exactly one status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Not a valid WebSocket upgrade (400).
    #[error("{0}")]
    BadRequest(&'static str),
    /// A request that is not `GET` on the gateway path (405).
    #[error("method not allowed: use GET with a WebSocket upgrade")]
    MethodNotAllowed,
    /// The path is not the gateway's (404).
    #[error("no such path")]
    UnknownPath,
    /// No `ID` header (400).
    #[error("missing ID header naming the backend")]
    MissingId,
    /// A browser page from an origin outside `[browser] allowed_origins` (403).
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// The `ID` names no configured backend (404).
    #[error("unknown backend ID")]
    UnknownBackend,
    /// Missing or invalid token (401), or valid without the scope (403).
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// The backend refused the connection or the handshake (502).
    #[error("backend unavailable: {0}")]
    BadGateway(String),
    /// The backend did not answer in time (504).
    #[error("backend did not answer in time")]
    GatewayTimeout,
    /// Over the connection limit or shutting down (503).
    #[error("{0}")]
    Unavailable(&'static str),
    /// Every instance of the backend holds its `max_sessions` (503): no backend was asked.
    #[error("backend at capacity")]
    AtCapacity,
    /// Over the per-address connection rate (429).
    #[error("{0}")]
    TooManyRequests(&'static str),
}

impl Refusal {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) | Refusal::MissingId => StatusCode::BAD_REQUEST,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::UnknownPath | Refusal::UnknownBackend => StatusCode::NOT_FOUND,
            Refusal::Auth(AuthError::MissingScope(_)) | Refusal::OriginNotAllowed => {
                StatusCode::FORBIDDEN
            }
            Refusal::Auth(_) => StatusCode::UNAUTHORIZED,
            Refusal::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Refusal::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Unavailable(_) | Refusal::AtCapacity => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A short stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::MethodNotAllowed => "method",
            Refusal::UnknownPath => "unknown_path",
            Refusal::MissingId => "missing_id",
            Refusal::UnknownBackend => "unknown_backend",
            Refusal::OriginNotAllowed => "origin",
            Refusal::Auth(AuthError::MissingScope(_)) => "forbidden",
            Refusal::Auth(_) => "unauthorized",
            Refusal::BadGateway(_) => "bad_gateway",
            Refusal::GatewayTimeout => "gateway_timeout",
            Refusal::Unavailable(_) => "unavailable",
            Refusal::AtCapacity => "backend_at_capacity",
            Refusal::TooManyRequests(_) => "rate",
        }
    }

    /// The HTTP response: status, a one-line plain-text reason, and the headers it implies.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let mut body = self.to_string().replace(['\r', '\n'], " ");
        body.push('\n');
        let mut builder = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(header::CONNECTION, "close");
        match &self {
            Refusal::Auth(AuthError::MissingScope(_)) => {
                builder = builder.header(
                    header::WWW_AUTHENTICATE,
                    "Bearer error=\"insufficient_scope\"",
                );
            }
            // RFC 6750 section 3.1: no error code for a request without a bearer token,
            // or with another scheme.
            Refusal::Auth(AuthError::Missing | AuthError::NotBearer) => {
                builder = builder.header(header::WWW_AUTHENTICATE, "Bearer");
            }
            Refusal::Auth(_) => {
                builder =
                    builder.header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"");
            }
            Refusal::BadRequest(_) => {
                builder = builder.header(header::SEC_WEBSOCKET_VERSION, "13");
            }
            Refusal::TooManyRequests(_) => {
                builder = builder.header(header::RETRY_AFTER, "1");
            }
            // RFC 9110 section 15.5.6: a 405 lists the methods the resource takes.
            Refusal::MethodNotAllowed => {
                builder = builder.header(header::ALLOW, "GET");
            }
            _ => {}
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| {
                let mut r = Response::new(Full::new(Bytes::from_static(b"refused\n")));
                *r.status_mut() = status;
                r
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_token_that_was_tried_gets_an_error_code_in_its_challenge() {
        let challenge = |e: AuthError| {
            Refusal::Auth(e)
                .into_response()
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes().to_vec())
        };
        // RFC 6750 section 3.1: none without a bearer token (another scheme included).
        assert_eq!(challenge(AuthError::Missing), Some(b"Bearer".to_vec()));
        assert_eq!(challenge(AuthError::NotBearer), Some(b"Bearer".to_vec()));
        assert_eq!(
            challenge(AuthError::Expired),
            Some(b"Bearer error=\"invalid_token\"".to_vec())
        );
    }

    #[test]
    fn statuses_follow_the_design() {
        assert_eq!(Refusal::MissingId.status(), 400);
        assert_eq!(Refusal::UnknownBackend.status(), 404);
        assert_eq!(Refusal::Auth(AuthError::Expired).status(), 401);
        assert_eq!(
            Refusal::Auth(AuthError::MissingScope("admin".into())).status(),
            403
        );
        assert_eq!(Refusal::GatewayTimeout.status(), 504);
        let r = Refusal::Auth(AuthError::Missing).into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let r = Refusal::TooManyRequests("over the per-address connection rate").into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = Refusal::MethodNotAllowed.into_response();
        assert_eq!(r.headers()[header::ALLOW], "GET");
    }
}
