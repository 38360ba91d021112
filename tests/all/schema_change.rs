//! Column type changes at the source (Debezium with schemas): a `numeric` whose precision
//! grows widens the target column in place and its values land exactly; a change the
//! target column cannot hold (a boolean that became an integer) refuses only that
//! table's rows of the batch, reported as failed with category `schema`, while the other
//! tables of the batch load and the pipeline goes on; a value the warehouse cannot
//! convert does the same with category `warehouse`.

use std::sync::Arc;

use base64::Engine as _;
use floe::Stats;
use floe::components::Components;
use floe::config::ComponentsConfig;
use floe::pipeline::Pipeline;
use floe::sinks::snowflake::SnowflakeSink;
use floe::sources::file::FileSource;
use floe::sources::{Message, SourceBatch};
use serde_json::{Value, json};

use crate::support::{pipeline_settings, query, sink_config, snowflake, unique};

/// Connect's Decimal: base64 of the big-endian two's-complement unscaled value.
fn decimal(unscaled: i128) -> String {
    let bytes = unscaled.to_be_bytes();
    let skip = bytes
        .windows(2)
        .take_while(|w| (w[0] == 0 && w[1] < 0x80) || (w[0] == 0xff && w[1] >= 0x80))
        .count();
    base64::engine::general_purpose::STANDARD.encode(&bytes[skip..])
}

/// One with-schemas Debezium insert into `table`: `n` numeric(precision, 2) and `flag`
/// of Connect type `flag_type`.
fn insert(
    table: &str,
    id: i64,
    n: i128,
    precision: u32,
    flag: Value,
    flag_type: &str,
    lsn: i64,
) -> Message {
    let row_schema = json!({"type": "struct", "optional": true, "name": format!("dbz.public.{table}.Value"), "fields": [
        {"type": "int32", "optional": false, "field": "id"},
        {"type": "bytes", "optional": true, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
         "parameters": {"scale": "2", "connect.decimal.precision": precision.to_string()}, "field": "n"},
        {"type": flag_type, "optional": true, "field": "flag"},
    ]});
    let mut before = row_schema.clone();
    before["field"] = "before".into();
    let mut after = row_schema;
    after["field"] = "after".into();
    let value = json!({
        "schema": {"type": "struct", "optional": false, "name": format!("dbz.public.{table}.Envelope"), "fields": [
            before, after,
            {"type": "struct", "optional": false, "field": "source", "fields": [
                {"type": "string", "optional": false, "field": "schema"},
                {"type": "string", "optional": false, "field": "table"},
                {"type": "int64", "optional": true, "field": "lsn"}]},
            {"type": "string", "optional": false, "field": "op"}]},
        "payload": {"before": null, "after": {"id": id, "n": decimal(n), "flag": flag},
                    "source": {"schema": "public", "table": table, "lsn": lsn}, "op": "c"},
    });
    let key = json!({"schema": {"type": "struct", "optional": false, "fields": [
        {"type": "int32", "optional": false, "field": "id"}]}, "payload": {"id": id}});
    Message {
        topic: format!("dbz.public.{table}").into(),
        partition: 0,
        offset: lsn,
        timestamp_ms: None,
        key: Some(key.to_string().into_bytes()),
        value: Some(value.to_string().into_bytes()),
        headers: Vec::new(),
    }
}

/// [`insert`] with `n` turned into a Connect string holding `text`.
fn insert_text_n(table: &str, id: i64, text: &str, lsn: i64) -> Message {
    let mut m = insert(table, id, 0, 12, json!(true), "boolean", lsn);
    let mut v: Value = serde_json::from_slice(m.value.as_deref().unwrap()).unwrap();
    for side in 0..2 {
        v["schema"]["fields"][side]["fields"][1] =
            json!({"type": "string", "optional": true, "field": "n"});
    }
    v["payload"]["after"]["n"] = text.into();
    m.value = Some(v.to_string().into_bytes());
    m
}

fn batch(messages: Vec<Message>) -> SourceBatch {
    let mut b = SourceBatch::default();
    for m in messages {
        b.push(m);
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake emulator: make test"]
async fn widening_lands_and_incompatible_changes_refuse_only_their_table() {
    assert_eq!(decimal(1234), "BNI=");
    assert_eq!(decimal(-50), "zg==");
    let database = unique("SCHEMA_CHANGE").to_uppercase();
    let config = sink_config(&database);
    let sink = SnowflakeSink::connect(&config.sink.snowflake)
        .await
        .unwrap();
    let components = Arc::new(Components::load(&ComponentsConfig::default()).unwrap());
    let stats = Stats::new();
    let mut pipeline = Pipeline::new(
        FileSource::from_messages(Vec::new()),
        sink,
        components,
        pipeline_settings(&config, 2),
        stats.clone(),
    );
    let sf = snowflake().await;
    let rows = |table: &str| {
        format!(r#"SELECT "ID", "N", "FLAG" FROM "{database}"."CDC"."{table}" ORDER BY "ID""#)
    };
    let n_type = format!(
        "SELECT DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE FROM \"{database}\".INFORMATION_SCHEMA.COLUMNS \
         WHERE TABLE_NAME = 'WIDEN' AND COLUMN_NAME = 'N'"
    );

    // numeric(12,2) creates NUMBER(12,2).
    let b = batch(vec![insert(
        "widen",
        1,
        1234,
        12,
        json!(true),
        "boolean",
        100,
    )]);
    pipeline.process(b).await.unwrap();
    assert_eq!(query(&sf, &n_type).await, [["NUMBER", "12", "2"]]);

    // ALTER COLUMN n TYPE numeric(16,2) at the source: widened, the 16-digit value exact.
    let b = batch(vec![insert(
        "widen",
        2,
        1_234_567_890_123_456,
        16,
        json!(false),
        "boolean",
        200,
    )]);
    pipeline.process(b).await.unwrap();
    assert_eq!(query(&sf, &n_type).await, [["NUMBER", "16", "2"]]);
    assert_eq!(
        query(&sf, &rows("WIDEN")).await,
        [["1", "12.34", "true"], ["2", "12345678901234.56", "false"]]
    );
    assert_eq!(stats.snapshot().columns_widened, 1);

    // flag became an integer: WIDEN's rows of this batch are refused, OTHER's load.
    let b = batch(vec![
        insert("widen", 3, 100, 16, json!(1), "int32", 300),
        insert("other", 1, 700, 12, json!(true), "boolean", 301),
    ]);
    pipeline.process(b).await.unwrap();
    let s = stats.snapshot();
    assert_eq!((s.events_failed, s.commits), (1, 3), "{s:?}");
    assert_eq!(query(&sf, &rows("OTHER")).await, [["1", "7.00", "true"]]);
    assert_eq!(query(&sf, &rows("WIDEN")).await.len(), 2);

    // The pipeline goes on: the next compatible change of the table loads.
    let b = batch(vec![insert("widen", 4, 5, 16, json!(true), "boolean", 400)]);
    pipeline.process(b).await.unwrap();
    assert_eq!(
        query(&sf, &rows("WIDEN")).await,
        [
            ["1", "12.34", "true"],
            ["2", "12345678901234.56", "false"],
            ["4", "0.05", "true"]
        ]
    );
    let s = stats.snapshot();
    assert_eq!((s.events_failed, s.columns_widened), (1, 1), "{s:?}");

    // Text into the NUMBER column passes the type check (text may hold numbers) but
    // this value does not convert: the warehouse's data error refuses WIDEN's rows of the
    // batch (category `warehouse`), OTHER's load, the run goes on.
    let b = batch(vec![
        insert_text_n("widen", 5, "not a number", 500),
        insert("other", 2, 800, 12, json!(false), "boolean", 501),
    ]);
    pipeline.process(b).await.unwrap();
    let s = stats.snapshot();
    assert_eq!((s.events_failed, s.dead_letters), (2, 2), "{s:?}");
    assert_eq!(query(&sf, &rows("WIDEN")).await.len(), 3);
    assert_eq!(
        query(&sf, &rows("OTHER")).await,
        [["1", "7.00", "true"], ["2", "8.00", "false"]]
    );
    // Text that converts loads.
    let b = batch(vec![insert_text_n("widen", 6, "42.50", 600)]);
    pipeline.process(b).await.unwrap();
    assert_eq!(query(&sf, &rows("WIDEN")).await[3], ["6", "42.50", "true"]);
}
