//! One Redis connection of one backbone thread: made on demand, dropped on any failure and made
//! again with back-off, its state shown in `/healthz` and `/metrics`. Every read has a timeout,
//! so a thread blocked on Redis comes back to look at the stop signal.
//!
//! Redis is reached directly (`redis://`, `rediss://` over TLS), or through Redis Sentinel
//! (`redis+sentinel://`): then each connection asks the sentinels, in turn, which server is the
//! master now, and checks with `ROLE` that the server says so too, as the Sentinel client
//! guidelines ask. Every failure makes the connection again, so after a failover the next one
//! goes to the new master. redis-rs's own Sentinel client is not used: it connects to the
//! sentinels and the master with no timeout at all, so one that is cut off (not refusing,
//! silent) would hold a backbone thread, and shutdown, for ever.

use super::status::{LinkKind, Status};
use crate::base::backoff::Backoff;
use crate::base::metrics::Metrics;
use crate::base::ratelimit::RateLimited;
use crate::base::stop::Stop;
use crate::config::backbone::{Place, RedisUrl, Sentinels};
use log::{info, warn};
use parking_lot::Mutex;
use redis::{Client, Connection, ConnectionAddr, ConnectionInfo, RedisError, Value};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// How long connecting to Redis may take. Redis is near (a LAN at most): longer means it is
/// not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a command may take beyond any blocking it asked for.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Short, so that quotes resume within a second of Redis (or a new master) being reachable
/// again; two attempts a second per thread cost a Redis that is down nothing.
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Where Redis is and how to log in. The redis crate would send `AUTH`, `SELECT` and its
/// `CLIENT SETINFO` lines while connecting, before any read timeout can be set, and wait for
/// their answers for ever on a Redis that accepts but does not answer; so they are kept out of
/// its hands and sent here, after the timeouts are set.
#[derive(Clone)]
pub struct Target {
    place: Found,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

#[derive(Clone)]
enum Found {
    /// One Redis (the client carries the TLS settings for `rediss://`).
    Direct(Client),
    /// The master the sentinels name.
    Sentinel(Arc<Watch>),
}

/// The sentinels of one master, shared by the backbone threads: the one that answered last is
/// asked first, and a new master is logged once, not by each thread.
struct Watch {
    sentinels: Mutex<Vec<String>>,
    master: String,
    last_seen: Mutex<String>,
}

impl Target {
    /// `ca`: for `rediss://`, the CA certificate(s) (PEM) Redis's certificate must chain to;
    /// `None` trusts the web PKI roots bundled in the binary.
    pub fn new(url: &RedisUrl, ca: Option<Vec<u8>>) -> redis::RedisResult<Target> {
        use redis::IntoConnectionInfo;
        match url.place() {
            Place::Direct { .. } => {
                let mut info = url.expose().into_connection_info()?;
                let username = info.redis.username.take();
                let password = info.redis.password.take();
                let db = std::mem::take(&mut info.redis.db);
                let client = match ca {
                    Some(pem) => Client::build_with_tls(
                        info,
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(pem),
                        },
                    )?,
                    None => Client::open(info)?,
                };
                Ok(Target {
                    place: Found::Direct(client),
                    username,
                    password,
                    db,
                })
            }
            Place::Sentinel(Sentinels {
                sentinels,
                master,
                db,
                username,
                password,
            }) => Ok(Target {
                place: Found::Sentinel(Arc::new(Watch {
                    sentinels: Mutex::new(sentinels.clone()),
                    master: master.clone(),
                    last_seen: Mutex::new(String::new()),
                })),
                username: username.clone(),
                password: password.clone(),
                db: *db,
            }),
        }
    }

    /// A connection ready for commands: timeouts set, logged in, its database selected, and
    /// Redis seen to answer (for a master found through the sentinels: to say it is one).
    fn connect(&self, read_timeout: Duration) -> Result<Connection, RedisError> {
        let client = match &self.place {
            Found::Direct(client) => client.clone(),
            Found::Sentinel(watch) => {
                let (host, port) = watch.find_master(self.password.as_deref())?;
                plain_client(host, port)?
            }
        };
        let mut con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(read_timeout))?;
        con.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        if let Some(password) = &self.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &self.username {
                auth.arg(user);
            }
            auth.arg(password).query::<()>(&mut con)?;
        }
        if self.db != 0 {
            redis::cmd("SELECT").arg(self.db).query::<()>(&mut con)?;
        }
        match &self.place {
            // Over TLS the handshake happens here: an untrusted certificate fails now, not
            // at the first real command.
            Found::Direct(_) => redis::cmd("PING").query::<()>(&mut con)?,
            Found::Sentinel(watch) => {
                let role: Value = redis::cmd("ROLE").query(&mut con)?;
                let said = match &role {
                    Value::Array(items) => items.first().and_then(text),
                    _ => None,
                };
                if said != Some("master") {
                    return Err(io_error(format!(
                        "the server the sentinels name as master {} says it is {} (a failover under way?)",
                        watch.master,
                        said.unwrap_or("something else")
                    )));
                }
            }
        }
        Ok(con)
    }
}

impl Watch {
    /// Asks each sentinel in turn where the master is; the first that knows is asked first
    /// next time.
    fn find_master(&self, password: Option<&str>) -> Result<(String, u16), RedisError> {
        let order = self.sentinels.lock().clone();
        let mut failures = Vec::new();
        for (i, sentinel) in order.iter().enumerate() {
            match self.ask(sentinel, password) {
                Ok(Some((host, port))) => {
                    if i > 0 {
                        let mut sentinels = self.sentinels.lock();
                        sentinels.retain(|s| s != sentinel);
                        sentinels.insert(0, sentinel.clone());
                    }
                    let at = format!("{host}:{port}");
                    let mut last = self.last_seen.lock();
                    if *last != at {
                        info!(
                            "backbone: the sentinels name {at} as master {}{}",
                            self.master,
                            if last.is_empty() {
                                String::new()
                            } else {
                                format!(" (was {last})")
                            }
                        );
                        *last = at;
                    }
                    return Ok((host, port));
                }
                Ok(None) => failures.push(format!("{sentinel}: knows no master {}", self.master)),
                Err(e) => failures.push(format!("{sentinel}: {}", describe(&e))),
            }
        }
        Err(io_error(format!(
            "no sentinel named the master: {}",
            failures.join("; ")
        )))
    }

    fn ask(
        &self,
        sentinel: &str,
        password: Option<&str>,
    ) -> Result<Option<(String, u16)>, RedisError> {
        let (host, port) = sentinel
            .rsplit_once(':')
            .and_then(|(h, p)| {
                Some((
                    h.trim_start_matches('[').trim_end_matches(']'),
                    p.parse().ok()?,
                ))
            })
            .ok_or_else(|| io_error(format!("{sentinel} is not HOST:PORT")))?;
        let mut con =
            plain_client(host.to_string(), port)?.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        con.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        let mut ask = redis::cmd("SENTINEL");
        ask.arg("get-master-addr-by-name").arg(&self.master);
        match ask.query(&mut con) {
            // A sentinel with a password of its own: deployments often give it Redis's.
            Err(e) if e.code() == Some("NOAUTH") && password.is_some() => {
                redis::cmd("AUTH").arg(password).query::<()>(&mut con)?;
                ask.query(&mut con)
            }
            answer => answer,
        }
    }
}

fn plain_client(host: String, port: u16) -> redis::RedisResult<Client> {
    Client::open(ConnectionInfo {
        addr: ConnectionAddr::Tcp(host, port),
        redis: Default::default(),
    })
}

fn io_error(message: String) -> RedisError {
    RedisError::from(io::Error::new(io::ErrorKind::Other, message))
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
        self.target.connect(self.read_timeout)
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
