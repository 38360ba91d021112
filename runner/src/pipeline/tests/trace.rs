//! The spans one batch exports: their tree, their attributes and their links to the
//! records' own traces, through the same layer the runner installs.

use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;

use super::*;

/// Collects the spans exported while `run` runs.
struct Collector {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

impl Collector {
    fn new() -> Collector {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        Collector { exporter, provider }
    }

    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        use opentelemetry::trace::TracerProvider as _;
        // tracing-core asks only the calling thread's dispatcher about a callsite first
        // hit while a single dispatcher is registered: a span first opened by another
        // test's thread would then be disabled for good, ours included. A second,
        // never-dropped dispatcher makes it ask every registered one.
        static SECOND: std::sync::LazyLock<tracing::Dispatch> =
            std::sync::LazyLock::new(|| tracing::Dispatch::new(tracing_subscriber::registry()));
        std::sync::LazyLock::force(&SECOND);
        tracing_subscriber::registry()
            .with(crate::telemetry::span_layer(self.provider.tracer("test")))
    }

    fn spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().unwrap();
        self.exporter.get_finished_spans().unwrap()
    }
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn children<'a>(spans: &'a [SpanData], parent: &SpanData) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_context.span_id())
        .collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn traced(mut m: Message, trace: &str, parent: &str) -> Message {
    let header = format!("00-{trace}-{parent}-01");
    m.headers
        .push(("traceparent".into(), Some(header.into_bytes())));
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_exports_one_tree_linked_to_its_records_traces() {
    let collector = Collector::new();
    let _default = tracing::subscriber::set_default(collector.subscriber());

    let mut second = traced(message(), TRACE, PARENT);
    second.offset = 1;
    let mut bad = traced(broken_message(), TRACE, PARENT); // the same context: one link
    bad.offset = 2;
    let mut garbled = message();
    garbled.offset = 3;
    garbled
        .headers
        .push(("traceparent".into(), Some(b"not a context".to_vec())));
    let mut sink = healthy();
    sink.failures = 1; // the first load attempt fails, the second loads
    let source = FileSource::from_messages(vec![message(), second, bad, garbled]);
    let mut p = built(source, sink, breaker(20, 1000));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    assert_eq!((snap.dead_letters, snap.commits), (1, 1), "{snap:?}");
    let spans = collector.spans();
    let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();

    let batches = named(&spans, "process dbz.public.t");
    assert_eq!(batches.len(), 1, "{names:?}");
    let batch = batches[0];
    assert_eq!(batch.parent_span_id, SpanId::INVALID, "a batch is a root");
    assert_eq!(batch.span_kind, opentelemetry::trace::SpanKind::Consumer);
    assert_eq!(
        attr(batch, "messaging.batch.message_count").as_deref(),
        Some("4")
    );
    assert_eq!(
        attr(batch, "messaging.destination.name").as_deref(),
        Some("dbz.public.t")
    );
    assert_eq!(batch.status, Status::Unset, "the batch succeeded");
    let links = &batch.links.links;
    assert_eq!(links.len(), 1, "one distinct valid context: {links:?}");
    assert_eq!(
        links[0].span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
    assert_eq!(
        links[0].span_context.span_id(),
        SpanId::from_hex(PARENT).unwrap()
    );

    let mut under: Vec<_> = children(&spans, batch)
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    under.sort();
    assert_eq!(
        under,
        [
            "build-merge builtin-merge_builder",
            "commit",
            "load",
            "load",
            "send dead letters",
            "validate-and-transform builtin-transformer",
        ],
        "{names:?}"
    );
    assert!(
        spans
            .iter()
            .all(|s| s.span_context.trace_id() == batch.span_context.trace_id()),
        "every span is in the batch's trace: {names:?}"
    );

    let mut loads = named(&spans, "load");
    loads.sort_by_key(|s| attr(s, "floe.load.attempt"));
    assert_eq!(attr(loads[0], "floe.load.attempt").as_deref(), Some("1"));
    assert_eq!(attr(loads[0], "error.type").as_deref(), Some("transient"));
    assert!(
        matches!(loads[0].status, Status::Error { .. }),
        "{:?}",
        loads[0].status
    );
    assert_eq!(attr(loads[1], "floe.load.attempt").as_deref(), Some("2"));
    assert_eq!(loads[1].status, Status::Unset);
    assert_eq!(attr(loads[1], "floe.load.tables").as_deref(), Some("1"));

    let component = named(&spans, "validate-and-transform builtin-transformer")[0];
    assert_eq!(attr(component, "floe.events").as_deref(), Some("4"));
    let memory = component
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "floe.component.memory_peak_bytes");
    assert!(
        matches!(memory.map(|kv| &kv.value), Some(opentelemetry::Value::I64(n)) if *n > 0),
        "{component:?}"
    );
    let letters = named(&spans, "send dead letters")[0];
    assert_eq!(
        attr(letters, "messaging.batch.message_count").as_deref(),
        Some("1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapped_component_marks_its_own_span_failed_under_its_batch() {
    let collector = Collector::new();
    let _default = tracing::subscriber::set_default(collector.subscriber());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = hostile(crate::config::OnFailure::Dlq)
        .run(rx)
        .await
        .unwrap();
    assert_eq!(snap.dead_letters, 1, "{snap:?}");
    let spans = collector.spans();
    let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();

    let failed: Vec<_> = spans
        .iter()
        .filter(|s| attr(s, "floe.component.kind").is_some())
        .filter(|s| matches!(s.status, Status::Error { .. }))
        .collect();
    assert_eq!(failed.len(), 1, "{names:?}");
    let component = failed[0];
    assert!(component.name.starts_with("validate "), "{names:?}");
    assert!(attr(component, "error.type").is_some(), "{component:?}");
    let Status::Error { description } = &component.status else {
        unreachable!()
    };
    assert!(description.contains("panic"), "{description}");
    let batch = spans
        .iter()
        .find(|s| s.span_context.span_id() == component.parent_span_id)
        .expect("the component's span has its batch as parent");
    assert_eq!(batch.name, "process dbz.public.t");
}
