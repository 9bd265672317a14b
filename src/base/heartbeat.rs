//! Heartbeats: a count a loop bumps on every turn, so that someone else can tell it is still
//! turning. The systemd watchdog (see `crate::ops::notify`) is fed only while the distributor
//! and the admission loop both beat: a loop stuck on a lock or in an endless loop stops
//! beating, the watchdog goes unfed, and systemd restarts the proxy.
//!
//! A loop with nothing to do must still turn now and then to beat: it waits at most
//! [`Heartbeat::every`] at a time. That is a timed wait, not a poll: one wake-up a second (or
//! less often than the watchdog's own period allows) on an idle proxy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long an idle loop waits at most when no watchdog asks for less.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(1);

pub struct Heartbeat {
    beats: AtomicU64,
    every: Duration,
}

impl Heartbeat {
    /// A heartbeat for a loop that turns at least once every `every`.
    pub fn new(every: Duration) -> Heartbeat {
        Heartbeat {
            beats: AtomicU64::new(0),
            every,
        }
    }

    /// Called by the loop on every turn.
    pub fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    /// How many turns so far.
    pub fn count(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// The longest an idle loop may wait between two beats.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// `timeout` (`None`: forever) bounded by [`Heartbeat::every`], for a loop's wait.
    pub fn bound(&self, timeout: Option<Duration>) -> Duration {
        timeout.map_or(self.every, |t| t.min(self.every))
    }
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat::new(DEFAULT_EVERY)
    }
}

/// The loops the watchdog watches, each by name.
pub struct Heartbeats {
    pub distributor: Heartbeat,
    pub admission: Heartbeat,
}

impl Heartbeats {
    /// Heartbeats for loops that beat at least every `every`.
    pub fn new(every: Duration) -> Heartbeats {
        Heartbeats {
            distributor: Heartbeat::new(every),
            admission: Heartbeat::new(every),
        }
    }

    /// Each loop's name and count, in a fixed order.
    pub fn counts(&self) -> [(&'static str, u64); 2] {
        [
            ("distributor", self.distributor.count()),
            ("admission", self.admission.count()),
        ]
    }
}

impl Default for Heartbeats {
    fn default() -> Heartbeats {
        Heartbeats::new(DEFAULT_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_are_counted_and_waits_bounded() {
        let beats = Heartbeats::new(Duration::from_millis(250));
        beats.admission.beat();
        beats.admission.beat();
        assert_eq!(beats.counts(), [("distributor", 0), ("admission", 2)]);
        let beat = &beats.distributor;
        assert_eq!(beat.bound(None), Duration::from_millis(250));
        assert_eq!(beat.bound(Some(Duration::from_secs(5))), beat.every());
        assert_eq!(
            beat.bound(Some(Duration::from_millis(10))),
            Duration::from_millis(10)
        );
    }
}
