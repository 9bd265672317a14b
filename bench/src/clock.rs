//! One time base for the whole bench: the feed stamps `sent_ns` and the clients compute latency
//! from the same monotonic clock, expressed as nanoseconds since the Unix epoch.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Base {
    instant: Instant,
    epoch_ns: u64,
}

static BASE: OnceLock<Base> = OnceLock::new();

fn base() -> &'static Base {
    BASE.get_or_init(|| Base {
        instant: Instant::now(),
        epoch_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    })
}

/// Nanoseconds since the epoch, read from the monotonic clock (immune to NTP steps mid-run).
pub fn now_ns() -> u64 {
    let b = base();
    b.epoch_ns + b.instant.elapsed().as_nanos() as u64
}

/// The `Instant` that corresponds to `ns` on the bench's time base.
pub fn instant_at(ns: u64) -> Instant {
    let b = base();
    b.instant + Duration::from_nanos(ns.saturating_sub(b.epoch_ns))
}
