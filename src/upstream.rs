//! The one connection to the market-data source: connect (TLS for `wss://`), subscribe, read
//! frames and hand them to the distributor, keep the connection honest (pings, staleness
//! while the market is open), and reconnect with exponential back-off when it fails.

use crate::config::Config;
use crate::distributor::RateLimited;
use crate::live::Cached;
use crate::market::{self, Market, MarketState};
use crate::metrics::{Metrics, UpstreamState};
use crate::protocol::{self, Kind, MAX_UPSTREAM_FRAME};
use crate::stop::Stop;
use crossbeam_channel::Sender;
use log::{error, info, warn};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Error as WsError, HandshakeError, Message, Utf8Bytes, WebSocket};

/// How often the reader looks at the clock (pings, staleness, shutdown) while no frame comes.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// A connection that delivered quotes for this long resets the back-off to its start. Long
/// enough that a source which accepts and soon drops us is not hammered; short enough that a
/// provider which cuts every connection after half a minute (some do) is rejoined at once,
/// not after a back-off grown to its maximum.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What the upstream thread needs, taken from the config once.
pub struct Settings {
    pub url: String,
    pub subscribe: String,
    pub connect_timeout: Duration,
    pub ping_every: Duration,
    pub stale_after: Duration,
    /// A silent feed is stale only while this says the market is open.
    pub market: Market,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The running configuration, looked at between frames: a reload changes the timing keys
    /// and the market's hours above (the URL and the subscribe message need a restart).
    pub live: Option<Cached<Config>>,
}

impl Settings {
    /// Takes the timing keys and the market rule of a reloaded configuration; one atomic
    /// load when nothing changed. True when they were taken.
    fn follow(&mut self) -> bool {
        let Some(live) = self.live.as_mut() else {
            return false;
        };
        if !live.refresh() {
            return false;
        }
        let c = live.get();
        self.connect_timeout = c.upstream_connect_timeout;
        self.ping_every = c.upstream_ping;
        self.stale_after = c.upstream_stale;
        self.market = c.market();
        self.backoff_min = c.upstream_backoff_min;
        self.backoff_max = c.upstream_backoff_max;
        true
    }
}

type Socket = WebSocket<MaybeTlsStream<Timed>>;

/// The TCP stream under the upstream WebSocket. Until the handshake is done every read and
/// write counts against one deadline, so `upstream_connect_timeout_secs` bounds the TCP, TLS
/// and WebSocket handshake together: with a timeout per read alone, a source that trickles
/// its answer a byte at a time would hold the proxy in the handshake for ever.
struct Timed {
    tcp: TcpStream,
    /// When the handshake must be over; `None` once it is.
    deadline: Option<Instant>,
    limit: Duration,
}

impl Timed {
    /// Sets the socket's timeouts to what is left before the deadline.
    fn arm(&self) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.too_slow());
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.set_write_timeout(Some(left))
    }

    /// A timeout in the handshake is final: not `WouldBlock`, which tungstenite would take for
    /// a non-blocking socket and report as an interrupted handshake.
    fn explain(&self, e: io::Error) -> io::Error {
        if self.deadline.is_some() && crate::http::is_timeout(&e) {
            self.too_slow()
        } else {
            e
        }
    }

    fn too_slow(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no complete handshake within the connect timeout ({} s)",
                self.limit.as_secs_f64()
            ),
        )
    }

    /// The handshake is done: reads from here wait `read_timeout` at most, so the session
    /// can look at the clock between frames.
    fn handshake_done(&mut self, read_timeout: Duration) {
        self.deadline = None;
        let _ = self.tcp.set_read_timeout(Some(read_timeout));
        let _ = self.tcp.set_write_timeout(Some(self.limit));
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.tcp.read(buf).map_err(|e| self.explain(e))
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.tcp.write(buf).map_err(|e| self.explain(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// What the source sent that is not a quote, logged at most once a minute each. They outlive
/// a connection: a source that sends a notice on every connect is not logged on every connect.
struct Ignored {
    texts: RateLimited,
    binary: RateLimited,
}

/// Why one connection ended.
#[derive(Debug)]
struct Ended {
    why: String,
    refused: bool,
    healthy: bool,
}

/// The upstream thread's body: connects and reconnects until `stop` is set; then closes
/// politely and returns, which drops `frames` and so ends the distributor.
pub fn run(
    mut settings: Settings,
    frames: Sender<Utf8Bytes>,
    metrics: Arc<Metrics>,
    stop: Arc<Stop>,
) {
    let shown = display_url(&settings.url).to_string();
    let mut backoff = Backoff::new(
        settings.backoff_min,
        settings.backoff_max,
        crate::metrics::now_ms(),
    );
    let mut ignored = Ignored {
        texts: RateLimited::new(Duration::from_secs(60)),
        binary: RateLimited::new(Duration::from_secs(60)),
    };
    // Open or closed when last looked at, across connections: each change is logged once.
    let mut market_open = None;
    while !stop.is_set() {
        if settings.follow() {
            backoff.set_bounds(settings.backoff_min, settings.backoff_max);
        }
        let ended = match session(
            &mut settings,
            &frames,
            &metrics,
            &stop,
            &mut ignored,
            &mut market_open,
        ) {
            Ok(()) => return,
            Err(ended) => ended,
        };
        if ended.healthy {
            backoff.reset();
        }
        let delay = if ended.refused {
            error!(
                "upstream {shown} refused the provider key: \"{}\" — the provider's connection limit for this key is reached (another program is using the same key?); waiting {:.1} s before trying again",
                protocol::REFUSAL_TOO_MANY,
                backoff.max.as_secs_f64()
            );
            metrics.set_upstream(UpstreamState::Refused {
                since_ms: metrics.now_ms(),
            });
            backoff.saturate()
        } else {
            let delay = backoff.next_delay();
            warn!(
                "upstream {shown}: {}; reconnecting in {:.1} s",
                ended.why,
                delay.as_secs_f64()
            );
            metrics.set_upstream(UpstreamState::Reconnecting {
                since_ms: metrics.now_ms(),
                reason: ended.why,
            });
            delay
        };
        metrics.upstream_reconnects.fetch_add(1, Ordering::Relaxed);
        if settings.follow() {
            backoff.set_bounds(settings.backoff_min, settings.backoff_max);
        }
        if stop.wait(delay) {
            return;
        }
    }
}

fn session(
    settings: &mut Settings,
    frames: &Sender<Utf8Bytes>,
    metrics: &Metrics,
    stop: &Stop,
    ignored: &mut Ignored,
    market_open: &mut Option<bool>,
) -> Result<(), Ended> {
    let shown = display_url(&settings.url).to_string();
    let fail = |why: String| Ended {
        why,
        refused: false,
        healthy: false,
    };
    let mut ws = connect(&settings.url, settings.connect_timeout).map_err(fail)?;
    metrics.upstream_connects.fetch_add(1, Ordering::Relaxed);
    let connected = Instant::now();
    let connected_ms = metrics.now_ms();
    metrics.set_upstream(UpstreamState::Connected {
        since_ms: connected_ms,
    });
    ws.send(Message::text(settings.subscribe.clone()))
        .map_err(|e| fail(format!("sending the subscribe message failed: {e}")))?;
    info!("upstream {shown}: connected and subscribed");

    let mut last_frame = Instant::now();
    let mut last_ping = Instant::now();
    let mut got_quotes = false;
    let end = |why: String, refused: bool, got_quotes: bool| Ended {
        why,
        refused,
        healthy: got_quotes && connected.elapsed() >= HEALTHY_AFTER,
    };
    loop {
        if stop.is_set() {
            let _ = ws.close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "proxy shutting down".into(),
            }));
            let _ = ws.flush();
            return Ok(());
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                last_frame = Instant::now();
                match protocol::classify(&text) {
                    Kind::MaybeQuote => {
                        got_quotes = true;
                        if frames.send(text).is_err() {
                            return Ok(());
                        }
                    }
                    Kind::RefusedTooMany => {
                        return Err(end("refused".into(), true, false));
                    }
                    Kind::Other if text.as_str() == protocol::GREETING => {}
                    Kind::Other => ignored.texts.note(|n| {
                        info!(
                            "upstream {shown} sent {n} non-quote text(s), latest: {:.200}",
                            text.as_str()
                        )
                    }),
                }
            }
            Ok(Message::Binary(data)) => {
                last_frame = Instant::now();
                ignored.binary.note(|n| {
                    warn!(
                        "upstream {shown} sent {n} binary frame(s), ignored: quotes are text frames (latest: {} bytes)",
                        data.len()
                    )
                });
            }
            Ok(Message::Close(frame)) => {
                // Answer the close, as the protocol asks; tungstenite has queued the reply.
                let _ = ws.flush();
                let why = match frame {
                    Some(f) => format!(
                        "closed by the source (code {}, \"{}\")",
                        u16::from(f.code),
                        f.reason
                    ),
                    None => "closed by the source".to_string(),
                };
                return Err(end(why, false, got_quotes));
            }
            Ok(_) => last_frame = Instant::now(),
            Err(WsError::Io(e)) if crate::http::is_timeout(&e) => {}
            Err(e) => return Err(end(format!("connection failed: {e}"), false, got_quotes)),
        }
        settings.follow();
        let now = Instant::now();
        if now.duration_since(last_ping) >= settings.ping_every {
            last_ping = now;
            if let Err(e) = ws.send(Message::Ping(Default::default())) {
                return Err(end(format!("ping failed: {e}"), false, got_quotes));
            }
        }
        if now.duration_since(last_frame) > settings.ping_every * 2 + CHECK_EVERY {
            return Err(end("no answer to pings".into(), false, got_quotes));
        }
        let now_ms = metrics.now_ms();
        let state = settings.market.state(now_ms);
        if *market_open != Some(state.is_open()) {
            note_market(&settings.market, state, market_open.is_none());
            *market_open = Some(state.is_open());
        }
        if let MarketState::Open {
            since_ms: open_since,
        } = state
        {
            let last_quote = metrics.last_quote_ms.load(Ordering::Relaxed);
            let quiet_since = last_quote.max(connected_ms).max(open_since);
            let quiet = Duration::from_millis(now_ms.saturating_sub(quiet_since));
            if quiet > settings.stale_after {
                return Err(end(
                    format!(
                        "stale: no quote for {} s while the market is open",
                        quiet.as_secs()
                    ),
                    false,
                    got_quotes,
                ));
            }
        }
    }
}

/// Logs the market opening or closing, so a quiet feed at the weekend is explained in the log.
/// At start-up, only a closed market is worth a line.
fn note_market(market: &Market, state: MarketState, starting: bool) {
    match state {
        MarketState::Closed { opens_ms, .. } => info!(
            "market closed (market_hours = {}{}): a silent feed is normal until it opens {}",
            market.hours().name(),
            if market.closed_dates().is_empty() {
                ""
            } else {
                " and market_closed_dates"
            },
            market::iso_utc(opens_ms)
        ),
        MarketState::Open { since_ms } if !starting => info!(
            "market open since {}: a feed silent for upstream_stale_secs is stale again",
            market::iso_utc(since_ms)
        ),
        MarketState::Open { .. } => {}
    }
}

fn connect(url: &str, timeout: Duration) -> Result<Socket, String> {
    let deadline = Instant::now() + timeout;
    let uri: tungstenite::http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("the URL has no host")?;
    let tls = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last_err = format!("{host} resolved to no address");
    let stream = addrs
        .iter()
        .find_map(|addr| match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => Some(s),
            Err(e) => {
                last_err = format!("cannot connect to {addr}: {e}");
                None
            }
        })
        .ok_or(last_err)?;
    let _ = stream.set_nodelay(true);
    let stream = Timed {
        tcp: stream,
        deadline: Some(deadline),
        limit: timeout,
    };
    // Quotes arrive as many small frames; a moderate read buffer suits one busy connection.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_UPSTREAM_FRAME))
        .max_frame_size(Some(MAX_UPSTREAM_FRAME));
    match tungstenite::client_tls_with_config(url, stream, Some(config), None) {
        Ok((mut ws, _response)) => {
            if let Some(stream) = timed(&mut ws) {
                stream.handshake_done(CHECK_EVERY);
            }
            Ok(ws)
        }
        Err(HandshakeError::Failure(e)) => Err(handshake_failure(&e, tls)),
        Err(HandshakeError::Interrupted(_)) => Err("WebSocket handshake interrupted".into()),
    }
}

/// Why the TLS or WebSocket handshake failed, in words that name the cause. rustls does its
/// handshake inside tungstenite's first write and read, so its errors arrive as I/O errors,
/// and an I/O error on a `wss://` connection may have come in either handshake.
fn handshake_failure(e: &WsError, tls: bool) -> String {
    match e {
        WsError::Http(response) => format!(
            "the source refused the WebSocket handshake with HTTP {}",
            response.status()
        ),
        WsError::Tls(e) => format!("TLS handshake failed: {e}"),
        WsError::Io(io) if from_rustls(io) => format!("TLS handshake failed: {io}"),
        e if tls => format!("TLS or WebSocket handshake failed: {e}"),
        e => format!("WebSocket handshake failed: {e}"),
    }
}

fn from_rustls(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

fn timed(ws: &mut Socket) -> Option<&mut Timed> {
    match ws.get_mut() {
        MaybeTlsStream::Plain(s) => Some(s),
        MaybeTlsStream::Rustls(s) => Some(&mut s.sock),
        // tungstenite's enum is non-exhaustive; this build has only the two above.
        _ => None,
    }
}

/// The URL as it may appear in a log: scheme, host, port and path; a query string (where some
/// providers put the key) is left out.
pub fn display_url(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Exponential back-off with jitter: the start (1 s by default) doubling to the maximum, each delay drawn between
/// half and all of the current step so many proxies restarting together spread out.
pub struct Backoff {
    start: Duration,
    max: Duration,
    step: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(start: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            start,
            max,
            step: start,
            seed: seed | 1,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        self.jitter(step)
    }

    /// Jumps to the maximum: hammering a provider that refuses us makes it worse.
    pub fn saturate(&mut self) -> Duration {
        self.step = self.max;
        self.max
    }

    pub fn reset(&mut self) {
        self.step = self.start;
    }

    /// New bounds after a reload; the current step moves within them.
    pub fn set_bounds(&mut self, start: Duration, max: Duration) {
        self.start = start;
        self.max = max;
        self.step = self.step.clamp(start, max);
    }

    fn jitter(&mut self, step: Duration) -> Duration {
        // splitmix64: plenty for spreading reconnects, and no dependency.
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let fraction = 0.5 + (z >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        step.mul_f64(fraction)
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backoff({:?} of {:?})", self.step, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 42);
        let mut steps = Vec::new();
        for _ in 0..10 {
            steps.push(b.next_delay());
        }
        let expected = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60];
        for (got, step) in steps.iter().zip(expected) {
            let step = Duration::from_secs(step);
            assert!(
                *got >= step / 2 && *got <= step,
                "{got:?} for step {step:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
        assert_eq!(b.saturate(), Duration::from_secs(60));
        assert!(b.next_delay() >= Duration::from_secs(30));
    }

    #[test]
    fn urls_in_logs_lose_their_query() {
        assert_eq!(
            display_url("wss://feed.example/stream?api_key=secret"),
            "wss://feed.example/stream"
        );
    }
}
