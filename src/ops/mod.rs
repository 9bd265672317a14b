//! Operations: what an operator reaches. The HTTP endpoints (`/healthz`, `/metrics`, the
//! quotes page), reloading the configuration (SIGHUP), the state dump (SIGUSR1), the signals
//! themselves, the log, and what systemd is told (readiness, reloads, the watchdog).
//!
//! May import: every stage below (`clients`, `fanout`, `backbone`, `feed`, `config`, `base`).

pub mod dump;
pub mod endpoints;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod reload;
pub mod signals;
