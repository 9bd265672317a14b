//! Operations: what an operator reaches. The HTTP endpoints (`/livez`, `/readyz`,
//! `/metrics`, the quotes page) on the client port and on `admin_listen`, the process's own
//! figures, reloading the configuration (SIGHUP), the state dump (SIGUSR1, `/debug/state`), the
//! signals themselves, the log, and what systemd is told (readiness, reloads, the watchdog).
//!
//! May import: every stage below (`clients`, `fanout`, `backbone`, `feed`, `config`, `base`).

pub(crate) mod admin;
pub mod dump;
pub(crate) mod endpoints;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod notify;
pub mod page;
pub(crate) mod process;
pub(crate) mod reload;
pub(crate) mod signals;
