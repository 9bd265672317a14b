//! A stop signal every long-lived thread can wait on, so each blocking wait has a way out on
//! shutdown without polling.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set once, on SIGINT/SIGTERM or when a test stops the server; never cleared.
#[derive(Default)]
pub struct Stop {
    flag: AtomicBool,
    lock: Mutex<()>,
    cond: Condvar,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    pub fn set(&self) {
        let _guard = self.lock.lock();
        self.flag.store(true, Ordering::Release);
        self.cond.notify_all();
    }

    /// Sleeps for `dur` or until the stop is set; returns true when stopping.
    pub fn wait(&self, dur: Duration) -> bool {
        let deadline = Instant::now() + dur;
        let mut guard = self.lock.lock();
        while !self.is_set() {
            if self.cond.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
        self.is_set()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_ends_early_when_set() {
        let stop = Arc::new(Stop::new());
        let other = Arc::clone(&stop);
        let waiter = std::thread::spawn(move || other.wait(Duration::from_secs(60)));
        stop.set();
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn wait_times_out_when_not_set() {
        assert!(!Stop::new().wait(Duration::from_millis(1)));
    }
}
