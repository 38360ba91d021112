//! The metrics one known batch records, read back through the SDK's in-memory exporter
//! (the same instruments `/metrics` and OTLP export).

use std::collections::BTreeMap;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

use super::*;

/// Each metric's data points as `name{attr=value,...}` → value (a histogram's as its
/// count and sum).
fn points(exporter: &InMemoryMetricExporter) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let exported = exporter.get_finished_metrics().unwrap();
    let Some(last) = exported.last() else {
        return out;
    };
    for scope in last.scope_metrics() {
        for metric in scope.metrics() {
            let name = metric.name();
            let key = |attrs: Vec<String>| {
                if attrs.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}{{{}}}", attrs.join(","))
                }
            };
            let attrs = |kvs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                let mut a: Vec<String> = kvs.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
                a.sort();
                a
            };
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(s)) => {
                    for p in s.data_points() {
                        out.insert(key(attrs(&mut p.attributes())), p.value() as f64);
                    }
                }
                AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                    for p in g.data_points() {
                        out.insert(key(attrs(&mut p.attributes())), p.value() as f64);
                    }
                }
                AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        let k = key(attrs(&mut p.attributes()));
                        out.insert(format!("{k} count"), p.count() as f64);
                        out.insert(format!("{k} sum"), p.sum() as f64);
                    }
                }
                AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                    for p in g.data_points() {
                        out.insert(key(attrs(&mut p.attributes())), p.value());
                    }
                }
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        let k = key(attrs(&mut p.attributes()));
                        out.insert(format!("{k} count"), p.count() as f64);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_batch_records_its_events_rejections_retry_commit_and_freshness() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let stats = Stats::with_meter(&provider.meter("test"));

    // Committed in the source 5 s ago (Debezium's `source.ts_ms`).
    let committed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 5_000;
    let mut second = message();
    second.offset = 1;
    second.value = Some(
        format!(
            r#"{{"op":"u","after":{{"id":1}},"source":{{"schema":"public","table":"t","lsn":6,"ts_ms":{committed_ms}}}}}"#
        )
        .into_bytes(),
    );
    let mut bad = broken_message();
    bad.offset = 2;
    let mut sink = healthy();
    sink.failures = 1;
    // Fuel metering on, so each call's fuel is recorded beside its memory and time.
    let cfg = ComponentsConfig {
        fuel: Some(10_000_000_000),
        ..ComponentsConfig::default()
    };
    let components = Arc::new(Components::load(&cfg).unwrap());
    let source = FileSource::from_messages(vec![message(), second, bad]);
    let mut p = Pipeline::new(source, sink, components, settings(breaker(20, 1000)), stats);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    assert_eq!(
        (snap.events_consumed, snap.dead_letters),
        (3, 1),
        "{snap:?}"
    );
    provider.force_flush().unwrap();
    let got = points(&exporter);

    let want = [
        ("floe.events.consumed", 3.0),
        ("floe.batch.size count", 1.0),
        ("floe.batch.size sum", 3.0),
        ("floe.batches.committed", 1.0),
        ("floe.load.retries", 1.0),
        ("floe.dead_letters.written", 1.0),
        ("floe.batch.duration count", 1.0),
        ("floe.load.duration count", 1.0),
    ];
    for (name, value) in want {
        assert_eq!(got.get(name), Some(&value), "{name}: {got:#?}");
    }
    let dropped: Vec<_> = got
        .iter()
        .filter(|(k, _)| k.starts_with("floe.events.dropped{"))
        .collect();
    assert_eq!(dropped.len(), 1, "{got:#?}");
    assert!(dropped[0].0.contains("category=parse"), "{dropped:?}");
    assert_eq!(*dropped[0].1, 1.0);
    // One call of the fused built-in validator-and-transformer (the parsed events of the
    // one chain) and one MERGE build (one table): each with its time, memory and fuel.
    for (kind, name) in [
        ("validate-and-transform", "builtin-transformer"),
        ("build-merge", "builtin-merge_builder"),
    ] {
        let series = |metric: &str, part: &str| {
            let key =
                format!("{metric}{{floe.component.kind={kind},floe.component.name={name}}} {part}");
            *got.get(&key).unwrap_or_else(|| panic!("{key}: {got:#?}"))
        };
        assert_eq!(series("floe.component.call.duration", "count"), 1.0);
        assert_eq!(series("floe.component.memory.peak", "count"), 1.0);
        assert_eq!(series("floe.component.fuel", "count"), 1.0);
        // A component's memory is at least one 64 KiB page, and it ran instructions.
        assert!(series("floe.component.memory.peak", "sum") >= 65_536.0);
        assert!(series("floe.component.fuel", "sum") > 1_000.0);
    }
    let calls = got
        .keys()
        .filter(|k| k.starts_with("floe.component.call.duration{") && k.ends_with(" count"))
        .count();
    assert_eq!(calls, 2, "{got:#?}");
    assert_eq!(
        got.get("floe.breaker.state{breaker=warehouse}"),
        Some(&0.0),
        "{got:#?}"
    );
}
