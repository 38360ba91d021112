//! floe's guest SDK: write a validator as one trait over a decoded change, or a row
//! transform as one trait over a row about to be loaded ([`Transform`],
//! [`export_transform!`]).
//!
//! ```ignore
//! use floe_sdk::{Change, Validator};
//!
//! struct NoNegativeAmounts;
//!
//! impl Validator for NoNegativeAmounts {
//!     fn validate(change: &Change<'_>) -> Result<(), String> {
//!         match change.number("amount") {
//!             Some(a) if a < 0.0 => Err(format!("amount must be non-negative, got {a}")),
//!             _ => Ok(()),
//!         }
//!     }
//! }
//!
//! floe_sdk::export_validator!(NoNegativeAmounts);
//! ```
//!
//! Build the crate as a `cdylib` for `wasm32-unknown-unknown` and turn the module into a
//! component (`functions/build.sh` does both; see docs/writing-a-validator.md). floe
//! calls the component once per batch with the raw Kafka records; the SDK decodes each
//! one exactly as floe's transformer does (every Debezium format floe reads, decimals
//! and temporal types converted) and calls [`Validator::validate`] once per row change.
//! Records that carry no row change (tombstones, heartbeats, transaction metadata) are
//! accepted without a call; records floe cannot decode are rejected with the decoder's
//! reason, so a user validator never sees them.
//!
//! The contract (WIT package `floe:cdc@0.2.0`, world `validator`) is versioned. World
//! `validator` is unchanged since 0.1.0 (0.2.0 only added the built-ins' world
//! `validating-transformer`), so a component built with this SDK loads in every floe
//! that speaks `floe:cdc` 0.1.0 or 0.2.0.

use floe_cdc_core::{Event, METADATA_COLUMNS, Verdict, transform_batch};
use serde_json::{Map, Value};

pub use floe_cdc_core::Op;
pub use transform::{Action, RowChange, Transform, transform_rows};

/// `get`, `str` and `number` over the `row` field of [`Change`] and [`RowChange`].
macro_rules! column_getters {
    () => {
        /// A column's value; `None` when the row has no such column (SQL NULL is
        /// `Some(Value::Null)`).
        pub fn get(&self, column: &str) -> Option<&Value> {
            self.row.get(column)
        }

        /// A text column's value.
        pub fn str(&self, column: &str) -> Option<&str> {
            self.row.get(column).and_then(Value::as_str)
        }

        /// A numeric column's value, also when floe carries it as a string (integers
        /// and decimals are carried as text to keep their precision).
        pub fn number(&self, column: &str) -> Option<f64> {
            self.row.get(column).and_then(crate::number_of)
        }
    };
}

mod transform;

/// The WIT package and version this SDK implements.
pub const CONTRACT: &str = "floe:cdc@0.2.0";

/// One decoded row change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<'a> {
    /// Kafka topic, partition and offset of the record.
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Source table as `schema.table`.
    pub table: &'a str,
    pub op: Op,
    /// Source log position (PostgreSQL LSN), when the record carries one.
    pub lsn: Option<i64>,
    /// The row's columns by source name, values as floe loads them (numbers, strings
    /// for decimals and temporal types, objects for JSON...). For a delete: the row
    /// as it was (the key columns at least). floe's metadata columns are not included.
    pub row: Map<String, Value>,
}

impl Change<'_> {
    column_getters!();

    pub fn is_delete(&self) -> bool {
        self.op == Op::Delete
    }
}

/// A JSON number, or a string holding one, as f64.
fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A user validator: accept (`Ok`) or reject with a reason, per row change. The reason
/// is what floe logs, counts and writes to the dead letter queue.
pub trait Validator {
    fn validate(change: &Change<'_>) -> Result<(), String>;
}

/// Runs `V` over a batch: exactly one verdict per event, in order. Natively callable,
/// so a validator is unit-tested without WebAssembly.
pub fn validate_events<V: Validator>(events: &[Event<'_>]) -> Vec<Verdict> {
    let mut verdicts = vec![Verdict::Ok; events.len()];
    let transformed = match transform_batch(events) {
        Ok(t) => t,
        Err(e) => {
            let reason = format!("parse: {e}");
            return vec![Verdict::Rejected(reason); events.len()];
        }
    };
    for failure in &transformed.failures {
        if let Some(v) = verdicts.get_mut(failure.event as usize) {
            *v = Verdict::Rejected(failure.reason.clone());
        }
    }
    for row in &transformed.rows {
        let (Some(event), Some(shape)) = (
            events.get(row.event as usize),
            transformed.tables.get(row.table as usize),
        ) else {
            continue;
        };
        let mut data: Map<String, Value> = match serde_json::from_str(&row.data) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        data.retain(|k, _| !METADATA_COLUMNS.iter().any(|(name, _)| name == k));
        let change = Change {
            topic: event.topic,
            partition: event.partition,
            offset: event.offset,
            table: &shape.name,
            op: row.op,
            lsn: (row.lsn >= 0).then_some(row.lsn),
            row: data,
        };
        if let Err(reason) = V::validate(&change) {
            verdicts[row.event as usize] = Verdict::Rejected(reason);
        }
    }
    verdicts
}

/// The component glue: bindings of world `validator`, used by [`export_validator!`].
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings {
    #![allow(unsafe_code, reason = "code generated by wit-bindgen")]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "validator",
        pub_export_macro: true,
        default_bindings_module: "floe_sdk::bindings",
    });
}

/// Adapts a [`Validator`] to the WIT export (used by [`export_validator!`]).
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub fn __validate<V: Validator>(
    batch: bindings::Batch,
) -> Result<Vec<bindings::Verdict>, bindings::Error> {
    let mut events = Vec::with_capacity(batch.events.len());
    for e in &batch.events {
        events.push(Event {
            topic: floe_cdc_core::resolve_topic(&batch.topics, e.topic)
                .map_err(|e| bindings::Error::InvalidInput(e.to_string()))?,
            partition: e.partition,
            offset: e.offset,
            timestamp_ms: e.timestamp_ms,
            key: e.key.as_deref(),
            value: e.value.as_deref(),
        });
    }
    Ok(validate_events::<V>(&events)
        .into_iter()
        .map(|v| match v {
            Verdict::Ok => bindings::Verdict::Ok,
            Verdict::Rejected(r) => bindings::Verdict::Rejected(r),
        })
        .collect())
}

/// The component glue of world `row-transform`, used by [`export_transform!`].
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod transform_bindings {
    #![allow(unsafe_code, reason = "code generated by wit-bindgen")]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "row-transform",
        pub_export_macro: true,
        export_macro_name: "export_row_transform",
        default_bindings_module: "floe_sdk::transform_bindings",
    });
}

/// Adapts a [`Transform`] to the WIT export (used by [`export_transform!`]).
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub fn __transform_rows<T: Transform>(
    input: transform_bindings::Transformed,
) -> Result<transform_bindings::Transformed, transform_bindings::Error> {
    use floe_cdc_core as core;
    use transform_bindings::floe::cdc::types as wit;
    let op_in = |op: wit::Op| match op {
        wit::Op::Insert => Op::Insert,
        wit::Op::Update => Op::Update,
        wit::Op::Delete => Op::Delete,
        wit::Op::Read => Op::Read,
    };
    let op_out = |op: Op| match op {
        Op::Insert => wit::Op::Insert,
        Op::Update => wit::Op::Update,
        Op::Delete => wit::Op::Delete,
        Op::Read => wit::Op::Read,
    };
    let input = core::Transformed {
        tables: input
            .tables
            .into_iter()
            .map(|t| core::TableShape {
                name: t.name,
                columns: t
                    .columns
                    .into_iter()
                    .map(|c| core::Column {
                        name: c.name,
                        data_type: c.data_type,
                        is_key: c.is_key,
                    })
                    .collect(),
            })
            .collect(),
        rows: input
            .rows
            .into_iter()
            .map(|r| core::Row {
                event: r.event,
                table: r.table,
                op: op_in(r.op),
                key: r.key,
                data: r.data,
                lsn: r.lsn,
            })
            .collect(),
        // The host keeps the input's truncates and failures itself.
        truncates: Vec::new(),
        failures: Vec::new(),
    };
    let out = transform_rows::<T>(input);
    Ok(wit::Transformed {
        tables: out
            .tables
            .into_iter()
            .map(|t| wit::TableShape {
                name: t.name,
                columns: t
                    .columns
                    .into_iter()
                    .map(|c| wit::Column {
                        name: c.name,
                        data_type: c.data_type,
                        is_key: c.is_key,
                    })
                    .collect(),
            })
            .collect(),
        rows: out
            .rows
            .into_iter()
            .map(|r| wit::Row {
                event: r.event,
                table: r.table,
                op: op_out(r.op),
                key: r.key,
                data: r.data,
                lsn: r.lsn,
            })
            .collect(),
        truncates: Vec::new(),
        failures: out
            .failures
            .into_iter()
            .map(|f| wit::Failure {
                event: f.event,
                reason: f.reason,
            })
            .collect(),
    })
}

/// Exports a [`Transform`] as the component's `transform-rows` function (world
/// `row-transform`).
#[macro_export]
macro_rules! export_transform {
    ($transform:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct FloeTransformExport;
            impl $crate::transform_bindings::Guest for FloeTransformExport {
                fn transform_rows(
                    input: $crate::transform_bindings::Transformed,
                ) -> ::core::result::Result<
                    $crate::transform_bindings::Transformed,
                    $crate::transform_bindings::Error,
                > {
                    $crate::__transform_rows::<$transform>(input)
                }
            }
            $crate::transform_bindings::export_row_transform!(FloeTransformExport with_types_in $crate::transform_bindings);
        };
    };
}

/// Exports a [`Validator`] as the component's `validate` function.
#[macro_export]
macro_rules! export_validator {
    ($validator:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct FloeValidatorExport;
            impl $crate::bindings::Guest for FloeValidatorExport {
                fn validate(
                    batch: $crate::bindings::Batch,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::bindings::Verdict>,
                    $crate::bindings::Error,
                > {
                    $crate::__validate::<$validator>(batch)
                }
            }
    $crate::bindings::export!(FloeValidatorExport with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Positive;

    impl Validator for Positive {
        fn validate(change: &Change<'_>) -> Result<(), String> {
            assert!(!change.row.contains_key("__op"), "metadata columns hidden");
            match change.number("n") {
                Some(n) if n < 0.0 => Err(format!("{}: n must be >= 0, got {n}", change.table)),
                _ => Ok(()),
            }
        }
    }

    fn event<'a>(value: Option<&'a str>, offset: i64) -> Event<'a> {
        Event {
            topic: "dbz.public.t",
            partition: 0,
            offset,
            timestamp_ms: None,
            key: Some(br#"{"id":1}"#),
            value: value.map(str::as_bytes),
        }
    }

    #[test]
    fn one_verdict_per_event_with_the_validators_reason() {
        let good = r#"{"op":"c","before":null,"after":{"id":1,"n":5},"source":{"schema":"public","table":"t","lsn":7}}"#;
        let bad = r#"{"op":"u","before":null,"after":{"id":1,"n":-2},"source":{"schema":"public","table":"t","lsn":8}}"#;
        let events = [
            event(Some(good), 0),
            event(Some(bad), 1),
            event(None, 2),
            event(Some("{not json"), 3),
        ];
        let verdicts = validate_events::<Positive>(&events);
        assert_eq!(verdicts.len(), 4);
        assert_eq!(verdicts[0], Verdict::Ok);
        assert_eq!(
            verdicts[1],
            Verdict::Rejected("public.t: n must be >= 0, got -2".into())
        );
        assert_eq!(verdicts[2], Verdict::Ok, "a tombstone is not a row change");
        assert!(
            matches!(&verdicts[3], Verdict::Rejected(r) if !r.is_empty()),
            "{:?}",
            verdicts[3]
        );
    }
}
