//! The upstream connection as company networks need it (issue 28), over real sockets: headers
//! in the upstream's handshake (`upstream_header`, a template's `header`) with the key in them
//! and never in the log; `response_header` on the proxy's answers and upgrades, and a
//! forbidden one refused at start-up.

mod common;

use common::fake_source::{FakeSource, Tiingo};
use common::process::{run_script, write_keys, Proxy};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

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
