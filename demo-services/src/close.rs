//! What a session sends when it ends: the echo of a peer's close frame, or the close code
//! for a protocol error the peer made.

use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};

/// Protocol error (RFC 6455 §7.4.1).
pub(crate) const PROTOCOL_ERROR: u16 = 1002;
/// Text that is not UTF-8.
const INVALID_PAYLOAD: u16 = 1007;
/// Frame larger than the configured maximum.
const MESSAGE_TOO_BIG: u16 = 1009;

/// True for the codes a peer may put in a close frame: the defined ones of RFC 6455 and
/// the IANA registry (1000–1003, 1007–1014) and the application ranges 3000–4999. Unlike
/// fastwebsockets' own check this accepts 1012–1014, which a gateway may relay.
fn code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The answer to a peer's close frame: the same code and reason when they are valid (the
/// sample's backends echo them, and tests check it), an empty close for an empty one,
/// and 1002 / 1007 for a malformed one.
pub(crate) fn reply_to_close(payload: Payload<'_>) -> Frame<'_> {
    match payload.len() {
        0 => Frame::close_raw(payload),
        1 => Frame::close(PROTOCOL_ERROR, b""),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !code_allowed(code) {
                Frame::close(PROTOCOL_ERROR, b"")
            } else if std::str::from_utf8(&payload[2..]).is_err() {
                Frame::close(INVALID_PAYLOAD, b"")
            } else {
                Frame::new(true, OpCode::Close, None, payload)
            }
        }
    }
}

/// The close frame to send when reading failed because the peer broke the protocol, or
/// `None` when the connection itself is gone (I/O error, EOF) and nothing can be sent.
pub(crate) fn close_for_read_error(error: &WebSocketError) -> Option<Frame<'static>> {
    let code = match error {
        WebSocketError::FrameTooLarge => MESSAGE_TOO_BIG,
        WebSocketError::InvalidUTF8 => INVALID_PAYLOAD,
        WebSocketError::ReservedBitsNotZero
        | WebSocketError::ControlFrameFragmented
        | WebSocketError::PingFrameTooLarge
        | WebSocketError::InvalidValue
        | WebSocketError::InvalidFragment
        | WebSocketError::InvalidContinuationFrame
        | WebSocketError::InvalidCloseFrame
        | WebSocketError::InvalidCloseCode => PROTOCOL_ERROR,
        _ => return None,
    };
    Some(Frame::close(code, b""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    }

    fn reply(payload: Vec<u8>) -> Vec<u8> {
        reply_to_close(Payload::Owned(payload)).payload.to_vec()
    }

    #[test]
    fn valid_close_is_echoed() {
        assert_eq!(
            reply(close_payload(4001, b"bye")),
            close_payload(4001, b"bye")
        );
        assert_eq!(reply(close_payload(1000, b"")), close_payload(1000, b""));
        assert_eq!(
            reply(close_payload(1014, b"bad gateway")),
            close_payload(1014, b"bad gateway")
        );
        assert_eq!(reply(Vec::new()), Vec::<u8>::new());
    }

    #[test]
    fn malformed_close_gets_an_error_code() {
        assert_eq!(reply(vec![3]), close_payload(1002, b""));
        assert_eq!(reply(close_payload(1005, b"")), close_payload(1002, b""));
        assert_eq!(reply(close_payload(999, b"")), close_payload(1002, b""));
        assert_eq!(
            reply(close_payload(1000, &[0xff, 0xfe])),
            close_payload(1007, b"")
        );
    }

    #[test]
    fn read_errors_map_to_codes() {
        let code = |e: WebSocketError| {
            close_for_read_error(&e).map(|f| u16::from_be_bytes([f.payload[0], f.payload[1]]))
        };
        assert_eq!(code(WebSocketError::FrameTooLarge), Some(1009));
        assert_eq!(code(WebSocketError::InvalidUTF8), Some(1007));
        assert_eq!(code(WebSocketError::ReservedBitsNotZero), Some(1002));
        assert_eq!(code(WebSocketError::UnexpectedEOF), None);
    }
}
