//! Counters the proxy keeps about itself, the `/metrics` text in Prometheus' exposition
//! format, the `/healthz` verdict and the periodic status line. Counters are plain atomics
//! bumped once per batch or per event, never per client per quote under a lock.
//!
//! The proxy's [`Clock`] lives here too: quote times are stamped, and ages and the market's
//! hours judged, by the one clock, which tests can set to a Friday night or a Saturday.

use crate::clock::Clock;
use crate::market::{self, Market, MarketState};
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a client was refused at authentication; each is a label of `fxproxy_auth_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    BadKey,
    BadMessage,
    Timeout,
    Symbol,
    TooManyForKey,
}

impl AuthFailure {
    const ALL: [AuthFailure; 5] = [
        AuthFailure::BadKey,
        AuthFailure::BadMessage,
        AuthFailure::Timeout,
        AuthFailure::Symbol,
        AuthFailure::TooManyForKey,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::BadKey => "bad_key",
            AuthFailure::BadMessage => "bad_message",
            AuthFailure::Timeout => "timeout",
            AuthFailure::Symbol => "symbol",
            AuthFailure::TooManyForKey => "too_many_for_key",
        }
    }
}

/// Why a connection was refused at the handshake; each is a label of
/// `fxproxy_rejected_connections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// `max_clients` connections are open (HTTP 503).
    MaxClients,
    /// The process has as many threads as the kernel lets it have (HTTP 503).
    ThreadCeiling,
    /// An `Origin` not in `allowed_origins` (HTTP 403).
    Origin,
    /// A malformed request or upgrade (HTTP 400, 426, 431).
    BadRequest,
    /// The kernel refused a thread for an authenticated client (close 1013).
    NoThread,
    /// A TLS handshake that failed: an untrusted or missing client certificate, a client that
    /// refused ours, no common protocol version or cipher suite, a broken record.
    Tls,
}

impl Rejection {
    const ALL: [Rejection; 6] = [
        Rejection::MaxClients,
        Rejection::ThreadCeiling,
        Rejection::Origin,
        Rejection::BadRequest,
        Rejection::NoThread,
        Rejection::Tls,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejection::MaxClients => "max_clients",
            Rejection::ThreadCeiling => "thread_ceiling",
            Rejection::Origin => "origin",
            Rejection::BadRequest => "bad_request",
            Rejection::NoThread => "no_thread",
            Rejection::Tls => "tls",
        }
    }
}

/// Why an unauthenticated connection was dropped to make room; each is a label of
/// `fxproxy_pending_evictions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// `max_pending_connections` were pending and this one had been for longer than the grace.
    PendingFull,
    /// Every `max_clients` place was taken and this upgrade had not authenticated within the
    /// grace: a newcomer got its place.
    Place,
}

impl Eviction {
    const ALL: [Eviction; 2] = [Eviction::PendingFull, Eviction::Place];

    pub fn label(self) -> &'static str {
        match self {
            Eviction::PendingFull => "pending_full",
            Eviction::Place => "place",
        }
    }
}

/// What `/metrics` shows besides the counters kept here: read from the hub, the admission
/// loop and the kernel when it is scraped.
pub struct View<'a> {
    /// The market-hours rule, for `fxproxy_market_open`.
    pub market: &'a Market,
    /// Epoch ms of the last quote, per symbol (0: none yet).
    pub symbols: &'a [(String, u64)],
    pub batching: bool,
    pub queues: &'a QueueStats,
    /// The listen queue: connections waiting for `accept`, and its length.
    pub backlog: Option<(u64, u64)>,
    /// `max_clients` places taken (upgraded connections and client threads not yet gone),
    /// and how many there are (`max_clients`, or fewer under the thread ceiling).
    pub places: (u64, u64),
    /// Threads fxproxy started that the kernel still holds.
    pub threads_live: u64,
    pub now_ms: u64,
}

/// Queue depths over every client: a cumulative histogram (Prometheus style) and how many
/// are more than half full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueStats {
    /// Upper bounds of the buckets, in frames; the last is the queue length itself.
    pub bounds: Vec<usize>,
    /// Clients with at most `bounds[i]` frames queued.
    pub cumulative: Vec<u64>,
    pub sum: u64,
    pub count: u64,
    /// Clients with more than half of `client_queue_len` queued.
    pub behind: u64,
    queue_len: usize,
}

impl QueueStats {
    pub fn new(queue_len: usize) -> QueueStats {
        let mut bounds: Vec<usize> = [0, 1, 4, 16, 64, 256]
            .into_iter()
            .filter(|b| *b < queue_len / 2)
            .collect();
        bounds.push(queue_len / 2);
        bounds.push(queue_len);
        bounds.dedup();
        QueueStats {
            cumulative: vec![0; bounds.len()],
            bounds,
            sum: 0,
            count: 0,
            behind: 0,
            queue_len,
        }
    }

    pub fn add(&mut self, depth: usize) {
        for (bound, n) in self.bounds.iter().zip(self.cumulative.iter_mut()) {
            if depth <= *bound {
                *n += 1;
            }
        }
        self.sum += depth as u64;
        self.count += 1;
        if depth * 2 > self.queue_len {
            self.behind += 1;
        }
    }
}

/// Where the upstream connection stands, for `/healthz`, `/metrics` and the status line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamState {
    NotYetConnected,
    Connected {
        since_ms: u64,
    },
    Reconnecting {
        since_ms: u64,
        reason: String,
    },
    /// A fatal refusal by the provider; `reason` says what it means.
    Refused {
        since_ms: u64,
        reason: String,
    },
}

/// A value alone on its cache lines: a counter every writer thread bumps must not share a line
/// with what the distributor writes on every quote, or each bump and each quote evict the other.
#[derive(Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[derive(Default)]
pub struct Metrics {
    pub clients_connected: AtomicU64,
    pub auth_successes: AtomicU64,
    auth_failures: [AtomicU64; 5],
    pub quotes_received: AtomicU64,
    /// Bumped by every writer after each batch.
    pub quotes_delivered: Padded<AtomicU64>,
    pub slow_consumer_disconnects: AtomicU64,
    /// Writers whose client's socket takes no more bytes right now (a gauge).
    pub writers_blocked: AtomicU64,
    pub http_requests: AtomicU64,
    /// Connections refused at the handshake, by [`Rejection`].
    rejected: [AtomicU64; 6],
    /// Connections accepted and not yet authenticated (or answered), a gauge.
    pub pending_connections: AtomicU64,
    /// Unauthenticated connections dropped to make room, by [`Eviction`].
    evictions: [AtomicU64; 2],
    /// Times accepting paused because every pending connection was still young: newcomers
    /// waited in the kernel's listen queue.
    pub accept_pauses: AtomicU64,
    pub key_reloads: AtomicU64,
    pub key_reload_failures: AtomicU64,
    /// Configuration reloads (SIGHUP) applied, and refused because the file (or the key file)
    /// was broken: then the running configuration stays as it was.
    pub config_reloads: AtomicU64,
    pub config_reload_failures: AtomicU64,
    /// Keys whose value in proxy.conf differs from the running one and waits for a restart.
    pub config_pending_restart: AtomicU64,
    pub upstream_connects: AtomicU64,
    pub upstream_reconnects: AtomicU64,
    /// Clients closed for a protocol error (1002), invalid UTF-8 (1007) or size (1009).
    pub protocol_errors: [AtomicU64; 3],
    /// Clients closed for sending more than `max_client_messages_per_sec`.
    pub flood_disconnects: AtomicU64,
    /// Client connections closed after an internal error (a panic) while serving them.
    pub internal_errors: AtomicU64,
    /// Epoch milliseconds of the newest quote from upstream, 0 before the first.
    pub last_quote_ms: AtomicU64,
    /// TLS on the client port: certificate files re-read and taken, or refused (the previous
    /// certificate kept), and when the certificate in use lapses (epoch ms; 0: no TLS).
    pub tls_reloads: AtomicU64,
    pub tls_reload_failures: AtomicU64,
    pub tls_cert_not_after_ms: AtomicU64,
    upstream: Mutex<Option<UpstreamState>>,
    clock: Clock,

    // Conflation and recording.
    /// Quotes a conflating client was never sent because a newer one of the symbol replaced
    /// them while it was behind.
    pub quotes_conflated: AtomicU64,
    /// Conflating clients behind right now, receiving the latest quote per symbol (a gauge).
    pub clients_conflating: AtomicU64,
    /// Upstream frames written to `record_file`.
    pub recorded_frames: AtomicU64,
    /// Upstream frames left out of the recording because the disk did not keep up.
    pub record_dropped: AtomicU64,
    /// 1 while `record_file` is being written (0 when off, or stopped by an error).
    pub recording: AtomicU64,
}

/// The close codes counted in `protocol_errors`, in its order.
pub const PROTOCOL_CLOSE_CODES: [u16; 3] = [1002, 1007, 1009];

/// The system clock in epoch milliseconds; [`Metrics::now_ms`] is the proxy's own clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Metrics whose times come from `clock` (see [`Metrics::now_ms`]).
    pub fn with_clock(clock: Clock) -> Metrics {
        Metrics {
            clock,
            ..Metrics::default()
        }
    }

    /// Now, by the proxy's clock: what quote times are stamped with and ages and the market's
    /// hours are judged by.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn auth_failed(&self, why: AuthFailure) {
        self.auth_failures[why as usize].fetch_add(1, Relaxed);
    }

    pub fn auth_failures(&self, why: AuthFailure) -> u64 {
        self.auth_failures[why as usize].load(Relaxed)
    }

    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Relaxed);
    }

    pub fn rejections(&self, why: Rejection) -> u64 {
        self.rejected[why as usize].load(Relaxed)
    }

    pub fn evicted(&self, why: Eviction) {
        self.evictions[why as usize].fetch_add(1, Relaxed);
    }

    pub fn evictions(&self, why: Eviction) -> u64 {
        self.evictions[why as usize].load(Relaxed)
    }

    pub fn set_upstream(&self, state: UpstreamState) {
        *self.upstream.lock() = Some(state);
    }

    pub fn upstream(&self) -> UpstreamState {
        self.upstream
            .lock()
            .clone()
            .unwrap_or(UpstreamState::NotYetConnected)
    }

    /// `/healthz`: healthy when the upstream is connected and either the market is closed or
    /// the feed is not stale: a quote arrived within `stale`, or the market opened less than
    /// `stale` ago (the upstream gives a source that long too). Returns the HTTP status and a
    /// one-line JSON body.
    pub fn health(&self, market: &Market, stale: Duration, now_ms: u64) -> (u16, String) {
        let last = self.last_quote_ms.load(Relaxed);
        let age = (last > 0).then(|| now_ms.saturating_sub(last));
        let age_json = age.map_or("null".to_string(), |a| format!("{:.3}", a as f64 / 1000.0));
        let (ok, status, detail) = match self.upstream() {
            UpstreamState::NotYetConnected => (false, "not_connected", String::new()),
            UpstreamState::Refused { since_ms, reason } => (
                false,
                "refused",
                format!(
                    ",\"reason\":{},\"since_ms\":{since_ms}",
                    serde_json::Value::String(format!("the provider refused the key: {reason}"))
                ),
            ),
            UpstreamState::Reconnecting { since_ms, reason } => (
                false,
                "reconnecting",
                format!(
                    ",\"reason\":{},\"since_ms\":{since_ms}",
                    serde_json::Value::String(reason)
                ),
            ),
            UpstreamState::Connected { .. } => feed_verdict(market, stale, now_ms, last),
        };
        let body = format!(
            "{{\"status\":\"{status}\"{detail},\"last_quote_age_secs\":{age_json},\"clients\":{}}}\n",
            self.clients_connected.load(Relaxed)
        );
        (if ok { 200 } else { 503 }, body)
    }

    /// Counts a client closed with `code`, if it is one of [`PROTOCOL_CLOSE_CODES`].
    pub fn protocol_error(&self, code: u16) {
        if let Some(i) = PROTOCOL_CLOSE_CODES.iter().position(|c| *c == code) {
            self.protocol_errors[i].fetch_add(1, Relaxed);
        }
    }

    /// `/metrics` in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, view: &View) -> String {
        let View {
            market,
            symbols,
            batching,
            queues,
            backlog,
            places,
            threads_live,
            now_ms,
        } = *view;
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v as f64)];
        let c = |a: &AtomicU64| a.load(Relaxed);
        metric(
            "fxproxy_clients_connected",
            "gauge",
            "Authenticated clients currently receiving quotes.",
            &one(c(&self.clients_connected)),
        );
        metric(
            "fxproxy_auth_successes_total",
            "counter",
            "Clients that authenticated.",
            &one(c(&self.auth_successes)),
        );
        let failures: Vec<(String, f64)> = AuthFailure::ALL
            .iter()
            .map(|f| {
                (
                    format!("{{reason=\"{}\"}}", f.label()),
                    self.auth_failures(*f) as f64,
                )
            })
            .collect();
        metric(
            "fxproxy_auth_failures_total",
            "counter",
            "Clients refused at authentication, by reason.",
            &failures,
        );
        metric(
            "fxproxy_quotes_received_total",
            "counter",
            "Quotes received from the upstream.",
            &one(c(&self.quotes_received)),
        );
        metric(
            "fxproxy_quotes_delivered_total",
            "counter",
            "Quote frames written to clients.",
            &one(c(&self.quotes_delivered)),
        );
        metric(
            "fxproxy_slow_consumer_disconnects_total",
            "counter",
            "Clients disconnected because their queue was full.",
            &one(c(&self.slow_consumer_disconnects)),
        );
        let rejected: Vec<(String, f64)> = Rejection::ALL
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{}\"}}", r.label()),
                    self.rejections(*r) as f64,
                )
            })
            .collect();
        metric(
            "fxproxy_rejected_connections_total",
            "counter",
            "Connections refused at the handshake, by reason (max_clients and thread_ceiling: 503; origin: 403; bad_request: 400/426/431, or not TLS on a TLS port; no_thread: close 1013; tls: a failed TLS handshake).",
            &rejected,
        );
        metric(
            "fxproxy_key_file_reloads_total",
            "counter",
            "Times the client key file changed, by outcome (failed: kept the previous keys).",
            &[
                ("{result=\"ok\"}".to_string(), c(&self.key_reloads) as f64),
                (
                    "{result=\"failed\"}".to_string(),
                    c(&self.key_reload_failures) as f64,
                ),
            ],
        );
        metric(
            "fxproxy_config_reloads_total",
            "counter",
            "Configuration reloads (SIGHUP), by outcome (failed: a broken proxy.conf or key file; the running configuration was kept).",
            &[
                ("{result=\"ok\"}".to_string(), c(&self.config_reloads) as f64),
                (
                    "{result=\"failed\"}".to_string(),
                    c(&self.config_reload_failures) as f64,
                ),
            ],
        );
        metric(
            "fxproxy_config_pending_restart",
            "gauge",
            "Keys of proxy.conf changed at the last reload that take effect only after a restart (listen, upstream_url, symbols, ...).",
            &one(c(&self.config_pending_restart)),
        );
        metric(
            "fxproxy_upstream_connects_total",
            "counter",
            "Successful connections to the upstream.",
            &one(c(&self.upstream_connects)),
        );
        metric(
            "fxproxy_upstream_reconnects_total",
            "counter",
            "Upstream connections lost and tried again.",
            &one(c(&self.upstream_reconnects)),
        );
        let protocol: Vec<(String, f64)> = PROTOCOL_CLOSE_CODES
            .iter()
            .zip(&self.protocol_errors)
            .map(|(code, n)| (format!("{{close_code=\"{code}\"}}"), c(n) as f64))
            .collect();
        metric(
            "fxproxy_client_protocol_errors_total",
            "counter",
            "Clients closed for a protocol error (1002), invalid UTF-8 (1007) or a message over max_message_bytes (1009).",
            &protocol,
        );
        metric(
            "fxproxy_client_flood_disconnects_total",
            "counter",
            "Clients closed for sending more than max_client_messages_per_sec.",
            &one(c(&self.flood_disconnects)),
        );
        let evictions: Vec<(String, f64)> = Eviction::ALL
            .iter()
            .map(|e| {
                (
                    format!("{{reason=\"{}\"}}", e.label()),
                    self.evictions(*e) as f64,
                )
            })
            .collect();
        metric(
            "fxproxy_pending_evictions_total",
            "counter",
            "Unauthenticated connections dropped to make room, by reason (pending_full: max_pending_connections; place: max_clients), each only after the grace.",
            &evictions,
        );
        metric(
            "fxproxy_pending_connections",
            "gauge",
            "Connections accepted and still in their HTTP request, WebSocket handshake or auth (no thread yet).",
            &one(c(&self.pending_connections)),
        );
        metric(
            "fxproxy_accept_pauses_total",
            "counter",
            "Times accepting paused because max_pending_connections were pending and all were young; newcomers waited in the listen queue.",
            &one(c(&self.accept_pauses)),
        );
        if let Some((used, max)) = backlog {
            metric(
                "fxproxy_accept_backlog",
                "gauge",
                "The kernel's listen queue: connections waiting to be accepted (used) and its length (max).",
                &[
                    ("{kind=\"used\"}".to_string(), used as f64),
                    ("{kind=\"max\"}".to_string(), max as f64),
                ],
            );
        }
        metric(
            "fxproxy_client_places",
            "gauge",
            "Places among max_clients: taken (upgraded connections, and client threads until the kernel has let them go) and limit (max_clients, or fewer under the thread ceiling).",
            &[
                ("{kind=\"taken\"}".to_string(), places.0 as f64),
                ("{kind=\"limit\"}".to_string(), places.1 as f64),
            ],
        );
        metric(
            "fxproxy_threads_started",
            "gauge",
            "Threads fxproxy started that the kernel still holds (running or winding down).",
            &one(threads_live),
        );
        metric(
            "fxproxy_writers_blocked",
            "gauge",
            "Clients whose socket takes no more bytes right now (their queue absorbs the quotes).",
            &one(c(&self.writers_blocked)),
        );
        let mut depth: Vec<(String, f64)> = queues
            .bounds
            .iter()
            .zip(&queues.cumulative)
            .map(|(b, n)| (format!("_bucket{{le=\"{b}\"}}"), *n as f64))
            .collect();
        depth.push(("_bucket{le=\"+Inf\"}".to_string(), queues.count as f64));
        depth.push(("_sum".to_string(), queues.sum as f64));
        depth.push(("_count".to_string(), queues.count as f64));
        metric(
            "fxproxy_client_queue_depth",
            "histogram",
            "Frames queued per client, over every client at the time of the scrape (client_queue_len full is a slow consumer).",
            &depth,
        );
        metric(
            "fxproxy_clients_behind",
            "gauge",
            "Clients with more than half of client_queue_len queued.",
            &one(queues.behind),
        );
        metric(
            "fxproxy_internal_errors_total",
            "counter",
            "Client connections closed with 1011 after an internal error (a bug: see the log).",
            &one(c(&self.internal_errors)),
        );
        let connected = matches!(self.upstream(), UpstreamState::Connected { .. });
        metric(
            "fxproxy_upstream_connected",
            "gauge",
            "1 when the upstream connection is up.",
            &one(connected as u64),
        );
        metric(
            "fxproxy_market_open",
            "gauge",
            "1 while the market is open by market_hours and market_closed_dates; quote ages grow while it is closed.",
            &one(market.is_open(now_ms) as u64),
        );
        let ages: Vec<(String, f64)> = symbols
            .iter()
            .filter(|(_, ms)| *ms > 0)
            .map(|(sym, ms)| {
                (
                    format!("{{symbol=\"{sym}\"}}"),
                    now_ms.saturating_sub(*ms) as f64 / 1000.0,
                )
            })
            .collect();
        metric(
            "fxproxy_last_quote_age_seconds",
            "gauge",
            "Seconds since the last quote, per symbol.",
            &ages,
        );
        metric(
            "fxproxy_batching",
            "gauge",
            "1 while writers send quotes in batches on the batch_delay_ms grid (heavy load).",
            &one(batching as u64),
        );
        let not_after = c(&self.tls_cert_not_after_ms);
        if not_after > 0 {
            metric(
                "fxproxy_tls_certificate_expiry_seconds",
                "gauge",
                "When the certificate served on the client port lapses, in seconds since the Unix epoch.",
                &[(String::new(), not_after as f64 / 1000.0)],
            );
            metric(
                "fxproxy_tls_certificate_reloads_total",
                "counter",
                "Times the TLS certificate files changed, by outcome (failed: kept the previous certificate).",
                &[
                    ("{result=\"ok\"}".to_string(), c(&self.tls_reloads) as f64),
                    (
                        "{result=\"failed\"}".to_string(),
                        c(&self.tls_reload_failures) as f64,
                    ),
                ],
            );
        }
        metric(
            "fxproxy_quotes_conflated_total",
            "counter",
            "Quotes conflating clients were not sent because a newer quote of the symbol replaced them while they were behind (slow_client = conflate).",
            &one(c(&self.quotes_conflated)),
        );
        metric(
            "fxproxy_clients_conflating",
            "gauge",
            "Conflating clients behind right now, sent the latest quote of each symbol as they catch up.",
            &one(c(&self.clients_conflating)),
        );
        metric(
            "fxproxy_recording",
            "gauge",
            "1 while every upstream frame is written to record_file (0: off, or stopped by an error: see the log).",
            &one(c(&self.recording)),
        );
        metric(
            "fxproxy_recorded_frames_total",
            "counter",
            "Upstream frames written to record_file.",
            &one(c(&self.recorded_frames)),
        );
        metric(
            "fxproxy_record_dropped_total",
            "counter",
            "Upstream frames left out of record_file because the disk did not keep up.",
            &one(c(&self.record_dropped)),
        );
        metric(
            "fxproxy_process_threads",
            "gauge",
            "Threads in the proxy process.",
            &one(process_threads()),
        );
        out
    }

    /// The periodic status line: rates over `interval` from the counters' previous values.
    pub fn status_line(&self, prev: &mut [u64; 3], interval: Duration, behind: u64) -> String {
        let now = [
            self.quotes_received.load(Relaxed),
            self.quotes_delivered.load(Relaxed),
            self.slow_consumer_disconnects.load(Relaxed),
        ];
        let secs = interval.as_secs_f64().max(0.001);
        let rate = |i: usize| (now[i] - prev[i]) as f64 / secs;
        let line = format!(
            "status: {} clients ({behind} more than half behind, {} blocked), {} pending, {:.1} quotes/s in, {:.1} quotes/s out, {} slow-consumer drops, upstream {}",
            self.clients_connected.load(Relaxed),
            self.writers_blocked.load(Relaxed),
            self.pending_connections.load(Relaxed),
            rate(0),
            rate(1),
            now[2] - prev[2],
            describe(&self.upstream()),
        );
        *prev = now;
        line
    }
}

fn describe(state: &UpstreamState) -> String {
    match state {
        UpstreamState::NotYetConnected => "not yet connected".into(),
        UpstreamState::Connected { .. } => "connected".into(),
        UpstreamState::Reconnecting { reason, .. } => format!("reconnecting ({reason})"),
        UpstreamState::Refused { reason, .. } => format!("refused by the provider: {reason}"),
    }
}

/// Threads in this process, from /proc (0 where there is no /proc).
pub fn process_threads() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Whether a feed whose last quote came at `last` (ms, 0 for never) is healthy by the
/// market-hours rule: the market is closed, or a quote arrived within `stale`, or the market
/// opened less than `stale` ago. Returns the verdict, the status word and any further JSON
/// fields of a `/healthz` body (each with its leading comma).
pub fn feed_verdict(
    market: &Market,
    stale: Duration,
    now_ms: u64,
    last: u64,
) -> (bool, &'static str, String) {
    match market.state(now_ms) {
        MarketState::Closed { opens_ms, .. } => (
            true,
            "market_closed",
            format!(
                ",\"market_opens_ms\":{opens_ms},\"market_opens\":\"{}\"",
                market::iso_utc(opens_ms)
            ),
        ),
        MarketState::Open { since_ms } => {
            let quiet = now_ms.saturating_sub(last.max(since_ms));
            if quiet <= stale.as_millis() as u64 {
                (true, "ok", String::new())
            } else if last > 0 {
                (false, "stale", String::new())
            } else {
                (false, "no_quote_yet", String::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::market::MarketHours;

    fn always() -> Market {
        Market::new(MarketHours::Always, &[])
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    #[test]
    fn health_follows_the_upstream() {
        let m = Metrics::new();
        let always = always();
        let health = |stale, now| m.health(&always, stale, now);
        let stale = Duration::from_secs(30);
        let (code, body) = health(stale, 1_000_000);
        assert_eq!(code, 503);
        assert!(body.contains("not_connected"), "{body}");
        m.set_upstream(UpstreamState::Connected { since_ms: 1 });
        m.last_quote_ms.store(990_000, Relaxed);
        let (code, body) = health(stale, 1_000_000);
        assert_eq!(code, 200, "{body}");
        assert!(body.ends_with("}\n") && !body[..body.len() - 1].contains('\n'));
        let (code, body) = health(stale, 1_100_000);
        assert_eq!((code, body.contains("stale")), (503, true), "{body}");
        m.set_upstream(UpstreamState::Reconnecting {
            since_ms: 5,
            reason: "closed \"by\" peer".into(),
        });
        let (code, body) = health(stale, 1_000_000);
        assert_eq!(code, 503);
        assert!(
            body.contains(r#""reason":"closed \"by\" peer","since_ms":5"#),
            "{body}"
        );
    }

    /// Epoch ms of `YYYY-MM-DD HH:MM` UTC.
    fn at(date: &str, hh: u64, mm: u64) -> u64 {
        date.parse::<crate::market::Date>().unwrap().start_ms() + (hh * 60 + mm) * 60_000
    }

    #[test]
    fn health_at_the_weekend() {
        let stale = Duration::from_secs(30);
        let fx = Market::new(MarketHours::Fx, &["2026-12-25".parse().unwrap()]);
        let m = Metrics::new();
        m.set_upstream(UpstreamState::Connected { since_ms: 1 });

        // Friday 21:58 with a fresh quote; 22:01 with the same quote three minutes old.
        m.last_quote_ms.store(at("2026-12-04", 21, 58), Relaxed);
        let (code, body) = m.health(&fx, stale, at("2026-12-04", 21, 58) + 10_000);
        assert_eq!((code, json(&body)["status"].as_str()), (200, Some("ok")));
        let (code, body) = m.health(&fx, stale, at("2026-12-04", 22, 1));
        let b = json(&body);
        assert_eq!((code, b["status"].as_str()), (200, Some("market_closed")));
        assert_eq!(b["market_opens_ms"], at("2026-12-06", 21, 0));
        assert_eq!(b["market_opens"], "2026-12-06T21:00:00Z");
        assert_eq!(b["last_quote_age_secs"], 180.0);
        assert!(body.ends_with("}\n") && !body[..body.len() - 1].contains('\n'));

        // Sunday: closed until 21:00, then the source has `stale` to send a quote.
        let (code, body) = m.health(&fx, stale, at("2026-12-06", 20, 59));
        assert_eq!(
            (code, json(&body)["status"].as_str()),
            (200, Some("market_closed"))
        );
        let (code, body) = m.health(&fx, stale, at("2026-12-06", 21, 0) + 30_000);
        assert_eq!((code, json(&body)["status"].as_str()), (200, Some("ok")));
        let (code, body) = m.health(&fx, stale, at("2026-12-06", 21, 1));
        assert_eq!((code, json(&body)["status"].as_str()), (503, Some("stale")));

        // The same silence under `always` is stale, weekend or not.
        let (code, body) = m.health(&always(), stale, at("2026-12-05", 12, 0));
        assert_eq!((code, json(&body)["status"].as_str()), (503, Some("stale")));

        // A closed date: Christmas Eve from 21:00 joins the weekend.
        let (code, body) = m.health(&fx, stale, at("2026-12-24", 21, 30));
        let b = json(&body);
        assert_eq!((code, b["status"].as_str()), (200, Some("market_closed")));
        assert_eq!(b["market_opens"], "2026-12-27T21:00:00Z");

        // Restarted on Saturday: no quote yet, market closed; after the opening and `stale`
        // with still no quote, no_quote_yet.
        let fresh = Metrics::new();
        fresh.set_upstream(UpstreamState::Connected { since_ms: 1 });
        let (code, body) = fresh.health(&fx, stale, at("2026-12-05", 12, 0));
        let b = json(&body);
        assert_eq!((code, b["status"].as_str()), (200, Some("market_closed")));
        assert_eq!(b["last_quote_age_secs"], serde_json::Value::Null);
        let (code, _) = fresh.health(&fx, stale, at("2026-12-06", 21, 0) + 5_000);
        assert_eq!(code, 200);
        let (code, body) = fresh.health(&fx, stale, at("2026-12-06", 21, 1));
        assert_eq!(
            (code, json(&body)["status"].as_str()),
            (503, Some("no_quote_yet"))
        );

        // A broken upstream is a 503 at any hour.
        for state in [
            UpstreamState::NotYetConnected,
            UpstreamState::Reconnecting {
                since_ms: 5,
                reason: "refused".into(),
            },
            UpstreamState::Refused {
                since_ms: 5,
                reason: "its connection limit".into(),
            },
        ] {
            m.set_upstream(state);
            let (code, body) = m.health(&fx, stale, at("2026-12-05", 12, 0));
            assert_eq!(code, 503, "{body}");
            assert_ne!(json(&body)["status"], "market_closed");
        }
    }

    #[test]
    fn the_market_gauge() {
        let m = Metrics::new();
        let fx = Market::new(MarketHours::Fx, &[]);
        let queues = QueueStats::new(8);
        let view = |now_ms| View {
            market: &fx,
            symbols: &[],
            batching: false,
            queues: &queues,
            backlog: None,
            places: (0, 10),
            threads_live: 1,
            now_ms,
        };
        let text = m.render(&view(at("2026-12-05", 12, 0)));
        assert!(text.contains("# TYPE fxproxy_market_open gauge\nfxproxy_market_open 0\n"));
        let text = m.render(&view(at("2026-12-07", 12, 0)));
        assert!(text.contains("\nfxproxy_market_open 1\n"));
    }

    #[test]
    fn the_clock_is_the_one_given() {
        let saturday = at("2026-12-05", 12, 0);
        let m = Metrics::with_clock(Clock::starting_at(saturday));
        assert!(m.now_ms().abs_diff(saturday) < 5_000);
        assert!(Metrics::new().now_ms().abs_diff(now_ms()) < 5_000);
    }

    #[test]
    fn queue_stats_count_depths_and_clients_behind() {
        let mut stats = QueueStats::new(1024);
        assert_eq!(stats.bounds, vec![0, 1, 4, 16, 64, 256, 512, 1024]);
        for depth in [0, 0, 3, 600, 1024] {
            stats.add(depth);
        }
        assert_eq!(stats.cumulative, vec![2, 2, 3, 3, 3, 3, 3, 5]);
        assert_eq!((stats.sum, stats.count, stats.behind), (1627, 5, 2));
        assert_eq!(QueueStats::new(8).bounds, vec![0, 1, 4, 8]);
    }

    #[test]
    fn metrics_have_help_and_type_for_each_family() {
        let m = Metrics::new();
        m.auth_failed(AuthFailure::Timeout);
        let queues = QueueStats::new(1024);
        let market = always();
        let text = m.render(&View {
            market: &market,
            symbols: &[("EURUSD".into(), 500)],
            batching: false,
            queues: &queues,
            backlog: Some((3, 4096)),
            places: (2, 10_000),
            threads_live: 9,
            now_ms: 1500,
        });
        assert!(text.contains("fxproxy_market_open 1\n"));
        assert!(text.contains("# TYPE fxproxy_auth_failures_total counter"));
        assert!(text.contains("fxproxy_auth_failures_total{reason=\"timeout\"} 1\n"));
        assert!(text.contains("fxproxy_last_quote_age_seconds{symbol=\"EURUSD\"} 1\n"));
        assert!(text.contains("fxproxy_accept_backlog{kind=\"used\"} 3\n"));
        assert!(text.contains("fxproxy_client_queue_depth_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.contains("# TYPE fxproxy_client_queue_depth histogram\n"));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let parts: Vec<&str> = line.split(' ').collect();
            if parts[3] == "counter" {
                assert!(parts[2].ends_with("_total"), "{line}");
            }
        }
    }
}
