//! `floe dlq replay`: re-submits Kafka dead letters to the topics they were read from,
//! once whatever refused them is fixed (a target column altered, a size limit raised, a
//! validator corrected). The running pipeline then consumes them like any other change;
//! its MERGE applies a change only when it is not older than the target row, so a
//! replayed old change never overwrites a newer one.
//!
//! Each replay reads the DLQ topics from the beginning with a fresh consumer group
//! (nothing is committed), unless `group` is given: then it commits, and the next replay
//! with that group continues after what it replayed. It stops once no record arrived
//! for `idle`. Records can be filtered by category; the floe headers are removed and
//! `floe.replayed.from` (`<dlq topic>/<partition>/<offset>`) is added.
//!
//! It connects with the source's connection settings (`source.kafka.options`: TLS,
//! SASL), reads only the DLQ topics of the configured source topics (the list, or the
//! broker's topics the pattern matches), and writes a letter back only to a configured
//! source topic, the one its DLQ topic belongs to. It never re-submits a letter that
//! could undo a newer change or is not the original: a tombstone or a change without a
//! source LSN (the MERGE applies those unconditionally) unless `allow_without_lsn`, and
//! never a letter cut to fit the DLQ (`floe.cut`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use super::{CATEGORY_HEADER, DlqError, HEADER_PREFIX, TOPIC_HEADER};
use crate::config::Config;

/// Header naming the dead letter a replayed message came from.
pub const REPLAYED_FROM_HEADER: &str = "floe.replayed.from";

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Only these categories (empty: all).
    pub categories: Vec<String>,
    /// DLQ topics to read (empty: every topic the `dlq.topic` template names).
    pub topics: Vec<String>,
    /// Stop after no record arrived for this long.
    pub idle: Duration,
    /// Count what would be replayed, produce nothing.
    pub dry_run: bool,
    /// Consumer group that commits what it read (None: a fresh group, nothing committed).
    pub group: Option<String>,
    /// Also re-submit tombstones and changes without a source LSN, which the MERGE
    /// applies whatever the target row's LSN (so a late one can undo a newer change).
    pub allow_without_lsn: bool,
}

/// What a replay did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters read.
    pub read: u64,
    /// Re-submitted to their source topic (or, in a dry run, that would be).
    pub replayed: u64,
    /// Left alone: their category was not asked for.
    pub filtered_out: u64,
    /// Without a `floe.source.topic` header: not a floe dead letter.
    pub unreplayable: u64,
    /// Their `floe.source.topic` is not a configured source topic (or not the one
    /// their DLQ topic belongs to): never written there.
    pub foreign: u64,
    /// Cut to fit the DLQ (`floe.cut`): not the original bytes, never replayed.
    pub cut: u64,
    /// Tombstones and changes without a source LSN, left alone (see
    /// `allow_without_lsn`).
    pub without_lsn: u64,
    /// Read, by category.
    pub by_category: BTreeMap<String, u64>,
    pub dry_run: bool,
}

/// The subscription regex of the DLQ topics a `{topic}` template names.
pub fn topic_regex(template: &str) -> String {
    match template.split_once("{topic}") {
        Some((prefix, suffix)) => format!("^{}.+{}$", regex::escape(prefix), regex::escape(suffix)),
        None => format!("^{}$", regex::escape(template)),
    }
}

fn kafka(e: impl std::fmt::Display) -> DlqError {
    DlqError::Kafka(e.to_string())
}

/// Whether `topic` is one of the configured source topics (the list, or the pattern
/// as librdkafka anchors it) and not a DLQ topic.
pub fn is_source_topic(config: &Config, topic: &str) -> bool {
    if super::is_dlq_topic(&config.dlq.topic, topic) {
        return false;
    }
    let k = &config.source.kafka;
    if !k.topics.is_empty() {
        return k.topics.iter().any(|t| t == topic);
    }
    let pattern = if k.topic_pattern.starts_with('^') {
        k.topic_pattern.clone()
    } else {
        format!("^{}", k.topic_pattern)
    };
    regex::Regex::new(&pattern).is_ok_and(|r| r.is_match(topic))
}

/// Whether `dlq_topic` holds dead letters of a configured source topic.
fn is_dlq_of_source(config: &Config, dlq_topic: &str) -> bool {
    let template = &config.dlq.topic;
    if !template.contains("{topic}") {
        return dlq_topic == template;
    }
    super::source_of_dlq_topic(template, dlq_topic).is_some_and(|s| is_source_topic(config, s))
}

/// Whether a dead letter's value carries a source LSN, which orders it against the
/// target row: `source.lsn` of an envelope, `__lsn` of a flattened record (either
/// inside a `{"schema","payload"}` frame).
pub fn has_lsn(value: Option<&[u8]>) -> bool {
    let Some(value) = value else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(value) else {
        return false;
    };
    let inner = match v.get("payload") {
        Some(p) if v.get("schema").is_some() && p.is_object() => p,
        _ => &v,
    };
    inner
        .pointer("/source/lsn")
        .is_some_and(|l| l.is_i64() || l.is_u64())
        || inner.get("__lsn").is_some_and(|l| {
            l.is_i64() || l.is_u64() || l.as_str().is_some_and(|s| s.parse::<i64>().is_ok())
        })
}

/// Replays dead letters as `opts` asks; see the module docs.
pub async fn replay(config: &Config, opts: &ReplayOptions) -> Result<ReplayReport, DlqError> {
    let brokers = &config.source.kafka.brokers;
    let group = opts.group.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{}-dlq-replay-{now}", config.source.kafka.group_id)
    });
    let mut cc = ClientConfig::new();
    super::connection_settings(&config.source.kafka.options, &mut cc);
    let consumer: StreamConsumer = cc
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            config.source.kafka.session_timeout_ms.to_string(),
        )
        .set(
            "topic.metadata.refresh.interval.ms",
            config.source.kafka.metadata_refresh_ms.to_string(),
        )
        .create()
        .map_err(kafka)?;
    let subscription: Vec<String> = if opts.topics.is_empty() {
        // The broker's DLQ topics of configured source topics.
        let consumer = &consumer;
        let metadata =
            tokio::task::block_in_place(|| consumer.fetch_metadata(None, Duration::from_secs(30)))
                .map_err(kafka)?;
        metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|t| is_dlq_of_source(config, t))
            .collect()
    } else {
        if let Some(t) = opts.topics.iter().find(|t| !is_dlq_of_source(config, t)) {
            return Err(DlqError::Kafka(format!(
                "{t} is not the dead letter topic of a configured source topic (dlq.topic = {:?})",
                config.dlq.topic
            )));
        }
        opts.topics.clone()
    };
    let mut report = ReplayReport {
        dry_run: opts.dry_run,
        ..ReplayReport::default()
    };
    if subscription.is_empty() {
        tracing::info!("dlq replay: no dead letter topic of a configured source topic exists");
        return Ok(report);
    }
    let refs: Vec<&str> = subscription.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).map_err(kafka)?;
    let producer = super::producer(&config.cluster(), &config.dlq)?;
    tracing::info!(topics = ?subscription, group = %group, dry_run = opts.dry_run, "dlq replay started");

    // The first record may wait for the consumer-group join.
    let join = Duration::from_millis(config.source.kafka.session_timeout_ms);
    let started = Instant::now();
    let mut last = None::<Instant>;
    loop {
        let wait = match last {
            Some(t) => opts.idle.saturating_sub(t.elapsed()),
            None => (join + opts.idle).saturating_sub(started.elapsed()),
        };
        if wait.is_zero() {
            break;
        }
        let m = match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(kafka(e)),
            Ok(Ok(m)) => m,
        };
        last = Some(Instant::now());
        report.read += 1;
        let header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == name)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let category = header(CATEGORY_HEADER).unwrap_or_default();
        *report.by_category.entry(category.clone()).or_default() += 1;
        if !opts.categories.is_empty() && !opts.categories.contains(&category) {
            report.filtered_out += 1;
            continue;
        }
        let Some(source_topic) = header(TOPIC_HEADER) else {
            report.unreplayable += 1;
            continue;
        };
        let belongs = match super::source_of_dlq_topic(&config.dlq.topic, m.topic()) {
            Some(owner) => owner == source_topic,
            None => true,
        };
        if !belongs || !is_source_topic(config, &source_topic) {
            tracing::warn!(dlq_topic = m.topic(), offset = m.offset(), source_topic = %source_topic, "dead letter names a topic that is not its configured source topic: not replayed");
            report.foreign += 1;
            continue;
        }
        if header(super::letter::CUT_HEADER).is_some() {
            report.cut += 1;
            continue;
        }
        if !opts.allow_without_lsn && !has_lsn(m.payload()) {
            report.without_lsn += 1;
            continue;
        }
        if !opts.dry_run {
            let mut headers = OwnedHeaders::new();
            if let Some(h) = m.headers() {
                for x in h.iter().filter(|x| !x.key.starts_with(HEADER_PREFIX)) {
                    headers = headers.insert(x);
                }
            }
            let from = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
            headers = headers.insert(Header {
                key: REPLAYED_FROM_HEADER,
                value: Some(from.as_bytes()),
            });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&source_topic).headers(headers);
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(v) = m.payload() {
                record = record.payload(v);
            }
            producer
                .send(record, Duration::from_millis(config.dlq.timeout_ms))
                .await
                .map_err(|(e, _)| kafka(e))?;
        }
        report.replayed += 1;
        if opts.group.is_some() && !opts.dry_run {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))
                .map_err(kafka)?;
            consumer.commit(&tpl, CommitMode::Sync).map_err(kafka)?;
        }
    }
    tracing::info!(
        read = report.read,
        replayed = report.replayed,
        filtered_out = report.filtered_out,
        foreign = report.foreign,
        cut = report.cut,
        without_lsn = report.without_lsn,
        "dlq replay finished"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_source_topics_are_written() {
        let mut config = Config::default();
        // The default pattern ^dbz\.[^.]+\.[^.]+$
        assert!(is_source_topic(&config, "dbz.public.orders"));
        assert!(!is_source_topic(&config, "other.public.orders"));
        assert!(!is_source_topic(&config, "__consumer_offsets"));
        assert!(is_dlq_of_source(&config, "dbz.public.orders.dlq"));
        assert!(!is_dlq_of_source(&config, "payments.ledger.dlq"));
        // A broad pattern matches the DLQ topics too: they are still never sources.
        config.source.kafka.topic_pattern = "dbz\\..*".into();
        assert!(is_source_topic(&config, "dbz.public.orders"));
        assert!(!is_source_topic(&config, "dbz.public.orders.dlq"));
        config.source.kafka.topics = vec!["dbz.public.a".into()];
        assert!(is_source_topic(&config, "dbz.public.a"));
        assert!(!is_source_topic(&config, "dbz.public.b"));
        assert!(is_dlq_of_source(&config, "dbz.public.a.dlq"));
        assert!(!is_dlq_of_source(&config, "dbz.public.b.dlq"));
    }

    #[test]
    fn letters_without_an_lsn_are_recognised() {
        let yes = [
            r#"{"op":"c","after":{"id":1},"source":{"lsn":42}}"#,
            r#"{"schema":{},"payload":{"op":"c","source":{"lsn":42}}}"#,
            r#"{"id":1,"__lsn":42}"#,
            r#"{"id":1,"__lsn":"42"}"#,
            r#"{"schema":{},"payload":{"id":1,"__lsn":42}}"#,
        ];
        for v in yes {
            assert!(has_lsn(Some(v.as_bytes())), "{v}");
        }
        let no = [
            r#"{"op":"c","after":{"id":1},"source":{"lsn":null}}"#,
            r#"{"id":1,"name":"x"}"#,
            "not json",
        ];
        for v in no {
            assert!(!has_lsn(Some(v.as_bytes())), "{v}");
        }
        assert!(!has_lsn(None), "a tombstone has no LSN");
    }

    #[test]
    fn template_to_subscription() {
        let re = topic_regex("{topic}.dlq");
        assert_eq!(re, r"^.+\.dlq$");
        let r = regex::Regex::new(&re).unwrap();
        assert!(r.is_match("dbz.public.customers.dlq"));
        assert!(!r.is_match("dbz.public.customers"));
        assert_eq!(topic_regex("floe-dead"), "^floe\\-dead$");
        assert_eq!(topic_regex("dlq.{topic}"), r"^dlq\..+$");
    }
}
