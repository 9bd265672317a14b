//! The upstream connection as company networks need it (issue 28), over real sockets with a
//! real HTTP proxy (Debian's tinyproxy, with and without BasicAuth): quotes through a CONNECT
//! tunnel for ws:// and wss:// upstreams (TLS end to end, checked against the upstream's own
//! name); a wrong password and a refused destination told in words and retried with back-off;
//! HTTPS_PROXY/HTTP_PROXY and NO_PROXY honoured and `upstream_proxy = none` ignoring them;
//! headers in the upstream's handshake (`upstream_header`, a template's `header`) with the key
//! in them and never in the log; `response_header` on the proxy's answers and upgrades, and a
//! forbidden one refused at start-up; `fxproxy watch` through the proxy.

mod common;

use common::fake_source::{FakeSource, Tiingo};
use common::process::{poll, run_script, write_keys, Proxy, PROXY_VARIABLES};
use common::tinyproxy::{tinyproxy_available, Rules, TinyProxy, PROXY_PASSWORD, PROXY_USER};
use common::tls::TestCa;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn keys() -> String {
    format!("{KEY}\n{OTHER_KEY} EURUSD\n")
}

/// proxy.conf for the real binary: `upstream` as its source, one key file in `dir`.
fn binary_config(dir: &Path, upstream: &str, extra: &str) -> String {
    let keys = write_keys(dir, &[KEY]);
    format!(
        "upstream_url = {upstream}\nsymbols = EURUSD,GBPUSD\nuser_keys_file = {}\n\
         status_interval_secs = 0\n{extra}",
        keys.display()
    )
}

/// A client of `addr` receives the quote the upstream sends next.
fn a_quote_gets_through(up: &TestUpstream, addr: std::net::SocketAddr, n: u64) {
    let mut client = Client::auth(addr, KEY, Some("EURUSD"));
    let registered = poll(DEADLINE, || {
        metric_of(addr, "fxproxy_clients_connected") >= 1.0
    });
    assert!(registered, "the client was not registered");
    up.send(&quote("EURUSD", n));
    assert_eq!(client.next_text(), quote("EURUSD", n));
}

/// The delay each "reconnecting in D s" line of `log` that also says `what` announces.
fn delays_after(log: &str, what: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let tail = l.split("reconnecting in ").nth(1)?;
            tail.split(' ').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn quotes_reach_clients_through_an_http_proxy_that_wants_credentials() {
    if !tinyproxy_available("quotes through an HTTP proxy") {
        return;
    }
    let dir = temp_dir("tunnel-ws");
    let tiny = TinyProxy::with_auth(&dir);
    let up = TestUpstream::start();
    let proxy = TestProxy::start(
        &up.url(),
        &format!(
            "upstream_proxy = {}\n",
            tiny.url_with(PROXY_USER, PROXY_PASSWORD)
        ),
        &keys(),
    );
    up.expect_subscribe();
    a_quote_gets_through(&up, proxy.addr, 1);
    assert_eq!(tiny.connects_to(&up.addr.to_string()), 1, "{}", tiny.log());
    assert_eq!(metric_of(proxy.addr, "fxproxy_upstream_connected"), 1.0);

    // The source drops the connection: the proxy comes back through the proxy.
    up.close();
    up.expect_subscribe();
    assert_eq!(tiny.connects_to(&up.addr.to_string()), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wss_upstream_is_tls_end_to_end_through_the_tunnel_checked_against_its_own_name() {
    if !tinyproxy_available("wss:// through an HTTP proxy") {
        return;
    }
    let dir = temp_dir("tunnel-wss");
    let tiny = TinyProxy::open(&dir);
    // Proxy A serves wss:// with a certificate for `localhost` only, not for 127.0.0.1.
    let ca = TestCa::new("tunnel");
    let ca_file = ca.write(&dir.join("ca.pem"));
    let cert = ca.server_named(&dir, "a", &["localhost"]);
    let up = TestUpstream::start();
    let a = TestProxy::start(
        &up.url(),
        &format!(
            "tls_cert_file = {}\ntls_key_file = {}\n",
            cert.cert_file.display(),
            cert.key_file.display()
        ),
        &keys(),
    );
    up.expect_subscribe();
    let port = a.addr.port();
    let through = |host: &str| {
        TestProxy::start(
            &format!("wss://{host}:{port}/"),
            &format!(
                "upstream_proxy = {}\nupstream_ca_file = {}\nupstream_bundled_roots = false\n\
                 upstream_api_key = {KEY}\nupstream_backoff_min_ms = 100\n",
                tiny.url(),
                ca_file.display()
            ),
            &keys(),
        )
    };
    // Proxy B reaches A as `localhost` through tinyproxy (at 127.0.0.1): the certificate is
    // checked against the name B asked the tunnel for, which is A's.
    let b = through("localhost");
    a.wait_for_clients(1);
    a_quote_gets_through(&up, b.addr, 7);
    assert_eq!(
        tiny.connects_to(&format!("localhost:{port}")),
        1,
        "{}",
        tiny.log()
    );

    // The same A by its address: the tunnel opens, and B's TLS refuses A's certificate, which
    // does not name 127.0.0.1. Only B can have said so: the proxy sees nothing but bytes.
    let c = through("127.0.0.1");
    eventually("the name mismatch in /healthz", || {
        healthz(c.addr)
            .1
            .contains("the server's certificate does not name the host in the URL")
    });
    assert!(tiny.connects_to(&format!("127.0.0.1:{port}")) >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wrong_password_is_refused_told_and_retried_with_back_off() {
    if !tinyproxy_available("a wrong proxy password") {
        return;
    }
    let dir = temp_dir("tunnel-407");
    let tiny = TinyProxy::with_auth(&dir);
    let up = TestUpstream::start();
    let password = "wrong-password-42";
    let proxy = Proxy::spawn(&binary_config(
        &dir,
        &up.url(),
        &format!(
            "upstream_proxy = {}\nupstream_backoff_min_ms = 200\nupstream_backoff_max_secs = 2\n",
            tiny.url_with(PROXY_USER, password)
        ),
    ));
    // tinyproxy answers wrong credentials with 401 (none at all with 407).
    let refused = "refused the credentials (\"HTTP/1.0 401 Unauthorized\")";
    let told = poll(Duration::from_secs(20), || {
        delays_after(&proxy.stderr_text(), refused).len() >= 4
    });
    let log = proxy.stderr_text();
    assert!(told, "four refusals, each told: {log}");
    // Each next attempt waits longer: 0.2 s doubling (each delay between half and all of its
    // step), so the fourth waits 0.8 s at least; never a loop.
    let delays = delays_after(&log, refused);
    assert!(delays[0] <= 0.25, "{delays:?}");
    assert!(delays.iter().all(|d| *d >= 0.05), "{delays:?}");
    assert!(delays[3] >= 0.75, "{delays:?}");
    let (status, body) = healthz(proxy.addr);
    assert_eq!(status, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "reconnecting", "{body}");
    let reason = health["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("the proxy http://…@127.0.0.1:{}", tiny.port))
            && reason.contains(refused),
        "{reason}"
    );
    assert!(!log.contains(password) && !body.contains(password));
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the source was never reached"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_proxy_that_refuses_the_destination_is_told_with_its_status_line() {
    if !tinyproxy_available("a refused destination") {
        return;
    }
    let dir = temp_dir("tunnel-403");
    // Tunnels to port 1 only.
    let tiny = TinyProxy::start(
        &dir,
        &Rules {
            connect_ports: vec![1],
            ..Rules::default()
        },
    );
    let up = TestUpstream::start();
    let proxy = TestProxy::start(
        &up.url(),
        &format!("upstream_proxy = {}\n", tiny.url()),
        &keys(),
    );
    let expected = format!(
        "the proxy http://127.0.0.1:{} refused the tunnel to {} (\"HTTP/1.1 403 Access violation\")",
        tiny.port, up.addr
    );
    eventually("the refusal in /healthz", || {
        healthz(proxy.addr)
            .1
            .contains(&expected.replace('"', "\\\""))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_environment_s_proxy_is_used_unless_no_proxy_lists_the_host_or_upstream_proxy_is_none() {
    if !tinyproxy_available("the proxy environment") {
        return;
    }
    let dir = temp_dir("tunnel-env");
    let tiny = TinyProxy::with_auth(&dir);
    // Without credentials this proxy answers 407: a connection that works did not use it.
    let refusing = tiny.url();
    let user_only = format!("http://{PROXY_USER}@127.0.0.1:{}", tiny.port);
    let run = |extra: &str, env: &[(&str, &str)], said: &str, through: bool| {
        let up = TestUpstream::start();
        let target = up.addr.to_string();
        let proxy = Proxy::spawn_with_env(&binary_config(&dir, &up.url(), extra), env);
        up.expect_subscribe();
        a_quote_gets_through(&up, proxy.addr, 3);
        let log = proxy.stderr_text();
        assert!(log.contains(said), "{said}: {log}");
        assert_eq!(tiny.connects_to(&target), usize::from(through), "{said}");
        assert!(!log.contains(PROXY_PASSWORD), "{log}");
    };
    // Lower case first; the user from the URL, the password from the environment.
    run(
        "",
        &[
            ("http_proxy", &user_only),
            ("HTTP_PROXY", "http://127.0.0.1:1"),
            ("FXPROXY_UPSTREAM_PROXY_PASSWORD", PROXY_PASSWORD),
        ],
        &format!(
            "through the HTTP proxy http://…@127.0.0.1:{} (from http_proxy)",
            tiny.port
        ),
        true,
    );
    // NO_PROXY lists the upstream's address (as a range): straight to it.
    run(
        "",
        &[
            ("HTTP_PROXY", &refusing),
            ("NO_PROXY", "localhost, 127.0.0.0/8"),
        ],
        "direct, as NO_PROXY lists its host",
        false,
    );
    // `none`: the environment is not read.
    run(
        "upstream_proxy = none\n",
        &[("HTTP_PROXY", &refusing), ("http_proxy", &refusing)],
        "listening on",
        false,
    );
    // The password from a file, for the user in upstream_proxy.
    std::fs::write(dir.join("proxy-password"), format!("{PROXY_PASSWORD}\n")).unwrap();
    run(
        &format!(
            "upstream_proxy = {user_only}\nupstream_proxy_password_file = {}\n",
            dir.join("proxy-password").display()
        ),
        &[("HTTP_PROXY", &refusing)],
        "(from upstream_proxy)",
        true,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn headers_reach_the_upstream_s_handshake_with_the_key_and_stay_out_of_the_log() {
    let key = "tiingo-key-5551234";
    let source = FakeSource::start(Tiingo::factory(key));
    let dir = temp_dir("headers");
    let template = dir.join("tiingo.conf");
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("providers/tiingo-fx.conf");
    let text = std::fs::read_to_string(shipped).unwrap();
    std::fs::write(
        &template,
        format!("{text}\nheader = X-Api-Key: {{api_key}}\nheader = User-Agent: template\nheader = X-Template: 1\n"),
    )
    .unwrap();
    let proxy = Proxy::spawn(&binary_config(
        &dir,
        &source.url(),
        &format!(
            "provider = custom\nprovider_template = {}\nupstream_api_key = {key}\n\
             upstream_header = Authorization: Bearer {{api_key}}\n\
             upstream_header = user-agent: desk-4 ops@example.com\n",
            template.display()
        ),
    ));
    source.wait_heard(1, 1);
    assert_eq!(
        source.header_values(1, "authorization"),
        [format!("Bearer {key}")]
    );
    assert_eq!(source.header_values(1, "x-api-key"), [key]);
    assert_eq!(source.header_values(1, "x-template"), ["1"]);
    // proxy.conf's replaces the template's of the same name.
    assert_eq!(
        source.header_values(1, "user-agent"),
        ["desk-4 ops@example.com"]
    );
    // The WebSocket handshake's own are tungstenite's, once each.
    assert_eq!(source.header_values(1, "upgrade"), ["websocket"]);
    assert!(source.violations().is_empty(), "{:?}", source.violations());
    let log = proxy.stderr_text();
    assert!(
        log.contains(
            "handshake headers X-Api-Key, X-Template, Authorization, user-agent (values not shown)"
        ),
        "{log}"
    );
    assert!(!log.contains(key), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

const HSTS: &str = "Strict-Transport-Security: max-age=31536000";

#[test]
fn response_headers_are_on_every_answer_and_upgrade() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(
        &up.url(),
        &format!("response_header = {HSTS}\nresponse_header = X-Served-By: fx-test\n"),
        &keys(),
    );
    // Right after the status line, whatever the status.
    let added = |answer: &str| {
        let rest = answer.split_once("\r\n").map_or("", |(_, r)| r);
        rest.starts_with(&format!("{HSTS}\r\nX-Served-By: fx-test\r\n"))
    };
    let health = http_get(
        proxy.addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(added(&health), "{health}");
    let missing = http_get(proxy.addr, "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&missing), 404);
    assert!(added(&missing), "{missing}");
    // The page keeps its own security headers, once each.
    let page = http_get(proxy.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(added(&page), "{page}");
    let head = page.split("\r\n\r\n").next().unwrap();
    for own in [
        "Content-Security-Policy:",
        "X-Frame-Options: DENY",
        "X-Content-Type-Options: nosniff",
        "Referrer-Policy: no-referrer",
    ] {
        assert_eq!(head.matches(own).count(), 1, "{own}: {head}");
    }

    // The upgrade carries them too, and still works.
    let mut tcp = TcpStream::connect(proxy.addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tcp.read(&mut byte).unwrap(),
            1,
            "the upgrade's answer ended early"
        );
        answer.push(byte[0]);
    }
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.starts_with(&format!(
            "HTTP/1.1 101 Switching Protocols\r\n{HSTS}\r\nX-Served-By: fx-test\r\n"
        )),
        "{answer}"
    );
    assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    let mut client = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    up.send(&quote("EURUSD", 2));
    assert_eq!(client.next_text(), quote("EURUSD", 2));
}

#[test]
fn a_response_header_fxproxy_sets_itself_is_refused_at_start_up() {
    let dir = temp_dir("response-header-refused");
    let keys = write_keys(&dir, &[KEY]);
    let config = dir.join("proxy.conf");
    std::fs::write(
        &config,
        format!(
            "listen = 127.0.0.1:0\nupstream_url = sim\nsymbols = EURUSD\nuser_keys_file = {}\n\
             response_header = {HSTS}\nresponse_header = content-security-policy: default-src *\n",
            keys.display()
        ),
    )
    .unwrap();
    let expected = format!(
        "{}:6: key `response_header`: the header `content-security-policy` cannot be set here: \
         fxproxy sets it itself and it cannot be overridden",
        config.display()
    );
    for args in [&["--check-config"][..], &[][..]] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fxproxy"));
        cmd.arg("--config").arg(&config).args(args);
        let run = run_script(cmd, &dir, DEADLINE);
        assert_eq!(
            run.status.and_then(|s| s.code()),
            Some(2),
            "{args:?}: {}",
            run.output
        );
        assert!(run.output.contains(&expected), "{args:?}: {}", run.output);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `fxproxy watch` with `args` and the proxy variables of `env` only; its first quote line.
fn watch_first_line(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fxproxy"));
    cmd.arg("watch").args(args);
    for var in PROXY_VARIABLES {
        cmd.env_remove(var);
    }
    let mut child: Child = cmd
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("watch-stdout".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    return;
                }
            }
        })
        .unwrap();
    let line = rx.recv_timeout(DEADLINE);
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (
        line.unwrap_or_else(|_| panic!("no quote from watch; its stderr: {err}")),
        err,
    )
}

#[test]
fn watch_goes_through_the_proxy_from_its_flag_or_the_environment() {
    if !tinyproxy_available("watch through an HTTP proxy") {
        return;
    }
    let dir = temp_dir("tunnel-watch");
    let tiny = TinyProxy::with_auth(&dir);
    let up = TestUpstream::start();
    let proxy = TestProxy::start(&up.url(), "", &keys());
    up.expect_subscribe();
    up.send(&quote("EURUSD", 5));
    // Each watch gets that quote at once, as the latest of its symbol.
    eventually("the quote to reach the proxy", || {
        metric_of(proxy.addr, "fxproxy_quotes_received_total") >= 1.0
    });
    let url = proxy.url();
    let target = proxy.addr.to_string();
    let with_creds = tiny.url_with(PROXY_USER, PROXY_PASSWORD);
    let base = ["--key", KEY, "--symbols", "EURUSD"];

    let (line, _) = watch_first_line(
        &[&[url.as_str()][..], &base, &["--proxy", &with_creds]].concat(),
        &[],
    );
    assert!(line.starts_with("EURUSD   bid 1.00005"), "{line}");
    assert_eq!(tiny.connects_to(&target), 1);

    let (line, _) = watch_first_line(
        &[&[url.as_str()][..], &base].concat(),
        &[("HTTP_PROXY", &with_creds)],
    );
    assert!(line.starts_with("EURUSD   bid 1.00005"), "{line}");
    assert_eq!(tiny.connects_to(&target), 2);

    // `--proxy none` ignores a proxy that would refuse it.
    let (line, _) = watch_first_line(
        &[&[url.as_str()][..], &base, &["--proxy", "none"]].concat(),
        &[("HTTP_PROXY", &tiny.url())],
    );
    assert!(line.starts_with("EURUSD   bid 1.00005"), "{line}");
    assert_eq!(tiny.connects_to(&target), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
