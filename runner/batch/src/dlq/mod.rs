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
//! the fixture format (which `floe run --file` reads back), the log only, or a
//! [`LetterStore`] outside Kafka (the Lambda's SQS queue and S3 bucket), which writes
//! the same fixture lines.
//! `floe dlq replay` (in the runner) re-submits Kafka dead letters to their source
//! topics.

pub mod letter;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use letter::Letter;

use crate::config::{DlqConfig, DlqKind, KafkaOptions};
use crate::message::Message;

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

/// What one [`DeadLetterQueue::send`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Letters written in their bounded form ([`letter`]).
    pub cut: usize,
}

/// Errors writing dead letters; always retryable (the batch is not committed).
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("dead letter queue (kafka): {0}")]
    Kafka(String),
    #[error("dead letter queue (file {path}): {message}")]
    File { path: String, message: String },
    #[error("dead letter queue ({store}): {message}")]
    Store { store: String, message: String },
}

/// A place outside Kafka that dead letters are written to (the Lambda's SQS queue and
/// S3 bucket). `write` returns `Ok` only once every letter is durable there.
pub trait LetterStore: Send + Sync {
    /// A short description for logs (`sqs queue https://...`).
    fn describe(&self) -> String;

    /// Writes the letters of `messages` (see [`letter_line`] for their form).
    fn write<'a>(
        &'a self,
        messages: &'a [Message],
        letters: &'a [DeadLetter],
        dead_at_ms: i64,
    ) -> StoreWrite<'a>;
}

/// What [`LetterStore::write`] returns.
pub type StoreWrite<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Sent, DlqError>> + Send + 'a>>;

/// The JSON line of a letter in the fixture format (what `floe run --file` reads):
/// what the file, SQS and S3 kinds write.
pub fn letter_line(m: &Message, letter: &Letter) -> Vec<u8> {
    let line = crate::fixture::fixture_line(
        &m.topic,
        m.partition,
        &letter.key,
        &letter.value,
        &letter.headers,
    );
    serde_json::to_vec(&line).expect("a JSON value always serialises")
}

/// Where dead letters go.
pub enum DeadLetterQueue {
    Kafka {
        producer: FutureProducer<DlqContext>,
        topic: String,
        timeout: Duration,
        /// Letters larger than this are written in their bounded form.
        max_letter_bytes: usize,
    },
    File {
        path: PathBuf,
    },
    /// Logged and counted only (by the pipeline's events).
    Log,
    /// Written by a store outside Kafka (the Lambda's SQS and S3 kinds).
    Store(std::sync::Arc<dyn LetterStore>),
}

/// The DLQ topic of `source_topic` under the `dlq.topic` template (`{topic}` is the
/// source topic).
pub fn dlq_topic_of(template: &str, source_topic: &str) -> String {
    template.replace("{topic}", source_topic)
}

/// Whether `topic` is a dead letter topic under the `dlq.topic` template: floe never
/// consumes those as a source, even when a topic pattern matches them.
pub fn is_dlq_topic(template: &str, topic: &str) -> bool {
    match template.split_once("{topic}") {
        Some((prefix, suffix)) => {
            topic.len() > prefix.len() + suffix.len()
                && topic.starts_with(prefix)
                && topic.ends_with(suffix)
        }
        None => topic == template,
    }
}

/// The source topic whose dead letters `dlq_topic` holds, when the template names one
/// DLQ topic per source topic.
pub fn source_of_dlq_topic<'a>(template: &str, dlq_topic: &'a str) -> Option<&'a str> {
    let (prefix, suffix) = template.split_once("{topic}")?;
    if !is_dlq_topic(template, dlq_topic) {
        return None;
    }
    Some(&dlq_topic[prefix.len()..dlq_topic.len() - suffix.len()])
}

/// Now, in ms since the epoch (`floe.dead.at`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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

/// The Kafka cluster dead letters go to (the source's): its brokers, the settings of
/// reaching it, and the largest message it delivers.
#[derive(Clone, Default)]
pub struct Cluster {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The source's librdkafka settings: those about reaching and authenticating to the
    /// cluster (TLS, SASL, client id...) apply to every client floe opens on it.
    pub options: KafkaOptions,
    /// The largest message the source accepts (the producer makes room for it).
    pub max_message_bytes: usize,
    /// Where SASL/OAUTHBEARER tokens come from (`sasl.mechanism = OAUTHBEARER`, e.g.
    /// Amazon MSK's IAM authentication).
    pub token: Option<TokenSource>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("brokers", &self.brokers)
            .field("options", &self.options)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("token", &self.token.as_ref().map(|_| "<source>"))
            .finish()
    }
}

/// An OAUTHBEARER token and when it expires (ms since the epoch), made on demand.
pub type TokenSource = std::sync::Arc<dyn Fn() -> Result<(String, i64), String> + Send + Sync>;

/// The DLQ producer's librdkafka context: hands librdkafka OAUTHBEARER tokens from the
/// cluster's [`TokenSource`] when it asks for one (only with `sasl.mechanism =
/// OAUTHBEARER`).
pub struct DlqContext {
    token: Option<TokenSource>,
}

impl rdkafka::ClientContext for DlqContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        let Some(source) = &self.token else {
            return Err("sasl.mechanism is OAUTHBEARER but no token source is configured".into());
        };
        let (token, lifetime_ms) = source()?;
        Ok(rdkafka::client::OAuthToken {
            token,
            principal_name: String::new(),
            lifetime_ms,
        })
    }
}

/// The producer for dead letters and their replay: the cluster's brokers, acks from
/// all in-sync replicas, idempotent, room for the largest accepted message,
/// `dlq.options`.
pub fn producer(
    cluster: &Cluster,
    dlq: &DlqConfig,
) -> Result<FutureProducer<DlqContext>, DlqError> {
    producer_config(cluster, dlq)
        .create_with_context(DlqContext {
            token: cluster.token.clone(),
        })
        .map_err(|e| DlqError::Kafka(e.to_string()))
}

/// The DLQ producer's librdkafka settings.
fn producer_config(cluster: &Cluster, dlq: &DlqConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cluster.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.max.bytes",
            (cluster
                .max_message_bytes
                .max(dlq.max_letter_bytes)
                .max(1 << 20)
                * 2
                + 65_536)
                .min(1_000_000_000)
                .to_string(),
        )
        .set("message.timeout.ms", dlq.timeout_ms.to_string());
    connection_settings(&cluster.options, &mut cc);
    for (k, v) in &dlq.options {
        cc.set(k, v);
    }
    cc
}

/// The connection settings among `options` (TLS, SASL, client id...), which apply to
/// every client floe opens on the same cluster: the DLQ producer and the replay's
/// consumer.
pub fn connection_settings(options: &KafkaOptions, cc: &mut ClientConfig) {
    for (k, v) in options {
        if is_connection_setting(k) {
            cc.set(k, v);
        }
    }
}

impl DeadLetterQueue {
    /// The queue of `kind` (`auto` must be resolved by the caller; it is read as
    /// `log`), with its producer for `kafka`.
    pub fn new(
        kind: DlqKind,
        dlq: &DlqConfig,
        cluster: &Cluster,
    ) -> Result<DeadLetterQueue, DlqError> {
        Ok(match kind {
            DlqKind::Kafka => {
                let producer = producer(cluster, dlq)?;
                DeadLetterQueue::Kafka {
                    producer,
                    topic: dlq.topic.clone(),
                    timeout: Duration::from_millis(dlq.timeout_ms),
                    max_letter_bytes: dlq.max_letter_bytes,
                }
            }
            DlqKind::File => DeadLetterQueue::File {
                path: dlq.path.clone(),
            },
            DlqKind::Log | DlqKind::Auto => DeadLetterQueue::Log,
            DlqKind::Sqs | DlqKind::S3 => {
                return Err(DlqError::Store {
                    store: format!("{kind:?}").to_lowercase(),
                    message: "written by the Lambda's own store (DeadLetterQueue::Store)".into(),
                });
            }
        })
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            DeadLetterQueue::Kafka { topic, .. } => format!("kafka topic {topic}"),
            DeadLetterQueue::File { path } => format!("file {}", path.display()),
            DeadLetterQueue::Log => "log only".into(),
            DeadLetterQueue::Store(store) => store.describe(),
        }
    }

    /// Writes the letters durably (Kafka: acknowledged by all in-sync replicas; file:
    /// flushed and synced). `Ok` only when every one is written. Kafka letters are
    /// all handed to the producer first, then awaited together; one the broker refuses
    /// as too large is written again in its bounded form, smaller each time.
    pub async fn send(
        &self,
        messages: &[Message],
        letters: &[DeadLetter],
    ) -> Result<Sent, DlqError> {
        if letters.is_empty() {
            return Ok(Sent::default());
        }
        let dead_at = now_ms();
        match self {
            DeadLetterQueue::Log => Ok(Sent::default()),
            DeadLetterQueue::Store(store) => store.write(messages, letters, dead_at).await,
            DeadLetterQueue::Kafka {
                producer,
                topic,
                timeout,
                max_letter_bytes,
            } => {
                let mut sent = Sent::default();
                let mut pending = Vec::with_capacity(letters.len());
                for l in letters {
                    let m = &messages[l.index];
                    let dlq_topic = dlq_topic_of(topic, &m.topic);
                    let (letter, delivery) = enqueue(
                        producer,
                        &dlq_topic,
                        m,
                        l,
                        dead_at,
                        *max_letter_bytes,
                        *timeout,
                    )
                    .await?;
                    pending.push((l, dlq_topic, letter, delivery));
                }
                for (l, dlq_topic, mut letter, mut delivery) in pending {
                    loop {
                        match delivery.await {
                            Ok(Ok(_)) => break,
                            Ok(Err((e, _))) if is_too_large(&e) => {
                                // The topic takes less than `max_letter_bytes`: halve.
                                let m = &messages[l.index];
                                let budget = smaller(&letter, &dlq_topic, &e)?;
                                (letter, delivery) =
                                    enqueue(producer, &dlq_topic, m, l, dead_at, budget, *timeout)
                                        .await?;
                            }
                            Ok(Err((e, _))) => {
                                return Err(DlqError::Kafka(format!("{dlq_topic}: {e}")));
                            }
                            Err(_canceled) => {
                                return Err(DlqError::Kafka(format!(
                                    "{dlq_topic}: the producer went away before delivery"
                                )));
                            }
                        }
                    }
                    if letter.cut {
                        sent.cut += 1;
                    }
                }
                Ok(sent)
            }
            DeadLetterQueue::File { path } => {
                let err = |e: std::io::Error| DlqError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                };
                let mut out = Vec::new();
                for l in letters {
                    let m = &messages[l.index];
                    let letter = Letter::new(m, l, dead_at, usize::MAX);
                    out.extend(letter_line(m, &letter));
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
                .map_err(err)?;
                Ok(Sent::default())
            }
        }
    }
}

/// Whether the producer or the broker refused a letter for its size.
fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

/// The budget to try after `letter` was refused for its size: half its size, or an
/// error once even the smallest bounded form was refused.
fn smaller(letter: &Letter, dlq_topic: &str, e: &KafkaError) -> Result<usize, DlqError> {
    if letter.cut && letter.size() <= letter::MIN_LETTER_BYTES {
        return Err(DlqError::Kafka(format!(
            "{dlq_topic} refuses even a {} byte letter: {e}",
            letter.size()
        )));
    }
    Ok(letter.size() / 2)
}

/// Hands the letter of `m` (within `budget`, halved while the producer refuses it as
/// too large) to the producer, waiting while its queue is full, and returns it with
/// its delivery, which resolves once the broker acknowledged it.
async fn enqueue(
    producer: &FutureProducer<DlqContext>,
    dlq_topic: &str,
    m: &Message,
    dead: &DeadLetter,
    dead_at: i64,
    budget: usize,
    timeout: Duration,
) -> Result<(Letter, DeliveryFuture), DlqError> {
    let started = std::time::Instant::now();
    let mut letter = Letter::new(m, dead, dead_at, budget);
    loop {
        let mut headers = OwnedHeaders::new_with_capacity(letter.headers.len());
        for (k, v) in &letter.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(headers);
        if let Some(k) = &letter.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &letter.value {
            record = record.payload(v.as_slice());
        }
        if let Some(ts) = m.timestamp_ms {
            record = record.timestamp(ts);
        }
        match producer.send_result(record) {
            Ok(delivery) => return Ok((letter, delivery)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                if started.elapsed() < timeout =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) if is_too_large(&e) => {
                let budget = smaller(&letter, dlq_topic, &e)?;
                letter = Letter::new(m, dead, dead_at, budget);
            }
            Err((e, _)) => return Err(DlqError::Kafka(format!("{dlq_topic}: {e}"))),
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
    fn dlq_topics_are_recognised_by_their_template() {
        let t = "{topic}.dlq";
        assert_eq!(
            dlq_topic_of(t, "dbz.public.orders"),
            "dbz.public.orders.dlq"
        );
        assert!(is_dlq_topic(t, "dbz.public.orders.dlq"));
        assert!(!is_dlq_topic(t, "dbz.public.orders"));
        assert!(
            !is_dlq_topic(t, ".dlq"),
            "the source topic part is never empty"
        );
        assert_eq!(
            source_of_dlq_topic(t, "dbz.public.orders.dlq"),
            Some("dbz.public.orders")
        );
        assert_eq!(source_of_dlq_topic(t, "dbz.public.orders"), None);
        assert_eq!(
            source_of_dlq_topic("dead.{topic}", "dead.dbz.x.y"),
            Some("dbz.x.y")
        );
        // One shared DLQ topic: recognised, but it names no source topic.
        assert!(is_dlq_topic("floe-dead", "floe-dead"));
        assert!(!is_dlq_topic("floe-dead", "floe-dead-2"));
        assert_eq!(source_of_dlq_topic("floe-dead", "floe-dead"), None);
    }

    #[test]
    fn the_producer_reuses_the_source_connection_settings() {
        let mut cluster = Cluster::default();
        let source = &mut cluster.options;
        source.insert("security.protocol".into(), "SASL_SSL".into());
        source.insert("sasl.mechanisms".into(), "SCRAM-SHA-512".into());
        source.insert("group.instance.id".into(), "floe-1".into());
        let mut dlq = DlqConfig::default();
        dlq.options.insert("sasl.mechanisms".into(), "PLAIN".into());
        let cc = producer_config(&cluster, &dlq);
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
        let back = crate::fixture::parse_lines(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back.len(), 1);
        let m = &back[0];
        assert_eq!(&*m.topic, "dbz.public.t");
        assert_eq!(m.value.as_deref(), Some(&b"{not json"[..]));
        assert_eq!(m.key.as_deref(), Some(&br#"{"id":1}"#[..]));
        let header = |k: &str| m.header(k);
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

    #[tokio::test]
    async fn file_letters_keep_bytes_that_are_not_utf8() {
        let dir = std::env::temp_dir().join(format!("floe-dlq-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dlq.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut m = message();
        m.key = Some(vec![0xff, 0x00, b'k']);
        m.value = Some(vec![b'{', 0xc3, 0x28, 0x80, b'}']);
        m.headers = vec![
            ("bin".into(), Some(vec![0xfe, 0xed])),
            ("text".into(), Some(b"plain".to_vec())),
            ("none".into(), None),
        ];
        let letter = DeadLetter {
            index: 0,
            category: "parse",
            stage: "validate",
            component: "builtin:validator".into(),
            reason: "parse: invalid utf-8".into(),
        };
        let q = DeadLetterQueue::File { path: path.clone() };
        q.send(std::slice::from_ref(&m), &[letter]).await.unwrap();
        let back = crate::fixture::parse_lines(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back[0].key, m.key);
        assert_eq!(back[0].value, m.value);
        assert_eq!(&back[0].headers[..3], &m.headers[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
