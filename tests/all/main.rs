//! floe integration tests: one binary, one module per area (see tests/README.md).

mod avro;
mod backpressure;
mod broker;
mod crash;
mod dlq;
mod e2e;
mod faults;
mod fixtures;
mod lambda;
mod lambda_dlq;
mod live_types;
mod otlp;
mod property;
mod rebalance;
mod runtime_api;
mod schema_change;
mod shutdown;
mod sources;
mod support;
mod telemetry;
mod user_components;
mod variants;
