//! Reconnect storms against the real binary on the shipped defaults: every client of a fleet
//! connecting in the same instant (a proxy restart, a network blip), as a fleet does, not
//! paced the way a benchmark paces itself.

mod common;

use common::process::{proc_status, write_keys, Proxy};
use common::raw_ws::{FrameReader, TEXT};
use common::storm::{raise_fd_limit, Storm};
use common::*;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The storm the issue asks `cargo test` to survive: at least 2,000 clients at once.
const STORM: usize = 2000;

/// One storm at a time: two at once on a two-core machine would measure each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A proxy on the shipped defaults: only what every deployment must set.
fn proxy_on_defaults(up: &TestUpstream, extra: &str) -> Proxy {
    let dir = common::process::temp_dir();
    let keys = write_keys(&dir, &[KEY]);
    Proxy::spawn(&format!(
        "upstream_url = {}\nsymbols = EURUSD\nuser_keys_file = {}\n{extra}",
        up.url(),
        keys.display()
    ))
}

/// Sends quote `n` and waits until the proxy has it, so every client joining later gets it
/// as its snapshot.
fn seed(up: &TestUpstream, proxy: &Proxy, n: u64) {
    up.send(&quote("EURUSD", n));
    eventually("the proxy to have the quote", || {
        metric_of(proxy.addr, "fxproxy_quotes_received_total") >= n as f64
    });
}

/// Whether `s` receives a text frame holding `needle` within `within`.
fn receives(s: &mut TcpStream, needle: &str, within: Duration) -> bool {
    let until = Instant::now() + within;
    let mut frames = FrameReader::default();
    let mut chunk = [0u8; 8192];
    loop {
        while let Some(f) = frames.next_frame() {
            if f.opcode == TEXT && String::from_utf8_lossy(&f.payload).contains(needle) {
                return true;
            }
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => frames.push(&chunk[..n]),
            _ => return false,
        }
    }
}

fn enough_descriptors(needed: u64) -> bool {
    let got = raise_fd_limit(needed);
    if got < needed {
        eprintln!("SKIPPED: the open-file limit is {got}, {needed} are needed");
        return false;
    }
    true
}

#[test]
fn a_storm_of_2000_clients_at_once_is_served_in_full_on_the_shipped_defaults() {
    let _serial = one_at_a_time();
    // The clients' sockets and the proxy's, with room to spare.
    if !enough_descriptors(2 * STORM as u64 + 512) {
        return;
    }
    let up = TestUpstream::start();
    let proxy = proxy_on_defaults(&up, "");
    up.expect_subscribe();
    seed(&up, &proxy, 1);
    let pid = proxy.pid();
    let rss_before = proc_status(pid, "VmRSS:");

    let mut storm = Storm::run(proxy.addr, KEY, STORM, 16);
    assert!(
        storm.failed.is_empty() && storm.refused.is_empty(),
        "{} served, {} refused ({:?}...), {} failed: {}",
        storm.served.len(),
        storm.refused.len(),
        storm.refused.iter().take(3).collect::<Vec<_>>(),
        storm.failed.len(),
        storm.failures()
    );
    assert_eq!(storm.served.len(), STORM);
    let text = scrape(proxy.addr);
    assert_eq!(metric(&text, "fxproxy_clients_connected"), STORM as f64);
    for reason in ["pending_full", "place"] {
        let series = format!("fxproxy_pending_evictions_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &series), 0.0, "{series}");
    }
    for reason in ["max_clients", "thread_ceiling", "no_thread"] {
        let series = format!("fxproxy_rejected_connections_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &series), 0.0, "{series}");
    }
    let peak = proc_status(pid, "VmHWM:");
    let threads = proc_status(pid, "Threads:");

    // Every one of them is live: the next quote reaches them all.
    up.send(&quote("EURUSD", 2));
    let live = storm
        .served
        .iter_mut()
        .map(|s| receives(s, "\"bid\":1.00002", DEADLINE))
        .filter(|got| *got)
        .count();
    assert_eq!(live, STORM, "clients that got the next quote");
    eprintln!(
        "{STORM} clients at once on the shipped defaults: all served in {:?}; \
         VmRSS {rss_before} kB before, peak {peak} kB; {threads} threads (one per client)",
        storm.took
    );
}

#[test]
fn a_storm_past_max_clients_serves_max_clients_and_refuses_the_rest_with_503() {
    let _serial = one_at_a_time();
    if !enough_descriptors(2 * 600 + 512) {
        return;
    }
    let up = TestUpstream::start();
    let proxy = proxy_on_defaults(&up, "max_clients = 300\n");
    up.expect_subscribe();
    seed(&up, &proxy, 1);

    let storm = Storm::run(proxy.addr, KEY, 600, 8);
    let text = scrape(proxy.addr);
    // Every client answers its 101 at once, so none is dropped for a newcomer: each is
    // either served or refused.
    assert!(storm.failed.is_empty(), "{}", storm.failures());
    assert_eq!(storm.served.len(), 300);
    assert_eq!(storm.refused.len(), 300);
    assert!(
        storm.refused.iter().all(|s| *s == 503),
        "{:?}",
        storm.refused
    );
    assert_eq!(
        metric(&text, "fxproxy_pending_evictions_total{reason=\"place\"}"),
        0.0
    );
    assert_eq!(
        metric(
            &text,
            "fxproxy_rejected_connections_total{reason=\"max_clients\"}"
        ),
        storm.refused.len() as f64
    );
    assert_eq!(metric(&text, "fxproxy_clients_connected"), 300.0);
    eprintln!(
        "600 at once for 300 places: 300 served, 300 refused with 503, in {:?}",
        storm.took
    );
}
