//! Small facts about socket errors that every blocking loop needs.

use std::io;

/// A read or write that only timed out (the socket's timeout is how blocking loops look up
/// now and then): WouldBlock on Unix, TimedOut on Windows.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The same, for an error from tungstenite.
pub fn is_ws_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if is_timeout(io))
}
