//! The feed: the one connection to the market-data source and what its frames mean. The
//! upstream thread connects, speaks the provider's protocol as its template describes it,
//! translates each frame into quotes and hands them to its outlet (the distributor, or the
//! backbone). The simulator and the replay of a recording are sources the same thread connects
//! to; the recorder keeps what arrived. Also here: fxproxy's own quote protocol, TraderMade's v2
//! protocol as the proxy serves it, and the health verdict of the feed.
//!
//! May import: `config`, `base`.

pub mod decimal;
pub mod headers;
pub mod health;
pub mod outlet;
pub mod protocol;
pub mod provider;
pub mod record;
pub mod replay;
pub mod setup;
pub mod sim;
pub mod template;
pub mod template_error;
pub mod translate;
pub mod upstream;
pub mod v2;
