//! The places among `max_clients`: one for every upgraded connection, from the moment its
//! upgrade is accepted until it fails to authenticate or, once it has, until its client thread
//! is gone. There are fewer places than `max_clients` when the kernel's thread ceiling is
//! lower (see [`crate::base::ceiling`]), so a client never costs a thread the process cannot have.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Places {
    taken: AtomicUsize,
    limit: AtomicUsize,
    /// Whether the thread ceiling, not `max_clients`, sets `limit`.
    by_ceiling: AtomicBool,
    /// Clients the thread ceiling allows.
    ceiling: usize,
}

impl Places {
    /// `max_clients` places, or `ceiling` if that is fewer.
    pub fn new(max_clients: usize, ceiling: usize) -> Arc<Places> {
        Arc::new(Places {
            taken: AtomicUsize::new(0),
            limit: AtomicUsize::new(max_clients.min(ceiling)),
            by_ceiling: AtomicBool::new(ceiling < max_clients),
            ceiling,
        })
    }

    /// A new `max_clients` after a reload. Places already taken stay taken: lowering it
    /// below the clients connected closes nobody, newcomers wait or get 503 until enough
    /// have left.
    pub fn set_max_clients(&self, max_clients: usize) {
        self.limit
            .store(max_clients.min(self.ceiling), Ordering::Relaxed);
        self.by_ceiling
            .store(self.ceiling < max_clients, Ordering::Relaxed);
    }

    /// Takes a place, if one is free.
    pub fn take(self: &Arc<Self>) -> Option<Place> {
        let mut taken = self.taken.load(Ordering::Relaxed);
        loop {
            if taken >= self.limit() {
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
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether the places run out at the thread ceiling rather than at `max_clients`.
    pub fn limited_by_ceiling(&self) -> bool {
        self.by_ceiling.load(Ordering::Relaxed)
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

    #[test]
    fn a_new_max_clients_takes_no_place_back() {
        let places = Places::new(3, 10);
        let _held: Vec<Place> = (0..3).map(|_| places.take().unwrap()).collect();
        places.set_max_clients(1);
        assert_eq!((places.taken(), places.limit()), (3, 1));
        assert!(places.take().is_none());
        places.set_max_clients(20);
        assert_eq!(places.limit(), 10, "still under the ceiling");
        assert!(places.limited_by_ceiling());
        assert!(places.take().is_some());
    }
}
