//! One client as the fan-out sees it: its queue, the symbols it wants, why it may have been
//! told to leave, and how its writer thread is woken.
//!
//! How writers learn of new frames is where the CPU goes (a wake-up and a `send` per client
//! per batch are most of it), so a writer announces when it parks and what for, and wakers
//! unpark only those that need it; the writers one batch must wake form a few chains, each
//! woken writer waking the next once it has written (see [`WakeChain`]).

use crate::fanout::conflate::Conflation;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use tungstenite::Utf8Bytes;

/// Why a client is being told to leave; the writer turns it into a close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kick {
    None = 0,
    SlowConsumer = 1,
    KeyRevoked = 2,
    /// The proxy is going away (1001).
    Shutdown = 3,
    /// The proxy restarts on a socket systemd holds: come back at once (1012).
    Restart = 4,
    /// The provider refused every symbol the client receives.
    Refused = 5,
}

impl Kick {
    pub(super) fn from_u8(v: u8) -> Kick {
        match v {
            1 => Kick::SlowConsumer,
            2 => Kick::KeyRevoked,
            3 => Kick::Shutdown,
            4 => Kick::Restart,
            5 => Kick::Refused,
            _ => Kick::None,
        }
    }
}

// A writer's state, as wakers see it.
pub(super) const RUNNING: u8 = 0;
/// Parked until somebody unparks it (or its keep-alive tick).
pub(super) const PARKED: u8 = 1;
/// Parked until just after the distributor's next batch: nobody needs to unpark it.
pub(super) const PARKED_TIMED: u8 = 2;
/// Parked while the client cannot take more (its socket is full, or it has not answered a
/// ping after many bytes): new frames wait in the queue (that is what it is for) and only
/// the socket turning writable, a read or a kick wake it.
pub(super) const PARKED_BLOCKED: u8 = 3;

/// A writer's state as the state dump (SIGUSR1) shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterState {
    Running,
    /// Waiting for frames.
    Parked,
    /// Asleep until its tick on the batch grid.
    ParkedTimed,
    /// Waiting for its socket to drain or for a ping's answer.
    ParkedBlocked,
}

/// What a writer waits for when it parks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// New frames (the distributor wakes it), a read, a kick or its keep-alive tick.
    Frames,
    /// Its next tick on the batch grid: nobody needs to wake it for frames.
    Batch,
    /// Its socket turning writable again: frames meanwhile wait in the queue.
    Writable,
    /// Something from its client (the answer to a ping): frames meanwhile wait in the queue.
    Reply,
}

/// One authenticated client as the distributor sees it: its queue, what it wants, and how to
/// wake its writer thread.
pub struct ClientSlot {
    pub id: u64,
    pub key: String,
    pub(super) tx: Sender<Utf8Bytes>,
    /// Indexed by symbol id; `None` means every symbol. Changed only under the hub's lock,
    /// which the distributor holds while it reads them (a v2 client subscribes and
    /// unsubscribes as it goes).
    pub(super) wants: Option<Box<[AtomicBool]>>,
    /// Speaks TraderMade's v2 protocol: its queue gets the v2 text of each quote.
    pub v2: bool,
    pub(super) thread: Thread,
    pub(super) state: AtomicU8,
    /// A wake-up chain this writer was woken from and should help along.
    pub(super) chain: Mutex<Option<Arc<WakeChain>>>,
    /// Set by the socket watcher when the client sent something (a ping, a close).
    pub readable: AtomicBool,
    /// Set by the socket watcher when the client's socket takes bytes again.
    pub writable: AtomicBool,
    pub(super) kick: AtomicU8,
    /// Set for a client that is sent the latest quote per symbol when it falls behind,
    /// instead of being closed (see [`crate::fanout::conflate`]). Boxed: the distributor looks at this
    /// for every client on every batch, so it adds one pointer to the slot, not the slots.
    pub(super) conflation: Option<Box<Conflation>>,
    /// When the distributor queued a frame into this client's empty queue (the hub's
    /// [`super::distributor::Hub::stamp`]): how long the oldest frame of a write waited. A
    /// store per batch that finds the queue empty, no atomic read-modify-write.
    pub(super) queued_at: AtomicU64,
}

impl ClientSlot {
    /// A joining client's slot: `wants` by symbol id (`None`: every symbol), whether it
    /// speaks v2, and its latest-value slots if it conflates.
    pub(super) fn new(
        id: u64,
        key: &str,
        tx: Sender<Utf8Bytes>,
        (wants, v2): (Option<Box<[bool]>>, bool),
        thread: Thread,
        conflation: Option<Box<Conflation>>,
    ) -> ClientSlot {
        ClientSlot {
            id,
            key: key.to_string(),
            tx,
            wants: wants.map(|w| w.iter().map(|b| AtomicBool::new(*b)).collect()),
            v2,
            thread,
            state: AtomicU8::new(RUNNING),
            chain: Mutex::new(None),
            readable: AtomicBool::new(false),
            writable: AtomicBool::new(false),
            kick: AtomicU8::new(0),
            conflation,
            queued_at: AtomicU64::new(0),
        }
    }

    pub fn wants(&self, symbol: usize) -> bool {
        self.wants
            .as_ref()
            .map_or(true, |w| w[symbol].load(Ordering::Relaxed))
    }

    /// Whether every symbol it receives is among `refused` (by symbol id), and it receives
    /// at least one.
    pub fn wants_only(&self, refused: &[bool]) -> bool {
        let mut any = false;
        for (id, refused) in refused.iter().enumerate() {
            if self.wants(id) {
                if !refused {
                    return false;
                }
                any = true;
            }
        }
        any
    }

    /// Its latest-value slots, if it conflates.
    pub fn conflation(&self) -> Option<&Conflation> {
        self.conflation.as_deref()
    }

    /// Wakes the writer if it is parked, whatever it is waiting for. Callers publish their
    /// news (a flag, a kick) first, and the writer re-checks after announcing that it parks,
    /// so no wake-up is lost.
    pub fn wake(&self) {
        if self.state.swap(RUNNING, Ordering::SeqCst) != RUNNING {
            self.thread.unpark();
        }
    }

    /// Whether the distributor must wake this writer for new frames: only one parked without
    /// an appointment. A busy one drains before it parks; a timed one wakes by itself.
    pub(super) fn needs_wake(&self) -> bool {
        self.state.load(Ordering::SeqCst) == PARKED
    }

    /// Wakes a writer parked without an appointment, handing it `chain` to pass on; false
    /// when it was not parked so (it woke by itself, or is busy) and needs no waking.
    pub(super) fn wake_from(&self, chain: &Arc<WakeChain>) -> bool {
        if self
            .state
            .compare_exchange(PARKED, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            *self.chain.lock() = Some(Arc::clone(chain));
            self.thread.unpark();
            true
        } else {
            false
        }
    }

    /// Called by the writer once it has written: if it was woken from a chain, it wakes the
    /// next writer of that chain.
    pub fn pass_on(&self) {
        let chain = self.chain.lock().take();
        if let Some(chain) = chain {
            chain.wake_some(1);
        }
    }

    pub fn kick(&self, why: Kick) {
        let _ = self
            .kick
            .compare_exchange(0, why as u8, Ordering::SeqCst, Ordering::SeqCst);
        self.wake();
    }

    pub fn kicked(&self) -> Kick {
        Kick::from_u8(self.kick.load(Ordering::SeqCst))
    }

    /// When the frame at the head of its queue was queued, in the hub's [`super::distributor::Hub::stamp`]s,
    /// provided the writer drained the queue before that frame came (it does, unless its
    /// socket was full: then this is when the frames now waiting started to pile up). Read it
    /// after taking a frame from the queue.
    pub fn queued_at(&self) -> u64 {
        self.queued_at.load(Ordering::Relaxed)
    }

    /// Frames in its queue. Reads the queue's counters only: no lock.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    pub fn writer_state(&self) -> WriterState {
        match self.state.load(Ordering::Relaxed) {
            PARKED => WriterState::Parked,
            PARKED_TIMED => WriterState::ParkedTimed,
            PARKED_BLOCKED => WriterState::ParkedBlocked,
            _ => WriterState::Running,
        }
    }

    /// Announces the writer is about to park, waiting for `what`. Returns false when there is
    /// already work, in which case the writer must not park.
    pub fn going_idle(&self, rx: &Receiver<Utf8Bytes>, what: Idle) -> bool {
        let state = match what {
            Idle::Frames => PARKED,
            Idle::Batch => PARKED_TIMED,
            Idle::Writable | Idle::Reply => PARKED_BLOCKED,
        };
        self.state.store(state, Ordering::SeqCst);
        // Pairs with the distributor's fence between filling queues and reading states.
        std::sync::atomic::fence(Ordering::SeqCst);
        let work = match what {
            Idle::Writable => self.writable.load(Ordering::SeqCst),
            Idle::Reply => false,
            Idle::Frames | Idle::Batch => {
                !rx.is_empty() || self.conflation.as_ref().is_some_and(|c| c.has_pending())
            }
        };
        if work || self.readable.load(Ordering::SeqCst) || self.kicked() != Kick::None {
            self.state.store(RUNNING, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub fn awake(&self) {
        self.state.store(RUNNING, Ordering::SeqCst);
    }
}

/// How many chains of wake-ups the distributor starts for one batch.
pub(super) const CHAINS: usize = 4;

/// The writers one batch must unpark. An unpark costs several microseconds here and the woken
/// thread often preempts its waker, so one thread waking thousands in turn is slow. Waking
/// them all at once is no better: thousands of runnable threads crowd out everything else on
/// the host (the upstream reader, the distributor, the clients themselves) until the last has
/// written. So the distributor wakes a few ([`CHAINS`]), and each writer, once it has written,
/// wakes the next: a few writers run at a time, one after another on every core, and the
/// quotes leave in a steady stream that the rest of the host keeps up with.
pub struct WakeChain {
    pub(super) slots: Vec<Arc<ClientSlot>>,
    pub(super) next: AtomicUsize,
}

impl WakeChain {
    /// Wakes `n` writers not yet claimed, skipping those that need no waking any more;
    /// returns false once the chain is exhausted.
    pub(super) fn wake_some(self: &Arc<Self>, n: usize) -> bool {
        let mut woken = 0;
        while woken < n {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            match self.slots.get(i) {
                Some(slot) => woken += usize::from(slot.wake_from(self)),
                None => return false,
            }
        }
        true
    }
}
