//! The real binary as systemd runs it (docs/install.md, "Running as a systemd service"), with
//! systemd emulated (see `common::socket_unit`): it tells `NOTIFY_SOCKET` when it is ready,
//! reloading (and whether a reload was refused, and why), stopping, and alive (the watchdog);
//! under the socket unit it serves on the socket it is given, and a restart closes its clients
//! with 1012 spread over `drain_secs` while their reconnects wait in the socket's queue for the
//! next process: nobody is refused. Without the socket unit a stop is 1001, at once, as ever
//! (tests/process_faults.rs, tests/signals.rs, tests/service.rs).

mod common;

use common::fleet::Fleet;
use common::process::{self, simulator_config, Proxy};
use common::socket_unit::{status_of, Notifications, SocketUnit};
use common::{storm, Client, KEY};
use std::time::{Duration, Instant};

/// A proxy on the built-in simulator with one key, and `extra` lines.
fn config(extra: &str) -> String {
    let dir = process::temp_dir();
    let keys = process::write_keys(&dir, &[KEY]);
    format!(
        "{}status_interval_secs = 0\n{extra}",
        simulator_config(&keys, "EURUSD,GBPUSD")
    )
}

/// Microseconds on CLOCK_MONOTONIC, as systemd reads them.
fn monotonic_usec() -> u64 {
    let now = nix::time::ClockId::CLOCK_MONOTONIC.now().unwrap();
    now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000
}

#[test]
fn under_the_socket_unit_it_serves_on_the_socket_it_is_given_and_a_stop_is_1012() {
    let unit = SocketUnit::new();
    let mut proxy = unit.start(&config(""), &[]);
    let (_, ready) = unit.notify.expect("READY=1", 0);
    assert_eq!(
        status_of(&ready),
        Some(format!("serving on {} (on the socket systemd passed)", unit.addr).as_str())
    );
    assert!(proxy.wait_for_log(
        "on the socket systemd passed (socket activation)",
        Duration::from_secs(10)
    ));
    // The file's `listen` (127.0.0.1:0, written by the helper) is not used, and it says so.
    assert!(
        proxy.wait_for_log("listen = 127.0.0.1:0 in ", Duration::from_secs(10))
            && proxy
                .stderr_text()
                .contains("is not used: systemd passed the listening socket"),
        "{}",
        proxy.stderr_text()
    );
    let mut client = Client::auth(unit.addr, KEY, None);
    assert!(client.next_text().contains("\"symbol\""));

    let mark = unit.notify.count();
    let status = unit.stop(&mut proxy, Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    let (_, stopping) = unit.notify.expect("STOPPING=1", mark);
    assert!(
        status_of(&stopping).is_some_and(|s| s.contains("1012")),
        "{stopping}"
    );
    assert_eq!(
        client.close_after_quotes(),
        (1012, "Server restarting".to_string())
    );
    // The socket is the unit's, still listening: the next connection waits in its queue.
    let waiting = std::net::TcpStream::connect(unit.addr).expect("the unit's socket listens");
    drop(waiting);
}

#[test]
fn systemd_is_told_when_it_is_ready_reloading_refusing_a_reload_and_stopping() {
    let notify = Notifications::start();
    let base = config("");
    let mut proxy = Proxy::spawn_with_env(&base, &[("NOTIFY_SOCKET", &notify.path())]);
    let (_, ready) = notify.expect("READY=1", 0);
    assert_eq!(
        status_of(&ready),
        Some(format!("serving on {} (on its own socket)", proxy.addr).as_str())
    );
    let mut client = Client::auth(proxy.addr, KEY, None);
    client.next_text();

    // A reload that is taken: RELOADING=1 stamped on CLOCK_MONOTONIC, then READY=1 saying what
    // changed (Type=notify-reload waits for both).
    proxy.write_config(&format!("{base}max_clients_per_key = 5\n"));
    let before = monotonic_usec();
    proxy.signal("HUP");
    let (i, reloading) = notify.expect("RELOADING=1", 1);
    let stamp: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(
        before <= stamp && stamp <= monotonic_usec(),
        "{before} {stamp}"
    );
    let (j, reloaded) = notify.expect("READY=1", i + 1);
    assert_eq!(
        status_of(&reloaded),
        Some("configuration reloaded: 1 client key(s); applied max_clients_per_key")
    );

    // A broken file: refused, the running configuration kept, and systemctl status says why.
    proxy.write_config(&format!("{base}client_ping_secs = ten\n"));
    proxy.signal("HUP");
    let (k, _) = notify.expect("RELOADING=1", j + 1);
    let (_, refused) = notify.expect("READY=1", k + 1);
    let why = status_of(&refused).unwrap_or_default();
    assert!(
        why.starts_with("configuration reload refused, the running configuration is kept: ")
            && why.contains("key `client_ping_secs`: expected a whole number of seconds"),
        "{why}"
    );

    // Without the socket unit a stop is going away: 1001 at once, and STOPPING=1.
    let mark = notify.count();
    proxy.signal("TERM");
    assert_eq!(client.close_after_quotes().0, 1001);
    let status = proxy.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    let (_, stopping) = notify.expect("STOPPING=1", mark);
    assert!(
        status_of(&stopping).is_some_and(|s| s.contains("1001")),
        "{stopping}"
    );
}

#[test]
fn the_watchdog_is_fed_while_the_proxy_works() {
    let notify = Notifications::start();
    // A 0.9 s watchdog: a ping every 0.3 s while the distributor and the admission loop beat.
    let proxy = Proxy::spawn_with_env(
        &config(""),
        &[
            ("NOTIFY_SOCKET", &notify.path()),
            ("WATCHDOG_USEC", "900000"),
        ],
    );
    let (mut at, _) = notify.expect("READY=1", 0);
    for _ in 0..3 {
        at = notify.expect("WATCHDOG=1", at + 1).0;
    }
    drop(proxy);
}

#[test]
fn a_second_sigterm_cuts_the_drain_short() {
    let unit = SocketUnit::new();
    // A drain far longer than the test may wait.
    let mut proxy = unit.start(&config("drain_secs = 600\n"), &[]);
    unit.notify.expect("READY=1", 0);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::auth(unit.addr, KEY, None)).collect();
    for c in &mut clients {
        c.next_text();
    }
    proxy.signal("TERM");
    assert!(
        proxy.wait_for_log(
            "closing 3 client(s) with 1012 over 600 s",
            Duration::from_secs(20)
        ),
        "{}",
        proxy.stderr_text()
    );
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    for c in &mut clients {
        assert_eq!(c.close_after_quotes().0, 1012);
    }
    assert!(proxy
        .stderr_text()
        .contains("second termination signal: closing the remaining clients at once"));
}

/// The clients of [`a_restart_under_the_socket_unit_refuses_nobody`]: 100, or
/// `FXPROXY_RESTART_CLIENTS` (docs/install.md's figure is 1,000).
fn fleet_size() -> usize {
    std::env::var("FXPROXY_RESTART_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
}

#[test]
fn a_restart_under_the_socket_unit_refuses_nobody() {
    let n = fleet_size();
    let drain = Duration::from_secs(2);
    // Each client holds a socket here and one in the proxy.
    storm::raise_fd_limit(2 * n as u64 + 512);
    let unit = SocketUnit::new();
    let conf = config(&format!("drain_secs = {}\n", drain.as_secs()));
    let mut first = unit.start(&conf, &[]);
    unit.notify.expect("READY=1", 0);
    let began = Instant::now();
    let fleet = Fleet::start(unit.addr, KEY, n);
    assert!(
        fleet
            .wait_all_served_since(began, Duration::from_secs(120))
            .is_some(),
        "{} of {n} clients served before the restart",
        fleet.served_since(began)
    );

    // systemctl restart: SIGTERM, wait for the exit, start the next process on the socket.
    let mark = unit.notify.count();
    let restart = Instant::now();
    let status = unit.stop(&mut first, Duration::from_secs(60));
    let stopped = Instant::now();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit: {status:?}\n{}",
        first.stderr_text()
    );
    unit.notify.expect("STOPPING=1", mark);
    let second = unit.start(&conf, &[]);
    unit.notify.expect("READY=1", mark);
    let ready = Instant::now();
    let back = fleet.wait_all_served_since(restart, Duration::from_secs(120));
    let logs = fleet.stop();
    let Some(back) = back else {
        panic!(
            "not every client was served again: {} of {n}",
            logs.iter()
                .filter(|l| l.served.iter().any(|&t| t >= restart))
                .count()
        );
    };

    // Nobody was refused and nothing failed: every reconnect waited in the socket's queue.
    let refused: Vec<&String> = logs.iter().flat_map(|l| &l.refused).collect();
    let failed: Vec<&String> = logs.iter().flat_map(|l| &l.failed).collect();
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // Each was told 1012 once.
    let closes: Vec<(u16, Instant)> = logs.iter().flat_map(|l| l.closes.clone()).collect();
    assert_eq!(closes.len(), n, "one close each");
    assert!(closes.iter().all(|&(code, _)| code == 1012), "{closes:?}");
    // Spread over the drain, not one wave. The proxy closes the i-th client no earlier than
    // drain * i / n after it got SIGTERM, so these bounds hold however loaded the host is.
    let by_half = closes
        .iter()
        .filter(|&&(_, t)| t < restart + drain / 2)
        .count();
    assert!(
        by_half <= n / 2 + 1,
        "{by_half} of {n} closed in the first half"
    );
    let last = closes.iter().map(|&(_, t)| t).max().unwrap_or(restart);
    assert!(
        last >= restart + drain.mul_f64((n - 1) as f64 / n as f64),
        "the last close came {:?} after SIGTERM",
        last - restart
    );
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    println!(
        "restart under the socket unit, {n} clients, drain_secs = {}: the old process stopped in {}, \
         the next was ready {} later; every client served again {} after SIGTERM; \
         refused {}, failed {}",
        drain.as_secs(),
        secs(stopped - restart),
        secs(ready - stopped),
        secs(back - restart),
        refused.len(),
        failed.len()
    );
    drop(second);
}
