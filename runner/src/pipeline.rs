//! The runner's loop: source -> [`BatchProcessor`] -> commit, with the broker circuit
//! breaker, idle exit, hot reload of the components, metrics export and graceful
//! shutdown. A batch is loaded on a task of its own while the next one is consumed
//! and prepared.
//!
//! It knows neither rdkafka nor HTTP: only [`Source`], [`Sink`] and the batch processor.
//! A batch's offsets are committed only after the sink returned and its dead letters
//! were written, so a crash anywhere replays at most the uncommitted batch, which the
//! MERGE applies idempotently.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use floe_batch::breaker::BreakerSettings;
pub use floe_batch::processor::{ProcessError, Processed, ProcessorSettings, Summary};

use floe_batch::Retained;
use floe_batch::breaker::{CircuitBreaker, shutdown_requested};
use floe_batch::processor::{BatchProcessor, Delivery, PreparedBatch, Preparer};
use floe_batch::trace;
use tracing::Instrument as _;
use tracing::instrument::WithSubscriber as _;

use crate::components::Components;
use crate::config::SnowflakeConfig;
use crate::dlq::{DeadLetterQueue, DlqError};
use crate::events::{
    BatchReceived, Breaker, CommitRefused, ComponentsReloaded, Stats, StatsSnapshot,
};
use crate::sinks::{Sink, SinkError};
use crate::sources::{BatchLimits, InFlight, Source, SourceBatch, SourceError};

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

impl From<ProcessError> for PipelineError {
    fn from(e: ProcessError) -> Self {
        match e {
            ProcessError::Sink(e) => PipelineError::Sink(e),
            ProcessError::Dlq(e) => PipelineError::Dlq(e),
            ProcessError::ComponentFailed(m) => PipelineError::ComponentFailed(m),
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

/// One pipeline: a source, the batch processor's two halves (components; sink and
/// dead letters) and the loop between them.
pub struct Pipeline<S, K> {
    source: S,
    /// The components (CPU-bound), run on this task.
    preparer: Preparer,
    /// The sink and the dead letter queue, locked by the task that loads a batch while
    /// this one consumes and prepares the next.
    delivery: Arc<tokio::sync::Mutex<Delivery<K>>>,
    /// The batch being loaded, if one is.
    loading: Option<Loading>,
    /// Where the source learns about the batch being loaded (rebalances).
    in_flight: Option<Arc<InFlight>>,
    stats: Arc<Stats>,
    settings: PipelineSettings,
    /// The broker circuit breaker (consumption and offset commits).
    broker: CircuitBreaker,
    /// Hot reload of the components, when configured.
    watched: Option<Watched>,
}

/// A batch handed to the load task: the task gives back its checkpoint (committed once
/// the batch is loaded) and the outcome; the messages are dropped on the task.
struct Loading {
    task: tokio::task::JoinHandle<Loaded>,
    /// When the batch was received.
    started: Instant,
    /// The batch's trace span (its commit's parent).
    span: tracing::Span,
}

/// What a load's task hands back.
struct Loaded {
    /// Where the batch ends, committed once it is loaded.
    checkpoint: crate::sources::Checkpoint,
    outcome: Result<Processed, ProcessError>,
    /// The task committed the batch itself ([`InFlight::commit_loaded`]) and reported it.
    committed: bool,
}

impl PipelineSettings {
    /// The per-batch part of the settings.
    fn processor(&self) -> ProcessorSettings {
        ProcessorSettings {
            target: self.target.clone(),
            load_attempts: self.load_attempts,
            max_message_bytes: self.max_message_bytes,
            breaker: self.breaker,
            formats: self.formats.clone(),
        }
    }
}

impl<S: Source, K: Sink + 'static> Pipeline<S, K> {
    pub fn new(
        source: S,
        sink: K,
        components: Arc<Components>,
        settings: PipelineSettings,
        stats: Arc<Stats>,
    ) -> Self {
        let watched = settings.reload.clone().map(Watched::new);
        let processor = BatchProcessor::new(sink, components, settings.processor(), stats.clone());
        let (preparer, delivery) = processor.into_parts();
        Pipeline {
            in_flight: source.in_flight(),
            source,
            preparer,
            delivery: Arc::new(tokio::sync::Mutex::new(delivery)),
            loading: None,
            stats,
            broker: CircuitBreaker::new(Breaker::Broker, settings.breaker, settings.load_attempts),
            settings,
            watched,
        }
    }

    /// Sends events that cannot be loaded to `dlq` instead of only logging them.
    pub fn with_dead_letters(self, dlq: DeadLetterQueue) -> Self {
        self.delivery_now().set_dead_letters(dlq);
        self
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The sink. Only between runs: panics while a batch is being loaded.
    pub fn sink(&self) -> impl std::ops::Deref<Target = K> + '_ {
        tokio::sync::MutexGuard::map(self.delivery_now(), |d| d.sink_mut())
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    /// The delivery half, when no load holds it (between runs, or before a load starts).
    fn delivery_now(&self) -> tokio::sync::MutexGuard<'_, Delivery<K>> {
        self.delivery.try_lock().expect("no batch is being loaded")
    }

    /// Runs until the source is exhausted, the idle timeout passes, or `shutdown`
    /// turns true. Batch N is loaded (on its own task) while batch N+1 is consumed and
    /// prepared; N+1 is loaded only after N is loaded and committed, so loads and
    /// commits stay in order. At shutdown the batch being loaded is finished and
    /// committed first, within `shutdown_timeout`; a batch still being collected or
    /// prepared is dropped uncommitted (the next run consumes it again).
    pub async fn run(
        &mut self,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<StatsSnapshot, PipelineError> {
        // The sink is connected (made before the pipeline) and the run starts: ready
        // as soon as the source owns partitions (`/readyz`).
        self.stats.sink_ready.store(true, Ordering::Relaxed);
        let ran = self.run_batches(shutdown.clone()).await;
        self.stats.sink_ready.store(false, Ordering::Relaxed);
        self.stats.source_ready.store(false, Ordering::Relaxed);
        // Whatever ended the loop, the batch being loaded is finished and committed.
        let settled = self.settle(&shutdown).await;
        ran?;
        settled?;
        self.export_metrics()?;
        Ok(self.stats.snapshot())
    }

    async fn run_batches(
        &mut self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), PipelineError> {
        let mut last_event = Instant::now();
        loop {
            if *shutdown.borrow() {
                tracing::info!("shutdown requested; stopping");
                return Ok(());
            }
            // A load that ended while the last batch was consumed is committed first.
            if self.loading.as_ref().is_some_and(|l| l.task.is_finished())
                && !self.settle(&shutdown).await?
            {
                return Ok(());
            }
            self.reload_if_due();
            let next = tokio::select! {
                b = self.source.next_batch(self.settings.limits) => b,
                _ = shutdown.changed() => {
                    tracing::info!("shutdown requested; the batch being collected is left uncommitted");
                    return Ok(());
                }
            };
            (self.stats.source_ready).store(self.source.is_ready(), Ordering::Relaxed);
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
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(mut batch) = next else {
                tracing::info!("source exhausted");
                return Ok(());
            };
            if batch.messages.is_empty() {
                // Nothing new: the batch being loaded is committed now, not held.
                if !self.settle(&shutdown).await? {
                    return Ok(());
                }
                if !self.source.is_ready() {
                    last_event = Instant::now();
                }
                if let Some(idle) = self.settings.exit_when_idle
                    && last_event.elapsed() >= idle
                {
                    tracing::info!(idle_secs = idle.as_secs_f64(), "idle; stopping");
                    return Ok(());
                }
                continue;
            }
            last_event = Instant::now();
            let started = Instant::now();
            BatchReceived {
                events: batch.messages.len(),
                bytes: batch.bytes,
            }
            .emit(&self.stats);
            let span = self.batch_span(&batch);
            // While the previous batch loads on its own task.
            let preparer = &mut self.preparer;
            let prepared = span
                .in_scope(|| tokio::task::block_in_place(|| preparer.prepare(&mut batch.messages)));
            // Loads (and commits) stay in order: the previous batch first.
            let settled = self.settle(&shutdown).await?;
            if let Err(e) = &prepared {
                trace::failed(&span, e.error_type(), e);
            }
            let prepared = prepared?;
            // A shutdown asked while the previous batch loaded leaves this one
            // unloaded and uncommitted: only the batch in flight is finished.
            if !settled || *shutdown.borrow() {
                tracing::info!("shutdown requested; the prepared batch is left uncommitted");
                return Ok(());
            }
            self.start_load(batch, prepared, started, span, shutdown.clone());
        }
    }

    /// The trace span of `batch`, linked to its records' own traces.
    fn batch_span(&self, batch: &SourceBatch) -> tracing::Span {
        let span = trace::batch_span(&batch.messages, self.source.consumer_group(), batch.bytes);
        trace::link_records(&span, &batch.messages);
        span
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
                self.preparer.set_components(Arc::new(components));
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

    /// Processes, loads and commits one batch (after the one being loaded, if any).
    pub async fn process(&mut self, mut batch: SourceBatch) -> Result<(), PipelineError> {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        self.settle(&rx).await?;
        let started = Instant::now();
        BatchReceived {
            events: batch.messages.len(),
            bytes: batch.bytes,
        }
        .emit(&self.stats);
        let span = self.batch_span(&batch);
        let preparer = &mut self.preparer;
        let prepared = span
            .in_scope(|| tokio::task::block_in_place(|| preparer.prepare(&mut batch.messages)))?;
        self.start_load(batch, prepared, started, span, rx.clone());
        self.settle(&rx).await.map(|_| ())
    }

    /// Hands `batch` to a task of its own that loads it and writes its dead letters.
    fn start_load(
        &mut self,
        batch: SourceBatch,
        prepared: PreparedBatch,
        started: Instant,
        span: tracing::Span,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        debug_assert!(self.loading.is_none(), "one load at a time");
        if let Some(f) = &self.in_flight {
            f.begin(batch.checkpoint.clone());
        }
        let delivery = self.delivery.clone();
        let in_flight = self.in_flight.clone();
        let stats = self.stats.clone();
        // Kept for the dead letter queue while the next batch is consumed and prepared:
        // each topic's repeated schema once (see floe_batch::retained).
        let messages = Retained::compact(batch.messages);
        let checkpoint = batch.checkpoint;
        let batch_span = span.clone();
        let task = tokio::spawn(
            async move {
                // Free: the previous load was settled before this one started.
                let mut delivery = delivery.lock_owned().await;
                let outcome = (delivery.deliver(&messages, prepared, shutdown)).await;
                drop(delivery);
                // Past delivery the messages are not needed (a stopped delivery is replayed
                // whole): they go now, not when the pipeline next looks, which may be after
                // the next batch is collected and prepared (two batches at once).
                drop(messages);
                let mut committed = false;
                if let Some(f) = in_flight {
                    f.finish(matches!(outcome, Ok(Processed::Done(_))));
                    // Committed now, not when the pipeline next looks: it may be collecting
                    // the next batch for up to `batch.max_wait_ms`.
                    if let Ok(Processed::Done(_)) = &outcome {
                        committed = trace::commit_span(&batch_span).in_scope(|| f.commit_loaded());
                    }
                    if let (Ok(Processed::Done(summary)), true) = (&outcome, committed) {
                        summary.committed(started.elapsed()).emit(&stats);
                    }
                }
                if let Err(e) = &outcome {
                    trace::failed(&batch_span, e.error_type(), e);
                }
                Loaded {
                    checkpoint,
                    outcome,
                    committed,
                }
            }
            .instrument(span.clone())
            .with_current_subscriber(),
        );
        self.loading = Some(Loading {
            task,
            started,
            span,
        });
    }

    /// Waits for the batch being loaded (if any) and commits it. A shutdown request
    /// gives it `shutdown_timeout` to finish; then it is abandoned uncommitted.
    /// `Ok(false)`: the batch was left uncommitted because of a shutdown (the next run
    /// replays it); the run should stop.
    async fn settle(
        &mut self,
        shutdown: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, PipelineError> {
        let Some(mut loading) = self.loading.take() else {
            return Ok(true);
        };
        let timeout = self.settings.breaker.shutdown_timeout;
        let stop = shutdown.clone();
        let deadline = async move {
            shutdown_requested(stop).await;
            tokio::time::sleep(timeout).await;
        };
        let joined = tokio::select! {
            joined = &mut loading.task => joined,
            _ = deadline => {
                loading.task.abort();
                // Until the task is gone it holds the sink.
                let _ = (&mut loading.task).await;
                self.end_in_flight();
                tracing::warn!(timeout_ms = timeout.as_millis() as u64, "shutdown: the batch being loaded did not finish in time; abandoned uncommitted (the next run replays it)");
                return Ok(false);
            }
        };
        let Loaded {
            checkpoint,
            outcome,
            committed: reported,
        } = match joined {
            Ok(joined) => joined,
            Err(e) => {
                self.end_in_flight();
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
                return Ok(false);
            }
        };
        let summary = match outcome {
            Ok(Processed::Done(summary)) => summary,
            Ok(Processed::Stopped(_)) => {
                self.end_in_flight();
                return Ok(false);
            }
            Err(e) => {
                self.end_in_flight();
                return Err(e.into());
            }
        };
        // The load's task, or a revoke during the load, may have committed it already.
        let committed = self.end_in_flight();
        if !committed {
            let span = trace::commit_span(&loading.span);
            let done = self
                .commit(&checkpoint, shutdown.clone())
                .instrument(span.clone());
            match done.await {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => {
                    trace::failed(&span, "broker", &e);
                    return Err(e);
                }
            }
        }
        if !reported {
            summary
                .committed(loading.started.elapsed())
                .emit(&self.stats);
        }
        self.export_metrics()?;
        Ok(true)
    }

    /// The pipeline is done with the batch in flight; whether the source committed it.
    fn end_in_flight(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.end())
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
                        .retry_batch("commit", &error, &self.stats, shutdown.clone())
                        .await
                    {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn export_metrics(&self) -> Result<(), PipelineError> {
        if let Some(path) = &self.settings.metrics_json {
            write_stats_json(path, &self.stats.snapshot())?;
        }
        Ok(())
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
    use crate::config::{ComponentsConfig, DeleteMode};
    use crate::sinks::{LoadReport, TableLoad};
    use crate::sources::Message;
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
        /// Per successful load: each table's target, statements and origins.
        plans: Vec<String>,
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
            self.plans.extend(loads.iter().map(|l| {
                format!(
                    "{:?} {:?} {:?} {:?}",
                    l.target,
                    l.plan.statements,
                    l.origins,
                    l.truncate.as_ref().map(|t| t.below_lsn)
                )
            }));
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

    /// A pipeline over `source` and `sink` with the built-in components.
    fn built<S: Source, K: Sink + 'static>(
        source: S,
        sink: K,
        breaker: BreakerSettings,
    ) -> Pipeline<S, K> {
        let components = Arc::new(Components::load(&ComponentsConfig::default()).unwrap());
        Pipeline::new(source, sink, components, settings(breaker), Stats::new())
    }

    fn pipeline(sink: FlakySink, breaker: BreakerSettings) -> Pipeline<FileSource, FlakySink> {
        built(FileSource::from_messages(vec![message()]), sink, breaker)
    }

    fn healthy() -> FlakySink {
        FlakySink {
            tables: Vec::new(),
            failures: 0,
            stall: Duration::ZERO,
            loaded: 0,
            request_ids: Vec::new(),
            plans: Vec::new(),
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shares_called_on_several_cores_load_what_one_call_loads() {
        // Every encoding case of real Debezium output, several tables (one topic each),
        // in order: creates, updates, deletes with tombstones, key changes, truncates.
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/debezium-fixtures/schemas_precise/_all_in_order.jsonl");
        let messages = crate::sources::file::read_file(&path).unwrap();
        let topics: std::collections::BTreeSet<&str> = messages.iter().map(|m| &*m.topic).collect();
        assert!(topics.len() >= 3, "{topics:?}");
        let mut outcomes = Vec::new();
        for parallelism in [1, 2, 8] {
            let cfg = ComponentsConfig {
                parallelism,
                ..ComponentsConfig::default()
            };
            let mut p = over(messages.clone(), &cfg);
            let (_tx, rx) = tokio::sync::watch::channel(false);
            let snap = p.run(rx).await.unwrap();
            assert!(snap.rows_transformed > 0, "{snap:?}");
            outcomes.push((
                p.sink().plans.clone(),
                snap.dead_letters,
                snap.rows_transformed,
                snap.events_skipped,
                snap.ops.clone(),
            ));
        }
        assert!(outcomes[0].0.len() >= 3, "{:?}", outcomes[0].0);
        assert_eq!(outcomes[0], outcomes[1], "parallelism 2");
        assert_eq!(outcomes[0], outcomes[2], "parallelism 8");
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
        let sink = p.sink();
        let ids = &sink.request_ids;
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert_eq!(
            ids[0].len(),
            2,
            "the truncate's id and the MERGE's: {ids:?}"
        );
        assert!(ids.iter().all(|a| *a == ids[0]), "{ids:?}");
    }

    /// Refuses every load of `table` for its data; loads the others.
    struct Refusing {
        table: &'static str,
        loaded: Vec<String>,
    }

    impl Sink for Refusing {
        async fn load(&mut self, loads: &[TableLoad]) -> Result<LoadReport, SinkError> {
            let mut report = LoadReport::default();
            for (i, l) in loads.iter().enumerate() {
                if l.source_table == self.table {
                    report.refuse(i, l, "schema", "refused by the test".into());
                } else {
                    self.loaded.push(l.source_table.clone());
                }
            }
            Ok(report)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_tables_events_reach_the_dlq_byte_for_byte_from_a_loading_batch() {
        // Real Debezium values with their schemas, which a loading batch keeps once per
        // topic (floe_batch::retained): the letters must still be the messages as they
        // came.
        let dir = std::env::temp_dir().join(format!("floe-refused-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dlq = dir.join("dlq.jsonl");
        let _ = std::fs::remove_file(&dlq);
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/debezium-fixtures/schemas_precise");
        let mut messages = Vec::new();
        for file in [
            "crud_replica_identity_default.jsonl",
            "crud_replica_identity_full.jsonl",
        ] {
            messages.extend(crate::sources::file::read_file(&fixtures.join(file)).unwrap());
        }
        for (i, m) in messages.iter_mut().enumerate() {
            m.offset = i as i64;
        }
        type Kept = (i64, Option<Vec<u8>>, Option<Vec<u8>>);
        let want: Vec<Kept> = (messages.iter())
            .filter(|m| &*m.topic == "dbz.public.customers" && m.value.is_some())
            .map(|m| (m.offset, m.key.clone(), m.value.clone()))
            .collect();
        assert!(want.len() >= 3, "{}", want.len());
        let sink = Refusing {
            table: "public.customers",
            loaded: Vec::new(),
        };
        let mut p = built(FileSource::from_messages(messages), sink, breaker(20, 1000))
            .with_dead_letters(DeadLetterQueue::File { path: dlq.clone() });
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        assert_eq!(snap.dead_letters as usize, want.len(), "{snap:?}");
        assert_eq!(p.sink().loaded, vec!["public.customers_full".to_string()]);
        let letters = crate::sources::file::read_file(&dlq).unwrap();
        let got: Vec<Kept> = (letters.iter())
            .map(|l| (l.offset, l.key.clone(), l.value.clone()))
            .collect();
        assert_eq!(got, want);
        std::fs::remove_dir_all(&dir).unwrap();
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
        // The DLQ file's directory appears only once writes failed and the DLQ breaker
        // opened (not after a wall-clock delay, which a slow start under load used up
        // before the first write): until then every write fails, as a DLQ topic does
        // while its cluster is down.
        let path = dir.join("later").join("dlq.jsonl");
        let later = dir.join("later");
        let mut p = Pipeline::new(
            FileSource::from_messages(vec![broken_message(), insert("t", 2, 7, 1)]),
            healthy(),
            Arc::new(Components::load(&ComponentsConfig::default()).unwrap()),
            settings(breaker(50, 1000)),
            Stats::new(),
        )
        .with_dead_letters(DeadLetterQueue::File { path: path.clone() });
        let stats = p.stats().clone();
        tokio::spawn(async move {
            // Bounded, so that a run which never fails still ends (and the asserts say why).
            for _ in 0..1000 {
                let s = stats.snapshot();
                if s.dlq_errors >= 2 && s.dlq_breaker_opened >= 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            std::fs::create_dir_all(later).unwrap();
        });
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
        built(source, healthy(), breaker)
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
            plans: Vec::new(),
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
        let sink = p.sink();
        let ids = &sink.request_ids;
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
            plans: Vec::new(),
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

    /// Counts the batches it hands out and records the checkpoints committed. Each
    /// batch after the first is handed out only after `collect` (a slow topic).
    struct Recording {
        inner: FileSource,
        consumed: Arc<std::sync::atomic::AtomicUsize>,
        commits: Arc<std::sync::Mutex<Vec<i64>>>,
        collect: Duration,
        in_flight: Option<Arc<InFlight>>,
    }

    /// (offset committed up to, batches handed out then) per commit from a load.
    type LoadCommits = Arc<std::sync::Mutex<Vec<(i64, usize)>>>;

    impl Recording {
        fn new(messages: Vec<Message>) -> Recording {
            Recording {
                inner: FileSource::from_messages(messages),
                consumed: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                commits: Arc::new(std::sync::Mutex::new(Vec::new())),
                collect: Duration::ZERO,
                in_flight: None,
            }
        }

        /// Lets the load's task commit (like the Kafka source); returns its commits.
        fn committing_from_loads(&mut self) -> LoadCommits {
            let commits = LoadCommits::default();
            let in_flight = Arc::new(InFlight::default());
            let (consumed, c) = (self.consumed.clone(), commits.clone());
            in_flight.set_commit_now(Box::new(move |cp: &crate::sources::Checkpoint| {
                let next = cp.next_offsets.values().copied().max().unwrap();
                let n = consumed.load(std::sync::atomic::Ordering::SeqCst);
                c.lock().unwrap().push((next, n));
                Ok(())
            }));
            self.in_flight = Some(in_flight);
            commits
        }
    }

    impl Source for Recording {
        async fn next_batch(
            &mut self,
            limits: BatchLimits,
        ) -> Result<Option<SourceBatch>, SourceError> {
            if self.consumed.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                tokio::time::sleep(self.collect).await;
            }
            let b = self.inner.next_batch(limits).await?;
            if b.as_ref().is_some_and(|b| !b.messages.is_empty()) {
                self.consumed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(b)
        }

        async fn commit(
            &mut self,
            checkpoint: &crate::sources::Checkpoint,
        ) -> Result<(), SourceError> {
            let next = checkpoint.next_offsets.values().copied().max().unwrap();
            self.commits.lock().unwrap().push(next);
            self.inner.commit(checkpoint).await
        }

        fn in_flight(&self) -> Option<Arc<InFlight>> {
            self.in_flight.clone()
        }
    }

    /// Takes `stall` per load; notes, per load, how many batches were committed when it
    /// started and how many consumed when it ended.
    struct Watching {
        stall: Duration,
        consumed: Arc<std::sync::atomic::AtomicUsize>,
        commits: Arc<std::sync::Mutex<Vec<i64>>>,
        /// (commits at start, batches consumed at end) per load.
        seen: Vec<(usize, usize)>,
    }

    impl Sink for Watching {
        async fn load(&mut self, _loads: &[TableLoad]) -> Result<LoadReport, SinkError> {
            let committed = self.commits.lock().unwrap().len();
            tokio::time::sleep(self.stall).await;
            let consumed = self.consumed.load(std::sync::atomic::Ordering::SeqCst);
            self.seen.push((committed, consumed));
            Ok(LoadReport::default())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_batch_is_consumed_while_one_loads_and_loads_and_commits_keep_order() {
        let messages = (0..30).map(|i| insert("u", i, 100 + i, i)).collect();
        let source = Recording::new(messages);
        let (consumed, commits) = (source.consumed.clone(), source.commits.clone());
        let sink = Watching {
            stall: Duration::from_millis(300),
            consumed,
            commits: commits.clone(),
            seen: Vec::new(),
        };
        let mut p = built(source, sink, breaker(20, 1000));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        assert_eq!((snap.batches, snap.commits), (3, 3), "{snap:?}");
        // Batches of 10: committed in order, each after its load.
        assert_eq!(*commits.lock().unwrap(), vec![10, 20, 30]);
        let seen = p.sink().seen.clone();
        // Load k started after the k-1 batches before it were committed, and while it
        // loaded the next batch was consumed (the last load has no next batch).
        assert_eq!(seen.len(), 3, "{seen:?}");
        for (k, &(committed, consumed)) in seen.iter().enumerate() {
            assert_eq!(
                committed, k,
                "load {k} started before the batches before it were committed: {seen:?}"
            );
            assert!(
                consumed >= (k + 2).min(3),
                "load {k}: the next batch was not consumed while it loaded: {seen:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_loaded_batch_is_committed_while_the_next_one_is_still_collected() {
        let messages = (0..20).map(|i| insert("u", i, 100 + i, i)).collect();
        let mut source = Recording::new(messages);
        source.collect = Duration::from_millis(800);
        let commits = source.committing_from_loads();
        let sink = Watching {
            stall: Duration::from_millis(100),
            consumed: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            commits: Arc::new(std::sync::Mutex::new(Vec::new())),
            seen: Vec::new(),
        };
        let mut p = built(source, sink, breaker(20, 1000));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        assert_eq!((snap.batches, snap.commits), (2, 2), "{snap:?}");
        // The first batch (offsets up to 10) was committed from its load, while the
        // second was still being collected (only one batch handed out then).
        assert_eq!(*commits.lock().unwrap(), vec![(10, 1), (20, 2)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_shutdown_the_batch_in_flight_is_committed_and_the_prepared_one_is_not() {
        let messages = (0..30).map(|i| insert("u", i, 100 + i, i)).collect();
        let source = Recording::new(messages);
        let (consumed, commits) = (source.consumed.clone(), source.commits.clone());
        let sink = Watching {
            stall: Duration::from_millis(600),
            consumed: consumed.clone(),
            commits: commits.clone(),
            seen: Vec::new(),
        };
        let mut p = built(source, sink, breaker(20, 10_000));
        // Asked while the first batch loads and the second is already consumed.
        let rx = shutdown_after(300);
        let snap = p.run(rx).await.unwrap();
        assert!(
            consumed.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "the second batch was not consumed during the first load"
        );
        assert_eq!(*commits.lock().unwrap(), vec![10], "{snap:?}");
        assert_eq!(p.sink().seen.len(), 1, "the prepared batch was loaded");
        assert_eq!(snap.commits, 1, "{snap:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_load_is_abandoned_at_the_shutdown_deadline() {
        let sink = FlakySink {
            tables: Vec::new(),
            failures: 0,
            stall: Duration::from_secs(60),
            loaded: 0,
            request_ids: Vec::new(),
            plans: Vec::new(),
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
