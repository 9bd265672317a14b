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
//! - `NAME:fence` — the fencing counter: each win of the lock takes the next token, and a frame
//!   is added only with the current one, so an ingest that was paused past its lock's expiry
//!   cannot add stale frames after its successor started;
//! - `NAME:stream` — the frames (`f`) with their `TOKEN SEQ` (`p`), trimmed to about
//!   `backbone_max_len` entries (see [`publish`]);
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
pub use settings::{instance_name, Keys, Settings};
pub use status::Status;

use crate::base::metrics::Metrics;
use crate::base::stop::Stop;
use crate::feed::outlet::Outlet;
use crossbeam_channel::{SendError, Sender};
use std::io;
use std::sync::Arc;
use tungstenite::Utf8Bytes;

/// Starts a service thread: the server's, which names it, bounds its stack and raises the
/// alarm should it panic.
pub type Spawn<'a> = &'a dyn Fn(&str, Box<dyn FnOnce() + Send>) -> io::Result<()>;

/// Starts the backbone threads for `settings.role`. Frames for this instance's clients go to
/// `clients` (the distributor); an ingest returns the outlet the upstream thread must use.
pub fn start(
    settings: &Settings,
    status: &Arc<Status>,
    clients: Sender<Utf8Bytes>,
    metrics: &Arc<Metrics>,
    stop: &Arc<Stop>,
    spawn: Spawn<'_>,
) -> io::Result<Option<IngestOutlet>> {
    let client = link::Target::new(settings.url.expose())
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
    let publisher = publish::Publisher::new(&client, &keys, settings, &lease, status, metrics);
    let thread_stop = Arc::clone(stop);
    spawn(
        "backbone-publish",
        Box::new(move || publisher.run(&rx, &thread_stop)),
    )?;
    Ok(Some(IngestOutlet {
        lease,
        frames: tx,
        token: 0,
    }))
}

/// The upstream thread's outlet on an ingest: it may connect only while this instance holds
/// the lock, and each frame is tagged with the fencing token it was taken under, so the
/// publisher adds it only while that token is current.
pub struct IngestOutlet {
    lease: Arc<Lease>,
    frames: Sender<(u64, Utf8Bytes)>,
    token: u64,
}

impl Outlet for IngestOutlet {
    fn connect_allowed(&mut self, stop: &Stop) -> bool {
        match self.lease.wait_held(stop) {
            Some(token) => {
                self.token = token;
                true
            }
            None => false,
        }
    }

    fn still_allowed(&self) -> bool {
        self.lease.held() == Some(self.token)
    }

    fn send(&self, frame: Utf8Bytes) -> Result<(), SendError<Utf8Bytes>> {
        self.frames
            .send((self.token, frame))
            .map_err(|SendError((_, frame))| SendError(frame))
    }
}

impl Drop for IngestOutlet {
    /// The upstream thread is done with the provider connection: the lock may be let go.
    fn drop(&mut self) {
        self.lease.upstream_closed();
    }
}
