//! The dead letter queue: every event floe cannot load is written here with why, before
//! the batch's offsets are committed, so nothing is lost silently.
//!
//! A dead letter is the original message (key, value and headers unchanged) plus
//! headers that say what happened:
//!
//! | header | value |
//! |---|---|
//! | `floe.error.category` | `parse`, `validation`, `transform`, `wasm-trap`, `schema`, `warehouse` or `kafka` |
//! | `floe.error.stage` | `source`, `validate`, `transform`, `merge` or `load` |
//! | `floe.error.component` | the component or part that refused it (`builtin:validator`, `snowflake`, ...) |
//! | `floe.error.reason` | the human-readable reason |
//! | `floe.source.topic` / `floe.source.partition` / `floe.source.offset` | where it was read |
//! | `floe.source.timestamp` | its Kafka timestamp (ms), when it had one |
//! | `floe.dead.at` | when floe gave up on it (ms since the epoch) |
//!
//! Kinds: a Kafka topic per source topic (default `<topic>.dlq`), a JSON-lines file in
//! the fixture format (which `floe run --file` reads back), or the log only.
//! `floe dlq replay` re-submits Kafka dead letters to their source topics.

pub mod replay;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::{Config, DlqKind};
use crate::sources::Message;

/// Prefix of the headers floe adds; replay strips them.
pub const HEADER_PREFIX: &str = "floe.";
pub const CATEGORY_HEADER: &str = "floe.error.category";
pub const STAGE_HEADER: &str = "floe.error.stage";
pub const COMPONENT_HEADER: &str = "floe.error.component";
pub const REASON_HEADER: &str = "floe.error.reason";
pub const TOPIC_HEADER: &str = "floe.source.topic";
pub const PARTITION_HEADER: &str = "floe.source.partition";
pub const OFFSET_HEADER: &str = "floe.source.offset";
pub const TIMESTAMP_HEADER: &str = "floe.source.timestamp";
pub const DEAD_AT_HEADER: &str = "floe.dead.at";

/// The error categories, bounded (they label metrics and DLQ records).
pub const CATEGORIES: [&str; 7] = [
    "parse",
    "validation",
    "transform",
    "wasm-trap",
    "schema",
    "warehouse",
    "kafka",
];

/// One event that will not be loaded, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Index of the message in its batch.
    pub index: usize,
    pub category: &'static str,
    pub stage: &'static str,
    pub component: String,
    pub reason: String,
}

impl DeadLetter {
    /// The headers floe adds to the original message's.
    pub fn headers(&self, m: &Message, dead_at_ms: i64) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (CATEGORY_HEADER, self.category.to_owned()),
            (STAGE_HEADER, self.stage.to_owned()),
            (COMPONENT_HEADER, self.component.clone()),
            (REASON_HEADER, self.reason.clone()),
            (TOPIC_HEADER, m.topic.to_string()),
            (PARTITION_HEADER, m.partition.to_string()),
            (OFFSET_HEADER, m.offset.to_string()),
        ];
        if let Some(ts) = m.timestamp_ms {
            h.push((TIMESTAMP_HEADER, ts.to_string()));
        }
        h.push((DEAD_AT_HEADER, dead_at_ms.to_string()));
        h
    }
}

/// Errors writing dead letters; always retryable (the batch is not committed).
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("dead letter queue (kafka): {0}")]
    Kafka(String),
    #[error("dead letter queue (file {path}): {message}")]
    File { path: String, message: String },
}

/// Where dead letters go.
pub enum DeadLetterQueue {
    Kafka {
        producer: FutureProducer,
        topic: String,
        timeout: Duration,
    },
    File {
        path: PathBuf,
    },
    /// Logged and counted only (by the pipeline's events).
    Log,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The producer for dead letters and their replay: the source's brokers, acks from all
/// in-sync replicas, idempotent, room for the largest accepted message, `dlq.options`.
/// librdkafka settings about reaching and authenticating to the cluster, shared by a
/// consumer and a producer of the same cluster.
fn is_connection_setting(key: &str) -> bool {
    const PREFIXES: [&str; 7] = [
        "security.",
        "sasl.",
        "ssl.",
        "ssl_",
        "socket.",
        "client.",
        "broker.",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p))
        || matches!(
            key,
            "enable.ssl.certificate.verification" | "resolve.canonical.bootstrap.servers.only"
        )
}

pub(crate) fn producer(config: &Config) -> Result<FutureProducer, DlqError> {
    producer_config(config)
        .create()
        .map_err(|e| DlqError::Kafka(e.to_string()))
}

/// The DLQ producer's librdkafka settings.
fn producer_config(config: &Config) -> ClientConfig {
    let dlq = &config.dlq;
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.source.kafka.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.max.bytes",
            (config.source.max_message_bytes.max(1 << 20) * 2 + 65_536).to_string(),
        )
        .set("message.timeout.ms", dlq.timeout_ms.to_string());
    // The source's connection settings (TLS, SASL, client id...) apply to the DLQ
    // producer too, since both talk to the same cluster; `dlq.options` override them.
    for (k, v) in &config.source.kafka.options {
        if is_connection_setting(k) {
            cc.set(k, v);
        }
    }
    for (k, v) in &dlq.options {
        cc.set(k, v);
    }
    cc
}

impl DeadLetterQueue {
    /// The queue `config` asks for.
    pub fn from_config(config: &Config) -> Result<DeadLetterQueue, DlqError> {
        let dlq = &config.dlq;
        Ok(match config.dlq_kind() {
            DlqKind::Kafka => {
                let producer = producer(config)?;
                DeadLetterQueue::Kafka {
                    producer,
                    topic: dlq.topic.clone(),
                    timeout: Duration::from_millis(dlq.timeout_ms),
                }
            }
            DlqKind::File => DeadLetterQueue::File {
                path: dlq.path.clone(),
            },
            DlqKind::Log | DlqKind::Auto => DeadLetterQueue::Log,
        })
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            DeadLetterQueue::Kafka { topic, .. } => format!("kafka topic {topic}"),
            DeadLetterQueue::File { path } => format!("file {}", path.display()),
            DeadLetterQueue::Log => "log only".into(),
        }
    }

    /// Writes the letters durably (Kafka: acknowledged by all in-sync replicas; file:
    /// flushed and synced). `Ok` only when every one is written.
    pub async fn send(&self, messages: &[Message], letters: &[DeadLetter]) -> Result<(), DlqError> {
        if letters.is_empty() {
            return Ok(());
        }
        let dead_at = now_ms();
        match self {
            DeadLetterQueue::Log => Ok(()),
            DeadLetterQueue::Kafka {
                producer,
                topic,
                timeout,
            } => {
                let topics: Vec<String> = letters
                    .iter()
                    .map(|l| topic.replace("{topic}", &messages[l.index].topic))
                    .collect();
                let mut pending = Vec::with_capacity(letters.len());
                for (l, dlq_topic) in letters.iter().zip(&topics) {
                    let m = &messages[l.index];
                    let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 9);
                    for (k, v) in &m.headers {
                        headers = headers.insert(Header {
                            key: k,
                            value: v.as_deref(),
                        });
                    }
                    for (k, v) in l.headers(m, dead_at) {
                        headers = headers.insert(Header {
                            key: k,
                            value: Some(v.as_bytes()),
                        });
                    }
                    let mut record: FutureRecord<'_, [u8], [u8]> =
                        FutureRecord::to(dlq_topic).headers(headers);
                    if let Some(k) = &m.key {
                        record = record.key(k.as_slice());
                    }
                    if let Some(v) = &m.value {
                        record = record.payload(v.as_slice());
                    }
                    if let Some(ts) = m.timestamp_ms {
                        record = record.timestamp(ts);
                    }
                    pending.push(producer.send(record, *timeout));
                }
                for p in pending {
                    p.await.map_err(|(e, _)| DlqError::Kafka(e.to_string()))?;
                }
                Ok(())
            }
            DeadLetterQueue::File { path } => {
                let err = |e: std::io::Error| DlqError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                };
                let mut out = Vec::new();
                for l in letters {
                    let m = &messages[l.index];
                    let mut headers: Vec<serde_json::Value> = m
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            serde_json::json!({"key": k, "value": v.as_deref().map(String::from_utf8_lossy)})
                        })
                        .collect();
                    headers.extend(
                        l.headers(m, dead_at)
                            .into_iter()
                            .map(|(k, v)| serde_json::json!({"key": k, "value": v})),
                    );
                    let text = |b: &Option<Vec<u8>>| {
                        b.as_deref()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                    };
                    let mut line = serde_json::json!({
                        "topic": &*m.topic,
                        "partition": m.partition,
                        "headers": headers,
                    });
                    match text(&m.key) {
                        Some(k) => line["raw_key"] = k.into(),
                        None => line["key"] = serde_json::Value::Null,
                    }
                    match text(&m.value) {
                        Some(v) => line["raw_value"] = v.into(),
                        None => line["value"] = serde_json::Value::Null,
                    }
                    serde_json::to_writer(&mut out, &line).map_err(|e| err(e.into()))?;
                    out.push(b'\n');
                }
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)?;
                    f.write_all(&out)?;
                    f.sync_data()
                })
                .await
                .map_err(|e| err(std::io::Error::other(e)))?
                .map_err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn message() -> Message {
        Message {
            topic: Arc::from("dbz.public.t"),
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(br#"{"id":1}"#.to_vec()),
            value: Some(b"{not json".to_vec()),
            headers: vec![("h".into(), Some(b"v".to_vec()))],
        }
    }

    #[test]
    fn the_producer_reuses_the_source_connection_settings() {
        let mut config = Config::default();
        let source = &mut config.source.kafka.options;
        source.insert("security.protocol".into(), "SASL_SSL".into());
        source.insert("sasl.mechanisms".into(), "SCRAM-SHA-512".into());
        source.insert("group.instance.id".into(), "floe-1".into());
        config
            .dlq
            .options
            .insert("sasl.mechanisms".into(), "PLAIN".into());
        let cc = producer_config(&config);
        assert_eq!(cc.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(cc.get("sasl.mechanisms"), Some("PLAIN"), "dlq.options win");
        assert_eq!(
            cc.get("group.instance.id"),
            None,
            "consumer settings stay out"
        );
        assert_eq!(cc.get("acks"), Some("all"));
    }

    #[tokio::test]
    async fn file_letters_are_fixture_lines_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("floe-dlq-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dlq.jsonl");
        let _ = std::fs::remove_file(&path);
        let q = DeadLetterQueue::File { path: path.clone() };
        let letter = DeadLetter {
            index: 0,
            category: "parse",
            stage: "validate",
            component: "builtin:validator".into(),
            reason: "parse: key must be a string".into(),
        };
        q.send(&[message()], &[letter]).await.unwrap();
        // Read back by the file source: the same message, with the error headers.
        let back = crate::sources::file::read_file(&path).unwrap();
        assert_eq!(back.len(), 1);
        let m = &back[0];
        assert_eq!(&*m.topic, "dbz.public.t");
        assert_eq!(m.value.as_deref(), Some(&b"{not json"[..]));
        assert_eq!(m.key.as_deref(), Some(&br#"{"id":1}"#[..]));
        let header = |k: &str| {
            m.headers
                .iter()
                .find(|(hk, _)| hk == k)
                .and_then(|(_, v)| v.clone())
                .map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(header("h").as_deref(), Some("v"));
        assert_eq!(header(CATEGORY_HEADER).as_deref(), Some("parse"));
        assert_eq!(header(OFFSET_HEADER).as_deref(), Some("41"));
        assert_eq!(header(PARTITION_HEADER).as_deref(), Some("2"));
        assert_eq!(
            header(REASON_HEADER).as_deref(),
            Some("parse: key must be a string")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
