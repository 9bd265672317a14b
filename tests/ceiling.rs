//! Past the thread ceiling: the real binary under lowered limits (an address-space limit, a
//! cgroup's task limit), without touching the machine's sysctls. A storm bigger than the
//! ceiling must leave the proxy alive, serving every client it admitted and refusing the rest
//! cleanly; a fleet that leaves and comes back at once is served again in full.

mod common;

use common::process::{write_keys, Proxy};
use common::storm::{raise_fd_limit, Storm};
use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Client threads the address-space limit is set to leave room for.
const ROOM_FOR: u64 = 300;
/// What `fxproxy` counts a client thread's address space at (src/base/ceiling.rs).
const PER_THREAD: u64 = 192 * 1024;
/// One storm at a time: they would starve each other on two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The storms' clients are held, unread and not answering pings, until the test ends: the
/// lag limit must not close them meanwhile. With the default (5 s after an unanswered ping,
/// and the keep-alive pings on a 30 s grid of the wall clock) a run slowed down by a busy host
/// could cross a tick and see its fleet closed as slow consumers, depending on the second it
/// started at.
fn config(up: &TestUpstream) -> String {
    let dir = common::process::temp_dir();
    let keys = write_keys(&dir, &[KEY]);
    format!(
        "upstream_url = {}\nsymbols = EURUSD\nuser_keys_file = {}\nstatus_interval_secs = 0\n\
         max_client_lag_secs = 600\n",
        up.url(),
        keys.display()
    )
}

/// The client limit the proxy logged at start-up, and what set it.
fn serving_at_most(proxy: &Proxy) -> (usize, String) {
    assert!(proxy.wait_for_log("serving at most", DEADLINE));
    let log = proxy.stderr_text();
    let line = log.lines().find(|l| l.contains("serving at most")).unwrap();
    let rest = line.split("serving at most ").nth(1).unwrap();
    let n = rest.split(' ').next().unwrap().parse().unwrap();
    (n, line.to_string())
}

fn assert_alive(proxy: &mut Proxy) {
    assert!(
        proxy.wait_exit(Duration::from_millis(100)).is_none(),
        "the proxy exited:\n{}",
        proxy.stderr_text()
    );
    let log = proxy.stderr_text();
    assert!(!log.contains("fatal runtime error"), "{log}");
    assert!(!log.contains("panic"), "{log}");
}

/// Storms `n` clients, retrying those refused with 503 (as real clients do, after a moment)
/// until `n` are served or the deadline passes.
fn serve_in_full(addr: std::net::SocketAddr, n: usize) -> (Vec<std::net::TcpStream>, usize) {
    let until = Instant::now() + Duration::from_secs(30);
    let mut served = Vec::new();
    let mut retried = 0;
    while served.len() < n {
        assert!(
            Instant::now() < until,
            "only {} of {n} served",
            served.len()
        );
        let storm = Storm::run(addr, KEY, n - served.len(), 8);
        assert!(storm.failed.is_empty(), "{}", storm.failures());
        retried += storm.refused.len();
        served.extend(storm.served);
        if served.len() < n {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    (served, retried)
}

#[test]
fn a_storm_past_the_address_space_ceiling_is_refused_cleanly_and_the_fleet_comes_back() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if raise_fd_limit(4096) < 4096 {
        eprintln!("SKIPPED: not enough descriptors for the storm");
        return;
    }
    // With two malloc arenas the address space the allocator may take is small and known.
    let env = [("MALLOC_ARENA_MAX", "2")];
    let up = TestUpstream::start();
    let text = config(&up);
    // The address space of the idle proxy, then a limit with room for ROOM_FOR threads.
    let probe = Proxy::spawn_with_env(&text, &env);
    up.expect_subscribe();
    let vm_kb = common::process::proc_status(probe.pid(), "VmSize:");
    drop(probe);
    let limit_kb = vm_kb + (2 * 64 + 128) * 1024 + ROOM_FOR * PER_THREAD / 1024;
    let mut proxy = Proxy::spawn_after(&text, &env, &format!("ulimit -v {limit_kb} && "));
    up.expect_subscribe();
    up.send(&quote("EURUSD", 1));
    let (most, line) = serving_at_most(&proxy);
    assert!(line.contains("RLIMIT_AS"), "{line}");
    assert!((100..=1000).contains(&most), "{line}");

    // A storm of 200 more than fit: the proxy lives, serves `most`, refuses the rest.
    let storm = Storm::run(proxy.addr, KEY, most + 200, 8);
    assert_alive(&mut proxy);
    assert!(storm.failed.is_empty(), "{}", storm.failures());
    assert_eq!(storm.served.len(), most);
    assert_eq!(storm.refused.len(), 200);
    assert!(storm.refused.iter().all(|s| *s == 503));
    let text = scrape(proxy.addr);
    assert_eq!(
        metric(
            &text,
            "fxproxy_rejected_connections_total{reason=\"thread_ceiling\"}"
        ),
        200.0
    );
    assert_eq!(metric(&text, "fxproxy_clients_connected"), most as f64);
    eprintln!(
        "{line}\na storm of {}: {most} served, 200 refused with 503",
        most + 200
    );

    // The whole fleet leaves at once and comes straight back.
    drop(storm);
    let back = Instant::now();
    let (again, retried) = serve_in_full(proxy.addr, most);
    assert_alive(&mut proxy);
    assert_eq!(again.len(), most);
    eprintln!(
        "the fleet left and came back at once: all {most} served again in {:?} ({retried} retried after a 503)",
        back.elapsed()
    );
    up.send(&quote("EURUSD", 2));
    assert_eq!(
        metric_of(proxy.addr, "fxproxy_clients_connected"),
        most as f64
    );
}

/// A pids cgroup of our own (v1 `pids` controller, or v2), removed when dropped.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn make(max: u64) -> Option<Cgroup> {
        let name = format!("fxproxy-test-{}", std::process::id());
        for base in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"] {
            let dir = PathBuf::from(base).join(&name);
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            if std::fs::write(dir.join("pids.max"), max.to_string()).is_ok() {
                return Some(Cgroup { dir });
            }
            let _ = std::fs::remove_dir(&dir);
        }
        None
    }

    fn set_max(&self, max: u64) {
        std::fs::write(self.dir.join("pids.max"), max.to_string()).unwrap();
    }

    fn current(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Shell commands that move the shell (and so what it executes) into the cgroup.
    fn join(&self) -> String {
        format!("echo $$ > {}/cgroup.procs && ", self.dir.display())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once the proxy has been killed; the kernel may take a moment.
        let until = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn past_a_cgroup_task_limit_the_proxy_refuses_cleanly_and_never_aborts() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cgroup) = Cgroup::make(160) else {
        eprintln!("SKIPPED: no pids cgroup can be made here (needs root and a writable cgroupfs)");
        return;
    };
    let up = TestUpstream::start();
    let mut proxy = Proxy::spawn_after(&config(&up), &[], &cgroup.join());
    up.expect_subscribe();
    up.send(&quote("EURUSD", 1));
    let (most, line) = serving_at_most(&proxy);
    assert!(line.contains("pids.max"), "{line}");
    assert!(most > 50 && most < 160, "{line}");
    // The proxy's own tasks before any client: the service threads.
    let idle = cgroup.current();
    let storm = Storm::run(proxy.addr, KEY, most + 100, 8);
    assert_alive(&mut proxy);
    assert!(storm.failed.is_empty(), "{}", storm.failures());
    assert_eq!(storm.served.len(), most);
    assert_eq!(storm.refused.len(), 100);
    eprintln!(
        "{line}\na storm of {}: {most} served, 100 refused with 503",
        most + 100
    );
    drop(storm);
    // Waits, not speeds: a hundred threads winding down on a host starved of CPU (seen in a
    // cpu cgroup capped at 5%) take longer than the usual 10 s.
    let settle = Duration::from_secs(60);
    assert!(
        common::process::poll(settle, || {
            metric_of(proxy.addr, "fxproxy_clients_connected") == 0.0
        }),
        "the clients did not leave within {settle:?}"
    );
    // A client is counted out before its thread has exited; the room below is only what it
    // says once every client thread has gone.
    assert!(
        common::process::poll(settle, || cgroup.current() <= idle),
        "the client threads did not exit within {settle:?}: {} tasks, {idle} before",
        cgroup.current()
    );

    // Someone else in the cgroup takes the tasks the proxy counted on: its threads now fail
    // to start, and those clients are told to come back later. Nothing aborts.
    let room = 5;
    let current = cgroup.current();
    cgroup.set_max(current + room);
    let storm = Storm::run(proxy.addr, KEY, 40, 4);
    assert_alive(&mut proxy);
    let refused_1013 = storm
        .failed
        .iter()
        .filter(|f| f.starts_with("closed with 1013"))
        .count();
    assert_eq!(
        storm.served.len() + refused_1013,
        40,
        "{}",
        storm.failures()
    );
    assert!(storm.served.len() <= room as usize);
    assert!(
        metric_of(
            proxy.addr,
            "fxproxy_rejected_connections_total{reason=\"no_thread\"}"
        ) >= 1.0
    );
    eprintln!(
        "with {room} tasks left in the cgroup: {} served, {refused_1013} closed with 1013",
        storm.served.len()
    );
}
