//! Replays JSON-lines files in the fixture format, so a pipeline can be tried offline:
//!
//! ```json
//! {"topic":"dbz.public.customers","key":{...},"value":{...},"headers":[{"key":"k","value":"v"}]}
//! ```
//!
//! `key` and `value` hold the message's JSON as embedded JSON (null value = tombstone).
//! A payload that is not JSON can be given as text in `raw_key` / `raw_value` instead,
//! and one that is not UTF-8 as base64 in `key_base64` / `value_base64`; a header value
//! as text in `value` or as base64 in `value_base64`. The file dead letter queue writes
//! this format, so its letters keep every byte.
//! Each file's lines become offsets 0, 1, 2, ... of partition 0 of their topic (blank
//! lines keep their offset, so offsets match line numbers minus one).

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{BatchLimits, Checkpoint, Message, Source, SourceBatch, SourceError};

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

/// Parses every line of a fixture-format file into messages.
pub fn read_file(path: &std::path::Path) -> Result<Vec<Message>, SourceError> {
    let err = |message: String| SourceError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    let mut topics: Vec<Arc<str>> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line<'_> =
            serde_json::from_str(line).map_err(|e| err(format!("line {}: {e}", n + 1)))?;
        let topic = match topics.iter().find(|t| ***t == *parsed.topic) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = parsed.topic.as_str().into();
                topics.push(t.clone());
                t
            }
        };
        let at = |e: String| err(format!("line {}: {e}", n + 1));
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

/// The file source: all files are read up front, then cut into batches.
pub struct FileSource {
    pending: std::collections::VecDeque<Message>,
    /// Committed checkpoints, kept for inspection (a file has no broker to tell).
    pub committed: Vec<Checkpoint>,
}

impl FileSource {
    pub fn open(paths: &[PathBuf]) -> Result<FileSource, SourceError> {
        let mut pending = std::collections::VecDeque::new();
        for p in paths {
            pending.extend(read_file(p)?);
        }
        Ok(FileSource {
            pending,
            committed: Vec::new(),
        })
    }

    pub fn from_messages(messages: Vec<Message>) -> FileSource {
        FileSource {
            pending: messages.into(),
            committed: Vec::new(),
        }
    }
}

impl Source for FileSource {
    async fn next_batch(
        &mut self,
        limits: BatchLimits,
    ) -> Result<Option<SourceBatch>, SourceError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let mut batch = SourceBatch::default();
        while let Some(msg) = self.pending.front() {
            if !batch.messages.is_empty()
                && (batch.messages.len() >= limits.max_rows
                    || batch.bytes + msg.size() > limits.max_bytes)
            {
                break;
            }
            let msg = self.pending.pop_front().expect("front exists");
            batch.push(msg);
        }
        Ok(Some(batch))
    }

    async fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        self.committed.push(checkpoint.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(rows: usize, bytes: usize) -> BatchLimits {
        BatchLimits {
            max_rows: rows,
            max_bytes: bytes,
            max_wait: Duration::from_secs(1),
            idle_poll: Duration::from_millis(1),
        }
    }

    #[test]
    fn parses_fixture_lines_raw_payloads_and_tombstones() {
        let dir = std::env::temp_dir().join(format!("floe-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.jsonl");
        std::fs::write(
            &p,
            concat!(
                r#"{"topic":"dbz.public.t","key":{"id":1},"value":{"op":"c","n":12345678901234567890},"headers":[{"key":"h","value":"\"v\""}]}"#,
                "\n\n",
                r#"{"topic":"dbz.public.t","key":{"id":1},"value":null,"headers":[]}"#,
                "\n",
                r#"{"topic":"dbz.public.u","raw_value":"not json {"}"#,
                "\n"
            ),
        )
        .unwrap();
        let msgs = read_file(&p).unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            msgs[0].value.as_deref(),
            Some(br#"{"op":"c","n":12345678901234567890}"#.as_slice())
        );
        assert_eq!(msgs[0].headers[0].1.as_deref(), Some(br#""v""#.as_slice()));
        assert_eq!(msgs[1].offset, 2, "blank line keeps its offset");
        assert_eq!(msgs[1].value, None);
        assert_eq!(msgs[2].key, None);
        assert_eq!(msgs[2].value.as_deref(), Some(b"not json {".as_slice()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn cuts_batches_by_rows_and_bytes_then_ends() {
        let mk = |o: i64| Message {
            topic: "t".into(),
            partition: 0,
            offset: o,
            timestamp_ms: None,
            key: None,
            value: Some(vec![b'x'; 10]),
            headers: vec![],
        };
        let mut src = FileSource::from_messages((0..5).map(mk).collect());
        let b = src.next_batch(limits(2, 1000)).await.unwrap().unwrap();
        assert_eq!(b.messages.len(), 2);
        let b = src.next_batch(limits(10, 25)).await.unwrap().unwrap();
        assert_eq!(b.messages.len(), 2, "bytes limit cuts at 20 of 25");
        assert_eq!(b.checkpoint.next_offsets[&("t".into(), 0)], 4);
        let b = src.next_batch(limits(10, 1)).await.unwrap().unwrap();
        assert_eq!(
            b.messages.len(),
            1,
            "an oversize message still forms a batch"
        );
        assert!(src.next_batch(limits(10, 1000)).await.unwrap().is_none());
    }
}
