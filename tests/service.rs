//! Running it as a service: the HTTP endpoints on the client port, the metrics, key reloads,
//! limits, and the real binary's signals, exit codes and logs.

mod common;

use common::process::{self, Proxy};
use common::*;
use std::fs;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tungstenite::Message;

#[test]
fn healthz_follows_the_upstream() {
    let up = TestUpstream::start();
    // Open at every hour, so the statuses here do not depend on the day the test runs (the
    // weekend's are in tests/weekend.rs).
    let proxy = TestProxy::start(
        &up.url(),
        "market_hours = always",
        &format!("{KEY}\n{OTHER_KEY} EURUSD\n"),
    );
    let get = || http_get(proxy.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    up.expect_subscribe();
    let before = get();
    assert_eq!(status_of(&before), 503, "{before}");
    assert!(body_of(&before).contains("no_quote_yet"), "{before}");
    up.send(&quote("EURUSD", 1));
    let mut c = Client::auth(proxy.addr, KEY, None);
    c.next_text();
    let ok = get();
    assert_eq!(status_of(&ok), 200, "{ok}");
    let body = body_of(&ok);
    assert!(
        body.starts_with("{\"status\":\"ok\"") && body.ends_with("}\n"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1);
    up.close();
    up.expect_subscribe();
}

#[test]
fn healthz_says_when_the_upstream_is_unreachable() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = TestProxy::start(&format!("ws://127.0.0.1:{port}/"), "", &format!("{KEY}\n"));
    eventually("a reconnecting health report", || {
        let (code, body) = healthz(proxy.addr);
        code == 503 && body.contains("\"status\":\"reconnecting\"") && body.contains("since_ms")
    });
}

#[test]
fn unknown_paths_malformed_requests_and_disabled_endpoints() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    assert_eq!(
        status_of(&http_get(proxy.addr, "GET /nope HTTP/1.1\r\n\r\n")),
        404
    );
    assert_eq!(status_of(&http_get(proxy.addr, "BLAH\r\n\r\n")), 400);
    assert_eq!(
        status_of(&http_get(proxy.addr, "GET / HTTP/1.1\r\n\r\n")),
        200
    );
    let off = TestProxy::start(
        &up.url(),
        "http_endpoints = false\npage = false",
        &format!("{KEY}\n"),
    );
    for path in ["/healthz", "/metrics", "/"] {
        let r = http_get(off.addr, &format!("GET {path} HTTP/1.1\r\n\r\n"));
        assert_eq!(status_of(&r), 404, "{path}: {r}");
    }
}

#[test]
fn a_silent_connection_is_closed_after_the_handshake_deadline() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(&up.url(), "handshake_timeout_secs = 1", &format!("{KEY}\n"));
    let mut s = std::net::TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 16];
    let t = std::time::Instant::now();
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// Parses Prometheus text into (name{labels}, value) pairs, checking HELP/TYPE lines.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            typed.insert(name.to_string());
        } else if line.starts_with("# HELP ") {
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            // A histogram's series carry a suffix on the family's name.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "{name} has no TYPE line");
            out.push((series.to_string(), value.parse().unwrap()));
        }
    }
    out
}

fn metric(text: &str, series: &str) -> f64 {
    parse_metrics(text)
        .into_iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .1
}

#[test]
fn metrics_move_when_clients_connect_and_quotes_flow() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    let scrape = || body_of(&http_get(proxy.addr, "GET /metrics HTTP/1.1\r\n\r\n")).to_string();
    up.expect_subscribe();
    let before = scrape();
    assert_eq!(metric(&before, "fxproxy_clients_connected"), 0.0);
    assert_eq!(metric(&before, "fxproxy_upstream_connected"), 1.0);
    assert!(metric(&before, "process_threads") >= 4.0);
    let mut a = Client::auth(proxy.addr, KEY, None);
    let mut b = Client::auth(proxy.addr, KEY, None);
    let mut bad = Client::auth(proxy.addr, "wrong-key-123456", None);
    assert_eq!(bad.expect_close().0, 1008);
    proxy.wait_for_clients(2);
    for n in 0..5 {
        up.send(&quote("EURUSD", n));
    }
    for _ in 0..5 {
        a.next_text();
        b.next_text();
    }
    // A writer counts its frames just after the flush that delivered them.
    eventually("deliveries counted", || {
        metric(&scrape(), "fxproxy_quotes_delivered_total") == 10.0
    });
    let after = scrape();
    assert_eq!(metric(&after, "fxproxy_clients_connected"), 2.0);
    assert_eq!(metric(&after, "fxproxy_auth_successes_total"), 2.0);
    assert_eq!(
        metric(&after, "fxproxy_auth_failures_total{reason=\"bad_key\"}"),
        1.0
    );
    assert_eq!(metric(&after, "fxproxy_quotes_received_total"), 5.0);
    assert_eq!(metric(&after, "fxproxy_quotes_delivered_total"), 10.0);
    assert_eq!(metric(&after, "fxproxy_upstream_connects_total"), 1.0);
    assert!(metric(&after, "fxproxy_last_quote_age_seconds{symbol=\"EURUSD\"}") < 60.0);
}

#[test]
fn removing_a_key_disconnects_its_clients() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    let mut doomed = Client::auth(proxy.addr, OTHER_KEY, None);
    let mut kept = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(2);
    // A broken file keeps the old keys.
    std::fs::write(proxy.dir.join("users.keys"), "short\n").unwrap();
    std::fs::write(proxy.dir.join("users.keys"), format!("{KEY}\n")).unwrap();
    assert_eq!(
        doomed.expect_close(),
        (1008, "Authentication failed".to_string())
    );
    up.send(&quote("EURUSD", 1));
    assert_eq!(kept.next_text(), quote("EURUSD", 1));
    let mut again = Client::auth(proxy.addr, OTHER_KEY, None);
    assert_eq!(
        again.expect_close(),
        (1008, "Authentication failed".to_string())
    );
}

#[test]
fn a_key_file_that_fails_to_parse_keeps_the_old_keys() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    let mut c = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    std::fs::write(proxy.dir.join("users.keys"), "short\n").unwrap();
    eventually("the failed reload counted", || {
        let text = http_get(proxy.addr, "GET /metrics HTTP/1.1\r\n\r\n");
        metric(
            body_of(&text),
            "fxproxy_key_file_reloads_total{result=\"failed\"}",
        ) == 1.0
    });
    // The client is still served and the key still works for new connections.
    up.send(&quote("EURUSD", 2));
    assert_eq!(c.next_text(), quote("EURUSD", 2));
    let mut fresh = Client::auth(proxy.addr, KEY, None);
    assert_eq!(fresh.next_text(), quote("EURUSD", 2));
    let text = http_get(proxy.addr, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(
        metric(
            body_of(&text),
            "fxproxy_key_file_reloads_total{result=\"ok\"}"
        ),
        0.0
    );
}

#[test]
fn a_reload_applies_at_once_and_says_what_changed() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    let mut first = Client::auth(proxy.addr, KEY, None);
    let mut other = Client::auth(proxy.addr, OTHER_KEY, None);
    proxy.wait_for_clients(2);
    let path = proxy.dir.join("proxy.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}max_clients_per_key = 1\nclient_ping_secs = 7\nlisten = 127.0.0.1:1\n")
            .replacen("listen = 127.0.0.1:0\n", "", 1),
    )
    .unwrap();
    let reloaded = proxy.server().reload().expect("the reload goes through");
    assert_eq!(
        reloaded.applied,
        ["client_ping_secs", "max_clients_per_key"]
    );
    assert_eq!(reloaded.waiting, ["listen"]);
    assert_eq!((reloaded.keys, reloaded.disconnected), (2, 0));
    // In force as soon as reload returns: a second client of KEY is one too many.
    let mut second = Client::auth(proxy.addr, KEY, None);
    assert_eq!(
        second.expect_close(),
        (1008, "Too many connections for this key".to_string())
    );
    up.send(&quote("EURUSD", 1));
    assert_eq!(first.next_text(), quote("EURUSD", 1));
    assert_eq!(other.next_text(), quote("EURUSD", 1));
    let metrics = scrape(proxy.addr);
    assert_eq!(
        metric(&metrics, "fxproxy_config_reloads_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(metric(&metrics, "fxproxy_config_pending_restart"), 1.0);

    std::fs::write(&path, "listen = \n").unwrap();
    assert!(proxy.server().reload().is_err());
    let metrics = scrape(proxy.addr);
    assert_eq!(
        metric(&metrics, "fxproxy_config_reloads_total{result=\"failed\"}"),
        1.0
    );
}

#[test]
fn the_client_over_max_clients_is_refused_while_the_others_keep_receiving() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(&up.url(), "max_clients = 2", &format!("{KEY}\n"));
    up.expect_subscribe();
    let mut a = Client::auth(proxy.addr, KEY, None);
    let mut b = Client::auth(proxy.addr, KEY, None);
    let refused = http_get(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(status_of(&refused), 503, "{refused}");
    up.send(&quote("GBPUSD", 3));
    assert_eq!(a.next_text(), quote("GBPUSD", 3));
    assert_eq!(b.next_text(), quote("GBPUSD", 3));
}

#[test]
fn max_clients_per_key() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(
        &up.url(),
        "max_clients_per_key = 1",
        &format!("{KEY}\n{OTHER_KEY}\n"),
    );
    up.expect_subscribe();
    let _a = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    let mut second = Client::auth(proxy.addr, KEY, None);
    assert_eq!(
        second.expect_close(),
        (1008, "Too many connections for this key".to_string())
    );
    let mut other = Client::auth(proxy.addr, OTHER_KEY, None);
    up.send(&quote("EURUSD", 1));
    assert_eq!(other.next_text(), quote("EURUSD", 1));
}

#[test]
fn a_message_over_max_message_bytes_is_refused() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(&up.url(), "max_message_bytes = 256", &format!("{KEY}\n"));
    let mut c = Client::connect(proxy.addr);
    let big = format!(r#"{{"userKey":"{}"}}"#, "k".repeat(1000));
    c.ws.send(Message::text(big)).unwrap();
    assert_eq!(c.expect_close(), (1009, "Message too big".to_string()));
    let metrics = proxy.server().metrics();
    assert_eq!(metrics.protocol_errors[2].load(Ordering::SeqCst), 1);
}

#[test]
fn origins_not_on_the_list_are_refused() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(
        &up.url(),
        "allowed_origins = https://dash.example.com",
        &format!("{KEY}\n"),
    );
    let upgrade = |origin: &str| {
        http_get(
            proxy.addr,
            &format!("GET / HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
        )
    };
    assert_eq!(status_of(&upgrade("https://evil.example.com")), 403);
    let ok = std::net::TcpStream::connect(proxy.addr).unwrap();
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/",
        proxy.addr
    ))
    .unwrap();
    req.headers_mut()
        .insert("Origin", "https://dash.example.com".parse().unwrap());
    let (mut ws, resp) = tungstenite::client(req, ok).expect("an allowed origin is accepted");
    assert_eq!(resp.status(), 101);
    assert_eq!(ws.read().unwrap(), Message::text("Connected"));
}

#[test]
fn sigterm_gives_every_client_1001_and_exits_0() {
    let dir = temp_dir("sigterm");
    std::fs::write(dir.join("users.keys"), format!("{KEY}\n")).unwrap();
    let mut proxy = Proxy::spawn(&format!(
        "upstream_url = sim\nsymbols = EURUSD,GBPUSD\nsim_rate = 50\nuser_keys_file = {}\n",
        dir.join("users.keys").display()
    ));
    let mut clients: Vec<Client> = (0..3)
        .map(|_| Client::auth(proxy.addr, KEY, None))
        .collect();
    for c in &mut clients {
        c.next_text();
    }
    let t = std::time::Instant::now();
    proxy.signal("TERM");
    for c in &mut clients {
        let code = loop {
            match c.next().expect("a close frame") {
                Message::Close(Some(f)) => break u16::from(f.code),
                _ => continue,
            }
        };
        assert_eq!(code, 1001);
    }
    let status = proxy.wait_exit(Duration::from_secs(3)).expect("exited");
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn a_rejected_key_never_appears_in_the_log() {
    let dir = temp_dir("logkey");
    std::fs::write(dir.join("users.keys"), format!("{KEY}\n")).unwrap();
    let proxy = Proxy::spawn(&format!(
        "upstream_url = sim\nsymbols = EURUSD\nupstream_api_key = provider-secret-abcdef\nuser_keys_file = {}\nlog_level = trace\n",
        dir.join("users.keys").display()
    ));
    let rejected = "rejected-secret-key-42";
    let mut c = Client::auth(proxy.addr, rejected, None);
    assert_eq!(
        c.expect_close(),
        (1008, "Authentication failed".to_string())
    );
    let mut ok = Client::auth(proxy.addr, KEY, None);
    ok.next_text();
    assert!(proxy.wait_for_log("authentication refused", DEADLINE));
    let log = proxy.stderr_text();
    assert!(log.contains("reje"), "the log names a prefix: {log}");
    for secret in [
        rejected,
        KEY,
        "provider-secret-abcdef",
        "secret-key",
        "0123456789",
    ] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
}

#[test]
fn check_config_names_file_line_and_key() {
    let dir = temp_dir("check");
    let path = dir.join("bad.conf");
    std::fs::write(
        &path,
        "upstream_url = sim\nsymbols = EURUSD\nauth_timeout_secs = ten\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fxproxy"))
        .args(["--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.conf:3") && err.contains("auth_timeout_secs"),
        "{err}"
    );
    let shipped = std::process::Command::new(env!("CARGO_BIN_EXE_fxproxy"))
        .args(["--check-config", "--config", "proxy.conf"])
        .output()
        .unwrap();
    assert_eq!(
        shipped.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&shipped.stderr)
    );
}

#[test]
fn running_out_of_descriptors_keeps_the_connected_clients_served() {
    let dir = temp_dir("fds");
    std::fs::write(dir.join("users.keys"), format!("{KEY}\n")).unwrap();
    let mut proxy = Proxy::spawn_with_fd_limit(
        &format!(
            "upstream_url = sim\nsymbols = EURUSD\nsim_rate = 50\nuser_keys_file = {}\n",
            dir.join("users.keys").display()
        ),
        48,
    );
    // Connect until the proxy has no descriptor left for the next one.
    let mut clients = Vec::new();
    while !proxy.wait_for_log("cannot accept new clients", Duration::from_millis(1)) {
        assert!(
            clients.len() < 48,
            "the fd limit never bit:\n{}",
            proxy.stderr_text()
        );
        let stream = std::net::TcpStream::connect(proxy.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let stream = tungstenite::stream::MaybeTlsStream::Plain(stream);
        match tungstenite::client(format!("ws://{}/", proxy.addr), stream) {
            Ok((ws, _)) => {
                let mut c = Client { ws };
                c.ws.send(Message::text(format!(r#"{{"userKey":"{KEY}"}}"#)))
                    .unwrap();
                c.tcp()
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                clients.push(c);
            }
            // Not answered within 300 ms: never accepted, if the proxy says it is out of
            // descriptors; otherwise only a busy host's delay, and the next one is tried.
            Err(_) => {
                if proxy.wait_for_log("cannot accept new clients", Duration::from_secs(2)) {
                    break;
                }
            }
        }
    }
    assert!(
        proxy.wait_for_log("cannot accept new clients", DEADLINE),
        "{}",
        proxy.stderr_text()
    );
    // Those already connected keep receiving quotes.
    for c in clients.iter_mut().take(5) {
        let q = c.next_text();
        let q = if q == "Connected" { c.next_text() } else { q };
        assert!(q.contains("EURUSD"), "{q}");
    }
    // Logged once, however long it lasts.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        proxy
            .stderr_text()
            .matches("cannot accept new clients")
            .count(),
        1
    );
    // Free some descriptors: new clients are accepted again.
    clients.truncate(clients.len().saturating_sub(10));
    let mut late = Client::auth(proxy.addr, KEY, None);
    assert!(late.next_text().contains("EURUSD"));
    proxy.signal("TERM");
    assert_eq!(
        proxy
            .wait_exit(Duration::from_secs(3))
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn a_status_line_is_logged_every_interval() {
    let dir = temp_dir("status");
    std::fs::write(dir.join("users.keys"), format!("{KEY}\n")).unwrap();
    let proxy = Proxy::spawn(&format!(
        "upstream_url = sim\nsymbols = EURUSD\nsim_rate = 50\nstatus_interval_secs = 1\nuser_keys_file = {}\n",
        dir.join("users.keys").display()
    ));
    let mut c = Client::auth(proxy.addr, KEY, None);
    c.next_text();
    assert!(
        proxy.wait_for_log("status: 1 clients", DEADLINE),
        "{}",
        proxy.stderr_text()
    );
    let log = proxy.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("status: 1 clients"))
        .unwrap();
    assert!(
        line.contains("quotes/s in")
            && line.contains("slow-consumer drops")
            && line.contains("upstream connected"),
        "{line}"
    );
}

/// A shell's usual soft open-file limit (1024, here 256) would hold the proxy to a few hundred
/// clients although the hard limit is far higher: the proxy raises the soft limit to the hard
/// one, says so, and warns only when the hard limit itself is too low.
#[test]
fn a_low_soft_open_file_limit_is_raised_to_the_hard_one() {
    let hard = fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            let row = l
                .lines()
                .find(|r| r.starts_with("Max open files"))?
                .to_string();
            row.split_whitespace().nth(4)?.parse::<u64>().ok()
        })
        .expect("this test reads /proc/self/limits");
    if hard <= 256 {
        eprintln!("SKIPPED: the hard open-file limit ({hard}) leaves nothing to raise");
        return;
    }
    let dir = process::temp_dir();
    let keys = process::write_keys(&dir, &[KEY]);
    let proxy = Proxy::spawn_after(
        &format!(
            "{}max_clients = 100\n",
            process::simulator_config(&keys, "EURUSD")
        ),
        &[],
        "ulimit -Sn 256 && ",
    );
    let limits = fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let row = limits
        .lines()
        .find(|r| r.starts_with("Max open files"))
        .unwrap();
    let soft: u64 = row.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(soft, hard, "{row}");
    let log = proxy.stderr_text();
    assert!(
        log.contains(&format!(
            "open-file limit raised from 256 to {hard} (the hard limit)"
        )),
        "{log}"
    );
    assert!(!log.contains("LimitNOFILE"), "no descriptor warning: {log}");
}
