//! The page served at `GET /`, driven in headless Chromium against the real proxy and its
//! built-in simulator (`tests/browser/page_test.mjs` does the clicking and looking); and its
//! market banner against a second proxy whose feed stopped on a Friday night, with the
//! browser's clock set by Playwright. And the page over https:// from a proxy with TLS on
//! (`tests/browser/https_test.mjs`).
//!
//! Needs /usr/bin/chromium, node and `npm ci --prefix tests/browser`; without them the test is
//! skipped locally and fails under CI. `UPDATE_SCREENSHOT=1` also refreshes docs/page.png.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::{
    command_succeeds, prerequisites_met, run_script, simulator_config, write_keys, Proxy,
};
use common::TestUpstream;

const KEY: &str = "demo-key-0123456789";
const SYMBOLS: &str = "EURUSD,GBPUSD,USDJPY";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether Chromium, node and playwright-core are there (under CI they must be).
fn browser_ready(scripts: &Path) -> bool {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (apt-get install -y chromium)"));
    }
    if !command_succeeds("node", &["--version"]) {
        missing.push("node (apt-get install -y nodejs npm)".to_owned());
    }
    if !scripts.join("node_modules/playwright-core").is_dir() {
        missing.push("tests/browser/node_modules (npm ci --prefix tests/browser)".to_owned());
    }
    prerequisites_met("browser page test", &missing)
}

#[test]
fn page_shows_live_quotes_and_refusals_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scripts = root.join("tests/browser");
    if !browser_ready(&scripts) {
        return;
    }

    let keys_dir = common::process::temp_dir();
    let keys = write_keys(&keys_dir, &[KEY]);
    let proxy = Proxy::spawn(&simulator_config(&keys, SYMBOLS));
    // The market proxy's feed: one quote of each symbol, stamped Friday 2026-12-04 21:58 UTC,
    // then silence, as at the weekly close.
    let up = TestUpstream::start();
    let market = Proxy::spawn(&format!(
        "upstream_url = {}\nsymbols = {SYMBOLS}\nuser_keys_file = {}\n\
         market_closed_dates = 2026-12-25\n",
        up.url(),
        keys.display()
    ));
    up.expect_subscribe();
    let friday_2158 = 1_796_421_480_000u64;
    for (n, symbol) in SYMBOLS.split(',').enumerate() {
        up.send(&format!(
            r#"{{"symbol":"{symbol}","ts":"{friday_2158}","bid":1.{n}0000,"ask":1.{n}0002}}"#
        ));
    }
    let screenshot = if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        root.join("docs/page.png")
    } else {
        proxy.dir().join("page.png")
    };

    let mut node = Command::new("node");
    node.arg(scripts.join("page_test.mjs"))
        .arg(proxy.http_url())
        .arg(KEY)
        .arg(SYMBOLS)
        .arg(&screenshot)
        .arg(market.http_url())
        .env("CHROMIUM", CHROMIUM)
        .current_dir(&scripts);
    let run = run_script(node, proxy.dir(), Duration::from_secs(180));
    let _ = std::fs::remove_dir_all(&keys_dir);
    run.assert_success("page_test.mjs");
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
    for p in [&proxy, &market] {
        assert!(
            !p.stderr_text().contains(KEY),
            "the proxy logged the client key in full"
        );
    }
}

#[test]
fn page_works_over_https_in_chromium() {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !browser_ready(&scripts) {
        return;
    }
    let dir = common::process::temp_dir();
    let keys = write_keys(&dir, &[KEY]);
    let tls = common::tls::TlsSetup::new(&dir);
    let proxy = Proxy::spawn(&format!(
        "{}{}",
        simulator_config(&keys, SYMBOLS),
        tls.config()
    ));
    let mut node = Command::new("node");
    node.arg(scripts.join("https_test.mjs"))
        .arg(format!("https://{}", proxy.addr))
        .arg(KEY)
        .arg(SYMBOLS)
        .env("CHROMIUM", CHROMIUM)
        .current_dir(&scripts);
    let run = run_script(node, proxy.dir(), Duration::from_secs(120));
    let _ = std::fs::remove_dir_all(&dir);
    run.assert_success("https_test.mjs");
}
