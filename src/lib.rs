//! fxproxy: one WebSocket connection to a Forex market-data source, fanned out to any number
//! of authenticated clients. Synchronous and thread-per-connection by design.
//!
//! The folders follow a quote's path, and imports run one way, down this list:
//! - [`server`] wires the stages together; [`commands`] runs what the command line asked for.
//! - `ops`: what operators reach — `/healthz`, `/metrics` and the page, reloads (SIGHUP), the
//!   state dump (SIGUSR1), signals and logging.
//! - `clients`: every client connection, from accept through the HTTP upgrade, TLS and auth
//!   (one `admission` loop) to its own writer thread.
//! - `fanout`: the distributor and the hub: every frame parsed once and queued for each
//!   interested client, the writers woken.
//! - `backbone`: past one host, frames go through Redis between the feed and the fan-out.
//! - `feed`: the one upstream connection, provider templates, translation, the simulator,
//!   record and replay.
//! - [`config`]: `proxy.conf`, parsed and validated.
//! - `base`: small helpers every stage shares (stop signals, threads, clocks, market hours,
//!   counters, log-safe text).
//!
//! [`watch`] stands apart: the terminal client, which only shares the protocol and the helpers.

#![forbid(unsafe_code)]

mod backbone;
mod base;
pub mod cli;
mod clients;
pub mod commands;
pub mod config;
mod fanout;
mod feed;
mod ops;
pub mod server;
pub mod watch;

pub use server::Server;

// The public face beyond the server: what tests, fuzz targets and the benchmark reach.
pub use base::{clock, logsafe, market, metrics};
pub use clients::{auth, http, keys};
pub use feed::protocol;
pub use ops::{dump, page};
