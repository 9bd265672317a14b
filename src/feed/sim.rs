//! The built-in simulated Forex source behind `fxproxy sim` and `upstream_url = sim`: a WebSocket
//! server that speaks the upstream protocol (greeting, subscribe message, one JSON quote a frame).
//!
//! Each connection gets its own thread, its own random walks and its own pace: `rate` quotes per
//! second in total, dealt round-robin over the symbols it subscribed to.

use crate::base::io::is_ws_timeout;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{HandshakeError, Message, WebSocket};

const STACK_SIZE: usize = 256 * 1024;
/// The longest a connection thread goes without looking at the shutdown flag and reading what
/// the peer sent (pings, closes): it bounds how long `stop` takes and how late a pong is.
const POLL: Duration = Duration::from_millis(200);
/// A peer that opens a socket and never completes the upgrade must not hold a thread forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the peer to answer our close frame; short so `stop` stays within ~1 s.
const CLOSE_WAIT: Duration = Duration::from_millis(300);
/// Behind schedule by more than this (a slow reader held our writes back), the missed quotes are
/// dropped rather than sent in one burst, as a real feed would.
const MAX_LAG: Duration = Duration::from_secs(1);
/// Quotes written before the loop looks at the flag and the socket again, so a very high rate
/// cannot starve either.
const MAX_BATCH: u32 = 1000;
/// Pull toward the start price per step; its half-life is ln 2 / 5e-5 ≈ 14,000 steps (hours at
/// ordinary rates), slow enough to look like a market, strong enough to never drift away.
const REVERSION: f64 = 5e-5;

/// What `fxproxy sim` was asked to serve.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub listen: SocketAddr,
    /// Quotes per second in total per connection; 0 gives a silent feed that still answers pings.
    pub rate: u32,
    /// The symbols on offer; empty means the default set, and any symbol subscribed is streamed.
    pub symbols: Vec<String>,
}

/// A running simulator; dropping it stops it like `stop`.
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    shutdown: AtomicBool,
    /// Quotes per second per connection; [`SimServer::set_rate`] changes it while running.
    rate: AtomicU32,
    allowed: Vec<String>,
}

impl SimServer {
    /// Binds (port 0 allowed) and starts the accept thread `sim-accept`; returns once listening.
    pub fn start(opts: SimOptions) -> io::Result<SimServer> {
        let listener = TcpListener::bind(opts.listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            shutdown: AtomicBool::new(false),
            rate: AtomicU32::new(opts.rate),
            allowed: opts.symbols,
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("sim-accept".to_owned())
            .stack_size(STACK_SIZE)
            .spawn(move || accept_loop(listener, accept_shared))?;
        log::debug!(
            "sim: listening on ws://{addr}/, {} quotes/s per connection",
            opts.rate
        );
        Ok(SimServer {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that sets the pace of every connection, from its next quote on (`sim_rate`
    /// on a reload).
    pub fn rate_control(&self) -> impl Fn(u32) + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move |rate| shared.rate.store(rate, Ordering::Relaxed)
    }

    /// Stops accepting and ends every connection thread (close frame 1001), joining them;
    /// returns within ~1 s.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // accept() cannot be interrupted portably, so wake it with a connection of our own
        // (as tiny_http does); the accept loop sees the flag and drops it.
        match TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1)) {
            Ok(_) => {
                if accept.join().is_err() {
                    log::error!("sim: the accept thread panicked");
                }
            }
            // Joining would hang on an accept that nothing will wake; the connection threads
            // see the flag on their own and close within a second.
            Err(e) => log::warn!("sim: cannot wake the accept thread on {}: {e}", self.addr),
        }
        log::debug!("sim: stopped");
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An unspecified listen address (0.0.0.0, ::) is not something one can connect to.
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 1;
    for incoming in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(stream) => stream,
            Err(e) => {
                // Errors such as EMFILE repeat at once; pausing keeps this from spinning.
                log::warn!("sim: accept failed: {e}; retrying in 100 ms");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        conns.retain(|handle| !handle.is_finished());
        let id = next_id;
        next_id += 1;
        let conn_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("sim-conn-{id}"))
            .stack_size(STACK_SIZE)
            .spawn(move || serve_connection(stream, id, &conn_shared));
        match spawned {
            Ok(handle) => conns.push(handle),
            Err(e) => log::error!("sim: cannot start a thread for connection {id}: {e}"),
        }
    }
    for handle in conns {
        if handle.join().is_err() {
            log::error!("sim: a connection thread panicked");
        }
    }
}

/// Why a connection ended, for its closing log line.
enum End {
    PeerClosed,
    Shutdown,
    Failed(String),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::PeerClosed => f.write_str("closed by the peer"),
            End::Shutdown => f.write_str("simulator shutting down"),
            End::Failed(why) => f.write_str(why),
        }
    }
}

impl From<tungstenite::Error> for End {
    fn from(e: tungstenite::Error) -> End {
        match e {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                End::PeerClosed
            }
            other => End::Failed(other.to_string()),
        }
    }
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> End {
        End::Failed(e.to_string())
    }
}

fn serve_connection(stream: TcpStream, id: u64, shared: &Shared) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "an unknown peer".to_owned(), |a| a.to_string());
    log::info!("sim: connection {id} from {peer} opened");
    let mut rng = Rng::seeded(id);
    let (end, sent) = match handshake(stream, shared) {
        Ok(ws) => {
            let mut conn = Connection {
                ws,
                shared,
                walks: Vec::new(),
                sent: 0,
            };
            let end = conn.run(&mut rng);
            conn.finish(&end);
            (end, conn.sent)
        }
        Err(end) => (end, 0),
    };
    let end = crate::base::logsafe::escaped(&end);
    log::info!("sim: connection {id} from {peer} closed ({end}) after {sent} quotes");
}

fn handshake(stream: TcpStream, shared: &Shared) -> Result<WebSocket<TcpStream>, End> {
    // Timeouts on both directions are what let every blocking call below notice shutdown.
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(POLL))?;
    stream.set_nodelay(true)?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut attempt = tungstenite::accept(stream);
    loop {
        match attempt {
            Ok(ws) => return Ok(ws),
            Err(HandshakeError::Interrupted(mid)) => {
                if shared.shutdown.load(Ordering::SeqCst) {
                    return Err(End::Shutdown);
                }
                if Instant::now() >= deadline {
                    return Err(End::Failed(format!(
                        "no WebSocket upgrade within {} s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    )));
                }
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(e)) => {
                return Err(End::Failed(format!("WebSocket upgrade failed: {e}")))
            }
        }
    }
}

struct Connection<'a> {
    ws: WebSocket<TcpStream>,
    shared: &'a Shared,
    walks: Vec<Walk>,
    sent: u64,
}

impl Connection<'_> {
    fn shutting_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::SeqCst)
    }

    fn run(&mut self, rng: &mut Rng) -> End {
        match self.greet_and_subscribe(rng) {
            Ok(()) => self.stream_quotes(rng),
            Err(end) => end,
        }
    }

    fn greet_and_subscribe(&mut self, rng: &mut Rng) -> Result<(), End> {
        self.write(Message::text("Connected"))?;
        self.flush()?;
        loop {
            if self.shutting_down() {
                return Err(End::Shutdown);
            }
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    if self.subscribe(&text, rng) {
                        return Ok(());
                    }
                }
                Ok(Message::Close(_)) => return Err(End::PeerClosed),
                Ok(_) => {}
                Err(e) if is_ws_timeout(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Applies a subscribe message; false if the text is not one. A later subscribe replaces the
    /// earlier one, keeping the walks of symbols in both so their prices do not jump.
    fn subscribe(&mut self, text: &str, rng: &mut Rng) -> bool {
        let Some(requested) = parse_subscribe(text) else {
            // Only its size: a malformed subscribe message may still carry the provider key.
            log::warn!(
                "sim: ignoring a {}-byte message that is not a JSON subscribe message",
                text.len()
            );
            return false;
        };
        let symbols = resolve_symbols(requested, &self.shared.allowed);
        log::debug!(
            "sim: subscribed to {}",
            crate::base::logsafe::quoted(&symbols.join(","))
        );
        let mut old = std::mem::take(&mut self.walks);
        self.walks = symbols
            .into_iter()
            .map(|s| match old.iter().position(|w| w.symbol == s) {
                Some(i) => old.swap_remove(i),
                None => Walk::new(&s, rng),
            })
            .collect();
        true
    }

    fn stream_quotes(&mut self, rng: &mut Rng) -> End {
        let pace = |rate| match rate {
            0 => None,
            rate => Some(Duration::from_secs(1) / rate),
        };
        let mut rate = self.shared.rate.load(Ordering::Relaxed);
        let mut interval = pace(rate);
        let mut next_due = Instant::now();
        let mut next_read = next_due + POLL;
        let mut turn = 0usize;
        loop {
            if self.shutting_down() {
                return End::Shutdown;
            }
            let now = Instant::now();
            let asked = self.shared.rate.load(Ordering::Relaxed);
            if asked != rate {
                rate = asked;
                interval = pace(rate);
                next_due = now;
            }
            if now >= next_read {
                if let Err(end) = self.read_pass(rng) {
                    return end;
                }
                next_read = now + POLL;
            }
            let due = interval.filter(|_| !self.walks.is_empty() && now >= next_due);
            if let Some(interval) = due {
                if now.duration_since(next_due) > MAX_LAG {
                    next_due = now;
                }
                let mut batch = 0;
                while next_due <= now && batch < MAX_BATCH {
                    turn = (turn + 1) % self.walks.len();
                    let walk = &mut self.walks[turn];
                    let prices = walk.step(rng);
                    let frame = walk.quote_json(prices, now_ms());
                    if let Err(end) = self.write(Message::text(frame)) {
                        return end;
                    }
                    self.sent += 1;
                    // The schedule, not the time the send took, sets the next quote: no drift.
                    next_due += interval;
                    batch += 1;
                }
                if let Err(end) = self.flush() {
                    return end;
                }
                continue;
            }
            let wake = match interval {
                Some(_) if !self.walks.is_empty() => next_due.min(next_read),
                _ => next_read,
            };
            thread::sleep(wake.saturating_duration_since(now));
        }
    }

    /// Reads whatever the peer sent since the last pass without waiting, so that pings get their
    /// pong (tungstenite queues it) and a close is noticed between sends.
    fn read_pass(&mut self, rng: &mut Rng) -> Result<(), End> {
        self.ws.get_mut().set_nonblocking(true)?;
        let result = loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    self.subscribe(&text, rng);
                }
                Ok(Message::Close(_)) => break Err(End::PeerClosed),
                Ok(_) => {}
                Err(e) if is_ws_timeout(&e) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        };
        self.ws.get_mut().set_nonblocking(false)?;
        result
    }

    /// Queues a frame; a write timeout is not an error, the frame stays buffered for `flush`.
    fn write(&mut self, message: Message) -> Result<(), End> {
        match self.ws.write(message) {
            Err(e) if !is_ws_timeout(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// A peer that reads slowly holds us here (the socket's write timeout wakes us to look at
    /// the shutdown flag) — back-pressure, as TCP gives any real feed.
    fn flush(&mut self) -> Result<(), End> {
        loop {
            match self.ws.flush() {
                Ok(()) => return Ok(()),
                Err(e) if is_ws_timeout(&e) => {
                    if self.shutting_down() {
                        return Err(End::Shutdown);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn finish(&mut self, end: &End) {
        match end {
            // tungstenite queued the reply to the peer's close; sending it completes the
            // handshake, and an error here changes nothing.
            End::PeerClosed => {
                let _ = self.ws.flush();
            }
            End::Shutdown => self.close_going_away(),
            End::Failed(_) => {}
        }
    }

    fn close_going_away(&mut self) {
        let frame = CloseFrame {
            code: CloseCode::Away,
            reason: "simulator shutting down".into(),
        };
        // A peer that does not read may leave the close frame unsent; we are leaving either way.
        if let Err(e) = self.ws.close(Some(frame)) {
            if !is_ws_timeout(&e) {
                return;
            }
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(_) => {}
                Err(e) if is_ws_timeout(&e) => {}
                Err(_) => return,
            }
        }
    }
}

/// The symbols a subscribe message asks for: `None` if the text is not a JSON object, an empty
/// list if `symbol` is absent or empty (meaning all on offer). Any `userKey` is accepted.
fn parse_subscribe(text: &str) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let object = value.as_object()?;
    let mut symbols: Vec<String> = Vec::new();
    if let Some(serde_json::Value::String(list)) = object.get("symbol") {
        for symbol in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !symbols.iter().any(|s| s == symbol) {
                symbols.push(symbol.to_owned());
            }
        }
    }
    Some(symbols)
}

/// What a connection streams: the request, less what the server does not offer; everything on
/// offer when nothing was named.
fn resolve_symbols(requested: Vec<String>, allowed: &[String]) -> Vec<String> {
    if requested.is_empty() {
        return if allowed.is_empty() {
            default_symbols()
        } else {
            allowed.to_vec()
        };
    }
    if allowed.is_empty() {
        return requested;
    }
    requested
        .into_iter()
        .filter(|symbol| {
            let offered = allowed.contains(symbol);
            if !offered {
                log::warn!(
                    "sim: ignoring subscription to {}: not among the simulated symbols {}",
                    crate::base::logsafe::quoted(symbol),
                    allowed.join(",")
                );
            }
            offered
        })
        .collect()
}

/// How one pair moves and is quoted.
struct PairSpec {
    symbol: &'static str,
    start: f64,
    decimals: u32,
    pip: f64,
    /// Narrowest and widest spread, in pips.
    spread_pips: (f64, f64),
    /// Standard deviation of one step, relative to the price.
    vol: f64,
}

const fn pair(
    symbol: &'static str,
    start: f64,
    decimals: u32,
    spread_pips: (f64, f64),
    vol: f64,
) -> PairSpec {
    // The pip is the tenth-but-last quoted decimal on every pair here: 0.0001, 0.01 for JPY
    // pairs, 0.1 for gold.
    let pip = match decimals {
        2 => 0.1,
        3 => 0.01,
        _ => 0.0001,
    };
    PairSpec {
        symbol,
        start,
        decimals,
        pip,
        spread_pips,
        vol,
    }
}

const PAIRS: &[PairSpec] = &[
    pair("EURUSD", 1.0850, 5, (0.1, 1.5), 1.5e-5),
    pair("GBPUSD", 1.2700, 5, (0.3, 2.0), 1.7e-5),
    pair("USDJPY", 150.00, 3, (0.2, 1.5), 1.7e-5),
    pair("USDCHF", 0.8800, 5, (0.5, 2.5), 1.6e-5),
    pair("AUDUSD", 0.6600, 5, (0.2, 1.8), 1.9e-5),
    pair("USDCAD", 1.3600, 5, (0.4, 2.2), 1.4e-5),
    pair("NZDUSD", 0.6100, 5, (0.5, 2.5), 2.0e-5),
    pair("EURGBP", 0.8550, 5, (0.4, 2.0), 1.2e-5),
    pair("EURJPY", 162.80, 3, (0.6, 2.5), 1.9e-5),
    pair("GBPJPY", 190.50, 3, (1.0, 3.5), 2.2e-5),
    pair("XAUUSD", 2350.0, 2, (1.5, 4.0), 3.0e-5),
];

/// Symbols nobody described get a plausible-looking walk of their own.
const UNKNOWN: PairSpec = pair("", 1.0, 5, (0.5, 2.0), 1.5e-5);

/// The symbols streamed when a subscription names none and no `--symbols` restricts them.
pub fn default_symbols() -> Vec<String> {
    PAIRS.iter().map(|p| p.symbol.to_owned()).collect()
}

/// One symbol's price: a mean-reverting walk (Ornstein–Uhlenbeck in log space) around its start.
struct Walk {
    symbol: String,
    /// The symbol as a JSON string, escaped once: subscribed names are the peer's text.
    symbol_json: String,
    anchor: f64,
    log_dev: f64,
    vol: f64,
    decimals: u32,
    tick: f64,
    pip_ticks: f64,
    spread_pips: (f64, f64),
}

/// Bid and ask in ticks (units of the last quoted decimal), so they print exactly.
#[derive(Debug, Clone, Copy)]
struct Prices {
    bid: u64,
    ask: u64,
}

impl Walk {
    fn new(symbol: &str, rng: &mut Rng) -> Walk {
        let spec = PAIRS
            .iter()
            .find(|p| p.symbol == symbol)
            .unwrap_or(&UNKNOWN);
        let tick = 10f64.powi(-(spec.decimals as i32));
        // Starting somewhere in the walk's usual range keeps two connections from quoting the
        // very same prices.
        let stationary_sd = spec.vol / (2.0 * REVERSION - REVERSION * REVERSION).sqrt();
        Walk {
            symbol: symbol.to_owned(),
            symbol_json: serde_json::Value::String(symbol.to_owned()).to_string(),
            anchor: spec.start,
            log_dev: stationary_sd * rng.gaussian(),
            vol: spec.vol,
            decimals: spec.decimals,
            tick,
            pip_ticks: (spec.pip / tick).round(),
            spread_pips: spec.spread_pips,
        }
    }

    fn step(&mut self, rng: &mut Rng) -> Prices {
        self.log_dev += -REVERSION * self.log_dev + self.vol * rng.gaussian();
        let mid_ticks = self.anchor * self.log_dev.exp() / self.tick;
        let (narrow, wide) = self.spread_pips;
        let u = rng.unit();
        // Squaring leans the spread toward its narrow end, as on a liquid market most of the time.
        let spread_pips = narrow + (wide - narrow) * u * u;
        let spread = (spread_pips * self.pip_ticks).round().max(1.0) as u64;
        let bid = (mid_ticks - spread as f64 / 2.0).round().max(1.0) as u64;
        Prices {
            bid,
            ask: bid + spread,
        }
    }

    fn quote_json(&self, prices: Prices, ts_ms: u64) -> String {
        format!(
            r#"{{"symbol":{},"ts":"{ts_ms}","bid":{},"ask":{},"mid":{}}}"#,
            self.symbol_json,
            format_ticks(prices.bid, self.decimals),
            format_ticks(prices.ask, self.decimals),
            format_mid(prices, self.decimals),
        )
    }
}

/// `ticks` × 10^-decimals in fixed notation, computed in integers so no float noise shows.
fn format_ticks(ticks: u64, decimals: u32) -> String {
    if decimals == 0 {
        return ticks.to_string();
    }
    let scale = 10u64.pow(decimals);
    let width = decimals as usize;
    format!("{}.{:0width$}", ticks / scale, ticks % scale)
}

/// The exact midpoint: the pair's decimals when bid + ask is even, one more (a half tick) when odd.
fn format_mid(prices: Prices, decimals: u32) -> String {
    let sum = prices.bid + prices.ask;
    if sum % 2 == 0 {
        format_ticks(sum / 2, decimals)
    } else {
        format_ticks(sum * 5, decimals + 1)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// xorshift64* seeded through splitmix64: plenty for a price walk, and no dependency.
struct Rng(u64);

impl Rng {
    fn seeded(stream: u64) -> Rng {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut z = (clock ^ stream.wrapping_mul(0xA076_1D64_78BD_642F))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // xorshift never leaves the all-zero state.
        Rng(z | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1), from the top 53 bits (the best ones of xorshift64*).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal by Box–Muller.
    fn gaussian(&mut self) -> f64 {
        // 1 - unit() lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::TcpStream;
    use tungstenite::stream::MaybeTlsStream;

    type Client = WebSocket<MaybeTlsStream<TcpStream>>;

    fn start(rate: u32, symbols: &[&str]) -> SimServer {
        SimServer::start(SimOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            rate,
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn connect(server: &SimServer) -> Client {
        let url = format!("ws://{}/", server.local_addr());
        let (mut ws, _) = tungstenite::connect(url).unwrap();
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        ws
    }

    fn next_text(ws: &mut Client) -> String {
        loop {
            match ws.read().unwrap() {
                Message::Text(t) => return t.to_string(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    }

    /// Connects, checks the greeting and subscribes with `message`.
    fn subscribed(server: &SimServer, message: &str) -> Client {
        let mut ws = connect(server);
        assert_eq!(next_text(&mut ws), "Connected");
        ws.send(Message::text(message)).unwrap();
        ws
    }

    struct Quote {
        symbol: String,
        ts: u64,
        bid: f64,
        ask: f64,
        mid: f64,
        raw: String,
    }

    fn parse_quote(text: &str) -> Quote {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let o = v.as_object().unwrap();
        let keys: Vec<&str> = o.keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["ask", "bid", "mid", "symbol", "ts"], "{text}");
        Quote {
            symbol: o["symbol"].as_str().unwrap().to_owned(),
            ts: o["ts"].as_str().unwrap().parse().unwrap(),
            bid: o["bid"].as_f64().unwrap(),
            ask: o["ask"].as_f64().unwrap(),
            mid: o["mid"].as_f64().unwrap(),
            raw: text.to_owned(),
        }
    }

    /// The digits after the point of a number field, read from the raw frame.
    fn decimals_of(raw: &str, field: &str) -> usize {
        let start = raw.find(&format!("\"{field}\":")).unwrap() + field.len() + 3;
        let number: String = raw[start..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        number.split('.').nth(1).map_or(0, str::len)
    }

    #[test]
    fn streams_only_the_subscribed_symbols_at_about_the_rate() {
        let server = start(200, &[]);
        // From before the subscription, which starts the pace: a pause of this thread after
        // it would let quotes pile up unread and make the pace look faster than it is.
        let started = Instant::now();
        let mut ws = subscribed(
            &server,
            r#"{"userKey":"anything","symbol":"EURUSD,USDJPY"}"#,
        );
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let q = parse_quote(&next_text(&mut ws));
            assert!(q.bid < q.ask, "{}", q.raw);
            assert!(q.bid <= q.mid && q.mid <= q.ask, "{}", q.raw);
            assert!(q.ts.abs_diff(now_ms()) < 10_000, "{}", q.raw);
            let decimals = if q.symbol == "USDJPY" { 3 } else { 5 };
            assert_eq!(decimals_of(&q.raw, "bid"), decimals, "{}", q.raw);
            assert_eq!(decimals_of(&q.raw, "ask"), decimals, "{}", q.raw);
            match q.symbol.as_str() {
                "EURUSD" => assert!((0.9..1.3).contains(&q.bid), "{}", q.raw),
                "USDJPY" => assert!((120.0..180.0).contains(&q.bid), "{}", q.raw),
                other => panic!("unsubscribed symbol {other}"),
            }
            seen.insert(q.symbol);
        }
        let took = started.elapsed();
        assert_eq!(seen.len(), 2);
        // 100 quotes at 200/s are paced over ~0.5 s: neither a burst nor a crawl.
        assert!(took >= Duration::from_millis(400), "too fast: {took:?}");
        assert!(took < Duration::from_secs(5), "too slow: {took:?}");
        server.stop();
    }

    #[test]
    fn no_symbol_means_every_symbol_on_offer() {
        let server = start(2000, &[]);
        let mut ws = subscribed(&server, r#"{"userKey":"k"}"#);
        let seen: HashSet<String> = (0..100)
            .map(|_| parse_quote(&next_text(&mut ws)).symbol)
            .collect();
        assert_eq!(seen, default_symbols().into_iter().collect());
        server.stop();
    }

    #[test]
    fn a_restricted_simulator_ignores_symbols_it_does_not_offer() {
        let server = start(1000, &["EURUSD", "XAUUSD"]);
        let mut ws = subscribed(&server, r#"{"userKey":"k","symbol":"EURUSD,GBPUSD"}"#);
        for _ in 0..50 {
            assert_eq!(parse_quote(&next_text(&mut ws)).symbol, "EURUSD");
        }
        let mut ws = subscribed(&server, r#"{"userKey":"k","symbol":""}"#);
        let seen: HashSet<String> = (0..50)
            .map(|_| parse_quote(&next_text(&mut ws)).symbol)
            .collect();
        assert_eq!(seen, ["EURUSD", "XAUUSD"].map(String::from).into());
        server.stop();
    }

    #[test]
    fn an_unknown_symbol_walks_around_one() {
        let server = start(1000, &[]);
        let mut ws = subscribed(&server, r#"{"userKey":"k","symbol":"FOO\"BAR"}"#);
        for _ in 0..20 {
            let q = parse_quote(&next_text(&mut ws));
            assert_eq!(q.symbol, "FOO\"BAR");
            assert!((0.9..1.1).contains(&q.mid), "{}", q.raw);
        }
        server.stop();
    }

    #[test]
    fn pings_are_answered_while_streaming() {
        let server = start(50, &[]);
        let mut ws = subscribed(&server, r#"{"userKey":"k","symbol":"EURUSD"}"#);
        ws.send(Message::Ping("are you there".into())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            assert!(Instant::now() < deadline, "no pong");
            if let Message::Pong(payload) = ws.read().unwrap() {
                assert_eq!(&payload[..], b"are you there");
                break;
            }
        }
        server.stop();
    }

    #[test]
    fn stop_closes_open_connections_promptly_with_1001() {
        let server = start(100, &[]);
        let mut streaming = subscribed(&server, r#"{"userKey":"k","symbol":"GBPUSD"}"#);
        next_text(&mut streaming);
        let mut waiting = connect(&server);
        assert_eq!(next_text(&mut waiting), "Connected");
        // One that never upgrades to WebSocket at all.
        let _raw = TcpStream::connect(server.local_addr()).unwrap();
        // A silent feed still runs its loop.
        let silent_server = start(0, &[]);
        let mut silent = subscribed(&silent_server, r#"{"userKey":"k"}"#);
        thread::sleep(Duration::from_millis(100));

        let started = Instant::now();
        server.stop();
        silent_server.stop();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1500), "stop took {took:?}");

        for ws in [&mut streaming, &mut waiting, &mut silent] {
            let code = loop {
                match ws.read() {
                    Ok(Message::Close(Some(frame))) => break frame.code,
                    Ok(_) => {}
                    Err(e) => panic!("no close frame: {e}"),
                }
            };
            assert_eq!(code, CloseCode::Away);
        }
    }

    #[test]
    fn a_client_close_ends_its_connection() {
        let server = start(100, &[]);
        let mut ws = subscribed(&server, r#"{"userKey":"k","symbol":"EURUSD"}"#);
        next_text(&mut ws);
        ws.close(None).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            assert!(Instant::now() < deadline, "close not acknowledged");
            match ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("{e}"),
            }
        }
        server.stop();
    }

    #[test]
    fn walks_stay_in_a_sane_band_over_a_million_steps() {
        let mut rng = Rng::seeded(7);
        let mut symbols = default_symbols();
        symbols.push("ZZZZZZ".to_owned());
        for symbol in symbols {
            let mut walk = Walk::new(&symbol, &mut rng);
            let start = walk.anchor / walk.tick;
            let (mut low, mut high) = (f64::MAX, f64::MIN);
            for _ in 0..1_000_000 {
                let p = walk.step(&mut rng);
                assert!(p.bid < p.ask, "{symbol}");
                let max_spread = walk.spread_pips.1 * walk.pip_ticks + 1.0;
                assert!(((p.ask - p.bid) as f64) <= max_spread, "{symbol}");
                low = low.min(p.bid as f64);
                high = high.max(p.ask as f64);
            }
            // The walks' usual spread is 0.15–0.3 %; 5 % would mean it is not reverting.
            assert!(
                low > start * 0.95 && high < start * 1.05,
                "{symbol}: {low}..{high}"
            );
            // ...and it does move.
            assert!(high - low > start * 0.0005, "{symbol}: {low}..{high}");
        }
    }

    #[test]
    fn quotes_print_exact_decimals() {
        let mut rng = Rng::seeded(1);
        let walk = Walk::new("EURUSD", &mut rng);
        let json = walk.quote_json(
            Prices {
                bid: 109_121,
                ask: 109_123,
            },
            1_700_000_000_123,
        );
        assert_eq!(
            json,
            r#"{"symbol":"EURUSD","ts":"1700000000123","bid":1.09121,"ask":1.09123,"mid":1.09122}"#
        );
        assert_eq!(format_ticks(150_120, 3), "150.120");
        assert_eq!(format_ticks(5, 5), "0.00005");
        assert_eq!(
            format_mid(
                Prices {
                    bid: 235_012,
                    ask: 235_045
                },
                2
            ),
            "2350.285"
        );
    }

    #[test]
    fn subscribe_messages() {
        assert_eq!(
            parse_subscribe(r#"{"userKey":"x","symbol":" EURUSD, GBPUSD,,EURUSD"}"#),
            Some(vec!["EURUSD".to_owned(), "GBPUSD".to_owned()])
        );
        assert_eq!(parse_subscribe(r#"{"userKey":"x"}"#), Some(vec![]));
        assert_eq!(parse_subscribe(r#"{"symbol":""}"#), Some(vec![]));
        assert_eq!(parse_subscribe("hello"), None);
        assert_eq!(parse_subscribe("[1,2]"), None);
        let allowed = ["EURUSD".to_owned()];
        assert_eq!(
            resolve_symbols(vec!["EURUSD".into(), "GBPUSD".into()], &allowed),
            ["EURUSD"]
        );
        assert_eq!(resolve_symbols(vec![], &allowed), ["EURUSD"]);
        assert_eq!(resolve_symbols(vec![], &[]), default_symbols());
        assert_eq!(resolve_symbols(vec!["ABC".into()], &[]), ["ABC"]);
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = Rng::seeded(3);
        let n = 100_000;
        let mean = (0..n).map(|_| rng.gaussian()).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        let var = (0..n).map(|_| rng.gaussian().powi(2)).sum::<f64>() / n as f64;
        assert!((var - 1.0).abs() < 0.03, "{var}");
    }
}
