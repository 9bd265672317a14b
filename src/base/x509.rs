//! The one field fxproxy reads from a certificate itself: when it lapses (`notAfter`), for the
//! expiry gauge in `/metrics` and the log. rustls and webpki parse and check the rest; nothing
//! in the build exposes this field, and a walk down the DER to it is a few lines.
//!
//! Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber
//! INTEGER, signature SEQUENCE, issuer SEQUENCE, validity SEQUENCE { notBefore Time, notAfter
//! Time }, ... }, ... } (RFC 5280 §4.1), Time being UTCTime or GeneralizedTime.

use crate::base::market::Date;

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// When the certificate (DER) stops being valid, in milliseconds since the Unix epoch; `None`
/// if it is not a certificate this walk understands, or lapses before 1970.
pub fn not_after_ms(der: &[u8]) -> Option<u64> {
    let (certificate, _) = element(der, SEQUENCE)?;
    let (tbs, _) = element(certificate, SEQUENCE)?;
    let rest = match element(tbs, VERSION) {
        Some((_, rest)) => rest,
        None => tbs,
    };
    let (_, rest) = element(rest, INTEGER)?; // serialNumber
    let (_, rest) = element(rest, SEQUENCE)?; // signature
    let (_, rest) = element(rest, SEQUENCE)?; // issuer
    let (validity, _) = element(rest, SEQUENCE)?;
    let (_, after) = any(validity)?; // notBefore
    let (tag, time, _) = any_tagged(after)?;
    time_ms(tag, time)
}

/// The contents of the element at the start of `der` if its tag is `tag`, and what follows it.
fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = any_tagged(der)?;
    (found == tag).then_some((contents, rest))
}

fn any(der: &[u8]) -> Option<(&[u8], &[u8])> {
    any_tagged(der).map(|(_, contents, rest)| (contents, rest))
}

/// Tag, contents and what follows, for the element at the start of `der` (single-byte tags,
/// definite lengths: all DER has).
fn any_tagged(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `YYMMDDHHMMSSZ` (UTCTime: 50–99 are 19xx) or `YYYYMMDDHHMMSSZ` (GeneralizedTime).
fn time_ms(tag: u8, text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy: u64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| rest[r].parse::<u64>().ok();
    let date: Date = format!("{year:04}-{}-{}", &rest[0..2], &rest[2..4])
        .parse()
        .ok()?;
    let (h, m, s) = (num(4..6)?, num(6..8)?, num(8..10)?);
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(date.start_ms() + ((h * 60 + m) * 60 + s) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_lapsing(y: i32, m: u8, d: u8) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_not_after_in_either_time_format() {
        // rcgen writes UTCTime up to 2049 and GeneralizedTime from 2050, as RFC 5280 asks.
        let ms = not_after_ms(&cert_lapsing(2031, 7, 14)).unwrap();
        assert_eq!(crate::base::market::iso_utc(ms), "2031-07-14T00:00:00Z");
        let ms = not_after_ms(&cert_lapsing(2061, 2, 28)).unwrap();
        assert_eq!(crate::base::market::iso_utc(ms), "2061-02-28T00:00:00Z");
    }

    #[test]
    fn times_as_written() {
        let at = |tag, t: &str| time_ms(tag, t.as_bytes()).map(crate::base::market::iso_utc);
        assert_eq!(
            at(UTC_TIME, "260315120509Z").as_deref(),
            Some("2026-03-15T12:05:09Z")
        );
        assert_eq!(
            at(UTC_TIME, "991231235959Z").as_deref(),
            Some("1999-12-31T23:59:59Z")
        );
        assert_eq!(
            at(GENERALIZED_TIME, "20500101000000Z").as_deref(),
            Some("2050-01-01T00:00:00Z")
        );
        assert_eq!(at(UTC_TIME, "260315120509+0100"), None);
        assert_eq!(at(UTC_TIME, "261315120509Z"), None);
        assert_eq!(at(GENERALIZED_TIME, "260315120509Z"), None);
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(not_after_ms(b""), None);
        assert_eq!(not_after_ms(b"\x30\x82\xff\xff"), None);
        let der = cert_lapsing(2031, 7, 14);
        assert_eq!(not_after_ms(&der[..der.len() / 2]), None);
    }
}
