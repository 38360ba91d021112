//! The `floe` binary's HTTP endpoints (`metrics.listen`) during a real run: the stack's
//! broker, the emulator behind the fault proxy.
//! 1. `/healthz` answers; `/readyz` turns 200 once the consumer owns partitions.
//! 2. After loads, `/metrics` has the consumed events, the table's rows by operation,
//!    the MERGE statements and their durations; `/stats` the same counts as JSON.
//! 3. The warehouse fails (HTTP 500): the warehouse breaker opens, `/readyz` says 503
//!    with the reason and `/metrics` shows the breaker open; healthy again, ready again.
//! 4. The target equals the model of the stream; the consumer's lag is 0 and its
//!    committed offsets add up to the stream; the table's freshness counts from its
//!    changes' commit time; SIGTERM: floe exits 0.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;

use crate::broker::{free_port, model_query, produce, stream};
use crate::faults::{ERROR_500, HEALTHY, proxy};
use crate::shutdown::terminate;
use crate::support::{env, floe_bin, snowflake, unique, wait_for_rows};

fn write_config(path: &Path, run: &str, topic: &str, url: &str, listen: &str) {
    std::fs::write(
        path,
        format!(
            r#"[source.kafka]
brokers = "{brokers}"
group_id = "{run}-group"
topics = ["{topic}"]
session_timeout_ms = 10000
options = {{ "statistics.interval.ms" = "500" }}

[batch]
max_rows = 50
max_wait_ms = 200

[sink.snowflake]
account_url = "{url}"
database = "{database}"
schema = "CDC"
table_name = "{{table}}"

[delivery]
load_attempts = 1
breaker_open_ms = 500
breaker_max_open_ms = 1000

[metrics]
listen = "{listen}"
"#,
            brokers = env("FLOE_KAFKA_BROKERS"),
            database = run.to_uppercase(),
        ),
    )
    .unwrap();
}

/// Status and body of a GET, or `None` while nothing listens.
async fn get(listen: &str, path: &str) -> Option<(u16, String)> {
    let res = reqwest::get(format!("http://{listen}{path}")).await.ok()?;
    let status = res.status().as_u16();
    Some((status, res.text().await.ok()?))
}

/// Polls `path` (bounded) until `want` holds for its answer, checking floe still runs.
async fn until(
    floe: &mut Child,
    listen: &str,
    path: &str,
    what: &str,
    want: impl Fn(u16, &str) -> bool,
) -> String {
    let started = Instant::now();
    loop {
        if let Some((status, body)) = get(listen, path).await
            && want(status, &body)
        {
            return body;
        }
        assert!(
            floe.try_wait().unwrap().is_none(),
            "floe exited while waiting for {what}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}: last {path} answer {:?}",
            get(listen, path).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the Prometheus sample whose line starts with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack and the floe binary: make test"]
async fn endpoints_report_health_readiness_metrics_and_an_open_breaker() {
    let run = unique("telemetry");
    let table = format!("{run}_items");
    let topic = format!("dbz.public.{table}");
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).unwrap();
    let (records, model) = stream(&table, 600);
    // Committed in PostgreSQL two minutes ago: the table's freshness is at least that.
    let committed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 120_000;
    let records: Vec<(String, String)> = records
        .into_iter()
        .map(|(k, v)| {
            let mut v: serde_json::Value = serde_json::from_str(&v).unwrap();
            v["source"]["ts_ms"] = committed_ms.into();
            (k, v.to_string())
        })
        .collect();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env("FLOE_KAFKA_BROKERS"))
        .set("acks", "all")
        .create()
        .unwrap();
    produce(&producer, &topic, &records[..300]).await;

    let proxy = proxy(&env("FLOE_SNOWFLAKE_URL")).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let config = dir.join("floe.toml");
    write_config(&config, &run, &topic, &proxy.url, &listen);
    let mut floe = Command::new(floe_bin())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("FLOE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start floe");

    // 1. Alive, then ready once partitions are assigned.
    let body = until(&mut floe, &listen, "/healthz", "/healthz", |s, _| s == 200).await;
    assert_eq!(body, "ok\n");
    until(&mut floe, &listen, "/readyz", "readiness", |s, b| {
        s == 200 && b == "ready\n"
    })
    .await;

    // 2. The first 300 changes loaded, seen in /metrics and /stats.
    let target = format!("{}.CDC.{}", run.to_uppercase(), table.to_uppercase());
    let consumed = "floe_events_consumed_total";
    let metrics = until(
        &mut floe,
        &listen,
        "/metrics",
        "300 events loaded",
        |_, b| {
            sample(b, consumed) == Some(300.0)
                && sample(b, "floe_batches_committed_total") >= Some(6.0)
        },
    )
    .await;
    let inserted = format!(r#"floe_rows_loaded_total{{op="insert",table="{target}"}}"#);
    assert!(sample(&metrics, &inserted) > Some(0.0), "{metrics}");
    assert!(
        sample(&metrics, r#"floe_warehouse_statements_total{kind="merge"}"#) >= Some(6.0),
        "{metrics}"
    );
    let merges = format!(
        r#"db_client_operation_duration_seconds_count{{db_collection_name="{target}",db_operation_name="merge",db_system_name="snowflake",status="ok"}}"#
    );
    assert!(sample(&metrics, &merges) >= Some(6.0), "{metrics}");
    assert_eq!(
        sample(&metrics, r#"floe_breaker_state{breaker="warehouse"}"#),
        Some(0.0)
    );
    let (status, stats) = get(&listen, "/stats").await.unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        (status, stats["events_consumed"].as_u64()),
        (200, Some(300))
    );

    // 3. The warehouse fails: breaker open, not ready (with the reason), then back.
    proxy.mode.store(ERROR_500, Ordering::SeqCst);
    produce(&producer, &topic, &records[300..]).await;
    let body = until(&mut floe, &listen, "/readyz", "not ready", |s, _| s == 503).await;
    assert!(
        body.starts_with("not ready: the warehouse circuit breaker is"),
        "{body}"
    );
    let metrics = until(&mut floe, &listen, "/metrics", "breaker opened", |_, b| {
        sample(b, r#"floe_breaker_openings_total{breaker="warehouse"}"#) >= Some(1.0)
    })
    .await;
    assert!(
        sample(&metrics, r#"floe_breaker_state{breaker="warehouse"}"#) >= Some(1.0),
        "open or half-open: {metrics}"
    );
    proxy.mode.store(HEALTHY, Ordering::SeqCst);
    until(&mut floe, &listen, "/metrics", "all 600 loaded", |_, b| {
        sample(b, consumed) == Some(600.0)
            && sample(b, r#"floe_breaker_state{breaker="warehouse"}"#) == Some(0.0)
    })
    .await;
    until(&mut floe, &listen, "/readyz", "ready again", |s, _| {
        s == 200
    })
    .await;
    // The consumer's position per partition (librdkafka's statistics, every 500 ms
    // here): nothing left to consume, every message committed; and the table's
    // freshness from its changes' commit time.
    let sum_of = |text: &str, name: &str| -> f64 {
        let prefix = format!("{name}{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(&format!(r#"topic="{topic}""#)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let metrics = until(
        &mut floe,
        &listen,
        "/metrics",
        "lag 0, 600 committed",
        |_, b| {
            sum_of(b, "floe_consumer_committed_offset") == 600.0
                && sum_of(b, "floe_consumer_lag") == 0.0
                && b.contains("floe_consumer_lag{")
        },
    )
    .await;
    let freshness = sample(
        &metrics,
        &format!(r#"floe_freshness_seconds{{table="{target}"}}"#),
    );
    assert!(
        freshness.is_some_and(|s| (120.0..600.0).contains(&s)),
        "{freshness:?}: {metrics}"
    );
    let (sql, want) = model_query(&run, &table, &model);
    let got = wait_for_rows(&snowflake().await, &sql, &want, 60).await;
    assert_eq!(got, want, "target == model after the outage");

    // 4. SIGTERM: a clean exit; the endpoints go with the process.
    let (code, _) = terminate(&mut floe).await;
    assert_eq!(code, Some(0));
    assert!(get(&listen, "/healthz").await.is_none(), "still answering");
}
