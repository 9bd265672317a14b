//! TraderMade's streaming protocol version 2 served to clients, beside fxproxy's own: the
//! first message decides. A v2 client logs in, subscribes and unsubscribes as it goes, each
//! answered with a `sub_ack` (the key's entitlements apply), gets a `LAST_QUOTE` per symbol
//! with `send_last` and then ticks in v2's shape, whatever the upstream is; a program written
//! for TraderMade v2 works by changing only the URL. And a proxy whose upstream is another
//! proxy, speaking v2 (`provider = tradermade-v2`), serves on what the other accepted.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tungstenite::Message;

fn keys() -> String {
    format!("{KEY}\n{OTHER_KEY} EURUSD\n")
}

/// `20231114-22:13:20.00n`: v2's time of `quote(_, n)`.
fn ts(n: u64) -> String {
    let ms = 1_700_000_000_000 + n;
    let date = fake_source::utc(ms).replace('-', "");
    let (day, time) = date.split_once('T').unwrap();
    format!("{day}-{time}.{:03}", ms % 1000)
}

/// What a v2 client gets for `quote(symbol, n)`.
fn tick(kind: &str, symbol: &str, n: u64) -> Value {
    json!({
        "t": kind,
        "s": symbol,
        "b": format!("1.{n:05}"),
        "a": format!("1.{:05}", n + 2),
        "ts": ts(n),
    })
}

/// A client as TraderMade's own (go-cli's `stream.Run`) is written: it skips a plain-text
/// greeting, logs in, and reads JSON.
struct V2Client {
    c: Client,
}

impl V2Client {
    /// Connects and logs in; returns the client and the answer to its login.
    fn login(addr: SocketAddr, key: &str) -> (V2Client, Value) {
        let mut v = V2Client {
            c: Client::connect(addr),
        };
        v.send(json!({"action": "login", "key": key, "fmt": "JSON"}));
        let answer = v.next();
        (v, answer)
    }

    /// Logs in with a key the proxy knows.
    fn logged_in(addr: SocketAddr, key: &str) -> V2Client {
        let (v, answer) = V2Client::login(addr, key);
        assert_eq!(answer["type"], "login_ok", "{answer}");
        v
    }

    fn send(&mut self, message: Value) {
        self.c.ws.send(Message::text(message.to_string())).unwrap();
    }

    /// Subscribes as go-cli does (`SYMBOL:QUOTE`, `send_last`); returns the `sub_ack`.
    fn subscribe(&mut self, symbols: &[&str], send_last: bool) -> Value {
        self.send(json!({"action": "subscribe", "symbols": symbols, "send_last": send_last}));
        let ack = self.next();
        assert_eq!(ack["type"], "sub_ack", "{ack}");
        ack
    }

    /// The next JSON message (control or tick); text that is not JSON (the greeting) is
    /// skipped, as go-cli skips it.
    fn next(&mut self) -> Value {
        loop {
            let text = self.c.next_text();
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                return v;
            }
            assert_eq!(text, "Connected", "plain text other than the greeting");
        }
    }

    /// Nothing but pings for `d`.
    fn nothing_within(&mut self, d: Duration) {
        if let Some(t) = self.c.text_within(d) {
            panic!("unexpected frame {t}");
        }
    }
}

/// A proxy on a scriptable upstream that has seen `quote(EURUSD, 1)` and `quote(GBPUSD, 1)`.
fn proxy_with_quotes() -> (TestUpstream, TestProxy) {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(&up.url(), "", &keys());
    up.expect_subscribe();
    up.send(&quote("EURUSD", 1));
    up.send(&quote("GBPUSD", 1));
    let metrics = proxy.server().metrics();
    eventually("two quotes in", || {
        metrics
            .quotes_received
            .load(std::sync::atomic::Ordering::SeqCst)
            == 2
    });
    (up, proxy)
}

#[test]
fn a_v2_session_runs_as_tradermade_s_own_client_runs_it() {
    let (up, proxy) = proxy_with_quotes();
    let (mut client, answer) = V2Client::login(proxy.addr, KEY);
    assert_eq!(answer, json!({"type": "login_ok", "symbol_limit": 3}));
    let ack = client.subscribe(&["EURUSD:QUOTE", "GBPUSD:QUOTE"], true);
    assert_eq!(
        ack,
        json!({"type": "sub_ack", "accepted": ["EURUSD:QUOTE", "GBPUSD:QUOTE"],
               "denied": [], "denied_reasons": {}, "invalid": []})
    );
    // The latest quote of each, then the live stream.
    assert_eq!(client.next(), tick("LAST_QUOTE", "EURUSD", 1));
    assert_eq!(client.next(), tick("LAST_QUOTE", "GBPUSD", 1));
    up.send(&quote("EURUSD", 2));
    up.send(&quote("USDJPY", 2));
    up.send(&quote("GBPUSD", 3));
    assert_eq!(client.next(), tick("QUOTE", "EURUSD", 2));
    assert_eq!(
        client.next(),
        tick("QUOTE", "GBPUSD", 3),
        "no USDJPY: not subscribed"
    );
    // Prices are strings, as v2 writes them.
    let t = tick("QUOTE", "EURUSD", 2);
    assert!(t["b"].is_string() && t["a"].is_string());

    // A wrong key: login_reject, then the close a v1 client gets too.
    let (mut wrong, answer) = V2Client::login(proxy.addr, "wrong-key-000000000");
    assert_eq!(
        answer,
        json!({"type": "login_reject", "reason": "invalid key"})
    );
    assert_eq!(
        wrong.c.expect_close(),
        (1008, "Authentication failed".to_string())
    );
    // A first message that is no login is answered with an error, then closed.
    let mut early = Client::connect(proxy.addr);
    early
        .ws
        .send(Message::text(
            r#"{"action":"subscribe","symbols":["EURUSD:QUOTE"]}"#,
        ))
        .unwrap();
    let mut early = V2Client { c: early };
    assert_eq!(early.next()["type"], "error");
    assert_eq!(
        early.c.expect_close(),
        (1008, "Failed to authenticate".to_string())
    );
}

#[test]
fn entitlements_decide_what_a_v2_client_may_subscribe() {
    let (_up, proxy) = proxy_with_quotes();
    // OTHER_KEY may have EURUSD only.
    let (mut client, answer) = V2Client::login(proxy.addr, OTHER_KEY);
    assert_eq!(answer["symbol_limit"], 1);
    let ack = client.subscribe(
        &[
            "EURUSD:QUOTE",
            "GBPUSD:QUOTE",
            "usdjpy:quote",
            "XAUUSD:QUOTE",
            "EURUSD",
            "EURUSD:TRADE",
        ],
        false,
    );
    assert_eq!(ack["accepted"], json!(["EURUSD:QUOTE"]));
    assert_eq!(ack["denied"], json!(["GBPUSD:QUOTE", "USDJPY:QUOTE"]));
    assert_eq!(
        ack["denied_reasons"],
        json!({"GBPUSD:QUOTE": "not entitled with this key",
               "USDJPY:QUOTE": "not entitled with this key"})
    );
    // Not carried, a bare symbol, another kind: invalid, as TraderMade's service answers.
    assert_eq!(
        ack["invalid"],
        json!(["XAUUSD:QUOTE", "EURUSD", "EURUSD:TRADE"])
    );
    client.nothing_within(Duration::from_millis(300));
}

#[test]
fn a_v2_client_subscribes_and_unsubscribes_as_it_goes() {
    let (up, proxy) = proxy_with_quotes();
    let mut client = V2Client::logged_in(proxy.addr, KEY);
    client.subscribe(&["EURUSD:QUOTE"], false);
    up.send(&quote("GBPUSD", 2));
    up.send(&quote("EURUSD", 3));
    assert_eq!(client.next(), tick("QUOTE", "EURUSD", 3));

    client.subscribe(&["GBPUSD:QUOTE"], true);
    assert_eq!(client.next(), tick("LAST_QUOTE", "GBPUSD", 2));
    // Subscribing again to what it has sends no second LAST_QUOTE.
    let ack = client.subscribe(&["EURUSD:QUOTE"], true);
    assert_eq!(ack["accepted"], json!(["EURUSD:QUOTE"]));
    up.send(&quote("EURUSD", 4));
    up.send(&quote("GBPUSD", 5));
    assert_eq!(client.next(), tick("QUOTE", "EURUSD", 4));
    assert_eq!(client.next(), tick("QUOTE", "GBPUSD", 5));

    client.send(json!({"action": "unsubscribe", "symbols": ["EURUSD:QUOTE", "NOPE"]}));
    assert_eq!(
        client.next(),
        json!({"type": "sub_ack", "action": "unsubscribe", "accepted": ["EURUSD:QUOTE"],
               "denied": [], "denied_reasons": {}, "invalid": ["NOPE"]})
    );
    up.send(&quote("EURUSD", 6));
    up.send(&quote("GBPUSD", 7));
    assert_eq!(
        client.next(),
        tick("QUOTE", "GBPUSD", 7),
        "nothing of EURUSD after its unsubscribe"
    );

    // What it cannot act on is answered with an error; the session goes on.
    client.send(json!({"action": "subscribe", "symbols": "EURUSD:QUOTE"}));
    let error = client.next();
    assert_eq!(error["type"], "error");
    assert!(
        error["reason"].as_str().unwrap().contains("array"),
        "{error}"
    );
    client.c.ws.send(Message::text("not json")).unwrap();
    assert_eq!(client.next()["type"], "error");

    // Back to EURUSD: its latest quote first (the one it missed), then the stream.
    client.subscribe(&["EURUSD:QUOTE"], true);
    assert_eq!(client.next(), tick("LAST_QUOTE", "EURUSD", 6));
    up.send(&quote("EURUSD", 8));
    assert_eq!(client.next(), tick("QUOTE", "EURUSD", 8));
}

#[test]
fn v1_and_v2_clients_side_by_side_each_get_every_quote_in_order() {
    let up = TestUpstream::start();
    let proxy = TestProxy::start(&up.url(), "", &keys());
    up.expect_subscribe();
    let mut v1: Vec<Client> = (0..2)
        .map(|_| Client::auth(proxy.addr, KEY, None))
        .collect();
    let mut v2: Vec<V2Client> = (0..2)
        .map(|_| {
            let mut c = V2Client::logged_in(proxy.addr, KEY);
            c.subscribe(&["EURUSD:QUOTE", "GBPUSD:QUOTE", "USDJPY:QUOTE"], true);
            c
        })
        .collect();
    proxy.wait_for_clients(4);
    const SYMBOLS: [&str; 3] = ["EURUSD", "GBPUSD", "USDJPY"];
    const N: u64 = 300;
    for n in 1..=N {
        up.send(&quote(SYMBOLS[n as usize % 3], n));
    }
    for c in &mut v1 {
        for n in 1..=N {
            assert_eq!(c.next_text(), quote(SYMBOLS[n as usize % 3], n));
        }
    }
    for c in &mut v2 {
        for n in 1..=N {
            assert_eq!(c.next(), tick("QUOTE", SYMBOLS[n as usize % 3], n));
        }
    }
}

/// Proxy A, on a scriptable upstream, serves v2; proxy B logs in to A with `key` as TraderMade's
/// client would (`provider = tradermade-v2`).
fn chain(key: &str, extra: &str) -> (TestUpstream, TestProxy, TestProxy) {
    let up = TestUpstream::start();
    let a = TestProxy::start(&up.url(), "", &keys());
    up.expect_subscribe();
    let b = TestProxy::start(
        &a.url(),
        &format!(
            "provider = tradermade-v2\nupstream_api_key = {key}\nupstream_backoff_min_ms = 20\n{extra}"
        ),
        &keys(),
    );
    (up, a, b)
}

fn health(proxy: &TestProxy) -> Value {
    serde_json::from_str(&healthz(proxy.addr).1).unwrap()
}

#[test]
fn a_proxy_with_provider_tradermade_v2_can_use_another_proxy_as_its_upstream() {
    let (up, a, b) = chain(KEY, "");
    let a_metrics = a.server().metrics();
    eventually("B logged in to A and subscribed", || {
        a_metrics
            .clients_connected
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1
    });
    let accepted = "fxproxy_upstream_symbol{symbol=\"GBPUSD\",state=\"accepted\"} 1";
    eventually("B's /metrics: A accepted every symbol", || {
        scrape(b.addr).contains(accepted)
    });
    let mut v1 = Client::auth(b.addr, KEY, None);
    let mut v2 = V2Client::logged_in(b.addr, KEY);
    v2.subscribe(&["EURUSD:QUOTE", "USDJPY:QUOTE"], false);
    b.wait_for_clients(2);
    for n in 1..=6 {
        up.send(&quote(["EURUSD", "GBPUSD", "USDJPY"][n as usize % 3], n));
    }
    for n in 1..=6 {
        let symbol = ["EURUSD", "GBPUSD", "USDJPY"][n as usize % 3];
        // B serves A's ticks in the v1 shape, the mid its own (halfway, exactly).
        let got: Value = serde_json::from_str(&v1.next_text()).unwrap();
        assert_eq!(
            (
                got["symbol"].as_str(),
                got["ts"].as_str(),
                got["bid"].to_string(),
                got["ask"].to_string()
            ),
            (
                Some(symbol),
                Some(format!("{}", 1_700_000_000_000u64 + n).as_str()),
                format!("1.{n:05}"),
                format!("1.{:05}", n + 2)
            )
        );
        if symbol != "GBPUSD" {
            assert_eq!(v2.next(), tick("QUOTE", symbol, n));
        }
    }
}

#[test]
fn what_the_upstream_proxy_denies_is_told_along_the_chain() {
    // B logs in to A with a key that may have EURUSD only.
    let (up, _a, b) = chain(OTHER_KEY, "");
    let denied = "fxproxy_upstream_symbol{symbol=\"GBPUSD\",state=\"denied\"} 1";
    eventually("B's /metrics: GBPUSD denied by A", || {
        scrape(b.addr).contains(denied)
    });
    let h = health(&b);
    assert_eq!(h["denied"]["GBPUSD"], "not entitled with this key", "{h}");
    assert_eq!(h["symbol_limit"], 1);
    // B's clients: a v1 client for GBPUSD alone is closed naming it; a v2 client's
    // subscription says why.
    let mut gbp = Client::auth(b.addr, KEY, Some("GBPUSD"));
    assert_eq!(
        gbp.expect_close(),
        (
            1008,
            "Denied upstream: GBPUSD (not entitled with this key)".to_string()
        )
    );
    let mut v2 = V2Client::logged_in(b.addr, KEY);
    let ack = v2.subscribe(&["EURUSD:QUOTE", "GBPUSD:QUOTE"], false);
    assert_eq!(ack["accepted"], json!(["EURUSD:QUOTE"]));
    assert_eq!(
        ack["denied_reasons"]["GBPUSD:QUOTE"],
        "denied by the provider: not entitled with this key"
    );
    b.wait_for_clients(1);
    up.send(&quote("GBPUSD", 1));
    up.send(&quote("EURUSD", 2));
    assert_eq!(v2.next(), tick("QUOTE", "EURUSD", 2));
}

#[test]
fn a_v2_client_whose_only_symbols_are_refused_upstream_is_closed_naming_them() {
    use common::fake_source::{FakeSource, Tick, TraderMadeV2, NOT_ON_PLAN};
    let entitled = std::sync::Arc::new(std::sync::Mutex::new(
        ["EURUSD", "GBPUSD", "USDJPY"].map(String::from).to_vec(),
    ));
    let source = FakeSource::start(TraderMadeV2::entitled(
        "v2-key-123456",
        std::sync::Arc::clone(&entitled),
    ));
    let proxy = TestProxy::start(
        &source.url(),
        "provider = tradermade-v2\nupstream_api_key = v2-key-123456\nupstream_backoff_min_ms = 20\n",
        &keys(),
    );
    source.wait_heard(1, 2);
    let mut gbp = V2Client::logged_in(proxy.addr, KEY);
    gbp.subscribe(&["GBPUSD:QUOTE"], false);
    let mut both = V2Client::logged_in(proxy.addr, KEY);
    both.subscribe(&["GBPUSD:QUOTE", "EURUSD:QUOTE"], false);
    proxy.wait_for_clients(2);
    source.ticks(&[Tick::new("GBPUSD", 1)]);
    assert_eq!(gbp.next()["s"], "GBPUSD");
    assert_eq!(both.next()["s"], "GBPUSD");
    // The plan loses GBPUSD; the proxy hears it when it subscribes again.
    entitled.lock().unwrap().retain(|s| s != "GBPUSD");
    source.close();
    source.wait_heard(2, 2);
    assert_eq!(
        gbp.c.expect_close(),
        (1008, format!("Denied upstream: GBPUSD ({NOT_ON_PLAN})"))
    );
    // The other still has EURUSD; a new subscription to GBPUSD is denied with the reason.
    proxy.wait_for_clients(1);
    let ack = both.subscribe(&["GBPUSD:QUOTE"], false);
    assert_eq!(
        ack["denied_reasons"]["GBPUSD:QUOTE"],
        format!("denied by the provider: {NOT_ON_PLAN}")
    );
    source.ticks(&[Tick::new("EURUSD", 2)]);
    assert_eq!(both.next()["s"], "EURUSD");
}
