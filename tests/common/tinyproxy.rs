//! A real HTTP proxy for the tests of the upstream's way out: Debian's `tinyproxy` on a
//! loopback port, with or without `BasicAuth`, its log in a scratch directory, killed on drop.
//! The log tells which tunnels were asked for (`CONNECT HOST:PORT`).

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use super::process::{command_succeeds, poll, prerequisites_met};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The credentials of a proxy started with [`TinyProxy::with_auth`].
pub const PROXY_USER: &str = "desk";
pub const PROXY_PASSWORD: &str = "proxy-pass-0123";

/// Whether `tinyproxy` is installed; skips (or fails under CI) with a message if not.
pub fn tinyproxy_available(test: &str) -> bool {
    // `tinyproxy -v` prints its version and exits 0.
    let missing = if command_succeeds("tinyproxy", &["-v"]) {
        vec![]
    } else {
        vec!["tinyproxy (apt-get install tinyproxy)".to_string()]
    };
    prerequisites_met(test, &missing)
}

/// What the proxy lets through.
#[derive(Default, Clone)]
pub struct Rules {
    /// `BasicAuth USER PASSWORD`: CONNECT without them gets 407.
    pub auth: Option<(String, String)>,
    /// `ConnectPort` lines: CONNECT to any other port gets 403. Empty: every port.
    pub connect_ports: Vec<u16>,
}

/// A running tinyproxy on 127.0.0.1.
pub struct TinyProxy {
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl TinyProxy {
    /// A proxy that asks for no credentials and tunnels to any port.
    pub fn open(dir: &Path) -> TinyProxy {
        TinyProxy::start(dir, &Rules::default())
    }

    /// A proxy that wants [`PROXY_USER`] and [`PROXY_PASSWORD`].
    pub fn with_auth(dir: &Path) -> TinyProxy {
        TinyProxy::start(
            dir,
            &Rules {
                auth: Some((PROXY_USER.into(), PROXY_PASSWORD.into())),
                ..Rules::default()
            },
        )
    }

    /// Starts one in the foreground (`-d`) with its configuration and log in `dir`.
    /// tinyproxy cannot take port 0, so a free port is found by binding 127.0.0.1:0 and
    /// letting it go; should another process take it meanwhile, tinyproxy exits at once
    /// ("Could not create listening sockets") and another port is tried.
    pub fn start(dir: &Path, rules: &Rules) -> TinyProxy {
        for attempt in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let conf = dir.join(format!("tinyproxy-{port}.conf"));
            let log = dir.join(format!("tinyproxy-{port}.log"));
            let mut text = format!(
                "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 600\nMaxClients 64\n\
                 LogFile \"{}\"\nLogLevel Info\n",
                log.display()
            );
            if let Some((user, password)) = &rules.auth {
                text.push_str(&format!("BasicAuth {user} {password}\n"));
            }
            for p in &rules.connect_ports {
                text.push_str(&format!("ConnectPort {p}\n"));
            }
            fs::write(&conf, text).unwrap();
            let mut child = Command::new("tinyproxy")
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting tinyproxy");
            // Listening once it says so; gone if the port was taken.
            let settled = poll(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || fs::read_to_string(&log).is_ok_and(|l| l.contains("Accepting connections"))
            });
            if settled && child.try_wait().ok().flatten().is_none() {
                return TinyProxy {
                    port,
                    log,
                    child: Some(child),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("tinyproxy did not start on port {port} (attempt {attempt})");
        }
        panic!(
            "tinyproxy did not start on any of 20 ports; see {}",
            dir.display()
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT`.
    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many tunnels to `target` (`HOST:PORT`) were asked for, granted or not.
    pub fn connects_to(&self, target: &str) -> usize {
        let request = format!("CONNECT {target} HTTP/1.1");
        self.log().lines().filter(|l| l.contains(&request)).count()
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
