//! What makes peer text safe for a log line (src/logsafe.rs).
//!
//! Properties: whatever the bytes, nothing a log line carries ends the line or drives a
//! terminal (controls, line and paragraph separators, bidi overrides); the length is bounded;
//! a close reason fits in 123 bytes; and text short enough to be shown whole is shown
//! unambiguously: unescaping the quoted form gives back exactly the bytes or the text.

#![no_main]

use fxproxy::logsafe::{
    close_reason, escaped, quoted, quoted_bytes, short, MAX_CLOSE_REASON, MAX_ESCAPED, MAX_QUOTED,
};
use libfuzzer_sys::fuzz_target;

fn breaks_a_line(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The quoted form back to bytes: `\\`, `\"`, `\'`, `\n`, `\r`, `\t`, `\0`, `\u{…}`, `\xNN`.
fn unquote(shown: &str) -> Vec<u8> {
    let inner = shown
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .expect("quoted");
    let mut out = Vec::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            panic!("an unescaped quote inside {shown:?}");
        }
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        let decoded = match chars.next().expect("an escape") {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            '0' => '\0',
            e @ ('\\' | '"' | '\'') => e,
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).expect("two hex digits"));
                continue;
            }
            'u' => {
                assert_eq!(chars.next(), Some('{'));
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap()
            }
            other => panic!("unknown escape \\{other} in {shown:?}"),
        };
        out.extend_from_slice(decoded.encode_utf8(&mut [0; 4]).as_bytes());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let forms = [
        quoted_bytes(data).to_string(),
        quoted(&text).to_string(),
        escaped(&text).to_string(),
        short(&text),
        close_reason("Unknown symbol ", &text),
    ];
    for shown in &forms {
        assert!(!shown.chars().any(breaks_a_line), "{shown:?}");
    }
    // At most 10 characters (`\u{10ffff}`) per character shown, plus the quotes and the length.
    assert!(forms[0].chars().count() <= 10 * MAX_QUOTED + 40);
    assert!(forms[1].chars().count() <= 10 * MAX_QUOTED + 40);
    assert!(forms[2].chars().count() <= 10 * MAX_ESCAPED + 40);
    assert!(forms[4].len() <= MAX_CLOSE_REASON);
    if data.len() <= MAX_QUOTED {
        assert_eq!(unquote(&forms[0]), data, "{:?}", forms[0]);
    }
    if text.chars().count() <= MAX_QUOTED {
        assert_eq!(unquote(&forms[1]), text.as_bytes(), "{:?}", forms[1]);
    }
});
