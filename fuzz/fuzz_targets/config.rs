//! `proxy.conf`, `config::parse`.
//!
//! Properties: an error names a line of the file and is one line with no control character
//! (it is printed and logged); a parsed config holds its invariants: at least one symbol, each
//! 1 to 32 characters of A-Z 0-9 . _ / : -, unique; the first reconnect delay within the
//! maximum; closed dates sorted and unique; limits at least 1; the provider key never in full
//! in `Debug`; its market rule answers for any moment and writes valid JSON for the page.

#![no_main]

use fxproxy::config::parse;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text, Path::new("/etc/fxproxy/proxy.conf")) {
        Err(e) => {
            let message = e.to_string();
            assert!(!message.chars().any(char::is_control), "{message:?}");
            if let Some(line) = e.line() {
                assert!(
                    line >= 1 && line <= text.lines().count(),
                    "line {line}: {message}"
                );
            }
        }
        Ok(c) => {
            assert!(!c.symbols.is_empty());
            for (i, s) in c.symbols.iter().enumerate() {
                let valid = |ch: char| {
                    ch.is_ascii_uppercase() || ch.is_ascii_digit() || "._/:-".contains(ch)
                };
                assert!(
                    !s.is_empty() && s.len() <= 32 && s.chars().all(valid),
                    "{s:?}"
                );
                assert!(!c.symbols[..i].contains(s), "{s} twice");
            }
            assert!(c.upstream_backoff_min <= c.upstream_backoff_max);
            assert!(c.market_closed_dates.windows(2).all(|w| w[0] < w[1]));
            assert!(
                c.max_clients >= 1 && c.max_pending_connections >= 1 && c.client_queue_len >= 1
            );
            let key = c.upstream_api_key.expose();
            if key.chars().count() > 8 {
                assert!(!format!("{:?}", c.upstream_api_key).contains(key));
            }
            let market = c.market();
            for at in [0, 1_700_000_000_000, 4_102_444_800_000, 253_402_300_799_000] {
                let _ = market.state(at);
            }
            let rule: serde_json::Value = serde_json::from_str(&market.rule_json()).unwrap();
            assert!(rule.is_object());
        }
    }
});
