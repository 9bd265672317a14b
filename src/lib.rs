//! fxproxy: one WebSocket connection to a Forex market-data source, fanned out to any number
//! of authenticated clients. Synchronous and thread-per-connection by design.
//!
//! A quote's path, one module each: [`upstream`] reads it, [`distributor`] parses it once and
//! queues it for every interested client, [`client`] writes it out. A client gets there
//! through [`admission`] (accept, HTTP, upgrade, auth: [`handshake`]), which gives it a thread
//! only once it has authenticated, over plain TCP or TLS ([`stream`], [`tls`]). [`server`]
//! wires them up; [`signals`] tells SIGTERM from SIGHUP ([`reload`]) and SIGUSR1 ([`dump`]).
//! Past one host, [`backbone`] sits between the upstream and the distributor: the frames go
//! through Redis.

#![forbid(unsafe_code)]

pub mod activity;
pub mod admission;
pub mod auth;
pub mod backbone;
pub mod budget;
pub mod ceiling;
pub mod cli;
pub mod client;
pub mod clock;
pub mod closes;
pub mod config;
pub mod conflate;
pub mod context;
pub mod demo_key;
pub mod distributor;
pub mod dump;
pub mod endpoints;
pub mod forwarded;
pub mod handshake;
pub mod http;
pub mod keys;
pub mod listener;
pub mod live;
pub mod logging;
pub mod logsafe;
pub mod market;
pub mod metrics;
pub mod outlet;
pub mod page;
pub mod places;
pub mod protocol;
pub mod provider;
pub mod record;
pub mod reload;
pub mod replay;
pub mod server;
pub mod signals;
pub mod sim;
pub mod stop;
pub mod stream;
pub mod threads;
pub mod tls;
pub mod translate;
pub mod upstream;
pub mod watch;
pub mod watcher;
pub mod x509;

pub use server::Server;
