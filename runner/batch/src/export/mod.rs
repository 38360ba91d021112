//! Telemetry export shared by the runner and the Lambda: OTLP over HTTP, configured by
//! the standard `OTEL_*` environment ([`Otlp`]), the tracer provider that exports
//! floe's trace spans ([`Traces`], [`crate::trace`]) and the OTLP metric reader the
//! binaries add to their meter provider ([`Otlp::metric_reader`]).
//!
//! Export never stops or slows the pipeline: spans and metrics are queued and sent by
//! the SDK's own threads; a collector that is down costs the telemetry it would have
//! received (counted in `floe.telemetry.exports.failed`) and a warning, nothing else.

mod otlp;

pub use otlp::{Otlp, resource};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The log filter when `FLOE_LOG`/`RUST_LOG` set none: `info`, but the OpenTelemetry
/// SDK's own bookkeeping (a provider installed, an exporter built) only from `warn`.
pub const DEFAULT_LOG_FILTER: &str =
    "info,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn";

/// Errors setting export up (raised at start only).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The `OTEL_*` environment asks for something floe does not do.
    #[error("{var}={value}: {reason}")]
    Environment {
        var: String,
        value: String,
        reason: &'static str,
    },
    /// An OTLP exporter could not be made (a malformed endpoint or header).
    #[error("OTLP {signal} exporter: {message}")]
    Otlp {
        signal: &'static str,
        message: String,
    },
}

impl ExportError {
    /// Configuration or environment problems: never retried.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl Otlp {
    /// The reader that pushes metrics over OTLP every `OTEL_METRIC_EXPORT_INTERVAL`
    /// (60 s unless set), on the SDK's thread; `None` when metrics are not exported.
    pub fn metric_reader(
        &self,
    ) -> Result<Option<PeriodicReader<opentelemetry_otlp::MetricExporter>>, ExportError> {
        if !self.metrics {
            return Ok(None);
        }
        Ok(Some(
            PeriodicReader::builder(self.metric_exporter()?).build(),
        ))
    }
}

/// The tracer provider exporting floe's trace spans, when traces are exported.
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Sets up trace export when `otlp` asks for it (spans are batched and sent by the
    /// SDK's thread: `OTEL_BSP_*` tune it; `OTEL_TRACES_SAMPLER` samples).
    pub fn install(otlp: &Otlp) -> Result<Traces, ExportError> {
        if !otlp.traces {
            return Ok(Traces { provider: None });
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(otlp.span_exporter()?)
            .with_resource(resource())
            .build();
        Ok(Traces {
            provider: Some(provider),
        })
    }

    /// Whether spans are exported.
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// The layer that turns floe's trace spans ([`crate::trace::TARGET`]) into
    /// OpenTelemetry spans, with the warnings and errors logged inside them as span
    /// events. `None` when traces are not exported.
    pub fn layer<S>(&self) -> Option<impl Layer<S> + Send + Sync + 'static>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.as_ref()?.tracer("floe");
        Some(span_layer(tracer))
    }

    /// Sends the spans queued so far and waits for the answer (the Lambda, before an
    /// invocation returns: the sandbox is frozen afterwards).
    pub async fn flush(&self) {
        if let Some(provider) = self.provider.clone() {
            // Off the runtime's threads: the OTLP client's requests run on them.
            let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
            if let Ok(Err(e)) = flushed {
                tracing::debug!(error = %e, "span flush");
            }
        }
    }

    /// Exports the spans still queued and stops the exporter (at exit).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = stopped {
                tracing::debug!(error = %e, "tracer provider shutdown");
            }
        }
    }
}

/// Pushes the metrics recorded so far (the Lambda, before an invocation returns).
pub async fn flush_metrics(provider: &SdkMeterProvider) {
    let provider = provider.clone();
    let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    if let Ok(Err(e)) = flushed {
        tracing::debug!(error = %e, "metric flush");
    }
}

/// The `tracing` layer that hands floe's trace spans, and the warnings and errors
/// logged inside them, to `tracer`.
pub fn span_layer<S>(tracer: SdkTracer) -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() == crate::trace::TARGET
                || (meta.is_event() && *meta.level() <= tracing::Level::WARN)
        }))
}

/// Whether a `tracing` callsite belongs in the logs: everything but floe's trace spans
/// (they are exported, not logged).
pub fn logged(meta: &tracing::Metadata<'_>) -> bool {
    !(meta.is_span() && meta.target() == crate::trace::TARGET)
}
