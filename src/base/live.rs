//! A value that a reload may replace while threads read it: the running configuration.
//!
//! Readers on a hot path (a client's writer loop, the upstream reader, the admission loop)
//! keep a [`Cached`] copy and call [`Cached::refresh`] once per turn of their loop: that is
//! one atomic load of a counter that only a reload writes, so the cache line stays shared
//! across every core and no lock is taken per quote. Everyone else calls [`Live::get`].

use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Live<T> {
    /// Bumped after every [`Live::set`], once the new value is in place.
    version: AtomicU64,
    value: RwLock<Arc<T>>,
}

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live {
            version: AtomicU64::new(0),
            value: RwLock::new(Arc::new(value)),
        }
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        Arc::clone(&self.value.read())
    }

    /// Replaces the value; readers see it at their next [`Cached::refresh`] or [`Live::get`].
    pub fn set(&self, value: T) {
        *self.value.write() = Arc::new(value);
        self.version.fetch_add(1, Ordering::Release);
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

/// One thread's copy of a [`Live`] value.
pub struct Cached<T> {
    live: Arc<Live<T>>,
    seen: u64,
    value: Arc<T>,
}

impl<T> Cached<T> {
    pub fn new(live: &Arc<Live<T>>) -> Cached<T> {
        // The version first: should a reload land in between, the next refresh fetches again.
        let seen = live.version();
        Cached {
            live: Arc::clone(live),
            seen,
            value: live.get(),
        }
    }

    /// Takes the latest value if a reload replaced it; true when it did.
    pub fn refresh(&mut self) -> bool {
        let now = self.live.version();
        if now == self.seen {
            return false;
        }
        self.seen = now;
        self.value = self.live.get();
        true
    }

    pub fn get(&self) -> &T {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_copy_sees_a_new_value_at_its_next_refresh_only() {
        let live = Arc::new(Live::new(1));
        let mut cached = Cached::new(&live);
        assert!(!cached.refresh());
        live.set(2);
        assert_eq!(*cached.get(), 1, "unchanged until refreshed");
        assert!(cached.refresh());
        assert_eq!(*cached.get(), 2);
        assert!(!cached.refresh());
        assert_eq!(*live.get(), 2);
    }
}
