//! The pipeline: source -> validators -> transformer -> row transforms -> merge builder
//! -> sink -> commit.
//!
//! It knows neither rdkafka nor HTTP: only [`Source`], [`Sink`] and the components.
//! A batch's offsets are committed only after the sink returned, so a crash anywhere
//! replays at most the uncommitted batch, which the MERGE applies idempotently.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use floe_host::types::{Batch, MergeInput, MergePlan, Op, Row, TableShape, Transformed, Verdict};

use crate::breaker::{CircuitBreaker, shutdown_requested};
use crate::components::Components;
use crate::config::{DeleteMode, IdentifierCase, SnowflakeConfig, TruncateMode};
use crate::dlq::{DeadLetter, DeadLetterQueue, DlqError};
use crate::events::{
    BatchCommitted, BatchReceived, Breaker, BreakerChanged, BreakerState, CommitRefused,
    ComponentFailed, ComponentsReloaded, DeadLettersWritten, EventDropped, LoadRetry, Position,
    Stats, StatsSnapshot, ToastValueUnknown, TruncateIgnored,
};
use crate::sinks::{Sink, SinkError, TableLoad, Truncation};
use crate::sources::{BatchLimits, Message, Source, SourceBatch, SourceError, batch_with_values};
use floe_cdc_core::DELETED_COLUMN;

/// Errors that stop a pipeline run. Per-event problems never do: they are logged and
/// counted (and, later, dead-lettered).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("metrics export: {0}")]
    Metrics(#[from] std::io::Error),
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// A component call failed and `components.on_failure = "stop"`.
    #[error("stopping (components.on_failure = stop): {0}")]
    ComponentFailed(String),
}

impl PipelineError {
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Source(e) => e.is_retryable(),
            PipelineError::Sink(e) => e.is_retryable(),
            PipelineError::Metrics(_) => false,
            PipelineError::Dlq(_) => true,
            PipelineError::ComponentFailed(_) => false,
        }
    }
}

/// Settings of one run that are not the source's or the sink's own.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub limits: BatchLimits,
    /// Target naming (database, schema, table mapping, identifier case).
    pub target: SnowflakeConfig,
    /// Stop after no event arrived for this long (None: run until shut down).
    pub exit_when_idle: Option<Duration>,
    /// Attempts of a retryable warehouse error before the run fails (offsets stay
    /// uncommitted, so the next run replays the batch).
    pub load_attempts: usize,
    /// Write [`StatsSnapshot`] JSON here after every batch and at exit.
    pub metrics_json: Option<PathBuf>,
    /// Larger messages (key + value) go to the dead letter queue unprocessed.
    pub max_message_bytes: usize,
    /// The warehouse circuit breaker and the shutdown deadline.
    pub breaker: BreakerSettings,
    /// Hot reload of the components (None: never).
    pub reload: Option<ReloadSettings>,
    /// What each topic's values are (`source.formats`).
    pub formats: Arc<crate::sources::format::Formats>,
}

/// Hot reload: between batches, when `requested` was set (SIGHUP) or a component file
/// changed, the components are loaded again from `components` and self-checked; they
/// replace the running ones only if that succeeds.
#[derive(Debug, Clone)]
pub struct ReloadSettings {
    pub components: crate::config::ComponentsConfig,
    pub requested: Arc<std::sync::atomic::AtomicBool>,
}

/// What the reload watcher knows about the component files.
struct Watched {
    settings: ReloadSettings,
    /// Modification time (and length) of each component file at the last (re)load.
    stamps: Vec<(PathBuf, Option<(std::time::SystemTime, u64)>)>,
    checked_at: Instant,
}

fn stamp(p: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Watched {
    fn new(settings: ReloadSettings) -> Watched {
        let stamps = crate::components::files_of(&settings.components)
            .into_iter()
            .map(|p| {
                let s = stamp(&p);
                (p, s)
            })
            .collect();
        Watched {
            settings,
            stamps,
            checked_at: Instant::now(),
        }
    }

    /// Why a reload is due now, if it is (files are looked at most once a second).
    fn due(&mut self) -> Option<&'static str> {
        use std::sync::atomic::Ordering;
        if self.settings.requested.swap(false, Ordering::Relaxed) {
            return Some("sighup");
        }
        if self.checked_at.elapsed() < Duration::from_secs(1) {
            return None;
        }
        self.checked_at = Instant::now();
        let changed = self.stamps.iter().any(|(p, s)| stamp(p) != *s);
        changed.then_some("file changed")
    }

    fn restamp(&mut self) {
        for (p, s) in &mut self.stamps {
            *s = stamp(p);
        }
    }
}

/// The warehouse circuit breaker: after a batch's load failed `load_attempts` times with
/// transient errors, the breaker opens (no consumption, no load) for `open_for`, then
/// half-opens (one probe load of the same batch): success closes it, failure opens it
/// again for twice as long, up to `max_open_for`. Transient errors never end the run.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub open_for: Duration,
    pub max_open_for: Duration,
    /// How long a shutdown request waits for the in-flight batch before abandoning it
    /// (uncommitted: the next run replays it).
    pub shutdown_timeout: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(120),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// One pipeline: a source, the components and a sink.
pub struct Pipeline<S, K> {
    source: S,
    sink: K,
    components: Arc<Components>,
    settings: PipelineSettings,
    stats: Arc<Stats>,
    /// Per target table, the highest truncate LSN applied this run: a row change below
    /// it that arrives later (from another partition: Debezium sends truncates without
    /// a key) was wiped by that truncate and is not loaded.
    truncated_below: HashMap<Vec<String>, i64>,
    /// Which target each source's rows go to, and which source owns each target.
    targets: crate::targets::Targets,
    /// Where events that cannot be loaded go.
    dlq: DeadLetterQueue,
    /// The broker circuit breaker (consumption and offset commits).
    broker: CircuitBreaker,
    /// The dead letter queue's circuit breaker.
    dlq_breaker: CircuitBreaker,
    /// Hot reload of the components, when configured.
    watched: Option<Watched>,
}

/// A batch after the components ran: what to load and what it amounted to.
struct Prepared {
    loads: Vec<TableLoad>,
    rows: u64,
    skipped: u64,
    wasm: Duration,
    /// Events that will not be loaded, and why.
    dead: Vec<DeadLetter>,
}

/// Exponential backoff with jitter (200 ms to 30 s) over `attempts` attempts.
struct Retry {
    backoff: backon::ExponentialBackoff,
    attempt: usize,
}

impl Retry {
    fn new(attempts: usize) -> Retry {
        Retry {
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .with_max_times(attempts.saturating_sub(1))
                .build(),
            attempt: 1,
        }
    }

    /// After a failed attempt: waits before the next one and returns true, or returns
    /// false when the attempts are used up.
    async fn wait(&mut self, error: &str, stats: &Stats) -> bool {
        let Some(delay) = self.backoff.next() else {
            return false;
        };
        LoadRetry {
            attempt: self.attempt,
            delay,
            error,
        }
        .emit(stats);
        tokio::time::sleep(delay).await;
        self.attempt += 1;
        true
    }
}

/// Whether change `a` comes before change `b` of the same table, each given as (batch
/// position, LSN): by LSN when both have one (offsets do not order a keyless truncate
/// against row changes in other partitions), else by position in the batch.
fn precedes(a: (u32, i64), b: (u32, i64)) -> bool {
    if a.1 >= 0 && b.1 >= 0 {
        a.1 < b.1
    } else {
        a.0 < b.0
    }
}

/// Each chain's share of a batch, for the chains that have events in it: the chain's
/// index, the positions of its events in `batch`, and those events as a batch of their
/// own (`batch` itself when one chain has them all, the common case, copying nothing).
fn chain_batches<'a>(
    batch: &'a Batch,
    chain_of: &'a [usize],
    chains: usize,
) -> impl Iterator<Item = (usize, Vec<usize>, Cow<'a, Batch>)> + 'a {
    (0..chains).filter_map(move |ci| {
        let members: Vec<usize> = (0..chain_of.len()).filter(|&i| chain_of[i] == ci).collect();
        if members.is_empty() {
            return None;
        }
        let input = if members.len() == batch.events.len() {
            Cow::Borrowed(batch)
        } else {
            Cow::Owned(Batch {
                topics: batch.topics.clone(),
                events: members.iter().map(|&i| batch.events[i].clone()).collect(),
            })
        };
        Some((ci, members, input))
    })
}

/// Every event of `indexes` is dead for the same reason (a component failed).
fn all_dead(
    dead: &mut Vec<DeadLetter>,
    indexes: impl Iterator<Item = usize>,
    stage: &'static str,
    component: &str,
    reason: &str,
) {
    dead.extend(indexes.map(|index| DeadLetter {
        index,
        category: "wasm-trap",
        stage,
        component: component.to_owned(),
        reason: reason.to_owned(),
    }));
}

fn case_of(c: IdentifierCase) -> floe_host::types::IdentifierCase {
    match c {
        IdentifierCase::Upper => floe_host::types::IdentifierCase::Upper,
        IdentifierCase::Preserve => floe_host::types::IdentifierCase::Preserve,
    }
}

/// Why the target cannot hold `shape`'s columns apart under `case`, if it cannot: two
/// columns with one identifier, or one named like a column the MERGE itself uses.
fn shape_problem(shape: &TableShape, case: IdentifierCase) -> Option<String> {
    let core = crate::sinks::core_shape(shape);
    let core_case = crate::sinks::snowflake::core_case(case);
    if let Err(e) = floe_cdc_core::sql::validate_shape(&core, core_case) {
        return Some(format!("schema: {e}"));
    }
    let reserved = floe_cdc_core::sql::identifier(floe_cdc_core::UNAVAILABLE_COLUMN, core_case);
    shape
        .columns
        .iter()
        .find(|c| floe_cdc_core::sql::identifier(&c.name, core_case) == reserved)
        .map(|c| {
            format!(
                "schema: table shape '{}': column {:?} is named like floe's '{}' MERGE column",
                shape.name,
                c.name,
                floe_cdc_core::UNAVAILABLE_COLUMN
            )
        })
}

/// The bounded category of a validator's rejection: `parse` when the reason says the
/// payload could not be read, else `validation`.
fn rejection_type(reason: &str) -> &'static str {
    if reason.starts_with("parse") {
        "parse"
    } else {
        "validation"
    }
}

impl<S: Source, K: Sink> Pipeline<S, K> {
    pub fn new(
        source: S,
        sink: K,
        components: Arc<Components>,
        settings: PipelineSettings,
        stats: Arc<Stats>,
    ) -> Self {
        let (settings_breaker, load_attempts) = (settings.breaker, settings.load_attempts);
        let watched = settings.reload.clone().map(Watched::new);
        let targets = crate::targets::Targets::new(&settings.target);
        Pipeline {
            source,
            sink,
            components,
            settings,
            stats,
            truncated_below: HashMap::new(),
            targets,
            dlq: DeadLetterQueue::Log,
            broker: CircuitBreaker::new(Breaker::Broker, settings_breaker, load_attempts),
            dlq_breaker: CircuitBreaker::new(Breaker::Dlq, settings_breaker, load_attempts),
            watched,
        }
    }

    /// Sends events that cannot be loaded to `dlq` instead of only logging them.
    pub fn with_dead_letters(mut self, dlq: DeadLetterQueue) -> Self {
        self.dlq = dlq;
        self
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn sink(&self) -> &K {
        &self.sink
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    /// Runs until the source is exhausted, the idle timeout passes, or `shutdown`
    /// turns true. A batch in progress when shutdown is asked is finished and
    /// committed first; a batch still being collected is dropped uncommitted (the
    /// next run consumes it again).
    pub async fn run(
        &mut self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<StatsSnapshot, PipelineError> {
        let mut last_event = Instant::now();
        loop {
            if *shutdown.borrow() {
                tracing::info!("shutdown requested; stopping");
                break;
            }
            self.reload_if_due();
            let next = tokio::select! {
                b = self.source.next_batch(self.settings.limits) => b,
                _ = shutdown.changed() => {
                    tracing::info!("shutdown requested; in-flight batch left uncommitted");
                    break;
                }
            };
            let next = match next {
                Ok(next) => {
                    self.broker.success(&self.stats);
                    next
                }
                Err(e) if e.is_retryable() => {
                    let error = e.to_string();
                    if !self
                        .broker
                        .failure("consume", &error, &self.stats, shutdown.clone())
                        .await
                    {
                        tracing::info!("shutdown requested; stopping");
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(batch) = next else {
                tracing::info!("source exhausted");
                break;
            };
            if batch.messages.is_empty() {
                if !self.source.is_ready() {
                    last_event = Instant::now();
                }
                if let Some(idle) = self.settings.exit_when_idle
                    && last_event.elapsed() >= idle
                {
                    tracing::info!(idle_secs = idle.as_secs_f64(), "idle; stopping");
                    break;
                }
                continue;
            }
            last_event = Instant::now();
            // A shutdown request gives the in-flight batch `shutdown_timeout` to finish
            // (and commit); then it is abandoned uncommitted.
            let timeout = self.settings.breaker.shutdown_timeout;
            let stop = shutdown.clone();
            let deadline = async move {
                shutdown_requested(stop).await;
                tokio::time::sleep(timeout).await;
            };
            let done = tokio::select! {
                r = self.process_until(batch, shutdown.clone()) => r?,
                _ = deadline => {
                    tracing::warn!(timeout_ms = timeout.as_millis() as u64, "shutdown: the in-flight batch did not finish in time; abandoned uncommitted (the next run replays it)");
                    false
                }
            };
            self.export_metrics()?;
            if !done {
                break;
            }
        }
        self.export_metrics()?;
        Ok(self.stats.snapshot())
    }

    /// Between batches: replaces the components when a reload is due and the new ones
    /// load and pass their self-check; otherwise the running ones stay.
    fn reload_if_due(&mut self) {
        let Some(watched) = &mut self.watched else {
            return;
        };
        let Some(trigger) = watched.due() else {
            return;
        };
        // Whatever the outcome, the files as they are now were looked at.
        watched.restamp();
        let cfg = watched.settings.components.clone();
        match tokio::task::block_in_place(|| Components::load_checked(&cfg)) {
            Ok(components) => {
                self.components = Arc::new(components);
                ComponentsReloaded {
                    trigger,
                    error: None,
                }
                .emit(&self.stats);
            }
            Err(e) => ComponentsReloaded {
                trigger,
                error: Some(&e.to_string()),
            }
            .emit(&self.stats),
        }
    }

    /// Processes, loads and commits one batch.
    pub async fn process(&mut self, batch: SourceBatch) -> Result<(), PipelineError> {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        self.process_until(batch, rx).await.map(|_| ())
    }

    /// [`Pipeline::process`]; while the warehouse breaker is open, a shutdown request
    /// abandons the batch uncommitted (`Ok(false)`).
    async fn process_until(
        &mut self,
        batch: SourceBatch,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, PipelineError> {
        let started = Instant::now();
        BatchReceived {
            events: batch.messages.len(),
            bytes: batch.bytes,
        }
        .emit(&self.stats);
        let events = batch.messages.len();
        let checkpoint = batch.checkpoint;
        let messages = batch.messages;
        let mut prepared = tokio::task::block_in_place(|| self.prepare(&messages));
        if self.components.on_failure == crate::config::OnFailure::Stop
            && let Some(failed) = prepared.dead.iter().find(|d| d.category == "wasm-trap")
        {
            return Err(PipelineError::ComponentFailed(format!(
                "{}: {}",
                failed.component, failed.reason
            )));
        }
        let load_started = Instant::now();
        let Some(report) = self
            .load_with_breaker(&prepared.loads, shutdown.clone())
            .await?
        else {
            return Ok(false);
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
        // Dead letters are durable before the offsets move past them.
        for d in &prepared.dead {
            let m = &messages[d.index];
            EventDropped {
                position: Position {
                    topic: &m.topic,
                    partition: m.partition,
                    offset: m.offset,
                },
                error_type: d.category,
                stage: d.stage,
                reason: &d.reason,
            }
            .emit(&self.stats);
        }
        if !self
            .send_dead_letters(&messages, &prepared.dead, shutdown.clone())
            .await?
        {
            return Ok(false);
        }
        if !self.commit(&checkpoint, shutdown).await? {
            return Ok(false);
        }
        BatchCommitted {
            events,
            rows: prepared.rows - refused_rows,
            tables: prepared.loads.len() - report.refused.len(),
            skipped: prepared.skipped,
            statements: report.statements,
            inserted: report.rows_inserted,
            updated: report.rows_updated,
            deleted: report.rows_deleted,
            tables_created: report.tables_created,
            tables_truncated: report.tables_truncated,
            columns_added: report.columns_added,
            columns_widened: report.columns_widened,
            wasm: prepared.wasm,
            load,
            total: started.elapsed(),
        }
        .emit(&self.stats);
        Ok(true)
    }

    /// Loads with retries; when they are exhausted by transient errors, the breaker
    /// opens (see [`BreakerSettings`]). `None`: shutdown was asked while it was open.
    async fn load_with_breaker(
        &mut self,
        loads: &[TableLoad],
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<crate::sinks::LoadReport>, PipelineError> {
        let settings = self.settings.breaker;
        let mut result = self.load_with_retry(loads).await;
        let mut open_for = settings.open_for;
        let mut opened = false;
        loop {
            match result {
                Ok(report) => {
                    if opened {
                        BreakerChanged {
                            breaker: Breaker::Warehouse,
                            state: BreakerState::Closed,
                            error: None,
                            open_for: None,
                        }
                        .emit(&self.stats);
                    }
                    return Ok(Some(report));
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    opened = true;
                    BreakerChanged {
                        breaker: Breaker::Warehouse,
                        state: BreakerState::Open,
                        error: Some(&e.to_string()),
                        open_for: Some(open_for),
                    }
                    .emit(&self.stats);
                    tokio::select! {
                        _ = tokio::time::sleep(open_for) => {}
                        _ = shutdown_requested(shutdown.clone()) => {
                            tracing::warn!("shutdown while the warehouse breaker is open: batch abandoned uncommitted (the next run replays it)");
                            return Ok(None);
                        }
                    }
                    open_for = (open_for * 2).min(settings.max_open_for);
                    BreakerChanged {
                        breaker: Breaker::Warehouse,
                        state: BreakerState::HalfOpen,
                        error: None,
                        open_for: None,
                    }
                    .emit(&self.stats);
                    result = self.sink.load(loads).await.map_err(PipelineError::from);
                }
            }
        }
    }

    /// Commits the batch's offsets, riding out broker outages through the broker
    /// breaker. A commit the consumer group refuses (partitions reassigned) is given
    /// up: the batch is in the warehouse and the new owner replays it harmlessly.
    /// `Ok(false)`: shutdown was asked while the broker was failing (the batch is
    /// loaded but not committed; the next run replays it).
    async fn commit(
        &mut self,
        checkpoint: &crate::sources::Checkpoint,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, PipelineError> {
        loop {
            match self.source.commit(checkpoint).await {
                Ok(()) => {
                    self.broker.success(&self.stats);
                    return Ok(true);
                }
                Err(e) if e.is_group_refusal() => {
                    CommitRefused {
                        error: &e.to_string(),
                    }
                    .emit(&self.stats);
                    return Ok(true);
                }
                Err(e) if e.is_retryable() => {
                    let error = e.to_string();
                    let stats = &self.stats;
                    if !self
                        .broker
                        .retry_batch("commit", &error, stats, shutdown.clone())
                        .await
                    {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes the batch's dead letters, riding out DLQ outages through the DLQ breaker
    /// (the batch waits, uncommitted, as it does for the warehouse). `Ok(false)`:
    /// shutdown was asked while the DLQ was failing (the batch is loaded but not
    /// committed; the next run replays it, and its MERGEs apply idempotently).
    async fn send_dead_letters(
        &mut self,
        messages: &[Message],
        dead: &[DeadLetter],
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, PipelineError> {
        if dead.is_empty() {
            return Ok(true);
        }
        loop {
            match self.dlq.send(messages, dead).await {
                Ok(sent) => {
                    self.dlq_breaker.success(&self.stats);
                    DeadLettersWritten {
                        count: dead.len(),
                        cut: sent.cut,
                        queue: &self.dlq,
                    }
                    .emit(&self.stats);
                    return Ok(true);
                }
                Err(e) => {
                    let error = e.to_string();
                    let stats = &self.stats;
                    let retry = self.dlq_breaker.retry_batch(
                        "dead letters",
                        &error,
                        stats,
                        shutdown.clone(),
                    );
                    if !retry.await {
                        return Ok(false);
                    }
                }
            }
        }
    }

    async fn load_with_retry(
        &mut self,
        loads: &[TableLoad],
    ) -> Result<crate::sinks::LoadReport, PipelineError> {
        if loads.is_empty() {
            return Ok(Default::default());
        }
        let mut retry = Retry::new(self.settings.load_attempts);
        loop {
            match self.sink.load(loads).await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_retryable() && retry.wait(&e.to_string(), &self.stats).await => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs the components over a batch (CPU-bound; called on a blocking section).
    fn prepare(&mut self, messages: &[Message]) -> Prepared {
        let wasm_started = Instant::now();
        let pos = |i: usize| Position {
            topic: &messages[i].topic,
            partition: messages[i].partition,
            offset: messages[i].offset,
        };
        let mut dead: Vec<DeadLetter> = Vec::new();
        // Message index of each event of the batch.
        let mut entered: Vec<usize> = Vec::with_capacity(messages.len());
        let max_bytes = self.settings.max_message_bytes;
        for (i, m) in messages.iter().enumerate() {
            let len = m.size();
            if len > max_bytes {
                dead.push(DeadLetter {
                    index: i,
                    category: "kafka",
                    stage: "source",
                    component: "floe".into(),
                    reason: format!(
                        "message of {len} bytes exceeds source.max_message_bytes ({max_bytes})"
                    ),
                });
                continue;
            }
            entered.push(i);
        }
        // Topics with a configured format: their values as the components get them.
        let formats = &self.settings.formats;
        let mut values: Vec<(usize, Option<Vec<u8>>)> = Vec::with_capacity(entered.len());
        for &i in &entered {
            let m = &messages[i];
            match formats.of(&m.topic).normalize(m.value.as_deref()) {
                Ok(value) => values.push((i, value)),
                Err(reason) => dead.push(DeadLetter {
                    index: i,
                    category: rejection_type(&reason),
                    stage: "source",
                    component: "floe".into(),
                    reason,
                }),
            }
        }
        let entered: Vec<usize> = values.iter().map(|(i, _)| *i).collect();
        let mut batch = batch_with_values(values.into_iter().map(|(i, v)| (&messages[i], v)));
        let empty = |wasm: Duration, dead: Vec<DeadLetter>| Prepared {
            loads: Vec::new(),
            rows: 0,
            skipped: 0,
            wasm,
            dead,
        };
        if batch.events.is_empty() {
            return empty(wasm_started.elapsed(), dead);
        }

        // 1. validate: each event by its topic's chain, every validator of the chain in
        // order; the first rejection is the one reported. A failed call dead-letters
        // the chain's events of this batch (not the other chains').
        let c = &self.components;
        let n = batch.events.len();
        let chain_of: Vec<usize> = batch
            .events
            .iter()
            .map(|e| c.chain_for(&batch.topics[e.topic as usize]))
            .collect();
        // Per event: None = accepted so far.
        let mut refused: Vec<Option<DeadLetter>> = (0..n).map(|_| None).collect();
        for (ci, members, input) in chain_batches(&batch, &chain_of, c.chains.len()) {
            for v in &c.chains[ci].validators {
                match retry_once(|| v.validate(&input)) {
                    Ok(verdicts) => {
                        for (&i, verdict) in members.iter().zip(verdicts) {
                            if let (Verdict::Rejected(reason), None) = (verdict, &refused[i]) {
                                refused[i] = Some(DeadLetter {
                                    index: entered[i],
                                    category: rejection_type(&reason),
                                    stage: "validate",
                                    component: v.name().to_owned(),
                                    reason,
                                });
                            }
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        ComponentFailed {
                            component: v.name(),
                            error_code: e.error_code(),
                            error: &msg,
                            events: members.len(),
                        }
                        .emit(&self.stats);
                        for &i in &members {
                            refused[i] = Some(DeadLetter {
                                index: entered[i],
                                category: "wasm-trap",
                                stage: "validate",
                                component: v.name().to_owned(),
                                reason: msg.clone(),
                            });
                        }
                        break;
                    }
                }
            }
        }
        let mut original: Vec<usize> = Vec::with_capacity(n);
        let mut chain_of_accepted: Vec<usize> = Vec::with_capacity(n);
        let all = std::mem::take(&mut batch.events);
        for (i, (ev, refusal)) in all.into_iter().zip(refused).enumerate() {
            match refusal {
                None => {
                    original.push(entered[i]);
                    chain_of_accepted.push(chain_of[i]);
                    batch.events.push(ev);
                }
                Some(letter) => dead.push(letter),
            }
        }
        if batch.events.is_empty() {
            return empty(wasm_started.elapsed(), dead);
        }

        // 2. transform: per chain, its transformer then its row transforms.
        let (out, mut produced) =
            self.transform_chains(&batch, &chain_of_accepted, &original, &mut dead);
        // Every row and truncate goes to its source's target table ([`Targets`]); one
        // that maps to a target another source owns is dead-lettered instead.
        let mut target_of =
            |topic: &Arc<str>, table: &str, index: usize, dead: &mut Vec<DeadLetter>| match self
                .targets
                .resolve(topic, table)
            {
                Ok(target) => Some(target),
                Err(reason) => {
                    dead.push(DeadLetter {
                        index,
                        category: "schema",
                        stage: "merge",
                        component: "floe".into(),
                        reason,
                    });
                    None
                }
            };
        // The last TRUNCATE per target wipes the rows before it; only the rows after it
        // are loaded, and the sink empties the table of rows below its LSN first.
        // "Before" is by LSN where both sides have one: Debezium sends truncates without
        // a key, so on a topic with several partitions a truncate and the table's row
        // changes are not in offset order. Without LSNs, batch order decides.
        let mut truncated_at: HashMap<Vec<String>, (u32, i64, String)> = HashMap::new();
        // The batch messages of each target's truncates: dead-lettered with its rows
        // when its load cannot be built.
        let mut truncate_origins: HashMap<Vec<String>, Vec<usize>> = HashMap::new();
        for t in &out.truncates {
            produced[t.event as usize] = true;
            let index = original[t.event as usize];
            match self.settings.target.truncate {
                TruncateMode::Apply => {
                    let Some(target) =
                        target_of(&messages[index].topic, &t.table, index, &mut dead)
                    else {
                        continue;
                    };
                    let at = truncated_at.entry(target.clone()).or_insert((
                        t.event,
                        t.lsn,
                        t.table.clone(),
                    ));
                    if precedes((at.0, at.1), (t.event, t.lsn)) {
                        *at = (t.event, t.lsn, t.table.clone());
                    }
                    truncate_origins.entry(target).or_default().push(index);
                }
                TruncateMode::Ignore => TruncateIgnored {
                    position: pos(index),
                    table: &t.table,
                }
                .emit(&self.stats),
            }
        }
        // One group of rows per target, in order of first appearance.
        struct Group {
            target: Vec<String>,
            shape: TableShape,
            rows: Vec<Row>,
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of: HashMap<Vec<String>, usize> = HashMap::new();
        for row in out.rows {
            produced[row.event as usize] = true;
            let index = original[row.event as usize];
            let shape = &out.tables[row.table as usize];
            let Some(target) = target_of(&messages[index].topic, &shape.name, index, &mut dead)
            else {
                continue;
            };
            let wiped_in_batch = truncated_at
                .get(&target)
                .is_some_and(|at| precedes((row.event, row.lsn), (at.0, at.1)));
            let wiped_earlier = row.lsn >= 0
                && self
                    .truncated_below
                    .get(&target)
                    .is_some_and(|&below| row.lsn < below);
            if wiped_in_batch || wiped_earlier {
                tracing::debug!(
                    table = %shape.name,
                    lsn = row.lsn,
                    "row change wiped by a later truncate: not loaded"
                );
                continue;
            }
            if row.op == Op::Insert
                && row.data.contains("\"__unavailable\"")
                && !row.data.contains("\"__from\"")
            {
                let columns: Vec<String> = serde_json::from_str::<serde_json::Value>(&row.data)
                    .ok()
                    .and_then(|v| {
                        v.get(floe_cdc_core::UNAVAILABLE_COLUMN)
                            .and_then(|u| u.as_object())
                            .map(|u| u.keys().cloned().collect())
                    })
                    .unwrap_or_default();
                ToastValueUnknown {
                    position: pos(index),
                    table: &shape.name,
                    key: &row.key,
                    columns: &columns,
                }
                .emit(&self.stats);
            }
            let counter = match row.op {
                Op::Insert => &self.stats.ops_insert,
                Op::Update => &self.stats.ops_update,
                Op::Delete => &self.stats.ops_delete,
                Op::Read => &self.stats.ops_read,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.stats
                .rows_transformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let g = match group_of.get(&target) {
                Some(&g) => {
                    // A shared target fed by another source table: the union of columns.
                    let known = &mut groups[g].shape;
                    if known.name != shape.name {
                        for c in &shape.columns {
                            if !known.columns.iter().any(|k| k.name == c.name) {
                                known.columns.push(c.clone());
                            }
                        }
                    }
                    g
                }
                None => {
                    group_of.insert(target.clone(), groups.len());
                    groups.push(Group {
                        target,
                        shape: shape.clone(),
                        rows: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            groups[g].rows.push(row);
        }
        let skipped = produced.iter().filter(|p| !**p).count() as u64;

        // 3. one MERGE plan per target table
        let mut truncate: std::collections::BTreeMap<Vec<String>, (Truncation, String)> =
            truncated_at
                .into_iter()
                .map(|(target, (_, lsn, table))| {
                    let below_lsn = (lsn >= 0).then_some(lsn);
                    (target, (Truncation::new(below_lsn), table))
                })
                .collect();
        let mut loads = Vec::new();
        let mut rows = 0;
        for Group {
            target,
            mut shape,
            rows: rows_of_table,
        } in groups
        {
            let truncate_first = truncate.remove(&target).map(|(t, _)| t);
            let soft = self.settings.target.deletes_of(&shape.name) == DeleteMode::Soft;
            // Under soft deletes `__deleted` is floe's flag: a source column of that
            // name would be overwritten by it.
            let flag_taken = soft.then(|| {
                let case = crate::sinks::snowflake::core_case(self.settings.target.identifier_case);
                let flag = floe_cdc_core::sql::identifier(DELETED_COLUMN, case);
                shape
                    .columns
                    .iter()
                    .find(|c| floe_cdc_core::sql::identifier(&c.name, case) == flag)
                    .map(|c| {
                        format!(
                            "schema: table shape '{}': source column {:?} is floe's soft-delete flag column (sink.snowflake.deletes = \"soft\"); use hard deletes for this table or rename the column",
                            shape.name, c.name
                        )
                    })
            });
            let deletes = match self.settings.target.deletes_of(&shape.name) {
                DeleteMode::Hard => floe_host::types::DeleteMode::Hard,
                DeleteMode::Soft => {
                    if !shape.columns.iter().any(|c| c.name == DELETED_COLUMN) {
                        shape.columns.push(floe_host::types::Column {
                            name: DELETED_COLUMN.to_owned(),
                            data_type: "BOOLEAN".to_owned(),
                            is_key: false,
                        });
                    }
                    floe_host::types::DeleteMode::Soft
                }
            };
            // Columns the target cannot hold apart (`a` and `A` under upper case, or a
            // source column named like a metadata column) are a problem of the data,
            // not of the merge builder: the table's events go to the DLQ as `schema`.
            if let Some(reason) = flag_taken
                .flatten()
                .or_else(|| shape_problem(&shape, self.settings.target.identifier_case))
            {
                let truncates = match truncate_first {
                    Some(_) => truncate_origins.remove(&target).unwrap_or_default(),
                    None => Vec::new(),
                };
                dead.extend(
                    rows_of_table
                        .iter()
                        .map(|r| original[r.event as usize])
                        .chain(truncates)
                        .map(|index| DeadLetter {
                            index,
                            category: "schema",
                            stage: "merge",
                            component: "floe".into(),
                            reason: reason.clone(),
                        }),
                );
                continue;
            }
            let input = MergeInput {
                target: target.clone(),
                identifier_case: case_of(self.settings.target.identifier_case),
                shape,
                rows: rows_of_table,
                deletes,
            };
            match retry_once(|| c.merge_builder.build(&input)) {
                Ok(plan) => {
                    rows += u64::from(plan.rows_after_dedup);
                    let origins = input
                        .rows
                        .iter()
                        .map(|r| original[r.event as usize])
                        .collect();
                    let requests = plan.statements.iter().map(|_| Arc::default()).collect();
                    loads.push(TableLoad {
                        source_table: input.shape.name.clone(),
                        target,
                        shape: input.shape,
                        truncate: truncate_first,
                        plan,
                        origins,
                        requests,
                    });
                }
                Err(e) => {
                    let msg = e.to_string();
                    ComponentFailed {
                        component: c.merge_builder.name(),
                        error_code: e.error_code(),
                        error: &msg,
                        events: input.rows.len(),
                    }
                    .emit(&self.stats);
                    // The table's truncate is not applied either: it goes with its rows.
                    let truncates = match truncate_first {
                        Some(_) => truncate_origins.remove(&target).unwrap_or_default(),
                        None => Vec::new(),
                    };
                    all_dead(
                        &mut dead,
                        input
                            .rows
                            .iter()
                            .map(|r| original[r.event as usize])
                            .chain(truncates),
                        "merge",
                        c.merge_builder.name(),
                        &msg,
                    );
                }
            }
        }
        // Targets truncated in this batch with no row left to load.
        for (target, (truncation, table)) in truncate {
            loads.push(TableLoad {
                target,
                shape: TableShape {
                    name: table.clone(),
                    columns: Vec::new(),
                },
                source_table: table,
                truncate: Some(truncation),
                plan: MergePlan {
                    statements: Vec::new(),
                    rows_after_dedup: 0,
                },
                origins: Vec::new(),
                requests: Vec::new(),
            });
        }
        // A truncate applied in this batch also wipes rows below its LSN that arrive in
        // later batches of this run (from other partitions).
        for load in &loads {
            if let Some(lsn) = load.truncate.as_ref().and_then(|t| t.below_lsn) {
                let below = self
                    .truncated_below
                    .entry(load.target.clone())
                    .or_insert(lsn);
                *below = (*below).max(lsn);
            }
        }
        Prepared {
            loads,
            rows,
            skipped,
            wasm: wasm_started.elapsed(),
            dead,
        }
    }

    /// Step 2 of [`Pipeline::prepare`]: each chain's events of `batch` through the
    /// chain's transformer and then its row transforms, the answers merged into one in
    /// batch order (event indexes into `batch`). Rows that failed, and every event of a
    /// chain whose component call failed, are dead-lettered here; the returned flags
    /// mark those events as handled.
    fn transform_chains(
        &self,
        batch: &Batch,
        chain_of: &[usize],
        original: &[usize],
        dead: &mut Vec<DeadLetter>,
    ) -> (Transformed, Vec<bool>) {
        let n = batch.events.len();
        let mut handled = vec![false; n];
        let mut out = Transformed {
            tables: Vec::new(),
            rows: Vec::new(),
            truncates: Vec::new(),
            failures: Vec::new(),
        };
        let chains = &self.components.chains;
        for (ci, members, input) in chain_batches(batch, chain_of, chains.len()) {
            let chain = &chains[ci];
            // A failed call dead-letters every event of the chain in this batch.
            let failed_call =
                |e: floe_host::HostError, component: &str, dead: &mut Vec<DeadLetter>| {
                    let msg = e.to_string();
                    ComponentFailed {
                        component,
                        error_code: e.error_code(),
                        error: &msg,
                        events: members.len(),
                    }
                    .emit(&self.stats);
                    all_dead(
                        dead,
                        members.iter().map(|&i| original[i]),
                        "transform",
                        component,
                        &msg,
                    );
                };
            let mut answer = match retry_once(|| chain.transformer.transform(&input)) {
                Ok(a) => a,
                Err(e) => {
                    failed_call(e, chain.transformer.name(), dead);
                    members.iter().for_each(|&i| handled[i] = true);
                    continue;
                }
            };
            // Which component failed each failure of `answer`, in order.
            let mut failed_by: Vec<&str> = vec![chain.transformer.name(); answer.failures.len()];
            let mut transformed = true;
            for t in &chain.transforms {
                match retry_once(|| t.transform_rows(&answer)) {
                    Ok(next) => {
                        failed_by.resize(next.failures.len(), t.name());
                        answer = next;
                    }
                    Err(e) => {
                        failed_call(e, t.name(), dead);
                        members.iter().for_each(|&i| handled[i] = true);
                        transformed = false;
                        break;
                    }
                }
            }
            if !transformed {
                continue;
            }
            for (f, component) in answer.failures.iter().zip(failed_by) {
                let i = members[f.event as usize];
                handled[i] = true;
                dead.push(DeadLetter {
                    index: original[i],
                    category: "transform",
                    stage: "transform",
                    component: component.to_owned(),
                    reason: f.reason.clone(),
                });
            }
            // Tables by name across chains: a table fed by two chains gets the union
            // of their columns.
            let mut table_at = Vec::with_capacity(answer.tables.len());
            for shape in answer.tables {
                match out.tables.iter().position(|t| t.name == shape.name) {
                    Some(at) => {
                        let known = &mut out.tables[at].columns;
                        for c in shape.columns {
                            if !known.iter().any(|k| k.name == c.name) {
                                known.push(c);
                            }
                        }
                        table_at.push(at as u32);
                    }
                    None => {
                        table_at.push(out.tables.len() as u32);
                        out.tables.push(shape);
                    }
                }
            }
            for mut row in answer.rows {
                row.event = members[row.event as usize] as u32;
                row.table = table_at[row.table as usize];
                out.rows.push(row);
            }
            for mut t in answer.truncates {
                t.event = members[t.event as usize] as u32;
                out.truncates.push(t);
            }
        }
        // Batch order across chains (each chain's answer is in its own order).
        out.rows.sort_by_key(|r| r.event);
        out.truncates.sort_by_key(|t| t.event);
        (out, handled)
    }

    fn export_metrics(&self) -> Result<(), PipelineError> {
        if let Some(path) = &self.settings.metrics_json {
            write_stats_json(path, &self.stats.snapshot())?;
        }
        Ok(())
    }
}

/// Calls `f` again once if its error says a retry may help (e.g. a deadline hit on a
/// loaded machine). Each call runs in a fresh instance.
fn retry_once<T>(
    mut f: impl FnMut() -> Result<T, floe_host::HostError>,
) -> Result<T, floe_host::HostError> {
    match f() {
        Err(e) if e.is_retryable() => {
            tracing::warn!(error = %e, "component call failed; retrying once in a fresh instance");
            f()
        }
        r => r,
    }
}

/// Writes the statistics atomically (temp file + rename), so readers never see half a
/// file.
pub fn write_stats_json(path: &std::path::Path, stats: &StatsSnapshot) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(stats).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    //! The breaker and the shutdown deadline, with an in-process sink that fails or
    //! stalls on demand (the real warehouse's faults are in tests/all).

    use super::*;
    use crate::config::ComponentsConfig;
    use crate::sinks::LoadReport;
    use crate::sources::file::FileSource;

    /// Fails with a transient error `failures` times, sleeps `stall` per load.
    struct FlakySink {
        /// Source tables of every successful load.
        tables: Vec<String>,
        failures: usize,
        stall: Duration,
        loaded: usize,
        /// The warehouse request ids of every attempt.
        request_ids: Vec<Vec<String>>,
    }

    impl Sink for FlakySink {
        async fn load(&mut self, loads: &[TableLoad]) -> Result<LoadReport, SinkError> {
            self.request_ids.push(
                loads
                    .iter()
                    .flat_map(|l| {
                        let truncate = l.truncate.as_ref().map(|t| &t.request);
                        truncate
                            .into_iter()
                            .chain(&l.requests)
                            .map(|r| r.id().to_string())
                    })
                    .collect(),
            );
            tokio::time::sleep(self.stall).await;
            if self.failures > 0 {
                self.failures -= 1;
                return Err(SinkError::Snowflake(floe_snowflake::Error::SessionExpired));
            }
            self.loaded += 1;
            self.tables
                .extend(loads.iter().map(|l| l.source_table.clone()));
            Ok(LoadReport::default())
        }
    }

    /// A source whose broker fails: `consume_failures` transient errors before the first
    /// batch, then `commit_failures` transient commit errors, then (if `refuse`) one
    /// commit refused by the group.
    struct FlakySource {
        inner: FileSource,
        consume_failures: usize,
        commit_failures: usize,
        refuse: bool,
        committed: usize,
    }

    fn transient() -> SourceError {
        SourceError::Kafka(rdkafka::error::KafkaError::MessageConsumption(
            rdkafka::types::RDKafkaErrorCode::AllBrokersDown,
        ))
    }

    impl Source for FlakySource {
        async fn next_batch(
            &mut self,
            limits: BatchLimits,
        ) -> Result<Option<SourceBatch>, SourceError> {
            if self.consume_failures > 0 {
                self.consume_failures -= 1;
                return Err(transient());
            }
            self.inner.next_batch(limits).await
        }

        async fn commit(
            &mut self,
            checkpoint: &crate::sources::Checkpoint,
        ) -> Result<(), SourceError> {
            if self.commit_failures > 0 {
                self.commit_failures -= 1;
                return Err(SourceError::Kafka(
                    rdkafka::error::KafkaError::ConsumerCommit(
                        rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
                    ),
                ));
            }
            if self.refuse {
                self.refuse = false;
                return Err(SourceError::Kafka(
                    rdkafka::error::KafkaError::ConsumerCommit(
                        rdkafka::types::RDKafkaErrorCode::IllegalGeneration,
                    ),
                ));
            }
            self.committed += 1;
            self.inner.commit(checkpoint).await
        }
    }

    fn message() -> Message {
        Message {
            topic: Arc::from("dbz.public.t"),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(br#"{"id":1}"#.to_vec()),
            value: Some(
                br#"{"op":"c","after":{"id":1},"source":{"schema":"public","table":"t","lsn":5}}"#
                    .to_vec(),
            ),
            headers: Vec::new(),
        }
    }

    fn settings(breaker: BreakerSettings) -> PipelineSettings {
        PipelineSettings {
            limits: BatchLimits {
                max_rows: 10,
                max_bytes: 1 << 20,
                max_wait: Duration::from_millis(10),
                idle_poll: Duration::from_millis(10),
            },
            target: SnowflakeConfig::default(),
            exit_when_idle: None,
            load_attempts: 2,
            metrics_json: None,
            max_message_bytes: 1 << 20,
            breaker,
            reload: None,
            formats: Default::default(),
        }
    }

    fn pipeline(sink: FlakySink, breaker: BreakerSettings) -> Pipeline<FileSource, FlakySink> {
        let components = Arc::new(Components::load(&ComponentsConfig::default()).unwrap());
        Pipeline::new(
            FileSource::from_messages(vec![message()]),
            sink,
            components,
            settings(breaker),
            Stats::new(),
        )
    }

    fn healthy() -> FlakySink {
        FlakySink {
            tables: Vec::new(),
            failures: 0,
            stall: Duration::ZERO,
            loaded: 0,
            request_ids: Vec::new(),
        }
    }

    /// A pipeline over one message that makes the hostile example validator panic.
    fn hostile(on_failure: crate::config::OnFailure) -> Pipeline<FileSource, FlakySink> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/components/examples/example_hostile_validator.wasm");
        let cfg = ComponentsConfig {
            validator: path.display().to_string(),
            on_failure,
            ..ComponentsConfig::default()
        };
        let mut m = message();
        m.value = Some(
            br#"{"op":"c","after":{"id":1,"hostile":"panic"},"source":{"schema":"public","table":"t","lsn":5}}"#
                .to_vec(),
        );
        Pipeline::new(
            FileSource::from_messages(vec![m]),
            healthy(),
            Arc::new(Components::load(&cfg).unwrap()),
            settings(breaker(20, 1000)),
            Stats::new(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_component_dead_letters_its_batch_or_stops_the_run() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = hostile(crate::config::OnFailure::Dlq)
            .run(rx)
            .await
            .unwrap();
        assert_eq!((snap.dead_letters, snap.commits), (1, 1), "{snap:?}");

        let (_tx, rx) = tokio::sync::watch::channel(false);
        let mut p = hostile(crate::config::OnFailure::Stop);
        match p.run(rx).await {
            Err(e @ PipelineError::ComponentFailed(_)) => {
                assert!(e.to_string().contains("panic"), "{e}");
                assert!(!e.is_retryable());
            }
            other => panic!("expected the run to stop, got {other:?}"),
        }
        assert_eq!(p.stats().snapshot().commits, 0, "nothing committed");
        assert_eq!(p.sink().loaded, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_row_transform_dead_letters_only_its_chains_events() {
        let hostile = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/components/examples/example_hostile_transform.wasm");
        let cfg = ComponentsConfig {
            chains: vec![crate::config::ChainConfig {
                topics: r"^dbz\.public\.t$".into(),
                transforms: Some(vec![hostile.display().to_string()]),
                ..Default::default()
            }],
            ..ComponentsConfig::default()
        };
        let change = |table: &str, id: i64, hostile: &str, offset: i64| {
            let mut m = message();
            m.topic = Arc::from(format!("dbz.public.{table}"));
            m.offset = offset;
            m.key = Some(format!(r#"{{"id":{id}}}"#).into_bytes());
            m.value = Some(
                format!(
                    r#"{{"op":"c","after":{{"id":{id},"hostile":"{hostile}"}},"source":{{"schema":"public","table":"{table}","lsn":{id}}}}}"#
                )
                .into_bytes(),
            );
            m
        };
        let messages = vec![
            change("t", 1, "no", 0),
            change("u", 2, "panic", 1),
            change("t", 3, "panic", 2),
            change("u", 4, "no", 3),
        ];
        let mut p = over(messages, &cfg);
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        // Both of t's events die with the chain's failed call; u has no transform, so
        // its "panic" row is just data.
        assert_eq!(
            (snap.dead_letters, snap.rows_transformed, snap.commits),
            (2, 2, 1),
            "{snap:?}"
        );
        assert_eq!(snap.batch_errors, 1, "one failed component call: {snap:?}");
        assert_eq!(p.sink().tables, vec!["public.u".to_string()]);
    }

    /// A pipeline over `messages` with the components `cfg` names and a healthy sink.
    fn over(messages: Vec<Message>, cfg: &ComponentsConfig) -> Pipeline<FileSource, FlakySink> {
        Pipeline::new(
            FileSource::from_messages(messages),
            healthy(),
            Arc::new(Components::load(cfg).unwrap()),
            settings(breaker(20, 1000)),
            Stats::new(),
        )
    }

    fn truncate(table: &str, lsn: i64, offset: i64) -> Message {
        let mut m = message();
        m.topic = Arc::from(format!("dbz.public.{table}"));
        m.offset = offset;
        m.key = None;
        m.value = Some(
            format!(r#"{{"op":"t","source":{{"schema":"public","table":"{table}","lsn":{lsn}}}}}"#)
                .into_bytes(),
        );
        m
    }

    fn insert(table: &str, id: i64, lsn: i64, offset: i64) -> Message {
        let mut m = message();
        m.topic = Arc::from(format!("dbz.public.{table}"));
        m.offset = offset;
        m.key = Some(format!(r#"{{"id":{id}}}"#).into_bytes());
        m.value = Some(
            format!(r#"{{"op":"c","after":{{"id":{id}}},"source":{{"schema":"public","table":"{table}","lsn":{lsn}}}}}"#)
                .into_bytes(),
        );
        m
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncate_whose_table_cannot_be_merged_goes_to_the_dlq_with_its_rows() {
        let hostile = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/components/examples/example_hostile_merge_builder.wasm");
        let cfg = ComponentsConfig {
            merge_builder: hostile.display().to_string(),
            ..ComponentsConfig::default()
        };
        let dir = std::env::temp_dir().join(format!("floe-trunc-dlq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dlq = dir.join("dlq.jsonl");
        let _ = std::fs::remove_file(&dlq);
        let messages = vec![
            insert("t", 1, 5, 0),
            truncate("t", 10, 1),
            insert("t", 2, 15, 2),
            // A table truncated with no row to merge: its truncate needs no MERGE.
            truncate("u", 12, 0),
        ];
        let mut p =
            over(messages, &cfg).with_dead_letters(DeadLetterQueue::File { path: dlq.clone() });
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        assert_eq!((snap.dead_letters, snap.commits), (2, 1), "{snap:?}");
        let letters = crate::sources::file::read_file(&dlq).unwrap();
        let mut offsets: Vec<(String, String)> = letters
            .iter()
            .map(|m| {
                let h = |k: &str| {
                    let v = m.headers.iter().find(|(hk, _)| hk == k).unwrap().1.clone();
                    String::from_utf8(v.unwrap()).unwrap()
                };
                (h(crate::dlq::OFFSET_HEADER), h(crate::dlq::REASON_HEADER))
            })
            .collect();
        offsets.sort();
        assert_eq!(offsets[0].0, "1", "the truncate: {offsets:?}");
        assert_eq!(offsets[1].0, "2", "the row after it: {offsets:?}");
        assert!(offsets[0].1.contains("refusing table"), "{offsets:?}");
        // Only u's truncate reached the warehouse.
        assert_eq!(p.sink().tables, vec!["public.u".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retried_load_resubmits_its_truncate_under_the_same_request_id() {
        let sink = FlakySink {
            failures: 2,
            ..healthy()
        };
        let mut p = Pipeline::new(
            FileSource::from_messages(vec![truncate("t", 10, 0), insert("t", 1, 15, 1)]),
            sink,
            Arc::new(Components::load(&ComponentsConfig::default()).unwrap()),
            settings(breaker(20, 1000)),
            Stats::new(),
        );
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        assert_eq!(snap.commits, 1, "{snap:?}");
        let ids = &p.sink().request_ids;
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert_eq!(
            ids[0].len(),
            2,
            "the truncate's id and the MERGE's: {ids:?}"
        );
        assert!(ids.iter().all(|a| *a == ids[0]), "{ids:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn columns_a_table_cannot_hold_apart_cost_only_that_tables_events() {
        let dir = std::env::temp_dir().join(format!("floe-collide-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dlq = dir.join("dlq.jsonl");
        let _ = std::fs::remove_file(&dlq);
        let with = |table: &str, id: i64, after: &str, offset: i64| {
            let mut m = insert(table, id, 10 + id, offset);
            m.value = Some(
                format!(r#"{{"op":"c","after":{after},"source":{{"schema":"public","table":"{table}","lsn":{}}}}}"#, 10 + id)
                    .into_bytes(),
            );
            m
        };
        let messages = vec![
            // `a` and `A` are one column under identifier_case = "upper".
            with("t", 1, r#"{"id":1,"a":1,"A":2}"#, 0),
            with("t", 2, r#"{"id":2,"a":3,"A":4}"#, 1),
            // A column named like the MERGE's own `__unavailable`, in another case.
            with("v", 3, r#"{"id":3,"__Unavailable":1}"#, 0),
            insert("u", 4, 14, 0),
        ];
        let cfg = ComponentsConfig {
            on_failure: crate::config::OnFailure::Stop,
            ..ComponentsConfig::default()
        };
        let mut p =
            over(messages, &cfg).with_dead_letters(DeadLetterQueue::File { path: dlq.clone() });
        let (_tx, rx) = tokio::sync::watch::channel(false);
        // Not a component failure: even `on_failure = "stop"` goes on.
        let snap = p.run(rx).await.expect("the run goes on");
        assert_eq!((snap.dead_letters, snap.commits), (3, 1), "{snap:?}");
        assert_eq!(p.sink().tables, vec!["public.u".to_string()]);
        let letters = crate::sources::file::read_file(&dlq).unwrap();
        for l in &letters {
            let h = |k: &str| {
                let v = l.headers.iter().find(|(hk, _)| hk == k).unwrap().1.clone();
                String::from_utf8(v.unwrap()).unwrap()
            };
            assert_eq!(h(crate::dlq::CATEGORY_HEADER), "schema");
            let reason = h(crate::dlq::REASON_HEADER);
            assert!(
                reason.contains("collides") || reason.contains("__unavailable"),
                "{reason}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_column_named_like_the_soft_delete_flag_is_refused() {
        let mut m = insert("t", 1, 5, 0);
        m.value = Some(
            br#"{"op":"c","after":{"id":1,"__deleted":true},"source":{"schema":"public","table":"t","lsn":5}}"#
                .to_vec(),
        );
        let mut s = settings(breaker(20, 1000));
        s.target.deletes = DeleteMode::Soft;
        let mut p = Pipeline::new(
            FileSource::from_messages(vec![m, insert("u", 2, 6, 0)]),
            healthy(),
            Arc::new(Components::load(&ComponentsConfig::default()).unwrap()),
            s,
            Stats::new(),
        );
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        assert_eq!((snap.dead_letters, snap.events_failed), (1, 1), "{snap:?}");
        assert_eq!(p.sink().tables, vec!["public.u".to_string()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_row_lacking_a_toasted_value_is_counted_and_logged() {
        let mut lone = insert("t", 2, 20, 0);
        lone.value = Some(
            br#"{"op":"c","after":{"id":2,"body":"__debezium_unavailable_value"},"source":{"schema":"public","table":"t","lsn":20}}"#
                .to_vec(),
        );
        let mut p = Pipeline::new(
            FileSource::from_messages(vec![lone]),
            healthy(),
            Arc::new(Components::load(&ComponentsConfig::default()).unwrap()),
            settings(breaker(20, 1000)),
            Stats::new(),
        );
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        assert_eq!(
            (snap.toast_values_unknown, snap.commits),
            (1, 1),
            "{snap:?}"
        );
    }

    fn broken_message() -> Message {
        let mut m = message();
        m.value = Some(b"{not json".to_vec());
        m
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dlq_outage_holds_the_batch_until_the_letters_are_written() {
        let dir = std::env::temp_dir().join(format!("floe-dlq-outage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The DLQ file's directory appears only after a while: until then every write
        // fails, as a DLQ topic does while its cluster is down.
        let path = dir.join("later").join("dlq.jsonl");
        let later = dir.join("later");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            std::fs::create_dir_all(later).unwrap();
        });
        let mut p = Pipeline::new(
            FileSource::from_messages(vec![broken_message(), insert("t", 2, 7, 1)]),
            healthy(),
            Arc::new(Components::load(&ComponentsConfig::default()).unwrap()),
            settings(breaker(50, 1000)),
            Stats::new(),
        )
        .with_dead_letters(DeadLetterQueue::File { path: path.clone() });
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.expect("a DLQ outage never ends the run");
        assert_eq!((snap.dead_letters, snap.commits), (1, 1), "{snap:?}");
        assert!(
            snap.dlq_errors >= 2 && snap.dlq_breaker_opened >= 1,
            "{snap:?}"
        );
        assert_eq!(snap.dlq_breaker_state, "closed", "{snap:?}");
        assert_eq!(crate::sources::file::read_file(&path).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_during_a_dlq_outage_leaves_the_batch_uncommitted() {
        let path = std::env::temp_dir()
            .join(format!("floe-dlq-never-{}", std::process::id()))
            .join("missing")
            .join("dlq.jsonl");
        let mut p = Pipeline::new(
            FileSource::from_messages(vec![broken_message()]),
            healthy(),
            Arc::new(Components::load(&ComponentsConfig::default()).unwrap()),
            settings(breaker(50, 5000)),
            Stats::new(),
        )
        .with_dead_letters(DeadLetterQueue::File { path });
        let started = Instant::now();
        let snap = p.run(shutdown_after(400)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!((snap.dead_letters, snap.commits), (0, 0), "{snap:?}");
        assert_eq!(snap.dlq_breaker_state, "open", "{snap:?}");
    }

    /// A shutdown signal sent after `ms` milliseconds (and kept open afterwards).
    fn shutdown_after(ms: u64) -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            tx.send(true).unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        rx
    }

    /// A pipeline over one message whose broker fails as given, with a healthy sink.
    fn flaky_broker(
        consume_failures: usize,
        commit_failures: usize,
        refuse: bool,
        breaker: BreakerSettings,
    ) -> Pipeline<FlakySource, FlakySink> {
        let source = FlakySource {
            inner: FileSource::from_messages(vec![message()]),
            consume_failures,
            commit_failures,
            refuse,
            committed: 0,
        };
        let components = Arc::new(Components::load(&ComponentsConfig::default()).unwrap());
        Pipeline::new(
            source,
            healthy(),
            components,
            settings(breaker),
            Stats::new(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broker_breaker_rides_out_consume_and_commit_failures() {
        let mut p = flaky_broker(3, 3, false, breaker(20, 1000));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        // 2 attempts: consume fails (retry), fails (open), probe fails (open again),
        // then succeeds; commit likewise. Loaded once, committed once.
        assert_eq!(snap.broker_errors, 6, "{snap:?}");
        assert_eq!(snap.broker_breaker_opened, 4, "{snap:?}");
        assert_eq!(snap.broker_breaker_state, "closed", "{snap:?}");
        assert_eq!((snap.commits, snap.rows_loaded), (1, 1), "{snap:?}");
        assert_eq!(p.sink().loaded, 1);
        assert_eq!(p.source().committed, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_refused_by_the_group_is_not_retried() {
        let mut p = flaky_broker(0, 0, true, breaker(20, 1000));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        assert_eq!(
            (
                snap.commits_refused,
                snap.broker_errors,
                p.source().committed
            ),
            (1, 0, 0),
            "{snap:?}"
        );
        assert_eq!(snap.rows_loaded, 1, "{snap:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_while_the_broker_fails_stops_at_once() {
        let mut p = flaky_broker(usize::MAX, 0, false, breaker(60_000, 60_000));
        let rx = shutdown_after(800);
        let started = Instant::now();
        let snap = p.run(rx).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(snap.broker_breaker_state, "open", "{snap:?}");
        assert_eq!(snap.commits, 0, "{snap:?}");
    }

    fn breaker(open_ms: u64, shutdown_ms: u64) -> BreakerSettings {
        BreakerSettings {
            open_for: Duration::from_millis(open_ms),
            max_open_for: Duration::from_millis(open_ms * 2),
            shutdown_timeout: Duration::from_millis(shutdown_ms),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn breaker_opens_probes_and_closes_without_ending_the_run() {
        let sink = FlakySink {
            tables: Vec::new(),
            failures: 5,
            stall: Duration::ZERO,
            loaded: 0,
            request_ids: Vec::new(),
        };
        let mut p = pipeline(sink, breaker(20, 1000));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        // 2 attempts closed, then 3 failed probes and a good one: opened 4 times.
        assert_eq!(snap.breaker_opened, 4, "{snap:?}");
        assert_eq!(snap.breaker_state, "closed");
        assert_eq!((snap.commits, snap.rows_loaded), (1, 1), "{snap:?}");
        assert_eq!(p.sink().loaded, 1);
        // Every attempt and probe resubmitted the batch's statements under the same ids.
        let ids = &p.sink().request_ids;
        assert_eq!(ids.len(), 6);
        assert!(!ids[0].is_empty());
        assert!(ids.iter().all(|a| *a == ids[0]), "{ids:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_while_open_abandons_the_batch_uncommitted() {
        let sink = FlakySink {
            tables: Vec::new(),
            failures: usize::MAX,
            stall: Duration::ZERO,
            loaded: 0,
            request_ids: Vec::new(),
        };
        let mut p = pipeline(sink, breaker(60_000, 60_000));
        let rx = shutdown_after(600);
        let started = Instant::now();
        let snap = p.run(rx).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!((snap.commits, snap.breaker_opened), (0, 1), "{snap:?}");
        assert_eq!(snap.breaker_state, "open");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_load_is_abandoned_at_the_shutdown_deadline() {
        let sink = FlakySink {
            tables: Vec::new(),
            failures: 0,
            stall: Duration::from_secs(60),
            loaded: 0,
            request_ids: Vec::new(),
        };
        let mut p = pipeline(sink, breaker(20, 300));
        let rx = shutdown_after(300);
        let started = Instant::now();
        let snap = p.run(rx).await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(550) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert_eq!(snap.commits, 0, "{snap:?}");
        assert_eq!(p.sink().loaded, 0);
    }
}
