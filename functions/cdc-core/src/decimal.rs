//! Exact decimal text from Kafka Connect's `Decimal` encoding: a big-endian two's
//! complement unscaled integer of any length, plus a scale.

/// The largest scale (either sign) a decimal may have: PostgreSQL's `numeric` holds up
/// to 131,072 digits before the point and 16,383 after it.
pub const MAX_SCALE: u32 = 147_455;
/// The longest unscaled integer accepted, in bytes (PostgreSQL's largest `numeric`
/// needs ~61 KB).
pub const MAX_UNSCALED_BYTES: usize = 64 * 1024;

/// `unscaled * 10^-scale` as plain decimal text: `1234567`, scale 2 -> `12345.67`;
/// `-50`, scale 2 -> `-0.50`; `5`, scale -2 -> `500`. Empty bytes are zero. A scale or
/// an unscaled integer larger than any PostgreSQL `numeric` is an error (it would
/// cost the whole batch its memory or its time).
pub fn decimal_text(unscaled_be: &[u8], scale: i32) -> Result<String, String> {
    if scale.unsigned_abs() > MAX_SCALE {
        return Err(format!(
            "decimal scale {scale} is beyond any PostgreSQL numeric (at most {MAX_SCALE} either way)"
        ));
    }
    if unscaled_be.len() > MAX_UNSCALED_BYTES {
        return Err(format!(
            "decimal of {} bytes is beyond any PostgreSQL numeric (at most {MAX_UNSCALED_BYTES})",
            unscaled_be.len()
        ));
    }
    Ok(text(unscaled_be, scale))
}

/// The number of digits before the decimal point of decimal text (`0` for `0.5`).
pub fn integer_digits(text: &str) -> usize {
    let int = text
        .trim_start_matches('-')
        .split('.')
        .next()
        .unwrap_or_default();
    if int == "0" { 0 } else { int.len() }
}

fn text(unscaled_be: &[u8], scale: i32) -> String {
    let negative = unscaled_be.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude = unscaled_be.to_vec();
    if negative {
        // Two's complement negation: invert, add one.
        for b in &mut magnitude {
            *b = !*b;
        }
        for b in magnitude.iter_mut().rev() {
            let (sum, carry) = b.overflowing_add(1);
            *b = sum;
            if !carry {
                break;
            }
        }
    }
    let digits = magnitude_digits(&magnitude);
    let mut out = String::with_capacity(digits.len() + 3);
    if negative && digits != "0" {
        out.push('-');
    }
    if scale <= 0 {
        out.push_str(&digits);
        if digits != "0" {
            out.extend(std::iter::repeat_n('0', scale.unsigned_abs() as usize));
        }
        return out;
    }
    let scale = scale as usize;
    if digits.len() <= scale {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    } else {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// Decimal digits of an unsigned big-endian integer (`"0"` for zero).
fn magnitude_digits(be: &[u8]) -> String {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    let be = &be[start..];
    if be.len() <= 16 {
        let mut v: u128 = 0;
        for &b in be {
            v = (v << 8) | u128::from(b);
        }
        return v.to_string();
    }
    // Long division by 10^9 over base-2^32 limbs, most significant first.
    let mut limbs: Vec<u32> = Vec::with_capacity(be.len() / 4 + 1);
    let head = be.len() % 4;
    if head > 0 {
        limbs.push(
            be[..head]
                .iter()
                .fold(0, |acc, &b| (acc << 8) | u32::from(b)),
        );
    }
    for chunk in be[head..].chunks_exact(4) {
        limbs.push(u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
    }
    const BASE: u64 = 1_000_000_000;
    let mut groups: Vec<u32> = Vec::new();
    while limbs.iter().any(|&l| l != 0) {
        let mut rem: u64 = 0;
        for limb in &mut limbs {
            let cur = (rem << 32) | u64::from(*limb);
            *limb = (cur / BASE) as u32;
            rem = cur % BASE;
        }
        groups.push(rem as u32);
        let zeros = limbs.iter().take_while(|&&l| l == 0).count();
        limbs.drain(..zeros);
    }
    let mut out = String::with_capacity(groups.len() * 9);
    for (i, g) in groups.iter().rev().enumerate() {
        if i == 0 {
            out.push_str(&g.to_string());
        } else {
            out.push_str(&format!("{g:09}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(v: i128) -> Vec<u8> {
        // Minimal two's complement big-endian, like Java's BigInteger.toByteArray().
        let bytes = v.to_be_bytes();
        let mut start = 0;
        while start < 15 {
            let (b, next) = (bytes[start], bytes[start + 1]);
            if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
                start += 1;
            } else {
                break;
            }
        }
        bytes[start..].to_vec()
    }

    #[test]
    fn fixture_values() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(decimal_text(&b64("EtaH"), 2).unwrap(), "12345.67");
        assert_eq!(decimal_text(&b64("zg=="), 2).unwrap(), "-0.50");
        assert_eq!(
            decimal_text(&b64("AR2552okgw=="), 14).unwrap(),
            "3.14159265358979"
        );
    }

    #[test]
    fn scales_and_signs() {
        assert_eq!(decimal_text(&be(0), 2).unwrap(), "0.00");
        assert_eq!(decimal_text(&[], 0).unwrap(), "0");
        assert_eq!(decimal_text(&be(0), -3).unwrap(), "0");
        assert_eq!(decimal_text(&be(5), -2).unwrap(), "500");
        assert_eq!(decimal_text(&be(-5), 0).unwrap(), "-5");
        assert_eq!(decimal_text(&be(-1), 3).unwrap(), "-0.001");
        assert_eq!(decimal_text(&be(1), 3).unwrap(), "0.001");
        assert_eq!(decimal_text(&be(-128), 1).unwrap(), "-12.8");
        assert_eq!(decimal_text(&be(128), 1).unwrap(), "12.8");
        assert_eq!(
            decimal_text(&be(i128::MIN), 0).unwrap(),
            i128::MIN.to_string()
        );
        assert_eq!(
            decimal_text(&be(i128::MAX), 0).unwrap(),
            i128::MAX.to_string()
        );
        for v in [
            1i128,
            -1,
            255,
            -255,
            256,
            65535,
            -65536,
            10i128.pow(30),
            -(10i128.pow(37)) + 7,
        ] {
            assert_eq!(decimal_text(&be(v), 0).unwrap(), v.to_string(), "{v}");
        }
    }

    #[test]
    fn scales_and_sizes_beyond_postgresql_are_errors() {
        assert!(decimal_text(&be(1), i32::MAX).is_err());
        assert!(decimal_text(&be(1), i32::MIN).is_err());
        assert!(decimal_text(&be(1), -(MAX_SCALE as i32) - 1).is_err());
        assert_eq!(decimal_text(&be(1), 5).unwrap(), "0.00001");
        assert!(decimal_text(&vec![1u8; MAX_UNSCALED_BYTES + 1], 0).is_err());
        assert_eq!(integer_digits("-0.50"), 0);
        assert_eq!(integer_digits("12345.67"), 5);
        assert_eq!(integer_digits("-500"), 3);
    }

    #[test]
    fn wider_than_128_bits() {
        // 2^200 and -(2^200).
        let mut pos = vec![0u8; 26];
        pos[0] = 1;
        assert_eq!(
            decimal_text(&pos, 0).unwrap(),
            "1606938044258990275541962092341162602522202993782792835301376"
        );
        let mut neg = vec![0u8; 26];
        neg[0] = 0xff;
        assert_eq!(
            decimal_text(&neg, 10).unwrap(),
            "-160693804425899027554196209234116260252220299378279.2835301376"
        );
        // Leading sign-extension bytes are fine.
        let mut padded = vec![0u8; 40];
        padded[39] = 42;
        assert_eq!(decimal_text(&padded, 1).unwrap(), "4.2");
    }
}
