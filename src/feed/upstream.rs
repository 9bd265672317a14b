//! The one connection to the market-data source: connect (TLS for `wss://`), send what the
//! provider's template says to send (waiting for each reply it awaits), read frames and hand
//! the quotes to the distributor, keep the connection honest (pings, a heartbeat message where
//! the provider wants one, staleness while the market is open), and reconnect with
//! exponential back-off when it fails. What a frame is, quote or notice or refusal, is the
//! [`Translator`]'s call; every frame can also go to the recording. What the provider
//! acknowledges of the subscription is recorded symbol by symbol and logged; a provider that
//! accepts none of the symbols is a refusal, tried again only after the longest back-off.
//!
//! One connection is [`session`]: [`Link::open`] connects, [`Link::start`] sends the
//! template's first messages, [`read_loop`] reads frames (each piece acted on by [`take`]) and
//! keeps the connection honest between them ([`keep_honest`]).

use crate::base::backoff::Backoff;
use crate::base::live::Cached;
use crate::base::logsafe;
use crate::base::logsafe::redacted_key;
use crate::base::market::{self, Market, MarketState};
use crate::base::metrics::{Metrics, UpstreamState};
use crate::base::ratelimit::RateLimited;
use crate::base::stop::Stop;
use crate::base::symbol_states::SymbolState;
use crate::base::tls;
use crate::base::tunnel::{self, ProxyUrl};
use crate::config::Config;
use crate::feed::headers::Filled;
use crate::feed::outlet::Outlet;
use crate::feed::protocol::MAX_UPSTREAM_FRAME;
use crate::feed::provider::{Pattern, Provider};
use crate::feed::record::Recorder;
use crate::feed::translate::{Ack, Piece, Translator};
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

/// How often the reader looks at the clock (pings, staleness, shutdown, the backbone's lock)
/// while no frame comes. Behind a backbone the lock lapses here 0.5 s before Redis lets
/// anybody else take it: the connection is closed within this of the lapse.
const CHECK_EVERY: Duration = Duration::from_millis(250);
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
    /// Called when the provider's acknowledgement refuses symbols, with which (by position in
    /// `symbols`): the server plugs in what closes the clients left with none of theirs.
    pub on_refused: Option<OnRefused>,
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

/// What is done with the symbols (by position) a provider's acknowledgement refused.
pub type OnRefused = Box<dyn Fn(&[bool]) + Send>;

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
    /// Errors the provider reported (that end nothing).
    errors: RateLimited,
}

/// What the upstream thread keeps across connections.
struct Across {
    ignored: Ignored,
    /// Open or closed when last looked at: each change is logged once.
    market_open: Option<bool>,
    recorder: Option<Recorder>,
    /// The plan's symbol limit as last logged: a reconnect does not log it again.
    limit_logged: Option<u64>,
}

/// Why one connection ended.
#[derive(Debug)]
struct Ended {
    why: String,
    refused: Option<Refusal>,
    healthy: bool,
}

/// A fatal answer from the provider: the next attempt waits the longest back-off.
#[derive(Debug)]
enum Refusal {
    /// It refused the key (or the connection): what that means, and what it said.
    Key { reason: String, said: String },
    /// It accepted none of the symbols: which, and why.
    Symbols { reason: String },
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
    let mut backoff = Backoff::new(
        settings.backoff_min,
        settings.backoff_max,
        crate::base::clock::now_ms(),
    );
    let minute = || RateLimited::new(Duration::from_secs(60));
    let mut across = Across {
        ignored: Ignored {
            texts: minute(),
            binary: minute(),
            unusable: minute(),
            errors: minute(),
        },
        market_open: None,
        recorder: settings.recorder.take(),
        limit_logged: None,
    };
    while frames.connect_allowed(&stop) {
        if settings.follow() {
            backoff.set_bounds(settings.backoff_min, settings.backoff_max);
        }
        let ended = match session(&mut settings, &frames, &metrics, &stop, &mut across) {
            Ok(()) => return,
            Err(ended) => ended,
        };
        if ended.healthy {
            backoff.reset();
        }
        if !frames.still_allowed() {
            // Behind a backbone the lock went: no back-off, as the provider did nothing wrong;
            // the next connection waits for the lock instead.
            warn!(
                "upstream {shown}: {}; connecting again once this instance holds the backbone lock",
                ended.why
            );
            metrics.set_upstream(UpstreamState::Reconnecting {
                since_ms: metrics.now_ms(),
                reason: ended.why,
            });
            metrics.upstream_reconnects.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let delay = match ended.refused {
            Some(Refusal::Key { reason, said }) => {
                // Behind a backbone, a new holder refused (its predecessor's connection is
                // still open at the provider) tries again within seconds.
                let delay = frames.refused_retry().unwrap_or_else(|| backoff.saturate());
                error!(
                    "upstream {shown} refused the provider key: {} — {reason}; waiting {:.1} s before trying again",
                    logsafe::quoted(&sanitized(&said, &settings.key)),
                    delay.as_secs_f64()
                );
                metrics.set_upstream(UpstreamState::Refused {
                    since_ms: metrics.now_ms(),
                    reason,
                });
                delay
            }
            Some(Refusal::Symbols { reason }) => {
                error!(
                    "upstream {shown} {reason}; waiting {:.1} s before subscribing again",
                    backoff.max().as_secs_f64()
                );
                metrics.set_upstream(UpstreamState::Refused {
                    since_ms: metrics.now_ms(),
                    reason,
                });
                backoff.saturate()
            }
            None => {
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
            }
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

/// The messages sent after connecting, and the one whose reply is awaited.
struct Init {
    steps: Vec<(String, Option<Pattern>)>,
    next: usize,
    /// The step whose reply is awaited, and since when.
    awaiting: Option<(usize, Instant)>,
}

impl Init {
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

/// One connection to the source, from connect to its end.
struct Link {
    ws: Socket,
    /// The URL as the log shows it.
    shown: String,
    init: Init,
    /// Whether "connected and subscribed" was logged.
    announced: bool,
    connected: Instant,
    connected_ms: u64,
    last_frame: Instant,
    last_ping: Instant,
    last_heartbeat: Instant,
    got_quotes: bool,
}

/// What one connection does: connect, run the template's steps, then read until it ends.
fn session(
    settings: &mut Settings,
    frames: &impl Outlet,
    metrics: &Metrics,
    stop: &Stop,
    across: &mut Across,
) -> Result<(), Ended> {
    let mut link = Link::open(settings, metrics)?;
    link.start()?;
    read_loop(&mut link, settings, frames, metrics, stop, across)
}

/// What the source said and what errors repeat of it is escaped once, here: the reason goes
/// to the log, the status line and /healthz.
fn failed(why: String) -> Ended {
    Ended {
        why: logsafe::escaped(&why).to_string(),
        refused: None,
        healthy: false,
    }
}

impl Link {
    /// Connects (TLS for `wss://`) and counts the connection.
    fn open(settings: &Settings, metrics: &Metrics) -> Result<Link, Ended> {
        let ws = connect(settings).map_err(failed)?;
        metrics.upstream_connects.fetch_add(1, Ordering::Relaxed);
        let connected_ms = metrics.now_ms();
        metrics.set_upstream(UpstreamState::Connected {
            since_ms: connected_ms,
        });
        let now = Instant::now();
        Ok(Link {
            ws,
            shown: display_url(&settings.url).to_string(),
            // Copied: the settings follow a reload while this connection lasts.
            init: Init {
                steps: settings.steps.clone(),
                next: 0,
                awaiting: None,
            },
            announced: false,
            connected: now,
            connected_ms,
            last_frame: now,
            last_ping: now,
            last_heartbeat: now,
            got_quotes: false,
        })
    }

    /// Sends the template's first messages, up to the first that awaits a reply.
    fn start(&mut self) -> Result<(), Ended> {
        self.init.send(&mut self.ws).map_err(failed)?;
        self.announce();
        Ok(())
    }

    /// Logs, once, that every message went out and every reply came.
    fn announce(&mut self) {
        if self.init.done() && !std::mem::replace(&mut self.announced, true) {
            if self.init.steps.is_empty() {
                info!("upstream {}: connected", self.shown);
            } else {
                info!("upstream {}: connected and subscribed", self.shown);
            }
        }
    }

    /// The connection ended for `why`: healthy if it delivered quotes for long enough.
    fn end(&self, why: String) -> Ended {
        Ended {
            why: logsafe::escaped(&why).to_string(),
            refused: None,
            healthy: self.got_quotes && self.connected.elapsed() >= HEALTHY_AFTER,
        }
    }

    /// Sends a close frame (1001) with `reason`.
    fn close(&mut self, reason: &str) {
        let _ = self.ws.close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: reason.to_string().into(),
        }));
        let _ = self.ws.flush();
    }
}

/// Reads frames until the connection ends, keeping it honest between them. `Ok` when the
/// proxy is stopping (or nobody takes frames any more).
fn read_loop(
    link: &mut Link,
    settings: &mut Settings,
    frames: &impl Outlet,
    metrics: &Metrics,
    stop: &Stop,
    across: &mut Across,
) -> Result<(), Ended> {
    let mut pieces = Vec::new();
    loop {
        if stop.is_set() {
            link.close("proxy shutting down");
            return Ok(());
        }
        if !frames.still_allowed() {
            link.close("another instance holds the connection now");
            return Err(link.end("closed: this instance no longer holds the backbone lock".into()));
        }
        match link.ws.read() {
            Ok(Message::Text(text)) => {
                link.last_frame = Instant::now();
                let now_ms = metrics.now_ms();
                if let Some(recorder) = across.recorder.as_mut() {
                    recorder.record(now_ms, &text);
                }
                settings
                    .translator
                    .read(text, now_ms, link.init.pattern(), &mut pieces);
                for piece in pieces.drain(..) {
                    if !take(piece, now_ms, link, settings, frames, metrics, across)? {
                        return Ok(());
                    }
                }
            }
            Ok(Message::Binary(data)) => {
                link.last_frame = Instant::now();
                let shown = &link.shown;
                across.ignored.binary.note(|n| {
                    warn!(
                        "upstream {shown} sent {n} binary frame(s), ignored: quotes are text frames (latest: {} bytes)",
                        data.len()
                    )
                });
            }
            Ok(Message::Close(frame)) => {
                // Answer the close, as the protocol asks; tungstenite has queued the reply.
                let _ = link.ws.flush();
                let why = match frame {
                    Some(f) => format!(
                        "closed by the source (code {}, {})",
                        u16::from(f.code),
                        logsafe::quoted(&f.reason)
                    ),
                    None => "closed by the source".to_string(),
                };
                return Err(link.end(why));
            }
            Ok(_) => link.last_frame = Instant::now(),
            Err(WsError::Io(e)) if crate::base::io::is_timeout(&e) => {}
            Err(e) => return Err(link.end(format!("connection failed: {e}"))),
        }
        settings.follow();
        keep_honest(link, settings, metrics, across)?;
    }
}

/// Acts on one piece of what the source sent. `Ok(false)` when nobody takes quotes any more.
fn take(
    piece: Piece,
    now_ms: u64,
    link: &mut Link,
    settings: &Settings,
    frames: &impl Outlet,
    metrics: &Metrics,
    across: &mut Across,
) -> Result<bool, Ended> {
    let shown = &link.shown;
    match piece {
        Piece::Quote(frame) => {
            link.got_quotes = true;
            if let Some(ts) = settings.translator.provider_time(&frame, now_ms) {
                let age = Duration::from_millis(now_ms.saturating_sub(ts));
                metrics.quote_age.observe(age);
            }
            return Ok(frames.send(frame).is_ok());
        }
        Piece::Reply => {
            link.init.awaiting = None;
            link.init.send(&mut link.ws).map_err(|why| link.end(why))?;
            link.announce();
        }
        Piece::Refused { reason, text } => {
            return Err(Ended {
                why: "refused".into(),
                refused: Some(Refusal::Key { reason, said: text }),
                healthy: false,
            });
        }
        Piece::Ack(ack) => acknowledged(&ack, shown, settings, metrics)?,
        Piece::SymbolLimit(limit) => {
            metrics.upstream_symbols.set_limit(limit);
            if across.limit_logged != Some(limit) {
                across.limit_logged = Some(limit);
                let configured = settings.translator.symbols().len() as u64;
                if configured > limit {
                    warn!(
                        "upstream {shown}: `symbols` lists {configured} symbols, more than the {limit} the provider's plan allows: it will deny some"
                    );
                } else {
                    info!("upstream {shown}: the provider's plan allows {limit} symbols ({configured} configured)");
                }
            }
        }
        Piece::ProviderError(reason) => across.ignored.errors.note(|n| {
            warn!(
                "upstream {shown} reported {n} error(s), latest: {}",
                logsafe::quoted(&sanitized(&reason, &settings.key))
            )
        }),
        Piece::Ignored => {}
        Piece::Unusable(why) => across.ignored.unusable.note(|n| {
            warn!(
                "upstream {shown} sent {n} quote(s) that cannot be used, latest: {}",
                logsafe::quoted(&sanitized(&why, &settings.key))
            )
        }),
        Piece::Other(text) => across.ignored.texts.note(|n| {
            info!(
                "upstream {shown} sent {n} non-quote text(s), latest: {}",
                logsafe::quoted(&sanitized(&text, &settings.key))
            )
        }),
    }
    Ok(true)
}

/// The provider's answer to the subscription: every symbol's state recorded (for `/metrics`,
/// `/healthz` and the clients), one line in the log, the clients with nothing left told to
/// go; and when it accepted none of them, a refusal.
fn acknowledged(
    ack: &Ack,
    shown: &str,
    settings: &Settings,
    metrics: &Metrics,
) -> Result<(), Ended> {
    let symbols = settings.translator.symbols();
    let mut states = vec![SymbolState::Unacknowledged; symbols.len()];
    for &id in &ack.accepted {
        states[id] = SymbolState::Accepted;
    }
    for (id, why) in &ack.denied {
        states[*id] = SymbolState::Denied(sanitized(why, &settings.key));
    }
    for &id in &ack.invalid {
        states[id] = SymbolState::Invalid;
    }
    metrics.upstream_symbols.set(states.clone());
    let line = ack_line(symbols, &states, &ack.unknown);
    let refused: Vec<bool> = states.iter().map(SymbolState::is_refused).collect();
    if !refused.contains(&true) {
        // Entries naming none of `symbols` mean the template spells them otherwise.
        if ack.unknown.is_empty() {
            info!("upstream {shown}: subscription acknowledged: {line}");
        } else {
            warn!("upstream {shown}: subscription acknowledged: {line}");
        }
        return Ok(());
    }
    warn!("upstream {shown}: subscription acknowledged: {line}");
    if let Some(close_clients) = &settings.on_refused {
        close_clients(&refused);
    }
    if refused.iter().all(|r| *r) {
        return Err(Ended {
            why: "refused".into(),
            refused: Some(Refusal::Symbols {
                reason: format!("accepted none of the symbols: {line}"),
            }),
            healthy: false,
        });
    }
    Ok(())
}

/// `accepted EURUSD, GBPUSD; denied XAUUSD ("not in your plan"); invalid FOO`: what an
/// acknowledgement said of each symbol, escaped for the log.
fn ack_line(symbols: &[String], states: &[SymbolState], unknown: &[String]) -> String {
    let named = |want: fn(&SymbolState) -> bool| -> Vec<&str> {
        symbols
            .iter()
            .zip(states)
            .filter(|(_, s)| want(s))
            .map(|(name, _)| name.as_str())
            .collect()
    };
    let mut parts = Vec::new();
    let accepted = named(|s| *s == SymbolState::Accepted);
    if !accepted.is_empty() {
        parts.push(format!("accepted {}", accepted.join(", ")));
    }
    let denied: Vec<String> = symbols
        .iter()
        .zip(states)
        .filter_map(|(name, s)| match s {
            SymbolState::Denied(why) if why.is_empty() => Some(name.clone()),
            SymbolState::Denied(why) => Some(format!("{name} ({})", logsafe::quoted(why))),
            _ => None,
        })
        .collect();
    if !denied.is_empty() {
        parts.push(format!("denied {}", denied.join(", ")));
    }
    let invalid = named(|s| *s == SymbolState::Invalid);
    if !invalid.is_empty() {
        parts.push(format!("invalid {}", invalid.join(", ")));
    }
    let silent = named(|s| *s == SymbolState::Unacknowledged);
    if !silent.is_empty() {
        parts.push(format!("not mentioned {}", silent.join(", ")));
    }
    if !unknown.is_empty() {
        let shown: Vec<String> = unknown
            .iter()
            .map(|u| logsafe::quoted(u).to_string())
            .collect();
        parts.push(format!("not among `symbols` {}", shown.join(", ")));
    }
    parts.join("; ")
}

/// Between frames: the awaited reply's deadline, the heartbeat, pings, a dead connection,
/// the market opening or closing, and a feed gone stale while it is open.
fn keep_honest(
    link: &mut Link,
    settings: &Settings,
    metrics: &Metrics,
    across: &mut Across,
) -> Result<(), Ended> {
    let now = Instant::now();
    if let Some((i, since)) = link.init.awaiting {
        if now.duration_since(since) > settings.reply_timeout {
            let pattern = link
                .init
                .pattern()
                .map(|p| p.to_string())
                .unwrap_or_default();
            return Err(link.end(format!(
                "no reply matching `{pattern}` to message {} within {} s",
                i + 1,
                settings.reply_timeout.as_secs()
            )));
        }
    }
    if let Some((text, every)) = &settings.heartbeat {
        if now.duration_since(link.last_heartbeat) >= *every {
            link.last_heartbeat = now;
            if let Err(e) = link.ws.send(Message::text(text.clone())) {
                return Err(link.end(format!("sending the heartbeat failed: {e}")));
            }
        }
    }
    if now.duration_since(link.last_ping) >= settings.ping_every {
        link.last_ping = now;
        if let Err(e) = link.ws.send(Message::Ping(Default::default())) {
            return Err(link.end(format!("ping failed: {e}")));
        }
    }
    if now.duration_since(link.last_frame) > settings.dead_after {
        return Err(link.end("no answer to pings".into()));
    }
    let now_ms = metrics.now_ms();
    let state = settings.market.state(now_ms);
    if across.market_open != Some(state.is_open()) {
        note_market(&settings.market, state, across.market_open.is_none());
        across.market_open = Some(state.is_open());
    }
    if let MarketState::Open {
        since_ms: open_since,
    } = state
    {
        let last_quote = metrics.last_quote_ms.load(Ordering::Relaxed);
        let quiet_since = last_quote.max(link.connected_ms).max(open_since);
        let quiet = Duration::from_millis(now_ms.saturating_sub(quiet_since));
        if quiet > settings.stale_after {
            return Err(link.end(format!(
                "stale: no quote for {} s while the market is open",
                quiet.as_secs()
            )));
        }
    }
    Ok(())
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
    use crate::feed::template::parse_template;

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
            on_refused: None,
        }
    }

    /// A provider that wants a ping every 5 s: a reload of any key kept the ping at proxy.conf's
    /// 15 s and the dead time at two of its pings, so a quiet feed was reconnected every ~10 s.
    #[test]
    fn a_reload_keeps_the_template_s_ping_and_its_dead_time() {
        let template = "url = ws://feed.example/\nsend = {\"sub\":\"{symbols}\"}\nping_secs = 5\n\
                        bid_field = b\nask_field = a\n";
        let provider = parse_template(template).unwrap();
        let running = config("");
        let live = Arc::new(Live::new(running.clone()));
        let mut s = settings(provider.clone(), &running, &live);
        let two_pings = |ping: u64| Duration::from_secs(ping) * 2 + CHECK_EVERY;
        assert_eq!(
            (s.ping_every, s.dead_after),
            (Duration::from_secs(5), two_pings(5))
        );
        live.set(config("upstream_stale_secs = 60\n"));
        assert!(s.follow());
        assert_eq!(s.ping_every, Duration::from_secs(5), "the template's ping");
        assert_eq!(s.dead_after, two_pings(5));
        // proxy.conf's own ping, set by a reload, wins; the dead time follows it.
        live.set(config("upstream_ping_secs = 20\n"));
        assert!(s.follow());
        assert_eq!(
            (s.ping_every, s.dead_after),
            (Duration::from_secs(20), two_pings(20))
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
