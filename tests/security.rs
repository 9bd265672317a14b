//! The security settings a user relies on without a browser or a hostile peer to show them:
//! the shipped demo key never serves a network, and the quotes page and every other HTTP
//! answer carry their hardening headers. (The page's policy at work in Chromium is
//! tests/browser.rs; log injection is tests/log_injection.rs.)

mod common;

use common::process::{poll, temp_dir, write_keys};
use common::{http_get, status_of, TestProxy, TestUpstream, KEY};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `fxproxy ARGS` (which must exit on its own) and returns its exit code and stderr;
/// killed after 10 s.
fn run(args: &[&str], config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fxproxy"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("FXPROXY_UPSTREAM_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting fxproxy");
    let mut status = None;
    let exited = poll(Duration::from_secs(10), || {
        status = child.try_wait().expect("waiting for fxproxy");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.and_then(|s| s.code()), err)
}

#[test]
fn the_shipped_demo_key_never_serves_a_network() {
    let dir = temp_dir();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("users.keys");
    let own = write_keys(&dir, &[KEY]);
    let config = dir.join("proxy.conf");
    let write = |listen: &str, keys: &Path| {
        std::fs::write(
            &config,
            format!(
                "listen = {listen}\nupstream_url = sim\nsymbols = EURUSD\nuser_keys_file = {}\n",
                keys.display()
            ),
        )
        .unwrap();
    };

    // Every interface, IPv4 or IPv6: refused before anything is bound, with what to do.
    for listen in ["0.0.0.0:0", "[::]:0"] {
        write(listen, &shipped);
        for args in [&["--check-config"][..], &[]] {
            let (code, err) = run(args, &config);
            assert_eq!(
                code,
                Some(2),
                "fxproxy {args:?} with listen = {listen}: {err}"
            );
            assert!(
                err.contains("holds the demo key `demo…` shipped with fxproxy")
                    && err.contains(&format!("listen = {listen} is not a loopback address"))
                    && err.contains("replace it with a key of your own"),
                "{err}"
            );
            assert!(!err.contains("demo-key-change-me"), "{err}");
            assert!(!err.contains("listening on"), "{err}");
        }
    }
    // Loopback with the demo key, or a network with a key of one's own: valid.
    for (listen, keys) in [
        ("127.0.0.1:0", &shipped),
        ("[::1]:0", &shipped),
        ("0.0.0.0:0", &own),
    ] {
        write(listen, keys);
        let (code, err) = run(&["--check-config"], &config);
        assert_eq!(
            code,
            Some(0),
            "listen = {listen}, {}: {err}",
            keys.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_page_and_every_answer_carry_their_hardening_headers() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    let header = |response: &str, name: &str| -> Option<String> {
        let head = response.split("\r\n\r\n").next().unwrap_or("");
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
    };
    let page = http_get(proxy.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&page), 200);
    let policy = header(&page, "Content-Security-Policy").expect("a policy");
    assert_eq!(
        policy,
        fxproxy::page::policy(page.split("\r\n\r\n").nth(1).unwrap()),
        "the policy's hashes are the served page's"
    );
    assert!(
        policy.starts_with("default-src 'none'; script-src 'sha256-"),
        "{policy}"
    );
    assert!(policy.contains("connect-src 'self'") && policy.contains("frame-ancestors 'none'"));
    assert_eq!(header(&page, "X-Frame-Options").as_deref(), Some("DENY"));
    let head = http_get(proxy.addr, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(header(&head, "Content-Security-Policy"), Some(policy));
    for request in [
        "GET / ",
        "GET /healthz ",
        "GET /metrics ",
        "GET /nope ",
        "POST / ",
    ] {
        let r = http_get(proxy.addr, &format!("{request}HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(
            header(&r, "X-Content-Type-Options").as_deref(),
            Some("nosniff"),
            "{r}"
        );
        assert_eq!(
            header(&r, "Referrer-Policy").as_deref(),
            Some("no-referrer"),
            "{r}"
        );
    }
}
