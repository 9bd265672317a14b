//! What operators watch the proxy with (issue 25), over real sockets: the standard `process_*`
//! series and the build in `/metrics`, the latency histograms filling as quotes flow, `/livez`
//! and `/readyz`, `admin_listen` (and what the client port stops serving once it is set), the
//! state dump over HTTP, JSON logs, the journal's priorities, and the shipped alert rules.

mod common;

use common::process::{command_succeeds, prerequisites_met, temp_dir, write_keys, Proxy};
use common::{
    body_of, eventually, http_get, metric, status_of, Client, TestProxy, TestUpstream, DEADLINE,
    KEY,
};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = http_get(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    (status_of(&r), body_of(&r).to_string())
}

#[test]
fn metrics_carry_the_process_and_the_build() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    let (status, text) = get(proxy.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
    assert!(metric(&text, "process_cpu_seconds_total") >= 0.0);
    let pid = std::process::id();
    let rss_kb = common::process::proc_status(pid, "VmRSS:") as f64;
    let rss = metric(&text, "process_resident_memory_bytes");
    assert!(
        rss > rss_kb * 1024.0 / 4.0 && rss < rss_kb * 1024.0 * 4.0,
        "{rss}"
    );
    assert!(metric(&text, "process_virtual_memory_bytes") >= rss);
    let fds = metric(&text, "process_open_fds");
    assert!(fds >= 3.0, "{fds}");
    assert!(metric(&text, "process_max_fds") >= fds);
    assert!(metric(&text, "process_threads") >= 4.0);
    let started = metric(&text, "process_start_time_seconds");
    let now = now_ms() as f64 / 1000.0;
    assert!(started <= now && started > now - 3600.0, "{started}");
    let build = format!(
        "fxproxy_build_info{{version=\"{}\",target=\"",
        env!("CARGO_PKG_VERSION")
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&build))
        .unwrap_or_else(|| panic!("no build info in\n{text}"));
    assert!(
        line.contains("-linux-") && line.contains(",rustc=\"1."),
        "{line}"
    );
    assert!(line.ends_with("\"} 1"), "{line}");
    // Renamed series, with the old names kept for one release.
    assert!(metric(&text, "fxproxy_threads_live") >= 4.0);
    assert_eq!(
        metric(&text, "fxproxy_threads_started"),
        metric(&text, "fxproxy_threads_live")
    );
    assert!(text.contains("# HELP fxproxy_threads_started Deprecated, to be removed in the next release: use fxproxy_threads_live."));
}

/// A v1 quote stamped `age_ms` before now.
fn timed_quote(n: u64, age_ms: u64) -> String {
    format!(
        r#"{{"symbol":"EURUSD","ts":"{}","bid":1.{n:05},"ask":1.{:05},"mid":1.{n:05}}}"#,
        now_ms() - age_ms,
        n + 2
    )
}

#[test]
fn latency_histograms_fill_as_quotes_flow() {
    let up = TestUpstream::start();
    // Pings every second: the round trip fills without waiting for 32 KiB of quotes.
    let proxy = TestProxy::start(
        &up.url(),
        "client_ping_secs = 1\nmarket_hours = always",
        &format!("{KEY}\n"),
    );
    up.expect_subscribe();
    let mut client = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    let count = |text: &str, name: &str| metric(text, &format!("{name}_count"));
    let mut n = 0;
    let mut text = String::new();
    eventually("every latency histogram to fill", || {
        // Quotes go on flowing: a writer adds what it measured once a second, as it writes.
        for _ in 0..5 {
            n += 1;
            up.send(&timed_quote(n, 200));
            client.text_within(Duration::from_secs(2));
        }
        text = get(proxy.addr, "/metrics").1;
        count(&text, "fxproxy_upstream_quote_age_seconds") >= 5.0
            && count(&text, "fxproxy_client_queue_wait_seconds") >= 1.0
            && count(&text, "fxproxy_client_ping_rtt_seconds") >= 1.0
    });
    // Each quote was at least 200 ms old when it came in, by its own timestamp.
    let bucket = |name: &str, le: &str| metric(&text, &format!("{name}_bucket{{le=\"{le}\"}}"));
    let ages = count(&text, "fxproxy_upstream_quote_age_seconds");
    assert_eq!(bucket("fxproxy_upstream_quote_age_seconds", "0.1"), 0.0);
    assert!(metric(&text, "fxproxy_upstream_quote_age_seconds_sum") >= 0.2 * ages);
    // On loopback, every wait and round trip is well under ten seconds.
    for name in [
        "fxproxy_client_queue_wait_seconds",
        "fxproxy_client_ping_rtt_seconds",
    ] {
        assert_eq!(bucket(name, "10"), count(&text, name), "{name}");
    }
}

#[test]
fn livez_stays_up_while_the_provider_is_down_and_readyz_says_why() {
    // Nobody listens there: the upstream never connects.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TestProxy::start(
        &format!("ws://{nowhere}/"),
        "market_hours = always",
        &format!("{KEY}\n"),
    );
    let (status, body) = get(proxy.addr, "/livez");
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"alive\"}\n"));
    for path in ["/readyz", "/healthz"] {
        let (status, body) = get(proxy.addr, path);
        assert_eq!(status, 503, "{path}: {body}");
        assert!(
            body.contains("\"status\":\"not_connected\"") || body.contains("reconnecting"),
            "{path}: {body}"
        );
    }

    let up = TestUpstream::start();
    let ready = TestProxy::start(&up.url(), "market_hours = always", &format!("{KEY}\n"));
    up.expect_subscribe();
    up.send(&timed_quote(1, 0));
    eventually("ready", || get(ready.addr, "/readyz").0 == 200);
    // The same verdict under both names (the quote's age in the body moves on between them).
    let verdict = |path| {
        let (status, body) = get(ready.addr, path);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        (status, json["status"].clone())
    };
    assert_eq!(verdict("/readyz"), verdict("/healthz"));
    assert_eq!(get(ready.addr, "/livez").0, 200);
}

#[test]
fn admin_listen_serves_operators_and_the_client_port_keeps_only_health() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(
        &up.url(),
        "admin_listen = 127.0.0.1:0\nmarket_hours = always",
        &format!("{KEY}\n"),
    );
    let admin = proxy.server().admin_addr().expect("the admin address");
    assert_ne!(admin, proxy.addr);
    up.expect_subscribe();
    let mut client = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    up.send(&timed_quote(1, 0));
    client.next_text();

    // The client port: health for load balancers, the page; nothing that shows the insides.
    assert_eq!(get(proxy.addr, "/metrics").0, 404);
    assert_eq!(get(proxy.addr, "/debug/state").0, 404);
    assert_eq!(get(proxy.addr, "/livez").0, 200);
    assert_eq!(get(proxy.addr, "/readyz").0, 200);
    assert_eq!(get(proxy.addr, "/").0, 200);

    // The admin address: metrics, health and the state dump; not the page.
    let (status, text) = get(admin, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "fxproxy_clients_connected"), 1.0);
    assert!(metric(&text, "process_open_fds") > 0.0);
    assert_eq!(get(admin, "/livez").0, 200);
    assert_eq!(get(admin, "/readyz").0, 200);
    assert_eq!(get(admin, "/healthz").0, 200);
    assert_eq!(get(admin, "/").0, 404);
    let (status, dump) = get(admin, "/debug/state");
    assert_eq!(status, 200);
    assert!(dump.starts_with("state dump: pid "), "{dump}");
    assert!(dump.contains(" name=client-"), "{dump}");
    assert!(dump.contains(" name=admin "), "{dump}");
    assert!(
        dump.contains("key=test…"),
        "a key is never shown in full: {dump}"
    );
    assert!(!dump.contains(KEY), "{dump}");
    assert!(
        dump.lines()
            .last()
            .unwrap()
            .starts_with("state dump summary: "),
        "{dump}"
    );
    let head = http_get(admin, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status_of(&head), 405);
    let garbage = http_get(admin, "NOT HTTP\r\n\r\n");
    assert_eq!(status_of(&garbage), 400);

    // Without admin_listen the client port serves /metrics, and never the state dump.
    let plain = TestProxy::simple(&up);
    assert_eq!(get(plain.addr, "/metrics").0, 200);
    assert_eq!(get(plain.addr, "/debug/state").0, 404);
}

#[test]
fn a_taken_admin_address_stops_start_up_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = temp_dir();
    let keys = write_keys(&dir, &[KEY]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fxproxy"))
        .arg("--config")
        .arg({
            let path = dir.join("proxy.conf");
            std::fs::write(
                &path,
                format!(
                    "listen = 127.0.0.1:0\nupstream_url = sim\nsymbols = EURUSD\n\
                     user_keys_file = {}\nadmin_listen = {}\n",
                    keys.display(),
                    taken.local_addr().unwrap()
                ),
            )
            .unwrap();
            path
        })
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin_listen: "), "{stderr}");
}

/// The proxy on the simulator at `log_level = debug`, with `extra` config lines.
fn spawn_logging(extra: &str, env: &[(&str, &str)], setup: &str) -> Proxy {
    let dir = temp_dir();
    let keys = write_keys(&dir, &[KEY]);
    let config = format!(
        "upstream_url = sim\nsymbols = EURUSD\nsim_rate = 20\nuser_keys_file = {}\n\
         log_level = debug\nstatus_interval_secs = 0\n{extra}",
        keys.display()
    );
    Proxy::spawn_after(&config, env, setup)
}

/// A client refused for a key whose first characters hold a newline: a warning with peer text.
fn refuse_a_hostile_key(proxy: &Proxy) {
    // `\n` in the JSON of the auth message: a newline in the key.
    let mut bad = Client::auth(proxy.addr, r"bad\nkey-0123456789", None);
    assert_eq!(bad.expect_close().0, 1008);
    assert!(proxy.wait_for_log("unknown key", DEADLINE));
}

#[test]
fn json_logs_are_one_object_a_line_with_the_same_escaping() {
    let started = now_ms();
    let mut proxy = spawn_logging("log_format = json\n", &[], "");
    refuse_a_hostile_key(&proxy);
    proxy.signal("TERM");
    assert!(proxy.wait_exit(DEADLINE).is_some_and(|s| s.success()));
    let text = proxy.stderr_text();
    let mut warned = false;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let o = v.as_object().unwrap();
        let keys: Vec<&str> = o.keys().map(String::as_str).collect();
        assert_eq!(keys, ["level", "message", "thread", "time"], "{line}");
        let time = o["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == 27, "{line}");
        let level = o["level"].as_str().unwrap();
        assert!(
            ["error", "warn", "info", "debug", "trace"].contains(&level),
            "{line}"
        );
        let message = o["message"].as_str().unwrap();
        assert!(!message.contains('\n'), "{line}");
        if message.ends_with(r#"unknown key "bad\n…""#) {
            assert_eq!(level, "warn");
            assert_ne!(o["thread"], "unnamed");
            warned = true;
        }
    }
    assert!(warned, "the refusal, escaped as in a text line:\n{text}");
    assert!(text
        .lines()
        .any(|l| l.contains("\"message\":\"SIGINT or SIGTERM received: stopping\"")));
    // Every time within the run, in UTC (ISO 8601 strings of one shape sort by time).
    let (from, to) = (
        fxproxy::market::iso_utc(started - 1000),
        fxproxy::market::iso_utc(now_ms() + 1000),
    );
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let time = &v["time"].as_str().unwrap()[..19];
        assert!(
            time >= &from[..19] && time <= &to[..19],
            "{time} not in {from}..{to}"
        );
    }
}

/// `JOURNAL_STREAM` set to the device and inode of the stderr the proxy is given, as systemd
/// does when it connects a service to the journal.
const AS_JOURNAL: &str =
    "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && export JOURNAL_STREAM && ";

#[test]
fn under_the_journal_every_line_carries_its_priority() {
    if !command_succeeds("stat", &["-L", "-c", "%d:%i", "/proc/self/fd/0"]) {
        assert!(prerequisites_met(
            "observability::journal",
            &["GNU stat (coreutils)".to_string()]
        ));
        return;
    }
    let mut proxy = spawn_logging("", &[], AS_JOURNAL);
    refuse_a_hostile_key(&proxy);
    proxy.signal("TERM");
    assert!(proxy.wait_exit(DEADLINE).is_some());
    let text = proxy.stderr_text();
    for line in text.lines() {
        let level = ["<3>", "<4>", "<6>", "<7>"]
            .into_iter()
            .find(|p| line.starts_with(p))
            .unwrap_or_else(|| panic!("no priority: {line:?}"));
        let word = match level {
            "<3>" => "[ERROR]",
            "<4>" => "[WARN]",
            "<6>" => "[INFO]",
            _ => "[DEBUG]",
        };
        assert!(line.contains(word), "{line}");
    }
    assert!(text
        .lines()
        .any(|l| l.starts_with("<4>") && l.contains("unknown key")));
    assert!(text
        .lines()
        .any(|l| l.starts_with("<6>") && l.contains("listening on")));

    // JSON too; and a JOURNAL_STREAM inherited from elsewhere (not this stderr) changes nothing.
    let mut json = spawn_logging("log_format = json\n", &[], AS_JOURNAL);
    json.signal("TERM");
    assert!(json.wait_exit(DEADLINE).is_some());
    for line in json.stderr_text().lines() {
        let (prefix, object) = line.split_at(3);
        assert!(["<3>", "<4>", "<6>", "<7>"].contains(&prefix), "{line}");
        serde_json::from_str::<serde_json::Value>(object).unwrap();
    }
    let mut elsewhere = spawn_logging("", &[("JOURNAL_STREAM", "1:1")], "");
    elsewhere.signal("TERM");
    assert!(elsewhere.wait_exit(DEADLINE).is_some());
    assert!(
        elsewhere.stderr_text().lines().all(|l| l.starts_with("20")),
        "{}",
        elsewhere.stderr_text()
    );
}

/// The metric names `text` uses: words starting `fxproxy_` or `process_`, a histogram's
/// `_bucket`, `_sum` and `_count` taken off.
fn series_named_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut rest = text;
    while let Some(at) = rest.find(['f', 'p']) {
        let before = text.len() - rest.len() + at;
        let starts_word = text[..before].chars().last().map_or(true, |c| !word(c));
        let tail = &rest[at..];
        let len = tail.find(|c: char| !word(c)).unwrap_or(tail.len());
        let name = &tail[..len];
        if starts_word && (name.starts_with("fxproxy_") || name.starts_with("process_")) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_string());
        }
        rest = &tail[len.max(1)..];
    }
    names
}

#[test]
fn shipped_alert_rules_and_dashboard_pass_promtool_and_name_real_series() {
    let missing: Vec<String> = if command_succeeds("promtool", &["--version"]) {
        vec![]
    } else {
        vec!["promtool (apt-get install prometheus)".to_string()]
    };
    if !prerequisites_met("observability::promtool", &missing) {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let prometheus = root.join("contrib/prometheus");
    let promtool = |args: &[&str], dir: &std::path::Path| {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    promtool(&["check", "rules", "fxproxy-alerts.yml"], &prometheus);
    promtool(&["test", "rules", "fxproxy-alerts.test.yml"], &prometheus);

    // The dashboard's queries, each checked as the expression of a recording rule.
    let dashboard = std::fs::read_to_string(root.join("contrib/grafana/fxproxy-dashboard.json"))
        .expect("the dashboard");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let mut exprs = Vec::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: fxproxy_dashboard:query{i}\n        expr: {}\n",
            serde_json::Value::String(expr)
        ));
    }
    let dir = temp_dir();
    std::fs::write(dir.join("dashboard-queries.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard-queries.yml"], &dir);

    // Every series they name is one fxproxy writes.
    let written = [
        include_str!("../src/ops/metrics.rs"),
        include_str!("../src/backbone/status.rs"),
    ]
    .concat();
    let alerts = std::fs::read_to_string(prometheus.join("fxproxy-alerts.yml")).unwrap();
    for name in series_named_in(&alerts)
        .iter()
        .chain(&series_named_in(&dashboard))
    {
        assert!(
            written.contains(&format!("\"{name}\"")),
            "{name} is not a series fxproxy writes"
        );
    }
    assert!(series_named_in(&alerts).contains("fxproxy_market_open"));
}
