//! What each client thread is doing, kept up to date by the thread itself so that the state
//! dump (SIGUSR1, see [`crate::ops::dump`]) can say it without stopping anyone: its kernel thread
//! id (what `top -H`, gdb and `/proc/PID/task` show), peer, key prefix, phase, queue and when
//! it last wrote. A thread touches its own record only: a flag when its socket fills or
//! drains and a timestamp per batch written, never a lock.

use crate::base::logsafe::redacted_key;
use crate::clients::forwarded::Peer;
use crate::fanout::slot::{ClientSlot, Kick, WriterState};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where a client thread is in its life.
const JOINING: u8 = 0;
const SERVING: u8 = 1;
const CLOSING: u8 = 2;

/// Every client thread's record, by connection id.
#[derive(Default)]
pub struct Activity {
    table: Mutex<HashMap<u64, Arc<ClientActivity>>>,
}

impl Activity {
    /// Records the calling thread as the one serving connection `id`; the record goes when
    /// the returned guard is dropped.
    pub fn enter(&self, id: u64, peer: Peer, key: Option<&str>) -> Entry<'_> {
        let record = Arc::new(ClientActivity {
            id,
            tid: nix::unistd::gettid().as_raw(),
            peer,
            key: key.map_or_else(|| "(none)".to_string(), redacted_key),
            started: Instant::now(),
            phase: AtomicU8::new(JOINING),
            blocked: AtomicBool::new(false),
            last_write: AtomicU64::new(0),
            slot: OnceLock::new(),
        });
        self.table.lock().insert(id, Arc::clone(&record));
        Entry {
            activity: self,
            record,
        }
    }

    /// Every record, as of now. The lock is held only to copy the list.
    pub fn snapshot(&self) -> Vec<Arc<ClientActivity>> {
        self.table.lock().values().cloned().collect()
    }
}

/// A client thread's own handle on its record.
pub struct Entry<'a> {
    activity: &'a Activity,
    record: Arc<ClientActivity>,
}

impl std::ops::Deref for Entry<'_> {
    type Target = ClientActivity;
    fn deref(&self) -> &ClientActivity {
        &self.record
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.activity.table.lock().remove(&self.record.id);
    }
}

pub struct ClientActivity {
    /// The connection's id: the thread is named `client-{id}`.
    pub id: u64,
    /// The kernel's id for the thread: the PID column of `top -H`, gdb's LWP,
    /// `/proc/PID/task/TID`.
    pub tid: i32,
    pub peer: Peer,
    /// At most the key's first 4 characters.
    pub key: String,
    started: Instant,
    phase: AtomicU8,
    /// Its socket takes no more bytes: frames wait in its queue.
    blocked: AtomicBool,
    /// Milliseconds after `started` of its last write of quotes, plus one; 0 before the first.
    last_write: AtomicU64,
    slot: OnceLock<Arc<ClientSlot>>,
}

impl ClientActivity {
    /// Joined the hub: from now on it receives quotes.
    pub fn serving(&self, slot: &Arc<ClientSlot>) {
        let _ = self.slot.set(Arc::clone(slot));
        self.phase.store(SERVING, Ordering::Relaxed);
    }

    /// Done with quotes: writing its close frame and waiting for the peer's.
    pub fn closing(&self) {
        self.phase.store(CLOSING, Ordering::Relaxed);
    }

    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Relaxed);
    }

    /// Quotes went out at `now`.
    pub fn wrote(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        self.last_write.store(ms + 1, Ordering::Relaxed);
    }

    /// What it is doing, in one word: `joining`, `writing` (awake: draining its queue,
    /// writing, reading), `parked` (waiting for quotes), `batch-wait` (asleep until its tick
    /// on the batch grid), `blocked` (its socket is full), `awaiting-pong` (sent as much as
    /// it may before the client answers a ping), `closing`.
    pub fn doing(&self) -> &'static str {
        match self.phase.load(Ordering::Relaxed) {
            JOINING => "joining",
            CLOSING => "closing",
            _ => match self.slot.get().map(|s| s.writer_state()) {
                None | Some(WriterState::Running) => "writing",
                Some(WriterState::Parked) => "parked",
                Some(WriterState::ParkedTimed) => "batch-wait",
                Some(WriterState::ParkedBlocked) if self.blocked.load(Ordering::Relaxed) => {
                    "blocked"
                }
                Some(WriterState::ParkedBlocked) => "awaiting-pong",
            },
        }
    }

    /// Frames waiting in its queue, once it has one.
    pub fn queued(&self) -> Option<usize> {
        self.slot.get().map(|s| s.queued())
    }

    /// Why it was told to leave, if it was.
    pub fn kicked(&self) -> Option<&'static str> {
        match self.slot.get()?.kicked() {
            Kick::None => None,
            Kick::SlowConsumer => Some("slow-consumer"),
            Kick::KeyRevoked => Some("key-revoked"),
            Kick::Shutdown => Some("shutdown"),
            Kick::Restart => Some("restart"),
            Kick::Refused => Some("refused-upstream"),
        }
    }

    /// How long since it last wrote quotes; `None` if it never has.
    pub fn since_last_write(&self, now: Instant) -> Option<Duration> {
        match self.last_write.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(now.saturating_duration_since(self.started + Duration::from_millis(ms - 1))),
        }
    }

    /// How long the thread has served this connection.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_lives_as_long_as_its_entry_and_shows_no_full_key() {
        let activity = Activity::default();
        let peer = Peer::direct("127.0.0.1:5000".parse().unwrap());
        {
            let entry = activity.enter(7, peer, Some("a-secret-client-key"));
            assert_eq!(entry.key, "a-se…");
            assert_eq!(entry.doing(), "joining");
            assert_eq!(entry.tid, nix::unistd::gettid().as_raw());
            assert_eq!(entry.since_last_write(Instant::now()), None);
            entry.wrote(Instant::now());
            assert!(entry.since_last_write(Instant::now()).unwrap() < Duration::from_secs(1));
            entry.closing();
            assert_eq!(entry.doing(), "closing");
            assert_eq!(activity.snapshot().len(), 1);
        }
        assert!(activity.snapshot().is_empty());
    }
}
