//! Helpers shared by the integration tests: a scriptable test upstream, an in-process proxy
//! on an ephemeral port, and a WebSocket client that reads with deadlines.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod cluster;
pub mod fake_source;
pub mod fleet;
pub mod process;
pub mod raw_ws;
pub mod relay;
pub mod socket_unit;
pub mod storm;
pub mod tinyproxy;
pub mod tls;
pub mod traffic;

use fxproxy::clock::Clock;
use fxproxy::config;
use fxproxy::Server;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub const KEY: &str = "test-key-0123456789";
pub const OTHER_KEY: &str = "other-key-9876543210";
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn quote(symbol: &str, n: u64) -> String {
    format!(
        r#"{{"symbol":"{symbol}","ts":"{}","bid":1.{n:05},"ask":1.{:05},"mid":1.{n:05}}}"#,
        1_700_000_000_000u64 + n,
        n + 2
    )
}

enum Ctl {
    Send(String),
    Close,
}

/// A scriptable upstream: accepts the proxy's connections one at a time, greets, records each
/// subscribe message, then sends what the test tells it to.
pub struct TestUpstream {
    pub addr: SocketAddr,
    ctl: mpsc::Sender<Ctl>,
    subscribes: mpsc::Receiver<String>,
    pub connections: Arc<AtomicUsize>,
}

impl TestUpstream {
    pub fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (ctl_tx, ctl_rx) = mpsc::channel::<Ctl>();
        let (sub_tx, sub_rx) = mpsc::channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        thread::Builder::new()
            .name("test-upstream".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    count.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut ws) = tungstenite::accept(stream) else {
                        continue;
                    };
                    if ws.send(Message::text("Connected")).is_err() {
                        continue;
                    }
                    let Ok(Message::Text(sub)) = ws.read() else {
                        continue;
                    };
                    if sub_tx.send(sub.to_string()).is_err() {
                        return;
                    }
                    ws.get_mut()
                        .set_read_timeout(Some(Duration::from_millis(5)))
                        .unwrap();
                    loop {
                        match ctl_rx.recv_timeout(Duration::from_millis(20)) {
                            Ok(Ctl::Send(text)) => {
                                if ws.send(Message::text(text)).is_err() {
                                    break;
                                }
                            }
                            Ok(Ctl::Close) => {
                                let _ = ws.close(None);
                                let _ = ws.flush();
                                break;
                            }
                            // Between sends: answer the proxy's pings, notice its close.
                            Err(mpsc::RecvTimeoutError::Timeout) => match ws.read() {
                                Ok(_) => {}
                                Err(e) if read_timed_out(&e) => {}
                                Err(_) => break,
                            },
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                }
            })
            .unwrap();
        TestUpstream {
            addr,
            ctl: ctl_tx,
            subscribes: sub_rx,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn send(&self, text: &str) {
        self.ctl.send(Ctl::Send(text.to_string())).unwrap();
    }

    /// Closes the current connection; the proxy should come back.
    pub fn close(&self) {
        self.ctl.send(Ctl::Close).unwrap();
    }

    /// The next subscribe message the proxy sent, i.e. its next (re)connection.
    pub fn expect_subscribe(&self) -> String {
        self.subscribes
            .recv_timeout(Duration::from_secs(15))
            .expect("the proxy did not (re)connect and subscribe in time")
    }

    pub fn no_subscribe_within(&self, d: Duration) -> bool {
        self.subscribes.recv_timeout(d).is_err()
    }
}

/// A unique, empty directory for one test's files.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fxproxy-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An in-process proxy with its files.
pub struct TestProxy {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl TestProxy {
    /// Starts a proxy for `upstream` with the given extra config lines and key file text.
    pub fn start(upstream: &str, extra: &str, keys: &str) -> TestProxy {
        TestProxy::start_with_clock(upstream, extra, keys, Clock::system())
    }

    /// As [`TestProxy::start`], with the proxy's clock (quote times, ages, market hours) set
    /// by the test.
    pub fn start_with_clock(upstream: &str, extra: &str, keys: &str, clock: Clock) -> TestProxy {
        let dir = temp_dir("proxy");
        std::fs::write(dir.join("users.keys"), keys).unwrap();
        let text = format!(
            "listen = 127.0.0.1:0\nupstream_url = {upstream}\nsymbols = EURUSD,GBPUSD,USDJPY\nuser_keys_file = users.keys\nstatus_interval_secs = 0\n{extra}\n"
        );
        let path = dir.join("proxy.conf");
        std::fs::write(&path, &text).unwrap();
        let config = config::parse(&text, &path).unwrap();
        let server = Server::start_with_clock(config, clock).unwrap();
        TestProxy {
            addr: server.local_addr(),
            server: Some(server),
            dir,
        }
    }

    pub fn simple(upstream: &TestUpstream) -> TestProxy {
        TestProxy::start(&upstream.url(), "", &format!("{KEY}\n{OTHER_KEY} EURUSD\n"))
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    /// Waits until exactly `n` clients are authenticated and registered for quotes.
    pub fn wait_for_clients(&self, n: u64) {
        let metrics = self.server().metrics();
        eventually(&format!("{n} registered client(s)"), || {
            metrics.clients_connected.load(Ordering::SeqCst) == n
        });
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A WebSocket client that never waits forever.
pub struct Client {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_to(&tls::Endpoint::plain(addr))
    }

    /// Connects over plain TCP or TLS, as `to` says.
    pub fn connect_to(to: &tls::Endpoint) -> Client {
        Client::try_connect_to(to).unwrap_or_else(|e| panic!("connecting to {}: {e}", to.ws_url()))
    }

    /// As [`Client::connect_to`], the failure returned (a refused TLS handshake, say).
    pub fn try_connect_to(to: &tls::Endpoint) -> Result<Client, tungstenite::Error> {
        let stream = TcpStream::connect(to.addr)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        let connector = to
            .tls
            .as_ref()
            .map(|c| tungstenite::Connector::Rustls(Arc::clone(c)));
        let (ws, _) = tungstenite::client_tls_with_config(to.ws_url(), stream, None, connector)
            .map_err(|e| match e {
                tungstenite::HandshakeError::Failure(e) => e,
                tungstenite::HandshakeError::Interrupted(_) => {
                    tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
                }
            })?;
        let c = Client { ws };
        // Short reads from here on, so `next_within` can keep to its deadline.
        c.tcp().set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(c)
    }

    /// The socket under the WebSocket (and TLS).
    pub fn tcp(&self) -> &TcpStream {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(s) => s,
            MaybeTlsStream::Rustls(s) => &s.sock,
            _ => unreachable!("the tests build tungstenite with rustls only"),
        }
    }

    /// Connects, expects the greeting, and sends the auth message.
    pub fn auth(addr: SocketAddr, key: &str, symbols: Option<&str>) -> Client {
        Client::auth_to(&tls::Endpoint::plain(addr), key, symbols)
    }

    /// As [`Client::auth`], over plain TCP or TLS as `to` says.
    pub fn auth_to(to: &tls::Endpoint, key: &str, symbols: Option<&str>) -> Client {
        let mut c = Client::connect_to(to);
        assert_eq!(c.next().expect("greeting"), Message::text("Connected"));
        let msg = match symbols {
            Some(s) => format!(r#"{{"userKey":"{key}","symbol":"{s}"}}"#),
            None => format!(r#"{{"userKey":"{key}"}}"#),
        };
        c.ws.send(Message::text(msg)).unwrap();
        c
    }

    /// The next message, or None if nothing came before the deadline. Panics on errors.
    pub fn next_within(&mut self, d: Duration) -> Option<Message> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            match self.ws.read() {
                Ok(m) => return Some(m),
                Err(e) if read_timed_out(&e) => {}
                Err(e) => panic!("read failed: {e}"),
            }
        }
        None
    }

    pub fn next(&mut self) -> Option<Message> {
        self.next_within(DEADLINE)
    }

    /// The next text frame within `d`, if any; pings (the proxy's keep-alive and lag probes)
    /// are skipped, as a client library would answer them.
    pub fn text_within(&mut self, d: Duration) -> Option<String> {
        let until = Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.next_within(left)? {
                Message::Text(t) => return Some(t.to_string()),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame, skipping pings.
    pub fn next_text(&mut self) -> String {
        loop {
            match self.next().expect("a frame before the deadline") {
                Message::Text(t) => return t.to_string(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads past quotes and pings to the close frame: its code and reason.
    pub fn close_after_quotes(&mut self) -> (u16, String) {
        loop {
            match self.next().expect("a close frame before the deadline") {
                Message::Close(Some(f)) => return (u16::from(f.code), f.reason.to_string()),
                Message::Close(None) => return (1005, String::new()),
                _ => {}
            }
        }
    }

    /// Reads until the close frame and returns its code and reason; fails on any quote first.
    pub fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next().expect("a close frame before the deadline") {
                Message::Close(Some(f)) => return (u16::from(f.code), f.reason.to_string()),
                Message::Close(None) => return (1005, String::new()),
                Message::Text(t) if t.as_str() == "Connected" => {}
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a close, got {other:?}"),
            }
        }
    }
}

pub fn close_code(code: CloseCode) -> u16 {
    u16::from(code)
}

/// The status code of an HTTP response.
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// Sends a raw HTTP request and returns the whole response.
pub fn http_get(addr: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Polls `cond` until it holds or the deadline passes.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a read ended only because its socket's read timeout passed: nothing came yet.
pub fn read_timed_out(e: &tungstenite::Error) -> bool {
    matches!(
        e,
        tungstenite::Error::Io(e)
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    )
}

/// The body of an HTTP response.
pub fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The body of `/metrics`.
pub fn scrape(addr: SocketAddr) -> String {
    body_of(&http_get(addr, "GET /metrics HTTP/1.1\r\n\r\n")).to_string()
}

/// `/healthz` at `addr`: the status code and the body. `Connection: close`, so that a
/// balancer in between closes too.
pub fn healthz(addr: SocketAddr) -> (u16, String) {
    let r = http_get(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    (status_of(&r), body_of(&r).to_string())
}

/// The value of one series (`name` or `name{labels}`) in a /metrics text.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// One series, scraped now.
pub fn metric_of(addr: SocketAddr, series: &str) -> f64 {
    metric(&scrape(addr), series)
}
