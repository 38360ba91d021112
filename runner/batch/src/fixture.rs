//! The fixture format: JSON lines that the file source reads, the file dead letter queue
//! writes and tests use:
//!
//! ```json
//! {"topic":"dbz.public.customers","key":{...},"value":{...},"headers":[{"key":"k","value":"v"}]}
//! ```
//!
//! `key` and `value` hold the message's JSON as embedded JSON (null value = tombstone).
//! A payload that is not JSON can be given as text in `raw_key` / `raw_value` instead,
//! and one that is not UTF-8 as base64 in `key_base64` / `value_base64`; a header value
//! as text in `value` or as base64 in `value_base64`. Written by [`fixture_line`], every
//! byte is kept.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::message::Message;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    topic: String,
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    raw_key: Option<String>,
    #[serde(default)]
    raw_value: Option<String>,
    #[serde(default)]
    key_base64: Option<String>,
    #[serde(default)]
    value_base64: Option<String>,
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    headers: Vec<Header>,
}

#[derive(Deserialize)]
struct Header {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_base64: Option<String>,
}

fn payload(
    raw: Option<&RawValue>,
    text: Option<String>,
    base64: Option<String>,
) -> Result<Option<Vec<u8>>, String> {
    if let Some(b) = base64 {
        return decode_base64(&b).map(Some);
    }
    if let Some(t) = text {
        return Ok(Some(t.into_bytes()));
    }
    Ok(match raw {
        Some(r) if r.get() != "null" => Some(r.get().as_bytes().to_vec()),
        _ => None,
    })
}

fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("invalid base64: {e}"))
}

/// Parses the lines of a fixture-format file into messages (line `n` is offset
/// `n - 1`; blank lines are skipped but keep their offset). The error names the line.
pub fn parse_lines(text: &str) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    let mut topics: Vec<Arc<str>> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line<'_> =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let topic = match topics.iter().find(|t| ***t == *parsed.topic) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = parsed.topic.as_str().into();
                topics.push(t.clone());
                t
            }
        };
        let at = |e: String| format!("line {}: {e}", n + 1);
        let mut headers = Vec::with_capacity(parsed.headers.len());
        for h in parsed.headers {
            let value = match h.value_base64 {
                Some(b) => Some(decode_base64(&b).map_err(at)?),
                None => h.value.map(String::into_bytes),
            };
            headers.push((h.key, value));
        }
        out.push(Message {
            topic,
            partition: parsed.partition.unwrap_or(0),
            offset: n as i64,
            timestamp_ms: None,
            key: payload(parsed.key, parsed.raw_key, parsed.key_base64).map_err(at)?,
            value: payload(parsed.value, parsed.raw_value, parsed.value_base64).map_err(at)?,
            headers,
        });
    }
    Ok(out)
}

/// One line of the fixture format holding exactly these bytes: UTF-8 payloads and
/// header values as text (`raw_key`, `raw_value`, `value`), others as base64
/// (`key_base64`, `value_base64`); a missing key or value is `null`.
pub fn fixture_line(
    topic: &str,
    partition: i32,
    key: &Option<Vec<u8>>,
    value: &Option<Vec<u8>>,
    headers: &[(String, Option<Vec<u8>>)],
) -> serde_json::Value {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let headers: Vec<serde_json::Value> = headers
        .iter()
        .map(|(k, v)| match v.as_deref().map(std::str::from_utf8) {
            None => serde_json::json!({"key": k, "value": null}),
            Some(Ok(text)) => serde_json::json!({"key": k, "value": text}),
            Some(Err(_)) => {
                serde_json::json!({"key": k, "value_base64": b64(v.as_deref().unwrap_or_default())})
            }
        })
        .collect();
    let mut line = serde_json::json!({
        "topic": topic,
        "partition": partition,
        "headers": headers,
    });
    for (name, bytes) in [("key", key), ("value", value)] {
        match bytes.as_deref() {
            None => line[name] = serde_json::Value::Null,
            Some(b) => match std::str::from_utf8(b) {
                Ok(text) => line[format!("raw_{name}")] = text.into(),
                Err(_) => line[format!("{name}_base64")] = b64(b).into(),
            },
        }
    }
    line
}
