//! The lock that lets exactly one instance hold the provider connection.
//!
//! The `backbone-lease` thread takes `NAME:lock` when it is free (with an expiry of
//! [`LOCK_TTL`]), renews it twice a second while this instance is alive and reaches Redis, and
//! lets it go on shutdown once the provider connection is closed. Each win takes a new fencing
//! token; frames are added to the stream only under the current one (see [`super::publish`]),
//! so an instance paused past its expiry (SIGSTOP, a VM migration, a partition) that wakes up
//! believing it still holds the lock cannot add a single frame after its successor won.
//!
//! Locally the lock counts as held only until [`MARGIN`] before Redis would let it expire,
//! measured from when the renewal was sent: past that the upstream thread closes the provider
//! connection, so two instances never hold one at once, as the provider would refuse the
//! second (`User Key Used to many times`). Renewals are timed from when the last one was sent,
//! not from its answer, so one slow answer (a fork for BGSAVE, an fsync stall) of up to 2 s
//! costs nothing.
//!
//! Redis may lose the lock without anybody having won it: restarted empty, restored from an
//! older copy, or a replica that lagged promoted by Sentinel. Then:
//! - tokens still only grow: a new one is above the counter, the time in milliseconds and
//!   every token the winner has seen, so it is above any used before the loss and readers,
//!   which order frames by it, never take fresh frames for old ones;
//! - the holder, while its lock still counts as held here, takes it back (keeping its token and
//!   its provider connection) if nobody else can have won since;
//! - a standby that finds the counter gone, or below a token it has seen, knows a holder from
//!   before may still be connected: it puts a placeholder in the lock for [`LOCK_TTL`], the
//!   longest such a holder can still believe it holds it ("quarantine"), which that holder may
//!   take back meanwhile. Only then may anybody win it and connect.

use super::held::Lease;
use super::link::{self, Link, Target};
use super::settings::{Keys, Settings};
use super::status::{LinkKind, Status};
use crate::base::metrics::Metrics;
use crate::base::stop::Stop;
use log::{info, warn};
use redis::Script;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the lock outlives its holder's last renewal: the longest a standby waits before it
/// takes over from an instance that died, and the pause past which a paused instance has lost
/// the lock. Takeover (this, plus a standby's next attempt and the provider's handshake) stays
/// within 5 s.
pub const LOCK_TTL: Duration = Duration::from_secs(3);
/// How often the holder renews, timed from when the last renewal was sent.
const RENEW_EVERY: Duration = Duration::from_millis(500);
/// How often a standby tries to take the lock.
const ACQUIRE_EVERY: Duration = Duration::from_millis(250);
/// The lock is given up locally this long before Redis would let it expire. The upstream
/// thread looks at the lock at least every 0.25 s, so its connection is closed before anybody
/// else can win.
const MARGIN: Duration = Duration::from_millis(500);
/// How long shutdown waits for the provider connection to close before letting the lock go.
const RELEASE_WAIT: Duration = Duration::from_millis(1000);
/// What the lock holds, after its token, while nobody may win it (see the module's notes).
pub const QUARANTINE: &str =
    "(nobody yet: a new feed, or Redis lost its data; waiting out any holder from before)";

/// KEYS: lock, fence. ARGV: instance, expiry (ms), the highest token this instance has seen,
/// the token it last held (0: none), the quarantine text.
/// Returns {token, '', continues} on a win (continues: nobody won since ARGV[4]), {0, holder,
/// 0} while somebody holds it, {0, holder, 1} when this call put the quarantine in place.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
local fence = redis.call('GET', KEYS[2])
local last = ARGV[4]
if holder then
  if last ~= '0' and holder == last .. ' ' .. ARGV[1] and fence == last then
    redis.call('SET', KEYS[1], holder, 'PX', ARGV[2])
    return {tonumber(last), '', 1}
  end
  return {0, holder, 0}
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local seen = tonumber(ARGV[3])
local count = tonumber(fence or '0') or 0
local token = math.max(count + 1, now, seen + 1)
local id = string.format('%.0f', token)
if fence == false or count < seen then
  local placeholder = id .. ' ' .. ARGV[5]
  redis.call('SET', KEYS[2], id)
  redis.call('SET', KEYS[1], placeholder, 'PX', ARGV[2])
  return {0, placeholder, 1}
end
redis.call('SET', KEYS[2], id)
redis.call('SET', KEYS[1], id .. ' ' .. ARGV[1], 'PX', ARGV[2])
local continues = 0
if last ~= '0' and fence == last then continues = 1 end
return {token, '', continues}
";

/// Renews the lock of the holder of token ARGV[1], whose lock still counts as held where it
/// runs. KEYS: lock, fence. ARGV: token, instance, expiry (ms), the quarantine text.
/// Returns {1, mine, token} renewed; {2, mine, token} taken back after Redis lost it (nobody
/// can have won since: the lock is gone or in quarantine, and the counter is gone, in
/// quarantine or not above the token), under a new token above the counter unless the counter
/// still says this one; {0, holder, 0} lost.
const RENEW: &str = r"
local mine = ARGV[1] .. ' ' .. ARGV[2]
local holder = redis.call('GET', KEYS[1])
local fence = redis.call('GET', KEYS[2])
if holder == mine and fence == ARGV[1] then
  redis.call('SET', KEYS[1], mine, 'PX', ARGV[3])
  return {1, mine, tonumber(ARGV[1])}
end
local quarantined = holder and string.find(holder, ARGV[4], 1, true) ~= nil
local free = holder == false or holder == mine or quarantined
local behind = fence == false or quarantined or tonumber(fence) <= tonumber(ARGV[1])
if not (free and behind) then return {0, holder or '', 0} end
local token = tonumber(ARGV[1])
if fence ~= ARGV[1] then
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  token = math.max(tonumber(fence or '0') + 1, now, token + 1)
end
local id = string.format('%.0f', token)
redis.call('SET', KEYS[2], id)
redis.call('SET', KEYS[1], id .. ' ' .. ARGV[2], 'PX', ARGV[3])
return {2, id .. ' ' .. ARGV[2], token}
";

/// Lets the lock go if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The token a lock value (`TOKEN INSTANCE`) was written under.
fn token_of(holder: &str) -> u64 {
    holder
        .split(' ')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The `backbone-lease` thread.
pub struct Runner {
    link: Link,
    keys: Keys,
    instance: String,
    lease: Arc<Lease>,
    status: Arc<Status>,
    acquire: Script,
    renew: Script,
    release: Script,
}

impl Runner {
    pub fn new(
        target: &Target,
        keys: &Keys,
        settings: &Settings,
        lease: &Arc<Lease>,
        status: &Arc<Status>,
        metrics: &Arc<Metrics>,
    ) -> Runner {
        status.watch_lease(lease);
        Runner {
            link: Link::new(LinkKind::Lease, target, Duration::ZERO, status, metrics),
            keys: keys.clone(),
            instance: settings.instance.clone(),
            lease: Arc::clone(lease),
            status: Arc::clone(status),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        }
    }

    pub fn run(mut self, stop: &Stop) {
        let ttl_ms = LOCK_TTL.as_millis() as u64;
        // The token this instance holds, kept after the lock lapsed here (Redis out of reach)
        // until Redis says what became of it.
        let mut token = 0u64;
        // The highest token seen, this instance's or another's: a win goes above it.
        let mut seen = 0u64;
        let mut was_live = false;
        while !stop.is_set() {
            let Some(con) = self.link.get(stop) else {
                break;
            };
            let sent = Instant::now();
            let live = token != 0 && self.lease.live();
            if was_live && !live {
                warn!(
                    "backbone: the lock (fencing token {token}) lapsed here (no renewal answered within {:.1} s, or a publish was fenced): the provider connection is closed so that another instance may take over",
                    (LOCK_TTL - MARGIN).as_secs_f64()
                );
            }
            was_live = live;
            let reply: Result<(u64, String, u64), _> = if live {
                self.renew
                    .key(&self.keys.lock)
                    .key(&self.keys.fence)
                    .arg(token)
                    .arg(&self.instance)
                    .arg(ttl_ms)
                    .arg(QUARANTINE)
                    .invoke(con)
            } else {
                self.acquire
                    .key(&self.keys.lock)
                    .key(&self.keys.fence)
                    .arg(&self.instance)
                    .arg(ttl_ms)
                    .arg(seen)
                    .arg(token)
                    .arg(QUARANTINE)
                    .invoke(con)
            };
            let until = sent + LOCK_TTL - MARGIN;
            match reply {
                Ok(reply) => {
                    self.link.ok();
                    token = if live {
                        self.renewed(token, reply, until)
                    } else {
                        self.tried(token, seen, reply, until)
                    };
                    was_live = token != 0;
                    seen = seen.max(token).max(token_of(&self.status.holder()));
                }
                Err(e) => self.link.failed(&e),
            }
            let every = if token != 0 {
                RENEW_EVERY
            } else {
                ACQUIRE_EVERY
            };
            if stop.wait((sent + every).saturating_duration_since(Instant::now())) {
                break;
            }
        }
        self.lease.stopping();
        if token != 0 {
            self.give_back(token);
        }
    }

    /// The answer to a renewal of `token`; the token held after it (0: lost).
    fn renewed(
        &mut self,
        token: u64,
        (done, holder, now_token): (u64, String, u64),
        until: Instant,
    ) -> u64 {
        match done {
            1 => {
                self.lease.renewed(token, until);
                token
            }
            2 => {
                self.lease.renewed(now_token, until);
                self.status.set_holder(&holder);
                warn!(
                    "backbone: Redis had lost this instance's lock (restarted, restored or failed over); taken back under fencing token {now_token}, keeping the provider connection"
                );
                now_token
            }
            _ => {
                self.lose(token, &holder);
                0
            }
        }
    }

    /// The answer to an attempt to win the lock, `last` being the token this instance held
    /// until its lock lapsed here (0: none); the token held after it (0: none).
    fn tried(
        &mut self,
        last: u64,
        seen: u64,
        (won, holder, flag): (u64, String, u64),
        until: Instant,
    ) -> u64 {
        if won > 0 {
            let continues = flag == 1;
            self.lease.won(won, continues, until);
            let mine = format!("{won} {}", self.instance);
            self.status.set_holder(&mine);
            if won != last {
                self.status.takeovers.fetch_add(1, Relaxed);
                info!(
                    "backbone: this instance now holds the provider connection (fencing token {won}){}",
                    if continues && last != 0 {
                        format!("; frames it took under token {last} before its lock lapsed are still added")
                    } else {
                        String::new()
                    }
                );
            } else {
                info!("backbone: the lock is this instance's again (fencing token {won}): nobody took it meanwhile");
            }
            return won;
        }
        if last != 0 {
            self.lose(last, &holder);
        }
        if flag == 1 {
            let found = if seen == 0 {
                "no fencing counter for this feed: a new feed, or a Redis that lost its data"
                    .to_string()
            } else {
                format!("no fencing counter for this feed, or one below token {seen} seen before: Redis lost its data or came back from an older copy")
            };
            warn!(
                "backbone: Redis holds {found}; nobody takes the provider connection for {} s, in case a holder from before is still connected",
                LOCK_TTL.as_secs()
            );
        }
        if holder != self.status.holder() {
            if !holder.is_empty() {
                info!("backbone: standing by; the provider connection is held by {holder}");
            }
            self.status.set_holder(&holder);
        }
        0
    }

    fn lose(&mut self, token: u64, holder: &str) {
        warn!(
            "backbone: this instance lost the lock (fencing token {token}); now held by {}; closing the provider connection",
            if holder.is_empty() { "nobody" } else { holder }
        );
        self.lease.clear();
        self.status.set_holder(holder);
    }

    /// Shutdown: once the provider connection is closed, the lock goes, so a standby takes
    /// over at its next attempt rather than after the lock's expiry.
    fn give_back(&mut self, token: u64) {
        self.lease.wait_upstream_gone(Instant::now() + RELEASE_WAIT);
        let mine = format!("{token} {}", self.instance);
        // One attempt on the open connection, if there is one: shutdown does not wait for Redis.
        let con = match self.link.is_connected() {
            true => self.link.get(&Stop::new()),
            false => None,
        };
        let done = match con {
            Some(con) => self
                .release
                .key(&self.keys.lock)
                .arg(&mine)
                .invoke::<i64>(con)
                .map_err(|e| link::describe(&e)),
            None => Err("not connected".to_string()),
        };
        match done {
            Ok(1) => info!("backbone: lock released for a standby to take"),
            Ok(_) => {}
            Err(e) => warn!(
                "backbone: could not release the lock ({e}); it expires in {} s",
                LOCK_TTL.as_secs()
            ),
        }
        self.lease.clear();
    }
}
