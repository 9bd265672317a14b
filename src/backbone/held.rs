//! Whether this instance holds the lock: set by the `backbone-lease` thread, asked by the
//! upstream thread (may it connect?), the publisher (with which token?) and `/healthz`.

use crate::base::stop::Stop;
use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// The fencing token of the lock held; 0 when none.
    token: u64,
    /// When the lock stops counting as held here.
    until: Option<Instant>,
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

    /// The token of the lock while this instance holds it.
    pub fn held(&self) -> Option<u64> {
        let state = self.state.lock();
        let live = state.until.is_some_and(|until| Instant::now() < until);
        (state.token != 0 && live).then_some(state.token)
    }

    /// Waits until this instance holds the lock; `None` when stopping.
    pub fn wait_held(&self, stop: &Stop) -> Option<u64> {
        let mut state = self.state.lock();
        loop {
            if stop.is_set() || state.stopping {
                return None;
            }
            let now = Instant::now();
            match state.until {
                Some(until) if state.token != 0 && now < until => return Some(state.token),
                // The lease thread wakes waiters on every change and on stop; the timeout only
                // bounds how long a missed wake-up could cost.
                _ => {
                    self.changed.wait_for(&mut state, Duration::from_secs(1));
                }
            }
        }
    }

    pub(super) fn set(&self, token: u64, until: Instant) {
        let mut state = self.state.lock();
        state.token = token;
        state.until = Some(until);
        self.changed.notify_all();
    }

    pub(super) fn clear(&self) {
        let mut state = self.state.lock();
        state.token = 0;
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
