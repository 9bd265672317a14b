//! The base: small helpers every stage shares, none of which knows a stage. A stop signal and
//! named threads with bounded stacks, heartbeats for the watchdog, the thread ceiling, a value
//! a reload replaces, the clock and the market's hours, back-off, rate-limited logging, text
//! made safe for a log, the counters every stage bumps, the latency histograms that fill as
//! quotes flow and the exposition format they are written in, what the provider said of each
//! symbol, TLS roots, and the HTTP proxy tunnel outgoing connections may need.
//!
//! May import: nothing of the crate outside `base`.

pub mod backoff;
pub mod ceiling;
pub mod clock;
pub mod heartbeat;
pub mod histogram;
pub mod io;
pub mod live;
pub mod logsafe;
pub mod market;
pub mod metrics;
pub mod prometheus;
pub mod ratelimit;
pub mod stop;
pub mod symbol_states;
pub mod threads;
pub mod tls;
pub mod tunnel;
pub mod x509;
