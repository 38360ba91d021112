//! The circuit breaker around the broker (consumption, offset commits) and the dead
//! letter queue: transient errors are retried with exponential backoff and jitter;
//! after `attempts` failures in a row it opens (the pipeline waits: nothing is polled,
//! committed or written) for `open_for`, then half-opens (one more try): success closes
//! it, failure opens it again for twice as long, up to `max_open_for`. Transient errors
//! therefore never end a run; a shutdown request ends the wait.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::events::{Breaker, BreakerChanged, BreakerState, BrokerError, Stats};

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

/// Resolves once shutdown is asked (never, when nobody can ask any more).
pub async fn shutdown_requested(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    if shutdown.wait_for(|&stop| stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One circuit breaker (see the module docs).
pub struct CircuitBreaker {
    kind: Breaker,
    settings: BreakerSettings,
    attempts: usize,
    failures: usize,
    backoff: backon::ExponentialBackoff,
    open_for: Duration,
    state: BreakerState,
}

impl CircuitBreaker {
    pub fn new(kind: Breaker, settings: BreakerSettings, attempts: usize) -> Self {
        CircuitBreaker {
            kind,
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

    pub fn success(&mut self, stats: &Stats) {
        if self.state != BreakerState::Closed {
            BreakerChanged {
                breaker: self.kind,
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

    /// [`CircuitBreaker::failure`] for an operation of a loaded batch: false (logged)
    /// when shutdown was asked while waiting, which leaves the batch uncommitted.
    pub async fn retry_batch(
        &mut self,
        operation: &'static str,
        error: &str,
        stats: &Stats,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        if self.failure(operation, error, stats, shutdown).await {
            return true;
        }
        tracing::warn!(
            breaker = self.kind.name(),
            operation,
            "shutdown while this keeps failing: the batch is loaded but not committed (the next run replays it)"
        );
        false
    }

    /// Records a transient failure and waits before the next try. False: shutdown was
    /// asked while waiting.
    pub async fn failure(
        &mut self,
        operation: &'static str,
        error: &str,
        stats: &Stats,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        BrokerError {
            breaker: self.kind,
            operation,
            error,
        }
        .emit(stats);
        self.failures += 1;
        let wait = if self.state == BreakerState::Closed && self.failures < self.attempts {
            self.backoff.next().unwrap_or(self.settings.open_for)
        } else {
            let open_for = self.open_for;
            BreakerChanged {
                breaker: self.kind,
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
                breaker: self.kind,
                state: BreakerState::HalfOpen,
                error: None,
                open_for: None,
            }
            .emit(stats);
        }
        true
    }
}
