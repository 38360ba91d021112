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
    /// The schema registry refused floe's requests (credentials, URL).
    #[error(transparent)]
    Registry(floe_batch::avro::RegistryError),
}

impl PipelineError {
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Source(e) => e.is_retryable(),
            PipelineError::Sink(e) => e.is_retryable(),
            PipelineError::Metrics(_) => false,
            PipelineError::Dlq(_) => true,
            PipelineError::ComponentFailed(_) => false,
            PipelineError::Registry(e) => e.is_retryable(),
        }
    }
}

impl From<ProcessError> for PipelineError {
    fn from(e: ProcessError) -> Self {
        match e {
            ProcessError::Sink(e) => PipelineError::Sink(e),
            ProcessError::Dlq(e) => PipelineError::Dlq(e),
            ProcessError::ComponentFailed(m) => PipelineError::ComponentFailed(m),
            ProcessError::Registry(e) => PipelineError::Registry(e),
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
    /// The schema registry of Avro keys and values (`source.schema_registry`).
    pub schema_registry: Option<Arc<floe_batch::avro::SchemaRegistry>>,
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
            schema_registry: self.schema_registry.clone(),
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
            let resolved = (self.preparer)
                .resolve_schemas(&batch.messages, shutdown.clone())
                .await;
            match resolved {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => {
                    trace::failed(&span, e.error_type(), &e);
                    // The batch being loaded is still committed (by `run`).
                    return Err(e.into());
                }
            }
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
        if !self
            .preparer
            .resolve_schemas(&batch.messages, rx.clone())
            .await?
        {
            return Ok(());
        }
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
mod tests;
