//! The base: small helpers every stage shares, none of which knows a stage. A stop signal and
//! named threads with bounded stacks, heartbeats for the watchdog, the thread ceiling, a value
//! a reload replaces, the clock and the market's hours, back-off, rate-limited logging, text
//! made safe for a log, the counters every stage bumps, the latency histograms that fill as
//! quotes flow and the exposition format they are written in, what the provider said of each
//! symbol, TLS roots, and the HTTP proxy tunnel outgoing connections may need.
//!
//! May import: nothing of the crate outside `base`.

pub(crate) mod backoff;
pub(crate) mod ceiling;
pub mod clock;
pub(crate) mod heartbeat;
pub(crate) mod histogram;
pub(crate) mod host;
pub(crate) mod io;
pub(crate) mod live;
pub mod logsafe;
pub mod market;
pub mod metrics;
pub(crate) mod prometheus;
pub(crate) mod ratelimit;
pub(crate) mod stop;
pub(crate) mod symbol_states;
pub(crate) mod threads;
pub(crate) mod tls;
pub(crate) mod tunnel;
pub(crate) mod x509;
