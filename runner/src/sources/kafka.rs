//! The Kafka source: a consumer group over a topic list or a topic-name pattern, with
//! auto-commit and auto offset store off. Offsets are committed only through
//! [`Source::commit`], which the pipeline calls after the warehouse committed the batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{BatchLimits, Checkpoint, InFlight, Message, Source, SourceBatch, SourceError};
use crate::config::KafkaConfig;
use floe_batch::events::{ConsumerPositions, Stats};
use floe_batch::metrics::PartitionPosition;

/// Logs rebalances (partition assignment changes) as they happen, tracks whether this
/// consumer owns any partition, and remembers revoked partitions so that the batch
/// being collected drops their messages.
pub struct FloeContext {
    assigned: Arc<AtomicBool>,
    revoked: Arc<Mutex<Vec<(String, i32)>>>,
    /// The batch loaded while the next one is consumed: a revoke waits for it and
    /// commits it first.
    in_flight: Arc<InFlight>,
    /// The `dlq.topic` template: topics it names are floe's own dead letters, which a
    /// broad topic pattern may match; their partitions are paused on assignment and
    /// never consumed.
    dlq_template: String,
    /// Where librdkafka's statistics reports go (`floe.consumer.lag`, ...).
    stats: Arc<Stats>,
}

impl FloeContext {
    fn is_excluded(&self, topic: &str) -> bool {
        crate::dlq::is_dlq_topic(&self.dlq_template, topic)
    }
}

impl ClientContext for FloeContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag and committed
    /// offset of each partition this consumer is assigned.
    fn stats(&self, statistics: rdkafka::Statistics) {
        ConsumerPositions {
            partitions: positions(&statistics),
        }
        .emit(&self.stats);
    }

    /// librdkafka's client-level errors, at the level they deserve: a topic that does
    /// not exist yet (Debezium creates a table's topic with its first change) is part
    /// of starting up, a broker that cannot be reached is retried by librdkafka and
    /// ridden out by the broker breaker; the rest need a person.
    fn error(&self, error: KafkaError, reason: &str) {
        match client_error_kind(&error) {
            ClientErrorKind::TopicNotYet => tracing::info!(
                error = %error, reason,
                "a subscribed topic does not exist yet; it is consumed as soon as it appears (Debezium creates a table's topic with the table's first change)"
            ),
            ClientErrorKind::BrokerUnreachable => tracing::warn!(
                error = %error, reason,
                "kafka broker unreachable; librdkafka reconnects"
            ),
            ClientErrorKind::Other => tracing::error!(error = %error, reason, "kafka client error"),
        }
    }
}

/// The assigned partitions' positions in a statistics report (librdkafka reports -1
/// and -1001 for what it does not know yet; its internal partition -1 is left out).
fn positions(statistics: &rdkafka::Statistics) -> Vec<PartitionPosition> {
    let mut out: Vec<PartitionPosition> = statistics
        .topics
        .iter()
        .flat_map(|(topic, t)| {
            t.partitions
                .values()
                .filter(|p| p.partition >= 0 && p.desired)
                .map(move |p| PartitionPosition {
                    topic: topic.clone(),
                    partition: p.partition,
                    lag: (p.consumer_lag >= 0).then_some(p.consumer_lag),
                    committed: (p.committed_offset >= 0).then_some(p.committed_offset),
                })
        })
        .collect();
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    out
}

/// What a librdkafka client error means for the operator.
#[derive(Debug, PartialEq, Eq)]
enum ClientErrorKind {
    /// A subscribed topic does not exist (yet).
    TopicNotYet,
    /// Brokers down or a connection lost: transient.
    BrokerUnreachable,
    Other,
}

fn client_error_kind(error: &KafkaError) -> ClientErrorKind {
    use rdkafka::error::RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::UnknownTopicOrPartition | C::UnknownTopic) => ClientErrorKind::TopicNotYet,
        Some(C::AllBrokersDown | C::BrokerTransportFailure | C::Resolve) => {
            ClientErrorKind::BrokerUnreachable
        }
        _ => ClientErrorKind::Other,
    }
}

/// How often librdkafka reports its statistics (partition lag and committed offsets),
/// unless `source.kafka.options` sets `statistics.interval.ms`.
const STATISTICS_INTERVAL_MS: &str = "5000";

/// How long a revoke waits for the batch in flight to load (far below floe's
/// `max.poll.interval.ms` of 15 minutes, which bounds how long the group waits for this
/// member). A load that takes longer is left to the pipeline, whose commit the group
/// then refuses: the new owner replays the batch.
const REVOKE_WAIT: Duration = Duration::from_secs(120);

impl FloeContext {
    /// Waits for the batch in flight (if any) and commits its offsets.
    fn commit_in_flight(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>) {
        let wait = || self.in_flight.wait_loaded(REVOKE_WAIT);
        // The callback runs inside a poll on a runtime worker; the load runs on
        // another task, which must keep running while this one blocks.
        let checkpoint = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            Ok(_) => None,
            Err(_) => wait(),
        };
        let Some(checkpoint) = checkpoint else {
            return;
        };
        match commit_sync(consumer, &checkpoint) {
            Ok(()) => tracing::info!(
                partitions = checkpoint.next_offsets.len(),
                "the batch loaded during the rebalance is committed before its partitions go"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "committing the batch loaded during the rebalance failed; the partitions' new owner replays it")
            }
        }
    }
}

/// The offsets to commit for `checkpoint`.
fn offsets(checkpoint: &Checkpoint) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in &checkpoint.next_offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
    }
    Ok(tpl)
}

/// Commits `checkpoint`'s offsets and waits for the broker's answer: from the pipeline,
/// from the load's task and from the rebalance callback. On a multi-thread runtime the
/// wait leaves the worker's other tasks to the other workers.
fn commit_sync<C: Consumer<FloeContext>>(
    consumer: &C,
    checkpoint: &Checkpoint,
) -> Result<(), KafkaError> {
    let tpl = offsets(checkpoint)?;
    let commit = || consumer.commit(&tpl, CommitMode::Sync);
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(commit),
        _ => commit(),
    }
}

impl ConsumerContext for FloeContext {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // Rebalance callbacks only run inside a poll, and the pipeline polls
                // while at most one batch is loaded and uncommitted: the one in
                // flight. It is waited for and committed here, before the partitions
                // go, so no new owner loads it a second time alongside this one. The
                // messages of these partitions in the batch being collected are
                // dropped: their new owner consumes them from the committed offset,
                // in order.
                self.commit_in_flight(consumer);
                tracing::info!(
                    partitions = tpl.count(),
                    "kafka partitions revoked; loaded offsets are committed"
                );
                let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
                revoked.extend(
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition())),
                );
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "kafka partitions assigned")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }

    fn post_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.assigned.store(tpl.count() > 0, Ordering::Relaxed);
                let mut excluded = TopicPartitionList::new();
                for e in tpl.elements() {
                    if self.is_excluded(e.topic()) {
                        excluded.add_partition(e.topic(), e.partition());
                    }
                }
                if excluded.count() > 0 {
                    let elements = excluded.elements();
                    let topics: std::collections::BTreeSet<&str> =
                        elements.iter().map(|e| e.topic()).collect();
                    tracing::warn!(topics = ?topics, "the topic pattern matches floe's dead letter topics: their partitions are paused, never consumed as changes");
                    if let Err(e) = consumer.pause(&excluded) {
                        tracing::warn!(error = %e, "pausing dead letter topic partitions failed; their messages are dropped unconsumed instead");
                    }
                }
            }
            Rebalance::Revoke(_) => self.assigned.store(false, Ordering::Relaxed),
            Rebalance::Error(_) => {}
        }
    }
}

/// A Kafka consumer-group source.
pub struct KafkaSource {
    /// Shared (weakly) with the load's task, which commits a loaded batch through it.
    consumer: Arc<StreamConsumer<FloeContext>>,
    /// The `dlq.topic` template (see [`FloeContext`]).
    dlq_template: String,
    assigned: Arc<AtomicBool>,
    revoked: Arc<Mutex<Vec<(String, i32)>>>,
    /// Shared with the rebalance callback (see [`FloeContext`]).
    in_flight: Arc<InFlight>,
    topics: HashMap<String, Arc<str>>,
    group: String,
}

impl KafkaSource {
    /// Creates the consumer and subscribes. Topics are a list or, when the list is empty,
    /// the regular expression `topic_pattern`. Topics the `dlq_template` names (floe's
    /// own dead letter topics) are never consumed, even when the pattern matches them.
    pub fn new(
        config: &KafkaConfig,
        dlq_template: &str,
        stats: Arc<Stats>,
    ) -> Result<KafkaSource, SourceError> {
        let mut cc = ClientConfig::new();
        for (k, v) in &config.options {
            cc.set(k, v);
        }
        cc.set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set(
                "topic.metadata.refresh.interval.ms",
                config.metadata_refresh_ms.to_string(),
            )
            .set_log_level(RDKafkaLogLevel::Warning);
        // Back-pressure: bound what librdkafka prefetches while a batch loads (its
        // defaults allow 64 MiB and 100,000 messages). The message count is bounded
        // too, one per KiB of the budget: each queued message costs librdkafka about
        // half a KiB beyond its key and value, so 16 MiB of small (Avro) messages would
        // otherwise hold far more memory than the budget says (docs/benchmarks.md
        // "Schemas read once per topic").
        let prefetch = config.max_prefetch_bytes.max(1 << 20);
        let fetch = (prefetch / 4).clamp(1 << 20, 50 << 20);
        for (key, value) in [
            ("queued.max.messages.kbytes", (prefetch / 1024).to_string()),
            (
                "queued.min.messages",
                (prefetch / 1024).clamp(1000, 100_000).to_string(),
            ),
            ("fetch.max.bytes", fetch.to_string()),
            ("max.partition.fetch.bytes", fetch.min(1 << 20).to_string()),
            // Once the queue is full (a batch is processed), librdkafka waits this long
            // before it looks again whether it may fetch: its default of 1 s left the
            // next batch waiting for data after every batch (11.3k instead of 8.4k
            // events/s in docs/benchmarks.md "Fetch backoff and parallel component calls").
            ("fetch.queue.backoff.ms", "10".to_string()),
        ] {
            if !config.options.contains_key(key) {
                cc.set(key, value);
            }
        }
        // Consumer lag and committed offsets (floe.consumer.*) come from these reports.
        if !config.options.contains_key("statistics.interval.ms") {
            cc.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        }
        if !config.options.contains_key("auto.offset.reset") {
            cc.set("auto.offset.reset", "earliest");
        }
        // A batch held through load retries and an open warehouse breaker is not polled
        // for minutes; librdkafka's default (5 min) would drop floe from the group then.
        if !config.options.contains_key("max.poll.interval.ms") {
            cc.set("max.poll.interval.ms", "900000");
        }
        let assigned = Arc::new(AtomicBool::new(false));
        let revoked = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(InFlight::default());
        let consumer: StreamConsumer<FloeContext> = cc.create_with_context(FloeContext {
            assigned: assigned.clone(),
            revoked: revoked.clone(),
            in_flight: in_flight.clone(),
            dlq_template: dlq_template.to_owned(),
            stats,
        })?;
        let subscription: Vec<String> = if config.topics.is_empty() {
            let p = &config.topic_pattern;
            // librdkafka treats a subscription starting with '^' as a regex.
            vec![if p.starts_with('^') {
                p.clone()
            } else {
                format!("^{p}")
            }]
        } else {
            config.topics.clone()
        };
        let refs: Vec<&str> = subscription.iter().map(String::as_str).collect();
        consumer.subscribe(&refs)?;
        let consumer = Arc::new(consumer);
        // Weak: the consumer's context holds `in_flight`, which holds this.
        let weak = Arc::downgrade(&consumer);
        in_flight.set_commit_now(Box::new(move |checkpoint: &Checkpoint| {
            let consumer = weak.upgrade().ok_or("the consumer is closed")?;
            commit_sync(&*consumer, checkpoint).map_err(|e| e.to_string())?;
            tracing::debug!(
                partitions = checkpoint.next_offsets.len(),
                "kafka offsets committed as the batch was loaded"
            );
            Ok(())
        }));
        tracing::info!(brokers = %config.brokers, group = %config.group_id, topics = ?subscription, "kafka source subscribed");
        Ok(KafkaSource {
            consumer,
            group: config.group_id.clone(),
            dlq_template: dlq_template.to_owned(),
            assigned,
            revoked,
            in_flight,
            topics: HashMap::new(),
        })
    }
}

/// Copies a borrowed message out of librdkafka's buffer, interning its topic name.
fn own(topics: &mut HashMap<String, Arc<str>>, m: &BorrowedMessage<'_>) -> Message {
    let topic = match topics.get(m.topic()) {
        Some(t) => t.clone(),
        None => {
            let t: Arc<str> = m.topic().into();
            topics.insert(m.topic().to_string(), t.clone());
            t
        }
    };
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    Message {
        topic,
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::ClientCreation(_)
            | KafkaError::Subscription(_)
            | KafkaError::Canceled
            | KafkaError::MessageConsumptionFatal(_)
    )
}

/// Errors that say nothing about the broker's health: a subscribed topic that does not
/// exist (yet). Logged, never counted against the broker breaker.
fn is_benign(e: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e,
        KafkaError::MessageConsumption(C::UnknownTopicOrPartition | C::UnknownTopic)
    )
}

impl KafkaSource {
    /// Drops from `batch` the messages of partitions revoked since the last call.
    fn drop_revoked(&self, batch: &mut SourceBatch) {
        let revoked: Vec<(String, i32)> =
            std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()));
        if revoked.is_empty() || batch.messages.is_empty() {
            return;
        }
        let before = batch.messages.len();
        batch.retain(|m| {
            !revoked
                .iter()
                .any(|(t, p)| *p == m.partition && **t == *m.topic)
        });
        tracing::info!(
            dropped = before - batch.messages.len(),
            "messages of revoked partitions dropped from the batch being collected (their new owner consumes them)"
        );
    }
}

impl Source for KafkaSource {
    fn is_ready(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }

    fn in_flight(&self) -> Option<Arc<InFlight>> {
        Some(self.in_flight.clone())
    }

    fn consumer_group(&self) -> Option<&str> {
        Some(&self.group)
    }

    async fn next_batch(
        &mut self,
        limits: BatchLimits,
    ) -> Result<Option<SourceBatch>, SourceError> {
        let mut batch = SourceBatch::default();
        let started = Instant::now();
        let mut first_at: Option<Instant> = None;
        loop {
            let wait = match first_at {
                None => limits.idle_poll.saturating_sub(started.elapsed()),
                Some(t) => limits.max_wait.saturating_sub(t.elapsed()),
            };
            if wait.is_zero() {
                break;
            }
            let received = tokio::time::timeout(wait, self.consumer.recv()).await;
            let m = match received {
                Err(_elapsed) => break,
                Ok(Ok(m)) => m,
                Ok(Err(e)) if is_fatal(&e) => return Err(e.into()),
                Ok(Err(e)) if is_benign(&e) => {
                    // The client's error callback has said so at info (FloeContext::error).
                    tracing::debug!(error = %e, "a subscribed topic does not exist yet");
                    continue;
                }
                // A transient broker error ends the batch: what was collected is
                // loaded (librdkafka's position is past it already); an empty batch
                // reports the error to the pipeline's broker breaker.
                Ok(Err(e)) if batch.messages.is_empty() => return Err(e.into()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consume error; batch cut here");
                    break;
                }
            };
            if crate::dlq::is_dlq_topic(&self.dlq_template, m.topic()) {
                // Only if pausing the partition failed: never a change to load.
                tracing::debug!(topic = m.topic(), "message of a dead letter topic dropped");
                continue;
            }
            let msg = own(&mut self.topics, &m);
            drop(m);
            self.drop_revoked(&mut batch);
            first_at.get_or_insert_with(Instant::now);
            batch.push(msg);
            if batch.messages.len() >= limits.max_rows || batch.bytes >= limits.max_bytes {
                break;
            }
        }
        self.drop_revoked(&mut batch);
        Ok(Some(batch))
    }

    async fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        if checkpoint.is_empty() {
            return Ok(());
        }
        commit_sync(&*self.consumer, checkpoint)?;
        tracing::debug!(
            partitions = checkpoint.next_offsets.len(),
            "kafka offsets committed"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode as C;

    #[test]
    fn start_up_and_broker_conditions_are_not_logged_as_errors() {
        let kind = |e| client_error_kind(&e);
        // What `make demo` logged at ERROR while Debezium's topics were being created.
        assert_eq!(
            kind(KafkaError::Global(C::UnknownTopicOrPartition)),
            ClientErrorKind::TopicNotYet
        );
        assert_eq!(
            kind(KafkaError::MessageConsumption(C::UnknownTopic)),
            ClientErrorKind::TopicNotYet
        );
        assert_eq!(
            kind(KafkaError::Global(C::AllBrokersDown)),
            ClientErrorKind::BrokerUnreachable
        );
        assert_eq!(
            kind(KafkaError::Global(C::BrokerTransportFailure)),
            ClientErrorKind::BrokerUnreachable
        );
        assert_eq!(
            kind(KafkaError::Global(C::SaslAuthenticationFailed)),
            ClientErrorKind::Other
        );
        assert_eq!(
            kind(KafkaError::Global(C::TopicAuthorizationFailed)),
            ClientErrorKind::Other
        );
    }
}
