//! A fleet of clients that stay connected and come back whenever they are closed, as real
//! clients of a market-data feed do: each connects, upgrades, authenticates and reads quotes
//! until the proxy closes it, then reconnects at once. What each one met is recorded: when it
//! was served (its first quote on a connection), the close codes it was sent, and every
//! refusal (a refused connect, an HTTP answer other than 101) or failure.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use super::raw_ws::{client_frame, pong_for, FrameReader, PING, TEXT};
use super::storm::UPGRADE;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long one step (the upgrade's answer, the first quote) may take: a client waiting in
/// the listen queue while one process stops and the next starts waits this long at most.
const STEP_DEADLINE: Duration = Duration::from_secs(60);
/// How often a blocked read comes back to look at the stop flag.
const READ_TICK: Duration = Duration::from_millis(200);
/// After a refusal a client waits this long before it tries again, as a client library does.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// What one client met.
#[derive(Default, Clone)]
pub struct Log {
    /// When it was served, on each connection that got as far as a quote.
    pub served: Vec<Instant>,
    /// Each close frame it was sent, with when.
    pub closes: Vec<(u16, Instant)>,
    /// Refused: the connect failed, or the upgrade was answered with another status.
    pub refused: Vec<String>,
    /// Anything else that went wrong: a reset, a close without a close frame, a deadline.
    pub failed: Vec<String>,
}

struct Shared {
    logs: Vec<Mutex<Log>>,
    stop: AtomicBool,
}

/// The running fleet.
pub struct Fleet {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Fleet {
    /// `n` clients of `addr` with `key`, each on a thread of its own.
    pub fn start(addr: SocketAddr, key: &str, n: usize) -> Fleet {
        let shared = Arc::new(Shared {
            logs: (0..n).map(|_| Mutex::new(Log::default())).collect(),
            stop: AtomicBool::new(false),
        });
        let auth = client_frame(TEXT, format!(r#"{{"userKey":"{key}"}}"#).as_bytes());
        let threads = (0..n)
            .map(|i| {
                let (shared, auth) = (Arc::clone(&shared), auth.clone());
                thread::Builder::new()
                    .name(format!("fleet-{i}"))
                    .stack_size(128 * 1024)
                    .spawn(move || run(addr, &auth, &shared, i))
                    .expect("a fleet thread")
            })
            .collect();
        Fleet { shared, threads }
    }

    /// A copy of every client's log.
    pub fn logs(&self) -> Vec<Log> {
        self.shared
            .logs
            .iter()
            .map(|l| l.lock().unwrap().clone())
            .collect()
    }

    /// How many clients have been served at or after `since`.
    pub fn served_since(&self, since: Instant) -> usize {
        self.shared
            .logs
            .iter()
            .filter(|l| l.lock().unwrap().served.iter().any(|&t| t >= since))
            .count()
    }

    /// Waits up to `deadline` until every client has been served at or after `since`; the
    /// moment the last one was, or `None` at the deadline.
    pub fn wait_all_served_since(&self, since: Instant, deadline: Duration) -> Option<Instant> {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if self.served_since(since) == self.shared.logs.len() {
                return self
                    .logs()
                    .iter()
                    .filter_map(|l| l.served.iter().copied().find(|&t| t >= since))
                    .max();
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Stops every client and waits for their threads; the logs.
    pub fn stop(mut self) -> Vec<Log> {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.logs()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// How a connection ended.
enum End {
    /// Closed by the proxy with a close frame: reconnect at once.
    Closed,
    /// Refused, or failed: reconnect after a moment.
    Retry,
    Stopped,
}

fn run(addr: SocketAddr, auth: &[u8], shared: &Shared, i: usize) {
    let log = &shared.logs[i];
    loop {
        match connection(addr, auth, shared, log) {
            End::Closed => {}
            End::Retry => thread::sleep(RETRY_AFTER),
            End::Stopped => return,
        }
    }
}

/// One connection, from connect to its end.
fn connection(addr: SocketAddr, auth: &[u8], shared: &Shared, log: &Mutex<Log>) -> End {
    let stopped = || shared.stop.load(Ordering::SeqCst);
    if stopped() {
        return End::Stopped;
    }
    let mut s = match TcpStream::connect_timeout(&addr, STEP_DEADLINE) {
        Ok(s) => s,
        Err(e) => {
            log.lock().unwrap().refused.push(format!("connect: {e}"));
            return End::Retry;
        }
    };
    if let Err(e) = s.set_read_timeout(Some(READ_TICK)) {
        log.lock().unwrap().failed.push(format!("socket: {e}"));
        return End::Retry;
    }
    if let Err(e) = s.write_all(UPGRADE) {
        log.lock().unwrap().failed.push(format!("request: {e}"));
        return End::Retry;
    }
    let mut chunk = [0u8; 8192];
    let mut head = Vec::new();
    let mut step_until = Instant::now() + STEP_DEADLINE;
    let head_end = loop {
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match read(&mut s, &mut chunk, step_until, &stopped) {
            Got::Bytes(n) => head.extend_from_slice(&chunk[..n]),
            Got::Stopped => return End::Stopped,
            Got::End(why) => {
                log.lock().unwrap().failed.push(format!("upgrade: {why}"));
                return End::Retry;
            }
        }
    };
    let status = String::from_utf8_lossy(&head[..head_end])
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    if status != "101" {
        log.lock().unwrap().refused.push(format!("HTTP {status}"));
        return End::Retry;
    }
    if let Err(e) = s.write_all(auth) {
        log.lock().unwrap().failed.push(format!("auth: {e}"));
        return End::Retry;
    }
    let mut frames = FrameReader::default();
    frames.push(&head[head_end..]);
    let mut served = false;
    step_until = Instant::now() + STEP_DEADLINE;
    loop {
        while let Some(f) = frames.next_frame() {
            if let Some(code) = f.close_code() {
                log.lock().unwrap().closes.push((code, Instant::now()));
                return End::Closed;
            }
            if f.opcode == PING {
                if let Some(pong) = pong_for(&f) {
                    let _ = s.write_all(&pong);
                }
            } else if f.opcode == TEXT && f.payload.first() == Some(&b'{') && !served {
                served = true;
                log.lock().unwrap().served.push(Instant::now());
            }
        }
        // Once served, a connection may stay quiet for as long as the proxy lets it.
        let until = if served {
            Instant::now() + STEP_DEADLINE
        } else {
            step_until
        };
        match read(&mut s, &mut chunk, until, &stopped) {
            Got::Bytes(n) => frames.push(&chunk[..n]),
            Got::Stopped => return End::Stopped,
            Got::End(why) => {
                let stage = if served { "serving" } else { "first quote" };
                log.lock().unwrap().failed.push(format!("{stage}: {why}"));
                return End::Retry;
            }
        }
    }
}

enum Got {
    Bytes(usize),
    Stopped,
    End(String),
}

/// Reads what is there, coming back every [`READ_TICK`] to look at `stopped`.
fn read(s: &mut TcpStream, chunk: &mut [u8], until: Instant, stopped: &dyn Fn() -> bool) -> Got {
    loop {
        if stopped() {
            return Got::Stopped;
        }
        match s.read(chunk) {
            Ok(0) => return Got::End("closed without a close frame".into()),
            Ok(n) => return Got::Bytes(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= until {
                    return Got::End("deadline passed".into());
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Got::End(e.to_string()),
        }
    }
}
