//! The places among `max_clients`: one for every upgraded connection, from the moment its
//! upgrade is accepted until it fails to authenticate or, once it has, until its client thread
//! is gone. There are fewer places than `max_clients` when the kernel's thread ceiling is
//! lower (see [`crate::ceiling`]), so a client never costs a thread the process cannot have.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Places {
    taken: AtomicUsize,
    limit: usize,
    /// Whether the thread ceiling, not `max_clients`, sets `limit`.
    by_ceiling: bool,
}

impl Places {
    /// `max_clients` places, or `ceiling` if that is fewer.
    pub fn new(max_clients: usize, ceiling: usize) -> Arc<Places> {
        Arc::new(Places {
            taken: AtomicUsize::new(0),
            limit: max_clients.min(ceiling),
            by_ceiling: ceiling < max_clients,
        })
    }

    /// Takes a place, if one is free.
    pub fn take(self: &Arc<Self>) -> Option<Place> {
        let mut taken = self.taken.load(Ordering::Relaxed);
        loop {
            if taken >= self.limit {
                return None;
            }
            match self.taken.compare_exchange_weak(
                taken,
                taken + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Place(Arc::clone(self))),
                Err(now) => taken = now,
            }
        }
    }

    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the places run out at the thread ceiling rather than at `max_clients`.
    pub fn limited_by_ceiling(&self) -> bool {
        self.by_ceiling
    }
}

/// One place, given back on drop.
pub struct Place(Arc<Places>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_run_out_at_the_lower_of_the_two_limits() {
        let places = Places::new(3, 2);
        assert!(places.limited_by_ceiling());
        let a = places.take().unwrap();
        let _b = places.take().unwrap();
        assert!(places.take().is_none());
        drop(a);
        assert_eq!(places.taken(), 1);
        assert!(places.take().is_some());
        assert!(!Places::new(3, 10).limited_by_ceiling());
        assert_eq!(Places::new(3, 10).limit(), 3);
    }
}
