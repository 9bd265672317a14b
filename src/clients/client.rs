//! One authenticated client, on its own thread until it leaves: it joins the hub (the
//! snapshot, then the live stream), and its writer loop delivers quotes.
//!
//! The writer also reads. tungstenite cannot read and write one socket from two threads, so
//! this thread owns the `WebSocket`. It sleeps in `park_timeout` and wakes when the
//! distributor queued frames (it drains the queue, writes every frame into one buffer and
//! flushes once), when the watcher saw the socket readable (it reads until there is nothing
//! left: pings are answered, a close is noticed) or writable again, or on the keep-alive grid
//! (it pings, and drops a peer that has not answered two pings).
//!
//! How far behind a client is cannot be seen in the kernel: a client that stops reading goes
//! on taking bytes into its own receive buffer, which the kernel grows to megabytes, so
//! nothing blocks for minutes while it shows ever older prices. So the writer asks: after
//! every [`PROBE_BYTES`] it sends (and whenever the socket is full) it sends a ping, which the
//! client's WebSocket library answers only once it has read everything before it. A client
//! that has not answered within `max_client_lag_secs` is that far behind and is closed with
//! 1008 `Slow consumer`, as is one whose queue fills; and no client is sent more than
//! [`UNPROVEN_BYTES`] beyond what it has proven to have read, so its lag shows in its queue.
//!
//! The socket is non-blocking and the kernel holds at most
//! [`super::admission::CLIENT_UNSENT_BYTES`] unsent for it. When the socket takes no more,
//! the writer stops taking frames and waits for it to drain: new quotes wait in the queue.

use crate::base::clock::now_ms;
use crate::base::histogram::{self, Local};
use crate::base::live::Cached;
use crate::base::logsafe;
use crate::base::logsafe::redacted_key;
use crate::base::metrics::{AuthFailure, Metrics};
use crate::clients::activity::ClientActivity;
use crate::clients::auth::AuthRequest;
use crate::clients::budget::Budget;
use crate::clients::closes::{self, Owed, SLOW_CONSUMER, TOO_MANY};
use crate::clients::context::Context;
use crate::clients::forwarded::Peer;
use crate::clients::handshake::{refused_upstream, unknown_symbol, Admitted};
use crate::clients::stream::ClientStream;
use crate::clients::v2;
use crate::config::{Config, SlowClient};
use crate::fanout::conflate::Conflation;
use crate::fanout::distributor::{self, Hub, JoinError, Queue};
use crate::fanout::slot::{ClientSlot, Idle, Kick};
use crossbeam_channel::Receiver;
use log::{error, info, warn};
use std::io;
use std::os::unix::io::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error as WsError, Message, Utf8Bytes, WebSocket};

type Socket = WebSocket<ClientStream>;

/// After this many bytes sent since its last answered ping, a client is pinged again.
pub const PROBE_BYTES: u64 = 32 * 1024;
/// A client is sent no more than this many bytes it has not been proven to have read: past
/// that, quotes wait in its queue, where they count against `client_queue_len` and show in
/// `/metrics`, instead of piling up unseen in its kernel's receive buffer.
pub const UNPROVEN_BYTES: u64 = 2 * PROBE_BYTES;
/// How long our last writes (what was buffered, and the close frame) may take.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for the peer's answer to our close frame.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Serves one admitted connection to its end.
///
/// The connection stays boxed: moved onto the stack it would cost every client thread
/// another page of stack for as long as it lives. For the same page, `serve` is never inlined
/// into the thread's closure (inlined there, its frame and std's added up to more).
#[inline(never)]
pub fn serve(ctx: &Context, mut admitted: Box<Admitted>) {
    let Admitted {
        ws,
        peer,
        budget,
        auth,
        id,
        queue,
    } = &mut *admitted;
    // The auth request stays in the box too, read where it lies.
    let (ws, peer, auth, id, queue) = (ws, *peer, auth.as_ref(), *id, queue.take());
    let activity = ctx
        .activity
        .enter(id, peer, auth.as_ref().map(|a| a.key.as_str()));
    // A bug while serving this client must not leave it hanging, nor take others down: the
    // client is told (1011), the slot and the watch are released by their guards as the
    // panic unwinds, and every other client goes on.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| match auth {
        Some(auth) => session(ctx, ws, peer, (auth, queue), budget, &activity),
        #[cfg(feature = "autobahn")]
        None => super::echo::serve(ctx, ws, budget),
        // Only the Autobahn build admits a connection without auth.
        #[cfg(not(feature = "autobahn"))]
        None => None,
    }));
    let last_words = outcome.unwrap_or_else(|payload| internal_error(ctx, peer, &*payload));
    activity.closing();
    if let Some((code, reason)) = last_words {
        // Counted here, whichever way the session ended.
        ctx.metrics.protocol_error(u16::from(code));
        if reason == TOO_MANY {
            ctx.metrics
                .flood_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        close(ws, code, reason);
    }
}

/// A panic while serving one client: counted, logged, and the 1011 owed to the client.
/// Cold and out of line, so that its formatting takes no room in `serve`'s frame.
#[cold]
#[inline(never)]
fn internal_error(ctx: &Context, peer: Peer, payload: &(dyn std::any::Any + Send)) -> Option<Owed> {
    ctx.metrics.internal_errors.fetch_add(1, Ordering::Relaxed);
    error!(
        "{peer}: internal error while serving this client ({}); closing it with 1011",
        logsafe::escaped(crate::base::threads::panic_message(payload))
    );
    Some((CloseCode::Error, "Internal error".to_string()))
}

/// Joins the hub and delivers quotes until the client leaves. Returns the close frame still
/// owed to the client, if any.
fn session(
    ctx: &Context,
    ws: &mut Socket,
    peer: Peer,
    (auth, queue): (&AuthRequest, Option<Queue>),
    budget: &mut Budget,
    activity: &ClientActivity,
) -> Option<Owed> {
    let conflate = auth
        .conflate
        .unwrap_or(ctx.config().slow_client == SlowClient::Conflate);
    // The admission loop made the queue; only a connection admitted some other way (none
    // today) gets one made here.
    let queue = queue.unwrap_or_else(distributor::queue);
    let (slot, rx) = match join(ctx, peer, auth, conflate, queue) {
        Ok(joined) => joined,
        Err(owed) => return Some(owed),
    };
    // The provider may have refused its symbols since it was admitted.
    if slot.wants_only(&ctx.metrics.upstream_symbols.refused()) {
        slot.kick(Kick::Refused);
    }
    let subscription = Subscription::new(ctx, slot);
    activity.serving(&subscription.slot);
    ctx.metrics.auth_successes.fetch_add(1, Ordering::Relaxed);
    info!(
        "{peer}: authenticated key {} for {}{}",
        logsafe::quoted(&redacted_key(&auth.key)),
        match &auth.symbols {
            _ if auth.v2 => "the symbols it subscribes to (v2)".to_string(),
            Some(s) => s.join(","),
            None => "all symbols".to_string(),
        },
        if conflate {
            ", conflated when behind"
        } else {
            ""
        }
    );
    let started = Instant::now();
    let end = deliver(ctx, ws, &subscription.slot, &rx, budget, activity);
    // Named while the slot still says which symbols it received.
    let refused = matches!(end, End::Kicked(Kick::Refused)).then(|| {
        let slot = &subscription.slot;
        let ids = (0..ctx.config().symbols.len()).filter(|id| slot.wants(*id));
        refused_upstream(ctx, ids)
    });
    drop(subscription);
    info!(
        "{peer}: disconnected after {:.1} s: {end}",
        started.elapsed().as_secs_f64()
    );
    if end.is_slow_consumer() {
        if let End::Lagging(_) = end {
            ctx.metrics
                .slow_consumer_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        // The kernel holds our unsent bytes up to the low-water mark; lift it so the close
        // frame gets in behind them and reaches the client if it ever reads again.
        let _ = socket2::SockRef::from(&**ws.get_ref()).set_tcp_notsent_lowat(i32::MAX as u32);
    }
    if let Some(reason) = refused {
        return Some((CloseCode::Policy, reason));
    }
    end.close_frame()
        .map(|(code, reason)| (code, reason.to_string()))
}

/// Takes the client's place in the hub, its queue starting with a v2 client's `login_ok` or
/// any other's latest quotes. A refusal is logged, counted, and returned as the close frame
/// owed to the client.
fn join(
    ctx: &Context,
    peer: Peer,
    auth: &AuthRequest,
    conflate: bool,
    queue: Queue,
) -> Result<(Arc<ClientSlot>, Receiver<Utf8Bytes>), Owed> {
    let joined = if auth.v2 {
        // Its `login_ok` is the first thing in its queue; it subscribes as it goes.
        let login_ok = crate::feed::v2::login_ok(v2::symbol_limit(ctx, &auth.key));
        ctx.hub
            .join_v2(queue, &auth.key, std::thread::current(), conflate, login_ok)
    } else {
        ctx.hub.join(
            queue,
            &auth.key,
            auth.symbols.as_deref(),
            std::thread::current(),
            conflate,
        )
    };
    joined.map_err(|e| {
        let (why, reason) = match e {
            JoinError::UnknownSymbol(s) => (AuthFailure::Symbol, unknown_symbol(&s)),
            JoinError::TooManyForKey => (
                AuthFailure::TooManyForKey,
                "Too many connections for this key".to_string(),
            ),
        };
        ctx.metrics.auth_failed(why);
        let key = redacted_key(&auth.key);
        warn!("{peer}: refused key {}: {reason}", logsafe::quoted(&key));
        (CloseCode::Policy, reason)
    })
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

/// Why a writer loop ended.
enum End {
    Kicked(Kick),
    /// A ping sent with quotes before it went unanswered this long.
    Lagging(Duration),
    ClientClosed,
    /// A frame that broke the protocol (1002), invalid UTF-8 (1007) or was too big (1009).
    ProtocolError(CloseCode, &'static str),
    Flood,
    PingTimeout,
    Failed(String),
}

impl End {
    fn is_slow_consumer(&self) -> bool {
        matches!(self, End::Kicked(Kick::SlowConsumer) | End::Lagging(_))
    }

    fn close_frame(&self) -> Option<(CloseCode, &'static str)> {
        match self {
            End::Kicked(Kick::SlowConsumer) | End::Lagging(_) => {
                Some((CloseCode::Policy, SLOW_CONSUMER))
            }
            End::Kicked(Kick::KeyRevoked) => Some((CloseCode::Policy, "Authentication failed")),
            End::Kicked(Kick::Restart) => Some(closes::on_stop(true)),
            // With a reason that names the symbols: see `session`.
            End::Kicked(Kick::Refused) => Some((CloseCode::Policy, "Denied upstream")),
            End::Kicked(_) => Some(closes::on_stop(false)),
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
            End::Lagging(behind) => write!(
                f,
                "slow consumer (at least {:.1} s behind: a ping sent after quotes went unanswered)",
                behind.as_secs_f64()
            ),
            End::Kicked(Kick::KeyRevoked) => f.write_str("key removed from the key file"),
            End::Kicked(Kick::Restart) => f.write_str("server restarting"),
            End::Kicked(Kick::Refused) => {
                f.write_str("the provider refused every symbol it receives")
            }
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
    activity: &ClientActivity,
) -> End {
    let fd = ws.get_ref().as_raw_fd();
    if let Err(e) = ctx.watcher.watch(fd, slot) {
        return End::Failed(format!("cannot watch the socket: {e}"));
    }
    let _watched = Watched { ctx, fd, slot };
    // Anything that arrived with or after the auth message came before the watch began.
    slot.readable.store(true, Ordering::SeqCst);
    // Outside the writer, built where they stay: moved into it, the timings' histograms (a few
    // hundred bytes) were copied, and both copies held in every client thread's stack
    // (measured: the frame grew from 1,048 to 1,192 bytes). On the heap, not the stack: their
    // ~200 bytes were part of what took every client's stack into a third page (see
    // `Timings::boxed`).
    let mut blocked = Blocked::new(ctx, activity);
    let mut timings = Timings::boxed(&ctx.metrics, slot.id);
    let mut writer = Writer::new(ctx, ws, slot, rx, budget, &mut blocked, &mut timings);
    writer.run()
}

/// This writer's latencies: recorded where nothing else sees them and added to the shared
/// histograms about once a second (see `base::histogram`), and once more when it ends.
struct Timings<'a> {
    metrics: &'a Metrics,
    id: u64,
    queue_wait: Local,
    ping_rtt: Local,
    folded: Instant,
    /// When the oldest frame written into the WebSocket's buffer and not yet flushed to the
    /// socket was queued, in [`Hub::stamp`]s.
    unflushed_since: Option<u64>,
}

impl<'a> Timings<'a> {
    /// On the heap, and made out of line so that no copy stays in the writer's frame: the
    /// writer's deepest path (through tungstenite's write) ran about 100 bytes past a client
    /// stack's second page with them on the stack, 4 KiB more RSS for every client
    /// (BENCHMARKS.md, "This round"). Read through a pointer either way: the writer holds a
    /// reference.
    #[inline(never)]
    fn boxed(metrics: &'a Metrics, id: u64) -> Box<Timings<'a>> {
        Box::new(Timings::new(metrics, id))
    }

    fn new(metrics: &'a Metrics, id: u64) -> Timings<'a> {
        Timings {
            metrics,
            id,
            queue_wait: Local::default(),
            ping_rtt: Local::default(),
            folded: Instant::now(),
            unflushed_since: None,
        }
    }

    /// The first frame of a write was taken from the queue, queued at `queued_at`.
    fn writing(&mut self, queued_at: u64) {
        self.unflushed_since.get_or_insert(queued_at);
    }

    /// What was written is in the socket now.
    fn flushed(&mut self, hub: &Hub) {
        if let Some(at) = self.unflushed_since.take() {
            let waited = Duration::from_nanos(hub.stamp().saturating_sub(at));
            self.queue_wait.observe(waited);
        }
    }

    fn pong(&mut self, rtt: Duration) {
        self.ping_rtt.observe(rtt);
    }

    fn fold_if_due(&mut self, now: Instant) {
        if now.saturating_duration_since(self.folded) >= histogram::FOLD_EVERY {
            self.folded = now;
            self.fold();
        }
    }

    // Out of line: it runs once a second, and inlined it would cost every writer stack.
    #[inline(never)]
    fn fold(&mut self) {
        self.metrics.queue_wait.fold(self.id, &mut self.queue_wait);
        self.metrics.ping_rtt.fold(self.id, &mut self.ping_rtt);
    }
}

impl Drop for Timings<'_> {
    fn drop(&mut self) {
        self.fold();
    }
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

/// Whether the client's socket takes bytes; counted in `fxproxy_writers_blocked` while it
/// does not.
struct Blocked<'a> {
    ctx: &'a Context,
    activity: &'a ClientActivity,
    blocked: bool,
}

impl<'a> Blocked<'a> {
    fn new(ctx: &'a Context, activity: &'a ClientActivity) -> Blocked<'a> {
        Blocked {
            ctx,
            activity,
            blocked: false,
        }
    }

    fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// A write would block: from now on new frames wait in the queue.
    fn block(&mut self) {
        if !self.blocked {
            self.blocked = true;
            self.activity.set_blocked(true);
            let gauge = &self.ctx.metrics.writers_blocked;
            gauge.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn unblock(&mut self) {
        if self.blocked {
            self.blocked = false;
            self.activity.set_blocked(false);
            let gauge = &self.ctx.metrics.writers_blocked;
            gauge.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Our pings and what their answers prove: that the client has read everything sent before.
struct Probe {
    /// Payload of the next ping: a counter, so that a pong can be matched to its ping.
    next: u64,
    /// The ping awaiting its pong: its counter, when it was sent, and whether bytes were sent
    /// before it that no answer had yet proven read (then it is overdue after the lag limit).
    out: Option<(u64, Instant, bool)>,
    /// Bytes sent (into the kernel) that the last answered ping proves read.
    proven: u64,
    /// Bytes sent when the outstanding ping went out.
    at_send: u64,
    /// How long the last answered ping took, until the writer records it.
    rtt: Option<Duration>,
}

impl Probe {
    fn new() -> Probe {
        Probe {
            next: 1,
            out: None,
            proven: 0,
            at_send: 0,
            rtt: None,
        }
    }

    /// Whether a ping should go now: none is out, and enough has been sent unproven (or the
    /// socket is full with unproven bytes).
    fn due(&self, sent: u64, blocked: bool) -> bool {
        let unproven = sent - self.proven;
        self.out.is_none() && (unproven >= PROBE_BYTES || (blocked && unproven > 0))
    }

    /// A ping is going out now; its payload.
    fn sending(&mut self, sent: u64, now: Instant) -> [u8; 8] {
        let id = self.next;
        self.next += 1;
        self.out = Some((id, now, sent > self.proven));
        self.at_send = sent;
        id.to_be_bytes()
    }

    /// A pong arrived; true if it answers the outstanding ping.
    fn answered(&mut self, payload: &[u8]) -> bool {
        match self.out {
            Some((id, sent, _)) if payload == id.to_be_bytes() => {
                self.out = None;
                self.proven = self.at_send;
                self.rtt = Some(sent.elapsed());
                true
            }
            _ => false,
        }
    }

    /// How long an overdue ping has gone unanswered, if one is overdue.
    fn overdue(&self, limit: Duration, now: Instant) -> Option<Duration> {
        match self.out {
            Some((_, sent, true)) if now.duration_since(sent) >= limit => {
                Some(now.duration_since(sent))
            }
            _ => None,
        }
    }

    /// When the outstanding ping becomes overdue, if it can.
    fn deadline(&self, limit: Duration) -> Option<Instant> {
        match self.out {
            Some((_, sent, true)) => Some(sent + limit),
            _ => None,
        }
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.unblock();
    }
}

/// Writes out what tungstenite has buffered; `Ok(false)` when the socket is full.
fn flush(ws: &mut Socket) -> Result<bool, End> {
    match ws.flush() {
        Ok(()) => Ok(true),
        Err(e) if closes::would_block(&e) => Ok(false),
        Err(e) => Err(End::Failed(format!("write failed: {e}"))),
    }
}

/// The writer loop's state: what it works on, and what it carries from one turn to the next.
/// Each step of a turn is a method; all are inlined into [`Writer::run`], so a delivery costs
/// what it did as one long loop (the cold paths stay out of line: see [`start_holding`]).
struct Writer<'w, 'a> {
    ctx: &'a Context,
    ws: &'w mut Socket,
    slot: &'w ClientSlot,
    rx: &'w Receiver<Utf8Bytes>,
    budget: &'w mut Budget,
    blocked: &'w mut Blocked<'a>,
    timings: &'w mut Timings<'a>,
    probe: Probe,
    config: Cached<Config>,
    ping_every: Duration,
    lag_limit: Duration,
    /// The next instant on the keep-alive grid.
    tick: Instant,
    last_heard: Instant,
    /// What a v2 client said, for `v2::act` once read.
    said: Vec<Utf8Bytes>,
}

impl<'w, 'a> Writer<'w, 'a> {
    fn new(
        ctx: &'a Context,
        ws: &'w mut Socket,
        slot: &'w ClientSlot,
        rx: &'w Receiver<Utf8Bytes>,
        budget: &'w mut Budget,
        blocked: &'w mut Blocked<'a>,
        timings: &'w mut Timings<'a>,
    ) -> Writer<'w, 'a> {
        let config = Cached::new(ctx.live_config());
        let ping_every = config.get().client_ping;
        let lag_limit = config.get().max_client_lag;
        Writer {
            ctx,
            ws,
            slot,
            rx,
            budget,
            blocked,
            timings,
            probe: Probe::new(),
            config,
            ping_every,
            lag_limit,
            tick: next_tick(ping_every),
            last_heard: Instant::now(),
            said: Vec::new(),
        }
    }

    /// Turns until the connection ends; returns why it did.
    fn run(&mut self) -> End {
        loop {
            if let Err(end) = self.turn() {
                return end;
            }
        }
    }

    /// One turn: write what waits, read what the client sent, check it keeps up, ping, sleep.
    #[inline]
    fn turn(&mut self) -> Result<(), End> {
        self.follow_config();
        let kick = self.slot.kicked();
        if kick != Kick::None {
            return Err(End::Kicked(kick));
        }
        self.resume_if_writable()?;
        let written = self.write_batch()?;
        // Woken from a chain: this writer's quotes are out, the next one's turn.
        self.slot.pass_on();
        self.read_if_readable()?;
        self.act_on_said()?;
        let now = Instant::now();
        self.timings.fold_if_due(now);
        if written > 0 {
            self.blocked.activity.wrote(now);
        }
        let keep_alive = self.check_keeps_up(now)?;
        self.ping_if_due(now, keep_alive)?;
        self.park(written);
        Ok(())
    }

    /// The keep-alive period, the lag limit and the message budget follow a reload; the
    /// config is looked at once per turn, which costs one atomic load while it is unchanged.
    #[inline]
    fn follow_config(&mut self) {
        if self.config.refresh() {
            let c = self.config.get();
            if c.client_ping != self.ping_every {
                self.ping_every = c.client_ping;
                self.tick = next_tick(self.ping_every);
            }
            self.lag_limit = c.max_client_lag;
            self.budget.set_rate(c.max_client_messages_per_sec);
        }
    }

    /// More sent than the client has proven it read: new quotes wait.
    #[inline]
    fn held_back(&self) -> bool {
        self.ws.get_ref().written() - self.probe.proven >= UNPROVEN_BYTES
    }

    /// A full socket that drained: what tungstenite still buffers goes out, and frames are
    /// taken again.
    #[inline]
    fn resume_if_writable(&mut self) -> Result<(), End> {
        if self.blocked.is_blocked() && self.slot.writable.swap(false, Ordering::SeqCst) {
            match flush(self.ws) {
                Ok(true) => {
                    self.blocked.unblock();
                    self.timings.flushed(&self.ctx.hub);
                }
                Ok(false) => {}
                Err(end) => return Err(end),
            }
        }
        Ok(())
    }

    /// Writes what waits for the client (a holding client's latest quotes, or its queue), then
    /// flushes it. Returns how many frames were written.
    #[inline]
    fn write_batch(&mut self) -> Result<u64, End> {
        let slot = self.slot;
        let held_back = self.held_back();
        let holding = slot.conflation().filter(|c| c.is_holding());
        if let Some(conflation) = holding {
            // What was queued before it held is older than its slots: folded in at once, so
            // that a client waiting for its socket holds one frame per symbol, not a queue.
            fold_queue(self.ctx, slot, conflation, self.rx);
        }
        let written = match holding {
            Some(conflation) if !self.blocked.is_blocked() && !held_back => {
                deliver_latest(self.ctx, self.ws, slot, conflation, self.blocked)?
            }
            None if !self.blocked.is_blocked() && !held_back => self.drain_queue()?,
            _ => 0,
        };
        if written > 0 {
            self.flush_batch(written)?;
        }
        Ok(written)
    }

    /// Writes the queued frames into tungstenite's buffer until the queue is empty, the socket
    /// takes no more, or the client is told to leave. Returns how many were written.
    #[inline]
    fn drain_queue(&mut self) -> Result<u64, End> {
        let mut written = 0u64;
        while let Ok(frame) = self.rx.try_recv() {
            if written == 0 {
                self.timings.writing(self.slot.queued_at());
            }
            written += 1;
            match self.ws.write(Message::Text(frame)) {
                Ok(()) => {}
                // The frame is buffered; the socket takes no more for now.
                Err(e) if closes::would_block(&e) => {
                    self.blocked.block();
                    break;
                }
                Err(e) => return Err(End::Failed(format!("write failed: {e}"))),
            }
            if self.slot.kicked() != Kick::None {
                break;
            }
        }
        Ok(written)
    }

    /// Sends the `written` frames of this turn on, and counts them.
    #[inline]
    fn flush_batch(&mut self, written: u64) -> Result<(), End> {
        #[cfg(test)]
        tests::maybe_fail(&self.slot.key);
        // What was written is buffered in tungstenite: out in one go, one flush a turn.
        if !self.blocked.is_blocked() {
            match flush(self.ws) {
                Ok(true) => self.timings.flushed(&self.ctx.hub),
                Ok(false) => self.blocked.block(),
                Err(end) => return Err(end),
            }
        }
        self.ctx
            .metrics
            .quotes_delivered
            .fetch_add(written, Ordering::Relaxed);
        Ok(())
    }

    /// Reads what the client sent, once the watcher has seen its socket readable.
    #[inline]
    fn read_if_readable(&mut self) -> Result<(), End> {
        if self.slot.readable.swap(false, Ordering::SeqCst) {
            let said = self.slot.v2.then_some(&mut self.said);
            match read_pass(self.ws, self.budget, &mut self.probe, said) {
                Ok(true) => self.last_heard = Instant::now(),
                Ok(false) => {}
                Err(end) => return Err(end),
            }
            if let Some(rtt) = self.probe.rtt.take() {
                self.timings.pong(rtt);
            }
        }
        Ok(())
    }

    /// A v2 client's subscriptions: their answers join its queue, for the next turn.
    #[inline]
    fn act_on_said(&mut self) -> Result<(), End> {
        for text in self.said.drain(..) {
            if !v2::act(self.ctx, self.slot, &self.blocked.activity.peer, &text) {
                return Err(End::Kicked(Kick::SlowConsumer));
            }
        }
        Ok(())
    }

    /// Ends a client that lags too far behind or has stopped answering. Returns whether the
    /// keep-alive grid has been reached (a ping is owed).
    #[inline]
    fn check_keeps_up(&mut self, now: Instant) -> Result<bool, End> {
        if let Some(behind) = self.probe.overdue(self.lag_limit, now) {
            // A conflating client that is behind is sent the latest quotes when it catches
            // up; only the keep-alive's ping timeout ends one that has stopped reading.
            if self.slot.conflation().is_none() {
                return Err(End::Lagging(behind));
            }
        }
        let keep_alive = now >= self.tick;
        if keep_alive {
            if now.duration_since(self.last_heard) > self.ping_every * 2 {
                return Err(End::PingTimeout);
            }
            self.tick = next_tick(self.ping_every);
        }
        Ok(keep_alive)
    }

    /// Pings when the bytes sent call for proof they were read, or the keep-alive for a ping.
    #[inline]
    fn ping_if_due(&mut self, now: Instant, keep_alive: bool) -> Result<(), End> {
        let sent = self.ws.get_ref().written();
        let due = self.probe.due(sent, self.blocked.is_blocked());
        if due || (keep_alive && self.probe.out.is_none()) {
            let payload = self.probe.sending(sent, now);
            match self.ws.write(Message::Ping(payload.to_vec().into())) {
                Ok(()) => {}
                // Buffered behind what the socket has not taken yet.
                Err(e) if closes::would_block(&e) => self.blocked.block(),
                Err(e) => return Err(End::Failed(format!("ping failed: {e}"))),
            }
            if !self.blocked.is_blocked() {
                match flush(self.ws) {
                    Ok(true) => self.timings.flushed(&self.ctx.hub),
                    Ok(false) => self.blocked.block(),
                    Err(end) => return Err(end),
                }
            }
        }
        Ok(())
    }

    /// Sleeps until the next thing to do: frames queued, the socket writable or readable, a
    /// batch's appointment, the lag limit or the keep-alive grid.
    #[inline]
    fn park(&mut self, written: u64) {
        let slot = self.slot;
        // Held back: more sent than the client has proven it read. A conflating client that
        // far behind gets the latest quote per symbol from now on (a full queue does the same,
        // in the distributor). A socket that is merely full is flow control, not lag.
        let held_back = self.held_back();
        if let Some(conflation) = slot.conflation().filter(|_| held_back) {
            start_holding(self.ctx, slot, conflation, self.rx);
        }
        let mut until = self.tick;
        if let Some(t) = self
            .probe
            .deadline(self.lag_limit)
            .filter(|_| slot.conflation().is_none())
        {
            until = until.min(t);
        }
        let idle = if self.blocked.is_blocked() {
            Idle::Writable
        } else if self.held_back() {
            Idle::Reply
        } else {
            match (written > 0)
                .then(|| self.ctx.hub.next_batch_wake(slot, Instant::now()))
                .flatten()
            {
                Some(appointment) => {
                    until = until.min(appointment);
                    Idle::Batch
                }
                None => Idle::Frames,
            }
        };
        if slot.going_idle(self.rx, idle) {
            std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
            slot.awake();
        }
    }
}

/// A conflating client fell behind (it has not proven it read what it was sent): new quotes
/// wait in its latest-value slots, and what its queue holds is folded in.
// Out of line, as are the two below: inlined into the writer loop they cost every client's
// thread one more page of stack (measured: 12 KiB touched against 16 KiB), conflating or not.
#[inline(never)]
fn start_holding(
    ctx: &Context,
    slot: &ClientSlot,
    conflation: &Conflation,
    rx: &Receiver<Utf8Bytes>,
) {
    conflation.hold(&ctx.metrics.clients_conflating);
    fold_queue(ctx, slot, conflation, rx);
}

/// Moves what waits in the queue of a holding client into its slots. Once it holds, nothing
/// more is queued, so everything here is older than what the slots hold.
#[inline(never)]
fn fold_queue(ctx: &Context, slot: &ClientSlot, conflation: &Conflation, rx: &Receiver<Utf8Bytes>) {
    if rx.is_empty() {
        return;
    }
    let mut queued: Vec<(usize, Utf8Bytes)> = Vec::new();
    let mut control = Vec::new();
    for frame in rx.try_iter() {
        match ctx.hub.queued_symbol(slot, &frame) {
            // A v2 client may have unsubscribed since: nothing more of that symbol.
            Some(id) if slot.wants(id) => queued.push((id, frame)),
            Some(_) => {}
            None => control.push(frame),
        }
    }
    let dropped = conflation.fold(queued, control);
    ctx.metrics
        .quotes_conflated
        .fetch_add(dropped, Ordering::Relaxed);
}

/// Writes a holding client's latest quotes until none is left (it is live again) or its socket
/// is full. Returns how many were written.
#[inline(never)]
fn deliver_latest(
    ctx: &Context,
    ws: &mut Socket,
    slot: &ClientSlot,
    conflation: &Conflation,
    blocked: &mut Blocked,
) -> Result<u64, End> {
    let mut written = 0;
    loop {
        let Some(frame) = conflation.take(&ctx.metrics.clients_conflating) else {
            return Ok(written);
        };
        written += 1;
        match ws.write(Message::Text(frame)) {
            Ok(()) => {}
            Err(e) if closes::would_block(&e) => {
                blocked.block();
                return Ok(written);
            }
            Err(e) => return Err(End::Failed(format!("write failed: {e}"))),
        }
        if slot.kicked() != Kick::None {
            return Ok(written);
        }
    }
}

/// Reads everything the client has sent without blocking: tungstenite queues the pong for a
/// ping and the reply to a close; both are flushed here. Returns whether anything arrived.
/// With `said`, its text messages are kept there (a v2 client's actions).
fn read_pass(
    ws: &mut Socket,
    budget: &mut Budget,
    probe: &mut Probe,
    mut said: Option<&mut Vec<Utf8Bytes>>,
) -> Result<bool, End> {
    let mut heard = false;
    let result = loop {
        match ws.read() {
            Ok(Message::Close(_)) => break Err(End::ClientClosed),
            // The answer to our own ping is not the client's doing: it costs no budget.
            Ok(Message::Pong(payload)) if probe.answered(&payload) => heard = true,
            Ok(_) if !budget.take(Instant::now()) => break Err(End::Flood),
            Ok(Message::Text(text)) => {
                heard = true;
                if let Some(said) = said.as_deref_mut() {
                    said.push(text);
                }
            }
            Ok(_) => heard = true,
            // A wake-up that completed no message is charged as one: a peer sending endless
            // fragments of a message that never ends costs reads like a flood of messages.
            Err(e) if closes::would_block(&e) => {
                if !heard && !budget.take(Instant::now()) {
                    break Err(End::Flood);
                }
                break Ok(heard);
            }
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                break Err(End::ClientClosed)
            }
            Err(e) => {
                break Err(match closes::close_for_read_error(&e) {
                    Some((code, reason)) => End::ProtocolError(code, reason),
                    None => End::Failed(format!("read failed: {e}")),
                })
            }
        }
    };
    // Sends the pong, or completes the closing handshake the client started; a full socket
    // keeps them buffered for the next flush.
    match ws.flush() {
        Ok(()) | Err(WsError::ConnectionClosed) => result,
        Err(e) if closes::would_block(&e) => result,
        Err(e) if result.is_ok() => Err(End::Failed(format!("write failed: {e}"))),
        Err(_) => result,
    }
}

/// Sends a close frame and waits briefly for the peer's answer, so the frame is not lost to
/// a reset when the socket closes with unread data.
///
/// Never inlined, and its buffer small: every client thread runs the writer loop, few run
/// this, and a big frame inlined into the loop's caller would touch (and keep) another page
/// of every client's stack.
#[inline(never)]
fn close(ws: &mut Socket, code: CloseCode, reason: String) {
    // The last writes may wait, briefly: what is buffered must go out before the close frame.
    let stream = ws.get_mut();
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(CLOSE_WRITE_TIMEOUT)).is_err()
    {
        return;
    }
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
    ws.get_mut().shutdown_write();
    let until = Instant::now() + CLOSE_LINGER;
    let mut sink = [0u8; 512];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let _ = ws.get_mut().set_read_timeout(Some(left));
        if !matches!(io::Read::read(&mut **ws.get_mut(), &mut sink), Ok(n) if n > 0) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::feed::protocol::GREETING;
    use crate::Server;
    use std::cell::Cell;
    use std::net::{SocketAddr, TcpStream};

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
    fn a_ping_goes_out_after_enough_unproven_bytes_and_its_answer_proves_them_read() {
        let now = Instant::now();
        let limit = Duration::from_secs(5);
        let mut p = Probe::new();
        assert!(!p.due(PROBE_BYTES - 1, false));
        assert!(p.due(10, true), "a full socket asks at once");
        assert!(p.due(PROBE_BYTES, false));
        let payload = p.sending(PROBE_BYTES, now);
        assert!(!p.due(3 * PROBE_BYTES, false), "one ping at a time");
        assert_eq!(p.deadline(limit), Some(now + limit));
        assert_eq!(p.overdue(limit, now + Duration::from_secs(4)), None);
        assert!(!p.answered(b"another"), "only its own answer counts");
        assert_eq!(
            p.overdue(limit, now + Duration::from_secs(6)),
            Some(Duration::from_secs(6))
        );
        assert!(p.answered(&payload));
        assert_eq!(p.overdue(limit, now + Duration::from_secs(60)), None);
        assert!(!p.due(PROBE_BYTES + 10, false), "proven up to the ping");
        // A keep-alive ping with nothing unproven before it is never overdue.
        p.sending(PROBE_BYTES, now);
        assert_eq!(p.deadline(limit), None);
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
