//! The Autobahn|Testsuite fuzzing client (`wstest -m fuzzingclient`) against fxproxy's client
//! path, each case's outcome compared with the one committed in `tests/autobahn/`.
//!
//! The proxy runs in-process as [`fxproxy::Server::start_echo`]: every connection takes the
//! production path (HTTP parsing, handshake, limits, timeouts, buffer sizes, message budget,
//! read-error-to-close-code mapping) but echoes messages instead of greeting and authenticating,
//! which is what the fuzzing client needs. Every case runs except 12.* and 13.*
//! (permessage-deflate, which fxproxy does not offer). Each case's `behavior` and
//! `behaviorClose` must match the expected file:
//!
//! - `expected-unlimited.json`: `max_message_bytes = 16777216` and no message budget, so every
//!   case can do what it wants. All are OK but these, as for any server built on tungstenite:
//!   6.4.3 and 6.4.4 are NON-STRICT (invalid UTF-8 in one frame that arrives in chops is found
//!   when the whole frame is in, not at the first bad byte; across fragments, 6.4.1 and 6.4.2,
//!   it fails fast), and 7.1.6 and 7.13.x are INFORMATIONAL (the suite only records what happens).
//! - `expected-defaults.json`: the production defaults, `max_message_bytes = 4096` and
//!   `max_client_messages_per_sec = 50`, because a client of a feed sends little. By design the
//!   cases that send a bigger message (1.1.6-1.1.8, 1.2.6-1.2.8, 9.1-9.6, 10.1.1) are closed
//!   with 1009 "Message too big", and those that send a thousand messages back to back (9.7,
//!   9.8) with 1008 "Too many messages". The suite wanted the messages echoed and the client to
//!   close, so it records them FAILED / FAILED; the closes themselves are clean. The rest is as
//!   above.
//!
//! wstest needs Python 2.7: `bash .ci/autobahn-setup` makes a virtualenv with it in
//! `target/autobahn/venv`, or set `FXPROXY_WSTEST` to a `wstest` elsewhere. Without one the tests
//! are skipped with a message, unless `FXPROXY_REQUIRE_AUTOBAHN=1` (as CI sets when the setup
//! worked). Each run takes 15-30 s; the two run side by side.
//!
//! A failure lists every case that changed and keeps wstest's report (`index.html`, with the
//! wire log of each case). After a deliberate change, `UPDATE_AUTOBAHN=1 cargo test --test
//! autobahn` rewrites the expected files and keeps the report; review the diff before committing.
//! `AUTOBAHN_CASES=9.1.*,1.1.6` runs (and compares, or with `UPDATE_AUTOBAHN=1` updates) only
//! the cases named.

mod common;

use fxproxy::{config, Server};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A run takes 15-30 s, mostly the cases that pause on purpose. This leaves room for a loaded
/// machine and still ends a hung run long before the suite's own timeouts would (up to 1000 s
/// a case).
const RUN_DEADLINE: Duration = Duration::from_secs(240);

/// `case id -> [behavior, behaviorClose]`.
type Results = BTreeMap<String, (String, String)>;

#[test]
fn autobahn_with_the_production_limits() {
    run_suite("defaults", "");
}

#[test]
fn autobahn_with_the_limits_lifted() {
    run_suite(
        "unlimited",
        "max_message_bytes = 16777216\nmax_client_messages_per_sec = 0\n",
    );
}

/// What the fuzzing run found in 1.1.6 and 9.1.x, checked without wstest so it runs
/// everywhere: after a message over `max_message_bytes` the client gets the 1009 close frame
/// and then an orderly end of stream, not a reset (which can cost a client the close frame; it
/// came from a panic on the client's thread in debug builds).
#[test]
fn an_oversized_message_is_closed_with_1009_and_then_a_fin() {
    let dir = common::temp_dir("autobahn-oversized");
    let server = start_echo(&dir, "");
    let stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let (mut ws, _) = tungstenite::client(url, stream).unwrap();
    let raw = ws.get_mut();
    // One masked text frame of 65535 bytes, sent whole, as wstest's case 1.1.6 does.
    let len: u16 = 65535;
    let mut frame = vec![0x81, 0x80 | 126];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.resize(frame.len() + usize::from(len), 0);
    raw.write_all(&frame)
        .expect("the proxy reads the rest of the message rather than resetting");
    // Raw reads from here: a WebSocket client would hide a reset behind its own close reply.
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("after {got:?}: the stream ended with {e}, not a FIN"),
        }
    }
    assert!(
        got.len() >= 4 && got[0] == 0x88 && got[2..4] == 1009u16.to_be_bytes(),
        "expected only a close frame with 1009, got {:?}",
        String::from_utf8_lossy(&got)
    );
    // Closing our end ends the proxy's wait for it, so the shutdown is quick.
    drop(ws);
    server.shutdown();
    let _ = fs::remove_dir_all(&dir);
}

fn run_suite(name: &str, extra_config: &str) {
    let Some(wstest) = find_wstest() else { return };
    let dir = common::temp_dir(&format!("autobahn-{name}"));
    let server = start_echo(&dir, extra_config);
    let outdir = dir.join("report");
    // A comma-separated list of case patterns narrows the run, to look at a case or two.
    let only = std::env::var("AUTOBAHN_CASES").ok();
    let cases: Vec<&str> = only
        .as_deref()
        .map_or(vec!["*"], |c| c.split(',').collect());
    let updating = std::env::var_os("UPDATE_AUTOBAHN").is_some();
    let spec = json!({
        "outdir": outdir,
        "servers": [{"agent": "fxproxy", "url": format!("ws://{}", server.local_addr())}],
        "cases": cases,
        "exclude-cases": ["12.*", "13.*"],
        "exclude-agent-cases": {},
    });
    let spec_path = dir.join("fuzzingclient.json");
    fs::write(&spec_path, spec.to_string()).unwrap();

    let started = Instant::now();
    run_wstest(&wstest, &spec_path, &dir);
    eprintln!(
        "autobahn ({name}): wstest ran in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    server.shutdown();

    let got = read_results(&outdir);
    let expected_path = expected_file(name);
    let mut expected = match fs::read_to_string(&expected_path) {
        Ok(text) => parse_expected(&text, &expected_path),
        Err(_) if updating => Results::new(),
        Err(e) => panic!(
            "reading {}: {e} (UPDATE_AUTOBAHN=1 writes it)",
            expected_path.display()
        ),
    };
    if updating {
        if only.is_none() {
            expected.clear();
        }
        expected.extend(got);
        fs::write(&expected_path, render(&expected)).unwrap();
        eprintln!(
            "autobahn ({name}): wrote {}; wstest's report: {}",
            expected_path.display(),
            outdir.join("index.html").display()
        );
        return;
    }
    if only.is_some() {
        expected.retain(|id, _| got.contains_key(id));
    }
    let diff = differences(&expected, &got, &outdir);
    if !diff.is_empty() {
        panic!(
            "autobahn ({name}): {} case(s) differ from {}:\n{}\n\
             wstest's report: {}\n\
             If the change is intended, UPDATE_AUTOBAHN=1 cargo test --test autobahn rewrites \
             the expected files.",
            diff.len(),
            expected_path.display(),
            diff.join("\n"),
            outdir.join("index.html").display()
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

/// The wstest to run, or None (after saying how to get one) when there is none and none is
/// required.
fn find_wstest() -> Option<PathBuf> {
    let path = match std::env::var_os("FXPROXY_WSTEST") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/autobahn/venv/bin/wstest"),
    };
    if path.is_file() {
        return Some(path);
    }
    let message = format!(
        "Autobahn|Testsuite not found at {}: `bash .ci/autobahn-setup` installs it (needs \
         Python 2.7, e.g. from pyenv), or set FXPROXY_WSTEST to a wstest",
        path.display()
    );
    if std::env::var("FXPROXY_REQUIRE_AUTOBAHN").as_deref() == Ok("1") {
        panic!("{message} (FXPROXY_REQUIRE_AUTOBAHN=1)");
    }
    eprintln!("skipped: {message}");
    None
}

fn start_echo(dir: &Path, extra_config: &str) -> Server {
    fs::write(dir.join("users.keys"), "autobahn-key-0123456789\n").unwrap();
    // The echo service has no use for the upstream; `sim` is the one that needs nothing outside.
    let text = format!(
        "listen = 127.0.0.1:0\nupstream_url = sim\nsim_rate = 1\nsymbols = EURUSD\n\
         user_keys_file = users.keys\nstatus_interval_secs = 0\n{extra_config}"
    );
    let path = dir.join("proxy.conf");
    fs::write(&path, &text).unwrap();
    Server::start_echo(config::parse(&text, &path).unwrap()).unwrap()
}

/// Runs wstest to its end, its output in `dir/wstest.log`; kills it at the deadline.
fn run_wstest(wstest: &Path, spec: &Path, dir: &Path) {
    let log_path = dir.join("wstest.log");
    let log = File::create(&log_path).unwrap();
    let mut child = Command::new(wstest)
        .args(["-m", "fuzzingclient", "-s"])
        .arg(spec)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", wstest.display()));
    let until = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "wstest did not finish within {RUN_DEADLINE:?}; killed it. Its output:\n{}",
                tail(&log_path)
            );
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "wstest failed ({status}); its output:\n{}",
        tail(&log_path)
    );
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The results in wstest's `index.json`.
fn read_results(outdir: &Path) -> Results {
    let path = outdir.join("index.json");
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("wstest wrote no report ({}: {e})", path.display()));
    let index: Value = serde_json::from_str(&text).unwrap();
    let cases = index["fxproxy"]
        .as_object()
        .unwrap_or_else(|| panic!("{} has no results for agent fxproxy", path.display()));
    cases
        .iter()
        .map(|(id, c)| {
            let field = |k: &str| c[k].as_str().unwrap_or("?").to_string();
            (id.clone(), (field("behavior"), field("behaviorClose")))
        })
        .collect()
}

fn expected_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/autobahn/expected-{name}.json"))
}

fn parse_expected(text: &str, path: &Path) -> Results {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Case ids in the suite's order (1.1.2 before 1.1.10).
fn case_order(id: &str) -> Vec<u32> {
    id.split('.')
        .map(|n| n.parse().unwrap_or(u32::MAX))
        .collect()
}

/// The expected file: one case a line, in the suite's order, so a diff reads case by case.
fn render(results: &Results) -> String {
    let mut ids: Vec<&String> = results.keys().collect();
    ids.sort_by_key(|id| case_order(id));
    let lines: Vec<String> = ids
        .iter()
        .map(|id| {
            let (behavior, close) = &results[*id];
            format!("  {}: [{}, {}]", json!(id), json!(behavior), json!(close))
        })
        .collect();
    format!("{{\n{}\n}}\n", lines.join(",\n"))
}

/// One line per case that differs, with what the suite said about it.
fn differences(expected: &Results, got: &Results, outdir: &Path) -> Vec<String> {
    let mut ids: Vec<&String> = expected.keys().chain(got.keys()).collect();
    ids.sort_by_key(|id| case_order(id));
    ids.dedup();
    let show = |r: Option<&(String, String)>| match r {
        Some((b, c)) => format!("{b}/{c}"),
        None => "(not run)".to_string(),
    };
    ids.into_iter()
        .filter(|id| expected.get(*id) != got.get(*id))
        .map(|id| {
            format!(
                "  {id}: expected {}, got {}{}",
                show(expected.get(id)),
                show(got.get(id)),
                case_details(outdir, id)
            )
        })
        .collect()
}

/// The case's description and the suite's verdict, from its per-case report.
fn case_details(outdir: &Path, id: &str) -> String {
    let file = outdir.join(format!("fxproxy_case_{}.json", id.replace('.', "_")));
    let Ok(text) = fs::read_to_string(file) else {
        return String::new();
    };
    let Ok(case) = serde_json::from_str::<Value>(&text) else {
        return String::new();
    };
    let field = |k: &str| case[k].as_str().unwrap_or("").to_string();
    format!(
        "\n      {}\n      result: {}\n      close: {} (close code from fxproxy: {})",
        field("description"),
        field("result"),
        field("resultClose"),
        case["remoteCloseCode"]
    )
}
