//! Dead letter queue: 1,000 hostile and malformed records mixed into a real Debezium
//! stream (PostgreSQL -> Debezium -> broker) land in the DLQ topic, each with the right
//! category, its original key and value and where it came from; every valid change is
//! loaded (also one whose table and column names are hostile SQL); after the fix (a
//! larger message limit) `floe dlq replay --category kafka` re-submits the oversize ones
//! and the next run loads them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use floe::RunOptions;
use floe::config::SourceKind;
use floe::dlq::replay::{ReplayOptions, replay};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::producer::FutureRecord;

use crate::support::{
    env, kafka_config, producer, psql, query, sink_config, snowflake, spawn_run, unique,
};

/// `floe dlq replay --category kafka [--topic ...]`.
async fn replay_kafka(
    config: &floe::Config,
    topics: Vec<String>,
) -> floe::dlq::replay::ReplayReport {
    replay(
        config,
        &ReplayOptions {
            categories: vec!["kafka".into()],
            topics,
            idle: Duration::from_secs(5),
            dry_run: false,
            group: None,
            allow_without_lsn: false,
        },
    )
    .await
    .unwrap()
}

/// One hostile record: key, value, the category floe must give it.
struct Hostile {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    category: &'static str,
}

fn envelope(table: &str, op: &str, after: &str) -> String {
    format!(
        r#"{{"before":null,"after":{after},"source":{{"schema":"public","table":"{table}","lsn":1}},"op":"{op}"}}"#
    )
}

/// 1,000 records: 7 kinds x 128 that no fix makes loadable, and 104 valid changes too
/// large for the (test's small) message limit.
fn hostile(table: &str) -> Vec<Hostile> {
    let mut out = Vec::new();
    for i in 0..128u32 {
        let id = 500_000 + i;
        let key = Some(format!(r#"{{"id":{id}}}"#).into_bytes());
        let rec = |value: Vec<u8>, category| Hostile {
            key: key.clone(),
            value,
            category,
        };
        out.push(rec(format!("{{broken {i}").into_bytes(), "parse"));
        out.push(rec(vec![0xff, 0xfe, (i % 256) as u8, b'{'], "parse"));
        out.push(rec(format!("[{i}, 2, 3]").into_bytes(), "validation"));
        out.push(rec(
            envelope(table, "x", &format!(r#"{{"id":{id}}}"#)).into_bytes(),
            "validation",
        ));
        out.push(Hostile {
            key: None,
            value: envelope(table, "c", &format!(r#"{{"id":{id},"v":"no key"}}"#)).into_bytes(),
            category: "validation",
        });
        // A source column named like floe's metadata columns cannot be loaded.
        out.push(rec(
            envelope(table, "c", &format!(r#"{{"id":{id},"__op":"boom"}}"#)).into_bytes(),
            "transform",
        ));
        out.push(rec(
            envelope(table, "u", &format!(r#"{{"id":{id},"__lsn":"{i}"}}"#)).into_bytes(),
            "transform",
        ));
    }
    for i in 0..104u32 {
        let id = 100_000 + i;
        let big = format!("{i}-").repeat(3000);
        out.push(Hostile {
            key: Some(format!(r#"{{"id":{id}}}"#).into_bytes()),
            value: envelope(table, "c", &format!(r#"{{"id":{id},"v":"{big}"}}"#)).into_bytes(),
            category: "kafka",
        });
    }
    assert_eq!(out.len(), 1000);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn hostile_records_land_in_the_dlq_and_replay_after_a_fix() {
    let run = unique("dlq");
    let table = format!("{run}_items");
    let topic = format!("dbz.public.{table}");
    let dlq_topic = format!("{topic}.dlq");
    let database = run.to_uppercase();
    psql(&format!(
        "CREATE TABLE public.{table} (id int PRIMARY KEY, v text);"
    ));

    let mut config = kafka_config(&database, &run, vec![topic.clone()]);
    config.source.max_message_bytes = 4096;
    config.batch.max_wait_ms = 500;
    let (stop, stats, handle) = spawn_run(config.clone(), RunOptions::default());

    // The valid stream: 1,500 inserts, updates of every third row, deletes of every
    // fifth, from the real connector.
    psql(&format!(
        "INSERT INTO public.{table} SELECT i, 'v' || i FROM generate_series(1, 1500) i;
         UPDATE public.{table} SET v = v || '-updated' WHERE id % 3 = 0;
         DELETE FROM public.{table} WHERE id % 5 = 0;"
    ));
    // Hostile records into the same topic, and valid changes of a table whose name and
    // columns are hostile SQL (safely quoted, so they load).
    let producer = producer();
    let records = hostile(&table);
    let weird_table = r#"we"ird; DROP TABLE x;--ü"#;
    let mut weird = Vec::new();
    for i in 0..20 {
        let after = format!(r#"{{"id":{i},"\"quoted\"":"q{i}","semi;colon":{i},"ünï":"✓"}}"#);
        let value = format!(
            r#"{{"before":null,"after":{after},"source":{{"schema":"public","table":{},"lsn":{}}},"op":"c"}}"#,
            serde_json::to_string(weird_table).unwrap(),
            1000 + i
        );
        weird.push((format!(r#"{{"id":{i}}}"#), value));
    }
    for (i, r) in records.iter().enumerate() {
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).payload(&r.value);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        producer
            .send(rec, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        if i % 50 == 0 {
            let (k, v) = &weird[i / 50];
            producer
                .send(
                    FutureRecord::to(&topic).key(k).payload(v),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }

    let sf = snowflake().await;
    let source = psql(&format!(
        "SELECT id::text, v FROM public.{table} t ORDER BY t.id"
    ));
    assert_eq!(source.len(), 1200);
    let target_sql = format!(
        r#"SELECT "ID", "V" FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
        table.to_uppercase()
    );
    let weird_sql = format!(
        r#"SELECT "ID", """QUOTED""", "SEMI;COLON", "ÜNÏ" FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
        weird_table.to_uppercase().replace('"', "\"\"")
    );
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let snap = stats.snapshot();
        if snap.dead_letters >= 1000
            && let (Ok(t), Ok(w)) = (
                sf.execute(&target_sql, &[]).await,
                sf.execute(&weird_sql, &[]).await,
            )
            && t.rows.len() == source.len()
            && w.rows.len() == 20
        {
            break;
        }
        assert!(Instant::now() < deadline, "not caught up: {snap:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.send(true).unwrap();
    let snap = handle.await.unwrap().expect("floe run");
    assert_eq!(snap.dead_letters, 1000, "{snap:?}");
    assert_eq!(
        snap.events_rejected + snap.events_failed,
        1000,
        "every dead letter is counted once: {snap:?}"
    );
    // Every valid change loaded, value by value.
    assert_eq!(query(&sf, &target_sql).await, source);
    let w = query(&sf, &weird_sql).await;
    assert_eq!(w[3], ["3", "q3", "3", "✓"]);

    // The DLQ topic holds each hostile record once: original key and value, the right
    // category, where it was read.
    let expected: HashMap<&[u8], &Hostile> =
        records.iter().map(|r| (r.value.as_slice(), r)).collect();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", env("FLOE_KAFKA_BROKERS"))
        .set("group.id", format!("{run}-dlq-check"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()
        .unwrap();
    consumer.subscribe(&[dlq_topic.as_str()]).unwrap();
    let mut by_category: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < 1000 {
        let m = tokio::time::timeout_at(deadline.into(), consumer.recv())
            .await
            .expect("DLQ records missing")
            .unwrap();
        let header = |name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let want = expected
            .get(m.payload().unwrap())
            .expect("a DLQ record that was not sent as hostile");
        let category = header("floe.error.category");
        assert_eq!(category, want.category, "{}", header("floe.error.reason"));
        assert_eq!(m.key(), want.key.as_deref());
        assert_eq!(header("floe.source.topic"), topic);
        assert!(header("floe.source.offset").parse::<i64>().is_ok());
        assert!(!header("floe.error.reason").is_empty());
        assert!(!header("floe.error.stage").is_empty());
        *by_category.entry(category).or_default() += 1;
        seen += 1;
    }
    assert_eq!(
        by_category,
        BTreeMap::from([
            ("kafka".into(), 104),
            ("parse".into(), 256),
            ("transform".into(), 256),
            ("validation".into(), 384),
        ])
    );

    // The fix: a larger message limit. Replay only the oversize dead letters.
    let report = replay_kafka(&config, vec![dlq_topic.clone()]).await;
    assert_eq!(
        (report.read, report.replayed, report.filtered_out),
        (1000, 104, 896),
        "{report:?}"
    );
    config.source.max_message_bytes = 1 << 20;
    let (stop, stats, handle) = spawn_run(config, RunOptions::default());
    let big_sql = format!(
        r#"SELECT COUNT(*), MIN(LENGTH("V")) FROM "{database}"."CDC"."{}" WHERE "ID" >= 100000"#,
        table.to_uppercase()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = query(&sf, &big_sql).await;
        if r[0][0] == "104" {
            assert!(r[0][1].parse::<usize>().unwrap() > 5000, "{r:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replayed records not loaded: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.send(true).unwrap();
    let snap = handle.await.unwrap().expect("second floe run");
    assert_eq!(
        (snap.events_consumed, snap.dead_letters),
        (104, 0),
        "the second run reads only the replayed records: {snap:?}"
    );
}

fn envelope_with_lsn(table: &str, id: u32, v: &str) -> (String, String) {
    (
        format!(r#"{{"id":{id}}}"#),
        format!(
            r#"{{"before":null,"after":{{"id":{id},"v":"{v}"}},"source":{{"schema":"public","table":"{table}","lsn":{}}},"op":"c"}}"#,
            100 + id
        ),
    )
}

async fn produce(topic: &str, records: &[(String, String)]) {
    let producer = producer();
    for (k, v) in records {
        producer
            .send(
                FutureRecord::to(topic).key(k).payload(v),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn letters_too_large_for_the_dlq_are_cut_and_never_replayed() {
    use sha2::Digest;
    let run = unique("bigletter");
    let table = format!("{run}_t");
    let topic = format!("dbz.public.{table}");
    let database = run.to_uppercase();
    // Three 60 KB changes over the 4 KiB message limit, two small ones.
    let big: Vec<(String, String)> = (1..=3)
        .map(|i| envelope_with_lsn(&table, i, &"x".repeat(60_000)))
        .collect();
    let small: Vec<(String, String)> = (4..=5)
        .map(|i| envelope_with_lsn(&table, i, "ok"))
        .collect();
    produce(&topic, &big).await;
    produce(&topic, &small).await;

    let mut config = kafka_config(&database, &run, vec![topic.clone()]);
    config.source.max_message_bytes = 4096;
    config.dlq.max_letter_bytes = 20_000;
    config.batch.max_wait_ms = 300;
    let (stop, stats, handle) = spawn_run(config.clone(), RunOptions::default());
    let deadline = Instant::now() + Duration::from_secs(120);
    while stats.snapshot().dead_letters < 3 || stats.snapshot().commits == 0 {
        assert!(Instant::now() < deadline, "{:?}", stats.snapshot());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.send(true).unwrap();
    let snap = handle.await.unwrap().expect("floe run");
    assert_eq!(
        (snap.dead_letters, snap.dead_letters_cut),
        (3, 3),
        "{snap:?}"
    );

    let letters = crate::support::read_topic(&env("FLOE_KAFKA_BROKERS"), &format!("{topic}.dlq"));
    assert_eq!(letters.len(), 3);
    for l in &letters {
        let header = |name: &str| {
            l.headers()
                .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let size = l.key().map_or(0, <[u8]>::len)
            + l.payload().map_or(0, <[u8]>::len)
            + l.headers().map_or(0, |h| {
                h.iter()
                    .map(|x| x.key.len() + x.value.map_or(0, <[u8]>::len))
                    .sum()
            });
        assert!(size <= 20_000, "letter of {size} bytes");
        assert_eq!(header("floe.cut"), "value");
        assert_eq!(header("floe.error.category"), "kafka");
        let original = big
            .iter()
            .find(|(k, _)| Some(k.as_bytes()) == l.key())
            .map(|(_, v)| v)
            .expect("a letter of a big record");
        assert_eq!(
            header("floe.original.value.bytes"),
            original.len().to_string()
        );
        let digest: String = sha2::Sha256::digest(original.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(header("floe.original.value.sha256"), digest);
        assert!(original.as_bytes().starts_with(l.payload().unwrap()));
    }
    // A cut letter is not the original: replay leaves it alone.
    let report = replay_kafka(&config, Vec::new()).await;
    assert_eq!(
        (report.read, report.cut, report.replayed),
        (3, 3, 0),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn a_topic_pattern_that_matches_dlq_topics_never_consumes_them() {
    let run = unique("pattern");
    let table = format!("{run}_t");
    let prefix = run.replace('_', "x");
    let topic = format!("{prefix}.public.{table}");
    let database = run.to_uppercase();
    let valid: Vec<(String, String)> = (1..=10)
        .map(|i| envelope_with_lsn(&table, i, "v"))
        .collect();
    produce(&topic, &valid).await;
    // Whatever sits in the DLQ topic must never be read as changes.
    let garbage: Vec<(String, String)> = (1..=5)
        .map(|i| (format!(r#"{{"id":{i}}}"#), "not a change".to_owned()))
        .collect();
    produce(&format!("{topic}.dlq"), &garbage).await;

    let mut config = sink_config(&database);
    config.source.kind = SourceKind::Kafka;
    config.source.kafka.brokers = env("FLOE_KAFKA_BROKERS");
    config.source.kafka.group_id = format!("{run}-group");
    config.source.kafka.topic_pattern = format!(r"^{}\..*", prefix);
    config.batch.max_wait_ms = 300;
    let (stop, stats, handle) = spawn_run(config, RunOptions::default());
    let sf = snowflake().await;
    let sql = format!(
        r#"SELECT COUNT(*) FROM "{database}"."CDC"."{}""#,
        table.to_uppercase()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = sf.execute(&sql, &[]).await
            && r.rows.first().and_then(|r| r[0].as_deref()) == Some("10")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", stats.snapshot());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Give a consumer of the DLQ topic time to show itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send(true).unwrap();
    let snap = handle.await.unwrap().expect("floe run");
    assert_eq!(
        (snap.events_consumed, snap.dead_letters),
        (10, 0),
        "{snap:?}"
    );
}
