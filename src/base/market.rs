//! When the market is open: the one market-hours rule behind the upstream's staleness check,
//! `/healthz`, `/metrics`, the quotes page and `fxproxy watch`. Pure functions of the time (epoch
//! milliseconds, UTC); no clock and no I/O here, so tests can ask about any moment.
//!
//! The rule is a set of closed intervals: under `market_hours = fx` the weekly one, Friday 22:00
//! to Sunday 21:00 UTC, and one per `market_closed_dates` entry (see [`closed_date_window`]).
//! The quotes page gets the same intervals as data ([`Market::rule_json`]) and runs the same
//! walk over them in its JavaScript, so the page does not carry a second copy of the rule.

use std::fmt;
use std::str::FromStr;

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;

/// The first weekly close after the epoch: Friday 1970-01-02 22:00 UTC (1970-01-01 was a
/// Thursday). Every weekly close is this plus a whole number of weeks.
const FIRST_WEEKLY_CLOSE: u64 = DAY + 22 * HOUR;
/// Friday 22:00 to Sunday 21:00.
const WEEKLY_CLOSED_FOR: u64 = 47 * HOUR;

/// When a silent feed counts as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarketHours {
    /// Sunday 21:00 to Friday 22:00 UTC.
    Fx,
    /// 24/7 feeds such as crypto.
    Always,
}

impl MarketHours {
    /// The name as written in `proxy.conf`.
    pub fn name(self) -> &'static str {
        match self {
            MarketHours::Fx => "fx",
            MarketHours::Always => "always",
        }
    }
}

/// A calendar date (UTC), from `market_closed_dates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Days since 1970-01-01.
    days: u64,
}

impl Date {
    /// The date of a moment (epoch milliseconds).
    pub fn of(ms: u64) -> Date {
        Date { days: ms / DAY }
    }

    /// Midnight UTC at the start of this date, in epoch milliseconds.
    pub fn start_ms(self) -> u64 {
        self.days * DAY
    }

    /// `(year, month, day)`, month and day from 1.
    pub fn ymd(self) -> (u64, u64, u64) {
        civil_from_days(self.days)
    }
}

impl FromStr for Date {
    type Err = ();

    /// `YYYY-MM-DD`, a real date from 1970-01-01 to 9999-12-31.
    fn from_str(s: &str) -> Result<Date, ()> {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| -> Option<u64> {
            let part = b.get(r)?;
            if !part.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(part).ok()?.parse().ok()
        };
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(());
        }
        let (y, m, d) = match (digits(0..4), digits(5..7), digits(8..10)) {
            (Some(y), Some(m), Some(d)) => (y, m, d),
            _ => return Err(()),
        };
        if y < 1970 || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
            return Err(());
        }
        Ok(Date {
            days: days_from_civil(y, m, d),
        })
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// Whether the market is open at a moment, and since or until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarketState {
    /// Open since `since_ms` (0: open at every moment the rule knows of).
    Open { since_ms: u64 },
    /// Closed since `since_ms`; opens at `opens_ms`.
    Closed { since_ms: u64, opens_ms: u64 },
}

impl MarketState {
    pub fn is_open(self) -> bool {
        matches!(self, MarketState::Open { .. })
    }
}

/// The market-hours rule: `market_hours` and `market_closed_dates` from `proxy.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Market {
    hours: MarketHours,
    dates: Vec<Date>,
    /// `[from, to)` in epoch ms, one per date, sorted by `from`.
    closed: Vec<(u64, u64)>,
}

/// The interval a closed date closes: from 21:00 UTC the evening before to 22:00 UTC on the
/// date. An FX trading day runs from 17:00 New York time to 17:00 New York time, which is
/// 21:00 or 22:00 UTC depending on daylight saving; a closed date keeps the market closed for
/// the whole of it either way. That also makes it join a weekend without a gap: a closed
/// Friday runs into the Friday 22:00 weekly close, a closed Monday starts at the Sunday 21:00
/// weekly open.
pub fn closed_date_window(date: Date) -> (u64, u64) {
    let midnight = date.start_ms();
    (midnight.saturating_sub(3 * HOUR), midnight + 22 * HOUR)
}

impl Market {
    pub fn new(hours: MarketHours, closed_dates: &[Date]) -> Market {
        let mut dates = closed_dates.to_vec();
        dates.sort();
        dates.dedup();
        let closed = dates.iter().map(|d| closed_date_window(*d)).collect();
        Market {
            hours,
            dates,
            closed,
        }
    }

    /// The standard FX rule with no closed dates: what `fxproxy watch` assumes when it cannot
    /// ask the proxy.
    pub fn fx() -> Market {
        Market::new(MarketHours::Fx, &[])
    }

    pub fn hours(&self) -> MarketHours {
        self.hours
    }

    pub fn closed_dates(&self) -> &[Date] {
        &self.dates
    }

    pub fn is_open(&self, now_ms: u64) -> bool {
        self.state(now_ms).is_open()
    }

    /// Open or closed at `now_ms`, and since and until when.
    pub fn state(&self, now_ms: u64) -> MarketState {
        if self.covering(now_ms).next().is_none() {
            return MarketState::Open {
                since_ms: self.last_opening(now_ms),
            };
        }
        // Closures may touch or overlap (a closed Friday and the weekend): walk to the ends of
        // the whole closed stretch.
        let mut since = now_ms;
        while let Some(from) = since
            .checked_sub(1)
            .and_then(|t| self.covering(t).map(|(from, _)| from).min())
        {
            since = from;
        }
        let mut opens = now_ms;
        while let Some(to) = self.covering(opens).map(|(_, to)| to).max() {
            opens = to;
        }
        MarketState::Closed {
            since_ms: since,
            opens_ms: opens,
        }
    }

    /// The closed intervals `[from, to)` that contain `t`.
    fn covering(&self, t: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let weekly = self
            .weekly_at(t)
            .filter(|(from, to)| (*from..*to).contains(&t));
        let dated = self
            .closed
            .iter()
            .copied()
            .take_while(move |(from, _)| *from <= t)
            .filter(move |(_, to)| t < *to);
        weekly.into_iter().chain(dated)
    }

    /// The weekly closure that starts at or before `t` most recently, if the rule has one.
    fn weekly_at(&self, t: u64) -> Option<(u64, u64)> {
        match self.hours {
            MarketHours::Always => None,
            // The closure a week before the first one ended before the epoch.
            MarketHours::Fx if t < FIRST_WEEKLY_CLOSE => None,
            MarketHours::Fx => {
                let from = t - (t - FIRST_WEEKLY_CLOSE) % WEEK;
                Some((from, from + WEEKLY_CLOSED_FOR))
            }
        }
    }

    /// The end of the latest closure at or before `t` (0 if none): when an open market opened.
    fn last_opening(&self, t: u64) -> u64 {
        let weekly = self
            .weekly_at(t)
            .map(|(_, to)| if to <= t { to } else { to.saturating_sub(WEEK) })
            .unwrap_or(0);
        let dated = self
            .closed
            .iter()
            .map(|(_, to)| *to)
            .filter(|to| *to <= t)
            .max()
            .unwrap_or(0);
        weekly.max(dated)
    }

    /// The rule as data for the quotes page: the weekly closure as its first occurrence and
    /// length (it repeats every week), and each closed date's interval, all epoch ms. The
    /// page's script walks these exactly as [`Market::state`] does.
    pub fn rule_json(&self) -> String {
        let weekly = match self.hours {
            MarketHours::Fx => format!("[{FIRST_WEEKLY_CLOSE},{WEEKLY_CLOSED_FOR}]"),
            MarketHours::Always => "null".to_string(),
        };
        let closed: Vec<String> = self
            .closed
            .iter()
            .map(|(from, to)| format!("[{from},{to}]"))
            .collect();
        let dates: Vec<String> = self.dates.iter().map(|d| format!("\"{d}\"")).collect();
        format!(
            "{{\"market_hours\":\"{}\",\"closed_dates\":[{}],\"week_ms\":{WEEK},\"weekly\":{weekly},\"closed\":[{}]}}",
            self.hours.name(),
            dates.join(","),
            closed.join(",")
        )
    }
}

/// `2026-12-06T21:00:00Z`: a moment as ISO 8601 in UTC, to the second.
pub fn iso_utc(ms: u64) -> String {
    let (y, mo, d) = Date::of(ms).ymd();
    let in_day = ms % DAY;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        in_day / HOUR,
        in_day % HOUR / MINUTE,
        in_day % MINUTE / 1000
    )
}

/// A moment for a person, seen from `now_ms`: `Sun 21:00 UTC` when it is less than six days
/// away (the weekday alone is then unambiguous), `Sun 3 Jan 21:00 UTC` otherwise. The quotes
/// page writes it the same way.
pub fn human_utc(ms: u64, now_ms: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let date = Date::of(ms);
    let weekday = WEEKDAYS[(date.days % 7) as usize];
    let in_day = ms % DAY;
    let time = format!("{:02}:{:02}", in_day / HOUR, in_day % HOUR / MINUTE);
    if ms.abs_diff(now_ms) < 6 * DAY {
        format!("{weekday} {time} UTC")
    } else {
        let (_, m, d) = date.ymd();
        format!("{weekday} {d} {} {time} UTC", MONTHS[(m - 1) as usize])
    }
}

fn is_leap(y: u64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date from 1970 on (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let (era, yoe) = (y / 400, y % 400);
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01 as `(year, month, day)` (Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Epoch ms of `YYYY-MM-DD HH:MM` UTC: the moments tests set their clocks to.
#[cfg(test)]
pub(crate) fn utc_ms(date: &str, hh: u64, mm: u64) -> u64 {
    let day: Date = date.parse().expect("a YYYY-MM-DD date");
    day.start_ms() + hh * HOUR + mm * MINUTE
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::utc_ms as at;

    fn closed(since: u64, opens: u64) -> MarketState {
        MarketState::Closed {
            since_ms: since,
            opens_ms: opens,
        }
    }

    fn open(since: u64) -> MarketState {
        MarketState::Open { since_ms: since }
    }

    #[test]
    fn dates_parse_and_print() {
        for s in [
            "1970-01-01",
            "2024-02-29",
            "2026-12-25",
            "2027-01-01",
            "2100-02-28",
            "9999-12-31",
        ] {
            assert_eq!(s.parse::<Date>().unwrap().to_string(), s);
        }
        assert_eq!("1970-01-02".parse::<Date>().unwrap().start_ms(), DAY);
        assert_eq!(
            "2026-12-25".parse::<Date>().unwrap().start_ms(),
            1_798_156_800_000
        );
        for bad in [
            "",
            "2026-12-5",
            "2026-13-01",
            "2026-00-10",
            "2026-02-29",
            "2100-02-29",
            "2026-04-31",
            "1969-12-31",
            "2026/12/25",
            "+026-12-25",
            "2026-12-25T00",
            "25-12-2026",
        ] {
            assert!(bad.parse::<Date>().is_err(), "{bad:?} should not parse");
        }
        // Every day of four centuries survives the round trip.
        let mut d = "1970-01-01".parse::<Date>().unwrap();
        for _ in 0..146_097 {
            assert_eq!(d.to_string().parse::<Date>(), Ok(d));
            d.days += 1;
        }
    }

    #[test]
    fn the_fx_week() {
        let m = Market::fx();
        // 2026-12-04 is a Friday.
        let fri_close = at("2026-12-04", 22, 0);
        let sun_open = at("2026-12-06", 21, 0);
        let last_open = at("2026-11-29", 21, 0);
        assert_eq!(m.state(at("2026-12-04", 21, 59)), open(last_open));
        assert_eq!(m.state(fri_close - 1), open(last_open));
        assert_eq!(m.state(fri_close), closed(fri_close, sun_open));
        assert_eq!(
            m.state(at("2026-12-04", 22, 1)),
            closed(fri_close, sun_open)
        );
        assert_eq!(
            m.state(at("2026-12-05", 12, 0)),
            closed(fri_close, sun_open)
        );
        assert_eq!(
            m.state(at("2026-12-06", 20, 59)),
            closed(fri_close, sun_open)
        );
        assert_eq!(m.state(sun_open - 1), closed(fri_close, sun_open));
        assert_eq!(m.state(sun_open), open(sun_open));
        assert_eq!(m.state(at("2026-12-06", 21, 1)), open(sun_open));
        assert_eq!(m.state(at("2026-12-09", 3, 0)), open(sun_open));
        assert_eq!(MarketHours::Fx.name(), "fx");
        // The epoch's own first days, before the first weekly close.
        assert_eq!(m.state(0), open(0));
        assert_eq!(m.state(FIRST_WEEKLY_CLOSE - 1), open(0));
        assert_eq!(
            m.state(FIRST_WEEKLY_CLOSE),
            closed(FIRST_WEEKLY_CLOSE, FIRST_WEEKLY_CLOSE + WEEKLY_CLOSED_FOR)
        );
    }

    #[test]
    fn always_is_always_open_but_for_closed_dates() {
        let m = Market::new(MarketHours::Always, &[]);
        for t in [0, at("2026-12-05", 12, 0), at("2026-12-06", 20, 59)] {
            assert_eq!(m.state(t), open(0));
        }
        let date = "2026-12-25".parse().unwrap();
        let m = Market::new(MarketHours::Always, &[date]);
        assert_eq!(
            m.state(at("2026-12-25", 12, 0)),
            closed(at("2026-12-24", 21, 0), at("2026-12-25", 22, 0))
        );
        assert_eq!(
            m.state(at("2026-12-26", 12, 0)),
            open(at("2026-12-25", 22, 0))
        );
        assert_eq!(m.state(at("2026-12-24", 20, 59)), open(0));
    }

    #[test]
    fn a_closed_date_runs_from_21_the_evening_before_to_22_on_the_day() {
        // 2026-12-30 is a Wednesday.
        let m = Market::new(MarketHours::Fx, &["2026-12-30".parse().unwrap()]);
        let from = at("2026-12-29", 21, 0);
        let to = at("2026-12-30", 22, 0);
        assert_eq!(m.state(from - 1), open(at("2026-12-27", 21, 0)));
        assert_eq!(m.state(from), closed(from, to));
        assert_eq!(m.state(at("2026-12-30", 12, 0)), closed(from, to));
        assert_eq!(m.state(to - 1), closed(from, to));
        assert_eq!(m.state(to), open(to));
        assert_eq!(m.state(at("2026-12-31", 9, 0)), open(to));
    }

    #[test]
    fn closed_dates_next_to_a_weekend_join_it() {
        // 2026-12-25 and 2027-01-01 are Fridays; 2029-01-01 is a Monday.
        let dates: Vec<Date> = ["2027-01-01", "2026-12-25", "2029-01-01", "2026-12-25"]
            .iter()
            .map(|d| d.parse().unwrap())
            .collect();
        let m = Market::new(MarketHours::Fx, &dates);
        assert_eq!(m.closed_dates().len(), 3, "sorted, duplicates dropped");
        let christmas = closed(at("2026-12-24", 21, 0), at("2026-12-27", 21, 0));
        for t in [
            at("2026-12-24", 21, 0),
            at("2026-12-25", 12, 0),
            at("2026-12-25", 22, 0),
            at("2026-12-26", 12, 0),
        ] {
            assert_eq!(m.state(t), christmas);
        }
        assert_eq!(
            m.state(at("2026-12-28", 8, 0)),
            open(at("2026-12-27", 21, 0))
        );
        let monday = closed(at("2028-12-29", 22, 0), at("2029-01-01", 22, 0));
        assert_eq!(m.state(at("2028-12-30", 0, 0)), monday);
        assert_eq!(m.state(at("2028-12-31", 21, 30)), monday);
        assert_eq!(m.state(at("2029-01-01", 21, 59)), monday);
        assert_eq!(
            m.state(at("2029-01-01", 22, 0)),
            open(at("2029-01-01", 22, 0))
        );
        // Two dates in a row make one closure.
        let two: Vec<Date> = ["2026-12-30", "2026-12-31"]
            .iter()
            .map(|d| d.parse().unwrap())
            .collect();
        assert_eq!(
            Market::new(MarketHours::Fx, &two).state(at("2026-12-30", 23, 0)),
            closed(at("2026-12-29", 21, 0), at("2026-12-31", 22, 0))
        );
    }

    #[test]
    fn a_sweep_agrees_with_the_plain_weekday_rule() {
        // The old rule, written the obvious way: weekday 0 is Sunday.
        let plain = |t: u64| {
            let weekday = (t / DAY + 4) % 7;
            let into_week = weekday * DAY + t % DAY;
            (21 * HOUR..5 * DAY + 22 * HOUR).contains(&into_week)
        };
        let m = Market::fx();
        let start = at("2026-01-01", 0, 0);
        for step in 0..(2 * 366 * 24 * 4) {
            let t = start + step * 15 * MINUTE + 7;
            assert_eq!(m.is_open(t), plain(t), "{}", iso_utc(t));
        }
    }

    #[test]
    fn moments_are_written_for_machines_and_people() {
        let t = at("2026-12-06", 21, 0);
        assert_eq!(iso_utc(t), "2026-12-06T21:00:00Z");
        assert_eq!(iso_utc(t + 59_999), "2026-12-06T21:00:59Z");
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(human_utc(t, at("2026-12-05", 12, 0)), "Sun 21:00 UTC");
        assert_eq!(human_utc(t, at("2026-11-30", 22, 0)), "Sun 21:00 UTC");
        assert_eq!(human_utc(t, at("2026-11-30", 20, 0)), "Sun 6 Dec 21:00 UTC");
        assert_eq!(
            human_utc(at("2027-01-03", 21, 0), at("2026-12-24", 22, 0)),
            "Sun 3 Jan 21:00 UTC"
        );
        assert_eq!(human_utc(at("2026-12-25", 9, 5), t), "Fri 25 Dec 09:05 UTC");
    }

    #[test]
    fn the_rule_as_data() {
        let m = Market::new(MarketHours::Fx, &["2026-12-25".parse().unwrap()]);
        let json: serde_json::Value = serde_json::from_str(&m.rule_json()).unwrap();
        assert_eq!(json["market_hours"], "fx");
        assert_eq!(json["closed_dates"], serde_json::json!(["2026-12-25"]));
        assert_eq!(json["week_ms"], WEEK);
        assert_eq!(
            json["weekly"],
            serde_json::json!([FIRST_WEEKLY_CLOSE, WEEKLY_CLOSED_FOR])
        );
        assert_eq!(
            json["closed"],
            serde_json::json!([[at("2026-12-24", 21, 0), at("2026-12-25", 22, 0)]])
        );
        let always: serde_json::Value =
            serde_json::from_str(&Market::new(MarketHours::Always, &[]).rule_json()).unwrap();
        assert_eq!(always["weekly"], serde_json::Value::Null);
        assert_eq!(always["closed"], serde_json::json!([]));
    }
}
