//! The market's hours end to end: proxies on a clock the test sets to Friday night, Saturday,
//! Sunday evening or a closed date, seen over real sockets through `/healthz`, `/metrics`, the
//! page, the upstream's reconnects and `fxproxy watch`. Nothing here depends on the day the
//! tests run. Most run the library in-process on an injected clock; one runs the real
//! binaries on a Saturday with Debian's libfaketime preloaded.

mod common;

use common::process::{
    command_succeeds, prerequisites_met, temp_dir as process_dir, write_keys, Proxy,
};
use common::*;
use fxproxy::clock::Clock;
use fxproxy::market::{self, Date, Market, MarketHours, MarketState};
use fxproxy::watch::{self, QuietCheck, WatchOptions};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Epoch ms of `YYYY-MM-DD HH:MM` UTC.
fn at(date: &str, hh: u64, mm: u64) -> u64 {
    date.parse::<Date>().unwrap().start_ms() + (hh * 60 + mm) * 60_000
}

/// How long a proxy that would reconnect for staleness is given to show it does not: its
/// upstream looks at the clock every half second.
const NO_RECONNECT: Duration = Duration::from_secs(2);

/// `/healthz`: the status code and the parsed body.
fn health(addr: SocketAddr) -> (u16, Value) {
    let (code, body) = healthz(addr);
    let parsed = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/healthz body is not JSON ({e}): {body}"));
    (code, parsed)
}

fn status(addr: SocketAddr) -> (u16, String) {
    let (code, body) = health(addr);
    (code, body["status"].as_str().unwrap_or("").to_string())
}

/// One unlabelled value from `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let response = http_get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
    body_of(&response)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{response}"))
        .parse()
        .unwrap()
}

/// A proxy for `up` on `clock`, with `extra` config lines; connected and subscribed.
fn proxy_on(up: &TestUpstream, extra: &str, clock: &Clock) -> TestProxy {
    let proxy = TestProxy::start_with_clock(&up.url(), extra, &format!("{KEY}\n"), clock.clone());
    up.expect_subscribe();
    eventually("the upstream connected", || {
        metric(proxy.addr, "fxproxy_upstream_connected") == 1.0
    });
    proxy
}

/// Sends a quote upstream and waits until a client has it, so the proxy has stamped it.
fn deliver_a_quote(up: &TestUpstream, proxy: &TestProxy, n: u64) {
    let mut c = Client::auth(proxy.addr, KEY, Some("EURUSD"));
    // A snapshot of an earlier quote may come first.
    up.send(&quote("EURUSD", n));
    while c.next_text() != quote("EURUSD", n) {}
}

#[test]
fn friday_2200_the_market_closes_and_a_quiet_feed_is_not_stale() {
    let clock = Clock::starting_at(at("2026-12-04", 21, 59));
    let up = TestUpstream::start();
    let proxy = proxy_on(&up, "", &clock);
    deliver_a_quote(&up, &proxy, 1);
    assert_eq!(status(proxy.addr), (200, "ok".to_string()));
    assert_eq!(metric(proxy.addr, "fxproxy_market_open"), 1.0);

    clock.set(at("2026-12-04", 22, 1));
    let (code, body) = health(proxy.addr);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "market_closed", "{body}");
    assert_eq!(body["market_opens_ms"], at("2026-12-06", 21, 0), "{body}");
    assert_eq!(body["market_opens"], "2026-12-06T21:00:00Z", "{body}");
    let age = body["last_quote_age_secs"].as_f64().unwrap();
    assert!((100.0..130.0).contains(&age), "{body}");
    assert_eq!(metric(proxy.addr, "fxproxy_market_open"), 0.0);
    // Two minutes without a quote is four times upstream_stale_secs; the market is closed.
    assert!(
        up.no_subscribe_within(NO_RECONNECT),
        "the upstream was reconnected for staleness while the market was closed"
    );
    assert_eq!(status(proxy.addr), (200, "market_closed".to_string()));
}

#[test]
fn the_same_silence_under_market_hours_always_is_stale() {
    let clock = Clock::starting_at(at("2026-12-05", 12, 0));
    let up = TestUpstream::start();
    let proxy = proxy_on(&up, "market_hours = always", &clock);
    deliver_a_quote(&up, &proxy, 1);
    assert_eq!(status(proxy.addr), (200, "ok".to_string()));
    assert_eq!(metric(proxy.addr, "fxproxy_market_open"), 1.0);

    clock.set(at("2026-12-05", 12, 1));
    up.expect_subscribe();
    eventually("/healthz: stale", || {
        status(proxy.addr) == (503, "stale".to_string())
    });
}

#[test]
fn restarted_on_saturday_it_is_market_closed_not_no_quote_yet() {
    let clock = Clock::starting_at(at("2026-12-05", 12, 0));
    let up = TestUpstream::start();
    let proxy = proxy_on(&up, "", &clock);
    let (code, body) = health(proxy.addr);
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("market_closed"))
    );
    assert_eq!(body["last_quote_age_secs"], Value::Null, "{body}");
    assert_eq!(body["market_opens"], "2026-12-06T21:00:00Z", "{body}");
    assert_eq!(metric(proxy.addr, "fxproxy_market_open"), 0.0);
}

#[test]
fn sunday_2100_the_market_opens_and_a_feed_still_silent_turns_stale() {
    // Friday's last quote, then the weekend.
    let clock = Clock::starting_at(at("2026-12-04", 21, 58));
    let up = TestUpstream::start();
    let proxy = proxy_on(&up, "", &clock);
    deliver_a_quote(&up, &proxy, 1);

    clock.set(at("2026-12-06", 20, 59));
    assert_eq!(status(proxy.addr), (200, "market_closed".to_string()));

    // Open: the source gets upstream_stale_secs (30 s) to start streaming.
    clock.set(at("2026-12-06", 21, 0));
    assert_eq!(status(proxy.addr), (200, "ok".to_string()));
    assert_eq!(metric(proxy.addr, "fxproxy_market_open"), 1.0);

    // A minute after the opening and still no quote: stale, and the upstream reconnects.
    clock.set(at("2026-12-06", 21, 1));
    let (code, body) = health(proxy.addr);
    assert_eq!(code, 503, "{body}");
    up.expect_subscribe();
    eventually("/healthz: stale after the reconnect", || {
        status(proxy.addr) == (503, "stale".to_string())
    });
    deliver_a_quote(&up, &proxy, 2);
    assert_eq!(status(proxy.addr), (200, "ok".to_string()));
}

#[test]
fn a_closed_date_closes_the_market_from_2100_the_evening_before() {
    // Christmas 2026 is a Friday: from Thursday 21:00 it joins the weekend.
    let clock = Clock::starting_at(at("2026-12-24", 20, 59));
    let up = TestUpstream::start();
    let proxy = proxy_on(&up, "market_closed_dates = 2026-12-25, 2027-01-01", &clock);
    deliver_a_quote(&up, &proxy, 1);
    assert_eq!(status(proxy.addr), (200, "ok".to_string()));

    clock.set(at("2026-12-24", 21, 1));
    let (code, body) = health(proxy.addr);
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("market_closed"))
    );
    assert_eq!(body["market_opens"], "2026-12-27T21:00:00Z", "{body}");
    assert_eq!(metric(proxy.addr, "fxproxy_market_open"), 0.0);
    assert!(up.no_subscribe_within(NO_RECONNECT));

    // The page carries the same rule.
    let page = http_get(proxy.addr, "GET / HTTP/1.1\r\n\r\n");
    assert!(
        page.contains(r#""closed_dates":["2026-12-25","2027-01-01"]"#),
        "{page}"
    );
}

#[test]
fn a_broken_upstream_at_the_weekend_is_still_a_503() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let clock = Clock::starting_at(at("2026-12-05", 12, 0));
    let proxy = TestProxy::start_with_clock(
        &format!("ws://127.0.0.1:{port}/"),
        "",
        &format!("{KEY}\n"),
        clock,
    );
    eventually("/healthz: reconnecting", || {
        status(proxy.addr) == (503, "reconnecting".to_string())
    });
    assert_eq!(metric(proxy.addr, "fxproxy_market_open"), 0.0);
}

#[test]
fn the_page_carries_the_rule_even_without_the_http_endpoints() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(
        &up.url(),
        "http_endpoints = false\nmarket_closed_dates = 2026-12-25",
        &format!("{KEY}\n"),
    );
    assert_eq!(
        status_of(&http_get(proxy.addr, "GET /healthz HTTP/1.1\r\n\r\n")),
        404
    );
    let response = http_get(proxy.addr, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&response), 200);
    let page = body_of(&response);
    let rule = fxproxy::page::script(page, r#"<script id="market-rule" type="application/json">"#)
        .expect("the rule's script element");
    let expected = Market::new(MarketHours::Fx, &["2026-12-25".parse().unwrap()]);
    assert_eq!(rule, expected.rule_json());
    let code = fxproxy::page::script(page, r#"<script id="market-js">"#).expect("its code");
    assert!(code.contains("function marketState(rule, now)"), "{code}");
    assert!(page.contains(r#"<div id="market""#), "the banner's element");
}

/// A `Write` the test can read while `watch` is still writing to it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[test]
fn watch_says_once_that_the_market_is_closed() {
    let clock = Clock::starting_at(at("2026-12-04", 21, 59));
    let up = TestUpstream::start();
    let proxy = proxy_on(&up, "", &clock);
    deliver_a_quote(&up, &proxy, 1);
    clock.set(at("2026-12-05", 12, 0));

    let out = Shared::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (mut out, stop) = (out.clone(), Arc::clone(&stop));
        let opts = WatchOptions {
            url: proxy.url(),
            key: KEY.to_string(),
            symbols: None,
            ca_file: None,
            route: watch::Route::Direct,
        };
        let check = QuietCheck {
            clock: clock.clone(),
            after: Duration::from_millis(200),
            again: Duration::from_millis(200),
        };
        std::thread::spawn(move || watch::run_with(&opts, &mut out, &stop, &check))
    };
    eventually("watch's market line", || {
        out.text().contains("market closed")
    });
    // Several quiet periods more: still one line.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    watcher.join().unwrap().expect("watch stopped cleanly");
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("EURUSD "),
        "the snapshot quote: {text}"
    );
    assert_eq!(lines[1], "market closed — opens Sun 21:00 UTC");
}

/// The page's script walks the rule the proxy writes into it; run it in Node over two years of
/// moments, the boundaries and four rules, and compare with [`Market::state`].
#[test]
fn the_pages_rule_agrees_with_the_proxys() {
    if !prerequisites_met(
        "page rule in node",
        &if command_succeeds("node", &["--version"]) {
            vec![]
        } else {
            vec!["node (apt-get install -y nodejs)".to_string()]
        },
    ) {
        return;
    }
    let dates: Vec<Date> = ["2026-12-25", "2027-01-01", "2026-12-30", "2029-01-01"]
        .iter()
        .map(|d| d.parse().unwrap())
        .collect();
    let rules = [
        Market::new(MarketHours::Fx, &dates),
        Market::new(MarketHours::Fx, &[]),
        Market::new(MarketHours::Always, &dates),
        Market::new(MarketHours::Always, &[]),
    ];
    let mut times: Vec<u64> = (0..2 * 366 * 24 * 4)
        .map(|i| at("2026-06-01", 0, 0) + i * 15 * 60_000 + 1234)
        .collect();
    for d in &dates {
        let (from, to) = market::closed_date_window(*d);
        times.extend([from - 1, from, to - 1, to]);
    }
    for day in ["2026-12-04", "2026-12-06", "2028-12-31"] {
        for hh in [20, 21, 22] {
            let t = at(day, hh, 0);
            times.extend([t - 1, t, t + 1]);
        }
    }
    times.extend([0, 1, 46 * 3_600_000 - 1, 46 * 3_600_000]);

    let page = fxproxy::page::render(&rules[0]);
    let code = fxproxy::page::script(&page, r#"<script id="market-js">"#).unwrap();
    let dir = temp_dir("page-rule");
    let script = dir.join("rule.js");
    let rules_json: Vec<String> = rules.iter().map(Market::rule_json).collect();
    std::fs::write(
        &script,
        format!(
            "{code}\nconst rules = [{}];\nconst times = {};\n\
             console.log(JSON.stringify(rules.map(r => times.map(t => {{\n\
               const s = marketState(r, t);\n\
               return s.open ? [s.since] : [s.since, s.opens, humanUtc(s.opens, t)];\n\
             }}))));\n",
            rules_json.join(","),
            serde_json::to_string(&times).unwrap()
        ),
    )
    .unwrap();
    let output = Command::new("node").arg(&script).output().expect("node");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let from_js: Vec<Vec<Value>> = serde_json::from_slice(&output.stdout).unwrap();
    for (rule, js) in rules.iter().zip(&from_js) {
        for (t, got) in times.iter().zip(js) {
            let expected = match rule.state(*t) {
                MarketState::Open { since_ms } => serde_json::json!([since_ms]),
                MarketState::Closed { since_ms, opens_ms } => {
                    serde_json::json!([since_ms, opens_ms, market::human_utc(opens_ms, *t)])
                }
            };
            assert_eq!(
                got,
                &expected,
                "{} under {}",
                market::iso_utc(*t),
                rule.rule_json()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// libfaketime for multi-threaded programs, where Debian's `faketime` package puts it.
fn libfaketime() -> Option<String> {
    let lib = std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file())?;
    Some(lib.display().to_string())
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real `fxproxy` and `fxproxy watch`, their system clocks saying Saturday noon: the
/// production wiring (the system clock behind the rule) answers as the library does.
#[test]
fn the_real_binaries_on_a_saturday() {
    let lib = libfaketime();
    let missing = match &lib {
        Some(_) => vec![],
        None => vec!["libfaketime (apt-get install -y faketime)".to_string()],
    };
    if !prerequisites_met("the real binaries on a Saturday", &missing) {
        return;
    }
    let lib = lib.unwrap();
    // Wall-clock time only: the monotonic clock stays real, because std computes futex
    // deadlines from it and the kernel compares them with the real one.
    let env = [
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME", "@2026-12-05 12:00:00"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let up = TestUpstream::start();
    let keys_dir = process_dir();
    let keys = write_keys(&keys_dir, &[KEY]);
    let proxy = Proxy::spawn_with_env(
        &format!(
            "upstream_url = {}\nsymbols = EURUSD\nuser_keys_file = {}\nstatus_interval_secs = 0\n",
            up.url(),
            keys.display()
        ),
        &env,
    );
    up.expect_subscribe();
    up.send(&quote("EURUSD", 1));
    eventually("/healthz: market_closed", || {
        status(proxy.addr) == (200, "market_closed".to_string())
    });
    let (_, body) = health(proxy.addr);
    assert_eq!(body["market_opens"], "2026-12-06T21:00:00Z", "{body}");
    assert_eq!(metric(proxy.addr, "fxproxy_market_open"), 0.0);
    assert!(proxy.wait_for_log(
        "market closed (market_hours = fx): a silent feed is normal until it opens 2026-12-06T21:00:00Z",
        DEADLINE
    ));

    let mut watch = Killed(
        Command::new(env!("CARGO_BIN_EXE_fxproxy"))
            .args(["watch", &proxy.ws_url(), "--key", KEY])
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting fxproxy watch"),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The snapshot quote at once, then the line after watch's 5 s of silence.
    let first = rx
        .recv_timeout(DEADLINE)
        .expect("watch printed the snapshot");
    assert!(first.starts_with("EURUSD "), "{first}");
    let second = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("watch said the market is closed");
    assert_eq!(second, "market closed — opens Sun 21:00 UTC");
    drop(watch);
    let _ = std::fs::remove_dir_all(&keys_dir);
}

/// The built-in simulator streams at the weekend: on a Saturday a proxy on it says the market
/// is open, as the quotes the user sees do (the page's banner follows the same rule, and hides
/// whenever quotes are in fact flowing).
#[test]
fn the_simulated_market_is_open_at_the_weekend() {
    let clock = Clock::starting_at(at("2026-12-05", 12, 0));
    let proxy = TestProxy::start_with_clock("sim", "", &format!("{KEY}\n"), clock);
    let mut client = Client::auth(proxy.addr, KEY, Some("EURUSD"));
    assert!(client.next_text().contains("EURUSD"));
    eventually("/healthz: ok", || {
        status(proxy.addr) == (200, "ok".to_string())
    });
    assert_eq!(metric(proxy.addr, "fxproxy_market_open"), 1.0);
}

/// The page hides its "market closed" banner while quotes flow, whatever the rule says.
#[test]
fn the_page_says_market_closed_only_when_quotes_stop() {
    if !prerequisites_met(
        "page banner in node",
        &if command_succeeds("node", &["--version"]) {
            vec![]
        } else {
            vec!["node (apt-get install -y nodejs)".to_string()]
        },
    ) {
        return;
    }
    let fx = Market::new(MarketHours::Fx, &[]);
    let page = fxproxy::page::render(&fx);
    let code = fxproxy::page::script(&page, r#"<script id="market-js">"#).unwrap();
    let saturday = at("2026-12-05", 12, 0);
    let dir = temp_dir("page-banner");
    let script = dir.join("banner.js");
    std::fs::write(
        &script,
        format!(
            "{code}\nconst rule = {};\nconst now = {saturday};\n\
             const s = marketState(rule, now);\n\
             console.log(JSON.stringify([marketNote(s, 0, now), marketNote(s, now - 2000, now),\n\
               marketNote(s, now - 60000, now), marketNote(marketState(rule, {}), 0, {})]));\n",
            fx.rule_json(),
            at("2026-12-07", 12, 0),
            at("2026-12-07", 12, 0)
        ),
    )
    .unwrap();
    let output = Command::new("node").arg(&script).output().expect("node");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let notes: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let closed = Value::String("market closed — opens Sun 21:00 UTC".into());
    // No quote yet: closed. A quote 2 s ago: flowing, no banner. A minute ago: closed again.
    // Monday: open.
    assert_eq!(notes, [closed.clone(), Value::Null, closed, Value::Null]);
}
