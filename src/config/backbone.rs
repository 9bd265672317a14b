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

/// `backbone`, checked when the file is read: one Redis (`redis://`, `rediss://` for TLS), or
/// the master of a Redis Sentinel set-up (`redis+sentinel://`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    text: String,
    place: Place,
}

/// Where the Redis of a [`RedisUrl`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// One Redis: the URL as the Redis client takes it (`rediss://`: TLS).
    Direct { tls: bool },
    /// The master called `master`, as the sentinels name it.
    Sentinel(Sentinels),
}

/// `redis+sentinel://[[USER]:PASSWORD@]HOST:PORT,HOST:PORT,.../MASTER[/DB]`, taken apart.
#[derive(Clone, PartialEq, Eq)]
pub struct Sentinels {
    /// `HOST:PORT` of each sentinel, in the order given.
    pub sentinels: Vec<String>,
    pub master: String,
    pub db: i64,
    pub username: Option<String>,
    /// The master's password (and the sentinels', should they ask for one).
    pub password: Option<String>,
}

impl fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sentinels({} for {}/{})",
            self.sentinels.join(","),
            self.master,
            self.db
        )
    }
}

/// A sentinel's port when the URL gives none.
const SENTINEL_PORT: u16 = 26379;

const EXPECTED: &str = "expected redis://HOST:PORT[/DB], rediss://HOST:PORT[/DB] (TLS) or \
                        redis+sentinel://HOST:PORT,HOST:PORT,.../MASTER[/DB]";

impl RedisUrl {
    pub fn parse(v: &str) -> Result<RedisUrl, String> {
        let bad = || format!("{EXPECTED}, got {:?}", shown(v));
        if v.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        if let Some(rest) = v.strip_prefix("redis+sentinel://") {
            let sentinels = parse_sentinels(rest).map_err(|why| format!("{}: {why}", bad()))?;
            return Ok(RedisUrl {
                text: v.to_string(),
                place: Place::Sentinel(sentinels),
            });
        }
        if v.starts_with("rediss+sentinel://") {
            return Err(format!(
                "{}: TLS to the sentinels is not supported (use redis+sentinel://, or rediss:// to one Redis)",
                bad()
            ));
        }
        let (rest, tls) = match (v.strip_prefix("redis://"), v.strip_prefix("rediss://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err(bad()),
        };
        let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
        let host_port = authority.rsplit('@').next().unwrap_or("");
        let db_ok = db.is_empty() || db.parse::<u16>().is_ok();
        if host_and_port(host_port).is_none() || !db_ok {
            return Err(bad());
        }
        // What the Redis client will make of it, checked now rather than at start-up.
        redis::IntoConnectionInfo::into_connection_info(v)
            .map_err(|e| format!("{}: {e}", bad()))?;
        Ok(RedisUrl {
            text: v.to_string(),
            place: Place::Direct { tls },
        })
    }

    /// The URL for the Redis client, password included (`redis://` and `rediss://` only).
    pub fn expose(&self) -> &str {
        &self.text
    }

    pub fn place(&self) -> &Place {
        &self.place
    }

    /// Whether Redis is reached over TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        self.place == Place::Direct { tls: true }
    }

    /// The URL for logs and `/healthz`: any password is left out.
    pub fn shown(&self) -> String {
        shown(&self.text)
    }
}

/// `HOST[:PORT]` or `[V6]:PORT` taken apart; the port `None` when not given. `None` when
/// either part is malformed.
fn host_and_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = crate::base::host::split_host_port(text)?;
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|n| *n > 0)?),
        None => None,
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
    host_ok.then_some((host, port))
}

/// What follows `redis+sentinel://`.
fn parse_sentinels(rest: &str) -> Result<Sentinels, String> {
    let (authority, path) = rest
        .split_once('/')
        .ok_or("no master name after the sentinels")?;
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, authority),
    };
    let (username, password) = match credentials {
        None => (None, None),
        Some(c) => {
            let (user, password) = c.split_once(':').unwrap_or(("", c));
            let user = (!user.is_empty())
                .then(|| percent_decoded(user))
                .transpose()?;
            (user, Some(percent_decoded(password)?))
        }
    };
    let mut sentinels = Vec::new();
    for one in hosts.split(',') {
        let (host, port) =
            host_and_port(one).ok_or_else(|| format!("{one:?} is not a sentinel's HOST:PORT"))?;
        let port = port.unwrap_or(SENTINEL_PORT);
        sentinels.push(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        });
    }
    let (master, db) = path.split_once('/').unwrap_or((path, ""));
    let name_ok = |c: char| c.is_ascii_alphanumeric() || "._-:".contains(c);
    if master.is_empty() || !master.chars().all(name_ok) {
        return Err(format!("{master:?} is not a master name"));
    }
    let db = match db {
        "" => 0,
        db => i64::from(
            db.parse::<u16>()
                .map_err(|_| format!("{db:?} is not a database number"))?,
        ),
    };
    Ok(Sentinels {
        sentinels,
        master: master.to_string(),
        db,
        username,
        password,
    })
}

/// `%XX` escapes decoded, as in a `redis://` URL's password.
fn percent_decoded(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a bad %-escape in the password")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the password is not UTF-8".to_string())
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
            "rediss://r.example:6380/1",
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
            "redis://h:6379 ",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        let url = RedisUrl::parse("redis://user:pa55@h:6379/1").unwrap();
        assert_eq!(url.shown(), "redis://…@h:6379/1");
        assert!(!format!("{url:?}").contains("pa55"));
        assert!(!url.tls());
        let tls = RedisUrl::parse("rediss://:pw@h:6380").unwrap();
        assert!(tls.tls());
        assert_eq!(tls.shown(), "rediss://…@h:6380");
    }

    #[test]
    fn sentinel_urls() {
        let url =
            RedisUrl::parse("redis+sentinel://:p%40ss@10.0.0.1:26379,s2,[::1]:26380/fx-master/3")
                .unwrap();
        let Place::Sentinel(s) = url.place() else {
            panic!("{url:?}")
        };
        assert_eq!(s.sentinels, ["10.0.0.1:26379", "s2:26379", "[::1]:26380"]);
        assert_eq!((s.master.as_str(), s.db), ("fx-master", 3));
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (None, Some("p@ss"))
        );
        assert_eq!(
            url.shown(),
            "redis+sentinel://…@10.0.0.1:26379,s2,[::1]:26380/fx-master/3"
        );
        assert!(!format!("{url:?} {s:?}").contains("p%40ss"));
        let plain = RedisUrl::parse("redis+sentinel://a:1,b:2,c:3/m").unwrap();
        let Place::Sentinel(s) = plain.place() else {
            panic!()
        };
        assert_eq!((s.db, s.password.as_ref()), (0, None));
        for (bad, why) in [
            ("redis+sentinel://a:1,b:2", "no master name"),
            ("redis+sentinel://a:1,,b:2/m", "not a sentinel's HOST:PORT"),
            ("redis+sentinel://a:0/m", "not a sentinel's HOST:PORT"),
            ("redis+sentinel://a:1/", "not a master name"),
            ("redis+sentinel://a:1/m/x", "not a database number"),
            ("redis+sentinel://:%4@a:1/m", "bad %-escape"),
            (
                "rediss+sentinel://a:1/m",
                "TLS to the sentinels is not supported",
            ),
        ] {
            let e = RedisUrl::parse(bad).unwrap_err();
            assert!(
                e.contains(why) && e.contains("redis+sentinel://"),
                "{bad}: {e}"
            );
        }
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
