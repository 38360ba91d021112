//! The HTTP endpoints of `metrics.listen`:
//!
//! * `/metrics`: the metrics as Prometheus text;
//! * `/healthz`: 200 while the process serves (liveness);
//! * `/readyz`: 200 once the source owns partitions and the warehouse session is up,
//!   503 with the reason otherwise, and while any circuit breaker is open or probing;
//! * `/stats`: the statistics JSON (the same as `--metrics-json` writes).
//!
//! Nothing here can stop or slow the pipeline: a scrape reads counters; a failed
//! request is the client's problem.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::Encoder as _;

use super::TelemetryError;
use crate::events::Stats;

/// What the endpoints read.
#[derive(Clone)]
struct Shared {
    stats: Arc<Stats>,
    registry: Option<prometheus::Registry>,
}

/// The endpoints, bound and serving on a task of their own.
pub struct Endpoints {
    /// The address bound (with port 0 asked, the port the system chose).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoints {
    /// Binds `addr` and serves the endpoints over `stats` and `registry` until
    /// [`stop`](Self::stop) or the process ends.
    pub async fn serve(
        addr: SocketAddr,
        stats: Arc<Stats>,
        registry: Option<prometheus::Registry>,
    ) -> Result<Endpoints, TelemetryError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Listen { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| TelemetryError::Listen { addr, source })?;
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/stats", get(stats_json))
            .with_state(Shared { stats, registry });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "metrics endpoints stopped");
            }
        });
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /stats");
        Ok(Endpoints { addr, task })
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Shared>) -> Response {
    match shared.stats.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let Some(registry) = &shared.registry else {
        return (StatusCode::NOT_FOUND, "no metrics provider installed\n").into_response();
    };
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type())], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn stats_json(State(shared): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&shared.stats.snapshot()).unwrap_or_default(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    use super::*;
    use crate::events::{BatchReceived, Breaker, BreakerChanged, BreakerState};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let res = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    #[tokio::test]
    async fn endpoints_answer_health_readiness_metrics_and_stats() {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .unwrap();
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let stats = Stats::with_meter(&provider.meter("floe"));
        let endpoints = Endpoints::serve(
            "127.0.0.1:0".parse().unwrap(),
            stats.clone(),
            Some(registry),
        )
        .await
        .unwrap();
        let addr = endpoints.addr;

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("sink is not connected"), "{body}");
        stats.sink_ready.store(true, Relaxed);
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.contains("owns no partitions")), (503, true));
        stats.source_ready.store(true, Relaxed);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));

        let opened = |state| BreakerChanged {
            breaker: Breaker::Warehouse,
            state,
            error: Some("warehouse down"),
            open_for: Some(Duration::from_secs(5)),
        };
        opened(BreakerState::Open).emit(&stats);
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("warehouse circuit breaker is open"), "{body}");
        opened(BreakerState::Closed).emit(&stats);
        assert_eq!(get(addr, "/readyz").await.0, 200);

        BatchReceived {
            events: 5,
            bytes: 100,
        }
        .emit(&stats);
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.lines()
                .any(|l| l.starts_with("floe_events_consumed_total{") && l.ends_with("} 5")),
            "{body}"
        );
        assert!(body.contains(r#"breaker="warehouse""#), "{body}");

        let (status, body) = get(addr, "/stats").await;
        assert_eq!(status, 200);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["events_consumed"], 5, "{body}");
        assert_eq!(json["breaker_opened"], 1, "{body}");

        assert_eq!(get(addr, "/nothing").await.0, 404);
        endpoints.stop();
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Endpoints::serve(addr, Stats::new(), None)
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("metrics.listen {addr}: cannot listen")),
            "{text}"
        );
    }
}
