//! Reading a provider's template into a [`Provider`]: the built-in presets (`tradermade`,
//! `tradermade-v2`, from `providers/`) and a `provider_template` file, and [`describe`], which
//! takes the one proxy.conf names and checks it against the configuration.
//!
//! A template is `key = value` lines, `#` comment lines and blank lines; values run to the end
//! of the line (JSON messages may hold `#`). `send`, `ignore` and `refuse` may repeat; an
//! `expect` belongs to the `send` above it, a `refuse_reason` to the `refuse` above it. See
//! docs/providers.md for every key.

use crate::config::value::{self, Header};
use crate::config::{Config, ConfigError, ProviderChoice, Upstream};
use crate::feed::provider::{
    AckShape, FieldPath, Fields, Join, Pattern, Provider, QuoteShape, Refusal, Spelling, Step,
    TsFormat,
};
use crate::feed::template_error::{TemplateError, ValueError};
use std::time::Duration;

/// The built-in templates, by the name `provider` gives them.
const PRESETS: &[(&str, &str)] = &[
    (
        "tradermade",
        include_str!("../../providers/tradermade.conf"),
    ),
    (
        "tradermade-v2",
        include_str!("../../providers/tradermade-v2.conf"),
    ),
];

/// The preset named `name`, if there is one.
pub fn preset(name: &str) -> Option<Provider> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, text)| {
        // The presets are tested to parse (`presets_parse`); a broken one is a build defect.
        parse_template(text).unwrap_or_else(|e| panic!("the built-in {name} template: {e}"))
    })
}

/// The provider's protocol, as its template describes it: a built-in preset, or the
/// `provider_template` file (read here). Checked against the symbols, and resolves
/// `upstream_url` left unset to the template's `url`. Errors name the template's file,
/// line and key, or the line of proxy.conf that the problem comes from.
pub fn describe(config: &mut Config) -> Result<Provider, ConfigError> {
    let mut description = match config.provider {
        ProviderChoice::Tradermade | ProviderChoice::TradermadeV2 => preset(config.provider.name())
            .ok_or_else(|| {
                config.error_at("provider", "no such built-in provider in this build")
            })?,
        ProviderChoice::Custom => {
            let path = config.provider_template.clone().ok_or_else(|| {
                config.error_at("provider", "`provider = custom` needs `provider_template`")
            })?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                config.error_at(
                    "provider_template",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            parse_template(&text).map_err(|e| e.in_file(&path))?
        }
    };
    if config.provider == ProviderChoice::Tradermade {
        // The one message of TraderMade's protocol has always been this key.
        if let Some(step) = description.steps.first_mut() {
            step.send = config.subscribe_message.clone();
        }
    }
    if config.upstream == Upstream::ProviderUrl {
        match &description.url {
            Some(url) => config.upstream = Upstream::Url(url.clone()),
            None => {
                return Err(ConfigError::Missing {
                    file: config.file.clone(),
                    key: "upstream_url",
                    note: Some(format!("the {} template gives no `url`", description.name)),
                })
            }
        }
    }
    let key = if config.line_of("provider_template").is_some() {
        "provider_template"
    } else {
        "symbols"
    };
    description
        .check(&config.symbols)
        .map_err(|e| config.error_at(key, e.to_string()))?;
    Ok(description)
}

/// Every key a template may set.
const TEMPLATE_KEYS: &[&str] = &[
    "name",
    "url",
    "key_query_param",
    "header",
    "symbol_format",
    "symbol_case",
    "symbols_join",
    "send",
    "expect",
    "reply_timeout_secs",
    "heartbeat",
    "heartbeat_secs",
    "ping_secs",
    "dead_after_secs",
    "split_arrays",
    "ignore",
    "refuse",
    "refuse_reason",
    "ack_when",
    "ack_accepted_field",
    "ack_denied_field",
    "ack_reasons_field",
    "ack_invalid_field",
    "ack_symbol_field",
    "symbol_limit_field",
    "error_when",
    "error_reason_field",
    "quotes",
    "quote_when",
    "snapshot_when",
    "symbol_field",
    "quote_symbol_format",
    "bid_field",
    "ask_field",
    "mid_field",
    "price_field",
    "ts_field",
    "ts_format",
];

/// Keys that may appear more than once.
const REPEATABLE: &[&str] = &[
    "send",
    "expect",
    "ignore",
    "refuse",
    "refuse_reason",
    "header",
];

/// Keys that belong to the line above them: (key, the key of that line, what it is to it).
const FOLLOWERS: &[(&str, &str, &str)] = &[
    ("expect", "send", "whose reply it awaits"),
    ("refuse_reason", "refuse", "it explains"),
];

/// Keys that describe an acknowledgement: they need `ack_when`.
const ACK_KEYS: &[&str] = &[
    "ack_accepted_field",
    "ack_denied_field",
    "ack_reasons_field",
    "ack_invalid_field",
    "ack_symbol_field",
];

/// The lists an acknowledgement may give: `ack_when` needs one at least.
const ACK_LISTS: &[&str] = &[
    "ack_accepted_field",
    "ack_denied_field",
    "ack_invalid_field",
];

/// Keys that describe quotes read from fields (`quotes = fields`, the default).
const FIELD_KEYS: &[&str] = &[
    "quote_when",
    "snapshot_when",
    "symbol_field",
    "quote_symbol_format",
    "bid_field",
    "ask_field",
    "mid_field",
    "price_field",
    "ts_field",
    "ts_format",
];

/// Parses a template. Touches nothing but the text.
pub fn parse_template(text: &str) -> Result<Provider, TemplateError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut p = Draft::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, _)| !k.is_empty())
        else {
            return Err(TemplateError::NotKeyValue {
                line,
                text: trimmed.to_string(),
            });
        };
        let key = p.place(key, line)?;
        p.apply(key, value, line)?;
        p.lines.push((key, line));
    }
    p.finish()
}

/// A template as it is read, line by line.
#[derive(Default)]
struct Draft {
    /// Each key read, with its line, in the file's order.
    lines: Vec<(&'static str, usize)>,
    name: Option<String>,
    url: Option<String>,
    key_query_param: Option<String>,
    headers: Vec<Header>,
    spelling: Spelling,
    quote_spelling: Option<Spelling>,
    join: Option<Join>,
    steps: Vec<Step>,
    reply_timeout: Option<Duration>,
    heartbeat: Option<String>,
    heartbeat_every: Option<Duration>,
    ping: Option<Duration>,
    dead_after: Option<Duration>,
    split_arrays: bool,
    ignore: Vec<Pattern>,
    refuse: Vec<Refusal>,
    ack_when: Option<Pattern>,
    ack_accepted: Option<FieldPath>,
    ack_denied: Option<FieldPath>,
    ack_reasons: Option<FieldPath>,
    ack_invalid: Option<FieldPath>,
    ack_symbol: Option<FieldPath>,
    symbol_limit: Option<FieldPath>,
    error_when: Option<Pattern>,
    error_reason: Option<FieldPath>,
    v1: bool,
    when: Option<Pattern>,
    snapshot: Option<Pattern>,
    symbol: Option<FieldPath>,
    bid: Option<FieldPath>,
    ask: Option<FieldPath>,
    mid: Option<FieldPath>,
    price: Option<FieldPath>,
    ts: Option<FieldPath>,
    ts_format: Option<TsFormat>,
}

/// Reading one line: whether its key is known and may stand where it does, then its value,
/// by the group of keys it belongs to.
impl Draft {
    /// `key` as the template's own (`&'static`), if it is one, may be set again, and follows
    /// the line it belongs to.
    fn place(&self, key: &str, line: usize) -> Result<&'static str, TemplateError> {
        let Some(&known) = TEMPLATE_KEYS.iter().find(|k| **k == key) else {
            return Err(TemplateError::UnknownKey {
                line,
                key: key.to_string(),
            });
        };
        if !REPEATABLE.contains(&known) {
            if let Some(first) = self.line_of(known) {
                return Err(TemplateError::SetTwice {
                    line,
                    key: known,
                    first,
                });
            }
        }
        let above = self.lines.last().map(|(k, _)| *k);
        if let Some(&(_, must_follow, role)) = FOLLOWERS.iter().find(|(k, ..)| *k == known) {
            if above != Some(must_follow) {
                return Err(TemplateError::Misplaced {
                    line,
                    key: known,
                    must_follow,
                    role,
                });
            }
        }
        Ok(known)
    }

    /// Reads `v` into the draft, as `key` (placed) takes it.
    fn apply(&mut self, key: &'static str, v: &str, line: usize) -> Result<(), TemplateError> {
        match self.read(key, v) {
            Ok(true) => Ok(()),
            Ok(false) => Err(TemplateError::NoParser { line, key }),
            Err(problem) => Err(TemplateError::BadValue { line, key, problem }),
        }
    }

    /// Whether one of the groups below took `key`.
    fn read(&mut self, key: &str, v: &str) -> Result<bool, ValueError> {
        Ok(self.connection(key, v)?
            || self.symbols(key, v)?
            || self.conversation(key, v)?
            || self.answers(key, v)?
            || self.quote_fields(key, v)?)
    }

    /// Where the source is and how the key reaches it: `false` for another group's key.
    fn connection(&mut self, key: &str, v: &str) -> Result<bool, ValueError> {
        match key {
            "name" => self.name = Some(text(v)?.to_string()),
            "url" => {
                let lower = v.to_ascii_lowercase();
                if !(lower.starts_with("ws://") || lower.starts_with("wss://")) || v.contains(' ') {
                    return Err(ValueError::expected("a ws:// or wss:// URL", v));
                }
                self.url = Some(v.to_string());
            }
            "key_query_param" => {
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(ValueError::expected(
                        "a query parameter name such as apikey",
                        v,
                    ));
                }
                self.key_query_param = Some(v.to_string());
            }
            // As proxy.conf's `upstream_header`, checked the same way.
            "header" => self
                .headers
                .push(value::upstream_header(v).map_err(ValueError::Header)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// How symbols are spelt and joined: `false` for another group's key.
    fn symbols(&mut self, key: &str, v: &str) -> Result<bool, ValueError> {
        match key {
            "symbol_format" => self.spelling.format = spelling(v)?,
            "quote_symbol_format" => {
                self.quote_spelling = Some(Spelling {
                    format: spelling(v)?,
                    lower: false,
                })
            }
            "symbol_case" => {
                self.spelling.lower = match v {
                    "upper" => false,
                    "lower" => true,
                    _ => return Err(ValueError::expected("`upper` or `lower`", v)),
                }
            }
            "symbols_join" => {
                self.join = Some(match v {
                    "comma" => Join::Comma,
                    "array" => Join::Array,
                    _ => return Err(ValueError::expected("`comma` or `array`", v)),
                })
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// What is sent, what is awaited, and how the connection is kept alive: `false` for
    /// another group's key.
    fn conversation(&mut self, key: &str, v: &str) -> Result<bool, ValueError> {
        match key {
            "send" => self.steps.push(Step {
                send: text(v)?.to_string(),
                expect: None,
            }),
            "expect" => {
                let pattern = Pattern::parse(v)?;
                // `place` lets an `expect` in only right after a `send`, which pushed this step.
                if let Some(step) = self.steps.last_mut() {
                    step.expect = Some(pattern);
                }
            }
            "reply_timeout_secs" => self.reply_timeout = Some(secs(v, 1, 300)?),
            "heartbeat" => self.heartbeat = Some(text(v)?.to_string()),
            "heartbeat_secs" => self.heartbeat_every = Some(secs(v, 1, 3600)?),
            "ping_secs" => self.ping = Some(secs(v, 1, 3600)?),
            "dead_after_secs" => self.dead_after = Some(secs(v, 1, 86_400)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// What the source's frames other than quotes mean — notices, refusals, the answer to a
    /// subscription, errors — and how frames are split: `false` for another group's key.
    fn answers(&mut self, key: &str, v: &str) -> Result<bool, ValueError> {
        match key {
            "split_arrays" => {
                // As proxy.conf's booleans.
                self.split_arrays = match v.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" => true,
                    "false" | "no" | "off" => false,
                    _ => return Err(ValueError::expected("true or false (or yes/no, on/off)", v)),
                }
            }
            "ignore" => self.ignore.push(Pattern::parse(v)?),
            "refuse" => self.refuse.push(Refusal {
                pattern: Pattern::parse(v)?,
                reason: String::new(),
            }),
            "refuse_reason" => {
                let reason = text(v)?.to_string();
                // `place` lets a `refuse_reason` in only right after a `refuse`, which pushed
                // this refusal.
                if let Some(refusal) = self.refuse.last_mut() {
                    refusal.reason = reason;
                }
            }
            "ack_when" => self.ack_when = Some(Pattern::parse(v)?),
            "ack_accepted_field" => self.ack_accepted = Some(FieldPath::parse(v)?),
            "ack_denied_field" => self.ack_denied = Some(FieldPath::parse(v)?),
            "ack_reasons_field" => self.ack_reasons = Some(FieldPath::parse(v)?),
            "ack_invalid_field" => self.ack_invalid = Some(FieldPath::parse(v)?),
            "ack_symbol_field" => self.ack_symbol = Some(FieldPath::parse(v)?),
            "symbol_limit_field" => self.symbol_limit = Some(FieldPath::parse(v)?),
            "error_when" => self.error_when = Some(Pattern::parse(v)?),
            "error_reason_field" => self.error_reason = Some(FieldPath::parse(v)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// What a quote looks like: `false` for another group's key.
    fn quote_fields(&mut self, key: &str, v: &str) -> Result<bool, ValueError> {
        match key {
            "quotes" => {
                self.v1 = match v {
                    "v1" => true,
                    "fields" => false,
                    _ => return Err(ValueError::expected("`v1` or `fields`", v)),
                }
            }
            "quote_when" => self.when = Some(Pattern::parse(v)?),
            "snapshot_when" => self.snapshot = Some(Pattern::parse(v)?),
            "symbol_field" => self.symbol = Some(FieldPath::parse(v)?),
            "bid_field" => self.bid = Some(FieldPath::parse(v)?),
            "ask_field" => self.ask = Some(FieldPath::parse(v)?),
            "mid_field" => self.mid = Some(FieldPath::parse(v)?),
            "price_field" => self.price = Some(FieldPath::parse(v)?),
            "ts_field" => self.ts = Some(FieldPath::parse(v)?),
            "ts_format" => self.ts_format = Some(ts_format(v)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Finishing: the keys that need one another checked, and the [`Provider`] assembled.
impl Draft {
    /// The line on which the template set `key`, if it did.
    fn line_of(&self, key: &str) -> Option<usize> {
        self.lines.iter().find(|(k, _)| *k == key).map(|(_, l)| *l)
    }

    /// `key` set without `needs`.
    fn needs(
        &self,
        key: &'static str,
        needs: &'static str,
        why: Option<&'static str>,
    ) -> TemplateError {
        TemplateError::Needs {
            line: self.line_of(key),
            key,
            needs,
            why,
        }
    }

    fn finish(mut self) -> Result<Provider, TemplateError> {
        let heartbeat = self.heartbeat()?;
        let ack = self.ack()?;
        self.check_symbol_limit()?;
        let error = self.error()?;
        let quotes = self.quotes()?;
        Ok(Provider {
            name: self.name.unwrap_or_else(|| "custom".to_string()),
            url: self.url,
            key_query_param: self.key_query_param,
            headers: self.headers,
            spelling: self.spelling,
            join: self.join.unwrap_or(Join::Comma),
            steps: self.steps,
            reply_timeout: self.reply_timeout.unwrap_or(Duration::from_secs(10)),
            heartbeat,
            ping: self.ping,
            dead_after: self.dead_after,
            split_arrays: self.split_arrays,
            ignore: self.ignore,
            refuse: with_reasons(self.refuse),
            ack,
            symbol_limit: self.symbol_limit,
            error,
            quotes,
        })
    }

    /// The heartbeat's message and period: both keys, or neither.
    fn heartbeat(&mut self) -> Result<Option<(String, Duration)>, TemplateError> {
        match (self.heartbeat.take(), self.heartbeat_every) {
            (Some(text), Some(every)) => Ok(Some((text, every))),
            (None, None) => Ok(None),
            (Some(_), None) => {
                Err(self.needs("heartbeat", "heartbeat_secs", Some("how often to send it")))
            }
            (None, Some(_)) => {
                Err(self.needs("heartbeat_secs", "heartbeat", Some("the message to send")))
            }
        }
    }

    /// The answer to a subscription: `ack_when`, at least one list, and the reasons only
    /// with the denied list; no acknowledgement key without `ack_when`.
    fn ack(&mut self) -> Result<Option<AckShape>, TemplateError> {
        let Some(when) = self.ack_when.take() else {
            return match ACK_KEYS.iter().find(|k| self.line_of(k).is_some()) {
                Some(key) => Err(self.needs(key, "ack_when", Some("which frame is the answer"))),
                None => Ok(None),
            };
        };
        if self.ack_accepted.is_none() && self.ack_denied.is_none() && self.ack_invalid.is_none() {
            return Err(TemplateError::NeedsOneOf {
                line: self.line_of("ack_when"),
                key: "ack_when",
                one_of: ACK_LISTS,
            });
        }
        if self.ack_reasons.is_some() && self.ack_denied.is_none() {
            return Err(self.needs(
                "ack_reasons_field",
                "ack_denied_field",
                Some("the list the reasons are for"),
            ));
        }
        Ok(Some(AckShape {
            when,
            accepted: self.ack_accepted.take(),
            denied: self.ack_denied.take(),
            reasons: self.ack_reasons.take(),
            invalid: self.ack_invalid.take(),
            symbol: self.ack_symbol.take(),
        }))
    }

    /// The plan's symbol limit is read from a reply, so some `send` must await one.
    fn check_symbol_limit(&self) -> Result<(), TemplateError> {
        if self.symbol_limit.is_some() && !self.steps.iter().any(|s| s.expect.is_some()) {
            return Err(TemplateError::NoReplyAwaited {
                line: self.line_of("symbol_limit_field"),
            });
        }
        Ok(())
    }

    /// The provider's errors, and where their reason is: no reason without `error_when`.
    fn error(&mut self) -> Result<Option<(Pattern, Option<FieldPath>)>, TemplateError> {
        match (self.error_when.take(), self.error_reason.take()) {
            (Some(when), reason) => Ok(Some((when, reason))),
            (None, Some(_)) => Err(self.needs(
                "error_reason_field",
                "error_when",
                Some("which frames are errors"),
            )),
            (None, None) => Ok(None),
        }
    }

    /// What a quote looks like: fxproxy's own (no field keys), or read from fields (a bid and
    /// an ask required, a time format only with a time field).
    fn quotes(&mut self) -> Result<QuoteShape, TemplateError> {
        if self.v1 {
            if let Some((key, line)) = FIELD_KEYS.iter().find_map(|k| Some((*k, self.line_of(k)?)))
            {
                return Err(TemplateError::FieldsOnly {
                    line: Some(line),
                    key,
                });
            }
            return Ok(QuoteShape::V1);
        }
        let ts = match (self.ts.take(), self.ts_format) {
            (Some(path), format) => Some((path, format.unwrap_or(TsFormat::EpochMs))),
            (None, Some(_)) => return Err(self.needs("ts_format", "ts_field", None)),
            (None, None) => None,
        };
        let required = |field: Option<FieldPath>, key: &'static str| {
            field.ok_or(TemplateError::Missing { key })
        };
        Ok(QuoteShape::Fields(Box::new(Fields {
            when: self.when.take(),
            snapshot: self.snapshot.take(),
            symbol: self
                .symbol
                .take()
                .unwrap_or_else(|| FieldPath(vec!["symbol".into()])),
            spelling: match self.quote_spelling.take() {
                Some(s) => Spelling {
                    lower: self.spelling.lower,
                    ..s
                },
                None => self.spelling.clone(),
            },
            bid: required(self.bid.take(), "bid_field")?,
            ask: required(self.ask.take(), "ask_field")?,
            mid: self.mid.take(),
            price: self.price.take(),
            ts,
        })))
    }
}

/// Each refusal with its reason: the template's `refuse_reason`, or one that names the pattern.
fn with_reasons(refuse: Vec<Refusal>) -> Vec<Refusal> {
    refuse
        .into_iter()
        .map(|r| Refusal {
            reason: if r.reason.is_empty() {
                format!("it sent a refusal (`refuse = {}`)", r.pattern)
            } else {
                r.reason
            },
            ..r
        })
        .collect()
}

fn text(v: &str) -> Result<&str, ValueError> {
    if v.is_empty() {
        Err(ValueError::Empty)
    } else {
        Ok(v)
    }
}

fn spelling(v: &str) -> Result<String, ValueError> {
    let stripped = v
        .replace("{symbol}", "")
        .replace("{base}", "")
        .replace("{quote}", "");
    let names_it = v.contains("{symbol}") || (v.contains("{base}") && v.contains("{quote}"));
    if !names_it || stripped.contains(['{', '}']) || v.contains(char::is_whitespace) {
        return Err(ValueError::Spelling { got: v.to_string() });
    }
    Ok(v.to_string())
}

fn secs(v: &str, min: u64, max: u64) -> Result<Duration, ValueError> {
    v.parse::<u64>()
        .ok()
        .filter(|n| v.bytes().all(|b| b.is_ascii_digit()) && (min..=max).contains(n))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ValueError::expected(format!("a whole number of seconds from {min} to {max}"), v)
        })
}

fn ts_format(v: &str) -> Result<TsFormat, ValueError> {
    TsFormat::NAMES
        .iter()
        .find(|(n, _)| *n == v)
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            let names: Vec<&str> = TsFormat::NAMES.iter().map(|(n, _)| *n).collect();
            ValueError::expected(format!("one of {}", names.join(", ")), v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use serde_json::json;

    fn syms(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_custom_template_is_read_and_its_errors_name_its_file_line_and_key() {
        let dir = std::env::temp_dir().join(format!("fxproxy-template-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("proxy.conf");
        let write = |template: &str| {
            std::fs::write(dir.join("feed.conf"), template).unwrap();
            std::fs::write(
                &conf,
                "provider = custom\nprovider_template = feed.conf\nsymbols = EURUSD,US30\nuser_keys_file = k\n",
            )
            .unwrap();
            load(&conf).and_then(|mut c| describe(&mut c).map(|_| c))
        };
        let good = "url = wss://feed.example/fx\nsend = {\"sub\":\"{symbols}\"}\nbid_field = b\nask_field = a\n";
        let c = write(good).unwrap();
        assert_eq!(c.upstream, Upstream::Url("wss://feed.example/fx".into()));
        let e = write("send = x\nbid_field = b\nask_field = a\nsymbols_join = semicolon\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:4: key `symbols_join`: expected `comma` or `array`, got \"semicolon\"",
                dir.join("feed.conf").display()
            )
        );
        let e = write("send = x\nask_field = a\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: key `bid_field`: required with `quotes = fields`",
                dir.join("feed.conf").display()
            )
        );
        // A spelling the symbols do not fit: named at the template's line in proxy.conf.
        let e = write(&good.replace("url =", "symbol_format = {base}/{quote}\nurl =")).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "{}:2: key `provider_template`: symbol US30 does not split into a base and a quote",
                conf.display()
            )),
            "{e}"
        );
        // No URL anywhere.
        let e = write(&good.replace("url = wss://feed.example/fx\n", "")).unwrap_err();
        assert!(
            e.to_string().contains(
                "missing required key `upstream_url` (the custom template gives no `url`)"
            ),
            "{e}"
        );
        std::fs::remove_file(dir.join("feed.conf")).unwrap();
        let e = load(&conf)
            .and_then(|mut c| describe(&mut c).map(|_| c))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "{}:2: key `provider_template`: cannot read",
                conf.display()
            )),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_preset_resolves_an_unset_upstream_url() {
        let mut c = crate::config::parse(
            "provider = TraderMade-v2\nsymbols = EURUSD\nuser_keys_file = k\n",
            std::path::Path::new("/etc/fxproxy/proxy.conf"),
        )
        .unwrap();
        assert_eq!(c.upstream, Upstream::ProviderUrl);
        let description = describe(&mut c).unwrap();
        assert_eq!(description.name, "tradermade-v2");
        assert_eq!(
            c.upstream,
            Upstream::Url("wss://stream.tradermade.com/feedAdv".into())
        );
    }

    #[test]
    fn presets_parse() {
        for (name, _) in PRESETS {
            let p = preset(name).unwrap();
            assert_eq!(p.name, *name);
            p.check(&syms(&["EURUSD", "GBPUSD"])).unwrap();
        }
        assert!(preset("nonesuch").is_none());
    }

    #[test]
    fn the_tradermade_preset_is_the_v1_protocol() {
        let p = preset("tradermade").unwrap();
        assert_eq!(p.quotes, QuoteShape::V1);
        assert_eq!(
            p.messages("k{symbols}", &syms(&["EURUSD", "GBPUSD"]))
                .unwrap(),
            [r#"{"userKey":"k{symbols}","symbol":"EURUSD,GBPUSD"}"#]
        );
        assert!(p.steps[0].expect.is_none());
        assert!(!p.needs_json(), "no JSON parse on the hot path");
        assert!(p.refuse[0]
            .pattern
            .matches("User Key Used to many times", None));
        assert!(p.ignore[0].matches("Connected", None));
        assert!(!p.ignore[0].matches("Connected!", None));
        assert_eq!(p.ping, None);
        assert_eq!(p.url, None);
    }

    #[test]
    fn the_tradermade_v2_preset_logs_in_then_subscribes() {
        let p = preset("tradermade-v2").unwrap();
        assert_eq!(
            p.url.as_deref(),
            Some("wss://stream.tradermade.com/feedAdv")
        );
        assert_eq!(
            p.messages("KEY", &syms(&["EURUSD", "GBPUSD"])).unwrap(),
            [
                r#"{"action":"login","key":"KEY","fmt":"JSON"}"#,
                r#"{"action":"subscribe","symbols":["EURUSD:QUOTE","GBPUSD:QUOTE"],"send_last":true}"#
            ],
            "as TraderMade's own client: SYMBOL:QUOTE"
        );
        let ok = json!({"type": "login_ok", "symbol_limit": 54});
        assert!(p.steps[0].expect.as_ref().unwrap().matches("", Some(&ok)));
        assert_eq!(p.symbol_limit.as_ref().unwrap().to_string(), "symbol_limit");
        let ack = p.ack.as_ref().unwrap();
        assert!(ack.when.matches("", Some(&json!({"type": "sub_ack"}))));
        assert_eq!(ack.reasons.as_ref().unwrap().to_string(), "denied_reasons");
        let (error, reason) = p.error.as_ref().unwrap();
        assert!(error.matches("", Some(&json!({"type": "error", "reason": "x"}))));
        assert_eq!(reason.as_ref().unwrap().to_string(), "reason");
        let reject = json!({"type": "login_reject", "reason": "bad key"});
        assert!(p.refuse[0].pattern.matches("", Some(&reject)));
        assert_eq!(p.ping, Some(Duration::from_secs(30)));
        assert_eq!(p.dead_after, Some(Duration::from_secs(75)));
        let QuoteShape::Fields(f) = &p.quotes else {
            panic!("v2 quotes are read from fields")
        };
        let tick = json!({"t":"LAST_QUOTE","s":"EURUSD","b":"1.08612","a":"1.08614","ts":"20251124-14:03:05.123"});
        assert!(f.when.as_ref().unwrap().matches("", Some(&tick)));
        assert_eq!(
            f.spelling.spell("EURUSD").unwrap(),
            "EURUSD",
            "ticks name the bare symbol"
        );
        assert!(!f
            .when
            .as_ref()
            .unwrap()
            .matches("", Some(&json!({"t":"TRADE"}))));
        assert_eq!(f.ts.as_ref().unwrap().1, TsFormat::Compact);
    }

    #[test]
    fn symbols_are_joined_as_the_template_says() {
        let mut p = parse_template(
            "send = {\"action\":\"subscribe\",\"params\":\"{symbols}\"}\nsymbol_format = C.{base}/{quote}\nbid_field = b\nask_field = a\n",
        )
        .unwrap();
        let two = syms(&["EURUSD", "GBPUSD"]);
        assert_eq!(
            p.messages("k", &two).unwrap(),
            [r#"{"action":"subscribe","params":"C.EUR/USD,C.GBP/USD"}"#]
        );
        p.join = Join::Array;
        p.steps[0].send = r#"{"tickers":{symbols}}"#.into();
        assert_eq!(
            p.messages("k", &two).unwrap(),
            [r#"{"tickers":["C.EUR/USD","C.GBP/USD"]}"#]
        );
        // A quoted placeholder with an array join is not JSON: caught when checked.
        p.steps[0].send = r#"{"tickers":"{symbols}"}"#.into();
        let e = p.check(&two).unwrap_err().to_string();
        assert!(
            e.contains("`send` message 1") && e.contains("not JSON"),
            "{e}"
        );
    }

    #[test]
    fn the_key_goes_in_the_query_when_asked() {
        let mut p = preset("tradermade").unwrap();
        assert_eq!(p.url_with_key("wss://a/b", "k"), "wss://a/b");
        p.key_query_param = Some("apikey".into());
        assert_eq!(p.url_with_key("wss://a/b", "k&1"), "wss://a/b?apikey=k%261");
        assert_eq!(
            p.url_with_key("wss://a/b?x=1", "k"),
            "wss://a/b?x=1&apikey=k"
        );
        assert_eq!(p.url_with_key("wss://a/b?", "k"), "wss://a/b?apikey=k");
    }

    fn parse_err(text: &str) -> String {
        parse_template(text).unwrap_err().to_string()
    }

    const MINIMAL: &str = "send = hello\nbid_field = b\nask_field = a\n";

    #[test]
    fn template_errors_name_the_line_and_the_key() {
        assert_eq!(
            parse_err("send = x\nbid_field = b\nask_field = a\nsymbol_case = title\n"),
            "line 4: key `symbol_case`: expected `upper` or `lower`, got \"title\""
        );
        assert_eq!(parse_err("colour = red\n"), "line 1: unknown key `colour`");
        assert_eq!(
            parse_err("just words\n"),
            "line 1: expected `key = value`, got \"just words\""
        );
        assert_eq!(
            parse_err(&format!("{MINIMAL}url = wss://a\nurl = wss://b\n")),
            "line 5: key `url`: set twice (first on line 4)"
        );
        assert_eq!(
            parse_err("expect = status=ok\n"),
            "line 1: key `expect`: must follow the `send` whose reply it awaits"
        );
        assert_eq!(
            parse_err("send = a\nsplit_arrays = true\nexpect = status=ok\n"),
            "line 3: key `expect`: must follow the `send` whose reply it awaits"
        );
        assert_eq!(
            parse_err("send = a\nrefuse_reason = x\n"),
            "line 2: key `refuse_reason`: must follow the `refuse` it explains"
        );
        assert_eq!(
            parse_err("send = a\nask_field = a\n"),
            "key `bid_field`: required with `quotes = fields`"
        );
        assert_eq!(
            parse_err("send = a\nquotes = v1\nbid_field = b\n"),
            "line 3: key `bid_field`: applies to `quotes = fields` only"
        );
        assert_eq!(
            parse_err(&format!("{MINIMAL}heartbeat = ping\n")),
            "line 4: key `heartbeat`: needs `heartbeat_secs`, how often to send it"
        );
        assert!(parse_err(&format!("{MINIMAL}ts_format = iso\n"))
            .contains("expected one of epoch_s, epoch_ms"));
        assert!(parse_err(&format!("{MINIMAL}symbol_format = {{base}}\n"))
            .contains("expected a spelling"));
        assert!(parse_err(&format!("{MINIMAL}symbol_format = {{sym}}\n"))
            .contains("expected a spelling"));
        assert!(parse_err(&format!("{MINIMAL}url = http://x\n")).contains("ws:// or wss://"));
        assert!(parse_err(&format!("{MINIMAL}ping_secs = 0\n")).contains("from 1 to 3600"));
        assert!(parse_err(&format!("{MINIMAL}quote_when = nothing\n")).contains("FIELD=VALUE"));
    }

    #[test]
    fn acknowledgement_keys_belong_together() {
        assert_eq!(
            parse_err(&format!("{MINIMAL}ack_accepted_field = ok\n")),
            "line 4: key `ack_accepted_field`: needs `ack_when`, which frame is the answer"
        );
        assert!(parse_err(&format!("{MINIMAL}ack_when = type=ack\n"))
            .contains("needs at least one of `ack_accepted_field`"));
        assert!(parse_err(&format!(
            "{MINIMAL}ack_when = type=ack\nack_invalid_field = bad\nack_reasons_field = why\n"
        ))
        .contains("needs `ack_denied_field`"));
        assert!(parse_err(&format!("{MINIMAL}error_reason_field = why\n"))
            .contains("needs `error_when`"));
        assert!(parse_err(&format!("{MINIMAL}symbol_limit_field = limit\n"))
            .contains("no `send` has an `expect`"));
        let p = parse_template(&format!(
            "{MINIMAL}ack_when = type=ack\nack_denied_field = no\nack_symbol_field = name\nerror_when = type=error\n"
        ))
        .unwrap();
        let ack = p.ack.unwrap();
        assert_eq!(ack.denied.unwrap().to_string(), "no");
        assert_eq!(ack.symbol.unwrap().to_string(), "name");
        assert!(ack.accepted.is_none() && p.error.unwrap().1.is_none());
        assert!(
            parse_template(include_str!("../../providers/twelvedata.conf"))
                .unwrap()
                .ack
                .is_some()
        );
    }

    #[test]
    fn every_key_is_read() {
        for key in TEMPLATE_KEYS {
            let read = Draft::default().apply(key, "x", 1);
            assert!(
                !matches!(read, Err(TemplateError::NoParser { .. })),
                "{key}"
            );
        }
    }

    #[test]
    fn template_defaults() {
        let p = parse_template(&format!("# a comment\n\n{MINIMAL}")).unwrap();
        assert_eq!(p.name, "custom");
        assert_eq!(p.join, Join::Comma);
        assert_eq!(p.reply_timeout, Duration::from_secs(10));
        assert!(!p.split_arrays && p.heartbeat.is_none() && p.ping.is_none());
        let QuoteShape::Fields(f) = p.quotes else {
            panic!()
        };
        assert_eq!(f.symbol.to_string(), "symbol");
        assert_eq!(f.spelling, Spelling::default());
        assert!(f.ts.is_none());
        let p = parse_template(&format!(
            "{MINIMAL}symbol_case = lower\nquote_symbol_format = {{base}}/{{quote}}\nts_field = t\nrefuse = status=x\nsplit_arrays = Yes\n"
        ))
        .unwrap();
        assert!(p.split_arrays);
        let QuoteShape::Fields(f) = &p.quotes else {
            panic!()
        };
        assert!(f.spelling.lower, "the case applies to quotes too");
        assert_eq!(f.ts.as_ref().unwrap().1, TsFormat::EpochMs);
        assert_eq!(
            p.refuse[0].reason,
            "it sent a refusal (`refuse = status=x`)"
        );
    }
}
