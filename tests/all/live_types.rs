//! Live, with every real peer: a table holding every type the type mapping documents,
//! TOASTed values left unchanged by updates, primary-key updates, a column added
//! mid-stream and a truncate; afterwards the target equals the source value by value
//! through a canonical text form.

use std::time::{Duration, Instant};

use floe::RunOptions;
use floe::config::{SchemaRegistryConfig, SinkKind, SourceKind};
use serde_json::Value;

use crate::fixtures::canon;
use crate::support::{Debezium, env, psql, query, sink_config, snowflake, spawn_run, unique};

/// JSON compares by value: keys sorted, no whitespace.
fn canon_json(v: &str) -> String {
    fn sort(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<(String, Value)> = m.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            Value::Array(a) => Value::Array(a.into_iter().map(sort).collect()),
            other => other,
        }
    }
    match serde_json::from_str::<Value>(v) {
        Ok(parsed) => sort(parsed).to_string(),
        Err(_) => v.to_string(),
    }
}

/// Source columns rendered as the target's canonical text (see docs/type-mapping.md).
const PG_COLS: &str = "t.id::text, t.num12_2::text, t.num_var::text, \
    to_char(t.ts_tz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00', \
    to_char(t.ts, 'YYYY-MM-DD HH24:MI:SS.US'), t.d::text, t.tm::text, t.js::text, \
    t.u::text, encode(t.b, 'hex'), CASE WHEN t.flag THEN 'true' WHEN NOT t.flag THEN 'false' END, \
    array_to_json(t.tags)::text, t.i2::text, t.i8::text, t.f8::text, t.vc, \
    (extract(epoch FROM t.iv) * 1000000)::bigint::text, md5(t.big_text), t.extra";
const SF_COLS: &str = r#""ID", "NUM12_2", "NUM_VAR", "TS_TZ", "TS", "D", "TM", "JS", "U", "B", "FLAG", "TAGS", "I2", "I8", "F8", "VC", "IV", MD5("BIG_TEXT"), "EXTRA""#;
/// Indexes of JSON-valued columns (jsonb, text[]).
const JSON_COLS: [usize; 2] = [7, 11];
/// Index of the unconstrained numeric (exact decimal text: `1.50` and `1.5` are equal).
const NUM_VAR: usize = 2;

fn canon_rows(rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .enumerate()
                .map(|(i, v)| {
                    if JSON_COLS.contains(&i) {
                        canon_json(&v)
                    } else if i == NUM_VAR && v.contains('.') {
                        v.trim_end_matches('0').trim_end_matches('.').to_string()
                    } else {
                        canon(&v)
                    }
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn every_type_toast_pk_update_new_column_and_truncate_land_exactly() {
    every_type_lands(Converter::Json).await;
    debezium_metadata_topics_are_skipped().await;
}

/// The same workload through Confluent's AvroConverter and the registry: a forwarder of
/// its own (`floe.format=avro`); the added column gives the table a new schema id
/// mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn every_type_lands_exactly_through_avro_and_the_schema_registry() {
    every_type_lands(Converter::Avro).await;
}

/// How Debezium serialised the changes.
#[derive(Clone, Copy, PartialEq)]
enum Converter {
    /// The stack's own Debezium: JsonConverter with schemas, topics `dbz.*`.
    Json,
    /// A forwarder with the AvroConverter, topics `<run>.*`.
    Avro,
}

async fn every_type_lands(converter: Converter) {
    let run = unique(if converter == Converter::Avro {
        "avro"
    } else {
        "live"
    });
    let (t, tr) = (format!("{run}_types"), format!("{run}_trunc"));
    let database = run.to_uppercase();
    psql(&format!(
        "CREATE TABLE public.{t} (id int PRIMARY KEY, num12_2 numeric(12,2), num_var numeric, ts_tz timestamptz,
            ts timestamp, d date, tm time, js jsonb, u uuid, b bytea, flag boolean, tags text[], i2 smallint,
            i8 bigint, f8 double precision, vc varchar(20), iv interval, big_text text);
         CREATE TABLE public.{tr} (id int PRIMARY KEY, v text);"
    ));
    let mut config = sink_config(&database);
    config.source.kind = SourceKind::Kafka;
    config.source.kafka.brokers = env("FLOE_KAFKA_BROKERS");
    config.source.kafka.group_id = format!("{run}-group");
    let (prefix, _forwarder) = match converter {
        Converter::Json => ("dbz".to_owned(), None),
        Converter::Avro => {
            let table_list = format!("table.include.list=public.{t},public.{tr}");
            let forwarder = Debezium::start(
                &run,
                &["floe.format=avro", "snapshot.mode=no_data", &table_list],
            );
            config.source.schema_registry =
                Some(SchemaRegistryConfig::at(env("FLOE_REGISTRY_URL")));
            (run.clone(), Some(forwarder))
        }
    };
    config.source.kafka.topics = vec![
        format!("{prefix}.public.{t}"),
        format!("{prefix}.public.{tr}"),
    ];
    config.batch.max_wait_ms = 500;
    let (stop, stats, handle) = spawn_run(config, RunOptions::default());

    // Rows with every type (and every type NULL), a 10 kB incompressible TOASTed text.
    let big = "(SELECT string_agg(md5(i::text || '{run}'), '') FROM generate_series(1, 320) i)";
    psql(&format!(
        "INSERT INTO public.{t} VALUES
           (1, 12345.67, 3.14159265358979, '2024-03-15 10:20:30.123456+02', '2024-03-15 10:20:30.123456', '2024-03-15',
            '13:45:00.5', '{{\"a\": 1, \"b\": [true, null, \"x\"], \"n\": {{\"k\": \"v\"}}}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            '\\xdeadbeef00ff', true, ARRAY['red', 'with,comma', 'with \"quote\"'], 32767, 9007199254740993, 3.141592653589793,
            'hello', '1 day 02:03:04', {big}),
           (2, -0.50, 1.50, '1969-12-31 23:59:59.999999+00', '1969-12-31 23:59:59', '1969-12-31', '00:00:00', '[]', NULL,
            '\\x', false, ARRAY[]::text[], -32768, -9223372036854775807, -1.5e-300, 'ünïcødé ✓', '-3 hours', 'short'),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
         INSERT INTO public.{tr} VALUES (1, 'a'), (2, 'b');"
    ));
    // Phase 1 lands first, so phase 2's placeholders and new column meet an existing table.
    let sf = snowflake().await;
    let count_sql = format!(
        r#"SELECT COUNT(*) FROM "{database}"."CDC"."{}""#,
        t.to_uppercase()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = sf.execute(&count_sql, &[]).await
            && r.rows.first().and_then(|r| r[0].as_deref()) == Some("3")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "phase 1 not loaded: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Updates that leave the TOASTed text untouched (Debezium sends a placeholder for it),
    // one in its own transaction and one right behind another change of the same row.
    psql(&format!(
        "UPDATE public.{t} SET flag = NOT flag, num12_2 = num12_2 + 1 WHERE id IN (1, 2);
         BEGIN; UPDATE public.{t} SET vc = 'second' WHERE id = 1; UPDATE public.{t} SET i2 = 7 WHERE id = 1; COMMIT;
         UPDATE public.{t} SET id = 20 WHERE id = 2;
         TRUNCATE public.{tr};
         INSERT INTO public.{tr} VALUES (3, 'after truncate');
         ALTER TABLE public.{t} ADD COLUMN extra text;
         INSERT INTO public.{t} (id, vc, extra, big_text) VALUES (4, 'new col', 'x', 'short');
         UPDATE public.{t} SET extra = 'y', f8 = 0.1 WHERE id = 1;
         DELETE FROM public.{t} WHERE id = 3;"
    ));

    let source = canon_rows(psql(&format!(
        "SELECT {PG_COLS} FROM public.{t} t ORDER BY t.id"
    )));
    let source_tr = psql(&format!("SELECT id::text, v FROM public.{tr} ORDER BY id"));
    let target_sql = format!(
        r#"SELECT {SF_COLS} FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
        t.to_uppercase()
    );
    let target_tr_sql = format!(
        r#"SELECT "ID", "V" FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
        tr.to_uppercase()
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut target, mut target_tr) = (Vec::new(), Vec::new());
    while Instant::now() < deadline {
        let snap = stats.snapshot();
        if snap.columns_added >= 1
            && snap.tables_truncated >= 1
            && let (Ok(a), Ok(b)) = (
                sf.execute(&target_sql, &[]).await,
                sf.execute(&target_tr_sql, &[]).await,
            )
        {
            let text = |rows: Vec<Vec<Option<String>>>| -> Vec<Vec<String>> {
                rows.into_iter()
                    .map(|r| {
                        r.into_iter()
                            .map(|v| v.unwrap_or_else(|| "<NULL>".into()))
                            .collect()
                    })
                    .collect()
            };
            target = canon_rows(text(a.rows));
            target_tr = text(b.rows);
            if target == source && target_tr == source_tr {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.send(true).unwrap();
    let snap = handle.await.unwrap().expect("floe run");
    assert_eq!(
        (snap.events_rejected, snap.events_failed),
        (0, 0),
        "{snap:?}"
    );
    assert_eq!(source.len(), 3, "rows 1, 4, 20 remain at the source");
    for (s, t) in source.iter().zip(&target) {
        assert_eq!(s, t, "source vs target, row by row");
    }
    assert_eq!(target.len(), source.len(), "{target:?}");
    assert_eq!(target_tr, source_tr, "truncate then insert");
    assert!(snap.tables_truncated >= 1, "{snap:?}");
    assert_eq!(snap.columns_added, 1, "{snap:?}");
    // (Row 2's text is short on purpose: with REPLICA IDENTITY DEFAULT a primary-key update
    // carries no value for an unchanged TOASTed column, so nothing can land it; see
    // docs/type-mapping.md.)
    // The row inserted before the new column existed keeps NULL there; the old key of the
    // primary-key update is gone.
    let ids = query(
        &sf,
        &format!(
            r#"SELECT "ID" FROM "{database}"."CDC"."{}" ORDER BY 1"#,
            t.to_uppercase()
        ),
    )
    .await;
    assert_eq!(
        ids,
        vec![vec!["1".to_string()], vec!["4".into()], vec!["20".into()]]
    );
    assert_eq!(snap.dead_letters, 0, "{snap:?}");
}

async fn debezium_metadata_topics_are_skipped() {
    let run = unique("meta");
    let database = run.to_uppercase();
    // Debezium's transaction metadata and heartbeats (the dev stack turns both on,
    // dev/env.sh): a run that reads only those topics consumes them all and skips them
    // all; nothing is rejected, failed or loaded.
    let mut meta = sink_config(&database);
    meta.sink.kind = SinkKind::None;
    meta.source.kind = SourceKind::Kafka;
    meta.source.kafka.brokers = env("FLOE_KAFKA_BROKERS");
    meta.source.kafka.group_id = format!("{run}-meta");
    meta.source.kafka.topic_pattern = r"^(dbz\.transaction|__debezium-heartbeat\.dbz)$".into();
    // Heartbeats keep coming, so the run never idles: stop it once it has caught up.
    let (stop, stats, handle) = spawn_run(meta, RunOptions::default());
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = (0, Instant::now());
    loop {
        let snap = stats.snapshot();
        if snap.events_consumed != last.0 {
            last = (snap.events_consumed, Instant::now());
        } else if snap.events_consumed >= 4 && last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metadata topics not consumed: {snap:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.send(true).unwrap();
    let snap = handle
        .await
        .unwrap()
        .expect("floe run over metadata topics");
    // At least this test's own transactions (BEGIN + END each).
    assert!(snap.events_consumed >= 4, "{snap:?}");
    assert_eq!(snap.events_skipped, snap.events_consumed, "{snap:?}");
    assert_eq!(
        (
            snap.events_rejected,
            snap.events_failed,
            snap.rows_transformed
        ),
        (0, 0, 0),
        "{snap:?}"
    );
}
