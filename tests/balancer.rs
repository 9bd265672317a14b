//! The shipped load balancer configurations (contrib/nginx/fxproxy.conf,
//! contrib/haproxy/fxproxy.cfg) in front of two instances on a Redis backbone: clients connect
//! through the balancer and receive, spread over both instances; the proxies' logs name the
//! clients (X-Forwarded-For from a trusted proxy); one instance is killed and its clients
//! reconnect through the balancer to the other and receive again. Then an instance that is full
//! (max_clients reached: it answers an upgrade with 503): the balancer sends each client on to
//! the other. Needs redis-server and nginx or HAProxy (skipped without them, except under CI).

mod common;

use common::cluster::{
    assert_increasing, gauge, instance_config, redis_available, wait_for_holder, Ended,
    RedisServer, Source, Subscriber, CLIENT_KEY,
};
use common::process::{
    command_succeeds, poll, prerequisites_met, simulator_config, temp_dir, write_keys, Proxy,
};
use common::{metric_of, Client, KEY};
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const EVERY: Duration = Duration::from_millis(20);
const SEE_WITHIN: Duration = Duration::from_secs(15);
/// The address the test clients connect from, so the proxies' logs can tell them from the
/// balancer (127.0.0.1).
const CLIENT_IP: [u8; 4] = [127, 0, 0, 2];

/// A balancer process, killed on drop. Each runs as one process (nginx with
/// `master_process off`, HAProxy with `-db`), so killing it leaves no worker behind.
struct Balancer {
    addr: SocketAddr,
    child: Child,
    log: std::path::PathBuf,
}

impl Balancer {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- balancer output ---\n{}--- end ---", self.log_text());
        }
    }
}

/// A port nobody listens on right now (the balancers cannot be given port 0 and tell it back).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The shipped file with its example instances replaced by `instances` and its listening
/// address by `listen`. Fails if the file no longer has what is replaced.
fn adapted(shipped: &str, instances: &[SocketAddr], listen: (&str, String)) -> String {
    let mut text = shipped.to_string();
    let examples = ["127.0.0.1:8765", "127.0.0.1:8766", "127.0.0.1:8767"];
    for (i, example) in examples.iter().enumerate() {
        assert!(text.contains(example), "the shipped file lost {example}");
        match instances.get(i) {
            Some(addr) => text = text.replace(example, &addr.to_string()),
            None => {
                text = text
                    .lines()
                    .filter(|l| !l.contains(example))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            }
        }
    }
    assert!(
        text.contains(listen.0),
        "the shipped file lost {}",
        listen.0
    );
    text.replace(listen.0, &listen.1)
}

fn start_nginx(dir: &Path, instances: &[SocketAddr]) -> Balancer {
    let shipped = include_str!("../contrib/nginx/fxproxy.conf");
    for _ in 0..10 {
        let port = free_port();
        let site = adapted(
            shipped,
            instances,
            ("listen 8080;", format!("listen 127.0.0.1:{port};")),
        );
        fs::write(dir.join("fxproxy.conf"), site).unwrap();
        let d = dir.display();
        let main = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/nginx-access.log;\n  client_body_temp_path {d}/tmp-body;\n\
             proxy_temp_path {d}/tmp-proxy;\n  fastcgi_temp_path {d}/tmp-fcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n\
             scgi_temp_path {d}/tmp-scgi;\n  include {d}/fxproxy.conf;\n}}\n"
        );
        fs::write(dir.join("nginx.conf"), main).unwrap();
        let log = dir.join("nginx-error.log");
        let out = fs::File::create(dir.join("nginx-stderr.log")).unwrap();
        let child = Command::new(nginx())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("starting nginx");
        if let Some(b) = listening(child, port, log) {
            return b;
        }
    }
    panic!("nginx did not start; see {}", dir.display());
}

fn start_haproxy(dir: &Path, instances: &[SocketAddr]) -> Balancer {
    let shipped = include_str!("../contrib/haproxy/fxproxy.cfg");
    for _ in 0..10 {
        let port = free_port();
        let site = adapted(
            shipped,
            instances,
            ("bind :8080", format!("bind 127.0.0.1:{port}")),
        );
        fs::write(dir.join("fxproxy.cfg"), site).unwrap();
        // Debian's haproxy.cfg brings the global section; this one is the least that runs.
        fs::write(dir.join("global.cfg"), "global\n    maxconn 4096\n").unwrap();
        let log = dir.join("haproxy.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(haproxy())
            .arg("-db")
            .arg("-f")
            .arg(dir.join("global.cfg"))
            .arg("-f")
            .arg(dir.join("fxproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting haproxy");
        if let Some(b) = listening(child, port, log) {
            return b;
        }
    }
    panic!("haproxy did not start; see {}", dir.display());
}

/// The balancer once it accepts connections on `port`; `None` if it exited (the port was taken).
fn listening(mut child: Child, port: u16, log: std::path::PathBuf) -> Option<Balancer> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let up = poll(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_))) || TcpStream::connect(addr).is_ok()
    });
    if up && child.try_wait().ok().flatten().is_none() {
        Some(Balancer { addr, child, log })
    } else {
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

/// Whether `/healthz` at `addr` answers 200.
fn healthy(addr: SocketAddr) -> bool {
    common::healthz(addr).0 == 200
}

fn nginx() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

fn haproxy() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

/// Two instances behind `start`'s balancer; see the module's comment.
fn clients_follow_the_balancer_when_an_instance_dies(
    start: fn(&Path, &[SocketAddr]) -> Balancer,
    what: &str,
) {
    let dir = temp_dir();
    let redis = RedisServer::start(&dir);
    let keys = write_keys(&dir, &[CLIENT_KEY]);
    let source = Source::start(EVERY);
    let conf = instance_config(
        &source.url(),
        &redis.url(),
        "balanced",
        &keys,
        "trusted_proxies = 127.0.0.1\n",
    );
    let proxies: Vec<Proxy> = (0..2).map(|_| Proxy::spawn(&conf)).collect();
    wait_for_holder(&proxies.iter().collect::<Vec<_>>());
    // Each instance must be healthy (quotes arriving from the stream) before the balancer sees
    // it: nginx's passive check leaves an instance that answers 503, as one still warming up
    // does, out for fail_timeout (5 s), and the clients would all go to the other.
    for p in &proxies {
        assert!(
            poll(Duration::from_secs(10), || healthy(p.addr)),
            "an instance never became healthy:\n{}",
            p.stderr_text()
        );
    }
    let balancer = start(&dir, &[proxies[0].addr, proxies[1].addr]);
    // HAProxy's first health checks must pass before it sends anybody anywhere.
    assert!(poll(Duration::from_secs(10), || healthy(balancer.addr)));

    let subs: Vec<Subscriber> = (0..4)
        .map(|i| {
            Subscriber::start_with(&format!("{what}-client{i}"), balancer.addr, Some(CLIENT_IP))
        })
        .collect();
    let target = source.next_number() + 20;
    for s in &subs {
        assert!(
            s.wait_past(target, SEE_WITHIN),
            "{}: nothing through {what}",
            s.name
        );
    }
    let spread: Vec<f64> = proxies
        .iter()
        .map(|p| gauge(p, "fxproxy_clients_connected"))
        .collect();
    assert_eq!(
        spread,
        vec![2.0, 2.0],
        "{what} spreads clients by least connections"
    );
    for p in &proxies {
        assert!(
            p.wait_for_log("127.0.0.2 (via 127.0.0.1:", Duration::from_secs(5)),
            "the log names the client behind {what}:\n{}",
            p.stderr_text()
        );
    }

    let mut proxies = proxies;
    proxies[0].signal("KILL");
    let _ = proxies[0].wait_exit(Duration::from_secs(5));
    // Its two clients see their connection end; they connect again through the balancer.
    assert!(poll(Duration::from_secs(10), || subs
        .iter()
        .filter(|s| s.ended())
        .count()
        == 2));
    let (cut, kept): (Vec<Subscriber>, Vec<Subscriber>) = subs.into_iter().partition(|s| s.ended());
    let again: Vec<Subscriber> = (0..cut.len())
        .map(|i| {
            Subscriber::start_with(&format!("{what}-again{i}"), balancer.addr, Some(CLIENT_IP))
        })
        .collect();
    let target = source.next_number() + 20;
    for s in again.iter().chain(kept.iter()) {
        assert!(
            s.wait_past(target, SEE_WITHIN),
            "{}: nothing after the kill",
            s.name
        );
    }
    assert_eq!(gauge(&proxies[1], "fxproxy_clients_connected"), 4.0);
    for s in kept.into_iter().chain(again) {
        let name = s.name.clone();
        let (numbers, ended) = s.finish();
        assert_eq!(ended, Ended::Stopped, "{name}");
        assert_increasing(&name, &numbers);
    }
    for s in cut {
        let name = s.name.clone();
        let (numbers, _) = s.finish();
        assert_increasing(&name, &numbers);
    }
    if what == "haproxy" {
        assert!(
            poll(Duration::from_secs(10), || balancer
                .log_text()
                .contains("is DOWN")),
            "HAProxy's health check did not mark the dead instance down"
        );
    }
}

/// Two instances on the simulator, one of them full: `max_clients = 1`, its one place taken
/// by a client connected to it directly, so every upgrade the balancer sends it is answered
/// 503. Every client through the balancer must still be served, by the other instance, and
/// the full one must have refused some: the balancer was sent a 503 and tried again.
fn a_full_instance_sends_clients_to_the_other(
    start: fn(&Path, &[SocketAddr]) -> Balancer,
    what: &str,
) {
    let dir = temp_dir();
    let keys = write_keys(&dir, &[KEY]);
    let conf = simulator_config(&keys, "EURUSD") + "market_hours = always\n";
    let full = Proxy::spawn(&(conf.clone() + "max_clients = 1\n"));
    let open = Proxy::spawn(&conf);
    let mut taken = Client::auth(full.addr, KEY, None);
    taken.next_text();
    for p in [&full, &open] {
        assert!(poll(Duration::from_secs(10), || healthy(p.addr)));
    }
    let balancer = start(&dir, &[full.addr, open.addr]);
    assert!(poll(Duration::from_secs(10), || healthy(balancer.addr)));
    let mut clients: Vec<Client> = (0..4)
        .map(|_| Client::auth(balancer.addr, KEY, None))
        .collect();
    for c in &mut clients {
        c.next_text();
    }
    assert_eq!(metric_of(open.addr, "fxproxy_clients_connected"), 4.0);
    assert_eq!(metric_of(full.addr, "fxproxy_clients_connected"), 1.0);
    let refused = metric_of(
        full.addr,
        "fxproxy_rejected_connections_total{reason=\"max_clients\"}",
    );
    assert!(
        refused >= 1.0,
        "{what} never tried the full instance: the retry was not tested"
    );
}

#[test]
fn nginx_in_front_of_two_instances() {
    behind("nginx", nginx(), start_nginx);
}

#[test]
fn haproxy_in_front_of_two_instances() {
    behind("haproxy", haproxy(), start_haproxy);
}

#[test]
fn nginx_sends_a_client_refused_with_503_to_the_other_instance() {
    if installed("nginx", nginx()) {
        a_full_instance_sends_clients_to_the_other(start_nginx, "nginx");
    }
}

#[test]
fn haproxy_sends_a_client_refused_with_503_to_the_other_instance() {
    if installed("haproxy", haproxy()) {
        a_full_instance_sends_clients_to_the_other(start_haproxy, "haproxy");
    }
}

/// Whether the balancer `what` (also its Debian package) is installed; skips the test with a
/// message if not, except under CI.
fn installed(what: &str, program: &str) -> bool {
    let missing: Vec<String> = if command_succeeds(program, &["-v"]) {
        vec![]
    } else {
        vec![format!("{what} (apt-get install {what})")]
    };
    prerequisites_met(&format!("balancer::{what}"), &missing)
}

/// The test behind the balancer `what`, unless it or Redis is missing outside CI.
fn behind(what: &str, program: &str, start: fn(&Path, &[SocketAddr]) -> Balancer) {
    if !redis_available(&format!("balancer::{what}")) || !installed(what, program) {
        return;
    }
    clients_follow_the_balancer_when_an_instance_dies(start, what);
}
