//! floe's change-event logic in plain Rust, shared by the default WASM components
//! (`floe-validator`, `floe-transformer`, `floe-merge-builder`) and by native callers
//! (the runner's Snowflake sink uses [`sql::create_table_sql`] so its DDL matches the
//! MERGE; benchmarks can run [`transform_batch`] and [`build_merge`] natively).
//!
//! Everything here is a pure function of its input, compiles to `wasm32-unknown-unknown`
//! without imports, and mirrors the WIT contract `floe:cdc@0.2.0` (`wit/floe.wit`)
//! with plain types ([`types`]).
//!
//! * [`validate`]: the default validation rules ([`validate_batch`]).
//! * [`transform`]: Debezium envelopes to flat rows and table shapes ([`transform_batch`];
//!   [`validate_and_transform`] validates and transforms with one decode per event);
//!   [`convert`]'s docs list how each Debezium/Connect type is written and typed.
//! * [`merge`]: in-batch dedup and one parameterised MERGE per table ([`build_merge`]).
//! * [`sql`]: quoting, types and `CREATE TABLE`.

pub mod convert;
pub mod decimal;
pub mod envelope;
pub mod json;
pub mod merge;
pub mod sql;
pub mod temporal;
pub mod transform;
pub mod types;
pub mod validate;

#[cfg(test)]
mod fixtures;

pub use merge::{DELETED_COLUMN, MAX_BIND_BYTES, build_merge};
pub use sql::{create_table_sql, qualified, quote_ident, sql_string_literal};
pub use transform::{
    FROM_COLUMN, LSN_COLUMN, METADATA_COLUMNS, OP_COLUMN, SOURCE_TS_MS_COLUMN, UNAVAILABLE_COLUMN,
    UNAVAILABLE_PLACEHOLDER, UNAVAILABLE_PLACEHOLDER_BASE64, transform_batch,
    validate_and_transform,
};
pub use types::{
    Bind, Column, DeleteMode, Error, Event, Failure, IdentifierCase, MergeInput, MergePlan, Op,
    Row, Statement, TableShape, Transformed, Truncate, Verdict,
};
pub use validate::validate_batch;

/// The topic name an event's `topic` index points at (WIT events index into
/// `batch.topics`); out of range is [`Error::InvalidInput`].
pub fn resolve_topic(topics: &[String], index: u32) -> Result<&str, Error> {
    topics
        .get(index as usize)
        .map(String::as_str)
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "topic index {index} out of range ({} topics)",
                topics.len()
            ))
        })
}
