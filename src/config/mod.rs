//! `proxy.conf`: `key = value` lines read into a validated [`Config`], with errors that name
//! the file, the line and the key.
//!
//! Each key is defined once, in [`settings`]: its name, default, parser, whom a reload reaches
//! and its doc line; [`Config`] holds the values in their types. [`parse`] is pure (text in,
//! config or error out); [`load`] reads the file and then resolves the credentials it names
//! (a key file, systemd's credentials, the environment). Values are parsed by [`value`],
//! errors said by [`ConfigError`]. Inside, files import one way: `value`, `secret`, `address`,
//! `backbone` and `proxy` at the bottom, then `model`, `settings`, `credentials`, `parse`, and
//! this file on top.
//!
//! May import: `base` only; every stage reads the configuration, so it knows none of them.

pub mod address;
pub mod backbone;
mod credentials;
mod error;
mod model;
mod parse;
pub mod proxy;
pub mod secret;
pub mod settings;
pub mod value;

pub use error::ConfigError;
pub use model::{ClientFormat, Config, LogFormat, LogLevel, ProviderChoice, SlowClient};
pub use parse::parse;
pub use proxy::{UpstreamProxy, PROXY_PASSWORD_ENV};
pub use secret::{Secret, API_KEY_ENV};
pub use settings::DEFAULT_SUBSCRIBE_MESSAGE;
pub use value::{Replay, Upstream};

pub use crate::base::market::MarketHours;
use std::path::Path;

/// Reads and parses `path`, then resolves the upstream API key from `upstream_api_key_file`
/// (with `${CREDENTIALS_DIRECTORY}` expanded) or the `FXPROXY_UPSTREAM_API_KEY` environment
/// variable, the proxy's password likewise, and the TLS files' `${CREDENTIALS_DIRECTORY}`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
        file: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut config = parse(&text, path)?;
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY");
    credentials::resolve_api_key(
        &mut config,
        credentials.as_deref(),
        std::env::var(API_KEY_ENV).ok(),
        |p| std::fs::read_to_string(p),
    )?;
    credentials::resolve_proxy_password(
        &mut config,
        credentials.as_deref(),
        std::env::var(PROXY_PASSWORD_ENV).ok(),
        |p| std::fs::read_to_string(p),
    )?;
    credentials::resolve_tls_paths(&mut config, credentials.as_deref())?;
    Ok(config)
}
