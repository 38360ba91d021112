//! OTLP export, configured by the standard `OTEL_*` environment:
//!
//! * a signal is exported when its endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`) or its exporter is `otlp`
//!   (`OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`); `none` there, or
//!   `OTEL_SDK_DISABLED=true`, turns it off whatever else is set;
//! * the protocol is `http/protobuf`; another one is refused at start with the reason;
//! * headers, timeout, compression and temporality come from their `OTEL_EXPORTER_OTLP_*`
//!   variables (read by `opentelemetry-otlp`); the resource from `OTEL_SERVICE_NAME` and
//!   `OTEL_RESOURCE_ATTRIBUTES` (service name `floe` unless one is given).
//!
//! Requests go out on floe's own `reqwest` client (rustls), run on the tokio runtime:
//! the SDK's export threads hand each request to it and wait for the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;

use super::ExportError;

/// Which signals are exported over OTLP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Otlp {
    pub traces: bool,
    pub metrics: bool,
}

impl Otlp {
    /// Reads the process environment.
    pub fn from_env() -> Result<Otlp, ExportError> {
        Otlp::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads `var` as the environment (an empty value is unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Otlp, ExportError> {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Otlp::default());
        }
        let any_endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let signal = |signal: &str| -> Result<bool, ExportError> {
            let exporter_var = format!("OTEL_{signal}_EXPORTER");
            let on = match get(&exporter_var) {
                None => {
                    any_endpoint || get(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")).is_some()
                }
                Some(value) => {
                    let names: Vec<&str> = value.split(',').map(str::trim).collect();
                    if names.contains(&"none") {
                        false
                    } else if names.iter().all(|n| *n == "otlp") {
                        true
                    } else {
                        return Err(ExportError::Environment {
                            var: exporter_var,
                            value,
                            reason: "floe exports `otlp` (or `none`); Prometheus metrics are served on metrics.listen",
                        });
                    }
                }
            };
            if on {
                let signal_var = format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL");
                let protocol = (get(&signal_var).map(|v| (signal_var.clone(), v))).or_else(|| {
                    get("OTEL_EXPORTER_OTLP_PROTOCOL")
                        .map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(), v))
                });
                if let Some((var, value)) = protocol
                    && value != "http/protobuf"
                {
                    return Err(ExportError::Environment {
                        var,
                        value,
                        reason: "floe sends OTLP as http/protobuf; point the endpoint at the collector's OTLP/HTTP port (4318 by default)",
                    });
                }
            }
            Ok(on)
        };
        Ok(Otlp {
            traces: signal("TRACES")?,
            metrics: signal("METRICS")?,
        })
    }

    /// The span exporter (endpoint, headers, timeout and compression from the
    /// environment).
    pub(crate) fn span_exporter(&self) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(Client::new()?)
            .build()
            .map_err(|e| ExportError::Otlp {
                signal: "traces",
                message: e.to_string(),
            })
    }

    /// The metric exporter (as [`Otlp::span_exporter`], plus the temporality).
    pub fn metric_exporter(&self) -> Result<opentelemetry_otlp::MetricExporter, ExportError> {
        opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(Client::new()?)
            .build()
            .map_err(|e| ExportError::Otlp {
                signal: "metrics",
                message: e.to_string(),
            })
    }
}

/// The resource of floe's telemetry: the SDK's (which reads `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES`), named `floe` when neither names the service.
pub fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let builder = Resource::builder();
    let builder = if named {
        builder
    } else {
        builder.with_service_name("floe")
    };
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// How long one export request may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, ms; 10 s).
fn request_timeout() -> Duration {
    std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The exporters' HTTP client: floe's `reqwest` client, its requests run on the tokio
/// runtime that made it (the SDK's export threads have none). Failed exports are
/// counted (`floe.telemetry.exports.failed{signal}`) and logged once per outage.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    /// Whether the last request failed (the warning is logged on the first failure).
    failing: Arc<AtomicBool>,
}

impl Client {
    /// A client on the current tokio runtime.
    pub(crate) fn new() -> Result<Client, ExportError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| ExportError::Otlp {
            signal: "http",
            message: format!("no async runtime: {e}"),
        })?;
        let http = reqwest::Client::builder()
            .timeout(request_timeout())
            .build()
            .map_err(|e| ExportError::Otlp {
                signal: "http",
                message: e.to_string(),
            })?;
        Ok(Client {
            http,
            runtime,
            failing: Arc::default(),
        })
    }

    fn failed(&self, signal: &'static str, error: &str) {
        opentelemetry::global::meter("floe")
            .u64_counter("floe.telemetry.exports.failed")
            .with_description("OTLP export requests that failed (their telemetry is dropped)")
            .build()
            .add(1, &[KeyValue::new("signal", signal)]);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                signal,
                error,
                "OTLP export failed; telemetry is dropped until the collector answers (the pipeline is not affected)"
            );
        } else {
            tracing::debug!(signal, error, "OTLP export failed");
        }
    }

    fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("OTLP export works again");
        }
    }
}

/// The signal of an OTLP/HTTP request, from its path.
fn signal_of(path: &str) -> &'static str {
    if path.ends_with("/v1/traces") {
        "traces"
    } else if path.ends_with("/v1/metrics") {
        "metrics"
    } else {
        "other"
    }
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let signal = signal_of(request.uri().path());
        let (parts, body) = request.into_parts();
        let sent = self
            .http
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body);
        let answered = self
            .runtime
            .spawn(async move {
                let res = sent.send().await?;
                let status = res.status();
                let headers = res.headers().clone();
                let body = res.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await;
        let (status, headers, body) = match answered {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                let e = e.without_url();
                self.failed(signal, &e.to_string());
                return Err(Box::new(e));
            }
            Err(e) => {
                self.failed(signal, &e.to_string());
                return Err(Box::new(e));
            }
        };
        if status.is_success() {
            self.succeeded();
        } else {
            self.failed(signal, &format!("HTTP {status}"));
        }
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otlp(vars: &[(&str, &str)]) -> Result<Otlp, ExportError> {
        Otlp::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    const ON: Otlp = Otlp {
        traces: true,
        metrics: true,
    };

    #[test]
    fn export_is_off_unless_an_endpoint_or_exporter_asks() {
        assert_eq!(otlp(&[]).unwrap(), Otlp::default());
        assert_eq!(
            otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]).unwrap(),
            Otlp::default()
        );
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(otlp(&[endpoint]).unwrap(), ON);
        assert_eq!(
            otlp(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )])
            .unwrap(),
            Otlp {
                traces: true,
                metrics: false
            }
        );
        assert_eq!(
            otlp(&[("OTEL_METRICS_EXPORTER", "otlp")]).unwrap(),
            Otlp {
                traces: false,
                metrics: true
            }
        );
    }

    #[test]
    fn none_and_sdk_disabled_win_over_an_endpoint() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(
            otlp(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            Otlp {
                traces: false,
                metrics: true
            }
        );
        assert_eq!(
            otlp(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(),
            Otlp::default()
        );
        assert_eq!(
            otlp(&[endpoint, ("OTEL_SDK_DISABLED", "false")]).unwrap(),
            ON
        );
    }

    #[test]
    fn what_floe_cannot_send_is_refused_with_the_reason() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        let e = otlp(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=grpc: floe sends OTLP as http/protobuf"),
            "{e}"
        );
        let e = otlp(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
        ])
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL=http/json"),
            "{e}"
        );
        let e = otlp(&[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(e.to_string().contains("floe exports `otlp`"), "{e}");
        // A protocol for a signal that is off does not matter.
        let only_traces = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        );
        assert!(otlp(&[only_traces, ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")]).is_ok());
        assert_eq!(
            otlp(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap(),
            ON
        );
    }

    #[test]
    fn requests_are_counted_by_signal() {
        assert_eq!(signal_of("/v1/traces"), "traces");
        assert_eq!(signal_of("/otel/v1/metrics"), "metrics");
        assert_eq!(signal_of("/"), "other");
    }
}
