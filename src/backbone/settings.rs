//! What the backbone threads need, taken from the config once, and the Redis keys of a feed.

use crate::base::tls::{read, read_certs};
use crate::config::backbone::{RedisUrl, Role};
use crate::config::{Config, ConfigError};
use std::net::SocketAddr;

/// What the backbone threads need, taken from the config once.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: RedisUrl,
    pub role: Role,
    pub name: String,
    /// How this instance names itself in the lock, so an operator reading it finds the host.
    pub instance: String,
    /// The stream is trimmed to about this many entries.
    pub max_len: u64,
    /// The configured symbols: a frame's symbol names its field in the snapshot.
    pub symbols: Vec<String>,
    /// For `rediss://`: the CA certificate(s) (PEM) of `backbone_ca_file`.
    pub ca: Option<Vec<u8>>,
}

impl Settings {
    /// The backbone the configuration names, if any, for the instance that serves `listen`;
    /// the CA file of a `rediss://` backbone is read (and checked to hold a certificate) now.
    pub fn of(config: &Config, listen: SocketAddr) -> Result<Option<Settings>, ConfigError> {
        let Some(url) = &config.backbone else {
            return Ok(None);
        };
        const KEY: &str = "backbone_ca_file";
        let ca = match &config.backbone_ca_file {
            Some(path) => {
                let failed = |e: crate::base::tls::TlsError| config.error_at(e.key, e.message);
                read_certs(KEY, path).map_err(failed)?;
                Some(read(KEY, path).map_err(failed)?)
            }
            None => None,
        };
        Ok(Some(Settings {
            url: url.clone(),
            role: config.backbone_role,
            name: config.backbone_name.clone(),
            instance: instance_name(listen),
            max_len: config.backbone_max_len,
            symbols: config.symbols.clone(),
            ca,
        }))
    }
}

/// The Redis keys of one feed.
#[derive(Clone, Debug)]
pub struct Keys {
    pub lock: String,
    pub fence: String,
    pub stream: String,
    pub last: String,
}

impl Keys {
    pub fn new(name: &str) -> Keys {
        Keys {
            lock: format!("{name}:lock"),
            fence: format!("{name}:fence"),
            stream: format!("{name}:stream"),
            last: format!("{name}:last"),
        }
    }
}

/// How this process names itself in the lock: `HOST LISTEN pid PID`.
pub fn instance_name(listen: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string());
    format!("{host} {listen} pid {}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_by_the_feed_name() {
        assert_eq!(Keys::new("fx").stream, "fx:stream");
        assert_eq!(Keys::new("fx").lock, "fx:lock");
    }
}
