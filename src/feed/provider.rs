//! What a provider's WebSocket protocol looks like, as data: the messages sent after connecting
//! and the replies awaited, where the key goes, how a symbol is spelt, what a quote, a notice, a
//! refusal and an acknowledgement look like, and how the connection is kept alive. A new
//! provider is a template file, not new code: [`crate::feed::template`] reads one (and the
//! built-in presets) into a [`Provider`].

use crate::config::value::Header;
use crate::config::Config;
use crate::feed::template_error::ValueError;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// A protocol described by a template.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub name: String,
    /// The source's URL when `upstream_url` does not give one.
    pub url: Option<String>,
    /// The URL query parameter the key goes in (`?apikey=KEY`), if it goes in the URL.
    pub key_query_param: Option<String>,
    /// Headers for the WebSocket handshake (`header = Name: value`), `{api_key}` unreplaced.
    pub headers: Vec<Header>,
    /// How messages spell a symbol.
    pub spelling: Spelling,
    pub join: Join,
    /// Sent in order after connecting; each may wait for its reply before the next.
    pub steps: Vec<Step>,
    pub reply_timeout: Duration,
    /// A message sent this often, for providers that want one.
    pub heartbeat: Option<(String, Duration)>,
    /// WebSocket pings; `None` leaves it to `upstream_ping_secs`.
    pub ping: Option<Duration>,
    /// No frame for this long is a dead connection; `None`: two ping periods.
    pub dead_after: Option<Duration>,
    /// A frame that is a JSON array is taken as one frame per element.
    pub split_arrays: bool,
    /// Notices that are expected and need no log line.
    pub ignore: Vec<Pattern>,
    /// Fatal refusals: logged, and the next attempt waits the longest back-off.
    pub refuse: Vec<Refusal>,
    /// The provider's answer to a subscription, symbol by symbol, if it gives one.
    pub ack: Option<AckShape>,
    /// Where the reply a `send` awaits (a login's) says how many symbols the plan allows.
    pub symbol_limit: Option<FieldPath>,
    /// The provider's errors that end nothing (a malformed request, say): logged, with the
    /// reason from this field when there is one.
    pub error: Option<(Pattern, Option<FieldPath>)>,
    pub quotes: QuoteShape,
}

/// How the provider answers a subscription: which frame it is, and where it lists the symbols
/// it accepted, denied (and why) and found invalid, each spelt as the subscription spelt them.
#[derive(Debug, Clone, PartialEq)]
pub struct AckShape {
    pub when: Pattern,
    pub accepted: Option<FieldPath>,
    pub denied: Option<FieldPath>,
    /// An object from a denied symbol (as spelt) to its reason.
    pub reasons: Option<FieldPath>,
    pub invalid: Option<FieldPath>,
    /// Where a list's element names its symbol when the elements are objects
    /// (`[{"symbol":"EUR/USD",…}]`); strings are symbols themselves.
    pub symbol: Option<FieldPath>,
}

/// One message sent after connecting.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// With `{api_key}` and `{symbols}` still in it.
    pub send: String,
    /// The reply to wait for before going on.
    pub expect: Option<Pattern>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub pattern: Pattern,
    /// What it means, for the log and `/healthz`.
    pub reason: String,
}

/// How `{symbols}` is written in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// `EUR/USD,GBP/USD`, to go inside a JSON string.
    Comma,
    /// `["EUR/USD","GBP/USD"]`, a JSON array to go where a value goes.
    Array,
}

/// What a quote from the source looks like.
#[derive(Debug, Clone, PartialEq)]
pub enum QuoteShape {
    /// Already fxproxy's own shape, `{"symbol":…,"ts":…,"bid":…,"ask":…,"mid":…}`: every JSON
    /// object is passed on byte for byte, and the distributor finds its symbol.
    V1,
    /// Read from these fields.
    Fields(Box<Fields>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    /// Which frames are quotes; without it, every JSON object with the symbol field.
    pub when: Option<Pattern>,
    /// Quotes that repeat the latest one (sent on subscribing, so again on every reconnect):
    /// passed on only when newer than the last quote of their symbol, so that no client gets
    /// a quote twice.
    pub snapshot: Option<Pattern>,
    pub symbol: FieldPath,
    /// How quotes spell a symbol (Polygon subscribes to `C.EUR/USD` and quotes `EUR/USD`).
    pub spelling: Spelling,
    pub bid: FieldPath,
    pub ask: FieldPath,
    pub mid: Option<FieldPath>,
    /// A single price, used for bid and ask when a quote has either missing.
    pub price: Option<FieldPath>,
    pub ts: Option<(FieldPath, TsFormat)>,
}

/// How a quote's time is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsFormat {
    EpochS,
    EpochMs,
    EpochUs,
    EpochNs,
    /// `2019-07-05T15:49:15.157000+00:00`, `…Z`.
    Rfc3339,
    /// `20251124-14:03:05.123`, UTC (TraderMade's newer feed).
    Compact,
}

impl TsFormat {
    pub(crate) const NAMES: [(&'static str, TsFormat); 6] = [
        ("epoch_s", TsFormat::EpochS),
        ("epoch_ms", TsFormat::EpochMs),
        ("epoch_us", TsFormat::EpochUs),
        ("epoch_ns", TsFormat::EpochNs),
        ("rfc3339", TsFormat::Rfc3339),
        ("yyyymmdd-hh:mm:ss", TsFormat::Compact),
    ];
}

/// How a symbol is spelt: a format over `{symbol}` (EURUSD), `{base}` (EUR) and `{quote}`
/// (USD), in upper or lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spelling {
    pub format: String,
    pub lower: bool,
}

impl Default for Spelling {
    fn default() -> Spelling {
        Spelling {
            format: "{symbol}".to_string(),
            lower: false,
        }
    }
}

impl Spelling {
    /// `symbol` (the proxy's spelling, upper case) as the provider writes it; an error when
    /// the format needs a base and a quote currency and the symbol does not split into them
    /// (`XAU/USD` and six-letter symbols do).
    pub fn spell(&self, symbol: &str) -> Result<String, SymbolError> {
        let needs_split = self.format.contains("{base}") || self.format.contains("{quote}");
        let (base, quote) = if needs_split {
            split_pair(symbol).ok_or_else(|| SymbolError::Unsplit {
                symbol: symbol.to_string(),
                format: self.format.clone(),
            })?
        } else {
            ("", "")
        };
        let spelt = self
            .format
            .replace("{symbol}", symbol)
            .replace("{base}", base)
            .replace("{quote}", quote);
        Ok(if self.lower {
            spelt.to_ascii_lowercase()
        } else {
            spelt
        })
    }
}

fn split_pair(symbol: &str) -> Option<(&str, &str)> {
    if let Some((base, quote)) = symbol.split_once('/') {
        return (!base.is_empty() && !quote.is_empty()).then_some((base, quote));
    }
    (symbol.len() == 6 && symbol.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| symbol.split_at(3))
}

/// A field inside a JSON frame: `status`, `response.code`, `data.4` (an array's fifth element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(pub(crate) Vec<String>);

impl FieldPath {
    pub(crate) fn parse(text: &str) -> Result<FieldPath, ValueError> {
        let ok = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        let parts: Vec<String> = text.split('.').map(str::to_string).collect();
        if parts.iter().all(|p| ok(p)) {
            Ok(FieldPath(parts))
        } else {
            Err(ValueError::FieldPath {
                got: text.to_string(),
            })
        }
    }

    /// The value at this path: an object's member by name, an array's element by number.
    pub fn find<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.0.iter().try_fold(value, |v, part| match v {
            Value::Object(map) => map.get(part),
            Value::Array(items) => items.get(part.parse::<usize>().ok()?),
            _ => None,
        })
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// Which frames something applies to.
///
/// `contains:TEXT` and `equals:TEXT` look at the frame's text; otherwise the frame must be
/// JSON and every condition hold: `PATH=VALUE`, `PATH=V1|V2` (any of them) or `PATH!=VALUE`,
/// joined with ` and `. A value compares with a string field's text, or a number's, `true`,
/// `false` or `null` as JSON writes them; a missing field equals nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    Contains(String),
    Equals(String),
    All(Vec<Condition>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    path: FieldPath,
    negate: bool,
    values: Vec<String>,
}

impl Pattern {
    pub(crate) fn parse(text: &str) -> Result<Pattern, ValueError> {
        if let Some(t) = text.strip_prefix("contains:") {
            return nonempty(t).map(|t| Pattern::Contains(t.to_string()));
        }
        if let Some(t) = text.strip_prefix("equals:") {
            return nonempty(t).map(|t| Pattern::Equals(t.to_string()));
        }
        let mut conditions = Vec::new();
        for part in text.split(" and ") {
            let part = part.trim();
            let (path, negate, values) = match part.split_once("!=") {
                Some((p, v)) => (p, true, v),
                None => match part.split_once('=') {
                    Some((p, v)) => (p, false, v),
                    None => {
                        return Err(ValueError::Pattern {
                            got: part.to_string(),
                        })
                    }
                },
            };
            conditions.push(Condition {
                path: FieldPath::parse(path.trim())?,
                negate,
                values: values.split('|').map(|v| v.trim().to_string()).collect(),
            });
        }
        Ok(Pattern::All(conditions))
    }

    /// Whether only a frame's text is needed: no JSON parse.
    pub fn is_textual(&self) -> bool {
        !matches!(self, Pattern::All(_))
    }

    /// Whether `text` (with `json`, its parse, when it is JSON) matches.
    pub fn matches(&self, text: &str, json: Option<&Value>) -> bool {
        match self {
            Pattern::Contains(t) => text.contains(t.as_str()),
            Pattern::Equals(t) => text == t,
            Pattern::All(conditions) => json.is_some_and(|json| {
                conditions.iter().all(|c| {
                    let found = c.path.find(json).and_then(scalar_text);
                    let equal = found.is_some_and(|f| c.values.iter().any(|v| *v == f));
                    equal != c.negate
                })
            }),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Contains(t) => write!(f, "contains:{t}"),
            Pattern::Equals(t) => write!(f, "equals:{t}"),
            Pattern::All(conditions) => {
                for (i, c) in conditions.iter().enumerate() {
                    let op = if c.negate { "!=" } else { "=" };
                    let and = if i > 0 { " and " } else { "" };
                    write!(f, "{and}{}{op}{}", c.path, c.values.join("|"))?;
                }
                Ok(())
            }
        }
    }
}

/// A scalar's text as a pattern compares it.
pub fn scalar_text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        Value::Null => Some("null".into()),
        _ => None,
    }
}

fn nonempty(t: &str) -> Result<&str, ValueError> {
    if t.is_empty() {
        Err(ValueError::PatternText)
    } else {
        Ok(t)
    }
}

impl Provider {
    /// The messages to send after connecting, placeholders filled in: `{api_key}` as it is,
    /// `{symbols}` spelt and joined as the template says. One left-to-right pass, so a key that
    /// happens to contain `{symbols}` is not expanded again.
    pub fn messages(&self, key: &str, symbols: &[String]) -> Result<Vec<String>, SymbolError> {
        let joined = self.joined_symbols(symbols)?;
        Ok(self
            .steps
            .iter()
            .map(|s| substitute(&s.send, key, &joined))
            .collect())
    }

    /// The heartbeat message, placeholders filled in.
    pub fn heartbeat_message(
        &self,
        key: &str,
        symbols: &[String],
    ) -> Result<Option<String>, SymbolError> {
        let joined = self.joined_symbols(symbols)?;
        Ok(self
            .heartbeat
            .as_ref()
            .map(|(text, _)| substitute(text, key, &joined)))
    }

    fn joined_symbols(&self, symbols: &[String]) -> Result<String, SymbolError> {
        let spelt = symbols
            .iter()
            .map(|s| self.spelling.spell(s))
            .collect::<Result<Vec<String>, SymbolError>>()?;
        Ok(match self.join {
            Join::Comma => spelt.join(","),
            Join::Array => Value::from(spelt).to_string(),
        })
    }

    /// `url` with the key in its query, if the template puts it there.
    pub fn url_with_key(&self, url: &str, key: &str) -> String {
        match &self.key_query_param {
            None => url.to_string(),
            Some(param) => {
                let (base, fragment) = match url.split_once('#') {
                    Some((b, f)) => (b, Some(f)),
                    None => (url, None),
                };
                let sep = if !base.contains('?') {
                    "?"
                } else if base.ends_with('?') || base.ends_with('&') {
                    ""
                } else {
                    "&"
                };
                let mut out = format!("{base}{sep}{param}={}", percent_encode(key));
                if let Some(f) = fragment {
                    out.push('#');
                    out.push_str(f);
                }
                out
            }
        }
    }

    /// Checks that the template can serve these symbols: each can be spelt, and the messages
    /// that look like JSON are JSON once filled in.
    pub fn check(&self, symbols: &[String]) -> Result<(), SymbolError> {
        if let QuoteShape::Fields(fields) = &self.quotes {
            let mut seen: Vec<(String, &String)> = Vec::new();
            for s in symbols {
                let spelt = fields.spelling.spell(s)?.to_ascii_uppercase();
                if let Some((_, other)) = seen.iter().find(|(sp, _)| *sp == spelt) {
                    return Err(SymbolError::SpeltAlike {
                        first: other.to_string(),
                        second: s.clone(),
                        spelt,
                    });
                }
                seen.push((spelt, s));
            }
        }
        let heartbeat = self.heartbeat_message("KEY", symbols)?;
        for (i, text) in self
            .messages("KEY", symbols)?
            .iter()
            .chain(&heartbeat)
            .enumerate()
        {
            let trimmed = text.trim_start();
            if (trimmed.starts_with('{') || trimmed.starts_with('['))
                && serde_json::from_str::<Value>(text).is_err()
            {
                return Err(SymbolError::NotJson {
                    send: (i < self.steps.len()).then_some(i + 1),
                    template: self.name.clone(),
                    text: text.clone(),
                });
            }
        }
        Ok(())
    }

    /// Every pattern that needs the frame parsed as JSON.
    pub fn needs_json(&self) -> bool {
        self.ignore
            .iter()
            .chain(self.refuse.iter().map(|r| &r.pattern))
            .chain(self.steps.iter().filter_map(|s| s.expect.as_ref()))
            .chain(self.ack.as_ref().map(|a| &a.when))
            .chain(self.error.as_ref().map(|(p, _)| p))
            .any(|p| !p.is_textual())
    }
}

/// Why a template cannot serve the configured symbols: refused at start-up (and on a reload)
/// by [`Provider::check`], before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SymbolError {
    /// The spelling needs a base and a quote currency, and the symbol does not split into them.
    Unsplit { symbol: String, format: String },
    /// Two symbols the quotes would not tell apart.
    SpeltAlike {
        first: String,
        second: String,
        spelt: String,
    },
    /// A message that looks like JSON and is not, once the symbols are filled in (a quoted
    /// `{symbols}` with `symbols_join = array`, say).
    NotJson {
        /// Which `send` (1-based); `None`: the heartbeat.
        send: Option<usize>,
        template: String,
        text: String,
    },
}

impl fmt::Display for SymbolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SymbolError::Unsplit { symbol, format } => write!(
                f,
                "symbol {symbol} does not split into a base and a quote currency for `{format}` (six letters such as EURUSD, or BASE/QUOTE)"
            ),
            SymbolError::SpeltAlike {
                first,
                second,
                spelt,
            } => write!(f, "symbols {first} and {second} are both spelt {spelt} in quotes"),
            SymbolError::NotJson {
                send,
                template,
                text,
            } => {
                match send {
                    Some(n) => write!(f, "`send` message {n}")?,
                    None => f.write_str("the `heartbeat` message")?,
                }
                // The text is the template's, filled in: long messages are cut for the log.
                write!(f, " of the {template} template is not JSON once filled in: {text:.200}")
            }
        }
    }
}

impl std::error::Error for SymbolError {}

/// `subscribe_message` with `{api_key}` and `{symbols}` (joined with `,`) substituted: the
/// one message of TraderMade's first protocol.
///
/// One left-to-right pass, so a key that happens to contain `{symbols}` is not expanded
/// again. Values are inserted as they are, not JSON-escaped.
pub fn subscribe_text(config: &Config) -> String {
    substitute(
        &config.subscribe_message,
        config.upstream_api_key.expose(),
        &config.symbols.join(","),
    )
}

/// `{api_key}` and `{symbols}` replaced in one left-to-right pass; other braces stay.
pub fn substitute(template: &str, key: &str, symbols: &str) -> String {
    let mut out = String::with_capacity(template.len() + key.len() + symbols.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        if let Some(after) = tail.strip_prefix("{api_key}") {
            out.push_str(key);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{symbols}") {
            out.push_str(symbols);
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// RFC 3986 unreserved characters as they are, the rest as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use serde_json::json;

    #[test]
    fn subscribe_text_substitutes_once() {
        let mut c = crate::config::parse(
            "upstream_url = sim\nsymbols = EURUSD, gbpusd\nuser_keys_file = k\n",
            std::path::Path::new("proxy.conf"),
        )
        .unwrap();
        c.upstream_api_key = Secret::new("abc{symbols}");
        assert_eq!(
            subscribe_text(&c),
            r#"{"userKey":"abc{symbols}","symbol":"EURUSD,GBPUSD"}"#
        );
        c.subscribe_message = "{x} {api_key}{".to_string();
        assert_eq!(subscribe_text(&c), "{x} abc{symbols}{");
    }

    #[test]
    fn symbols_are_spelt_as_the_template_says() {
        let s = |format: &str, lower: bool| Spelling {
            format: format.into(),
            lower,
        };
        assert_eq!(s("{symbol}", false).spell("EURUSD").unwrap(), "EURUSD");
        assert_eq!(
            s("{base}/{quote}", false).spell("EURUSD").unwrap(),
            "EUR/USD"
        );
        assert_eq!(
            s("C.{base}/{quote}", false).spell("XAU/USD").unwrap(),
            "C.XAU/USD"
        );
        assert_eq!(s("{symbol}", true).spell("EURUSD").unwrap(), "eurusd");
        assert_eq!(
            s("{base}-{quote}", true).spell("GBPJPY").unwrap(),
            "gbp-jpy"
        );
        let e = s("{base}/{quote}", false)
            .spell("US30")
            .unwrap_err()
            .to_string();
        assert!(e.contains("US30 does not split"), "{e}");
    }

    #[test]
    fn patterns() {
        let p = |t: &str| Pattern::parse(t).unwrap();
        let v = json!({"ev":"status","status":"auth_success","n":200,"ok":true,"data":["Q","eurusd",1.5]});
        assert!(p("status=auth_success").matches("", Some(&v)));
        assert!(p("ev=status and status=auth_success|connected").matches("", Some(&v)));
        assert!(!p("ev=status and status=connected").matches("", Some(&v)));
        assert!(p("n=200 and ok=true").matches("", Some(&v)));
        assert!(p("n!=401").matches("", Some(&v)));
        assert!(
            p("missing!=x").matches("", Some(&v)),
            "a missing field equals nothing"
        );
        assert!(!p("missing=null").matches("", Some(&v)));
        assert!(p("data.0=Q and data.1=eurusd and data.2=1.5").matches("", Some(&v)));
        assert!(!p("data.9=Q").matches("", Some(&v)));
        assert!(
            !p("status=auth_success").matches("status=auth_success", None),
            "JSON only"
        );
        assert!(p("contains:Key Used").matches("User Key Used to many times", None));
        assert!(p("equals:Connected").matches("Connected", None));
        assert_eq!(p("a=1|2 and b!=x").to_string(), "a=1|2 and b!=x");
        for bad in ["status", "a.=1", "contains:", "a b=1"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
