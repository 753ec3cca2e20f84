//! Time parsing and formatting shared by filters, reports and dumps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Current time in Unix nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Parse a relative duration such as `30s`, `30m`, `2h`, `7d`, `1w`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" | "sec" | "secs" => n,
        "m" | "min" | "mins" => n.checked_mul(60)?,
        "h" | "hr" | "hrs" => n.checked_mul(3600)?,
        "d" | "day" | "days" => n.checked_mul(86_400)?,
        "w" | "week" | "weeks" => n.checked_mul(7 * 86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Parse a point in time: a relative duration back from `now_ns` (`2h`), `now`, or RFC 3339.
pub fn parse_time(s: &str, now_ns: u64) -> Result<u64, String> {
    let t = s.trim();
    if t == "now" {
        return Ok(now_ns);
    }
    if let Some(d) = parse_duration(t) {
        return Ok(now_ns.saturating_sub(d.as_nanos() as u64));
    }
    match OffsetDateTime::parse(t, &Rfc3339) {
        Ok(dt) => {
            let n = dt.unix_timestamp_nanos();
            if n < 0 {
                Err(format!("time {t:?} is before 1970"))
            } else {
                Ok(u64::try_from(n).unwrap_or(u64::MAX))
            }
        }
        Err(_) => Err(format!(
            "bad time {t:?}: use a duration back from now (30m, 2h, 7d) or RFC 3339 \
             (2026-11-25T18:00:00Z)"
        )),
    }
}

fn to_dt(ns: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 with the precision the value has (nanoseconds when not whole).
pub fn rfc3339(ns: u64) -> String {
    to_dt(ns)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// RFC 3339 to the second, as CloudTrail writes `eventTime`.
pub fn rfc3339_secs(ns: u64) -> String {
    let dt = to_dt(ns);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// Compact UTC stamp for file names: `20261125T180000Z`.
pub fn compact(ns: u64) -> String {
    let dt = to_dt(ns);
    let frac = ns % 1_000_000_000;
    let frac = if frac == 0 {
        String::new()
    } else {
        format!(".{frac:09}")
    };
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}{frac}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// Inverse of [`compact`].
pub fn parse_compact(s: &str) -> Option<u64> {
    let b = s.strip_suffix('Z')?;
    let (main, frac) = b.split_once('.').unwrap_or((b, ""));
    if main.len() != 15 || main.as_bytes()[8] != b'T' {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &main[..4],
        &main[4..6],
        &main[6..8],
        &main[9..11],
        &main[11..13],
        &main[13..15]
    );
    let secs = OffsetDateTime::parse(&rfc, &Rfc3339)
        .ok()?
        .unix_timestamp_nanos();
    let frac: u64 = if frac.is_empty() {
        0
    } else if frac.len() == 9 {
        frac.parse().ok()?
    } else {
        return None;
    };
    u64::try_from(secs).ok()?.checked_add(frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_relative_and_absolute() {
        let now = 10_000 * 1_000_000_000u64;
        assert_eq!(parse_time("30m", now), Ok(now - 1800 * 1_000_000_000));
        assert_eq!(parse_time("2h", now), Ok(now - 7200 * 1_000_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z", now), Ok(1_000_000_000));
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("5x", now).is_err());
        assert!(parse_time("99999999999999999999d", now).is_err());
        assert_eq!(rfc3339_secs(1_000_000_000), "1970-01-01T00:00:01Z");
        assert_eq!(compact(0), "19700101T000000Z");
        let t = 1_795_000_000_123_456_789;
        assert_eq!(compact(t), "20261118T110640.123456789Z");
        assert_eq!(parse_compact(&compact(t)), Some(t));
        assert_eq!(
            parse_compact("20261118T110640Z"),
            Some(1_795_000_000_000_000_000)
        );
        assert_eq!(parse_compact("2026-10-20"), None);
    }
}
