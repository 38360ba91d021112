//! One dead letter as it is produced: the original key, value and headers plus floe's
//! headers, and its bounded form for letters too large for the dead letter topic.
//!
//! A letter whose size (key + value + header names and values) exceeds the budget
//! (`dlq.max_letter_bytes`, or less once the broker refused a size) keeps floe's
//! headers and, as far as the budget allows, the start of its key and value; what was
//! cut is named in `floe.cut` (`key`, `value`, `headers`), and the original sizes and
//! SHA-256 digests are in `floe.original.*` headers. The original bytes are then only
//! in the source topic (until its retention ends): `floe dlq replay` never re-submits a
//! cut letter.

use sha2::{Digest, Sha256};

use super::DeadLetter;
use crate::message::Message;

/// Names the parts of a cut letter that are not the original bytes.
pub const CUT_HEADER: &str = "floe.cut";
pub const ORIGINAL_KEY_BYTES_HEADER: &str = "floe.original.key.bytes";
pub const ORIGINAL_KEY_SHA256_HEADER: &str = "floe.original.key.sha256";
pub const ORIGINAL_VALUE_BYTES_HEADER: &str = "floe.original.value.bytes";
pub const ORIGINAL_VALUE_SHA256_HEADER: &str = "floe.original.value.sha256";
pub const ORIGINAL_HEADERS_BYTES_HEADER: &str = "floe.original.headers.bytes";

/// floe's own headers are bounded: a reason longer than this is cut (ending with
/// `... (N more bytes cut)`). Above the host's own bound on a component's reason (4 KiB
/// and its note), so such a reason arrives whole.
pub const MAX_REASON_BYTES: usize = 8192;

/// The smallest budget a letter is cut to; below it, only floe's headers remain.
pub const MIN_LETTER_BYTES: usize = 1024;

/// A letter ready to produce (or to write to a file).
#[derive(Debug, Clone, PartialEq)]
pub struct Letter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Whether this is the bounded form.
    pub cut: bool,
}

impl Letter {
    /// Bytes that count against the budget.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + headers_size(&self.headers)
    }

    /// The letter of `m` refused for `dead`, whole when it fits in `budget` bytes,
    /// else in its bounded form.
    pub fn new(m: &Message, dead: &DeadLetter, dead_at_ms: i64, budget: usize) -> Letter {
        let floe: Vec<(String, Option<Vec<u8>>)> = dead
            .headers(m, dead_at_ms)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Some(bounded_reason(k, v).into_bytes())))
            .collect();
        let mut headers = m.headers.clone();
        headers.extend(floe.iter().cloned());
        let whole = Letter {
            key: m.key.clone(),
            value: m.value.clone(),
            headers,
            cut: false,
        };
        if whole.size() <= budget {
            return whole;
        }
        Letter::cut(m, floe, budget.max(MIN_LETTER_BYTES))
    }

    fn cut(m: &Message, floe: Vec<(String, Option<Vec<u8>>)>, budget: usize) -> Letter {
        let mut cut = Vec::new();
        let mut headers = floe;
        let original_headers = headers_size(&m.headers);
        let mut meta = Vec::new();
        if let Some(k) = &m.key {
            meta.push((ORIGINAL_KEY_BYTES_HEADER, k.len().to_string()));
            meta.push((ORIGINAL_KEY_SHA256_HEADER, sha256_hex(k)));
        }
        if let Some(v) = &m.value {
            meta.push((ORIGINAL_VALUE_BYTES_HEADER, v.len().to_string()));
            meta.push((ORIGINAL_VALUE_SHA256_HEADER, sha256_hex(v)));
        }
        meta.push((ORIGINAL_HEADERS_BYTES_HEADER, original_headers.to_string()));
        headers.extend(
            meta.into_iter()
                .map(|(k, v)| (k.to_owned(), Some(v.into_bytes()))),
        );
        // The source's own headers stay when they take at most a quarter of the budget.
        let keep_original_headers = original_headers <= budget / 4;
        if keep_original_headers {
            headers.extend(m.headers.iter().cloned());
        } else if !m.headers.is_empty() {
            cut.push("headers");
        }
        // `floe.cut` is at most "key,value,headers".
        let fixed = headers_size(&headers) + CUT_HEADER.len() + 17;
        let mut room = budget.saturating_sub(fixed);
        // The key first (up to half of what is left: keys are small, values are not).
        let key = m.key.as_ref().map(|k| {
            let keep = k.len().min(room / 2);
            if keep < k.len() {
                cut.push("key");
            }
            room -= keep;
            k[..keep].to_vec()
        });
        let value = m.value.as_ref().map(|v| {
            let keep = v.len().min(room);
            if keep < v.len() {
                cut.push("value");
            }
            v[..keep].to_vec()
        });
        if cut.is_empty() {
            // Only floe's headers made it too large; nothing of the message was cut.
            cut.push("none");
        }
        headers.push((CUT_HEADER.to_owned(), Some(cut.join(",").into_bytes())));
        Letter {
            key,
            value,
            headers,
            cut: true,
        }
    }
}

fn headers_size(headers: &[(String, Option<Vec<u8>>)]) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
        .sum()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// floe's reason header, cut to about [`MAX_REASON_BYTES`] on a character boundary.
fn bounded_reason(key: &str, value: String) -> String {
    if key != super::REASON_HEADER || value.len() <= MAX_REASON_BYTES {
        return value;
    }
    let mut end = MAX_REASON_BYTES - 64;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... ({} more bytes cut)",
        &value[..end],
        value.len() - end
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn message(value: usize, header: usize) -> Message {
        Message {
            topic: Arc::from("dbz.public.t"),
            partition: 1,
            offset: 7,
            timestamp_ms: None,
            key: Some(br#"{"id":1}"#.to_vec()),
            value: Some(vec![b'x'; value]),
            headers: vec![("h".into(), Some(vec![b'y'; header]))],
        }
    }

    fn dead(reason: String) -> DeadLetter {
        DeadLetter {
            index: 0,
            category: "kafka",
            stage: "source",
            component: "floe".into(),
            reason,
        }
    }

    fn header<'a>(l: &'a Letter, k: &str) -> Option<&'a str> {
        l.headers
            .iter()
            .find(|(hk, _)| hk == k)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn a_letter_that_fits_is_whole() {
        let m = message(100, 10);
        let l = Letter::new(&m, &dead("r".into()), 1, 1_000_000);
        assert!(!l.cut);
        assert_eq!(l.value, m.value);
        assert_eq!(l.key, m.key);
        assert_eq!(header(&l, "h"), Some("yyyyyyyyyy"));
        assert_eq!(header(&l, super::super::CATEGORY_HEADER), Some("kafka"));
        assert_eq!(header(&l, CUT_HEADER), None);
    }

    #[test]
    fn a_large_letter_is_cut_to_its_budget_with_size_and_digest() {
        let m = message(5_000_000, 10);
        let l = Letter::new(&m, &dead("too big".into()), 1, 100_000);
        assert!(l.cut);
        assert!(l.size() <= 100_000, "{}", l.size());
        assert_eq!(header(&l, CUT_HEADER), Some("value"));
        assert_eq!(header(&l, ORIGINAL_VALUE_BYTES_HEADER), Some("5000000"));
        assert_eq!(
            header(&l, ORIGINAL_VALUE_SHA256_HEADER),
            Some(sha256_hex(m.value.as_ref().unwrap()).as_str())
        );
        assert_eq!(l.key, m.key, "a small key is kept");
        assert_eq!(
            header(&l, "h"),
            Some("yyyyyyyyyy"),
            "small headers are kept"
        );
        let kept = l.value.as_ref().unwrap();
        assert!(kept.len() > 90_000 && m.value.as_ref().unwrap().starts_with(kept));
    }

    #[test]
    fn huge_headers_and_reasons_are_bounded_too() {
        let m = message(10, 2_000_000);
        let l = Letter::new(&m, &dead("é".repeat(10_000)), 1, 50_000);
        assert!(l.cut && l.size() <= 50_000, "{}", l.size());
        assert_eq!(header(&l, CUT_HEADER), Some("headers"));
        assert_eq!(header(&l, "h"), None);
        assert_eq!(header(&l, ORIGINAL_HEADERS_BYTES_HEADER), Some("2000001"));
        let reason = header(&l, super::super::REASON_HEADER).unwrap();
        assert!(
            reason.len() <= MAX_REASON_BYTES && reason.ends_with("more bytes cut)"),
            "{reason}"
        );
        // Below the floor, the budget is the floor.
        let l = Letter::new(&message(1_000_000, 0), &dead("r".into()), 1, 10);
        assert!(l.size() <= MIN_LETTER_BYTES, "{}", l.size());
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
