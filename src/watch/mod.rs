//! The terminal client behind `fxproxy watch URL --key KEY [--symbols A,B]`: it authenticates to
//! a proxy (or any source speaking the same protocol) and prints one aligned line per quote,
//! and one line saying so when quotes stop because the market is closed.
//!
//! How it knows the market is closed: after [`QuietCheck::after`] without a quote it asks the
//! same host's `/healthz` (plain HTTP, for a `ws://` URL), which follows the proxy's own
//! `market_hours` and `market_closed_dates`. Where that cannot tell (a `wss://` URL,
//! `http_endpoints = false`, the proxy's upstream down, not an fxproxy) it applies the
//! standard FX rule, Friday 22:00 to Sunday 21:00 UTC, to its own clock.
//!
//! Behind a company's HTTP proxy it connects through it (`--proxy URL`, or `HTTPS_PROXY` /
//! `HTTP_PROXY` and `NO_PROXY` as curl reads them; `--proxy none` ignores those): see
//! [`route`]. `/healthz` is asked the same way.
//!
//! It stands apart from the proxy's stages: it may import `base` only, as any client could.

use crate::base::io::is_ws_timeout;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::base::clock::Clock;
use crate::base::logsafe;
use crate::base::market::{self, Market, MarketState};
use crate::base::tunnel;
/// How watch reaches the proxy: directly or through an HTTP proxy.
pub use crate::base::tunnel::{ProxyUrl, Route};
use serde_json::Value;
use tungstenite::error::UrlError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How often a quiet connection looks at the stop flag; short enough that Ctrl-C feels instant.
const STOP_POLL: Duration = Duration::from_millis(250);
/// How long to wait for the server to answer our close before leaving anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Close code for a connection that ended without a close frame (RFC 6455 §7.4.1); never sent.
const ABNORMAL_CLOSURE: u16 = 1006;
/// Close code standing for a close frame that carried no code (RFC 6455 §7.4.1).
const NO_STATUS: u16 = 1005;

/// The limit on each step (connect, write, read) of opening a tunnel through a proxy.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(10);

/// The limit on each step (connect, write, read) of asking `/healthz`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of a `/healthz` answer read; the real one is a line of JSON.
const HEALTH_MAX_BYTES: u64 = 16 * 1024;

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// How watch notices that quotes stopped because the market closed.
#[derive(Clone, Debug)]
pub struct QuietCheck {
    /// Read by the fallback FX rule and for the "opens Sun 21:00 UTC" wording.
    pub clock: Clock,
    /// No quote for this long: find out whether the market is closed.
    pub after: Duration,
    /// The market is open (or it cannot be told) and still no quote: ask again this often.
    pub again: Duration,
}

impl Default for QuietCheck {
    fn default() -> QuietCheck {
        QuietCheck {
            clock: Clock::system(),
            after: Duration::from_secs(5),
            again: Duration::from_secs(60),
        }
    }
}

/// What `fxproxy watch` was asked to do.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// `ws://` or `wss://` URL.
    pub url: String,
    pub key: String,
    /// Only these symbols; `None` (or an empty list) means every symbol the key may see.
    pub symbols: Option<Vec<String>>,
    /// For a `wss://` URL: a CA (PEM) trusted besides the web PKI roots bundled in the binary,
    /// e.g. the private CA that signed the proxy's certificate.
    pub ca_file: Option<PathBuf>,
    /// Directly or through an HTTP proxy: see [`route`].
    pub route: Route,
}

/// `--proxy`: what the command line says of an HTTP proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyFlag {
    /// Not given: the environment decides.
    Environment,
    /// `--proxy none`: directly, whatever the environment says.
    Off,
    /// `--proxy URL`.
    Url(ProxyUrl),
}

impl ProxyFlag {
    /// `none` or `http://[USER:PASSWORD@]HOST:PORT`.
    pub fn parse(text: &str) -> Result<ProxyFlag, String> {
        if text.eq_ignore_ascii_case("none") {
            return Ok(ProxyFlag::Off);
        }
        ProxyUrl::parse(text)
            .map(ProxyFlag::Url)
            .map_err(|e| format!("--proxy: {e}, or `none`"))
    }
}

/// The route to the proxy at `url`: as `--proxy` says, or, without it, as `env` (the
/// process's environment) does. An error names the variable that is not a proxy URL.
pub fn route(
    url: &str,
    flag: &ProxyFlag,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Route, String> {
    match flag {
        ProxyFlag::Off => Ok(Route::Direct),
        ProxyFlag::Url(proxy) => Ok(Route::Via {
            proxy: proxy.clone(),
            from: "--proxy",
        }),
        ProxyFlag::Environment => {
            let Ok(uri) = url.parse::<tungstenite::http::Uri>() else {
                // A URL that does not parse is said by the connection attempt.
                return Ok(Route::Direct);
            };
            let tls = uri.scheme_str() == Some("wss");
            let host = uri.host().unwrap_or("");
            tunnel::from_environment(tls, host, env)
                .map_err(|e| format!("{e} (pass --proxy URL, or --proxy none to connect directly)"))
        }
    }
}

/// Why a watch ended, other than by `stop`.
#[non_exhaustive]
#[derive(Debug)]
pub enum WatchError {
    /// No WebSocket connection could be made; the text says to what and why.
    Connect(String),
    /// The server refused the key or the subscription (close 1008 before any quote).
    AuthFailed { reason: String },
    /// The server closed the connection, or it was lost (code 1006).
    Closed { code: u16, reason: String },
    /// Writing the quotes to the output failed.
    Io(io::Error),
}

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchError::Connect(why) => write!(f, "cannot connect: {why}"),
            WatchError::AuthFailed { reason } if reason.is_empty() => {
                f.write_str("authentication failed")
            }
            WatchError::AuthFailed { reason } => {
                write!(f, "authentication failed: {}", logsafe::escaped(reason))
            }
            WatchError::Closed { code, reason } if *code == ABNORMAL_CLOSURE => {
                let reason = logsafe::escaped(reason);
                write!(f, "the connection to the server was lost: {reason}")
            }
            WatchError::Closed { code, reason } => {
                write!(f, "the server closed the connection (code {code}")?;
                if let Some(meaning) = close_code_meaning(*code) {
                    write!(f, ", {meaning}")?;
                }
                f.write_str(")")?;
                if !reason.is_empty() {
                    write!(f, ": {}", logsafe::escaped(reason))?;
                }
                Ok(())
            }
            WatchError::Io(e) => write!(f, "cannot write the quotes: {e}"),
        }
    }
}

impl std::error::Error for WatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WatchError::Io(e) => Some(e),
            _ => None,
        }
    }
}

fn close_code_meaning(code: u16) -> Option<&'static str> {
    match code {
        1000 => Some("normal closure"),
        1001 => Some("going away"),
        1002 => Some("protocol error"),
        1008 => Some("policy violation"),
        1011 => Some("server error"),
        1013 => Some("try again later"),
        NO_STATUS => Some("no code given"),
        _ => None,
    }
}

/// Connects, authenticates and writes one line per quote to `out` until the server closes or
/// `stop` is set. Returns `Ok` only when stopped; a server close is an error the user should see.
pub fn run(opts: &WatchOptions, out: &mut dyn Write, stop: &AtomicBool) -> Result<(), WatchError> {
    run_with(opts, out, stop, &QuietCheck::default())
}

/// As [`run`], noticing a closed market as `check` says.
pub fn run_with(
    opts: &WatchOptions,
    out: &mut dyn Write,
    stop: &AtomicBool,
    check: &QuietCheck,
) -> Result<(), WatchError> {
    let mut ws = connect(&opts.url, opts.ca_file.as_deref(), &opts.route)?;
    ws.send(Message::text(auth_message(opts)))
        .map_err(connection_lost)?;
    let mut quotes_seen = false;
    let mut quiet = Quiet::new(check.after);
    loop {
        if stop.load(Ordering::SeqCst) {
            close_normally(&mut ws);
            return Ok(());
        }
        match ws.read() {
            Ok(Message::Text(text)) => match format_quote(&text, now_ms()) {
                Some(line) => {
                    writeln!(out, "{line}").map_err(WatchError::Io)?;
                    // Quotes are for watching live, not for when a buffer happens to fill.
                    out.flush().map_err(WatchError::Io)?;
                    quotes_seen = true;
                    quiet.quote(check.after);
                }
                None => log::debug!(
                    "watch: skipping a frame that is not a quote: {}",
                    logsafe::quoted(&text)
                ),
            },
            Ok(Message::Close(frame)) => {
                // tungstenite queued our reply; sending it completes the close handshake, and a
                // failure changes nothing about why we are leaving.
                let _ = ws.flush();
                let (code, reason) = frame.map_or((NO_STATUS, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                // Before the first quote, a policy close is the server's answer to our auth
                // message; after it, it is something else (e.g. a slow-consumer policy).
                if code == u16::from(CloseCode::Policy) && !quotes_seen {
                    return Err(WatchError::AuthFailed { reason });
                }
                return Err(WatchError::Closed { code, reason });
            }
            Ok(_) => {}
            Err(e) if is_ws_timeout(&e) => {}
            // A signal cut the read short: nothing was lost (and the stop flag says whether
            // it was the user's Ctrl-C).
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(connection_lost(e)),
        }
        if let Some(line) = quiet.check(&opts.url, &opts.route, check) {
            writeln!(out, "{line}").map_err(WatchError::Io)?;
            out.flush().map_err(WatchError::Io)?;
        }
    }
}

/// Watches for silence: when to ask whether the market is closed, and what was last said.
struct Quiet {
    next_ask: Instant,
    /// The opening last announced; a closure is announced once.
    announced: Option<u64>,
}

impl Quiet {
    fn new(after: Duration) -> Quiet {
        Quiet {
            next_ask: Instant::now() + after,
            announced: None,
        }
    }

    fn quote(&mut self, after: Duration) {
        self.next_ask = Instant::now() + after;
        self.announced = None;
    }

    /// The line to print, if it is time to ask and the market turns out closed.
    fn check(&mut self, url: &str, route: &Route, check: &QuietCheck) -> Option<String> {
        if Instant::now() < self.next_ask {
            return None;
        }
        let opens_ms = match ask_proxy(url, route) {
            Some(answer) => answer,
            None => match Market::fx().state(check.clock.now_ms()) {
                MarketState::Closed { opens_ms, .. } => Some(opens_ms),
                MarketState::Open { .. } => None,
            },
        };
        let Some(opens_ms) = opens_ms else {
            self.next_ask = Instant::now() + check.again;
            return None;
        };
        let now_ms = check.clock.now_ms();
        // Nothing to ask until the opening; then, if quotes still stay away, as after a quote.
        let until_open = Duration::from_millis(opens_ms.saturating_sub(now_ms));
        self.next_ask = Instant::now() + until_open + check.after;
        if self.announced == Some(opens_ms) {
            return None;
        }
        self.announced = Some(opens_ms);
        Some(format!(
            "market closed — opens {}",
            market::human_utc(opens_ms, now_ms)
        ))
    }
}

/// What the proxy at `url` says of the market: `Some(Some(opens_ms))` closed, `Some(None)` open,
/// `None` when it cannot be asked or does not say.
fn ask_proxy(url: &str, route: &Route) -> Option<Option<u64>> {
    let uri: tungstenite::http::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("ws") {
        return None;
    }
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri.authority()?.as_str();
    let mut tcp = match route.proxy() {
        None => dial(host, port, HEALTH_TIMEOUT).ok()?,
        Some(proxy) => dial(&proxy.host, proxy.port, HEALTH_TIMEOUT).ok()?,
    };
    tcp.set_read_timeout(Some(HEALTH_TIMEOUT)).ok()?;
    tcp.set_write_timeout(Some(HEALTH_TIMEOUT)).ok()?;
    if let Some(proxy) = route.proxy() {
        tunnel::establish(&mut tcp, proxy, host, port).ok()?;
    }
    write!(
        tcp,
        "GET /healthz HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    // The proxy closes after answering; a server that keeps the connection open ends the read
    // at the timeout with what it sent.
    let _ = tcp.take(HEALTH_MAX_BYTES).read_to_end(&mut response);
    market_in_health(&String::from_utf8_lossy(&response))
}

/// A connection to `host:port` (an IPv6 address with or without brackets) within `timeout`,
/// to the first of its addresses that accepts one.
fn dial(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for addr in (name, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Reads an HTTP response from `/healthz`: `Some(Some(opens_ms))` when it says the market is
/// closed, `Some(None)` when its status means the proxy judged the market open, `None` otherwise.
pub fn market_in_health(response: &str) -> Option<Option<u64>> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.") {
        return None;
    }
    let health: Value = serde_json::from_str(body.trim()).ok()?;
    match health.get("status")?.as_str()? {
        "market_closed" => Some(Some(health.get("market_opens_ms")?.as_u64()?)),
        // Only given while the proxy's rule says the market is open.
        "ok" | "stale" | "no_quote_yet" => Some(None),
        // The upstream is down: the proxy does not say whether the market is open.
        _ => None,
    }
}

fn connect(url: &str, ca_file: Option<&Path>, route: &Route) -> Result<Socket, WatchError> {
    let connected = match (ca_file, route.proxy()) {
        // `connect` does TLS itself, trusting the bundled web PKI roots.
        (None, None) => tungstenite::connect(url),
        (ca, proxy) => connect_with(url, ca, proxy)?,
    };
    let (mut ws, _response) =
        connected.map_err(|e| WatchError::Connect(describe_connect_error(url, e)))?;
    let tcp = match ws.get_mut() {
        MaybeTlsStream::Plain(stream) => stream,
        MaybeTlsStream::Rustls(tls) => &mut tls.sock,
        _ => {
            return Err(WatchError::Connect(format!(
                "{url}: unsupported stream type"
            )))
        }
    };
    tcp.set_read_timeout(Some(STOP_POLL))
        .map_err(|e| WatchError::Connect(format!("{url}: {e}")))?;
    match route {
        Route::Via { proxy, from } => log::info!(
            "watch: connected to {url} through the HTTP proxy {} (from {from})",
            proxy.shown()
        ),
        _ => log::info!("watch: connected to {url}"),
    }
    Ok(ws)
}

type Connected = Result<(Socket, tungstenite::handshake::client::Response), tungstenite::Error>;

/// As `tungstenite::connect`, with `ca` trusted too for a `wss://` URL, and through `proxy`
/// (a `CONNECT` tunnel, TLS inside it checked against the URL's host) if there is one.
fn connect_with(
    url: &str,
    ca: Option<&Path>,
    proxy: Option<&ProxyUrl>,
) -> Result<Connected, WatchError> {
    let connector = match ca {
        Some(ca) => Some(tungstenite::Connector::Rustls(
            crate::base::tls::client_config(Some(ca), true)
                .map_err(|e| WatchError::Connect(format!("--ca-file {e}")))?,
        )),
        // tungstenite's own TLS: the bundled web PKI roots.
        None => None,
    };
    let uri: tungstenite::http::Uri = url
        .parse()
        .map_err(|e| WatchError::Connect(format!("{url}: {e}")))?;
    let host = uri.host().unwrap_or("");
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    let tcp = match proxy {
        None => {
            let addrs = (host.trim_start_matches('[').trim_end_matches(']'), port)
                .to_socket_addrs()
                .map_err(|e| WatchError::Connect(format!("{url}: {e}")))?;
            let Some(tcp) = addrs.into_iter().find_map(|a| TcpStream::connect(a).ok()) else {
                return Err(WatchError::Connect(format!(
                    "nothing accepted a connection at {url} (refused or unreachable)"
                )));
            };
            tcp
        }
        Some(proxy) => {
            let mut tcp = dial(&proxy.host, proxy.port, TUNNEL_TIMEOUT).map_err(|e| {
                WatchError::Connect(format!(
                    "{url}: cannot reach the proxy {}: {e}",
                    proxy.shown()
                ))
            })?;
            let timeouts = tcp
                .set_read_timeout(Some(TUNNEL_TIMEOUT))
                .and_then(|()| tcp.set_write_timeout(Some(TUNNEL_TIMEOUT)));
            timeouts.map_err(|e| WatchError::Connect(format!("{url}: {e}")))?;
            tunnel::establish(&mut tcp, proxy, host, port)
                .map_err(|e| WatchError::Connect(format!("{url}: {e}")))?;
            tcp
        }
    };
    Ok(
        match tungstenite::client_tls_with_config(url, tcp, None, connector) {
            Ok(done) => Ok(done),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => Err(tungstenite::Error::Io(
                io::Error::new(io::ErrorKind::Interrupted, "handshake interrupted"),
            )),
        },
    )
}

fn describe_connect_error(url: &str, e: tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Url(UrlError::TlsFeatureNotEnabled) => {
            format!("{url}: this build has no TLS support for wss:// URLs; use a ws:// URL")
        }
        tungstenite::Error::Url(UrlError::UnsupportedUrlScheme) => {
            format!("{url}: the URL must start with ws:// or wss://")
        }
        tungstenite::Error::Url(UrlError::UnableToConnect(_)) => {
            format!("nothing accepted a connection at {url} (refused or unreachable)")
        }
        tungstenite::Error::Http(response) => format!(
            "{url}: the server answered HTTP {} instead of upgrading to WebSocket",
            response.status()
        ),
        other => format!("{url}: {other}"),
    }
}

/// A socket error after the connection was made: the server went away without a close frame.
fn connection_lost(e: tungstenite::Error) -> WatchError {
    WatchError::Closed {
        code: ABNORMAL_CLOSURE,
        reason: e.to_string(),
    }
}

/// The client protocol's first message, built with serde_json so any key is escaped properly.
fn auth_message(opts: &WatchOptions) -> String {
    let mut message = serde_json::json!({ "userKey": opts.key });
    let symbols: Vec<&str> = opts
        .symbols
        .iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if !symbols.is_empty() {
        message["symbol"] = Value::from(symbols.join(","));
    }
    message.to_string()
}

/// Says goodbye with 1000 and waits briefly for the server's answer, so it logs a clean close.
fn close_normally(ws: &mut Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "watch stopped".into(),
    };
    if ws.close(Some(frame)).is_err() {
        return;
    }
    let deadline = Instant::now() + CLOSE_WAIT;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(e) if is_ws_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One readable, aligned line for a quote frame, or `None` if the frame is not a quote (not a
/// JSON object with a string `symbol`, such as the greeting `Connected`).
///
/// `EURUSD   bid 1.09121  ask 1.09123  spread  0.2 pips  age    3 ms`
pub fn format_quote(frame: &str, now_ms: u64) -> Option<String> {
    let value: Value = serde_json::from_str(frame).ok()?;
    let quote = value.as_object()?;
    let symbol = quote.get("symbol")?.as_str()?;
    // Printed to a terminal: a symbol from the server must not move its cursor or clear it.
    let shown = logsafe::short(symbol);
    let bid = quote.get("bid").and_then(price);
    let ask = quote.get("ask").and_then(price);
    let (pip, usual_decimals) = pip(symbol);
    // JSON numbers lose trailing zeros (1.09120 arrives as 1.0912), so both prices get at least
    // the pair's usual decimals, and the same decimals, for columns that line up.
    let decimals = [&bid, &ask]
        .iter()
        .filter_map(|p| p.as_ref().map(|p| p.decimals))
        .fold(usual_decimals, usize::max);
    let show = |p: &Option<Price>| match p {
        Some(p) => format!("{:>7.*}", decimals, p.value),
        None => format!("{:>7}", "-"),
    };
    let spread = match (&bid, &ask) {
        (Some(bid), Some(ask)) => format!("{:>4.1}", (ask.value - bid.value) / pip),
        _ => format!("{:>4}", "-"),
    };
    let age = match quote.get("ts").and_then(epoch_ms) {
        Some(ts) => format!("{:>4} ms", now_ms as i128 - ts as i128),
        None => format!("{:>4}", "-"),
    };
    Some(format!(
        "{shown:<8} bid {}  ask {}  spread {spread} pips  age {age}",
        show(&bid),
        show(&ask)
    ))
}

struct Price {
    value: f64,
    decimals: usize,
}

/// Beyond this many decimals a price is float noise, not information.
const MAX_DECIMALS: usize = 8;

/// A price sent as a JSON number or as a string of one, with the decimals it was sent with.
fn price(v: &Value) -> Option<Price> {
    let text = match v {
        Value::Number(n) => n.as_f64()?.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return None,
    };
    let value: f64 = text.parse().ok()?;
    let decimals = text.split_once('.').map_or(0, |(_, frac)| frac.len());
    Some(Price {
        value,
        decimals: decimals.min(MAX_DECIMALS),
    })
}

/// `ts` as epoch milliseconds, sent as a string (TraderMade) or as a number.
fn epoch_ms(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// The pip in price units and the decimals such pairs are quoted with, a tenth of a pip:
/// the conventional 0.01 for yen pairs, 0.1 for gold, 0.0001 otherwise.
fn pip(symbol: &str) -> (f64, usize) {
    let symbol = symbol.to_ascii_uppercase();
    if symbol.contains("JPY") {
        (0.01, 3)
    } else if symbol.contains("XAU") {
        (0.1, 2)
    } else {
        (0.0001, 5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::market::utc_ms as at;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread::{self, JoinHandle};

    const NOW: u64 = 1_700_000_000_126;

    #[test]
    fn formats_a_five_decimal_pair() {
        let line = format_quote(
            r#"{"symbol":"EURUSD","ts":"1700000000123","bid":1.09121,"ask":1.09123,"mid":1.09122}"#,
            NOW,
        );
        assert_eq!(
            line.as_deref(),
            Some("EURUSD   bid 1.09121  ask 1.09123  spread  0.2 pips  age    3 ms")
        );
    }

    #[test]
    fn formats_a_yen_pair_and_gold_with_their_own_pips() {
        let line = format_quote(
            r#"{"symbol":"USDJPY","ts":1700000000000,"bid":150.12,"ask":150.135}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(
            line,
            "USDJPY   bid 150.120  ask 150.135  spread  1.5 pips  age  126 ms"
        );
        let line = format_quote(
            r#"{"symbol":"XAUUSD","ts":"1700000000126","bid":2350.12,"ask":2350.45}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(
            line,
            "XAUUSD   bid 2350.12  ask 2350.45  spread  3.3 pips  age    0 ms"
        );
    }

    #[test]
    fn dropped_trailing_zeros_come_back() {
        let line = format_quote(r#"{"symbol":"EURUSD","bid":1.0837,"ask":1.0838}"#, NOW);
        assert_eq!(
            line.as_deref(),
            Some("EURUSD   bid 1.08370  ask 1.08380  spread  1.0 pips  age    -")
        );
        let line = format_quote(r#"{"symbol":"EURUSD","bid":1.083705,"ask":1.0838}"#, NOW);
        assert_eq!(
            line.as_deref(),
            Some("EURUSD   bid 1.083705  ask 1.083800  spread  1.0 pips  age    -")
        );
    }

    #[test]
    fn missing_fields_show_a_dash() {
        let line = format_quote(r#"{"symbol":"GBPUSD","bid":"1.27001","ask":1.2701}"#, NOW);
        assert_eq!(
            line.as_deref(),
            Some("GBPUSD   bid 1.27001  ask 1.27010  spread  0.9 pips  age    -")
        );
        let line = format_quote(r#"{"symbol":"GBPUSD"}"#, NOW);
        assert_eq!(
            line.as_deref(),
            Some("GBPUSD   bid       -  ask       -  spread    - pips  age    -")
        );
    }

    #[test]
    fn non_quotes_are_none() {
        for frame in [
            "Connected",
            "User Key Used to many times",
            "[]",
            r#"{"bid":1.0}"#,
            r#"{"symbol":7,"bid":1.0}"#,
            "",
        ] {
            assert_eq!(format_quote(frame, NOW), None, "{frame}");
        }
    }

    #[test]
    fn what_the_server_says_cannot_drive_the_terminal() {
        let frame = r#"{"symbol":"EUR\u001b[2J\nUSD","bid":1.0,"ask":1.1}"#;
        let line = format_quote(frame, NOW).unwrap();
        assert!(line.starts_with(r"EUR\u{1b}[2J\nUSD bid "), "{line}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
        let long = format_quote(&frame.replace("EUR", &"E".repeat(5000)), NOW).unwrap();
        assert!(long.len() < 200, "{long}");
        for e in [
            WatchError::AuthFailed {
                reason: "bad\u{1b}]0;title\u{7}".into(),
            },
            WatchError::Closed {
                code: 1008,
                reason: "x\r\n\u{9b}2J".into(),
            },
        ] {
            let shown = e.to_string();
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
    }

    #[test]
    fn auth_message_escapes_the_key_and_joins_symbols() {
        let mut opts = WatchOptions {
            url: String::new(),
            key: r#"a"b\c"#.to_owned(),
            symbols: None,
            ca_file: None,
            route: Route::Direct,
        };
        let parsed: Value = serde_json::from_str(&auth_message(&opts)).unwrap();
        assert_eq!(parsed, serde_json::json!({"userKey": "a\"b\\c"}));
        opts.symbols = Some(vec!["EURUSD".into(), " USDJPY".into(), String::new()]);
        let parsed: Value = serde_json::from_str(&auth_message(&opts)).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"userKey": "a\"b\\c", "symbol": "EURUSD,USDJPY"})
        );
        opts.symbols = Some(vec![]);
        assert!(!auth_message(&opts).contains("symbol"));
    }

    type ServerSide = WebSocket<TcpStream>;

    /// A one-connection WebSocket server on an ephemeral port, running `script`.
    fn serve_once<T: Send + 'static>(
        script: impl FnOnce(&mut ServerSide) -> T + Send + 'static,
    ) -> (String, JoinHandle<T>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut ws = tungstenite::accept(stream).unwrap();
            ws.send(Message::text("Connected")).unwrap();
            script(&mut ws)
        });
        (url, handle)
    }

    fn read_text(ws: &mut ServerSide) -> String {
        match ws.read().unwrap() {
            Message::Text(t) => t.to_string(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    fn close_with(ws: &mut ServerSide, code: CloseCode, reason: &str) {
        ws.close(Some(CloseFrame {
            code,
            reason: reason.to_owned().into(),
        }))
        .unwrap();
        // Until the client's answer or the socket's end, so the close handshake completes.
        while ws.read().is_ok() {}
    }

    fn quote(symbol: &str, bid: &str, ask: &str) -> Message {
        Message::text(format!(
            r#"{{"symbol":"{symbol}","ts":"{}","bid":{bid},"ask":{ask}}}"#,
            now_ms()
        ))
    }

    fn watch(url: String, symbols: Option<Vec<String>>) -> (Result<(), WatchError>, String) {
        let opts = WatchOptions {
            url,
            key: r#"se"cret"#.to_owned(),
            symbols,
            ca_file: None,
            route: Route::Direct,
        };
        let mut out = Vec::new();
        let result = run(&opts, &mut out, &AtomicBool::new(false));
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn prints_a_line_per_quote_until_the_server_closes() {
        let (url, server) = serve_once(|ws| {
            let auth = read_text(ws);
            ws.send(quote("EURUSD", "1.09121", "1.09123")).unwrap();
            ws.send(Message::text("not a quote")).unwrap();
            ws.send(quote("USDJPY", "150.120", "150.135")).unwrap();
            close_with(ws, CloseCode::Away, "proxy shutting down");
            auth
        });
        let (result, out) = watch(url, Some(vec!["EURUSD".into(), "USDJPY".into()]));

        let auth: Value = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert_eq!(
            auth,
            serde_json::json!({"userKey": "se\"cret", "symbol": "EURUSD,USDJPY"})
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].starts_with("EURUSD   bid 1.09121  ask 1.09123  spread  0.2 pips  age "),
            "{out}"
        );
        assert!(
            lines[1].starts_with("USDJPY   bid 150.120  ask 150.135  spread  1.5 pips  age "),
            "{out}"
        );
        match result {
            Err(e @ WatchError::Closed { code: 1001, .. }) => assert_eq!(
                e.to_string(),
                "the server closed the connection (code 1001, going away): proxy shutting down"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_policy_close_before_any_quote_is_an_auth_failure() {
        let (url, server) = serve_once(|ws| {
            let auth = read_text(ws);
            close_with(ws, CloseCode::Policy, "Authentication failed");
            auth
        });
        let (result, out) = watch(url, None);
        let auth: Value = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert_eq!(auth, serde_json::json!({"userKey": "se\"cret"}));
        assert_eq!(out, "");
        match result {
            Err(e @ WatchError::AuthFailed { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "authentication failed: Authentication failed"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_policy_close_after_quotes_is_a_close() {
        let (url, server) = serve_once(|ws| {
            read_text(ws);
            ws.send(quote("EURUSD", "1.09121", "1.09123")).unwrap();
            close_with(ws, CloseCode::Policy, "too slow");
        });
        let (result, _) = watch(url, None);
        server.join().unwrap();
        assert!(
            matches!(&result, Err(WatchError::Closed { code: 1008, reason }) if reason == "too slow"),
            "{result:?}"
        );
    }

    #[test]
    fn a_dropped_connection_is_reported_as_lost() {
        let (url, server) = serve_once(|ws| {
            read_text(ws);
        });
        let (result, _) = watch(url, None);
        server.join().unwrap();
        match result {
            Err(e @ WatchError::Closed { code: 1006, .. }) => {
                assert!(e
                    .to_string()
                    .starts_with("the connection to the server was lost"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stop_ends_a_quiet_watch_promptly_with_a_normal_close() {
        let (url, server) = serve_once(|ws| {
            read_text(ws);
            loop {
                match ws.read() {
                    Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                    Ok(_) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(300));
                stop.store(true, Ordering::SeqCst);
            })
        };
        let opts = WatchOptions {
            url,
            key: "k".to_owned(),
            symbols: None,
            ca_file: None,
            route: Route::Direct,
        };
        let started = Instant::now();
        let result = run(&opts, &mut io::sink(), &stop);
        assert!(result.is_ok(), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        stopper.join().unwrap();
        assert_eq!(server.join().unwrap(), Some(CloseCode::Normal));
    }

    /// A watch that looks for a closed market after 100 ms of silence, on `clock`.
    fn quick_check(clock_ms: u64) -> QuietCheck {
        QuietCheck {
            clock: Clock::starting_at(clock_ms),
            after: Duration::from_millis(100),
            again: Duration::from_millis(100),
        }
    }

    /// A WebSocket server that sends one quote and then, on the same port, answers each
    /// `/healthz` request with `health` until it has been asked `asks` times (10 s at most),
    /// and for `then` more; then closes with 1001. Returns how many times `/healthz` was
    /// asked. Waiting for the asks, not for a set time, keeps a slow host from looking like a
    /// watch that never asked.
    fn quote_then_health(
        health: &'static str,
        asks: usize,
        then: Duration,
    ) -> (String, JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut ws = tungstenite::accept(stream).unwrap();
            ws.send(Message::text("Connected")).unwrap();
            read_text(&mut ws);
            ws.send(quote("EURUSD", "1.09121", "1.09123")).unwrap();
            listener.set_nonblocking(true).unwrap();
            let mut asked = 0;
            let give_up = Instant::now() + Duration::from_secs(10);
            let mut until = None;
            while Instant::now() < until.unwrap_or(give_up) {
                match listener.accept() {
                    Ok((mut http, _)) => {
                        http.set_nonblocking(false).unwrap();
                        http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut head = [0u8; 1024];
                        let n = http.read(&mut head).unwrap();
                        let head = String::from_utf8_lossy(&head[..n]).to_string();
                        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
                        http.write_all(health.as_bytes()).unwrap();
                        asked += 1;
                        if asked == asks {
                            until = Some(Instant::now() + then);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            close_with(&mut ws, CloseCode::Away, "bye");
            asked
        });
        (url, handle)
    }

    fn watch_with(url: String, check: &QuietCheck) -> Vec<String> {
        let opts = WatchOptions {
            url,
            key: "k".to_owned(),
            symbols: None,
            ca_file: None,
            route: Route::Direct,
        };
        let mut out = Vec::new();
        let result = run_with(&opts, &mut out, &AtomicBool::new(false), check);
        assert!(
            matches!(result, Err(WatchError::Closed { code: 1001, .. })),
            "{result:?}"
        );
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    const CLOSED: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n\
        {\"status\":\"market_closed\",\"market_opens_ms\":1796590800000,\"market_opens\":\"2026-12-06T21:00:00Z\",\"last_quote_age_secs\":50400.000,\"clients\":1}\n";
    const NOT_FOUND: &str = "HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nnot found\n";

    #[test]
    fn a_closed_market_is_said_once_as_the_proxy_tells_it() {
        // Asked once, then five quiet periods more to show it does not ask again.
        let (url, server) = quote_then_health(CLOSED, 1, Duration::from_millis(500));
        // Saturday noon; the proxy's answer is what counts.
        let lines = watch_with(url, &quick_check(at("2026-12-05", 12, 0)));
        assert_eq!(
            server.join().unwrap(),
            1,
            "asked once, then not until the opening"
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("EURUSD   bid 1.09121"), "{lines:?}");
        assert_eq!(lines[1], "market closed — opens Sun 21:00 UTC");
    }

    #[test]
    fn without_an_answer_the_standard_fx_rule_decides() {
        // /healthz is not served: Saturday is closed by the FX rule.
        let (url, server) = quote_then_health(NOT_FOUND, 1, Duration::from_millis(500));
        let lines = watch_with(url, &quick_check(at("2026-12-05", 12, 0)));
        assert_eq!(server.join().unwrap(), 1);
        assert_eq!(lines[1..], ["market closed — opens Sun 21:00 UTC"]);

        // On a Wednesday it is open: nothing is said, and watch asks again while it is quiet.
        let (url, server) = quote_then_health(NOT_FOUND, 2, Duration::ZERO);
        let lines = watch_with(url, &quick_check(at("2026-12-09", 12, 0)));
        assert!(server.join().unwrap() >= 2);
        assert_eq!(lines.len(), 1, "{lines:?}");
    }

    #[test]
    fn health_answers_say_open_closed_or_nothing() {
        assert_eq!(market_in_health(CLOSED), Some(Some(1_796_590_800_000)));
        assert_eq!(market_in_health(NOT_FOUND), None);
        let with = |status: &str, code: u16| {
            market_in_health(&format!(
                "HTTP/1.1 {code} X\r\n\r\n{{\"status\":\"{status}\",\"last_quote_age_secs\":null,\"clients\":0}}\n"
            ))
        };
        assert_eq!(with("ok", 200), Some(None));
        assert_eq!(with("stale", 503), Some(None));
        assert_eq!(with("no_quote_yet", 503), Some(None));
        assert_eq!(with("reconnecting", 503), None);
        assert_eq!(with("not_connected", 503), None);
        assert_eq!(market_in_health("garbage"), None);
        assert_eq!(
            ask_proxy("wss://127.0.0.1:1/", &Route::Direct),
            None,
            "no HTTPS asked"
        );
    }

    #[test]
    fn the_proxy_flag_wins_over_the_environment() {
        let env = |name: &str| match name {
            "HTTP_PROXY" => Some("http://env-proxy:3128".to_string()),
            "NO_PROXY" => Some("localhost".to_string()),
            _ => None,
        };
        let flag = |text: &str| ProxyFlag::parse(text).unwrap();
        let url = "ws://fx.example:8765/";
        assert_eq!(route(url, &flag("NONE"), &env), Ok(Route::Direct));
        match route(url, &flag("http://u:p@mine:8080"), &env) {
            Ok(Route::Via { proxy, from }) => {
                assert_eq!((proxy.host.as_str(), from), ("mine", "--proxy"))
            }
            other => panic!("{other:?}"),
        }
        match route(url, &ProxyFlag::Environment, &env) {
            Ok(Route::Via { proxy, from }) => {
                assert_eq!((proxy.host.as_str(), from), ("env-proxy", "HTTP_PROXY"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            route("ws://localhost:8765/", &ProxyFlag::Environment, &env),
            Ok(Route::Excepted { var: "NO_PROXY" })
        );
        assert_eq!(
            route("wss://fx.example/", &ProxyFlag::Environment, &env),
            Ok(Route::Direct),
            "HTTP_PROXY is for ws:// only"
        );
        let bad = |name: &str| (name == "HTTP_PROXY").then(|| "socks5://p:1".to_string());
        let e = route(url, &ProxyFlag::Environment, &bad).unwrap_err();
        assert!(e.starts_with("HTTP_PROXY: expected http://"), "{e}");
        assert!(e.ends_with("or --proxy none to connect directly)"), "{e}");
        let e = ProxyFlag::parse("https://u:secret@p").unwrap_err();
        assert!(
            e.starts_with("--proxy: expected ") && !e.contains("secret"),
            "{e}"
        );
    }

    #[test]
    fn a_proxy_that_is_not_there_is_named() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let opts = WatchOptions {
            url: "ws://fx.example:8765/".to_owned(),
            key: "k".to_owned(),
            symbols: None,
            ca_file: None,
            route: Route::Via {
                proxy: ProxyUrl::parse(&format!("http://u:secret@127.0.0.1:{port}")).unwrap(),
                from: "--proxy",
            },
        };
        let e = run(&opts, &mut Vec::new(), &AtomicBool::new(false))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "cannot connect: ws://fx.example:8765/: cannot reach the proxy http://…@127.0.0.1:{port}: "
            )),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn connect_failures_say_what_was_tried() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        for url in [
            format!("ws://127.0.0.1:{port}/"),
            format!("wss://127.0.0.1:{port}/"),
            format!("http://127.0.0.1:{port}/"),
        ] {
            let (result, _) = watch(url.clone(), None);
            match result {
                Err(e @ WatchError::Connect(_)) => {
                    assert!(e.to_string().contains(&url), "{e}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
