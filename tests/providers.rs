//! Every provider the proxy speaks, each against a fake source that speaks that provider's
//! published protocol (tests/common/fake_source.rs): TraderMade's newer feed (built in), and
//! the example templates in providers/ for Massive/Polygon forex, Twelve Data and Tiingo. For
//! each: what the proxy sends and in what order, the quotes its clients get (the v1 shape, or
//! the provider's own frames), and what a refusal does. Where the provider acknowledges a
//! subscription symbol by symbol (TraderMade v2's `sub_ack`, Twelve Data's `subscribe-status`),
//! what it said reaches the log, `/metrics`, `/healthz` and the clients.

mod common;

use common::fake_source::*;
use common::process::{write_keys, Proxy};
use common::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::Message;

const SYMBOLS: [&str; 3] = ["EURUSD", "GBPUSD", "USDJPY"];

fn keys() -> String {
    format!("{KEY}\n{OTHER_KEY} EURUSD\n")
}

/// A template shipped in providers/.
fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("providers")
        .join(name)
}

/// proxy.conf lines for a custom provider described by `template`, with quick reconnects.
fn custom(template: &Path, key: &str) -> String {
    format!(
        "provider = custom\nprovider_template = {}\nupstream_api_key = {key}\nupstream_backoff_min_ms = 20\n",
        template.display()
    )
}

fn ticks(from: u64) -> Vec<Tick> {
    (from..from + 3)
        .map(|n| Tick::new(SYMBOLS[n as usize % 3], n))
        .collect()
}

/// The next `n` text frames a client gets.
fn texts(client: &mut Client, n: usize) -> Vec<String> {
    (0..n).map(|_| client.next_text()).collect()
}

/// Nothing but pings for `d`.
fn no_quote_within(client: &mut Client, d: Duration) {
    let until = Instant::now() + d;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if let Some(Message::Text(t)) = client.next_within(left) {
            panic!("unexpected frame {t}");
        }
    }
}

fn health(proxy: &TestProxy) -> serde_json::Value {
    serde_json::from_str(&healthz(proxy.addr).1).unwrap()
}

/// A refusal is logged, shows in /healthz with what it means, and the next attempt waits the
/// longest back-off (2 s here) rather than the shortest (20 ms).
fn refusal_waits_the_longest_back_off(source: FakeSource, extra: &str, meaning: &str) {
    let proxy = TestProxy::start(
        &source.url(),
        &format!("{extra}upstream_backoff_max_secs = 2\n"),
        &keys(),
    );
    eventually("/healthz to say refused", || {
        health(&proxy)["status"] == "refused"
    });
    let reason = health(&proxy)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains(meaning), "{reason}");
    eventually("a new attempt after the back-off", || {
        source.connections.load(Ordering::SeqCst) == 2
    });
    // Timed by the source, from the refused connection to the next, so that however late
    // this thread looks, it is the proxy's wait that is measured.
    let at = source.connected_at.lock().unwrap().clone();
    let gap = at[1] - at[0];
    assert!(
        gap >= Duration::from_millis(1900),
        "came back {gap:?} after a refusal, not after the longest back-off"
    );
    assert!(source.violations().is_empty(), "{:?}", source.violations());
}

// ---------------------------------------------------------------------------------------------
// TraderMade, newer feed (`provider = tradermade-v2`).

const V2: &str =
    "provider = tradermade-v2\nupstream_api_key = v2-key-123456\nupstream_backoff_min_ms = 20\n";

#[test]
fn tradermade_v2_logs_in_subscribes_and_its_ticks_reach_clients_in_the_v1_shape() {
    let source = FakeSource::start(TraderMadeV2::factory("v2-key-123456"));
    let proxy = TestProxy::start(&source.url(), V2, &keys());
    // As TraderMade's own client: SYMBOL:QUOTE (a bare symbol is invalid to the service).
    assert_eq!(
        source.wait_heard(1, 2),
        [
            r#"{"action":"login","key":"v2-key-123456","fmt":"JSON"}"#,
            r#"{"action":"subscribe","symbols":["EURUSD:QUOTE","GBPUSD:QUOTE","USDJPY:QUOTE"],"send_last":true}"#
        ]
    );
    let mut client = Client::auth(proxy.addr, KEY, None);
    let mut only_eur = Client::auth(proxy.addr, OTHER_KEY, Some("EURUSD"));
    proxy.wait_for_clients(2);
    let first = ticks(1);
    source.ticks(&first);
    let expected: Vec<String> = first.iter().map(Tick::normalized).collect();
    assert_eq!(texts(&mut client, 3), expected);
    assert_eq!(only_eur.next_text(), Tick::new("EURUSD", 3).normalized());

    // The source drops the connection: the proxy logs in and subscribes again, and the last
    // quotes the source sends on subscribing are not passed on a second time.
    source.close();
    assert_eq!(source.wait_heard(2, 2).len(), 2);
    let next = ticks(4);
    source.ticks(&next);
    let expected: Vec<String> = next.iter().map(Tick::normalized).collect();
    assert_eq!(
        texts(&mut client, 3),
        expected,
        "no repeat of the last quotes"
    );
    assert_eq!(only_eur.next_text(), Tick::new("EURUSD", 6).normalized());
    assert!(source.violations().is_empty(), "{:?}", source.violations());
}

#[test]
fn tradermade_v2_last_quotes_newer_than_what_clients_have_are_passed_on() {
    let source = FakeSource::start(TraderMadeV2::factory("v2-key-123456"));
    let proxy = TestProxy::start(&source.url(), V2, &keys());
    source.wait_heard(1, 2);
    let mut client = Client::auth(proxy.addr, KEY, Some("EURUSD"));
    proxy.wait_for_clients(1);
    source.ticks(&[Tick::new("EURUSD", 1)]);
    assert_eq!(client.next_text(), Tick::new("EURUSD", 1).normalized());
    // While the proxy is away the market moves: the source's last quote on the new
    // connection is news, and is passed on.
    source.close();
    source.wait_heard(2, 2);
    let source_side = Tick::new("EURUSD", 2);
    source.raw(&TraderMadeV2::tick("QUOTE", &source_side));
    assert_eq!(client.next_text(), source_side.normalized());
    source.raw(&TraderMadeV2::tick("LAST_QUOTE", &Tick::new("EURUSD", 2)));
    source.raw(&TraderMadeV2::tick("LAST_QUOTE", &Tick::new("EURUSD", 3)));
    assert_eq!(client.next_text(), Tick::new("EURUSD", 3).normalized());
}

#[test]
fn tradermade_v2_with_client_format_upstream_passes_ticks_on_verbatim() {
    let source = FakeSource::start(TraderMadeV2::factory("v2-key-123456"));
    let proxy = TestProxy::start(
        &source.url(),
        &format!("{V2}client_format = upstream\n"),
        &keys(),
    );
    source.wait_heard(1, 2);
    let mut client = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    let first = ticks(1);
    source.ticks(&first);
    let expected: Vec<String> = first
        .iter()
        .map(|t| TraderMadeV2::tick("QUOTE", t))
        .collect();
    assert_eq!(texts(&mut client, 3), expected);
}

#[test]
fn tradermade_v2_login_reject_is_fatal() {
    let source = FakeSource::start(TraderMadeV2::factory("the-right-key"));
    refusal_waits_the_longest_back_off(source, V2, "rejected the login");
}

/// `series` in the proxy's /metrics now, if it is there.
fn series(addr: std::net::SocketAddr, series: &str) -> Option<f64> {
    scrape(addr)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn tradermade_v2_denied_and_invalid_symbols_are_told_in_the_log_metrics_healthz_and_to_clients() {
    // The key may have EURUSD and GBPUSD; XAUUSD is not on its plan; GOLD does not exist.
    let entitled = Arc::new(Mutex::new(vec!["EURUSD".to_string(), "GBPUSD".to_string()]));
    let source = FakeSource::start(TraderMadeV2::entitled("v2-key-123456", entitled));
    let dir = common::process::temp_dir();
    let keys = write_keys(&dir, &[KEY, &format!("{OTHER_KEY} XAUUSD")]);
    let proxy = Proxy::spawn(&format!(
        "upstream_url = {}\n{V2}symbols = EURUSD,XAUUSD,GOLD\nuser_keys_file = {}\n\
         market_hours = always\nstatus_interval_secs = 0\n",
        source.url(),
        keys.display()
    ));
    assert_eq!(
        source.wait_heard(1, 2)[1],
        r#"{"action":"subscribe","symbols":["EURUSD:QUOTE","XAUUSD:QUOTE","GOLD:QUOTE"],"send_last":true}"#
    );
    // One line for the subscription, and the plan's limit against `symbols`.
    assert!(
        proxy.wait_for_log(
            r#"subscription acknowledged: accepted EURUSD; denied XAUUSD ("not available on your plan"); invalid GOLD"#,
            DEADLINE
        ),
        "{}",
        proxy.stderr_text()
    );
    assert!(proxy
        .stderr_text()
        .contains("`symbols` lists 3 symbols, more than the 2 the provider's plan allows"));
    for (symbol, state) in [
        ("EURUSD", "accepted"),
        ("XAUUSD", "denied"),
        ("GOLD", "invalid"),
    ] {
        let name = format!("fxproxy_upstream_symbol{{symbol=\"{symbol}\",state=\"{state}\"}}");
        assert_eq!(series(proxy.addr, &name), Some(1.0), "{name}");
    }
    assert_eq!(
        series(proxy.addr, "fxproxy_upstream_symbol_limit"),
        Some(2.0)
    );

    // EURUSD flows: healthy, and the body names what does not.
    let mut client = Client::auth(proxy.addr, KEY, None);
    eventually("the client registered", || {
        series(proxy.addr, "fxproxy_clients_connected") == Some(1.0)
    });
    source.ticks(&[Tick::new("EURUSD", 1)]);
    assert_eq!(client.next_text(), Tick::new("EURUSD", 1).normalized());
    let (code, body) = healthz(proxy.addr);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, health["status"].as_str()),
        (200, Some("ok")),
        "{body}"
    );
    assert_eq!(health["denied"]["XAUUSD"], NOT_ON_PLAN);
    assert_eq!(health["invalid"], serde_json::json!(["GOLD"]));

    // A client whose only symbol the provider denied is told so, not left on a silent socket.
    let mut gold_only = Client::auth(proxy.addr, OTHER_KEY, None);
    assert_eq!(
        gold_only.expect_close(),
        (1008, format!("Denied upstream: XAUUSD ({NOT_ON_PLAN})"))
    );
    assert!(source.violations().is_empty(), "{:?}", source.violations());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tradermade_v2_a_symbol_denied_after_a_reconnect_closes_the_clients_that_had_only_it() {
    let entitled = Arc::new(Mutex::new(
        ["EURUSD", "GBPUSD", "USDJPY"].map(String::from).to_vec(),
    ));
    let source = FakeSource::start(TraderMadeV2::entitled(
        "v2-key-123456",
        Arc::clone(&entitled),
    ));
    let proxy = TestProxy::start(&source.url(), V2, &keys());
    source.wait_heard(1, 2);
    let mut everything = Client::auth(proxy.addr, KEY, None);
    let mut only_eur = Client::auth(proxy.addr, OTHER_KEY, Some("EURUSD"));
    proxy.wait_for_clients(2);
    source.ticks(&[Tick::new("EURUSD", 1)]);
    assert_eq!(only_eur.next_text(), Tick::new("EURUSD", 1).normalized());
    assert_eq!(everything.next_text(), Tick::new("EURUSD", 1).normalized());
    // The plan loses EURUSD; the proxy learns it when it subscribes again.
    entitled.lock().unwrap().retain(|s| s != "EURUSD");
    source.close();
    source.wait_heard(2, 2);
    assert_eq!(
        only_eur.expect_close(),
        (1008, format!("Denied upstream: EURUSD ({NOT_ON_PLAN})"))
    );
    proxy.wait_for_clients(1);
    source.ticks(&[Tick::new("GBPUSD", 2)]);
    assert_eq!(everything.next_text(), Tick::new("GBPUSD", 2).normalized());
    assert_eq!(
        health(&proxy)["denied"]["EURUSD"],
        NOT_ON_PLAN,
        "the denial shows in /healthz"
    );
}

#[test]
fn tradermade_v2_refusing_every_symbol_is_a_refusal_not_a_reconnect_loop() {
    let source = FakeSource::start(TraderMadeV2::entitled(
        "v2-key-123456",
        Arc::new(Mutex::new(Vec::new())),
    ));
    refusal_waits_the_longest_back_off(source, V2, "accepted none of the symbols");
}

// ---------------------------------------------------------------------------------------------
// Massive (Polygon) forex: providers/polygon-forex.conf.

#[test]
fn polygon_authenticates_before_subscribing_and_each_array_element_is_a_quote() {
    let source = FakeSource::start(Polygon::factory("poly-key-123456"));
    let proxy = TestProxy::start(
        &source.url(),
        &custom(&shipped("polygon-forex.conf"), "poly-key-123456"),
        &keys(),
    );
    assert_eq!(
        source.wait_heard(1, 2),
        [
            r#"{"action":"auth","params":"poly-key-123456"}"#,
            r#"{"action":"subscribe","params":"C.EUR/USD,C.GBP/USD,C.USD/JPY"}"#
        ]
    );
    let mut client = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    // Three quotes in one array frame: three frames for the client.
    let first = ticks(1);
    source.ticks(&first);
    let expected: Vec<String> = first.iter().map(Tick::normalized).collect();
    assert_eq!(texts(&mut client, 3), expected);
    assert!(source.violations().is_empty(), "{:?}", source.violations());
}

#[test]
fn polygon_with_client_format_upstream_passes_each_element_on_verbatim() {
    let source = FakeSource::start(Polygon::factory("poly-key-123456"));
    let proxy = TestProxy::start(
        &source.url(),
        &format!(
            "{}client_format = upstream\n",
            custom(&shipped("polygon-forex.conf"), "poly-key-123456")
        ),
        &keys(),
    );
    source.wait_heard(1, 2);
    let mut client = Client::auth(proxy.addr, KEY, None);
    let mut only_eur = Client::auth(proxy.addr, OTHER_KEY, Some("EURUSD"));
    proxy.wait_for_clients(2);
    let first = ticks(1);
    source.ticks(&first);
    let expected: Vec<String> = first.iter().map(Polygon::quote).collect();
    assert_eq!(texts(&mut client, 3), expected);
    // The proxy still knows each frame's symbol: in the provider's spelling, EUR/USD.
    assert_eq!(
        only_eur.next_text(),
        Polygon::quote(&Tick::new("EURUSD", 3))
    );
}

#[test]
fn polygon_auth_failure_is_fatal() {
    let source = FakeSource::start(Polygon::factory("the-right-key"));
    refusal_waits_the_longest_back_off(
        source,
        &custom(&shipped("polygon-forex.conf"), "a-wrong-key-000"),
        "did not accept the key",
    );
}

// ---------------------------------------------------------------------------------------------
// Twelve Data: providers/twelvedata.conf.

#[test]
fn twelve_data_takes_the_key_in_the_url_gets_heartbeats_and_serves_prices() {
    let text = std::fs::read_to_string(shipped("twelvedata.conf")).unwrap();
    assert!(
        text.contains("\nheartbeat_secs = 10\n"),
        "the documented interval"
    );
    // The same template with a heartbeat every second, so the test need not wait 20 s.
    let dir = temp_dir("twelvedata");
    let template = dir.join("twelvedata.conf");
    std::fs::write(
        &template,
        text.replace("\nheartbeat_secs = 10\n", "\nheartbeat_secs = 1\n"),
    )
    .unwrap();
    let source = FakeSource::start(TwelveData::factory("td-key-123456"));
    // Timed from before the proxy starts: its heartbeats count from its connection, later.
    let started = Instant::now();
    let proxy = TestProxy::start(
        &format!("{}v1/quotes/price", source.url()),
        &custom(&template, "td-key-123456"),
        &keys(),
    );
    let heard = source.wait_heard(1, 1);
    assert_eq!(
        heard[0],
        r#"{"action":"subscribe","params":{"symbols":"EUR/USD,GBP/USD,USD/JPY"}}"#
    );
    assert_eq!(
        source.uris.lock().unwrap()[0],
        "/v1/quotes/price?apikey=td-key-123456"
    );
    let mut client = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    let first = ticks(1);
    source.ticks(&first);
    let expected: Vec<String> = first.iter().map(Tick::normalized).collect();
    assert_eq!(texts(&mut client, 3), expected);
    // A heartbeat a second, each answered by the source (and its answer is no quote).
    let heard = source.wait_heard(1, 4);
    assert!(
        heard[1..4].iter().all(|h| h == r#"{"action":"heartbeat"}"#),
        "{heard:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "three heartbeats in {took:?}"
    );
    no_quote_within(&mut client, Duration::from_millis(300));
    assert!(source.violations().is_empty(), "{:?}", source.violations());
}

#[test]
fn twelve_data_fails_are_told_as_denied_symbols() {
    let source = FakeSource::start(TwelveData::failing("td-key-123456", &["USD/JPY"]));
    let proxy = TestProxy::start(
        &format!("{}v1/quotes/price", source.url()),
        &custom(&shipped("twelvedata.conf"), "td-key-123456"),
        &keys(),
    );
    source.wait_heard(1, 1);
    let denied = "fxproxy_upstream_symbol{symbol=\"USDJPY\",state=\"denied\"}";
    eventually("USDJPY denied in /metrics", || {
        series(proxy.addr, denied) == Some(1.0)
    });
    let accepted = "fxproxy_upstream_symbol{symbol=\"EURUSD\",state=\"accepted\"}";
    assert_eq!(series(proxy.addr, accepted), Some(1.0));
    let mut client = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    source.ticks(&ticks(1));
    assert_eq!(client.next_text(), Tick::new("GBPUSD", 1).normalized());
    assert_eq!(client.next_text(), Tick::new("EURUSD", 3).normalized());
    assert_eq!(health(&proxy)["denied"]["USDJPY"], "");
    // Every symbol failing is a refusal, as a refused key is.
    let none = FakeSource::start(TwelveData::failing(
        "td-key-123456",
        &["EUR/USD", "GBP/USD", "USD/JPY"],
    ));
    let path = format!("{}v1/quotes/price", none.url());
    let extra = custom(&shipped("twelvedata.conf"), "td-key-123456");
    let refused = TestProxy::start(&path, &extra, &keys());
    eventually("/healthz to say refused", || {
        health(&refused)["status"] == "refused"
    });
    let reason = health(&refused)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("accepted none of the symbols"), "{reason}");
}

// ---------------------------------------------------------------------------------------------
// Tiingo forex: providers/tiingo-fx.conf.

#[test]
fn tiingo_subscribes_with_lower_case_tickers_and_reads_positional_quotes() {
    let source = FakeSource::start(Tiingo::factory("tiingo-key-123456"));
    let proxy = TestProxy::start(
        &source.url(),
        &custom(&shipped("tiingo-fx.conf"), "tiingo-key-123456"),
        &keys(),
    );
    let heard: serde_json::Value = serde_json::from_str(&source.wait_heard(1, 1)[0]).unwrap();
    assert_eq!(
        heard,
        serde_json::json!({
            "eventName": "subscribe",
            "authorization": "tiingo-key-123456",
            "eventData": {"thresholdLevel": 5, "tickers": ["eurusd", "gbpusd", "usdjpy"]}
        })
    );
    let mut client = Client::auth(proxy.addr, KEY, None);
    proxy.wait_for_clients(1);
    source.raw(Tiingo::HEARTBEAT);
    let first = ticks(1);
    source.ticks(&first);
    let expected: Vec<String> = first.iter().map(Tick::normalized).collect();
    assert_eq!(texts(&mut client, 3), expected, "the heartbeat is no quote");
    assert!(source.violations().is_empty(), "{:?}", source.violations());
}

#[test]
fn tiingo_error_is_fatal() {
    let source = FakeSource::start(Tiingo::factory("the-right-key"));
    refusal_waits_the_longest_back_off(
        source,
        &custom(&shipped("tiingo-fx.conf"), "a-wrong-key-000"),
        "the provider sent an error",
    );
}

// ---------------------------------------------------------------------------------------------
// The default, TraderMade's first protocol: unchanged in either client format.

#[test]
fn tradermade_frames_stay_byte_identical_in_either_client_format() {
    for format in ["normalized", "upstream"] {
        let up = TestUpstream::start();
        let proxy = TestProxy::start(
            &up.url(),
            &format!("provider = tradermade\nclient_format = {format}\n"),
            &keys(),
        );
        assert_eq!(
            up.expect_subscribe(),
            r#"{"userKey":"","symbol":"EURUSD,GBPUSD,USDJPY"}"#
        );
        let mut client = Client::auth(proxy.addr, KEY, None);
        proxy.wait_for_clients(1);
        // Spacing, field order and number formats are the provider's.
        let odd = r#"{ "symbol" : "GBPUSD", "mid":1.25000, "bid":1.2499,"ask":1.2501, "ts":"1"}"#;
        up.send(odd);
        up.send(&quote("EURUSD", 7));
        assert_eq!(client.next_text(), odd, "{format}");
        assert_eq!(client.next_text(), quote("EURUSD", 7), "{format}");
    }
}

// ---------------------------------------------------------------------------------------------
// Through a Redis backbone: every preset, in either client format, reaches clients fed from
// the stream (an instance with `backbone` set serves its clients only from Redis).

/// Makes a fake source's dialect for each connection.
type Dialects = Box<dyn Fn() -> Box<dyn Dialect> + Send>;

/// A provider as the backbone test drives it.
struct Preset {
    name: &'static str,
    dialect: fn() -> Dialects,
    conf: String,
    /// Appended to the source's URL.
    path: &'static str,
    /// Messages the proxy sends before the source sends quotes.
    says: usize,
    /// The provider's own frame for a tick (`client_format = upstream`).
    frame: fn(&Tick) -> String,
}

/// One provider and client format on a backbone of its own.
struct OnBackbone {
    what: String,
    source: FakeSource,
    says: usize,
    proxy: TestProxy,
    frame: fn(&Tick) -> String,
}

#[test]
fn every_provider_in_either_client_format_through_a_redis_backbone() {
    if !common::cluster::redis_available("providers::backbone") {
        return;
    }
    let redis = common::cluster::RedisServer::start(&temp_dir("redis"));
    let on_redis = |n: usize, format: &str| {
        format!(
            "client_format = {format}\nbackbone = {}\nbackbone_name = p{n}\nmarket_hours = always\n",
            redis.url()
        )
    };
    let presets = [
        Preset {
            name: "tradermade-v2",
            dialect: || Box::new(TraderMadeV2::factory("v2-key-123456")),
            conf: V2.to_string(),
            path: "",
            says: 2,
            frame: |t| TraderMadeV2::tick("QUOTE", t),
        },
        Preset {
            name: "polygon-forex",
            dialect: || Box::new(Polygon::factory("poly-key-123456")),
            conf: custom(&shipped("polygon-forex.conf"), "poly-key-123456"),
            path: "",
            says: 2,
            frame: Polygon::quote,
        },
        Preset {
            name: "twelvedata",
            dialect: || Box::new(TwelveData::factory("td-key-123456")),
            conf: custom(&shipped("twelvedata.conf"), "td-key-123456"),
            path: "v1/quotes/price",
            says: 1,
            frame: TwelveData::price,
        },
        Preset {
            name: "tiingo-fx",
            dialect: || Box::new(Tiingo::factory("tiingo-key-123456")),
            conf: custom(&shipped("tiingo-fx.conf"), "tiingo-key-123456"),
            path: "",
            says: 1,
            frame: Tiingo::quote,
        },
    ];
    // Every instance first, so that they all wait out a new backbone's first lock at once.
    let mut cases = Vec::new();
    for preset in presets {
        for (format, frame) in [
            ("normalized", Tick::normalized as fn(&Tick) -> String),
            ("upstream", preset.frame),
        ] {
            let source = FakeSource::start((preset.dialect)());
            let proxy = TestProxy::start(
                &format!("{}{}", source.url(), preset.path),
                &format!("{}{}", preset.conf, on_redis(cases.len(), format)),
                &keys(),
            );
            cases.push(OnBackbone {
                what: format!("{}, client_format = {format}", preset.name),
                source,
                says: preset.says,
                proxy,
                frame,
            });
        }
    }
    let v1: Vec<(TestUpstream, TestProxy)> = ["normalized", "upstream"]
        .iter()
        .enumerate()
        .map(|(i, format)| {
            let up = TestUpstream::start();
            let proxy = TestProxy::start(
                &up.url(),
                &format!("provider = tradermade\n{}", on_redis(10 + i, format)),
                &keys(),
            );
            (up, proxy)
        })
        .collect();

    for case in &cases {
        // Shown should the case fail.
        println!("through Redis: {}", case.what);
        case.source.wait_heard(1, case.says);
        let mut client = Client::auth(case.proxy.addr, KEY, None);
        case.proxy.wait_for_clients(1);
        let sent = ticks(1);
        case.source.ticks(&sent);
        let expected: Vec<String> = sent.iter().map(case.frame).collect();
        assert_eq!(texts(&mut client, 3), expected, "{}", case.what);
        assert!(case.source.violations().is_empty(), "{}", case.what);
    }
    for (up, proxy) in &v1 {
        up.expect_subscribe();
        let mut client = Client::auth(proxy.addr, KEY, None);
        proxy.wait_for_clients(1);
        let odd = r#"{ "symbol" : "GBPUSD", "mid":1.25000, "bid":1.2499,"ask":1.2501, "ts":"1"}"#;
        up.send(odd);
        up.send(&quote("EURUSD", 7));
        assert_eq!(client.next_text(), odd);
        assert_eq!(client.next_text(), quote("EURUSD", 7));
    }
}
