//! Clients written with common WebSocket libraries — Python `websockets` and Node `ws` — work
//! against the real proxy unchanged, over `ws://` and over `wss://` trusting a private CA the
//! way their users would (`SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`): they authenticate, get
//! quotes, ping, are refused with 1008 for a wrong key, and close cleanly; and they speak
//! TraderMade's v2 protocol as its own client does: log in, subscribe, get the `sub_ack` and
//! ticks, unsubscribe, and are answered `login_reject` for a wrong key
//! (`tests/interop/client.py`, `tests/interop/client.mjs`). And a hostile peer nobody here
//! wrote, `slowhttptest` in slowloris mode, does not take the service down, on a plain port or
//! a TLS one.
//!
//! Needs `pip install -r tests/interop/requirements.txt`, `npm ci --prefix tests/interop` and
//! `apt-get install slowhttptest`; without them a test is skipped locally and fails under CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::{
    command_succeeds, prerequisites_met, proc_status, run_script, simulator_config, write_keys,
    Proxy,
};
use common::tls::{Endpoint, TlsSetup};

const KEY: &str = "demo-key-0123456789";
const SYMBOLS: &str = "EURUSD,GBPUSD,USDJPY";

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Runs `program script ws-url key symbols` against a fresh proxy on the simulator; with
/// `tls`, over `wss://` with a test CA, which the program is told to trust through the
/// environment variable `ca_env` names.
fn run_client(program: &str, script: &str, tls: Option<&str>) {
    let dir = interop_dir();
    let keys_dir = common::process::temp_dir();
    let keys = write_keys(&keys_dir, &[KEY]);
    let setup = tls.map(|_| TlsSetup::new(&keys_dir));
    let tls_lines = setup.as_ref().map(TlsSetup::config).unwrap_or_default();
    let proxy = Proxy::spawn(&format!("{}{tls_lines}", simulator_config(&keys, SYMBOLS)));
    let url = match &setup {
        Some(_) => format!("wss://{}/", proxy.addr),
        None => proxy.ws_url(),
    };
    let mut cmd = Command::new(program);
    cmd.arg(dir.join(script))
        .arg(url)
        .arg(KEY)
        .arg(SYMBOLS)
        .current_dir(&dir);
    if let (Some(var), Some(setup)) = (tls, &setup) {
        cmd.env(var, &setup.ca_file);
    }
    let run = run_script(cmd, proxy.dir(), Duration::from_secs(90));
    let _ = std::fs::remove_dir_all(&keys_dir);
    run.assert_success(script);
}

fn python_ready() -> bool {
    let mut missing = Vec::new();
    if !command_succeeds("python3", &["-c", "import websockets.asyncio.client"]) {
        missing.push(
            "python3 with websockets (pip install -r tests/interop/requirements.txt)".to_owned(),
        );
    }
    prerequisites_met("python websockets interop", &missing)
}

fn node_ready() -> bool {
    let mut missing = Vec::new();
    if !command_succeeds("node", &["--version"]) {
        missing.push("node (apt-get install -y nodejs npm)".to_owned());
    }
    if !interop_dir().join("node_modules/ws").is_dir() {
        missing.push("tests/interop/node_modules (npm ci --prefix tests/interop)".to_owned());
    }
    prerequisites_met("node ws interop", &missing)
}

#[test]
fn python_websockets_client() {
    if python_ready() {
        run_client("python3", "client.py", None);
    }
}

#[test]
fn python_websockets_client_over_wss() {
    // Python's ssl module (OpenSSL) trusts the CA file SSL_CERT_FILE names.
    if python_ready() {
        run_client("python3", "client.py", Some("SSL_CERT_FILE"));
    }
}

#[test]
fn node_ws_client() {
    if node_ready() {
        run_client("node", "client.mjs", None);
    }
}

#[test]
fn node_ws_client_over_wss() {
    // Node trusts the CAs in NODE_EXTRA_CA_CERTS besides its own.
    if node_ready() {
        run_client("node", "client.mjs", Some("NODE_EXTRA_CA_CERTS"));
    }
}

/// `slowhttptest`, the Debian package, in slowloris mode: 1,000 connections that send their
/// headers a fragment a second. The proxy must stay available throughout (the tool's own
/// probe and a WebSocket client that authenticates and receives quotes mid-attack), and give
/// back every thread afterwards.
#[test]
fn slowhttptest_slowloris_does_not_take_the_service_down() {
    slowloris(false);
}

/// The same against a TLS port: slowhttptest does its TLS handshakes, then trickles.
#[test]
fn slowhttptest_slowloris_does_not_take_a_tls_port_down() {
    slowloris(true);
}

fn slowloris(tls: bool) {
    let mut missing = Vec::new();
    if !command_succeeds("sh", &["-c", "command -v slowhttptest"]) {
        missing.push("slowhttptest (apt-get install -y slowhttptest)".to_owned());
    }
    if !prerequisites_met("slowhttptest slowloris", &missing) {
        return;
    }
    let keys_dir = common::process::temp_dir();
    let keys = write_keys(&keys_dir, &[KEY]);
    let setup = tls.then(|| TlsSetup::new(&keys_dir));
    let tls_lines = setup.as_ref().map(TlsSetup::config).unwrap_or_default();
    let proxy = Proxy::spawn(&format!(
        "{}{tls_lines}max_pending_connections = 64\nhandshake_timeout_secs = 2\nstatus_interval_secs = 0\n",
        simulator_config(&keys, SYMBOLS)
    ));
    let (ep, base) = match &setup {
        Some(setup) => (
            Endpoint::tls(proxy.addr, setup.ca.client_config()),
            format!("https://{}", proxy.addr),
        ),
        None => (Endpoint::plain(proxy.addr), proxy.http_url()),
    };
    let mut healthy = common::Client::auth_to(&ep, KEY, None);
    healthy.next_text();
    let baseline = proc_status(proxy.pid(), "Threads:");

    let stats = proxy.dir().join("slowloris");
    let mut cmd = Command::new("slowhttptest");
    cmd.args([
        "-H", "-c", "1000", "-r", "500", "-i", "1", "-l", "6", "-p", "2", "-g",
    ])
    .arg("-o")
    .arg(&stats)
    .arg("-u")
    .arg(format!("{base}/healthz"));
    let dir = proxy.dir().to_path_buf();
    let attack = std::thread::spawn(move || run_script(cmd, &dir, Duration::from_secs(60)));

    // Mid-attack, a new client gets in and is served, and the connected one keeps receiving.
    let mut attacked_at = None;
    common::eventually("the attack's statistics file", || {
        stats.with_extension("csv").exists()
    });
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let mut c = common::Client::auth_to(&ep, KEY, None);
        c.next_text();
        attacked_at.get_or_insert(started.elapsed());
        healthy.next_text();
        std::thread::sleep(Duration::from_secs(1));
    }
    let run = attack.join().expect("the slowhttptest thread");
    run.assert_success("slowhttptest");
    let csv = std::fs::read_to_string(stats.with_extension("csv")).expect("the statistics");
    // Seconds,Closed,Pending,Connected,Service Available: the last is 0 when the probe failed.
    let rows: Vec<Vec<u64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .collect();
    assert!(rows.len() >= 5, "{csv}");
    assert!(
        rows.iter().all(|r| r.len() == 5 && r[4] > 0),
        "service unavailable:\n{csv}"
    );
    let peak = rows.iter().map(|r| r[3]).max().unwrap_or(0);
    eprintln!(
        "slowloris ({base}): 1,000 connections; at most {peak} held open at once; a new client served in {:?}; service available every second",
        attacked_at.unwrap_or_default()
    );
    assert!(
        common::process::poll(Duration::from_secs(10), || proc_status(
            proxy.pid(),
            "Threads:"
        ) <= baseline),
        "threads {} after the attack, {baseline} before",
        proc_status(proxy.pid(), "Threads:")
    );
    let _ = std::fs::remove_dir_all(&keys_dir);
}
