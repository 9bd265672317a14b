//! What `proxy.conf` says of the backbone, checked when the file is read: the role, the
//! Redis URL and the feed's name. Nothing here reaches Redis, so the config reader can use it
//! without the backbone's threads.

use std::fmt;

/// What an instance does on the backbone (`backbone_role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Both,
    Ingest,
    Edge,
}

impl Role {
    pub fn parse(v: &str) -> Result<Role, String> {
        match v.to_ascii_lowercase().as_str() {
            "both" => Ok(Role::Both),
            "ingest" => Ok(Role::Ingest),
            "edge" => Ok(Role::Edge),
            _ => Err(format!("expected `both`, `ingest` or `edge`, got {v:?}")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Both => "both",
            Role::Ingest => "ingest",
            Role::Edge => "edge",
        }
    }

    /// Competes for the provider connection.
    pub fn ingests(self) -> bool {
        self != Role::Edge
    }

    /// Serves WebSocket clients, from the stream.
    pub fn serves_clients(self) -> bool {
        self != Role::Ingest
    }
}

/// `backbone = redis://[:PASSWORD@]HOST[:PORT][/DB]`, checked when the file is read.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn parse(v: &str) -> Result<RedisUrl, String> {
        let expected = "expected redis://HOST:PORT or redis://HOST:PORT/DB";
        let Some(rest) = v.strip_prefix("redis://") else {
            let tls = if v.starts_with("rediss://") {
                " (TLS to Redis is not supported: use a local Redis or a TLS tunnel)"
            } else {
                ""
            };
            return Err(format!("{expected}, got {:?}{tls}", shown(v)));
        };
        let (authority, db) = match rest.split_once('/') {
            Some((a, db)) => (a, db),
            None => (rest, ""),
        };
        let host_port = authority.rsplit('@').next().unwrap_or("");
        let host = if host_port.starts_with('[') {
            host_port
                .split(']')
                .next()
                .unwrap_or("[")
                .trim_start_matches('[')
        } else {
            host_port.split(':').next().unwrap_or("")
        };
        let port = host_port
            .strip_prefix('[')
            .map_or(host_port, |h| h.split_once(']').map_or("", |(_, p)| p))
            .rsplit_once(':')
            .map(|(_, p)| p);
        let port_ok = port.map_or(true, |p| p.parse::<u16>().is_ok_and(|n| n > 0));
        let db_ok = db.is_empty() || db.parse::<u16>().is_ok();
        if host.is_empty() || !port_ok || !db_ok || v.chars().any(char::is_whitespace) {
            return Err(format!("{expected}, got {:?}", shown(v)));
        }
        // What the Redis client will make of it, checked now rather than at start-up.
        redis::IntoConnectionInfo::into_connection_info(v)
            .map_err(|e| format!("{expected}, got {:?}: {e}", shown(v)))?;
        Ok(RedisUrl(v.to_string()))
    }

    /// The URL for the Redis client, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL for logs and `/healthz`: any password is left out.
    pub fn shown(&self) -> String {
        shown(&self.0)
    }
}

fn shown(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.shown())
    }
}

/// Checks `backbone_name`: it becomes part of every key, so keep it to plain characters.
pub fn parse_name(v: &str) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._-:".contains(c);
    if v.is_empty() || v.len() > 64 || !v.chars().all(ok) {
        return Err(format!(
            "expected 1 to 64 characters of A-Z, a-z, 0-9 and . _ - :, got {v:?}"
        ));
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://localhost",
            "redis://r.example:6380/2",
            "redis://:secret@10.0.0.5:6379/0",
            "redis://[::1]:6379",
        ] {
            assert!(RedisUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://x:6379",
            "redis://",
            "redis://:6379",
            "redis://h:0",
            "redis://h:99999",
            "redis://h:6379/x",
            "redis://h 1:6379",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        let e = RedisUrl::parse("rediss://:pw@h:6379").unwrap_err();
        assert!(
            e.contains("TLS to Redis is not supported") && !e.contains("pw"),
            "{e}"
        );
        let url = RedisUrl::parse("redis://user:pa55@h:6379/1").unwrap();
        assert_eq!(url.shown(), "redis://…@h:6379/1");
        assert!(!format!("{url:?}").contains("pa55"));
    }

    #[test]
    fn roles_and_names() {
        assert_eq!(Role::parse("EDGE"), Ok(Role::Edge));
        assert!(Role::parse("leader").is_err());
        assert!(Role::Both.ingests() && Role::Both.serves_clients());
        assert!(!Role::Ingest.serves_clients() && !Role::Edge.ingests());
        assert_eq!(parse_name("fx-prod:eu"), Ok("fx-prod:eu".into()));
        assert!(parse_name("a b").is_err() && parse_name("").is_err());
    }
}
