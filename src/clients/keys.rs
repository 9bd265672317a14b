//! The user keys file: which client keys may connect and to which symbols, looked up in
//! constant time so response timing reveals nothing about the keys.
//!
//! One key per line, `KEY` (all symbols) or `KEY SYM1,SYM2` (only those); blank lines and
//! lines whose first non-blank character is `#` are ignored, and elsewhere a `#` after
//! whitespace starts a trailing comment.

use crate::config::value::symbol_list;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// Shorter keys are rejected: they are too easy to guess.
pub const MIN_KEY_LEN: usize = 8;

/// One client key and what it may receive.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub key: String,
    /// Upper-case and unique; `None` means every symbol.
    pub symbols: Option<Vec<String>>,
}

impl KeyEntry {
    /// Whether this key may receive `symbol` (upper-case, as the config stores symbols).
    pub fn allows(&self, symbol: &str) -> bool {
        match &self.symbols {
            None => true,
            Some(list) => list.iter().any(|s| s == symbol),
        }
    }
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("key", &format_args!("{}", key_prefix(&self.key)))
            .field("symbols", &self.symbols)
            .finish()
    }
}

/// Every key from the file.
#[derive(Clone, Default)]
pub struct KeyStore {
    entries: Vec<KeyEntry>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("entries", &self.entries)
            .finish()
    }
}

/// A problem on one line of the keys file; the caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for KeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for KeysError {}

impl KeyStore {
    pub fn parse(text: &str) -> Result<KeyStore, KeysError> {
        let mut entries = Vec::new();
        // Keyed on the secret, but only while loading the file: no client input reaches it.
        let mut first_line: HashMap<&str, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let err = |message: String| KeysError { line, message };
            let content = strip_comment(raw).trim();
            if content.is_empty() {
                continue;
            }
            let (key, rest) = match content.find(char::is_whitespace) {
                Some(at) => (&content[..at], content[at..].trim()),
                None => (content, ""),
            };
            let len = key.chars().count();
            if len < MIN_KEY_LEN {
                return Err(err(format!(
                    "the key has {len} characters; keys need at least {MIN_KEY_LEN} because \
                     short keys are too easy to guess"
                )));
            }
            if let Some(first) = first_line.insert(key, line) {
                return Err(err(format!(
                    "key `{}` is listed twice (first on line {first})",
                    crate::base::logsafe::escaped(&key_prefix(key))
                )));
            }
            let symbols = if rest.is_empty() {
                None
            } else {
                Some(symbol_list(rest).map_err(|e| err(e.to_string()))?)
            };
            entries.push(KeyEntry {
                key: key.to_string(),
                symbols,
            });
        }
        Ok(KeyStore { entries })
    }

    /// Reads and parses `path`; the message names the file and, for a bad line, the line.
    pub fn load(path: &Path) -> Result<KeyStore, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the user keys file: {e}", path.display()))?;
        KeyStore::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The entry whose key equals `presented`.
    ///
    /// Compares against every key, with no early exit and no hashing of the secret, so the
    /// time taken does not depend on which key (if any) matched or how much of it did. It does
    /// depend on how many keys have the presented key's length; see [`ct_eq`].
    pub fn lookup(&self, presented: &str) -> Option<&KeyEntry> {
        let mut found = None;
        for entry in &self.entries {
            let equal = ct_eq(entry.key.as_bytes(), presented.as_bytes());
            // Keys are unique, so at most one entry matches; keep scanning regardless.
            found = if equal { Some(entry) } else { found };
        }
        found
    }

    /// Whether `key` is in the store, by the same constant-time path as [`KeyStore::lookup`].
    /// Whether a client of `key` may go on receiving `symbols` under this (reloaded) key
    /// file: its key is still listed and still entitled to each of them.
    pub fn still_allows<'a>(&self, key: &str, mut symbols: impl Iterator<Item = &'a str>) -> bool {
        self.lookup(key)
            .is_some_and(|entry| symbols.all(|symbol| entry.allows(symbol)))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.lookup(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry in file order, e.g. to check their symbols against the configured ones.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }
}

/// Whether `a` and `b` are equal, taking the same time whatever their contents.
///
/// The lengths are not secret: slices of different lengths return `false` at once, so the
/// time reveals whether the lengths match, never how many bytes do.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// At most the first 4 characters of a key then `…`, for messages and `Debug`.
fn key_prefix(key: &str) -> String {
    let mut out: String = key.chars().take(4).collect();
    out.push('…');
    out
}

/// The line up to a `#` at its start or after whitespace. Whitespace is Unicode's, as for
/// `trim` and the split between key and symbols: with ASCII's only, a line starting with a
/// vertical tab or a no-break space and then `#` (a key commented out, to a reader) was
/// loaded as a key.
fn strip_comment(line: &str) -> &str {
    let mut after_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && after_space {
            return &line[..i];
        }
        after_space = c.is_whitespace();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# client keys
alice-key-0001
  # indented comment
bob-key-00002  eurusd, GBPUSD   # bob pays for two

carol-key-003\tXAU/USD
dave#key#0004 # a # inside a key is kept
";

    #[test]
    fn parses_keys_and_symbols() {
        let store = KeyStore::parse(GOOD).unwrap();
        assert_eq!(store.len(), 4);
        assert!(!store.is_empty());
        let e = store.entries();
        assert_eq!(
            e[0],
            KeyEntry {
                key: "alice-key-0001".into(),
                symbols: None
            }
        );
        assert_eq!(e[1].key, "bob-key-00002");
        assert_eq!(
            e[1].symbols,
            Some(vec!["EURUSD".to_string(), "GBPUSD".to_string()])
        );
        assert_eq!(e[2].symbols, Some(vec!["XAU/USD".to_string()]));
        assert_eq!(e[3].key, "dave#key#0004");
        assert!(e[1].allows("GBPUSD") && !e[1].allows("USDJPY") && e[0].allows("USDJPY"));
        assert!(KeyStore::parse("").unwrap().is_empty());
        assert!(KeyStore::parse("# nothing\n\n").unwrap().is_empty());
    }

    #[test]
    fn rejects_short_keys_saying_why() {
        let e = KeyStore::parse("alice-key-0001\nshort\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(
            e.to_string(),
            "line 2: the key has 5 characters; keys need at least 8 because short keys are too easy to guess"
        );
        assert!(KeyStore::parse("abcdefgh").is_ok());
    }

    #[test]
    fn rejects_duplicates_without_printing_the_key() {
        let e =
            KeyStore::parse("alice-key-0001\nbob-key-00002\nalice-key-0001 EURUSD\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3: key `alic…` is listed twice (first on line 1)"
        );
        assert!(!e.to_string().contains("alice-key"));
        // The message reaches the log when a reload fails: the file's bytes are escaped.
        let e = KeyStore::parse("\u{1b}]0;x-key-0001\n\u{1b}]0;x-key-0001\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            r"line 2: key `\u{1b}]0;…` is listed twice (first on line 1)"
        );
    }

    #[test]
    fn a_key_commented_out_after_any_whitespace_is_not_loaded() {
        for commented in [
            "\t\u{b}#alice-key-0001",
            "\u{a0}#alice-key-0001",
            "\u{2003}# alice-key-0001",
            "\u{c}#alice-key-0001 EURUSD",
        ] {
            let store = KeyStore::parse(&format!("bob-key-00002\n{commented}\n")).unwrap();
            assert_eq!(store.len(), 1, "{commented:?}");
            assert!(!store.contains("#alice-key-0001"), "{commented:?}");
        }
        let store = KeyStore::parse("alice-key-0001\u{a0}# trailing\n").unwrap();
        assert!(store.contains("alice-key-0001"));
        assert!(KeyStore::parse("alice#key-0001\n")
            .unwrap()
            .contains("alice#key-0001"));
        // Found by the `keys` fuzz target (fuzz/artifacts/keys/crash-fa270d16...).
        let found = "\t\u{b}#caros\0lrrr\0\0\0\0\0\0\0Z0U1bobrrr@rrrc\0arolcaros\0l-kD\u{19}##";
        assert!(KeyStore::parse(found).unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_symbol_lists() {
        let e = KeyStore::parse("alice-key-0001 EURUSD,,GBPUSD").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"line 1: expected comma-separated symbols such as EURUSD,GBPUSD, got an empty entry in "EURUSD,,GBPUSD""#
        );
        let e = KeyStore::parse("alice-key-0001 EURUSD,").unwrap_err();
        assert!(e.message.contains("got an empty entry"));
        let e = KeyStore::parse("x\nalice-key-0001 EURUSD GBPUSD").unwrap_err();
        assert_eq!(e.line, 1);
        let e = KeyStore::parse("alice-key-0001 EURUSD GBPUSD").unwrap_err();
        assert!(e.message.contains("symbols are separated by commas"), "{e}");
        let e = KeyStore::parse("alice-key-0001 EURUSD,eurusd").unwrap_err();
        assert_eq!(e.message, "symbol EURUSD is listed twice");
    }

    #[test]
    fn lookup_finds_only_exact_keys() {
        let store = KeyStore::parse(GOOD).unwrap();
        let bob = store.lookup("bob-key-00002").unwrap();
        assert_eq!(bob.symbols.as_ref().map(Vec::len), Some(2));
        assert!(store.contains("alice-key-0001"));
        assert!(!store.contains("alice-key-000"));
        assert!(!store.contains("alice-key-00011"));
        assert!(!store.contains("ALICE-KEY-0001"));
        assert!(!store.contains(""));
        assert!(store.lookup("carol-key-004").is_none());
        assert!(KeyStore::default().lookup("alice-key-0001").is_none());
    }

    #[test]
    fn ct_eq_compares_contents() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"\x00", b""));
    }

    #[test]
    fn debug_never_prints_keys() {
        let store = KeyStore::parse(GOOD).unwrap();
        let debug = format!("{store:?}");
        assert!(!debug.contains("alice-key"), "{debug}");
        assert!(debug.contains("alic…"), "{debug}");
        assert!(debug.contains("GBPUSD"));
    }

    #[test]
    fn load_names_the_file() {
        let path = std::env::temp_dir().join(format!("fxproxy-keys-test-{}", std::process::id()));
        std::fs::write(&path, "alice-key-0001\nbad\n").unwrap();
        let message = KeyStore::load(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            message.starts_with(&format!(
                "{}: line 2: the key has 3 characters",
                path.display()
            )),
            "{message}"
        );
        let message = KeyStore::load(Path::new("/nonexistent/users.keys")).unwrap_err();
        assert!(message.starts_with("/nonexistent/users.keys: cannot read the user keys file: "));
    }
}
