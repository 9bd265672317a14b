//! A reconnect storm, as a fleet of real clients makes one: every connection opened and every
//! upgrade request sent at once, by a few threads, then each client authenticates as soon as
//! its upgrade is answered and waits for its first quote.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use super::raw_ws::{client_frame, FrameReader, TEXT};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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

/// One thread's share: every connection and request first, then each client in turn.
fn wave(addr: SocketAddr, n: usize, auth: &[u8]) -> Vec<Outcome> {
    let opened: Vec<Result<TcpStream, String>> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(30))
                .map_err(|e| format!("connect: {e}"))?;
            s.write_all(UPGRADE).map_err(|e| format!("request: {e}"))?;
            Ok(s)
        })
        .collect();
    opened
        .into_iter()
        .map(|s| match s {
            Ok(s) => finish(s, auth),
            Err(why) => Outcome::Failed(why),
        })
        .collect()
}

/// One client on an open connection `s`: upgrades, authenticates with `key` and waits for
/// its first quote.
pub fn join(s: TcpStream, key: &str) -> Outcome {
    join_with(s, &format!(r#"{{"userKey":"{key}"}}"#))
}

/// As [`join`], with this auth message.
pub fn join_with(mut s: TcpStream, auth: &str) -> Outcome {
    if let Err(e) = s.write_all(UPGRADE) {
        return Outcome::Failed(format!("request: {e}"));
    }
    finish(s, &client_frame(TEXT, auth.as_bytes()))
}

/// Reads the answer to the upgrade; authenticates and waits for the first quote.
fn finish(mut s: TcpStream, auth: &[u8]) -> Outcome {
    let until = Instant::now() + CLIENT_DEADLINE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match read_some(&mut s, &mut chunk, until) {
            Ok(0) => return Outcome::Failed("closed before answering the upgrade".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Outcome::Failed(format!("upgrade answer: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 101 {
        return Outcome::Refused(status);
    }
    if let Err(e) = s.write_all(auth) {
        return Outcome::Failed(format!("auth: {e}"));
    }
    let mut frames = FrameReader::default();
    frames.push(&buf[head_end..]);
    loop {
        while let Some(f) = frames.next_frame() {
            if f.opcode == TEXT && f.payload.first() == Some(&b'{') {
                return Outcome::Served(s);
            }
            if let Some(code) = f.close_code() {
                return Outcome::Failed(format!(
                    "closed with {code} {}",
                    String::from_utf8_lossy(&f.payload[2.min(f.payload.len())..])
                ));
            }
        }
        match read_some(&mut s, &mut chunk, until) {
            Ok(0) => return Outcome::Failed("closed before the first quote".into()),
            Ok(n) => frames.push(&chunk[..n]),
            Err(e) => return Outcome::Failed(format!("first quote: {e}")),
        }
    }
}

fn read_some(s: &mut TcpStream, chunk: &mut [u8], until: Instant) -> std::io::Result<usize> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    s.set_read_timeout(Some(left))?;
    s.read(chunk)
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
