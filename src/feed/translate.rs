//! A provider's frames as the proxy serves them: a JSON array split into its elements (when the
//! template says so), each piece sorted by the template into a quote, the reply an init message
//! awaits, an expected notice, a refusal or something else, and each quote turned into the v1
//! shape `{"symbol","ts","bid","ask","mid"}` (`client_format = normalized`) or passed on as it
//! came (`upstream`).
//!
//! A provider whose quotes are already the v1 shape (TraderMade's, the default) takes a short
//! path: a frame that starts with `{` is a quote, passed on byte for byte without a parse,
//! exactly as before providers were configurable.

use crate::base::market::Date;
use crate::config::ClientFormat;
use crate::feed::decimal::Decimal;
use crate::feed::provider::{
    scalar_text, AckShape, FieldPath, Fields, Pattern, Provider, QuoteShape, SymbolError, TsFormat,
};
use crate::feed::v2;
use serde_json::value::RawValue;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use tungstenite::Utf8Bytes;

/// One piece of what the source sent, sorted.
#[derive(Debug, PartialEq)]
pub enum Piece {
    /// A quote, in the client format, for the distributor.
    Quote(Utf8Bytes),
    /// The reply the current init message waits for.
    Reply,
    /// A refusal: what it means, and the piece's text.
    Refused { reason: String, text: String },
    /// The provider's answer to the subscription, symbol by symbol.
    Ack(Ack),
    /// How many symbols the provider's plan allows, from the reply to a login; comes just
    /// before that [`Piece::Reply`].
    SymbolLimit(u64),
    /// An error the provider reported that ends nothing: its reason (or its text).
    ProviderError(String),
    /// A notice the template expects (a greeting, a heartbeat's answer).
    Ignored,
    /// A quote the proxy cannot use: why.
    Unusable(String),
    /// Anything else: its text.
    Other(String),
}

/// What a provider acknowledged of a subscription, by position in `symbols`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ack {
    pub accepted: Vec<usize>,
    /// With the provider's reason (empty when it gives none).
    pub denied: Vec<(usize, String)>,
    pub invalid: Vec<usize>,
    /// Entries that name none of `symbols`, as the provider wrote them.
    pub unknown: Vec<String>,
}

/// A provider's reason, for the log, `/healthz` and close reasons, is cut to this many
/// characters.
const MAX_REASON_CHARS: usize = 200;

/// Sorts and translates frames for one provider and one set of symbols.
pub struct Translator {
    provider: Arc<Provider>,
    format: ClientFormat,
    symbols: Vec<String>,
    /// A symbol as quotes spell it, upper case, to its position in `symbols`.
    spelt: HashMap<String, usize>,
    /// A symbol as subscriptions (and so acknowledgements) spell it, upper case, to its
    /// position; filled only for a provider that acknowledges.
    subscribed: HashMap<String, usize>,
    /// Whether any refusal, notice or reply pattern needs the frame parsed as JSON.
    needs_json: bool,
    /// By symbol: the last quote passed on, its time (if it had one) and its v1 text; kept
    /// for providers that send snapshot quotes.
    last: RefCell<Vec<Option<Passed>>>,
}

/// A quote passed on: its own time, if it had one, and its v1 text.
type Passed = (Option<u64>, String);

impl Translator {
    pub fn new(
        provider: Arc<Provider>,
        format: ClientFormat,
        symbols: &[String],
    ) -> Result<Translator, SymbolError> {
        let mut spelt = HashMap::new();
        if let QuoteShape::Fields(fields) = &provider.quotes {
            for (i, symbol) in symbols.iter().enumerate() {
                spelt.insert(fields.spelling.spell(symbol)?.to_ascii_uppercase(), i);
            }
        }
        let mut subscribed = HashMap::new();
        if provider.ack.is_some() {
            for (i, symbol) in symbols.iter().enumerate() {
                subscribed.insert(provider.spelling.spell(symbol)?.to_ascii_uppercase(), i);
            }
        }
        Ok(Translator {
            subscribed,
            needs_json: provider.needs_json(),
            last: RefCell::new(vec![None; symbols.len()]),
            provider,
            format,
            symbols: symbols.to_vec(),
            spelt,
        })
    }

    /// The provider's protocol this translator reads.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// The provider's own time of a quote this translator handed on (epoch ms), if it sent
    /// one: what `fxproxy_upstream_quote_age_seconds` measures from. `received_ms` is the
    /// time the frame was read with.
    pub fn provider_time(&self, quote: &str, received_ms: u64) -> Option<u64> {
        match &self.provider.quotes {
            QuoteShape::V1 => v1_time(quote),
            QuoteShape::Fields(fields) => {
                let (path, format) = fields.ts.as_ref()?;
                match self.format {
                    ClientFormat::Upstream => {
                        let json: Value = serde_json::from_str(quote).ok()?;
                        timestamp_ms(path.find(&json)?, *format)
                    }
                    // A quote that carried no time of its own was given the time it was read
                    // (see `normalize`): that one is not the provider's.
                    ClientFormat::Normalized => v1_time(quote).filter(|ts| *ts != received_ms),
                }
            }
        }
    }

    /// The proxy's symbols, in the order ids refer to them.
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    /// How the distributor finds the symbol of what this translator hands it.
    pub fn symbol_of(&self) -> SymbolOf {
        match (&self.provider.quotes, self.format) {
            (QuoteShape::Fields(fields), ClientFormat::Upstream) => SymbolOf::Field {
                path: fields.symbol.clone(),
                spelt: self.spelt.clone(),
            },
            _ => SymbolOf::V1 {
                index: self
                    .symbols
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.clone(), i))
                    .collect(),
            },
        }
    }

    /// How the distributor makes a v2 tick of what this translator hands it.
    pub fn v2_of(&self) -> V2Of {
        match (&self.provider.quotes, self.format) {
            (QuoteShape::Fields(fields), ClientFormat::Upstream) => V2Of::Fields(fields.clone()),
            _ => V2Of::V1,
        }
    }

    /// Sorts one text frame into `out`; `awaiting` is the reply an init message waits for.
    pub fn read(
        &self,
        text: Utf8Bytes,
        now_ms: u64,
        awaiting: Option<&Pattern>,
        out: &mut Vec<Piece>,
    ) {
        match &self.provider.quotes {
            QuoteShape::V1 => {
                let object = text.trim_start().starts_with('{');
                if object && awaiting.is_none() && !self.needs_json {
                    // The hot path of the default provider: no parse here; the distributor
                    // parses each frame once to find its symbol.
                    out.push(Piece::Quote(text));
                    return;
                }
                let json = self.parse_if_needed(&text, awaiting);
                if !self.notice(&text, json.as_ref(), awaiting, out) {
                    out.push(if object {
                        Piece::Quote(text.clone())
                    } else {
                        Piece::Other(text.to_string())
                    });
                }
            }
            QuoteShape::Fields(fields) => {
                if self.provider.split_arrays && text.trim_start().starts_with('[') {
                    if let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(&text) {
                        for item in items {
                            self.piece(fields, item.get(), now_ms, awaiting, out);
                        }
                        return;
                    }
                }
                self.piece(fields, &text, now_ms, awaiting, out);
            }
        }
    }

    fn parse_if_needed(&self, text: &str, awaiting: Option<&Pattern>) -> Option<Value> {
        let needed = self.needs_json || awaiting.is_some_and(|p| !p.is_textual());
        needed.then(|| serde_json::from_str(text).ok()).flatten()
    }

    /// An acknowledgement, a refusal, the awaited reply (after the plan's symbol limit, if
    /// it says), a provider's error or an expected notice, in that order of precedence, into
    /// `out`; false when `text` is none of them. An acknowledgement that is also the reply
    /// awaited is both.
    fn notice(
        &self,
        text: &str,
        json: Option<&Value>,
        awaiting: Option<&Pattern>,
        out: &mut Vec<Piece>,
    ) -> bool {
        let is_reply = awaiting.is_some_and(|p| p.matches(text, json));
        if let Some(ack) = &self.provider.ack {
            if let (true, Some(json)) = (ack.when.matches(text, json), json) {
                out.push(Piece::Ack(self.acknowledged(ack, json)));
                if is_reply {
                    out.push(Piece::Reply);
                }
                return true;
            }
        }
        if let Some(r) = self
            .provider
            .refuse
            .iter()
            .find(|r| r.pattern.matches(text, json))
        {
            out.push(Piece::Refused {
                reason: r.reason.clone(),
                text: text.to_string(),
            });
            return true;
        }
        if is_reply {
            let limit = self.provider.symbol_limit.as_ref().zip(json);
            if let Some(n) = limit.and_then(|(path, json)| path.find(json)?.as_u64()) {
                out.push(Piece::SymbolLimit(n));
            }
            out.push(Piece::Reply);
            return true;
        }
        if let Some((when, reason)) = &self.provider.error {
            if when.matches(text, json) {
                let said = reason
                    .as_ref()
                    .zip(json)
                    .and_then(|(path, json)| scalar_text(path.find(json)?).map(String::from))
                    .unwrap_or_else(|| text.to_string());
                out.push(Piece::ProviderError(cut(&said)));
                return true;
            }
        }
        if self.provider.ignore.iter().any(|p| p.matches(text, json)) {
            out.push(Piece::Ignored);
            return true;
        }
        false
    }

    /// What an acknowledgement says of each symbol.
    fn acknowledged(&self, shape: &AckShape, json: &Value) -> Ack {
        let mut ack = Ack::default();
        let entries = |path: &Option<FieldPath>| -> Vec<String> {
            let Some(Value::Array(items)) = path.as_ref().and_then(|p| p.find(json)) else {
                return Vec::new();
            };
            items
                .iter()
                .filter_map(|item| match (item, &shape.symbol) {
                    (Value::String(s), _) => Some(s.clone()),
                    (Value::Object(_), Some(field)) => {
                        field.find(item).and_then(Value::as_str).map(String::from)
                    }
                    _ => None,
                })
                .collect()
        };
        let reasons = shape.reasons.as_ref().and_then(|p| p.find(json));
        let place = |entry: &str, ack: &mut Ack| -> Option<usize> {
            match self.subscribed.get(&entry.to_ascii_uppercase()) {
                Some(&id) => Some(id),
                None => {
                    ack.unknown.push(cut(entry));
                    None
                }
            }
        };
        for entry in entries(&shape.accepted) {
            if let Some(id) = place(&entry, &mut ack) {
                ack.accepted.push(id);
            }
        }
        for entry in entries(&shape.denied) {
            if let Some(id) = place(&entry, &mut ack) {
                let why = reasons
                    .and_then(|r| r.get(&entry))
                    .and_then(scalar_text)
                    .map(|w| cut(&w))
                    .unwrap_or_default();
                ack.denied.push((id, why));
            }
        }
        for entry in entries(&shape.invalid) {
            if let Some(id) = place(&entry, &mut ack) {
                ack.invalid.push(id);
            }
        }
        ack
    }

    fn piece(
        &self,
        fields: &Fields,
        text: &str,
        now_ms: u64,
        awaiting: Option<&Pattern>,
        out: &mut Vec<Piece>,
    ) {
        let json: Option<Value> = serde_json::from_str(text).ok();
        if !self.notice(text, json.as_ref(), awaiting, out) {
            out.push(self.quote(fields, text, json, now_ms));
        }
    }

    /// A frame that is no notice, as a quote if it is one.
    fn quote(&self, fields: &Fields, text: &str, json: Option<Value>, now_ms: u64) -> Piece {
        let Some(json) = json.filter(|j| {
            fields
                .when
                .as_ref()
                .map_or(true, |w| w.matches(text, Some(j)))
        }) else {
            return Piece::Other(text.to_string());
        };
        let Some(name) = fields.symbol.find(&json).and_then(Value::as_str) else {
            return match fields.when {
                Some(_) => Piece::Unusable(format!("no string `{}` (the symbol)", fields.symbol)),
                None => Piece::Other(text.to_string()),
            };
        };
        let Some(&id) = self.spelt.get(&name.to_ascii_uppercase()) else {
            return Piece::Unusable(format!("symbol {name:.32} is not among `symbols`"));
        };
        let normalized = match (self.format, &fields.snapshot) {
            (ClientFormat::Upstream, None) => {
                return Piece::Quote(Utf8Bytes::from(text.to_string()))
            }
            _ => normalize(fields, &json, &self.symbols[id], now_ms),
        };
        let (frame, ts) = match (normalized, self.format) {
            (Ok(quote), _) => quote,
            (Err(why), ClientFormat::Normalized) => return Piece::Unusable(why),
            // The provider's own frame goes as it is, whatever the proxy makes of it.
            (Err(_), ClientFormat::Upstream) => {
                return Piece::Quote(Utf8Bytes::from(text.to_string()))
            }
        };
        if let Some(snapshot) = &fields.snapshot {
            let mut last = self.last.borrow_mut();
            if let (true, Some((last_ts, last_frame))) =
                (snapshot.matches(text, Some(&json)), &last[id])
            {
                let stale = match (ts, last_ts) {
                    (Some(ts), Some(last_ts)) => ts <= *last_ts,
                    _ => frame == *last_frame,
                };
                if stale {
                    return Piece::Ignored;
                }
            }
            last[id] = Some((ts, frame.clone()));
        }
        match self.format {
            ClientFormat::Upstream => Piece::Quote(Utf8Bytes::from(text.to_string())),
            ClientFormat::Normalized => Piece::Quote(Utf8Bytes::from(frame)),
        }
    }
}

/// A provider's text cut to [`MAX_REASON_CHARS`].
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// A quote read from its fields, in the v1 shape: prices exactly as the provider wrote them,
/// the mid from its field or halfway between bid and ask (exact, in decimal), the time in epoch
/// milliseconds as a string; the receive time when the quote carries none that can be read.
/// With it, the quote's own time, if it had one.
fn normalize(
    fields: &Fields,
    json: &Value,
    symbol: &str,
    now_ms: u64,
) -> Result<(String, Option<u64>), String> {
    let price = |path: &Option<FieldPath>| {
        path.as_ref()
            .and_then(|p| p.find(json))
            .and_then(Decimal::of)
    };
    let single = price(&fields.price);
    let bid = fields.bid.find(json).and_then(Decimal::of).or(single);
    let ask = fields.ask.find(json).and_then(Decimal::of).or(single);
    let (Some(bid), Some(ask)) = (bid, ask) else {
        return Err(format!(
            "no bid (`{}`) and ask (`{}`) that are numbers",
            fields.bid, fields.ask
        ));
    };
    let mid = match price(&fields.mid) {
        Some(mid) => mid,
        None => Decimal::mid(bid, ask).ok_or_else(|| {
            format!("bid {bid} and ask {ask} are out of range: their mid cannot be written exactly")
        })?,
    };
    let own = fields
        .ts
        .as_ref()
        .and_then(|(path, format)| path.find(json).and_then(|v| timestamp_ms(v, *format)));
    let ts = own.unwrap_or(now_ms);
    Ok((
        format!(r#"{{"symbol":"{symbol}","ts":"{ts}","bid":{bid},"ask":{ask},"mid":{mid}}}"#),
        own,
    ))
}

/// The `ts` of a quote in the v1 shape: epoch milliseconds, as a string or a number. Only
/// that field is built; the rest of the frame is skipped.
fn v1_time(quote: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Time {
        ts: Option<Value>,
    }
    let time: Time = serde_json::from_str(quote).ok()?;
    timestamp_ms(time.ts.as_ref()?, TsFormat::EpochMs)
}

/// How the distributor turns a frame it fans out into a v2 tick, for the clients that speak
/// v2: once per frame, whoever many of them there are.
#[derive(Debug, Clone)]
pub enum V2Of {
    /// The frames are in the v1 shape (`client_format = normalized`, or TraderMade's first
    /// protocol): read from its fields.
    V1,
    /// A provider's own frames (`client_format = upstream`): read as its template says.
    Fields(Box<Fields>),
}

impl V2Of {
    /// `frame`, a quote of `symbol` (the proxy's spelling), as a v2 tick; `now_ms` stands in
    /// for a time the frame does not carry. `None` when it holds no bid and ask.
    pub fn tick(&self, frame: &str, symbol: &str, kind: v2::Kind, now_ms: u64) -> Option<String> {
        match self {
            V2Of::V1 => v2::tick_from_v1(frame, symbol, kind, now_ms),
            V2Of::Fields(fields) => {
                let json: Value = serde_json::from_str(frame).ok()?;
                let (v1, _) = normalize(fields, &json, symbol, now_ms).ok()?;
                v2::tick_from_v1(&v1, symbol, kind, now_ms)
            }
        }
    }
}

/// How the distributor finds a frame's symbol (its position in `symbols`).
#[derive(Debug, Clone)]
pub enum SymbolOf {
    /// The v1 shape's string `symbol`, in the proxy's spelling.
    V1 { index: HashMap<String, usize> },
    /// A provider's own frames: its symbol field, in its spelling.
    Field {
        path: FieldPath,
        spelt: HashMap<String, usize>,
    },
}

impl SymbolOf {
    /// The symbol's position in `symbols`.
    pub fn id(&self, text: &str) -> Option<usize> {
        match self {
            SymbolOf::V1 { index } => {
                crate::feed::protocol::quote_symbol(text).and_then(|s| index.get(&*s).copied())
            }
            SymbolOf::Field { path, spelt } => {
                let json: Value = serde_json::from_str(text).ok()?;
                let name = path.find(&json)?.as_str()?;
                spelt.get(&name.to_ascii_uppercase()).copied()
            }
        }
    }
}

/// A quote's time in epoch milliseconds.
pub fn timestamp_ms(value: &Value, format: TsFormat) -> Option<u64> {
    let exponent = match format {
        TsFormat::EpochS => 3,
        TsFormat::EpochMs => 0,
        TsFormat::EpochUs => -3,
        TsFormat::EpochNs => -6,
        TsFormat::Rfc3339 => return value.as_str().and_then(rfc3339_ms),
        TsFormat::Compact => return value.as_str().and_then(compact_ms),
    };
    Decimal::of(value)?.times_ten_to(exponent)
}

/// `2019-07-05T15:49:15.157000+00:00`, `2019-07-05 15:49:15Z` and the like.
fn rfc3339_ms(text: &str) -> Option<u64> {
    let (date, rest) = (text.get(..10)?, text.get(10..)?);
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (time, offset_ms) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => (&rest[..i], offset_ms(&rest[i..])?),
        None => return None,
    };
    let day = date.parse::<Date>().ok()?.start_ms();
    let ms = day.checked_add(time_of_day_ms(time)?)?;
    u64::try_from(i64::try_from(ms).ok()? - offset_ms).ok()
}

/// `Z`, `+01:00`, `-0530`: in signed milliseconds east of UTC.
fn offset_ms(text: &str) -> Option<i64> {
    if text.eq_ignore_ascii_case("z") {
        return Some(0);
    }
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = text[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    (hours < 24 && minutes < 60).then_some(sign * (hours * 60 + minutes) * 60_000)
}

/// `HH:MM:SS` with an optional fraction, in milliseconds (the fraction cut to three digits).
fn time_of_day_ms(text: &str) -> Option<u64> {
    let (hms, fraction) = text.split_once('.').unwrap_or((text, ""));
    let b = hms.as_bytes();
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let two = |i: usize| -> Option<u64> {
        let part = hms.get(i..i + 2)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (h, m, s) = (two(0)?, two(3)?, two(6)?);
    if h > 23 || m > 59 || s > 60 || !fraction.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let ms = format!("{fraction:0<3}").get(..3)?.parse::<u64>().ok()?;
    Some(((h * 60 + m) * 60 + s) * 1000 + ms)
}

/// `20251124-14:03:05.123`, UTC.
fn compact_ms(text: &str) -> Option<u64> {
    let (date, time) = text.split_once('-')?;
    if date.len() != 8 {
        return None;
    }
    let iso = format!("{}-{}-{}", &date[..4], &date[4..6], &date[6..]);
    let day = iso.parse::<Date>().ok()?.start_ms();
    day.checked_add(time_of_day_ms(time)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::template::{parse_template, preset};
    use serde_json::json;

    fn syms() -> Vec<String> {
        ["EURUSD", "GBPUSD", "USDJPY"].map(String::from).to_vec()
    }

    fn translator(provider: Provider, format: ClientFormat) -> Translator {
        Translator::new(Arc::new(provider), format, &syms()).unwrap()
    }

    fn read(t: &Translator, text: &str, awaiting: Option<&Pattern>) -> Vec<Piece> {
        let mut out = Vec::new();
        t.read(
            Utf8Bytes::from(text.to_string()),
            1_700_000_000_999,
            awaiting,
            &mut out,
        );
        out
    }

    fn quote(text: &str) -> Piece {
        Piece::Quote(Utf8Bytes::from(text.to_string()))
    }

    #[test]
    fn timestamps_in_every_format() {
        let ms = |v: Value, f| timestamp_ms(&v, f);
        assert_eq!(
            ms(json!(1700000000), TsFormat::EpochS),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            ms(json!(1700000000.25), TsFormat::EpochS),
            Some(1_700_000_000_250)
        );
        assert_eq!(
            ms(json!("1700000000123"), TsFormat::EpochMs),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            ms(json!(1700000000123456u64), TsFormat::EpochUs),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            ms(json!(1700000000123456789u64), TsFormat::EpochNs),
            Some(1_700_000_000_123)
        );
        assert_eq!(ms(json!(-5), TsFormat::EpochMs), None);
        assert_eq!(
            ms(json!("2025-11-24T14:03:05.123Z"), TsFormat::Rfc3339),
            Some(1_763_992_985_123)
        );
        assert_eq!(
            ms(json!("2025-11-24T15:03:05.123456+01:00"), TsFormat::Rfc3339),
            Some(1_763_992_985_123)
        );
        assert_eq!(
            ms(json!("2025-11-24 09:03:05-05:00"), TsFormat::Rfc3339),
            Some(1_763_992_985_000)
        );
        assert_eq!(
            ms(json!("2025-11-24T14:03:05"), TsFormat::Rfc3339),
            None,
            "no zone"
        );
        assert_eq!(
            ms(json!("20251124-14:03:05.123"), TsFormat::Compact),
            Some(1_763_992_985_123)
        );
        assert_eq!(
            ms(json!("20251124-14:03:05"), TsFormat::Compact),
            Some(1_763_992_985_000)
        );
        for bad in [
            "2025112-14:03:05",
            "20251124-25:03:05",
            "20251324-14:03:05",
            "x",
        ] {
            assert_eq!(ms(json!(bad), TsFormat::Compact), None, "{bad}");
        }
    }

    #[test]
    fn the_providers_own_time_of_a_quote() {
        let received = 1_700_000_000_999;
        let v1 = translator(preset("tradermade").unwrap(), ClientFormat::Normalized);
        let q = r#"{"symbol":"EURUSD","ts":"1700000000123","bid":1.1,"ask":1.2}"#;
        assert_eq!(v1.provider_time(q, received), Some(1_700_000_000_123));
        let number = r#"{"symbol":"EURUSD","ts":1700000000123,"bid":1.1}"#;
        assert_eq!(v1.provider_time(number, received), Some(1_700_000_000_123));
        assert_eq!(v1.provider_time(r#"{"symbol":"EURUSD"}"#, received), None);

        let tick = r#"{"t":"QUOTE","s":"EURUSD","b":"1.08612","a":"1.08614","ts":"20251124-14:03:05.123"}"#;
        let untimed = r#"{"t":"QUOTE","s":"EURUSD","b":"1.08612","a":"1.08614"}"#;
        let v2 = translator(preset("tradermade-v2").unwrap(), ClientFormat::Normalized);
        let time_of = |t: &Translator, text: &str| match read(t, text, None).as_slice() {
            [Piece::Quote(frame)] => t.provider_time(frame, received),
            other => panic!("not one quote: {other:?}"),
        };
        assert_eq!(time_of(&v2, tick), Some(1_763_992_985_123));
        assert_eq!(
            time_of(&v2, untimed),
            None,
            "the receive time it was given is not the provider's"
        );
        let own = translator(preset("tradermade-v2").unwrap(), ClientFormat::Upstream);
        assert_eq!(time_of(&own, tick), Some(1_763_992_985_123));
        assert_eq!(time_of(&own, untimed), None);
    }

    #[test]
    fn tradermade_frames_pass_through_untouched() {
        let t = translator(preset("tradermade").unwrap(), ClientFormat::Normalized);
        let q = r#"{"symbol":"EURUSD","ts":"1","bid":1.1,"ask":1.2,"mid":1.15}"#;
        assert_eq!(read(&t, q, None), [quote(q)]);
        assert_eq!(read(&t, "Connected", None), [Piece::Ignored]);
        assert_eq!(
            read(&t, "User Key Used to many times", None),
            [Piece::Refused {
                reason: "the provider's connection limit for this key is reached (another program is using the same key?)".into(),
                text: "User Key Used to many times".into()
            }]
        );
        assert_eq!(read(&t, "hello", None), [Piece::Other("hello".into())]);
        assert!(matches!(t.symbol_of(), SymbolOf::V1 { .. }));
    }

    #[test]
    fn tradermade_v2_ticks_become_v1_quotes() {
        let t = translator(preset("tradermade-v2").unwrap(), ClientFormat::Normalized);
        let tick = r#"{"t":"QUOTE","s":"EURUSD","b":"1.08612","a":"1.08614","ts":"20251124-14:03:05.123"}"#;
        assert_eq!(
            read(&t, tick, None),
            [quote(
                r#"{"symbol":"EURUSD","ts":"1763992985123","bid":1.08612,"ask":1.08614,"mid":1.08613}"#
            )]
        );
        let login = t.provider.steps[0].expect.clone().unwrap();
        assert_eq!(
            read(&t, r#"{"type":"login_ok"}"#, Some(&login)),
            [Piece::Reply]
        );
        assert_eq!(
            read(&t, r#"{"type":"login_ok"}"#, None),
            [Piece::Other(r#"{"type":"login_ok"}"#.into())],
            "a reply nobody waits for is just a notice"
        );
        assert!(matches!(
            &read(
                &t,
                r#"{"type":"login_reject","reason":"bad key"}"#,
                Some(&login)
            )[0],
            Piece::Refused { .. }
        ));
        assert!(matches!(
            &read(&t, r#"{"t":"QUOTE","s":"XAUUSD","b":"1","a":"2"}"#, None)[0],
            Piece::Unusable(why) if why.contains("XAUUSD is not among")
        ));
        assert!(matches!(
            &read(&t, r#"{"t":"QUOTE","s":"EURUSD","b":"x","a":"2"}"#, None)[0],
            Piece::Unusable(why) if why.contains("no bid")
        ));
        // An absurd price is refused in words; its mid would not fit (it wrapped, or panicked
        // the upstream thread in a debug build).
        assert!(matches!(
            &read(&t, r#"{"t":"QUOTE","s":"EURUSD","b":"1e38","a":"0.1"}"#, None)[0],
            Piece::Unusable(why) if why.contains("bid 100000000000000000000000000000000000000 and ask 0.1 are out of range")
        ));
        // Without a time that can be read, the receive time.
        assert_eq!(
            read(
                &t,
                r#"{"t":"LAST_QUOTE","s":"gbpusd","b":1.25,"a":1.2502}"#,
                None
            ),
            [quote(
                r#"{"symbol":"GBPUSD","ts":"1700000000999","bid":1.25,"ask":1.2502,"mid":1.2501}"#
            )]
        );
        let up = translator(preset("tradermade-v2").unwrap(), ClientFormat::Upstream);
        assert_eq!(read(&up, tick, None), [quote(tick)], "verbatim");
    }

    #[test]
    fn tradermade_v2_answers_are_told() {
        let t = translator(preset("tradermade-v2").unwrap(), ClientFormat::Normalized);
        let login = t.provider.steps[0].expect.clone().unwrap();
        assert_eq!(
            read(
                &t,
                r#"{"type":"login_ok","symbol_limit":54,"cfds":false}"#,
                Some(&login)
            ),
            [Piece::SymbolLimit(54), Piece::Reply]
        );
        let ack = r#"{"type":"sub_ack","accepted":["EURUSD:QUOTE"],"denied":["GBPUSD:QUOTE"],"denied_reasons":{"GBPUSD:QUOTE":"not in your plan"},"invalid":["usdjpy:quote","XAUUSD:QUOTE"]}"#;
        assert_eq!(
            read(&t, ack, None),
            [Piece::Ack(Ack {
                accepted: vec![0],
                denied: vec![(1, "not in your plan".into())],
                invalid: vec![2],
                unknown: vec!["XAUUSD:QUOTE".into()],
            })]
        );
        assert_eq!(
            read(&t, r#"{"type":"error","reason":"bad request"}"#, None),
            [Piece::ProviderError("bad request".into())]
        );
        assert_eq!(read(&t, "Connected", None), [Piece::Ignored]);
        let long = format!(r#"{{"type":"error","reason":"{}"}}"#, "x".repeat(500));
        assert!(matches!(
            &read(&t, &long, None)[0],
            Piece::ProviderError(r) if r.chars().count() == MAX_REASON_CHARS + 1
        ));
        // A bare symbol in a tick is the symbol (as quotes spell it).
        assert!(matches!(
            &read(
                &t,
                r#"{"t":"QUOTE","s":"GBPUSD","b":"1.2","a":"1.3"}"#,
                None
            )[0],
            Piece::Quote(_)
        ));
    }

    #[test]
    fn twelve_data_fails_are_denied_symbols() {
        let t = translator(
            parse_template(include_str!("../../providers/twelvedata.conf")).unwrap(),
            ClientFormat::Normalized,
        );
        let subscribe = t.provider.steps[0].expect.clone().unwrap();
        let partly = r#"{"event":"subscribe-status","status":"ok","success":[{"symbol":"EUR/USD","exchange":"PHYSICAL CURRENCY"}],"fails":[{"symbol":"GBP/USD"}]}"#;
        assert_eq!(
            read(&t, partly, Some(&subscribe)),
            [
                Piece::Ack(Ack {
                    accepted: vec![0],
                    denied: vec![(1, String::new())],
                    ..Ack::default()
                }),
                Piece::Reply
            ],
            "an acknowledgement that is the awaited reply is both"
        );
        // None subscribed: still an acknowledgement, not the key's refusal.
        let none = r#"{"event":"subscribe-status","status":"error","success":null,"fails":[{"symbol":"EUR/USD"},{"symbol":"GBP/USD"},{"symbol":"USD/JPY"}]}"#;
        assert!(matches!(
            &read(&t, none, Some(&subscribe))[..],
            [Piece::Ack(a)] if a.denied.len() == 3 && a.accepted.is_empty()
        ));
        assert!(matches!(
            &read(
                &t,
                r#"{"status":"error","code":401,"message":"bad key"}"#,
                None
            )[0],
            Piece::Refused { .. }
        ));
    }

    #[test]
    fn ticks_for_v2_clients_are_made_from_either_client_format() {
        let tick = r#"{"t":"QUOTE","s":"EURUSD","b":"1.08612","a":"1.08614","ts":"20251124-14:03:05.123"}"#;
        let want = Some(tick.to_string());
        let normalized = translator(preset("tradermade-v2").unwrap(), ClientFormat::Normalized);
        let Piece::Quote(v1) = read(&normalized, tick, None).remove(0) else {
            panic!("a quote")
        };
        let of = normalized.v2_of();
        assert!(matches!(of, V2Of::V1));
        assert_eq!(of.tick(&v1, "EURUSD", v2::Kind::Quote, 0), want);
        let upstream = translator(preset("tradermade-v2").unwrap(), ClientFormat::Upstream);
        let of = upstream.v2_of();
        assert!(matches!(of, V2Of::Fields(_)));
        assert_eq!(of.tick(tick, "EURUSD", v2::Kind::Quote, 0), want);
        let polygon = translator(polygon(), ClientFormat::Upstream).v2_of();
        assert_eq!(
            polygon.tick(
                r#"{"ev":"C","p":"EUR/USD","a":1.0841,"b":1.0839,"t":1763992985123}"#,
                "EURUSD",
                v2::Kind::LastQuote,
                0
            ),
            Some(
                r#"{"t":"LAST_QUOTE","s":"EURUSD","b":"1.0839","a":"1.0841","ts":"20251124-14:03:05.123"}"#
                    .into()
            )
        );
    }

    #[test]
    fn snapshot_quotes_pass_only_when_newer() {
        for format in [ClientFormat::Normalized, ClientFormat::Upstream] {
            let t = translator(preset("tradermade-v2").unwrap(), format);
            let tick = |kind: &str, ts: &str, bid: &str| {
                format!(
                    r#"{{"t":"{kind}","s":"EURUSD","b":"{bid}","a":"1.2","ts":"20251124-14:03:{ts}"}}"#
                )
            };
            let is_quote = |p: &[Piece]| matches!(p, [Piece::Quote(_)]);
            assert!(
                is_quote(&read(&t, &tick("LAST_QUOTE", "05.100", "1.1"), None)),
                "the first"
            );
            assert!(is_quote(&read(&t, &tick("QUOTE", "06.000", "1.1"), None)));
            // A reconnect: the provider sends its last quote again.
            assert_eq!(
                read(&t, &tick("LAST_QUOTE", "06.000", "1.1"), None),
                [Piece::Ignored]
            );
            assert_eq!(
                read(&t, &tick("LAST_QUOTE", "05.900", "1.0"), None),
                [Piece::Ignored]
            );
            assert!(
                is_quote(&read(&t, &tick("LAST_QUOTE", "07.000", "1.15"), None)),
                "newer"
            );
            // Ordinary quotes are never held back.
            assert!(is_quote(&read(&t, &tick("QUOTE", "07.000", "1.15"), None)));
        }
    }

    fn polygon() -> Provider {
        parse_template(include_str!("../../providers/polygon-forex.conf")).unwrap()
    }

    #[test]
    fn arrays_split_into_one_piece_per_element() {
        let frame = r#"[{"ev":"C","p":"EUR/USD","x":48,"a":1.0841,"b":1.0839,"t":1700000000123}, {"ev":"C","p":"GBP/USD","a":1.25,"b":1.2498,"t":1700000000124},{"ev":"status","status":"success","message":"subscribed to: C.EUR/USD"}]"#;
        let t = translator(polygon(), ClientFormat::Normalized);
        assert_eq!(
            read(&t, frame, None),
            [
                quote(
                    r#"{"symbol":"EURUSD","ts":"1700000000123","bid":1.0839,"ask":1.0841,"mid":1.0840}"#
                ),
                quote(
                    r#"{"symbol":"GBPUSD","ts":"1700000000124","bid":1.2498,"ask":1.25,"mid":1.2499}"#
                ),
                Piece::Ignored
            ]
        );
        let up = translator(polygon(), ClientFormat::Upstream);
        let pieces = read(&up, frame, None);
        assert_eq!(
            pieces[..2],
            [
                quote(r#"{"ev":"C","p":"EUR/USD","x":48,"a":1.0841,"b":1.0839,"t":1700000000123}"#),
                quote(r#"{"ev":"C","p":"GBP/USD","a":1.25,"b":1.2498,"t":1700000000124}"#)
            ],
            "each element verbatim"
        );
        let of = up.symbol_of();
        assert_eq!(of.id(r#"{"ev":"C","p":"GBP/USD"}"#), Some(1));
        assert_eq!(of.id(r#"{"ev":"C","p":"XAU/USD"}"#), None);
        let auth = up.provider.steps[0].expect.clone().unwrap();
        assert_eq!(
            read(
                &up,
                r#"[{"ev":"status","status":"auth_success","message":"authenticated"}]"#,
                Some(&auth)
            ),
            [Piece::Reply]
        );
        assert!(matches!(
            &read(&up, r#"[{"ev":"status","status":"auth_failed"}]"#, Some(&auth))[0],
            Piece::Refused { reason, .. } if reason.contains("did not accept the key")
        ));
    }

    #[test]
    fn positional_fields_and_lower_case_tickers() {
        let t = translator(
            parse_template(include_str!("../../providers/tiingo-fx.conf")).unwrap(),
            ClientFormat::Normalized,
        );
        let frame = r#"{"messageType":"A","service":"fx","data":["Q","eurusd","2019-07-05T15:49:15.157000+00:00",5.0,1.10972,1.109725,5.0,1.10973]}"#;
        assert_eq!(
            read(&t, frame, None),
            [quote(
                r#"{"symbol":"EURUSD","ts":"1562341755157","bid":1.10972,"ask":1.10973,"mid":1.109725}"#
            )]
        );
        assert_eq!(
            read(
                &t,
                r#"{"messageType":"H","response":{"code":200,"message":"HeartBeat"}}"#,
                None
            ),
            [Piece::Ignored]
        );
    }

    #[test]
    fn a_single_price_stands_in_for_a_missing_bid_and_ask() {
        let t = translator(
            parse_template(include_str!("../../providers/twelvedata.conf")).unwrap(),
            ClientFormat::Normalized,
        );
        assert_eq!(
            read(
                &t,
                r#"{"event":"price","symbol":"USD/JPY","timestamp":1700000000,"price":150.125}"#,
                None
            ),
            [quote(
                r#"{"symbol":"USDJPY","ts":"1700000000000","bid":150.125,"ask":150.125,"mid":150.125}"#
            )]
        );
    }
}
