//! The proxy end to end over real sockets: a test upstream, the proxy in-process on an
//! ephemeral port, and WebSocket clients that see what a user would.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tungstenite::Message;

#[test]
fn fans_out_byte_identical_and_in_order_over_one_subscription() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    let sub = up.expect_subscribe();
    assert!(sub.contains("EURUSD,GBPUSD,USDJPY"), "{sub}");
    let mut clients: Vec<Client> = (0..4)
        .map(|_| Client::auth(proxy.addr, KEY, None))
        .collect();
    proxy.wait_for_clients(4);
    let sent: Vec<String> = (0..50)
        .map(|n| quote(["EURUSD", "GBPUSD", "USDJPY"][n % 3], n as u64))
        .collect();
    for q in &sent {
        up.send(q);
    }
    for c in &mut clients {
        let got: Vec<String> = (0..sent.len()).map(|_| c.next_text()).collect();
        assert_eq!(got, sent);
    }
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn refusals_carry_their_code_and_reason_and_no_quote() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    up.send(&quote("EURUSD", 1));
    // Wait until the quote is the latest, so a leak would show in a refused client's stream.
    let mut ok = Client::auth(proxy.addr, KEY, None);
    ok.next_text();

    let cases: Vec<(&str, u16, &str)> = vec![
        (
            r#"{"userKey":"wrong-key-123456"}"#,
            1008,
            "Authentication failed",
        ),
        ("not json", 1008, "Failed to authenticate"),
        (r#"{"user":"x"}"#, 1008, "Failed to authenticate"),
        (r#"{"userKey":5}"#, 1008, "Failed to authenticate"),
        (
            &*Box::leak(format!(r#"{{"userKey":"{KEY}","symbol":"XAUUSD"}}"#).into_boxed_str()),
            1008,
            "Unknown symbol XAUUSD",
        ),
        (
            &*Box::leak(
                format!(r#"{{"userKey":"{OTHER_KEY}","symbol":"GBPUSD"}}"#).into_boxed_str(),
            ),
            1008,
            "Not entitled to symbol GBPUSD",
        ),
    ];
    for (msg, code, reason) in cases {
        let mut c = Client::connect(proxy.addr);
        c.ws.send(Message::text(msg)).unwrap();
        assert_eq!(c.expect_close(), (code, reason.to_string()), "for {msg}");
    }
    let mut bin = Client::connect(proxy.addr);
    bin.ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(bin.expect_close(), (1008, "Failed to authenticate".into()));
}

#[test]
fn a_client_that_never_authenticates_is_closed_after_the_timeout() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(&up.url(), "auth_timeout_secs = 1", &format!("{KEY}\n"));
    // Timed from before the connection: the proxy's clock starts at its 101, later.
    let started = Instant::now();
    let mut c = Client::connect(proxy.addr);
    assert_eq!(c.expect_close(), (1008, "Failed to authenticate".into()));
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[test]
fn symbol_filter_and_entitlement_limit_what_a_client_gets() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    let mut filtered = Client::auth(proxy.addr, KEY, Some("gbpusd"));
    let mut entitled = Client::auth(proxy.addr, OTHER_KEY, None);
    proxy.wait_for_clients(2);
    for (n, sym) in ["EURUSD", "GBPUSD", "USDJPY", "EURUSD", "GBPUSD"]
        .iter()
        .enumerate()
    {
        up.send(&quote(sym, n as u64));
    }
    assert_eq!(filtered.next_text(), quote("GBPUSD", 1));
    assert_eq!(filtered.next_text(), quote("GBPUSD", 4));
    assert_eq!(entitled.next_text(), quote("EURUSD", 0));
    assert_eq!(entitled.next_text(), quote("EURUSD", 3));
    assert_eq!(filtered.text_within(Duration::from_millis(300)), None);
}

#[test]
fn a_new_client_first_gets_the_latest_quote_of_each_symbol() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    let mut first = Client::auth(proxy.addr, KEY, None);
    up.send(&quote("EURUSD", 1));
    up.send(&quote("GBPUSD", 2));
    up.send(&quote("EURUSD", 3));
    for _ in 0..3 {
        first.next_text();
    }
    let mut late = Client::auth(proxy.addr, KEY, None);
    let snapshot = [late.next_text(), late.next_text()];
    assert_eq!(snapshot, [quote("EURUSD", 3), quote("GBPUSD", 2)]);
    up.send(&quote("USDJPY", 4));
    assert_eq!(late.next_text(), quote("USDJPY", 4));
}

#[test]
fn reconnects_and_resubscribes_after_the_upstream_closes() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    let mut c = Client::auth(proxy.addr, KEY, None);
    up.close();
    let again = up.expect_subscribe();
    assert!(again.contains("EURUSD"), "{again}");
    up.send(&quote("EURUSD", 7));
    assert_eq!(
        c.next_text(),
        quote("EURUSD", 7),
        "clients stay connected across reconnects"
    );
}

#[test]
fn reconnects_when_the_upstream_goes_silent() {
    let up = TestUpstream::start();
    let _proxy = TestProxy::start(
        &up.url(),
        "upstream_stale_secs = 1\nmarket_hours = always",
        &format!("{KEY}\n"),
    );
    up.expect_subscribe();
    up.send(&quote("EURUSD", 1));
    // The test upstream still answers pings; only the quotes stop.
    up.expect_subscribe();
}

#[test]
fn a_slow_client_is_dropped_while_a_reading_client_keeps_up() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(&up.url(), "client_queue_len = 64", &format!("{KEY}\n"));
    up.expect_subscribe();
    // The slow client authenticates and then never reads again.
    let mut slow = Client::auth(proxy.addr, KEY, None);
    let mut fast = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(2);
    let metrics = proxy.server().metrics();
    // Large frames fill the slow client's socket buffers quickly; then its queue fills. The
    // queue holds more than one burst, so the reading client is never near its bound.
    let padding = "x".repeat(32 * 1024);
    let mut n = 0u64;
    let started = Instant::now();
    while metrics
        .slow_consumer_disconnects
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        assert!(
            started.elapsed() < DEADLINE,
            "the slow client was never dropped"
        );
        let burst: Vec<String> = (n..n + 20)
            .map(|i| format!(r#"{{"symbol":"EURUSD","n":{i},"pad":"{padding}"}}"#))
            .collect();
        for q in &burst {
            up.send(q);
        }
        for q in &burst {
            assert_eq!(
                &fast.next_text(),
                q,
                "the reading client gets every quote in order"
            );
        }
        n += 20;
    }
    // The reading client still gets quotes promptly.
    let t = Instant::now();
    up.send(&quote("GBPUSD", 1));
    assert_eq!(fast.next_text(), quote("GBPUSD", 1));
    assert!(t.elapsed() < Duration::from_secs(1));
    // The slow client, once it reads, finds its quotes cut off by a 1008 close.
    let mut saw_close = None;
    let until = Instant::now() + DEADLINE;
    while saw_close.is_none() && Instant::now() < until {
        match slow.ws.read() {
            Ok(Message::Close(Some(f))) => {
                saw_close = Some((u16::from(f.code), f.reason.to_string()))
            }
            Ok(_) => {}
            Err(e) if read_timed_out(&e) => {}
            Err(_) => break,
        }
    }
    assert_eq!(saw_close, Some((1008, "Slow consumer".to_string())));
}

#[test]
fn pings_are_answered_and_closes_noticed_at_once() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    let mut c = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    let t = Instant::now();
    c.ws.send(Message::Ping(b"hello".to_vec().into())).unwrap();
    loop {
        match c
            .next_within(Duration::from_secs(1))
            .expect("a pong within 1 s")
        {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hello");
                break;
            }
            _ => continue,
        }
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    c.ws.close(None).unwrap();
    let t = Instant::now();
    proxy.wait_for_clients(0);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn shutdown_sends_every_client_going_away() {
    let up = TestUpstream::start();
    let mut proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    let mut clients: Vec<Client> = (0..3)
        .map(|_| Client::auth(proxy.addr, KEY, None))
        .collect();
    let mut pending = Client::connect(proxy.addr);
    proxy.wait_for_clients(3);
    let t = Instant::now();
    proxy.server.take().unwrap().shutdown();
    assert!(t.elapsed() < Duration::from_secs(2));
    for c in &mut clients {
        assert_eq!(c.expect_close().0, 1001);
    }
    assert_eq!(pending.expect_close().0, 1001);
}

#[test]
fn batching_on_the_grid_loses_and_reorders_nothing() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(&up.url(), "batch_delay_ms = 20", &format!("{KEY}\n"));
    up.expect_subscribe();
    // 100 clients at a quote a millisecond: over 50,000 deliveries a second and faster than
    // one quote per batch period, so the writers move onto the batch grid.
    let mut clients: Vec<Client> = (0..100)
        .map(|_| Client::auth(proxy.addr, KEY, None))
        .collect();
    proxy.wait_for_clients(100);
    // The distributor batches only while quotes come less than 2 ms apart on average; on a
    // loaded host some of the feed's milliseconds stretch, so the feed goes on until the
    // proxy says it batches, then for 100 quotes more (300 at least). Bounded by what a
    // client may hold unread without a question: fewer frames than client_queue_len (1024)
    // and fewer bytes than make the proxy probe with a ping (32 KiB), hence short frames.
    let tick = |n: usize| format!(r#"{{"symbol":"{}","n":{n}}}"#, ["EURUSD", "GBPUSD"][n % 2]);
    const SEARCH: usize = 900;
    let mut sent: Vec<String> = Vec::new();
    let mut batching_from: Option<usize> = None;
    while batching_from.map_or(true, |from| sent.len() < (from + 100).max(300)) {
        assert!(
            batching_from.is_some() || sent.len() < SEARCH,
            "the writers never went onto the batch grid in {SEARCH} quotes a millisecond apart"
        );
        sent.push(tick(sent.len()));
        up.send(sent.last().unwrap());
        std::thread::sleep(Duration::from_millis(1));
        if batching_from.is_none()
            && sent.len() % 25 == 0
            && http_get(proxy.addr, "GET /metrics HTTP/1.1\r\n\r\n")
                .contains("\nfxproxy_batching 1\n")
        {
            batching_from = Some(sent.len());
        }
    }
    for c in &mut clients {
        let got: Vec<String> = (0..sent.len()).map(|_| c.next_text()).collect();
        assert_eq!(got, sent);
    }
    eprintln!(
        "on the batch grid after {} quotes a millisecond apart; {} sent, none lost",
        batching_from.unwrap_or(0),
        sent.len()
    );
    // Once the stream stops, a lone quote is still delivered promptly.
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    up.send(&quote("USDJPY", 1));
    for c in &mut clients {
        assert_eq!(c.next_text(), quote("USDJPY", 1));
    }
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[test]
fn a_connection_limit_refusal_backs_off_to_the_maximum() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    up.send("User Key Used to many times");
    eventually("the refusal reported by /healthz", || {
        healthz(proxy.addr).1.contains("\"status\":\"refused\"")
    });
    // The back-off jumps to its 60 s maximum rather than starting at 1 s.
    assert!(
        up.no_subscribe_within(Duration::from_secs(3)),
        "reconnected too soon"
    );
}

#[test]
fn a_proxy_can_feed_another_proxy() {
    let up = TestUpstream::start();
    let first = TestProxy::simple(&up);
    up.expect_subscribe();
    // The second proxy subscribes to the first with one of its client keys, as it would to
    // the provider: the client protocol is the upstream protocol.
    let second = TestProxy::start(
        &first.url(),
        &format!("upstream_api_key = {KEY}"),
        &format!("{OTHER_KEY}\n"),
    );
    first.wait_for_clients(1);
    let mut c = Client::auth(second.addr, OTHER_KEY, None);
    second.wait_for_clients(1);
    up.send(&quote("EURUSD", 5));
    assert_eq!(
        c.next_text(),
        quote("EURUSD", 5),
        "byte for byte through both"
    );
}

#[test]
fn an_oversized_message_after_auth_is_closed_with_1009() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(&up.url(), "max_message_bytes = 256", &format!("{KEY}\n"));
    up.expect_subscribe();
    let mut c = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    c.ws.send(Message::text("x".repeat(1000))).unwrap();
    assert_eq!(c.expect_close(), (1009, "Message too big".to_string()));
    proxy.wait_for_clients(0);
}
