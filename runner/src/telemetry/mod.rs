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
mod status;

pub use endpoints::Endpoints;
pub use floe_batch::export::{Otlp, Traces, logged, span_layer};
pub use status::StatusLine;

use opentelemetry_sdk::metrics::SdkMeterProvider;

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
    /// The `OTEL_*` environment asks for something floe does not do, or an OTLP
    /// exporter could not be made.
    #[error(transparent)]
    Export(#[from] floe_batch::export::ExportError),
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
        let mut builder = SdkMeterProvider::builder().with_resource(floe_batch::export::resource());
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
        if let Some(reader) = otlp.metric_reader()? {
            builder = builder.with_reader(reader);
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
