//! `floe-host`: the one crate in floe that owns wasmtime.
//!
//! It loads the kinds of floe component (worlds `validator`, `transformer`,
//! `validating-transformer` (the built-ins' fused call), `row-transform` and
//! `merge-builder` of `wit/floe.wit`) and calls them once per micro-batch inside a
//! sandbox. Nothing else in floe imports wasmtime: callers see plain data types
//! ([`types`]) and [`HostError`].
//!
//! Sandbox, per the project's conventions (see docs/architecture.md):
//! - an empty [`Linker`](wasmtime::component::Linker): a component gets no imports at all,
//!   so no WASI, no clock, no filesystem, no network, unless its configuration grants
//!   named WASI capabilities ([`Grants`], [`Capability`]), which link only those and
//!   hold no ambient authority (no directories, no environment, no sockets);
//! - the [`Engine`] and each component's `InstancePre` are built once; every call gets a
//!   fresh `Store`, so state never leaks between batches and a trapped instance is simply
//!   dropped;
//! - a memory cap per store (growth beyond it traps cleanly), an epoch deadline per call
//!   (wall-clock bound) and optional fuel (instruction bound);
//! - a trap, timeout or memory blow-up is a [`HostError`] for that batch, never a crash.

mod clocks;
mod engine;
mod error;
mod functions;
mod output;
mod wasi;

pub use engine::{Host, Limits, precompile_portable, precompiled_name};
pub use error::{HostError, TrapKind};
pub use functions::{
    MAX_REASON_BYTES, MergeBuilder, RowTransform, Transformer, Usage, ValidatingTransformer,
    Validator, bounded,
};
pub use wasi::{Capability, Grants, MAX_OUTPUT_BYTES};

/// The `tracing` target of floe's trace spans (one per batch, component call, load,
/// warehouse statement, dead-letter write and commit). The runner exports the spans of
/// this target over OTLP when asked to and keeps them out of its logs.
pub const TRACE_TARGET: &str = "floe::trace";

/// A count as a trace span attribute: OpenTelemetry integers are signed 64-bit, and
/// unsigned `tracing` fields would be exported as strings.
pub fn span_int<N: TryInto<i64>>(n: N) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Marks a trace span failed with `error` (`error.type` is `kind`, the status ERROR
/// with the error as its description).
pub fn span_failed(span: &tracing::Span, kind: &str, error: &dyn std::fmt::Display) {
    if span.is_disabled() {
        return;
    }
    span.record("error.type", kind);
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", tracing::field::display(error));
}

/// The data types of `floe:cdc/types`, generated once from the WIT package and shared
/// by the three worlds.
pub mod types {
    pub use crate::gen_::validator::floe::cdc::types::*;
}

#[allow(clippy::all, missing_docs)]
mod gen_ {
    pub mod validator {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "validator",
        });
    }
    pub mod transformer {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "transformer",
            with: { "floe:cdc/types": super::validator::floe::cdc::types },
        });
    }
    pub mod validating_transformer {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "validating-transformer",
            with: { "floe:cdc/types": super::validator::floe::cdc::types },
        });
    }
    pub mod row_transform {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "row-transform",
            with: { "floe:cdc/types": super::validator::floe::cdc::types },
        });
    }
    pub mod merge_builder {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "merge-builder",
            with: { "floe:cdc/types": super::validator::floe::cdc::types },
        });
    }
}
