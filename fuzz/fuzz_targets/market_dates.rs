//! `market_closed_dates`: a date as `Date::from_str` reads it (src/base/market.rs), and a whole
//! list as `proxy.conf` gives it.
//!
//! Properties: a date that parses is written back exactly as it was given (`YYYY-MM-DD`, so
//! the reading is unambiguous) and is the date of its own midnight; its closed window runs
//! from 21:00 the evening before to 22:00 on the date; the market is closed in that window
//! and says when it opens, after the moment asked about; a list in the config comes out
//! sorted and unique, and the rule the page gets is JSON with one interval per date.

#![no_main]

use fxproxy::config::parse;
use fxproxy::market::{closed_date_window, Date, Market, MarketHours, MarketState};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const HOUR: u64 = 3_600_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(date) = text.parse::<Date>() {
        assert_eq!(date.to_string(), text);
        assert_eq!(Date::of(date.start_ms()), date);
        let (from, to) = closed_date_window(date);
        assert_eq!(to, date.start_ms() + 22 * HOUR);
        assert_eq!(from, date.start_ms().saturating_sub(3 * HOUR));
        for hours in [MarketHours::Fx, MarketHours::Always] {
            let market = Market::new(hours, &[date]);
            for at in [from, (from + to) / 2, to - 1] {
                match market.state(at) {
                    MarketState::Closed { since_ms, opens_ms } => {
                        assert!(
                            since_ms <= at && at < opens_ms && opens_ms >= to,
                            "{text} at {at}"
                        )
                    }
                    MarketState::Open { .. } => panic!("{text}: open at {at}, inside its window"),
                }
            }
        }
    }
    if text.contains(['\n', '\r', '#']) {
        return;
    }
    // A provider's upstream, not `sim`: the simulated source's market is always open,
    // whatever `market_closed_dates` says (nothing is connected to it here).
    let conf = format!(
        "upstream_url = ws://127.0.0.1:9/feed\nsymbols = EURUSD\nuser_keys_file = k\n\
         market_closed_dates = {text}\n"
    );
    if let Ok(c) = parse(&conf, Path::new("proxy.conf")) {
        let dates = &c.market_closed_dates;
        assert!(dates.windows(2).all(|w| w[0] < w[1]));
        for d in dates {
            assert!(text.contains(&d.to_string()), "{d} not in {text:?}");
        }
        let rule: serde_json::Value = serde_json::from_str(&c.market().rule_json()).unwrap();
        let closed = rule["closed"].as_array().expect("closed intervals");
        assert_eq!(closed.len(), dates.len());
    }
});
