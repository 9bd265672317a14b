//! TLS on the client port (issue 19), over real sockets with certificates the tests make:
//! wss:// clients get every quote and https:// serves the page and the endpoints; what is not
//! TLS, and clients that do not trust us, are refused and counted; a certificate renewed on
//! disk is served to the next handshake while connected clients keep receiving; mutual TLS;
//! one proxy feeding another over wss:// with upstream_ca_file; start-up and --check-config
//! on broken files; `fxproxy watch` over wss:// with --ca-file.

mod common;

use common::tls::{epoch_secs, years_ahead, Endpoint, TestCa, TlsSetup};
use common::traffic::*;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::Message;

fn keys() -> String {
    format!("{KEY}\n{OTHER_KEY} EURUSD\n")
}

/// A test upstream and an in-process proxy serving TLS with `setup`'s certificate.
fn tls_proxy(setup: &TlsSetup, extra: &str, keys: &str) -> (TestUpstream, TestProxy, Endpoint) {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(&up.url(), &format!("{}{extra}", setup.config()), keys);
    up.expect_subscribe();
    let ep = Endpoint::tls(proxy.addr, setup.ca.client_config());
    (up, proxy, ep)
}

fn rejected(ep: &Endpoint, reason: &str) -> f64 {
    ep.metric(&format!(
        "fxproxy_rejected_connections_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn wss_clients_get_every_quote_and_https_serves_the_page_and_endpoints() {
    let dir = temp_dir("tls-basics");
    let setup = TlsSetup::new(&dir);
    let (up, proxy, ep) = tls_proxy(&setup, "", &keys());
    let healthy = healthy_clients_to(&ep, 3);
    proxy.wait_for_clients(3);
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);
    traffic.wait_for_more(200);

    let page = ep.http_get("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&page), 200, "{page}");
    assert!(page.contains("text/html"), "{page}");
    // The page picks wss:// itself when it was loaded over https://.
    assert!(page.contains(r#"location.protocol === "https:" ? "wss://""#));
    let health = ep.http_get("GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&health), 200, "{health}");
    let metrics = ep.scrape();
    assert_eq!(
        metric(&metrics, "fxproxy_tls_certificate_expiry_timestamp_seconds"),
        epoch_secs(setup.server_lapses)
    );
    assert_eq!(
        metric(
            &metrics,
            "fxproxy_tls_certificate_reloads_total{result=\"ok\"}"
        ),
        0.0
    );
    let (_, deliveries) = traffic.finish();
    eprintln!("over TLS: {deliveries:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_1_2_and_1_3_are_spoken() {
    let dir = temp_dir("tls-versions");
    let setup = TlsSetup::new(&dir);
    let (up, proxy, _) = tls_proxy(&setup, "", &keys());
    let mut clients: Vec<Client> = [&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .map(|v| {
            let ep = Endpoint::tls(proxy.addr, setup.ca.client_config_only(v));
            Client::auth_to(&ep, KEY, Some("EURUSD"))
        })
        .collect();
    proxy.wait_for_clients(2);
    up.send(&quote("EURUSD", 12));
    for c in &mut clients {
        assert_eq!(c.next_text(), quote("EURUSD", 12));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_http_garbage_and_untrusting_clients_are_refused_and_counted() {
    let dir = temp_dir("tls-refusals");
    let setup = TlsSetup::new(&dir);
    let (_up, proxy, ep) = tls_proxy(&setup, "", &keys());

    // Plain HTTP on the TLS port: told in plain HTTP, and closed.
    let answer = http_get(proxy.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(
        answer.ends_with("this port speaks TLS: use https:// or wss://\n"),
        "{answer}"
    );
    // Garbage, and a TLS record that is garbage inside: closed without a word.
    for bytes in [
        &b"\x00\xff\x13GARBAGE\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x04junkjunk",
    ] {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(bytes).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        // Nothing but, for the TLS record, rustls's alert (a record of type 21).
        assert!(got.is_empty() || got[0] == 21, "{got:?}");
    }
    // A client that trusts another CA refuses our certificate.
    let stranger = Endpoint::tls(proxy.addr, TestCa::new("stranger").client_config());
    let err = Client::try_connect_to(&stranger).err().expect("refused");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    // And a client that trusts us gets in after all that.
    let _c = Client::auth_to(&ep, KEY, None);
    proxy.wait_for_clients(1);

    eventually("the refusals counted", || {
        rejected(&ep, "bad_request") == 2.0 && rejected(&ep, "tls") == 2.0
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Replaces `to`'s contents with `from`'s in one step, as `mv` and certbot's symlink swap do.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn a_renewed_certificate_is_served_to_new_handshakes_while_connected_clients_keep_receiving() {
    let dir = temp_dir("tls-renewal");
    let setup = TlsSetup::new(&dir);
    let (up, proxy, ep) = tls_proxy(&setup, "", &keys());
    let healthy = healthy_clients_to(&ep, 2);
    proxy.wait_for_clients(2);
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);

    // The renewal: a certificate from another CA (so a client trusting only that CA tells
    // which one it was served), lapsing on another date.
    let renewed_ca = TestCa::new("renewed");
    let lapses = (years_ahead(11), 6, 30);
    let renewed = renewed_ca.server(&dir, "renewed", lapses);
    replace(&renewed.key_file, &setup.server.key_file);
    replace(&renewed.cert_file, &setup.server.cert_file);
    let new_only = Endpoint::tls(proxy.addr, renewed_ca.client_config());
    let t = Instant::now();
    eventually("the renewed certificate served", || {
        Client::try_connect_to(&new_only).is_ok()
    });
    eprintln!(
        "renewal picked up {:?} after the files changed",
        t.elapsed()
    );
    assert_eq!(
        new_only.metric("fxproxy_tls_certificate_reloads_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        new_only.metric("fxproxy_tls_certificate_expiry_timestamp_seconds"),
        epoch_secs(lapses)
    );
    let mut fresh = Client::auth_to(&new_only, KEY, Some("EURUSD"));
    assert!(fresh.next_text().contains("EURUSD"));
    assert!(
        Client::try_connect_to(&ep).is_err(),
        "the old certificate is still served"
    );

    // A broken renewal (a certificate whose key is not there): logged, counted, and the
    // previous certificate stays.
    let stray = TestCa::new("stray").server(&dir, "stray", (years_ahead(12), 1, 1));
    replace(&stray.cert_file, &setup.server.cert_file);
    eventually("the broken pair refused", || {
        new_only.metric("fxproxy_tls_certificate_reloads_total{result=\"failed\"}") == 1.0
    });
    let mut after = Client::auth_to(&new_only, KEY, Some("EURUSD"));
    assert!(after.next_text().contains("EURUSD"));
    assert_eq!(
        new_only.metric("fxproxy_tls_certificate_expiry_timestamp_seconds"),
        epoch_secs(lapses)
    );
    // Every quote reached the clients that were connected throughout.
    traffic.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mutual_tls_admits_a_certificate_from_the_ca_and_refuses_none_or_another() {
    let dir = temp_dir("tls-mutual");
    let setup = TlsSetup::new(&dir);
    let clients_ca = TestCa::new("clients");
    let clients_ca_file = clients_ca.write(&dir.join("clients-ca.pem"));
    let extra = format!("tls_client_ca_file = {}\n", clients_ca_file.display());
    let (up, proxy, ep) = tls_proxy(&setup, &extra, &keys());

    let good = clients_ca.client(&dir, "machine-1");
    let with_cert = Endpoint::tls(proxy.addr, setup.ca.client_config_with(&good));
    let mut c = Client::auth_to(&with_cert, KEY, Some("EURUSD"));
    proxy.wait_for_clients(1);
    up.send(&quote("EURUSD", 1));
    assert_eq!(c.next_text(), quote("EURUSD", 1));

    // The key is still checked.
    let mut wrong_key = Client::auth_to(&with_cert, "not-a-key-at-all", None);
    assert_eq!(
        wrong_key.expect_close(),
        (1008, "Authentication failed".to_string())
    );

    // No certificate, or one from another CA: the handshake fails.
    let other = TestCa::new("other").client(&dir, "intruder");
    for (what, config) in [
        ("no certificate", setup.ca.client_config()),
        (
            "another CA's certificate",
            setup.ca.client_config_with(&other),
        ),
    ] {
        let ep = Endpoint::tls(proxy.addr, config);
        assert!(Client::try_connect_to(&ep).is_err(), "{what}: admitted");
    }
    eventually("both refusals counted", || {
        with_cert.metric("fxproxy_rejected_connections_total{reason=\"tls\"}") == 2.0
    });
    assert_eq!(with_cert.metric("fxproxy_clients_connected"), 1.0);
    drop(ep);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_client_certificates_and_no_key_listed_the_certificate_alone_admits() {
    let dir = temp_dir("tls-cert-only");
    let setup = TlsSetup::new(&dir);
    let clients_ca = TestCa::new("clients");
    let clients_ca_file = clients_ca.write(&dir.join("clients-ca.pem"));
    // A browser presents its certificate to any page's WebSocket: with the certificate as
    // the only credential, the proxy needs the list of origins that may open the feed.
    let extra = format!(
        "tls_client_ca_file = {}\nallowed_origins = https://dash.example\n",
        clients_ca_file.display()
    );
    let (up, proxy, _) = tls_proxy(&setup, &extra, "# certificates alone\n");
    let good = clients_ca.client(&dir, "machine-1");
    let with_cert = Endpoint::tls(proxy.addr, setup.ca.client_config_with(&good));
    let upgrade_from = |origin: &str| {
        with_cert.http_get(&format!(
            "GET / HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ))
    };
    assert!(
        upgrade_from("https://evil.example").starts_with("HTTP/1.1 403"),
        "a page elsewhere cannot open the feed with the user's certificate"
    );
    assert!(upgrade_from("https://dash.example").starts_with("HTTP/1.1 101"));
    // Any userKey will do, even none at all.
    let mut a = Client::auth_to(&with_cert, "", Some("EURUSD"));
    let mut b = Client::auth_to(&with_cert, "machine-1", None);
    proxy.wait_for_clients(2);
    up.send(&quote("EURUSD", 7));
    for c in [&mut a, &mut b] {
        assert_eq!(c.next_text(), quote("EURUSD", 7));
    }
    // Touching the (still empty) key file disconnects nobody.
    std::fs::write(proxy.dir.join("users.keys"), "# still none\n\n").unwrap();
    eventually("the key file re-read", || {
        with_cert.metric("fxproxy_key_file_reloads_total{result=\"ok\"}") == 1.0
    });
    up.send(&quote("EURUSD", 8));
    assert_eq!(a.next_text(), quote("EURUSD", 8));
    let no_cert = Endpoint::tls(proxy.addr, setup.ca.client_config());
    assert!(Client::try_connect_to(&no_cert).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_proxy_feeds_another_over_wss_trusting_upstream_ca_file() {
    let dir = temp_dir("tls-chain");
    let setup = TlsSetup::new(&dir);
    // Proxy A serves wss:// with the test CA's certificate.
    let (up, a, a_ep) = tls_proxy(&setup, "", &keys());
    // Proxy B takes its quotes from A, trusting only the test CA.
    let b = TestProxy::start(
        &a_ep.ws_url(),
        &format!(
            "upstream_ca_file = {}\nupstream_bundled_roots = false\nupstream_api_key = {KEY}\n",
            setup.ca_file.display()
        ),
        &keys(),
    );
    a.wait_for_clients(1);
    let healthy = healthy_clients(b.addr, 3);
    b.wait_for_clients(3);
    assert_eq!(metric_of(b.addr, "fxproxy_upstream_connected"), 1.0);
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);
    traffic.wait_for_more(500);
    // B's clients got every quote, in order, through A's TLS port.
    let (_, deliveries) = traffic.finish();
    assert!(deliveries.iter().all(|d| d.quotes >= 500), "{deliveries:?}");
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the binary with `config` (no `listen`: one on an ephemeral port is added) and extra
/// arguments; returns its exit code and stderr, or panics if it runs past the deadline.
fn run_binary(dir: &Path, config: &str, args: &[&str]) -> (i32, String, String) {
    let path = dir.join("proxy.conf");
    std::fs::write(&path, format!("listen = 127.0.0.1:0\n{config}")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fxproxy"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("fxproxy {args:?} is still running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), out, err)
}

#[test]
fn start_up_and_check_config_stop_on_a_missing_unreadable_or_mismatched_pair() {
    let dir = temp_dir("tls-startup");
    let setup = TlsSetup::new(&dir);
    std::fs::write(dir.join("users.keys"), keys()).unwrap();
    let other = setup.ca.server(&dir, "other", (years_ahead(10), 1, 1));
    let base = "upstream_url = sim\nsymbols = EURUSD\nuser_keys_file = users.keys\n";
    let conf = |cert: &Path, key: &Path| {
        format!(
            "{base}tls_cert_file = {}\ntls_key_file = {}\n",
            cert.display(),
            key.display()
        )
    };
    let (cert, key) = (&setup.server.cert_file, &setup.server.key_file);
    let cases = [
        (
            "missing",
            conf(&dir.join("nope.pem"), key),
            "proxy.conf:5: key `tls_cert_file`: ",
            "nope.pem: cannot read the file",
        ),
        (
            "unreadable (a directory)",
            conf(cert, &dir),
            "proxy.conf:6: key `tls_key_file`: ",
            ": cannot read the file",
        ),
        (
            "mismatched",
            conf(cert, &other.key_file),
            "proxy.conf:6: key `tls_key_file`: ",
            "other.key: the private key does not match the certificate in",
        ),
        (
            "the key where the certificate goes",
            conf(key, key),
            "proxy.conf:5: key `tls_cert_file`: ",
            "no certificate in the file",
        ),
    ];
    for (what, config, at, why) in &cases {
        for args in [&[][..], &["--check-config"][..]] {
            let (code, _, err) = run_binary(&dir, config, args);
            assert_eq!(code, 2, "{what} {args:?}: {err}");
            assert!(
                err.contains(at) && err.contains(why),
                "{what} {args:?}: {err}"
            );
        }
    }
    let (code, out, err) = run_binary(&dir, &conf(cert, key), &["--check-config"]);
    assert_eq!(code, 0, "{err}");
    let (y, m, d) = setup.server_lapses;
    assert!(
        out.contains("TLS on the client port: ")
            && out.contains(&format!("valid until {y:04}-{m:02}-{d:02}T00:00:00Z")),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn watch_connects_over_wss_trusting_a_private_ca_with_ca_file() {
    let dir = temp_dir("tls-watch");
    let setup = TlsSetup::new(&dir);
    let (up, proxy, ep) = tls_proxy(&setup, "", &keys());
    let watch = |ca: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fxproxy"));
        cmd.args(["watch", &ep.ws_url(), "--key", KEY, "--symbols", "EURUSD"]);
        if let Some(ca) = ca {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Without the CA it cannot trust the proxy, and says so.
    let refused = watch(None).wait_with_output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("cannot connect") && err.contains("certificate"),
        "{err}"
    );

    let mut child = watch(Some(&setup.ca_file));
    proxy.wait_for_clients(1);
    up.send(&quote("EURUSD", 3));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("EURUSD   bid 1.00003"), "{line:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_slow_tls_reader_is_told_it_is_a_slow_consumer_as_a_plain_one_is() {
    let dir = temp_dir("tls-slow");
    let setup = TlsSetup::new(&dir);
    let (up, proxy, ep) = tls_proxy(
        &setup,
        "client_queue_len = 64\nmax_client_lag_secs = 1",
        &keys(),
    );
    let mut slow = Client::auth_to(&ep, KEY, Some("EURUSD"));
    proxy.wait_for_clients(1);
    // 32 KiB quotes it never reads: its socket, then its queue, fill.
    for n in 0..400 {
        up.send(&big_quote(n));
    }
    eventually("the slow consumer dropped", || {
        ep.metric("fxproxy_slow_consumer_disconnects_total") == 1.0
    });
    // What it was sent before, then the close frame.
    let close = loop {
        match slow.next().expect("frames, then the close") {
            Message::Close(Some(f)) => break (u16::from(f.code), f.reason.to_string()),
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(close, (1008, "Slow consumer".to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_certificate_as_the_only_credential_without_an_origin_list_is_refused_at_start() {
    let dir = temp_dir("tls-cert-only-no-origins");
    let setup = TlsSetup::new(&dir);
    let clients_ca = TestCa::new("clients");
    let clients_ca_file = clients_ca.write(&dir.join("clients-ca.pem"));
    std::fs::write(dir.join("users.keys"), "# certificates alone\n").unwrap();
    let config = format!(
        "upstream_url = sim\nsymbols = EURUSD\nuser_keys_file = users.keys\n{}\
         tls_client_ca_file = {}\n",
        setup.config(),
        clients_ca_file.display()
    );
    for args in [&["--check-config"][..], &[]] {
        let (code, _, err) = run_binary(&dir, &config, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("a client certificate is the only credential")
                && err.contains("set allowed_origins"),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `openssl req -x509` makes by default is a CA certificate, which rustls refuses as a
/// server's own (`CaUsedAsEndEntity`). Put in upstream_ca_file, that exact certificate is
/// pinned and the upstream is trusted; a refused certificate is explained in words.
#[test]
fn a_self_signed_upstream_certificate_is_pinned_and_refusals_say_what_to_do() {
    let dir = temp_dir("tls-pinned");
    let self_signed = TestCa::new("self-signed");
    let (cert, key) = self_signed.write_own_pair(&dir, "self-signed");
    let up = TestUpstream::start();
    let a = TestProxy::start(
        &up.url(),
        &format!(
            "tls_cert_file = {}\ntls_key_file = {}\n",
            cert.display(),
            key.display()
        ),
        &keys(),
    );
    up.expect_subscribe();
    let a_url = format!("wss://127.0.0.1:{}/", a.addr.port());
    let trusting = |ca_file: &Path| {
        format!(
            "upstream_ca_file = {}\nupstream_bundled_roots = false\nupstream_api_key = {KEY}\n",
            ca_file.display()
        )
    };
    // Pinned: the certificate itself in upstream_ca_file.
    let b = TestProxy::start(&a_url, &trusting(&cert), &keys());
    a.wait_for_clients(1);
    let mut client = Client::auth(b.addr, KEY, Some("EURUSD"));
    b.wait_for_clients(1);
    up.send(&quote("EURUSD", 1));
    assert_eq!(client.next_text(), quote("EURUSD", 1));

    // Not pinned (another CA trusted): rustls's CaUsedAsEndEntity, said in words.
    let other = TestCa::new("other");
    let other_file = other.write(&dir.join("other.pem"));
    let c = TestProxy::start(&a_url, &trusting(&other_file), &keys());
    let reason = |proxy: &TestProxy| healthz(proxy.addr).1;
    eventually("CaUsedAsEndEntity explained", || {
        let r = reason(&c);
        r.contains("presents a CA certificate as its own") && r.contains("pin it")
    });

    // A proper server certificate from a CA that is not trusted: said so, with the key to set.
    let setup = TlsSetup::new(&dir);
    let (_up2, d, _) = tls_proxy(&setup, "", &keys());
    let e = TestProxy::start(
        &format!("wss://127.0.0.1:{}/", d.addr.port()),
        &trusting(&other_file),
        &keys(),
    );
    eventually("UnknownIssuer explained", || {
        reason(&e).contains("not issued by a CA fxproxy trusts: set upstream_ca_file")
    });
    let _ = std::fs::remove_dir_all(&dir);
}
