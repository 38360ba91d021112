//! The Lambda's handler against the real stack: MSK events (the realistic fixture, and
//! events built from real Debezium output) loaded into the Snowflake emulator, dead
//! letters on the broker, a failing or stalling warehouse answered with exactly the
//! partitions that must be retried, within the invocation's deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::kafka::KafkaEvent;
use base64::Engine as _;
use floe::sources::Message;
use floe_lambda::config::LambdaConfig;
use floe_lambda::handler::Floe;
use floe_lambda::response::BatchResponse;
use rdkafka::message::{Headers as _, Message as _};

use crate::faults::{ERROR_500, HEALTHY, SLOW, proxy};
use crate::support::{env, fixtures_dir, query, read_topic, snowflake, unique};

/// A Lambda configuration loading into `database` of the emulator at `url`, target
/// tables named by the source table.
pub(crate) fn lambda_config(url: &str, database: &str) -> LambdaConfig {
    let mut c = LambdaConfig::default();
    c.sink.snowflake.account_url = url.to_string();
    c.sink.snowflake.database = database.to_string();
    c.sink.snowflake.schema = "CDC".into();
    c.sink.snowflake.table_name = "{table}".into();
    c
}

/// The realistic MSK fixture with its topic `dbserver1.inventory.customers` renamed to
/// `<run>.inventory.customers` and its cluster set to the stack's broker.
pub(crate) fn msk_fixture(run: &str) -> serde_json::Value {
    let path = fixtures_dir().join("../msk-fixtures/msk_event.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut event: serde_json::Value =
        serde_json::from_str(&text.replace("dbserver1.inventory", &format!("{run}.inventory")))
            .unwrap();
    event["bootstrapServers"] = env("FLOE_KAFKA_BROKERS").into();
    event
}

/// An MSK event holding `records` (message, partition, offset), as the event source
/// mapping sends it: grouped by `"<topic>-<partition>"`, base64 payloads, header values
/// as Java bytes.
pub(crate) fn msk_event(records: &[(Message, i32, i64)]) -> serde_json::Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut groups = serde_json::Map::new();
    for (m, partition, offset) in records {
        let key = format!("{}-{partition}", m.topic);
        let headers: Vec<serde_json::Value> = m
            .headers
            .iter()
            .map(|(k, v)| {
                let bytes: Vec<i8> = v
                    .clone()
                    .unwrap_or_default()
                    .iter()
                    .map(|&b| b as i8)
                    .collect();
                serde_json::json!({ k: bytes })
            })
            .collect();
        let record = serde_json::json!({
            "topic": &*m.topic, "partition": partition, "offset": offset,
            "timestamp": 1_732_500_000_000i64, "timestampType": "CREATE_TIME",
            "key": m.key.as_deref().map(b64), "value": m.value.as_deref().map(b64),
            "headers": headers,
        });
        groups
            .entry(key)
            .or_insert_with(|| serde_json::Value::Array(Vec::new()))
            .as_array_mut()
            .unwrap()
            .push(record);
    }
    serde_json::json!({
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/floe-test/00000000-0000-0000-0000-000000000000-1",
        "bootstrapServers": env("FLOE_KAFKA_BROKERS"),
        "records": groups,
    })
}

/// The messages of a fixture file, their topic renamed into `run`'s.
fn fixture_messages(variant: &str, name: &str, run: &str) -> Vec<Message> {
    let text = std::fs::read_to_string(fixtures_dir().join(variant).join(name)).unwrap();
    floe_batch::fixture::parse_lines(
        &text.replace("\"topic\":\"dbz.", &format!("\"topic\":\"{run}.")),
    )
    .unwrap()
}

/// The container's state as the Lambda builds it before its first invocation (no AWS
/// secrets: the stack's broker and emulator need none).
pub(crate) async fn started(config: LambdaConfig) -> Floe {
    Floe::init(config, Default::default(), floe::Stats::new())
        .await
        .unwrap()
}

pub(crate) fn event(v: serde_json::Value) -> KafkaEvent {
    serde_json::from_value(v).unwrap()
}

/// A deadline `ms` from now, as the Runtime API sends it.
pub(crate) fn deadline_in(ms: u64) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + ms
}

pub(crate) fn failures(r: &BatchResponse) -> Vec<(String, i64)> {
    r.batch_item_failures
        .iter()
        .map(|f| {
            (
                f.item_identifier.partition.clone(),
                f.item_identifier.offset,
            )
        })
        .collect()
}

fn header(m: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn the_msk_fixture_loads_and_its_poison_record_is_dead_lettered() {
    let run = unique("lmsk").to_lowercase();
    let database = unique("LAMBDA_MSK").to_uppercase();
    let mut floe = started(lambda_config(&env("FLOE_SNOWFLAKE_URL"), &database)).await;
    let ev = event(msk_fixture(&run));
    let response = floe.handle(&ev, deadline_in(60_000)).await.unwrap();
    assert_eq!(
        failures(&response),
        vec![],
        "everything loaded or dead-lettered"
    );
    let sf = snowflake().await;
    let sql = format!(
        r#"SELECT "ID", "FIRST_NAME", "LAST_NAME", "EMAIL", "__OP" FROM {database}.CDC.CUSTOMERS ORDER BY "ID""#
    );
    let expected = vec![vec!["1001", "Sally", "Thomas", "sally@acme.com", "u"]];
    assert_eq!(
        query(&sf, &sql).await,
        expected,
        "1002 deleted, 1003 poison"
    );
    let snap = floe.stats().snapshot();
    assert_eq!(
        (snap.events_consumed, snap.dead_letters, snap.events_skipped),
        (5, 1, 1),
        "{snap:?}"
    );

    // The poison record is on <topic>.dlq of the event's cluster, bytes and reason kept.
    let letters = read_topic(
        &env("FLOE_KAFKA_BROKERS"),
        &format!("{run}.inventory.customers.dlq"),
    );
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l.payload(), Some(&b"{not json"[..]));
    assert_eq!(l.key(), Some(&br#"{"id":1003}"#[..]));
    assert_eq!(header(l, "floe.error.category").as_deref(), Some("parse"));
    assert_eq!(header(l, "floe.source.partition").as_deref(), Some("1"));
    assert_eq!(header(l, "floe.source.offset").as_deref(), Some("879"));

    // The event source mapping delivers the same event again: the target is unchanged.
    let response = floe.handle(&ev, deadline_in(60_000)).await.unwrap();
    assert_eq!(failures(&response), vec![]);
    assert_eq!(query(&sf, &sql).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn events_from_real_debezium_output_land_value_by_value() {
    let sf = snowflake().await;
    // Per schema variant (a database each): insert + update of customers on partition 0;
    // the primary-key update (delete, tombstone, create, with Debezium's headers) on
    // partition 1 of its topic.
    for variant in ["schemas_precise", "noschemas_precise"] {
        let run = unique("ldbz").to_lowercase();
        let database = unique("LAMBDA_DBZ").to_uppercase();
        let mut floe = started(lambda_config(&env("FLOE_SNOWFLAKE_URL"), &database)).await;
        let crud = fixture_messages(variant, "crud_replica_identity_default.jsonl", &run);
        let pk = fixture_messages(variant, "pk_update.jsonl", &run);
        assert!(
            pk.iter().any(|m| !m.headers.is_empty()),
            "pk_update carries headers"
        );
        let mut records: Vec<(Message, i32, i64)> = Vec::new();
        records.extend(
            crud.into_iter()
                .take(2)
                .enumerate()
                .map(|(i, m)| (m, 0, 100 + i as i64)),
        );
        records.extend(
            pk.into_iter()
                .enumerate()
                .map(|(i, m)| (m, 1, 200 + i as i64)),
        );
        let response = floe
            .handle(&event(msk_event(&records)), deadline_in(60_000))
            .await
            .unwrap();
        assert_eq!(failures(&response), vec![], "{variant}");
        assert_eq!(
            query(
                &sf,
                &format!(r#"SELECT "ID", "NAME", "EMAIL", "__OP" FROM {database}.CDC.CUSTOMERS"#)
            )
            .await,
            vec![vec!["1", "Alice", "alice@new.example.com", "u"]],
            "{variant}"
        );
        assert_eq!(
            query(
                &sf,
                &format!(r#"SELECT "ID", "V", "__OP" FROM {database}.CDC.PK_ITEMS"#)
            )
            .await,
            vec![vec!["2", "x", "c"]],
            "{variant}"
        );
        let snap = floe.stats().snapshot();
        assert_eq!(snap.dead_letters, 0, "{variant}: {snap:?}");
    }
}

/// An insert of `id` into `<run>.public.items`.
fn insert(run: &str, id: i64, lsn: i64) -> Message {
    Message {
        topic: Arc::from(format!("{run}.public.items")),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: Some(format!(r#"{{"id":{id}}}"#).into_bytes()),
        value: Some(
            format!(
                r#"{{"op":"c","before":null,"after":{{"id":{id},"v":"n{lsn}"}},"source":{{"schema":"public","table":"items","lsn":{lsn}}}}}"#
            )
            .into_bytes(),
        ),
        headers: Vec::new(),
    }
}

fn poison(run: &str) -> Message {
    Message {
        value: Some(b"{not json".to_vec()),
        ..insert(run, 0, 0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn a_failing_warehouse_is_answered_with_exactly_the_partitions_to_retry() {
    let run = unique("lfail").to_lowercase();
    let database = unique("LAMBDA_FAIL").to_uppercase();
    let proxy = proxy(&env("FLOE_SNOWFLAKE_URL")).await;
    let mut config = lambda_config(&proxy.url, &database);
    config.delivery.load_attempts = 2;
    config.delivery.breaker_open_ms = 200;
    config.lambda.deadline_margin_ms = 1_000;
    let mut floe = started(config).await;
    let topic = format!("{run}.public.items");
    // Partition 0: a poison record, then two rows; partition 1: two poison records.
    let records = vec![
        (poison(&run), 0, 10),
        (insert(&run, 1, 100), 0, 11),
        (insert(&run, 2, 101), 0, 12),
        (poison(&run), 1, 20),
        (poison(&run), 1, 21),
    ];
    proxy.mode.store(ERROR_500, Ordering::SeqCst);
    let started = Instant::now();
    let response = floe
        .handle(&event(msk_event(&records)), deadline_in(4_000))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(
        failures(&response),
        vec![(format!("{topic}-0"), 11)],
        "partition 0 from its first unloaded row; partition 1 was only dead letters"
    );
    assert!(
        took < Duration::from_millis(3_700),
        "answered before the deadline: {took:?}"
    );
    // The dead letters below the retry point are durable: p0@10, p1@20, p1@21.
    let mut letters: Vec<(String, String)> =
        read_topic(&env("FLOE_KAFKA_BROKERS"), &format!("{topic}.dlq"))
            .iter()
            .map(|l| {
                (
                    header(l, "floe.source.partition").unwrap(),
                    header(l, "floe.source.offset").unwrap(),
                )
            })
            .collect();
    letters.sort();
    assert_eq!(
        letters,
        vec![
            ("0".into(), "10".into()),
            ("1".into(), "20".into()),
            ("1".into(), "21".into())
        ]
    );
    // The warehouse is back; the mapping retries partition 0 from offset 11.
    proxy.mode.store(HEALTHY, Ordering::SeqCst);
    let retry: Vec<_> = records
        .into_iter()
        .filter(|(_, p, o)| *p == 0 && *o >= 11)
        .collect();
    let response = floe
        .handle(&event(msk_event(&retry)), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!(failures(&response), vec![]);
    let sf = snowflake().await;
    assert_eq!(
        query(
            &sf,
            &format!(r#"SELECT "ID", "V" FROM {database}.CDC.ITEMS ORDER BY "ID""#)
        )
        .await,
        vec![vec!["1", "n100"], vec!["2", "n101"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn a_stalled_load_is_cut_before_the_deadline() {
    let run = unique("lslow").to_lowercase();
    let database = unique("LAMBDA_SLOW").to_uppercase();
    let proxy = proxy(&env("FLOE_SNOWFLAKE_URL")).await;
    let mut config = lambda_config(&proxy.url, &database);
    config.lambda.deadline_margin_ms = 1_000;
    let mut floe = started(config).await;
    proxy.hold_ms.store(30_000, Ordering::SeqCst);
    proxy.mode.store(SLOW, Ordering::SeqCst);
    let topic = format!("{run}.public.items");
    let records = vec![(insert(&run, 1, 100), 0, 5), (insert(&run, 2, 101), 3, 7)];
    let started = Instant::now();
    let response = floe
        .handle(&event(msk_event(&records)), deadline_in(3_000))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(
        failures(&response),
        vec![(format!("{topic}-0"), 5), (format!("{topic}-3"), 7)]
    );
    assert!(
        took >= Duration::from_millis(2_000) && took < Duration::from_millis(2_900),
        "cut at deadline - margin/2: {took:?}"
    );
    proxy.mode.store(HEALTHY, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn an_unknown_deadline_gets_the_configured_budget() {
    // cargo-lambda's emulator sends `600000` (not an epoch time): read as unknown.
    let database = unique("LAMBDA_NODL").to_uppercase();
    let proxy = proxy(&env("FLOE_SNOWFLAKE_URL")).await;
    let mut config = lambda_config(&proxy.url, &database);
    config.lambda.deadline_margin_ms = 1_000;
    config.lambda.unknown_deadline_ms = 2_500;
    let mut floe = started(config).await;
    proxy.mode.store(ERROR_500, Ordering::SeqCst);
    let run = unique("lnodl").to_lowercase();
    let started = Instant::now();
    let response = floe
        .handle(&event(msk_event(&[(insert(&run, 1, 1), 0, 0)])), 600_000)
        .await
        .unwrap();
    assert_eq!(failures(&response).len(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(2_400),
        "{:?}",
        started.elapsed()
    );
    proxy.mode.store(HEALTHY, Ordering::SeqCst);
}

/// The real Avro records of tests/fixtures/avro (one forwarder's, `format`), topics
/// renamed into `run`'s, each on partition 0 of its topic in capture order.
fn avro_fixture(format: &str, run: &str) -> Vec<(Message, i32, i64)> {
    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/avro/messages.jsonl");
    let b64 = |v: &serde_json::Value| {
        v.as_str()
            .map(|s| base64::engine::general_purpose::STANDARD.decode(s).unwrap())
    };
    let prefix = if format == "avro" {
        "fxavro."
    } else {
        "fxjson."
    };
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["format"] == format && v["smt"].is_null())
        .filter(|v| v["topic"].as_str().unwrap().starts_with(prefix))
        .enumerate()
        .map(|(i, v)| {
            let topic = v["topic"]
                .as_str()
                .unwrap()
                .replacen(prefix, &format!("{run}."), 1);
            let m = Message {
                topic: Arc::from(topic),
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
                key: b64(&v["key_b64"]),
                value: b64(&v["value_b64"]),
                headers: Vec::new(),
            };
            (m, 0, i as i64)
        })
        .collect()
}

/// Avro records in an MSK event: with the registry down the invocation answers, before
/// its deadline, that every partition is to be retried from its first record (nothing
/// dead-lettered); with the schemas the tables land exactly as the JSON twins do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn avro_records_load_and_a_registry_outage_is_retried() {
    let run = unique("lavro").to_lowercase();
    let database = unique("LAMBDA_AVRO").to_uppercase();
    let records = avro_fixture("avro", &run);
    assert!(records.len() > 40, "{}", records.len());
    // Each partition's first offset.
    let mut first: std::collections::BTreeMap<String, i64> = Default::default();
    for (m, p, o) in &records {
        let e = first.entry(format!("{}-{p}", m.topic)).or_insert(*o);
        *e = (*e).min(*o);
    }

    // Nobody answers on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut config = lambda_config(&env("FLOE_SNOWFLAKE_URL"), &database);
    config.source.schema_registry = Some(floe::config::SchemaRegistryConfig {
        timeout_ms: 500,
        ..floe::config::SchemaRegistryConfig::at(down)
    });
    config.delivery.breaker_open_ms = 200;
    config.lambda.deadline_margin_ms = 1_000;
    let mut floe = started(config).await;
    let started_at = Instant::now();
    let response = floe
        .handle(&event(msk_event(&records)), deadline_in(4_000))
        .await
        .unwrap();
    assert!(started_at.elapsed() < Duration::from_millis(3_700));
    let retried: std::collections::BTreeMap<String, i64> =
        failures(&response).into_iter().collect();
    assert_eq!(retried, first, "every partition, from its first record");
    let snap = floe.stats().snapshot();
    assert_eq!((snap.dead_letters, snap.rows_loaded), (0, 0), "{snap:?}");
    assert!(snap.registry_errors >= 1, "{snap:?}");

    // The retry, with the schemas; and the JSON twins into a database of their own.
    let mut config = lambda_config(&env("FLOE_SNOWFLAKE_URL"), &database);
    config.source.schema_registry = Some(floe::config::SchemaRegistryConfig {
        url: None,
        schemas_file: Some(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/avro/schemas.json"),
        ),
        ..floe::config::SchemaRegistryConfig::at("")
    });
    let mut floe = started(config).await;
    let response = floe
        .handle(&event(msk_event(&records)), deadline_in(60_000))
        .await
        .unwrap();
    assert_eq!(failures(&response), vec![]);
    assert_eq!(floe.stats().snapshot().dead_letters, 0);
    let json_db = format!("{database}_JSON");
    let mut twins = started(lambda_config(&env("FLOE_SNOWFLAKE_URL"), &json_db)).await;
    let response = twins
        .handle(
            &event(msk_event(&avro_fixture("json", &run))),
            deadline_in(60_000),
        )
        .await
        .unwrap();
    assert_eq!(failures(&response), vec![]);
    let sf = snowflake().await;
    for (table, cols) in [
        (
            "ALL_TYPES",
            r#""ID", "NUM12_2", "NUM_VAR", "TS_TZ", "TS", "D", "TM", "JS", "U", "B", "FLAG", "TAGS", "I2", "I8", "F8", "VC", "IV", "BIG_TEXT", "EXTRA", "__OP", "__LSN""#,
        ),
        ("ALL_TYPES_TRUNC", r#""ID", "V", "__OP", "__LSN""#),
        ("COMPOSITE_PK", r#""TENANT", "ID", "V", "__OP""#),
    ] {
        let sql = |db: &str| format!(r#"SELECT {cols} FROM {db}.CDC.{table} ORDER BY 1, 2"#);
        let avro = query(&sf, &sql(&database)).await;
        assert!(!avro.is_empty(), "{table}");
        assert_eq!(
            avro,
            query(&sf, &sql(&json_db)).await,
            "{table}: Avro vs JSON"
        );
    }
}
