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
use crate::distributor::{ClientSlot, JoinError, Kick};
use crate::http::{self, HeadError, Request};
use crate::metrics::{now_ms, AuthFailure};
use crate::protocol::GREETING;
use crate::server::Context;
use crossbeam_channel::Receiver;
use log::{debug, info, warn};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, Utf8Bytes, WebSocket};

/// How often a thread waiting for a request or an auth message looks at the stop flag.
const STOP_SLICE: Duration = Duration::from_millis(250);
/// A write that cannot make progress for this long means the peer is gone or hopeless.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the peer's answer to our close frame.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Serves one accepted connection to its end.
pub fn serve(ctx: &Context, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + ctx.config.handshake_timeout;
    let stopping = || ctx.stop.is_set();
    let (request, leftover) = match http::read_head(&mut stream, deadline, STOP_SLICE, &stopping) {
        Ok(r) => r,
        Err(HeadError::Malformed(why)) => {
            debug!("{peer}: bad request: {why}");
            let body = format!("bad request: {why}\n");
            http::respond_and_close(
                &mut stream,
                &http::response(400, "text/plain", &body, false),
            );
            return;
        }
        Err(HeadError::TooLarge) => {
            let resp = http::response(431, "text/plain", "request head too large\n", false);
            http::respond_and_close(&mut stream, &resp);
            return;
        }
        Err(e) => {
            debug!("{peer}: no request: {e:?}");
            return;
        }
    };
    if !request.is_websocket_upgrade() {
        serve_http(ctx, &mut stream, &request);
        return;
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
        http::respond_and_close(&mut stream, &resp);
        return;
    }
    let Some(_admitted) = ctx.admit() else {
        ctx.metrics
            .rejected_connections
            .fetch_add(1, Ordering::Relaxed);
        warn!(
            "{peer}: refused: max_clients ({}) reached",
            ctx.config.max_clients
        );
        let resp = http::response(503, "text/plain", "too many clients\n", false);
        http::respond_and_close(&mut stream, &resp);
        return;
    };
    let accept = match http::accept_upgrade(&request) {
        Ok(a) => a,
        Err(why) => {
            ctx.metrics
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            let resp = http::response(400, "text/plain", &format!("{why}\n"), false);
            http::respond_and_close(&mut stream, &resp);
            return;
        }
    };
    if stream.write_all(&accept).is_err() {
        return;
    }
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut ws =
        WebSocket::from_partially_read(stream, leftover, Role::Server, Some(ws_config(ctx)));
    if ws.send(Message::text(GREETING)).is_err() {
        return;
    }
    let auth = match authenticate(ctx, &mut ws, peer) {
        Ok(auth) => auth,
        Err(Refusal { code, reason }) => {
            close(&mut ws, code, reason);
            return;
        }
    };
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
            close(&mut ws, CloseCode::Policy, reason);
            return;
        }
    };
    ctx.metrics.auth_successes.fetch_add(1, Ordering::Relaxed);
    ctx.metrics
        .clients_connected
        .fetch_add(1, Ordering::Relaxed);
    info!(
        "{peer}: authenticated key {} for {}",
        redacted_key(&auth.key),
        auth.symbols
            .as_ref()
            .map_or("all symbols".to_string(), |s| s.join(","))
    );
    let started = Instant::now();
    let end = deliver(ctx, &mut ws, &slot, &rx);
    ctx.hub.leave(&slot);
    ctx.metrics
        .clients_connected
        .fetch_sub(1, Ordering::Relaxed);
    info!(
        "{peer}: disconnected after {:.1} s: {end}",
        started.elapsed().as_secs_f64()
    );
    if let Some((code, reason)) = end.close_frame() {
        close(&mut ws, code, reason.to_string());
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
                let (status, body) = ctx.metrics.health(ctx.config.upstream_stale, now_ms());
                http::response(status, "application/json", &body, head_only)
            }
            "/metrics" if ctx.config.http_endpoints => {
                let body = ctx
                    .metrics
                    .render(&ctx.hub.last_quotes(), ctx.hub.batching(), now_ms());
                http::response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    &body,
                    head_only,
                )
            }
            "/" if ctx.config.page => {
                http::response(200, "text/html; charset=utf-8", crate::PAGE, head_only)
            }
            _ => http::response(404, "text/plain", "not found\n", head_only),
        }
    };
    http::respond_and_close(stream, &resp);
}

struct Refusal {
    code: CloseCode,
    reason: String,
}

fn refuse(ctx: &Context, peer: SocketAddr, why: AuthFailure, detail: &str) -> Refusal {
    ctx.metrics.auth_failed(why);
    warn!("{peer}: authentication refused: {detail}");
    let reason = match why {
        AuthFailure::BadKey => "Authentication failed",
        _ => "Failed to authenticate",
    };
    Refusal {
        code: CloseCode::Policy,
        reason: reason.to_string(),
    }
}

fn unknown_symbol(symbol: &str) -> String {
    // A close reason is at most 123 bytes; the symbol came from the client.
    let shown: String = symbol.chars().take(32).collect();
    format!("Unknown symbol {shown}")
}

/// Reads the auth message within `auth_timeout` and checks it against the key file.
fn authenticate(
    ctx: &Context,
    ws: &mut WebSocket<TcpStream>,
    peer: SocketAddr,
) -> Result<AuthRequest, Refusal> {
    let deadline = Instant::now() + ctx.config.auth_timeout;
    let text = loop {
        if ctx.stop.is_set() {
            return Err(Refusal {
                code: CloseCode::Away,
                reason: "Server shutting down".into(),
            });
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
        let _ = ws.get_mut().set_read_timeout(Some(left.min(STOP_SLICE)));
        match ws.read() {
            Ok(Message::Text(text)) => break text,
            Ok(Message::Ping(_) | Message::Pong(_)) => {
                let _ = ws.flush();
            }
            Ok(Message::Close(_)) => {
                return Err(Refusal {
                    code: CloseCode::Normal,
                    reason: String::new(),
                })
            }
            Ok(_) => return Err(refuse(ctx, peer, AuthFailure::BadMessage, "a binary frame")),
            Err(WsError::Io(e)) if http::is_timeout(&e) => continue,
            Err(WsError::Capacity(e)) => {
                return Err(refuse(ctx, peer, AuthFailure::BadMessage, &e.to_string()))
            }
            Err(e) => {
                return Err(refuse(
                    ctx,
                    peer,
                    AuthFailure::BadMessage,
                    &format!("connection failed before auth: {e}"),
                ))
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
            return Err(Refusal {
                code: CloseCode::Policy,
                reason: unknown_symbol(symbol),
            });
        }
        if !entry.allows(symbol) {
            ctx.metrics.auth_failed(AuthFailure::Symbol);
            warn!(
                "{peer}: refused: key {} is not entitled to {symbol}",
                redacted_key(&request.key)
            );
            return Err(Refusal {
                code: CloseCode::Policy,
                reason: format!("Not entitled to symbol {symbol}"),
            });
        }
    }
    Ok(AuthRequest {
        key: request.key,
        symbols: (!wanted.is_empty()).then_some(wanted),
    })
}

/// Why a writer loop ended.
enum End {
    Kicked(Kick),
    ClientClosed,
    TooBig,
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
            End::TooBig => Some((CloseCode::Size, "Message too big")),
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
            End::TooBig => f.write_str("sent a message over max_message_bytes"),
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
    ws: &mut WebSocket<TcpStream>,
    slot: &Arc<ClientSlot>,
    rx: &Receiver<Utf8Bytes>,
) -> End {
    let fd = ws.get_ref().as_raw_fd();
    if let Err(e) = ctx.watcher.watch(fd, slot) {
        return End::Failed(format!("cannot watch the socket: {e}"));
    }
    // Anything that arrived with or after the auth message came before the watch began.
    slot.readable.store(true, Ordering::SeqCst);
    let end = deliver_loop(ctx, ws, slot, rx);
    ctx.watcher.unwatch(fd, slot);
    end
}

fn deliver_loop(
    ctx: &Context,
    ws: &mut WebSocket<TcpStream>,
    slot: &ClientSlot,
    rx: &Receiver<Utf8Bytes>,
) -> End {
    let ping_every = ctx.config.client_ping;
    let mut tick = next_tick(ping_every);
    let mut last_heard = Instant::now();
    loop {
        let kick = slot.kicked();
        if kick != Kick::None {
            return End::Kicked(kick);
        }
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
            if let Err(e) = ws.flush() {
                return End::Failed(format!("write failed: {e}"));
            }
            ctx.metrics
                .quotes_delivered
                .fetch_add(written, Ordering::Relaxed);
        }
        if slot.readable.swap(false, Ordering::SeqCst) {
            match read_pass(ws) {
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
fn read_pass(ws: &mut WebSocket<TcpStream>) -> Result<bool, End> {
    if let Err(e) = ws.get_mut().set_nonblocking(true) {
        return Err(End::Failed(e.to_string()));
    }
    let mut heard = false;
    let result = loop {
        match ws.read() {
            Ok(Message::Close(_)) => break Err(End::ClientClosed),
            Ok(_) => heard = true,
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break Ok(heard),
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                break Err(End::ClientClosed)
            }
            Err(WsError::Capacity(_)) => break Err(End::TooBig),
            Err(WsError::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => break Err(End::Failed("connection reset without a close frame".into())),
            Err(e) => break Err(End::Failed(format!("read failed: {e}"))),
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
fn close(ws: &mut WebSocket<TcpStream>, code: CloseCode, reason: String) {
    let _ = ws.get_mut().set_write_timeout(Some(Duration::from_secs(1)));
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if ws.close(Some(frame)).is_err() {
        return;
    }
    let until = Instant::now() + CLOSE_LINGER;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let _ = ws.get_mut().set_read_timeout(Some(left));
        match ws.read() {
            Ok(_) => continue,
            Err(_) => return,
        }
    }
}
