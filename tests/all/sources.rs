//! Unusual sources, live (PostgreSQL -> real Debezium -> broker -> floe -> emulator):
//! tables of the same name in two schemas and two captured databases keep their own
//! targets, a second source for one target is refused rather than mixed in, and tables
//! whose columns are named `op`, `source`, `payload`, `before`, `after` (and `__deleted`)
//! load value by value through the envelope and every ExtractNewRecordState variant, as
//! JSON and as Avro (Confluent's AvroConverter and the registry).
//!
//! Each test starts the Debezium forwarders it needs beside the stack's own
//! (`dev/stack.sh debezium-exec`), with their own slot and topic prefix.

use std::time::Duration;

use floe::RunOptions;
use floe::config::{DeleteHandling, DlqKind, FormatConfig, SchemaRegistryConfig, TopicFormat};

use crate::support::{
    Debezium, env, kafka_config, psql, read_topic, snowflake, spawn_run, unique, wait_for_rows,
};

/// Rows of a PostgreSQL table, ordered by its integer `id` (not by the text it is
/// selected as).
fn rows_of(table: &str, cols: &str) -> Vec<Vec<String>> {
    psql(&format!("SELECT {cols} FROM {table} src ORDER BY src.id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn same_table_names_in_two_schemas_and_two_databases_keep_apart() {
    let run = unique("twin");
    let t = format!("{run}_orders");
    let database = run.to_uppercase();
    psql(&format!(
        "CREATE SCHEMA IF NOT EXISTS archive;
         CREATE TABLE public.{t} (id int PRIMARY KEY, v text);
         CREATE TABLE archive.{t} (id int PRIMARY KEY, v text, extra int);"
    ));
    // A second connector (another topic prefix: what a second captured database is to
    // floe) that also captures the `archive` schema.
    let second = Debezium::start(
        &run,
        &[
            "schema.include.list=public,archive",
            "snapshot.mode=no_data",
        ],
    );
    let topics = vec![
        format!("dbz.public.{t}"),
        format!("{run}.public.{t}"),
        format!("{run}.archive.{t}"),
    ];
    let mut config = kafka_config(&database, &run, topics.clone());
    config.sink.snowflake.table_name = "{topic}".into(); // the default
    let (stop, _stats, handle) = spawn_run(config, RunOptions::default());

    psql(&format!(
        "INSERT INTO public.{t} SELECT i, 'public ' || i FROM generate_series(1, 60) i;
         INSERT INTO archive.{t} SELECT i, 'archive ' || i, i * 10 FROM generate_series(1, 40) i;
         UPDATE public.{t} SET v = v || ' updated' WHERE id % 3 = 0;
         UPDATE archive.{t} SET extra = -extra WHERE id % 4 = 0;
         DELETE FROM public.{t} WHERE id % 5 = 0;
         DELETE FROM archive.{t} WHERE id % 7 = 0;
         TRUNCATE archive.{t};
         INSERT INTO archive.{t} VALUES (1000, 'after truncate', 1);"
    ));
    let sf = snowflake().await;
    let public = rows_of(&format!("public.{t}"), "id::text, v");
    let archive = rows_of(&format!("archive.{t}"), "id::text, v, extra::text");
    let target = |prefix: &str, schema: &str, cols: &str| {
        format!(
            r#"SELECT {cols} FROM "{database}"."CDC"."{}_{}_{}" ORDER BY "ID""#,
            prefix.to_uppercase(),
            schema.to_uppercase(),
            t.to_uppercase()
        )
    };
    let got = wait_for_rows(&sf, &target("dbz", "public", r#""ID", "V""#), &public, 120).await;
    assert_eq!(got, public, "dbz.public -> DBZ_PUBLIC_*");
    let got = wait_for_rows(&sf, &target(&run, "public", r#""ID", "V""#), &public, 120).await;
    assert_eq!(
        got, public,
        "the second database's public table: its own target"
    );
    let got = wait_for_rows(
        &sf,
        &target(&run, "archive", r#""ID", "V", "EXTRA""#),
        &archive,
        120,
    )
    .await;
    assert_eq!(
        got, archive,
        "archive's truncate emptied archive's target only"
    );
    stop.send(true).unwrap();
    let snap = handle.await.unwrap().expect("floe run");
    assert_eq!(snap.dead_letters, 0, "{snap:?}");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn a_second_source_for_one_target_goes_to_the_dlq_not_into_the_table() {
    let run = unique("clash");
    let t = format!("{run}_items");
    let database = run.to_uppercase();
    psql(&format!(
        "CREATE SCHEMA IF NOT EXISTS archive;
         CREATE TABLE public.{t} (id int PRIMARY KEY, v text);
         CREATE TABLE archive.{t} (id int PRIMARY KEY, v text);"
    ));
    let second = Debezium::start(
        &run,
        &[
            "schema.include.list=public,archive",
            "snapshot.mode=no_data",
        ],
    );
    let topics = vec![format!("{run}.public.{t}"), format!("{run}.archive.{t}")];
    let mut config = kafka_config(&database, &run, topics);
    // `{table}`: both schemas' tables map to one target.
    config.sink.snowflake.table_name = "{table}".into();
    config.dlq.kind = DlqKind::Kafka;
    let (stop, stats, handle) = spawn_run(config, RunOptions::default());

    // public's rows land first: public owns the target.
    psql(&format!(
        "INSERT INTO public.{t} SELECT i, 'public ' || i FROM generate_series(1, 30) i;"
    ));
    let sf = snowflake().await;
    let sql = format!(
        r#"SELECT "ID", "V" FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
        t.to_uppercase()
    );
    let public = rows_of(&format!("public.{t}"), "id::text, v");
    assert_eq!(wait_for_rows(&sf, &sql, &public, 120).await, public);
    // Then archive's: same ids, other values, a truncate. None of it may touch the target.
    psql(&format!(
        "INSERT INTO archive.{t} SELECT i, 'archive ' || i FROM generate_series(1, 20) i;
         DELETE FROM archive.{t} WHERE id <= 5;
         TRUNCATE archive.{t};
         UPDATE public.{t} SET v = 'public again' WHERE id = 1;"
    ));
    let public = rows_of(&format!("public.{t}"), "id::text, v");
    assert_eq!(wait_for_rows(&sf, &sql, &public, 120).await, public);
    // 20 inserts + 5 deletes + 1 truncate (+ a delete's tombstone when it lands in
    // another batch than its delete: then it is a delete of its own).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stats.snapshot().dead_letters < 26 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    let snap = handle.await.unwrap().expect("floe run");
    assert!((26..=31).contains(&snap.dead_letters), "{snap:?}");
    let letters = read_topic(
        &env("FLOE_KAFKA_BROKERS"),
        &format!("{run}.archive.{t}.dlq"),
    );
    assert_eq!(letters.len() as u64, snap.dead_letters);
    for l in &letters {
        use rdkafka::message::{Headers, Message as _};
        let h = l.headers().unwrap();
        let get = |k: &str| {
            h.iter()
                .find(|x| x.key == k)
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        assert_eq!(get("floe.error.category"), "schema");
        let reason = get("floe.error.reason");
        assert!(
            reason.contains(&format!("archive.{t}")) && reason.contains(&format!("public.{t}")),
            "{reason}"
        );
    }
    assert_eq!(public.len(), 30, "the target holds public's rows only");
    drop(second);
}

/// Columns named like the envelope's fields, in a table captured through `format`.
struct Variant {
    name: &'static str,
    debezium: Vec<&'static str>,
    format: Option<FormatConfig>,
    /// Whether the table also has a `__deleted` column (impossible where the SMT adds
    /// its own `__deleted`, and read as the SMT's flag when the format is not configured).
    deleted_column: bool,
}

fn variants() -> Vec<Variant> {
    let unwrap = [
        "transforms=unwrap",
        "transforms.unwrap.type=io.debezium.transforms.ExtractNewRecordState",
    ];
    let schemas = |on: bool| {
        if on {
            [
                "converter.schemas.enable=true",
                "key.converter.schemas.enable=true",
                "value.converter.schemas.enable=true",
            ]
        } else {
            [
                "converter.schemas.enable=false",
                "key.converter.schemas.enable=false",
                "value.converter.schemas.enable=false",
            ]
        }
    };
    let configured = |add: &[&str], deletes| FormatConfig {
        topics: ".*".into(),
        format: TopicFormat::Unwrap,
        add_fields: add.iter().map(|s| s.to_string()).collect(),
        add_fields_prefix: "__".into(),
        delete_handling: deletes,
    };
    // The SMT adding metadata and rewriting deletes, and floe told so.
    let rewrite = [
        "transforms.unwrap.add.fields=op,table,lsn,source.ts_ms",
        "transforms.unwrap.delete.tombstone.handling.mode=rewrite-with-tombstone",
    ];
    let rewrite_format = || {
        configured(
            &["op", "table", "lsn", "source.ts_ms"],
            DeleteHandling::RewriteWithTombstone,
        )
    };
    vec![
        Variant {
            name: "envelope",
            debezium: schemas(true).to_vec(),
            format: None,
            deleted_column: true,
        },
        Variant {
            name: "envelope_noschemas",
            debezium: schemas(false).to_vec(),
            format: None,
            deleted_column: true,
        },
        Variant {
            name: "unwrap_default_configured",
            debezium: [&unwrap[..], &schemas(false)].concat(),
            format: Some(configured(&[], DeleteHandling::Tombstone)),
            deleted_column: true,
        },
        Variant {
            name: "unwrap_rewrite_configured",
            debezium: [&unwrap[..], &schemas(true), &rewrite].concat(),
            format: Some(rewrite_format()),
            deleted_column: false,
        },
        Variant {
            name: "unwrap_default_auto",
            debezium: [&unwrap[..], &schemas(true)].concat(),
            format: None,
            deleted_column: false,
        },
        // Confluent's AvroConverter and the registry: the envelope, and the SMT over it.
        Variant {
            name: "avro_envelope",
            debezium: vec!["floe.format=avro"],
            format: None,
            deleted_column: true,
        },
        Variant {
            name: "avro_unwrap_rewrite_configured",
            debezium: [&unwrap[..], &["floe.format=avro"], &rewrite].concat(),
            format: Some(rewrite_format()),
            deleted_column: false,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn columns_named_like_envelope_fields_load_in_every_format() {
    let sf = snowflake().await;
    for v in variants() {
        let run = unique(&format!("cols_{}", v.name));
        let t = format!("{run}_t");
        let database = run.to_uppercase();
        let deleted = if v.deleted_column {
            ", __deleted boolean"
        } else {
            ""
        };
        psql(&format!(
            "CREATE TABLE public.{t} (id int PRIMARY KEY, op text, source text, payload text,
                                       before text, after text{deleted});"
        ));
        let mut settings = vec!["snapshot.mode=no_data"];
        settings.extend(v.debezium.iter().copied());
        let table_filter = format!("table.include.list=public.{t}");
        settings.push(&table_filter);
        let dbz = Debezium::start(&run, &settings);
        let mut config = kafka_config(&database, &run, vec![format!("{run}.public.{t}")]);
        config.source.formats = v.format.iter().cloned().collect();
        if v.debezium.contains(&"floe.format=avro") {
            config.source.schema_registry =
                Some(SchemaRegistryConfig::at(env("FLOE_REGISTRY_URL")));
        }
        let (stop, _stats, handle) = spawn_run(config, RunOptions::default());

        let flag = if v.deleted_column {
            ", (i % 2 = 0)"
        } else {
            ""
        };
        psql(&format!(
            "INSERT INTO public.{t} SELECT i, CASE WHEN i % 3 = 0 THEN 't' ELSE 'd' END, 'web',
                CASE WHEN i % 2 = 0 THEN NULL ELSE 'p' END, 'b' || i, 'a' || i{flag}
             FROM generate_series(1, 40) i;
             UPDATE public.{t} SET op = 'u', payload = NULL WHERE id % 4 = 0;
             DELETE FROM public.{t} WHERE id % 5 = 0;"
        ));
        let deleted_col = if v.deleted_column {
            ", __deleted::text"
        } else {
            ""
        };
        let source = rows_of(
            &format!("public.{t}"),
            &format!("id::text, op, source, payload, before, after{deleted_col}"),
        );
        let sf_deleted = if v.deleted_column {
            r#", CASE WHEN "__DELETED" THEN 'true' WHEN NOT "__DELETED" THEN 'false' END"#
        } else {
            ""
        };
        let sql = format!(
            r#"SELECT "ID", "OP", "SOURCE", "PAYLOAD", "BEFORE", "AFTER"{sf_deleted}
               FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
            t.to_uppercase()
        );
        let got = wait_for_rows(&sf, &sql, &source, 120).await;
        assert_eq!(got, source, "variant {}", v.name);
        stop.send(true).unwrap();
        let snap = handle.await.unwrap().expect("floe run");
        assert_eq!(snap.dead_letters, 0, "variant {}: {snap:?}", v.name);
        drop(dbz);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn odd_values_cost_only_their_own_rows() {
    let run = unique("odd");
    let t = format!("{run}_vals");
    let database = run.to_uppercase();
    psql(&format!(
        "CREATE TABLE public.{t} (id int PRIMARY KEY, n50 numeric(50,2), nv numeric, ts timestamptz,
            tsn timestamp, d date, f float8, r real, j json, jb jsonb);"
    ));
    let dbz = Debezium::start(
        &run,
        &[
            "snapshot.mode=no_data",
            &format!("table.include.list=public.{t}"),
        ],
    );
    let dir = std::env::temp_dir().join(format!("floe-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let dlq = dir.join("dlq.jsonl");
    let mut config = kafka_config(&database, &run, vec![format!("{run}.public.{t}")]);
    config.dlq.kind = DlqKind::File;
    config.dlq.path = dlq.clone();
    let (stop, stats, handle) = spawn_run(config, RunOptions::default());
    // Real Debezium encodings: a 45-digit numeric(50,2), a 50-digit unconstrained numeric,
    // PostgreSQL's infinities, special floats, a json value that repeats a key, NaN
    // numerics (which Debezium itself sends as NULL) and a tiny numeric.
    psql(&format!(
        r#"INSERT INTO public.{t} VALUES (1, 123456789012345678901234567890123456789012345.67,
              12345678901234567890123456789012345678901234567890.123, '2024-03-15 10:20:30+00',
              '2024-03-15 10:20:30', '2024-03-15', 1.5, 2.5, '{{"a":1}}', '{{"b":2}}');
           INSERT INTO public.{t} (id, ts) VALUES (2, 'infinity'), (3, '-infinity');
           INSERT INTO public.{t} (id, tsn) VALUES (4, 'infinity');
           INSERT INTO public.{t} (id, d) VALUES (5, 'infinity');
           INSERT INTO public.{t} (id, f, r) VALUES (6, 'NaN', 'NaN'), (7, 'Infinity', '-Infinity');
           INSERT INTO public.{t} (id, nv) VALUES (8, 'NaN');
           INSERT INTO public.{t} (id, n50) VALUES (9, 'NaN');
           INSERT INTO public.{t} (id, j) VALUES (10, '{{"a":1,"a":2}}');
           INSERT INTO public.{t} (id, nv) VALUES (11, 1e-300);"#
    ));
    let sf = snowflake().await;
    let sql = format!(
        r#"SELECT "ID", "N50", "NV", LOWER("F"::VARCHAR), LOWER("R"::VARCHAR), "J"::VARCHAR
           FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
        t.to_uppercase()
    );
    let tiny = format!("0.{}1", "0".repeat(299));
    let null = || "<NULL>".to_string();
    let s = |v: &str| v.to_string();
    let want = vec![
        vec![
            s("1"),
            s("123456789012345678901234567890123456789012345.67"),
            s("12345678901234567890123456789012345678901234567890.123"),
            s("1.5"),
            s("2.5"),
            s(r#"{"a":1}"#),
        ],
        vec![s("6"), null(), null(), s("nan"), s("nan"), null()],
        vec![s("7"), null(), null(), s("inf"), s("-inf"), null()],
        vec![s("8"), null(), null(), null(), null(), null()],
        vec![s("9"), null(), null(), null(), null(), null()],
        vec![s("11"), null(), tiny, null(), null(), null()],
    ];
    let got = wait_for_rows(&sf, &sql, &want, 120).await;
    assert_eq!(got, want);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stats.snapshot().dead_letters < 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.send(true).unwrap();
    let snap = handle.await.unwrap().expect("floe run");
    assert_eq!((snap.dead_letters, snap.events_failed), (5, 5), "{snap:?}");
    // Each dead letter names its column.
    let text = std::fs::read_to_string(&dlq).unwrap();
    let mut columns: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let reason = v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["key"] == "floe.error.reason")
                .unwrap()["value"]
                .as_str()
                .unwrap()
                .to_owned();
            reason
                .split("column '")
                .nth(1)
                .and_then(|r| r.split('\'').next())
                .unwrap_or(&reason)
                .to_owned()
        })
        .collect();
    columns.sort();
    assert_eq!(columns, ["d", "j", "ts", "ts", "tsn"]);
    drop(dbz);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn a_primary_key_update_keeps_an_unchanged_toasted_value() {
    let run = unique("pkmove");
    let t = format!("{run}_docs");
    let database = run.to_uppercase();
    // REPLICA IDENTITY DEFAULT (PostgreSQL's default): an update that leaves `body`
    // untouched logs no value for it, and Debezium sends a placeholder.
    psql(&format!(
        "CREATE TABLE public.{t} (id int PRIMARY KEY, body text, v text);"
    ));
    let dbz = Debezium::start(
        &run,
        &[
            "snapshot.mode=no_data",
            &format!("table.include.list=public.{t}"),
        ],
    );
    let mut config = kafka_config(&database, &run, vec![format!("{run}.public.{t}")]);
    config.batch.max_wait_ms = 1000;
    let (stop, _stats, handle) = spawn_run(config, RunOptions::default());
    // 20 kB of incompressible text per row: stored out of line (TOASTed).
    let big = format!(
        "(SELECT string_agg(md5(i::text || '{run}' || n::text), '') FROM generate_series(1, 640) i)"
    );
    psql(&format!(
        "INSERT INTO public.{t} SELECT n, {big}, 'v' || n FROM generate_series(1, 3) n;"
    ));
    let sf = snowflake().await;
    let sql = format!(
        r#"SELECT "ID", MD5("BODY"), "V" FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
        t.to_uppercase()
    );
    let source = || rows_of(&format!("public.{t}"), "id::text, md5(body), v");
    let first = source();
    assert_eq!(wait_for_rows(&sf, &sql, &first, 120).await, first);
    // Move two rows to new keys without touching `body` (one also changes `v`).
    psql(&format!(
        "UPDATE public.{t} SET id = 10 WHERE id = 1;
         UPDATE public.{t} SET id = 20, v = 'moved' WHERE id = 2;"
    ));
    let moved = source();
    assert_eq!(moved.len(), 3);
    let got = wait_for_rows(&sf, &sql, &moved, 120).await;
    assert_eq!(got, moved, "the moved rows keep their bodies");
    stop.send(true).unwrap();
    let snap = handle.await.unwrap().expect("floe run");
    assert_eq!(snap.dead_letters, 0, "{snap:?}");
    drop(dbz);
}
