//! The lock that lets exactly one instance hold the provider connection.
//!
//! The `backbone-lease` thread takes `NAME:lock` when it is free (with an expiry of
//! [`LOCK_TTL`]), renews it every second while this instance is alive and reaches Redis, and
//! lets it go on shutdown once the provider connection is closed. Each win takes a new fencing
//! token from `NAME:fence`; frames are added to the stream only under the current token (see
//! [`super::publish`]), so an instance paused past its expiry (SIGSTOP, a VM migration, a
//! partition) that wakes up believing it still holds the lock cannot add a single frame after
//! its successor won.
//!
//! Locally the lock counts as held only until [`MARGIN`] before Redis would let it expire,
//! measured from when the renewal was sent: past that the upstream thread closes the provider
//! connection, so two instances never hold one at once, as the provider would refuse the
//! second (`User Key Used to many times`).

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
/// How often the holder renews: three tries before the lock would expire.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How often a standby tries to take the lock.
const ACQUIRE_EVERY: Duration = Duration::from_millis(250);
/// The lock is given up locally this long before Redis would let it expire.
const MARGIN: Duration = Duration::from_millis(500);
/// How long shutdown waits for the provider connection to close before letting the lock go.
const RELEASE_WAIT: Duration = Duration::from_millis(1000);

/// Takes the lock if nobody holds it, with the next fencing token. Returns {token, ""} on a
/// win, {0, holder} otherwise. A missing counter (a new Redis, or one that lost its data)
/// starts at the current time in milliseconds, so tokens keep growing across such losses and
/// readers can order them.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder then return {0, holder} end
if redis.call('EXISTS', KEYS[2]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000)))
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], string.format('%.0f', token) .. ' ' .. ARGV[1], 'PX', ARGV[2])
return {token, ''}
";

/// Renews the lock for the holder of token ARGV[1]: only while that token is still the
/// current one, and the lock is its own or has expired without anybody taking it. Returns
/// {1, mine} or {0, holder}. A counter gone with Redis's data is put back: nobody can have won
/// the lock since, as winning sets it.
const RENEW: &str = r"
local fence = redis.call('GET', KEYS[2])
local mine = ARGV[1] .. ' ' .. ARGV[2]
local holder = redis.call('GET', KEYS[1])
if fence == false then
  if holder then return {0, holder} end
  redis.call('SET', KEYS[2], ARGV[1])
elseif fence ~= ARGV[1] then
  return {0, holder or ''}
end
if holder and holder ~= mine then return {0, holder} end
redis.call('SET', KEYS[1], mine, 'PX', ARGV[3])
return {1, mine}
";

/// Lets the lock go if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

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
        // The token this instance last won, kept after the lock lapsed locally (Redis out of
        // reach): if nobody won since, renewing takes it back under the same token.
        let mut token = 0u64;
        while !stop.is_set() {
            let sent = Instant::now();
            let Some(con) = self.link.get(stop) else {
                break;
            };
            let reply: Result<(u64, String), _> = if token != 0 {
                self.renew
                    .key(&self.keys.lock)
                    .key(&self.keys.fence)
                    .arg(token)
                    .arg(&self.instance)
                    .arg(ttl_ms)
                    .invoke(con)
            } else {
                self.acquire
                    .key(&self.keys.lock)
                    .key(&self.keys.fence)
                    .arg(&self.instance)
                    .arg(ttl_ms)
                    .invoke(con)
            };
            if reply.is_ok() {
                self.link.ok();
            }
            match reply {
                Ok((won, _)) if token == 0 && won > 0 => {
                    token = won;
                    self.lease.set(token, sent + LOCK_TTL - MARGIN);
                    self.status.takeovers.fetch_add(1, Relaxed);
                    self.status
                        .set_holder(&format!("{token} {}", self.instance));
                    info!(
                        "backbone: this instance now holds the provider connection (fencing token {token})"
                    );
                }
                Ok((renewed, _)) if token != 0 && renewed == 1 => {
                    let lapsed = self.lease.held().is_none();
                    self.lease.set(token, sent + LOCK_TTL - MARGIN);
                    if lapsed {
                        info!("backbone: the lock is this instance's again (fencing token {token}): nobody took it meanwhile");
                    }
                }
                Ok((_, holder)) => {
                    if token != 0 {
                        warn!(
                            "backbone: this instance lost the lock (fencing token {token}); now held by {}; closing the provider connection",
                            if holder.is_empty() { "nobody" } else { &holder }
                        );
                        token = 0;
                        self.lease.clear();
                    }
                    if holder != self.status.holder() {
                        if !holder.is_empty() {
                            info!("backbone: standing by; the provider connection is held by {holder}");
                        }
                        self.status.set_holder(&holder);
                    }
                }
                Err(e) => self.link.failed(&e),
            }
            let pause = if token != 0 {
                RENEW_EVERY
            } else {
                ACQUIRE_EVERY
            };
            if stop.wait(pause) {
                break;
            }
        }
        self.lease.stopping();
        if token != 0 {
            self.give_back(token);
        }
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
