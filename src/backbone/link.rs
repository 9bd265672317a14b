//! One Redis connection of one backbone thread: made on demand, dropped on any failure and made
//! again with back-off, its state shown in `/healthz` and `/metrics`. Every read has a timeout,
//! so a thread blocked on Redis comes back to look at the stop signal.

use super::status::{LinkKind, Status};
use crate::base::backoff::Backoff;
use crate::base::metrics::Metrics;
use crate::base::ratelimit::RateLimited;
use crate::base::stop::Stop;
use log::{info, warn};
use redis::{Connection, RedisError, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// How long connecting to Redis may take. Redis is near (a LAN at most): longer means it is
/// not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a command may take beyond any blocking it asked for.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Short, so that quotes resume within a second of Redis being reachable again; two attempts
/// a second per thread cost a Redis that is down nothing.
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Where Redis is and how to log in. The redis crate would send `AUTH`, `SELECT` and its
/// `CLIENT SETINFO` lines while connecting, before any read timeout can be set, and wait for
/// their answers for ever on a Redis that accepts but does not answer; so they are kept out of
/// its hands and sent here, after the timeouts are set.
#[derive(Clone)]
pub struct Target {
    client: redis::Client,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl Target {
    pub fn new(url: &str) -> redis::RedisResult<Target> {
        use redis::IntoConnectionInfo;
        let mut info = url.into_connection_info()?;
        let username = info.redis.username.take();
        let password = info.redis.password.take();
        let db = std::mem::take(&mut info.redis.db);
        Ok(Target {
            client: redis::Client::open(info)?,
            username,
            password,
            db,
        })
    }
}

pub struct Link {
    kind: LinkKind,
    target: Target,
    con: Option<Connection>,
    /// Read timeout: [`COMMAND_TIMEOUT`] plus the longest block this link asks Redis for.
    read_timeout: Duration,
    backoff: Backoff,
    /// Set by a failed command: wait this long before connecting again, so a command that
    /// keeps failing on a healthy connection is not retried in a tight loop.
    pause: Option<Duration>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    complaints: RateLimited,
}

impl Link {
    pub fn new(
        kind: LinkKind,
        target: &Target,
        block: Duration,
        status: &Arc<Status>,
        metrics: &Arc<Metrics>,
    ) -> Link {
        Link {
            kind,
            target: target.clone(),
            con: None,
            read_timeout: COMMAND_TIMEOUT + block,
            backoff: Backoff::new(
                BACKOFF_MIN,
                BACKOFF_MAX,
                crate::base::clock::now_ms() + kind as u64,
            ),
            pause: None,
            status: Arc::clone(status),
            metrics: Arc::clone(metrics),
            complaints: RateLimited::new(Duration::from_secs(30)),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.con.is_some()
    }

    /// The connection, made first if need be, waiting between attempts with back-off; `None`
    /// once `stop` is set.
    pub fn get(&mut self, stop: &Stop) -> Option<&mut Connection> {
        while self.con.is_none() {
            if let Some(pause) = self.pause.take() {
                if stop.wait(pause) {
                    return None;
                }
            }
            if stop.is_set() {
                return None;
            }
            match self.connect() {
                Ok(con) => {
                    self.status.link_up(self.kind, self.metrics.now_ms());
                    info!(
                        "backbone {}: {} connection up",
                        self.status.shown_url,
                        self.kind.name()
                    );
                    self.con = Some(con);
                }
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    self.note_failure(&e, Some(delay));
                    if stop.wait(delay) {
                        return None;
                    }
                }
            }
        }
        self.con.as_mut()
    }

    fn connect(&self) -> Result<Connection, RedisError> {
        let target = &self.target;
        let mut con = target.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(self.read_timeout))?;
        con.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        if let Some(password) = &target.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &target.username {
                auth.arg(user);
            }
            auth.arg(password).query::<()>(&mut con)?;
        }
        if target.db != 0 {
            redis::cmd("SELECT").arg(target.db).query::<()>(&mut con)?;
        }
        Ok(con)
    }

    /// A command failed: the connection is dropped (a reply may be half read) and made again
    /// on the next [`Link::get`], after a pause that grows while failures go on.
    pub fn failed(&mut self, e: &RedisError) {
        self.con = None;
        let pause = self.backoff.next_delay();
        self.pause = Some(pause);
        self.note_failure(e, Some(pause));
    }

    /// A command succeeded: the next failure starts the back-off from its start again.
    pub fn ok(&mut self) {
        self.backoff.reset();
    }

    fn note_failure(&mut self, e: &RedisError, retry_in: Option<Duration>) {
        let why = describe(e);
        let was_up = self.status.link_is_up(self.kind);
        self.status
            .link_down(self.kind, self.metrics.now_ms(), &why);
        self.status.reconnects.fetch_add(1, Relaxed);
        let then = match retry_in {
            Some(d) => format!("retrying in {:.1} s", d.as_secs_f64()),
            None => "reconnecting".to_string(),
        };
        let (url, link) = (&self.status.shown_url, self.kind.name());
        if was_up {
            warn!("backbone {url}: {link} connection lost: {why}; {then}");
        } else {
            self.complaints.note(|n| {
                warn!(
                    "backbone {url}: {link} connection failed ({n} time(s) lately): {why}; {then}"
                )
            });
        }
    }
}

/// A Redis error as the log and `/healthz` say it.
pub fn describe(e: &RedisError) -> String {
    let text = e.to_string();
    // The crate's I/O errors read "Connection refused (os error 111)"; keep them short.
    text.trim_start_matches("An error was signalled by the server - ")
        .to_string()
}

/// A bulk or simple string reply as text.
pub fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// `TOKEN SEQ`, as entries and the snapshot carry them.
pub fn parse_pair(text: &str) -> Option<(u64, u64)> {
    let (a, b) = text.split_once(' ')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A stream id `MS-SEQ` as two numbers, to compare and to measure lag by.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (a, b) = id.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_and_pairs() {
        assert_eq!(parse_id("1700000000123-4"), Some((1_700_000_000_123, 4)));
        assert_eq!(parse_id("0-0"), Some((0, 0)));
        assert_eq!(parse_id("x"), None);
        assert_eq!(parse_pair("17 3"), Some((17, 3)));
        assert_eq!(parse_pair("17"), None);
        assert_eq!(text(&Value::BulkString(b"ab".to_vec())), Some("ab"));
        assert_eq!(text(&Value::Nil), None);
    }
}
