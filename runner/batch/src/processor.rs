//! The batch processor: the per-batch work both of floe's modes share. Records in;
//! validated, transformed (each topic's chain of components), merged (one MERGE plan per
//! target table), loaded (retried, behind the warehouse circuit breaker) and
//! dead-lettered (durably, behind the DLQ breaker); a [`Summary`] out.
//!
//! It knows no Kafka consumer, no CLI and no configuration file: the runner's loop
//! (`floe`) and the Lambda handler (`floe-lambda`) hand it [`Message`]s and a stop
//! signal, and decide themselves what to acknowledge (offsets, partial batch responses).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use floe_cdc_core::DELETED_COLUMN;
use floe_host::types::{Batch, MergeInput, MergePlan, Op, Row, TableShape, Transformed, Verdict};

use crate::breaker::{BreakerSettings, CircuitBreaker, shutdown_requested};
use crate::components::Components;
use crate::config::{DeleteMode, IdentifierCase, OnFailure, SnowflakeConfig, TruncateMode};
use crate::dlq::{DeadLetter, DeadLetterQueue, DlqError};
use crate::events::{
    BatchCommitted, Breaker, BreakerChanged, BreakerState, ComponentFailed, DeadLettersWritten,
    EventDropped, LoadRetry, Position, Stats, ToastValueUnknown, TruncateIgnored,
};
use crate::format::Formats;
use crate::message::{Message, batch_with_values};
use crate::sinks::{LoadReport, Sink, SinkError, TableLoad, Truncation};

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
}

impl ProcessError {
    /// Whether processing the same batch again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProcessError::Sink(e) => e.is_retryable(),
            ProcessError::Dlq(_) => true,
            ProcessError::ComponentFailed(_) => false,
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
}

impl Summary {
    /// The event that says the batch is acknowledged (offsets committed, or the
    /// invocation answered), `total` after it was received.
    pub fn committed(&self, total: Duration) -> BatchCommitted {
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

/// A batch after the components ran: what to load and what it amounted to.
struct Prepared {
    loads: Vec<TableLoad>,
    rows: u64,
    skipped: u64,
    wasm: Duration,
    /// Events that will not be loaded, and why.
    dead: Vec<DeadLetter>,
    /// The messages of the truncates in `loads`.
    truncates: Vec<usize>,
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

/// The per-batch work over one sink and one dead letter queue (see the module docs).
pub struct BatchProcessor<K> {
    sink: K,
    components: Arc<Components>,
    settings: ProcessorSettings,
    stats: Arc<Stats>,
    /// Per target table, the highest truncate LSN applied so far: a row change below
    /// it that arrives later (from another partition: Debezium sends truncates without
    /// a key) was wiped by that truncate and is not loaded.
    truncated_below: HashMap<Vec<String>, i64>,
    /// Which target each source's rows go to, and which source owns each target.
    targets: crate::targets::Targets,
    /// Where events that cannot be loaded go.
    dlq: DeadLetterQueue,
    /// The dead letter queue's circuit breaker.
    dlq_breaker: CircuitBreaker,
}

impl<K: Sink> BatchProcessor<K> {
    pub fn new(
        sink: K,
        components: Arc<Components>,
        settings: ProcessorSettings,
        stats: Arc<Stats>,
    ) -> Self {
        let targets = crate::targets::Targets::new(&settings.target);
        let dlq_breaker =
            CircuitBreaker::new(Breaker::Dlq, settings.breaker, settings.load_attempts);
        BatchProcessor {
            sink,
            components,
            settings,
            stats,
            truncated_below: HashMap::new(),
            targets,
            dlq: DeadLetterQueue::Log,
            dlq_breaker,
        }
    }

    /// Sends events that cannot be loaded to `dlq` instead of only logging them.
    pub fn set_dead_letters(&mut self, dlq: DeadLetterQueue) {
        self.dlq = dlq;
    }

    /// Replaces the components (hot reload) for the next batch.
    pub fn set_components(&mut self, components: Arc<Components>) {
        self.components = components;
    }

    pub fn components(&self) -> &Arc<Components> {
        &self.components
    }

    pub fn dead_letters(&self) -> &DeadLetterQueue {
        &self.dlq
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn sink(&self) -> &K {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut K {
        &mut self.sink
    }

    /// Processes one batch: components, loads (retried; behind the warehouse breaker
    /// while the warehouse fails), dead letters (behind the DLQ breaker). Returns once
    /// every event's outcome is durable ([`Processed::Done`]), or when `stop` turns
    /// true while the warehouse or the DLQ is failing ([`Processed::Stopped`]).
    /// Non-retryable warehouse errors and `on_failure = "stop"` are errors.
    pub async fn process(
        &mut self,
        messages: &[Message],
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Processed, ProcessError> {
        let mut prepared = tokio::task::block_in_place(|| self.prepare(messages));
        if self.components.on_failure == OnFailure::Stop
            && let Some(failed) = prepared.dead.iter().find(|d| d.category == "wasm-trap")
        {
            return Err(ProcessError::ComponentFailed(format!(
                "{}: {}",
                failed.component, failed.reason
            )));
        }
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
        if !self
            .write_dead_letters(messages, &prepared.dead, stop)
            .await?
        {
            return Ok(Processed::Stopped(Unfinished {
                loaded: true,
                unloaded: Vec::new(),
                unwritten: prepared.dead,
            }));
        }
        Ok(Processed::Done(Summary {
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

    /// Loads with retries; when they are exhausted by transient errors, the breaker
    /// opens (see [`BreakerSettings`]). `None`: shutdown was asked while it was open.
    async fn load_with_breaker(
        &mut self,
        loads: &[TableLoad],
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<LoadReport>, ProcessError> {
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
                    result = self.sink.load(loads).await.map_err(ProcessError::from);
                }
            }
        }
    }

    /// Logs and counts `letters` (events of `messages`), then writes them durably
    /// ([`BatchProcessor::process`] does this for the letters of a batch it loaded; a
    /// caller uses it for letters an [`Unfinished`] batch left unwritten). `Ok(false)`:
    /// `stop` turned true while the DLQ was failing.
    pub async fn write_dead_letters(
        &mut self,
        messages: &[Message],
        letters: &[DeadLetter],
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, ProcessError> {
        for d in letters {
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
        self.send_dead_letters(messages, letters, stop).await
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
    ) -> Result<bool, ProcessError> {
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

    async fn load_with_retry(&mut self, loads: &[TableLoad]) -> Result<LoadReport, ProcessError> {
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
            truncates: Vec::new(),
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
            truncates: truncate_origins.into_values().flatten().collect(),
        }
    }

    /// Step 2 of [`BatchProcessor::prepare`]: each chain's events of `batch` through the
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
