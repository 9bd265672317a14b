//! Past one host: several instances share one provider connection through Redis.
//!
//! An **ingest** competes for a lock in Redis; the one that holds it opens the provider
//! connection (the upstream thread asks [`IngestOutlet`] first) and adds every frame to a Redis
//! stream. An **edge** reads that stream and feeds its distributor, so its clients get the
//! frames in the order they were added, whichever instance added them. `both` does both.
//!
//! Redis keys, each prefixed by `backbone_name`:
//! - `NAME:lock` — who holds the provider connection: `TOKEN INSTANCE`, with an expiry the
//!   holder renews (see [`lease`]);
//! - `NAME:fence` — the fencing token of the current holder: each win of the lock takes a
//!   higher one, and a frame is added only under the current one, so an ingest that was paused
//!   past its lock's expiry cannot add stale frames after its successor started;
//! - `NAME:stream` — the frames (`f`) with their `TERM SEQ` (`p`: the token that began the
//!   holding they were taken in, and their number in it), trimmed to about `backbone_max_len`
//!   entries (see [`publish`]);
//! - `NAME:last` — the last frame per symbol, with the id of the entry it is current at (`@id`),
//!   written with each entry, so an edge started later has a warm snapshot at once (see [`read`]).
//!
//! May import: `feed` (the upstream's outlet, the quote protocol), `config`, `base`.

mod held;
mod lease;
mod link;
mod publish;
mod read;
mod settings;
mod status;

pub use held::Lease;
pub use publish::SymbolOf;
pub use settings::{Keys, Settings};
pub use status::Status;

use crate::base::metrics::Metrics;
use crate::base::stop::Stop;
use crate::feed::outlet::Outlet;
use crossbeam_channel::{SendError, SendTimeoutError, Sender, TrySendError};
use log::info;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tungstenite::Utf8Bytes;

/// Starts a service thread: the server's, which names it, bounds its stack and raises the
/// alarm should it panic.
pub type Spawn<'a> = &'a dyn Fn(&str, Box<dyn FnOnce() + Send>) -> io::Result<()>;

/// Starts the backbone threads for `settings.role`. Frames for this instance's clients go to
/// `clients` (the distributor); an ingest returns the outlet the upstream thread must use.
/// `symbol_of` finds a provider frame's symbol as the hub does.
pub fn start(
    settings: &Settings,
    status: &Arc<Status>,
    clients: Sender<Utf8Bytes>,
    metrics: &Arc<Metrics>,
    stop: &Arc<Stop>,
    spawn: Spawn<'_>,
    symbol_of: SymbolOf,
) -> io::Result<Option<IngestOutlet>> {
    let client = link::Target::new(&settings.url, settings.ca.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let keys = Keys::new(&settings.name);
    if settings.role.serves_clients() {
        let reader = read::Reader::new(&client, &keys, status, metrics);
        let stop = Arc::clone(stop);
        spawn(
            "backbone-read",
            Box::new(move || reader.run(&clients, &stop)),
        )?;
    } else {
        // An ingest serves no quotes of its own: its distributor has nothing to wait for.
        drop(clients);
    }
    if !settings.role.ingests() {
        return Ok(None);
    }
    let lease = Arc::new(Lease::new());
    let (tx, rx) = crossbeam_channel::bounded(publish::QUEUE);
    let runner = lease::Runner::new(&client, &keys, settings, &lease, status, metrics);
    let thread_stop = Arc::clone(stop);
    spawn("backbone-lease", Box::new(move || runner.run(&thread_stop)))?;
    let publisher =
        publish::Publisher::new(&client, &keys, settings, &lease, status, metrics, symbol_of);
    let thread_stop = Arc::clone(stop);
    spawn(
        "backbone-publish",
        Box::new(move || publisher.run(&rx, &thread_stop)),
    )?;
    Ok(Some(IngestOutlet {
        lease,
        frames: tx,
        status: Arc::clone(status),
        term: 0,
        refusals: 0,
    }))
}

/// After a takeover, a refusal by the provider most likely means it has not let go of the
/// previous holder's connection yet (a host that vanished leaves it open at the provider until
/// its own timeout): try again soon, not after the longest back-off.
const REFUSED_WINDOW: Duration = Duration::from_secs(120);
const REFUSED_FIRST: Duration = Duration::from_secs(1);
const REFUSED_MOST: Duration = Duration::from_secs(8);

/// The upstream thread's outlet on an ingest: it may connect only while this instance holds
/// the lock, and each frame is tagged with the term it was taken in, so the publisher adds it
/// only while the lease still vouches for that term.
pub struct IngestOutlet {
    lease: Arc<Lease>,
    frames: Sender<(u64, Utf8Bytes)>,
    status: Arc<Status>,
    term: u64,
    /// Refusals by the provider since the lock was won.
    refusals: u32,
}

impl Outlet for IngestOutlet {
    fn connect_allowed(&mut self, stop: &Stop) -> bool {
        match self.lease.wait_held(stop) {
            Some(term) => {
                if term != self.term {
                    self.refusals = 0;
                }
                self.term = term;
                true
            }
            None => false,
        }
    }

    fn still_allowed(&self) -> bool {
        self.lease.held() == Some(self.term)
    }

    /// Waits for room in the queue to Redis only while the lock counts as held: once it
    /// lapses (Redis out of reach, the queue full), the frame is dropped, as the fence would
    /// refuse it, and the upstream thread gets to close the provider connection in time.
    fn send(&self, frame: Utf8Bytes) -> Result<(), SendError<Utf8Bytes>> {
        // The common case, room in the queue, asks nothing of the lease.
        let mut item = match self.frames.try_send((self.term, frame)) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected((_, frame))) => return Err(SendError(frame)),
            Err(TrySendError::Full(item)) => item,
        };
        loop {
            let Some(until) = self.lease.held_until(self.term) else {
                self.status.fenced.fetch_add(1, Relaxed);
                return Ok(());
            };
            match self.frames.send_deadline(item, until) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(back)) => item = back,
                Err(SendTimeoutError::Disconnected((_, frame))) => return Err(SendError(frame)),
            }
        }
    }

    fn refused_retry(&mut self) -> Option<Duration> {
        let recent = self
            .lease
            .won_at()
            .is_some_and(|at| at.elapsed() < REFUSED_WINDOW);
        if !recent {
            return None;
        }
        let delay = REFUSED_FIRST
            .saturating_mul(1 << self.refusals.min(8))
            .min(REFUSED_MOST);
        self.refusals += 1;
        info!(
            "backbone: this instance took the provider connection over {:.0} s ago; the provider may not have let its previous holder's connection go yet: trying again in {:.0} s",
            self.lease.won_at().map_or(0.0, |at| at.elapsed().as_secs_f64()),
            delay.as_secs_f64()
        );
        Some(delay)
    }
}

impl Drop for IngestOutlet {
    /// The upstream thread is done with the provider connection: the lock may be let go.
    fn drop(&mut self) {
        self.lease.upstream_closed();
    }
}
