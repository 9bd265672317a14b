//! Whether the feed is healthy, the one verdict behind `/healthz` (and `/readyz`), the
//! backbone's own health and `fxproxy watch`'s "market closed" line: the upstream is connected,
//! the provider refused not every symbol, and, while the market is open, quotes arrive.

use crate::base::market::{self, Market, MarketState};
use crate::base::metrics::{Metrics, UpstreamState};
use crate::base::symbol_states::{SymbolState, SymbolStates};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// `/healthz`: healthy when the upstream is connected and either the market is closed or
/// the feed is not stale: a quote arrived within `stale`, or the market opened less than
/// `stale` ago (the upstream gives a source that long too). Returns the HTTP status and a
/// one-line JSON body.
pub fn health(metrics: &Metrics, market: &Market, stale: Duration, now_ms: u64) -> (u16, String) {
    let last = metrics.last_quote_ms.load(Relaxed);
    let age = (last > 0).then(|| now_ms.saturating_sub(last));
    let age_json = age.map_or("null".to_string(), |a| format!("{:.3}", a as f64 / 1000.0));
    let (ok, status, detail) = match metrics.upstream() {
        UpstreamState::NotYetConnected => (false, "not_connected", String::new()),
        UpstreamState::Refused { since_ms, reason } => (
            false,
            "refused",
            format!(
                ",\"reason\":{},\"since_ms\":{since_ms}",
                serde_json::Value::String(format!("the provider refused: {reason}"))
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
    // Symbols the provider refused are named; with none left to flow, the feed is no good
    // whatever the connection's state.
    let (flows, refused) = refused_symbols(&metrics.upstream_symbols);
    let (ok, status) = match (ok, flows) {
        (true, false) => (false, "refused"),
        other => (other.0, status),
    };
    let body = format!(
        "{{\"status\":\"{status}\"{detail}{refused},\"last_quote_age_secs\":{age_json},\"clients\":{}}}\n",
        metrics.clients_connected.load(Relaxed)
    );
    (if ok { 200 } else { 503 }, body)
}

/// Whether quotes of some symbol may flow, and the `/healthz` fields naming the symbols the
/// provider refused (each with its leading comma): `"denied":{"XAUUSD":"why"}`,
/// `"invalid":["FOO"]`, and the plan's `symbol_limit` when its login said.
pub fn refused_symbols(states: &SymbolStates) -> (bool, String) {
    let mut denied = serde_json::Map::new();
    let mut invalid = Vec::new();
    for (symbol, state) in states.all() {
        match state {
            SymbolState::Denied(why) => {
                denied.insert(symbol, serde_json::Value::String(why));
            }
            SymbolState::Invalid => invalid.push(serde_json::Value::String(symbol)),
            _ => {}
        }
    }
    let mut fields = String::new();
    if !denied.is_empty() {
        fields.push_str(&format!(
            ",\"denied\":{}",
            serde_json::Value::Object(denied)
        ));
    }
    if !invalid.is_empty() {
        fields.push_str(&format!(
            ",\"invalid\":{}",
            serde_json::Value::Array(invalid)
        ));
    }
    if let Some(limit) = states.limit() {
        fields.push_str(&format!(",\"symbol_limit\":{limit}"));
    }
    (states.some_flow(), fields)
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
    use crate::base::market::utc_ms as at;
    use crate::base::market::MarketHours;

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
        let health = |stale, now| health(&m, &always, stale, now);
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

    #[test]
    fn health_names_refused_symbols_and_fails_when_none_flows() {
        let m = Metrics::new();
        m.upstream_symbols
            .configure(&["EURUSD".into(), "XAUUSD".into(), "FOOBAR".into()]);
        m.set_upstream(UpstreamState::Connected { since_ms: 1 });
        m.last_quote_ms.store(990_000, Relaxed);
        let stale = Duration::from_secs(30);
        m.upstream_symbols.set(vec![
            SymbolState::Accepted,
            SymbolState::Denied("not in \"plan\"".into()),
            SymbolState::Invalid,
        ]);
        m.upstream_symbols.set_limit(2);
        let (code, body) = health(&m, &always(), stale, 1_000_000);
        assert_eq!(code, 200, "EURUSD flows: {body}");
        let b = json(&body);
        assert_eq!(b["status"], "ok");
        assert_eq!(b["denied"]["XAUUSD"], "not in \"plan\"");
        assert_eq!(b["invalid"], serde_json::json!(["FOOBAR"]));
        assert_eq!(b["symbol_limit"], 2);
        m.upstream_symbols.set(vec![
            SymbolState::Denied(String::new()),
            SymbolState::Denied("x".into()),
            SymbolState::Invalid,
        ]);
        let (code, body) = health(&m, &always(), stale, 1_000_000);
        assert_eq!(
            (code, json(&body)["status"].as_str()),
            (503, Some("refused"))
        );
        assert_eq!(json(&body)["denied"]["EURUSD"], "");
    }

    #[test]
    fn health_at_the_weekend() {
        let stale = Duration::from_secs(30);
        let fx = Market::new(MarketHours::Fx, &["2026-12-25".parse().unwrap()]);
        let m = Metrics::new();
        m.set_upstream(UpstreamState::Connected { since_ms: 1 });

        // Friday 21:58 with a fresh quote; 22:01 with the same quote three minutes old.
        m.last_quote_ms.store(at("2026-12-04", 21, 58), Relaxed);
        let (code, body) = health(&m, &fx, stale, at("2026-12-04", 21, 58) + 10_000);
        assert_eq!((code, json(&body)["status"].as_str()), (200, Some("ok")));
        let (code, body) = health(&m, &fx, stale, at("2026-12-04", 22, 1));
        let b = json(&body);
        assert_eq!((code, b["status"].as_str()), (200, Some("market_closed")));
        assert_eq!(b["market_opens_ms"], at("2026-12-06", 21, 0));
        assert_eq!(b["market_opens"], "2026-12-06T21:00:00Z");
        assert_eq!(b["last_quote_age_secs"], 180.0);
        assert!(body.ends_with("}\n") && !body[..body.len() - 1].contains('\n'));

        // Sunday: closed until 21:00, then the source has `stale` to send a quote.
        let (code, body) = health(&m, &fx, stale, at("2026-12-06", 20, 59));
        assert_eq!(
            (code, json(&body)["status"].as_str()),
            (200, Some("market_closed"))
        );
        let (code, body) = health(&m, &fx, stale, at("2026-12-06", 21, 0) + 30_000);
        assert_eq!((code, json(&body)["status"].as_str()), (200, Some("ok")));
        let (code, body) = health(&m, &fx, stale, at("2026-12-06", 21, 1));
        assert_eq!((code, json(&body)["status"].as_str()), (503, Some("stale")));

        // The same silence under `always` is stale, weekend or not.
        let (code, body) = health(&m, &always(), stale, at("2026-12-05", 12, 0));
        assert_eq!((code, json(&body)["status"].as_str()), (503, Some("stale")));

        // A closed date: Christmas Eve from 21:00 joins the weekend.
        let (code, body) = health(&m, &fx, stale, at("2026-12-24", 21, 30));
        let b = json(&body);
        assert_eq!((code, b["status"].as_str()), (200, Some("market_closed")));
        assert_eq!(b["market_opens"], "2026-12-27T21:00:00Z");

        // Restarted on Saturday: no quote yet, market closed; after the opening and `stale`
        // with still no quote, no_quote_yet.
        let fresh = Metrics::new();
        fresh.set_upstream(UpstreamState::Connected { since_ms: 1 });
        let (code, body) = health(&fresh, &fx, stale, at("2026-12-05", 12, 0));
        let b = json(&body);
        assert_eq!((code, b["status"].as_str()), (200, Some("market_closed")));
        assert_eq!(b["last_quote_age_secs"], serde_json::Value::Null);
        let (code, _) = health(&fresh, &fx, stale, at("2026-12-06", 21, 0) + 5_000);
        assert_eq!(code, 200);
        let (code, body) = health(&fresh, &fx, stale, at("2026-12-06", 21, 1));
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
            let (code, body) = health(&m, &fx, stale, at("2026-12-05", 12, 0));
            assert_eq!(code, 503, "{body}");
            assert_ne!(json(&body)["status"], "market_closed");
        }
    }
}
