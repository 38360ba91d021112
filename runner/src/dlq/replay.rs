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

/// Replays dead letters as `opts` asks; see the module docs.
pub async fn replay(config: &Config, opts: &ReplayOptions) -> Result<ReplayReport, DlqError> {
    let brokers = &config.source.kafka.brokers;
    let group = opts.group.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{}-dlq-replay-{now}", config.source.kafka.group_id)
    });
    let consumer: StreamConsumer = ClientConfig::new()
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
        vec![topic_regex(&config.dlq.topic)]
    } else {
        opts.topics.clone()
    };
    let refs: Vec<&str> = subscription.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).map_err(kafka)?;
    let producer = super::producer(config)?;
    tracing::info!(topics = ?subscription, group = %group, dry_run = opts.dry_run, "dlq replay started");

    let mut report = ReplayReport {
        dry_run: opts.dry_run,
        ..ReplayReport::default()
    };
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
        "dlq replay finished"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

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
