//! Whether this instance holds the lock: set by the `backbone-lease` thread, asked by the
//! upstream thread (may it connect? may it keep the connection?), the publisher (under which
//! fencing token may these frames be added?) and `/healthz`.
//!
//! Two numbers: the lock's fencing **token**, which the publish script checks, and the
//! **term**, under which the frames taken from the provider are numbered: the token that began
//! this instance's holding. Each new holding gets a token higher than any before it, so terms
//! only grow in the stream and readers can order them. A holding that goes on through a Redis
//! restart or failover keeps its term; its token may then change.

use crate::base::stop::Stop;
use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// The lock's fencing token while this instance holds it, or held it until a lapse that
    /// nothing has settled yet; 0 when none.
    token: u64,
    /// The term the provider's frames are numbered under now.
    term: u64,
    /// An earlier term whose frames may still be added under `token`: the lock lapsed here
    /// and was won again with nobody else's win in between.
    carried: u64,
    /// When the lock stops counting as held here.
    until: Option<Instant>,
    /// When the lock was won (a new term began).
    won_at: Option<Instant>,
    /// Shutting down: nobody may connect any more.
    stopping: bool,
    /// The upstream thread has closed the provider connection for good.
    upstream_gone: bool,
}

/// Whether this instance holds the lock, as the upstream thread and the publisher ask it.
#[derive(Default)]
pub struct Lease {
    state: Mutex<State>,
    changed: Condvar,
}

impl Lease {
    pub fn new() -> Lease {
        Lease::default()
    }

    /// The term of the lock while this instance holds it.
    pub fn held(&self) -> Option<u64> {
        let state = self.state.lock();
        live(&state).then_some(state.term)
    }

    /// Until when the lock counts as held for frames of `term`; `None` once it does not.
    pub fn held_until(&self, term: u64) -> Option<Instant> {
        let state = self.state.lock();
        (live(&state) && state.term == term)
            .then_some(state.until)
            .flatten()
    }

    /// The fencing token under which frames of `term` may be added now; `None` once the lock
    /// is lost to another instance (the frames are then stale).
    pub fn fence_for(&self, term: u64) -> Option<u64> {
        let state = self.state.lock();
        (state.token != 0 && term != 0 && (term == state.term || term == state.carried))
            .then_some(state.token)
    }

    /// When the lock was last won.
    pub fn won_at(&self) -> Option<Instant> {
        self.state.lock().won_at
    }

    /// Waits until this instance holds the lock; its term, or `None` when stopping.
    pub fn wait_held(&self, stop: &Stop) -> Option<u64> {
        let mut state = self.state.lock();
        loop {
            if stop.is_set() || state.stopping {
                return None;
            }
            if live(&state) {
                return Some(state.term);
            }
            // The lease thread wakes waiters on every change and on stop; the timeout only
            // bounds how long a missed wake-up could cost.
            self.changed.wait_for(&mut state, Duration::from_secs(1));
        }
    }

    /// Whether the lock counts as held here now (the lease thread renews it, else tries to win).
    pub(super) fn live(&self) -> bool {
        live(&self.state.lock())
    }

    /// The lock is won under `token`: a new term, unless it is the token held already (the
    /// lock was still this instance's in Redis after it lapsed here). With `continues`,
    /// nobody won it between the last token and this one, so the frames of the term before
    /// may still be added.
    pub(super) fn won(&self, token: u64, continues: bool, until: Instant) {
        let mut state = self.state.lock();
        if token != state.token {
            state.carried = if continues { state.term } else { 0 };
            state.term = token;
            state.token = token;
            state.won_at = Some(Instant::now());
        }
        state.until = Some(until);
        self.changed.notify_all();
    }

    /// Renewed, or taken back after Redis lost it, now under `token`: held until `until`,
    /// in the same term.
    pub(super) fn renewed(&self, token: u64, until: Instant) {
        let mut state = self.state.lock();
        if state.token != 0 {
            state.token = token;
            state.until = Some(until);
            self.changed.notify_all();
        }
    }

    /// Lost to another instance, or given back: nothing taken under it may be added any more.
    pub(super) fn clear(&self) {
        let mut state = self.state.lock();
        state.token = 0;
        state.term = 0;
        state.carried = 0;
        state.until = None;
        self.changed.notify_all();
    }

    /// Another instance has won the lock (a publish was fenced): stop counting on it at once.
    pub fn lost(&self, token: u64) {
        let mut state = self.state.lock();
        if state.token == token {
            state.until = None;
            self.changed.notify_all();
        }
    }

    pub(super) fn stopping(&self) {
        self.state.lock().stopping = true;
        self.changed.notify_all();
    }

    pub fn upstream_closed(&self) {
        self.state.lock().upstream_gone = true;
        self.changed.notify_all();
    }

    pub(super) fn wait_upstream_gone(&self, deadline: Instant) {
        let mut state = self.state.lock();
        while !state.upstream_gone {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                return;
            }
        }
    }
}

fn live(state: &State) -> bool {
    state.token != 0 && state.until.is_some_and(|until| Instant::now() < until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_goes_on_through_a_new_token_only_when_nobody_won_between() {
        let lease = Lease::new();
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!((lease.held(), lease.fence_for(7)), (None, None));
        lease.won(7, false, later);
        assert_eq!((lease.held(), lease.fence_for(7)), (Some(7), Some(7)));
        // Lapsed here, still nobody else's: the same token, the same term.
        lease.renewed(7, Instant::now());
        assert_eq!((lease.held(), lease.fence_for(7)), (None, Some(7)));
        lease.won(7, true, later);
        assert_eq!(lease.held(), Some(7));
        // Won again under a new token with nobody in between: the old term's frames still go.
        lease.won(9, true, later);
        assert_eq!(
            (lease.held(), lease.fence_for(7), lease.fence_for(9)),
            (Some(9), Some(9), Some(9))
        );
        assert_eq!(lease.held_until(7), None);
        assert_eq!(lease.held_until(9), Some(later));
        // Taken back after Redis lost it: a new token, the same term.
        lease.renewed(10, later);
        assert_eq!((lease.held(), lease.fence_for(9)), (Some(9), Some(10)));
        // Somebody else won in between: the old term's frames are stale.
        lease.won(12, false, later);
        assert_eq!((lease.fence_for(9), lease.fence_for(12)), (None, Some(12)));
        lease.lost(12);
        assert_eq!((lease.held(), lease.fence_for(12)), (None, Some(12)));
        lease.clear();
        assert_eq!(lease.fence_for(12), None);
    }
}
