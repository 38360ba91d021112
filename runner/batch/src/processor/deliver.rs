//! Delivering a prepared batch: loads retried with backoff and then behind the
//! warehouse circuit breaker, dead letters written behind the DLQ breaker.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::breaker::shutdown_requested;
use crate::dlq::DeadLetter;
use crate::events::{
    Breaker, BreakerChanged, BreakerState, DeadLettersWritten, EventDropped, LoadRetry, Position,
    Stats,
};
use crate::message::Message;
use crate::sinks::{LoadReport, Sink, SinkError, TableLoad};
use crate::trace;
use tracing::Instrument as _;

use super::{Delivery, ProcessError};

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

impl<K: Sink> Delivery<K> {
    /// Loads with retries; when they are exhausted by transient errors, the breaker
    /// opens (see [`BreakerSettings`]). `None`: shutdown was asked while it was open.
    pub(super) async fn load_with_breaker(
        &mut self,
        loads: &[TableLoad],
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<LoadReport>, ProcessError> {
        let settings = self.breaker;
        let (mut result, mut attempt) = self.load_with_retry(loads).await;
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
                    attempt += 1;
                    result = self
                        .load_once(loads, attempt)
                        .await
                        .map_err(ProcessError::from);
                }
            }
        }
    }

    /// Logs and counts `letters` (events of `messages`), then writes them durably
    /// ([`Delivery::deliver`] does this for the letters of a batch it loaded; a
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
            let span = trace::dead_letters_span(&self.dlq.describe(), dead.len());
            let sent = self.dlq.send(messages, dead).instrument(span.clone()).await;
            if let Err(e) = &sent {
                trace::failed(&span, "dlq", e);
            }
            match sent {
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

    /// Loads with up to `load_attempts` attempts; also returns the attempts made.
    async fn load_with_retry(
        &mut self,
        loads: &[TableLoad],
    ) -> (Result<LoadReport, ProcessError>, usize) {
        if loads.is_empty() {
            return (Ok(Default::default()), 0);
        }
        let mut retry = Retry::new(self.load_attempts);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.load_once(loads, attempt).await {
                Ok(r) => return (Ok(r), attempt),
                Err(e) if e.is_retryable() && retry.wait(&e.to_string(), &self.stats).await => {}
                Err(e) => return (Err(e.into()), attempt),
            }
        }
    }

    /// One load attempt, traced.
    async fn load_once(
        &mut self,
        loads: &[TableLoad],
        attempt: usize,
    ) -> Result<LoadReport, SinkError> {
        let events = loads.iter().map(|l| l.origins.len()).sum();
        let span = trace::load_span(attempt, loads.len(), events);
        let loaded = self.sink.load(loads).instrument(span.clone()).await;
        if let Err(e) = &loaded {
            let kind = if e.is_retryable() {
                "transient"
            } else {
                "permanent"
            };
            trace::failed(&span, kind, e);
        }
        loaded
    }
}
