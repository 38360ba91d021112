//! Internal events: each struct's `emit()` both logs and counts, in one place, so the
//! logs and the statistics can never disagree. Error events carry a bounded
//! `error_type` and the stage that raised them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use serde::Serialize;

use crate::metrics::Instruments;

/// Counters of one pipeline run, shared between the pipeline and the exporters.
#[derive(Debug, Default)]
pub struct Stats {
    pub events_consumed: AtomicU64,
    pub bytes_consumed: AtomicU64,
    pub events_rejected: AtomicU64,
    pub events_failed: AtomicU64,
    pub events_skipped: AtomicU64,
    pub truncates_ignored: AtomicU64,
    pub tables_truncated: AtomicU64,
    pub columns_added: AtomicU64,
    pub columns_widened: AtomicU64,
    pub dead_letters: AtomicU64,
    pub breaker_state: AtomicU64,
    pub breaker_opened: AtomicU64,
    pub broker_breaker_state: AtomicU64,
    pub broker_breaker_opened: AtomicU64,
    pub broker_errors: AtomicU64,
    pub dlq_breaker_state: AtomicU64,
    pub dlq_breaker_opened: AtomicU64,
    pub dlq_errors: AtomicU64,
    pub registry_breaker_state: AtomicU64,
    pub registry_breaker_opened: AtomicU64,
    pub registry_errors: AtomicU64,
    pub dead_letters_cut: AtomicU64,
    pub toast_values_unknown: AtomicU64,
    pub commits_refused: AtomicU64,
    pub components_reloaded: AtomicU64,
    pub component_reloads_failed: AtomicU64,
    pub rows_transformed: AtomicU64,
    pub rows_loaded: AtomicU64,
    pub rows_inserted: AtomicU64,
    pub rows_updated: AtomicU64,
    pub rows_deleted: AtomicU64,
    pub ops_insert: AtomicU64,
    pub ops_update: AtomicU64,
    pub ops_delete: AtomicU64,
    pub ops_read: AtomicU64,
    pub batches: AtomicU64,
    pub batch_errors: AtomicU64,
    pub load_retries: AtomicU64,
    pub statements: AtomicU64,
    pub tables_created: AtomicU64,
    pub commits: AtomicU64,
    pub batch_micros_total: AtomicU64,
    pub load_micros_total: AtomicU64,
    pub wasm_micros_total: AtomicU64,
    started: std::sync::OnceLock<Instant>,
    /// When the first event arrived.
    first_event: std::sync::OnceLock<Instant>,
    /// When the last batch was committed, in µs after `first_event`.
    last_commit_micros: AtomicU64,
    /// The metrics the events record (OpenTelemetry; exported as the binary chose).
    pub instruments: Instruments,
    /// The source can deliver events (a Kafka consumer owns partitions).
    pub source_ready: AtomicBool,
    /// The sink is connected (a warehouse session is up) and the pipeline runs.
    pub sink_ready: AtomicBool,
}

/// A point-in-time copy of [`Stats`], for JSON export and the final summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatsSnapshot {
    pub events_consumed: u64,
    pub bytes_consumed: u64,
    pub events_rejected: u64,
    pub events_failed: u64,
    pub events_skipped: u64,
    pub truncates_ignored: u64,
    pub tables_truncated: u64,
    pub columns_added: u64,
    pub columns_widened: u64,
    /// Events written to the dead letter queue (or, with `dlq.kind = log`, logged).
    pub dead_letters: u64,
    /// The warehouse circuit breaker now: `closed`, `open` or `half-open`.
    pub breaker_state: &'static str,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// The broker circuit breaker now (consumption and offset commits): `closed`,
    /// `open` or `half-open`.
    pub broker_breaker_state: &'static str,
    /// Times the broker breaker opened.
    pub broker_breaker_opened: u64,
    /// Transient broker errors seen while consuming or committing.
    pub broker_errors: u64,
    /// The dead letter queue's circuit breaker now: `closed`, `open` or `half-open`.
    /// While it is not closed the batch waits, uncommitted, until its letters are
    /// written.
    pub dlq_breaker_state: &'static str,
    /// Times the DLQ breaker opened.
    pub dlq_breaker_opened: u64,
    /// Failed attempts to write a batch's dead letters (each retried).
    pub dlq_errors: u64,
    /// The schema registry's circuit breaker now: `closed`, `open` or `half-open`.
    /// While it is not closed the batch whose schemas are missing waits, uncommitted.
    pub registry_breaker_state: &'static str,
    /// Times the registry breaker opened.
    pub registry_breaker_opened: u64,
    /// Failed attempts to fetch a schema from the registry (each retried).
    pub registry_errors: u64,
    /// Dead letters larger than `dlq.max_letter_bytes` (or than the DLQ topic took),
    /// written in their bounded form: payload cut, original sizes and SHA-256 in
    /// headers.
    pub dead_letters_cut: u64,
    /// New rows that lack an unchanged TOASTed value floe could not find anywhere (a
    /// primary-key update whose old row is not in the batch, under REPLICA IDENTITY
    /// DEFAULT): each is logged with its key and columns, which hold NULL. REPLICA
    /// IDENTITY FULL on the source table avoids it.
    pub toast_values_unknown: u64,
    /// Offset commits the consumer group refused because the partitions had been
    /// reassigned (the new owner replays those batches, harmlessly).
    pub commits_refused: u64,
    /// Times the components were replaced on SIGHUP or a changed file.
    pub components_reloaded: u64,
    /// Reloads refused (the new component did not load or failed its self-check); the
    /// previous components kept running.
    pub component_reloads_failed: u64,
    pub rows_transformed: u64,
    pub rows_loaded: u64,
    pub rows_inserted: u64,
    pub rows_updated: u64,
    pub rows_deleted: u64,
    pub ops: OpsSnapshot,
    pub batches: u64,
    pub batch_errors: u64,
    pub load_retries: u64,
    pub statements: u64,
    pub tables_created: u64,
    pub commits: u64,
    /// Wall time of the run so far (start-up, consumer-group join and idle waits included).
    pub elapsed_secs: f64,
    /// Events per second from the first event's arrival to the last commit: the
    /// pipeline's throughput, without start-up or idle time.
    pub events_per_sec: f64,
    pub avg_batch_ms: f64,
    pub avg_load_ms: f64,
    pub avg_wasm_ms: f64,
    /// Share of consumed events that were loaded or skipped on purpose (not rejected
    /// or failed), in percent.
    pub success_rate_pct: f64,
}

/// Change operations seen.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpsSnapshot {
    pub insert: u64,
    pub update: u64,
    pub delete: u64,
    pub read: u64,
}

impl Stats {
    /// Counters recording into the global meter provider's instruments.
    pub fn new() -> Arc<Stats> {
        let s = Stats::default();
        s.started.get_or_init(Instant::now);
        Arc::new(s)
    }

    /// Counters recording into `meter`'s instruments.
    pub fn with_meter(meter: &opentelemetry::metrics::Meter) -> Arc<Stats> {
        let s = Stats {
            instruments: Instruments::new(meter),
            ..Stats::default()
        };
        s.started.get_or_init(Instant::now);
        Arc::new(s)
    }

    /// The consumer's lag over its assigned partitions, as last reported (`None` before
    /// a report, or when no partition's lag is known).
    pub fn consumer_lag(&self) -> Option<i64> {
        let partitions = self
            .instruments
            .observed
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known: Vec<i64> = partitions.iter().filter_map(|p| p.lag).collect();
        (!known.is_empty()).then(|| known.iter().sum())
    }

    /// Whether the pipeline can do its work now: the source owns partitions, the
    /// warehouse session is up and no circuit breaker is open or probing. `Err` says
    /// what is missing.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.sink_ready.load(Relaxed) {
            return Err("the sink is not connected (or the pipeline is not running)".into());
        }
        if !self.source_ready.load(Relaxed) {
            return Err("the source owns no partitions yet".into());
        }
        for (breaker, state) in [
            (Breaker::Warehouse, &self.breaker_state),
            (Breaker::Broker, &self.broker_breaker_state),
            (Breaker::Dlq, &self.dlq_breaker_state),
            (Breaker::Registry, &self.registry_breaker_state),
        ] {
            let state = state.load(Relaxed);
            if state != BreakerState::Closed as u64 {
                return Err(format!(
                    "the {} circuit breaker is {}",
                    breaker.name(),
                    BreakerState::name(state)
                ));
            }
        }
        Ok(())
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Relaxed);
        let elapsed = self
            .started
            .get()
            .map_or(Duration::ZERO, Instant::elapsed)
            .as_secs_f64();
        let batches = g(&self.batches);
        let per_batch = |total: u64| {
            if batches == 0 {
                0.0
            } else {
                total as f64 / batches as f64 / 1000.0
            }
        };
        let consumed = g(&self.events_consumed);
        let bad = g(&self.events_rejected) + g(&self.events_failed);
        StatsSnapshot {
            events_consumed: consumed,
            bytes_consumed: g(&self.bytes_consumed),
            events_rejected: g(&self.events_rejected),
            events_failed: g(&self.events_failed),
            events_skipped: g(&self.events_skipped),
            truncates_ignored: g(&self.truncates_ignored),
            tables_truncated: g(&self.tables_truncated),
            columns_added: g(&self.columns_added),
            columns_widened: g(&self.columns_widened),
            dead_letters: g(&self.dead_letters),
            breaker_state: BreakerState::name(g(&self.breaker_state)),
            breaker_opened: g(&self.breaker_opened),
            broker_breaker_state: BreakerState::name(g(&self.broker_breaker_state)),
            broker_breaker_opened: g(&self.broker_breaker_opened),
            broker_errors: g(&self.broker_errors),
            dlq_breaker_state: BreakerState::name(g(&self.dlq_breaker_state)),
            dlq_breaker_opened: g(&self.dlq_breaker_opened),
            dlq_errors: g(&self.dlq_errors),
            registry_breaker_state: BreakerState::name(g(&self.registry_breaker_state)),
            registry_breaker_opened: g(&self.registry_breaker_opened),
            registry_errors: g(&self.registry_errors),
            dead_letters_cut: g(&self.dead_letters_cut),
            toast_values_unknown: g(&self.toast_values_unknown),
            commits_refused: g(&self.commits_refused),
            components_reloaded: g(&self.components_reloaded),
            component_reloads_failed: g(&self.component_reloads_failed),
            rows_transformed: g(&self.rows_transformed),
            rows_loaded: g(&self.rows_loaded),
            rows_inserted: g(&self.rows_inserted),
            rows_updated: g(&self.rows_updated),
            rows_deleted: g(&self.rows_deleted),
            ops: OpsSnapshot {
                insert: g(&self.ops_insert),
                update: g(&self.ops_update),
                delete: g(&self.ops_delete),
                read: g(&self.ops_read),
            },
            batches,
            batch_errors: g(&self.batch_errors),
            load_retries: g(&self.load_retries),
            statements: g(&self.statements),
            tables_created: g(&self.tables_created),
            commits: g(&self.commits),
            elapsed_secs: elapsed,
            events_per_sec: {
                let busy = g(&self.last_commit_micros) as f64 / 1e6;
                if busy > 0.0 {
                    consumed as f64 / busy
                } else {
                    0.0
                }
            },
            avg_batch_ms: per_batch(g(&self.batch_micros_total)),
            avg_load_ms: per_batch(g(&self.load_micros_total)),
            avg_wasm_ms: per_batch(g(&self.wasm_micros_total)),
            success_rate_pct: if consumed == 0 {
                100.0
            } else {
                (consumed - bad.min(consumed)) as f64 * 100.0 / consumed as f64
            },
        }
    }
}

/// Where an event sits in the source.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// A batch was cut from the source.
pub struct BatchReceived {
    pub events: usize,
    pub bytes: usize,
}

impl BatchReceived {
    pub fn emit(&self, stats: &Stats) {
        stats.first_event.get_or_init(Instant::now);
        stats.events_consumed.fetch_add(self.events as u64, Relaxed);
        stats.bytes_consumed.fetch_add(self.bytes as u64, Relaxed);
        let m = &stats.instruments;
        m.events_consumed.add(self.events as u64, &[]);
        m.bytes_consumed.add(self.bytes as u64, &[]);
        m.batch_size.record(self.events as u64, &[]);
        tracing::debug!(events = self.events, bytes = self.bytes, "batch received");
    }
}

/// An event was rejected by a validator, or could not be processed.
pub struct EventDropped<'a> {
    pub position: Position<'a>,
    /// Bounded category ([`crate::dlq::CATEGORIES`]): `parse` and `validation` are
    /// rejections (a validator judged the event), every other category a failure (a
    /// component trapped, the warehouse refused it, ...), whatever the stage.
    pub error_type: &'static str,
    /// Pipeline stage: `validate`, `transform` or `load`.
    pub stage: &'static str,
    pub reason: &'a str,
}

impl EventDropped<'_> {
    pub fn emit(&self, stats: &Stats) {
        if is_rejection(self.error_type) {
            stats.events_rejected.fetch_add(1, Relaxed);
        } else {
            stats.events_failed.fetch_add(1, Relaxed);
        }
        stats.instruments.events_dropped.add(
            1,
            &[
                KeyValue::new("category", self.error_type),
                KeyValue::new("stage", self.stage),
            ],
        );
        tracing::warn!(
            topic = self.position.topic,
            partition = self.position.partition,
            offset = self.position.offset,
            error_type = self.error_type,
            stage = self.stage,
            reason = self.reason,
            "event not loaded"
        );
    }
}

/// Whether a dead letter's category is a validator's judgement (a rejection) rather
/// than a failure to process the event.
pub fn is_rejection(error_type: &str) -> bool {
    matches!(error_type, "parse" | "validation")
}

/// States of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    fn name(v: u64) -> &'static str {
        match v {
            1 => "open",
            2 => "half-open",
            _ => "closed",
        }
    }
}

/// The circuit breakers: around the warehouse (loads), the broker (consumption and
/// offset commits) and the dead letter queue (writing a batch's letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Warehouse,
    Broker,
    Dlq,
    /// Around the schema registry (fetching Avro writer schemas).
    Registry,
}

impl Breaker {
    pub fn name(self) -> &'static str {
        match self {
            Breaker::Warehouse => "warehouse",
            Breaker::Broker => "broker",
            Breaker::Dlq => "dlq",
            Breaker::Registry => "schema_registry",
        }
    }
}

/// A circuit breaker changed state.
pub struct BreakerChanged<'a> {
    pub breaker: Breaker,
    pub state: BreakerState,
    /// The error that opened it.
    pub error: Option<&'a str>,
    /// How long it stays open.
    pub open_for: Option<Duration>,
}

impl BreakerChanged<'_> {
    pub fn emit(&self, stats: &Stats) {
        let (state, opened) = match self.breaker {
            Breaker::Warehouse => (&stats.breaker_state, &stats.breaker_opened),
            Breaker::Broker => (&stats.broker_breaker_state, &stats.broker_breaker_opened),
            Breaker::Dlq => (&stats.dlq_breaker_state, &stats.dlq_breaker_opened),
            Breaker::Registry => (
                &stats.registry_breaker_state,
                &stats.registry_breaker_opened,
            ),
        };
        state.store(self.state as u64, Relaxed);
        stats.instruments.breaker(self.breaker, self.state);
        let breaker = self.breaker.name();
        match self.state {
            BreakerState::Open => {
                opened.fetch_add(1, Relaxed);
                (stats.instruments.breaker_openings).add(1, &[KeyValue::new("breaker", breaker)]);
                tracing::error!(
                    breaker,
                    state = "open",
                    open_ms = self.open_for.map_or(0, |d| d.as_millis() as u64),
                    error = self.error.unwrap_or(""),
                    "circuit breaker opened: consumption paused"
                );
            }
            BreakerState::HalfOpen => {
                tracing::warn!(
                    breaker,
                    state = "half-open",
                    "circuit breaker half-open: probing"
                )
            }
            BreakerState::Closed => {
                tracing::info!(
                    breaker,
                    state = "closed",
                    "circuit breaker closed: consumption resumed"
                )
            }
        }
    }
}

/// A transient error while consuming, committing offsets, writing dead letters or
/// fetching schemas.
pub struct BrokerError<'a> {
    /// Which breaker counts it: the broker's (`consume`, `commit`), the dead letter
    /// queue's (`dead letters`) or the schema registry's (`schemas`).
    pub breaker: Breaker,
    pub operation: &'static str,
    pub error: &'a str,
}

impl BrokerError<'_> {
    pub fn emit(&self, stats: &Stats) {
        match self.breaker {
            Breaker::Dlq => stats.dlq_errors.fetch_add(1, Relaxed),
            Breaker::Registry => stats.registry_errors.fetch_add(1, Relaxed),
            _ => stats.broker_errors.fetch_add(1, Relaxed),
        };
        stats.instruments.broker_errors.add(
            1,
            &[
                KeyValue::new("breaker", self.breaker.name()),
                KeyValue::new("operation", self.operation),
            ],
        );
        let (error_type, message) = if self.breaker == Breaker::Registry {
            (
                "schema_registry",
                "schema registry error; the batch waits and retries",
            )
        } else {
            ("kafka", "broker error; retrying")
        };
        tracing::warn!(
            error_type,
            breaker = self.breaker.name(),
            stage = self.operation,
            error = self.error,
            "{message}"
        );
    }
}

/// The consumer group refused an offset commit because this member no longer owns the
/// partitions (a rebalance happened while the batch was loading). The batch is in the
/// warehouse; the partitions' new owner loads it again, which the MERGE makes harmless.
pub struct CommitRefused<'a> {
    pub error: &'a str,
}

impl CommitRefused<'_> {
    pub fn emit(&self, stats: &Stats) {
        stats.commits_refused.fetch_add(1, Relaxed);
        stats.instruments.commits_refused.add(1, &[]);
        tracing::warn!(
            error = self.error,
            "offset commit refused by the consumer group (partitions reassigned); their new owner replays the batch"
        );
    }
}

/// A reload of the components was tried between batches.
pub struct ComponentsReloaded<'a> {
    /// What asked for it: `sighup` or `file changed`.
    pub trigger: &'static str,
    /// `None`: replaced; `Some(error)`: refused, the previous components keep running.
    pub error: Option<&'a str>,
}

impl ComponentsReloaded<'_> {
    pub fn emit(&self, stats: &Stats) {
        match self.error {
            None => {
                stats.components_reloaded.fetch_add(1, Relaxed);
                (stats.instruments.component_reloads)
                    .add(1, &[KeyValue::new("outcome", "replaced")]);
                tracing::info!(
                    trigger = self.trigger,
                    "components reloaded; the next batch uses them"
                );
            }
            Some(error) => {
                stats.component_reloads_failed.fetch_add(1, Relaxed);
                (stats.instruments.component_reloads)
                    .add(1, &[KeyValue::new("outcome", "refused")]);
                tracing::error!(
                    trigger = self.trigger,
                    error,
                    "component reload refused; the previous components keep running"
                );
            }
        }
    }
}

/// Dead letters were written durably (before the batch's offsets are committed).
pub struct DeadLettersWritten<'a> {
    pub count: usize,
    /// Of them, written in their bounded form (too large for the DLQ).
    pub cut: usize,
    pub queue: &'a crate::dlq::DeadLetterQueue,
}

impl DeadLettersWritten<'_> {
    pub fn emit(&self, stats: &Stats) {
        stats.dead_letters.fetch_add(self.count as u64, Relaxed);
        stats.dead_letters_cut.fetch_add(self.cut as u64, Relaxed);
        (stats.instruments.dead_letters).add(self.count as u64, &[]);
        (stats.instruments.dead_letters_cut).add(self.cut as u64, &[]);
        if self.cut > 0 {
            tracing::warn!(count = self.count, cut = self.cut, queue = %self.queue.describe(), "dead letters written; some were too large for the dead letter queue and were cut (original size and SHA-256 in their floe.original.* headers)");
        } else {
            tracing::info!(count = self.count, queue = %self.queue.describe(), "dead letters written");
        }
    }
}

/// A new row lacks an unchanged TOASTed value and nothing in its batch says where to
/// take it from: the target gets NULL there.
pub struct ToastValueUnknown<'a> {
    pub position: Position<'a>,
    pub table: &'a str,
    pub key: &'a str,
    pub columns: &'a [String],
}

impl ToastValueUnknown<'_> {
    pub fn emit(&self, stats: &Stats) {
        stats.toast_values_unknown.fetch_add(1, Relaxed);
        stats.instruments.toast_values_unknown.add(1, &[]);
        tracing::warn!(
            topic = self.position.topic,
            partition = self.position.partition,
            offset = self.position.offset,
            table = self.table,
            key = self.key,
            columns = ?self.columns,
            "a new row lacks unchanged TOASTed values (a primary-key update under REPLICA IDENTITY DEFAULT whose old row is not in this batch): they load as NULL; set REPLICA IDENTITY FULL on the source table"
        );
    }
}

/// A TRUNCATE event was seen and, as configured, not applied.
pub struct TruncateIgnored<'a> {
    pub position: Position<'a>,
    pub table: &'a str,
}

impl TruncateIgnored<'_> {
    pub fn emit(&self, stats: &Stats) {
        stats.truncates_ignored.fetch_add(1, Relaxed);
        stats.instruments.truncates_ignored.add(1, &[]);
        tracing::warn!(
            topic = self.position.topic,
            partition = self.position.partition,
            offset = self.position.offset,
            table = self.table,
            "truncate ignored"
        );
    }
}

/// One component call returned (or failed): what it used of its sandbox limits.
pub struct ComponentCalled<'a> {
    pub component: &'a str,
    pub usage: &'a floe_host::Usage,
}

impl ComponentCalled<'_> {
    pub fn emit(&self, stats: &Stats) {
        let m = &stats.instruments;
        let attributes = [
            KeyValue::new("floe.component.kind", self.usage.kind),
            KeyValue::new("floe.component.name", self.component.to_owned()),
        ];
        m.component_call_duration
            .record(self.usage.elapsed.as_secs_f64(), &attributes);
        m.component_memory
            .record(self.usage.memory_peak_bytes as u64, &attributes);
        if let Some(fuel) = self.usage.fuel_used {
            m.component_fuel.record(fuel, &attributes);
        }
        tracing::trace!(
            component = self.component,
            kind = self.usage.kind,
            elapsed_us = self.usage.elapsed.as_micros() as u64,
            memory_peak_bytes = self.usage.memory_peak_bytes,
            fuel = self.usage.fuel_used,
            "component called"
        );
    }
}

/// A component call failed for a whole batch.
pub struct ComponentFailed<'a> {
    pub component: &'a str,
    pub error_code: &'static str,
    pub error: &'a str,
    pub events: usize,
}

impl ComponentFailed<'_> {
    pub fn emit(&self, stats: &Stats) {
        stats.batch_errors.fetch_add(1, Relaxed);
        tracing::error!(
            component = self.component,
            error_type = "wasm-trap",
            error_code = self.error_code,
            error = self.error,
            events = self.events,
            "component failed for the batch"
        );
    }
}

/// A warehouse load failed and will be retried.
pub struct LoadRetry<'a> {
    pub attempt: usize,
    pub delay: Duration,
    pub error: &'a str,
}

impl LoadRetry<'_> {
    pub fn emit(&self, stats: &Stats) {
        stats.load_retries.fetch_add(1, Relaxed);
        stats.instruments.load_retries.add(1, &[]);
        tracing::warn!(
            attempt = self.attempt,
            delay_ms = self.delay.as_millis() as u64,
            error_type = "warehouse",
            error = self.error,
            "load failed, retrying"
        );
    }
}

/// A batch is in the warehouse and its offsets are committed.
pub struct BatchCommitted<'a> {
    pub events: usize,
    pub rows: u64,
    pub tables: usize,
    pub skipped: u64,
    pub statements: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub tables_created: u64,
    pub tables_truncated: u64,
    pub columns_added: u64,
    pub columns_widened: u64,
    pub wasm: Duration,
    pub load: Duration,
    pub total: Duration,
    /// The statements the load ran.
    pub executed: &'a [crate::sinks::Executed],
    /// The tables loaded with their latest change's source commit time (ms).
    pub loaded_source_ms: &'a [(String, i64)],
}

/// The consumer's statistics report (every `statistics.interval.ms`): its assigned
/// partitions' lag and committed offsets, which `floe.consumer.lag` and
/// `floe.consumer.committed_offset` show.
pub struct ConsumerPositions {
    pub partitions: Vec<crate::metrics::PartitionPosition>,
}

impl ConsumerPositions {
    pub fn emit(self, stats: &Stats) {
        let partitions = self.partitions.len();
        stats.instruments.partitions(self.partitions);
        tracing::debug!(partitions, lag = ?stats.consumer_lag(), "consumer positions");
    }
}

impl BatchCommitted<'_> {
    pub fn emit(&self, stats: &Stats) {
        stats.batches.fetch_add(1, Relaxed);
        stats.commits.fetch_add(1, Relaxed);
        if let Some(first) = stats.first_event.get() {
            stats
                .last_commit_micros
                .store(first.elapsed().as_micros() as u64, Relaxed);
        }
        stats.rows_loaded.fetch_add(self.rows, Relaxed);
        stats.events_skipped.fetch_add(self.skipped, Relaxed);
        stats.statements.fetch_add(self.statements, Relaxed);
        stats.rows_inserted.fetch_add(self.inserted, Relaxed);
        stats.rows_updated.fetch_add(self.updated, Relaxed);
        stats.rows_deleted.fetch_add(self.deleted, Relaxed);
        stats.tables_created.fetch_add(self.tables_created, Relaxed);
        stats
            .tables_truncated
            .fetch_add(self.tables_truncated, Relaxed);
        stats.columns_added.fetch_add(self.columns_added, Relaxed);
        stats
            .columns_widened
            .fetch_add(self.columns_widened, Relaxed);
        stats
            .wasm_micros_total
            .fetch_add(self.wasm.as_micros() as u64, Relaxed);
        stats
            .load_micros_total
            .fetch_add(self.load.as_micros() as u64, Relaxed);
        stats
            .batch_micros_total
            .fetch_add(self.total.as_micros() as u64, Relaxed);
        self.record(&stats.instruments);
        tracing::info!(
            events = self.events,
            rows = self.rows,
            tables = self.tables,
            skipped = self.skipped,
            wasm_ms = self.wasm.as_millis() as u64,
            load_ms = self.load.as_millis() as u64,
            total_ms = self.total.as_millis() as u64,
            "batch committed"
        );
    }
}

impl BatchCommitted<'_> {
    fn record(&self, m: &Instruments) {
        m.batches_committed.add(1, &[]);
        m.loaded(self.loaded_source_ms);
        m.batch_duration.record(self.total.as_secs_f64(), &[]);
        m.components_duration.record(self.wasm.as_secs_f64(), &[]);
        m.load_duration.record(self.load.as_secs_f64(), &[]);
        for (change, n) in [
            ("table_created", self.tables_created),
            ("table_truncated", self.tables_truncated),
            ("column_added", self.columns_added),
            ("column_widened", self.columns_widened),
        ] {
            if n > 0 {
                m.schema_changes.add(n, &[KeyValue::new("change", change)]);
            }
        }
        for st in self.executed {
            m.statements.add(1, &[KeyValue::new("kind", st.kind)]);
            m.statement_duration.record(
                st.duration.as_secs_f64(),
                &[
                    KeyValue::new("db.system.name", "snowflake"),
                    KeyValue::new("db.operation.name", st.kind),
                    KeyValue::new("db.collection.name", st.table.clone()),
                    KeyValue::new("status", if st.ok { "ok" } else { "error" }),
                ],
            );
            for (op, n) in [
                ("insert", st.inserted),
                ("update", st.updated),
                ("delete", st.deleted),
            ] {
                if n > 0 {
                    m.rows_loaded.add(
                        n,
                        &[
                            KeyValue::new("table", st.table.clone()),
                            KeyValue::new("op", op),
                        ],
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped(error_type: &'static str, stage: &'static str, stats: &Stats) {
        EventDropped {
            position: Position {
                topic: "t",
                partition: 0,
                offset: 0,
            },
            error_type,
            stage,
            reason: "r",
        }
        .emit(stats);
    }

    #[test]
    fn only_a_validators_judgement_counts_as_a_rejection() {
        let stats = Stats::new();
        dropped("validation", "validate", &stats);
        dropped("parse", "validate", &stats);
        // A validator that trapped judged nothing: a failure, like any other trap.
        dropped("wasm-trap", "validate", &stats);
        dropped("wasm-trap", "transform", &stats);
        dropped("kafka", "source", &stats);
        dropped("warehouse", "load", &stats);
        let s = stats.snapshot();
        assert_eq!((s.events_rejected, s.events_failed), (2, 4));
    }
}
