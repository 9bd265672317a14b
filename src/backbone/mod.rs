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

mod lease;
mod link;
pub mod options;
mod publish;
mod read;
mod status;

pub use lease::{Lease, LOCK_TTL};
pub use options::{parse_name, RedisUrl, Role};
pub use status::{LinkKind, Status};

use crate::metrics::Metrics;
use crate::outlet::Outlet;
use crate::stop::Stop;
use crossbeam_channel::{SendError, Sender};
use std::io;
use std::sync::Arc;
use tungstenite::Utf8Bytes;

/// What the backbone threads need, taken from the config once.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: RedisUrl,
    pub role: Role,
    pub name: String,
    /// How this instance names itself in the lock, so an operator reading it finds the host.
    pub instance: String,
    /// The stream is trimmed to about this many entries.
    pub max_len: u64,
}

/// The Redis keys of one feed.
#[derive(Clone, Debug)]
pub struct Keys {
    pub lock: String,
    pub fence: String,
    pub stream: String,
    pub last: String,
}

impl Keys {
    pub fn new(name: &str) -> Keys {
        Keys {
            lock: format!("{name}:lock"),
            fence: format!("{name}:fence"),
            stream: format!("{name}:stream"),
            last: format!("{name}:last"),
        }
    }
}

/// How this process names itself in the lock: `HOST LISTEN pid PID`.
pub fn instance_name(listen: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string());
    format!("{host} {listen} pid {}", std::process::id())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://localhost",
            "redis://r.example:6380/2",
            "redis://:secret@10.0.0.5:6379/0",
            "redis://[::1]:6379",
        ] {
            assert!(RedisUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://x:6379",
            "redis://",
            "redis://:6379",
            "redis://h:0",
            "redis://h:99999",
            "redis://h:6379/x",
            "redis://h 1:6379",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        let e = RedisUrl::parse("rediss://:pw@h:6379").unwrap_err();
        assert!(
            e.contains("TLS to Redis is not supported") && !e.contains("pw"),
            "{e}"
        );
        let url = RedisUrl::parse("redis://user:pa55@h:6379/1").unwrap();
        assert_eq!(url.shown(), "redis://…@h:6379/1");
        assert!(!format!("{url:?}").contains("pa55"));
    }

    #[test]
    fn roles_and_names() {
        assert_eq!(Role::parse("EDGE"), Ok(Role::Edge));
        assert!(Role::parse("leader").is_err());
        assert!(Role::Both.ingests() && Role::Both.serves_clients());
        assert!(!Role::Ingest.serves_clients() && !Role::Edge.ingests());
        assert_eq!(parse_name("fx-prod:eu"), Ok("fx-prod:eu".into()));
        assert!(parse_name("a b").is_err() && parse_name("").is_err());
        assert_eq!(Keys::new("fx").stream, "fx:stream");
    }
}
