//! Broken and hostile clients, each over real loopback sockets and each while healthy clients
//! are connected: silent and trickling connections, malformed upgrades, frames that break the
//! protocol, floods, peers that stop reading or vanish, and more connections than the proxy
//! may hold. Every test ends by checking that the healthy clients got every quote, in order,
//! without delay; those that run the real binary also check that its threads return to their
//! baseline, so nothing a bad client did is left behind.

mod common;

use common::process::{open_fds, proc_status, Proxy};
use common::raw_ws::{
    client_frame, frame, parse_frame as parse_server_frame, Frame as ServerFrame, BINARY, CLOSE,
    CONT, PING, PONG, TEXT,
};
use common::tls::{Endpoint, TlsSetup, Wire};
use common::traffic::*;
use common::*;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

// ---------------------------------------------------------------------------------------------
// The proxy under test: in-process, or the real binary (to watch its threads).
// ---------------------------------------------------------------------------------------------

fn keys() -> String {
    format!("{KEY}\n{OTHER_KEY}\n")
}

/// The client port a test runs against: the same tests run on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Plain,
    Tls,
}

impl Port {
    /// For TLS, a CA and a certificate in `dir`: the config lines that serve it, and the
    /// endpoint for `addr` once the proxy listens.
    fn setup(self, dir: &std::path::Path) -> (String, Option<TlsSetup>) {
        match self {
            Port::Plain => (String::new(), None),
            Port::Tls => {
                let setup = TlsSetup::new(dir);
                (setup.config(), Some(setup))
            }
        }
    }
}

fn endpoint(addr: SocketAddr, tls: &Option<TlsSetup>) -> Endpoint {
    match tls {
        None => Endpoint::plain(addr),
        Some(setup) => Endpoint::tls(addr, setup.ca.client_config()),
    }
}

/// A test upstream and the proxy in-process, both started; the upstream has subscribed.
fn in_process(extra: &str) -> (TestUpstream, TestProxy) {
    let (up, proxy, _) = in_process_on(Port::Plain, extra);
    (up, proxy)
}

fn in_process_on(port: Port, extra: &str) -> (TestUpstream, TestProxy, Endpoint) {
    let up = TestUpstream::start();
    let (tls_lines, tls) = port.setup(&temp_dir("faults-tls"));
    let proxy = TestProxy::start(&up.url(), &format!("{tls_lines}{extra}"), &keys());
    up.expect_subscribe();
    let ep = endpoint(proxy.addr, &tls);
    (up, proxy, ep)
}

/// A test upstream and the real binary, both started; the upstream has subscribed.
fn binary(extra: &str) -> (TestUpstream, Proxy) {
    binary_with_fd_limit(extra, None)
}

fn binary_on(port: Port, extra: &str) -> (TestUpstream, Proxy, Endpoint) {
    let dir = temp_dir("faults-tls");
    let (tls_lines, tls) = port.setup(&dir);
    let (up, proxy) = binary_with_fd_limit(&format!("{tls_lines}{extra}"), None);
    let ep = endpoint(proxy.addr, &tls);
    (up, proxy, ep)
}

fn binary_with_fd_limit(extra: &str, fd_limit: Option<u32>) -> (TestUpstream, Proxy) {
    let up = TestUpstream::start();
    let dir = temp_dir("faults");
    let keys_path = dir.join("users.keys");
    std::fs::write(&keys_path, keys()).unwrap();
    let config = format!(
        "upstream_url = {}\nsymbols = EURUSD,GBPUSD,USDJPY\nuser_keys_file = {}\nstatus_interval_secs = 0\nlog_level = info\n{extra}\n",
        up.url(),
        keys_path.display()
    );
    let proxy = match fd_limit {
        None => Proxy::spawn(&config),
        Some(limit) => Proxy::spawn_with_fd_limit(&config, limit),
    };
    up.expect_subscribe();
    (up, proxy)
}

/// Waits until exactly `n` clients are authenticated and registered for quotes.
fn wait_registered(to: impl Into<Endpoint>, n: usize) {
    let to = to.into();
    eventually(&format!("{n} registered client(s)"), || {
        to.metric("fxproxy_clients_connected") == n as f64
    });
}

fn threads(pid: u32) -> u64 {
    proc_status(pid, "Threads:")
}

/// Threads serving a connection (named `client-N`): one per authenticated client when all
/// is quiet, plus one per connection still in its handshake or being refused.
fn connection_threads(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("client-"))
        .count() as u64
}

/// The thread count once only the `clients` authenticated clients have connection threads.
fn settled_threads(pid: u32, clients: u64) -> u64 {
    eventually(&format!("{clients} connection threads"), || {
        connection_threads(pid) == clients
    });
    threads(pid)
}

/// Waits for the process to be back to `baseline` threads with `clients` connection threads.
fn assert_threads_return(pid: u32, clients: u64, baseline: u64) {
    let started = Instant::now();
    let until = started + DEADLINE;
    loop {
        let (conn, all) = (connection_threads(pid), threads(pid));
        if conn == clients && all == baseline {
            eprintln!(
                "threads back to the baseline of {baseline} ({clients} clients) after {:?}",
                started.elapsed()
            );
            return;
        }
        assert!(
            Instant::now() < until,
            "threads did not return to the baseline: {all} (baseline {baseline}), \
             {conn} connection threads (expected {clients})"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket by hand: masked client frames with any opcode, flags and payload, and a reader
// that sees exactly what the proxy sent.
// ---------------------------------------------------------------------------------------------

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

fn auth_text(symbols: &str) -> String {
    format!(r#"{{"userKey":"{KEY}","symbol":"{symbols}"}}"#)
}

/// How a raw connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The proxy closed it: end of stream, or a reset.
    Closed,
    TimedOut,
}

/// A raw connection to the proxy (over TLS on a TLS port) that speaks WebSocket by hand.
struct Raw {
    s: Wire,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects (and over TLS, finishes the TLS handshake).
    fn open(to: impl Into<Endpoint>) -> Raw {
        let s = to
            .into()
            .wire(Duration::from_millis(50))
            .expect("connecting to the proxy");
        Raw { s, buf: Vec::new() }
    }

    /// Opens a WebSocket: the upgrade request, then the 101 response.
    fn upgrade(to: impl Into<Endpoint>) -> Raw {
        let mut raw = Raw::open(to);
        raw.send(UPGRADE.as_bytes());
        let head = raw.http_head();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        raw
    }

    /// Upgrades, takes the greeting, authenticates for `symbols` and waits for the answer to
    /// a ping: the proxy has then read the auth message and is in its writer loop.
    fn authenticated(to: impl Into<Endpoint>, symbols: &str) -> Raw {
        let mut raw = Raw::upgrade(to);
        raw.expect_greeting();
        raw.send(&client_frame(TEXT, auth_text(symbols).as_bytes()));
        raw.expect_pong(b"ready");
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("writing to the proxy");
    }

    /// Reads more bytes before `until`: `Ok(false)` at the end of the stream.
    fn fill(&mut self, until: Instant) -> Result<bool, Ended> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= until {
                        return Err(Ended::TimedOut);
                    }
                }
                Err(_) => return Ok(false),
            }
        }
    }

    /// The HTTP response head (without the blank line); what follows stays buffered.
    fn http_head(&mut self) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                self.buf.drain(..end + 4);
                return head;
            }
            match self.fill(until) {
                Ok(true) => {}
                other => panic!(
                    "no complete response head ({other:?}); got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// The next frame from the proxy; `Err` if the connection ended or nothing came in time.
    fn next_frame(&mut self, within: Duration) -> Result<ServerFrame, Ended> {
        let until = Instant::now() + within;
        loop {
            if let Some((f, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(f);
            }
            if !self.fill(until)? {
                return Err(Ended::Closed);
            }
        }
    }

    fn expect_greeting(&mut self) {
        let f = self.next_frame(DEADLINE).expect("the greeting");
        assert_eq!((f.opcode, f.payload.as_slice()), (TEXT, &b"Connected"[..]));
    }

    /// Sends a ping and waits for its pong, skipping quotes.
    fn expect_pong(&mut self, data: &[u8]) {
        self.send(&client_frame(PING, data));
        loop {
            let f = self.next_frame(DEADLINE).expect("a pong");
            match f.opcode {
                PONG if f.payload == data => return,
                TEXT | PING | PONG => {}
                _ => panic!("expected a pong, got {f:?}"),
            }
        }
    }

    /// The next text frame, skipping control frames.
    fn next_text(&mut self) -> String {
        loop {
            let f = self.next_frame(DEADLINE).expect("a text frame");
            match f.opcode {
                TEXT => return String::from_utf8(f.payload).unwrap(),
                PING | PONG => {}
                _ => panic!("expected a text frame, got {f:?}"),
            }
        }
    }

    /// Reads up to the proxy's close frame (skipping quotes and control frames), answers it
    /// as a client should, and checks the proxy then ends the connection. The close frame
    /// itself must arrive: a bare drop fails the test.
    fn expect_close(&mut self) -> (u16, String) {
        loop {
            let f = self
                .next_frame(DEADLINE)
                .unwrap_or_else(|e| panic!("the connection ended without a close frame: {e:?}"));
            match f.opcode {
                CLOSE => return self.answer_close(&f),
                TEXT | PING | PONG => {}
                _ => panic!("expected a close frame, got {f:?}"),
            }
        }
    }

    /// Answers the proxy's close frame `f` and checks that the proxy then ends the
    /// connection. Returns the code and reason it sent.
    fn answer_close(&mut self, f: &ServerFrame) -> (u16, String) {
        assert!(f.fin, "a fragmented close frame");
        let (code, reason) = match f.payload.as_slice() {
            [] => (1005, String::new()),
            [hi, lo, reason @ ..] => (
                u16::from_be_bytes([*hi, *lo]),
                String::from_utf8(reason.to_vec()).expect("a UTF-8 close reason"),
            ),
            _ => panic!("a one-byte close payload"),
        };
        // The proxy may be gone already (after it answered our own close).
        let _ = self
            .s
            .write_all(&client_frame(CLOSE, &close_payload(code, b"")));
        assert_eq!(
            self.ends_within(DEADLINE),
            Ended::Closed,
            "after close {code}"
        );
        (code, reason)
    }

    /// Waits for the proxy to end the connection, discarding what it sends meanwhile.
    fn ends_within(&mut self, within: Duration) -> Ended {
        let until = Instant::now() + within;
        loop {
            match self.fill(until) {
                Ok(true) => self.buf.clear(),
                Ok(false) => return Ended::Closed,
                Err(e) => return e,
            }
        }
    }

    /// As [`Raw::ends_within`], keeping what arrives.
    fn ends_within_keeping(&mut self, within: Duration) -> Ended {
        let until = Instant::now() + within;
        loop {
            match self.fill(until) {
                Ok(true) => {}
                Ok(false) => return Ended::Closed,
                Err(e) => return e,
            }
        }
    }

    /// Reads up to the proxy's close frame without answering it.
    fn close_frame(&mut self) -> ServerFrame {
        loop {
            let f = self
                .next_frame(DEADLINE)
                .unwrap_or_else(|e| panic!("the connection ended without a close frame: {e:?}"));
            if f.opcode == CLOSE {
                return f;
            }
        }
    }

    /// Whether the proxy has not closed this connection yet (discarding what it sent).
    fn is_open(&mut self) -> bool {
        self.s.tcp().set_nonblocking(true).unwrap();
        let mut chunk = [0u8; 4096];
        let open = loop {
            match self.s.read(&mut chunk) {
                Ok(0) => break false,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        };
        self.s.tcp().set_nonblocking(false).unwrap();
        open
    }
}

/// Sends `request` on a fresh connection and reads the response to its end.
fn raw_http(to: &Endpoint, request: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut raw = Raw::open(to);
    // The proxy may answer and close before it has read everything.
    let _ = raw.s.write_all(request);
    let ended = raw.ends_within_keeping(DEADLINE);
    assert_eq!(ended, Ended::Closed, "the connection was left open");
    (
        String::from_utf8_lossy(&raw.buf).to_string(),
        started.elapsed(),
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Connections that never finish their handshake.
// ---------------------------------------------------------------------------------------------

/// A writer that sends `pieces` in turn, `every` apart, until stopped or refused.
struct Trickle {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Trickle {
    fn start(s: &Wire, pieces: Vec<Vec<u8>>, every: Duration) -> Trickle {
        let mut s = s.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            for piece in pieces.iter().cycle() {
                if stopped.load(Ordering::SeqCst) || s.write_all(piece).is_err() {
                    return;
                }
                thread::sleep(every);
            }
        });
        Trickle { stop, thread }
    }

    /// One byte at a time.
    fn bytes(s: &Wire, bytes: &[u8], every: Duration) -> Trickle {
        Trickle::start(s, bytes.iter().map(|b| vec![*b]).collect(), every)
    }

    /// Stops between two pieces, so the test can write on the socket itself.
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
    }
}

/// How long after `opened` the proxy ended `raw`, which must happen by `opened + limit`.
fn closed_after(raw: &mut Raw, opened: Instant, limit: Duration) -> Duration {
    let left = (opened + limit).saturating_duration_since(Instant::now());
    assert_eq!(
        raw.ends_within(left),
        Ended::Closed,
        "still open after {limit:?}"
    );
    opened.elapsed()
}

#[test]
fn silent_and_trickling_connections_are_dropped_at_their_deadlines() {
    silent_and_trickling(Port::Plain);
}

#[test]
fn silent_and_trickling_connections_are_dropped_at_their_deadlines_over_tls() {
    silent_and_trickling(Port::Tls);
}

fn silent_and_trickling(port: Port) {
    let (up, proxy, ep) = in_process_on(port, "handshake_timeout_secs = 1\nauth_timeout_secs = 1");
    let healthy = healthy_clients_to(&ep, 2);
    proxy.wait_for_clients(2);
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);
    let every = Duration::from_millis(20);

    let opened = Instant::now();
    // Nothing at all (over TLS: nothing after the handshake).
    let mut silent = Raw::open(&ep);
    // Over TLS, a socket that never starts its handshake, and a ClientHello a byte at a time.
    let mut unfinished = Vec::new();
    if port == Port::Tls {
        unfinished.push((Raw::open(proxy.addr), None));
        let hello = Raw::open(proxy.addr);
        let writer = Trickle::bytes(&hello.s, &common::tls::client_hello(), every);
        unfinished.push((hello, Some(writer)));
    }
    // A request head that never ends, a byte at a time: an idle timeout would never fire.
    let mut head = Raw::open(&ep);
    let head_bytes = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let _head_writer = Trickle::bytes(&head.s, head_bytes, every);
    // After the upgrade: a ping every 40 ms (within the message budget), never an auth.
    let mut pinger = Raw::upgrade(&ep);
    let pings = Trickle::start(
        &pinger.s,
        vec![client_frame(PING, b"p")],
        Duration::from_millis(40),
    );
    // After the upgrade: an auth message that never ends, an empty continuation frame at a
    // time. Each is a whole frame but no message: nothing for the budget to count.
    let mut fragments = Raw::upgrade(&ep);
    fragments.send(&frame(false, 0, TEXT, true, b"{"));
    let conts = Trickle::start(&fragments.s, vec![frame(false, 0, CONT, true, b"")], every);
    // After the upgrade: one frame whose payload comes a byte at a time.
    let mut body = Raw::upgrade(&ep);
    body.send(&frame(true, 0, TEXT, true, &[b' '; 2000])[..8]);
    let body_bytes = Trickle::bytes(&body.s, b" ", every);

    // Each is closed by its deadline (1 s, looked at every 250 ms), however busy it keeps.
    let limit = Duration::from_secs(5);
    let t_silent = closed_after(&mut silent, opened, limit);
    let t_head = closed_after(&mut head, opened, limit);
    for (what, t) in [("silent", t_silent), ("trickled head", t_head)] {
        assert!(
            t >= Duration::from_millis(900),
            "{what} closed early: {t:?}"
        );
    }
    let unfinished_handshakes = unfinished.len();
    for (mut raw, writer) in unfinished {
        let t = closed_after(&mut raw, opened, limit);
        assert!(
            t >= Duration::from_millis(900),
            "a TLS handshake closed early: {t:?}"
        );
        if let Some(writer) = writer {
            writer.stop();
        }
    }
    // The upgraded ones that never authenticate are told why.
    let mut t_auth = Duration::ZERO;
    for (raw, trickle, between_frames) in [
        (&mut pinger, pings, true),
        (&mut fragments, conts, true),
        (&mut body, body_bytes, false),
    ] {
        let close = raw.close_frame();
        t_auth = t_auth.max(opened.elapsed());
        assert_eq!(
            close.payload,
            close_payload(1008, b"Failed to authenticate")
        );
        // While the trickle goes on the proxy cannot finish closing (see the ignored test
        // `a_peer_that_trickles_instead_of_answering_the_close_is_dropped_after_the_linger`).
        trickle.stop();
        if between_frames {
            raw.answer_close(&close);
        } else {
            // Mid-frame no answer is possible; the proxy hangs up all the same.
            assert_eq!(raw.ends_within(DEADLINE), Ended::Closed);
        }
    }
    assert!(
        t_auth < limit,
        "the auth deadline held only after {t_auth:?}"
    );
    eprintln!(
        "closed after: silent {t_silent:?}, trickled head {t_head:?}, trickled pings, fragments and frame body by {t_auth:?}"
    );
    traffic.finish();
    let text = ep.scrape();
    assert_eq!(
        metric(&text, "fxproxy_auth_failures_total{reason=\"timeout\"}"),
        3.0
    );
    if port == Port::Tls {
        assert_eq!(
            metric(&text, "fxproxy_rejected_connections_total{reason=\"tls\"}"),
            unfinished_handshakes as f64
        );
    }
}

/// After its close frame the proxy waits 500 ms for the answer; a peer that never answers
/// but keeps the bytes of an unfinished message coming must not hold the thread longer.
#[test]
fn a_peer_that_trickles_instead_of_answering_the_close_is_dropped_after_the_linger() {
    let (_up, proxy) = binary("auth_timeout_secs = 1");
    let pid = proxy.pid();
    let baseline = settled_threads(pid, 0);
    let mut raw = Raw::upgrade(proxy.addr);
    raw.send(&frame(false, 0, TEXT, true, b"{"));
    let cont = frame(false, 0, CONT, true, b"");
    let writer = Trickle::start(&raw.s, vec![cont], Duration::from_millis(20));
    let close = raw.close_frame();
    assert_eq!(&close.payload[..2], &1008u16.to_be_bytes());
    let t = Instant::now();
    assert_eq!(raw.ends_within(Duration::from_secs(5)), Ended::Closed);
    eprintln!("dropped {:?} after the close frame", t.elapsed());
    writer.stop();
    assert_threads_return(pid, 0, baseline);
}

#[test]
fn a_flood_of_unfinished_handshakes_does_not_lock_out_a_new_client() {
    flood_of_unfinished_handshakes(Port::Plain);
}

#[test]
fn a_flood_of_unfinished_handshakes_does_not_lock_out_a_new_client_over_tls() {
    flood_of_unfinished_handshakes(Port::Tls);
}

fn flood_of_unfinished_handshakes(port: Port) {
    let (up, proxy, ep) = binary_on(
        port,
        "max_pending_connections = 32\nhandshake_timeout_secs = 4\nauth_timeout_secs = 4",
    );
    let pid = proxy.pid();
    let healthy = healthy_clients_to(&ep, 2);
    wait_registered(&ep, 2);
    let baseline = settled_threads(pid, 2);
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);

    // 200 at once: some stall inside the request head, some after the upgrade, before auth;
    // over TLS, some also inside their TLS hello.
    let kinds = if port == Port::Tls { 3 } else { 2 };
    let hello = common::tls::client_hello();
    let opened = Instant::now();
    let mut flood: Vec<Raw> = (0..200)
        .map(|i| match i % kinds {
            0 => {
                let mut raw = Raw::open(&ep);
                raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n");
                raw
            }
            1 => {
                let mut raw = Raw::open(&ep);
                raw.send(UPGRADE.as_bytes());
                raw
            }
            _ => {
                let mut raw = Raw::open(proxy.addr);
                raw.send(&hello[..hello.len() / 2]);
                raw
            }
        })
        .collect();
    eventually("all but the newest 32 evicted", || {
        flood.iter_mut().map(Raw::is_open).filter(|o| *o).count() <= 32
    });
    let during = threads(pid);
    let evictions = ep.metric("fxproxy_pending_evictions_total{reason=\"pending_full\"}");
    assert!(evictions >= 168.0, "{evictions} evictions");

    // While the newest 32 still wait for their deadline, a real client gets in at once.
    let t = Instant::now();
    let mut fresh = Client::auth_to(&ep, OTHER_KEY, Some("EURUSD"));
    fresh.next_text();
    fresh.next_text();
    let t_fresh = t.elapsed();
    assert!(
        t_fresh < Duration::from_secs(3),
        "the new client waited {t_fresh:?}"
    );
    let open = flood.iter_mut().map(Raw::is_open).filter(|o| *o).count();
    assert!(open > 0, "the flood was over before the new client got in");
    drop(fresh);

    // The rest go at their deadline, and every thread the flood took is given back.
    for raw in &mut flood {
        closed_after(raw, opened, Duration::from_secs(4 + 6));
    }
    assert_threads_return(pid, 2, baseline);
    eprintln!(
        "flood of 200 ({port:?}, max_pending_connections 32): threads {baseline} -> {during} -> \
         {baseline}; {open} left open when the new client got its quotes after {t_fresh:?}"
    );
    traffic.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. Malformed upgrade requests.
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_upgrade_requests_get_an_http_error_and_leave_nothing_behind() {
    malformed_upgrade_requests(Port::Plain);
}

#[test]
fn malformed_upgrade_requests_get_an_http_error_and_leave_nothing_behind_over_tls() {
    malformed_upgrade_requests(Port::Tls);
}

fn malformed_upgrade_requests(port: Port) {
    let (up, proxy, ep) = binary_on(port, "handshake_timeout_secs = 1");
    let pid = proxy.pid();
    let healthy = healthy_clients_to(&ep, 2);
    wait_registered(&ep, 2);
    let baseline = settled_threads(pid, 2);
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);

    let with = |from: &str, to: &str| {
        let changed = UPGRADE.replace(from, to);
        assert_ne!(changed, UPGRADE);
        changed.into_bytes()
    };
    let padding: String = (0..2000)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(40)))
        .collect();
    let tls_client_hello = [
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x5e, 0x1f, 0x00, 0x27,
    ];
    // (what, request, the status expected, or None for a close without a response)
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        (
            "no Sec-WebSocket-Key",
            with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            Some(400),
        ),
        (
            "a key that is not 16 bytes",
            with("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
            Some(400),
        ),
        ("version 8", with("Version: 13", "Version: 8"), Some(426)),
        (
            "no version",
            with("Sec-WebSocket-Version: 13\r\n", ""),
            Some(426),
        ),
        (
            "no Connection: Upgrade",
            with("Connection: Upgrade", "Connection: keep-alive"),
            Some(400),
        ),
        ("POST", with("GET /", "POST /"), Some(400)),
        (
            "garbage",
            b"\x00\xff\x13GARBAGE\x01 \x02\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "an HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "100 KiB of headers",
            with("Host: x\r\n", &format!("Host: x\r\n{padding}")),
            Some(431),
        ),
        (
            "a 100 KiB request line",
            with("GET / ", &format!("GET /{} ", "a".repeat(100 * 1024))),
            Some(431),
        ),
        ("a TLS ClientHello", tls_client_hello.to_vec(), None),
        (
            "half a request",
            b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec(),
            None,
        ),
    ];
    for (what, request, expected) in cases {
        let (response, took) = raw_http(&ep, &request);
        match expected {
            Some(status) => {
                assert_eq!(status_of(&response), status, "{what}: {response}");
                assert!(response.contains("\r\nConnection: close\r\n"), "{what}");
            }
            None => assert_eq!(response, "", "{what}"),
        }
        if expected == Some(426) {
            assert!(
                response.contains("\r\nSec-WebSocket-Version: 13\r\n"),
                "{what}: {response}"
            );
        }
        // Refusals are immediate; the rest wait for the 1 s handshake deadline.
        let limit = Duration::from_secs(if expected.is_some() { 3 } else { 5 });
        assert!(took < limit, "{what}: the connection took {took:?} to end");
        eprintln!("{what}: {expected:?} in {took:?}");
    }

    // Still serving, and nothing left behind.
    let mut fresh = Client::auth_to(&ep, OTHER_KEY, Some("EURUSD"));
    fresh.next_text();
    drop(fresh);
    assert_threads_return(pid, 2, baseline);
    traffic.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. Frames that break the protocol, before and after auth.
// ---------------------------------------------------------------------------------------------

/// Something a client sends, and the close the proxy owes it.
struct Violation {
    what: &'static str,
    bytes: Vec<u8>,
    code: u16,
    reason: &'static str,
    /// Counted in `fxproxy_client_protocol_errors_total` (a read error, not a close).
    counted: bool,
}

fn violation(what: &'static str, bytes: Vec<u8>, code: u16, reason: &'static str) -> Violation {
    Violation {
        what,
        bytes,
        code,
        reason,
        counted: true,
    }
}

/// Every way to break the framing we test, with `max` the proxy's `max_message_bytes`.
fn violations(max: usize) -> Vec<Violation> {
    let both = |a: Vec<u8>, b: Vec<u8>| [a, b].concat();
    let mut huge_header = vec![0x81, 0xFF];
    huge_header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    huge_header.extend_from_slice(&[1, 2, 3, 4]);
    let half = vec![b'a'; max / 2 + 1];
    let mut list = vec![
        violation(
            "an unmasked frame",
            frame(true, 0, TEXT, false, b"{}"),
            1002,
            "Protocol error",
        ),
        violation(
            "RSV1 set",
            frame(true, 4, TEXT, true, b"{}"),
            1002,
            "Protocol error",
        ),
        violation(
            "RSV2 set",
            frame(true, 2, TEXT, true, b"{}"),
            1002,
            "Protocol error",
        ),
        violation(
            "RSV3 set on a ping",
            frame(true, 1, PING, true, b""),
            1002,
            "Protocol error",
        ),
        violation(
            "data opcode 0x3",
            client_frame(0x3, b"x"),
            1002,
            "Protocol error",
        ),
        violation(
            "control opcode 0xB",
            client_frame(0xB, b"x"),
            1002,
            "Protocol error",
        ),
        violation(
            "a continuation with nothing to continue",
            client_frame(CONT, b"x"),
            1002,
            "Protocol error",
        ),
        violation(
            "a fragmented ping",
            frame(false, 0, PING, true, b"x"),
            1002,
            "Protocol error",
        ),
        violation(
            "a 126-byte ping",
            client_frame(PING, &[7; 126]),
            1002,
            "Protocol error",
        ),
        violation(
            "a new message inside a fragmented one",
            both(frame(false, 0, TEXT, true, b"{"), client_frame(TEXT, b"{}")),
            1002,
            "Protocol error",
        ),
        violation(
            "a one-byte close payload",
            client_frame(CLOSE, &[3]),
            1002,
            "Protocol error",
        ),
        violation(
            "invalid UTF-8",
            client_frame(TEXT, b"{\"userKey\":\"\xff\xfe\"}"),
            1007,
            "Invalid UTF-8",
        ),
        violation(
            "invalid UTF-8 across fragments",
            both(
                frame(false, 0, TEXT, true, b"{\"a\":\"\xc3"),
                frame(true, 0, CONT, true, b"\x28\"}"),
            ),
            1007,
            "Invalid UTF-8",
        ),
        violation(
            "a close reason in invalid UTF-8",
            client_frame(CLOSE, &close_payload(1000, b"\xff")),
            1007,
            "Invalid UTF-8",
        ),
        violation(
            "a frame over max_message_bytes",
            client_frame(TEXT, &vec![b'a'; max + 1]),
            1009,
            "Message too big",
        ),
        violation(
            "fragments over max_message_bytes together",
            both(
                frame(false, 0, TEXT, true, &half),
                frame(true, 0, CONT, true, &half),
            ),
            1009,
            "Message too big",
        ),
        violation(
            "a frame header claiming 4 EiB",
            huge_header,
            1009,
            "Message too big",
        ),
    ];
    // A close the proxy must answer: its code echoed, or 1002 for a code no one may send.
    for (what, code, answer, reason) in [
        ("a close", 1000, 1000, "bye"),
        (
            "a close with the reserved code 1005",
            1005,
            1002,
            "Protocol violation",
        ),
        ("a close with code 999", 999, 1002, "Protocol violation"),
    ] {
        list.push(Violation {
            what,
            bytes: client_frame(CLOSE, &close_payload(code, b"bye")),
            code: answer,
            reason,
            counted: false,
        });
    }
    list
}

#[test]
fn frames_that_break_the_protocol_get_their_close_code_before_and_after_auth() {
    let (up, proxy) = binary("max_message_bytes = 4096");
    let pid = proxy.pid();
    let healthy = healthy_clients(proxy.addr, 2);
    wait_registered(proxy.addr, 2);
    let baseline = settled_threads(pid, 2);
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);

    let mut counted = std::collections::HashMap::<u16, f64>::new();
    for v in violations(4096) {
        // Before auth: the first frame after the greeting. After: once the writer loop runs.
        for after_auth in [false, true] {
            let mut raw = if after_auth {
                Raw::authenticated(proxy.addr, "USDJPY")
            } else {
                let mut raw = Raw::upgrade(proxy.addr);
                raw.expect_greeting();
                raw
            };
            raw.send(&v.bytes);
            let when = if after_auth {
                "after auth"
            } else {
                "before auth"
            };
            assert_eq!(
                raw.expect_close(),
                (v.code, v.reason.to_string()),
                "{} {when}",
                v.what
            );
            if v.counted {
                *counted.entry(v.code).or_default() += 1.0;
            }
        }
    }
    // A binary first frame is not an auth message; after auth it is read and ignored.
    let mut first = Raw::upgrade(proxy.addr);
    first.expect_greeting();
    first.send(&client_frame(BINARY, auth_text("USDJPY").as_bytes()));
    assert_eq!(
        first.expect_close(),
        (1008, "Failed to authenticate".to_string())
    );
    let mut later = Raw::authenticated(proxy.addr, "USDJPY");
    later.send(&client_frame(BINARY, b"\x00\x01"));
    later.expect_pong(b"still there");
    drop(later);

    let text = scrape(proxy.addr);
    for code in [1002, 1007, 1009] {
        let series = format!("fxproxy_client_protocol_errors_total{{close_code=\"{code}\"}}");
        assert_eq!(
            metric(&text, &series),
            counted.get(&code).copied().unwrap_or(0.0),
            "{series}"
        );
    }
    assert_threads_return(pid, 2, baseline);
    traffic.finish();
}

#[test]
fn a_fragmented_auth_message_authenticates() {
    let (up, proxy) = in_process("auth_timeout_secs = 5");
    let healthy = healthy_clients(proxy.addr, 2);
    proxy.wait_for_clients(2);
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);

    let auth = auth_text("USDJPY");
    let (a, b) = auth.as_bytes().split_at(10);
    let (b, c) = b.split_at(b.len() / 2);
    // Three fragments with a ping between them (control frames may interleave).
    let mut split = Raw::upgrade(proxy.addr);
    split.expect_greeting();
    split.send(&frame(false, 0, TEXT, true, a));
    split.send(&client_frame(PING, b"between"));
    split.send(&frame(false, 0, CONT, true, b));
    split.send(&frame(true, 0, CONT, true, c));
    // A character whose UTF-8 bytes are split between two fragments.
    let mut utf8 = Raw::upgrade(proxy.addr);
    utf8.expect_greeting();
    let accented = format!(r#"{{"userKey":"{KEY}","symbol":"USDJPY","note":"é"}}"#);
    let cut = accented.find('é').unwrap() + 1;
    utf8.send(&frame(false, 0, TEXT, true, &accented.as_bytes()[..cut]));
    utf8.send(&frame(true, 0, CONT, true, &accented.as_bytes()[cut..]));
    // One fragment per write, slowly: each arrives in a segment of its own.
    let mut slow = Raw::upgrade(proxy.addr);
    slow.expect_greeting();
    for (i, piece) in auth.as_bytes().chunks(8).enumerate() {
        let last = (i + 1) * 8 >= auth.len();
        let opcode = if i == 0 { TEXT } else { CONT };
        slow.send(&frame(last, 0, opcode, true, piece));
        slow.expect_pong(format!("{i}").as_bytes());
    }
    // The auth message in the same segment as the upgrade request.
    let mut glued = Raw::open(proxy.addr);
    glued.send(&[UPGRADE.as_bytes(), &client_frame(TEXT, auth.as_bytes())].concat());
    assert!(glued.http_head().starts_with("HTTP/1.1 101 "));
    glued.expect_greeting();

    let mut clients = [split, utf8, slow, glued];
    proxy.wait_for_clients(2 + clients.len() as u64);
    let (up, _) = traffic.finish();
    up.send(&quote("USDJPY", 1));
    for c in &mut clients {
        assert_eq!(c.next_text(), quote("USDJPY", 1));
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Floods.
// ---------------------------------------------------------------------------------------------

/// Sends `count` copies of `one` in a single write, then expects the flood close.
fn flood(mut raw: Raw, one: &[u8], count: usize) -> (u16, String) {
    raw.send(&one.repeat(count));
    raw.expect_close()
}

#[test]
fn ping_and_message_floods_are_cut_off_without_slowing_anyone_else() {
    let (up, proxy) = in_process("max_client_messages_per_sec = 50");
    let healthy = healthy_clients(proxy.addr, 3);
    proxy.wait_for_clients(3);
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);
    let addr = proxy.addr;

    let mut flooders: Vec<JoinHandle<(u16, String)>> = Vec::new();
    for _ in 0..3 {
        flooders.push(thread::spawn(move || {
            let mut raw = Raw::upgrade(addr);
            raw.expect_greeting();
            flood(raw, &client_frame(PING, b"before auth"), 500)
        }));
        flooders.push(thread::spawn(move || {
            let raw = Raw::authenticated(addr, "USDJPY");
            flood(raw, &client_frame(PING, b"after auth"), 500)
        }));
        flooders.push(thread::spawn(move || {
            let raw = Raw::authenticated(addr, "USDJPY");
            flood(raw, &client_frame(TEXT, b"{\"hello\":1}"), 500)
        }));
        flooders.push(thread::spawn(move || {
            let raw = Raw::authenticated(addr, "USDJPY");
            flood(raw, &client_frame(BINARY, &[0; 100]), 500)
        }));
    }
    // And one that keeps on pinging, burst after burst, until it is told to stop.
    flooders.push(thread::spawn(move || {
        let mut raw = Raw::authenticated(addr, "USDJPY");
        let burst = client_frame(PING, b"again").repeat(20);
        loop {
            raw.send(&burst);
            while let Ok(f) = raw.next_frame(Duration::from_millis(1)) {
                if f.opcode == CLOSE {
                    return raw.answer_close(&f);
                }
            }
        }
    }));
    // And one that starts a message and sends empty continuations that never end it: no
    // message completes, but every wake-up it causes is charged.
    flooders.push(thread::spawn(move || {
        let mut raw = Raw::authenticated(addr, "USDJPY");
        // Each fragment its own segment, without Nagle's wait for an ACK.
        raw.s.tcp().set_nodelay(true).unwrap();
        raw.s
            .tcp()
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        raw.send(&frame(false, 0, TEXT, true, b"{"));
        let more = frame(false, 0, 0x0, true, b"");
        loop {
            raw.send(&more);
            while let Ok(f) = raw.next_frame(Duration::from_millis(1)) {
                if f.opcode == CLOSE {
                    return raw.answer_close(&f);
                }
            }
        }
    }));
    // A client that sends 20 messages a second for 3 s, more than one burst's worth, is fine.
    // (The budget is charged as the proxy reads, so a slower pace leaves room for a busy host.)
    let mut steady = Raw::authenticated(addr, "USDJPY");
    for i in 0..60 {
        steady.send(&client_frame(PING, format!("{i}").as_bytes()));
        thread::sleep(Duration::from_millis(50));
    }
    steady.expect_pong(b"steady");

    let n = flooders.len();
    for f in flooders {
        assert_eq!(f.join().unwrap(), (1008, "Too many messages".to_string()));
    }
    traffic.wait_for_more(100);
    // The three healthy clients and the steady one.
    assert_eq!(metric_of(addr, "fxproxy_clients_connected"), 4.0);
    assert_eq!(
        metric_of(addr, "fxproxy_client_flood_disconnects_total"),
        n as f64
    );
    traffic.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. Peers that stop reading, or vanish without a FIN.
// ---------------------------------------------------------------------------------------------

/// `fxproxy watch` as a separate process: a real client whose host can be frozen with
/// SIGSTOP (the kernel goes on ACKing, nothing is read, no ping is answered). Killed on drop.
struct Watch(Child);

impl Watch {
    fn spawn(addr: SocketAddr, symbols: &str) -> Watch {
        let child = Command::new(env!("CARGO_BIN_EXE_fxproxy"))
            .args(["watch", &format!("ws://{addr}/"), "--key", KEY])
            .args(["--symbols", symbols])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting fxproxy watch");
        Watch(child)
    }

    fn freeze(&self) {
        let status = Command::new("kill")
            .args(["-STOP", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `cond` for up to `limit`; how long it took.
fn within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

#[test]
fn peers_that_stop_reading_are_dropped_and_their_threads_released() {
    // The default queue of 1024 frames: healthy readers may fall a second or two behind.
    let (up, proxy) = binary("client_queue_len = 1024");
    let (pid, addr) = (proxy.pid(), proxy.addr);
    let healthy = healthy_clients(addr, 2);
    wait_registered(addr, 2);
    let baseline = settled_threads(pid, 2);
    let rss_before = proc_status(pid, "VmRSS:");
    // 32 KiB quotes, 500 a second: a peer that does not read fills its socket buffers in a
    // fraction of a second, then its queue in two.
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), big_quote);

    // Twice, so that the second round shows what the first left behind: memory the
    // allocator keeps for reuse is reused, not added to.
    let mut rss = Vec::new();
    for round in 1..=2 {
        // One authenticates and never reads again; one is a real client on a frozen host.
        let stalled = Client::auth(addr, KEY, None);
        let watch = Watch::spawn(addr, "EURUSD,GBPUSD");
        wait_registered(addr, 4);
        watch.freeze();
        let with_victims = threads(pid);
        let limit = Duration::from_secs(30);
        let t_kicked = within("two slow-consumer disconnects", limit, || {
            metric_of(addr, "fxproxy_slow_consumer_disconnects_total") == 2.0 * round as f64
        });
        // Their writers, blocked on the full sockets, give up at the 5 s write timeout.
        let t_gone = within("the victims to leave", limit, || {
            metric_of(addr, "fxproxy_clients_connected") == 2.0
        });
        assert_threads_return(pid, 2, baseline);
        rss.push(proc_status(pid, "VmRSS:"));
        eprintln!(
            "stopped readers, round {round}: queues full after {t_kicked:?}, gone {t_gone:?} \
             later; threads {baseline} -> {with_victims} -> {baseline}; VmRSS {rss_before} -> \
             {} kB",
            rss[round - 1]
        );
        drop((stalled, watch));
    }
    traffic.finish();
    // The first round's two queues (shared 32 KiB frames) and write buffers, and slack.
    assert!(
        rss[0] < rss_before + 64 * 1024,
        "VmRSS grew from {rss_before} to {} kB",
        rss[0]
    );
    assert!(
        rss[1] < rss[0] + 16 * 1024,
        "VmRSS grew again in the second round: {rss:?} kB"
    );
}

#[test]
fn a_frozen_peer_is_dropped_by_the_ping_timeout_with_no_quotes_flowing_to_it() {
    let (up, proxy) = binary("client_ping_secs = 1");
    let (pid, addr) = (proxy.pid(), proxy.addr);
    let healthy = healthy_clients(addr, 2);
    wait_registered(addr, 2);
    let baseline = settled_threads(pid, 2);
    // The healthy clients are read (and so answer the proxy's pings) from now on: with a ping
    // a second, two seconds unread would drop them too, and starting the victims below can
    // take that long on a busy host (seen: `fxproxy watch` took a second to start).
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);

    // Both victims take USDJPY, which never moves, so no write ever blocks on them: only
    // the missing pongs can give them away.
    let watch = Watch::spawn(addr, "USDJPY");
    let mut silent = Raw::authenticated(addr, "USDJPY");
    wait_registered(addr, 4);
    watch.freeze();

    // Two 1 s periods since the last frame heard, found on the next tick of the grid.
    let t_gone = within("the frozen peers to leave", Duration::from_secs(15), || {
        metric_of(addr, "fxproxy_clients_connected") == 2.0
    });
    // The raw one can still read what it was told.
    let mut told = None;
    while let Ok(f) = silent.next_frame(DEADLINE) {
        if f.opcode == CLOSE {
            told = Some(u16::from_be_bytes([f.payload[0], f.payload[1]]));
            assert_eq!(&f.payload[2..], b"Ping timeout");
            break;
        }
    }
    assert_eq!(told, Some(1001));
    within("both ping timeouts in the log", DEADLINE, || {
        proxy
            .stderr_text()
            .matches("no answer to two pings")
            .count()
            == 2
    });
    assert_threads_return(pid, 2, baseline);
    // The healthy clients answered every ping meanwhile and are still here.
    traffic.finish();
    eprintln!("frozen peers dropped {t_gone:?} after freezing (client_ping_secs = 1)");
}

// ---------------------------------------------------------------------------------------------
// 6. More connections than the proxy may hold.
// ---------------------------------------------------------------------------------------------

#[test]
fn past_max_clients_and_the_descriptor_limit_service_resumes_when_load_drops() {
    // Few descriptors, and sockets that wait long for their request, to run out quickly.
    let (up, proxy) =
        binary_with_fd_limit("max_clients = 8\nhandshake_timeout_secs = 60", Some(48));
    let (pid, addr) = (proxy.pid(), proxy.addr);
    let healthy = healthy_clients(addr, 2);
    wait_registered(addr, 2);
    let baseline = settled_threads(pid, 2);
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);

    // Up to max_clients...
    let mut full: Vec<Client> = (0..6)
        .map(|_| Client::auth(addr, OTHER_KEY, Some("USDJPY")))
        .collect();
    wait_registered(addr, 8);
    // ...and past it: each extra upgrade gets 503, held open by its client or not.
    let refused: Vec<Raw> = (0..10)
        .map(|_| {
            let mut raw = Raw::open(addr);
            raw.send(UPGRADE.as_bytes());
            raw
        })
        .collect();
    for mut raw in refused {
        let head = raw.http_head();
        assert_eq!(status_of(&head), 503, "{head}");
        assert_eq!(raw.ends_within(DEADLINE), Ended::Closed);
    }
    let refusals = metric_of(
        addr,
        "fxproxy_rejected_connections_total{reason=\"max_clients\"}",
    );
    assert_eq!(refusals, 10.0);
    // Load drops: a new client is admitted again.
    full.truncate(0);
    wait_registered(addr, 2);
    let mut again = Client::auth(addr, OTHER_KEY, Some("EURUSD"));
    again.next_text();
    drop(again);

    // Now the descriptors: silent connections until the proxy cannot accept any more. No
    // other connection may end meanwhile and give one back.
    eventually("only the healthy clients' threads", || {
        connection_threads(pid) == 2
    });
    // One at a time, each until the proxy has taken it (a descriptor more) or said it cannot,
    // so a busy host's slower accept does not make the test open more than it needs.
    let mut silent = Vec::new();
    loop {
        assert!(silent.len() < 48, "the descriptor limit never bit");
        let before = open_fds(pid);
        silent.push(Raw::open(addr));
        let mut starved = false;
        eventually(
            "the proxy to accept the connection or say it cannot",
            || {
                starved = proxy.stderr_text().contains("cannot accept new clients");
                starved || open_fds(pid) > before
            },
        );
        if starved {
            break;
        }
    }
    let held = silent.len();
    // A client that comes now waits in the listen queue, unanswered...
    let waiting = thread::spawn(move || {
        let started = Instant::now();
        let mut c = Client::auth(addr, OTHER_KEY, Some("EURUSD"));
        let first = c.next_text();
        (first, started.elapsed())
    });
    thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "served with no descriptor to spare?"
    );
    // ...and is served as soon as load drops.
    drop(silent);
    let (first, waited) = waiting.join().unwrap();
    assert!(first.contains("EURUSD"), "{first}");
    let mut late = Client::auth(addr, OTHER_KEY, Some("EURUSD"));
    late.next_text();
    drop(late);
    // The proxy counts the late client out once it notices the connection gone, a moment
    // after the drop; the healthy ones stay (and `traffic.finish` checks each got every quote).
    eventually("the healthy clients, and only they, connected", || {
        metric_of(addr, "fxproxy_clients_connected") == 2.0
    });
    assert_threads_return(pid, 2, baseline);
    traffic.finish();
    eprintln!(
        "{refusals} refused with 503 at max_clients; {held} silent sockets exhausted 48 descriptors; \
         a client queued meanwhile was served {waited:?} after it connected"
    );
}

#[test]
fn upgrades_that_never_authenticate_cannot_hold_every_place() {
    let (up, proxy) = in_process("max_clients = 4\nauth_timeout_secs = 30");
    let addr = proxy.addr;
    let healthy = healthy_clients(addr, 2);
    proxy.wait_for_clients(2);
    let traffic = Traffic::start(up, healthy, Duration::from_millis(2), small_quote);

    // The other two places, taken by upgrades that never send an auth message.
    let mut squatters: Vec<Raw> = (0..2)
        .map(|_| {
            let mut raw = Raw::upgrade(addr);
            raw.expect_greeting();
            raw
        })
        .collect();
    // Real clients get in at once, each in the place of the oldest squatter...
    let mut admitted = Vec::new();
    for (i, squatter) in squatters.iter_mut().enumerate() {
        let t = Instant::now();
        let mut c = Client::auth(addr, OTHER_KEY, Some("EURUSD"));
        c.next_text();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // Told to come back later, not dropped without a word.
        let close = squatter.close_frame();
        assert_eq!(&close.payload[..2], &1013u16.to_be_bytes(), "squatter {i}");
        assert_eq!(
            squatter.ends_within(DEADLINE),
            Ended::Closed,
            "squatter {i}"
        );
        admitted.push(c);
    }
    // ...but a place held by an authenticated client is never taken.
    proxy.wait_for_clients(4);
    let refused = http_get(addr, UPGRADE);
    assert_eq!(status_of(&refused), 503, "{refused}");
    traffic.finish();
}

#[test]
fn an_upgrade_that_waited_for_its_place_has_the_whole_grace_to_authenticate() {
    use fxproxy::metrics::Eviction;
    let (_up, proxy) = in_process("max_clients = 1\nauth_timeout_secs = 30");
    let addr = proxy.addr;
    let metrics = proxy.server().metrics();
    // Connected first, its request sent once the only place is taken: it waits for the place
    // until the squatter's grace is over, and gets its 101 long after it connected.
    let mut waiter = Raw::open(addr);
    let mut squatter = Raw::upgrade(addr);
    squatter.expect_greeting();
    waiter.send(UPGRADE.as_bytes());
    let head = waiter.http_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    waiter.expect_greeting();

    // A newcomer wants the place at once, while the waiter takes a moment to answer its 101,
    // as a client on a slow link or a busy host does: well within the grace, counted from
    // the 101.
    let mut newcomer = Raw::open(addr);
    newcomer.send(UPGRADE.as_bytes());
    thread::sleep(Duration::from_millis(150));
    waiter.send(&client_frame(TEXT, auth_text("EURUSD").as_bytes()));
    assert_eq!(
        metrics.evictions(Eviction::Place),
        1,
        "an upgrade answered moments ago was dropped for a newcomer: its grace ran from when it \
         connected, not from its 101"
    );
    waiter.expect_pong(b"served");
    proxy.wait_for_clients(1);
    // The place is the waiter's: the newcomer is refused, as past max_clients.
    let refused = newcomer.http_head();
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    assert_eq!(squatter.ends_within(DEADLINE), Ended::Closed);
    assert_eq!(metrics.evictions(Eviction::Place), 1);
}
