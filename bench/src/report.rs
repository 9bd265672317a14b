//! The figures of one run: a readable report, and one JSON line for the sweep.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::args::Options;
use crate::clients::{new_histogram, ThreadResult};
use crate::scrape::Scrapes;

pub struct Report {
    pub label: String,
    pub what: String,
    pub url: String,
    pub pid: Option<u32>,
    pub built: Option<u64>,
    pub clients: usize,
    pub rate: f64,
    pub symbols: String,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// `storm` (every client at once) or `paced N` (N attempts in flight).
    pub connect_mode: String,
    pub connect_concurrency: usize,
    /// Clients that speak v2 (`--v2-share`).
    pub v2_clients: usize,

    pub connected: usize,
    pub silent: usize,
    pub stalled: usize,
    pub disconnected: usize,
    pub failed: usize,
    pub failures: BTreeMap<String, usize>,
    pub closes: BTreeMap<String, usize>,
    pub connect_phase_s: f64,
    /// The kernel's cap on any listen backlog: what a storm beyond the accept rate queues in.
    pub somaxconn: Option<u64>,
    pub connect_s: Option<f64>,
    pub confirm_s: Option<f64>,
    pub last_handshake_ns: Option<u64>,
    pub last_confirm_ns: Option<u64>,
    /// Per connected client: its attempt's start until its auth message was sent.
    pub connect_hist: Histogram<u64>,

    pub window_s: f64,
    pub whole_s: f64,
    pub hist: Histogram<u64>,
    pub delivered_total: u64,
    pub delivered_window: u64,
    pub lost: u64,
    pub dup: u64,
    pub feed_sent_window: u64,
    pub upstream_subscriptions: u64,

    pub proxy_cpu_s_whole: Option<f64>,
    pub proxy_cpu_s_window: Option<f64>,
    pub loadgen_cpu_s_window: Option<f64>,
    pub loadgen_rss: Option<u64>,
    pub other_cpu_s_window: Option<f64>,
    pub rss: Option<u64>,
    pub rss_peak: Option<u64>,
    pub threads: Option<u64>,
    pub threads_peak: Option<u64>,
    pub target_exit: Option<String>,
    /// With `--scrape`: what the scraper saw.
    pub scrapes: Option<Scrapes>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn mb(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl Report {
    pub fn new(o: &Options, label: &str, what: &str, url: &str) -> Report {
        Report {
            label: label.into(),
            what: what.into(),
            url: url.into(),
            pid: None,
            built: None,
            clients: o.clients,
            rate: o.rate,
            symbols: o.symbols.join(","),
            warmup_s: o.warmup,
            duration_s: o.duration,
            connect_mode: o.connect_mode(),
            connect_concurrency: o.connect_concurrency,
            v2_clients: o.v2_clients(o.clients),
            connected: 0,
            silent: 0,
            stalled: 0,
            disconnected: 0,
            failed: 0,
            failures: BTreeMap::new(),
            closes: BTreeMap::new(),
            connect_phase_s: 0.0,
            somaxconn: None,
            connect_s: None,
            confirm_s: None,
            last_handshake_ns: None,
            last_confirm_ns: None,
            connect_hist: new_histogram(),
            window_s: 0.0,
            whole_s: 0.0,
            hist: new_histogram(),
            delivered_total: 0,
            delivered_window: 0,
            lost: 0,
            dup: 0,
            feed_sent_window: 0,
            upstream_subscriptions: 0,
            proxy_cpu_s_whole: None,
            proxy_cpu_s_window: None,
            loadgen_cpu_s_window: None,
            loadgen_rss: None,
            other_cpu_s_window: None,
            rss: None,
            rss_peak: None,
            threads: None,
            threads_peak: None,
            target_exit: None,
            scrapes: None,
        }
    }

    pub fn merge(&mut self, results: Vec<ThreadResult>, clients: usize) {
        let mut hs = 0u64;
        let mut cs = 0u64;
        for r in results {
            let _ = self.hist.add(&r.hist);
            let _ = self.connect_hist.add(&r.connect_hist);
            self.delivered_total += r.delivered_total;
            self.delivered_window += r.delivered_window;
            self.lost += r.lost;
            self.dup += r.dup;
            self.connected += r.connected;
            self.silent += r.silent;
            self.stalled += r.stalled;
            self.disconnected += r.disconnected;
            self.failed += r.failed;
            hs = hs.max(r.last_handshake_ns);
            cs = cs.max(r.last_confirm_ns);
            for (k, v) in r.failures {
                *self.failures.entry(k).or_default() += v;
            }
            for (k, v) in r.closes {
                *self.closes.entry(k).or_default() += v;
            }
        }
        debug_assert_eq!(
            self.connected + self.silent + self.disconnected + self.failed,
            clients
        );
        self.last_handshake_ns = (hs > 0).then_some(hs);
        // Only meaningful when every client that is still open had a quote.
        self.last_confirm_ns = (cs > 0 && self.silent == 0).then_some(cs);
    }

    /// Clients that are up: open with quotes, or open on an idle feed that sends none.
    pub fn up(&self) -> usize {
        self.connected + if self.rate == 0.0 { self.silent } else { 0 }
    }

    pub fn delivered_per_s(&self) -> f64 {
        self.delivered_window as f64 / self.window_s.max(1e-9)
    }

    pub fn cpu_us_per_delivery(&self) -> Option<f64> {
        let cpu = self.proxy_cpu_s_whole?;
        (self.delivered_total > 0).then(|| cpu * 1e6 / self.delivered_total as f64)
    }

    pub fn proxy_cpu_pct_window(&self) -> Option<f64> {
        Some(self.proxy_cpu_s_window? * 100.0 / self.window_s.max(1e-9))
    }

    pub fn other_cpu_pct_window(&self) -> Option<f64> {
        Some(self.other_cpu_s_window? * 100.0 / self.window_s.max(1e-9))
    }

    fn pct(&self, q: f64) -> Option<f64> {
        (!self.hist.is_empty()).then(|| ms(self.hist.value_at_quantile(q)))
    }

    /// Seconds a connected client waited for its connection, at quantile `q` (1.0 = the max).
    fn connect_pct(&self, q: f64) -> Option<f64> {
        (!self.connect_hist.is_empty()).then(|| self.connect_hist.value_at_quantile(q) as f64 / 1e9)
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let opt = |v: Option<f64>, prec: usize, unit: &str| match v {
            Some(v) => format!("{v:.prec$}{unit}"),
            None => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "== fxbench: {} — {} clients ({}{}), {} quotes/s ({}), warm-up {} s, window {:.2} s",
            self.label,
            self.clients,
            if self.connect_concurrency == 0 {
                "storm: all at once".to_string()
            } else {
                format!("paced: {} in flight", self.connect_concurrency)
            },
            if self.v2_clients > 0 {
                format!("; {} speak v2", self.v2_clients)
            } else {
                String::new()
            },
            self.rate,
            self.symbols,
            self.warmup_s,
            self.window_s
        );
        let _ = writeln!(
            s,
            "target     {} pid {} ({})",
            self.url,
            self.pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
            self.what
        );
        let _ = writeln!(
            s,
            "clients    {} up of {}: {} with quotes, {} silent, {} stalled (no quote in the last 1 s), {} disconnected, {} failed to connect",
            self.up(),
            self.clients,
            self.connected,
            self.silent,
            self.stalled,
            self.disconnected,
            self.failed
        );
        let _ = writeln!(
            s,
            "connect    the last of {} clients handshaken and authenticated {} after the first attempt; every open client had a quote by {} (phase {:.2} s)",
            self.clients - self.failed,
            opt(self.connect_s, 3, " s"),
            opt(self.confirm_s, 3, " s"),
            self.connect_phase_s
        );
        let _ = writeln!(
            s,
            "           each client's own wait (attempt → auth sent): p50 {} p99 {} max {}",
            opt(self.connect_pct(0.5), 3, " s"),
            opt(self.connect_pct(0.99), 3, " s"),
            opt(self.connect_pct(1.0), 3, " s"),
        );
        for (k, v) in self.failures.iter().take(5) {
            let _ = writeln!(s, "  failed   {v} × {k}");
        }
        for (k, v) in self.closes.iter().take(5) {
            let _ = writeln!(s, "  closed   {v} × {k}");
        }
        let expected = self.feed_sent_window as f64 * self.up() as f64 / self.window_s.max(1e-9);
        let _ = writeln!(
            s,
            "delivery   {:.0} quotes/s to clients (feed sent {} in the window → {:.0}/s expected); lost {} (gaps), dup/reordered {}",
            self.delivered_per_s(),
            self.feed_sent_window,
            expected,
            self.lost,
            self.dup
        );
        let _ = writeln!(
            s,
            "latency    p50 {} p90 {} p99 {} p99.9 {} max {} (scheduled send → client receive, {} quotes)",
            opt(self.pct(0.5), 3, " ms"),
            opt(self.pct(0.9), 3, " ms"),
            opt(self.pct(0.99), 3, " ms"),
            opt(self.pct(0.999), 3, " ms"),
            opt((!self.hist.is_empty()).then(|| ms(self.hist.max())), 3, " ms"),
            self.hist.len()
        );
        let _ = writeln!(
            s,
            "proxy cpu  {} over the whole run ({:.1} s, {} quotes delivered) = {} per delivered quote; {} of a core in the window",
            opt(self.proxy_cpu_s_whole, 2, " s"),
            self.whole_s,
            self.delivered_total,
            opt(self.cpu_us_per_delivery(), 3, " µs"),
            opt(self.proxy_cpu_pct_window(), 1, "%")
        );
        let _ = writeln!(
            s,
            "proxy mem  RSS {} (peak {}), threads {} (peak {})",
            opt(self.rss.map(mb), 1, " MB"),
            opt(self.rss_peak.map(mb), 1, " MB"),
            self.threads
                .map(|t| t.to_string())
                .unwrap_or_else(|| "n/a".into()),
            self.threads_peak
                .map(|t| t.to_string())
                .unwrap_or_else(|| "n/a".into())
        );
        let _ = writeln!(
            s,
            "loadgen    {} of a core in the window, RSS {} (this process: clients and feed); upstream subscriptions {}",
            opt(self.loadgen_cpu_s_window.map(|c| c * 100.0 / self.window_s.max(1e-9)), 1, "%"),
            opt(self.loadgen_rss.map(mb), 1, " MB"),
            self.upstream_subscriptions
        );
        let _ = writeln!(
            s,
            "machine    other processes used {} of a core in the window (2 cores are shared)",
            opt(self.other_cpu_pct_window(), 1, "%")
        );
        if let Some(sc) = &self.scrapes {
            let q = |v: f64| (!sc.hist.is_empty()).then(|| ms(sc.hist.value_at_quantile(v)));
            let _ = writeln!(
                s,
                "scrapes    {} answered ({:.1} KB each), {} failed{}; each: p50 {} p99 {} max {}",
                sc.hist.len(),
                sc.bytes as f64 / 1024.0 / (sc.hist.len().max(1) as f64),
                sc.failed,
                sc.first_failure
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                opt(q(0.5), 1, " ms"),
                opt(q(0.99), 1, " ms"),
                opt(q(1.0), 1, " ms"),
            );
        }
        if let Some(e) = &self.target_exit {
            let _ = writeln!(s, "target     {e}");
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "impl": self.label,
            "what": self.what,
            "binary_built_unix": self.built,
            "clients": self.clients,
            "rate": self.rate,
            "symbols": self.symbols,
            "warmup_s": self.warmup_s,
            "duration_s": self.duration_s,
            "connect_mode": self.connect_mode,
            "connect_concurrency": self.connect_concurrency,
            "v2_clients": self.v2_clients,
            "somaxconn": self.somaxconn,
            "window_s": self.window_s,
            "up": self.up(),
            "connected": self.connected,
            "silent": self.silent,
            "stalled": self.stalled,
            "disconnected": self.disconnected,
            "failed": self.failed,
            "failures": self.failures,
            "closes": self.closes,
            "connect_s": self.connect_s,
            "confirm_s": self.confirm_s,
            "client_connect_p50_s": self.connect_pct(0.5),
            "client_connect_p99_s": self.connect_pct(0.99),
            "client_connect_max_s": self.connect_pct(1.0),
            "delivered_per_s": self.delivered_per_s(),
            "delivered_window": self.delivered_window,
            "delivered_total": self.delivered_total,
            "feed_sent_window": self.feed_sent_window,
            "upstream_subscriptions": self.upstream_subscriptions,
            "lost": self.lost,
            "dup": self.dup,
            "latency_samples": self.hist.len(),
            "p50_ms": self.pct(0.5),
            "p90_ms": self.pct(0.9),
            "p99_ms": self.pct(0.99),
            "p999_ms": self.pct(0.999),
            "max_ms": (!self.hist.is_empty()).then(|| ms(self.hist.max())),
            "proxy_cpu_s_whole": self.proxy_cpu_s_whole,
            "whole_s": self.whole_s,
            "cpu_us_per_delivery": self.cpu_us_per_delivery(),
            "proxy_cpu_pct_window": self.proxy_cpu_pct_window(),
            "loadgen_cpu_pct_window": self.loadgen_cpu_s_window.map(|c| c * 100.0 / self.window_s.max(1e-9)),
            "loadgen_rss_mb": self.loadgen_rss.map(mb),
            "other_cpu_pct_window": self.other_cpu_pct_window(),
            "rss_mb": self.rss.map(mb),
            "rss_peak_mb": self.rss_peak.map(mb),
            "threads": self.threads,
            "threads_peak": self.threads_peak,
            "target_exit": self.target_exit,
            "scrapes": self.scrapes.as_ref().map(|sc| json!({
                "answered": sc.hist.len(),
                "failed": sc.failed,
                "first_failure": sc.first_failure,
                "p50_ms": (!sc.hist.is_empty()).then(|| ms(sc.hist.value_at_quantile(0.5))),
                "p99_ms": (!sc.hist.is_empty()).then(|| ms(sc.hist.value_at_quantile(0.99))),
                "max_ms": (!sc.hist.is_empty()).then(|| ms(sc.hist.max())),
            })),
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })
    }

    pub fn append_json(&self, path: &Path) -> std::io::Result<()> {
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{}", self.to_json())
    }
}

/// Records a run that produced no figures.
pub fn append_error(path: &Path, o: &Options, error: &str) -> std::io::Result<()> {
    let label = o.label.clone().unwrap_or_else(|| {
        match o.target {
            crate::args::Target::ProxyBin(_) => "fxproxy",
            crate::args::Target::Peer(_) => "peer",
            crate::args::Target::Url(_) => "url",
        }
        .into()
    });
    let line = json!({
        "impl": label,
        "clients": o.clients,
        "rate": o.rate,
        "symbols": o.symbols.join(","),
        "connect_mode": o.connect_mode(),
        "connect_concurrency": o.connect_concurrency,
        "error": error,
    });
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{line}")
}
