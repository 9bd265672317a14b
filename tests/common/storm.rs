//! A reconnect storm, as a fleet of real clients makes one: every connection opened and every
//! upgrade request sent at once, by a few threads, then each client authenticates as soon as
//! its own upgrade is answered (a thread follows all of its clients at once, from one poll)
//! and waits for its first quote.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use super::raw_ws::{client_frame, FrameReader, TEXT};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// How long one client of a storm may take from its connect to its first quote.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

/// How one client of a storm ended.
pub enum Outcome {
    /// Upgraded, authenticated, and received a quote; the socket stays open.
    Served(TcpStream),
    /// Answered with this HTTP status instead of an upgrade (503 past a limit).
    Refused(u16),
    /// Anything else: why.
    Failed(String),
}

/// What a storm came to.
pub struct Storm {
    pub served: Vec<TcpStream>,
    /// HTTP statuses of the refused, e.g. 503.
    pub refused: Vec<u16>,
    pub failed: Vec<String>,
    /// From the first connect to the last client's end.
    pub took: Duration,
}

impl Storm {
    /// `n` clients of `addr` with `key`, all at once, from `threads` threads.
    pub fn run(addr: SocketAddr, key: &str, n: usize, threads: usize) -> Storm {
        let started = Instant::now();
        let auth = client_frame(TEXT, format!(r#"{{"userKey":"{key}"}}"#).as_bytes());
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = n / threads + usize::from(t < n % threads);
                let auth = auth.clone();
                thread::Builder::new()
                    .name(format!("storm-{t}"))
                    .stack_size(256 * 1024)
                    .spawn(move || wave(addr, share, &auth))
                    .expect("a storm thread")
            })
            .collect();
        let mut storm = Storm {
            served: Vec::new(),
            refused: Vec::new(),
            failed: Vec::new(),
            took: Duration::ZERO,
        };
        for h in handles {
            for outcome in h.join().expect("a storm thread panicked") {
                match outcome {
                    Outcome::Served(s) => storm.served.push(s),
                    Outcome::Refused(status) => storm.refused.push(status),
                    Outcome::Failed(why) => storm.failed.push(why),
                }
            }
        }
        storm.took = started.elapsed();
        storm
    }

    /// The distinct failures and how often each came, for a message.
    pub fn failures(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for f in &self.failed {
            match counts.iter_mut().find(|(w, _)| w == f) {
                Some((_, n)) => *n += 1,
                None => counts.push((f.clone(), 1)),
            }
        }
        counts
            .iter()
            .map(|(w, n)| format!("{n} x {w}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The upgrade request every client of a storm sends.
pub const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: fxproxy\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// One thread's share: every connection opened and its request sent first; then each client
/// goes on as its own bytes arrive, authenticating the moment its upgrade is answered, as a
/// fleet of separate programs does. (Taking the clients one at a time, each to its first
/// quote before the next one's answer is read, made the last clients of a thread answer
/// their upgrade only after their neighbours' round trips: on a loaded host, later than a
/// proxy at its limit lets an upgrade sit without its auth message.)
fn wave(addr: SocketAddr, n: usize, auth: &[u8]) -> Vec<Outcome> {
    let mut clients: Vec<Result<Joining, Outcome>> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(30))
                .map_err(|e| Outcome::Failed(format!("connect: {e}")))?;
            s.write_all(UPGRADE)
                .map_err(|e| Outcome::Failed(format!("request: {e}")))?;
            Ok(Joining::new(s))
        })
        .collect();
    let mut poll = Poll::new().expect("a poll for the storm");
    for (i, c) in clients.iter_mut().enumerate() {
        if let Ok(joining) = c {
            let fd = joining.s.as_raw_fd();
            let watched = joining.s.set_nonblocking(true).and_then(|()| {
                poll.registry()
                    .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
            });
            if let Err(e) = watched {
                *c = Err(Outcome::Failed(format!("poll: {e}")));
            }
        }
    }
    let until = Instant::now() + CLIENT_DEADLINE;
    let mut events = Events::with_capacity(256);
    while clients.iter().any(Result::is_ok) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Err(e) = poll.poll(&mut events, Some(left)) {
            assert_eq!(e.kind(), ErrorKind::Interrupted, "storm poll: {e}");
            continue;
        }
        for event in events.iter() {
            let c = &mut clients[event.token().0];
            let Some(end) = c.as_mut().ok().and_then(|j| j.read_ready(auth)) else {
                continue;
            };
            if let Ok(joining) = std::mem::replace(c, Err(Outcome::Failed(String::new()))) {
                *c = Err(joining.end(end));
            }
        }
    }
    clients
        .into_iter()
        .map(|c| match c {
            Ok(joining) => {
                let end = joining.timed_out();
                joining.end(end)
            }
            Err(outcome) => outcome,
        })
        .collect()
}

/// One client on open connection `s`: upgrades, authenticates with `key` and waits for
/// its first quote.
pub fn join(s: TcpStream, key: &str) -> Outcome {
    join_with(s, &format!(r#"{{"userKey":"{key}"}}"#))
}

/// As [`join`], with this auth message.
pub fn join_with(mut s: TcpStream, auth: &str) -> Outcome {
    if let Err(e) = s.write_all(UPGRADE) {
        return Outcome::Failed(format!("request: {e}"));
    }
    let auth = client_frame(TEXT, auth.as_bytes());
    let until = Instant::now() + CLIENT_DEADLINE;
    let mut joining = Joining::new(s);
    let mut chunk = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let end = joining.timed_out();
            return joining.end(end);
        }
        let read = joining
            .s
            .set_read_timeout(Some(left))
            .and_then(|()| joining.s.read(&mut chunk));
        let end = match read {
            Ok(n) => joining.take(&chunk[..n], &auth),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => Some(joining.failed(&e)),
        };
        if let Some(end) = end {
            return joining.end(end);
        }
    }
}

/// How a client's way in ended, before its socket is handed over.
enum End {
    Served,
    Refused(u16),
    Failed(String),
}

/// A client on its way in: reading the answer to its upgrade, then (once it has sent its auth
/// message) its frames, until the first quote.
struct Joining {
    s: TcpStream,
    /// The answer to the upgrade so far.
    head: Vec<u8>,
    /// Set once upgraded and authenticated.
    frames: Option<FrameReader>,
}

impl Joining {
    fn new(s: TcpStream) -> Joining {
        Joining {
            s,
            head: Vec::new(),
            frames: None,
        }
    }

    /// Reads all the (non-blocking) socket holds; the end, once there is one.
    fn read_ready(&mut self, auth: &[u8]) -> Option<End> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.s.read(&mut chunk) {
                Ok(n) => {
                    if let Some(end) = self.take(&chunk[..n], auth) {
                        return Some(end);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Some(self.failed(&e)),
            }
        }
    }

    /// Takes bytes read (none: the server closed); sends the auth message as soon as the
    /// upgrade is answered with 101.
    fn take(&mut self, bytes: &[u8], auth: &[u8]) -> Option<End> {
        if bytes.is_empty() {
            return Some(End::Failed(match self.frames {
                None => "closed before answering the upgrade".into(),
                Some(_) => "closed before the first quote".into(),
            }));
        }
        if let Some(frames) = &mut self.frames {
            frames.push(bytes);
            return first_quote(frames);
        }
        self.head.extend_from_slice(bytes);
        let head_end = self.head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.head[..head_end]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 101 {
            return Some(End::Refused(status));
        }
        if let Err(e) = write_all_now(&mut self.s, auth) {
            return Some(End::Failed(format!("auth: {e}")));
        }
        let mut frames = FrameReader::default();
        frames.push(&self.head[head_end..]);
        let end = first_quote(&mut frames);
        self.frames = Some(frames);
        end
    }

    fn failed(&self, e: &std::io::Error) -> End {
        match self.frames {
            None => End::Failed(format!("upgrade answer: {e}")),
            Some(_) => End::Failed(format!("first quote: {e}")),
        }
    }

    fn timed_out(&self) -> End {
        self.failed(&ErrorKind::TimedOut.into())
    }

    /// The outcome; a served client's socket is handed over blocking, as tests read it.
    fn end(self, end: End) -> Outcome {
        match end {
            End::Served => match self.s.set_nonblocking(false) {
                Ok(()) => Outcome::Served(self.s),
                Err(e) => Outcome::Failed(format!("socket: {e}")),
            },
            End::Refused(status) => Outcome::Refused(status),
            End::Failed(why) => Outcome::Failed(why),
        }
    }
}

/// Whether the frames so far hold the first quote, or a close instead.
fn first_quote(frames: &mut FrameReader) -> Option<End> {
    while let Some(f) = frames.next_frame() {
        if f.opcode == TEXT && f.payload.first() == Some(&b'{') {
            return Some(End::Served);
        }
        if let Some(code) = f.close_code() {
            return Some(End::Failed(format!(
                "closed with {code} {}",
                String::from_utf8_lossy(&f.payload[2.min(f.payload.len())..])
            )));
        }
    }
    None
}

/// Writes all of `bytes` to `s` whether or not it is non-blocking: an auth message fits a
/// fresh socket's buffer, so this never waits in practice.
fn write_all_now(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        match s.write(&bytes[at..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                thread::yield_now()
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Raises this process's soft open-file limit to at least `want` (its hard limit too, where
/// allowed), so a test can open thousands of sockets; the proxies it starts inherit it.
/// Returns the soft limit in force afterwards.
pub fn raise_fd_limit(want: u64) -> u64 {
    let (soft, hard) = fd_limits();
    if soft >= want {
        return soft;
    }
    let target = if hard >= want { hard } else { want };
    let _ = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={target}:{target}"))
        .status();
    if fd_limits().0 < want && hard > soft {
        let _ = Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    fd_limits().0
}

fn fd_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let row = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .unwrap_or("");
    let mut parts = row
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(u64::MAX));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}
