//! The Lambda's dead letter stores outside Kafka: an Amazon SQS queue (`dlq.kind =
//! "sqs"`) and an Amazon S3 bucket (`dlq.kind = "s3"`). Both hold what the runner's
//! file kind holds: one JSON line per letter in the fixture format (the original key,
//! value and headers, base64 where they are not UTF-8, plus floe's `floe.*` headers),
//! which `floe run --file` reads back.
//!
//! - **SQS**: one message per letter, sent in `SendMessageBatch` calls of at most 10
//!   messages and 256 KiB. A letter whose line would exceed SQS's 256 KiB is written in
//!   its bounded form (`floe.cut`, `floe.original.*`), as the Kafka kind does. Message
//!   attributes carry the category, stage, component and source position. A FIFO queue
//!   (`.fifo`) gets each source partition as its message group and the source position
//!   as the deduplication id, so a retried invocation's letters are deduplicated there.
//! - **S3**: one object per source partition and batch,
//!   `<prefix><topic>/<partition>/<first offset>-<last offset>.<dead at ms>.jsonl`, each
//!   letter whole (an object has no size limit a batch can reach).
//!
//! Either answers `Ok` only once every letter is stored; a failure is a [`DlqError`],
//! which the batch processor retries behind the DLQ breaker (a letter already stored
//! may then be stored twice: dead letters are at least once).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SigningSettings, UriPathNormalizationMode,
};
use floe_batch::dlq::letter::{Letter, MIN_LETTER_BYTES};
use floe_batch::dlq::{
    CATEGORY_HEADER, COMPONENT_HEADER, DeadLetter, DlqError, LetterStore, OFFSET_HEADER,
    PARTITION_HEADER, STAGE_HEADER, Sent, StoreWrite, TOPIC_HEADER, letter_line,
};
use floe_batch::message::Message;
use futures::{StreamExt as _, TryStreamExt as _};
use sha2::{Digest, Sha256};

use crate::aws::{Aws, Signed, first_line, query_escape};

/// SQS's classic message size limit (body and attributes), which every queue accepts.
pub const SQS_MAX_BYTES: usize = 262_144;
/// Entries per `SendMessageBatch`.
const SQS_MAX_ENTRIES: usize = 10;
/// Attempts at entries SQS failed on its side (`SenderFault: false`) within one write.
const SQS_ATTEMPTS: u32 = 3;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;

fn store_error(store: &str, message: impl std::fmt::Display) -> DlqError {
    DlqError::Store {
        store: store.to_owned(),
        message: message.to_string(),
    }
}

/// Dead letters as messages on an SQS queue.
pub struct SqsStore {
    aws: Aws,
    /// Where the JSON-protocol calls go (the regional endpoint, or an emulator's).
    endpoint: String,
    queue_url: String,
    fifo: bool,
    /// `dlq.max_letter_bytes` (SQS's own limit applies on top).
    max_letter_bytes: usize,
}

/// One `SendMessageBatch` entry without its id, and its size as SQS counts it.
struct Entry {
    body: serde_json::Value,
    bytes: usize,
    cut: bool,
}

impl SqsStore {
    pub fn new(aws: Aws, queue_url: &str, max_letter_bytes: usize) -> SqsStore {
        SqsStore {
            endpoint: format!("{}/", aws.endpoint("sqs", "SQS")),
            queue_url: queue_url.to_owned(),
            fifo: queue_url.trim_end_matches('/').ends_with(".fifo"),
            aws,
            max_letter_bytes,
        }
    }

    /// The entry of one letter: its line as the body (bounded to fit SQS), floe's
    /// headers that say what and where as attributes.
    fn entry(&self, m: &Message, dead: &DeadLetter, dead_at_ms: i64) -> Result<Entry, DlqError> {
        let mut attributes = serde_json::Map::new();
        let mut attribute_bytes = 0;
        for (name, value) in dead.headers(m, dead_at_ms) {
            if ![
                CATEGORY_HEADER,
                STAGE_HEADER,
                COMPONENT_HEADER,
                TOPIC_HEADER,
                PARTITION_HEADER,
                OFFSET_HEADER,
            ]
            .contains(&name)
                || value.is_empty()
            {
                continue;
            }
            let value: String = value.chars().take(256).collect();
            attribute_bytes += name.len() + "String".len() + value.len();
            attributes.insert(
                name.to_owned(),
                serde_json::json!({"DataType": "String", "StringValue": value}),
            );
        }
        let limit = SQS_MAX_BYTES - attribute_bytes;
        let mut budget = self.max_letter_bytes.min(limit);
        loop {
            let letter = Letter::new(m, dead, dead_at_ms, budget);
            let body = sqs_text(letter_line(m, &letter));
            if body.len() <= limit {
                let bytes = body.len() + attribute_bytes;
                let mut entry = serde_json::json!({
                    "MessageBody": body,
                    "MessageAttributes": attributes,
                });
                if self.fifo {
                    let group = format!("{}-{}", m.topic, m.partition);
                    entry["MessageGroupId"] = if group.len() <= 128 {
                        group.into()
                    } else {
                        sha256_hex(group.as_bytes()).into()
                    };
                    entry["MessageDeduplicationId"] = sha256_hex(
                        format!("{}\n{}\n{}", m.topic, m.partition, m.offset).as_bytes(),
                    )
                    .into();
                }
                return Ok(Entry {
                    body: entry,
                    bytes,
                    cut: letter.cut,
                });
            }
            if budget <= MIN_LETTER_BYTES {
                return Err(store_error(
                    &self.describe(),
                    format!(
                        "the letter of {}/{}@{} does not fit in an SQS message even cut to {} bytes",
                        m.topic,
                        m.partition,
                        m.offset,
                        body.len()
                    ),
                ));
            }
            budget = (budget / 2).max(MIN_LETTER_BYTES);
        }
    }

    /// Sends one batch of entries; entries SQS failed on its side are sent again (up
    /// to [`SQS_ATTEMPTS`]), any it refused as the sender's fault fail the write.
    async fn send_batch(&self, entries: Vec<serde_json::Value>) -> Result<(), DlqError> {
        let mut pending: Vec<(String, serde_json::Value)> = entries
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e["Id"] = i.to_string().into();
                (i.to_string(), e)
            })
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = serde_json::json!({
                "QueueUrl": self.queue_url,
                "Entries": pending.iter().map(|(_, e)| e).collect::<Vec<_>>(),
            });
            let answer = self
                .aws
                .json_call(
                    "sqs",
                    &self.endpoint,
                    "AmazonSQS.SendMessageBatch",
                    "application/x-amz-json-1.0",
                    &request,
                )
                .await
                .map_err(|e| store_error(&self.describe(), e))?;
            let failed = answer["Failed"].as_array().cloned().unwrap_or_default();
            if failed.is_empty() {
                return Ok(());
            }
            let why = |f: &serde_json::Value| {
                format!(
                    "{} letter(s) not sent: {}: {}",
                    failed.len(),
                    f["Code"].as_str().unwrap_or("?"),
                    f["Message"].as_str().unwrap_or("")
                )
            };
            if let Some(f) = failed.iter().find(|f| f["SenderFault"] == true) {
                return Err(store_error(&self.describe(), why(f)));
            }
            if attempt >= SQS_ATTEMPTS {
                return Err(store_error(&self.describe(), why(&failed[0])));
            }
            pending.retain(|(id, _)| failed.iter().any(|f| f["Id"] == id.as_str()));
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        }
    }
}

/// SQS refuses the noncharacters U+FFFE and U+FFFF in a body; in a JSON line they
/// can only stand inside strings, where their escapes mean the same.
fn sqs_text(line: Vec<u8>) -> String {
    let text = String::from_utf8(line).expect("a JSON line is UTF-8");
    if text.contains(['\u{fffe}', '\u{ffff}']) {
        text.replace('\u{fffe}', "\\ufffe")
            .replace('\u{ffff}', "\\uffff")
    } else {
        text
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Splits entries into `SendMessageBatch` calls: at most 10 entries and
/// [`SQS_MAX_BYTES`] each, in order.
fn sqs_batches(entries: Vec<Entry>) -> Vec<Vec<serde_json::Value>> {
    let mut batches: Vec<Vec<serde_json::Value>> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        match batches.last_mut() {
            Some(last) if last.len() < SQS_MAX_ENTRIES && bytes + e.bytes <= SQS_MAX_BYTES => {
                bytes += e.bytes;
                last.push(e.body);
            }
            _ => {
                bytes = e.bytes;
                batches.push(vec![e.body]);
            }
        }
    }
    batches
}

impl LetterStore for SqsStore {
    fn describe(&self) -> String {
        format!("sqs queue {}", self.queue_url)
    }

    fn write<'a>(
        &'a self,
        messages: &'a [Message],
        letters: &'a [DeadLetter],
        dead_at_ms: i64,
    ) -> StoreWrite<'a> {
        Box::pin(async move {
            let entries = letters
                .iter()
                .map(|l| self.entry(&messages[l.index], l, dead_at_ms))
                .collect::<Result<Vec<_>, _>>()?;
            let sent = Sent {
                cut: entries.iter().filter(|e| e.cut).count(),
            };
            futures::stream::iter(sqs_batches(entries))
                .map(|batch| self.send_batch(batch))
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            Ok(sent)
        })
    }
}

/// Dead letters as JSON-lines objects in an S3 bucket.
pub struct S3Store {
    aws: Aws,
    bucket: String,
    prefix: String,
    /// `https://<host>/<path to the bucket>`: path style at an emulator's endpoint or
    /// for a bucket name with dots (TLS), else virtual-hosted.
    base: String,
}

impl S3Store {
    pub fn new(aws: Aws, bucket: &str, prefix: &str) -> S3Store {
        let base = match aws.endpoint_override("S3") {
            Some(endpoint) => format!("{endpoint}/{bucket}"),
            None if bucket.contains('.') => {
                format!("https://s3.{}.amazonaws.com/{bucket}", aws.region())
            }
            None => format!("https://{bucket}.s3.{}.amazonaws.com", aws.region()),
        };
        S3Store {
            aws,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            base,
        }
    }

    /// The key of the letters of one source partition in one batch.
    pub fn key(&self, topic: &str, partition: i32, first: i64, last: i64, dead_at: i64) -> String {
        format!(
            "{}{topic}/{partition}/{first:020}-{last:020}.{dead_at}.jsonl",
            self.prefix
        )
    }

    /// `PutObject` of one object.
    async fn put(&self, key: String, body: Vec<u8>, letters: usize) -> Result<(), DlqError> {
        let path: Vec<String> = key.split('/').map(query_escape).collect();
        let url = format!("{}/{}", self.base, path.join("/"));
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let request = Signed {
            method: "PUT",
            url: &url,
            headers: vec![
                ("content-type", "application/x-ndjson".into()),
                ("x-amz-meta-floe-letters", letters.to_string()),
            ],
            body,
            settings,
        };
        let (status, text) = self
            .aws
            .signed("s3", request)
            .await
            .map_err(|e| store_error(&self.describe(), e))?;
        if !status.is_success() {
            let code = text
                .split_once("<Code>")
                .and_then(|(_, rest)| rest.split_once("</Code>"))
                .map_or_else(|| first_line(&text).to_owned(), |(code, _)| code.to_owned());
            return Err(store_error(
                &self.describe(),
                format!("PutObject {key}: HTTP {status}: {code}"),
            ));
        }
        Ok(())
    }
}

impl LetterStore for S3Store {
    fn describe(&self) -> String {
        format!("s3 bucket {} (prefix {:?})", self.bucket, self.prefix)
    }

    fn write<'a>(
        &'a self,
        messages: &'a [Message],
        letters: &'a [DeadLetter],
        dead_at_ms: i64,
    ) -> StoreWrite<'a> {
        Box::pin(async move {
            // One object per source partition, letters in offset order.
            let mut partitions: BTreeMap<(&str, i32), Vec<&DeadLetter>> = BTreeMap::new();
            for l in letters {
                let m = &messages[l.index];
                partitions
                    .entry((&m.topic, m.partition))
                    .or_default()
                    .push(l);
            }
            let objects: Vec<(String, Vec<u8>, usize)> = partitions
                .into_iter()
                .map(|((topic, partition), mut dead)| {
                    dead.sort_by_key(|l| messages[l.index].offset);
                    let first = messages[dead[0].index].offset;
                    let last = messages[dead[dead.len() - 1].index].offset;
                    let mut body = Vec::new();
                    for l in &dead {
                        let m = &messages[l.index];
                        body.extend(letter_line(m, &Letter::new(m, l, dead_at_ms, usize::MAX)));
                        body.push(b'\n');
                    }
                    let key = self.key(topic, partition, first, last, dead_at_ms);
                    (key, body, dead.len())
                })
                .collect();
            futures::stream::iter(objects)
                .map(|(key, body, n)| self.put(key, body, n))
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            Ok(Sent::default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn aws(endpoint: Option<&str>) -> Aws {
        let mut env: HashMap<String, String> = [
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(e) = endpoint {
            env.insert("AWS_ENDPOINT_URL".into(), e.into());
        }
        Aws::from_env(&env).unwrap()
    }

    fn message(offset: i64, value: Vec<u8>) -> Message {
        Message {
            topic: Arc::from("dbz.public.t"),
            partition: 3,
            offset,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(br#"{"id":1}"#.to_vec()),
            value: Some(value),
            headers: vec![("h".into(), Some(b"v".to_vec()))],
        }
    }

    fn dead(index: usize) -> DeadLetter {
        DeadLetter {
            index,
            category: "parse",
            stage: "validate",
            component: "builtin:validator".into(),
            reason: "parse: not JSON".into(),
        }
    }

    #[test]
    fn an_sqs_letter_is_its_fixture_line_with_attributes() {
        let store = SqsStore::new(
            aws(None),
            "https://sqs.eu-west-1.amazonaws.com/1/q",
            1 << 20,
        );
        assert_eq!(store.endpoint, "https://sqs.eu-west-1.amazonaws.com/");
        let m = message(7, b"{not json".to_vec());
        let e = store.entry(&m, &dead(0), 42).unwrap();
        assert!(!e.cut);
        let body = e.body["MessageBody"].as_str().unwrap();
        let back = floe_batch::fixture::parse_lines(body).unwrap();
        assert_eq!(back[0].value.as_deref(), Some(&b"{not json"[..]));
        let attributes = &e.body["MessageAttributes"];
        assert_eq!(attributes[CATEGORY_HEADER]["StringValue"], "parse");
        assert_eq!(attributes[OFFSET_HEADER]["StringValue"], "7");
        assert_eq!(attributes[TOPIC_HEADER]["StringValue"], "dbz.public.t");
        assert!(e.body.get("MessageGroupId").is_none(), "a standard queue");
    }

    #[test]
    fn an_sqs_letter_too_large_is_bounded_to_fit() {
        let store = SqsStore::new(
            aws(None),
            "https://sqs.eu-west-1.amazonaws.com/1/q",
            1 << 20,
        );
        // Bytes that are not UTF-8 travel as base64 (a third larger), control
        // characters as \u escapes (six times larger): both must still fit.
        for value in [vec![0xffu8; 600_000], vec![0x01u8; 300_000]] {
            let m = message(7, value);
            let e = store.entry(&m, &dead(0), 42).unwrap();
            assert!(e.cut);
            assert!(e.bytes <= SQS_MAX_BYTES, "{}", e.bytes);
            let body = e.body["MessageBody"].as_str().unwrap();
            assert!(
                body.contains("floe.original.value.sha256"),
                "the digest says what was cut"
            );
        }
    }

    #[test]
    fn a_fifo_queue_groups_by_partition_and_deduplicates_by_position() {
        let store = SqsStore::new(
            aws(None),
            "https://sqs.eu-west-1.amazonaws.com/1/q.fifo",
            1 << 20,
        );
        let a = store
            .entry(&message(7, b"x".to_vec()), &dead(0), 1)
            .unwrap();
        let b = store
            .entry(&message(7, b"x".to_vec()), &dead(0), 2)
            .unwrap();
        let c = store
            .entry(&message(8, b"x".to_vec()), &dead(0), 1)
            .unwrap();
        assert_eq!(a.body["MessageGroupId"], "dbz.public.t-3");
        assert_eq!(
            a.body["MessageDeduplicationId"], b.body["MessageDeduplicationId"],
            "a retry of the same letter is a duplicate SQS drops"
        );
        assert_ne!(
            a.body["MessageDeduplicationId"],
            c.body["MessageDeduplicationId"]
        );
    }

    #[test]
    fn sqs_noncharacters_are_escaped_and_mean_the_same() {
        let m = message(1, "a\u{ffff}b".as_bytes().to_vec());
        let store = SqsStore::new(
            aws(None),
            "https://sqs.eu-west-1.amazonaws.com/1/q",
            1 << 20,
        );
        let e = store.entry(&m, &dead(0), 1).unwrap();
        let body = e.body["MessageBody"].as_str().unwrap();
        assert!(!body.contains('\u{ffff}'));
        let back = floe_batch::fixture::parse_lines(body).unwrap();
        assert_eq!(back[0].value, m.value);
    }

    #[test]
    fn sqs_batches_hold_ten_entries_and_256_kib_at_most() {
        let entry = |bytes| Entry {
            body: serde_json::json!({}),
            bytes,
            cut: false,
        };
        let sizes = |b: Vec<Vec<serde_json::Value>>| b.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(
            sizes(sqs_batches((0..23).map(|_| entry(100)).collect())),
            [10, 10, 3]
        );
        assert_eq!(
            sizes(sqs_batches(vec![
                entry(200_000),
                entry(62_144),
                entry(1),
                entry(262_144)
            ])),
            [2, 1, 1]
        );
        assert!(sqs_batches(Vec::new()).is_empty());
    }

    #[test]
    fn s3_urls_and_keys() {
        let s = S3Store::new(aws(None), "dead-letters", "floe-dlq/");
        assert_eq!(s.base, "https://dead-letters.s3.eu-west-1.amazonaws.com");
        assert_eq!(
            s.key("dbz.public.t", 3, 7, 12, 99),
            "floe-dlq/dbz.public.t/3/00000000000000000007-00000000000000000012.99.jsonl"
        );
        let dotted = S3Store::new(aws(None), "dead.letters", "");
        assert_eq!(
            dotted.base,
            "https://s3.eu-west-1.amazonaws.com/dead.letters"
        );
        let local = S3Store::new(aws(Some("http://127.0.0.1:5000/")), "b", "p/");
        assert_eq!(local.base, "http://127.0.0.1:5000/b");
    }
}
