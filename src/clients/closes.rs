//! The close frames fxproxy owes a client, and which read error earns which, in one place for
//! the admission loop (before auth) and the writer (after).

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Error as WsError;

/// The reason sent with 1008 to a client that sends more than its message budget.
pub const TOO_MANY: &str = "Too many messages";
/// The reason sent with 1008 to a client whose queue filled or that stopped reading.
pub const SLOW_CONSUMER: &str = "Slow consumer";
/// The reason sent with 1001 when the proxy stops.
pub const SHUTTING_DOWN: &str = "Server shutting down";
/// The reason sent with 1012 when the proxy stops and systemd holds its listening socket, so
/// that a reconnect waits in the socket's queue for the next process.
pub const RESTARTING: &str = "Server restarting";

/// The reason sent with 1013 to an upgraded client that cannot be served now: its thread
/// could not start, or its place went to a newcomer before its auth message came.
pub const TRY_AGAIN: &str = "Try again later";

/// The close owed to every client when the proxy stops: 1012 (Service Restart: reconnect)
/// when the listening socket outlives the process, 1001 (going away) when it does not.
pub fn on_stop(restart: bool) -> (CloseCode, &'static str) {
    if restart {
        (CloseCode::Restart, RESTARTING)
    } else {
        (CloseCode::Away, SHUTTING_DOWN)
    }
}

/// A close frame owed to a client: code and reason.
pub type Owed = (CloseCode, String);

/// The close frame owed to a client whose frame could not be read: 1002 for a protocol
/// error, 1007 for invalid UTF-8, 1009 for a message over `max_message_bytes`. `None` when
/// the connection itself is gone and nobody is left to tell.
pub fn close_for_read_error(e: &WsError) -> Option<(CloseCode, &'static str)> {
    use tungstenite::error::ProtocolError;
    match e {
        WsError::Capacity(_) => Some((CloseCode::Size, "Message too big")),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "Invalid UTF-8")),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some((CloseCode::Protocol, "Protocol error")),
        _ => None,
    }
}

/// [`close_for_read_error`] with the reason owned, as refusals carry it.
pub fn read_failure(e: &WsError) -> Option<Owed> {
    close_for_read_error(e).map(|(code, reason)| (code, reason.to_string()))
}

/// Whether an I/O error only means "not now" on a non-blocking socket.
pub fn would_block(e: &WsError) -> bool {
    matches!(e, WsError::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_map_to_close_codes() {
        use tungstenite::error::{CapacityError, ProtocolError};
        let code = |e: WsError| close_for_read_error(&e).map(|(c, _)| u16::from(c));
        assert_eq!(
            code(WsError::Capacity(CapacityError::MessageTooLong {
                size: 2,
                max_size: 1
            })),
            Some(1009)
        );
        assert_eq!(code(WsError::Utf8("bad".into())), Some(1007));
        assert_eq!(
            code(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient)),
            Some(1002)
        );
        assert_eq!(
            code(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )),
            None
        );
        assert_eq!(code(WsError::ConnectionClosed), None);
        assert_eq!(u16::from(on_stop(true).0), 1012);
        assert_eq!(u16::from(on_stop(false).0), 1001);
        assert!(would_block(&WsError::Io(
            std::io::ErrorKind::WouldBlock.into()
        )));
        assert!(!would_block(&WsError::ConnectionClosed));
    }
}
