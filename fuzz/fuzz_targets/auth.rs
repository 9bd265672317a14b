//! The client's first message, `parse_auth`.
//!
//! Properties: it agrees with a plain JSON parse on whether the message is JSON, an object,
//! and has a string `userKey` (then the key is exactly that string), or, for an object with an
//! `action` and no `userKey` (TraderMade's v2), is a login with a string `key` and no format
//! other than JSON (then the key is exactly that string, and it asks for no symbols); with a
//! string `userKey`, refused only for its `symbol` or `conflate`; a parsed request
//! round-trips: the message a client builds from it (`protocol::auth_message`) parses to the
//! same key and the same symbols; symbols come out non-empty, trimmed, upper-case and unique;
//! and `Debug` shows at most the key's first four characters.

#![no_main]

use fxproxy::auth::{parse_auth, AuthError};
use fxproxy::protocol::auth_message;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_auth(text);
    match serde_json::from_str::<Value>(text) {
        Err(_) => assert_eq!(parsed, Err(AuthError::NotJson)),
        Ok(Value::Object(object))
            if object.contains_key("action") && !object.contains_key("userKey") =>
        {
            let login = object.get("action") == Some(&Value::from("login"));
            let fmt_ok = match object.get("fmt") {
                None => true,
                Some(Value::String(f)) => f.eq_ignore_ascii_case("json"),
                Some(_) => false,
            };
            match (login, object.get("key"), &parsed) {
                (false, _, _) => assert_eq!(parsed, Err(AuthError::NotLogin)),
                (true, Some(Value::String(key)), Ok(request)) => {
                    assert!(fmt_ok && request.v2 && request.symbols.is_none());
                    assert_eq!(&request.key, key);
                }
                (true, Some(Value::String(_)), Err(e)) => {
                    assert!(!fmt_ok && *e == AuthError::NotJsonFormat, "{e:?}")
                }
                (true, _, _) => assert_eq!(parsed, Err(AuthError::LoginWithoutKey)),
            }
        }
        Ok(Value::Object(object)) => match object.get("userKey") {
            None => assert_eq!(parsed, Err(AuthError::MissingKey)),
            Some(Value::String(key)) => match &parsed {
                Ok(request) => assert_eq!(&request.key, key),
                Err(e) => assert!(
                    matches!(e, AuthError::BadSymbol | AuthError::BadConflate),
                    "{e:?}"
                ),
            },
            Some(_) => assert_eq!(parsed, Err(AuthError::KeyNotAString)),
        },
        Ok(_) => assert_eq!(parsed, Err(AuthError::NotAnObject)),
    }
    let Ok(request) = parsed else {
        return;
    };
    if request.v2 {
        return;
    }
    if let Some(symbols) = &request.symbols {
        assert!(!symbols.is_empty());
        for (i, s) in symbols.iter().enumerate() {
            assert!(
                !s.is_empty() && s.trim() == s && s.to_uppercase() == *s,
                "{s:?}"
            );
            assert!(!symbols[..i].contains(s), "{s:?} twice");
        }
    }
    let again = parse_auth(&auth_message(&request.key, request.symbols.as_deref())).unwrap();
    assert_eq!(again.key, request.key);
    // The message joins symbols with commas; one that holds a comma (sent in an array) comes
    // back split, and is refused either way: no configured symbol has one.
    if !request.symbols.iter().flatten().any(|s| s.contains(',')) {
        assert_eq!(again.symbols, request.symbols);
    }
    let debug = format!("{request:?}");
    let shown: String = request.key.chars().take(4).collect();
    assert!(
        debug.starts_with(&format!("AuthRequest {{ key: {shown}…, symbols: ")),
        "{debug}"
    );
});
