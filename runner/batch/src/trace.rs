//! floe's trace spans, in one place: the batch (a messaging `process` span), its load
//! attempts, its dead-letter write and its commit. Component calls
//! (`floe_host`) and warehouse statements ([`crate::sinks::snowflake`]) open theirs
//! where they run. All use the target [`TARGET`]: the runner exports them over OTLP
//! when asked to and keeps them out of its logs; with no exporter they are disabled and
//! cost a check each.
//!
//! The span tree of one batch:
//!
//! ```text
//! process <topic>                  (consumer; links to each record's traceparent)
//! ├── validate-and-transform builtin-transformer (one per component call and share)
//! ├── build-merge builtin-merge_builder          (one per table)
//! ├── load                                       (one per attempt)
//! │   └── MERGE <table>                          (one per statement; db.* attributes)
//! ├── dead letters                               (when the batch has some)
//! └── commit
//! ```

use std::collections::HashSet;

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use floe_host::span_int;

use crate::message::Message;

/// The `tracing` target of floe's trace spans.
pub const TARGET: &str = floe_host::TRACE_TARGET;

/// Most links a batch span gets from its records' `traceparent` headers (distinct
/// ones, in batch order); the rest are counted in `floe.links.dropped`.
pub const MAX_LINKS: usize = 128;

/// The span of one batch: `process <topic>` (the topic when the batch has one, else
/// `process`), a consumer span with the messaging attributes. Its links to the records'
/// own traces are added by [`link_records`].
pub fn batch_span(messages: &[Message], group: Option<&str>, bytes: usize) -> Span {
    let first = messages.first().map(|m| &m.topic);
    let one_topic = first.filter(|t| messages.iter().all(|m| &m.topic == *t));
    let span = tracing::info_span!(
        target: TARGET,
        "batch",
        otel.name = Empty,
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = Empty,
        messaging.consumer.group.name = group,
        messaging.batch.message_count = span_int(messages.len()),
        floe.batch.bytes = span_int(bytes),
        floe.links.dropped = Empty,
        error.type = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    match one_topic {
        Some(topic) => {
            span.record("otel.name", format!("process {topic}"));
            span.record("messaging.destination.name", &**topic);
        }
        None => {
            span.record("otel.name", "process");
        }
    }
    span
}

/// A record's headers, as the trace context propagator reads them.
struct Headers<'a>(&'a Message);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let (_, value) = self.0.headers.iter().find(|(k, _)| k == key)?;
        std::str::from_utf8(value.as_deref()?).ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.headers.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Links `span` to the trace context of each record's `traceparent` header (W3C trace
/// context), as the messaging conventions prescribe for a batch: each distinct context
/// once, at most [`MAX_LINKS`]. Returns the number of links added. Nothing is read when
/// the span is disabled.
pub fn link_records(span: &Span, messages: &[Message]) -> usize {
    if span.is_disabled() {
        return 0;
    }
    let propagator = TraceContextPropagator::new();
    let mut seen = HashSet::new();
    let mut dropped = 0usize;
    for m in messages {
        if !m.headers.iter().any(|(k, _)| k == "traceparent") {
            continue;
        }
        let cx = propagator.extract(&Headers(m));
        let context = cx.span().span_context().clone();
        if !context.is_valid() || !seen.insert((context.trace_id(), context.span_id())) {
            continue;
        }
        if seen.len() > MAX_LINKS {
            dropped += 1;
            continue;
        }
        span.add_link(context);
    }
    if dropped > 0 {
        span.record("floe.links.dropped", span_int(dropped));
    }
    seen.len() - dropped
}

/// The span of one load attempt of a batch (`attempt` from 1; the breaker's probes go
/// on counting) of `tables` tables whose rows came from `events` events.
pub fn load_span(attempt: usize, tables: usize, events: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        "load",
        floe.load.attempt = span_int(attempt),
        floe.load.tables = span_int(tables),
        floe.load.events = span_int(events),
        error.type = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// The span of writing a batch's dead letters to `queue` (its description; one span
/// per attempt).
pub fn dead_letters_span(queue: &str, count: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        "dead letters",
        otel.name = "send dead letters",
        otel.kind = "producer",
        messaging.operation.name = "send",
        messaging.operation.type = "send",
        floe.dlq = queue,
        messaging.batch.message_count = span_int(count),
        error.type = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// The span of committing a batch's offsets, as a child of `batch`.
pub fn commit_span(batch: &Span) -> Span {
    tracing::info_span!(
        target: TARGET,
        parent: batch,
        "commit",
        otel.name = "commit",
        messaging.operation.name = "commit",
        messaging.operation.type = "settle",
        error.type = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Marks `span` failed with `error` (`error.type` is `kind`).
pub use floe_host::span_failed as failed;
