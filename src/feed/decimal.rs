//! Prices as exact decimal numbers, as providers write them: read from JSON numbers or strings,
//! the mid halfway between bid and ask without rounding, written back as they came.

use serde_json::Value;
use std::fmt;

/// An exact decimal number, `digits` × 10^-`scale`, as prices are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    digits: i128,
    scale: u32,
}

/// Enough for any price; keeps every sum below i128's range.
const MAX_DIGITS: usize = 30;

impl Decimal {
    /// A JSON number, or a string holding one (TraderMade's newer feed quotes `"1.08612"`).
    pub fn of(value: &Value) -> Option<Decimal> {
        match value {
            Value::String(s) => Decimal::parse(s.trim()),
            Value::Number(n) => Decimal::parse(&n.to_string()),
            _ => None,
        }
    }

    /// `-12.345`, `1.5e-3`, `7`; nothing else.
    pub fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all = int.len() + frac.len();
        if int.is_empty()
            || all > MAX_DIGITS
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            || (mantissa.contains('.') && frac.is_empty())
        {
            return None;
        }
        let mut digits: i128 = format!("{int}{frac}").parse().ok()?;
        let mut scale = i32::try_from(frac.len()).ok()? - exponent;
        if scale < 0 {
            digits = digits.checked_mul(10i128.checked_pow(u32::try_from(-scale).ok()?)?)?;
            scale = 0;
        }
        let scale = u32::try_from(scale)
            .ok()
            .filter(|s| *s as usize <= MAX_DIGITS)?;
        Some(Decimal {
            digits: if negative { -digits } else { digits },
            scale,
        })
    }

    /// Halfway between `a` and `b`, exactly: one more decimal place when the sum is odd.
    /// `None` when that does not fit (an absurd price such as `1e38` beside `0.1`): checked
    /// arithmetic, never a wrapped mid nor a panic of the upstream thread.
    pub fn mid(a: Decimal, b: Decimal) -> Option<Decimal> {
        let scale = a.scale.max(b.scale);
        let up = |d: Decimal| d.digits.checked_mul(10i128.checked_pow(scale - d.scale)?);
        let sum = up(a)?.checked_add(up(b)?)?;
        if sum % 2 == 0 {
            Some(Decimal {
                digits: sum / 2,
                scale,
            })
        } else {
            Some(Decimal {
                digits: sum.checked_mul(5)?,
                scale: scale + 1,
            })
        }
    }

    /// This many units of 10^`exponent` milliseconds (3: seconds, 0: ms, -3: µs, -6: ns), in
    /// whole milliseconds, rounded down; `None` below zero.
    pub fn times_ten_to(self, exponent: i32) -> Option<u64> {
        let shift = exponent - i32::try_from(self.scale).ok()?;
        let value = if shift >= 0 {
            self.digits.checked_mul(10i128.checked_pow(shift as u32)?)?
        } else {
            self.digits / 10i128.checked_pow((-shift) as u32)?
        };
        u64::try_from(value).ok()
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.digits < 0 { "-" } else { "" };
        let abs = self.digits.unsigned_abs();
        if self.scale == 0 {
            return write!(f, "{sign}{abs}");
        }
        let pow = 10u128.pow(self.scale);
        let width = self.scale as usize;
        write!(f, "{sign}{}.{:0width$}", abs / pow, abs % pow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decimals_are_exact() {
        let d = |t: &str| Decimal::parse(t).unwrap();
        assert_eq!(d("1.08612").to_string(), "1.08612");
        assert_eq!(
            d("1.08610").to_string(),
            "1.08610",
            "the provider's precision stays"
        );
        assert_eq!(d("150").to_string(), "150");
        assert_eq!(d("-0.5").to_string(), "-0.5");
        assert_eq!(d("1.5e-3").to_string(), "0.0015");
        assert_eq!(d("2E2").to_string(), "200");
        assert_eq!(
            Decimal::mid(d("1.08612"), d("1.08614"))
                .unwrap()
                .to_string(),
            "1.08613"
        );
        assert_eq!(
            Decimal::mid(d("1.08612"), d("1.08615"))
                .unwrap()
                .to_string(),
            "1.086135"
        );
        assert_eq!(
            Decimal::mid(d("150.1"), d("150.125")).unwrap().to_string(),
            "150.1125"
        );
        assert_eq!(Decimal::mid(d("1e38"), d("0.1")), None);
        assert_eq!(Decimal::mid(d("1e38"), d("1e38")), None);
        for bad in [
            "",
            "-",
            "1.",
            ".5",
            "1.2.3",
            "abc",
            "1e",
            "0x10",
            "1 ",
            &"9".repeat(31),
        ] {
            assert!(Decimal::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(Decimal::of(&json!("1.25")), Decimal::of(&json!(1.25)));
        assert!(Decimal::of(&json!(true)).is_none());
    }
}
