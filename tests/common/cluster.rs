//! Helpers for tests of several instances on a Redis backbone: a real `redis-server` on a
//! loopback port (plain or TLS, crashed and restarted, restored from an older copy), a Redis
//! Sentinel set-up (a master, a replica, three sentinels), a source that refuses a second
//! connection per key (as providers do), and subscribers that record every frame number they
//! receive.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use super::process::{poll, prerequisites_met, temp_dir, write_keys, Proxy};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tungstenite::Message;

/// The provider key every test instance sends upstream.
pub const PROVIDER_KEY: &str = "provider-key-0123456789";
/// The client key every test subscriber uses.
pub const CLIENT_KEY: &str = "client-key-0123456789";

/// Whether `redis-server` is installed; skips (or fails under CI) with a message if not.
pub fn redis_available(test: &str) -> bool {
    let missing = if super::process::command_succeeds("redis-server", &["--version"]) {
        vec![]
    } else {
        vec!["redis-server (apt-get install redis-server)".to_string()]
    };
    prerequisites_met(test, &missing)
}

/// A `redis-server` on a loopback port with its files in a scratch directory; killed on drop.
pub struct RedisServer {
    /// The plain port, for the tests' own commands (and the proxies, unless TLS is tested).
    pub port: u16,
    dir: PathBuf,
    /// Options beyond the port and the files: TLS, replication.
    extra: Vec<String>,
    child: Option<Child>,
}

/// A free loopback port. redis-server cannot take port 0, so one is found by binding
/// 127.0.0.1:0 and letting it go; the caller tries another should a process take it meanwhile.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl RedisServer {
    /// Starts one.
    pub fn start(dir: &Path) -> RedisServer {
        RedisServer::start_with(dir, &[])
    }

    /// Starts one with more options (`--tls-port`, `--replicaof`, ...); `{port}` in them is
    /// replaced by a second free port.
    pub fn start_with(dir: &Path, extra: &[&str]) -> RedisServer {
        for _ in 0..20 {
            let (port, other) = (free_port(), free_port());
            let extra: Vec<String> = extra
                .iter()
                .map(|e| e.replace("{port}", &other.to_string()))
                .collect();
            if let Some(child) = spawn_redis(port, dir, &extra) {
                return RedisServer {
                    port,
                    dir: dir.to_path_buf(),
                    extra,
                    child: Some(child),
                };
            }
        }
        panic!(
            "redis-server did not start on any of 20 ports; see {}",
            dir.display()
        );
    }

    /// The value of one of the options it was started with (`--tls-port` → the port).
    pub fn option(&self, name: &str) -> Option<&str> {
        let at = self.extra.iter().position(|e| e == name)?;
        self.extra.get(at + 1).map(String::as_str)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Runs one command and returns its reply, flattened to its strings and numbers.
    pub fn command(&self, args: &[&str]) -> Vec<String> {
        redis_command(self.addr(), args).expect("a reply from redis-server")
    }

    /// Stops Redis as an operator would (`SHUTDOWN SAVE`: its data is written to disk first).
    pub fn shutdown(&mut self) {
        let _ = redis_command(self.addr(), &["SHUTDOWN", "SAVE"]);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Kills it (`kill -9`): nothing is saved.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Writes its data to disk now (`SAVE`): the copy a later [`RedisServer::restart`] loads.
    pub fn save(&self) {
        assert_eq!(self.command(&["SAVE"]), ["OK"]);
    }

    /// The copy [`RedisServer::save`] wrote is thrown away: it starts again empty.
    pub fn forget_saved(&self) {
        let _ = std::fs::remove_file(self.dir.join(rdb_file(self.port)));
    }

    /// Starts it again on the same port and directory (so with the data it saved).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "shut it down first");
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Some(child) = spawn_redis(self.port, &self.dir, &self.extra) {
                self.child = Some(child);
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start again on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Each server's own RDB file, so that servers sharing a directory keep their copies apart.
fn rdb_file(port: u16) -> String {
    format!("dump-{port}.rdb")
}

/// Starts redis-server on `port`; `None` if it exits (the port was taken) or never answers.
/// `DEBUG SLEEP` is allowed from loopback: it plays a Redis that stalls (a fork, an fsync).
fn spawn_redis(port: u16, dir: &Path, extra: &[String]) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--enable-debug-command", "local"])
        .args(["--dbfilename", &rdb_file(port)])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join(format!("redis-{port}.log")))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting redis-server");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ready = poll(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
            || redis_command(addr, &["PING"]).is_ok_and(|r| r == ["PONG"])
    });
    if ready && child.try_wait().ok().flatten().is_none() {
        Some(child)
    } else {
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

/// One command in RESP; the reply flattened to its strings and numbers (nil as "(nil)").
pub fn redis_command(addr: SocketAddr, args: &[&str]) -> std::io::Result<Vec<String>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(s);
    let mut out = Vec::new();
    read_reply(&mut reader, &mut out)?;
    Ok(out)
}

fn read_reply(r: &mut impl BufRead, out: &mut Vec<String>) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed"));
    }
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | ":" => out.push(rest.to_string()),
        "-" => return Err(bad(rest)),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad("length"))?;
            if n < 0 {
                out.push("(nil)".into());
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                out.push(String::from_utf8_lossy(&buf).into_owned());
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad("count"))?;
            for _ in 0..n.max(0) {
                read_reply(r, out)?;
            }
        }
        _ => return Err(bad("unknown reply type")),
    }
    Ok(())
}

/// The name the sentinels of [`SentinelSet`] know the master by.
pub const MASTER_NAME: &str = "fxmaster";

/// Redis's own high availability on loopback: a master, a replica of it, and three sentinels
/// watching them that fail over one second after the master stops answering.
pub struct SentinelSet {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinel_ports: Vec<u16>,
    sentinels: Vec<Child>,
}

impl SentinelSet {
    /// Starts them and waits until the sentinels know the replica and each other, so that a
    /// failover can happen.
    pub fn start(dir: &Path) -> SentinelSet {
        let master = RedisServer::start(dir);
        let replica =
            RedisServer::start_with(dir, &["--replicaof", "127.0.0.1", &master.port.to_string()]);
        let mut set = SentinelSet {
            master,
            replica,
            sentinel_ports: Vec::new(),
            sentinels: Vec::new(),
        };
        while set.sentinels.len() < 3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\nlogfile {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 10000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir.display(),
                    dir.join(format!("sentinel-{port}.log")).display(),
                    set.master.port
                ),
            )
            .expect("writing a sentinel's config");
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting redis-server --sentinel");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let up = poll(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || redis_command(addr, &["PING"]).is_ok_and(|r| r == ["PONG"])
            });
            if up && child.try_wait().ok().flatten().is_none() {
                set.sentinels.push(child);
                set.sentinel_ports.push(port);
            } else {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let ready = poll(Duration::from_secs(30), || {
            set.replica
                .command(&["INFO", "replication"])
                .concat()
                .contains("master_link_status:up")
                && set.sentinel_ports.iter().all(|p| {
                    let facts = redis_command(
                        SocketAddr::from(([127, 0, 0, 1], *p)),
                        &["SENTINEL", "MASTER", MASTER_NAME],
                    )
                    .unwrap_or_default();
                    let fact = |name: &str| {
                        facts
                            .iter()
                            .position(|f| f == name)
                            .and_then(|i| facts.get(i + 1).cloned())
                    };
                    fact("num-slaves").as_deref() == Some("1")
                        && fact("num-other-sentinels").as_deref() == Some("2")
                })
        });
        assert!(
            ready,
            "the sentinels did not come to know the replica and each other; see {}",
            dir.display()
        );
        set
    }

    /// `redis+sentinel://` with the three sentinels and the master's name.
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", sentinels.join(","))
    }

    /// Where the sentinels say the master is now.
    pub fn master_addr(&self) -> Option<SocketAddr> {
        self.sentinel_ports.iter().find_map(|p| {
            let reply = redis_command(
                SocketAddr::from(([127, 0, 0, 1], *p)),
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
            )
            .ok()?;
            format!("{}:{}", reply.first()?, reply.get(1)?).parse().ok()
        })
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for child in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The frame numbers (`"n"`) of every frame in a backbone's stream, in stream order.
pub fn stream_numbers(redis: &RedisServer, name: &str) -> Vec<u64> {
    stream_numbers_at(redis.addr(), name)
}

/// As [`stream_numbers`], of the Redis at `addr`.
pub fn stream_numbers_at(addr: SocketAddr, name: &str) -> Vec<u64> {
    redis_command(addr, &["XRANGE", &format!("{name}:stream"), "-", "+"])
        .expect("a reply from redis-server")
        .iter()
        .filter_map(|s| frame_number(s))
        .collect()
}

/// The fencing token in a backbone's lock (`TOKEN INSTANCE`) on the Redis at `addr`; 0 when
/// nobody holds it.
pub fn lock_token(addr: SocketAddr, name: &str) -> u64 {
    redis_command(addr, &["GET", &format!("{name}:lock")])
        .ok()
        .and_then(|r| r.first()?.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// A source speaking the upstream protocol that allows one connection per provider key, as
/// providers do: a second gets `User Key Used to many times` and is closed. Quotes are numbered
/// by one counter across connections, so the numbers say what was sent when.
pub struct Source {
    pub addr: SocketAddr,
    next: Arc<AtomicU64>,
    paused: Arc<AtomicBool>,
    /// How long a connection that ended still counts against its key, in ms.
    linger_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<SourceState>>,
}

#[derive(Default)]
struct SourceState {
    /// Provider keys with a connection open.
    open: HashMap<String, usize>,
    /// When each subscription was accepted.
    accepted: Vec<Instant>,
    refused: usize,
    /// The most connections open at once for one key.
    most_at_once: usize,
}

impl Source {
    /// Starts the source sending one quote every `every` on each accepted connection.
    pub fn start(every: Duration) -> Source {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let source = Source {
            addr,
            next: Arc::new(AtomicU64::new(1)),
            paused: Arc::new(AtomicBool::new(false)),
            linger_ms: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            state: Arc::new(Mutex::new(SourceState::default())),
        };
        let (next, paused, stop, state) = (
            Arc::clone(&source.next),
            Arc::clone(&source.paused),
            Arc::clone(&source.stop),
            Arc::clone(&source.state),
        );
        let linger = Arc::clone(&source.linger_ms);
        thread::Builder::new()
            .name("source-accept".into())
            .spawn(move || {
                listener.set_nonblocking(true).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (next, paused, stop, state, linger) = (
                                Arc::clone(&next),
                                Arc::clone(&paused),
                                Arc::clone(&stop),
                                Arc::clone(&state),
                                Arc::clone(&linger),
                            );
                            thread::Builder::new()
                                .name("source-conn".into())
                                .spawn(move || {
                                    let key = serve(stream, every, &next, &paused, &stop, &state);
                                    if let Some(key) = key {
                                        // A provider that has not noticed yet: the key stays
                                        // in use a while.
                                        let ms = linger.load(Ordering::SeqCst);
                                        thread::sleep(Duration::from_millis(ms));
                                        let mut s = state.lock().unwrap();
                                        if let Some(open) = s.open.get_mut(&key) {
                                            *open -= 1;
                                        }
                                    }
                                })
                                .unwrap();
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .unwrap();
        source
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Subscriptions accepted so far (refusals not counted).
    pub fn subscriptions(&self) -> usize {
        self.state.lock().unwrap().accepted.len()
    }

    pub fn accepted_at(&self, i: usize) -> Option<Instant> {
        self.state.lock().unwrap().accepted.get(i).copied()
    }

    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }

    pub fn most_at_once(&self) -> usize {
        self.state.lock().unwrap().most_at_once
    }

    /// The number the next quote will carry.
    pub fn next_number(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Stops or resumes sending (connections stay open).
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// A connection that ends goes on counting against its key for `d`, as at a provider that
    /// notices a vanished client only at its own timeout.
    pub fn linger(&self, d: Duration) {
        self.linger_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Serves one connection; the key it held, once it ends (`None`: it never held one).
fn serve(
    stream: TcpStream,
    every: Duration,
    next: &AtomicU64,
    paused: &AtomicBool,
    stop: &AtomicBool,
    state: &Mutex<SourceState>,
) -> Option<String> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut ws = tungstenite::accept(stream).ok()?;
    ws.send(Message::text("Connected")).ok()?;
    let Ok(Message::Text(sub)) = ws.read() else {
        return None;
    };
    let key = serde_json::from_str::<serde_json::Value>(sub.as_str())
        .ok()
        .and_then(|v| v["userKey"].as_str().map(str::to_string))
        .unwrap_or_default();
    {
        let mut s = state.lock().unwrap();
        let open = s.open.entry(key.clone()).or_insert(0);
        if *open > 0 {
            s.refused += 1;
            drop(s);
            let _ = ws.send(Message::text("User Key Used to many times"));
            let _ = ws.close(None);
            let _ = ws.flush();
            return None;
        }
        *open += 1;
        let now_open = *open;
        s.most_at_once = s.most_at_once.max(now_open);
        s.accepted.push(Instant::now());
    }
    let mut due = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        // Wait for the proxy's frames until the next quote is due.
        let wait = due
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let _ = ws.get_mut().set_read_timeout(Some(wait));
        // Every quote that is due, so that thousands a second keep their pace.
        let mut failed = false;
        while !failed && Instant::now() >= due {
            due += every;
            if !paused.load(Ordering::SeqCst) {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let quote = format!(
                    r#"{{"symbol":"EURUSD","n":{n},"bid":1.08{:03},"ask":1.08{:03}}}"#,
                    n % 1000,
                    (n + 2) % 1000
                );
                failed = ws.write(Message::text(quote)).is_err();
            }
        }
        if failed || ws.flush().is_err() {
            break;
        }
        // Between quotes: answer pings, notice the proxy closing or going away.
        match ws.read() {
            Ok(Message::Close(_)) => {
                let _ = ws.flush();
                break;
            }
            Ok(_) => {}
            Err(e) if super::read_timed_out(&e) => {}
            Err(_) => break,
        }
    }
    Some(key)
}

/// The `"n"` of a quote frame.
pub fn frame_number(frame: &str) -> Option<u64> {
    let rest = &frame[frame.find("\"n\":")? + 4..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// How a subscriber's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Stopped,
    Closed(String),
}

/// A client on one instance, reading on its own thread and recording each frame's number.
pub struct Subscriber {
    pub name: String,
    numbers: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Ended>>,
}

impl Subscriber {
    /// Connects to `addr` (directly, or through a balancer), authenticates, and records.
    pub fn start(name: &str, addr: SocketAddr) -> Subscriber {
        Subscriber::start_with(name, addr, None)
    }

    /// As [`Subscriber::start`], from a chosen loopback source address (a balancer's log can
    /// then tell this client from itself).
    pub fn start_with(name: &str, addr: SocketAddr, from: Option<[u8; 4]>) -> Subscriber {
        let stream = connect_from(addr, from);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream)
            .unwrap_or_else(|e| panic!("{name}: WebSocket handshake with {addr} failed: {e}"));
        ws.send(Message::text(format!(r#"{{"userKey":"{CLIENT_KEY}"}}"#)))
            .unwrap();
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let numbers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, halt) = (Arc::clone(&numbers), Arc::clone(&stop));
        let reader = thread::Builder::new()
            .name(format!("sub-{name}"))
            .spawn(move || loop {
                if halt.load(Ordering::SeqCst) {
                    let _ = ws.close(None);
                    let _ = ws.flush();
                    return Ended::Stopped;
                }
                match ws.read() {
                    Ok(Message::Text(t)) => {
                        if let Some(n) = frame_number(t.as_str()) {
                            sink.lock().unwrap().push(n);
                        }
                    }
                    Ok(Message::Close(f)) => {
                        return Ended::Closed(format!("close frame {f:?}"));
                    }
                    Ok(_) => {}
                    Err(e) if super::read_timed_out(&e) => {}
                    Err(e) => return Ended::Closed(e.to_string()),
                }
            })
            .unwrap();
        Subscriber {
            name: name.to_string(),
            numbers,
            stop,
            reader: Some(reader),
        }
    }

    pub fn numbers(&self) -> Vec<u64> {
        self.numbers.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.numbers.lock().unwrap().len()
    }

    pub fn last(&self) -> Option<u64> {
        self.numbers.lock().unwrap().last().copied()
    }

    /// Whether the reader has ended (its connection closed).
    pub fn ended(&self) -> bool {
        self.reader.as_ref().is_some_and(|r| r.is_finished())
    }

    /// Waits until it has received a frame numbered `n` or higher.
    pub fn wait_past(&self, n: u64, deadline: Duration) -> bool {
        poll(deadline, || self.last().is_some_and(|l| l >= n))
    }

    /// Stops reading; returns what it received and how it ended.
    pub fn finish(mut self) -> (Vec<u64>, Ended) {
        self.stop.store(true, Ordering::SeqCst);
        let ended = self
            .reader
            .take()
            .map(|r| r.join().expect("subscriber thread"))
            .unwrap_or(Ended::Stopped);
        (self.numbers(), ended)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn connect_from(addr: SocketAddr, from: Option<[u8; 4]>) -> TcpStream {
    match from {
        None => TcpStream::connect(addr).unwrap(),
        Some(ip) => {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
            socket.connect(&addr.into()).unwrap();
            socket.into()
        }
    }
}

/// Fails unless `numbers` only ever go up: nothing twice, nothing out of order.
pub fn assert_increasing(who: &str, numbers: &[u64]) {
    for w in numbers.windows(2) {
        assert!(
            w[1] > w[0],
            "{who}: frame {} after {} (a duplicate or out of order) in {numbers:?}",
            w[1],
            w[0]
        );
    }
}

/// Fails unless `numbers` go up by exactly one: nothing twice, nothing missed.
pub fn assert_consecutive(who: &str, numbers: &[u64]) {
    for w in numbers.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "{who}: frame {} after {} in {numbers:?}",
            w[1],
            w[0]
        );
    }
}

/// Fails unless every sequence holds the same frames, in the same order, over the span all
/// of them cover.
pub fn assert_same_frames(sequences: &[(String, Vec<u64>)]) {
    let start = sequences
        .iter()
        .filter_map(|(_, s)| s.first().copied())
        .max()
        .expect("frames");
    let end = sequences
        .iter()
        .filter_map(|(_, s)| s.last().copied())
        .min()
        .expect("frames");
    assert!(end > start, "no common span: {start}..{end}");
    let window = |s: &[u64]| -> Vec<u64> {
        s.iter()
            .copied()
            .filter(|n| (start..=end).contains(n))
            .collect()
    };
    let (first_name, first) = &sequences[0];
    let reference = window(first);
    for (name, s) in &sequences[1..] {
        assert_eq!(
            window(s),
            reference,
            "{name} and {first_name} received different frames between {start} and {end}"
        );
    }
}

/// proxy.conf text for an instance of the backbone `name` on `redis`, fed by `source`. A key
/// in `extra` replaces the line of the same key here.
pub fn instance_config(source: &str, redis: &str, name: &str, keys: &Path, extra: &str) -> String {
    let base = format!(
        "upstream_url = {source}\nupstream_api_key = {PROVIDER_KEY}\nsymbols = EURUSD\n\
         user_keys_file = {}\nbackbone = {redis}\nbackbone_name = {name}\n\
         market_hours = always\nstatus_interval_secs = 0\nupstream_backoff_min_ms = 100\n\
         upstream_backoff_max_secs = 1\nlog_level = info\n",
        keys.display()
    );
    let key_of = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    let replaced: Vec<String> = extra.lines().map(key_of).collect();
    let kept: String = base
        .lines()
        .filter(|l| !replaced.contains(&key_of(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    format!("{kept}{extra}")
}

/// A series from an instance's `/metrics`.
pub fn gauge(proxy: &Proxy, series: &str) -> f64 {
    super::metric_of(proxy.addr, series)
}

/// Which of `instances` holds the lock, once exactly one does.
pub fn wait_for_holder(instances: &[&Proxy]) -> usize {
    let mut holder = None;
    let found = poll(Duration::from_secs(10), || {
        let held: Vec<usize> = instances
            .iter()
            .enumerate()
            .filter(|(_, p)| gauge(p, "fxproxy_backbone_lock_held") == 1.0)
            .map(|(i, _)| i)
            .collect();
        holder = held.first().copied();
        held.len() == 1
    });
    assert!(found, "no single instance took the lock");
    holder.expect("a holder")
}

/// Counts a proxy's log lines containing `needle`.
pub fn log_count(proxy: &Proxy, needle: &str) -> usize {
    proxy.stderr_text().matches(needle).count()
}

/// Quotes from the test source: 50 a second.
pub const EVERY: Duration = Duration::from_millis(20);
/// How long clients may take to see a given frame; generous, the machine is shared.
pub const SEE_WITHIN: Duration = Duration::from_secs(15);

/// What every backbone test starts from: Redis with its files in a scratch directory, a key
/// file with the client key, and a source of numbered frames. None when `redis-server` is
/// missing (the test is skipped, except under CI, where that fails).
pub struct Bed {
    pub redis: RedisServer,
    pub keys: PathBuf,
    pub source: Source,
    pub dir: PathBuf,
}

impl Bed {
    pub fn start(test: &str) -> Option<Bed> {
        Bed::start_with(test, &[], EVERY)
    }

    /// With more options for redis-server (see [`RedisServer::start_with`]) and a source
    /// sending a quote every `every`.
    pub fn start_with(test: &str, redis: &[&str], every: Duration) -> Option<Bed> {
        if !redis_available(test) {
            return None;
        }
        let dir = temp_dir();
        Some(Bed {
            redis: RedisServer::start_with(&dir, redis),
            keys: write_keys(&dir, &[CLIENT_KEY]),
            source: Source::start(every),
            dir,
        })
    }
}

/// Two subscribers on each proxy.
pub fn subscribe(proxies: &[&Proxy]) -> Vec<Subscriber> {
    proxies
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            (0..2).map(move |j| Subscriber::start(&format!("instance{i}-client{j}"), p.addr))
        })
        .collect()
}

/// Waits until every subscriber has seen a frame numbered `ahead` frames after now.
pub fn all_see_more(subs: &[&Subscriber], source: &Source, ahead: u64) {
    let target = source.next_number() + ahead;
    for s in subs {
        assert!(
            s.wait_past(target, SEE_WITHIN),
            "{} did not get frame {target} (last {:?})",
            s.name,
            s.last()
        );
    }
}

pub fn finish(subs: Vec<Subscriber>) -> Vec<(String, Vec<u64>, Ended)> {
    subs.into_iter()
        .map(|s| {
            let name = s.name.clone();
            let (numbers, ended) = s.finish();
            (name, numbers, ended)
        })
        .collect()
}

/// Stops the subscribers, each of which must still have been connected and must pass
/// `check` (its name and frame numbers); all must have seen the same frames.
pub fn finish_connected(subs: Vec<Subscriber>, check: impl Fn(&str, &[u64])) {
    let mut seen = Vec::new();
    for (name, numbers, ended) in finish(subs) {
        assert_eq!(ended, Ended::Stopped, "{name} stayed connected");
        check(&name, &numbers);
        seen.push((name, numbers));
    }
    assert_same_frames(&seen);
}
