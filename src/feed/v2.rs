//! TraderMade's streaming protocol version 2 (`wss://stream.tradermade.com/feedAdv`), as the
//! proxy writes it for the clients that speak it: ticks with string prices and a compact UTC
//! time, and the control messages (`login_ok`, `login_reject`, `sub_ack`, `error`). What the
//! proxy reads of it upstream is the `tradermade-v2` template's business
//! (providers/tradermade-v2.conf); what a client sends is read in `clients::v2`.
//!
//! ```text
//! {"t":"QUOTE","s":"EURUSD","b":"1.16270","a":"1.16272","ts":"20260515-12:36:35.588"}
//! ```

use crate::base::market::Date;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt::Write as _;

/// How a subscription names a symbol's quotes: `EURUSD:QUOTE`.
pub const QUOTE_SUFFIX: &str = ":QUOTE";

/// A tick's kind: a live quote, or the latest one sent on subscribing (`send_last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Quote,
    LastQuote,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Quote => "QUOTE",
            Kind::LastQuote => "LAST_QUOTE",
        }
    }
}

/// The symbol a subscription entry names (`EURUSD:QUOTE` is `EURUSD`); `None` for a bare
/// symbol or another suffix, which TraderMade's service answers as invalid.
pub fn quote_symbol_of(entry: &str) -> Option<&str> {
    entry
        .strip_suffix(QUOTE_SUFFIX)
        .filter(|s| !s.is_empty() && !s.contains(':'))
}

/// `20260515-12:36:35.588`: epoch milliseconds as v2 writes a tick's time, UTC.
pub fn compact_time(ms: u64) -> String {
    let (y, mo, d) = Date::of(ms).ymd();
    let in_day = ms % 86_400_000;
    format!(
        "{y:04}{mo:02}{d:02}-{:02}:{:02}:{:02}.{:03}",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// A tick: `symbol` (the proxy's spelling), prices exactly as the source wrote them.
pub fn tick(kind: Kind, symbol: &str, bid: &str, ask: &str, ts_ms: u64) -> String {
    let mut out = String::with_capacity(96);
    let _ = write!(out, r#"{{"t":"{}","s":"#, kind.name());
    push_json_string(&mut out, symbol);
    out.push_str(r#","b":"#);
    push_json_string(&mut out, bid);
    out.push_str(r#","a":"#);
    push_json_string(&mut out, ask);
    let _ = write!(out, r#","ts":"{}"}}"#, compact_time(ts_ms));
    out
}

#[derive(Deserialize)]
struct V1Quote<'a> {
    #[serde(borrow)]
    bid: &'a RawValue,
    #[serde(borrow)]
    ask: &'a RawValue,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
}

/// A quote in fxproxy's v1 shape (`{"symbol","ts","bid","ask","mid"}`) as a v2 tick of
/// `symbol`; `now_ms` stands in for a time the quote does not carry in epoch milliseconds.
/// `None` when its bid and ask are not prices.
pub fn tick_from_v1(frame: &str, symbol: &str, kind: Kind, now_ms: u64) -> Option<String> {
    let q: V1Quote = serde_json::from_str(frame).ok()?;
    let bid = price_text(q.bid)?;
    let ask = price_text(q.ask)?;
    let ts = q.ts.and_then(epoch_ms).unwrap_or(now_ms);
    Some(tick(kind, symbol, &bid, &ask, ts))
}

/// A price's text: a JSON number as written, or a string that holds one.
fn price_text(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    let inner = if text.starts_with('"') {
        serde_json::from_str::<String>(text).ok()?
    } else {
        text.to_string()
    };
    crate::feed::decimal::Decimal::parse(inner.trim()).map(|_| inner.trim().to_string())
}

/// Epoch milliseconds from a JSON number or a string of digits.
fn epoch_ms(raw: &RawValue) -> Option<u64> {
    let text = raw.get().trim_matches('"');
    text.parse().ok()
}

fn push_json_string(out: &mut String, text: &str) {
    let plain = text
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f);
    if plain {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::String(text.to_string()).to_string());
    }
}

/// `{"type":"login_ok","symbol_limit":N}`: how many symbols the key may have.
pub fn login_ok(symbol_limit: usize) -> String {
    format!(r#"{{"type":"login_ok","symbol_limit":{symbol_limit}}}"#)
}

/// `{"type":"login_reject","reason":"..."}`.
pub fn login_reject(reason: &str) -> String {
    let mut out = String::from(r#"{"type":"login_reject","reason":"#);
    push_json_string(&mut out, reason);
    out.push('}');
    out
}

/// `{"type":"error","reason":"..."}`: a message the proxy could not act on.
pub fn error(reason: &str) -> String {
    let mut out = String::from(r#"{"type":"error","reason":"#);
    push_json_string(&mut out, reason);
    out.push('}');
    out
}

/// The answer to a subscribe (or an unsubscribe), with entries as the client wrote them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// `Some("unsubscribe")` for the answer to an unsubscribe; a subscribe's answer is
    /// exactly TraderMade's shape.
    pub action: Option<&'static str>,
    pub accepted: Vec<String>,
    /// With the reason each was denied.
    pub denied: Vec<(String, String)>,
    pub invalid: Vec<String>,
}

impl SubAck {
    /// `{"type":"sub_ack","accepted":[...],"denied":[...],"denied_reasons":{...},"invalid":[...]}`.
    pub fn to_json(&self) -> String {
        let list = |items: &mut dyn Iterator<Item = &String>| {
            let v: Vec<serde_json::Value> = items
                .map(|s| serde_json::Value::String(s.clone()))
                .collect();
            serde_json::Value::Array(v).to_string()
        };
        let mut out = String::from(r#"{"type":"sub_ack","#);
        if let Some(action) = self.action {
            let _ = write!(out, r#""action":"{action}","#);
        }
        let reasons: serde_json::Map<String, serde_json::Value> = self
            .denied
            .iter()
            .map(|(s, why)| (s.clone(), serde_json::Value::String(why.clone())))
            .collect();
        let _ = write!(
            out,
            r#""accepted":{},"denied":{},"denied_reasons":{},"invalid":{}}}"#,
            list(&mut self.accepted.iter()),
            list(&mut self.denied.iter().map(|(s, _)| s)),
            serde_json::Value::Object(reasons),
            list(&mut self.invalid.iter()),
        );
        out
    }
}

/// The symbol of a v2 tick this module wrote (`"s"`); `None` for a control message.
pub fn tick_symbol(frame: &str) -> Option<&str> {
    // Ticks start `{"t":"`; control messages `{"type":"`. Written here, so read by position.
    let rest = frame.strip_prefix(r#"{"t":""#)?;
    let (_, rest) = rest.split_once(r#"","s":""#)?;
    let (symbol, _) = rest.split_once('"')?;
    Some(symbol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ticks_have_string_prices_and_a_compact_utc_time() {
        let v1 =
            r#"{"symbol":"EURUSD","ts":"1763992985123","bid":1.08612,"ask":1.08614,"mid":1.08613}"#;
        let t = tick_from_v1(v1, "EURUSD", Kind::Quote, 0).unwrap();
        assert_eq!(
            t,
            r#"{"t":"QUOTE","s":"EURUSD","b":"1.08612","a":"1.08614","ts":"20251124-14:03:05.123"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["b"], "1.08612");
        // The provider's precision stays; a time as a number; string prices as they were.
        let odd = r#"{ "ts": 1763992985000, "ask":"1.086140", "bid" : 1.08610, "symbol":"EURUSD"}"#;
        assert_eq!(
            tick_from_v1(odd, "EURUSD", Kind::LastQuote, 0).unwrap(),
            r#"{"t":"LAST_QUOTE","s":"EURUSD","b":"1.08610","a":"1.086140","ts":"20251124-14:03:05.000"}"#
        );
        // No time that can be read: the one given.
        let no_ts = r#"{"symbol":"EURUSD","bid":1.1,"ask":1.2}"#;
        assert!(
            tick_from_v1(no_ts, "EURUSD", Kind::Quote, 1_763_992_985_999)
                .unwrap()
                .ends_with(r#""ts":"20251124-14:03:05.999"}"#)
        );
        for bad in [
            r#"{"symbol":"EURUSD","bid":"x","ask":1.2}"#,
            r#"{"symbol":"EURUSD","bid":true,"ask":1.2}"#,
            r#"{"symbol":"EURUSD","ask":1.2}"#,
            "Connected",
        ] {
            assert_eq!(tick_from_v1(bad, "EURUSD", Kind::Quote, 0), None, "{bad}");
        }
    }

    #[test]
    fn compact_times() {
        assert_eq!(compact_time(0), "19700101-00:00:00.000");
        assert_eq!(compact_time(1_779_107_795_588), "20260518-12:36:35.588");
        assert_eq!(compact_time(951_782_399_999), "20000228-23:59:59.999");
    }

    #[test]
    fn subscription_entries_name_quotes() {
        assert_eq!(quote_symbol_of("EURUSD:QUOTE"), Some("EURUSD"));
        assert_eq!(quote_symbol_of("EURUSD"), None, "bare: invalid");
        assert_eq!(quote_symbol_of("EURUSD:TRADE"), None);
        assert_eq!(quote_symbol_of(":QUOTE"), None);
        assert_eq!(quote_symbol_of("A:B:QUOTE"), None);
    }

    #[test]
    fn control_messages() {
        assert_eq!(login_ok(3), r#"{"type":"login_ok","symbol_limit":3}"#);
        let reject: serde_json::Value = serde_json::from_str(&login_reject("bad \"key\"")).unwrap();
        assert_eq!(
            reject,
            json!({"type": "login_reject", "reason": "bad \"key\""})
        );
        let ack = SubAck {
            action: None,
            accepted: vec!["EURUSD:QUOTE".into()],
            denied: vec![("XAUUSD:QUOTE".into(), "not entitled".into())],
            invalid: vec!["EURUSD".into()],
        };
        assert_eq!(
            ack.to_json(),
            r#"{"type":"sub_ack","accepted":["EURUSD:QUOTE"],"denied":["XAUUSD:QUOTE"],"denied_reasons":{"XAUUSD:QUOTE":"not entitled"},"invalid":["EURUSD"]}"#
        );
        let unsub = SubAck {
            action: Some("unsubscribe"),
            ..SubAck::default()
        };
        assert_eq!(
            unsub.to_json(),
            r#"{"type":"sub_ack","action":"unsubscribe","accepted":[],"denied":[],"denied_reasons":{},"invalid":[]}"#
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&error("unknown action \"x\"")).unwrap()
                ["reason"],
            "unknown action \"x\""
        );
    }

    #[test]
    fn the_symbol_of_a_tick_is_read_back() {
        let t = tick(Kind::Quote, "GBPUSD", "1.2", "1.3", 0);
        assert_eq!(tick_symbol(&t), Some("GBPUSD"));
        assert_eq!(tick_symbol(&login_ok(1)), None);
        assert_eq!(tick_symbol(&SubAck::default().to_json()), None);
    }
}
