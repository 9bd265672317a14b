//! The simulated clients: each connects, authenticates, then reads quotes, noting per quote only
//! its `seq` (for gaps) and `sent_ns` (for latency) found by byte search — no JSON parse. A
//! share of them (`--v2-share`) speak TraderMade's v2 protocol instead: they log in, subscribe
//! to every symbol, and find the two numbers in the tick's prices (the feed tags them).
//!
//! Each load-generator thread runs a current-thread tokio runtime with its clients as local
//! tasks, sharing one histogram and one set of counters through an `Rc<RefCell<_>>`: no atomics
//! or locks on the per-quote path, and one histogram per thread instead of one per client
//! (15,000 of them would be hundreds of MB).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::clock;

/// What the controller and the client threads share.
pub struct Shared {
    /// Recording window, ns since the epoch: `window_start` 0 = not begun, `window_end`
    /// u64::MAX = not ended.
    pub window_start: AtomicU64,
    pub window_end: AtomicU64,
    pub done: AtomicBool,
    /// Clients whose connection attempt finished, either way.
    pub settled: AtomicUsize,
    /// Clients that have received a quote.
    pub confirmed: AtomicUsize,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            window_start: AtomicU64::new(0),
            window_end: AtomicU64::new(u64::MAX),
            done: AtomicBool::new(false),
            settled: AtomicUsize::new(0),
            confirmed: AtomicUsize::new(0),
        }
    }
}

pub struct ClientConfig {
    pub addr: SocketAddr,
    pub url: String,
    pub auth: String,
    /// The share of clients that speak v2, and what they send: a login, then a subscription.
    pub v2_share: f64,
    pub v2_login: String,
    pub v2_subscribe: String,
    /// Attempts in flight at once on this thread; 0 = no cap (a storm: every client at once).
    pub concurrency: usize,
    /// The feed's interval; 0 when idle. A client silent for much longer than this is stalled.
    pub interval_ns: u64,
    /// For wss://: the TLS config (trusting the target's certificate).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 1 hour at 3 significant digits: ~270 kB.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds")
}

/// One thread's share of the results.
pub struct ThreadResult {
    pub hist: Histogram<u64>,
    /// Per client that connected: ns from the start of its attempt (TCP connect) until its auth
    /// message was sent. In a storm every attempt starts at once, so this is the wait each
    /// client of the storm saw.
    pub connect_hist: Histogram<u64>,
    /// Quotes received from the first connect to the end of the window.
    pub delivered_total: u64,
    /// Quotes received inside the window.
    pub delivered_window: u64,
    /// Quotes skipped (sequence gaps) inside the window.
    pub lost: u64,
    /// Quotes with a seq not above the last one seen, inside the window.
    pub dup: u64,
    /// Open at the end and had a quote.
    pub connected: usize,
    /// Open at the end but never had a quote (normal for an idle feed without snapshots).
    pub silent: usize,
    /// Open with quotes, but none for a long while before the window ended.
    pub stalled: usize,
    /// Connected, then closed or failed before the end.
    pub disconnected: usize,
    /// Never completed the WebSocket handshake and the auth message.
    pub failed: usize,
    pub last_handshake_ns: u64,
    pub last_confirm_ns: u64,
    /// Failure / close reasons, counted.
    pub failures: BTreeMap<String, usize>,
    pub closes: BTreeMap<String, usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Connecting,
    Open,
    Closed,
    Failed,
}

#[derive(Clone, Copy)]
struct Client {
    state: State,
    got_quote: bool,
    last_recv_ns: u64,
}

struct ThreadState {
    hist: Histogram<u64>,
    connect_hist: Histogram<u64>,
    clients: Vec<Client>,
    delivered_total: u64,
    delivered_window: u64,
    lost: u64,
    dup: u64,
    last_handshake_ns: u64,
    last_confirm_ns: u64,
    failures: BTreeMap<String, usize>,
    closes: BTreeMap<String, usize>,
}

/// Runs `n` clients on the calling thread until `shared.done`, then summarises.
pub fn run_thread(n: usize, cfg: Arc<ClientConfig>, shared: Arc<Shared>) -> ThreadResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let st = Rc::new(RefCell::new(ThreadState {
        hist: new_histogram(),
        connect_hist: new_histogram(),
        clients: vec![
            Client {
                state: State::Connecting,
                got_quote: false,
                last_recv_ns: 0,
            };
            n
        ],
        delivered_total: 0,
        delivered_window: 0,
        lost: 0,
        dup: 0,
        last_handshake_ns: 0,
        last_confirm_ns: 0,
        failures: BTreeMap::new(),
        closes: BTreeMap::new(),
    }));
    // No semaphore in a storm: all `n` attempts start together, none waits for another.
    let sem = (cfg.concurrency > 0).then(|| Rc::new(Semaphore::new(cfg.concurrency)));
    let v2_clients = crate::args::v2_clients(n, cfg.v2_share);
    local.block_on(&rt, async {
        for i in 0..n {
            tokio::task::spawn_local(client(
                i,
                i < v2_clients,
                cfg.clone(),
                shared.clone(),
                st.clone(),
                sem.clone(),
            ));
        }
        while !shared.done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let end = shared.window_end.load(Ordering::Relaxed);
    let stall_ns = (5 * cfg.interval_ns).max(1_000_000_000);
    let s = st.borrow();
    let mut r = ThreadResult {
        hist: s.hist.clone(),
        connect_hist: s.connect_hist.clone(),
        delivered_total: s.delivered_total,
        delivered_window: s.delivered_window,
        lost: s.lost,
        dup: s.dup,
        connected: 0,
        silent: 0,
        stalled: 0,
        disconnected: 0,
        failed: 0,
        last_handshake_ns: s.last_handshake_ns,
        last_confirm_ns: s.last_confirm_ns,
        failures: s.failures.clone(),
        closes: s.closes.clone(),
    };
    for c in &s.clients {
        match c.state {
            State::Open if c.got_quote => {
                r.connected += 1;
                if cfg.interval_ns > 0 && c.last_recv_ns + stall_ns < end {
                    r.stalled += 1;
                }
            }
            State::Open => r.silent += 1,
            State::Closed => r.disconnected += 1,
            State::Failed | State::Connecting => r.failed += 1,
        }
    }
    drop(s);
    // Dropping the runtime drops every client socket.
    drop(local);
    r
}

async fn client(
    i: usize,
    v2: bool,
    cfg: Arc<ClientConfig>,
    shared: Arc<Shared>,
    st: Rc<RefCell<ThreadState>>,
    sem: Option<Rc<Semaphore>>,
) {
    let permit = match &sem {
        Some(sem) => Some(sem.acquire().await.expect("semaphore open")),
        None => None,
    };
    let began = clock::now_ns();
    let attempt = async {
        let tcp = TcpStream::connect(cfg.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        // Small buffers: 15,000 clients × the 128 KiB default would be 2 GB of address space.
        let wsc = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let connector = match &cfg.tls {
            Some(tls) => tokio_tungstenite::Connector::Rustls(Arc::clone(tls)),
            None => tokio_tungstenite::Connector::Plain,
        };
        let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
            cfg.url.as_str(),
            tcp,
            Some(wsc),
            Some(connector),
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
        if v2 {
            for text in [&cfg.v2_login, &cfg.v2_subscribe] {
                ws.send(Message::text(text.as_str()))
                    .await
                    .map_err(|e| format!("v2 login send: {e}"))?;
            }
        } else {
            ws.send(Message::text(cfg.auth.as_str()))
                .await
                .map_err(|e| format!("auth send: {e}"))?;
        }
        Ok::<_, String>(ws)
    };
    let res = tokio::time::timeout(Duration::from_secs(30), attempt).await;
    drop(permit);
    shared.settled.fetch_add(1, Ordering::Relaxed);
    let mut ws = match res {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return fail(&st, i, e),
        Err(_) => return fail(&st, i, "connect+handshake timed out after 30 s".into()),
    };
    {
        let now = clock::now_ns();
        let mut s = st.borrow_mut();
        s.clients[i].state = State::Open;
        s.last_handshake_ns = s.last_handshake_ns.max(now);
        s.connect_hist
            .saturating_record(now.saturating_sub(began).max(1));
    }

    let (seq_at, sent_at) = if v2 {
        (&*V2_SEQ, &*V2_SENT_NS)
    } else {
        (&*SEQ, &*SENT_NS)
    };
    let mut last_seq: Option<u64> = None;
    let reason = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let now = clock::now_ns();
                let b = t.as_bytes();
                let Some(seq) = find_u64(b, seq_at) else {
                    // `Connected`, v2's login_ok and sub_ack, or anything else that is not
                    // one of our quotes.
                    continue;
                };
                let sent = find_u64(b, sent_at).unwrap_or(now);
                let ws_start = shared.window_start.load(Ordering::Relaxed);
                let ws_end = shared.window_end.load(Ordering::Relaxed);
                let mut s = st.borrow_mut();
                let s = &mut *s;
                let c = &mut s.clients[i];
                c.last_recv_ns = now;
                if !c.got_quote {
                    c.got_quote = true;
                    s.last_confirm_ns = s.last_confirm_ns.max(now);
                    shared.confirmed.fetch_add(1, Ordering::Relaxed);
                }
                if now < ws_end {
                    s.delivered_total += 1;
                }
                let in_window = now >= ws_start && ws_start != 0 && now < ws_end;
                if in_window {
                    s.delivered_window += 1;
                    s.hist.saturating_record(now.saturating_sub(sent).max(1));
                }
                match last_seq {
                    Some(last) if seq > last => {
                        if in_window && seq > last + 1 {
                            s.lost += seq - last - 1;
                        }
                        last_seq = Some(seq);
                    }
                    Some(_) => {
                        if in_window {
                            s.dup += 1;
                        }
                    }
                    None => last_seq = Some(seq),
                }
            }
            Some(Ok(Message::Close(f))) => {
                break match f {
                    Some(f) => format!("close {} {}", u16::from(f.code), f.reason),
                    None => "close (no code)".into(),
                };
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("error: {e}"),
            None => break "connection ended".into(),
        }
    };
    let mut s = st.borrow_mut();
    if !shared.done.load(Ordering::Relaxed) {
        s.clients[i].state = State::Closed;
        *s.closes.entry(reason).or_default() += 1;
    }
}

fn fail(st: &Rc<RefCell<ThreadState>>, i: usize, e: String) {
    let mut s = st.borrow_mut();
    s.clients[i].state = State::Failed;
    *s.failures.entry(e).or_default() += 1;
}

/// Finders for the two fields a client reads, built once (a generic byte-window search cost a
/// quarter of the load generator's CPU in a profile).
pub static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
pub static SENT_NS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"sent_ns\":"));
/// In a v2 tick of a tagged feed: the seq is the bid's fraction, the sent_ns the ask's.
pub static V2_SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"b\":\"1."));
pub static V2_SENT_NS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"a\":\"2."));

/// The unsigned integer right after the needle of `key` in `b`, if any.
pub fn find_u64(b: &[u8], key: &Finder<'_>) -> Option<u64> {
    let at = key.find(b)? + key.needle().len();
    let digits = &b[at..];
    let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    digits[..n].iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbers_without_parsing_json() {
        let q = br#"{"symbol":"EURUSD","ts":"1700000000123","bid":1.09121,"ask":1.09123,"seq":123,"sent_ns":1732590000123456789}"#;
        assert_eq!(find_u64(q, &SEQ), Some(123));
        assert_eq!(find_u64(q, &SENT_NS), Some(1_732_590_000_123_456_789));
        assert_eq!(find_u64(b"Connected", &SEQ), None);
        assert_eq!(find_u64(br#"{"seq":"x"}"#, &SEQ), None);
    }

    #[test]
    fn finds_them_in_a_v2_tick_of_a_tagged_feed() {
        // What fxproxy serves a v2 client for the feed's tagged quote 123.
        let t = br#"{"t":"QUOTE","s":"EURUSD","b":"1.0000000000000000123","a":"2.1732590000123456789","ts":"20241126-03:00:00.123"}"#;
        assert_eq!(find_u64(t, &V2_SEQ), Some(123));
        assert_eq!(find_u64(t, &V2_SENT_NS), Some(1_732_590_000_123_456_789));
        assert_eq!(
            find_u64(br#"{"type":"login_ok","symbol_limit":1}"#, &V2_SEQ),
            None
        );
    }
}
