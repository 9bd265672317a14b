//! One client connection, on its own thread from accept to close: the HTTP request (a plain
//! request is answered and closed; an upgrade becomes a WebSocket), the greeting and the auth
//! message, then the writer loop that delivers quotes until the client leaves.
//!
//! The writer also reads. tungstenite cannot read and write one socket from two threads, so
//! this thread owns the `WebSocket`. It sleeps in `park_timeout` and wakes when the
//! distributor queued frames (it drains the queue, writes every frame into one buffer and
//! flushes once), when the watcher saw the socket readable (it reads without blocking until
//! there is nothing left: pings are answered, a close is noticed), or on the keep-alive grid
//! (it pings, and drops a peer that has not answered two pings).

use crate::auth::{self, AuthRequest};
use crate::config::redacted_key;
use crate::deadline::DeadlineStream;
use crate::distributor::{ClientSlot, JoinError, Kick};
use crate::http::{self, HeadError, Request};
use crate::metrics::{now_ms, AuthFailure};
use crate::pending::Member;
use crate::protocol::GREETING;
use crate::server::{Admitted, Context};
use crossbeam_channel::Receiver;
use log::{debug, error, info, warn};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, Utf8Bytes, WebSocket};

/// A client connection once upgraded: writes run against a deadline (see [`DeadlineStream`]).
type Socket = WebSocket<DeadlineStream>;

/// How often a thread waiting for a request or an auth message looks at the stop flag.
const STOP_SLICE: Duration = Duration::from_millis(250);
/// A write that cannot make progress for this long, or a batch of writes that takes this
/// long in all, means the peer is gone or hopeless.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the peer's answer to our close frame.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Serves one accepted connection to its end. `id` names it among the pending connections.
pub fn serve(ctx: &Context, mut stream: TcpStream, peer: SocketAddr, id: u64) {
    let _ = stream.set_nodelay(true);
    let (pending, evicted) = ctx.pending.enter(id, &stream);
    if evicted > 0 {
        debug!(
            "{peer}: {evicted} unauthenticated connection(s) dropped to make room (max_pending_connections)"
        );
    }
    let Some((_admitted, leftover)) = handshake(ctx, &mut stream, peer, &pending) else {
        return;
    };
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut ws = WebSocket::from_partially_read(
        DeadlineStream::new(stream),
        leftover,
        Role::Server,
        Some(ws_config(ctx)),
    );
    ws.get_mut().arm(WRITE_TIMEOUT);
    let mut budget = Budget::new(ctx.config.max_client_messages_per_sec);
    // A bug while serving this client must not leave it hanging, nor take others down: the
    // client is told (1011), the slot and the watch are released by their guards as the
    // panic unwinds, and every other client goes on.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        if ctx.echo {
            drop(pending);
            echo(ctx, &mut ws, &mut budget)
        } else {
            session(ctx, &mut ws, peer, pending, &mut budget)
        }
    }));
    let last_words = match outcome {
        Ok(words) => words,
        Err(payload) => {
            ctx.metrics.internal_errors.fetch_add(1, Ordering::Relaxed);
            error!(
                "{peer}: internal error while serving this client ({}); closing it with 1011",
                crate::server::panic_message(&*payload)
            );
            Some((CloseCode::Error, "Internal error".to_string()))
        }
    };
    if let Some((code, reason)) = last_words {
        // Counted here, whichever phase closed the client: before or after auth, or echo.
        ctx.metrics.protocol_error(u16::from(code));
        if reason == TOO_MANY {
            ctx.metrics
                .flood_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        close(&mut ws, code, reason);
    }
}

/// The HTTP part of a connection: reads the request within `handshake_timeout_secs`,
/// answers a plain request or a refused upgrade itself (and returns `None`), or accepts the
/// upgrade and returns the place taken among `max_clients` and any bytes read past the request.
fn handshake<'a>(
    ctx: &'a Context,
    stream: &mut TcpStream,
    peer: SocketAddr,
    pending: &Member<'_>,
) -> Option<(Admitted<'a>, Vec<u8>)> {
    let deadline = Instant::now() + ctx.config.handshake_timeout;
    let stopping = || ctx.stop.is_set();
    let (request, leftover) = match http::read_head(stream, deadline, STOP_SLICE, &stopping) {
        Ok(r) => r,
        Err(HeadError::Malformed(why)) => {
            debug!("{peer}: bad request: {why}");
            let body = format!("bad request: {why}\n");
            http::respond_and_close(stream, &http::response(400, "text/plain", &body, false));
            return None;
        }
        Err(HeadError::TooLarge) => {
            let resp = http::response(431, "text/plain", "request head too large\n", false);
            http::respond_and_close(stream, &resp);
            return None;
        }
        Err(e) => {
            debug!("{peer}: no request: {e:?}");
            return None;
        }
    };
    if !request.is_websocket_upgrade() {
        serve_http(ctx, stream, &request);
        return None;
    }
    if !http::origin_allowed(&request, &ctx.config.allowed_origins) {
        ctx.metrics
            .rejected_connections
            .fetch_add(1, Ordering::Relaxed);
        warn!(
            "{peer}: refused: Origin {:?} is not in allowed_origins",
            request.header("Origin").unwrap_or("")
        );
        let resp = http::response(403, "text/plain", "origin not allowed\n", false);
        http::respond_and_close(stream, &resp);
        return None;
    }
    // Checked before a place is taken: a malformed upgrade must not displace a waiting one.
    let accept = match http::accept_upgrade(&request) {
        Ok(a) => a,
        Err(refusal) => {
            ctx.metrics
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            http::respond_and_close(stream, &refusal.response());
            return None;
        }
    };
    let Some(admitted) = ctx.admit().or_else(|| make_room(ctx)) else {
        ctx.metrics
            .rejected_connections
            .fetch_add(1, Ordering::Relaxed);
        warn!(
            "{peer}: refused: max_clients ({}) reached",
            ctx.config.max_clients
        );
        let resp = http::response(503, "text/plain", "too many clients\n", false);
        http::respond_and_close(stream, &resp);
        return None;
    };
    pending.holds_a_place();
    stream.write_all(&accept).ok()?;
    Some((admitted, leftover))
}

/// With every `max_clients` place taken, gives the newcomer the place of the oldest
/// connection still waiting to authenticate, if any holds one (see [`crate::pending`]): else
/// a flood of upgrades that never authenticate would turn real clients away for as long as
/// `auth_timeout_secs`, again and again.
fn make_room(ctx: &Context) -> Option<Admitted<'_>> {
    if !ctx.pending.evict_oldest_holding_a_place() {
        return None;
    }
    // The evicted connection gives its place back as its thread unwinds, a moment from now;
    // the newcomer has it already, so for that moment there is one place too many.
    Some(ctx.take_place())
}

/// Greets, authenticates and delivers quotes until the client leaves. Returns the close
/// frame still owed to the client, if any.
fn session(
    ctx: &Context,
    ws: &mut Socket,
    peer: SocketAddr,
    pending: Member<'_>,
    budget: &mut Budget,
) -> Option<(CloseCode, String)> {
    ws.send(Message::text(GREETING)).ok()?;
    let auth = match authenticate(ctx, ws, peer, budget) {
        Ok(auth) => auth,
        Err(Refusal(words)) => return words,
    };
    drop(pending);
    let (slot, rx) = match ctx
        .hub
        .join(&auth.key, auth.symbols.as_deref(), std::thread::current())
    {
        Ok(joined) => joined,
        Err(e) => {
            let (why, reason) = match e {
                JoinError::UnknownSymbol(s) => (AuthFailure::Symbol, unknown_symbol(&s)),
                JoinError::TooManyForKey => (
                    AuthFailure::TooManyForKey,
                    "Too many connections for this key".to_string(),
                ),
            };
            ctx.metrics.auth_failed(why);
            warn!("{peer}: refused key {}: {reason}", redacted_key(&auth.key));
            return Some((CloseCode::Policy, reason));
        }
    };
    let subscription = Subscription::new(ctx, slot);
    ctx.metrics.auth_successes.fetch_add(1, Ordering::Relaxed);
    info!(
        "{peer}: authenticated key {} for {}",
        redacted_key(&auth.key),
        auth.symbols
            .as_ref()
            .map_or("all symbols".to_string(), |s| s.join(","))
    );
    let started = Instant::now();
    let end = deliver(ctx, ws, &subscription.slot, &rx, budget);
    drop(subscription);
    info!(
        "{peer}: disconnected after {:.1} s: {end}",
        started.elapsed().as_secs_f64()
    );
    end.close_frame()
        .map(|(code, reason)| (code, reason.to_string()))
}

/// A client's place in the hub, given back (and counted out) however the session ends,
/// a panic included.
struct Subscription<'a> {
    ctx: &'a Context,
    slot: Arc<ClientSlot>,
}

impl<'a> Subscription<'a> {
    fn new(ctx: &'a Context, slot: Arc<ClientSlot>) -> Subscription<'a> {
        ctx.metrics
            .clients_connected
            .fetch_add(1, Ordering::Relaxed);
        Subscription { ctx, slot }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        self.ctx.hub.leave(&self.slot);
        self.ctx
            .metrics
            .clients_connected
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The test-only echo service: every text or binary message goes back as it came. Reads,
/// limits and errors take the same paths as a real client's.
fn echo(ctx: &Context, ws: &mut Socket, budget: &mut Budget) -> Option<(CloseCode, String)> {
    // The write buffer is capped near one upstream frame, the biggest thing a real client is
    // sent; an echo must fit the biggest message a client may send, or a send over the cap
    // fails and the connection is dropped without a close frame.
    let most = ctx.config.client_write_buffer_bytes + ctx.config.max_message_bytes + 16;
    ws.set_config(|c| c.max_write_buffer_size = c.max_write_buffer_size.max(most));
    loop {
        if ctx.stop.is_set() {
            return Some((CloseCode::Away, "Server shutting down".into()));
        }
        let _ = ws.get_mut().set_read_timeout(Some(STOP_SLICE));
        let message = match ws.read() {
            Ok(m) => m,
            Err(WsError::Io(e)) if http::is_timeout(&e) => continue,
            Err(e) => return read_failure(&e),
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
fn read_failure(e: &WsError) -> Option<(CloseCode, String)> {
    close_for_read_error(e).map(|(code, reason)| (code, reason.to_string()))
}

const TOO_MANY: &str = "Too many messages";

/// How many messages a client may send: `rate` a second, in bursts of up to `rate`. Clients
/// of a feed send almost nothing (an auth message, a ping now and then), so a client that
/// sends a stream of messages is broken or hostile, and reading them costs everyone CPU.
pub struct Budget {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    /// `rate` 0 means no limit.
    pub fn new(rate: u32) -> Budget {
        let rate = if rate == 0 {
            f64::INFINITY
        } else {
            f64::from(rate)
        };
        Budget {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Spends one message; false when the budget is spent.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate.is_infinite() {
            return true;
        }
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn ws_config(ctx: &Context) -> WebSocketConfig {
    let max = ctx.config.max_message_bytes;
    // Clients send little (an auth message, pings), so a small read buffer is plenty and
    // thousands of clients do not each pin tungstenite's default 128 KiB. Frames are buffered
    // up to the write buffer size, then written; a batch ends in one flush.
    let chunk = ctx.config.client_write_buffer_bytes;
    WebSocketConfig::default()
        .read_buffer_size(ctx.config.client_read_buffer_bytes)
        .write_buffer_size(chunk)
        // Writes block (with a timeout) rather than pile up: the buffer holds at most one
        // chunk and one frame (with its header), whatever the peer does.
        .max_write_buffer_size(chunk + crate::upstream::MAX_UPSTREAM_FRAME + 16)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

fn serve_http(ctx: &Context, stream: &mut TcpStream, request: &Request) {
    ctx.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
    let head_only = request.method == "HEAD";
    let resp = if request.method != "GET" && !head_only {
        http::response(405, "text/plain", "only GET is served here\n", false)
    } else {
        match request.route() {
            "/healthz" if ctx.config.http_endpoints => {
                let (status, body) = ctx.metrics.health(
                    &ctx.config.market(),
                    ctx.config.upstream_stale,
                    ctx.metrics.now_ms(),
                );
                http::response(status, "application/json", &body, head_only)
            }
            "/metrics" if ctx.config.http_endpoints => {
                let body = ctx.metrics.render(
                    &ctx.config.market(),
                    &ctx.hub.last_quotes(),
                    ctx.hub.batching(),
                    ctx.pending.evictions.load(Ordering::Relaxed),
                    ctx.metrics.now_ms(),
                );
                http::response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    &body,
                    head_only,
                )
            }
            "/" if ctx.config.page => {
                let page = crate::page::render(&ctx.config.market());
                http::response(200, "text/html; charset=utf-8", &page, head_only)
            }
            _ => http::response(404, "text/plain", "not found\n", head_only),
        }
    };
    http::respond_and_close(stream, &resp);
}

/// A refused client and the close frame it is owed (none if it is gone).
struct Refusal(Option<(CloseCode, String)>);

fn refuse(ctx: &Context, peer: SocketAddr, why: AuthFailure, detail: &str) -> Refusal {
    ctx.metrics.auth_failed(why);
    warn!("{peer}: authentication refused: {detail}");
    let reason = match why {
        AuthFailure::BadKey => "Authentication failed",
        _ => "Failed to authenticate",
    };
    Refusal(Some((CloseCode::Policy, reason.to_string())))
}

fn unknown_symbol(symbol: &str) -> String {
    // A close reason is at most 123 bytes; the symbol came from the client.
    let shown: String = symbol.chars().take(32).collect();
    format!("Unknown symbol {shown}")
}

/// Reads the auth message within `auth_timeout` and checks it against the key file.
fn authenticate(
    ctx: &Context,
    ws: &mut Socket,
    peer: SocketAddr,
    budget: &mut Budget,
) -> Result<AuthRequest, Refusal> {
    let deadline = Instant::now() + ctx.config.auth_timeout;
    let text = loop {
        if ctx.stop.is_set() {
            return Err(Refusal(Some((
                CloseCode::Away,
                "Server shutting down".into(),
            ))));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(refuse(
                ctx,
                peer,
                AuthFailure::Timeout,
                "no auth message in time",
            ));
        }
        let message = match read_some(ws, left.min(STOP_SLICE)) {
            Ok(m) => m,
            Err(WsError::Io(e)) if http::is_timeout(&e) => continue,
            Err(e) => {
                let words = read_failure(&e);
                match &words {
                    Some((code, _)) => {
                        warn!("{peer}: closed before auth with {}: {e}", u16::from(*code))
                    }
                    None => debug!("{peer}: gone before auth: {e}"),
                }
                return Err(Refusal(words));
            }
        };
        if !budget.take(Instant::now()) {
            warn!("{peer}: closed before auth: too many messages");
            return Err(Refusal(Some((CloseCode::Policy, TOO_MANY.into()))));
        }
        match message {
            Message::Text(text) => break text,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                let _ = ws.flush();
            }
            // The client started the closing handshake: send the reply tungstenite queued.
            Message::Close(_) => {
                let _ = ws.flush();
                return Err(Refusal(None));
            }
            Message::Binary(_) => {
                return Err(refuse(ctx, peer, AuthFailure::BadMessage, "a binary frame"))
            }
        }
    };
    let request = auth::parse_auth(&text)
        .map_err(|e| refuse(ctx, peer, AuthFailure::BadMessage, &e.to_string()))?;
    let keys = ctx.keys();
    let Some(entry) = keys.lookup(&request.key) else {
        return Err(refuse(
            ctx,
            peer,
            AuthFailure::BadKey,
            &format!("unknown key {}", redacted_key(&request.key)),
        ));
    };
    let wanted: Vec<String> = request
        .symbols
        .clone()
        .or_else(|| entry.symbols.clone())
        .unwrap_or_default();
    for symbol in &wanted {
        if ctx.hub.symbol_id(symbol).is_none() {
            ctx.metrics.auth_failed(AuthFailure::Symbol);
            warn!("{peer}: refused: symbol {symbol:.32} is not carried");
            return Err(Refusal(Some((CloseCode::Policy, unknown_symbol(symbol)))));
        }
        if !entry.allows(symbol) {
            ctx.metrics.auth_failed(AuthFailure::Symbol);
            warn!(
                "{peer}: refused: key {} is not entitled to {symbol}",
                redacted_key(&request.key)
            );
            return Err(Refusal(Some((
                CloseCode::Policy,
                format!("Not entitled to symbol {symbol}"),
            ))));
        }
    }
    Ok(AuthRequest {
        key: request.key,
        symbols: (!wanted.is_empty()).then_some(wanted),
    })
}

/// Reads a message if one is complete, else waits up to `wait` for more bytes and returns a
/// timeout. A blocking `read` returns only with a whole message, so a peer that trickles the
/// fragments (or the bytes) of a message that never ends would hold it, and the thread,
/// past any deadline; tungstenite keeps the partial message between calls.
fn read_some(ws: &mut Socket, wait: Duration) -> Result<Message, WsError> {
    ws.get_mut().set_nonblocking(true)?;
    let result = ws.read();
    ws.get_mut().set_nonblocking(false)?;
    if let Err(WsError::Io(e)) = &result {
        if e.kind() == io::ErrorKind::WouldBlock {
            ws.get_mut().set_read_timeout(Some(wait))?;
            let _ = ws.get_ref().peek(&mut [0u8; 1]);
        }
    }
    result
}

/// Why a writer loop ended.
enum End {
    Kicked(Kick),
    ClientClosed,
    /// A frame that broke the protocol (1002), invalid UTF-8 (1007) or was too big (1009).
    ProtocolError(CloseCode, &'static str),
    Flood,
    PingTimeout,
    Failed(String),
}

impl End {
    fn close_frame(&self) -> Option<(CloseCode, &'static str)> {
        match self {
            End::Kicked(Kick::SlowConsumer) => Some((CloseCode::Policy, "Slow consumer")),
            End::Kicked(Kick::KeyRevoked) => Some((CloseCode::Policy, "Authentication failed")),
            End::Kicked(_) => Some((CloseCode::Away, "Server shutting down")),
            End::PingTimeout => Some((CloseCode::Away, "Ping timeout")),
            End::ProtocolError(code, reason) => Some((*code, reason)),
            End::Flood => Some((CloseCode::Policy, TOO_MANY)),
            End::ClientClosed | End::Failed(_) => None,
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Kicked(Kick::SlowConsumer) => f.write_str("slow consumer (queue full)"),
            End::Kicked(Kick::KeyRevoked) => f.write_str("key removed from the key file"),
            End::Kicked(_) => f.write_str("server shutting down"),
            End::ClientClosed => f.write_str("closed by the client"),
            End::PingTimeout => f.write_str("no answer to two pings"),
            End::ProtocolError(code, reason) => {
                write!(f, "{reason} (close {})", u16::from(*code))
            }
            End::Flood => f.write_str("sent more than max_client_messages_per_sec"),
            End::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// The next instant on the keep-alive grid. Every writer computes the same grid from the wall
/// clock, so idle writers wake together and the host sees one burst, not a steady drizzle.
fn next_tick(period: Duration) -> Instant {
    let period_ms = period.as_millis().max(1) as u64;
    let now = now_ms();
    let wait = period_ms - now % period_ms;
    Instant::now() + Duration::from_millis(wait)
}

/// The writer loop: delivers queued frames, answers the client, keeps the connection alive.
fn deliver(
    ctx: &Context,
    ws: &mut Socket,
    slot: &Arc<ClientSlot>,
    rx: &Receiver<Utf8Bytes>,
    budget: &mut Budget,
) -> End {
    let fd = ws.get_ref().as_raw_fd();
    if let Err(e) = ctx.watcher.watch(fd, slot) {
        return End::Failed(format!("cannot watch the socket: {e}"));
    }
    let _watched = Watched { ctx, fd, slot };
    // Anything that arrived with or after the auth message came before the watch began.
    slot.readable.store(true, Ordering::SeqCst);
    deliver_loop(ctx, ws, slot, rx, budget)
}

/// The socket's registration with the watcher, undone however the writer loop ends.
struct Watched<'a> {
    ctx: &'a Context,
    fd: std::os::unix::io::RawFd,
    slot: &'a ClientSlot,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.ctx.watcher.unwatch(self.fd, self.slot);
    }
}

fn deliver_loop(
    ctx: &Context,
    ws: &mut Socket,
    slot: &ClientSlot,
    rx: &Receiver<Utf8Bytes>,
    budget: &mut Budget,
) -> End {
    let ping_every = ctx.config.client_ping;
    let mut tick = next_tick(ping_every);
    let mut last_heard = Instant::now();
    loop {
        let kick = slot.kicked();
        if kick != Kick::None {
            return End::Kicked(kick);
        }
        // Whatever this round writes (quotes, a pong, a ping) must be taken in time.
        ws.get_mut().arm(WRITE_TIMEOUT);
        let mut written = 0u64;
        while let Ok(frame) = rx.try_recv() {
            if let Err(e) = ws.write(Message::Text(frame)) {
                return End::Failed(format!("write failed: {e}"));
            }
            written += 1;
            if slot.kicked() != Kick::None {
                break;
            }
        }
        if written > 0 {
            #[cfg(test)]
            tests::maybe_fail(&slot.key);
            if let Err(e) = ws.flush() {
                return End::Failed(format!("write failed: {e}"));
            }
            ctx.metrics
                .quotes_delivered
                .fetch_add(written, Ordering::Relaxed);
        }
        if slot.readable.swap(false, Ordering::SeqCst) {
            match read_pass(ws, budget) {
                Ok(true) => last_heard = Instant::now(),
                Ok(false) => {}
                Err(end) => return end,
            }
        }
        let now = Instant::now();
        if now >= tick {
            if now.duration_since(last_heard) > ping_every * 2 {
                return End::PingTimeout;
            }
            if let Err(e) = ws.send(Message::Ping(Default::default())) {
                return End::Failed(format!("ping failed: {e}"));
            }
            tick = next_tick(ping_every);
        }
        let appointment = if written > 0 {
            ctx.hub.next_batch_wake(slot, Instant::now())
        } else {
            None
        };
        if slot.going_idle(rx, appointment.is_some()) {
            let until = appointment.map_or(tick, |a| a.min(tick));
            std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
            slot.awake();
            slot.help_wake();
        }
    }
}

/// Reads everything the client has sent without blocking: tungstenite queues the pong for a
/// ping and the reply to a close; both are flushed here. Returns whether anything arrived.
fn read_pass(ws: &mut Socket, budget: &mut Budget) -> Result<bool, End> {
    if let Err(e) = ws.get_mut().set_nonblocking(true) {
        return Err(End::Failed(e.to_string()));
    }
    let mut heard = false;
    let result = loop {
        match ws.read() {
            Ok(Message::Close(_)) => break Err(End::ClientClosed),
            Ok(_) if !budget.take(Instant::now()) => break Err(End::Flood),
            Ok(_) => heard = true,
            // A wake-up that completed no message is charged as one: a peer sending endless
            // fragments of a message that never ends costs reads like a flood of messages.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                if !heard && !budget.take(Instant::now()) {
                    break Err(End::Flood);
                }
                break Ok(heard);
            }
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                break Err(End::ClientClosed)
            }
            Err(e) => {
                break Err(match close_for_read_error(&e) {
                    Some((code, reason)) => End::ProtocolError(code, reason),
                    None => End::Failed(format!("read failed: {e}")),
                })
            }
        }
    };
    if let Err(e) = ws.get_mut().set_nonblocking(false) {
        return Err(End::Failed(e.to_string()));
    }
    // Sends the pong, or completes the closing handshake the client started.
    match ws.flush() {
        Ok(()) | Err(WsError::ConnectionClosed) => result,
        Err(e) if result.is_ok() => Err(End::Failed(format!("write failed: {e}"))),
        Err(_) => result,
    }
}

/// Sends a close frame and waits briefly for the peer's answer, so the frame is not lost to
/// a reset when the socket closes with unread data.
fn close(ws: &mut Socket, code: CloseCode, reason: String) {
    let _ = ws.get_mut().set_write_timeout(Some(Duration::from_secs(1)));
    ws.get_mut().arm(Duration::from_secs(1));
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if ws.close(Some(frame)).is_err() {
        return;
    }
    // The peer is told we are done (FIN after the close frame: RFC 6455 has the server
    // close the TCP connection first), and what it still sends, its close reply included, is
    // read as raw bytes and dropped until it closes too or the linger is over. Raw, because
    // after an error (1002, 1007, 1009) tungstenite's reader may be stuck mid-frame, and
    // because a WebSocket read returns only with a whole message: a peer trickling bytes
    // would hold the thread past any deadline. Unread bytes at close would turn our close
    // frame into a reset.
    let _ = ws.get_mut().shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + CLOSE_LINGER;
    let mut sink = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let _ = ws.get_mut().set_read_timeout(Some(left));
        if !matches!(io::Read::read(ws.get_mut(), &mut sink), Ok(n) if n > 0) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::Server;
    use std::cell::Cell;

    /// The key whose writer panics after queuing its first frame (see [`maybe_fail`]).
    const PANIC_KEY: &str = "panic-in-the-writer-key";

    /// A fault injected into the writer loop, in unit tests only.
    pub fn maybe_fail(key: &str) {
        thread_local!(static FAILED: Cell<bool> = const { Cell::new(false) });
        if key == PANIC_KEY && !FAILED.with(|f| f.replace(true)) {
            panic!("injected fault");
        }
    }

    #[test]
    fn the_budget_allows_bursts_up_to_the_rate_then_refills() {
        let start = Instant::now();
        let mut b = Budget::new(10);
        b.last = start;
        assert!((0..10).all(|_| b.take(start)));
        assert!(!b.take(start));
        assert!(b.take(start + Duration::from_millis(100)), "one refilled");
        assert!(!b.take(start + Duration::from_millis(100)));
        let mut unlimited = Budget::new(0);
        assert!((0..100_000).all(|_| unlimited.take(start)));
    }

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
    }

    fn read_text(ws: &mut WebSocket<TcpStream>) -> Message {
        loop {
            match ws.read().expect("a message") {
                Message::Ping(_) | Message::Pong(_) => {}
                m => return m,
            }
        }
    }

    fn connect(addr: SocketAddr, key: &str) -> WebSocket<TcpStream> {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).unwrap();
        assert_eq!(read_text(&mut ws), Message::text(GREETING));
        ws.send(Message::text(format!(r#"{{"userKey":"{key}"}}"#)))
            .unwrap();
        ws
    }

    #[test]
    fn a_panic_while_serving_one_client_closes_only_that_client_with_1011() {
        let dir = std::env::temp_dir().join(format!("fxproxy-panic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("keys"),
            format!("good-key-0123456789\n{PANIC_KEY}\n"),
        )
        .unwrap();
        let text = "listen = 127.0.0.1:0\nupstream_url = sim\nsim_rate = 200\nsymbols = EURUSD\n\
                    user_keys_file = keys\nstatus_interval_secs = 0\n";
        let cfg = config::parse(text, &dir.join("proxy.conf")).unwrap();
        let server = Server::start(cfg).unwrap();
        let addr = server.local_addr();
        let metrics = server.metrics();
        let mut good = connect(addr, "good-key-0123456789");
        let mut bad = connect(addr, PANIC_KEY);
        // It may get a quote or two first: they were queued before the fault.
        let mut first = read_text(&mut bad);
        while let Message::Text(_) = first {
            first = read_text(&mut bad);
        }
        match first {
            Message::Close(Some(f)) => {
                assert_eq!(f.code, CloseCode::Error);
                assert_eq!(f.reason.as_str(), "Internal error");
            }
            other => panic!("expected close 1011, got {other:?}"),
        }
        // The other client goes on receiving, and the failed one has left the hub.
        for _ in 0..20 {
            assert!(matches!(read_text(&mut good), Message::Text(_)));
        }
        assert_eq!(metrics.internal_errors.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.clients_connected.load(Ordering::Relaxed), 1);
        server.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
