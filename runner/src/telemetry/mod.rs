//! What a `floe run` exports beyond its logs:
//!
//! * metrics: the meter provider its internal events record into
//!   ([`floe_batch::metrics`]), read as Prometheus text on `metrics.listen`
//!   ([`Endpoints`]) and pushed over OTLP when the `OTEL_*` environment asks ([`Otlp`]);
//! * traces: the spans of [`floe_batch::trace`] (batch, component calls, loads,
//!   statements, dead letters, commit), exported over OTLP when the environment asks.
//!
//! Export never stops or slows the pipeline: spans and metrics are queued and sent by
//! the SDK's own threads; a collector that is down costs the telemetry it would have
//! received (counted in `floe.telemetry.exports.failed`) and a warning, nothing else.

mod endpoints;
mod otlp;
mod status;

pub use endpoints::Endpoints;
pub use otlp::Otlp;
pub use status::StatusLine;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::MetricsConfig;

/// Errors setting telemetry up (never raised once the run is going).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("metrics exporter: {0}")]
    Exporter(String),
    #[error("metrics.listen {addr}: cannot listen: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
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

impl TelemetryError {
    /// Set-up errors are configuration or environment problems: never retried.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// The installed meter provider and the registry `/metrics` reads.
pub struct Telemetry {
    provider: Option<SdkMeterProvider>,
    registry: Option<prometheus::Registry>,
}

impl Telemetry {
    /// Installs the global meter provider `config` and `otlp` ask for. Call it before
    /// the run's [`Stats`](crate::events::Stats) is made: its instruments come from the
    /// provider installed then. With neither `metrics.listen` nor OTLP metrics nothing
    /// is installed and recording costs a no-op call.
    pub fn install(config: &MetricsConfig, otlp: &Otlp) -> Result<Telemetry, TelemetryError> {
        if config.listen.is_none() && !otlp.metrics {
            return Ok(Telemetry {
                provider: None,
                registry: None,
            });
        }
        let mut builder = SdkMeterProvider::builder().with_resource(otlp::resource());
        let mut registry = None;
        if config.listen.is_some() {
            let r = prometheus::Registry::new();
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(r.clone())
                .without_target_info()
                .scope_info_enabled(false)
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            builder = builder.with_reader(exporter);
            registry = Some(r);
        }
        if otlp.metrics {
            // Every OTEL_METRIC_EXPORT_INTERVAL (60 s unless set), on the SDK's thread.
            builder = builder.with_reader(PeriodicReader::builder(otlp.metric_exporter()?).build());
        }
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Ok(Telemetry {
            provider: Some(provider),
            registry,
        })
    }

    /// The Prometheus registry the metrics are gathered from, when one is installed.
    pub fn registry(&self) -> Option<&prometheus::Registry> {
        self.registry.as_ref()
    }

    /// Exports what is left and stops the exporters (at exit).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // Off the runtime's threads: the OTLP client's requests run on them.
            let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = stopped {
                tracing::debug!(error = %e, "metrics provider shutdown");
            }
        }
    }
}

/// The tracer provider of an OTLP trace export, and the `tracing` layer that feeds it.
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Sets up trace export when `otlp` asks for it (spans are batched and sent by the
    /// SDK's thread: `OTEL_BSP_*` tune it; `OTEL_TRACES_SAMPLER` samples).
    pub fn install(otlp: &Otlp) -> Result<Traces, TelemetryError> {
        if !otlp.traces {
            return Ok(Traces { provider: None });
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(otlp.span_exporter()?)
            .with_resource(otlp::resource())
            .build();
        Ok(Traces {
            provider: Some(provider),
        })
    }

    /// Whether spans are exported.
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// The layer that turns floe's trace spans ([`floe_batch::trace::TARGET`]) into
    /// OpenTelemetry spans, with the warnings and errors logged inside them as span
    /// events. `None` when traces are not exported.
    pub fn layer<S>(&self) -> Option<impl Layer<S> + Send + Sync + 'static>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.as_ref()?.tracer("floe");
        Some(span_layer(tracer))
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

/// The `tracing` layer that hands floe's trace spans, and the warnings and errors
/// logged inside them, to `tracer`.
pub(crate) fn span_layer<S>(
    tracer: opentelemetry_sdk::trace::SdkTracer,
) -> impl Layer<S> + Send + Sync + 'static
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
            meta.target() == floe_batch::trace::TARGET
                || (meta.is_event() && *meta.level() <= tracing::Level::WARN)
        }))
}

/// Whether a `tracing` callsite belongs in the logs: everything but floe's trace spans
/// (they are exported, not logged).
pub fn logged(meta: &tracing::Metadata<'_>) -> bool {
    !(meta.is_span() && meta.target() == floe_batch::trace::TARGET)
}
