//! `/metrics` in Prometheus' text exposition format, and the periodic status line: the
//! counters the stages keep (`base::metrics`) with what is read when it is scraped (the hub's
//! queues, the listen queue, the places, the threads, the process in `/proc`).
//!
//! Renamed series are written under their old name too for one release (see
//! [`DEPRECATED`]), so that dashboards and alerts keep working while they are changed.

use crate::base::histogram::{self, Histogram};
use crate::base::market::Market;
use crate::base::metrics::{
    AuthFailure, Eviction, Metrics, QueueStats, Rejection, UpstreamState, PROTOCOL_CLOSE_CODES,
};
use crate::base::prometheus::{label, Exposition};
use crate::ops::process::{Process, BUILD};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Series renamed in 0.1 (issue 25), each still written under its old name until the next
/// release: `(old, new)`.
pub const DEPRECATED: [(&str, &str); 3] = [
    (
        "fxproxy_tls_certificate_expiry_seconds",
        "fxproxy_tls_certificate_expiry_timestamp_seconds",
    ),
    ("fxproxy_threads_started", "fxproxy_threads_live"),
    ("fxproxy_process_threads", "process_threads"),
];

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
    /// The process as `/proc/self` tells it.
    pub process: &'a Process,
    pub now_ms: u64,
}

/// `/metrics` in the Prometheus text exposition format (version 0.0.4).
pub fn render(m: &Metrics, view: &View) -> String {
    let mut out = Exposition::with_capacity(8192);
    clients(&mut out, m);
    reloads(&mut out, m);
    connections(&mut out, m, view);
    feed(&mut out, m, view);
    latencies(&mut out, m);
    tls(&mut out, m);
    conflation_and_recording(&mut out, m);
    process(&mut out, view.process);
    out.into_text()
}

fn c(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

/// Each reason's label with its count.
fn by_reason<R: Copy>(
    all: &[R],
    label_of: fn(R) -> &'static str,
    count: impl Fn(R) -> u64,
) -> Vec<(String, u64)> {
    all.iter()
        .map(|r| (label("reason", label_of(*r)), count(*r)))
        .collect()
}

/// Outcomes of something reloaded: `ok`, or `failed` (the previous one kept).
fn by_result(ok: &AtomicU64, failed: &AtomicU64) -> [(String, u64); 2] {
    [
        (label("result", "ok"), c(ok)),
        (label("result", "failed"), c(failed)),
    ]
}

/// Who connected and authenticated, and who was refused or closed for misbehaving.
fn clients(out: &mut Exposition, m: &Metrics) {
    out.single(
        "fxproxy_clients_connected",
        "gauge",
        "Authenticated clients currently receiving quotes.",
        c(&m.clients_connected),
    );
    out.single(
        "fxproxy_auth_successes_total",
        "counter",
        "Clients that authenticated.",
        c(&m.auth_successes),
    );
    out.family(
        "fxproxy_auth_failures_total",
        "counter",
        "Clients refused at authentication, by reason.",
        by_reason(&AuthFailure::ALL, AuthFailure::label, |f| {
            m.auth_failures(f)
        }),
    );
    out.single(
        "fxproxy_quotes_received_total",
        "counter",
        "Quotes received from the upstream.",
        c(&m.quotes_received),
    );
    out.single(
        "fxproxy_quotes_delivered_total",
        "counter",
        "Quote frames written to clients.",
        c(&m.quotes_delivered),
    );
    out.single(
        "fxproxy_slow_consumer_disconnects_total",
        "counter",
        "Clients disconnected because their queue was full.",
        c(&m.slow_consumer_disconnects),
    );
    out.family(
        "fxproxy_rejected_connections_total",
        "counter",
        "Connections refused at the handshake, by reason (max_clients and thread_ceiling: 503; origin: 403; bad_request: 400/426/431, or not TLS on a TLS port; no_thread: close 1013; tls: a failed TLS handshake).",
        by_reason(&Rejection::ALL, Rejection::label, |r| m.rejections(r)),
    );
}

/// The key file and proxy.conf read again.
fn reloads(out: &mut Exposition, m: &Metrics) {
    out.family(
        "fxproxy_key_file_reloads_total",
        "counter",
        "Times the client key file changed, by outcome (failed: kept the previous keys).",
        by_result(&m.key_reloads, &m.key_reload_failures),
    );
    out.family(
        "fxproxy_config_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP), by outcome (failed: a broken proxy.conf or key file; the running configuration was kept).",
        by_result(&m.config_reloads, &m.config_reload_failures),
    );
    out.single(
        "fxproxy_config_pending_restart",
        "gauge",
        "Keys of proxy.conf changed at the last reload that take effect only after a restart (listen, upstream_url, symbols, ...).",
        c(&m.config_pending_restart),
    );
}

/// Connections on their way in, the places and threads they take, and the writers' queues.
fn connections(out: &mut Exposition, m: &Metrics, view: &View) {
    out.single(
        "fxproxy_upstream_connects_total",
        "counter",
        "Successful connections to the upstream.",
        c(&m.upstream_connects),
    );
    out.single(
        "fxproxy_upstream_reconnects_total",
        "counter",
        "Upstream connections lost and tried again.",
        c(&m.upstream_reconnects),
    );
    out.family(
        "fxproxy_client_protocol_errors_total",
        "counter",
        "Clients closed for a protocol error (1002), invalid UTF-8 (1007) or a message over max_message_bytes (1009).",
        PROTOCOL_CLOSE_CODES
            .iter()
            .zip(&m.protocol_errors)
            .map(|(code, n)| (label("close_code", code), c(n))),
    );
    out.single(
        "fxproxy_client_flood_disconnects_total",
        "counter",
        "Clients closed for sending more than max_client_messages_per_sec.",
        c(&m.flood_disconnects),
    );
    out.family(
        "fxproxy_pending_evictions_total",
        "counter",
        "Unauthenticated connections dropped to make room, by reason (pending_full: max_pending_connections; place: max_clients), each only after the grace.",
        by_reason(&Eviction::ALL, Eviction::label, |e| m.evictions(e)),
    );
    out.single(
        "fxproxy_pending_connections",
        "gauge",
        "Connections accepted and still in their HTTP request, WebSocket handshake or auth (no thread yet).",
        c(&m.pending_connections),
    );
    out.single(
        "fxproxy_accept_pauses_total",
        "counter",
        "Times accepting paused because max_pending_connections were pending and all were young; newcomers waited in the listen queue.",
        c(&m.accept_pauses),
    );
    if let Some((used, max)) = view.backlog {
        out.family(
            "fxproxy_accept_backlog",
            "gauge",
            "The kernel's listen queue: connections waiting to be accepted (used) and its length (max).",
            [(label("kind", "used"), used), (label("kind", "max"), max)],
        );
    }
    out.family(
        "fxproxy_client_places",
        "gauge",
        "Places among max_clients: taken (upgraded connections, and client threads until the kernel has let them go) and limit (max_clients, or fewer under the thread ceiling).",
        [
            (label("kind", "taken"), view.places.0),
            (label("kind", "limit"), view.places.1),
        ],
    );
    for name in ["fxproxy_threads_live", "fxproxy_threads_started"] {
        out.single(
            name,
            "gauge",
            &help_for(
                name,
                "Threads fxproxy started that the kernel still holds (running or winding down).",
            ),
            view.threads_live,
        );
    }
    out.single(
        "fxproxy_writers_blocked",
        "gauge",
        "Clients whose socket takes no more bytes right now (their queue absorbs the quotes).",
        c(&m.writers_blocked),
    );
    let queues = view.queues;
    out.histogram(
        "fxproxy_client_queue_depth",
        "Frames queued per client, over every client at the time of the scrape (client_queue_len full is a slow consumer).",
        queues.bounds.iter().zip(queues.cumulative.iter().copied()),
        queues.sum,
        queues.count,
    );
    out.single(
        "fxproxy_clients_behind",
        "gauge",
        "Clients with more than half of client_queue_len queued.",
        queues.behind,
    );
    out.single(
        "fxproxy_internal_errors_total",
        "counter",
        "Client connections closed with 1011 after an internal error (a bug: see the log).",
        c(&m.internal_errors),
    );
}

/// The upstream connection, the market's hours and how old each symbol's last quote is.
fn feed(out: &mut Exposition, m: &Metrics, view: &View) {
    let connected = matches!(m.upstream(), UpstreamState::Connected { .. });
    out.single(
        "fxproxy_upstream_connected",
        "gauge",
        "1 when the upstream connection is up.",
        u64::from(connected),
    );
    out.single(
        "fxproxy_market_open",
        "gauge",
        "1 while the market is open by market_hours and market_closed_dates; quote ages grow while it is closed.",
        u64::from(view.market.is_open(view.now_ms)),
    );
    out.family(
        "fxproxy_last_quote_age_seconds",
        "gauge",
        "Seconds since the last quote, per symbol.",
        view.symbols
            .iter()
            .filter(|(_, ms)| *ms > 0)
            .map(|(sym, ms)| {
                (
                    label("symbol", sym),
                    view.now_ms.saturating_sub(*ms) as f64 / 1000.0,
                )
            }),
    );
    out.single(
        "fxproxy_batching",
        "gauge",
        "1 while writers send quotes in batches on the batch_delay_ms grid (heavy load).",
        u64::from(view.batching),
    );
    upstream_symbols(out, m);
}

/// What the provider answered about each configured symbol.
fn upstream_symbols(out: &mut Exposition, m: &Metrics) {
    out.family(
        "fxproxy_upstream_symbol",
        "gauge",
        "Each configured symbol's standing with the provider, by its acknowledgement of the subscription: accepted, denied, invalid, or unacknowledged (not yet, or the provider sends no acknowledgement).",
        m.upstream_symbols.all().into_iter().map(|(symbol, state)| {
            (
                format!("{{symbol=\"{symbol}\",state=\"{}\"}}", state.label()),
                1,
            )
        }),
    );
    if let Some(limit) = m.upstream_symbols.limit() {
        out.single(
            "fxproxy_upstream_symbol_limit",
            "gauge",
            "How many symbols the provider's plan allows, as its login said.",
            limit,
        );
    }
}

/// Latencies measured as quotes flow, in seconds (see `base::histogram`).
fn latencies(out: &mut Exposition, m: &Metrics) {
    let write = |out: &mut Exposition, name: &str, help: &str, h: &Histogram| {
        let s = h.snapshot();
        out.histogram(
            name,
            help,
            histogram::BOUNDS_LABELS.iter().zip(s.cumulative),
            s.sum_seconds,
            s.count(),
        );
    };
    write(
        out,
        "fxproxy_upstream_quote_age_seconds",
        "How old each quote was when the proxy read it from the upstream, by the provider's own timestamp (quotes that carry one; a provider clock ahead of ours counts as 0).",
        &m.quote_age,
    );
    write(
        out,
        "fxproxy_client_queue_wait_seconds",
        "Per write to a client: how long the oldest frame written waited between the distributor queueing it and the write reaching the client's socket.",
        &m.queue_wait,
    );
    write(
        out,
        "fxproxy_client_ping_rtt_seconds",
        "From a ping to a client to its answer being read: the network round trip plus however long the client took to read what was sent before the ping.",
        &m.ping_rtt,
    );
}

/// The client port's certificate, once one is served.
fn tls(out: &mut Exposition, m: &Metrics) {
    let not_after = c(&m.tls_cert_not_after_ms);
    if not_after > 0 {
        for name in [
            "fxproxy_tls_certificate_expiry_timestamp_seconds",
            "fxproxy_tls_certificate_expiry_seconds",
        ] {
            out.single(
                name,
                "gauge",
                &help_for(
                    name,
                    "When the certificate served on the client port lapses, in seconds since the Unix epoch.",
                ),
                not_after as f64 / 1000.0,
            );
        }
        out.family(
            "fxproxy_tls_certificate_reloads_total",
            "counter",
            "Times the TLS certificate files changed, by outcome (failed: kept the previous certificate).",
            by_result(&m.tls_reloads, &m.tls_reload_failures),
        );
    }
}

/// `slow_client = conflate` and `record_file`.
fn conflation_and_recording(out: &mut Exposition, m: &Metrics) {
    out.single(
        "fxproxy_quotes_conflated_total",
        "counter",
        "Quotes conflating clients were not sent because a newer quote of the symbol replaced them while they were behind (slow_client = conflate).",
        c(&m.quotes_conflated),
    );
    out.single(
        "fxproxy_clients_conflating",
        "gauge",
        "Conflating clients behind right now, sent the latest quote of each symbol as they catch up.",
        c(&m.clients_conflating),
    );
    out.single(
        "fxproxy_recording",
        "gauge",
        "1 while every upstream frame is written to record_file (0: off, or stopped by an error: see the log).",
        c(&m.recording),
    );
    out.single(
        "fxproxy_recorded_frames_total",
        "counter",
        "Upstream frames written to record_file.",
        c(&m.recorded_frames),
    );
    out.single(
        "fxproxy_record_dropped_total",
        "counter",
        "Upstream frames left out of record_file because the disk did not keep up.",
        c(&m.record_dropped),
    );
}

/// The standard `process_*` series, the build, and the deprecated `fxproxy_process_threads`.
fn process(out: &mut Exposition, p: &Process) {
    if let Some(v) = p.cpu_seconds {
        out.single(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            v,
        );
    }
    let gauges = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.virtual_bytes,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit).",
            p.max_fds,
        ),
        (
            "process_threads",
            "Number of OS threads in the process.",
            p.threads,
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            out.single(name, "gauge", help, v);
        }
    }
    if let Some(v) = p.start_time_seconds {
        out.single(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            v,
        );
    }
    out.family(
        "fxproxy_build_info",
        "gauge",
        "Always 1: the version of fxproxy, the target it was built for and the Rust compiler that built it.",
        [(
            format!(
                "{{version=\"{}\",target=\"{}\",rustc=\"{}\"}}",
                BUILD.version, BUILD.target, BUILD.rustc
            ),
            1,
        )],
    );
    if let Some(v) = p.threads {
        out.single(
            "fxproxy_process_threads",
            "gauge",
            &help_for("fxproxy_process_threads", "Threads in the proxy process."),
            v,
        );
    }
}

/// The help of a series, with a note under a deprecated name saying what to use instead.
fn help_for(name: &str, help: &str) -> String {
    match DEPRECATED.iter().find(|(old, _)| *old == name) {
        Some((_, new)) => {
            format!("Deprecated, to be removed in the next release: use {new}. {help}")
        }
        None => help.to_string(),
    }
}

/// The periodic status line: rates over `interval` from the counters' previous values.
pub fn status_line(m: &Metrics, prev: &mut [u64; 3], interval: Duration, behind: u64) -> String {
    let now = [
        m.quotes_received.load(Relaxed),
        m.quotes_delivered.load(Relaxed),
        m.slow_consumer_disconnects.load(Relaxed),
    ];
    let secs = interval.as_secs_f64().max(0.001);
    let rate = |i: usize| (now[i] - prev[i]) as f64 / secs;
    let line = format!(
        "status: {} clients ({behind} more than half behind, {} blocked), {} pending, {:.1} quotes/s in, {:.1} quotes/s out, {} slow-consumer drops, upstream {}",
        m.clients_connected.load(Relaxed),
        m.writers_blocked.load(Relaxed),
        m.pending_connections.load(Relaxed),
        rate(0),
        rate(1),
        now[2] - prev[2],
        describe(&m.upstream()),
    );
    *prev = now;
    line
}

fn describe(state: &UpstreamState) -> String {
    match state {
        UpstreamState::NotYetConnected => "not yet connected".into(),
        UpstreamState::Connected { .. } => "connected".into(),
        UpstreamState::Reconnecting { reason, .. } => format!("reconnecting ({reason})"),
        UpstreamState::Refused { reason, .. } => format!("refused by the provider: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::market::utc_ms as at;
    use crate::base::market::MarketHours;

    fn always() -> Market {
        Market::new(MarketHours::Always, &[])
    }

    /// A view of an idle proxy: no symbols, no backlog, one thread, a place of ten.
    fn idle<'a>(market: &'a Market, queues: &'a QueueStats, process: &'a Process) -> View<'a> {
        View {
            market,
            symbols: &[],
            batching: false,
            queues,
            backlog: None,
            places: (0, 10),
            threads_live: 1,
            process,
            now_ms: 0,
        }
    }

    #[test]
    fn the_market_gauge() {
        let m = Metrics::new();
        let fx = Market::new(MarketHours::Fx, &[]);
        let queues = QueueStats::new(8);
        let process = Process::default();
        let view = |now_ms| View {
            market: &fx,
            symbols: &[],
            batching: false,
            queues: &queues,
            backlog: None,
            places: (0, 10),
            threads_live: 1,
            process: &process,
            now_ms,
        };
        let text = render(&m, &view(at("2026-12-05", 12, 0)));
        assert!(text.contains("# TYPE fxproxy_market_open gauge\nfxproxy_market_open 0\n"));
        let text = render(&m, &view(at("2026-12-07", 12, 0)));
        assert!(text.contains("\nfxproxy_market_open 1\n"));
    }

    #[test]
    fn metrics_have_help_and_type_for_each_family() {
        let m = Metrics::new();
        m.auth_failed(AuthFailure::Timeout);
        let queues = QueueStats::new(1024);
        let market = always();
        let text = render(
            &m,
            &View {
                market: &market,
                symbols: &[("EURUSD".into(), 500)],
                batching: false,
                queues: &queues,
                backlog: Some((3, 4096)),
                places: (2, 10_000),
                threads_live: 9,
                process: &Process {
                    cpu_seconds: Some(1.5),
                    threads: Some(12),
                    ..Process::default()
                },
                now_ms: 1500,
            },
        );
        assert!(text.contains("fxproxy_market_open 1\n"));
        assert!(text.contains("# TYPE fxproxy_auth_failures_total counter"));
        assert!(text.contains("fxproxy_auth_failures_total{reason=\"timeout\"} 1\n"));
        assert!(text.contains("fxproxy_last_quote_age_seconds{symbol=\"EURUSD\"} 1\n"));
        assert!(text.contains("fxproxy_accept_backlog{kind=\"used\"} 3\n"));
        assert!(text.contains("fxproxy_client_queue_depth_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.contains("# TYPE fxproxy_client_queue_depth histogram\n"));
        assert!(text.contains("\nprocess_cpu_seconds_total 1.5\n"));
        assert!(text.contains("\nprocess_threads 12\n"));
        assert!(!text.contains("process_open_fds"), "unknown: left out");
        assert!(text.contains(&format!(
            "\nfxproxy_build_info{{version=\"{}\",target=\"",
            env!("CARGO_PKG_VERSION")
        )));
        m.upstream_symbols
            .configure(&["EURUSD".into(), "XAUUSD".into()]);
        m.upstream_symbols.set(vec![
            crate::base::symbol_states::SymbolState::Accepted,
            crate::base::symbol_states::SymbolState::Denied("plan".into()),
        ]);
        let text = render(
            &m,
            &View {
                places: (0, 1),
                now_ms: 1500,
                ..idle(&market, &queues, &Process::default())
            },
        );
        assert!(text.contains("fxproxy_upstream_symbol{symbol=\"EURUSD\",state=\"accepted\"} 1\n"));
        assert!(text.contains("fxproxy_upstream_symbol{symbol=\"XAUUSD\",state=\"denied\"} 1\n"));
        assert!(!text.contains("fxproxy_upstream_symbol_limit"));
        let mut families = std::collections::HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let parts: Vec<&str> = line.split(' ').collect();
            assert!(families.insert(parts[2]), "{} twice", parts[2]);
            match parts[3] {
                "counter" => assert!(parts[2].ends_with("_total"), "{line}"),
                "gauge" => assert!(!parts[2].ends_with("_total"), "{line}"),
                _ => {}
            }
        }
    }

    #[test]
    fn renamed_series_keep_their_old_name_for_one_release() {
        let m = Metrics::new();
        m.tls_cert_not_after_ms.store(1_800_000_000_000, Relaxed);
        let queues = QueueStats::new(8);
        let market = always();
        let text = render(
            &m,
            &View {
                market: &market,
                symbols: &[],
                batching: false,
                queues: &queues,
                backlog: None,
                places: (0, 10),
                threads_live: 7,
                process: &Process {
                    threads: Some(9),
                    ..Process::default()
                },
                now_ms: 0,
            },
        );
        for (old, new) in DEPRECATED {
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                    .unwrap_or_else(|| panic!("{name} missing"))
                    .to_string()
            };
            assert_eq!(value(old), value(new), "{old} and {new}");
            assert!(
                text.contains(&format!(
                    "# HELP {old} Deprecated, to be removed in the next release: use {new}."
                )),
                "{old}"
            );
        }
        assert!(text.contains("\nfxproxy_tls_certificate_expiry_timestamp_seconds 1800000000\n"));
    }

    #[test]
    fn latency_histograms_are_written_in_seconds() {
        let m = Metrics::new();
        m.ping_rtt.observe(Duration::from_millis(3));
        let queues = QueueStats::new(8);
        let market = always();
        let text = render(&m, &idle(&market, &queues, &Process::default()));
        assert!(text.contains("# TYPE fxproxy_client_ping_rtt_seconds histogram\n"));
        assert!(text.contains("\nfxproxy_client_ping_rtt_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("\nfxproxy_client_ping_rtt_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("\nfxproxy_client_ping_rtt_seconds_count 1\n"));
        assert!(text.contains("\nfxproxy_client_queue_wait_seconds_count 0\n"));
        assert!(text.contains("\nfxproxy_upstream_quote_age_seconds_bucket{le=\"+Inf\"} 0\n"));
    }
}
