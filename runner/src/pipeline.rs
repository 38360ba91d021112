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

use crate::components::Components;
use crate::config::{DeleteMode, IdentifierCase, SnowflakeConfig, TruncateMode};
use crate::dlq::{DeadLetter, DeadLetterQueue, DlqError};
use crate::events::{
    BatchCommitted, BatchReceived, Breaker, BreakerChanged, BreakerState, BrokerError,
    CommitRefused, ComponentFailed, ComponentsReloaded, DeadLettersWritten, EventDropped,
    LoadRetry, Position, Stats, StatsSnapshot, TruncateIgnored,
};
use crate::sinks::snowflake::target_for;
use crate::sinks::{Sink, SinkError, TableLoad, Truncation};
use crate::sources::{BatchLimits, Message, Source, SourceBatch, SourceError, batch_of};
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
    /// Per source table, the highest truncate LSN seen this run: a row change below it
    /// that arrives later (from another partition: Debezium sends truncates without a
    /// key) was wiped by that truncate and is not loaded.
    truncated_below: HashMap<String, i64>,
    /// Where events that cannot be loaded go.
    dlq: DeadLetterQueue,
    /// The broker circuit breaker (consumption and offset commits).
    broker: BrokerBreaker,
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

/// Resolves once shutdown is asked (never, when nobody can ask any more).
async fn shutdown_requested(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    if shutdown.wait_for(|&stop| stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The broker circuit breaker: transient broker errors (consuming or committing) are
/// retried with exponential backoff and jitter; after `attempts` in a row it opens
/// (nothing is polled or committed) for `open_for`, then half-opens (one more try):
/// success closes it, failure opens it again for twice as long, up to `max_open_for`.
struct BrokerBreaker {
    settings: BreakerSettings,
    attempts: usize,
    failures: usize,
    backoff: backon::ExponentialBackoff,
    open_for: Duration,
    state: BreakerState,
}

impl BrokerBreaker {
    fn new(settings: BreakerSettings, attempts: usize) -> BrokerBreaker {
        BrokerBreaker {
            settings,
            attempts: attempts.max(1),
            failures: 0,
            backoff: Self::backoff(),
            open_for: settings.open_for,
            state: BreakerState::Closed,
        }
    }

    fn backoff() -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build()
    }

    fn success(&mut self, stats: &Stats) {
        if self.state != BreakerState::Closed {
            BreakerChanged {
                breaker: Breaker::Broker,
                state: BreakerState::Closed,
                error: None,
                open_for: None,
            }
            .emit(stats);
        }
        self.failures = 0;
        self.backoff = Self::backoff();
        self.open_for = self.settings.open_for;
        self.state = BreakerState::Closed;
    }

    /// Records a transient failure and waits before the next try. False: shutdown was
    /// asked while waiting.
    async fn failure(
        &mut self,
        operation: &'static str,
        error: &str,
        stats: &Stats,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        BrokerError { operation, error }.emit(stats);
        self.failures += 1;
        let wait = if self.state == BreakerState::Closed && self.failures < self.attempts {
            self.backoff.next().unwrap_or(self.settings.open_for)
        } else {
            let open_for = self.open_for;
            BreakerChanged {
                breaker: Breaker::Broker,
                state: BreakerState::Open,
                error: Some(error),
                open_for: Some(open_for),
            }
            .emit(stats);
            self.state = BreakerState::Open;
            self.open_for = (self.open_for * 2).min(self.settings.max_open_for);
            open_for
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown_requested(shutdown) => return false,
        }
        if self.state == BreakerState::Open {
            self.state = BreakerState::HalfOpen;
            BreakerChanged {
                breaker: Breaker::Broker,
                state: BreakerState::HalfOpen,
                error: None,
                open_for: None,
            }
            .emit(stats);
        }
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
        Pipeline {
            source,
            sink,
            components,
            settings,
            stats,
            truncated_below: HashMap::new(),
            dlq: DeadLetterQueue::Log,
            broker: BrokerBreaker::new(settings_breaker, load_attempts),
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
        self.send_dead_letters(&messages, &prepared.dead).await?;
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
                    if !self
                        .broker
                        .failure("commit", &error, &self.stats, shutdown.clone())
                        .await
                    {
                        tracing::warn!(
                            "shutdown while the broker is failing: batch loaded but not committed (the next run replays it)"
                        );
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn send_dead_letters(
        &mut self,
        messages: &[Message],
        dead: &[DeadLetter],
    ) -> Result<(), PipelineError> {
        if dead.is_empty() {
            return Ok(());
        }
        let mut retry = Retry::new(self.settings.load_attempts);
        loop {
            match self.dlq.send(messages, dead).await {
                Ok(()) => {
                    DeadLettersWritten {
                        count: dead.len(),
                        queue: &self.dlq,
                    }
                    .emit(&self.stats);
                    return Ok(());
                }
                Err(e) if retry.wait(&e.to_string(), &self.stats).await => {}
                Err(e) => return Err(e.into()),
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
            let len = m.payload_len();
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
        let mut batch = batch_of(entered.iter().map(|&i| &messages[i]));
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
        // The last TRUNCATE per table wipes the rows before it; only the rows after it
        // are loaded, and the sink empties the table of rows below its LSN first.
        // "Before" is by LSN where both sides have one: Debezium sends truncates without
        // a key, so on a topic with several partitions a truncate and the table's row
        // changes are not in offset order. Without LSNs, batch order decides.
        let mut truncated_at: HashMap<&str, (u32, i64)> = HashMap::new();
        for t in &out.truncates {
            produced[t.event as usize] = true;
            match self.settings.target.truncate {
                TruncateMode::Apply => {
                    let at = truncated_at
                        .entry(t.table.as_str())
                        .or_insert((t.event, t.lsn));
                    if precedes(*at, (t.event, t.lsn)) {
                        *at = (t.event, t.lsn);
                    }
                }
                TruncateMode::Ignore => TruncateIgnored {
                    position: pos(original[t.event as usize]),
                    table: &t.table,
                }
                .emit(&self.stats),
            }
        }
        for (table, &(_, lsn)) in &truncated_at {
            if lsn >= 0 {
                let below = self
                    .truncated_below
                    .entry((*table).to_owned())
                    .or_insert(lsn);
                *below = (*below).max(lsn);
            }
        }
        let mut per_table: Vec<Vec<Row>> = (0..out.tables.len()).map(|_| Vec::new()).collect();
        for row in out.rows {
            produced[row.event as usize] = true;
            let table = out.tables[row.table as usize].name.as_str();
            let wiped_in_batch = truncated_at
                .get(table)
                .is_some_and(|&at| precedes((row.event, row.lsn), at));
            let wiped_earlier = row.lsn >= 0
                && self
                    .truncated_below
                    .get(table)
                    .is_some_and(|&below| row.lsn < below);
            if wiped_in_batch || wiped_earlier {
                tracing::debug!(
                    table,
                    lsn = row.lsn,
                    "row change wiped by a later truncate: not loaded"
                );
                continue;
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
            per_table[row.table as usize].push(row);
        }
        let skipped = produced.iter().filter(|p| !**p).count() as u64;

        // 3. one MERGE plan per table
        let mut truncate: std::collections::BTreeMap<String, Truncation> = truncated_at
            .iter()
            .map(|(t, &(_, lsn))| {
                let below_lsn = (lsn >= 0).then_some(lsn);
                (t.to_string(), Truncation { below_lsn })
            })
            .collect();
        let mut loads = Vec::new();
        let mut rows = 0;
        for (shape, rows_of_table) in out.tables.into_iter().zip(per_table) {
            if rows_of_table.is_empty() {
                // Every row was wiped by a truncate: a truncate-only load, below.
                continue;
            }
            let truncate_first = truncate.remove(&shape.name);
            let target = target_for(&self.settings.target, &shape.name);
            let mut shape = shape;
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
                    all_dead(
                        &mut dead,
                        input.rows.iter().map(|r| original[r.event as usize]),
                        "merge",
                        c.merge_builder.name(),
                        &msg,
                    );
                }
            }
        }
        // Tables truncated in this batch with no row of theirs left to load.
        for (table, truncation) in truncate {
            loads.push(TableLoad {
                target: target_for(&self.settings.target, &table),
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
                    .flat_map(|l| l.requests.iter().map(|r| r.id().to_string()))
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
        let mut p = Pipeline::new(
            FileSource::from_messages(messages),
            healthy(),
            Arc::new(Components::load(&cfg).unwrap()),
            settings(breaker(20, 1000)),
            Stats::new(),
        );
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
