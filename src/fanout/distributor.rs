//! The hub between the upstream and the clients: the list of client queues and the latest
//! quote per symbol, and the distributor thread that parses each upstream frame once and
//! offers it to every interested client without ever blocking on one.
//!
//! A frame's bytes (`Utf8Bytes`) are reference-counted: every client queue holds the same
//! allocation. How writers learn of new frames is where the CPU goes (a wake-up and a `send`
//! per client per batch are most of it), so:
//! - a writer still busy with earlier frames is not woken: it drains its queue before parking;
//! - under heavy load writers are not woken at all: each sleeps until its next tick on a
//!   batch grid staggered over `PHASES` offsets, and writes everything queued meanwhile;
//! - otherwise the writers to wake form a few chains (see [`WakeChain`]).

use crate::base::heartbeat::Heartbeat;
use crate::base::metrics::{Metrics, Padded, QueueStats};
use crate::base::ratelimit::RateLimited;
use crate::fanout::conflate::{Conflation, Offer};
use crate::fanout::slot::{ClientSlot, Kick, WakeChain, CHAINS};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, warn};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};
use tungstenite::Utf8Bytes;

/// Deliveries per second above which writers batch (see `Hub::worth_batching`): at a few
/// microseconds of wake-up and send per delivery, below this the proxy needs well under a
/// tenth of a core however it wakes its writers.
const BATCH_ABOVE: f64 = 50_000.0;

/// How many groups the writers' batch grid is staggered into.
const PHASES: u64 = 8;

/// Clients whose queues [`Hub::queue_stats`] reads per turn of the hub lock.
const STATS_CHUNK: usize = 256;

/// Why a client could not join.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinError {
    UnknownSymbol(String),
    TooManyForKey,
}

struct HubInner {
    clients: Vec<Arc<ClientSlot>>,
    latest: Vec<Option<Utf8Bytes>>,
    per_key: HashMap<String, usize>,
    /// Scratch for `publish`: positions of the clients a batch was queued for, kept to reuse
    /// its allocation.
    queued: Vec<usize>,
}

/// A client's queue: the distributor's end and the client writer's.
pub type Queue = (Sender<Utf8Bytes>, Receiver<Utf8Bytes>);

/// A new client's queue, made by the admission loop before the client's thread starts.
///
/// The design asks for a bounded queue per client; this is an unbounded (linked-block)
/// channel capped by its length instead (`client_queue_len`, checked in `publish`):
/// crossbeam's `bounded(n)` allocates all n slots up front, 1,024 × 16 bytes for every
/// client, which fifteen thousand mostly idle clients cannot afford. The cap is the same
/// bound: a client with a full queue is a slow consumer.
///
/// Made on the admission thread, and never inlined: the channel is built on the stack before
/// it moves to the heap (its two cache-padded ends make that frame almost 900 bytes), and on
/// the client's thread that frame, under the sends that fill the new queue, took the stack
/// into a third page: 4 KiB more memory for every client (see BENCHMARKS.md, "Memory").
#[inline(never)]
pub fn queue() -> Queue {
    crossbeam_channel::unbounded()
}

/// Shared by the distributor, every client thread and the housekeeping thread.
pub struct Hub {
    symbols: Vec<String>,
    index: HashMap<String, usize>,
    /// `client_queue_len` and `max_clients_per_key`: a reload may change them (see
    /// [`Hub::set_limits`]); read once per batch and once per join.
    queue_len: AtomicUsize,
    max_per_key: AtomicUsize,
    next_id: AtomicU64,
    /// Epoch ms of the last quote per symbol (0: none yet), for `/metrics`.
    last_quote_ms: Vec<AtomicU64>,
    metrics: Arc<Metrics>,
    inner: Mutex<HubInner>,
    grid: Padded<Grid>,
    /// How a frame's symbol is found: the v1 shape's `symbol`, or a provider's own field.
    symbol_of: SymbolOf,
    /// How clients that speak v2 are served, once the server plugs it in.
    v2: Option<V2Ticks>,
}

/// A frame (its text, its symbol's name, whether it is the latest quote sent on subscribing)
/// as a v2 tick.
pub type EncodeV2 = Box<dyn Fn(&str, &str, bool) -> Option<String> + Send + Sync>;

/// How the hub serves clients that speak TraderMade's v2 protocol; the feed knows the
/// protocol, the hub only asks.
pub struct V2Ticks {
    /// A frame of the named symbol as a v2 tick (`true`: the latest quote, sent on
    /// subscribing); `None` when the frame holds no price. Called once per frame for all the
    /// v2 clients, under the hub's lock.
    pub encode: EncodeV2,
    /// The symbol a v2 tick names; `None` for the protocol's other messages.
    pub symbol: fn(&str) -> Option<&str>,
}

/// How the hub finds a frame's symbol: its position in the hub's symbols, `None` for a frame
/// that is no quote of one. The feed knows how its frames name their symbol (the v1 shape's
/// `symbol`, or a provider's own field); the hub only asks.
pub type SymbolOf = Box<dyn Fn(&str) -> Option<usize> + Send + Sync>;

/// The batch grid: while quotes stream, busy writers sleep until the next instant
/// `epoch + k × batch` (staggered by phase) and then write all that was queued meanwhile. Every
/// writer reads this on every batch, so it lives on cache lines of its own, away from the
/// lock and counters the distributor writes on every quote.
struct Grid {
    /// `batch_delay_ms` in nanoseconds; a reload may change it.
    batch_nanos: AtomicU64,
    epoch: Instant,
    /// True while batching pays (see `Hub::worth_batching`); written only when it changes.
    streaming: AtomicBool,
}

impl Hub {
    pub fn new(
        symbols: &[String],
        queue_len: usize,
        max_per_key: usize,
        batch: Duration,
        metrics: Arc<Metrics>,
        symbol_of: SymbolOf,
    ) -> Hub {
        Hub {
            symbols: symbols.to_vec(),
            index: symbols
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i))
                .collect(),
            queue_len: AtomicUsize::new(queue_len),
            max_per_key: AtomicUsize::new(max_per_key),
            next_id: AtomicU64::new(1),
            last_quote_ms: symbols.iter().map(|_| AtomicU64::new(0)).collect(),
            metrics,
            inner: Mutex::new(HubInner {
                clients: Vec::new(),
                latest: vec![None; symbols.len()],
                per_key: HashMap::new(),
                queued: Vec::new(),
            }),
            grid: Padded(Grid {
                batch_nanos: AtomicU64::new(batch.as_nanos() as u64),
                epoch: Instant::now(),
                streaming: AtomicBool::new(false),
            }),
            symbol_of,
            v2: None,
        }
    }

    /// The hub, serving v2 clients as `v2` says.
    pub fn with_v2(mut self, v2: V2Ticks) -> Hub {
        self.v2 = Some(v2);
        self
    }

    /// The symbol id of a frame from the upstream side, if it is a quote of a carried symbol.
    pub fn symbol_of(&self, frame: &str) -> Option<usize> {
        (self.symbol_of)(frame)
    }

    /// The symbol id of a frame from `client`'s queue; `None` for one that is no quote (a v2
    /// client's acknowledgements).
    pub fn queued_symbol(&self, client: &ClientSlot, frame: &str) -> Option<usize> {
        if !client.v2 {
            return self.symbol_of(frame);
        }
        let v2 = self.v2.as_ref()?;
        (v2.symbol)(frame).and_then(|s| self.symbol_id(s))
    }

    /// The latest quote of symbol `id` as a v2 tick, `last` when it is the one sent on
    /// subscribing.
    fn v2_tick(&self, id: usize, frame: &str, last: bool) -> Option<Utf8Bytes> {
        let v2 = self.v2.as_ref()?;
        (v2.encode)(frame, &self.symbols[id], last).map(Utf8Bytes::from)
    }

    /// New `client_queue_len`, `max_clients_per_key` and `batch_delay_ms` after a reload:
    /// every queue is held to the new length from the next quote on (a client already
    /// further behind is a slow consumer then), the per-key limit applies to clients that
    /// join from now on, and the batch grid takes the new period at the next batch.
    pub fn set_limits(&self, queue_len: usize, max_per_key: usize, batch: Duration) {
        self.queue_len.store(queue_len, Ordering::Relaxed);
        self.max_per_key.store(max_per_key, Ordering::Relaxed);
        let nanos = batch.as_nanos() as u64;
        if self.grid.batch_nanos.load(Ordering::Relaxed) != nanos {
            self.grid.batch_nanos.store(nanos, Ordering::Relaxed);
        }
    }

    fn batch(&self) -> Duration {
        Duration::from_nanos(self.grid.batch_nanos.load(Ordering::Relaxed))
    }

    /// Now, in nanoseconds since the hub was made: what [`ClientSlot::queued_at`] is stamped in.
    pub fn stamp(&self) -> u64 {
        u64::try_from(self.grid.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The first instant on the batch grid after `now`.
    /// Batching pays when quotes come faster than one per batch period and waking every
    /// writer for every quote would cost real CPU; below `BATCH_ABOVE` deliveries a second
    /// each quote goes out at once.
    fn worth_batching(&self, mean_gap: Duration) -> bool {
        let batch = self.batch();
        if batch.is_zero() || mean_gap >= batch {
            return false;
        }
        let clients = self.inner.lock().clients.len() as f64;
        clients / mean_gap.as_secs_f64().max(1e-6) > BATCH_ABOVE
    }

    /// Whether writers are on the batch grid now.
    pub fn batching(&self) -> bool {
        self.grid.streaming.load(Ordering::Relaxed)
    }

    fn next_tick(&self, now: Instant, phase: u64) -> Instant {
        let step = self.batch().as_nanos().max(1);
        let offset = step * u128::from(phase % PHASES) / u128::from(PHASES);
        let since = now.saturating_duration_since(self.grid.epoch).as_nanos();
        let next = match since.checked_sub(offset) {
            Some(past) => (past / step + 1) * step + offset,
            None => offset,
        };
        self.grid.epoch + Duration::from_nanos(next as u64)
    }

    /// When a writer that just delivered frames should wake for its next batch, if quotes are
    /// streaming; `None` means "wait to be woken". Writers are spread over `PHASES` offsets of
    /// the grid: all of them waking at one instant would starve everything else on the host
    /// (the upstream reader, the distributor, the clients themselves) for the whole burst.
    pub fn next_batch_wake(&self, slot: &ClientSlot, now: Instant) -> Option<Instant> {
        if self.batch().is_zero() || !self.grid.streaming.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.next_tick(now, slot.id))
    }

    pub fn symbol_id(&self, symbol: &str) -> Option<usize> {
        self.index.get(symbol).copied()
    }

    pub fn last_quotes(&self) -> Vec<(String, u64)> {
        self.symbols
            .iter()
            .zip(&self.last_quote_ms)
            .map(|(s, t)| (s.clone(), t.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn client_count(&self) -> usize {
        self.inner.lock().clients.len()
    }

    /// How far behind the clients are: the depth of every queue, summed up into
    /// [`QueueStats`]. Read under the hub lock, which the distributor wants on every batch,
    /// [`STATS_CHUNK`] clients at a time, the lock let go in between: with fifteen thousand
    /// clients a scrape holds up a batch by one chunk's reads at most, not by all of them. A
    /// client that joins or leaves meanwhile may be missed or counted twice.
    pub fn queue_stats(&self) -> QueueStats {
        let mut stats = QueueStats::new(self.queue_len.load(Ordering::Relaxed));
        let mut at = 0;
        loop {
            let inner = self.inner.lock();
            let chunk = inner.clients.iter().skip(at).take(STATS_CHUNK);
            for client in chunk {
                let held = client.conflation.as_ref().map_or(0, |c| c.waiting());
                stats.add(client.tx.len() + held);
            }
            at += STATS_CHUNK;
            if at >= inner.clients.len() {
                return stats;
            }
        }
    }

    /// Adds a client. Its queue first gets the latest quote of each of its symbols, in the same
    /// critical section that adds it to the fan-out list, so the snapshot and the live stream
    /// meet without a duplicate or a gap. A client that `conflate`s is sent the latest quote
    /// per symbol when it falls behind, instead of being closed.
    pub fn join(
        &self,
        queue: Queue,
        key: &str,
        symbols: Option<&[String]>,
        thread: Thread,
        conflate: bool,
    ) -> Result<(Arc<ClientSlot>, Receiver<Utf8Bytes>), JoinError> {
        let wants = match symbols {
            None => None,
            Some(list) => {
                let mut wants = vec![false; self.symbols.len()].into_boxed_slice();
                for s in list {
                    let id = self
                        .symbol_id(s)
                        .ok_or_else(|| JoinError::UnknownSymbol(s.clone()))?;
                    wants[id] = true;
                }
                Some(wants)
            }
        };
        self.enter(queue, key, (wants, false), thread, conflate, None)
    }

    /// Adds a client that speaks v2: it receives no symbol until it subscribes (see
    /// [`Hub::change`]), and `first` (its `login_ok`) is the first thing queued for it.
    pub fn join_v2(
        &self,
        queue: Queue,
        key: &str,
        thread: Thread,
        conflate: bool,
        first: String,
    ) -> Result<(Arc<ClientSlot>, Receiver<Utf8Bytes>), JoinError> {
        let wants = vec![false; self.symbols.len()].into_boxed_slice();
        self.enter(
            queue,
            key,
            (Some(wants), true),
            thread,
            conflate,
            Some(first),
        )
    }

    fn enter(
        &self,
        queue: Queue,
        key: &str,
        wants: (Option<Box<[bool]>>, bool),
        thread: Thread,
        conflate: bool,
        first: Option<String>,
    ) -> Result<(Arc<ClientSlot>, Receiver<Utf8Bytes>), JoinError> {
        // The queue: see [`queue`] for why it is capped by length, and made elsewhere.
        let (tx, rx) = queue;
        let slot = Arc::new(ClientSlot::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            key,
            tx,
            wants,
            thread,
            conflate.then(|| Box::new(Conflation::new(self.symbols.len()))),
        ));
        let mut inner = self.inner.lock();
        let count = inner.per_key.entry(key.to_string()).or_insert(0);
        let max_per_key = self.max_per_key.load(Ordering::Relaxed);
        if max_per_key > 0 && *count >= max_per_key {
            return Err(JoinError::TooManyForKey);
        }
        *count += 1;
        slot.queued_at.store(self.stamp(), Ordering::Relaxed);
        if let Some(first) = first {
            // The receiver is alive in this scope, so the send cannot fail.
            let _ = slot.tx.send(Utf8Bytes::from(first));
        }
        for (id, frame) in inner.latest.iter().enumerate() {
            if let Some(frame) = frame {
                if slot.wants(id) {
                    let _ = slot.tx.send(frame.clone());
                }
            }
        }
        inner.clients.push(Arc::clone(&slot));
        Ok((slot, rx))
    }

    /// A v2 client's subscriptions change, in one critical section with the fan-out so that
    /// what it is sent stays in order: `ack` is queued first; then, with `send_last`, the
    /// latest quote of each symbol of `add` it did not receive already, as a LAST_QUOTE; then
    /// that symbol's live stream. Nothing of a symbol of `remove` is queued after `ack`. A
    /// client whose queue is full is a slow consumer: it is told to leave, and false returned.
    pub fn change(
        &self,
        client: &ClientSlot,
        add: &[usize],
        remove: &[usize],
        ack: String,
        send_last: bool,
    ) -> bool {
        let Some(wants) = client.wants.as_ref() else {
            return true;
        };
        let inner = self.inner.lock();
        if client.tx.len() >= self.queue_len.load(Ordering::Relaxed) {
            drop(inner);
            client.kick(Kick::SlowConsumer);
            self.metrics
                .slow_consumer_disconnects
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // The receiver lives as long as the client's slot, so these sends cannot fail.
        let _ = client.tx.send(Utf8Bytes::from(ack));
        for &id in remove {
            wants[id].store(false, Ordering::Relaxed);
            if let Some(conflation) = &client.conflation {
                conflation.forget(id);
            }
        }
        for &id in add {
            if wants[id].swap(true, Ordering::Relaxed) || !send_last {
                continue;
            }
            let last = inner.latest[id]
                .as_ref()
                .and_then(|frame| self.v2_tick(id, frame, true));
            if let Some(tick) = last {
                let _ = client.tx.send(tick);
            }
        }
        true
    }

    /// Tells every client whose symbols the provider all refused (`refused`, by symbol id) to
    /// leave; returns how many.
    pub fn kick_refused(&self, refused: &[bool]) -> usize {
        self.kick_where(Kick::Refused, |c| c.wants_only(refused))
    }

    /// Removes a client (its writer is ending). Idempotent.
    pub fn leave(&self, slot: &ClientSlot) {
        // A chain this writer never passed on holds the slot itself: pass it on (the writers
        // after this one are waiting for it) and break the cycle.
        slot.pass_on();
        let mut inner = self.inner.lock();
        if let Some(pos) = inner.clients.iter().position(|c| c.id == slot.id) {
            inner.clients.swap_remove(pos);
        }
        // Out of the list, nobody can start it holding any more.
        if let Some(conflation) = &slot.conflation {
            conflation.release(&self.metrics.clients_conflating);
        }
        if let Some(count) = inner.per_key.get_mut(&slot.key) {
            *count -= 1;
            if *count == 0 {
                inner.per_key.remove(&slot.key);
            }
        }
    }

    /// The symbols `client` receives, by name.
    pub fn symbols_of<'a>(&'a self, client: &'a ClientSlot) -> impl Iterator<Item = &'a str> + 'a {
        self.symbols
            .iter()
            .enumerate()
            .filter(|(id, _)| client.wants(*id))
            .map(|(_, symbol)| symbol.as_str())
    }

    /// Tells every client matching `pred` to leave with `why`; returns how many.
    pub fn kick_where(&self, why: Kick, pred: impl Fn(&ClientSlot) -> bool) -> usize {
        let inner = self.inner.lock();
        let mut n = 0;
        for c in inner.clients.iter().filter(|c| pred(c)) {
            c.kick(why);
            n += 1;
        }
        n
    }

    /// Offers a batch of quotes (symbol id, frame) to every client that wants them.
    /// Queues a batch for every interested client, then wakes those that need it. All queues
    /// are filled before the first (slow) unpark, so writers woken by their own timers find
    /// their frames, and the lock is not held across syscalls.
    fn publish(&self, batch: &[(usize, Utf8Bytes)]) {
        let now = self.metrics.now_ms();
        let stamp = self.stamp();
        let queue_len = self.queue_len.load(Ordering::Relaxed);
        let mut inner = self.inner.lock();
        for (id, frame) in batch {
            inner.latest[*id] = Some(frame.clone());
            self.last_quote_ms[*id].store(now, Ordering::Relaxed);
        }
        let mut slow = Vec::new();
        let mut queued = std::mem::take(&mut inner.queued);
        let mut conflated = 0;
        // Conflating clients whose queue just filled: their writers fold it into their slots,
        // even if they are parked waiting for the socket.
        let mut to_fold: Vec<Arc<ClientSlot>> = Vec::new();
        // Each frame's v2 text, made once, for the first v2 client that wants it.
        let mut v2_ticks: Vec<Option<Option<Utf8Bytes>>> = Vec::new();
        let mut v2_tick = |k: usize| -> Option<Utf8Bytes> {
            if v2_ticks.is_empty() {
                v2_ticks.resize(batch.len(), None);
            }
            let (id, frame) = &batch[k];
            v2_ticks[k]
                .get_or_insert_with(|| self.v2_tick(*id, frame, false))
                .clone()
        };
        for (pos, client) in inner.clients.iter().enumerate() {
            if let Some(conflation) = &client.conflation {
                let mut offered = false;
                for (k, (id, frame)) in batch.iter().enumerate() {
                    if !client.wants(*id) {
                        continue;
                    }
                    let v2;
                    let frame = if client.v2 {
                        match v2_tick(k) {
                            Some(tick) => {
                                v2 = tick;
                                &v2
                            }
                            None => continue,
                        }
                    } else {
                        frame
                    };
                    offered = true;
                    let behind = &self.metrics.clients_conflating;
                    if let Offer::Held { replaced, started } =
                        conflation.offer(*id, frame, &client.tx, queue_len, behind)
                    {
                        conflated += u64::from(replaced);
                        if started {
                            to_fold.push(Arc::clone(client));
                        }
                    }
                }
                if offered {
                    queued.push(pos);
                }
                continue;
            }
            let mut first = true;
            for (k, (id, frame)) in batch.iter().enumerate() {
                if !client.wants(*id) {
                    continue;
                }
                // An unbounded (linked-block) channel capped by its length: a bounded one
                // allocates every slot up front, which thousands of clients cannot afford.
                let len = client.tx.len();
                if len >= queue_len {
                    slow.push(pos);
                    break;
                }
                let frame = if client.v2 {
                    match v2_tick(k) {
                        Some(tick) => tick,
                        None => continue,
                    }
                } else {
                    frame.clone()
                };
                if len == 0 {
                    // Before the send: the writer reads it after taking the frame.
                    client.queued_at.store(stamp, Ordering::Relaxed);
                }
                let _ = client.tx.send(frame);
                if first {
                    first = false;
                    queued.push(pos);
                }
            }
        }
        // After every queue is filled, so a writer that parks meanwhile sees its frames. Only
        // writers parked without an appointment are taken (and their slots cloned) for waking:
        // under load that is almost none of them.
        std::sync::atomic::fence(Ordering::SeqCst);
        let woken: Vec<Arc<ClientSlot>> = queued
            .drain(..)
            .map(|pos| &inner.clients[pos])
            .filter(|c| c.needs_wake())
            .cloned()
            .collect();
        inner.queued = queued;
        for pos in slow.into_iter().rev() {
            let client = inner.clients.swap_remove(pos);
            client.kick(Kick::SlowConsumer);
            self.metrics
                .slow_consumer_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        drop(inner);
        if conflated > 0 {
            let m = &self.metrics;
            m.quotes_conflated.fetch_add(conflated, Ordering::Relaxed);
        }
        for client in to_fold {
            client.wake();
        }
        if !woken.is_empty() {
            let chain = Arc::new(WakeChain {
                slots: woken,
                next: AtomicUsize::new(0),
            });
            chain.wake_some(CHAINS);
        }
    }
}

/// The distributor thread's body: runs until the upstream side drops its sender.
///
/// Every quote is queued for its clients the moment it arrives. While quotes stream faster
/// than one per batch period, busy writers do not wait for an unpark from here: they sleep
/// until the next tick of the batch grid and write everything queued meanwhile in one go. A
/// wake-up and a `send` per client per batch are most of the proxy's CPU, and an unpark from
/// this one thread to a thousand others is slow and serial; timers wake them in parallel.
///
/// Each turn beats `beat`, and an idle wait is bounded by it, so the watchdog (see
/// `crate::ops::notify`) can tell an idle distributor from a stuck one.
pub fn run(hub: Arc<Hub>, frames: Receiver<Utf8Bytes>, beat: &Heartbeat) {
    let mut batch: Vec<(usize, Utf8Bytes)> = Vec::with_capacity(64);
    let mut ignored = RateLimited::new(Duration::from_secs(60));
    let mut last_arrival: Option<Instant> = None;
    // Mean time between frames, smoothed over about eight wake-ups. Per frame, not per
    // wake-up: when this thread falls behind (a loaded host) one wake-up takes several
    // frames, and counting wake-ups made a fast feed look slow just when batching pays most.
    let mut mean_gap = Duration::from_secs(1);
    loop {
        beat.beat();
        let first = match frames.recv_timeout(beat.every()) {
            Ok(frame) => frame,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = Instant::now();
        let mut arrived = 0u32;
        for frame in std::iter::once(first).chain(frames.try_iter()) {
            arrived += 1;
            match hub.symbol_of(&frame) {
                Some(id) => batch.push((id, frame)),
                None => ignored.note(|n| {
                    warn!("ignored {n} upstream frame(s) that are not quotes of a configured symbol, e.g. {}", crate::base::logsafe::quoted(&frame))
                }),
            }
        }
        if let Some(last) = last_arrival {
            mean_gap = (mean_gap * 7 + (now - last) / arrived) / 8;
        }
        last_arrival = Some(now);
        let streaming = hub.worth_batching(mean_gap);
        if hub.grid.streaming.load(Ordering::Relaxed) != streaming {
            hub.grid.streaming.store(streaming, Ordering::Relaxed);
        }
        if !batch.is_empty() {
            hub.metrics
                .quotes_received
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let stamp = hub.metrics.now_ms();
            hub.metrics.last_quote_ms.store(stamp, Ordering::Relaxed);
            hub.publish(&batch);
            debug!("published {} quote(s)", batch.len());
            batch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::slot::{Idle, PARKED_BLOCKED, PARKED_TIMED, RUNNING};

    /// Quotes as the tests write them: `{"symbol":"EURUSD",…}`.
    fn symbol_field(symbols: &[String]) -> SymbolOf {
        let symbols = symbols.to_vec();
        Box::new(move |frame| {
            let json: serde_json::Value = serde_json::from_str(frame).ok()?;
            let symbol = json.get("symbol")?.as_str()?;
            symbols.iter().position(|s| s == symbol)
        })
    }

    /// A v1 client of `hub` with `key`, for every symbol or one, on this thread.
    fn joined(
        hub: &Hub,
        key: &str,
        symbol: Option<&str>,
    ) -> (Arc<ClientSlot>, Receiver<Utf8Bytes>) {
        let symbols = symbol.map(|s| vec![s.to_string()]);
        hub.join(
            queue(),
            key,
            symbols.as_deref(),
            std::thread::current(),
            false,
        )
        .unwrap()
    }

    fn hub(queue_len: usize) -> Arc<Hub> {
        let symbols = vec!["EURUSD".to_string(), "GBPUSD".to_string()];
        Arc::new(Hub::new(
            &symbols,
            queue_len,
            2,
            Duration::ZERO,
            Arc::new(Metrics::new()),
            symbol_field(&symbols),
        ))
    }

    fn frame(sym: &str, n: u32) -> Utf8Bytes {
        Utf8Bytes::from(format!(r#"{{"symbol":"{sym}","n":{n}}}"#))
    }

    fn drain(rx: &Receiver<Utf8Bytes>) -> Vec<String> {
        rx.try_iter().map(|f| f.as_str().to_string()).collect()
    }

    #[test]
    fn snapshot_then_live_without_duplicates() {
        let hub = hub(16);
        hub.publish(&[(0, frame("EURUSD", 1)), (1, frame("GBPUSD", 1))]);
        hub.publish(&[(0, frame("EURUSD", 2))]);
        let (_slot, rx) = joined(&hub, "key-1", None);
        hub.publish(&[(1, frame("GBPUSD", 2))]);
        assert_eq!(
            drain(&rx),
            vec![
                r#"{"symbol":"EURUSD","n":2}"#,
                r#"{"symbol":"GBPUSD","n":1}"#,
                r#"{"symbol":"GBPUSD","n":2}"#
            ]
        );
    }

    #[test]
    fn filters_by_symbol_and_refuses_unknown_ones() {
        let hub = hub(16);
        let (_slot, rx) = joined(&hub, "key-1", Some("GBPUSD"));
        hub.publish(&[(0, frame("EURUSD", 1)), (1, frame("GBPUSD", 1))]);
        assert_eq!(drain(&rx), vec![r#"{"symbol":"GBPUSD","n":1}"#]);
        let bad = vec!["XAUUSD".to_string()];
        assert_eq!(
            hub.join(queue(), "key-1", Some(&bad), std::thread::current(), false)
                .err(),
            Some(JoinError::UnknownSymbol("XAUUSD".into()))
        );
    }

    #[test]
    fn a_full_queue_kicks_only_that_client() {
        let hub = hub(2);
        let (slow, _slow_rx) = joined(&hub, "key-1", None);
        let (fast, fast_rx) = joined(&hub, "key-2", None);
        for n in 0..3 {
            hub.publish(&[(0, frame("EURUSD", n))]);
            drain(&fast_rx);
        }
        assert_eq!(slow.kicked(), Kick::SlowConsumer);
        assert_eq!(fast.kicked(), Kick::None);
        assert_eq!(hub.client_count(), 1);
        assert_eq!(
            hub.metrics
                .slow_consumer_disconnects
                .load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn limits_clients_per_key() {
        let hub = hub(4);
        let (a, _ra) = joined(&hub, "key-1", None);
        let _b = joined(&hub, "key-1", None);
        assert_eq!(
            hub.join(queue(), "key-1", None, std::thread::current(), false)
                .err(),
            Some(JoinError::TooManyForKey)
        );
        hub.leave(&a);
        assert!(hub
            .join(queue(), "key-1", None, std::thread::current(), false)
            .is_ok());
    }

    #[test]
    fn an_idle_writer_is_woken_and_a_busy_one_is_not() {
        let hub = hub(8);
        let (slot, rx) = joined(&hub, "key-1", None);
        assert!(slot.going_idle(&rx, Idle::Frames));
        hub.publish(&[(0, frame("EURUSD", 1))]);
        assert_eq!(
            slot.state.load(Ordering::SeqCst),
            RUNNING,
            "publishing woke it"
        );
        assert!(
            !slot.going_idle(&rx, Idle::Frames),
            "queued work keeps it from parking"
        );
        rx.try_recv().unwrap();
        assert!(slot.going_idle(&rx, Idle::Batch));
        hub.publish(&[(0, frame("EURUSD", 2))]);
        assert_eq!(
            slot.state.load(Ordering::SeqCst),
            PARKED_TIMED,
            "a timed writer wakes itself"
        );
        slot.wake();
        assert_eq!(
            slot.state.load(Ordering::SeqCst),
            RUNNING,
            "but a kick or a ping wakes it"
        );
    }

    #[test]
    fn a_blocked_writer_waits_for_its_socket_not_for_frames() {
        let hub = hub(8);
        let (slot, rx) = joined(&hub, "key-1", None);
        assert!(slot.going_idle(&rx, Idle::Writable));
        hub.publish(&[(0, frame("EURUSD", 1))]);
        assert_eq!(
            slot.state.load(Ordering::SeqCst),
            PARKED_BLOCKED,
            "new frames wait in the queue"
        );
        slot.writable.store(true, Ordering::SeqCst);
        slot.wake();
        assert!(!slot.going_idle(&rx, Idle::Writable), "writable again");
        slot.writable.store(false, Ordering::SeqCst);
        assert!(slot.going_idle(&rx, Idle::Reply));
        slot.readable.store(true, Ordering::SeqCst);
        assert!(!slot.going_idle(&rx, Idle::Reply), "a reply came");
    }

    #[test]
    fn queue_stats_cover_every_client() {
        let hub = hub(4);
        let (_a, _ra) = joined(&hub, "key-1", None);
        let (_b, rb) = joined(&hub, "key-2", None);
        hub.publish(&[(0, frame("EURUSD", 1))]);
        hub.publish(&[(0, frame("EURUSD", 2)), (1, frame("GBPUSD", 1))]);
        rb.try_recv().unwrap();
        let stats = hub.queue_stats();
        assert_eq!((stats.count, stats.sum, stats.behind), (2, 5, 1));
    }

    #[test]
    fn queue_stats_read_every_client_a_chunk_at_a_time() {
        let hub = hub_with_batch(Duration::ZERO);
        let joined: Vec<_> = (0..STATS_CHUNK * 2 + 3)
            .map(|_| joined(&hub, "key-1", None))
            .collect();
        hub.publish(&[(0, frame("EURUSD", 1))]);
        let stats = hub.queue_stats();
        assert_eq!(stats.count, joined.len() as u64);
        assert_eq!(stats.sum, joined.len() as u64);
    }

    #[test]
    fn a_frame_into_an_empty_queue_is_stamped_with_when_it_was_queued() {
        let hub = hub(8);
        let (slot, rx) = joined(&hub, "key-1", None);
        let before = hub.stamp();
        hub.publish(&[(0, frame("EURUSD", 1))]);
        let first = slot.queued_at();
        assert!(first >= before && first <= hub.stamp());
        hub.publish(&[(0, frame("EURUSD", 2))]);
        assert_eq!(
            slot.queued_at(),
            first,
            "the queue was not empty: the oldest counts"
        );
        drain(&rx);
        let later = hub.stamp();
        hub.publish(&[(0, frame("EURUSD", 3))]);
        assert!(slot.queued_at() >= later, "emptied, then queued again");
    }

    #[test]
    fn batch_ticks_are_staggered_over_the_grid() {
        let symbols = vec!["EURUSD".to_string()];
        let hub = Hub::new(
            &symbols,
            8,
            0,
            Duration::from_millis(16),
            Arc::new(Metrics::new()),
            symbol_field(&symbols),
        );
        let now = hub.grid.epoch + Duration::from_millis(33);
        let ticks: Vec<Duration> = (0..PHASES)
            .map(|phase| hub.next_tick(now, phase) - hub.grid.epoch)
            .collect();
        // Phase p ticks at k x 16 ms + p x 2 ms: the next one after 33 ms.
        let ms = |d: &Duration| d.as_millis() as u64;
        assert_eq!(
            ticks.iter().map(ms).collect::<Vec<_>>(),
            vec![48, 34, 36, 38, 40, 42, 44, 46]
        );
        assert!(ticks
            .iter()
            .all(|t| *t > Duration::from_millis(33) && *t <= Duration::from_millis(49)));
    }

    #[test]
    fn batching_needs_a_fast_feed_and_many_deliveries() {
        let hub = hub_with_batch(Duration::from_millis(20));
        assert!(!hub.worth_batching(Duration::from_millis(5)), "no clients");
        let joined: Vec<_> = (0..300).map(|_| joined(&hub, "key-1", None)).collect();
        assert!(hub.worth_batching(Duration::from_millis(5)), "300 x 200/s");
        assert!(
            !hub.worth_batching(Duration::from_millis(25)),
            "slower than the period"
        );
        assert!(
            !hub.worth_batching(Duration::from_millis(10)),
            "300 x 100/s is little work"
        );
        let (slot, _) = &joined[0];
        assert!(
            hub.next_batch_wake(slot, Instant::now()).is_none(),
            "not streaming yet"
        );
        hub.grid.streaming.store(true, Ordering::Relaxed);
        let wake = hub.next_batch_wake(slot, Instant::now()).unwrap();
        assert!(wake <= Instant::now() + Duration::from_millis(20));
    }

    fn hub_with_batch(batch: Duration) -> Arc<Hub> {
        let symbols = vec!["EURUSD".to_string()];
        Arc::new(Hub::new(
            &symbols,
            8,
            0,
            batch,
            Arc::new(Metrics::new()),
            symbol_field(&symbols),
        ))
    }

    /// A hub whose v2 text is `v2:` and the frame, counting how often it is made.
    fn v2_hub(queue_len: usize) -> (Arc<Hub>, Arc<AtomicUsize>) {
        let symbols = vec!["EURUSD".to_string(), "GBPUSD".to_string()];
        let made = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&made);
        let hub = Hub::new(
            &symbols,
            queue_len,
            0,
            Duration::ZERO,
            Arc::new(Metrics::new()),
            symbol_field(&symbols),
        )
        .with_v2(V2Ticks {
            encode: Box::new(move |frame, symbol, last| {
                counter.fetch_add(1, Ordering::SeqCst);
                let kind = if last { "LAST" } else { "QUOTE" };
                Some(format!("{kind}:{symbol}:{frame}"))
            }),
            symbol: |frame| frame.split(':').nth(1),
        });
        (Arc::new(hub), made)
    }

    #[test]
    fn a_v2_tick_is_made_once_for_every_v2_client() {
        let (hub, made) = v2_hub(16);
        let (_v1, v1_rx) = joined(&hub, "key-1", None);
        let v2: Vec<_> = (0..3)
            .map(|_| {
                let (slot, rx) = hub
                    .join_v2(
                        queue(),
                        "key-2",
                        std::thread::current(),
                        false,
                        "login_ok".into(),
                    )
                    .unwrap();
                assert!(hub.change(&slot, &[0], &[], "ack".into(), true));
                (slot, rx)
            })
            .collect();
        assert_eq!(made.load(Ordering::SeqCst), 0, "nothing to send last yet");
        hub.publish(&[(0, frame("EURUSD", 1)), (1, frame("GBPUSD", 1))]);
        assert_eq!(
            made.load(Ordering::SeqCst),
            1,
            "once for three clients, and not for a symbol none wants"
        );
        assert_eq!(
            drain(&v1_rx),
            [
                r#"{"symbol":"EURUSD","n":1}"#,
                r#"{"symbol":"GBPUSD","n":1}"#
            ]
        );
        for (_, rx) in &v2 {
            assert_eq!(
                drain(rx),
                [
                    "login_ok",
                    "ack",
                    r#"QUOTE:EURUSD:{"symbol":"EURUSD","n":1}"#
                ]
            );
        }
    }

    #[test]
    fn a_v2_subscription_meets_the_live_stream_in_order() {
        let (hub, _) = v2_hub(16);
        hub.publish(&[(0, frame("EURUSD", 1)), (1, frame("GBPUSD", 1))]);
        let (slot, rx) = hub
            .join_v2(
                queue(),
                "key-1",
                std::thread::current(),
                false,
                "login_ok".into(),
            )
            .unwrap();
        hub.publish(&[(0, frame("EURUSD", 2))]);
        assert_eq!(drain(&rx), ["login_ok"], "nothing before it subscribes");
        assert!(hub.change(&slot, &[0], &[], "ack-1".into(), true));
        hub.publish(&[(0, frame("EURUSD", 3)), (1, frame("GBPUSD", 2))]);
        // Subscribing again to what it has changes nothing: no second LAST_QUOTE.
        assert!(hub.change(&slot, &[0, 1], &[], "ack-2".into(), true));
        hub.publish(&[(1, frame("GBPUSD", 3))]);
        assert!(hub.change(&slot, &[], &[0], "unsub".into(), false));
        hub.publish(&[(0, frame("EURUSD", 4)), (1, frame("GBPUSD", 4))]);
        assert_eq!(
            drain(&rx),
            [
                "ack-1",
                r#"LAST:EURUSD:{"symbol":"EURUSD","n":2}"#,
                r#"QUOTE:EURUSD:{"symbol":"EURUSD","n":3}"#,
                "ack-2",
                r#"LAST:GBPUSD:{"symbol":"GBPUSD","n":2}"#,
                r#"QUOTE:GBPUSD:{"symbol":"GBPUSD","n":3}"#,
                "unsub",
                r#"QUOTE:GBPUSD:{"symbol":"GBPUSD","n":4}"#,
            ]
        );
        assert_eq!(
            hub.queued_symbol(&slot, r#"QUOTE:GBPUSD:{}"#),
            Some(1),
            "its ticks are read back by the v2 rule"
        );
        assert_eq!(hub.queued_symbol(&slot, "ack"), None);
    }

    #[test]
    fn a_v2_client_that_does_not_read_its_answers_is_a_slow_consumer() {
        let (hub, _) = v2_hub(2);
        let (slot, _rx) = hub
            .join_v2(
                queue(),
                "key-1",
                std::thread::current(),
                false,
                "login_ok".into(),
            )
            .unwrap();
        assert!(hub.change(&slot, &[], &[], "a".into(), false));
        assert!(!hub.change(&slot, &[], &[], "b".into(), false));
        assert_eq!(slot.kicked(), Kick::SlowConsumer);
    }

    #[test]
    fn clients_whose_every_symbol_is_refused_are_told_to_leave() {
        let hub = hub(8);
        let (all, _a) = joined(&hub, "key-1", None);
        let (eur, _e) = joined(&hub, "key-2", Some("EURUSD"));
        let (gbp, _g) = joined(&hub, "key-3", Some("GBPUSD"));
        assert_eq!(hub.kick_refused(&[]), 0);
        assert_eq!(hub.kick_refused(&[true, false]), 1);
        assert_eq!(
            (all.kicked(), eur.kicked(), gbp.kicked()),
            (Kick::None, Kick::Refused, Kick::None)
        );
        assert_eq!(hub.kick_refused(&[true, true]), 3);
        assert_eq!(all.kicked(), Kick::Refused);
    }

    #[test]
    fn distributor_parses_and_drops_non_quotes() {
        let hub = hub(8);
        let (_slot, rx) = joined(&hub, "key-1", None);
        let (tx, frames) = crossbeam_channel::unbounded();
        for text in [
            r#"{"error":"x"}"#,
            r#"{"symbol":"USDJPY"}"#,
            r#"{"symbol":"EURUSD"}"#,
        ] {
            tx.send(Utf8Bytes::from(text)).unwrap();
        }
        drop(tx);
        let beat = Heartbeat::default();
        run(Arc::clone(&hub), frames, &beat);
        assert_eq!(drain(&rx), vec![r#"{"symbol":"EURUSD"}"#]);
        assert_eq!(hub.metrics.quotes_received.load(Ordering::Relaxed), 1);
        assert!(beat.count() >= 1, "the distributor beats");
    }

    #[test]
    fn an_idle_distributor_still_beats() {
        let hub = hub(8);
        let (tx, frames) = crossbeam_channel::unbounded::<Utf8Bytes>();
        let beat = Arc::new(Heartbeat::new(Duration::from_millis(5)));
        let (thread_hub, thread_beat) = (Arc::clone(&hub), Arc::clone(&beat));
        let distributor = std::thread::spawn(move || run(thread_hub, frames, &thread_beat));
        // No frame ever comes; the count still climbs past a few idle waits.
        let deadline = Instant::now() + Duration::from_secs(10);
        while beat.count() < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(beat.count() >= 4, "beats: {}", beat.count());
        drop(tx);
        distributor.join().unwrap();
    }
}
