//! End to end with every real peer: PostgreSQL -> Debezium -> tansu -> floe -> fakesnow.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use floe::RunOptions;
use floe::config::{SchemaRegistryConfig, SourceKind};
use rdkafka::producer::FutureRecord;

use crate::support::{
    Debezium, Rng, env, producer, psql, query, sink_config, snowflake, spawn_run, unique,
};

/// SQL for `changes` mixed inserts/updates/deletes over two tables, in transactions,
/// and the number of Kafka messages Debezium will emit for them (a delete is two: the
/// delete event and its tombstone).
struct Workload {
    sql: String,
    messages: u64,
    inserts: u64,
    updates: u64,
    deletes: u64,
}

fn workload(a: &str, o: &str, changes: u64, seed: u64) -> Workload {
    let mut rng = Rng(seed);
    let mut sql = String::new();
    let (mut ids_a, mut ids_o): (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    let (mut next_a, mut next_o) = (1i64, 1i64);
    let (mut inserts, mut updates, mut deletes) = (0, 0, 0);
    let text = |rng: &mut Rng| -> String {
        match rng.below(6) {
            0 => "NULL".into(),
            1 => "'O''Brien ; -- \"quoted\"'".into(),
            2 => "'ünïcødé ✓'".into(),
            _ => format!("'v{}'", rng.below(1_000_000)),
        }
    };
    for i in 0..changes {
        if i % 25 == 0 {
            if i > 0 {
                sql.push_str("COMMIT;\n");
            }
            sql.push_str("BEGIN;\n");
        }
        let on_a = rng.below(2) == 0;
        let (table, ids, next) = if on_a {
            (a, &mut ids_a, &mut next_a)
        } else {
            (o, &mut ids_o, &mut next_o)
        };
        let roll = rng.below(10);
        if ids.is_empty() || roll < 5 {
            let id = *next;
            *next += 1;
            ids.push(id);
            inserts += 1;
            if on_a {
                sql.push_str(&format!(
                    "INSERT INTO {table} VALUES ({id}, {}, {}, {}.{:02}, {}, {}, TIMESTAMP '2024-01-01 00:00:00' + interval '{} microseconds');\n",
                    text(&mut rng),
                    text(&mut rng),
                    rng.below(100_000) as i64 - 50_000,
                    rng.below(100),
                    rng.below(2) == 0,
                    rng.below(u64::from(u32::MAX)) as i64 * 4096 + 9_007_199_254_740_000,
                    rng.below(10_000_000_000_000),
                ));
            } else {
                sql.push_str(&format!(
                    "INSERT INTO {table} VALUES ({id}, {}, {}.{:02}, {}, {});\n",
                    rng.below(1000),
                    rng.below(10_000),
                    rng.below(100),
                    ["'new'", "'paid'", "'shipped'", "NULL"][rng.below(4) as usize],
                    text(&mut rng),
                ));
            }
        } else if roll < 8 {
            let id = ids[rng.below(ids.len() as u64) as usize];
            updates += 1;
            if on_a {
                sql.push_str(&format!(
                    "UPDATE {table} SET email = {}, balance = balance + 1.25, visits = visits + 1, active = NOT active WHERE id = {id};\n",
                    text(&mut rng)
                ));
            } else {
                sql.push_str(&format!(
                    "UPDATE {table} SET status = {}, note = {} WHERE id = {id};\n",
                    ["'paid'", "'shipped'", "'returned'", "NULL"][rng.below(4) as usize],
                    text(&mut rng)
                ));
            }
        } else {
            let at = rng.below(ids.len() as u64) as usize;
            let id = ids.swap_remove(at);
            deletes += 1;
            sql.push_str(&format!("DELETE FROM {table} WHERE id = {id};\n"));
        }
    }
    sql.push_str("COMMIT;\n");
    Workload {
        sql,
        messages: inserts + updates + 2 * deletes,
        inserts,
        updates,
        deletes,
    }
}

const A_COLS_PG: &str = "id::text, name, email, balance::text, CASE WHEN active THEN 'true' ELSE 'false' END, visits::text, to_char(updated_at, 'YYYY-MM-DD HH24:MI:SS.US')";
const A_COLS_SF: &str = r#""ID", "NAME", "EMAIL", "BALANCE", "ACTIVE", "VISITS", "UPDATED_AT""#;
const O_COLS_PG: &str = "id::text, account_id::text, amount::text, status, note";
const O_COLS_SF: &str = r#""ID", "ACCOUNT_ID", "AMOUNT", "STATUS", "NOTE""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn postgres_debezium_kafka_floe_snowflake() {
    end_to_end(false).await;
}

/// The same through Confluent's AvroConverter and the registry (a forwarder of its own),
/// with a value of a schema id the registry does not know among the bad ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn postgres_debezium_avro_kafka_floe_snowflake() {
    end_to_end(true).await;
}

async fn end_to_end(avro: bool) {
    let run = unique(if avro { "e2eavro" } else { "e2e" });
    let (a, o) = (format!("{run}_accounts"), format!("{run}_orders"));
    let database = run.to_uppercase();
    psql(&format!(
        "CREATE TABLE public.{a} (id int PRIMARY KEY, name text, email text, balance numeric(12,2), active boolean, visits bigint, updated_at timestamp(6));
         CREATE TABLE public.{o} (id bigint PRIMARY KEY, account_id int, amount numeric(12,2), status varchar(20), note text);"
    ));
    let (prefix, _forwarder) = if avro {
        let tables = format!("table.include.list=public.{a},public.{o}");
        let forwarder = Debezium::start(
            &run,
            &["floe.format=avro", "snapshot.mode=no_data", &tables],
        );
        (run.clone(), Some(forwarder))
    } else {
        ("dbz".to_owned(), None)
    };
    let topics = vec![
        format!("{prefix}.public.{a}"),
        format!("{prefix}.public.{o}"),
    ];

    // floe runs while the workload streams in.
    let mut config = sink_config(&database);
    config.source.kind = SourceKind::Kafka;
    config.source.kafka.brokers = env("FLOE_KAFKA_BROKERS");
    config.source.kafka.group_id = format!("{run}-group");
    config.source.kafka.topics = topics.clone();
    config.batch.max_wait_ms = 1000;
    if avro {
        config.source.schema_registry = Some(SchemaRegistryConfig::at(env("FLOE_REGISTRY_URL")));
    }
    let (stop, stats, handle) = spawn_run(config.clone(), RunOptions::default());

    let w = workload(&format!("public.{a}"), &format!("public.{o}"), 5200, 7);
    assert!(w.inserts + w.updates + w.deletes >= 5000);
    let started = Instant::now();
    psql(&w.sql);

    // A payload that is not JSON and an event the default validator rejects (unknown op);
    // on Avro topics also a value of a schema id the registry does not know.
    let producer = producer();
    let mut bad: Vec<(&str, Vec<u8>)> = vec![
        (r#"{"id":999999}"#, b"this is not json {".to_vec()),
        (
            r#"{"id":999998}"#,
            br#"{"op":"x","after":{"id":999998}}"#.to_vec(),
        ),
    ];
    if avro {
        bad.push((r#"{"id":999997}"#, vec![0, 0x7f, 0xff, 0xff, 0xff, 2]));
    }
    for (key, value) in &bad {
        producer
            .send(
                FutureRecord::to(&topics[0]).key(*key).payload(value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let expected_messages = w.messages + bad.len() as u64;

    // Caught up = every message consumed and the target equal to the source.
    let sf = snowflake().await;
    let source_a = psql(&format!(
        "SELECT {A_COLS_PG} FROM public.{a} t ORDER BY t.id"
    ));
    let source_o = psql(&format!(
        "SELECT {O_COLS_PG} FROM public.{o} t ORDER BY t.id"
    ));
    let target = |t: &str, cols: &str| {
        format!(
            r#"SELECT {cols} FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
            t.to_uppercase()
        )
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first_event: Option<Instant> = None;
    loop {
        let snap = stats.snapshot();
        if snap.events_consumed > 0 && first_event.is_none() {
            first_event = Some(Instant::now());
        }
        if snap.events_consumed >= expected_messages && snap.commits > 0 {
            let ta = query(&sf, &target(&a, A_COLS_SF)).await;
            let to = query(&sf, &target(&o, O_COLS_SF)).await;
            if ta.len() == source_a.len() && to.len() == source_o.len() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not caught up after 300 s: {snap:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let caught_up = started.elapsed();
    let streaming = first_event.map_or(caught_up, |t| t.elapsed());
    stop.send(true).unwrap();
    let snap = handle.await.unwrap().expect("floe run");
    eprintln!(
        "e2e: {} changes ({} messages) caught up {:.1} s after the workload started, {:.1} s after floe's first batch arrived (<= {:.0} events/s; polled every 0.5 s); batches {}, avg batch {:.0} ms (wasm {:.0} ms, load {:.0} ms)",
        w.inserts + w.updates + w.deletes,
        expected_messages,
        caught_up.as_secs_f64(),
        streaming.as_secs_f64(),
        expected_messages as f64 / streaming.as_secs_f64().max(0.5),
        snap.batches,
        snap.avg_batch_ms,
        snap.avg_wasm_ms,
        snap.avg_load_ms,
    );
    assert_eq!(snap.events_consumed, expected_messages, "{snap:?}");
    assert_eq!(
        snap.events_rejected,
        bad.len() as u64,
        "not JSON + unknown op (+ unknown schema id): {snap:?}"
    );
    assert_eq!(snap.events_failed, 0, "{snap:?}");
    // A tombstone whose delete ended the previous batch repeats that delete (a second,
    // harmless delete of a gone row); one in the same batch is dropped.
    assert!(
        (w.deletes..=2 * w.deletes).contains(&snap.ops.delete),
        "{} deletes: {snap:?}",
        w.deletes
    );
    assert_eq!(snap.ops.insert, w.inserts);
    assert_eq!(snap.ops.update, w.updates);

    // Every row, every column.
    let ta = query(&sf, &target(&a, A_COLS_SF)).await;
    let to = query(&sf, &target(&o, O_COLS_SF)).await;
    assert_eq!(ta.len(), source_a.len());
    for (s, t) in source_a.iter().zip(&ta) {
        let canon_row = |r: &[String]| {
            r.iter()
                .map(|v| crate::fixtures::canon(v))
                .collect::<Vec<_>>()
        };
        let (s, t) = (canon_row(s), canon_row(t));
        assert_eq!(s, t, "{a}: source vs target");
    }
    assert_eq!(to.len(), source_o.len());
    for (s, t) in source_o.iter().zip(&to) {
        assert_eq!(s, t, "{o}: source vs target");
    }
    let ids: BTreeSet<&String> = ta.iter().map(|r| &r[0]).collect();
    assert!(!ids.contains(&"999999".to_string()) && !ids.contains(&"999998".to_string()));

    // A restart consumes nothing that was committed.
    let options = RunOptions {
        exit_when_idle: Some(Duration::from_secs(15)),
        ..RunOptions::default()
    };
    let (_stop, _stats, handle) = spawn_run(config, options);
    let again = handle.await.unwrap().expect("second run");
    assert_eq!(
        again.events_consumed, 0,
        "restart re-read committed events: {again:?}"
    );
    let ta2 = query(&sf, &target(&a, A_COLS_SF)).await;
    assert_eq!(ta, ta2);
}
