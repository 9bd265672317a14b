//! fxproxy's own quote protocol in one place (TraderMade's first protocol, which the proxy
//! serves its clients whatever the provider): what a quote frame looks like. `watch`, the
//! simulator and the page lean on these definitions too; what a provider's other texts mean
//! is its template's business (see [`crate::feed::provider`]).

use serde::Deserialize;

/// The largest frame taken from the source. A quote is about 100 bytes; anything near this is
/// a misbehaving source, and every client's write buffer must be able to hold one frame.
pub const MAX_UPSTREAM_FRAME: usize = 1 << 20;

/// The greeting a TraderMade-style source (and this proxy) sends on connect.
pub const GREETING: &str = "Connected";

#[derive(Deserialize)]
struct QuoteHead<'a> {
    #[serde(borrow)]
    symbol: std::borrow::Cow<'a, str>,
}

/// The symbol of a quote frame: a JSON object with a string `symbol`. Anything else is not a
/// quote. Other fields are skipped, not built, so this is the one parse a frame gets.
pub fn quote_symbol(text: &str) -> Option<std::borrow::Cow<'_, str>> {
    // serde would also read a struct from a JSON array (`["EURUSD"]`); a quote is an object.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str::<QuoteHead<'_>>(text)
        .ok()
        .map(|head| head.symbol)
}

/// The auth message a client (or this proxy, as an upstream's client) sends.
pub fn auth_message(key: &str, symbols: Option<&[String]>) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("userKey".into(), serde_json::Value::String(key.into()));
    if let Some(symbols) = symbols {
        obj.insert(
            "symbol".into(),
            serde_json::Value::String(symbols.join(",")),
        );
    }
    serde_json::Value::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_symbol_of_a_quote() {
        let q =
            r#"{"symbol":"EURUSD","ts":"1700000000123","bid":1.09121,"ask":1.09123,"mid":1.09122}"#;
        assert_eq!(quote_symbol(q).as_deref(), Some("EURUSD"));
        assert_eq!(
            quote_symbol(r#"{"symbol":"EUR\u0055SD"}"#).as_deref(),
            Some("EURUSD")
        );
    }

    #[test]
    fn non_quotes_have_no_symbol() {
        for text in [
            "Connected",
            "{}",
            r#"{"symbol":5}"#,
            r#"["symbol"]"#,
            r#"{"symbol":"EURUSD""#,
            r#"{"error":"bad key"}"#,
        ] {
            assert_eq!(quote_symbol(text), None, "{text}");
        }
    }

    #[test]
    fn auth_message_escapes_the_key() {
        assert_eq!(auth_message("a\"b", None), r#"{"userKey":"a\"b"}"#);
        let syms = vec!["EURUSD".to_string(), "GBPUSD".to_string()];
        let msg = auth_message("k", Some(&syms));
        assert!(msg.contains(r#""symbol":"EURUSD,GBPUSD""#), "{msg}");
    }
}
