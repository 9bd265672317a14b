//! The fan-out: the distributor thread parses each frame once and queues it for every
//! interested client on the hub, which holds the client queues and the latest quote per
//! symbol; the writers are woken as cheaply as the load allows; a slow client may be sent the
//! latest quote per symbol instead of everything (conflation).
//!
//! May import: `config`, `base`. How a frame names its symbol comes from the feed as a
//! function, so the fan-out knows no provider.

pub(crate) mod conflate;
pub(crate) mod distributor;
pub(crate) mod slot;
