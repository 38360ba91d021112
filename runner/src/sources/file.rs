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

use super::{BatchLimits, Checkpoint, Message, Source, SourceBatch, SourceError};

pub use floe_batch::fixture::fixture_line;

/// Parses every line of a fixture-format file into messages.
pub fn read_file(path: &std::path::Path) -> Result<Vec<Message>, SourceError> {
    let err = |message: String| SourceError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    floe_batch::fixture::parse_lines(&text).map_err(err)
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
