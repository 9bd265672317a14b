//! Where the upstream thread's frames go, and whether it may hold the provider connection at
//! all. A single instance hands frames straight to its distributor and may always connect;
//! behind a Redis backbone, only the instance holding the lock may (see [`crate::backbone`]).

use crate::base::stop::Stop;
use crossbeam_channel::{SendError, Sender};
use std::time::Duration;
use tungstenite::Utf8Bytes;

pub trait Outlet: Send {
    /// Waits until this instance may open the provider connection; false when stopping.
    fn connect_allowed(&mut self, stop: &Stop) -> bool;

    /// Whether the connection opened after the last [`Outlet::connect_allowed`] may be kept.
    /// False once another instance may have taken over: the connection must close at once.
    fn still_allowed(&self) -> bool;

    /// Hands one frame on; an error means nobody takes frames any more (the proxy is stopping).
    fn send(&self, frame: Utf8Bytes) -> Result<(), SendError<Utf8Bytes>>;

    /// How soon to try again after the provider refused the key; `None`: after the longest
    /// back-off. Behind a backbone, an instance that has just taken the connection over may
    /// be refused while the provider still holds its predecessor's.
    fn refused_retry(&mut self) -> Option<Duration> {
        None
    }
}

/// A single instance: straight to the distributor, always allowed.
impl Outlet for Sender<Utf8Bytes> {
    fn connect_allowed(&mut self, stop: &Stop) -> bool {
        !stop.is_set()
    }

    fn still_allowed(&self) -> bool {
        true
    }

    fn send(&self, frame: Utf8Bytes) -> Result<(), SendError<Utf8Bytes>> {
        Sender::send(self, frame)
    }
}
