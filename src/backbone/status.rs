//! What the backbone threads tell the rest of the proxy: the state of each Redis connection,
//! the lock, the counters for `/metrics`, and the `/healthz` verdict of an instance whose
//! clients are fed from Redis.

use super::held::Lease;
use crate::base::market::Market;
use crate::base::metrics::{Metrics, UpstreamState};
use crate::base::prometheus::{label, Exposition};
use crate::config::backbone::Role;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The Redis connections an instance keeps, one per thread that talks to Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// Takes and renews the lock (ingest, both).
    Lease = 0,
    /// Adds the provider's frames to the stream (ingest, both).
    Publish = 1,
    /// Reads the stream for this instance's clients (edge, both).
    Read = 2,
}

impl LinkKind {
    pub const ALL: [LinkKind; 3] = [LinkKind::Lease, LinkKind::Publish, LinkKind::Read];

    pub fn name(self) -> &'static str {
        match self {
            LinkKind::Lease => "lease",
            LinkKind::Publish => "publish",
            LinkKind::Read => "read",
        }
    }

    fn used_by(self, role: Role) -> bool {
        match self {
            LinkKind::Lease | LinkKind::Publish => role.ingests(),
            LinkKind::Read => role.serves_clients(),
        }
    }
}

#[derive(Default)]
struct Link {
    up: AtomicBool,
    /// Epoch ms of the last change between up and down (0: never connected yet).
    since_ms: AtomicU64,
    /// Why it is down.
    error: Mutex<String>,
}

/// Shared by the backbone threads, `/healthz` and `/metrics`.
pub struct Status {
    pub role: Role,
    /// The Redis URL without its password, for logs and `/healthz`.
    pub shown_url: String,
    /// How this instance names itself in the lock (host, listen address, process id).
    pub instance: String,
    links: [Link; 3],
    /// An ingest's lease, for `lock_held`.
    lease: OnceLock<Arc<Lease>>,
    /// The lock's value as last read: its fencing token and the instance holding it.
    holder: Mutex<String>,
    /// Times this instance won the lock.
    pub takeovers: AtomicU64,
    /// Frames added to the stream by this instance.
    pub published: AtomicU64,
    /// Frames taken from the provider and not yet in Redis.
    pub publish_queue: AtomicU64,
    /// Frames taken while this instance held the lock and never added: refused by the fencing
    /// check (another had won it since), or dropped once the lock lapsed here with the queue
    /// to Redis full. Each one is a duplicate or a reordering that did not happen.
    pub fenced: AtomicU64,
    /// Frames read from the stream and handed to the distributor.
    pub received: AtomicU64,
    /// Entries read twice (a publish retried after its answer was lost, Redis replaying data)
    /// and dropped here.
    pub duplicates: AtomicU64,
    /// Frames known to be missing from what this instance read: trimmed from the stream before
    /// it came back, or lost with Redis's data.
    pub gaps: AtomicU64,
    /// How far this instance's reading is behind the newest entry of the stream.
    pub lag_frames: AtomicU64,
    pub lag_ms: AtomicU64,
    /// Epoch ms of the last frame read from the stream (0: none yet).
    pub last_received_ms: AtomicU64,
    pub reconnects: AtomicU64,
}

impl Status {
    pub fn new(role: Role, shown_url: String, instance: String) -> Status {
        Status {
            role,
            shown_url,
            instance,
            links: Default::default(),
            lease: OnceLock::new(),
            holder: Mutex::new(String::new()),
            takeovers: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_queue: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            lag_frames: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            last_received_ms: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        }
    }

    pub fn watch_lease(&self, lease: &Arc<Lease>) {
        let _ = self.lease.set(Arc::clone(lease));
    }

    /// Whether this instance holds the lock, and so may hold the provider connection, now.
    pub fn lock_held(&self) -> bool {
        self.lease.get().is_some_and(|l| l.held().is_some())
    }

    pub fn link_up(&self, kind: LinkKind, now_ms: u64) {
        let link = &self.links[kind as usize];
        if !link.up.swap(true, Relaxed) {
            link.since_ms.store(now_ms, Relaxed);
        }
    }

    pub fn link_down(&self, kind: LinkKind, now_ms: u64, why: &str) {
        let link = &self.links[kind as usize];
        *link.error.lock() = why.to_string();
        if link.up.swap(false, Relaxed) || link.since_ms.load(Relaxed) == 0 {
            link.since_ms.store(now_ms, Relaxed);
        }
    }

    pub fn link_is_up(&self, kind: LinkKind) -> bool {
        self.links[kind as usize].up.load(Relaxed)
    }

    pub fn set_holder(&self, holder: &str) {
        let mut current = self.holder.lock();
        if *current != holder {
            *current = holder.to_string();
        }
    }

    /// The lock's holder as last seen: `TOKEN INSTANCE`, empty when nobody held it.
    pub fn holder(&self) -> String {
        self.holder.lock().clone()
    }

    /// Why this instance cannot do its part, if it cannot: a Redis connection it needs is
    /// down (or was never up).
    pub fn degraded(&self) -> Option<(String, u64)> {
        LinkKind::ALL
            .iter()
            .filter(|k| k.used_by(self.role))
            .find(|k| !self.link_is_up(**k))
            .map(|k| {
                let link = &self.links[*k as usize];
                let error = link.error.lock().clone();
                let error = if error.is_empty() {
                    "not connected yet".to_string()
                } else {
                    error
                };
                (
                    format!(
                        "backbone {} unreachable ({} connection): {error}",
                        self.shown_url,
                        k.name()
                    ),
                    link.since_ms.load(Relaxed),
                )
            })
    }

    /// `/healthz` for an instance on the backbone. Healthy when every Redis connection it
    /// needs is up and, for one that serves clients, quotes come from the stream as the
    /// market-hours rule expects; an ingest on standby is healthy when Redis is. Returns the
    /// HTTP status and a one-line JSON body.
    pub fn health(
        &self,
        metrics: &Metrics,
        market: &Market,
        stale: Duration,
        now_ms: u64,
    ) -> (u16, String) {
        let held = self.lock_held();
        let last = if self.role.serves_clients() {
            self.last_received_ms.load(Relaxed)
        } else {
            metrics.last_quote_ms.load(Relaxed)
        };
        let age = (last > 0).then(|| now_ms.saturating_sub(last));
        let age_json = age.map_or("null".to_string(), |a| format!("{:.3}", a as f64 / 1000.0));
        let (ok, status, detail) = if let Some((reason, since_ms)) = self.degraded() {
            (
                false,
                "degraded",
                format!(
                    ",\"reason\":{},\"since_ms\":{since_ms}",
                    serde_json::Value::String(reason)
                ),
            )
        } else if !self.role.serves_clients() && !held {
            (true, "standby", String::new())
        } else if !self.role.serves_clients()
            && !matches!(metrics.upstream(), UpstreamState::Connected { .. })
        {
            (false, "reconnecting", String::new())
        } else {
            crate::feed::health::feed_verdict(market, stale, now_ms, last)
        };
        let body = format!(
            "{{\"status\":\"{status}\"{detail},\"role\":\"{}\",\"lock_held\":{held},\"lock_holder\":{},\"last_quote_age_secs\":{age_json},\"clients\":{}}}\n",
            self.role.name(),
            serde_json::Value::String(self.holder()),
            metrics.clients_connected.load(Relaxed)
        );
        (if ok { 200 } else { 503 }, body)
    }

    /// The backbone's part of `/metrics`, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Exposition::with_capacity(2048);
        let c = |a: &AtomicU64| a.load(Relaxed);
        let roles: Vec<(String, u64)> = [Role::Both, Role::Ingest, Role::Edge]
            .iter()
            .map(|r| (label("role", r.name()), u64::from(*r == self.role)))
            .collect();
        out.family(
            "fxproxy_backbone_role",
            "gauge",
            "This instance's backbone_role (1 for the one it has).",
            roles,
        );
        out.single(
            "fxproxy_backbone_lock_held",
            "gauge",
            "1 while this instance holds the backbone lock, and so the provider connection.",
            u64::from(self.lock_held()),
        );
        let links: Vec<(String, u64)> = LinkKind::ALL
            .iter()
            .filter(|k| k.used_by(self.role))
            .map(|k| (label("link", k.name()), u64::from(self.link_is_up(*k))))
            .collect();
        out.family(
            "fxproxy_backbone_connected",
            "gauge",
            "1 while this Redis connection is up, per connection this role uses.",
            links,
        );
        out.single(
            "fxproxy_backbone_takeovers_total",
            "counter",
            "Times this instance won the backbone lock.",
            c(&self.takeovers),
        );
        out.single(
            "fxproxy_backbone_frames_published_total",
            "counter",
            "Provider frames this instance added to the stream.",
            c(&self.published),
        );
        out.single(
            "fxproxy_backbone_publish_queue",
            "gauge",
            "Provider frames taken and not yet in Redis.",
            c(&self.publish_queue),
        );
        out.single(
            "fxproxy_backbone_frames_fenced_total",
            "counter",
            "Frames taken from the provider and never added: another instance had won the lock since, or it lapsed while Redis was out of reach.",
            c(&self.fenced),
        );
        out.single(
            "fxproxy_backbone_frames_received_total",
            "counter",
            "Frames read from the stream for this instance's clients.",
            c(&self.received),
        );
        out.single(
            "fxproxy_backbone_duplicates_dropped_total",
            "counter",
            "Stream entries seen twice and dropped before they reached a client.",
            c(&self.duplicates),
        );
        out.single(
            "fxproxy_backbone_gap_frames_total",
            "counter",
            "Frames known to be missing from what this instance read (trimmed or lost in Redis).",
            c(&self.gaps),
        );
        out.single(
            "fxproxy_backbone_lag_frames",
            "gauge",
            "Entries between the last one this instance read and the head of the stream.",
            c(&self.lag_frames),
        );
        out.single(
            "fxproxy_backbone_lag_seconds",
            "gauge",
            "Age of the last entry read when the stream head is newer; 0 when caught up.",
            c(&self.lag_ms) as f64 / 1000.0,
        );
        out.single(
            "fxproxy_backbone_reconnects_total",
            "counter",
            "Times a Redis connection was lost or could not be made.",
            c(&self.reconnects),
        );
        out.into_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::market::MarketHours;

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    #[test]
    fn health_is_degraded_while_a_needed_connection_is_down() {
        let status = Status::new(Role::Both, "redis://127.0.0.1:6379".into(), "me".into());
        let metrics = Metrics::new();
        let always = Market::new(MarketHours::Always, &[]);
        let stale = Duration::from_secs(30);
        let (code, body) = status.health(&metrics, &always, stale, 1_000_000);
        let b = json(&body);
        assert_eq!(
            (code, b["status"].as_str()),
            (503, Some("degraded")),
            "{body}"
        );
        assert!(b["reason"].as_str().unwrap().contains("not connected yet"));
        for k in LinkKind::ALL {
            status.link_up(k, 5);
        }
        status.last_received_ms.store(990_000, Relaxed);
        let (code, body) = status.health(&metrics, &always, stale, 1_000_000);
        assert_eq!(
            (code, json(&body)["status"].as_str()),
            (200, Some("ok")),
            "{body}"
        );
        status.link_down(LinkKind::Read, 7, "Connection refused (os error 111)");
        let (code, body) = status.health(&metrics, &always, stale, 1_000_000);
        let b = json(&body);
        assert_eq!(code, 503);
        assert_eq!(
            b["reason"],
            "backbone redis://127.0.0.1:6379 unreachable (read connection): Connection refused (os error 111)"
        );
        assert_eq!(b["since_ms"], 7);
        assert_eq!(b["role"], "both");
        status.link_up(LinkKind::Read, 8);
        let (code, body) = status.health(&metrics, &always, stale, 1_100_000);
        assert_eq!((code, json(&body)["status"].as_str()), (503, Some("stale")));
        assert!(body.ends_with("}\n") && !body[..body.len() - 1].contains('\n'));
    }

    #[test]
    fn an_ingest_on_standby_is_healthy_and_an_edge_needs_no_lock() {
        let metrics = Metrics::new();
        let always = Market::new(MarketHours::Always, &[]);
        let stale = Duration::from_secs(30);
        let ingest = Status::new(Role::Ingest, "redis://r:6379".into(), "me".into());
        ingest.link_up(LinkKind::Lease, 1);
        ingest.link_up(LinkKind::Publish, 1);
        let (code, body) = ingest.health(&metrics, &always, stale, 1_000_000);
        assert_eq!(
            (code, json(&body)["status"].as_str()),
            (200, Some("standby"))
        );
        let edge = Status::new(Role::Edge, "redis://r:6379".into(), "me".into());
        edge.link_up(LinkKind::Read, 1);
        edge.last_received_ms.store(999_000, Relaxed);
        let (code, _) = edge.health(&metrics, &always, stale, 1_000_000);
        assert_eq!(code, 200);
        let text = edge.render();
        assert!(
            text.contains("fxproxy_backbone_role{role=\"edge\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("fxproxy_backbone_connected{link=\"read\"} 1\n"));
        assert!(!text.contains("link=\"lease\""));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let parts: Vec<&str> = line.split(' ').collect();
            if parts[3] == "counter" {
                assert!(parts[2].ends_with("_total"), "{line}");
            }
        }
    }
}
