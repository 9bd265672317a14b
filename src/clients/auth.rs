//! The client's first message, parsed into an [`AuthRequest`]. It decides the protocol the
//! client speaks: `{"userKey":"KEY","symbol":"EURUSD,GBPUSD"}` is fxproxy's own (v1);
//! `{"action":"login","key":"KEY","fmt":"JSON"}` is TraderMade's v2, whose client then
//! subscribes as it goes (see [`super::v2`]). Checking the key and the symbols is the
//! caller's business.

use serde_json::Value;
use std::collections::HashSet;
use std::fmt;

/// What a client asked for.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// As sent; may be empty (and then matches no key).
    pub key: String,
    /// Upper-case, trimmed, unique, in the order sent; `None` means every symbol the key allows.
    pub symbols: Option<Vec<String>>,
    /// `"conflate": true` (or false): the slow-client policy this client asks for; `None`
    /// leaves it to `slow_client`.
    pub conflate: Option<bool>,
    /// It logged in with TraderMade's v2 protocol: it subscribes after logging in, and its
    /// ticks are in v2's shape.
    pub v2: bool,
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.key.chars().take(4).collect();
        f.debug_struct("AuthRequest")
            .field("key", &format_args!("{shown}…"))
            .field("symbols", &self.symbols)
            .field("conflate", &self.conflate)
            .field("v2", &self.v2)
            .finish()
    }
}

/// Why an auth message was refused. The client is closed with `Failed to authenticate`; these
/// say more, for the log, and never quote the message (it may hold a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    NotJson,
    NotAnObject,
    MissingKey,
    KeyNotAString,
    /// `symbol` is neither a string nor an array of strings.
    BadSymbol,
    /// `conflate` is not `true` or `false`.
    BadConflate,
    /// A v2 message (it has an `action`) that is not a login.
    NotLogin,
    /// A v2 login without a string `key`.
    LoginWithoutKey,
    /// A v2 login asking for a format other than JSON.
    NotJsonFormat,
}

impl AuthError {
    /// For a client that speaks v2, what it is told before it is closed: `login_reject`
    /// with why, or `error` for a first message that is no login. `None` for v1.
    pub fn v2_answer(&self) -> Option<String> {
        use crate::feed::v2;
        match self {
            AuthError::NotLogin => Some(v2::error(
                "log in first: {\"action\":\"login\",\"key\":\"KEY\",\"fmt\":\"JSON\"}",
            )),
            AuthError::LoginWithoutKey => Some(v2::login_reject("the login has no `key`")),
            AuthError::NotJsonFormat => {
                Some(v2::login_reject("only fmt JSON is served by this proxy"))
            }
            _ => None,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::NotJson => "the auth message is not JSON",
            AuthError::NotAnObject => "the auth message is not a JSON object",
            AuthError::MissingKey => "the auth message has no `userKey`",
            AuthError::KeyNotAString => "`userKey` in the auth message is not a string",
            AuthError::BadSymbol => {
                "`symbol` in the auth message is neither a string nor an array of strings"
            }
            AuthError::BadConflate => "`conflate` in the auth message is not true or false",
            AuthError::NotLogin => "the first v2 message is not a login",
            AuthError::LoginWithoutKey => "the v2 login has no string `key`",
            AuthError::NotJsonFormat => "the v2 login asks for a format other than JSON",
        })
    }
}

impl std::error::Error for AuthError {}

/// Parses the client's first message: a v1 auth message, or a v2 login (one with an
/// `action`). Other fields are ignored. `symbol` may be a comma-separated string or an array
/// of strings; empty entries are skipped, and a list left empty (or no `symbol` at all) means
/// every symbol.
pub fn parse_auth(text: &str) -> Result<AuthRequest, AuthError> {
    let value: Value = serde_json::from_str(text).map_err(|_| AuthError::NotJson)?;
    let Value::Object(mut object) = value else {
        return Err(AuthError::NotAnObject);
    };
    if object.contains_key("action") && !object.contains_key("userKey") {
        return parse_login(object);
    }
    let key = match object.remove("userKey") {
        None => return Err(AuthError::MissingKey),
        Some(Value::String(key)) => key,
        Some(_) => return Err(AuthError::KeyNotAString),
    };
    let mut symbols: Vec<String> = Vec::new();
    // This runs on the one admission thread for every unauthenticated message: duplicates are
    // found with a set, so a 4 KiB list costs time in proportion to its length, not its square.
    let mut seen = HashSet::new();
    let mut add = |piece: &str| {
        let symbol = piece.trim().to_uppercase();
        if !symbol.is_empty() && seen.insert(symbol.clone()) {
            symbols.push(symbol);
        }
    };
    match object.get("symbol") {
        None => {}
        Some(Value::String(list)) => list.split(',').for_each(&mut add),
        Some(Value::Array(items)) => {
            for item in items {
                let Value::String(symbol) = item else {
                    return Err(AuthError::BadSymbol);
                };
                add(symbol);
            }
        }
        Some(_) => return Err(AuthError::BadSymbol),
    }
    let conflate = match object.get("conflate") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(AuthError::BadConflate),
    };
    Ok(AuthRequest {
        key,
        symbols: (!symbols.is_empty()).then_some(symbols),
        conflate,
        v2: false,
    })
}

/// `{"action":"login","key":"KEY","fmt":"JSON"}`; `fmt` may be left out, and other fields
/// (`send_ladder`) are ignored: the proxy has no market depth to send.
fn parse_login(mut object: serde_json::Map<String, Value>) -> Result<AuthRequest, AuthError> {
    if object.get("action").and_then(Value::as_str) != Some("login") {
        return Err(AuthError::NotLogin);
    }
    let Some(Value::String(key)) = object.remove("key") else {
        return Err(AuthError::LoginWithoutKey);
    };
    match object.get("fmt") {
        None => {}
        Some(Value::String(f)) if f.eq_ignore_ascii_case("json") => {}
        Some(_) => return Err(AuthError::NotJsonFormat),
    }
    Ok(AuthRequest {
        key,
        symbols: None,
        conflate: None,
        v2: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols(text: &str) -> Option<Vec<String>> {
        parse_auth(text).unwrap().symbols
    }

    fn list(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn key_alone_means_every_symbol() {
        let req = parse_auth(r#"{"userKey":"alice-key-0001"}"#).unwrap();
        assert_eq!(req.key, "alice-key-0001");
        assert_eq!(req.symbols, None);
        assert_eq!(
            parse_auth(r#" {"userKey":"", "other": 1} "#).unwrap().key,
            ""
        );
    }

    #[test]
    fn symbol_as_a_string() {
        assert_eq!(
            symbols(r#"{"userKey":"k","symbol":"EURUSD,GBPUSD"}"#),
            list(&["EURUSD", "GBPUSD"])
        );
        assert_eq!(
            symbols(r#"{"userKey":"k","symbol":" eurusd , ,gbpusd,"}"#),
            list(&["EURUSD", "GBPUSD"])
        );
        assert_eq!(
            symbols(r#"{"userKey":"k","symbol":"EURUSD,eurusd"}"#),
            list(&["EURUSD"])
        );
        assert_eq!(symbols(r#"{"userKey":"k","symbol":""}"#), None);
        assert_eq!(symbols(r#"{"userKey":"k","symbol":" , "}"#), None);
    }

    #[test]
    fn symbol_as_an_array() {
        assert_eq!(
            symbols(r#"{"userKey":"k","symbol":["usdjpy"," EURUSD ",""]}"#),
            list(&["USDJPY", "EURUSD"])
        );
        assert_eq!(symbols(r#"{"userKey":"k","symbol":[]}"#), None);
    }

    #[test]
    fn malformed_messages() {
        let err = |t: &str| parse_auth(t).unwrap_err();
        assert_eq!(err(""), AuthError::NotJson);
        assert_eq!(err("userKey=abc"), AuthError::NotJson);
        assert_eq!(err(r#"{"userKey":"k""#), AuthError::NotJson);
        assert_eq!(err(r#"["userKey","k"]"#), AuthError::NotAnObject);
        assert_eq!(err(r#""k""#), AuthError::NotAnObject);
        assert_eq!(err("{}"), AuthError::MissingKey);
        assert_eq!(err(r#"{"userkey":"k"}"#), AuthError::MissingKey);
        assert_eq!(err(r#"{"userKey":42}"#), AuthError::KeyNotAString);
        assert_eq!(err(r#"{"userKey":null}"#), AuthError::KeyNotAString);
        assert_eq!(err(r#"{"userKey":"k","symbol":7}"#), AuthError::BadSymbol);
        assert_eq!(
            err(r#"{"userKey":"k","symbol":null}"#),
            AuthError::BadSymbol
        );
        assert_eq!(
            err(r#"{"userKey":"k","symbol":["EURUSD",1]}"#),
            AuthError::BadSymbol
        );
        assert_eq!(
            AuthError::MissingKey.to_string(),
            "the auth message has no `userKey`"
        );
    }

    #[test]
    fn a_client_may_ask_to_be_conflated() {
        let conflate = |t: &str| parse_auth(t).map(|r| r.conflate);
        assert_eq!(conflate(r#"{"userKey":"k"}"#), Ok(None));
        assert_eq!(
            conflate(r#"{"userKey":"k","conflate":true}"#),
            Ok(Some(true))
        );
        assert_eq!(
            conflate(r#"{"userKey":"k","conflate":false}"#),
            Ok(Some(false))
        );
        assert_eq!(
            conflate(r#"{"userKey":"k","conflate":"yes"}"#),
            Err(AuthError::BadConflate)
        );
    }

    #[test]
    fn a_v2_login_decides_the_protocol() {
        let req = parse_auth(r#"{"action":"login","key":"alice-key-0001","fmt":"JSON"}"#).unwrap();
        assert_eq!(
            (req.key.as_str(), req.v2, req.symbols),
            ("alice-key-0001", true, None)
        );
        assert!(parse_auth(r#"{"action":"login","key":"k"}"#).unwrap().v2);
        assert!(!parse_auth(r#"{"userKey":"k"}"#).unwrap().v2);
        let err = |t: &str| parse_auth(t).unwrap_err();
        assert_eq!(
            err(r#"{"action":"subscribe","symbols":["EURUSD:QUOTE"]}"#),
            AuthError::NotLogin
        );
        assert_eq!(err(r#"{"action":"login"}"#), AuthError::LoginWithoutKey);
        assert_eq!(
            err(r#"{"action":"login","key":7}"#),
            AuthError::LoginWithoutKey
        );
        assert_eq!(
            err(r#"{"action":"login","key":"k","fmt":"CSV"}"#),
            AuthError::NotJsonFormat
        );
        let told: serde_json::Value =
            serde_json::from_str(&AuthError::NotJsonFormat.v2_answer().unwrap()).unwrap();
        assert_eq!(told["type"], "login_reject");
        assert_eq!(
            AuthError::MissingKey.v2_answer(),
            None,
            "v1 is closed, not told"
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let req = parse_auth(r#"{"userKey":"alice-key-0001","symbol":"EURUSD"}"#).unwrap();
        let debug = format!("{req:?}");
        assert!(!debug.contains("alice-key"), "{debug}");
        assert!(
            debug.contains("alic…") && debug.contains("EURUSD"),
            "{debug}"
        );
    }

    #[test]
    fn a_long_list_of_distinct_symbols_keeps_its_order() {
        let list: Vec<String> = (0..2000).map(|i| format!("S{i}")).collect();
        let text = format!(r#"{{"userKey":"k","symbol":"{},S1"}}"#, list.join(","));
        assert_eq!(symbols(&text), Some(list));
    }
}
