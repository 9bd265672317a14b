//! Text a peer chose, made safe for a log line or a close reason: a client's key prefix,
//! symbols, request headers; the source's notices and close reasons; whatever a library error
//! or a panic message repeats of them. A log line is a record to its reader and to a shipper
//! (journald, Loki, Splunk): a newline in peer text would let the peer write records of its
//! own, an ANSI escape would rewrite the operator's terminal. So every character that is not
//! printable is escaped (C0 and C1 controls, DEL, the Unicode line and paragraph separators,
//! bidirectional overrides and other format characters, combining marks), the text is capped,
//! and in [`quoted`] form it sits in double quotes with `"` and `\` escaped, so where it ends
//! is never in doubt. Bytes that are not UTF-8 show as `\xNN` ([`quoted_bytes`]).
//!
//! Which characters are printable is the standard library's call (`char::escape_debug`, what
//! `{:?}` uses), not a table of ours.

use std::fmt::{self, Write};

/// The most characters of peer text a log line shows; the rest is counted, not shown.
pub const MAX_QUOTED: usize = 120;
/// The most characters of a message of ours that may embed peer text (a library's error, a
/// panic message).
pub const MAX_ESCAPED: usize = 400;
/// A close reason is at most 123 bytes (RFC 6455, 5.5: 125 less the code).
pub const MAX_CLOSE_REASON: usize = 123;
/// The most characters of a peer's text [`short`] shows: a symbol has at most 32.
const SHORT_TEXT: usize = 32;

/// `text` in double quotes, escaped, at most [`MAX_QUOTED`] characters of it shown:
/// `"EURUSD\n2026-01-01T00:00:00Z [ERROR]…"…(5000 bytes)`.
pub fn quoted(text: &str) -> Quoted<'_> {
    Quoted(text.as_bytes())
}

/// As [`quoted`], for bytes that need not be UTF-8: what is not shows as `\xNN`.
pub fn quoted_bytes(bytes: &[u8]) -> Quoted<'_> {
    Quoted(bytes)
}

/// A message of ours that may repeat peer text (a library's error, a panic message, a reason
/// composed of both), its unprintable characters escaped and at most [`MAX_ESCAPED`] shown.
/// No quotes are added and `"` and `\` stay as they are, so text already made safe (with
/// [`quoted`], say) comes through unchanged.
pub fn escaped(message: &(impl fmt::Display + ?Sized)) -> Escaped {
    Escaped(message.to_string())
}

/// At most 32 characters of a peer's short text (a symbol), escaped, without quotes, `…`
/// where it was cut: for a terminal's columns and for [`close_reason`].
pub fn short(text: &str) -> String {
    short_within(text, usize::MAX)
}

/// A close reason that repeats a client's text: `prefix` then [`short`] of `text`, within the
/// 123 bytes a close frame allows.
pub fn close_reason(prefix: &str, text: &str) -> String {
    let mut out = String::from(prefix);
    out.push_str(&short_within(
        text,
        MAX_CLOSE_REASON.saturating_sub(prefix.len()),
    ));
    out
}

/// [`short`] in at most `max_bytes`, never cutting an escape in two.
fn short_within(text: &str, max_bytes: usize) -> String {
    let mut out = String::new();
    let mut one = String::new();
    for (i, c) in text.chars().enumerate() {
        one.clear();
        if i == SHORT_TEXT {
            one.push('…');
        } else {
            let _ = push_char(&mut one, c, false);
        }
        if out.len() + one.len() > max_bytes {
            break;
        }
        out.push_str(&one);
        if i == SHORT_TEXT {
            break;
        }
    }
    out
}

/// See [`quoted`] and [`quoted_bytes`].
pub struct Quoted<'a>(&'a [u8]);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        let shown = write_capped(f, self.0, MAX_QUOTED, true)?;
        f.write_char('"')?;
        if shown < self.0.len() {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// See [`escaped`].
pub struct Escaped(String);

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.as_bytes();
        let shown = write_capped(&mut *f, text, MAX_ESCAPED, false)?;
        if shown < text.len() {
            write!(f, "…({} bytes)", text.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Writes at most `max` characters of `bytes` escaped; returns how many bytes that covered.
/// `std::str::from_utf8` finds the invalid sequences (`Utf8Chunks` is newer than our
/// rust-version).
fn write_capped(
    out: &mut dyn Write,
    bytes: &[u8],
    max: usize,
    quoting: bool,
) -> Result<usize, fmt::Error> {
    let mut at = 0;
    let mut shown = 0;
    while at < bytes.len() {
        let (valid, bad) = match std::str::from_utf8(&bytes[at..]) {
            Ok(all) => (all, 0),
            Err(e) => {
                let valid = &bytes[at..at + e.valid_up_to()];
                let bad = e.error_len().unwrap_or(bytes.len() - at - valid.len());
                // Valid by construction: `valid_up_to` says so.
                (std::str::from_utf8(valid).map_err(|_| fmt::Error)?, bad)
            }
        };
        for c in valid.chars() {
            if shown == max {
                return Ok(at);
            }
            push_char(out, c, quoting)?;
            at += c.len_utf8();
            shown += 1;
        }
        for &b in &bytes[at..at + bad] {
            if shown == max {
                return Ok(at);
            }
            write!(out, "\\x{b:02x}")?;
            at += 1;
            shown += 1;
        }
    }
    Ok(at)
}

fn push_char(out: &mut dyn Write, c: char, quoting: bool) -> fmt::Result {
    match c {
        '"' | '\\' if quoting => {
            out.write_char('\\')?;
            out.write_char(c)
        }
        // escape_debug would escape these too; outside quotes they are harmless.
        '"' | '\\' | '\'' => out.write_char(c),
        // `\n`, `\r`, `\t`, `\0`, `\u{1b}`, `\u{2028}`, `\u{202e}`, ...; printable ones as they are.
        _ => c.escape_debug().try_for_each(|e| out.write_char(e)),
    }
}

/// A key shortened for logs: at most its first 4 characters then `…`, at most 2 for keys of
/// 8 characters or fewer (and never more than a quarter of it), `(none)` when empty.
pub fn redacted_key(key: &str) -> String {
    let len = key.chars().count();
    if len == 0 {
        return "(none)".to_string();
    }
    let shown = if len > 8 { 4 } else { (len / 4).min(2) };
    let mut out: String = key.chars().take(shown).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What no log line may contain: anything that ends a line or that a terminal acts on.
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }

    #[test]
    fn plain_text_is_only_quoted() {
        assert_eq!(quoted("EURUSD").to_string(), r#""EURUSD""#);
        assert_eq!(quoted("").to_string(), r#""""#);
        assert_eq!(quoted("café £ 東京 'x'").to_string(), "\"café £ 東京 'x'\"");
        assert_eq!(
            escaped("it's \"fine\" \\ here").to_string(),
            "it's \"fine\" \\ here"
        );
    }

    #[test]
    fn forged_lines_and_terminal_escapes_are_escaped() {
        let forged = "EURUSD\n2026-01-01T00:00:00Z [ERROR] (main) forged\r\x1b[2J\x1b]0;pwned\x07";
        let shown = quoted(forged).to_string();
        assert_eq!(
            shown,
            r#""EURUSD\n2026-01-01T00:00:00Z [ERROR] (main) forged\r\u{1b}[2J\u{1b}]0;pwned\u{7}""#
        );
        for text in [
            "\u{85}next line (C1)",
            "\u{9b}31m CSI (C1)",
            "line\u{2028}separator\u{2029}",
            "\u{202e}right-to-left override\u{2066}isolate\u{2069}",
            "zero\u{200b}width\u{feff}",
            "\u{7f}del \u{0}nul \u{b}vt \u{c}ff",
        ] {
            for out in [quoted(text).to_string(), escaped(text).to_string()] {
                assert!(!out.chars().any(unsafe_char), "{text:?} -> {out:?}");
                assert!(
                    !out.contains('\u{200b}') && !out.contains('\u{feff}'),
                    "{out:?}"
                );
            }
        }
    }

    #[test]
    fn quotes_and_backslashes_inside_quotes_are_escaped() {
        assert_eq!(quoted(r#"a"b\c"#).to_string(), r#""a\"b\\c""#);
        // A peer cannot close the quotes early and add a fake field after them.
        let out = quoted(r#"x" level="ERROR"#).to_string();
        assert_eq!(out, r#""x\" level=\"ERROR""#);
    }

    #[test]
    fn invalid_utf8_shows_as_hex() {
        assert_eq!(
            quoted_bytes(b"ab\xffc\xe2\x82").to_string(),
            r#""ab\xffc\xe2\x82""#
        );
        assert_eq!(quoted_bytes("é".as_bytes()).to_string(), "\"é\"");
    }

    #[test]
    fn long_text_is_capped_and_its_length_given() {
        let long = "A".repeat(5000);
        let out = quoted(&long).to_string();
        assert_eq!(out, format!("\"{}\"…(5000 bytes)", "A".repeat(MAX_QUOTED)));
        let out = escaped(&"\n".repeat(5000)).to_string();
        assert_eq!(out, format!("{}…(5000 bytes)", "\\n".repeat(MAX_ESCAPED)));
        let exact = "B".repeat(MAX_QUOTED);
        assert_eq!(quoted(&exact).to_string(), format!("\"{exact}\""));
        let bytes = vec![0xffu8; 1000];
        let out = quoted_bytes(&bytes).to_string();
        assert!(
            out.ends_with("\"…(1000 bytes)") && out.len() < 4 * MAX_QUOTED + 20,
            "{out}"
        );
    }

    #[test]
    fn escaping_twice_changes_nothing_more() {
        let once = quoted("a\nb\u{1b}").to_string();
        assert_eq!(escaped(&once).to_string(), once);
    }

    #[test]
    fn close_reasons_repeat_client_text_safely_within_123_bytes() {
        assert_eq!(
            close_reason("Unknown symbol ", "XAUUSD"),
            "Unknown symbol XAUUSD"
        );
        assert_eq!(
            close_reason("Unknown symbol ", "EUR\nUSD"),
            "Unknown symbol EUR\\nUSD"
        );
        let long = close_reason("Unknown symbol ", &"X".repeat(500));
        assert_eq!(long, format!("Unknown symbol {}…", "X".repeat(32)));
        assert_eq!(short("EUR\u{1b}[2J"), "EUR\\u{1b}[2J");
        for text in [
            "\u{1b}".repeat(100),
            "東".repeat(100),
            "\u{10ffff}".repeat(40),
        ] {
            let r = close_reason("Not entitled to symbol ", &text);
            assert!(r.len() <= MAX_CLOSE_REASON, "{} bytes: {r}", r.len());
            assert!(!r.chars().any(unsafe_char), "{r:?}");
        }
    }

    #[test]
    fn keys_are_redacted() {
        assert_eq!(redacted_key(""), "(none)");
        assert_eq!(redacted_key("abc"), "…");
        assert_eq!(redacted_key("abcd"), "a…");
        assert_eq!(redacted_key("abcdefgh"), "ab…");
        assert_eq!(redacted_key("abcdefghi"), "abcd…");
        assert_eq!(redacted_key("ébcdefghijk"), "ébcd…");
    }
}
