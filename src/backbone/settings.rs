//! What the backbone threads need, taken from the config once, and the Redis keys of a feed.

use crate::config::backbone::{RedisUrl, Role};

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
