//! Admission: every connection from `accept` until it is authenticated and handed to a
//! thread of its own, or answered and closed. One `admission` thread drives them all from one
//! poll (see [`super::handshake`] for a single connection's steps), so a connection that is
//! still sending its request, waiting for its upgrade or for its auth message costs a
//! descriptor and a few kilobytes, never a thread: a client costs one thread, and only once
//! it has authenticated.
//!
//! The policy, for reconnect storms and slowloris floods alike:
//! - Connections waiting on their peer are bounded by `max_pending_connections`. When that
//!   many are pending, the oldest is dropped to make room, but only once it has been pending
//!   for longer than [`GRACE`] ([`QUICK_GRACE`] for one that has not sent its whole request
//!   head, as slowloris does not); while every one is younger, accepting pauses and newcomers
//!   wait in the kernel's listen queue (sized for storms: [`listener::BACKLOG`], capped by
//!   `net.core.somaxconn`). A real client finishes in milliseconds and never becomes the
//!   oldest; a flood of silent or trickling sockets only ever displaces itself.
//! - An upgrade takes one of the `max_clients` places (fewer under the thread ceiling). With
//!   none free, the oldest upgrade still waiting for its auth message gives its place up once
//!   it has waited longer than [`GRACE`]; while places are held by client threads that are
//!   still winding down, the newcomer waits for one; otherwise it gets 503.
//!
//! With `tls_cert_file` set, every connection starts with a TLS handshake, driven here like
//! the rest (see [`super::stream`]): the handshake and the request head share
//! `handshake_timeout_secs`, and a connection that has not sent its whole hello, or has
//! finished its handshake but not sent its whole request head, is as quick to evict as a
//! plain one that has not sent its whole request head.

use crate::base::live::Cached;
use crate::base::metrics::{Eviction, Rejection};
use crate::clients::answering::{self, Answerer, Asking, Job};
use crate::clients::closes;
use crate::clients::context::Context;
use crate::clients::forwarded::Peer;
use crate::clients::handshake::{Admitted, Conn, Next};
use crate::clients::listener::{self, LISTENER, WAKER};
use crate::clients::places::Place;
use crate::clients::stream::ClientStream;
use crate::config::Config;
use crossbeam_channel::{Receiver, Sender};
use log::{debug, error, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;

/// A pending connection is dropped to make room only once it has been pending this long: a
/// client in a reconnect storm answers within it even on a busy host, a slowloris flood
/// turns over at once.
pub const GRACE: Duration = Duration::from_millis(500);
/// The grace of a connection that has not sent its whole request head, or that is only
/// finishing: a real client sends its head in one piece as soon as it connects, so a flood of
/// silent or trickled heads turns over ten times a second.
pub const QUICK_GRACE: Duration = Duration::from_millis(100);
/// Unsent bytes the kernel may hold for one client before writes to it wait
/// (`TCP_NOTSENT_LOWAT`). Without it a client that stops reading absorbs megabytes of quotes
/// in kernel buffers before its queue starts to fill, and is noticed minutes late.
pub const CLIENT_UNSENT_BYTES: u32 = 16 * 1024;

/// The first token of a pending connection: after `listener::LISTENER` and `listener::WAKER`.
const FIRST_CONN: usize = 2;
/// Connections accepted in one go before the loop looks at the others' events.
const ACCEPT_BATCH: usize = 256;
/// How long accepting pauses when the process is out of descriptors.
const STARVED_PAUSE: Duration = Duration::from_millis(250);
/// How often a newcomer waiting for a place held by a finishing client thread looks again.
const PLACE_RECHECK: Duration = Duration::from_millis(20);

/// Starts a thread for an admitted client; on failure gives the connection back, with why.
pub type HandOff =
    Box<dyn Fn(Box<Admitted>, Place) -> Result<(), (io::Error, Box<Admitted>)> + Send>;

/// The admission loop, set up and not yet running.
pub struct Admission {
    poll: Poll,
    listener: TcpListener,
    waker: Arc<Waker>,
    asks: Receiver<Ask>,
    asker: Asker,
    asking: Asking,
    /// For the `http` thread, until the server takes it (see [`Admission::answerer`]).
    answerer: Option<Answerer>,
}

/// The connections that have no thread yet, as the state dump (SIGUSR1) shows them.
pub struct PendingSnapshot {
    pub total: usize,
    /// How many are in each phase (see [`Conn::phase_name`]), in a fixed order.
    pub by_phase: Vec<(&'static str, usize)>,
    /// The oldest first, as many as were asked for: peer, phase, time since accepted.
    pub oldest: Vec<(Peer, &'static str, Duration)>,
    /// Accepting is paused (the pending set is full of young connections).
    pub paused: bool,
}

struct Ask {
    limit: usize,
    reply: Sender<PendingSnapshot>,
}

/// Asks the admission loop, from another thread, what it holds. It answers between two
/// polls, so the question costs it nothing until it is asked.
#[derive(Clone)]
pub struct Asker {
    tx: Sender<Ask>,
    waker: Arc<Waker>,
}

impl Asker {
    /// A snapshot with at most `limit` connections listed; `None` if the loop has not
    /// answered within `wait` (or is gone).
    pub fn pending(&self, limit: usize, wait: Duration) -> Option<PendingSnapshot> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.tx.try_send(Ask { limit, reply }).ok()?;
        self.waker.wake().ok()?;
        answer.recv_timeout(wait).ok()
    }
}

impl Admission {
    /// Takes over the (bound) listener: a listen queue sized for storms, non-blocking.
    pub fn new(listener: TcpListener) -> io::Result<Admission> {
        listener::size_for_storms(&listener)?;
        let (poll, waker) = listener::watched(&listener)?;
        // A few questions at a time: the state dump asks one at a time.
        let (tx, asks) = crossbeam_channel::bounded(4);
        let asker = Asker {
            tx,
            waker: Arc::clone(&waker),
        };
        let (asking, answerer) = answering::pair(Arc::clone(&waker));
        Ok(Admission {
            poll,
            listener,
            waker,
            asks,
            asker,
            asking,
            answerer: Some(answerer),
        })
    }

    /// What the `http` thread runs (see [`answering`]): taken once. Without it, plain
    /// requests are answered 503.
    pub fn answerer(&mut self) -> Option<Answerer> {
        self.answerer.take()
    }

    /// Wakes the loop (to see the stop signal).
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// For asking the running loop what it holds.
    pub fn asker(&self) -> Asker {
        self.asker.clone()
    }

    /// Runs until `ctx.stop` is set (and the waker woken).
    pub fn run(self, ctx: &Arc<Context>, hand_off: HandOff) -> io::Result<()> {
        let config = Cached::new(ctx.live_config());
        let max_pending = config.get().max_pending_connections;
        let mut state = State {
            ctx: Arc::clone(ctx),
            config,
            asks: self.asks,
            asking: self.asking,
            poll: self.poll,
            listener: self.listener,
            hand_off,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            order: VecDeque::new(),
            quick: VecDeque::new(),
            deadlines: BinaryHeap::new(),
            waiting: Vec::new(),
            accept_ready: true,
            paused_until: None,
            paused_for_pending: false,
            starved_logged: false,
            next_id: 0,
            spawn_failures: crate::base::ratelimit::RateLimited::new(Duration::from_secs(10)),
            max_pending,
            draining: false,
        };
        state.run()
    }
}

struct State {
    ctx: Arc<Context>,
    /// The running configuration, refreshed once per turn of the loop.
    config: Cached<Config>,
    asks: Receiver<Ask>,
    asking: Asking,
    poll: Poll,
    listener: TcpListener,
    hand_off: HandOff,
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections in `slots`.
    live: usize,
    /// `(slot, id)` in accept order, oldest first; entries whose connection has gone are
    /// skipped when met.
    order: VecDeque<(usize, u64)>,
    /// The same for connections that became quick to evict (see [`Conn::quick_to_evict`]),
    /// in the order they did.
    quick: VecDeque<(usize, u64)>,
    deadlines: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Upgrades waiting for a place, `(slot, id)`.
    waiting: Vec<(usize, u64)>,
    /// The listener may have connections waiting: accept until it says it has none.
    accept_ready: bool,
    /// Out of descriptors: no accept before then.
    paused_until: Option<Instant>,
    /// Accepting paused because every pending connection is younger than the grace.
    paused_for_pending: bool,
    starved_logged: bool,
    next_id: u64,
    spawn_failures: crate::base::ratelimit::RateLimited,
    max_pending: usize,
    /// No more accepts: the proxy is draining (see [`State::stop_accepting`]).
    draining: bool,
}

impl State {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            self.ctx.heartbeats.admission.beat();
            if self.ctx.stop.is_set() {
                self.shut_down();
                return Ok(());
            }
            if !self.draining && self.ctx.draining.is_set() {
                self.stop_accepting();
            }
            if self.config.refresh() {
                self.max_pending = self.config.get().max_pending_connections;
            }
            // Bounded even with nothing to do, so the loop beats for the watchdog.
            let timeout = self.timeout(Instant::now());
            let timeout = self.ctx.heartbeats.admission.bound(timeout);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_ready = !self.draining,
                    WAKER => {
                        self.answer(now);
                        self.take_answers(now);
                    }
                    Token(t) => {
                        let slot = t - FIRST_CONN;
                        self.drive(slot, now, |conn, ctx| conn.on_ready(ctx, now));
                    }
                }
            }
            self.expire(now);
            self.seat_waiting(now);
            if self.accept_ready && !self.draining && self.paused_until.map_or(true, |t| now >= t) {
                self.paused_until = None;
                self.accept_some(now);
            }
            self.ctx
                .metrics
                .pending_connections
                .store(self.live as u64, Ordering::Relaxed);
        }
    }

    /// Answers what the state dump asked: every pending connection counted by phase, the
    /// oldest listed.
    fn answer(&mut self, now: Instant) {
        while let Ok(ask) = self.asks.try_recv() {
            let mut by_phase: Vec<(&'static str, usize)> =
                ["head", "place", "responding", "auth", "closing"]
                    .iter()
                    .map(|p| (*p, 0))
                    .collect();
            for conn in self.slots.iter().flatten() {
                let phase = conn.phase_name();
                if let Some(entry) = by_phase.iter_mut().find(|(p, _)| *p == phase) {
                    entry.1 += 1;
                }
            }
            let oldest = self
                .order
                .iter()
                .filter(|&&(slot, id)| self.is_live(slot, id))
                .filter_map(|&(slot, _)| self.slots[slot].as_ref())
                .take(ask.limit)
                .map(|c| {
                    (
                        c.peer,
                        c.phase_name(),
                        now.saturating_duration_since(c.accepted),
                    )
                })
                .collect();
            let _ = ask.reply.try_send(PendingSnapshot {
                total: self.live,
                by_phase,
                oldest,
                paused: self.paused_for_pending || self.paused_until.is_some(),
            });
        }
    }

    /// Gives each connection still waiting the answer the `http` thread wrote for it.
    fn take_answers(&mut self, now: Instant) {
        while let Ok(answer) = self.asking.answers.try_recv() {
            if self.is_live(answer.slot, answer.id) {
                let response = answer.response;
                self.drive(answer.slot, now, |conn, _| conn.answer(response, now));
            }
        }
    }

    /// How long the poll may sleep: until the next deadline, the end of a pause, the moment
    /// the oldest pending connection may be dropped for a newcomer, or a place re-check.
    fn timeout(&mut self, now: Instant) -> Option<Duration> {
        let mut wake: Option<Instant> = self.deadlines.peek().map(|Reverse((t, _, _))| *t);
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let Some(t) = self.paused_until {
            at(t);
        } else if self.accept_ready {
            if self.live < self.max_pending {
                return Some(Duration::ZERO);
            }
            if let Some(oldest) = self.oldest(|_| true) {
                at(oldest + GRACE);
            }
            if let Some(slot) = self.quick_front() {
                if let Some(c) = &self.slots[slot] {
                    at(c.accepted + QUICK_GRACE);
                }
            }
        }
        if !self.waiting.is_empty() {
            at(now + PLACE_RECHECK);
        }
        wake.map(|t| t.saturating_duration_since(now))
    }

    /// When the oldest live connection matching `pred` was accepted.
    fn oldest(&mut self, pred: impl Fn(&Conn) -> bool) -> Option<Instant> {
        self.oldest_slot(pred)
            .and_then(|s| self.slots[s].as_ref().map(|c| c.accepted))
    }

    /// The slot of the oldest live connection matching `pred`, dropping stale entries from
    /// the front of the accept order on the way.
    fn oldest_slot(&mut self, pred: impl Fn(&Conn) -> bool) -> Option<usize> {
        while let Some(&(slot, id)) = self.order.front() {
            if self.is_live(slot, id) {
                break;
            }
            self.order.pop_front();
        }
        self.order
            .iter()
            .find(|&&(slot, id)| {
                self.is_live(slot, id) && self.slots[slot].as_ref().is_some_and(&pred)
            })
            .map(|&(slot, _)| slot)
    }

    fn is_live(&self, slot: usize, id: u64) -> bool {
        matches!(self.slots.get(slot), Some(Some(c)) if c.id == id)
    }

    fn accept_some(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            if self.live >= self.max_pending && !self.make_room(now) {
                if !self.paused_for_pending {
                    self.paused_for_pending = true;
                    self.ctx
                        .metrics
                        .accept_pauses
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(
                        "{} connections pending, all younger than {GRACE:?}: new ones wait in the listen queue",
                        self.live
                    );
                }
                return;
            }
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    self.paused_for_pending = false;
                    self.starved_logged = false;
                    self.admit(stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_out_of_descriptors(&e) => {
                    // Keep serving the clients we have; try again after a pause rather than spin.
                    if !self.starved_logged {
                        error!("cannot accept new clients: {e}; raise LimitNOFILE (the open-file limit). Existing clients are unaffected; retrying");
                        self.starved_logged = true;
                    }
                    self.paused_until = Some(now + STARVED_PAUSE);
                    return;
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// With `max_pending_connections` pending, drops the oldest if it has been pending for
    /// longer than the grace. False when every one is younger.
    fn make_room(&mut self, now: Instant) -> bool {
        let victim = match self.quick_front() {
            Some(slot) if self.age(slot, now) >= QUICK_GRACE => Some(slot),
            _ => self
                .oldest_slot(|_| true)
                .filter(|slot| self.age(*slot, now) >= GRACE),
        };
        match victim {
            Some(slot) => {
                self.evict(slot, Eviction::PendingFull);
                true
            }
            None => false,
        }
    }

    /// The slot of the first connection that became quick to evict and still is. One that
    /// is not (any more) leaves the queue, to join it again at the back if it becomes quick
    /// again (a TLS connection does, once its handshake is done).
    fn quick_front(&mut self) -> Option<usize> {
        while let Some(&(slot, id)) = self.quick.front() {
            if self.is_live(slot, id) {
                if let Some(conn) = self.slots[slot].as_mut() {
                    if conn.quick_to_evict() {
                        return Some(slot);
                    }
                    conn.in_quick = false;
                }
            }
            self.quick.pop_front();
        }
        None
    }

    fn age(&self, slot: usize, now: Instant) -> Duration {
        self.slots[slot].as_ref().map_or(Duration::ZERO, |c| {
            now.saturating_duration_since(c.accepted)
        })
    }

    fn evict(&mut self, slot: usize, why: Eviction) {
        if let Some(mut conn) = self.remove(slot) {
            debug!(
                "{}: dropped to make room ({}) after {:?}",
                conn.peer,
                why.label(),
                conn.accepted.elapsed()
            );
            conn.evict();
            self.ctx.metrics.evicted(why);
        }
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant) {
        if let Err(e) = prepare(&stream) {
            debug!("{peer}: cannot set up the socket: {e}");
            return;
        }
        // Over TLS, the config of the moment: a renewed certificate is served from the next
        // connection on.
        let stream = match &self.ctx.tls {
            None => ClientStream::new(stream),
            Some(tls) => match ClientStream::tls(stream, tls.config()) {
                Ok(s) => s,
                Err(e) => {
                    warn!("{peer}: cannot start TLS: {e}");
                    return;
                }
            },
        };
        self.next_id += 1;
        let conn = Conn::new(stream, peer, self.next_id, now, self.config.get());
        let Some(slot) = self.insert(conn) else {
            return;
        };
        self.order.push_back((slot, self.next_id));
        // A client's request has usually arrived with its connection: no need to wait for
        // the poll to say so.
        self.drive(slot, now, |conn, ctx| conn.on_ready(ctx, now));
    }

    /// Puts a connection in a slot and registers its socket; `None` if it cannot be watched.
    fn insert(&mut self, conn: Conn) -> Option<usize> {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let fd = conn.fd();
        let registered = self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(slot + FIRST_CONN),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = registered {
            warn!("{}: cannot watch the socket: {e}", conn.peer);
            self.free.push(slot);
            return None;
        }
        self.deadlines.push(Reverse((conn.deadline, slot, conn.id)));
        self.slots[slot] = Some(conn);
        self.live += 1;
        Some(slot)
    }

    /// Takes a connection out of its slot, its socket no longer watched here.
    fn remove(&mut self, slot: usize) -> Option<Conn> {
        let conn = self.slots.get_mut(slot)?.take()?;
        let _ = self.poll.registry().deregister(&mut SourceFd(&conn.fd()));
        self.free.push(slot);
        self.live -= 1;
        Some(conn)
    }

    /// Runs one step of the connection in `slot` and acts on what it says. A panic while
    /// doing so (a bug) drops that connection only.
    fn drive(&mut self, slot: usize, now: Instant, step: impl FnOnce(&mut Conn, &Context) -> Next) {
        let ctx = Arc::clone(&self.ctx);
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let before = conn.deadline;
        let next = match panic::catch_unwind(AssertUnwindSafe(|| step(conn, &ctx))) {
            Ok(next) => next,
            Err(payload) => {
                ctx.metrics.internal_errors.fetch_add(1, Ordering::Relaxed);
                error!(
                    "{}: internal error while admitting this connection ({}); dropping it",
                    conn.peer,
                    crate::base::logsafe::escaped(crate::base::threads::panic_message(&*payload))
                );
                Next::Closed
            }
        };
        self.follow(slot, before, next, now);
    }

    fn follow(&mut self, slot: usize, before: Instant, next: Next, now: Instant) {
        match next {
            Next::Wait => {
                if let Some(conn) = self.slots[slot].as_mut() {
                    if conn.deadline != before {
                        self.deadlines.push(Reverse((conn.deadline, slot, conn.id)));
                    }
                    if !conn.in_quick && conn.quick_to_evict() {
                        conn.in_quick = true;
                        self.quick.push_back((slot, conn.id));
                    }
                }
            }
            Next::Ask(request) => {
                let Some(conn) = self.slots[slot].as_ref() else {
                    return;
                };
                let id = conn.id;
                self.deadlines.push(Reverse((conn.deadline, slot, id)));
                if let Err(job) = self.asking.ask(Job { slot, id, request }) {
                    let busy = answering::busy(&job.request);
                    self.drive(slot, now, |conn, _| conn.answer(busy, now));
                }
            }
            Next::NeedsPlace => self.seat(slot, now),
            Next::Ready(admitted, place) => {
                self.remove(slot);
                self.start_thread(admitted, place, now);
            }
            Next::Closed => {
                self.remove(slot);
            }
        }
    }

    /// Finds a place for the upgrade in `slot`, or decides it waits or is refused.
    fn seat(&mut self, slot: usize, now: Instant) {
        let ctx = Arc::clone(&self.ctx);
        let Some(id) = self.slots[slot].as_ref().map(|c| c.id) else {
            return;
        };
        let place = ctx.places.take().or_else(|| self.place_given_up(now));
        if let Some(place) = place {
            self.waiting.retain(|w| w.0 != slot);
            self.drive(slot, now, |conn, ctx| conn.upgrade(ctx, place, now));
            return;
        }
        let upgrades_waiting_for_auth = self.oldest_slot(Conn::holds_place).is_some();
        if upgrades_waiting_for_auth || self.places_winding_down() {
            if !self.waiting.contains(&(slot, id)) {
                self.waiting.push((slot, id));
            }
            return;
        }
        self.waiting.retain(|w| w.0 != slot);
        let why = if ctx.places.limited_by_ceiling() {
            Rejection::ThreadCeiling
        } else {
            Rejection::MaxClients
        };
        self.drive(slot, now, |conn, ctx| conn.refuse_full(ctx, now, why));
    }

    /// A place given up for a newcomer by the oldest upgrade still waiting for its auth
    /// message, once its 101 has been out for longer than the grace: upgrades that never
    /// authenticate must not keep real clients out any more than silent sockets may. The
    /// candidate is read first: an auth message that came while this loop was busy elsewhere
    /// (on a loaded host) came in time, and that client is served, not dropped.
    fn place_given_up(&mut self, now: Instant) -> Option<Place> {
        let overdue = |c: &Conn| c.waiting_for_auth(now).is_some_and(|w| w >= GRACE);
        loop {
            // The oldest in accept order: the scan stops at the first holder, cheap in a storm
            // of thousands. (A later one whose 101 went out earlier waits its turn.)
            let victim = self.oldest_slot(Conn::holds_place)?;
            if !self.slots[victim].as_ref().is_some_and(overdue) {
                return None;
            }
            self.drive(victim, now, |conn, ctx| conn.on_ready(ctx, now));
            if self.slots[victim].as_ref().is_some_and(overdue) {
                self.evict(victim, Eviction::Place);
                return self.ctx.places.take();
            }
            // It has authenticated (its place went with it to its thread), or failed to
            // and given its place back.
            if let Some(place) = self.ctx.places.take() {
                return Some(place);
            }
        }
    }

    /// Whether some places are held by client threads that no longer serve a client (they
    /// are closing, or their thread is winding down): a newcomer waits for those.
    fn places_winding_down(&self) -> bool {
        let serving = self.ctx.metrics.clients_connected.load(Ordering::Relaxed) as usize;
        let in_auth = self
            .slots
            .iter()
            .flatten()
            .filter(|c| c.holds_place())
            .count();
        self.ctx.places.taken() > serving + in_auth
    }

    fn seat_waiting(&mut self, now: Instant) {
        if self.waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.waiting);
        for (slot, id) in waiting {
            if self.is_live(slot, id) && self.slots[slot].as_ref().is_some_and(Conn::needs_place) {
                self.seat(slot, now);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((t, slot, id))) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            let due =
                matches!(self.slots.get(slot), Some(Some(c)) if c.id == id && c.deadline == t);
            if due {
                self.drive(slot, now, |conn, ctx| conn.on_deadline(ctx, now));
            }
        }
    }

    fn start_thread(&mut self, admitted: Box<Admitted>, place: Place, now: Instant) {
        let peer = admitted.peer;
        if let Err((e, admitted)) = (self.hand_off)(admitted, place) {
            self.ctx.metrics.rejected(Rejection::NoThread);
            self.spawn_failures.note(|n| {
                error!("{peer}: cannot start a thread for an authenticated client ({n} refused): {e}; closing it with 1013. Raise TasksMax / kernel.threads-max / vm.max_map_count");
            });
            let owed = (CloseCode::Again, closes::TRY_AGAIN.to_string());
            let (conn, next) = Conn::closing(admitted, &self.ctx, owed, now);
            if let Some(slot) = self.insert(conn) {
                self.order
                    .push_back((slot, self.slots[slot].as_ref().map_or(0, |c| c.id)));
                self.follow(slot, now, next, now);
            }
        }
    }

    /// A stop begins with a drain (see [`Context::draining`]): no more accepts. The listener
    /// is no longer watched (its connections wait in the kernel's queue for the next process,
    /// which shares the socket); the connections already accepted are seen through.
    fn stop_accepting(&mut self) {
        self.draining = true;
        self.accept_ready = false;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&self.listener.as_raw_fd()));
        self.ctx.not_accepting.set();
        debug!(
            "draining: accepting no more connections; {} pending finish",
            self.live
        );
    }

    /// The proxy is stopping: every upgraded connection is told, every other dropped.
    fn shut_down(&mut self) {
        for slot in 0..self.slots.len() {
            if let Some(mut conn) = self.remove(slot) {
                conn.shut_down(self.ctx.restart_on_stop);
            }
        }
        self.ctx
            .metrics
            .pending_connections
            .store(0, Ordering::Relaxed);
    }
}

/// Sets up an accepted socket: non-blocking (the loop and, later, the writer never block on
/// it), no Nagle delay, and a bound on unsent bytes in the kernel.
fn prepare(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    socket2::SockRef::from(stream).set_tcp_notsent_lowat(CLIENT_UNSENT_BYTES)
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}
