//! One benchmark run: feed → target → clients → warm-up → recording window → report.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::args::{Options, Target};
use crate::clients::{self, ClientConfig, Shared};
use crate::feed::Feed;
use crate::procstat::{self, Sample};
use crate::report::Report;
use crate::scrape::Scraper;
use crate::{clock, target};

pub fn run(o: &Options) -> Result<Report, String> {
    let nofile = raise_nofile();
    if (o.clients as u64) + 64 > nofile {
        eprintln!(
            "fxbench: warning: open-file limit {nofile} is below {} clients; some will fail",
            o.clients
        );
    }
    if let Some(ports) = ephemeral_ports() {
        if o.clients as u64 > ports {
            eprintln!(
                "fxbench: warning: only {ports} ephemeral ports for {} clients",
                o.clients
            );
        }
    }

    let feed = Feed::start(o.feed_port, o.rate, o.symbols.clone(), o.v2_share.is_some())
        .map_err(|e| format!("feed: cannot listen on 127.0.0.1:{}: {e}", o.feed_port))?;
    let feed_url = feed.url();
    if let Target::Url(url) = &o.target {
        eprintln!(
            "fxbench: feed source at {feed_url}: the proxy at {url} must take its quotes from \
             there (upstream_url = {feed_url}, symbols = {})",
            o.symbols.join(",")
        );
    }
    let mut tgt = target::start(o, &feed_url)?;
    eprintln!(
        "fxbench: target {} at {} (pid {})",
        tgt.label,
        tgt.url,
        tgt.pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into())
    );

    // Clients are useless before the proxy has subscribed upstream.
    let wait = o
        .upstream_wait
        .unwrap_or(if matches!(o.target, Target::Url(_)) {
            300.0
        } else {
            15.0
        });
    let t = Instant::now();
    while feed.stats.subscriptions.load(Ordering::Relaxed) == 0 {
        if let Some(st) = tgt.exited() {
            return Err(format!(
                "{} exited before subscribing to the feed ({st}):\n{}",
                tgt.label,
                tgt.log_tail()
            ));
        }
        if t.elapsed().as_secs_f64() > wait {
            return Err(format!(
                "{} did not subscribe to the feed at {feed_url} within {wait} s:\n{}",
                tgt.label,
                tgt.log_tail()
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }

    let pid = tgt.pid.map(|p| p.to_string());
    let proxy = |pid: &Option<String>| pid.as_deref().and_then(procstat::sample);
    let mut peak_threads = 0u64;
    let mut watch = |pid: &Option<String>| {
        let s = proxy(pid);
        if let Some(s) = s {
            peak_threads = peak_threads.max(s.threads);
        }
        s
    };

    let shared = Arc::new(Shared::new());
    let cfg = Arc::new(ClientConfig {
        addr: tgt.addr,
        url: tgt.url.clone(),
        auth: serde_json::json!({ "userKey": o.key }).to_string(),
        v2_share: o.v2_share.unwrap_or(0.0),
        v2_login: serde_json::json!({ "action": "login", "key": o.key, "fmt": "JSON" }).to_string(),
        v2_subscribe: serde_json::json!({
            "action": "subscribe",
            "symbols": o.symbols.iter().map(|s| format!("{s}:QUOTE")).collect::<Vec<_>>(),
        })
        .to_string(),
        concurrency: o.connect_concurrency.div_ceil(o.loadgen_threads),
        interval_ns: if o.rate > 0.0 {
            (1e9 / o.rate) as u64
        } else {
            0
        },
        tls: tgt.tls.clone(),
    });

    let scraper = if o.scrape > 0.0 {
        let at = o.scrape_addr.unwrap_or(tgt.addr);
        eprintln!(
            "fxbench: scraping http://{at}{} {} times a second",
            o.scrape_path, o.scrape
        );
        Some(Scraper::start(at, o.scrape_path.clone(), o.scrape).map_err(|e| e.to_string())?)
    } else {
        None
    };

    let cpu0 = watch(&pid);
    let t0 = clock::now_ns();
    let started = Instant::now();
    let mut handles = Vec::new();
    for k in 0..o.loadgen_threads {
        let n = o.clients / o.loadgen_threads + usize::from(k < o.clients % o.loadgen_threads);
        let (cfg, shared) = (cfg.clone(), shared.clone());
        handles.push(
            thread::Builder::new()
                .name(format!("clients-{k}"))
                .spawn(move || clients::run_thread(n, cfg, shared))
                .map_err(|e| e.to_string())?,
        );
    }

    // Connect phase.
    let deadline = started + Duration::from_secs_f64(o.connect_timeout);
    while shared.settled.load(Ordering::Relaxed) < o.clients && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        watch(&pid);
    }
    let connect_phase_s = started.elapsed().as_secs_f64();
    eprintln!(
        "fxbench: {} of {} connection attempts ({}) finished in {:.2} s; warming up {} s",
        shared.settled.load(Ordering::Relaxed),
        o.clients,
        o.connect_mode(),
        connect_phase_s,
        o.warmup
    );
    sleep_watching(Duration::from_secs_f64(o.warmup), &mut || {
        watch(&pid);
    });

    // Recording window.
    let cpu1 = watch(&pid);
    let self1 = procstat::sample("self");
    let busy1 = procstat::machine_busy_s();
    let sent1 = feed.stats.sent.load(Ordering::Relaxed);
    let w0 = clock::now_ns();
    shared.window_start.store(w0, Ordering::Relaxed);
    sleep_watching(Duration::from_secs_f64(o.duration), &mut || {
        watch(&pid);
    });
    let w1 = clock::now_ns();
    shared.window_end.store(w1, Ordering::Relaxed);
    let cpu2 = watch(&pid);
    let self2 = procstat::sample("self");
    let busy2 = procstat::machine_busy_s();
    let sent2 = feed.stats.sent.load(Ordering::Relaxed);
    let exited_during_run = tgt.exited();

    shared.done.store(true, Ordering::Relaxed);
    let scrapes = scraper.map(Scraper::finish);
    let mut results = Vec::new();
    for h in handles {
        results.push(
            h.join()
                .map_err(|_| "a client thread panicked".to_string())?,
        );
    }
    let stop_note = tgt.stop();

    let window_s = (w1 - w0) as f64 / 1e9;
    let whole_s = (w1 - t0) as f64 / 1e9;
    let cpu_delta = |a: Option<Sample>, b: Option<Sample>| Some(b?.cpu_s - a?.cpu_s);
    let mut r = Report::new(o, &tgt.label, &tgt.what, &tgt.url);
    r.pid = tgt.pid;
    r.built = tgt.built;
    r.merge(results, o.clients);
    r.connect_phase_s = connect_phase_s;
    r.somaxconn = read_sys("/proc/sys/net/core/somaxconn");
    r.connect_s = r
        .last_handshake_ns
        .map(|ns| ns.saturating_sub(t0) as f64 / 1e9);
    r.confirm_s = r
        .last_confirm_ns
        .map(|ns| ns.saturating_sub(t0) as f64 / 1e9);
    r.window_s = window_s;
    r.whole_s = whole_s;
    r.feed_sent_window = sent2 - sent1;
    r.upstream_subscriptions = feed.stats.subscriptions.load(Ordering::Relaxed);
    r.proxy_cpu_s_whole = cpu_delta(cpu0, cpu2);
    r.proxy_cpu_s_window = cpu_delta(cpu1, cpu2);
    r.loadgen_cpu_s_window = cpu_delta(self1, self2);
    r.loadgen_rss = self2.map(|s| s.rss);
    // Whatever else ran on the machine in the window (other builds, tests, benchmarks).
    r.other_cpu_s_window = (|| {
        let total = busy2? - busy1?;
        Some((total - r.loadgen_cpu_s_window? - r.proxy_cpu_s_window.unwrap_or(0.0)).max(0.0))
    })();
    if let Some(s) = cpu2 {
        r.rss = Some(s.rss);
        r.rss_peak = Some(s.rss_peak);
        r.threads = Some(s.threads);
        r.threads_peak = Some(peak_threads);
    }
    r.scrapes = scrapes;
    r.target_exit = match exited_during_run {
        Some(st) => Some(format!("EXITED DURING THE RUN ({st}):\n{}", tgt.log_tail())),
        None => stop_note,
    };
    Ok(r)
}

fn sleep_watching(d: Duration, tick: &mut dyn FnMut()) {
    let end = Instant::now() + d;
    loop {
        let now = Instant::now();
        if now >= end {
            return;
        }
        thread::sleep((end - now).min(Duration::from_millis(250)));
        tick();
    }
}

/// Raises the soft open-file limit to the hard one (15,000 clients need 15,000 sockets here,
/// and the spawned proxy inherits the raised limit). Returns the soft limit now in force.
fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("fxbench: warning: cannot raise RLIMIT_NOFILE: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(s, _)| s)
                .unwrap_or(1024)
        }
    }
}

fn read_sys(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn ephemeral_ports() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|n| n.parse::<u64>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    Some(hi.saturating_sub(lo) + 1)
}
