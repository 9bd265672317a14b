//! Fake market-data sources that speak real providers' published protocols (TraderMade's newer
//! feed, Massive/Polygon forex, Twelve Data, Tiingo forex), for the provider templates' tests:
//! each answers the proxy's messages as the provider documents, checks the order it is spoken
//! to in, and turns the test's ticks into that provider's quote frames.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::Message;

/// One price update of a symbol, the same for every provider: bid 1.nnnn1, ask 1.nnnn3 (the
/// last digit never 0, so that a JSON number prints as it was written), at 1_700_000_000 + n
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// In the proxy's spelling: EURUSD.
    pub symbol: &'static str,
    pub n: u64,
}

impl Tick {
    pub fn new(symbol: &'static str, n: u64) -> Tick {
        Tick { symbol, n }
    }

    pub fn bid(&self) -> String {
        format!("1.{:04}1", self.n % 10_000)
    }

    pub fn ask(&self) -> String {
        format!("1.{:04}3", self.n % 10_000)
    }

    pub fn mid(&self) -> String {
        format!("1.{:04}2", self.n % 10_000)
    }

    pub fn ts_ms(&self) -> u64 {
        (1_700_000_000 + self.n) * 1000
    }

    /// What the proxy serves for it with `client_format = normalized`.
    pub fn normalized(&self) -> String {
        format!(
            r#"{{"symbol":"{}","ts":"{}","bid":{},"ask":{},"mid":{}}}"#,
            self.symbol,
            self.ts_ms(),
            self.bid(),
            self.ask(),
            self.mid()
        )
    }

    /// `EUR/USD`.
    pub fn slashed(&self) -> String {
        format!("{}/{}", &self.symbol[..3], &self.symbol[3..])
    }
}

/// `2023-11-14T22:13:20` for epoch milliseconds (whole seconds), UTC.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// How one provider talks. A new one per connection.
pub trait Dialect: Send {
    /// Frames sent as soon as the connection opens; `uri` is what the proxy asked for.
    fn opened(&mut self, _uri: &str) -> Vec<String> {
        Vec::new()
    }
    /// The answer to a message from the proxy; `Err` says the proxy broke the protocol.
    fn heard(&mut self, text: &str) -> Result<Vec<String>, String>;
    /// The frames that carry these ticks, for what this connection subscribed to.
    fn ticks(&mut self, ticks: &[Tick]) -> Vec<String>;
}

enum Cmd {
    Ticks(Vec<Tick>),
    Raw(String),
    Close,
}

/// A handshake's headers: (name in lower case, value), in the order sent.
pub type Headers = Vec<(String, String)>;

/// A fake provider on 127.0.0.1. Connections are served one at a time, newest first.
pub struct FakeSource {
    pub addr: SocketAddr,
    cmds: Arc<Mutex<Option<mpsc::Sender<Cmd>>>>,
    /// Every message the proxy sent, with its connection's number (from 1).
    pub heard: Arc<Mutex<Vec<(usize, String)>>>,
    /// The request URI of each connection.
    pub uris: Arc<Mutex<Vec<String>>>,
    /// The handshake's headers of each connection, names in lower case, in the order sent.
    pub handshakes: Arc<Mutex<Vec<Headers>>>,
    /// Protocol violations the dialect saw.
    pub violations: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<AtomicUsize>,
    /// When each connection was accepted, in order.
    pub connected_at: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl FakeSource {
    pub fn start(dialect: impl Fn() -> Box<dyn Dialect> + Send + 'static) -> FakeSource {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let source = FakeSource {
            addr,
            cmds: Arc::new(Mutex::new(None)),
            heard: Arc::new(Mutex::new(Vec::new())),
            uris: Arc::new(Mutex::new(Vec::new())),
            handshakes: Arc::new(Mutex::new(Vec::new())),
            violations: Arc::new(Mutex::new(Vec::new())),
            connections: Arc::new(AtomicUsize::new(0)),
            connected_at: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (cmds, heard, uris, handshakes, violations, connections, connected_at, stop) = (
            Arc::clone(&source.cmds),
            Arc::clone(&source.heard),
            Arc::clone(&source.uris),
            Arc::clone(&source.handshakes),
            Arc::clone(&source.violations),
            Arc::clone(&source.connections),
            Arc::clone(&source.connected_at),
            Arc::clone(&source.stop),
        );
        thread::Builder::new()
            .name("fake-source".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { return };
                    connected_at.lock().unwrap().push(Instant::now());
                    let number = connections.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut uri = String::new();
                    let mut headers = Vec::new();
                    // tungstenite's own callback type: its error is an HTTP response.
                    #[allow(clippy::result_large_err)]
                    let callback = |req: &Request, resp: Response| {
                        uri = req.uri().to_string();
                        headers = req
                            .headers()
                            .iter()
                            .map(|(n, v)| {
                                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                                (n.as_str().to_string(), v)
                            })
                            .collect();
                        Ok(resp)
                    };
                    let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
                        continue;
                    };
                    uris.lock().unwrap().push(uri.clone());
                    handshakes
                        .lock()
                        .unwrap()
                        .push(std::mem::take(&mut headers));
                    let (tx, rx) = mpsc::channel();
                    *cmds.lock().unwrap() = Some(tx);
                    let mut dialect = dialect();
                    ws.get_mut()
                        .set_read_timeout(Some(Duration::from_millis(5)))
                        .unwrap();
                    for frame in dialect.opened(&uri) {
                        let _ = ws.send(Message::text(frame));
                    }
                    'conn: loop {
                        match rx.recv_timeout(Duration::from_millis(5)) {
                            Ok(Cmd::Ticks(ticks)) => {
                                for frame in dialect.ticks(&ticks) {
                                    if ws.send(Message::text(frame)).is_err() {
                                        break 'conn;
                                    }
                                }
                            }
                            Ok(Cmd::Raw(text)) => {
                                if ws.send(Message::text(text)).is_err() {
                                    break 'conn;
                                }
                            }
                            Ok(Cmd::Close) => {
                                let _ = ws.close(None);
                                let _ = ws.flush();
                                break 'conn;
                            }
                            Err(mpsc::RecvTimeoutError::Timeout) => {}
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                        // Between commands: what the proxy says (and its pings) is answered.
                        loop {
                            match ws.read() {
                                Ok(Message::Text(text)) => {
                                    heard.lock().unwrap().push((number, text.to_string()));
                                    match dialect.heard(&text) {
                                        Ok(replies) => {
                                            for r in replies {
                                                let _ = ws.send(Message::text(r));
                                            }
                                        }
                                        Err(v) => violations.lock().unwrap().push(v),
                                    }
                                }
                                Ok(Message::Close(_)) => break 'conn,
                                Ok(_) => {}
                                Err(e) if super::read_timed_out(&e) => break,
                                Err(_) => break 'conn,
                            }
                        }
                    }
                }
            })
            .unwrap();
        source
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn command(&self, cmd: Cmd) {
        let cmds = self.cmds.lock().unwrap();
        cmds.as_ref().expect("no connection yet").send(cmd).unwrap();
    }

    pub fn ticks(&self, ticks: &[Tick]) {
        self.command(Cmd::Ticks(ticks.to_vec()));
    }

    pub fn raw(&self, text: &str) {
        self.command(Cmd::Raw(text.to_string()));
    }

    /// Closes the current connection.
    pub fn close(&self) {
        self.command(Cmd::Close);
    }

    /// Waits until the proxy has said `n` things on connection `conn`; returns them.
    pub fn wait_heard(&self, conn: usize, n: usize) -> Vec<String> {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let said: Vec<String> = self
                .heard
                .lock()
                .unwrap()
                .iter()
                .filter(|(c, _)| *c == conn)
                .map(|(_, t)| t.clone())
                .collect();
            if said.len() >= n {
                return said;
            }
            assert!(
                Instant::now() < until,
                "connection {conn}: heard only {said:?}; violations: {:?}",
                self.violations.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The values of header `name` (lower case) in connection `conn`'s handshake (from 1).
    pub fn header_values(&self, conn: usize, name: &str) -> Vec<String> {
        let handshakes = self.handshakes.lock().unwrap();
        handshakes
            .get(conn - 1)
            .map(|h| {
                h.iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

impl Drop for FakeSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        *self.cmds.lock().unwrap() = None;
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// TraderMade's streaming protocol version 2, as TraderMade's own client speaks it
/// (github.com/tradermade/go-cli, internal/stream/stream.go) and its documentation describes
/// it: a plain-text greeting, a login answered with `login_ok` (with the plan's
/// `symbol_limit`) or `login_reject`; subscriptions of `SYMBOL:QUOTE` entries answered with a
/// `sub_ack` that sorts them into accepted, denied (with reasons) and invalid, as the real
/// service would: a bare `EURUSD` is invalid, a symbol outside the key's entitlement denied;
/// `send_last` answered with a `LAST_QUOTE` per accepted symbol it has one of; ticks with
/// string prices and volumes and a compact UTC time; `{"type":"error"}` for what it cannot do.
/// Subscriptions end with the connection.
pub struct TraderMadeV2 {
    pub key: String,
    logged_in: bool,
    /// Bare symbols this connection subscribed to.
    symbols: Vec<String>,
    /// The symbols the key may have; shared, so a test can narrow it between connections.
    entitled: Arc<Mutex<Vec<String>>>,
    /// The last tick of each symbol, shared by every connection (for send_last).
    last: Arc<Mutex<HashMap<&'static str, Tick>>>,
}

/// Why the fake denies a symbol outside the key's entitlement.
pub const NOT_ON_PLAN: &str = "not available on your plan";

impl TraderMadeV2 {
    /// A source whose key may have the tests' usual symbols (EURUSD, GBPUSD, USDJPY).
    pub fn factory(key: &str) -> impl Fn() -> Box<dyn Dialect> + Send + 'static {
        TraderMadeV2::entitled(
            key,
            Arc::new(Mutex::new(
                ["EURUSD", "GBPUSD", "USDJPY"].map(String::from).to_vec(),
            )),
        )
    }

    /// A source whose key may have only the symbols in `entitled` (as it is at each login).
    pub fn entitled(
        key: &str,
        entitled: Arc<Mutex<Vec<String>>>,
    ) -> impl Fn() -> Box<dyn Dialect> + Send + 'static {
        let key = key.to_string();
        let last = Arc::new(Mutex::new(HashMap::new()));
        move || {
            Box::new(TraderMadeV2 {
                key: key.clone(),
                logged_in: false,
                symbols: Vec::new(),
                entitled: Arc::clone(&entitled),
                last: Arc::clone(&last),
            }) as Box<dyn Dialect>
        }
    }

    /// A tick as the service writes it (`QUOTE` or `LAST_QUOTE`).
    pub fn tick(kind: &str, t: &Tick) -> String {
        format!(
            r#"{{"t":"{kind}","s":"{}","b":"{}","a":"{}","bv":"100000","av":"100000","ts":"{}"}}"#,
            t.symbol,
            t.bid(),
            t.ask(),
            TraderMadeV2::ts(t.ts_ms())
        )
    }

    /// `20231114-22:13:20.000`: v2's time of a tick, UTC.
    pub fn ts(ms: u64) -> String {
        let date = utc(ms).replace('-', "");
        let (day, time) = date.split_once('T').unwrap();
        format!("{day}-{time}.{:03}", ms % 1000)
    }

    /// Whether the service knows `symbol` at all: here, six capital letters.
    fn exists(symbol: &str) -> bool {
        symbol.len() == 6 && symbol.bytes().all(|b| b.is_ascii_uppercase())
    }

    fn subscribe(&mut self, m: &Value, text: &str) -> Result<Vec<String>, String> {
        if !self.logged_in {
            return Err(format!("subscribe before login_ok: {text}"));
        }
        let Some(entries) = m["symbols"].as_array() else {
            return Err(format!("symbols is not a JSON array: {text}"));
        };
        let entitled = self.entitled.lock().unwrap().clone();
        let (mut accepted, mut denied, mut invalid) = (Vec::new(), Vec::new(), Vec::new());
        let mut reasons = serde_json::Map::new();
        for entry in entries {
            let Some(entry) = entry.as_str() else {
                return Err(format!("a symbol that is not a string: {text}"));
            };
            match entry.strip_suffix(":QUOTE") {
                Some(symbol) if TraderMadeV2::exists(symbol) => {
                    if entitled.iter().any(|e| e == symbol) {
                        accepted.push(entry.to_string());
                        if !self.symbols.iter().any(|s| s == symbol) {
                            self.symbols.push(symbol.to_string());
                        }
                    } else {
                        denied.push(entry.to_string());
                        reasons.insert(entry.to_string(), Value::from(NOT_ON_PLAN));
                    }
                }
                _ => invalid.push(entry.to_string()),
            }
        }
        let mut out = vec![json!({
            "type": "sub_ack",
            "accepted": accepted,
            "denied": denied,
            "denied_reasons": reasons,
            "invalid": invalid
        })
        .to_string()];
        if m["send_last"] == true {
            let last = self.last.lock().unwrap();
            for entry in &accepted {
                let symbol = entry.trim_end_matches(":QUOTE");
                if let Some(t) = last.get(symbol) {
                    out.push(TraderMadeV2::tick("LAST_QUOTE", t));
                }
            }
        }
        Ok(out)
    }
}

impl Dialect for TraderMadeV2 {
    fn opened(&mut self, _uri: &str) -> Vec<String> {
        // go-cli: "The server may send plain-text greetings (e.g. "Connected") - skip them."
        vec!["Connected".into()]
    }

    fn heard(&mut self, text: &str) -> Result<Vec<String>, String> {
        let m = parse(text)?;
        match m["action"].as_str() {
            Some("login") => {
                if m["fmt"] != "JSON" {
                    return Err(format!("login without fmt JSON: {text}"));
                }
                if m["key"] == self.key.as_str() {
                    self.logged_in = true;
                    let limit = self.entitled.lock().unwrap().len();
                    Ok(vec![json!({
                        "type": "login_ok",
                        "symbol_limit": limit,
                        "cfds": false,
                        "trader_ladder": false
                    })
                    .to_string()])
                } else {
                    Ok(vec![
                        r#"{"type":"login_reject","reason":"invalid API key"}"#.into(),
                    ])
                }
            }
            Some("subscribe") => self.subscribe(&m, text),
            _ => Err(format!("unexpected: {text}")),
        }
    }

    fn ticks(&mut self, ticks: &[Tick]) -> Vec<String> {
        let mut last = self.last.lock().unwrap();
        ticks
            .iter()
            .filter(|t| self.symbols.iter().any(|s| s == t.symbol))
            .map(|t| {
                last.insert(t.symbol, *t);
                TraderMadeV2::tick("QUOTE", t)
            })
            .collect()
    }
}

/// Massive (Polygon) forex: status messages on connect and auth, `C.EUR/USD` subscriptions,
/// every message a JSON array.
pub struct Polygon {
    pub key: String,
    authed: bool,
    pairs: Vec<String>,
}

impl Polygon {
    pub fn factory(key: &str) -> impl Fn() -> Box<dyn Dialect> + Send + 'static {
        let key = key.to_string();
        move || {
            Box::new(Polygon {
                key: key.clone(),
                authed: false,
                pairs: Vec::new(),
            }) as Box<dyn Dialect>
        }
    }

    /// One quote event, as the array carries it.
    pub fn quote(t: &Tick) -> String {
        format!(
            r#"{{"ev":"C","p":"{}","x":48,"a":{},"b":{},"t":{}}}"#,
            t.slashed(),
            t.ask(),
            t.bid(),
            t.ts_ms()
        )
    }
}

impl Dialect for Polygon {
    fn opened(&mut self, _uri: &str) -> Vec<String> {
        vec![r#"[{"ev":"status","status":"connected","message":"Connected Successfully"}]"#.into()]
    }

    fn heard(&mut self, text: &str) -> Result<Vec<String>, String> {
        let m = parse(text)?;
        match m["action"].as_str() {
            Some("auth") if m["params"] == self.key.as_str() => {
                self.authed = true;
                Ok(vec![
                    r#"[{"ev":"status","status":"auth_success","message":"authenticated"}]"#.into(),
                ])
            }
            Some("auth") => Ok(vec![
                r#"[{"ev":"status","status":"auth_failed","message":"authentication failed"}]"#
                    .into(),
            ]),
            Some("subscribe") if !self.authed => Err("subscribe before auth_success".into()),
            Some("subscribe") => {
                let params = m["params"].as_str().ok_or("params is not a string")?;
                let mut out = Vec::new();
                for channel in params.split(',') {
                    let pair = channel
                        .strip_prefix("C.")
                        .ok_or_else(|| format!("not a C. channel: {channel}"))?;
                    self.pairs.push(pair.to_string());
                    out.push(format!(
                        r#"[{{"ev":"status","status":"success","message":"subscribed to: {channel}"}}]"#
                    ));
                }
                Ok(out)
            }
            _ => Err(format!("unexpected: {text}")),
        }
    }

    fn ticks(&mut self, ticks: &[Tick]) -> Vec<String> {
        let events: Vec<String> = ticks
            .iter()
            .filter(|t| self.pairs.contains(&t.slashed()))
            .map(Polygon::quote)
            .collect();
        if events.is_empty() {
            Vec::new()
        } else {
            vec![format!("[{}]", events.join(","))]
        }
    }
}

/// Twelve Data: the key in the URL query, a subscribe event with comma-separated symbols,
/// heartbeats answered, price events with a time in seconds.
pub struct TwelveData {
    pub key: String,
    key_ok: bool,
    symbols: Vec<String>,
    /// Symbols (`EUR/USD`) it cannot subscribe: answered in `fails`.
    unavailable: Vec<String>,
}

impl TwelveData {
    pub fn factory(key: &str) -> impl Fn() -> Box<dyn Dialect> + Send + 'static {
        TwelveData::failing(key, &[])
    }

    /// A source that cannot subscribe `unavailable` (`EUR/USD`): they come back in `fails`.
    pub fn failing(
        key: &str,
        unavailable: &[&str],
    ) -> impl Fn() -> Box<dyn Dialect> + Send + 'static {
        let key = key.to_string();
        let unavailable: Vec<String> = unavailable.iter().map(|s| s.to_string()).collect();
        move || {
            Box::new(TwelveData {
                key: key.clone(),
                key_ok: false,
                symbols: Vec::new(),
                unavailable: unavailable.clone(),
            }) as Box<dyn Dialect>
        }
    }

    pub fn price(t: &Tick) -> String {
        format!(
            r#"{{"event":"price","symbol":"{}","currency_base":"Euro","currency_quote":"US Dollar","exchange":"PHYSICAL CURRENCY","type":"Physical Currency","timestamp":{},"price":{},"bid":{},"ask":{}}}"#,
            t.slashed(),
            t.ts_ms() / 1000,
            t.mid(),
            t.bid(),
            t.ask()
        )
    }
}

impl Dialect for TwelveData {
    fn opened(&mut self, uri: &str) -> Vec<String> {
        self.key_ok = uri.ends_with(&format!("/v1/quotes/price?apikey={}", self.key));
        Vec::new()
    }

    fn heard(&mut self, text: &str) -> Result<Vec<String>, String> {
        let m = parse(text)?;
        match m["action"].as_str() {
            Some("heartbeat") => Ok(vec![r#"{"event":"heartbeat","status":"ok"}"#.into()]),
            Some("subscribe") if !self.key_ok => Ok(vec![
                r#"{"status":"error","code":401,"message":"apikey parameter is incorrect or not specified"}"#
                    .into(),
            ]),
            Some("subscribe") => {
                let list = m["params"]["symbols"]
                    .as_str()
                    .ok_or("params.symbols is not a string")?;
                let (fails, ok): (Vec<String>, Vec<String>) = list
                    .split(',')
                    .map(String::from)
                    .partition(|s| self.unavailable.contains(s));
                self.symbols = ok;
                let success: Vec<Value> = self
                    .symbols
                    .iter()
                    .map(|s| json!({"symbol": s, "exchange": "PHYSICAL CURRENCY", "type": "Physical Currency"}))
                    .collect();
                let fails: Vec<Value> = fails.iter().map(|s| json!({ "symbol": s })).collect();
                let status = if success.is_empty() { "error" } else { "ok" };
                Ok(vec![json!({"event":"subscribe-status","status":status,"success":success,"fails":fails}).to_string()])
            }
            _ => Err(format!("unexpected: {text}")),
        }
    }

    fn ticks(&mut self, ticks: &[Tick]) -> Vec<String> {
        ticks
            .iter()
            .filter(|t| self.symbols.contains(&t.slashed()))
            .map(TwelveData::price)
            .collect()
    }
}

/// Tiingo forex: one subscribe event with the key and lower-case tickers; messageType "I"
/// answers it, "H" is a heartbeat, "A" carries a positional quote, "E" an error.
pub struct Tiingo {
    pub key: String,
    tickers: Vec<String>,
}

impl Tiingo {
    pub fn factory(key: &str) -> impl Fn() -> Box<dyn Dialect> + Send + 'static {
        let key = key.to_string();
        move || {
            Box::new(Tiingo {
                key: key.clone(),
                tickers: Vec::new(),
            }) as Box<dyn Dialect>
        }
    }

    pub fn quote(t: &Tick) -> String {
        format!(
            r#"{{"messageType":"A","service":"fx","data":["Q","{}","{}.000000+00:00",1000000.0,{},{},1000000.0,{}]}}"#,
            t.symbol.to_lowercase(),
            utc(t.ts_ms()),
            t.bid(),
            t.mid(),
            t.ask()
        )
    }

    pub const HEARTBEAT: &'static str =
        r#"{"messageType":"H","response":{"code":200,"message":"HeartBeat"}}"#;
}

impl Dialect for Tiingo {
    fn heard(&mut self, text: &str) -> Result<Vec<String>, String> {
        let m = parse(text)?;
        if m["eventName"] != "subscribe" {
            return Err(format!("unexpected: {text}"));
        }
        if m["authorization"] != self.key.as_str() {
            return Ok(vec![
                r#"{"messageType":"E","response":{"code":401,"message":"Invalid token"}}"#.into(),
            ]);
        }
        if m["eventData"]["thresholdLevel"] != 5 {
            return Err(format!("thresholdLevel is not 5: {text}"));
        }
        self.tickers = strings(&m["eventData"]["tickers"]);
        Ok(vec![
            r#"{"messageType":"I","response":{"code":200,"message":"Success"},"data":{"subscriptionId":2563329}}"#
                .into(),
        ])
    }

    fn ticks(&mut self, ticks: &[Tick]) -> Vec<String> {
        ticks
            .iter()
            .filter(|t| self.tickers.contains(&t.symbol.to_lowercase()))
            .map(Tiingo::quote)
            .collect()
    }
}
