//! floe-batch: the per-batch work both of floe's modes share.
//!
//! ```text
//! messages -> [Avro] -> [format] -> validators -> transformer -> row transforms -> merge builder
//!          -> sink (one MERGE per target table) -> dead letters -> summary
//! ```
//!
//! [`processor::BatchProcessor`] runs it for one batch of [`message::Message`]s. The
//! runner (`floe`, a long-running Kafka consumer) and the Lambda (`floe-lambda`, an
//! MSK event source mapping's target) both call it and decide themselves what to
//! acknowledge. This crate knows no Kafka consumer, no CLI and no configuration file
//! format: [`config`] holds plain serde structs. Components run in `floe-host` (the only
//! crate that touches wasmtime); the Snowflake protocol lives in `floe-snowflake`.

pub mod avro;
pub mod breaker;
pub mod components;
pub mod config;
pub mod dlq;
pub mod events;
pub mod export;
pub mod fixture;
pub mod format;
pub mod message;
pub mod metrics;
pub mod processor;
pub mod retained;
pub mod sinks;
pub mod targets;
pub mod trace;

pub use events::{Stats, StatsSnapshot};
pub use message::Message;
pub use processor::{
    BatchProcessor, Delivery, PreparedBatch, Preparer, Processed, ProcessorSettings, Summary,
};
pub use retained::Retained;
