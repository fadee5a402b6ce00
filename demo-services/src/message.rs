//! The sample's `RequestMessage`, and the cheap test that decides whether a text message
//! is worth parsing as one.

use serde::{Deserialize, Serialize};

/// The JSON message the sample's client sends every 5 s, e.g.
/// `{"id":1,"name":"Alice","email":"alice@example.com","phone":"555-0100","dob":"1990-01-01"}`.
///
/// Parsing is tolerant: `id` may be a number or a string (any JSON value), and unknown
/// extra fields are ignored, because the backends only log these messages — a stricter
/// type would just drop log lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestMessage {
    /// The client's message number or identifier.
    pub id: serde_json::Value,
    /// Person's name.
    pub name: String,
    /// Person's e-mail address.
    pub email: String,
    /// Person's phone number.
    pub phone: String,
    /// Person's date of birth.
    pub dob: String,
}

impl RequestMessage {
    /// Parses `payload` as a `RequestMessage`, or `None` if it is anything else.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }
}

/// True if `payload` could be a JSON object (first non-blank byte is `{`): the one-byte
/// check that lets every other message be echoed without parsing or rate-limit
/// bookkeeping.
pub(crate) fn may_be_json_object(payload: &[u8]) -> bool {
    payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numeric_and_string_ids_and_ignores_extras() {
        let m = RequestMessage::parse(
            br#"{"id":7,"name":"A","email":"a@x","phone":"1","dob":"2000-01-01","extra":true}"#,
        );
        assert_eq!(m.map(|m| m.id), Some(serde_json::json!(7)));
        let m = RequestMessage::parse(
            br#"{"id":"x-7","name":"A","email":"a@x","phone":"1","dob":"2000-01-01"}"#,
        );
        assert_eq!(m.map(|m| m.id), Some(serde_json::json!("x-7")));
    }

    #[test]
    fn rejects_other_messages() {
        assert!(RequestMessage::parse(br#"{"message":"hi"}"#).is_none());
        assert!(RequestMessage::parse(b"hello").is_none());
        assert!(RequestMessage::parse(b"").is_none());
    }

    #[test]
    fn json_object_prefilter() {
        assert!(may_be_json_object(b"  {\"id\":1}"));
        assert!(!may_be_json_object(b"[1]"));
        assert!(!may_be_json_object(b"hello"));
        assert!(!may_be_json_object(b""));
    }
}
