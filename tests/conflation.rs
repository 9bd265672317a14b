//! The slow client's other choice: `slow_client = conflate` (or `"conflate": true` in its auth
//! message). A client that reads slower than the feed stays connected; as it catches up it is
//! sent the latest quote of each symbol that changed meanwhile, never an older one after a
//! newer one of the same symbol, never one twice, and its last quote of each symbol is the
//! feed's last. The healthy clients beside it get every quote. A client that speaks
//! TraderMade's v2 protocol conflates the same way, its subscription's answer kept.

mod common;

use common::raw_ws::{pong_for, FrameReader, CLOSE, TEXT};
use common::storm::{join_with, Outcome};
use common::traffic::*;
use common::*;
use socket2::{Domain, Socket, Type};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// 200 quotes a second.
const FEED_EVERY: Duration = Duration::from_millis(5);

/// The feed: EURUSD and USDJPY in turn, numbered; GBPUSD is the sentinel that ends it.
fn two_symbols(n: u64) -> String {
    quote(if n % 2 == 0 { "EURUSD" } else { "USDJPY" }, n)
}

/// `(symbol, n)` of a `quote(symbol, n)`.
fn parse(text: &str) -> (String, u64) {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let ts: u64 = v["ts"].as_str().unwrap().parse().unwrap();
    (
        v["symbol"].as_str().unwrap().to_string(),
        ts - 1_700_000_000_000,
    )
}

/// `(symbol, n)` of what a client gets for `quote(symbol, n)`, in fxproxy's shape or as a v2
/// tick (whose bid, `1.0000n`, says n); `None` for v2's other messages.
fn parse_any(text: &str) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    if v.get("type").is_some() {
        return None;
    }
    if v.get("t").is_none() {
        return Some(parse(text));
    }
    let bid = v["b"].as_str().unwrap();
    Some((
        v["s"].as_str().unwrap().to_string(),
        bid.strip_prefix("1.").unwrap().parse().unwrap(),
    ))
}

/// A client on a small socket that reads what it is told to, answering pings as it meets
/// them, as a browser on a slow link does.
struct SlowReader {
    socket: TcpStream,
    frames: FrameReader,
    /// Every quote it got, in order.
    quotes: Vec<(String, u64)>,
    /// The close frame, if one came.
    closed: Option<(u16, String)>,
    /// v2's other messages (its `sub_ack`), with how many quotes had come before each.
    controls: Vec<(usize, String)>,
}

impl SlowReader {
    fn join(addr: SocketAddr, auth: &str) -> SlowReader {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&addr.into()).unwrap();
        let Outcome::Served(socket) = join_with(sock.into(), auth) else {
            panic!("the slow client could not join");
        };
        SlowReader {
            socket,
            frames: FrameReader::default(),
            quotes: Vec::new(),
            closed: None,
            controls: Vec::new(),
        }
    }

    /// Logs in with TraderMade's v2 protocol and subscribes to the feed's three symbols.
    fn join_v2(addr: SocketAddr) -> SlowReader {
        let login = format!(r#"{{"action":"login","key":"{KEY}","fmt":"JSON"}}"#);
        let mut slow = SlowReader::join(addr, &login);
        let subscribe =
            r#"{"action":"subscribe","symbols":["EURUSD:QUOTE","USDJPY:QUOTE","GBPUSD:QUOTE"]}"#;
        slow.socket
            .write_all(&common::raw_ws::client_frame(TEXT, subscribe.as_bytes()))
            .unwrap();
        slow
    }

    /// Reads `bite` bytes at most every `pause`, for `d` (or until closed).
    fn read_for(&mut self, d: Duration, bite: usize, pause: Duration) {
        let until = Instant::now() + d;
        let mut buf = vec![0u8; bite];
        self.socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        while Instant::now() < until && self.closed.is_none() {
            match self.socket.read(&mut buf) {
                Ok(0) => {
                    self.closed.get_or_insert((1006, "EOF".into()));
                }
                Ok(n) => self.frames.push(&buf[..n]),
                Err(_) => {}
            }
            self.take_frames();
            thread::sleep(pause);
        }
    }

    fn take_frames(&mut self) {
        while let Some(f) = self.frames.next_frame() {
            if let Some(pong) = pong_for(&f) {
                let _ = self.socket.write_all(&pong);
            }
            if f.opcode == TEXT {
                let text = String::from_utf8_lossy(&f.payload);
                match parse_any(&text) {
                    Some(quote) => self.quotes.push(quote),
                    None => self.controls.push((self.quotes.len(), text.to_string())),
                }
            } else if f.opcode == CLOSE {
                let reason = String::from_utf8_lossy(&f.payload[2.min(f.payload.len())..]);
                self.closed = Some((f.close_code().unwrap_or(1005), reason.to_string()));
            }
        }
    }

    /// Reads at full speed until it has `want` (the last quote of each symbol) or `d` passes.
    fn read_until(&mut self, want: &HashMap<String, u64>, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && self.closed.is_none() {
            if want.iter().all(|(s, n)| self.last_of(s) == Some(*n)) {
                return;
            }
            self.read_for(Duration::from_millis(50), 16 * 1024, Duration::ZERO);
        }
    }

    /// Reads at full speed until the proxy closes the connection or `d` passes.
    fn read_to_close(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && self.closed.is_none() {
            self.read_for(Duration::from_millis(50), 16 * 1024, Duration::ZERO);
        }
    }

    fn last_of(&self, symbol: &str) -> Option<u64> {
        self.quotes
            .iter()
            .rev()
            .find(|(s, _)| s == symbol)
            .map(|(_, n)| *n)
    }

    /// Within each symbol, strictly increasing: nothing older after newer, nothing twice.
    fn assert_in_order(&self) {
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (s, n) in &self.quotes {
            if let Some(before) = last.insert(s, *n) {
                assert!(*n > before, "{s}: {n} after {before}");
            }
        }
    }
}

/// The feed's last quote of each symbol, once `total` quotes and the sentinel were sent.
fn feeds_last(total: u64) -> HashMap<String, u64> {
    let mut last = HashMap::new();
    for n in total.saturating_sub(2)..total {
        last.insert(parse(&two_symbols(n)).0, n);
    }
    last.insert("GBPUSD".to_string(), total);
    last
}

/// A client that reads 512 bytes every 100 ms (at most 5 KB/s) from a feed of 200 quotes a
/// second (about 17 KB/s), for four seconds; then reads at full speed.
fn slower_than_the_feed(proxy_extra: &str, auth: &str) -> (SlowReader, TestProxy) {
    slower_than_the_feed_joined(proxy_extra, |addr| SlowReader::join(addr, auth))
}

/// As [`slower_than_the_feed`], the slow client joined by `join`.
fn slower_than_the_feed_joined(
    proxy_extra: &str,
    join: impl FnOnce(SocketAddr) -> SlowReader,
) -> (SlowReader, TestProxy) {
    let up = TestUpstream::start();
    // A short queue fills in a fraction of a second, as a long one would in a longer test.
    let proxy = TestProxy::start(
        &up.url(),
        &format!("max_client_lag_secs = 1\nclient_queue_len = 64\n{proxy_extra}"),
        &format!("{KEY}\n"),
    );
    up.expect_subscribe();
    let healthy: Vec<Client> = (0..2)
        .map(|_| Client::auth(proxy.addr, KEY, None))
        .collect();
    proxy.wait_for_clients(2);
    let traffic = Traffic::start(up, healthy, FEED_EVERY, two_symbols);
    traffic.wait_for_more(10);
    let mut slow = join(proxy.addr);
    let mut deepest = 0.0f64;
    let mut conflating = 0.0f64;
    for _ in 0..8 {
        slow.read_for(Duration::from_millis(500), 512, Duration::from_millis(100));
        let text = scrape(proxy.addr);
        deepest = deepest.max(metric(&text, "fxproxy_client_queue_depth_sum"));
        conflating = conflating.max(metric(&text, "fxproxy_clients_conflating"));
    }
    let sent = traffic.sent() as u64;
    let (_up, deliveries) = traffic.finish();
    let total = deliveries[0].quotes;
    slow.read_until(&feeds_last(total), Duration::from_secs(20));
    assert_eq!(
        slow.closed,
        None,
        "closed after {} quotes",
        slow.quotes.len()
    );
    slow.assert_in_order();
    for (symbol, n) in feeds_last(total) {
        assert_eq!(slow.last_of(&symbol), Some(n), "{symbol}: the feed's last");
    }
    let conflated = metric_of(proxy.addr, "fxproxy_quotes_conflated_total");
    assert!(conflated > 0.0, "nothing conflated");
    assert!(slow.quotes.len() < sent as usize, "everything delivered?");
    assert!(conflating >= 1.0, "/metrics never showed it conflating");
    assert_eq!(
        metric_of(proxy.addr, "fxproxy_slow_consumer_disconnects_total"),
        0.0
    );
    // The healthy clients have left; the slow one is still there.
    assert_eq!(metric_of(proxy.addr, "fxproxy_clients_connected"), 1.0);
    eprintln!(
        "a client reading 5 KB/s of a 200 quotes/s feed (17 KB/s): {} of {} quotes delivered, {conflated} conflated away, at most {deepest} frames waiting for all three clients, in order, ending on the feed's last",
        slow.quotes.len(),
        total + 1
    );
    (slow, proxy)
}

#[test]
fn a_conflating_client_slower_than_the_feed_stays_connected_and_ends_on_the_latest() {
    slower_than_the_feed(
        "slow_client = conflate\n",
        &format!(r#"{{"userKey":"{KEY}"}}"#),
    );
}

#[test]
fn a_v2_client_conflates_too_and_keeps_its_subscription_s_answer() {
    let (slow, _proxy) =
        slower_than_the_feed_joined("slow_client = conflate\n", SlowReader::join_v2);
    // Its sub_ack, before any tick (conflation folds it in ahead of the slots, never drops it).
    assert_eq!(slow.controls.len(), 1, "{:?}", slow.controls);
    let (before, ack) = &slow.controls[0];
    assert_eq!(*before, 0, "{ack}");
    assert!(ack.contains(r#""type":"sub_ack""#), "{ack}");
}

#[test]
fn a_client_may_ask_to_be_conflated_in_its_auth_message() {
    let (_, proxy) = slower_than_the_feed("", &format!(r#"{{"userKey":"{KEY}","conflate":true}}"#));
    drop(proxy);
    // The same client without asking, against the same feed: closed as a slow consumer.
    let up = TestUpstream::start();
    let proxy = TestProxy::start(
        &up.url(),
        "max_client_lag_secs = 1\nclient_queue_len = 64\n",
        &format!("{KEY}\n"),
    );
    up.expect_subscribe();
    let healthy = vec![Client::auth(proxy.addr, KEY, None)];
    proxy.wait_for_clients(1);
    let traffic = Traffic::start(up, healthy, FEED_EVERY, two_symbols);
    traffic.wait_for_more(10);
    let mut slow = SlowReader::join(proxy.addr, &format!(r#"{{"userKey":"{KEY}"}}"#));
    slow.read_for(Duration::from_secs(8), 512, Duration::from_millis(100));
    slow.read_to_close(Duration::from_secs(10));
    assert!(slow.closed.is_some(), "still open");
    // Its close frame may be lost behind the quotes still unsent when the connection goes (it
    // reads too slowly for the close's one-second write deadline); the count is exact.
    assert_eq!(
        metric_of(proxy.addr, "fxproxy_slow_consumer_disconnects_total"),
        1.0
    );
    traffic.finish();
}

#[test]
fn a_conflating_client_that_stops_reading_is_dropped_by_the_ping_timeout_only() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(
        &up.url(),
        "slow_client = conflate\nmax_client_lag_secs = 1\nclient_ping_secs = 2\nclient_queue_len = 64\n",
        &format!("{KEY}\n"),
    );
    up.expect_subscribe();
    // Its first quote, as a snapshot, the moment it joins: it reads that one and no more.
    up.send(&quote("GBPUSD", 0));
    eventually("the first quote", || {
        metric_of(proxy.addr, "fxproxy_quotes_received_total") == 1.0
    });
    // Timed from before it joins: the proxy hears it last while it joins, a moment later.
    let joined = Instant::now();
    let mut stalled = SlowReader::join(proxy.addr, &format!(r#"{{"userKey":"{KEY}"}}"#));
    // 200 quotes a second, which it never reads: its queue of 64 fills in a third of a second
    // and the lag limit would close it in two.
    let mut n = 0;
    let mut conflating = false;
    loop {
        for _ in 0..20 {
            up.send(&two_symbols(n));
            n += 1;
            thread::sleep(FEED_EVERY);
        }
        let text = scrape(proxy.addr);
        if metric(&text, "fxproxy_clients_connected") == 0.0 {
            break;
        }
        let depth = metric(&text, "fxproxy_client_queue_depth_sum");
        // Until its queue of 64 fills (the kernel takes a hundred quotes or so first), they
        // wait there; from then on, one quote per symbol at most.
        if metric(&text, "fxproxy_clients_conflating") == 1.0 {
            conflating = true;
            assert!(depth <= 2.0, "{depth} frames wait for it");
        } else {
            assert!(!conflating && depth <= 64.0, "{depth} frames wait for it");
        }
        assert!(joined.elapsed() < Duration::from_secs(20), "never dropped");
    }
    let dropped_after = joined.elapsed();
    assert!(conflating, "/metrics never showed it conflating");
    assert!(
        dropped_after >= Duration::from_secs(4),
        "dropped after {dropped_after:?}: before two keep-alive periods"
    );
    assert_eq!(
        metric_of(proxy.addr, "fxproxy_slow_consumer_disconnects_total"),
        0.0
    );
    // What it was sent, in order, then why it was closed.
    stalled.read_to_close(Duration::from_secs(10));
    stalled.assert_in_order();
    assert_eq!(stalled.closed, Some((1001, "Ping timeout".into())));
    eprintln!(
        "a conflating client that stopped reading: dropped by the ping timeout after {dropped_after:?}, {} quotes sent, 0 slow-consumer closes",
        n
    );
}
