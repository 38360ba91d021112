//! Where change events come from. The pipeline sees only [`Source`], [`Message`] and
//! [`Checkpoint`]: it knows neither rdkafka nor files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub mod file;
pub mod in_flight;
pub mod kafka;

pub use in_flight::{CommitNow, InFlight};

pub use floe_batch::format;
pub use floe_batch::message::{Message, batch_of};

/// The next offset to consume per (topic, partition): what to commit once the batch
/// that ends there is in the warehouse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub next_offsets: BTreeMap<(Arc<str>, i32), i64>,
}

impl Checkpoint {
    /// Records that `msg` is part of the batch.
    pub fn advance(&mut self, msg: &Message) {
        let next = msg.offset + 1;
        let slot = self
            .next_offsets
            .entry((msg.topic.clone(), msg.partition))
            .or_insert(next);
        if next > *slot {
            *slot = next;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }
}

/// A cut micro-batch.
#[derive(Debug, Default)]
pub struct SourceBatch {
    pub messages: Vec<Message>,
    pub checkpoint: Checkpoint,
    /// Sum of [`Message::size`].
    pub bytes: usize,
}

impl SourceBatch {
    pub fn push(&mut self, msg: Message) {
        self.bytes += msg.size();
        self.checkpoint.advance(&msg);
        self.messages.push(msg);
    }

    /// Keeps only the messages `keep` accepts (recomputing bytes and checkpoint).
    pub fn retain(&mut self, keep: impl Fn(&Message) -> bool) {
        let messages = std::mem::take(&mut self.messages);
        *self = SourceBatch::default();
        for m in messages.into_iter().filter(|m| keep(m)) {
            self.push(m);
        }
    }
}

/// When to cut a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
    /// How long a batch stays open after its first message.
    pub max_wait: Duration,
    /// How long to wait for the first message before returning an empty batch.
    pub idle_poll: Duration,
}

/// Errors of a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kafka: {0}")]
    Kafka(rdkafka::error::KafkaError),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("source configuration: {0}")]
    Config(String),
}

impl From<rdkafka::error::KafkaError> for SourceError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        SourceError::Kafka(e)
    }
}

impl SourceError {
    /// Whether retrying the operation may help (broker transport errors do; bad
    /// configuration and unreadable files don't).
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Kafka(e) => !matches!(
                e,
                rdkafka::error::KafkaError::ClientCreation(_)
                    | rdkafka::error::KafkaError::Subscription(_)
                    | rdkafka::error::KafkaError::Canceled
                    | rdkafka::error::KafkaError::MessageConsumptionFatal(_)
            ),
            SourceError::File { .. } | SourceError::Config(_) => false,
        }
    }

    /// Whether the consumer group refused an offset commit because this member no
    /// longer owns the partitions (a rebalance): retrying cannot help, and nothing is
    /// lost, since the new owner consumes from the last committed offset.
    pub fn is_group_refusal(&self) -> bool {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
        match self {
            SourceError::Kafka(KafkaError::ConsumerCommit(code)) => matches!(
                code,
                C::RebalanceInProgress
                    | C::IllegalGeneration
                    | C::UnknownMemberId
                    | C::FencedInstanceId
                    | C::State
                    | C::AssignmentLost
            ),
            _ => false,
        }
    }
}

/// A stream of change events with at-least-once delivery: a checkpoint passed to
/// [`Source::commit`] is only ever one whose batch the sink has committed.
pub trait Source: Send {
    /// Whether the source can deliver events now (a Kafka consumer owns partitions).
    /// Idle time is only counted while it is.
    fn is_ready(&self) -> bool {
        true
    }

    /// The next batch, cut by `limits`. An empty batch means nothing arrived within
    /// `limits.idle_poll`; `None` means the source is exhausted (files) and will never
    /// yield again.
    fn next_batch(
        &mut self,
        limits: BatchLimits,
    ) -> impl Future<Output = Result<Option<SourceBatch>, SourceError>> + Send;

    /// Where the pipeline announces the batch it loads while it consumes the next one,
    /// for a source whose partitions a rebalance can take away ([`InFlight`]). `None`:
    /// nothing can be taken away (files).
    fn in_flight(&self) -> Option<std::sync::Arc<InFlight>> {
        None
    }

    /// The consumer group the source reads as, for the batch spans (Kafka).
    fn consumer_group(&self) -> Option<&str> {
        None
    }

    /// Durably records that everything before `checkpoint` is loaded.
    fn commit(
        &mut self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_count_against_the_batch_bound() {
        let m = Message {
            topic: Arc::from("t"),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(vec![0; 10]),
            value: Some(vec![0; 100]),
            headers: vec![("h".into(), Some(vec![0; 1000])), ("n".into(), None)],
        };
        let mut b = SourceBatch::default();
        b.push(m);
        assert_eq!(b.bytes, 1112);
    }
}
