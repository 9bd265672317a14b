//! A client that speaks TraderMade's v2 protocol, once logged in (the login itself is its
//! first message: see [`super::auth`] and [`super::handshake`]). It subscribes and unsubscribes
//! as it goes, each answered with a `sub_ack`:
//!
//! ```text
//! -> {"action":"subscribe","symbols":["EURUSD:QUOTE","XAUUSD:QUOTE","GBPUSD"],"send_last":true}
//! <- {"type":"sub_ack","accepted":["EURUSD:QUOTE"],"denied":["XAUUSD:QUOTE"],
//!     "denied_reasons":{"XAUUSD:QUOTE":"not entitled with this key"},"invalid":["GBPUSD"]}
//! <- {"t":"LAST_QUOTE","s":"EURUSD",...}, then {"t":"QUOTE","s":"EURUSD",...} as they come
//! -> {"action":"unsubscribe","symbols":["EURUSD:QUOTE"]}
//! <- {"type":"sub_ack","action":"unsubscribe","accepted":["EURUSD:QUOTE"],...}
//! ```
//!
//! As TraderMade's own service, a bare symbol (`EURUSD`) or one the proxy does not carry is
//! invalid; one the key may not have is denied, as is one the provider refused upstream. A
//! message the proxy cannot act on is answered with `{"type":"error","reason":...}`. The
//! answers go through the client's queue, in order with its quotes (see [`Hub::change`]).
//!
//! [`Hub::change`]: crate::fanout::distributor::Hub::change

use crate::base::logsafe;
use crate::base::symbol_states::SymbolState;
use crate::clients::context::Context;
use crate::clients::keys::KeyEntry;
use crate::fanout::slot::{ClientSlot, Kick};
use crate::feed::v2::{self, SubAck};
use log::debug;
use serde_json::Value;

/// Why an entry is denied when the key may not have its symbol.
const NOT_ENTITLED: &str = "not entitled with this key";

/// What a logged-in client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Entries as sent, trimmed and upper-cased, each once.
    Subscribe {
        entries: Vec<String>,
        send_last: bool,
    },
    Unsubscribe {
        entries: Vec<String>,
    },
}

/// Parses a logged-in client's message; `Err` is the reason its `error` answer gives.
pub fn parse_action(text: &str) -> Result<Action, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|_| "the message is not JSON".to_string())?;
    let action = value.get("action").and_then(Value::as_str);
    let entries = || -> Result<Vec<String>, String> {
        let Some(Value::Array(items)) = value.get("symbols") else {
            return Err(
                "`symbols` must be an array of strings such as [\"EURUSD:QUOTE\"]".to_string(),
            );
        };
        let mut entries: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let Value::String(s) = item else {
                return Err("`symbols` must hold strings only".to_string());
            };
            let entry = s.trim().to_ascii_uppercase();
            if !entry.is_empty() && !entries.contains(&entry) {
                entries.push(entry);
            }
        }
        Ok(entries)
    };
    match action {
        Some("subscribe") => Ok(Action::Subscribe {
            entries: entries()?,
            send_last: value.get("send_last") == Some(&Value::Bool(true)),
        }),
        Some("unsubscribe") => Ok(Action::Unsubscribe {
            entries: entries()?,
        }),
        Some("login") => Err("already logged in".to_string()),
        Some(other) => Err(format!(
            "unknown action {} (subscribe or unsubscribe)",
            logsafe::short(other)
        )),
        None => Err("the message has no `action`".to_string()),
    }
}

/// What the key may have now, `None` once it is gone from the key file (the client is being
/// closed then); everything when certificates alone admit clients.
fn entitlement(ctx: &Context, key: &str) -> Option<KeyEntry> {
    let keys = ctx.keys();
    if !ctx.keys_checked(&keys) {
        return Some(KeyEntry {
            key: String::new(),
            symbols: None,
        });
    }
    keys.lookup(key).cloned()
}

/// `login_ok`'s `symbol_limit`: how many of the proxy's symbols the key may have.
pub fn symbol_limit(ctx: &Context, key: &str) -> usize {
    let Some(entry) = entitlement(ctx, key) else {
        return 0;
    };
    ctx.config()
        .symbols
        .iter()
        .filter(|s| entry.allows(s))
        .count()
}

/// Acts on one message from a logged-in client: its subscriptions change and the answer is
/// queued, or an `error` is. False when its queue is full (it is being closed).
// Out of line: inlined into the writer loop it would cost every client's thread stack.
#[inline(never)]
pub fn act(ctx: &Context, client: &ClientSlot, peer: &dyn std::fmt::Display, text: &str) -> bool {
    let action = match parse_action(text) {
        Ok(action) => action,
        Err(why) => return ctx.hub.change(client, &[], &[], v2::error(&why), false),
    };
    match action {
        Action::Subscribe { entries, send_last } => {
            let (ack, add) = subscribe(ctx, &client.key, &entries);
            debug!(
                "{peer}: subscribe: {} accepted, {} denied, {} invalid",
                ack.accepted.len(),
                ack.denied.len(),
                ack.invalid.len()
            );
            let kept = ctx.hub.change(client, &add, &[], ack.to_json(), send_last);
            // The provider's answer may have come while this one was being sorted.
            if client.wants_only(&ctx.metrics.upstream_symbols.refused()) {
                client.kick(Kick::Refused);
            }
            kept
        }
        Action::Unsubscribe { entries } => {
            let mut ack = SubAck {
                action: Some("unsubscribe"),
                ..SubAck::default()
            };
            let mut remove = Vec::new();
            for entry in entries {
                match v2::quote_symbol_of(&entry).and_then(|s| ctx.hub.symbol_id(s)) {
                    Some(id) => {
                        remove.push(id);
                        ack.accepted.push(entry);
                    }
                    None => ack.invalid.push(entry),
                }
            }
            debug!("{peer}: unsubscribe: {} symbol(s)", remove.len());
            ctx.hub.change(client, &[], &remove, ack.to_json(), false)
        }
    }
}

/// Sorts a subscription's entries: the answer, and the symbol ids to add.
fn subscribe(ctx: &Context, key: &str, entries: &[String]) -> (SubAck, Vec<usize>) {
    let entry = entitlement(ctx, key);
    let mut ack = SubAck::default();
    let mut add = Vec::new();
    for wire in entries {
        let Some((symbol, id)) =
            v2::quote_symbol_of(wire).and_then(|s| Some((s, ctx.hub.symbol_id(s)?)))
        else {
            ack.invalid.push(wire.clone());
            continue;
        };
        if !entry.as_ref().is_some_and(|e| e.allows(symbol)) {
            ack.denied.push((wire.clone(), NOT_ENTITLED.to_string()));
            continue;
        }
        match ctx.metrics.upstream_symbols.state(id) {
            SymbolState::Invalid => ack.invalid.push(wire.clone()),
            state @ SymbolState::Denied(_) => {
                let why = state.why_refused().unwrap_or_default();
                ack.denied.push((wire.clone(), why));
            }
            SymbolState::Accepted | SymbolState::Unacknowledged => {
                ack.accepted.push(wire.clone());
                add.push(id);
            }
        }
    }
    (ack, add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_parsed_and_their_faults_explained() {
        assert_eq!(
            parse_action(
                r#"{"action":"subscribe","symbols":[" eurusd:quote","GBPUSD","EURUSD:QUOTE",""],"send_last":true}"#
            ),
            Ok(Action::Subscribe {
                entries: vec!["EURUSD:QUOTE".into(), "GBPUSD".into()],
                send_last: true
            })
        );
        assert_eq!(
            parse_action(r#"{"action":"subscribe","symbols":[]}"#),
            Ok(Action::Subscribe {
                entries: vec![],
                send_last: false
            })
        );
        assert_eq!(
            parse_action(r#"{"action":"unsubscribe","symbols":["EURUSD:QUOTE"]}"#),
            Ok(Action::Unsubscribe {
                entries: vec!["EURUSD:QUOTE".into()]
            })
        );
        let err = |t: &str| parse_action(t).unwrap_err();
        assert!(err("hello").contains("not JSON"));
        assert!(err(r#"{"action":"subscribe","symbols":"EURUSD:QUOTE"}"#).contains("array"));
        assert!(err(r#"{"action":"subscribe","symbols":[1]}"#).contains("strings only"));
        assert!(err(r#"{"action":"subscribe"}"#).contains("`symbols`"));
        assert!(err(r#"{"action":"dance"}"#).contains("unknown action dance"));
        assert!(err(r#"{"action":"login","key":"k"}"#).contains("already logged in"));
        assert!(err(r#"{"symbols":[]}"#).contains("no `action`"));
    }
}
