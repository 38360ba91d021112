//! The handler: one MSK event through the batch processor, answered with a partial
//! batch response.
//!
//! Everything costly (engine, components, HTTP client, Snowflake session) is built
//! once per container in [`Floe::init`]; the DLQ producer once per cluster the events
//! come from. Per invocation: records in, [`BatchProcessor::process`] bounded by the
//! invocation's deadline, and the answer:
//! - every record loaded, dead-lettered or with nothing to load: no item failures;
//! - retrying stopped short of the deadline (the warehouse or the DLQ kept failing):
//!   per partition, its first record whose outcome is not durable;
//! - a fatal error (authentication, SQL that cannot compile, a component failure
//!   under `on_failure = "stop"`): a function error with its message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::kafka::KafkaEvent;
use floe_batch::components::Components;
use floe_batch::config::{DlqKind, SinkKind};
use floe_batch::dlq::{Cluster, DeadLetter, DeadLetterQueue, DlqError};
use floe_batch::events::BatchReceived;
use floe_batch::processor::{ProcessError, Unfinished};
use floe_batch::sinks::null::NullSink;
use floe_batch::sinks::snowflake::SnowflakeSink;
use floe_batch::sinks::{LoadReport, Sink, SinkError, TableLoad};
use floe_batch::{BatchProcessor, Processed, ProcessorSettings, Stats, trace};
use tracing::Instrument as _;

use crate::access::Access;
use crate::config::LambdaConfig;
use crate::event::{self, Records};
use crate::response::BatchResponse;

/// Errors that fail an invocation (or the container's start).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Config(#[from] floe_batch::config::ConfigError),
    #[error("components: {0}")]
    Components(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Dlq(#[from] DlqError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("event: {0}")]
    Event(String),
}

impl HandlerError {
    /// Its kind, as a trace span's `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            HandlerError::Config(_) => "config",
            HandlerError::Components(_) => "components",
            HandlerError::Sink(_) => "warehouse",
            HandlerError::Dlq(_) => "dlq",
            HandlerError::Process(e) => e.error_type(),
            HandlerError::Event(_) => "event",
        }
    }
}

/// The sink the configuration names.
pub enum AnySink {
    Snowflake(Box<SnowflakeSink>),
    /// `sink.kind = "none"`: everything but the warehouse (measurements).
    None(NullSink),
}

impl Sink for AnySink {
    async fn load(&mut self, loads: &[TableLoad]) -> Result<LoadReport, SinkError> {
        match self {
            AnySink::Snowflake(s) => s.load(loads).await,
            AnySink::None(s) => s.load(loads).await,
        }
    }
}

/// The container's state: built once, used by every invocation.
pub struct Floe {
    config: LambdaConfig,
    /// How the DLQ producer reaches the event's cluster.
    access: Access,
    processor: BatchProcessor<AnySink>,
    /// The cluster (`bootstrapServers`) the Kafka DLQ producer was built for.
    dlq_cluster: Option<String>,
}

/// When an invocation stops retrying (`soft`: the breakers give up waiting) and when
/// its processing is cut off (`hard`: whatever is in flight is abandoned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub soft: Instant,
    pub hard: Instant,
}

impl Budget {
    /// The budget of an invocation whose deadline is `deadline_ms` (ms since the epoch,
    /// as the Runtime API sends it): `margin` before it, or `unknown` from now when the
    /// deadline is absent, past or more than Lambda's 15 minutes away.
    pub fn of(deadline_ms: u64, margin: Duration, unknown: Duration) -> Budget {
        let now = Instant::now();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let left = match deadline_ms.checked_sub(now_ms) {
            Some(ms) if ms > 0 && ms <= 16 * 60 * 1000 => Duration::from_millis(ms),
            _ => unknown,
        };
        Budget {
            soft: now + left.saturating_sub(margin),
            hard: now + left.saturating_sub(margin / 2),
        }
    }
}

impl Floe {
    /// Loads the components and connects the sink, once per container.
    pub async fn init(
        config: LambdaConfig,
        access: Access,
        stats: Arc<Stats>,
    ) -> Result<Floe, HandlerError> {
        config.validate()?;
        let started = Instant::now();
        let cfg = config.components.clone();
        let components = tokio::task::spawn_blocking(move || Components::load(&cfg))
            .await
            .map_err(|e| HandlerError::Components(e.to_string()))?
            .map_err(|e| HandlerError::Components(e.to_string()))?;
        let components_ms = started.elapsed().as_millis() as u64;
        let sink = match config.sink.kind {
            SinkKind::Snowflake => AnySink::Snowflake(Box::new(
                SnowflakeSink::connect(&config.sink.snowflake).await?,
            )),
            SinkKind::None => AnySink::None(NullSink::default()),
        };
        let delivery = &config.delivery;
        let settings = ProcessorSettings {
            target: config.sink.snowflake.clone(),
            load_attempts: delivery.load_attempts,
            max_message_bytes: config.source.max_message_bytes,
            breaker: delivery.breaker(),
            formats: Arc::new(
                floe_batch::format::Formats::new(&config.source.formats)
                    .map_err(floe_batch::config::ConfigError::Invalid)?,
            ),
            schema_registry: floe_batch::avro::SchemaRegistry::configured(
                config.source.schema_registry.as_ref(),
            )
            .map_err(|e| floe_batch::config::ConfigError::Invalid(e.to_string()))?,
        };
        let processor = BatchProcessor::new(sink, Arc::new(components), settings, stats);
        tracing::info!(
            components_ms,
            total_ms = started.elapsed().as_millis() as u64,
            "floe-lambda ready"
        );
        Ok(Floe {
            config,
            access,
            processor,
            dlq_cluster: None,
        })
    }

    pub fn stats(&self) -> &Arc<Stats> {
        self.processor.stats()
    }

    pub fn sink(&self) -> &AnySink {
        self.processor.sink()
    }

    /// The dead letter queue for events of `cluster` (`bootstrapServers`): the Kafka
    /// producer is made once per cluster.
    fn ensure_dead_letters(&mut self, cluster: Option<&str>) -> Result<(), HandlerError> {
        let kind = match self.config.dlq.kind {
            DlqKind::Auto | DlqKind::Kafka => DlqKind::Kafka,
            other => other,
        };
        if kind != DlqKind::Kafka {
            if self.dlq_cluster.is_none() {
                let queue =
                    match kind {
                        DlqKind::Sqs | DlqKind::S3 => DeadLetterQueue::Store(
                            self.access.letters.clone().ok_or_else(|| DlqError::Store {
                                store: format!("{kind:?}").to_lowercase(),
                                message: "no store was set up at start".into(),
                            })?,
                        ),
                        _ => DeadLetterQueue::new(kind, &self.config.dlq, &Cluster::default())?,
                    };
                self.processor.set_dead_letters(queue);
                self.dlq_cluster = Some(String::new());
            }
            return Ok(());
        }
        let Some(brokers) = cluster.filter(|b| !b.trim().is_empty()) else {
            return Err(HandlerError::Event(
                "the event has no bootstrapServers, so its dead letters have no cluster to go to (set dlq.kind to sqs, s3, file or log)".into(),
            ));
        };
        if self.dlq_cluster.as_deref() == Some(brokers) {
            return Ok(());
        }
        let cluster = Cluster {
            brokers: brokers.to_owned(),
            options: self.access.options.clone(),
            max_message_bytes: self.config.source.max_message_bytes,
            token: self.access.token.clone(),
        };
        let queue = DeadLetterQueue::new(DlqKind::Kafka, &self.config.dlq, &cluster)?;
        self.processor.set_dead_letters(queue);
        self.dlq_cluster = Some(brokers.to_owned());
        Ok(())
    }

    /// What to report of a batch given up on at the soft deadline: the events whose
    /// loads may not be applied, and the dead letters that cannot be written now. When
    /// the loads failed, the dead letters below each partition's first unloaded record
    /// are written first (one attempt, before the hard deadline), so the retry starts
    /// there and never writes them twice.
    async fn settle(
        &mut self,
        records: &Records,
        unfinished: Unfinished,
        budget: Budget,
    ) -> Vec<usize> {
        let mut pending = unfinished.unloaded.clone();
        if unfinished.loaded || unfinished.unwritten.is_empty() {
            pending.extend(unfinished.unwritten.iter().map(|d| d.index));
            return pending;
        }
        let mut first_unloaded: HashMap<&str, i64> = HashMap::new();
        for &i in &unfinished.unloaded {
            let offset = records.messages[i].offset;
            first_unloaded
                .entry(&records.partition_keys[i])
                .and_modify(|o| *o = (*o).min(offset))
                .or_insert(offset);
        }
        let (now, later): (Vec<DeadLetter>, Vec<DeadLetter>) =
            unfinished.unwritten.into_iter().partition(|d| {
                first_unloaded
                    .get(&*records.partition_keys[d.index])
                    .is_none_or(|&first| records.messages[d.index].offset < first)
            });
        // Already stopped: one attempt, no waiting in the DLQ breaker.
        let (_stop, stopped) = tokio::sync::watch::channel(true);
        let written = tokio::time::timeout_at(
            budget.hard.into(),
            self.processor
                .write_dead_letters(&records.messages, &now, stopped),
        )
        .await;
        if !matches!(written, Ok(Ok(true))) {
            pending.extend(now.iter().map(|d| d.index));
        }
        pending.extend(later.iter().map(|d| d.index));
        pending
    }

    /// One invocation (see the module docs). `deadline_ms`: the invocation's deadline,
    /// ms since the epoch.
    pub async fn handle(
        &mut self,
        event: &KafkaEvent,
        deadline_ms: u64,
    ) -> Result<BatchResponse, HandlerError> {
        let received = Instant::now();
        let budget = Budget::of(
            deadline_ms,
            Duration::from_millis(self.config.lambda.deadline_margin_ms),
            Duration::from_millis(self.config.lambda.unknown_deadline_ms),
        );
        let mut records = event::records(event);
        if records.messages.is_empty() {
            return Ok(BatchResponse::default());
        }
        self.ensure_dead_letters(event.bootstrap_servers.as_deref())?;
        let bytes = records.messages.iter().map(|m| m.size()).sum();
        BatchReceived {
            events: records.messages.len(),
            bytes,
        }
        .emit(self.stats());
        // The invocation's trace: one batch span linked to its records' own traces.
        let span = trace::batch_span(&records.messages, None, bytes);
        trace::link_records(&span, &records.messages);
        let answered = self
            .answer(&mut records, budget, received)
            .instrument(span.clone())
            .await;
        if let Err(e) = &answered {
            trace::failed(&span, e.error_type(), e);
        }
        answered
    }

    /// Processes the invocation's records within `budget` and says which partitions
    /// the event source mapping must retry.
    async fn answer(
        &mut self,
        records: &mut event::Records,
        budget: Budget,
        received: Instant,
    ) -> Result<BatchResponse, HandlerError> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(budget.soft.into()).await;
            let _ = stop.send(true);
        });
        let outcome = tokio::time::timeout_at(
            budget.hard.into(),
            self.processor.process(&mut records.messages, stopped),
        )
        .await;
        timer.abort();
        let response = match outcome {
            Ok(Ok(Processed::Done(summary))) => {
                summary.committed(received.elapsed()).emit(self.stats());
                BatchResponse::default()
            }
            Ok(Ok(Processed::Stopped(unfinished))) => {
                let pending = self.settle(records, unfinished, budget).await;
                let response = BatchResponse::retry_from(records, pending);
                tracing::warn!(
                    partitions = response.batch_item_failures.len(),
                    "deadline near: retrying stopped; the unfinished partitions are reported as item failures"
                );
                response
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_elapsed) => {
                let response = BatchResponse::retry_from(records, 0..records.messages.len());
                tracing::warn!(
                    partitions = response.batch_item_failures.len(),
                    "deadline near: the batch was still in flight; every partition is reported as an item failure"
                );
                response
            }
        };
        Ok(response)
    }
}
