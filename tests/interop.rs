//! Clients written with common WebSocket libraries — Python `websockets` and Node `ws` — work
//! against the real proxy unchanged: they authenticate, get quotes, ping, are refused with 1008
//! for a wrong key, and close cleanly (`tests/interop/client.py`, `tests/interop/client.mjs`).
//!
//! Needs `pip install -r tests/interop/requirements.txt` and `npm ci --prefix tests/interop`;
//! without them a test is skipped locally and fails under CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::{
    command_succeeds, prerequisites_met, run_script, simulator_config, write_keys, Proxy,
};

const KEY: &str = "demo-key-0123456789";
const SYMBOLS: &str = "EURUSD,GBPUSD,USDJPY";

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Runs `program script ws-url key symbols` against a fresh proxy on the simulator.
fn run_client(program: &str, script: &str) {
    let dir = interop_dir();
    let keys_dir = common::process::temp_dir();
    let keys = write_keys(&keys_dir, &[KEY]);
    let proxy = Proxy::spawn(&simulator_config(&keys, SYMBOLS));
    let mut cmd = Command::new(program);
    cmd.arg(dir.join(script))
        .arg(proxy.ws_url())
        .arg(KEY)
        .arg(SYMBOLS)
        .current_dir(&dir);
    let run = run_script(cmd, proxy.dir(), Duration::from_secs(90));
    let _ = std::fs::remove_dir_all(&keys_dir);
    run.assert_success(script);
}

#[test]
fn python_websockets_client() {
    let mut missing = Vec::new();
    if !command_succeeds("python3", &["-c", "import websockets.asyncio.client"]) {
        missing.push(
            "python3 with websockets (pip install -r tests/interop/requirements.txt)".to_owned(),
        );
    }
    if !prerequisites_met("python websockets interop", &missing) {
        return;
    }
    run_client("python3", "client.py");
}

#[test]
fn node_ws_client() {
    let mut missing = Vec::new();
    if !command_succeeds("node", &["--version"]) {
        missing.push("node (apt-get install -y nodejs npm)".to_owned());
    }
    if !interop_dir().join("node_modules/ws").is_dir() {
        missing.push("tests/interop/node_modules (npm ci --prefix tests/interop)".to_owned());
    }
    if !prerequisites_met("node ws interop", &missing) {
        return;
    }
    run_client("node", "client.mjs");
}
