//! The slow client's other choice (`slow_client = conflate`, or `"conflate": true` in its auth
//! message): instead of being closed when it falls behind, it is sent, once it catches up, the
//! latest quote of each symbol that changed meanwhile.
//!
//! A conflating client is *live* while it keeps up: its quotes go through its queue like
//! anyone's. When it falls behind (its queue is full, or it has not proven it read what it was
//! sent: the client thread's lag probe) it is *holding*: the distributor puts each new quote in
//! the client's slot for that symbol here, replacing (and counting) an unsent older one, and
//! what was still queued is folded in too. Its writer takes from here, oldest change first,
//! and once nothing is left it is live again. So memory per client stays bounded by the
//! number of symbols; and because a quote enters a slot only after every older quote of its
//! symbol was either sent or replaced, and is taken out exactly once, no client ever gets an
//! older quote after a newer one of the same symbol, nor one twice.

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tungstenite::Utf8Bytes;

/// One client's latest-value slots.
///
/// `behind` (the `fxproxy_clients_conflating` gauge) is counted up and down under the same lock
/// as the state it counts, so that it never counts a client twice nor goes below zero.
pub struct Conflation {
    state: Mutex<State>,
    /// Whether any slot holds a quote: the writer looks before it parks, without the lock.
    pending: AtomicBool,
}

struct State {
    live: bool,
    /// By symbol id: the newest quote not yet sent.
    latest: Box<[Option<Utf8Bytes>]>,
    /// Symbol ids with a quote in `latest`, in the order they first changed.
    order: VecDeque<usize>,
    /// Frames that are no quote (a v2 client's acknowledgements), folded in from the queue:
    /// never replaced, sent before the slots.
    control: VecDeque<Utf8Bytes>,
}

/// What became of a quote offered to a conflating client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Live: it went into the queue.
    Queued,
    /// Holding: it is in its symbol's slot; `replaced` an older one that is now never sent;
    /// `started` when this offer is the one that found the queue full.
    Held { replaced: bool, started: bool },
}

impl Conflation {
    pub fn new(symbols: usize) -> Conflation {
        Conflation {
            state: Mutex::new(State {
                live: true,
                latest: vec![None; symbols].into_boxed_slice(),
                order: VecDeque::new(),
                control: VecDeque::new(),
            }),
            pending: AtomicBool::new(false),
        }
    }

    /// The distributor's way in: into `queue` while live and there is room; otherwise (and
    /// from then on) into the symbol's slot.
    pub fn offer(
        &self,
        id: usize,
        frame: &Utf8Bytes,
        queue: &Sender<Utf8Bytes>,
        queue_len: usize,
        behind: &AtomicU64,
    ) -> Offer {
        let mut s = self.state.lock();
        let mut started = false;
        if s.live {
            if queue.len() < queue_len {
                // The receiver lives as long as the client's slot, so this cannot fail.
                let _ = queue.send(frame.clone());
                return Offer::Queued;
            }
            s.live = false;
            behind.fetch_add(1, Ordering::Relaxed);
            started = true;
        }
        let replaced = s.put(id, frame.clone());
        self.pending.store(true, Ordering::SeqCst);
        Offer::Held { replaced, started }
    }

    /// The writer fell behind: from now on quotes wait here. Frames still in the queue are
    /// older than any that come here from now on; the writer folds them in with
    /// [`Conflation::fold`].
    pub fn hold(&self, behind: &AtomicU64) {
        let mut s = self.state.lock();
        if std::mem::replace(&mut s.live, false) {
            behind.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The client is leaving: it no longer counts as behind.
    pub fn release(&self, behind: &AtomicU64) {
        let mut s = self.state.lock();
        if !std::mem::replace(&mut s.live, true) {
            behind.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn is_holding(&self) -> bool {
        !self.state.lock().live
    }

    /// Folds frames taken from the queue while holding (oldest first, with their symbol ids)
    /// into the slots: a slot already filled holds a newer quote, so the queued one is dropped.
    /// `control` (frames that are no quote) are kept, in order, to go first. Returns how many
    /// quotes were dropped.
    pub fn fold(&self, queued: Vec<(usize, Utf8Bytes)>, control: Vec<Utf8Bytes>) -> u64 {
        if !control.is_empty() {
            self.state.lock().control.extend(control);
            self.pending.store(true, Ordering::SeqCst);
        }
        if queued.is_empty() {
            return 0;
        }
        let mut dropped = 0;
        // Newest queued frame of each symbol, in the order each symbol first appears.
        let mut newest: Vec<(usize, Utf8Bytes)> = Vec::new();
        for (id, frame) in queued {
            match newest.iter_mut().find(|(i, _)| *i == id) {
                Some(slot) => {
                    slot.1 = frame;
                    dropped += 1;
                }
                None => newest.push((id, frame)),
            }
        }
        let mut s = self.state.lock();
        // Queued quotes are the oldest changes: they go first.
        for (id, frame) in newest.into_iter().rev() {
            if s.latest[id].is_some() {
                dropped += 1;
            } else {
                s.latest[id] = Some(frame);
                s.order.push_front(id);
            }
        }
        if !s.order.is_empty() {
            self.pending.store(true, Ordering::SeqCst);
        }
        dropped
    }

    /// The writer's way out: the next quote to send while holding, oldest change first.
    /// `None` when there is none, and then the client is live again.
    pub fn take(&self, behind: &AtomicU64) -> Option<Utf8Bytes> {
        let mut s = self.state.lock();
        if let Some(frame) = s.control.pop_front() {
            return Some(frame);
        }
        while let Some(id) = s.order.pop_front() {
            if let Some(frame) = s.latest[id].take() {
                return Some(frame);
            }
        }
        self.pending.store(false, Ordering::SeqCst);
        if !std::mem::replace(&mut s.live, true) {
            behind.fetch_sub(1, Ordering::Relaxed);
        }
        None
    }

    /// The client no longer receives symbol `id` (a v2 client unsubscribed): its unsent
    /// quote is dropped.
    pub fn forget(&self, id: usize) {
        let mut s = self.state.lock();
        if s.latest[id].take().is_some() {
            s.order.retain(|i| *i != id);
        }
    }

    /// Whether a quote waits in a slot (see `pending`).
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// Quotes waiting in slots, for `/metrics`.
    pub fn waiting(&self) -> usize {
        self.state.lock().order.len()
    }
}

impl State {
    /// Puts `frame` in its symbol's slot; true if it replaced an unsent one.
    fn put(&mut self, id: usize, frame: Utf8Bytes) -> bool {
        match self.latest[id].replace(frame) {
            Some(_) => true,
            None => {
                self.order.push_back(id);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(sym: &str, n: u32) -> Utf8Bytes {
        Utf8Bytes::from(format!("{sym}{n}"))
    }

    fn drain(c: &Conflation, behind: &AtomicU64) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(frame) = c.take(behind) {
            out.push(frame.to_string());
        }
        out
    }

    #[test]
    fn live_while_there_is_room_then_latest_per_symbol() {
        let c = Conflation::new(2);
        let behind = AtomicU64::new(0);
        let (tx, rx) = crossbeam_channel::unbounded();
        assert_eq!(c.offer(0, &f("A", 1), &tx, 2, &behind), Offer::Queued);
        assert_eq!(c.offer(1, &f("B", 1), &tx, 2, &behind), Offer::Queued);
        assert_eq!(
            c.offer(0, &f("A", 2), &tx, 2, &behind),
            Offer::Held {
                replaced: false,
                started: true
            }
        );
        assert_eq!(
            c.offer(0, &f("A", 3), &tx, 2, &behind),
            Offer::Held {
                replaced: true,
                started: false
            }
        );
        c.offer(1, &f("B", 2), &tx, 2, &behind);
        assert!(c.is_holding() && c.has_pending());
        assert_eq!((c.waiting(), behind.load(Ordering::Relaxed)), (2, 1));
        // The queue's frames are older: the writer folds them in, and they lose to A3 and B2.
        let queued: Vec<(usize, Utf8Bytes)> = rx.try_iter().enumerate().collect();
        assert_eq!(c.fold(queued, Vec::new()), 2);
        assert_eq!(drain(&c, &behind), ["A3", "B2"]);
        assert!(!c.is_holding(), "live again once nothing waits");
        assert!(!c.has_pending());
        assert_eq!(behind.load(Ordering::Relaxed), 0);
        assert_eq!(c.offer(0, &f("A", 4), &tx, 2, &behind), Offer::Queued);
    }

    #[test]
    fn folded_frames_go_first_and_only_the_newest_of_each_symbol() {
        let c = Conflation::new(3);
        let behind = AtomicU64::new(0);
        let (tx, _rx) = crossbeam_channel::unbounded();
        c.hold(&behind);
        c.hold(&behind);
        assert_eq!(behind.load(Ordering::Relaxed), 1, "counted once");
        c.offer(2, &f("C", 9), &tx, 100, &behind);
        let dropped = c.fold(
            vec![
                (0, f("A", 1)),
                (1, f("B", 1)),
                (0, f("A", 2)),
                (2, f("C", 1)),
            ],
            vec![f("ack", 1)],
        );
        assert_eq!(dropped, 2, "A1 and C1");
        assert_eq!(
            drain(&c, &behind),
            ["ack1", "A2", "B1", "C9"],
            "control first"
        );
        // A symbol the client no longer receives loses its unsent quote.
        c.hold(&behind);
        c.offer(0, &f("A", 3), &tx, 0, &behind);
        c.offer(1, &f("B", 3), &tx, 0, &behind);
        c.forget(0);
        assert_eq!(c.waiting(), 1);
        assert_eq!(drain(&c, &behind), ["B3"]);
    }

    #[test]
    fn a_client_leaving_while_behind_is_counted_out() {
        let c = Conflation::new(1);
        let behind = AtomicU64::new(0);
        c.release(&behind);
        assert_eq!(behind.load(Ordering::Relaxed), 0, "it was live");
        c.hold(&behind);
        c.release(&behind);
        assert_eq!(behind.load(Ordering::Relaxed), 0);
        assert!(c.take(&behind).is_none());
        assert_eq!(behind.load(Ordering::Relaxed), 0, "never below zero");
    }
}
