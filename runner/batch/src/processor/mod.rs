//! The batch processor: the per-batch work both of floe's modes share. Records in;
//! validated, transformed (each topic's chain of components), merged (one MERGE plan per
//! target table), loaded (retried, behind the warehouse circuit breaker) and
//! dead-lettered (durably, behind the DLQ breaker); a [`Summary`] out.
//!
//! It knows no Kafka consumer, no CLI and no configuration file: the runner's loop
//! (`floe`) and the Lambda handler (`floe-lambda`) hand it [`Message`]s and a stop
//! signal, and decide themselves what to acknowledge (offsets, partial batch responses).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::avro::{RegistryError, Resolved, SchemaRegistry};
use crate::breaker::{BreakerSettings, CircuitBreaker};
use crate::components::Components;
use crate::config::{OnFailure, SnowflakeConfig};
use crate::dlq::{DeadLetter, DeadLetterQueue, DlqError};
use crate::events::{BatchCommitted, Breaker, Stats};
use crate::format::Formats;
use crate::message::Message;
use crate::retained::Retained;
use crate::sinks::{LoadReport, Sink, SinkError};

mod deliver;
mod prepare;
mod shares;
#[cfg(test)]
mod tests;

/// Errors that stop processing: the warehouse refused for good (auth, SQL), or a
/// component failed under `components.on_failure = "stop"`. Per-event problems never
/// do: they are dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// A component call failed and `components.on_failure = "stop"`.
    #[error("stopping (components.on_failure = stop): {0}")]
    ComponentFailed(String),
    /// The schema registry refused floe's requests (credentials, URL): transient
    /// registry errors are retried behind its breaker and never end up here.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl ProcessError {
    /// Whether processing the same batch again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProcessError::Sink(e) => e.is_retryable(),
            ProcessError::Dlq(_) => true,
            ProcessError::ComponentFailed(_) => false,
            ProcessError::Registry(e) => e.is_retryable(),
        }
    }

    /// The error's kind, as trace spans report it (`error.type`).
    pub fn error_type(&self) -> &'static str {
        match self {
            ProcessError::Sink(e) if e.is_retryable() => "warehouse_transient",
            ProcessError::Sink(_) => "warehouse",
            ProcessError::Dlq(_) => "dlq",
            ProcessError::ComponentFailed(_) => "component",
            ProcessError::Registry(_) => "schema_registry",
        }
    }
}

/// Settings of the per-batch work.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// Target naming (database, schema, table mapping, identifier case), deletes and
    /// truncates.
    pub target: SnowflakeConfig,
    /// Attempts of a retryable warehouse error before the warehouse breaker opens.
    pub load_attempts: usize,
    /// Larger messages (key + value + headers) go to the dead letter queue unprocessed.
    pub max_message_bytes: usize,
    /// The warehouse and DLQ circuit breakers.
    pub breaker: BreakerSettings,
    /// What each topic's values are (`source.formats`).
    pub formats: Arc<Formats>,
    /// Where the writer schemas of Avro keys and values come from
    /// (`source.schema_registry`); none: such messages are dead letters.
    pub schema_registry: Option<Arc<SchemaRegistry>>,
}

/// What one processed batch amounted to.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Events in the batch.
    pub events: usize,
    /// Rows loaded (after deduplication), refused rows excluded.
    pub rows: u64,
    /// Tables loaded, refused ones excluded.
    pub tables: usize,
    /// Events that produced no row (heartbeats, schema changes, ...).
    pub skipped: u64,
    /// Events dead-lettered.
    pub dead_letters: usize,
    /// What the warehouse did.
    pub report: LoadReport,
    /// Time in the components.
    pub wasm: Duration,
    /// Time loading.
    pub load: Duration,
    /// The tables loaded (`DB.SCHEMA.TABLE`), refused ones excluded, with the source
    /// commit time of their latest change (when it carried one).
    pub loaded_source_ms: Vec<(String, i64)>,
}

impl Summary {
    /// The event that says the batch is acknowledged (offsets committed, or the
    /// invocation answered), `total` after it was received.
    pub fn committed(&self, total: Duration) -> BatchCommitted<'_> {
        let report = &self.report;
        BatchCommitted {
            events: self.events,
            rows: self.rows,
            tables: self.tables,
            skipped: self.skipped,
            statements: report.statements,
            inserted: report.rows_inserted,
            updated: report.rows_updated,
            deleted: report.rows_deleted,
            tables_created: report.tables_created,
            tables_truncated: report.tables_truncated,
            columns_added: report.columns_added,
            columns_widened: report.columns_widened,
            wasm: self.wasm,
            load: self.load,
            total,
            executed: &report.executed,
            loaded_source_ms: &self.loaded_source_ms,
        }
    }
}

/// The outcome of [`BatchProcessor::process`].
#[derive(Debug)]
pub enum Processed {
    /// Every event is loaded, dead-lettered or had nothing to load: the batch may be
    /// acknowledged.
    Done(Summary),
    /// `stop` fired while the warehouse or the dead letter queue was failing: the
    /// batch must not be acknowledged past [`Unfinished::pending`].
    Stopped(Unfinished),
}

/// A batch given up on because `stop` fired.
#[derive(Debug, Clone, Default)]
pub struct Unfinished {
    /// Whether the loads were applied (it was then the dead letters that failed).
    pub loaded: bool,
    /// Indexes (into the batch's messages) of the events whose rows or truncates may
    /// not be loaded (none when `loaded`). Sorted.
    pub unloaded: Vec<usize>,
    /// The dead letters not written.
    pub unwritten: Vec<DeadLetter>,
}

impl Unfinished {
    /// Indexes of the events whose outcome is not durable. Sorted.
    pub fn pending(&self) -> Vec<usize> {
        let mut pending: Vec<usize> = (self.unloaded.iter().copied())
            .chain(self.unwritten.iter().map(|d| d.index))
            .collect();
        pending.sort_unstable();
        pending.dedup();
        pending
    }
}

/// The per-batch work over one sink and one dead letter queue (see the module docs):
/// a [`Preparer`] (the components, CPU-bound) and a [`Delivery`] (the sink and the dead
/// letter queue, I/O-bound), one after the other. The runner's loop splits them
/// ([`BatchProcessor::into_parts`]) to prepare the next batch while one is delivered.
pub struct BatchProcessor<K> {
    preparer: Preparer,
    delivery: Delivery<K>,
}

/// The CPU-bound half of the per-batch work: formats, chains of components, target
/// naming, truncate ordering and MERGE plans ([`Preparer::prepare`]). Its state (which
/// target each source owns, truncate LSNs) carries from batch to batch, so batches must
/// be prepared in the order they are delivered.
pub struct Preparer {
    components: Arc<Components>,
    settings: ProcessorSettings,
    stats: Arc<Stats>,
    /// Per target table, the highest truncate LSN applied so far: a row change below
    /// it that arrives later (from another partition: Debezium sends truncates without
    /// a key) was wiped by that truncate and is not loaded.
    truncated_below: HashMap<Vec<String>, i64>,
    /// Which target each source's rows go to, and which source owns each target.
    targets: crate::targets::Targets,
    /// The schemas of the batch being prepared ([`Preparer::resolve_schemas`]).
    schemas: Resolved,
    /// The schema registry's circuit breaker.
    registry_breaker: CircuitBreaker,
}

/// The I/O-bound half: loads (retried; behind the warehouse breaker) and dead letters
/// (behind the DLQ breaker) of a [`PreparedBatch`] ([`Delivery::deliver`]).
pub struct Delivery<K> {
    sink: K,
    stats: Arc<Stats>,
    /// Attempts of a retryable warehouse error before the warehouse breaker opens.
    load_attempts: usize,
    /// The warehouse and DLQ circuit breaker settings.
    breaker: BreakerSettings,
    /// Where events that cannot be loaded go.
    dlq: DeadLetterQueue,
    /// The dead letter queue's circuit breaker.
    dlq_breaker: CircuitBreaker,
}

/// A batch the components went through, ready for [`Delivery::deliver`].
pub struct PreparedBatch(prepare::Prepared);

impl<K: Sink> BatchProcessor<K> {
    pub fn new(
        sink: K,
        components: Arc<Components>,
        settings: ProcessorSettings,
        stats: Arc<Stats>,
    ) -> Self {
        let targets = crate::targets::Targets::new(&settings.target);
        let registry_breaker =
            CircuitBreaker::new(Breaker::Registry, settings.breaker, settings.load_attempts);
        let dlq_breaker =
            CircuitBreaker::new(Breaker::Dlq, settings.breaker, settings.load_attempts);
        let delivery = Delivery {
            sink,
            stats: stats.clone(),
            load_attempts: settings.load_attempts,
            breaker: settings.breaker,
            dlq: DeadLetterQueue::Log,
            dlq_breaker,
        };
        BatchProcessor {
            preparer: Preparer {
                components,
                settings,
                stats,
                truncated_below: HashMap::new(),
                targets,
                schemas: Resolved::default(),
                registry_breaker,
            },
            delivery,
        }
    }

    /// The two halves, to run them side by side (batch N delivered while batch N+1 is
    /// prepared). Batches must still be prepared, and delivered, in order.
    pub fn into_parts(self) -> (Preparer, Delivery<K>) {
        (self.preparer, self.delivery)
    }

    /// Sends events that cannot be loaded to `dlq` instead of only logging them.
    pub fn set_dead_letters(&mut self, dlq: DeadLetterQueue) {
        self.delivery.set_dead_letters(dlq);
    }

    /// Replaces the components (hot reload) for the next batch.
    pub fn set_components(&mut self, components: Arc<Components>) {
        self.preparer.set_components(components);
    }

    pub fn components(&self) -> &Arc<Components> {
        self.preparer.components()
    }

    pub fn dead_letters(&self) -> &DeadLetterQueue {
        self.delivery.dead_letters()
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.preparer.stats
    }

    pub fn sink(&self) -> &K {
        self.delivery.sink()
    }

    pub fn sink_mut(&mut self) -> &mut K {
        self.delivery.sink_mut()
    }

    /// Logs, counts and writes `letters` durably (see [`Delivery::write_dead_letters`]).
    pub async fn write_dead_letters(
        &mut self,
        messages: &[Message],
        letters: &[DeadLetter],
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, ProcessError> {
        (self.delivery)
            .write_dead_letters(messages, letters, stop)
            .await
    }

    /// Processes one batch: components, loads (retried; behind the warehouse breaker
    /// while the warehouse fails), dead letters (behind the DLQ breaker). Returns once
    /// every event's outcome is durable ([`Processed::Done`]), or when `stop` turns
    /// true while the warehouse or the DLQ is failing ([`Processed::Stopped`]).
    /// Non-retryable warehouse errors and `on_failure = "stop"` are errors.
    pub async fn process(
        &mut self,
        messages: &mut [Message],
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Processed, ProcessError> {
        if !(self.preparer)
            .resolve_schemas(messages, stop.clone())
            .await?
        {
            return Ok(Processed::Stopped(Unfinished {
                loaded: false,
                unloaded: (0..messages.len()).collect(),
                unwritten: Vec::new(),
            }));
        }
        // `prepare` is synchronous: it gives the messages' bytes back before any await
        // point at which this future could be dropped.
        let prepared = tokio::task::block_in_place(|| self.preparer.prepare(messages))?;
        (self.delivery)
            .deliver(&Retained::borrowed(messages), prepared, stop)
            .await
    }
}

impl Preparer {
    /// Replaces the components (hot reload) for the next batch.
    pub fn set_components(&mut self, components: Arc<Components>) {
        self.components = components;
    }

    pub fn components(&self) -> &Arc<Components> {
        &self.components
    }

    /// Fetches the writer schemas of `messages`' Avro keys and values that are not
    /// cached yet, for the next [`Preparer::prepare`] (nothing to do without
    /// `source.schema_registry`, or without Avro messages). While the registry is
    /// unavailable it waits and asks again behind the registry's circuit breaker:
    /// false when `stop` fired meanwhile (the batch is then left unprocessed). An
    /// error when the registry refuses floe's requests (credentials, URL).
    pub async fn resolve_schemas(
        &mut self,
        messages: &[Message],
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, ProcessError> {
        self.schemas = Resolved::default();
        let Some(registry) = self.settings.schema_registry.clone() else {
            return Ok(true);
        };
        let ids = crate::avro::schema_ids(messages);
        if ids.is_empty() {
            return Ok(true);
        }
        loop {
            match registry.resolve(&ids).await {
                Ok(resolved) => {
                    self.registry_breaker.success(&self.stats);
                    self.schemas = resolved;
                    return Ok(true);
                }
                Err(e) if e.is_retryable() => {
                    let error = e.to_string();
                    if !(self.registry_breaker)
                        .failure("schemas", &error, &self.stats, stop.clone())
                        .await
                    {
                        tracing::info!(
                            "shutdown while the schema registry is unavailable: the batch is \
                             left unprocessed and uncommitted"
                        );
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs the components over a batch (CPU-bound: call it where blocking is fine).
    /// The messages' keys and values are moved into the components' batch and given
    /// back before this returns (`messages` is as it was). An error only under
    /// `components.on_failure = "stop"`, when a component call failed.
    pub fn prepare(&mut self, messages: &mut [Message]) -> Result<PreparedBatch, ProcessError> {
        let prepared = self.prepare_batch(messages);
        if self.components.on_failure == OnFailure::Stop
            && let Some(failed) = prepared.dead.iter().find(|d| d.category == "wasm-trap")
        {
            return Err(ProcessError::ComponentFailed(format!(
                "{}: {}",
                failed.component, failed.reason
            )));
        }
        Ok(PreparedBatch(prepared))
    }
}

impl<K: Sink> Delivery<K> {
    /// Sends events that cannot be loaded to `dlq` instead of only logging them.
    pub fn set_dead_letters(&mut self, dlq: DeadLetterQueue) {
        self.dlq = dlq;
    }

    pub fn dead_letters(&self) -> &DeadLetterQueue {
        &self.dlq
    }

    pub fn sink(&self) -> &K {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut K {
        &mut self.sink
    }

    /// Loads a prepared batch of `messages` (retried; behind the warehouse breaker while
    /// the warehouse fails) and writes its dead letters (behind the DLQ breaker).
    /// Returns once every event's outcome is durable ([`Processed::Done`]), or when
    /// `stop` turns true while the warehouse or the DLQ is failing
    /// ([`Processed::Stopped`]). Non-retryable warehouse errors are errors.
    pub async fn deliver(
        &mut self,
        messages: &Retained<'_>,
        prepared: PreparedBatch,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Processed, ProcessError> {
        let PreparedBatch(mut prepared) = prepared;
        let load_started = Instant::now();
        let Some(report) = self
            .load_with_breaker(&prepared.loads, stop.clone())
            .await?
        else {
            let mut unloaded: Vec<usize> = (prepared.loads.iter())
                .flat_map(|l| l.origins.iter().copied())
                .chain(prepared.truncates.iter().copied())
                .collect();
            unloaded.sort_unstable();
            unloaded.dedup();
            return Ok(Processed::Stopped(Unfinished {
                loaded: false,
                unloaded,
                unwritten: prepared.dead,
            }));
        };
        let load = load_started.elapsed();
        let mut refused_rows = 0;
        for r in &report.refused {
            let refused = &prepared.loads[r.load];
            refused_rows += u64::from(refused.plan.rows_after_dedup);
            prepared
                .dead
                .extend(refused.origins.iter().map(|&index| DeadLetter {
                    index,
                    category: r.category,
                    stage: "load",
                    component: "snowflake".into(),
                    reason: r.reason.clone(),
                }));
        }
        let (letter_messages, letters) = messages.letters(&prepared.dead);
        if !self
            .write_dead_letters(&letter_messages, &letters, stop)
            .await?
        {
            return Ok(Processed::Stopped(Unfinished {
                loaded: true,
                unloaded: Vec::new(),
                unwritten: prepared.dead,
            }));
        }
        let loaded_source_ms = (prepared.loads.iter().enumerate())
            .filter(|(i, _)| !report.refused.iter().any(|r| r.load == *i))
            .filter_map(|(_, l)| Some((l.target.join("."), l.latest_source_ms?)))
            .collect();
        Ok(Processed::Done(Summary {
            loaded_source_ms,
            events: messages.len(),
            rows: prepared.rows - refused_rows,
            tables: prepared.loads.len() - report.refused.len(),
            skipped: prepared.skipped,
            dead_letters: prepared.dead.len(),
            report,
            wasm: prepared.wasm,
            load,
        }))
    }
}
