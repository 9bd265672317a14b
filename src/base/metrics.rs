//! Counters the proxy keeps about itself, bumped by every stage: plain atomics, once per batch
//! or per event, never per client per quote under a lock. `ops::metrics` writes them out for
//! `/metrics` and the status line; `feed::health` judges the feed by them.
//!
//! The proxy's [`Clock`] lives here too: quote times are stamped, and ages and the market's
//! hours judged, by the one clock, which tests can set to a Friday night or a Saturday.

use crate::base::clock::Clock;
use crate::base::histogram::Histogram;
use crate::base::symbol_states::SymbolStates;

use parking_lot::Mutex;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    pub const ALL: [AuthFailure; 5] = [
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
    pub const ALL: [Rejection; 6] = [
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
    pub const ALL: [Eviction; 2] = [Eviction::PendingFull, Eviction::Place];

    pub fn label(self) -> &'static str {
        match self {
            Eviction::PendingFull => "pending_full",
            Eviction::Place => "place",
        }
    }
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
    /// What the provider answered about each configured symbol (its acknowledgements).
    pub upstream_symbols: SymbolStates,
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

    // Latencies (see `base::histogram`: none costs a shared write per client per quote).
    /// How old each quote was, by the provider's own timestamp, when the upstream thread read
    /// it (quotes that carry a timestamp only).
    pub quote_age: Histogram,
    /// Per write to a client: from the distributor queueing the oldest frame of the write to
    /// the write reaching the client's socket.
    pub queue_wait: Histogram,
    /// From a ping to a client to its answer being read: its network round trip, plus however
    /// long it took to read what was sent before the ping.
    pub ping_rtt: Histogram,
}

/// The close codes counted in `protocol_errors`, in its order.
pub const PROTOCOL_CLOSE_CODES: [u16; 3] = [1002, 1007, 1009];

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

    /// Counts a client closed with `code`, if it is one of [`PROTOCOL_CLOSE_CODES`].
    pub fn protocol_error(&self, code: u16) {
        if let Some(i) = PROTOCOL_CLOSE_CODES.iter().position(|c| *c == code) {
            self.protocol_errors[i].fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::market::utc_ms as at;

    #[test]
    fn the_clock_is_the_one_given() {
        let saturday = at("2026-12-05", 12, 0);
        let m = Metrics::with_clock(Clock::starting_at(saturday));
        assert!(m.now_ms().abs_diff(saturday) < 5_000);
        assert!(
            Metrics::new()
                .now_ms()
                .abs_diff(crate::base::clock::now_ms())
                < 5_000
        );
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
}
