//! OTLP export from the `floe` binary during a real run (the stack's broker and
//! emulator), to an OTLP/HTTP receiver in the test that decodes each request's
//! protobuf as a collector does.
//! 1. Every record carries a W3C `traceparent` header. floe exports one `process <topic>`
//!    span per batch, linked to each of its records' contexts, with the component,
//!    load, MERGE statement and commit spans in its tree; and its metrics (events
//!    consumed, rows loaded, statement durations), all under `service.name` floe.
//! 2. The collector answers 503, then closes its port: floe warns, loads on (the target
//!    equals the model of the stream) and counts the failed exports; the collector back,
//!    floe says so and exports again, the failures included.
//! 3. SIGTERM: floe exits 0.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use floe_integration_tests::otlp::{Receiver, attr};
use opentelemetry_proto::tonic::trace::v1::Span;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::broker::{model_query, stream};
use crate::shutdown::terminate;
use crate::support::{env, floe_bin, snowflake, unique, wait_for_rows};

/// The W3C trace context of record `i`: a trace of its own.
fn context(i: usize) -> (String, String) {
    (
        format!("{:032x}", 0xf10e_0000_0000_u128 + i as u128),
        format!("{:016x}", 0x5a00 + i as u64),
    )
}

async fn produce_traced(topic: &str, records: &[(String, String)], first: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env("FLOE_KAFKA_BROKERS"))
        .set("acks", "all")
        .create()
        .unwrap();
    let sends: Vec<_> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            let (trace, span) = context(first + i);
            let traceparent = format!("00-{trace}-{span}-01");
            let headers = OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(&traceparent),
            });
            producer.send(
                FutureRecord::to(topic).key(k).payload(v).headers(headers),
                Duration::from_secs(120),
            )
        })
        .collect();
    for s in sends {
        s.await.expect("produce");
    }
}

fn write_config(path: &Path, run: &str, topic: &str) {
    std::fs::write(
        path,
        format!(
            r#"[source.kafka]
brokers = "{brokers}"
group_id = "{run}-group"
topics = ["{topic}"]
session_timeout_ms = 10000

[batch]
max_rows = 50
max_wait_ms = 200

[sink.snowflake]
account_url = "{url}"
database = "{database}"
schema = "CDC"
table_name = "{{table}}"
"#,
            brokers = env("FLOE_KAFKA_BROKERS"),
            url = env("FLOE_SNOWFLAKE_URL"),
            database = run.to_uppercase(),
        ),
    )
    .unwrap();
}

/// Waits (bounded) until `done` holds, checking floe still runs.
async fn until(floe: &mut Child, what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            floe.try_wait().unwrap().is_none(),
            "floe exited while waiting for {what}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The trace contexts (trace id, span id, hex) the batch spans among `spans` link to.
fn linked(spans: &[(String, Span)], topic: &str) -> Vec<(String, String)> {
    spans
        .iter()
        .filter(|(_, s)| s.name == format!("process {topic}"))
        .flat_map(|(_, s)| &s.links)
        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack and the floe binary: make test"]
async fn traces_and_metrics_reach_an_otlp_collector_and_its_outage_costs_no_rows() {
    let run = unique("otlp");
    let table = format!("{run}_items");
    let topic = format!("dbz.public.{table}");
    let target = format!("{}.CDC.{}", run.to_uppercase(), table.to_uppercase());
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).unwrap();
    let (records, model) = stream(&table, 600);
    produce_traced(&topic, &records[..300], 0).await;

    let receiver = Receiver::start().await;
    let config = dir.join("floe.toml");
    write_config(&config, &run, &topic);
    let log = dir.join("floe.log");
    let mut floe = Command::new(floe_bin())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("FLOE_LOG", "info")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_SDK_DISABLED")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start floe");

    // 1. Every record's context is linked from exactly one batch span, and the first
    //    300 events are counted in the exported metrics.
    let want: BTreeSet<(String, String)> = (0..300).map(context).collect();
    until(&mut floe, "links to the first 300 records", || {
        let got: BTreeSet<_> = linked(&receiver.spans(), &topic).into_iter().collect();
        want.is_subset(&got)
    })
    .await;
    until(&mut floe, "300 events and 6 commits in the metrics", || {
        let (sums, _) = receiver.sums();
        sums.get("floe.events.consumed") == Some(&300)
            && sums.get("floe.batches.committed") >= Some(&6)
    })
    .await;
    let spans = receiver.spans();
    let links = linked(&spans, &topic);
    assert_eq!(links.len(), want.len(), "each context linked once");
    assert!(spans.iter().all(|(service, _)| service == "floe"));

    let batches: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == format!("process {topic}"))
        .collect();
    let children = |parent: &Span| -> Vec<&Span> {
        spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
            .collect()
    };
    // A batch whose whole tree has arrived (the batch span ends after its children).
    let (batch, under) = batches
        .iter()
        .map(|b| (*b, children(b)))
        .find(|(_, c)| c.iter().any(|s| s.name == "commit"))
        .expect("a committed batch's tree");
    assert!(batch.parent_span_id.is_empty(), "a batch is a root span");
    assert_eq!(
        attr(batch, "messaging.destination.name").as_deref(),
        Some(topic.as_str())
    );
    assert_eq!(
        attr(batch, "messaging.consumer.group.name"),
        Some(format!("{run}-group"))
    );
    let components: Vec<_> = under
        .iter()
        .filter_map(|s| attr(s, "floe.component.kind"))
        .collect();
    assert!(
        components.iter().any(|k| k == "validate-and-transform")
            && components.iter().any(|k| k == "build-merge"),
        "{components:?}"
    );
    let load = under
        .iter()
        .find(|s| s.name == "load")
        .expect("a load span under the batch");
    let statements = children(load);
    let merge = statements
        .iter()
        .find(|s| attr(s, "db.operation.name").as_deref() == Some("merge"))
        .unwrap_or_else(|| panic!("a MERGE under the load: {statements:?}"));
    assert_eq!(attr(merge, "db.system.name").as_deref(), Some("snowflake"));
    assert_eq!(
        attr(merge, "db.collection.name").as_deref(),
        Some(target.as_str())
    );
    assert_eq!(merge.name, format!("MERGE {target}"));

    let (sums, services) = receiver.sums();
    assert_eq!(services, BTreeSet::from(["floe".to_string()]));
    assert!(sums.get("floe.rows.loaded") > Some(&0), "{sums:?}");
    assert!(sums.get("floe.batches.committed") >= Some(&6), "{sums:?}");
    assert!(
        sums.get("db.client.operation.duration count") >= Some(&6),
        "{sums:?}"
    );

    // 2. The collector fails (503, then its port closed) while the rest of the stream
    //    loads.
    receiver.down.store(true, Ordering::SeqCst);
    produce_traced(&topic, &records[300..450], 300).await;
    until(&mut floe, "refused exports", || {
        receiver.refused.load(Ordering::SeqCst) >= 2
    })
    .await;
    receiver.stop().await;
    produce_traced(&topic, &records[450..], 450).await;
    let (sql, want_rows) = model_query(&run, &table, &model);
    let got = wait_for_rows(&snowflake().await, &sql, &want_rows, 90).await;
    assert_eq!(got, want_rows, "target == model with the collector down");
    // At least one metric export (every 300 ms) met the closed port.
    tokio::time::sleep(Duration::from_secs(1)).await;
    receiver.down.store(false, Ordering::SeqCst);
    receiver.restart().await;
    until(
        &mut floe,
        "600 events and the failed exports in the metrics",
        || {
            let (sums, _) = receiver.sums();
            sums.get("floe.events.consumed") == Some(&600)
                && sums.get("floe.telemetry.exports.failed") >= Some(&3)
        },
    )
    .await;

    // 3. A clean exit; the log tells the outage and the recovery.
    let (code, _) = terminate(&mut floe).await;
    assert_eq!(code, Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    let warnings = log.matches("OTLP export failed").count();
    assert!(
        (1..=2).contains(&warnings),
        "one warning per exporter and outage, got {warnings}: {log}"
    );
    assert!(log.contains("OTLP export works again"), "{log}");
}
