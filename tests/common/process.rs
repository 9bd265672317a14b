//! Runs the real `fxproxy` binary for integration tests: on an ephemeral port, with its log
//! captured, and killed when the test ends however it ends. Also runs the external test
//! scripts (browser, interop clients) with a deadline.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long the proxy may take to log that it is listening.
const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// The environment variables that send connections through an HTTP proxy.
pub const PROXY_VARIABLES: [&str; 6] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// What the proxy logs once its client port is bound; the address follows.
const LISTENING: &str = "listening on ";

/// A running proxy. Dropping it kills the process, so a failed assertion never leaves one behind.
pub struct Proxy {
    pub addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<String>>,
    /// Set once stderr has reached its end (the process and its pipe are gone).
    log_done: Arc<AtomicBool>,
    dir: PathBuf,
    config: PathBuf,
}

impl Proxy {
    /// Starts the proxy with `config` (proxy.conf text without a `listen` line; one binding
    /// 127.0.0.1:0 is added) and waits until it logs the address it listens on.
    pub fn spawn(config: &str) -> Proxy {
        Proxy::spawn_with_env(config, &[])
    }

    /// As [`Proxy::spawn`], with extra environment variables for the process.
    pub fn spawn_with_env(config: &str, env: &[(&str, &str)]) -> Proxy {
        Proxy::start(config, env, None, None)
    }

    /// As [`Proxy::spawn`], with the process's open-file limit lowered to `limit`.
    pub fn spawn_with_fd_limit(config: &str, limit: u32) -> Proxy {
        Proxy::start(config, &[], Some(format!("ulimit -n {limit} && ")), None)
    }

    /// As [`Proxy::spawn_with_env`], started by `sh -c "{setup}exec fxproxy ..."`: `setup`
    /// (shell commands, each ending in `&& `) lowers a limit or joins a cgroup first.
    pub fn spawn_after(config: &str, env: &[(&str, &str)], setup: &str) -> Proxy {
        Proxy::start(config, env, Some(setup.to_string()), None)
    }

    /// As [`Proxy::spawn_with_env`], started as systemd starts the service of a socket unit:
    /// `socket` (a listening socket the caller keeps) is the process's descriptor 3, with
    /// `LISTEN_FDS=1` and `LISTEN_PID` its own process id. The socket goes in as standard
    /// input, which the shell moves to descriptor 3 before it execs the proxy with the pid it
    /// will keep (`$$`), so no unsafe `pre_exec` is needed.
    pub fn spawn_activated(config: &str, env: &[(&str, &str)], socket: &TcpListener) -> Proxy {
        let stdin = socket
            .try_clone()
            .map(|s| Stdio::from(OwnedFd::from(s)))
            .expect("a copy of the listening socket");
        let setup = "exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1; ";
        Proxy::start(config, env, Some(setup.to_string()), Some(stdin))
    }

    fn start(
        config: &str,
        env: &[(&str, &str)],
        setup: Option<String>,
        stdin: Option<Stdio>,
    ) -> Proxy {
        let dir = temp_dir();
        let config_path = dir.join("proxy.conf");
        fs::write(&config_path, format!("listen = 127.0.0.1:0\n{config}"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));

        let mut cmd = match setup {
            None => Command::new(env!("CARGO_BIN_EXE_fxproxy")),
            Some(setup) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("{setup}exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_fxproxy"));
                sh
            }
        };
        cmd.arg("--config")
            .arg(&config_path)
            .current_dir(&dir)
            // The developer's own provider key must not leak into a test's upstream, nor
            // their network's proxy take a test's loopback connections elsewhere.
            .env_remove("FXPROXY_UPSTREAM_API_KEY")
            .env_remove("FXPROXY_UPSTREAM_PROXY_PASSWORD")
            // Nor what a service manager running the tests may have set for itself.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID");
        for var in PROXY_VARIABLES {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied())
            .stdin(stdin.unwrap_or_else(Stdio::null))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting the fxproxy binary");

        let log = Arc::new(Mutex::new(String::new()));
        let (found_tx, found_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        let log_done = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&log_done);
        // Drains stderr for the whole life of the process, so the proxy never blocks on a full
        // pipe, and reports the listening address once.
        thread::Builder::new()
            .name("proxy-stderr".to_owned())
            .spawn(move || {
                let mut found = Some(found_tx);
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                while let Ok(n) = reader.read_until(b'\n', &mut line) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&line);
                    sink.lock().unwrap().push_str(&text);
                    if let Some(addr) = parse_listening(&text) {
                        if let Some(tx) = found.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    line.clear();
                }
                done.store(true, Ordering::SeqCst);
                // Dropping `found` here tells a waiting `spawn` that no address is coming.
            })
            .expect("spawning the stderr reader");

        let mut proxy = Proxy {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            log,
            log_done,
            dir,
            config: config_path,
        };
        match found_rx.recv_timeout(STARTUP_DEADLINE) {
            Ok(addr) => proxy.addr = addr,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "fxproxy did not log `{LISTENING}ADDR` within {STARTUP_DEADLINE:?}; its stderr:\n{}",
                proxy.stderr_text()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = proxy.wait_exit(Duration::from_secs(5));
                panic!(
                    "fxproxy exited ({status:?}) before listening; its stderr:\n{}",
                    proxy.stderr_text()
                )
            }
        }
        proxy
    }

    /// `ws://127.0.0.1:PORT/`, for WebSocket clients.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// `http://127.0.0.1:PORT`, for the page and plain HTTP endpoints.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The temp directory holding this proxy's config; tests may put more files there.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Rewrites the config file as [`Proxy::spawn`] wrote it, with `config` (for a reload).
    /// Written to a new file and renamed over the old, as editors and deploy tools do, so
    /// the proxy never reads half a file.
    pub fn write_config(&self, config: &str) {
        let new = self.dir.join("proxy.conf.new");
        fs::write(&new, format!("listen = 127.0.0.1:0\n{config}"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", new.display()));
        fs::rename(&new, &self.config).expect("renaming the new config into place");
    }

    /// Everything the proxy has written to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Polls the log until it contains `needle`; false if `deadline` passes first.
    pub fn wait_for_log(&self, needle: &str, deadline: Duration) -> bool {
        poll(deadline, || self.log.lock().unwrap().contains(needle))
    }

    /// How long the log is so far, to wait for what comes after it
    /// ([`Proxy::wait_for_log_after`]).
    pub fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// As [`Proxy::wait_for_log`], looking only at what was logged after `offset` (a
    /// [`Proxy::log_len`]): a test waiting on a long log then does not copy or scan all of it
    /// every 10 ms, which on a busy host takes CPU from the proxy it is measuring.
    pub fn wait_for_log_after(&self, offset: usize, needle: &str, deadline: Duration) -> bool {
        poll(deadline, || {
            self.log
                .lock()
                .unwrap()
                .get(offset..)
                .is_some_and(|new| new.contains(needle))
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`, ...) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let sig = sig.trim_start_matches("SIG");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -{sig} {} failed: {status}",
            self.pid()
        );
    }

    /// Waits up to `deadline` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let mut status = None;
        poll(deadline, || {
            status = self.child.try_wait().expect("waiting for fxproxy");
            status.is_some()
        });
        // Its last lines may still be in the pipe: the log is whole once the reader saw its end.
        if status.is_some() {
            poll(Duration::from_secs(5), || {
                self.log_done.load(Ordering::SeqCst)
            });
        }
        status
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            // The log is what explains a failed test; keep the files for a look too.
            eprintln!(
                "--- fxproxy stderr (files in {}) ---\n{}--- end of fxproxy stderr ---",
                self.dir.display(),
                self.stderr_text()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The address in a `listening on ADDR` log line, if this is one.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(LISTENING)? + LISTENING.len()..];
    let token = rest.split_whitespace().next()?;
    token
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

/// A number from /proc/PID/status: `field` with its colon, e.g. `"Threads:"` or `"VmRSS:"`
/// (in kB).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// How many descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count() as u64
}

/// Raises this process's soft open-file limit to its hard limit when it is too low for the
/// test (the proxy child inherits it): `prlimit` needs no privilege for that.
pub fn ensure_open_files(wanted: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft: Option<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok());
    if soft.is_some_and(|s| s >= wanted) {
        return;
    }
    let pid = std::process::id().to_string();
    let raised = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={wanted}:")])
        .status();
    assert!(
        matches!(raised, Ok(s) if s.success()),
        "this test needs {wanted} open files; raise `ulimit -n`"
    );
}

/// Calls `done` every 10 ms until it returns true (then true) or `deadline` passes (false).
pub fn poll(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A new, empty directory under the system temp dir, unique to this process and call.
pub fn temp_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fxproxy-test-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            // Left over from an earlier run whose process had the same id.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("creating {}: {e}", dir.display()),
        }
    }
}

/// Writes a user keys file (`KEY` or `KEY SYM1,SYM2` per line) into `dir`.
pub fn write_keys(dir: &Path, lines: &[&str]) -> PathBuf {
    let path = dir.join("user_keys");
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Whether the test's outside prerequisites are there. Each entry of `missing` names one that is
/// not, with how to install it. Locally a missing one skips the test with a message; under CI
/// (where `CI` is set and the pipeline installs them) it fails the test.
pub fn prerequisites_met(test: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let list = missing.join("; ");
    if std::env::var_os("CI").is_some() {
        panic!("{test}: prerequisites missing under CI: {list}");
    }
    eprintln!("SKIPPED: {test}: not installed: {list}");
    false
}

/// Whether `program args...` runs and exits 0 (used to probe for node, python modules).
pub fn command_succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// How an external script ended.
pub struct ScriptRun {
    /// `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Its stdout followed by its stderr.
    pub output: String,
}

/// proxy.conf text for a proxy on the built-in simulator with one key file.
pub fn simulator_config(keys: &Path, symbols: &str) -> String {
    format!(
        "upstream_url = sim\nsymbols = {symbols}\nsim_rate = 50\n\
         user_keys_file = {}\nlog_level = info\n",
        keys.display()
    )
}

impl ScriptRun {
    /// Fails the test with the script's output unless it succeeded; prints it otherwise.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.success(),
            "{what} failed ({:?}):\n{}",
            self.status,
            self.output
        );
        println!("{}", self.output);
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `cmd` to completion or until `deadline`, whichever comes first, with its output sent to
/// files in `dir` (no pipes to drain, nothing to deadlock on).
pub fn run_script(mut cmd: Command, dir: &Path, deadline: Duration) -> ScriptRun {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!("script-{n}.out"));
    let err_path = dir.join(format!("script-{n}.err"));
    let out = fs::File::create(&out_path).expect("creating the script's stdout file");
    let err = fs::File::create(&err_path).expect("creating the script's stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let mut status = None;
    poll(deadline, || {
        status = child.try_wait().expect("waiting for the script");
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut output = String::new();
    for path in [&out_path, &err_path] {
        if let Ok(mut f) = fs::File::open(path) {
            let _ = f.read_to_string(&mut output);
        }
    }
    if status.is_none() {
        output.push_str(&format!("\n(killed after {deadline:?})\n"));
    }
    ScriptRun { status, output }
}
