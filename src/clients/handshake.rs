//! One connection before it has a thread: its HTTP request, the answer to a plain request or
//! the WebSocket upgrade, the greeting and the auth message. The admission loop drives it
//! whenever its socket is ready or its deadline passes; nothing here ever blocks, so a
//! connection that is slow or silent costs a descriptor and a few kilobytes, not a thread.
//!
//! A connection ends here in one of three ways: answered and closed (a plain request, a
//! refusal, a failed auth), dropped (gone, silent past its deadline, evicted), or
//! [`Admitted`]: authenticated, and handed to a thread of its own (see [`super::client`]).

use crate::base::logsafe;
use crate::base::logsafe::redacted_key;
use crate::base::metrics::{AuthFailure, Rejection};
use crate::base::symbol_states::SymbolState;
use crate::clients::auth::{self, AuthRequest};
use crate::clients::budget::Budget;
use crate::clients::closes::{self, Owed, TOO_MANY};
use crate::clients::context::Context;
use crate::clients::forwarded::Peer;
use crate::clients::http::{self, HeadError, Request};
use crate::clients::keys::KeyEntry;
use crate::clients::places::Place;
use crate::clients::stream::{ClientStream, TlsFailure, TLS_HANDSHAKE_RECORD};
use crate::config::Config;
use crate::fanout::distributor::{self, Queue};
use crate::feed::v2;
use log::{debug, info, warn};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

/// The greeting as the server's text frame (unmasked, FIN, opcode 1): sent in the same write
/// as the 101 response, one system call for both.
const GREETING_FRAME: &[u8] = b"\x81\x09Connected";
/// How long to wait for the peer's answer to our close frame.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// How long a plain HTTP response may take to write, and then how long to wait for the
/// client to close, so the kernel does not answer unread bytes with a reset that eats it.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(2);
const RESPONSE_LINGER: Duration = Duration::from_secs(1);
/// How long a plain request waits for the `http` thread's answer (see [`super::answering`])
/// before it is answered 503.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// Bytes read at a time from a socket still sending its request head.
const READ_CHUNK: usize = 1024;

/// A connection that passed admission, ready for a thread of its own.
pub struct Admitted {
    /// On a non-blocking socket.
    pub ws: WebSocket<ClientStream>,
    pub peer: Peer,
    pub id: u64,
    /// The message budget, carried over from the auth phase.
    pub budget: Budget,
    /// What the client asked for; `None` in echo mode (tests only), where nobody authenticates.
    pub auth: Option<AuthRequest>,
    /// Its queue, made here rather than on its own thread (see [`distributor::queue`]).
    pub queue: Option<Queue>,
}

/// What the admission loop does with a connection after driving it.
pub enum Next {
    /// Waiting for its socket or its deadline.
    Wait,
    /// A valid upgrade waiting for a `max_clients` place: the loop answers with
    /// [`Conn::upgrade`] or [`Conn::refuse_full`].
    NeedsPlace,
    /// Ready for its thread.
    Ready(Box<Admitted>, Place),
    /// A plain HTTP request for the `http` thread to answer: the loop hands it over and gives
    /// the connection the answer with [`Conn::answer`].
    Ask(Request),
    /// Finished: deregister and drop it.
    Closed,
}

pub struct Conn {
    pub id: u64,
    pub peer: Peer,
    pub accepted: Instant,
    /// When the current phase gives up.
    pub deadline: Instant,
    /// Kept by the admission loop: whether this connection is in its queue of those quick to
    /// evict.
    pub in_quick: bool,
    phase: Phase,
    /// `response_header`'s lines as they were when it was accepted, for every answer and
    /// the upgrade (empty, as it usually is, costs nothing).
    response_headers: String,
}

enum Phase {
    /// Reading the request head (over TLS, the handshake first: the reads drive it).
    Head { stream: ClientStream, buf: Vec<u8> },
    /// A valid upgrade request, waiting for a place; `accept` is the 101 response.
    NeedsPlace {
        stream: ClientStream,
        accept: Vec<u8>,
        leftover: Vec<u8>,
    },
    /// A plain HTTP request, waiting for its answer from the `http` thread.
    Answering { stream: ClientStream },
    /// Writing a plain HTTP response.
    Responding {
        stream: ClientStream,
        out: Vec<u8>,
        at: usize,
    },
    /// Upgraded and greeted; waiting for the auth message.
    Auth {
        ws: Box<WebSocket<ClientStream>>,
        budget: Budget,
        place: Place,
        /// When the 101 went out: the client's time to answer runs from here, not from its
        /// connect (it may have waited long for its place).
        answered: Instant,
    },
    /// Our last word (a response, a close frame) is out, or on its way: what the peer still
    /// sends is read and dropped until it closes too or the linger is over.
    Lingering {
        socket: LastWord,
        /// Whether everything we had to send has been written and our side shut.
        shut: bool,
    },
    /// Handed on or finished.
    Gone,
}

/// The socket of a lingering connection.
enum LastWord {
    Plain(ClientStream),
    Ws(Box<WebSocket<ClientStream>>),
}

impl LastWord {
    fn stream(&mut self) -> &mut ClientStream {
        match self {
            LastWord::Plain(s) => s,
            LastWord::Ws(ws) => ws.get_mut(),
        }
    }

    /// Writes what is still owed; true once all of it is out.
    fn flush(&mut self) -> io::Result<bool> {
        match self {
            LastWord::Plain(s) => match s.flush() {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) => Err(e),
            },
            LastWord::Ws(ws) => match ws.flush() {
                Ok(()) | Err(WsError::ConnectionClosed) => Ok(true),
                Err(e) if closes::would_block(&e) => Ok(false),
                Err(e) => Err(io::Error::new(io::ErrorKind::Other, e.to_string())),
            },
        }
    }
}

impl Conn {
    /// A newly accepted connection (already non-blocking).
    pub fn new(
        stream: ClientStream,
        peer: SocketAddr,
        id: u64,
        now: Instant,
        config: &Config,
    ) -> Conn {
        Conn {
            id,
            peer: Peer::direct(peer),
            accepted: now,
            deadline: now + config.handshake_timeout,
            in_quick: false,
            phase: Phase::Head {
                stream,
                buf: Vec::new(),
            },
            response_headers: http::header_lines(&config.response_headers),
        }
    }

    /// The socket, for the poll.
    pub fn fd(&self) -> RawFd {
        match &self.phase {
            Phase::Head { stream, .. }
            | Phase::NeedsPlace { stream, .. }
            | Phase::Answering { stream }
            | Phase::Responding { stream, .. } => stream.as_raw_fd(),
            Phase::Auth { ws, .. } => ws.get_ref().as_raw_fd(),
            Phase::Lingering { socket, .. } => match socket {
                LastWord::Plain(s) => s.as_raw_fd(),
                LastWord::Ws(ws) => ws.get_ref().as_raw_fd(),
            },
            Phase::Gone => -1,
        }
    }

    /// Upgraded and waiting for its auth message, holding a place.
    pub fn holds_place(&self) -> bool {
        matches!(self.phase, Phase::Auth { .. })
    }

    /// How long this upgrade has held its place without an auth message: since its 101
    /// went out. `None` if it holds no place.
    pub fn waiting_for_auth(&self, now: Instant) -> Option<Duration> {
        match &self.phase {
            Phase::Auth { answered, .. } => Some(now.saturating_duration_since(*answered)),
            _ => None,
        }
    }

    /// The phase, in a word, for the state dump: `head` (reading the request), `place`
    /// (a valid upgrade waiting for a place), `responding` (writing an HTTP answer), `auth`
    /// (upgraded, waiting for the auth message), `closing` (lingering after our last word).
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Head { .. } => "head",
            Phase::NeedsPlace { .. } => "place",
            Phase::Answering { .. } | Phase::Responding { .. } => "responding",
            Phase::Auth { .. } => "auth",
            Phase::Lingering { .. } | Phase::Gone => "closing",
        }
    }

    pub fn needs_place(&self) -> bool {
        matches!(self.phase, Phase::NeedsPlace { .. })
    }

    /// Whether this connection may be dropped to make room after only the short grace: it
    /// has not sent its whole request head (a client sends it, a few hundred bytes in one
    /// piece, right after connecting, needing nothing from us; slowloris sends nothing or
    /// trickles it), or it is only finishing (its answer is out and it is lingering). An
    /// upgraded connection waiting for its auth message is not: that waits on the client
    /// reading our answer.
    ///
    /// Over TLS the same holds before we have answered the client's hello and after the
    /// handshake; in between, the client is waiting on a round trip with our answer, like an
    /// upgraded connection.
    pub fn quick_to_evict(&self) -> bool {
        match &self.phase {
            Phase::Head { stream, .. } => !stream.handshaking() || stream.written() == 0,
            Phase::Responding { .. } | Phase::Lingering { .. } => true,
            _ => false,
        }
    }

    /// Its socket is ready (or may be): does whatever the phase allows without blocking.
    pub fn on_ready(&mut self, ctx: &Context, now: Instant) -> Next {
        match &mut self.phase {
            Phase::Head { .. } => self.read_head(ctx, now),
            Phase::NeedsPlace { .. } => Next::NeedsPlace,
            // Nothing to do until the answer comes.
            Phase::Answering { .. } => Next::Wait,
            Phase::Responding { .. } => self.write_response(now),
            Phase::Auth { .. } => self.read_auth(ctx, now),
            Phase::Lingering { .. } => self.linger(),
            Phase::Gone => Next::Closed,
        }
    }

    /// Its deadline has passed.
    pub fn on_deadline(&mut self, ctx: &Context, now: Instant) -> Next {
        if now < self.deadline {
            return Next::Wait;
        }
        match &self.phase {
            Phase::Head { stream, .. } if stream.handshaking() => {
                debug!(
                    "{}: no complete TLS handshake within handshake_timeout_secs",
                    self.peer
                );
                ctx.metrics.rejected(Rejection::Tls);
                Next::Closed
            }
            Phase::Head { .. } => {
                debug!("{}: no request within handshake_timeout_secs", self.peer);
                Next::Closed
            }
            Phase::NeedsPlace { .. } => {
                let why = if ctx.places.limited_by_ceiling() {
                    Rejection::ThreadCeiling
                } else {
                    Rejection::MaxClients
                };
                self.refuse_full(ctx, now, why)
            }
            Phase::Answering { .. } => {
                let busy = http::response(503, "text/plain", "no answer in time\n", false);
                self.answer(busy, now)
            }
            Phase::Auth { .. } => {
                let owed = refuse(
                    ctx,
                    self.peer,
                    AuthFailure::Timeout,
                    "no auth message in time",
                );
                self.close_with(ctx, owed, now)
            }
            Phase::Responding { .. } | Phase::Lingering { .. } | Phase::Gone => Next::Closed,
        }
    }

    /// Gives a waiting upgrade its place: the 101 response and the greeting go out, and the
    /// auth message is awaited (it may have come already).
    pub fn upgrade(&mut self, ctx: &Context, place: Place, now: Instant) -> Next {
        let Phase::NeedsPlace {
            mut stream,
            mut accept,
            leftover,
        } = std::mem::replace(&mut self.phase, Phase::Gone)
        else {
            return Next::Closed;
        };
        accept = http::with_headers(accept, &self.response_headers);
        if !ctx.echoing() {
            accept.extend_from_slice(GREETING_FRAME);
        }
        // A fresh socket takes these ~150 bytes at once; one that does not is not worth a place.
        // (Over TLS they are taken as one record, which goes out with them or is held to go
        // out with the next write or flush.)
        match stream.write(&accept) {
            Ok(n) if n == accept.len() => {}
            Ok(_) | Err(_) => {
                debug!(
                    "{}: the 101 response could not be written at once",
                    self.peer
                );
                return Next::Closed;
            }
        }
        let config = ctx.config();
        let ws = WebSocket::from_partially_read(
            stream,
            leftover,
            Role::Server,
            Some(ws_config(&config)),
        );
        let budget = Budget::new(config.max_client_messages_per_sec);
        if ctx.echoing() {
            return Next::Ready(
                Box::new(Admitted {
                    ws,
                    peer: self.peer,
                    id: self.id,
                    budget,
                    auth: None,
                    queue: None,
                }),
                place,
            );
        }
        self.deadline = now + config.auth_timeout;
        self.phase = Phase::Auth {
            ws: Box::new(ws),
            budget,
            place,
            // The clock of this moment, not of the loop's turn: on a busy turn the two differ.
            answered: Instant::now(),
        };
        self.read_auth(ctx, now)
    }

    /// The answer to its plain request: written out, then the connection closes. A late
    /// answer, for a connection answered already, is dropped.
    pub fn answer(&mut self, response: Vec<u8>, now: Instant) -> Next {
        match std::mem::replace(&mut self.phase, Phase::Gone) {
            Phase::Answering { stream } => self.respond(stream, response, now),
            other => {
                self.phase = other;
                Next::Wait
            }
        }
    }

    /// No place for this upgrade: 503.
    pub fn refuse_full(&mut self, ctx: &Context, now: Instant, why: Rejection) -> Next {
        let Phase::NeedsPlace { stream, .. } = std::mem::replace(&mut self.phase, Phase::Gone)
        else {
            return Next::Closed;
        };
        ctx.metrics.rejected(why);
        match why {
            Rejection::ThreadCeiling => warn!(
                "{}: refused: the process is at its thread ceiling ({} clients; see the start-up log)",
                self.peer,
                ctx.places.limit()
            ),
            _ => warn!(
                "{}: refused: max_clients ({}) reached",
                self.peer, ctx.config().max_clients
            ),
        }
        let resp = http::response(503, "text/plain", "too many clients\n", false);
        self.respond(stream, resp, now)
    }

    /// Closes an upgraded connection with `owed` (a thread could not be had for it, say).
    pub fn closing(
        admitted: Box<Admitted>,
        ctx: &Context,
        owed: Owed,
        now: Instant,
    ) -> (Conn, Next) {
        let mut conn = Conn {
            id: admitted.id,
            peer: admitted.peer,
            accepted: now,
            deadline: now,
            in_quick: false,
            phase: Phase::Gone,
            // Upgraded already: no answer of ours is to come.
            response_headers: String::new(),
        };
        let next = conn.send_close(ctx, Box::new(admitted.ws), owed, now);
        (conn, next)
    }

    /// The proxy is stopping: an upgraded connection is told so (as far as its socket takes
    /// it at once); every other is dropped.
    pub fn shut_down(&mut self, restart: bool) {
        if let Phase::Auth { ws, .. } = &mut self.phase {
            let (code, reason) = closes::on_stop(restart);
            let _ = ws.close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
        }
        self.phase = Phase::Gone;
    }

    /// Dropped to make room: shut down at once, without a word.
    pub fn evict(&mut self) {
        // An upgraded connection is told, as one whose thread cannot start is: 1013, try
        // again later. Dropped without a word, a client of a storm past the last place saw
        // only a reset after its 101 (1,210 of 17,500 for 16,290 places, measured), neither
        // served nor refused. The frame is small and the socket's buffer empty: it goes out
        // now or not at all, without blocking the loop.
        if let Phase::Auth { ws, .. } = &mut self.phase {
            let _ = ws.close(Some(CloseFrame {
                code: CloseCode::Again,
                reason: closes::TRY_AGAIN.into(),
            }));
            let _ = ws.flush();
        }
        if let Some(stream) = self.stream() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.phase = Phase::Gone;
    }

    fn stream(&mut self) -> Option<&mut TcpStream> {
        match &mut self.phase {
            Phase::Head { stream, .. }
            | Phase::NeedsPlace { stream, .. }
            | Phase::Answering { stream }
            | Phase::Responding { stream, .. } => Some(stream),
            Phase::Auth { ws, .. } => Some(ws.get_mut()),
            Phase::Lingering { socket, .. } => Some(socket.stream()),
            Phase::Gone => None,
        }
    }

    fn read_head(&mut self, ctx: &Context, now: Instant) -> Next {
        let Phase::Head { stream, buf } = &mut self.phase else {
            return Next::Closed;
        };
        let mut chunk = [0u8; READ_CHUNK];
        let parsed = loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Next::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.read_failed(ctx, &e, now),
            }
            match http::parse_head(buf) {
                Ok(None) => continue,
                other => break other,
            }
        };
        let Phase::Head { stream, mut buf } = std::mem::replace(&mut self.phase, Phase::Gone)
        else {
            return Next::Closed;
        };
        let peer = self.peer;
        let (request, length) = match parsed {
            Ok(Some(r)) => r,
            Ok(None) => return Next::Closed,
            // A TLS record (a ClientHello) on this plain port: an HTTP answer would be
            // garbage to its sender, which speaks TLS; hang up.
            Err(HeadError::Malformed(_)) if buf.first() == Some(&TLS_HANDSHAKE_RECORD) => {
                debug!("{peer}: a TLS handshake on the plain port");
                ctx.metrics.rejected(Rejection::BadRequest);
                return Next::Closed;
            }
            Err(HeadError::Malformed(why)) => {
                debug!("{peer}: bad request: {why}");
                ctx.metrics.rejected(Rejection::BadRequest);
                let body = format!("bad request: {why}\n");
                return self.respond(stream, http::response(400, "text/plain", &body, false), now);
            }
            Err(HeadError::TooLarge) => {
                ctx.metrics.rejected(Rejection::BadRequest);
                let resp = http::response(431, "text/plain", "request head too large\n", false);
                return self.respond(stream, resp, now);
            }
        };
        // Behind a trusted load balancer, the log names the client it says it forwards.
        if !ctx.config().trusted_proxies.is_empty() {
            let forwarded = request.header_values("X-Forwarded-For");
            self.peer = Peer::forwarded(self.peer.socket, forwarded, &ctx.config().trusted_proxies);
        }
        let peer = self.peer;
        if !request.is_websocket_upgrade() {
            self.deadline = now + ANSWER_DEADLINE;
            self.phase = Phase::Answering { stream };
            return Next::Ask(request);
        }
        if ctx
            .backbone
            .as_ref()
            .is_some_and(|b| !b.role.serves_clients())
        {
            debug!("{peer}: refused: this instance only ingests (backbone_role = ingest)");
            let body =
                "this instance serves no quotes (backbone_role = ingest): connect to an edge\n";
            return self.respond(stream, http::response(503, "text/plain", body, false), now);
        }
        if !http::origin_allowed(&request, &ctx.config().allowed_origins) {
            ctx.metrics.rejected(Rejection::Origin);
            warn!(
                "{peer}: refused: Origin {} is not in allowed_origins",
                logsafe::quoted(request.header("Origin").unwrap_or(""))
            );
            let resp = http::response(403, "text/plain", "origin not allowed\n", false);
            return self.respond(stream, resp, now);
        }
        // Checked before a place is taken: a malformed upgrade must not displace a waiting one.
        match http::accept_upgrade(&request) {
            Ok(accept) => {
                let leftover = buf.split_off(length);
                self.phase = Phase::NeedsPlace {
                    stream,
                    accept,
                    leftover,
                };
                Next::NeedsPlace
            }
            Err(refusal) => {
                ctx.metrics.rejected(Rejection::BadRequest);
                self.respond(stream, refusal.response(), now)
            }
        }
    }

    /// A read from a connection still sending its request failed. On a TLS port that may be
    /// a failed handshake (counted), garbage, or plain HTTP, which is answered in plain HTTP
    /// so that whoever typed `http://` learns why.
    fn read_failed(&mut self, ctx: &Context, e: &io::Error, now: Instant) -> Next {
        let peer = self.peer;
        let Some(failure) = TlsFailure::of(e) else {
            return Next::Closed;
        };
        match failure {
            TlsFailure::NotTls(first) => {
                debug!("{peer}: {failure}");
                ctx.metrics.rejected(Rejection::BadRequest);
                let Phase::Head { stream, .. } = std::mem::replace(&mut self.phase, Phase::Gone)
                else {
                    return Next::Closed;
                };
                if !first.is_ascii_uppercase() {
                    return Next::Closed;
                }
                let body = "this port speaks TLS: use https:// or wss://\n";
                let resp = http::response(400, "text/plain", body, false);
                self.respond(stream.into_plain(), resp, now)
            }
            TlsFailure::Tls(_) => {
                info!("{peer}: TLS handshake failed: {failure}");
                ctx.metrics.rejected(Rejection::Tls);
                Next::Closed
            }
        }
    }

    /// Starts writing a plain HTTP response.
    fn respond(&mut self, stream: ClientStream, out: Vec<u8>, now: Instant) -> Next {
        let out = http::with_headers(out, &self.response_headers);
        self.deadline = now + RESPONSE_DEADLINE;
        self.phase = Phase::Responding { stream, out, at: 0 };
        self.write_response(now)
    }

    fn write_response(&mut self, now: Instant) -> Next {
        let Phase::Responding { stream, out, at } = &mut self.phase else {
            return Next::Closed;
        };
        while *at < out.len() {
            match stream.write(&out[*at..]) {
                Ok(0) => return Next::Closed,
                Ok(n) => *at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Closed,
            }
        }
        // Over TLS the last records may still be held for the socket.
        match stream.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
            Err(_) => return Next::Closed,
        }
        let Phase::Responding { mut stream, .. } = std::mem::replace(&mut self.phase, Phase::Gone)
        else {
            return Next::Closed;
        };
        stream.shutdown_write();
        self.deadline = now + RESPONSE_LINGER;
        self.phase = Phase::Lingering {
            socket: LastWord::Plain(stream),
            shut: true,
        };
        self.linger()
    }

    fn read_auth(&mut self, ctx: &Context, now: Instant) -> Next {
        let peer = self.peer;
        let Phase::Auth { ws, budget, .. } = &mut self.phase else {
            return Next::Closed;
        };
        // A read pass that completes no message is not charged here (unlike after auth): the
        // auth deadline bounds it.
        let text = loop {
            let message = match ws.read() {
                Ok(m) => m,
                Err(e) if closes::would_block(&e) => return Next::Wait,
                Err(e) => {
                    let owed = closes::read_failure(&e);
                    return match owed {
                        Some(owed) => {
                            warn!("{peer}: closed before auth with {}: {e}", u16::from(owed.0));
                            self.close_with(ctx, owed, now)
                        }
                        None => {
                            debug!("{peer}: gone before auth: {e}");
                            Next::Closed
                        }
                    };
                }
            };
            if !budget.take(now) {
                warn!("{peer}: closed before auth: too many messages");
                return self.close_with(ctx, (CloseCode::Policy, TOO_MANY.into()), now);
            }
            match message {
                Message::Text(text) => break text,
                // Queued pongs go out with the flush; a full socket keeps them for later.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                    let _ = ws.flush();
                }
                // The client started the closing handshake: send the reply tungstenite queued.
                Message::Close(_) => {
                    let _ = ws.flush();
                    return Next::Closed;
                }
                Message::Binary(_) => {
                    let owed = refuse(ctx, peer, AuthFailure::BadMessage, "a binary frame");
                    return self.close_with(ctx, owed, now);
                }
            }
        };
        match check(ctx, peer, &text) {
            Ok(auth) => {
                let Phase::Auth {
                    ws, budget, place, ..
                } = std::mem::replace(&mut self.phase, Phase::Gone)
                else {
                    return Next::Closed;
                };
                Next::Ready(
                    Box::new(Admitted {
                        ws: *ws,
                        peer,
                        id: self.id,
                        budget,
                        auth: Some(auth),
                        queue: Some(distributor::queue()),
                    }),
                    place,
                )
            }
            Err(Refusal { owed, told }) => {
                // A v2 client is told why (`login_reject`) before its close frame.
                if let (Some(text), Phase::Auth { ws, .. }) = (told, &mut self.phase) {
                    match ws.write(Message::text(text)) {
                        Ok(()) => {}
                        Err(e) if closes::would_block(&e) => {}
                        Err(_) => return Next::Closed,
                    }
                }
                self.close_with(ctx, owed, now)
            }
        }
    }

    /// Sends an upgraded connection its close frame, then lingers.
    fn close_with(&mut self, ctx: &Context, owed: Owed, now: Instant) -> Next {
        let Phase::Auth { ws, .. } = std::mem::replace(&mut self.phase, Phase::Gone) else {
            return Next::Closed;
        };
        self.send_close(ctx, ws, owed, now)
    }

    fn send_close(
        &mut self,
        ctx: &Context,
        mut ws: Box<WebSocket<ClientStream>>,
        (code, reason): Owed,
        now: Instant,
    ) -> Next {
        // Counted here, whatever decided it.
        ctx.metrics.protocol_error(u16::from(code));
        if reason == TOO_MANY {
            ctx.metrics
                .flood_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        match ws.close(Some(frame)) {
            Ok(()) => {}
            Err(e) if closes::would_block(&e) => {}
            Err(_) => return Next::Closed,
        }
        self.deadline = now + CLOSE_LINGER;
        self.phase = Phase::Lingering {
            socket: LastWord::Ws(ws),
            shut: false,
        };
        self.linger()
    }

    /// Finishes writing our last word, shuts our side (RFC 6455 has the server close the TCP
    /// connection first), then reads and drops what the peer still sends, raw: after an error
    /// tungstenite's reader may be stuck mid-frame, and a peer trickling a message that never
    /// ends must not hold the connection past the linger.
    fn linger(&mut self) -> Next {
        let Phase::Lingering { socket, shut } = &mut self.phase else {
            return Next::Closed;
        };
        if !*shut {
            match socket.flush() {
                Ok(true) => {
                    socket.stream().shutdown_write();
                    *shut = true;
                }
                Ok(false) => {}
                Err(_) => return Next::Closed,
            }
        }
        let mut sink = [0u8; 4096];
        // Raw, around TLS too: nothing it says matters any more.
        let tcp: &mut TcpStream = socket.stream();
        loop {
            match tcp.read(&mut sink) {
                Ok(0) => return Next::Closed,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Closed,
            }
        }
    }
}

/// Counts and logs a refused auth; the close frame it earns.
fn refuse(ctx: &Context, peer: Peer, why: AuthFailure, detail: &str) -> Owed {
    ctx.metrics.auth_failed(why);
    warn!("{peer}: authentication refused: {detail}");
    let reason = match why {
        AuthFailure::BadKey => "Authentication failed",
        _ => "Failed to authenticate",
    };
    (CloseCode::Policy, reason.to_string())
}

/// The close reason for a symbol the proxy does not carry.
pub fn unknown_symbol(symbol: &str) -> String {
    // The symbol came from the client.
    logsafe::close_reason("Unknown symbol ", symbol)
}

/// The close reason for a client whose symbols (`ids`) the provider all refused:
/// `Denied upstream: XAUUSD (not in your plan), FOO (invalid)`, as much as a close frame holds.
pub fn refused_upstream(ctx: &Context, ids: impl IntoIterator<Item = usize>) -> String {
    let states = ctx.metrics.upstream_symbols.all();
    let mut reason = String::from("Denied upstream: ");
    for id in ids {
        let Some((symbol, state)) = states.get(id) else {
            continue;
        };
        let why = match state {
            SymbolState::Denied(why) if !why.is_empty() => format!(" ({})", logsafe::short(why)),
            SymbolState::Invalid => " (invalid)".to_string(),
            _ => String::new(),
        };
        let sep = if reason.ends_with(": ") { "" } else { ", " };
        let part = format!("{sep}{symbol}{why}");
        if reason.len() + part.len() > MAX_CLOSE_REASON {
            if reason.len() + 3 <= MAX_CLOSE_REASON {
                reason.push('…');
            }
            break;
        }
        reason.push_str(&part);
    }
    reason
}

/// The most a close frame's reason may hold, in bytes.
const MAX_CLOSE_REASON: usize = 123;

/// A refused first message: the close frame it earns, and for a v2 client what it is told
/// first (`login_reject`).
struct Refusal {
    owed: Owed,
    told: Option<String>,
}

impl From<Owed> for Refusal {
    fn from(owed: Owed) -> Refusal {
        Refusal { owed, told: None }
    }
}

/// Checks a first message (a v1 auth message or a v2 login) against the key file and the
/// symbols the proxy carries.
fn check(ctx: &Context, peer: Peer, text: &str) -> Result<AuthRequest, Refusal> {
    let request = auth::parse_auth(text).map_err(|e| Refusal {
        owed: refuse(ctx, peer, AuthFailure::BadMessage, &e.to_string()),
        told: e.v2_answer(),
    })?;
    let keys = ctx.keys();
    if !ctx.keys_checked(&keys) {
        // Admitted by its certificate alone: `userKey` is only a label, every symbol allowed.
        let anyone = KeyEntry {
            key: String::new(),
            symbols: None,
        };
        return admit_symbols(ctx, peer, request, &anyone).map_err(Refusal::from);
    }
    let Some(entry) = keys.lookup(&request.key) else {
        let owed = refuse(
            ctx,
            peer,
            AuthFailure::BadKey,
            &format!(
                "unknown key {}",
                logsafe::quoted(&redacted_key(&request.key))
            ),
        );
        let told = request.v2.then(|| v2::login_reject("invalid key"));
        return Err(Refusal { owed, told });
    };
    admit_symbols(ctx, peer, request, entry).map_err(Refusal::from)
}

/// Checks the symbols asked for (or, without any, those of the key) against what the proxy
/// carries, what the key may see and what the provider refused. A v2 client asks for none
/// yet: it subscribes once logged in.
fn admit_symbols(
    ctx: &Context,
    peer: Peer,
    request: AuthRequest,
    entry: &KeyEntry,
) -> Result<AuthRequest, Owed> {
    if request.v2 {
        return Ok(request);
    }
    let wanted: Vec<String> = request
        .symbols
        .clone()
        .or_else(|| entry.symbols.clone())
        .unwrap_or_default();
    let mut ids = Vec::with_capacity(wanted.len());
    for symbol in &wanted {
        let Some(id) = ctx.hub.symbol_id(symbol) else {
            ctx.metrics.auth_failed(AuthFailure::Symbol);
            warn!(
                "{peer}: refused: symbol {} is not carried",
                logsafe::quoted(symbol)
            );
            return Err((CloseCode::Policy, unknown_symbol(symbol)));
        };
        if !entry.allows(symbol) {
            ctx.metrics.auth_failed(AuthFailure::Symbol);
            warn!(
                "{peer}: refused: key {} is not entitled to {}",
                logsafe::quoted(&redacted_key(&request.key)),
                logsafe::quoted(symbol)
            );
            return Err((
                CloseCode::Policy,
                logsafe::close_reason("Not entitled to symbol ", symbol),
            ));
        }
        ids.push(id);
    }
    let refused = ctx.metrics.upstream_symbols.refused();
    if !refused.is_empty() {
        if ids.is_empty() {
            ids = (0..refused.len()).collect();
        }
        if ids.iter().all(|id| refused[*id]) {
            ctx.metrics.auth_failed(AuthFailure::Symbol);
            let reason = refused_upstream(ctx, ids);
            warn!("{peer}: refused: the provider refused every symbol it asked for: {reason}");
            return Err((CloseCode::Policy, reason));
        }
    }
    Ok(AuthRequest {
        key: request.key,
        symbols: (!wanted.is_empty()).then_some(wanted),
        conflate: request.conflate,
        v2: false,
    })
}

/// The WebSocket settings of a client connection.
pub fn ws_config(config: &Config) -> WebSocketConfig {
    let max = config.max_message_bytes;
    // Clients send little (an auth message, pings), so a small read buffer is plenty and
    // thousands of clients do not each pin tungstenite's default 128 KiB. Frames are buffered
    // up to the write buffer size, then written; a batch ends in one flush.
    let chunk = config.client_write_buffer_bytes;
    WebSocketConfig::default()
        .read_buffer_size(config.client_read_buffer_bytes)
        .write_buffer_size(chunk)
        // The writer stops taking frames from the queue while the socket is full, so the
        // buffer holds at most one chunk and one frame (with its header), whatever the peer does.
        .max_write_buffer_size(chunk + crate::feed::protocol::MAX_UPSTREAM_FRAME + 16)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_greeting_frame_is_the_greeting() {
        assert_eq!(
            &GREETING_FRAME[2..],
            crate::feed::protocol::GREETING.as_bytes()
        );
        assert_eq!(
            GREETING_FRAME[1] as usize,
            crate::feed::protocol::GREETING.len()
        );
    }

    #[test]
    fn unknown_symbols_are_named_within_a_close_reason() {
        assert_eq!(unknown_symbol("XAUUSD"), "Unknown symbol XAUUSD");
        assert!(unknown_symbol(&"X".repeat(500)).len() < 123);
    }
}
