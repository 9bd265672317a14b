//! The echo service the Autobahn fuzzing client needs, compiled only with the `autobahn`
//! feature (`cargo test --features autobahn --test autobahn`), never into the binary users run.
//! Every connection takes the production path (request parsing, limits, handshake,
//! timeouts, buffer sizes, the message budget, the mapping of protocol errors to close
//! codes); only instead of the greeting and the auth, each message is echoed back.

use super::budget::Budget;
use super::closes;
use super::closes::{Owed, TOO_MANY};
use super::context::Context;
use super::stream::ClientStream;
use log::debug;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, Message, WebSocket};

/// How often the echo service looks at the stop flag.
const STOP_SLICE: Duration = Duration::from_millis(250);

/// Every text or binary message goes back as it came; reads, limits and errors take the same
/// paths as a real client's.
pub fn serve(ctx: &Context, ws: &mut WebSocket<ClientStream>, budget: &mut Budget) -> Option<Owed> {
    // The write buffer is capped near one upstream frame, the biggest thing a real client is
    // sent; an echo must fit the biggest message a client may send, or a send over the cap
    // fails and the connection is dropped without a close frame.
    let config = ctx.config();
    let most = config.client_write_buffer_bytes + config.max_message_bytes + 16;
    ws.set_config(|c| c.max_write_buffer_size = c.max_write_buffer_size.max(most));
    if ws.get_mut().set_nonblocking(false).is_err() {
        return None;
    }
    loop {
        if ctx.stop.is_set() {
            return Some((CloseCode::Away, closes::SHUTTING_DOWN.into()));
        }
        let _ = ws.get_mut().set_read_timeout(Some(STOP_SLICE));
        let message = match ws.read() {
            Ok(m) => m,
            Err(WsError::Io(e)) if crate::base::io::is_timeout(&e) => continue,
            Err(e) => return closes::read_failure(&e),
        };
        if !budget.take(Instant::now()) {
            return Some((CloseCode::Policy, TOO_MANY.into()));
        }
        let sent = match message {
            Message::Text(_) | Message::Binary(_) => ws.send(message),
            // Queued pongs and the reply to a close go out with the flush.
            _ => ws.flush(),
        };
        // Closed (after the closing handshake) or failed: either way nobody is left to tell.
        if let Err(e) = sent {
            debug!("echo connection ended: {e}");
            return None;
        }
    }
}
