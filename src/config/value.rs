//! The values proxy.conf's keys take, parsed from their text: numbers within a range,
//! durations, addresses, symbol lists, dates, origins, paths and the upstream's URL. Pure
//! functions of the text (and the config file's directory, for paths); what is wrong is said
//! in an [`Invalid`], which the parser places at its file, line and key.

use crate::base::market::Date;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Replaced in a path by the directory systemd's `LoadCredential=` provides; such a path is
/// kept as written until the configuration is loaded (see `config::secret`).
pub const CREDENTIALS_PLACEHOLDER: &str = "${CREDENTIALS_DIRECTORY}";

/// Where quotes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    /// The built-in simulated source (`upstream_url = sim`).
    Sim,
    /// A `ws://` or `wss://` URL, as written in the file.
    Url(String),
    /// `upstream_url` unset: the provider template's `url`.
    ProviderUrl,
    /// `replay:PATH[?speed=N|max][&loop=1]`: a recording played back as a source.
    Replay(Replay),
}

impl fmt::Display for Upstream {
    /// As `upstream_url` is written (a recording with its pace spelt out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Sim => f.write_str("sim"),
            Upstream::Url(url) => f.write_str(url),
            Upstream::ProviderUrl => f.write_str("(the provider template's url)"),
            Upstream::Replay(replay) => write!(
                f,
                "replay:{} (speed {}, loop {})",
                replay.path.display(),
                replay.speed.map_or("max".to_string(), |s| s.to_string()),
                replay.looped
            ),
        }
    }
}

/// A recording to play back (see `crate::feed::replay`).
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// Resolved against the config file's directory.
    pub path: PathBuf,
    /// `None`: as fast as the proxy takes the frames (`speed=max`).
    pub speed: Option<f64>,
    pub looped: bool,
}

/// What is wrong with a value, in words for the person who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not of the form the key takes: `expected {expected}, got {got:?}`.
    Expected { expected: String, got: String },
    /// Of the right form, but not usable: said in full.
    Unusable(String),
}

impl Invalid {
    pub fn expected(expected: impl Into<String>, got: &str) -> Invalid {
        Invalid::Expected {
            expected: expected.into(),
            got: got.to_string(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Expected { expected, got } => write!(f, "expected {expected}, got {got:?}"),
            Invalid::Unusable(message) => f.write_str(message),
        }
    }
}

impl From<String> for Invalid {
    /// A message from a parser of another module (a Redis URL, a CIDR), said as it is.
    fn from(message: String) -> Invalid {
        Invalid::Unusable(message)
    }
}

/// Digits only (no sign, no spaces), within `min..=max`.
fn whole(v: &str, min: u64, max: u64) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
}

/// A whole number within `min..=max`; `expected` says what it counts, as in
/// "a whole number of bytes from 1024 to 1000000000000".
pub fn number(v: &str, min: u64, max: u64, expected: &str) -> Result<u64, Invalid> {
    whole(v, min, max).ok_or_else(|| Invalid::expected(expected, v))
}

/// A count of things (clients, frames, bytes) within `min..=max`; `unit` as " of bytes".
pub fn count(v: &str, unit: &str, min: u64, max: u64) -> Result<usize, Invalid> {
    whole(v, min, max)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| Invalid::expected(format!("a whole number{unit} from {min} to {max}"), v))
}

/// Whole seconds within `min..=max`.
pub fn secs(v: &str, min: u64, max: u64) -> Result<Duration, Invalid> {
    number(
        v,
        min,
        max,
        &format!("a whole number of seconds from {min} to {max}"),
    )
    .map(Duration::from_secs)
}

/// Whole milliseconds within `min..=max`.
pub fn millis(v: &str, min: u64, max: u64) -> Result<Duration, Invalid> {
    number(
        v,
        min,
        max,
        &format!("a whole number of milliseconds from {min} to {max}"),
    )
    .map(Duration::from_millis)
}

/// A rate or a limit that fits in 32 bits.
pub fn small(v: &str, min: u64, max: u64, expected: &str) -> Result<u32, Invalid> {
    whole(v, min, max)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Invalid::expected(expected, v))
}

pub fn boolean(v: &str) -> Result<bool, Invalid> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Ok(true),
        "false" | "no" | "off" => Ok(false),
        _ => Err(Invalid::expected("true or false (or yes/no, on/off)", v)),
    }
}

/// One of a few words, in any case: `choices` pairs each word with its value; `expected` lists
/// them for the message.
pub fn one_of<T: Copy>(v: &str, choices: &[(&str, T)], expected: &str) -> Result<T, Invalid> {
    let lower = v.to_ascii_lowercase();
    choices
        .iter()
        .find(|(word, _)| *word == lower)
        .map(|(_, value)| *value)
        .ok_or_else(|| Invalid::expected(expected, v))
}

pub fn address(v: &str) -> Result<SocketAddr, Invalid> {
    v.parse()
        .map_err(|_| Invalid::expected("an address such as 127.0.0.1:8765", v))
}

/// Comma-separated symbols, upper-cased, each at most once: `symbols` in proxy.conf, a line
/// of the key file, a client's auth message. Duplicates are found with a set, so a long list
/// costs time in proportion to its length.
pub fn symbol_list(v: &str) -> Result<Vec<String>, Invalid> {
    let mut symbols: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for part in v.split(',') {
        let symbol = part.trim().to_ascii_uppercase();
        if symbol.is_empty() {
            return Err(Invalid::Unusable(format!(
                "expected comma-separated symbols such as EURUSD,GBPUSD, got an empty entry in {v:?}"
            )));
        }
        let valid_char =
            |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || "._/:-".contains(c);
        if symbol.len() > 32 || !symbol.chars().all(valid_char) {
            let hint = if symbol.contains(char::is_whitespace) {
                " (symbols are separated by commas)"
            } else {
                ""
            };
            return Err(Invalid::Unusable(format!(
                "symbol {symbol:?} must be 1 to 32 characters of A-Z, 0-9 and . _ / : -{hint}"
            )));
        }
        if !seen.insert(symbol.clone()) {
            return Err(Invalid::Unusable(format!(
                "symbol {symbol} is listed twice"
            )));
        }
        symbols.push(symbol);
    }
    Ok(symbols)
}

/// Comma-separated `YYYY-MM-DD` dates, sorted, each once; empty is none.
pub fn dates(v: &str) -> Result<Vec<Date>, Invalid> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    let mut dates = v
        .split(',')
        .map(|d| {
            d.trim().parse::<Date>().map_err(|()| {
                Invalid::expected(
                    "UTC dates as YYYY-MM-DD, comma-separated (e.g. 2026-12-25,2027-01-01)",
                    d.trim(),
                )
            })
        })
        .collect::<Result<Vec<Date>, Invalid>>()?;
    dates.sort();
    dates.dedup();
    Ok(dates)
}

/// Comma-separated browser origins, `scheme://host[:port]`, lower-cased, without a trailing
/// `/`; empty is none.
pub fn origins(v: &str) -> Result<Vec<String>, Invalid> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    let mut origins = Vec::new();
    for part in v.split(',') {
        let origin = part.trim().trim_end_matches('/').to_ascii_lowercase();
        let host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        let bad = |c: char| c.is_whitespace() || "/?#@".contains(c);
        if host.is_empty() || host.starts_with(':') || host.contains(bad) {
            return Err(Invalid::expected(
                "comma-separated origins such as https://example.com",
                part.trim(),
            ));
        }
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    Ok(origins)
}

/// A file path, resolved against the config file's directory.
pub fn path(v: &str, base: &Path) -> Result<PathBuf, Invalid> {
    if v.is_empty() {
        return Err(Invalid::Unusable(
            "expected a file path, got nothing".to_string(),
        ));
    }
    Ok(base.join(v))
}

/// A path that may be left empty (unset) and may use `${CREDENTIALS_DIRECTORY}`: such a path
/// is kept as written, because the variable is read only when the configuration is loaded;
/// any other is resolved now.
pub fn credential_path(v: &str, base: &Path) -> Option<PathBuf> {
    if v.is_empty() {
        None
    } else if v.contains(CREDENTIALS_PLACEHOLDER) {
        Some(PathBuf::from(v))
    } else {
        Some(base.join(v))
    }
}

/// One header line of `upstream_header` or `response_header` (or a provider template's
/// `header`): a valid name and a one-line value. The value may hold a credential (a bearer
/// token written out, or `{api_key}`), so `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Header({}: …)", self.name)
    }
}

/// Headers the WebSocket handshake to the upstream sets itself (tungstenite writes them, and
/// refuses a request that has them twice), or that would frame the request differently.
const UPSTREAM_OWN: &[&str] = &[
    "Host",
    "Upgrade",
    "Connection",
    "Content-Length",
    "Transfer-Encoding",
];

/// Headers the proxy's own answers set: the protocol's (framing, the upgrade) and the page's
/// security headers, which a second line could weaken or contradict. `Cache-Control: no-store`
/// keeps `/healthz` and `/metrics` out of caches.
const RESPONSE_OWN: &[&str] = &[
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Transfer-Encoding",
    "Connection",
    "Upgrade",
    "Keep-Alive",
    "Cache-Control",
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "Referrer-Policy",
];

/// `upstream_header`: `Name: value`, sent in the upstream's WebSocket handshake; `{api_key}`
/// in the value is replaced by the provider key when connecting.
pub fn upstream_header(v: &str) -> Result<Header, Invalid> {
    header(
        v,
        UPSTREAM_OWN,
        "the WebSocket handshake sets it itself (Host, Upgrade, Connection, Sec-WebSocket-*)",
    )
}

/// `response_header`: `Name: value`, added to the proxy's own HTTP answers and upgrades.
pub fn response_header(v: &str) -> Result<Header, Invalid> {
    header(
        v,
        RESPONSE_OWN,
        "fxproxy sets it itself and it cannot be overridden (Content-Type, Content-Length, \
         Connection, Upgrade, Cache-Control, Sec-WebSocket-*, and the page's \
         Content-Security-Policy, X-Frame-Options, X-Content-Type-Options, Referrer-Policy)",
    )
}

/// `Name: value`, the name a token (RFC 9110, 5.6.2) not in `own` nor `Sec-WebSocket-*`, the
/// value printable ASCII. Messages name the header but never repeat its value.
fn header(v: &str, own: &[&str], why: &str) -> Result<Header, Invalid> {
    let Some((name, value)) = v.split_once(':') else {
        return Err(Invalid::Unusable(
            "expected `Name: value` (a header name, a colon, then its value)".to_string(),
        ));
    };
    let (name, value) = (name.trim(), value.trim());
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(Invalid::Unusable(format!(
            "expected `Name: value`, and {} is not a header name (letters, digits and !#$%&'*+-.^_`|~)",
            crate::base::logsafe::quoted(name)
        )));
    }
    let lower = name.to_ascii_lowercase();
    if own.iter().any(|o| o.eq_ignore_ascii_case(name)) || lower.starts_with("sec-websocket-") {
        return Err(Invalid::Unusable(format!(
            "the header `{name}` cannot be set here: {why}"
        )));
    }
    if value.is_empty() {
        return Err(Invalid::Unusable(format!(
            "the header `{name}` has no value"
        )));
    }
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(Invalid::Unusable(format!(
            "the value of `{name}` must be printable ASCII on one line"
        )));
    }
    Ok(Header {
        name: name.to_string(),
        value: value.to_string(),
    })
}

/// `upstream_url`: `sim`, `replay:PATH[?speed=N|max][&loop=1]`, or a `ws://`/`wss://` URL
/// with a host.
pub fn upstream(v: &str, base: &Path) -> Result<Upstream, Invalid> {
    if v.eq_ignore_ascii_case("sim") {
        return Ok(Upstream::Sim);
    }
    if let Some(spec) = v.strip_prefix("replay:") {
        return replay(spec, base).map(Upstream::Replay);
    }
    let expected = "`sim`, `replay:PATH` or a ws:// or wss:// URL with a host";
    let lower = v.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("ws://")
        .or_else(|| lower.strip_prefix("wss://"))
    else {
        return Err(Invalid::expected(expected, v));
    };
    if crate::base::host::url_host(rest).is_none() || v.chars().any(char::is_whitespace) {
        return Err(Invalid::expected(expected, v));
    }
    Ok(Upstream::Url(v.to_string()))
}

/// `PATH[?speed=N|max][&loop=1]`, after `replay:`.
fn replay(spec: &str, base: &Path) -> Result<Replay, Invalid> {
    let expected = "`replay:PATH`, optionally with `?speed=N` (N times the recorded pace, or `max`) and `&loop=1`";
    let (path, query) = spec.split_once('?').unwrap_or((spec, ""));
    if path.is_empty() {
        return Err(Invalid::Unusable(format!(
            "expected {expected}, got no path"
        )));
    }
    let mut replay = Replay {
        path: base.join(path),
        speed: Some(1.0),
        looped: false,
    };
    for param in query.split('&').filter(|p| !p.is_empty()) {
        match param.split_once('=') {
            Some(("speed", "max")) => replay.speed = None,
            Some(("speed", n)) => {
                let speed = n
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 1e6)
                    .ok_or_else(|| {
                        Invalid::expected(
                            format!("{expected}; `speed` wants a number above 0 or `max`"),
                            n,
                        )
                    })?;
                replay.speed = Some(speed);
            }
            Some(("loop", "1" | "true")) => replay.looped = true,
            Some(("loop", "0" | "false")) => replay.looped = false,
            _ => return Err(Invalid::expected(expected, param)),
        }
    }
    Ok(replay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_take_digits_only_within_their_range() {
        assert_eq!(secs("10", 1, 3600), Ok(Duration::from_secs(10)));
        for bad in ["", "0", "3601", "+5", "-1", "1.5", " 5", "ten"] {
            assert_eq!(
                secs(bad, 1, 3600).unwrap_err().to_string(),
                format!("expected a whole number of seconds from 1 to 3600, got {bad:?}")
            );
        }
        assert_eq!(count("7", " of bytes", 1, 8), Ok(7));
        assert!(count("9", "", 1, 8)
            .unwrap_err()
            .to_string()
            .starts_with("expected a whole number from 1 to 8"));
    }

    #[test]
    fn a_long_symbol_list_is_checked_in_linear_time() {
        // Ten thousand distinct symbols: with a set, not a million comparisons each time.
        let list: Vec<String> = (0..10_000).map(|i| format!("S{i}")).collect();
        assert_eq!(symbol_list(&list.join(",")).unwrap().len(), 10_000);
        assert_eq!(
            symbol_list("eurusd, EURUSD").unwrap_err().to_string(),
            "symbol EURUSD is listed twice"
        );
    }

    #[test]
    fn headers_are_checked_and_their_values_never_repeated() {
        let h = upstream_header("Authorization:  Bearer {api_key} ").unwrap();
        assert_eq!(
            (h.name.as_str(), h.value.as_str()),
            ("Authorization", "Bearer {api_key}")
        );
        assert_eq!(format!("{h:?}"), "Header(Authorization: …)");
        assert_eq!(
            response_header("Strict-Transport-Security: max-age=31536000")
                .unwrap()
                .name,
            "Strict-Transport-Security"
        );
        for (line, expected) in [
            ("Authorization Bearer secret", "expected `Name: value`"),
            (": secret", "is not a header name"),
            ("Bad Name: secret", "\"Bad Name\" is not a header name"),
            ("X-Empty:", "has no value"),
            ("X-Token: sec\u{7f}ret", "printable ASCII"),
            ("X-Token: sécret", "printable ASCII"),
            (
                "host: secret",
                "`host` cannot be set here: the WebSocket handshake",
            ),
            ("Sec-WebSocket-Protocol: secret", "cannot be set here"),
            ("Connection: secret", "cannot be set here"),
        ] {
            let e = upstream_header(line).unwrap_err().to_string();
            assert!(e.contains(expected), "{line}: {e}");
            assert!(
                !e.contains("secret") && !e.contains("sécret"),
                "{line}: {e}"
            );
        }
        for name in [
            "Content-Security-Policy",
            "x-frame-options",
            "X-Content-Type-Options",
            "Referrer-Policy",
            "Content-Type",
            "Content-Length",
            "Connection",
            "Upgrade",
            "Sec-WebSocket-Accept",
            "Cache-Control",
        ] {
            let e = response_header(&format!("{name}: x"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("cannot be overridden"), "{name}: {e}");
        }
        // What the proxy answers may carry what the upstream's handshake may not, and back.
        assert!(response_header("Host: x").is_ok());
        assert!(upstream_header("Cache-Control: no-cache").is_ok());
    }

    #[test]
    fn choices_ignore_case() {
        let choices = [("fx", 1), ("always", 2)];
        assert_eq!(one_of("ALWAYS", &choices, "`fx` or `always`"), Ok(2));
        assert_eq!(
            one_of("weekdays", &choices, "`fx` or `always`")
                .unwrap_err()
                .to_string(),
            "expected `fx` or `always`, got \"weekdays\""
        );
    }
}
