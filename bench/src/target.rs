//! The system under test: fxproxy spawned with a generated config, another proxy spawned from a
//! command line (`--peer`), or one already running (`--url`). Spawned processes are stopped
//! (SIGTERM, then SIGKILL after 5 s) when the `Running` is dropped.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::args::{Options, Target};

pub struct Running {
    pub url: String,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    pub label: String,
    /// The binary or command line, for the report.
    pub what: String,
    /// When the spawned fxproxy binary was last written (Unix seconds): the binary can be
    /// rebuilt between the runs of a sweep, and the report should say which one ran.
    pub built: Option<u64>,
    /// For a wss:// target: the config the clients connect with.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    child: Option<Child>,
    tmpdir: Option<PathBuf>,
    log: Option<PathBuf>,
}

impl Running {
    /// `None` while the spawned process runs (or none was spawned); else how it ended.
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => Some(format!("{st}")),
            _ => None,
        }
    }

    pub fn log_tail(&self) -> String {
        self.log.as_deref().map(tail).unwrap_or_default()
    }

    /// Stops a spawned process and says how it went.
    pub fn stop(&mut self) -> Option<String> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(format!("had already exited ({st})"));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(format!(
                    "stopped by SIGTERM in {:.2} s ({st})",
                    t.elapsed().as_secs_f64()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Some("did not stop within 5 s of SIGTERM; killed".into())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
        if let Some(d) = self.tmpdir.take() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// Starts (or finds) the target. `feed_url` is the bench's own upstream feed.
pub fn start(o: &Options, feed_url: &str) -> Result<Running, String> {
    match &o.target {
        Target::ProxyBin(bin) => start_fxproxy(o, bin.as_deref(), feed_url),
        Target::Peer(cmd) => start_peer(o, cmd, feed_url),
        Target::Url(url) => {
            let addr = loopback_addr(url)?;
            let tls = match &o.ca_file {
                Some(ca) => Some(crate::tls::client_config(ca)?),
                None => None,
            };
            Ok(Running {
                url: url.clone(),
                addr,
                pid: o.pid,
                label: o.label.clone().unwrap_or_else(|| "url".into()),
                what: url.clone(),
                built: None,
                tls,
                child: None,
                tmpdir: None,
                log: None,
            })
        }
    }
}

/// Only loopback may be targeted: refuse anything else before sending a byte.
pub fn loopback_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| format!("{url}: only ws:// and wss:// URLs are supported"))?;
    let hostport = rest.split('/').next().unwrap_or("");
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{url}: only loopback addresses may be benchmarked"));
    }
    Ok(addr)
}

fn tmpdir() -> Result<PathBuf, String> {
    let nanos = crate::clock::now_ns();
    let d = std::env::temp_dir().join(format!("fxbench-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

fn default_proxy_bin() -> Option<PathBuf> {
    let mut candidates = vec![
        PathBuf::from("../target/release/fxproxy"),
        PathBuf::from("target/release/fxproxy"),
    ];
    // bench/target/release/fxbench → the proxy's target/release/fxproxy
    if let Ok(exe) = std::env::current_exe() {
        if let Some(root) = exe.ancestors().nth(4) {
            candidates.push(root.join("target/release/fxproxy"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The generated proxy.conf, with `--proxy-set` applied (an empty value drops a key).
pub fn proxy_config(
    o: &Options,
    feed_url: &str,
    keys_file: &Path,
    tls: Option<&crate::tls::RunTls>,
) -> String {
    let mut lines: Vec<(String, String)> = vec![
        ("listen".into(), "127.0.0.1:0".into()),
        ("upstream_url".into(), feed_url.into()),
        ("symbols".into(), o.symbols.join(",")),
        ("user_keys_file".into(), keys_file.display().to_string()),
        (
            "max_clients".into(),
            (o.clients + 100).max(1000).to_string(),
        ),
        ("client_queue_len".into(), "1024".into()),
        ("log_level".into(), "warn".into()),
        ("status_interval_secs".into(), "0".into()),
    ];
    if o.rate == 0.0 {
        // An idle feed is the point of the idle run, not a stale upstream to reconnect to.
        lines.push(("upstream_stale_secs".into(), "3600".into()));
    }
    if let Some(tls) = tls {
        lines.push(("tls_cert_file".into(), tls.cert.display().to_string()));
        lines.push(("tls_key_file".into(), tls.key.display().to_string()));
    }
    for (k, v) in &o.proxy_set {
        match lines.iter().position(|(lk, _)| lk == k) {
            Some(i) if v.is_empty() => {
                lines.remove(i);
            }
            Some(i) => lines[i].1 = v.clone(),
            None if v.is_empty() => {}
            None => lines.push((k.clone(), v.clone())),
        }
    }
    let mut s = String::from("# generated by fxbench\n");
    for (k, v) in lines {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s
}

fn start_fxproxy(o: &Options, bin: Option<&Path>, feed_url: &str) -> Result<Running, String> {
    let bin = match bin {
        Some(b) => b.to_path_buf(),
        None => default_proxy_bin().ok_or(
            "no fxproxy binary at ../target/release/fxproxy or target/release/fxproxy; \
             build it (cargo build --release) or pass --proxy-bin PATH",
        )?,
    };
    let bin = fs::canonicalize(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let built = fs::metadata(&bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let dir = tmpdir()?;
    let keys = dir.join("user_keys");
    fs::write(&keys, format!("# generated by fxbench\n{}\n", o.key)).map_err(|e| e.to_string())?;
    let tls = if o.tls {
        Some(crate::tls::self_signed(&dir)?)
    } else {
        None
    };
    let conf = dir.join("proxy.conf");
    fs::write(&conf, proxy_config(o, feed_url, &keys, tls.as_ref())).map_err(|e| e.to_string())?;
    let log = dir.join("proxy.log");
    let logf = File::create(&log).map_err(|e| e.to_string())?;

    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let pid = child.id();

    // Keep draining stderr into the log for the whole run (a full pipe would block the proxy),
    // and hand back the address from its `listening on 127.0.0.1:PORT` line.
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    thread::Builder::new()
        .name("proxy-stderr".into())
        .spawn(move || {
            let mut logf = logf;
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(logf, "{line}");
                if let Some(addr) = parse_listening(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;

    let mut running = Running {
        url: String::new(),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        pid: Some(pid),
        label: o.label.clone().unwrap_or_else(|| "fxproxy".into()),
        what: bin.display().to_string(),
        built,
        tls: tls.map(|t| t.client),
        child: Some(child),
        tmpdir: Some(dir),
        log: Some(log),
    };
    let t = Instant::now();
    let addr = loop {
        if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
            break addr;
        }
        if let Some(st) = running.exited() {
            return Err(format!(
                "fxproxy exited during start-up ({st}); its output:\n{}",
                running.log_tail()
            ));
        }
        // Without the log line (e.g. it is logged below `log_level`), a single loopback
        // listening socket owned by the process is the client port.
        if t.elapsed() > Duration::from_millis(500) {
            if let [addr] = listening_sockets(pid).as_slice() {
                break *addr;
            }
        }
        if t.elapsed() > Duration::from_secs(15) {
            return Err(format!(
                "fxproxy printed no `listening on 127.0.0.1:PORT` line within 15 s, and has {} \
                 listening sockets; its output:\n{}",
                listening_sockets(pid).len(),
                running.log_tail()
            ));
        }
    };
    running.addr = addr;
    let scheme = if running.tls.is_some() { "wss" } else { "ws" };
    running.url = format!("{scheme}://{addr}/");
    Ok(running)
}

/// The address in a log line such as `... listening on 127.0.0.1:40123` (also `ws://…/`).
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let i = line.find("listening on ")?;
    let tok = line[i + "listening on ".len()..]
        .split_whitespace()
        .next()?;
    let tok = tok.strip_prefix("ws://").unwrap_or(tok);
    let tok = tok.trim_end_matches(|c: char| !c.is_ascii_digit());
    tok.parse().ok()
}

/// The IPv4 loopback TCP sockets in LISTEN state that process `pid` holds open, from /proc.
pub fn listening_sockets(pid: u32) -> Vec<SocketAddr> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    parse_listen_table(&table, &inodes)
}

fn parse_listen_table(table: &str, inodes: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        if f.len() < 10 || f[3] != "0A" || !inodes.iter().any(|i| i == f[9]) {
            continue;
        }
        let Some((ip, port)) = f[1].split_once(':') else {
            continue;
        };
        let (Ok(ip), Ok(port)) = (u32::from_str_radix(ip, 16), u16::from_str_radix(port, 16))
        else {
            continue;
        };
        // The kernel prints the address in host byte order: 0100007F is 127.0.0.1 on x86.
        let ip = std::net::Ipv4Addr::from(u32::from_be(ip.to_le()));
        if ip.is_loopback() {
            out.push(SocketAddr::from((ip, port)));
        }
    }
    out
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn start_peer(o: &Options, cmd: &str, feed_url: &str) -> Result<Running, String> {
    let port = free_port()?;
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "fxbench".into());
    let dir = tmpdir()?;
    let tls = if o.tls {
        Some(crate::tls::self_signed(&dir)?)
    } else {
        None
    };
    let mut cmd = cmd
        .replace("{feed}", feed_url)
        .replace("{port}", &port.to_string())
        .replace("{key}", &o.key)
        .replace("{self}", &me);
    if let Some(tls) = &tls {
        cmd = cmd
            .replace("{tls_cert}", &tls.cert.display().to_string())
            .replace("{tls_key}", &tls.key.display().to_string());
    }
    let log = dir.join("peer.log");
    let logf = File::create(&log).map_err(|e| e.to_string())?;
    // `exec` so that the pid we measure is the proxy's, not a shell's.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(logf)
        .spawn()
        .map_err(|e| format!("{cmd}: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let mut running = Running {
        url: format!("{scheme}://{addr}/"),
        addr,
        pid: Some(child.id()),
        label: o.label.clone().unwrap_or_else(|| "peer".into()),
        what: cmd.clone(),
        built: None,
        tls: tls.map(|t| t.client),
        child: Some(child),
        tmpdir: Some(dir),
        log: Some(log),
    };
    let t = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(running);
        }
        if let Some(st) = running.exited() {
            return Err(format!(
                "{cmd} exited during start-up ({st}); its output:\n{}",
                running.log_tail()
            ));
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "{cmd}: port {port} accepted nothing within 30 s; its output:\n{}",
                running.log_tail()
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn tail(p: &Path) -> String {
    let s = fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        let a = "127.0.0.1:40123".parse().ok();
        assert_eq!(
            parse_listening("2024-01-01 WARN fxproxy listening on 127.0.0.1:40123"),
            a
        );
        assert_eq!(
            parse_listening("listening on ws://127.0.0.1:40123/ (3 symbols)"),
            a
        );
        assert_eq!(parse_listening("listening on 127.0.0.1:40123."), a);
        assert_eq!(parse_listening("upstream connected"), None);
    }

    #[test]
    fn listen_table() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9CFB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1
   1: 0100007F:9CFC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1
   2: 0100007F:9CFB 0100007F:D2B4 01 00000000:00000000 00:00000000 00000000     0        0 4243 1";
        let got = parse_listen_table(t, &["4242".into(), "4243".into()]);
        assert_eq!(got, vec!["127.0.0.1:40187".parse().unwrap()]);
    }

    #[test]
    fn only_loopback() {
        assert!(loopback_addr("ws://127.0.0.1:9/").is_ok());
        assert!(loopback_addr("ws://localhost:9").is_ok());
        assert!(loopback_addr("ws://10.0.0.1:9/").is_err());
        assert!(loopback_addr("wss://127.0.0.1:9/").is_ok());
        assert!(loopback_addr("wss://10.0.0.1:9/").is_err());
        assert!(loopback_addr("http://127.0.0.1:9/").is_err());
    }

    #[test]
    fn config_overrides() {
        let crate::args::Command::Bench(o) = crate::args::parse(
            [
                "--proxy-set",
                "log_level=error",
                "--proxy-set",
                "max_clients=",
                "--proxy-set",
                "x=1",
            ]
            .map(String::from)
            .to_vec(),
        )
        .unwrap() else {
            panic!()
        };
        let c = proxy_config(&o, "ws://127.0.0.1:1", Path::new("/k"), None);
        assert!(
            c.contains("log_level = error\n")
                && !c.contains("max_clients")
                && c.contains("x = 1\n")
        );
        assert!(
            c.contains("upstream_url = ws://127.0.0.1:1\n") && c.contains("listen = 127.0.0.1:0\n")
        );
    }
}
