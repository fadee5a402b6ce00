//! WebSocket extensions across the gateway: the client's `permessage-deflate` offers go to
//! the backend, and the backend's acceptance comes back to the client (RFC 7692).
//!
//! The gateway never inflates or deflates anything. A compressed message is passed on as
//! it came, with its RSV1 bit, so compression stays between the client and the backend,
//! as it does through nginx, HAProxy or Envoy. `permessage-deflate` is the only extension
//! passed: its framing (RSV1 on a message's first frame only, never on control frames) is
//! one the gateway can check without knowing the compressed bytes. Any other offer is
//! dropped, and a backend that accepts anything else is refused (502).

use hyper::header::{HeaderMap, SEC_WEBSOCKET_EXTENSIONS};

/// The one extension passed through.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// The client's `permessage-deflate` offers, in its order and with their parameters, as
/// one `Sec-WebSocket-Extensions` value for the backend; `None` when it made none.
pub fn deflate_offers(headers: &HeaderMap) -> Option<String> {
    let offers: Vec<&str> = headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(elements)
        .filter(|e| is_deflate(e))
        .collect();
    (!offers.is_empty()).then(|| offers.join(", "))
}

/// Why a backend's `Sec-WebSocket-Extensions` answer cannot be passed to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Nothing was offered to the backend, or it accepted something else.
    #[error("backend negotiated an extension that was not offered")]
    NotOffered,
    /// More than one extension, or `permessage-deflate` twice.
    #[error("backend accepted more than one extension")]
    Several,
}

/// Checks the backend's answer against what it was offered: exactly one
/// `permessage-deflate`. Its parameters are the client's to check (RFC 7692 §7.1 says
/// which answers a client must fail); the gateway passes them on unchanged.
pub fn check_answer(answer: &str, offered: bool) -> Result<(), AnswerError> {
    let mut accepted = elements(answer);
    match (accepted.next(), accepted.next()) {
        (Some(only), None) if offered && is_deflate(only) => Ok(()),
        (Some(_), Some(_)) if offered => Err(AnswerError::Several),
        _ => Err(AnswerError::NotOffered),
    }
}

/// Whether an extension element (`name; param=value; …`) is `permessage-deflate`.
fn is_deflate(element: &str) -> bool {
    let name = element.split(';').next().unwrap_or_default().trim();
    name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE)
}

/// The comma-separated elements of a header value, trimmed and non-empty; a comma inside
/// a quoted parameter value does not split.
fn elements(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = value;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut escaped = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if escaped {
                    escaped = false;
                } else if quoted && c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quoted = !quoted;
                } else if c == ',' && !quoted {
                    return true;
                }
                false
            })
            .map_or(rest.len(), |(i, _)| i);
        let element = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or_default();
        if !element.is_empty() {
            return Some(element);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_deflate_offers_are_passed_in_order_with_their_parameters() {
        let h = headers(&[
            "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame",
            "foo; bar=\"a, permessage-deflate\", Permessage-Deflate; server_no_context_takeover",
        ]);
        assert_eq!(
            deflate_offers(&h).as_deref(),
            Some("permessage-deflate; client_max_window_bits, Permessage-Deflate; server_no_context_takeover")
        );
        assert_eq!(deflate_offers(&headers(&["x-webkit-deflate-frame"])), None);
        assert_eq!(deflate_offers(&headers(&[" , "])), None);
        assert_eq!(deflate_offers(&HeaderMap::new()), None);
    }

    #[test]
    fn the_answer_must_be_one_deflate_that_was_offered() {
        assert_eq!(check_answer("permessage-deflate", true), Ok(()));
        assert_eq!(
            check_answer(
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
                true
            ),
            Ok(())
        );
        assert_eq!(
            check_answer("permessage-deflate", false),
            Err(AnswerError::NotOffered)
        );
        assert_eq!(
            check_answer("x-webkit-deflate-frame", true),
            Err(AnswerError::NotOffered)
        );
        assert_eq!(
            check_answer("permessage-deflate, permessage-deflate", true),
            Err(AnswerError::Several)
        );
        assert_eq!(check_answer("", true), Err(AnswerError::NotOffered));
    }
}
