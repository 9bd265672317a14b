//! The feed: the one connection to the market-data source and what its frames mean. The
//! upstream thread connects, speaks the provider's protocol as its template describes it,
//! translates each frame into quotes and hands them to its outlet (the distributor, or the
//! backbone). The simulator and the replay of a recording are sources the same thread connects
//! to; the recorder keeps what arrived. Also here: fxproxy's own quote protocol, TraderMade's v2
//! protocol as the proxy serves it, and the health verdict of the feed.
//!
//! May import: `config`, `base`.

pub(crate) mod decimal;
pub(crate) mod headers;
pub(crate) mod health;
pub(crate) mod outlet;
pub mod protocol;
pub(crate) mod provider;
pub(crate) mod record;
pub(crate) mod replay;
pub(crate) mod setup;
pub(crate) mod sim;
pub(crate) mod template;
pub(crate) mod template_error;
pub(crate) mod translate;
pub(crate) mod upstream;
pub(crate) mod v2;
