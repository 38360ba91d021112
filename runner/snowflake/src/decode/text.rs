//! The canonical text forms, and parsers for Snowflake's JSON rowset encodings.

use std::fmt::Write as _;

const NANOS_PER_SEC: i128 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// `unscaled / 10^scale` as plain decimal text with exactly `scale` fraction digits.
pub(crate) fn format_decimal(unscaled: i128, scale: u32) -> String {
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let scale = scale as usize;
    let padded = if digits.len() <= scale {
        format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
    } else {
        digits
    };
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// Re-expresses `value` (in units of `10^-from`) in units of `10^-to`, if exact and in range.
pub(crate) fn rescale(value: i128, from: i32, to: i32) -> Option<i128> {
    if to >= from {
        value.checked_mul(10i128.checked_pow((to - from) as u32)?)
    } else {
        let divisor = 10i128.checked_pow((from - to) as u32)?;
        (value % divisor == 0).then(|| value / divisor)
    }
}

/// Formats a FIXED value held as `unscaled` in units of `10^-encoded_scale`, with `scale`
/// fraction digits (or the encoded scale when that would lose digits).
pub(crate) fn format_fixed(unscaled: i128, encoded_scale: i32, scale: u32) -> String {
    match rescale(unscaled, encoded_scale, scale as i32) {
        Some(v) => format_decimal(v, scale),
        None if encoded_scale >= 0 => format_decimal(unscaled, encoded_scale as u32),
        // A negative encoded scale that overflows i128 cannot come from Snowflake (38 digits).
        None => format_decimal(unscaled, 0),
    }
}

/// Normalises decimal text (`-12.5`, `+3`, `007.10`) to exactly `scale` fraction digits.
///
/// Extra non-zero fraction digits are kept rather than rounded away. `None` if not a plain
/// decimal number.
pub(crate) fn normalize_decimal_text(text: &str, scale: u32) -> Option<String> {
    let text = text.trim();
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let mut frac = frac.to_owned();
    let scale = scale as usize;
    if frac.len() < scale {
        frac.extend(std::iter::repeat_n('0', scale - frac.len()));
    } else {
        while frac.len() > scale && frac.ends_with('0') {
            frac.pop();
        }
    }
    let zero = int == "0" && frac.bytes().all(|b| b == b'0');
    let sign = if negative && !zero { "-" } else { "" };
    Some(if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

/// The shortest round-trip text of a float (`1.5`, `1`, `0.1`, `inf`, `NaN`), in
/// exponent form outside [1e-5, 1e16) as Snowflake writes them (`-1.5e-300`, `1e20`),
/// instead of hundreds of zeros.
pub(crate) fn format_real(value: f64) -> String {
    let abs = value.abs();
    if value.is_finite() && abs != 0.0 && !(1e-5..1e16).contains(&abs) {
        format!("{value:e}")
    } else {
        value.to_string()
    }
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD` of a day count since 1970-01-01.
pub(crate) fn format_date(days: i64) -> String {
    let (year, month, day) = civil_from_days(days);
    if year < 0 {
        format!("-{:04}-{month:02}-{day:02}", -year)
    } else {
        format!("{year:04}-{month:02}-{day:02}")
    }
}

/// `.` and the first `scale` digits of `nanos`, or nothing for scale 0.
fn push_fraction(out: &mut String, nanos: u32, scale: u32) {
    let scale = scale.min(9) as usize;
    if scale > 0 {
        let digits = format!("{nanos:09}");
        out.push('.');
        out.push_str(&digits[..scale]);
    }
}

/// `HH:MM:SS[.fff]` of nanoseconds since midnight, with `scale` fraction digits.
pub(crate) fn format_time(nanos_of_day: i128, scale: u32) -> String {
    let nanos_of_day = nanos_of_day.rem_euclid(SECS_PER_DAY as i128 * NANOS_PER_SEC);
    let secs = (nanos_of_day / NANOS_PER_SEC) as i64;
    let nanos = (nanos_of_day % NANOS_PER_SEC) as u32;
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    push_fraction(&mut out, nanos, scale);
    out
}

/// `YYYY-MM-DD HH:MM:SS[.fff]` of an instant, with `scale` fraction digits, and `+00:00` when
/// `utc_offset` is set.
pub(crate) fn format_timestamp(nanos_since_epoch: i128, scale: u32, utc_offset: bool) -> String {
    let secs = nanos_since_epoch.div_euclid(NANOS_PER_SEC) as i64;
    let nanos = nanos_since_epoch.rem_euclid(NANOS_PER_SEC) as u32;
    let day_secs = secs.rem_euclid(SECS_PER_DAY);
    let mut out = format_date(secs.div_euclid(SECS_PER_DAY));
    let _ = write!(
        out,
        " {:02}:{:02}:{:02}",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    );
    push_fraction(&mut out, nanos, scale);
    if utc_offset {
        out.push_str("+00:00");
    }
    out
}

/// Nanoseconds of a value held in units of `10^-scale` seconds.
pub(crate) fn scaled_to_nanos(value: i128, scale: i32) -> Option<i128> {
    if !(0..=9).contains(&scale) {
        return None;
    }
    value.checked_mul(10i128.pow(9 - scale as u32))
}

/// Nanoseconds of decimal seconds text, as Snowflake's JSON rowsets send TIME and TIMESTAMP
/// values: `1704164645.123456000`, `-1.500000000`, `45296.789`. Digits past nanoseconds are cut.
pub(crate) fn parse_decimal_seconds(text: &str) -> Option<i128> {
    let text = text.trim();
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i128 = int.parse().ok()?;
    let frac = &frac[..frac.len().min(9)];
    let frac_nanos: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i128>().ok()? * 10i128.pow(9 - frac.len() as u32)
    };
    let total = secs.checked_mul(NANOS_PER_SEC)?.checked_add(frac_nanos)?;
    Some(if negative { -total } else { total })
}

/// Nanoseconds since midnight of `HH:MM:SS[.fff]` text.
pub(crate) fn parse_clock_time(text: &str) -> Option<i128> {
    let (hms, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let mut parts = hms.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let field = |p: &str| -> Option<i128> {
        (p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse().ok())?
    };
    let secs = field(h)? * 3600 + field(m)? * 60 + field(s)?;
    let nanos = parse_decimal_seconds(&format!("0.{frac}"))?;
    Some(secs * NANOS_PER_SEC + nanos)
}

/// Whether `text` is `YYYY-MM-DD`.
pub(crate) fn is_iso_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Lowercase hex of bytes.
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Compact JSON text of a VARIANT/OBJECT/ARRAY value (Snowflake pretty-prints them); numbers
/// and key order are kept as sent. Text that is not JSON is returned as it is.
pub(crate) fn canonical_json(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => value.to_string(),
        Err(_) => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(format_decimal(1234567, 2), "12345.67");
        assert_eq!(format_decimal(-5, 2), "-0.05");
        assert_eq!(format_decimal(0, 3), "0.000");
        assert_eq!(format_decimal(1, 0), "1");
        assert_eq!(
            format_decimal(i128::MAX, 0),
            "170141183460469231731687303715884105727"
        );
        assert_eq!(format_fixed(12345, 0, 2), "12345.00");
        assert_eq!(format_fixed(1234500, 4, 2), "123.45");
        assert_eq!(format_fixed(1234567, 4, 2), "123.4567");
        assert_eq!(normalize_decimal_text("12345.67", 2).unwrap(), "12345.67");
        assert_eq!(normalize_decimal_text("12345.6", 2).unwrap(), "12345.60");
        assert_eq!(normalize_decimal_text("-007", 0).unwrap(), "-7");
        assert_eq!(normalize_decimal_text("+1.500", 1).unwrap(), "1.5");
        assert_eq!(normalize_decimal_text("-0.00", 2).unwrap(), "0.00");
        assert_eq!(normalize_decimal_text(".5", 1).unwrap(), "0.5");
        assert_eq!(normalize_decimal_text("1.25", 1).unwrap(), "1.25");
        assert_eq!(
            normalize_decimal_text("9007199254740993", 0).unwrap(),
            "9007199254740993"
        );
        assert!(normalize_decimal_text("1e5", 0).is_none());
        assert!(normalize_decimal_text("", 0).is_none());
        assert!(normalize_decimal_text("-", 0).is_none());
        assert!(normalize_decimal_text("1.2.3", 0).is_none());
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(19724), "2024-01-02");
        assert_eq!(format_date(-1), "1969-12-31");
        assert_eq!(format_date(11016), "2000-02-29");
        assert_eq!(format_date(-719_528), "0000-01-01");
        assert_eq!(format_date(2_932_896), "9999-12-31");
        assert_eq!(format_time(45_296_789_000_000, 9), "12:34:56.789000000");
        assert_eq!(format_time(45_296_789_000_000, 3), "12:34:56.789");
        assert_eq!(format_time(45_296_789_000_000, 0), "12:34:56");
        assert_eq!(
            format_timestamp(1_704_164_645_123_456_000, 6, false),
            "2024-01-02 03:04:05.123456"
        );
        assert_eq!(
            format_timestamp(-1_500_000_000, 9, true),
            "1969-12-31 23:59:58.500000000+00:00"
        );
        assert_eq!(
            scaled_to_nanos(1_704_164_645_123, 3),
            Some(1_704_164_645_123_000_000)
        );
        assert_eq!(scaled_to_nanos(1, 10), None);
    }

    #[test]
    fn decimal_seconds_and_clock_text() {
        assert_eq!(
            parse_decimal_seconds("1704164645.123456000"),
            Some(1_704_164_645_123_456_000)
        );
        assert_eq!(parse_decimal_seconds("-1.5"), Some(-1_500_000_000));
        assert_eq!(parse_decimal_seconds("45296"), Some(45_296_000_000_000));
        assert_eq!(parse_decimal_seconds("1.1234567891"), Some(1_123_456_789));
        assert_eq!(parse_decimal_seconds("abc"), None);
        assert_eq!(parse_decimal_seconds(""), None);
        assert_eq!(parse_clock_time("12:34:56.789"), Some(45_296_789_000_000));
        assert_eq!(parse_clock_time("01:02:03"), Some(3_723_000_000_000));
        assert_eq!(parse_clock_time("1:02:03"), None);
        assert!(is_iso_date("2024-01-02"));
        assert!(!is_iso_date("2024/01/02"));
    }

    #[test]
    fn other_forms() {
        assert_eq!(hex_lower(&[0xde, 0xad, 0xbe, 0xef]), "deadbeef");
        assert_eq!(
            canonical_json("{\n  \"x\": [\n    1,\n    2.50\n  ]\n}"),
            r#"{"x":[1,2.50]}"#
        );
        assert_eq!(canonical_json("not json"), "not json");
        assert_eq!(format_real(1.5), "1.5");
        assert_eq!(format_real(-1.5e-300), "-1.5e-300");
        assert_eq!(format_real(1e20), "1e20");
        assert_eq!(format_real(0.00001), "0.00001");
        assert_eq!(format_real(1.0), "1");
        assert_eq!(format_real(0.1 + 0.2), "0.30000000000000004");
    }
}
