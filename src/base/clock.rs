//! The wall clock behind quote ages and the market-hours rule: the system's, or one a test sets
//! to any moment (a Friday night, a Saturday) and which then runs on at the system's pace.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Epoch milliseconds, UTC. Cloning shares the clock: setting one clone moves them all.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock; `None` for the system clock itself.
    offset_ms: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that reads `at_ms` now and runs on from there; [`Clock::set`] moves it.
    pub fn starting_at(at_ms: u64) -> Clock {
        let clock = Clock {
            offset_ms: Some(Arc::new(AtomicI64::new(0))),
        };
        clock.set(at_ms);
        clock
    }

    /// Makes the clock read `at_ms` now. Has no effect on the system clock.
    pub fn set(&self, at_ms: u64) {
        if let Some(offset) = &self.offset_ms {
            offset.store(at_ms as i64 - now_ms() as i64, Ordering::SeqCst);
        }
    }

    pub fn now_ms(&self) -> u64 {
        match &self.offset_ms {
            None => now_ms(),
            Some(offset) => (now_ms() as i64 + offset.load(Ordering::SeqCst)).max(0) as u64,
        }
    }
}

/// The system clock in epoch milliseconds; [`Clock::now_ms`] is the proxy's own, which tests
/// may set.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_clock_reads_what_it_was_set_to_and_runs_on() {
        let friday = 1_796_421_540_000; // 2026-12-04T21:59:00Z
        let clock = Clock::starting_at(friday);
        let shared = clock.clone();
        let t = shared.now_ms();
        assert!((friday..friday + 5_000).contains(&t), "{t}");
        clock.set(friday + 120_000);
        let t = shared.now_ms();
        assert!((friday + 120_000..friday + 125_000).contains(&t), "{t}");
        let system = Clock::system();
        system.set(friday);
        assert!(system.now_ms().abs_diff(now_ms()) < 5_000);
    }
}
