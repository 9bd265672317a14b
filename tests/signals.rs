//! The real binary's signals: SIGHUP reloads proxy.conf and the key file while clients stay
//! connected (a broken file changes nothing, a key that needs a restart waits for one),
//! SIGUSR1 writes a state dump of every thread without stalling the quotes, SIGINT and
//! SIGTERM stop the proxy as they always did, and Ctrl-C ends `fxproxy watch` quietly.

mod common;

use common::process::{self, Proxy};
use common::traffic::{healthy_clients, small_quote, Traffic};
use common::{metric_of, Client, TestUpstream, KEY, OTHER_KEY};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A key added to the key file while the proxy runs.
const NEW_KEY: &str = "new-key-5555555555";

/// Replaces a file the way deploy tools do (a new file renamed over the old), so the proxy's
/// key file check never reads it half written.
fn replace_file(path: &Path, text: &str) {
    let new = path.with_extension("new");
    std::fs::write(&new, text).unwrap();
    std::fs::rename(&new, path).unwrap();
}

fn reloads(addr: SocketAddr, result: &str) -> f64 {
    metric_of(
        addr,
        &format!("fxproxy_config_reloads_total{{result=\"{result}\"}}"),
    )
}

#[test]
fn sighup_under_load_changes_a_limit_and_the_keys_and_nobody_else_notices() {
    let up = TestUpstream::start();
    let dir = process::temp_dir();
    let keys = dir.join("users.keys");
    replace_file(&keys, &format!("{KEY}\n{OTHER_KEY}\n"));
    let url = up.url();
    let conf = |extra: &str| {
        format!(
            "upstream_url = {url}\nsymbols = EURUSD,GBPUSD\nuser_keys_file = {}\nstatus_interval_secs = 0\n{extra}",
            keys.display()
        )
    };
    let proxy = Proxy::spawn(&conf(""));
    up.expect_subscribe();
    let healthy = healthy_clients(proxy.addr, 20);
    let mut doomed: Vec<Client> = (0..3)
        .map(|_| Client::auth(proxy.addr, OTHER_KEY, None))
        .collect();
    assert!(
        process::poll(Duration::from_secs(10), || metric_of(
            proxy.addr,
            "fxproxy_clients_connected"
        ) == 23.0),
        "23 clients registered"
    );
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);
    traffic.wait_for_more(200);

    // A limit and the keys change together: at most 20 clients per key (KEY has 20), the
    // other key removed, a new one added.
    replace_file(&keys, &format!("{KEY}\n{NEW_KEY}\n"));
    proxy.write_config(&conf("max_clients_per_key = 20\n"));
    proxy.signal("HUP");
    assert!(
        proxy.wait_for_log("configuration reloaded", Duration::from_secs(10)),
        "{}",
        proxy.stderr_text()
    );
    for c in &mut doomed {
        assert_eq!(
            c.close_after_quotes(),
            (1008, "Authentication failed".to_string())
        );
    }
    let mut newcomer = Client::auth(proxy.addr, NEW_KEY, Some("EURUSD"));
    assert!(
        newcomer.next_text().contains("EURUSD"),
        "the added key is served"
    );
    let mut one_too_many = Client::auth(proxy.addr, KEY, None);
    assert_eq!(
        one_too_many.close_after_quotes(),
        (1008, "Too many connections for this key".to_string())
    );
    traffic.wait_for_more(200);
    // Every healthy client got every quote, in order, and was never closed.
    let (_up, deliveries) = traffic.finish();
    assert_eq!(deliveries.len(), 20);

    assert_eq!(reloads(proxy.addr, "ok"), 1.0);
    assert_eq!(reloads(proxy.addr, "failed"), 0.0);
    assert!(proxy.wait_for_log("max_clients_per_key = 20", Duration::from_secs(10)));
    let log = proxy.stderr_text();
    assert!(
        log.contains("max_clients_per_key = 20 (was 0): applies to new connections"),
        "{log}"
    );
    assert!(!log.contains(OTHER_KEY) && !log.contains(NEW_KEY) && !log.contains(KEY));
}

#[test]
fn a_broken_file_on_sighup_keeps_the_running_configuration() {
    let dir = process::temp_dir();
    let keys = dir.join("users.keys");
    replace_file(&keys, &format!("{KEY}\n"));
    let base = process::simulator_config(&keys, "EURUSD,GBPUSD");
    let proxy = Proxy::spawn(&base);
    let mut first = Client::auth(proxy.addr, KEY, None);
    first.next_text();

    // A bad value next to a good one: neither is taken.
    proxy.write_config(&format!(
        "{base}max_clients_per_key = 1\nclient_ping_secs = ten\n"
    ));
    proxy.signal("HUP");
    assert!(process::poll(Duration::from_secs(10), || reloads(
        proxy.addr, "failed"
    ) == 1.0));
    // Counted after it is logged; the log's last lines may still be in the pipe.
    assert!(proxy.wait_for_log("configuration reload failed", Duration::from_secs(10)));
    let log = proxy.stderr_text();
    assert!(
        log.contains("configuration reload failed; the running configuration is kept: ")
            && log.contains(": key `client_ping_secs`: expected a whole number of seconds"),
        "{log}"
    );
    let mut second = Client::auth(proxy.addr, KEY, None);
    second.next_text();

    // A good proxy.conf with a broken key file: refused as a whole too.
    proxy.write_config(&format!("{base}max_clients_per_key = 1\n"));
    replace_file(&keys, "short\n");
    proxy.signal("HUP");
    assert!(process::poll(Duration::from_secs(10), || reloads(
        proxy.addr, "failed"
    ) == 2.0));
    let mut third = Client::auth(proxy.addr, KEY, None);
    third.next_text();
    assert_eq!(reloads(proxy.addr, "ok"), 0.0);

    // Fixed: the limit now holds for newcomers, and the three connected stay.
    replace_file(&keys, &format!("{KEY}\n"));
    proxy.signal("HUP");
    assert!(process::poll(Duration::from_secs(10), || reloads(
        proxy.addr, "ok"
    ) == 1.0));
    let mut fourth = Client::auth(proxy.addr, KEY, None);
    assert_eq!(
        fourth.close_after_quotes(),
        (1008, "Too many connections for this key".to_string())
    );
    for c in [&mut first, &mut second, &mut third] {
        c.next_text();
    }
}

#[test]
fn a_key_that_needs_a_restart_is_logged_and_left_as_it_was() {
    let dir = process::temp_dir();
    let keys = dir.join("users.keys");
    replace_file(&keys, &format!("{KEY}\n"));
    let base = process::simulator_config(&keys, "EURUSD,GBPUSD");
    let proxy = Proxy::spawn(&base);
    // `listen` and `symbols` need a restart; `max_clients_per_key` does not.
    let changed = base.replace("symbols = EURUSD,GBPUSD", "symbols = EURUSD,GBPUSD,USDJPY");
    replace_file(
        proxy.config_path(),
        &format!("listen = [::1]:0\n{changed}max_clients_per_key = 1\n"),
    );
    proxy.signal("HUP");
    assert!(
        proxy.wait_for_log("configuration reloaded", Duration::from_secs(10)),
        "{}",
        proxy.stderr_text()
    );
    let log = proxy.stderr_text();
    assert!(
        log.contains("listen changed to [::1]:0 but needs a restart; still 127.0.0.1:0 until then"),
        "{log}"
    );
    assert!(
        log.contains(
            "symbols changed to EURUSD,GBPUSD,USDJPY but needs a restart; still EURUSD,GBPUSD"
        ),
        "{log}"
    );
    assert!(log.contains("1 change(s) applied, 2 waiting for a restart"));
    assert_eq!(metric_of(proxy.addr, "fxproxy_config_pending_restart"), 2.0);
    // Still on the old address with the old symbols; the live key applied.
    let mut c = Client::auth(proxy.addr, KEY, Some("USDJPY"));
    assert_eq!(
        c.close_after_quotes(),
        (1008, "Unknown symbol USDJPY".to_string())
    );
    let mut ok = Client::auth(proxy.addr, KEY, None);
    ok.next_text();
    let mut over = Client::auth(proxy.addr, KEY, None);
    assert_eq!(
        over.close_after_quotes(),
        (1008, "Too many connections for this key".to_string())
    );
}

#[test]
fn sigint_and_sigterm_stop_the_proxy_as_before() {
    for sig in ["INT", "TERM"] {
        let dir = process::temp_dir();
        let keys = process::write_keys(&dir, &[KEY]);
        let mut proxy = Proxy::spawn(&process::simulator_config(&keys, "EURUSD"));
        let mut clients: Vec<Client> = (0..3)
            .map(|_| Client::auth(proxy.addr, KEY, None))
            .collect();
        for c in &mut clients {
            c.next_text();
        }
        let signalled = Instant::now();
        proxy.signal(sig);
        for c in &mut clients {
            assert_eq!(c.close_after_quotes().0, 1001, "SIG{sig}");
        }
        let status = proxy
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("still running after SIG{sig}"));
        let took = signalled.elapsed();
        assert_eq!(status.code(), Some(0), "SIG{sig}: {}", proxy.stderr_text());
        assert!(
            took < Duration::from_secs(2),
            "SIG{sig}: exit took {took:?}"
        );
        assert!(proxy
            .stderr_text()
            .contains("SIGINT or SIGTERM received: stopping"));
    }
}

/// `fxproxy watch` as a user runs it, its output collected.
struct Watch {
    child: std::process::Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    /// The threads reading stdout and stderr; each ends when its pipe does.
    drains: Vec<thread::JoinHandle<()>>,
}

impl Watch {
    fn start(addr: SocketAddr) -> Watch {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fxproxy"))
            .args(["watch", &format!("ws://{addr}/"), "--symbols", "EURUSD"])
            .env("FXPROXY_KEY", KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting fxproxy watch");
        let drain = |pipe: Box<dyn Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let sink = Arc::clone(&text);
            let reader = thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut t = sink.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
            });
            (text, reader)
        };
        let (out, out_reader) = drain(Box::new(child.stdout.take().unwrap()));
        let (err, err_reader) = drain(Box::new(child.stderr.take().unwrap()));
        Watch {
            child,
            out,
            err,
            drains: vec![out_reader, err_reader],
        }
    }

    fn wait_for_quotes(&self) {
        assert!(
            process::poll(Duration::from_secs(10), || self
                .out
                .lock()
                .unwrap()
                .contains("EURUSD")),
            "no quote printed; stderr: {}",
            self.err.lock().unwrap()
        );
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill")
            .success();
        assert!(ok);
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        process::poll(Duration::from_secs(5), || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        let status = status.expect("fxproxy watch exits");
        // Its last words may still be in the pipes; they end with the process.
        for reader in self.drains.drain(..) {
            reader.join().expect("a pipe reader");
        }
        status
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ctrl_c_ends_watch_quietly_with_130_and_a_real_loss_is_still_reported() {
    let dir = process::temp_dir();
    let keys = process::write_keys(&dir, &[KEY]);
    let proxy = Proxy::spawn(&process::simulator_config(&keys, "EURUSD"));

    let mut watch = Watch::start(proxy.addr);
    watch.wait_for_quotes();
    let pressed = Instant::now();
    watch.signal("INT");
    let status = watch.wait();
    eprintln!(
        "watch after Ctrl-C: {status} in {:?}, stderr {:?}",
        pressed.elapsed(),
        watch.stderr()
    );
    assert_eq!(status.code(), Some(130), "{}", watch.stderr());
    assert_eq!(watch.stderr(), "", "Ctrl-C is not an error");
    // It said goodbye: the proxy saw a normal close, not a dropped connection.
    assert!(
        proxy.wait_for_log("closed by the client", Duration::from_secs(5)),
        "{}",
        proxy.stderr_text()
    );

    let mut watch = Watch::start(proxy.addr);
    watch.wait_for_quotes();
    proxy.signal("KILL");
    let status = watch.wait();
    assert_eq!(status.code(), Some(1));
    assert!(
        watch
            .stderr()
            .contains("the connection to the server was lost"),
        "{}",
        watch.stderr()
    );
}
