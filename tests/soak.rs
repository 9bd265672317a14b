//! The soak test: the real binary for a while under everything at once. Healthy clients stay
//! connected from start to end and must receive every quote, in order, exactly once, while
//! the upstream restarts every few seconds and a stream of short-lived clients, good and bad,
//! comes and goes: bad keys, garbage requests, slowloris, binary frames, oversized frames,
//! invalid UTF-8, ping floods, clients that stop reading, clients that vanish mid-stream,
//! and plain HTTP requests. Every second the proxy's threads, resident memory and open
//! descriptors are sampled; at the end they must be back where they started.
//!
//! `cargo test` runs it for 20 seconds. For a long run:
//! `FXPROXY_SOAK_SECS=1800 cargo test --release --test soak -- --nocapture`.

mod common;

use common::process::{open_fds, poll, proc_status, temp_dir, write_keys, Proxy};
use common::raw_ws::{self, client_frame};
use common::{quote, Client, TestUpstream, KEY};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SYMBOLS: [&str; 3] = ["EURUSD", "GBPUSD", "USDJPY"];
const HEALTHY: usize = 20;
const QUOTES_PER_SEC: u64 = 300;
const UPSTREAM_RESTART_EVERY: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: f64,
    threads: u64,
    rss_kib: u64,
    fds: u64,
}

fn sample(pid: u32, start: Instant) -> Sample {
    Sample {
        at: start.elapsed().as_secs_f64(),
        threads: proc_status(pid, "Threads:"),
        rss_kib: proc_status(pid, "VmRSS:"),
        fds: open_fds(pid),
    }
}

/// A WebSocket upgrade by hand, for clients that then misbehave below tungstenite's level.
/// Returns the socket after the 101 response.
fn raw_upgrade(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    head.starts_with(b"HTTP/1.1 101").then_some(s)
}

/// Reads whatever comes until the proxy ends the connection (or 5 s pass).
fn drain(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// Reads `n` quotes; false if the proxy closed the connection first. A short-lived client
/// that the churn's own threads could not run for a while may rightly have been dropped as a
/// slow consumer: it is not one of the clients whose quotes are checked.
fn take_quotes(c: &mut Client, n: usize) -> bool {
    let mut got = 0;
    while got < n {
        match c.next() {
            Some(tungstenite::Message::Text(t)) if t.as_str() != "Connected" => got += 1,
            Some(tungstenite::Message::Close(_)) | None => return false,
            Some(_) => {}
        }
    }
    true
}

/// One short-lived client, the `n`th of the run; each kind in turn.
fn misbehave(addr: SocketAddr, n: u64) {
    match n % 12 {
        0 | 1 => {
            // A good client that reads a few quotes and leaves politely.
            let mut c = Client::auth(addr, KEY, None);
            if take_quotes(&mut c, 3) {
                let _ = c.ws.close(None);
                let _ = c.ws.flush();
            }
        }
        2 => {
            let mut c = Client::auth(addr, "not-a-key", None);
            c.expect_close();
        }
        3 => {
            if let Ok(mut s) = TcpStream::connect(addr) {
                let _ = s.write_all(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n");
                drain(s);
            }
        }
        4 => {
            // Slowloris: half a request, then nothing until the handshake deadline.
            if let Ok(mut s) = TcpStream::connect(addr) {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
                drain(s);
            }
        }
        5 => {
            if let Some(mut s) = raw_upgrade(addr) {
                let _ = s.write_all(&client_frame(raw_ws::BINARY, b"\x00\x01"));
                drain(s);
            }
        }
        6 => {
            if let Some(mut s) = raw_upgrade(addr) {
                let _ = s.write_all(&client_frame(raw_ws::TEXT, &[b'x'; 8192]));
                drain(s);
            }
        }
        7 => {
            if let Some(mut s) = raw_upgrade(addr) {
                let _ = s.write_all(&client_frame(raw_ws::TEXT, b"{\"userKey\":\"\xff\xfe\"}"));
                drain(s);
            }
        }
        8 => {
            // Authenticates, then floods pings until it is closed.
            if let Some(mut s) = raw_upgrade(addr) {
                let auth = format!(r#"{{"userKey":"{KEY}"}}"#);
                let _ = s.write_all(&client_frame(raw_ws::TEXT, auth.as_bytes()));
                let ping = client_frame(raw_ws::PING, b"flood");
                for _ in 0..500 {
                    if s.write_all(&ping).is_err() {
                        break;
                    }
                }
                drain(s);
            }
        }
        9 => {
            // Authenticates and stops reading while quotes flow; leaves abruptly later.
            let c = Client::auth(addr, KEY, None);
            thread::sleep(Duration::from_millis(2500));
            drop(c);
        }
        10 => {
            // Vanishes mid-stream: no close frame, just the TCP connection dropped.
            let mut c = Client::auth(addr, KEY, None);
            take_quotes(&mut c, 1);
            drop(c);
        }
        _ => {
            let which = if n % 24 == 11 { "/metrics" } else { "/healthz" };
            let r = common::http_get(addr, &format!("GET {which} HTTP/1.1\r\nHost: x\r\n\r\n"));
            assert!(r.starts_with("HTTP/1.1 "), "{r}");
        }
    }
}

/// What a healthy client saw: per symbol, the last sequence number; and any fault.
struct Healthy {
    received: u64,
    fault: Option<String>,
}

/// Reads until it has `target` quotes (unknown, `u64::MAX`, while the feed runs), checking
/// that each symbol's quotes come in order with none missing or repeated.
fn healthy_client(addr: SocketAddr, target: Arc<AtomicU64>) -> Healthy {
    let mut c = Client::auth(addr, KEY, None);
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut received = 0;
    let mut deadline = None;
    while received < target.load(Ordering::SeqCst) {
        if target.load(Ordering::SeqCst) != u64::MAX {
            let until = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
            if Instant::now() > until {
                break;
            }
        }
        let Some(message) = c.next_within(Duration::from_millis(200)) else {
            continue;
        };
        let tungstenite::Message::Text(text) = message else {
            if let tungstenite::Message::Close(f) = message {
                return Healthy {
                    received,
                    fault: Some(format!("closed by the proxy: {f:?}")),
                };
            }
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text).expect("a quote");
        let symbol = v["symbol"].as_str().expect("symbol").to_string();
        let ts: u64 = v["ts"].as_str().expect("ts").parse().expect("ts number");
        let seq = ts - 1_700_000_000_000;
        let prev = last.insert(symbol.clone(), seq).unwrap_or(0);
        if seq != prev + 1 {
            return Healthy {
                received,
                fault: Some(format!("{symbol}: quote {seq} after {prev}")),
            };
        }
        received += 1;
    }
    Healthy {
        received,
        fault: None,
    }
}

#[test]
fn soak_under_faults_loses_nothing_and_leaks_nothing() {
    let secs: u64 = std::env::var("FXPROXY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let run_for = Duration::from_secs(secs);
    let up = TestUpstream::start();
    let dir = temp_dir();
    let keys = write_keys(&dir, &[KEY]);
    let proxy = Proxy::spawn(&format!(
        "upstream_url = {}\nsymbols = {}\nuser_keys_file = {}\nstatus_interval_secs = 0\n\
         upstream_backoff_min_ms = 20\nupstream_backoff_max_secs = 1\n\
         handshake_timeout_secs = 1\nauth_timeout_secs = 1\nclient_ping_secs = 1\n\
         client_queue_len = 512\nmax_pending_connections = 64\n",
        up.url(),
        SYMBOLS.join(","),
        keys.display()
    ));
    let addr = proxy.addr;
    let pid = proxy.pid();
    up.expect_subscribe();

    let target = Arc::new(AtomicU64::new(u64::MAX));
    let healthy: Vec<_> = (0..HEALTHY)
        .map(|i| {
            let target = Arc::clone(&target);
            thread::Builder::new()
                .name(format!("healthy-{i}"))
                .spawn(move || healthy_client(addr, target))
                .unwrap()
        })
        .collect();
    let metrics = || common::http_get(addr, "GET /metrics HTTP/1.0\r\n\r\n");
    assert!(
        poll(Duration::from_secs(10), || metrics()
            .contains(&format!("fxproxy_clients_connected {HEALTHY}\n"))),
        "the healthy clients did not all connect"
    );
    let start = Instant::now();
    let baseline = sample(pid, start);

    // The churn: four threads of short-lived clients, good and bad, one after another.
    let stop_churn = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let churn: Vec<_> = (0..4)
        .map(|t| {
            let (stop, churned) = (Arc::clone(&stop_churn), Arc::clone(&churned));
            thread::Builder::new()
                .name(format!("churn-{t}"))
                .spawn(move || {
                    let mut n = t;
                    while !stop.load(Ordering::SeqCst) {
                        misbehave(addr, n);
                        churned.fetch_add(1, Ordering::Relaxed);
                        n += 4;
                    }
                })
                .unwrap()
        })
        .collect();

    // The feed, with an upstream restart every few seconds, and the samples.
    let samples = Mutex::new(vec![baseline]);
    let mut sent = [0u64; 3];
    let mut restarts = 0;
    let mut last_restart = Instant::now();
    let mut last_sample = Instant::now();
    let tick = Duration::from_micros(1_000_000 / QUOTES_PER_SEC);
    let mut next = Instant::now();
    while start.elapsed() < run_for {
        let i = (sent.iter().sum::<u64>() % 3) as usize;
        sent[i] += 1;
        up.send(&quote(SYMBOLS[i], sent[i]));
        if last_restart.elapsed() >= UPSTREAM_RESTART_EVERY {
            last_restart = Instant::now();
            up.close();
            up.expect_subscribe();
            restarts += 1;
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            samples.lock().unwrap().push(sample(pid, start));
        }
        next += tick;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    stop_churn.store(true, Ordering::SeqCst);
    for t in churn {
        t.join().expect("a churn thread");
    }
    let total: u64 = sent.iter().sum();
    let metric_sum = |name: &str| -> u64 {
        metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    assert!(
        poll(Duration::from_secs(20), || {
            metric_sum("fxproxy_quotes_received_total ") == total
        }),
        "the proxy did not receive all {total} quotes"
    );
    // Back to the baseline: the churn's threads and descriptors are all released. (The
    // baseline may include the thread of the /metrics request that preceded it.)
    let settled = poll(Duration::from_secs(15), || {
        let now = sample(pid, start);
        now.threads <= baseline.threads && now.fds <= baseline.fds
    });
    let end = sample(pid, start);
    target.store(total, Ordering::SeqCst);
    let results: Vec<Healthy> = healthy
        .into_iter()
        .map(|h| h.join().expect("a healthy client"))
        .collect();

    let samples = samples.into_inner().unwrap();
    let warm = samples[samples.len() / 4];
    let peak_threads = samples.iter().map(|s| s.threads).max().unwrap_or(0);
    let peak_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    eprintln!(
        "soak: {secs} s, {total} quotes, {restarts} upstream restarts, {} short-lived clients",
        churned.load(Ordering::Relaxed)
    );
    eprintln!("        at_s  threads  rss_kib  fds");
    let step = (samples.len() / 10).max(1);
    for s in samples.iter().step_by(step).chain([&end]) {
        eprintln!(
            "  {:>10.1}  {:>7}  {:>7}  {:>3}",
            s.at, s.threads, s.rss_kib, s.fds
        );
    }
    eprintln!(
        "  baseline {} threads {} fds; peak {peak_threads} threads {peak_fds} fds; rss {} kB at {:.0} s -> {} kB at the end",
        baseline.threads, baseline.fds, warm.rss_kib, warm.at, end.rss_kib
    );
    for (i, h) in results.iter().enumerate() {
        assert_eq!(h.fault, None, "healthy client {i}");
        assert_eq!(h.received, total, "healthy client {i} received every quote");
    }
    assert!(
        settled,
        "threads/fds did not return to the baseline {baseline:?}: {end:?}"
    );
    // Allocator caches grow a little under churn; a leak grows with the run. After the
    // warm-up quarter, allow 8 MiB in all.
    assert!(
        end.rss_kib <= warm.rss_kib + 8 * 1024,
        "resident memory grew from {} kB to {} kB",
        warm.rss_kib,
        end.rss_kib
    );
}
