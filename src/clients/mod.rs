//! The clients: every connection on the client port, from `accept` to its close. One
//! `admission` thread drives every connection that has no thread of its own yet (listener,
//! HTTP request, TLS, upgrade, auth, keys); once authenticated, a client gets its own writer
//! thread (`client`), which joins the hub and writes its quotes. A client's first message
//! decides whether it speaks fxproxy's own protocol or TraderMade's v2 (`v2`: it subscribes
//! as it goes).
//!
//! May import: `fanout`, `backbone` (its status, for `/healthz`), `feed` (the quote protocol),
//! `config`, `base`. Plain HTTP requests are answered by a function the server plugs into the
//! context, so the endpoints (in `ops`) stay above; it runs on the `http` thread
//! (`answering`), never on the admission thread.

pub(crate) mod activity;
pub(crate) mod admission;
pub(crate) mod answering;
pub mod auth;
pub(crate) mod budget;
pub(crate) mod client;
pub(crate) mod closes;
pub(crate) mod context;
#[cfg(feature = "autobahn")]
pub(crate) mod echo;
pub(crate) mod forwarded;
pub(crate) mod guard;
pub(crate) mod handshake;
pub mod http;
pub mod keys;
pub(crate) mod listener;
pub(crate) mod places;
pub(crate) mod stream;
pub(crate) mod tls;
pub(crate) mod v2;
pub(crate) mod watcher;
