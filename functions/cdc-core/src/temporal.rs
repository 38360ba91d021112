//! Debezium's integer temporal encodings as Snowflake-castable text, with the date
//! arithmetic done here (proleptic Gregorian calendar, no time zones).

use std::fmt::Write as _;

/// Sub-second unit of an integer time or timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Milli,
    Micro,
    Nano,
}

impl Unit {
    /// Units per second.
    pub fn per_second(self) -> i64 {
        match self {
            Unit::Milli => 1_000,
            Unit::Micro => 1_000_000,
            Unit::Nano => 1_000_000_000,
        }
    }

    /// Fractional digits (Snowflake's time/timestamp precision).
    pub fn digits(self) -> u8 {
        match self {
            Unit::Milli => 3,
            Unit::Micro => 6,
            Unit::Nano => 9,
        }
    }
}

/// Years Snowflake accepts in DATE/TIMESTAMP text.
const MIN_YEAR: i64 = 1;
const MAX_YEAR: i64 = 9999;

/// Checks a `ZonedTimestamp` (ISO-8601 text, e.g. `2024-03-15T08:20:30.123456Z`) is one
/// Snowflake's `TIMESTAMP_TZ` holds: PostgreSQL's `infinity` and `-infinity`, a year
/// outside 1-9999 or text that is not such a timestamp is an error of its row (loaded
/// as is, it would make the warehouse refuse the whole table's batch).
pub fn check_zoned_timestamp(s: &str) -> Result<(), String> {
    if s.eq_ignore_ascii_case("infinity") || s.eq_ignore_ascii_case("-infinity") {
        return Err(format!(
            "timestamp '{s}' (PostgreSQL's {s}) has no Snowflake TIMESTAMP_TZ value"
        ));
    }
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shaped = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b' ')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let rest = s.get(19..).unwrap_or_default();
    let fraction = rest
        .strip_prefix('.')
        .map_or(0, |r| r.bytes().take_while(u8::is_ascii_digit).count());
    let zone = if fraction > 0 {
        &rest[1 + fraction..]
    } else {
        rest
    };
    let zone_ok = zone == "Z"
        || (zone.len() == 6
            && matches!(zone.as_bytes()[0], b'+' | b'-')
            && zone.as_bytes()[3] == b':'
            && zone[1..3]
                .bytes()
                .chain(zone[4..].bytes())
                .all(|d| d.is_ascii_digit()));
    if !shaped || fraction > 9 || !zone_ok {
        return Err(format!(
            "timestamp {:?} is not an ISO-8601 timestamp with a zone",
            s.chars().take(40).collect::<String>()
        ));
    }
    let year: i64 = s[..4].parse().unwrap_or(0);
    if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
        return Err(format!(
            "timestamp {s} is outside years {MIN_YEAR}-{MAX_YEAR}"
        ));
    }
    Ok(())
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD` for days since the epoch (`io.debezium.time.Date`).
pub fn format_date(days: i64) -> Result<String, String> {
    let mut out = String::with_capacity(10);
    push_date(&mut out, days)?;
    Ok(out)
}

fn push_date(out: &mut String, days: i64) -> Result<(), String> {
    // Bound first so the arithmetic below cannot overflow.
    if !(-800_000..=3_000_000).contains(&days) {
        return Err(format!(
            "date {days} days from the epoch is outside years {MIN_YEAR}-{MAX_YEAR}"
        ));
    }
    let (y, m, d) = civil_from_days(days);
    if !(MIN_YEAR..=MAX_YEAR).contains(&y) {
        return Err(format!(
            "date {y:04}-{m:02}-{d:02} is outside years {MIN_YEAR}-{MAX_YEAR}"
        ));
    }
    write!(out, "{y:04}-{m:02}-{d:02}").expect("writing to a String");
    Ok(())
}

fn push_time_of_day(out: &mut String, since_midnight: i64, unit: Unit) {
    let per_s = unit.per_second();
    let secs = since_midnight / per_s;
    let frac = since_midnight % per_s;
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let width = usize::from(unit.digits());
    write!(out, "{h:02}:{mi:02}:{s:02}.{frac:0width$}").expect("writing to a String");
}

/// `HH:MM:SS.fff[fff[fff]]` for a time since midnight (`Time`, `MicroTime`,
/// `NanoTime`). Rejects values outside one day (PostgreSQL's `24:00:00` included:
/// Snowflake's TIME cannot hold it).
pub fn format_time(since_midnight: i64, unit: Unit) -> Result<String, String> {
    let day = 86_400 * unit.per_second();
    if !(0..day).contains(&since_midnight) {
        return Err(format!(
            "time of day {since_midnight} is outside 00:00:00-23:59:59.999999999"
        ));
    }
    let mut out = String::with_capacity(18);
    push_time_of_day(&mut out, since_midnight, unit);
    Ok(out)
}

/// `YYYY-MM-DD HH:MM:SS.fff[fff[fff]]` for a time since the epoch, no zone
/// (`Timestamp`, `MicroTimestamp`, `NanoTimestamp`).
pub fn format_timestamp(since_epoch: i64, unit: Unit) -> Result<String, String> {
    let per_day = 86_400 * unit.per_second();
    let days = since_epoch.div_euclid(per_day);
    let rem = since_epoch.rem_euclid(per_day);
    let mut out = String::with_capacity(29);
    push_date(&mut out, days)?;
    out.push(' ');
    push_time_of_day(&mut out, rem, unit);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoned_timestamps_snowflake_holds() {
        for ok in [
            "2024-03-15T08:20:30.123456Z",
            "2024-03-15T08:20:30Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999+05:30",
        ] {
            check_zoned_timestamp(ok).unwrap();
        }
        for bad in [
            "infinity",
            "-infinity",
            "+10000-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2024-03-15",
            "2024-03-15T08:20:30.1234567890Z",
            "2024-03-15T08:20:30+0530",
            "yesterday",
        ] {
            assert!(check_zoned_timestamp(bad).is_err(), "{bad}");
        }
        assert!(
            check_zoned_timestamp("infinity")
                .unwrap_err()
                .contains("infinity")
        );
    }

    #[test]
    fn dates() {
        assert_eq!(format_date(0).unwrap(), "1970-01-01");
        assert_eq!(format_date(19797).unwrap(), "2024-03-15");
        assert_eq!(format_date(-1).unwrap(), "1969-12-31");
        assert_eq!(format_date(11016).unwrap(), "2000-02-29");
        assert_eq!(format_date(-719_162).unwrap(), "0001-01-01");
        assert_eq!(format_date(2_932_896).unwrap(), "9999-12-31");
        assert!(format_date(-719_163).is_err());
        assert!(format_date(2_932_897).is_err());
        assert!(format_date(i64::from(i32::MAX)).is_err());
        assert!(format_date(i64::MIN).is_err());
    }

    #[test]
    fn civil_matches_a_day_by_day_walk() {
        // Walk forward from 1969-01-01 through 2101 checking every day.
        let (mut y, mut m, mut d) = (1969i64, 1u32, 1u32);
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for days in -365..48_000 {
            assert_eq!(civil_from_days(days), (y, m, d), "{days}");
            let len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn times() {
        assert_eq!(
            format_time(49_500_500_000, Unit::Micro).unwrap(),
            "13:45:00.500000"
        );
        assert_eq!(format_time(0, Unit::Micro).unwrap(), "00:00:00.000000");
        assert_eq!(
            format_time(86_399_999, Unit::Milli).unwrap(),
            "23:59:59.999"
        );
        assert_eq!(format_time(1, Unit::Nano).unwrap(), "00:00:00.000000001");
        assert!(format_time(86_400_000_000, Unit::Micro).is_err());
        assert!(format_time(-1, Unit::Micro).is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            format_timestamp(1_710_498_030_123_456, Unit::Micro).unwrap(),
            "2024-03-15 10:20:30.123456"
        );
        assert_eq!(
            format_timestamp(-1, Unit::Micro).unwrap(),
            "1969-12-31 23:59:59.999999"
        );
        assert_eq!(
            format_timestamp(-1, Unit::Milli).unwrap(),
            "1969-12-31 23:59:59.999"
        );
        assert_eq!(
            format_timestamp(0, Unit::Nano).unwrap(),
            "1970-01-01 00:00:00.000000000"
        );
        assert_eq!(
            format_timestamp(1_710_498_030_123_456_789, Unit::Nano).unwrap(),
            "2024-03-15 10:20:30.123456789"
        );
        // PostgreSQL 'infinity' arrives as an extreme value: reported, not formatted.
        assert!(format_timestamp(i64::MAX, Unit::Micro).is_err());
        assert!(format_timestamp(i64::MIN, Unit::Milli).is_err());
    }
}
