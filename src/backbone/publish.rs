//! The `backbone-publish` thread: adds the provider's frames to the stream, in the order the
//! upstream thread took them, each exactly once.
//!
//! Each frame carries the term it was taken under (the fencing token that began this
//! instance's holding of the lock, see [`super::held`]) and a sequence number within it. One Lua
//! script per batch adds the frames and updates the snapshot (`NAME:last`) atomically, and only
//! if the fencing token the lease gives for that term is still the current one: a frame taken
//! by an instance that has since lost the lock is refused there, in Redis, whatever the clocks
//! said. The script also skips frames at or below the last sequence number added in the term
//! (kept in the snapshot as `@pub`), so a batch sent again because its answer was lost (Redis
//! restarted, the connection dropped) is not added twice.
//!
//! A frame's symbol, which names its field in the snapshot, is found as the hub finds it (the
//! function the server plugs in), so a provider's own frames (`client_format = upstream`) are
//! published too.
//!
//! While Redis is out of reach the frames wait in a bounded queue; once it is full, the
//! upstream thread waits too and TCP holds the provider back.

use super::held::Lease;
use super::link::{Link, Target};
use super::settings::{Keys, Settings};
use super::status::{LinkKind, Status};
use crate::base::metrics::Metrics;
use crate::base::ratelimit::RateLimited;
use crate::base::stop::Stop;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::warn;
use redis::Script;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::Utf8Bytes;

/// Frames taken from the provider and not yet in Redis, at most: at 2,000 frames a second, four
/// seconds of a Redis restart.
pub const QUEUE: usize = 8192;
/// Frames per script call at most. A call per frame is fine at the rates providers send; when
/// frames queued up (Redis was away), batches catch up quickly.
const BATCH: usize = 256;
/// How often the thread looks at the stop signal while no frame comes.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// How long to wait when the fencing counter is missing (Redis lost its data) for the lease
/// thread to put it back or find the lock lost.
const NO_FENCE_WAIT: Duration = Duration::from_millis(100);
/// An idle connection is checked this often.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// KEYS: fence, stream, last, lock. ARGV: token, term, first sequence number, max length, then
/// a symbol and a frame for each frame. Returns how many frames were added; refused, the
/// error says what the lock holds.
const PUBLISH: &str = r"
local fence = redis.call('GET', KEYS[1])
if fence == false then return redis.error_reply('NOFENCE the fencing counter is missing') end
if fence ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. (redis.call('GET', KEYS[4]) or ''))
end
local term = ARGV[2]
local done = 0
local pub = redis.call('HGET', KEYS[3], '@pub')
if pub then
  local t, s = string.match(pub, '^(%d+) (%d+)$')
  if t == term then done = tonumber(s) end
end
local seq = tonumber(ARGV[3])
local added = 0
local id = false
for i = 5, #ARGV, 2 do
  if seq > done then
    local p = term .. ' ' .. string.format('%.0f', seq)
    id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'f', ARGV[i + 1], 'p', p)
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1], '@pub', p, '@id', id)
    added = added + 1
  end
  seq = seq + 1
end
return added
";

/// A frame's symbol, as its position in the configured symbols (the hub's own function).
pub type SymbolOf = Box<dyn Fn(&str) -> Option<usize> + Send>;

pub struct Publisher {
    link: Link,
    keys: Keys,
    symbol_of: SymbolOf,
    /// The configured symbols: the snapshot's field names.
    symbols: Vec<String>,
    instance: String,
    max_len: u64,
    lease: Arc<Lease>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    script: Script,
    ignored: RateLimited,
}

/// A batch of frames taken in one term, numbered from `first`, each with its symbol's index.
struct Batch {
    term: u64,
    first: u64,
    frames: Vec<(usize, Utf8Bytes)>,
}

impl Publisher {
    pub fn new(
        target: &Target,
        keys: &Keys,
        settings: &Settings,
        lease: &Arc<Lease>,
        status: &Arc<Status>,
        metrics: &Arc<Metrics>,
        symbol_of: SymbolOf,
    ) -> Publisher {
        Publisher {
            link: Link::new(LinkKind::Publish, target, Duration::ZERO, status, metrics),
            keys: keys.clone(),
            symbol_of,
            symbols: settings.symbols.clone(),
            instance: settings.instance.clone(),
            max_len: settings.max_len,
            lease: Arc::clone(lease),
            status: Arc::clone(status),
            metrics: Arc::clone(metrics),
            script: Script::new(PUBLISH),
            ignored: RateLimited::new(Duration::from_secs(60)),
        }
    }

    pub fn run(mut self, frames: &Receiver<(u64, Utf8Bytes)>, stop: &Stop) {
        // The term sequence numbers count in, and the next number.
        let (mut seq_term, mut next_seq) = (0u64, 1u64);
        // Frames taken in this term are dropped: it was fenced.
        let mut fenced = 0u64;
        // A frame of the next batch, taken while gathering this one.
        let mut carry: Option<(u64, Utf8Bytes)> = None;
        // Connected from the start and kept alive while idle (a standby publishes nothing),
        // so `/healthz` tells whether this instance could take over.
        let mut last_used = Instant::now();
        self.keep_alive(stop);
        loop {
            let first = match carry.take() {
                Some(f) => f,
                None => match frames.recv_timeout(IDLE_CHECK) {
                    Ok(f) => f,
                    Err(RecvTimeoutError::Timeout) if stop.is_set() => return,
                    Err(RecvTimeoutError::Timeout) => {
                        if last_used.elapsed() >= KEEP_ALIVE {
                            last_used = Instant::now();
                            self.keep_alive(stop);
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            last_used = Instant::now();
            let term = first.0;
            if term != seq_term {
                (seq_term, next_seq) = (term, 1);
            }
            let mut batch = Batch {
                term,
                first: next_seq,
                frames: Vec::new(),
            };
            for (t, frame) in std::iter::once(first).chain(frames.try_iter()) {
                if t != term {
                    carry = Some((t, frame));
                    break;
                }
                if t == fenced {
                    self.status.fenced.fetch_add(1, Relaxed);
                    continue;
                }
                match (self.symbol_of)(&frame) {
                    Some(i) if i < self.symbols.len() => batch.frames.push((i, frame)),
                    _ => self.ignored.note(|n| {
                        warn!("backbone: not publishing {n} upstream frame(s) without a symbol, e.g. {:.120}", frame.as_str())
                    }),
                }
                if batch.frames.len() >= BATCH {
                    break;
                }
            }
            if batch.frames.is_empty() {
                continue;
            }
            next_seq += batch.frames.len() as u64;
            // The provider is alive: what the upstream thread's staleness check reads. (The
            // distributor, fed from Redis, would say nothing while Redis is away.)
            self.metrics
                .last_quote_ms
                .store(self.metrics.now_ms(), Relaxed);
            if !self.publish(&batch, stop) {
                fenced = batch.term;
            }
            self.status
                .publish_queue
                .store(frames.len() as u64, Relaxed);
            if stop.is_set() && frames.is_empty() {
                return;
            }
        }
    }

    /// Checks the idle connection, making it again until it answers (or the proxy stops).
    fn keep_alive(&mut self, stop: &Stop) {
        while let Some(con) = self.link.get(stop) {
            match redis::cmd("PING").query::<String>(con) {
                Ok(_) => return self.link.ok(),
                Err(e) => self.link.failed(&e),
            }
        }
    }

    /// Adds `batch` to the stream, trying again through Redis failures until it is in, fenced
    /// (false) or the proxy stops.
    fn publish(&mut self, batch: &Batch, stop: &Stop) -> bool {
        loop {
            let Some(token) = self.lease.fence_for(batch.term) else {
                // Lost to another instance while these frames waited: they are stale.
                self.status
                    .fenced
                    .fetch_add(batch.frames.len() as u64, Relaxed);
                return false;
            };
            let Some(con) = self.link.get(stop) else {
                return true;
            };
            let mut call = self.script.prepare_invoke();
            call.key(&self.keys.fence)
                .key(&self.keys.stream)
                .key(&self.keys.last)
                .key(&self.keys.lock)
                .arg(token)
                .arg(batch.term)
                .arg(batch.first)
                .arg(self.max_len);
            for (symbol, frame) in &batch.frames {
                call.arg(self.symbols[*symbol].as_str()).arg(frame.as_str());
            }
            match call.invoke::<u64>(con) {
                Ok(added) => {
                    self.link.ok();
                    self.status.published.fetch_add(added, Relaxed);
                    return true;
                }
                Err(e) if e.code() == Some("FENCED") && !self.wait_for_lease(&e) => {
                    self.link.ok();
                    self.status
                        .fenced
                        .fetch_add(batch.frames.len() as u64, Relaxed);
                    self.lease.lost(token);
                    warn!(
                        "backbone: {} frame(s) taken under fencing token {token} refused: the lock is held by {}; another instance holds the provider connection now",
                        batch.frames.len(),
                        e.detail().unwrap_or("")
                    );
                    return false;
                }
                Err(e) if e.code() == Some("FENCED") || e.code() == Some("NOFENCE") => {
                    // Redis lost the lock, or this instance took it back under a new token
                    // the lease has not heard of yet: the lease thread settles it.
                    self.link.ok();
                    if stop.wait(NO_FENCE_WAIT) {
                        return true;
                    }
                }
                Err(e) => self.link.failed(&e),
            }
        }
    }

    /// Whether a refusal by the fence is one for the lease thread to settle: the lock is held
    /// by nobody, is in quarantine, or is this instance's own under a newer token.
    fn wait_for_lease(&self, refused: &redis::RedisError) -> bool {
        let holder = refused.detail().unwrap_or("").trim();
        let (_, who) = holder.split_once(' ').unwrap_or(("", ""));
        holder.is_empty() || who == super::lease::QUARANTINE || who == self.instance
    }
}
