//! SIGUSR1 under a thousand clients: the state dump lists every thread of the real binary as
//! /proc shows it, and the connections that have no thread yet, without stalling the quotes.
//! A file of its own, so that nothing else runs beside it while it measures. Whether a dump
//! stalls the quotes can only be told on a calm machine: while the quotes' lag is too noisy
//! before every dump, the test takes more, for about 40 s; if the machine never calms down
//! it says so (and fails under CI).

mod common;

use common::process::{self, Proxy};
use common::raw_ws::{self, authenticated_socket, FrameReader};
use common::{metric_of, KEY};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::Message;

/// A number from the environment, for bigger runs by hand, e.g.
/// `FXPROXY_DUMP_CLIENTS=15000 FXPROXY_DUMP_RATE=10 cargo test --release --test state_dump`.
fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Dumps taken at least (see the test).
const DUMPS: usize = 5;
/// Dumps taken at most, while the machine is too busy to judge a stall: about 40 s.
const MOST_DUMPS: usize = 12;
/// Calm windows that must all show a stall before the dump is said to cause one.
const CALM_STALLS: usize = 3;

/// A baseline p99 above this says the machine is too busy to tell a stall from its own noise
/// (four times the p99 measured for 1,000 clients at 200 quotes/s in BENCHMARKS.md).
const OVERLOADED_P99_MS: u64 = 100;

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The `"ts":"…"` the simulator stamps each quote with when it makes it (epoch ms).
fn quote_ts(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    let rest = &text[text.find("\"ts\":\"")? + 6..];
    rest[..rest.find('"')?].parse().ok()
}

/// Follows every socket from one thread: answers pings, and notes each quote's lag (from the
/// simulator's stamp to now) with the time it arrived, in `lags`, as it goes.
fn follow(
    streams: Vec<TcpStream>,
    receiving: Arc<AtomicUsize>,
    quit: Arc<AtomicBool>,
    all_lags: Arc<Mutex<Vec<(u64, u64)>>>,
) {
    let mut poll = Poll::new().unwrap();
    for (i, s) in streams.iter().enumerate() {
        s.set_nonblocking(true).unwrap();
        poll.registry()
            .register(&mut SourceFd(&s.as_raw_fd()), Token(i), Interest::READABLE)
            .unwrap();
    }
    let mut readers: Vec<FrameReader> = streams.iter().map(|_| FrameReader::default()).collect();
    let mut seen = vec![false; streams.len()];
    let mut streams = streams;
    let mut lags = Vec::with_capacity(1 << 16);
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    while !quit.load(Ordering::SeqCst) {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for event in events.iter() {
            let i = event.token().0;
            loop {
                match streams[i].read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => readers[i].push(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("client {i}: {e}"),
                }
            }
            let now = epoch_ms();
            while let Some(frame) = readers[i].next_frame() {
                match frame.opcode {
                    raw_ws::TEXT => {
                        if let Some(ts) = quote_ts(&frame.payload) {
                            lags.push((now, now.saturating_sub(ts)));
                        }
                        if !seen[i] {
                            seen[i] = true;
                            receiving.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    raw_ws::CLOSE => panic!("client {i} closed: {:?}", frame.close_code()),
                    _ => {
                        if let Some(pong) = raw_ws::pong_for(&frame) {
                            streams[i].write_all(&pong).unwrap();
                        }
                    }
                }
            }
        }
        all_lags.lock().unwrap().append(&mut lags);
    }
}

/// Every thread of process `pid` by tid, with its name.
fn task_names(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                comm.trim().to_string(),
            ))
        })
        .collect()
}

/// The 99th percentile and the maximum of the lags that arrived within `from..to` (epoch ms).
fn lag_stats(lags: &[(u64, u64)], from: u64, to: u64) -> (u64, u64, usize) {
    let mut window: Vec<u64> = lags
        .iter()
        .filter(|(at, _)| (from..to).contains(at))
        .map(|(_, lag)| *lag)
        .collect();
    window.sort_unstable();
    let n = window.len();
    assert!(n > 0, "no quotes between {from} and {to}");
    (window[(n * 99 / 100).min(n - 1)], window[n - 1], n)
}

#[test]
fn sigusr1_dumps_every_thread_under_1000_clients_without_stalling_the_quotes() {
    let clients = setting("FXPROXY_DUMP_CLIENTS", 1000) as usize;
    // 20,000 frames/s in all. At 100 quotes/s (100,000 frames/s) this test's own reader, one
    // unoptimised thread following every socket, fell behind on this 2-core host: the lag
    // before a dump had a p99 of 0.3-2 s, so no window was ever calm enough to judge a stall
    // (and CI, which refuses to pass over that, failed). At 20 the p99 is about 33 ms.
    let rate = setting("FXPROXY_DUMP_RATE", 20);
    // Each process holds one socket per client, and a few more.
    process::ensure_open_files(clients as u64 + 512);
    let dir = process::temp_dir();
    let keys = process::write_keys(&dir, &[KEY]);
    // Clients are read only once all have connected (15,000 take half a minute): the lag
    // and queue limits must not close the first ones meanwhile.
    let proxy = Proxy::spawn(&format!(
        "upstream_url = sim\nsim_rate = {rate}\nsymbols = EURUSD,GBPUSD,USDJPY,AUDUSD\n\
         user_keys_file = {}\nstatus_interval_secs = 0\nhandshake_timeout_secs = 60\n\
         auth_timeout_secs = 60\nmax_clients = {}\nmax_client_lag_secs = 600\n\
         client_queue_len = 16384\n",
        keys.display(),
        clients + 100
    ));
    let streams: Vec<TcpStream> = (0..clients)
        .map(|_| authenticated_socket(proxy.addr, KEY))
        .collect();
    // Connections without a thread: three that have sent nothing, two upgraded that have
    // not authenticated.
    let silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(proxy.addr).unwrap())
        .collect();
    let upgraded: Vec<_> = (0..2)
        .map(|_| {
            let s = TcpStream::connect(proxy.addr).unwrap();
            let (mut ws, _) = tungstenite::client(format!("ws://{}/", proxy.addr), s).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text("Connected"));
            ws
        })
        .collect();
    let receiving = Arc::new(AtomicUsize::new(0));
    let quit = Arc::new(AtomicBool::new(false));
    let lags = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
    let reader = {
        let (receiving, quit, lags) =
            (Arc::clone(&receiving), Arc::clone(&quit), Arc::clone(&lags));
        thread::Builder::new()
            .name("clients".into())
            .spawn(move || follow(streams, receiving, quit, lags))
            .unwrap()
    };
    assert!(
        process::poll(Duration::from_secs(30), || receiving.load(Ordering::SeqCst)
            == clients),
        "only {} of {clients} clients receive quotes",
        receiving.load(Ordering::SeqCst)
    );
    assert!(process::poll(Duration::from_secs(10), || metric_of(
        proxy.addr,
        "fxproxy_pending_connections"
    ) == 5.0));
    // Dumps, each after 2.5 s of quotes (its baseline). The first is checked line by line;
    // the stall is judged on each whose baseline was calm, for on a shared machine any one
    // window may catch a burst of someone else's work: a dump that stalls the quotes stalls
    // them every time. So dumps go on (for about 40 s at most) until a calm window shows no
    // stall, or CALM_STALLS calm windows all show one.
    let mut judged = Vec::new();
    let mut comms = BTreeMap::new();
    for n in 1..=MOST_DUMPS {
        thread::sleep(Duration::from_millis(2500));
        // Only the new lines are looked at: copying and scanning the whole log (a thousand
        // lines more per dump) every 10 ms took CPU from the proxy just while it was measured.
        let before = proxy.log_len();
        let signalled = epoch_ms();
        let started = Instant::now();
        proxy.signal("USR1");
        assert!(
            proxy.wait_for_log_after(before, "state dump summary", Duration::from_secs(30)),
            "no dump; log:\n{}",
            proxy.stderr_text()
        );
        let (done, took) = (epoch_ms(), started.elapsed());
        if n == 1 {
            // The threads as /proc shows them now, while every client is still connected.
            comms = task_names(proxy.pid());
        }
        thread::sleep(Duration::from_millis(500));
        // A copy of the last seconds, so the reader is not held up while they are sorted.
        let lags: Vec<(u64, u64)> = {
            let all = lags.lock().unwrap();
            all[all.partition_point(|(at, _)| *at < signalled - 2500)..].to_vec()
        };
        let (base_p99, base_max, base_n) = lag_stats(&lags, signalled - 2500, signalled);
        let (dump_p99, dump_max, dump_n) = lag_stats(&lags, signalled, done + 500);
        eprintln!(
            "{clients} clients x {rate} quotes/s: before the dump p99 {base_p99} ms, slowest {base_max} ms ({base_n} quotes); \
             from SIGUSR1 to 0.5 s after the dump ({:.0} ms) p99 {dump_p99} ms, slowest {dump_max} ms ({dump_n} quotes)",
            took.as_secs_f64() * 1000.0
        );
        judged.push((base_p99, base_max, dump_max));
        let calm: Vec<_> = judged
            .iter()
            .filter(|(p99, _, _)| *p99 <= OVERLOADED_P99_MS)
            .collect();
        let unstalled = calm.iter().any(|(p99, max, during)| *during <= max + p99);
        if n >= DUMPS && (unstalled || calm.len() >= CALM_STALLS) {
            break;
        }
    }
    quit.store(true, Ordering::SeqCst);
    reader.join().expect("the reader");
    let pid = proxy.pid();

    let log = proxy.stderr_text();
    let dump: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("state dump: pid"))
        .take_while(|l| !l.contains("state dump summary"))
        .collect();
    let threads: Vec<&str> = dump
        .iter()
        .filter_map(|l| l.split_once("thread tid=").map(|(_, rest)| rest))
        .collect();
    // One line per thread, each as /proc/PID/task shows it.
    let mut names = BTreeMap::new();
    for line in &threads {
        let mut words = line.split(' ');
        let tid = words.next().unwrap();
        let name = words.next().unwrap().trim_start_matches("name=");
        if name == "state-dump" {
            // Gone once the dump is written.
            *names.entry(name.to_string()).or_insert(0) += 1;
            continue;
        }
        let comm = comms
            .get(tid)
            .unwrap_or_else(|| panic!("thread {tid} ({name}) is not in /proc/{pid}/task"));
        assert_eq!(comm, name, "{line}");
        let kind = if name.starts_with("client-") {
            "client-N"
        } else {
            name
        };
        *names.entry(kind.to_string()).or_insert(0) += 1;
    }
    // Every client thread, or as many as a dump lists.
    let listed = clients.min(fxproxy::dump::CLIENT_LINES);
    assert_eq!(names.get("client-N"), Some(&listed), "{names:?}");
    for service in [
        "fxproxy",
        "upstream",
        "distributor",
        "watcher",
        "admission",
        "housekeeping",
        "reaper",
        "signals",
        "state-dump",
    ] {
        assert_eq!(names.get(service), Some(&1), "{service}: {names:?}");
    }
    let task_count = comms.len();
    // Every thread has its line: the dump's own too, gone since.
    assert_eq!(
        threads.len(),
        task_count + 1 - (clients - listed),
        "one line per thread"
    );
    let client_line = threads.iter().find(|l| l.contains("name=client-")).unwrap();
    for field in [
        "doing=",
        "peer=127.0.0.1:",
        "key=test…",
        "queue=",
        "last_write=",
    ] {
        assert!(client_line.contains(field), "{client_line}");
    }
    let pending: Vec<&&str> = dump
        .iter()
        .filter(|l| l.contains("pending peer="))
        .collect();
    assert_eq!(pending.len(), 5, "{pending:?}");
    assert_eq!(
        pending.iter().filter(|l| l.contains("phase=head")).count(),
        3
    );
    assert_eq!(
        pending.iter().filter(|l| l.contains("phase=auth")).count(),
        2
    );
    let summary = log
        .lines()
        .find(|l| l.contains("state dump summary"))
        .unwrap();
    assert!(
        summary.contains(&format!("{clients} client threads"))
            && summary.contains("5 pending connections (3 head, 2 auth)"),
        "{summary}"
    );
    assert!(!log.contains(KEY), "a key in full in the log");
    // No stall: while a dump was written, the slowest quote came at most one p99 later than
    // the slowest of the seconds before.
    let calm: Vec<_> = judged
        .iter()
        .filter(|(base_p99, _, _)| *base_p99 <= OVERLOADED_P99_MS)
        .collect();
    if calm.is_empty() {
        // Said, not passed over: under CI (a machine of its own) it fails, by hand it is
        // reported as skipped, as a missing prerequisite is.
        let why = format!(
            "the machine stayed too busy to tell a stall from its own noise: the p99 lag before \
             each of {} dumps was over {OVERLOADED_P99_MS} ms (p99 before, slowest before, \
             slowest during: {judged:?})",
            judged.len()
        );
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("SKIPPED: judging whether a state dump stalls the quotes: {why}");
    } else {
        assert!(
            calm.iter()
                .any(|(base_p99, base_max, dump_max)| dump_max <= &(base_max + base_p99)),
            "every dump delayed the quotes by more than a p99 (p99 before, slowest before, slowest during): {calm:?}"
        );
    }
    drop(silent);
    drop(upgraded);
}
