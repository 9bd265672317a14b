//! The one connection to the market-data source: connect (TLS for `wss://`), send what the
//! provider's template says to send (waiting for each reply it awaits), read frames and hand
//! the quotes to the distributor, keep the connection honest (pings, a heartbeat message where
//! the provider wants one, staleness while the market is open), and reconnect with
//! exponential back-off when it fails. What a frame is, quote or notice or refusal, is the
//! [`Translator`]'s call; every frame can also go to the recording.

use crate::base::backoff::Backoff;
use crate::base::live::Cached;
use crate::base::logsafe;
use crate::base::logsafe::redacted_key;
use crate::base::market::{self, Market, MarketState};
use crate::base::metrics::{Metrics, UpstreamState};
use crate::base::ratelimit::RateLimited;
use crate::base::stop::Stop;
use crate::base::tls;
use crate::base::tunnel::{self, ProxyUrl};
use crate::config::Config;
use crate::feed::headers::Filled;
use crate::feed::outlet::Outlet;
use crate::feed::protocol::MAX_UPSTREAM_FRAME;
use crate::feed::provider::{Pattern, Provider};
use crate::feed::record::Recorder;
use crate::feed::translate::{Piece, Translator};
use log::{error, info, warn};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Error as WsError, HandshakeError, Message, WebSocket};

/// How often the reader looks at the clock (pings, staleness, shutdown) while no frame comes.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// A connection that delivered quotes for this long resets the back-off to its start. Long
/// enough that a source which accepts and soon drops us is not hammered; short enough that a
/// provider which cuts every connection after half a minute (some do) is rejoined at once,
/// not after a back-off grown to its maximum.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What the upstream thread needs, taken from the config and the provider's template once.
pub struct Settings {
    /// With the key in its query if the provider wants it there (never logged: see
    /// [`display_url`]).
    pub url: String,
    /// The provider key, kept out of what is logged of the source's frames.
    pub key: String,
    /// Sent in order after connecting, each with the reply it waits for before the next;
    /// none when replaying a recording (it holds the replies already).
    pub steps: Vec<(String, Option<Pattern>)>,
    /// How long an awaited reply may take.
    pub reply_timeout: Duration,
    /// A message the provider wants this often.
    pub heartbeat: Option<(String, Duration)>,
    pub translator: Translator,
    pub connect_timeout: Duration,
    pub ping_every: Duration,
    /// No frame at all for this long: the connection is dead.
    pub dead_after: Duration,
    pub stale_after: Duration,
    /// A silent feed is stale only while this says the market is open.
    pub market: Market,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Where every frame is recorded, if `record_file` is set.
    pub recorder: Option<Recorder>,
    /// The roots a `wss://` source is checked against when `upstream_ca_file` is set; `None`:
    /// tungstenite's own, the web PKI roots bundled in the binary.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The HTTP proxy the connection goes through (`CONNECT`), if any: `upstream_proxy` or the
    /// environment's.
    pub proxy: Option<ProxyUrl>,
    /// Added to the WebSocket handshake (the template's and `upstream_header`), the key in
    /// them already; never logged.
    pub headers: Vec<Filled>,
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
        (self.ping_every, self.dead_after) = timing(self.translator.provider(), c);
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
        if self.deadline.is_some() && crate::base::io::is_timeout(&e) {
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
    unusable: RateLimited,
}

/// Why one connection ended.
#[derive(Debug)]
struct Ended {
    why: String,
    /// A fatal refusal: what it means, and what the source said.
    refused: Option<(String, String)>,
    healthy: bool,
}

/// The upstream thread's body: connects and reconnects until `stop` is set; then closes
/// politely and returns, which drops `frames` and so ends the distributor. It connects only
/// while `frames` allows it (behind a backbone: while this instance holds the lock).
pub fn run(
    mut settings: Settings,
    mut frames: impl Outlet,
    metrics: Arc<Metrics>,
    stop: Arc<Stop>,
) {
    let shown = display_url(&settings.url).to_string();
    let mut recorder = settings.recorder.take();
    let mut backoff = Backoff::new(
        settings.backoff_min,
        settings.backoff_max,
        crate::base::clock::now_ms(),
    );
    let minute = || RateLimited::new(Duration::from_secs(60));
    let mut ignored = Ignored {
        texts: minute(),
        binary: minute(),
        unusable: minute(),
    };
    // Open or closed when last looked at, across connections: each change is logged once.
    let mut market_open = None;
    while frames.connect_allowed(&stop) {
        if settings.follow() {
            backoff.set_bounds(settings.backoff_min, settings.backoff_max);
        }
        let ended = match session(
            &mut settings,
            &frames,
            &metrics,
            &stop,
            &mut Extras {
                ignored: &mut ignored,
                market_open: &mut market_open,
                recorder: &mut recorder,
            },
        ) {
            Ok(()) => return,
            Err(ended) => ended,
        };
        if ended.healthy {
            backoff.reset();
        }
        let delay = if let Some((reason, said)) = ended.refused {
            error!(
                "upstream {shown} refused the provider key: {} — {reason}; waiting {:.1} s before trying again",
                logsafe::quoted(&sanitized(&said, &settings.key)),
                backoff.max().as_secs_f64()
            );
            metrics.set_upstream(UpstreamState::Refused {
                since_ms: metrics.now_ms(),
                reason,
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

/// What a session keeps across connections.
struct Extras<'a> {
    ignored: &'a mut Ignored,
    market_open: &'a mut Option<bool>,
    recorder: &'a mut Option<Recorder>,
}

/// The messages sent after connecting, and the one whose reply is awaited.
struct Init<'a> {
    steps: &'a [(String, Option<Pattern>)],
    next: usize,
    /// The step whose reply is awaited, and since when.
    awaiting: Option<(usize, Instant)>,
}

impl Init<'_> {
    fn pattern(&self) -> Option<&Pattern> {
        self.awaiting.and_then(|(i, _)| self.steps[i].1.as_ref())
    }

    fn done(&self) -> bool {
        self.awaiting.is_none() && self.next == self.steps.len()
    }

    /// Sends the next messages up to and including one that awaits a reply.
    fn send(&mut self, ws: &mut Socket) -> Result<(), String> {
        while self.awaiting.is_none() && self.next < self.steps.len() {
            let (text, expect) = &self.steps[self.next];
            ws.send(Message::text(text.clone())).map_err(|e| {
                format!(
                    "sending message {} of {} failed: {e}",
                    self.next + 1,
                    self.steps.len()
                )
            })?;
            if expect.is_some() {
                self.awaiting = Some((self.next, Instant::now()));
            }
            self.next += 1;
        }
        Ok(())
    }
}

fn session(
    settings: &mut Settings,
    frames: &impl Outlet,
    metrics: &Metrics,
    stop: &Stop,
    extras: &mut Extras,
) -> Result<(), Ended> {
    let shown = display_url(&settings.url).to_string();
    // What the source said and what errors repeat of it is escaped once, here: the reason
    // goes to the log, the status line and /healthz.
    let fail = |why: String| Ended {
        why: logsafe::escaped(&why).to_string(),
        refused: None,
        healthy: false,
    };
    let mut ws = connect(settings).map_err(fail)?;
    metrics.upstream_connects.fetch_add(1, Ordering::Relaxed);
    let connected = Instant::now();
    let connected_ms = metrics.now_ms();
    metrics.set_upstream(UpstreamState::Connected {
        since_ms: connected_ms,
    });
    // The steps are copied: the settings follow a reload while this connection lasts.
    let steps = settings.steps.clone();
    let mut init = Init {
        steps: &steps,
        next: 0,
        awaiting: None,
    };
    init.send(&mut ws).map_err(fail)?;
    let mut announced = false;
    let mut announce = |init: &Init| {
        if init.done() && !std::mem::replace(&mut announced, true) {
            if init.steps.is_empty() {
                info!("upstream {shown}: connected");
            } else {
                info!("upstream {shown}: connected and subscribed");
            }
        }
    };
    announce(&init);

    let mut last_frame = Instant::now();
    let mut last_ping = Instant::now();
    let mut last_heartbeat = Instant::now();
    let mut got_quotes = false;
    let mut pieces = Vec::new();
    let end = |why: String, got_quotes: bool| Ended {
        why: logsafe::escaped(&why).to_string(),
        refused: None,
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
        if !frames.still_allowed() {
            let _ = ws.close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "another instance holds the connection now".into(),
            }));
            let _ = ws.flush();
            return Err(end(
                "closed: this instance no longer holds the backbone lock".into(),
                got_quotes,
            ));
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                last_frame = Instant::now();
                let now_ms = metrics.now_ms();
                if let Some(recorder) = extras.recorder.as_mut() {
                    recorder.record(now_ms, &text);
                }
                settings
                    .translator
                    .read(text, now_ms, init.pattern(), &mut pieces);
                for piece in pieces.drain(..) {
                    match piece {
                        Piece::Quote(frame) => {
                            got_quotes = true;
                            if frames.send(frame).is_err() {
                                return Ok(());
                            }
                        }
                        Piece::Reply => {
                            init.awaiting = None;
                            init.send(&mut ws).map_err(|why| end(why, got_quotes))?;
                            announce(&init);
                        }
                        Piece::Refused { reason, text } => {
                            return Err(Ended {
                                why: "refused".into(),
                                refused: Some((reason, text)),
                                healthy: false,
                            });
                        }
                        Piece::Ignored => {}
                        Piece::Unusable(why) => extras.ignored.unusable.note(|n| {
                            warn!(
                                "upstream {shown} sent {n} quote(s) that cannot be used, latest: {}",
                                logsafe::quoted(&sanitized(&why, &settings.key))
                            )
                        }),
                        Piece::Other(text) => extras.ignored.texts.note(|n| {
                            info!(
                                "upstream {shown} sent {n} non-quote text(s), latest: {}",
                                logsafe::quoted(&sanitized(&text, &settings.key))
                            )
                        }),
                    }
                }
            }
            Ok(Message::Binary(data)) => {
                last_frame = Instant::now();
                extras.ignored.binary.note(|n| {
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
                        "closed by the source (code {}, {})",
                        u16::from(f.code),
                        logsafe::quoted(&f.reason)
                    ),
                    None => "closed by the source".to_string(),
                };
                return Err(end(why, got_quotes));
            }
            Ok(_) => last_frame = Instant::now(),
            Err(WsError::Io(e)) if crate::base::io::is_timeout(&e) => {}
            Err(e) => return Err(end(format!("connection failed: {e}"), got_quotes)),
        }
        settings.follow();
        let now = Instant::now();
        if let Some((i, since)) = init.awaiting {
            if now.duration_since(since) > settings.reply_timeout {
                let pattern = init.pattern().map(|p| p.to_string()).unwrap_or_default();
                return Err(end(
                    format!(
                        "no reply matching `{pattern}` to message {} within {} s",
                        i + 1,
                        settings.reply_timeout.as_secs()
                    ),
                    got_quotes,
                ));
            }
        }
        if let Some((text, every)) = &settings.heartbeat {
            if now.duration_since(last_heartbeat) >= *every {
                last_heartbeat = now;
                if let Err(e) = ws.send(Message::text(text.clone())) {
                    return Err(end(
                        format!("sending the heartbeat failed: {e}"),
                        got_quotes,
                    ));
                }
            }
        }
        if now.duration_since(last_ping) >= settings.ping_every {
            last_ping = now;
            if let Err(e) = ws.send(Message::Ping(Default::default())) {
                return Err(end(format!("ping failed: {e}"), got_quotes));
            }
        }
        if now.duration_since(last_frame) > settings.dead_after {
            return Err(end("no answer to pings".into(), got_quotes));
        }
        let now_ms = metrics.now_ms();
        let state = settings.market.state(now_ms);
        if *extras.market_open != Some(state.is_open()) {
            note_market(&settings.market, state, extras.market_open.is_none());
            *extras.market_open = Some(state.is_open());
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
                    got_quotes,
                ));
            }
        }
    }
}

/// What the source said, fit for the log: the provider key (some sources echo it) shortened.
pub fn sanitized(text: &str, key: &str) -> String {
    if key.chars().count() >= 4 && text.contains(key) {
        text.replace(key, &redacted_key(key))
    } else {
        text.to_string()
    }
}

/// How often the upstream is pinged, and after how long without a frame it is dead: the
/// provider template's `ping_secs` (and its dead time), unless proxy.conf sets
/// `upstream_ping_secs`; by default two pings unanswered. The same at start and after every
/// reload, so a reload of another key never drops the template's timing.
pub fn timing(provider: &Provider, config: &Config) -> (Duration, Duration) {
    let ping_every = match provider.ping {
        Some(ping) if config.line_of("upstream_ping_secs").is_none() => ping,
        _ => config.upstream_ping,
    };
    let dead_after = provider.dead_after.unwrap_or(ping_every * 2 + CHECK_EVERY);
    (ping_every, dead_after)
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

fn connect(settings: &Settings) -> Result<Socket, String> {
    let (url, timeout) = (settings.url.as_str(), settings.connect_timeout);
    let deadline = Instant::now() + timeout;
    let uri: tungstenite::http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("the URL has no host")?;
    let tls = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let stream = match &settings.proxy {
        None => dial(host, port, timeout)?,
        Some(proxy) => dial(&proxy.host, proxy.port, timeout)
            .map_err(|e| format!("the proxy {}: {e}", proxy.shown()))?,
    };
    let _ = stream.set_nodelay(true);
    let mut stream = Timed {
        tcp: stream,
        deadline: Some(deadline),
        limit: timeout,
    };
    // Through a proxy, the tunnel comes first, within the same deadline; TLS (for wss://)
    // then runs inside it, its name checked against `host`, the source's, as without one.
    if let Some(proxy) = &settings.proxy {
        tunnel::establish(&mut stream, proxy, host, port).map_err(|e| e.to_string())?;
    }
    let request = handshake_request(url, &settings.headers)?;
    // Quotes arrive as many small frames; a moderate read buffer suits one busy connection.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_UPSTREAM_FRAME))
        .max_frame_size(Some(MAX_UPSTREAM_FRAME));
    let connector = settings
        .tls
        .as_ref()
        .map(|tls| tungstenite::Connector::Rustls(Arc::clone(tls)));
    match tungstenite::client_tls_with_config(request, stream, Some(config), connector) {
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

/// A TCP connection to `host:port` (a name, an address, or an IPv6 address in brackets),
/// trying each address it resolves to.
fn dial(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = (name, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last_err = format!("{host} resolved to no address");
    addrs
        .iter()
        .find_map(|addr| match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => Some(s),
            Err(e) => {
                last_err = format!("cannot connect to {addr}: {e}");
                None
            }
        })
        .ok_or(last_err)
}

/// The WebSocket handshake's request for `url`, with `headers` added after tungstenite's own.
fn handshake_request(
    url: &str,
    headers: &[Filled],
) -> Result<tungstenite::handshake::client::Request, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad URL: {e}"))?;
    for h in headers {
        // Both were checked at start-up (config::value::upstream_header, feed::headers);
        // the value is not shown, as it may hold the key.
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("`{}` is not a header name", h.name))?;
        let value = HeaderValue::from_str(&h.value)
            .map_err(|_| format!("the value of the header `{}` is not one", h.name))?;
        request.headers_mut().append(name, value);
    }
    Ok(request)
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
        WsError::Tls(tungstenite::error::TlsError::Rustls(e)) => {
            format!("TLS handshake failed: {}", tls::explain(e))
        }
        WsError::Tls(e) => format!("TLS handshake failed: {e}"),
        WsError::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(e) => format!("TLS handshake failed: {}", tls::explain(e)),
            None if tls => format!("TLS or WebSocket handshake failed: {io}"),
            None => format!("WebSocket handshake failed: {io}"),
        },
        e if tls => format!("TLS or WebSocket handshake failed: {e}"),
        e => format!("WebSocket handshake failed: {e}"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::live::Live;
    use crate::config::ClientFormat;
    use crate::feed::provider::parse_template;

    fn config(extra: &str) -> Config {
        crate::config::parse(
            &format!(
                "upstream_url = ws://feed.example/\nsymbols = EURUSD\nuser_keys_file = k\n{extra}"
            ),
            std::path::Path::new("proxy.conf"),
        )
        .unwrap()
    }

    /// The upstream's settings for `provider` and `config`, following `live`.
    fn settings(provider: Provider, config: &Config, live: &Arc<Live<Config>>) -> Settings {
        let provider = Arc::new(provider);
        let translator = Translator::new(
            Arc::clone(&provider),
            ClientFormat::Normalized,
            &config.symbols,
        )
        .unwrap();
        let (ping_every, dead_after) = timing(&provider, config);
        Settings {
            url: String::new(),
            key: String::new(),
            steps: Vec::new(),
            reply_timeout: Duration::from_secs(5),
            heartbeat: None,
            translator,
            connect_timeout: config.upstream_connect_timeout,
            ping_every,
            dead_after,
            stale_after: config.upstream_stale,
            market: config.market(),
            backoff_min: config.upstream_backoff_min,
            backoff_max: config.upstream_backoff_max,
            recorder: None,
            tls: None,
            proxy: None,
            headers: Vec::new(),
            live: Some(Cached::new(live)),
        }
    }

    /// A provider that wants a ping every 5 s: a reload of any key kept the ping at proxy.conf's
    /// 15 s and the dead time at 10.5 s, so a quiet feed was reconnected every ~10 s.
    #[test]
    fn a_reload_keeps_the_template_s_ping_and_its_dead_time() {
        let template = "url = ws://feed.example/\nsend = {\"sub\":\"{symbols}\"}\nping_secs = 5\n\
                        bid_field = b\nask_field = a\n";
        let provider = parse_template(template).unwrap();
        let running = config("");
        let live = Arc::new(Live::new(running.clone()));
        let mut s = settings(provider.clone(), &running, &live);
        assert_eq!(
            (s.ping_every, s.dead_after),
            (Duration::from_millis(5000), Duration::from_millis(10_500))
        );
        live.set(config("upstream_stale_secs = 60\n"));
        assert!(s.follow());
        assert_eq!(s.ping_every, Duration::from_secs(5), "the template's ping");
        assert_eq!(s.dead_after, Duration::from_millis(10_500));
        // proxy.conf's own ping, set by a reload, wins; the dead time follows it.
        live.set(config("upstream_ping_secs = 20\n"));
        assert!(s.follow());
        assert_eq!(
            (s.ping_every, s.dead_after),
            (Duration::from_secs(20), Duration::from_millis(40_500))
        );
    }

    #[test]
    fn the_key_is_kept_out_of_logged_texts() {
        assert_eq!(
            sanitized(r#"{"error":"bad key abcdefghijk"}"#, "abcdefghijk"),
            r#"{"error":"bad key abcd…"}"#
        );
        assert_eq!(sanitized("Connected", ""), "Connected");
        assert_eq!(
            sanitized("a b c", "b"),
            "a b c",
            "a tiny key would mangle the text"
        );
    }

    #[test]
    fn urls_in_logs_lose_their_query() {
        assert_eq!(
            display_url("wss://feed.example/stream?api_key=secret"),
            "wss://feed.example/stream"
        );
    }
}
