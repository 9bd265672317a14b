//! The user keys file, `KeyStore::parse`.
//!
//! Properties: an error names a line of the file and has no control character (it is logged
//! when a reload fails); every key loaded is at least `MIN_KEY_LEN` characters without
//! whitespace, unique, and found by `lookup` (in constant time) with its own symbols; the
//! store written back out as `KEY SYM,SYM` lines parses to the same store; and `Debug` shows
//! at most a key's first four characters.

#![no_main]

use fxproxy::keys::{KeyStore, MIN_KEY_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let store = match KeyStore::parse(text) {
        Err(e) => {
            let message = e.to_string();
            assert!(!message.chars().any(char::is_control), "{message:?}");
            assert!(e.line >= 1 && e.line <= text.lines().count(), "{message}");
            return;
        }
        Ok(store) => store,
    };
    let mut written = String::new();
    for (i, entry) in store.entries().iter().enumerate() {
        let key = &entry.key;
        assert!(key.chars().count() >= MIN_KEY_LEN, "{key:?}");
        assert!(
            !key.contains(char::is_whitespace) && !key.starts_with('#'),
            "{key:?}"
        );
        assert!(
            store.entries()[..i].iter().all(|e| e.key != *key),
            "{key:?} twice"
        );
        assert_eq!(store.lookup(key), Some(entry));
        let shown: String = key.chars().take(4).collect();
        let debug = format!("{entry:?}");
        assert!(
            debug.starts_with(&format!("KeyEntry {{ key: {shown}…, symbols: ")),
            "{debug}"
        );
        written.push_str(key);
        if let Some(symbols) = &entry.symbols {
            assert!(!symbols.is_empty());
            for s in symbols {
                assert!(entry.allows(s));
            }
            written.push(' ');
            written.push_str(&symbols.join(","));
        }
        written.push('\n');
    }
    let again = KeyStore::parse(&written).expect("the store written out parses");
    assert_eq!(again.entries(), store.entries());
});
