use serde_json::{Value, json};

use super::*;
use crate::fixtures::{self, Record};

fn transform(records: &[Record]) -> Transformed {
    transform_batch(&fixtures::events(records)).unwrap()
}

fn data(row: &Row) -> Value {
    serde_json::from_str(&row.data).unwrap()
}

fn types(shape: &TableShape) -> Vec<(&str, &str, bool)> {
    shape
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.data_type.as_str(), c.is_key))
        .collect()
}

fn event<'a>(topic: &'a str, key: Option<&'a str>, value: Option<&'a str>) -> Event<'a> {
    Event {
        topic,
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: key.map(str::as_bytes),
        value: value.map(str::as_bytes),
    }
}

const ALL_TYPES_WITH_SCHEMAS: [(&str, &str, bool); 23] = [
    ("id", "NUMBER(38,0)", true),
    ("num12_2", "NUMBER(12,2)", false),
    ("num_var", "VARCHAR", false),
    ("ts_tz", "TIMESTAMP_TZ(6)", false),
    ("ts", "TIMESTAMP_NTZ(6)", false),
    ("d", "DATE", false),
    ("t", "TIME(6)", false),
    ("js", "VARIANT", false),
    ("j", "VARIANT", false),
    ("u", "VARCHAR", false),
    ("b", "BINARY", false),
    ("flag", "BOOLEAN", false),
    ("tags", "ARRAY", false),
    ("i2", "NUMBER(38,0)", false),
    ("i8", "NUMBER(38,0)", false),
    ("f4", "FLOAT", false),
    ("f8", "FLOAT", false),
    ("vc", "VARCHAR", false),
    ("iv", "NUMBER(38,0)", false),
    ("big_text", "VARCHAR", false),
    ("__op", "VARCHAR", false),
    ("__lsn", "NUMBER(38,0)", false),
    ("__source_ts_ms", "NUMBER(38,0)", false),
];

#[test]
fn all_types_with_schemas() {
    let recs = fixtures::load("schemas_precise", "types_toast_replica_identity_default");
    let t = transform(&recs);
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    assert!(t.truncates.is_empty());
    assert_eq!(t.tables.len(), 1);
    assert_eq!(t.tables[0].name, "public.all_types");
    assert_eq!(types(&t.tables[0]), ALL_TYPES_WITH_SCHEMAS);
    // c, c, u, d; the tombstone is skipped.
    assert_eq!(recs.len(), 5);
    let ops: Vec<(u32, Op, &str)> = t
        .rows
        .iter()
        .map(|r| (r.event, r.op, r.key.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            (0, Op::Insert, "[\"1\"]"),
            (1, Op::Insert, "[\"2\"]"),
            (2, Op::Update, "[\"1\"]"),
            (3, Op::Delete, "[\"1\"]")
        ]
    );

    let first = data(&t.rows[0]);
    let expect = [
        ("id", json!("1")),
        ("num12_2", json!("12345.67")),
        ("num_var", json!("3.14159265358979")),
        ("ts_tz", json!("2024-03-15T08:20:30.123456Z")),
        ("ts", json!("2024-03-15 10:20:30.123456")),
        ("d", json!("2024-03-15")),
        ("t", json!("13:45:00.500000")),
        (
            "js",
            json!({"a": 1, "b": [true, null, "x"], "nested": {"k": "v"}}),
        ),
        ("j", json!({"raw": "spacing kept"})),
        ("u", json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
        ("b", json!("3q2+7wD/")),
        ("flag", json!(true)),
        (
            "tags",
            json!(["red", "green", "with,comma", "with \"quote\""]),
        ),
        ("i2", json!("32767")),
        ("i8", json!("9007199254740993")),
        ("f4", json!(1.5)),
        ("f8", json!(std::f64::consts::PI)),
        ("vc", json!("hello")),
        ("iv", json!("93784000000")),
        ("__op", json!("c")),
    ];
    for (name, want) in expect {
        assert_eq!(first[name], want, "column {name}");
    }
    assert_eq!(first["big_text"].as_str().unwrap().len(), 9600);
    // Exact text: the json column is embedded as PostgreSQL wrote it, i8 never
    // passes through a double.
    assert!(t.rows[0].data.contains(r#""j":{"raw":  "spacing kept"}"#));
    assert!(t.rows[0].data.contains(r#""i8":"9007199254740993""#));
    // Metadata: lsn and source.ts_ms as exact integer strings.
    assert_eq!(first["__lsn"], json!(t.rows[0].lsn.to_string()));
    assert!(
        first["__source_ts_ms"]
            .as_str()
            .unwrap()
            .starts_with("1795")
    );
    // Data keys: key first, then source order, then metadata.
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let shape_names: Vec<&str> = t.tables[0]
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(keys, shape_names);

    let second = data(&t.rows[1]);
    assert_eq!(second["num12_2"], json!("-0.50"));
    assert_eq!(second["d"], json!("1969-12-31"));
    assert_eq!(second["js"], Value::Null);

    // The unchanged TOASTed column arrives as Debezium's placeholder: null, listed.
    let update = data(&t.rows[2]);
    assert_eq!(update["big_text"], Value::Null);
    assert_eq!(update["__unavailable"], json!({"big_text": true}));
    assert!(data(&t.rows[0]).get("__unavailable").is_none());
    assert_eq!(
        data(&t.rows[0])["big_text"].as_str().map(str::len),
        Some(9600)
    );
    assert_eq!(update["num12_2"], json!("99.99"));
    assert_eq!(update["flag"], json!(false));

    // REPLICA IDENTITY DEFAULT delete: `before` has the key, the rest null.
    let delete = data(&t.rows[3]);
    assert_eq!(delete["id"], json!("1"));
    assert_eq!(delete["__op"], json!("d"));
    assert_eq!(delete["vc"], Value::Null);
    assert!(t.rows.windows(2).all(|w| w[0].lsn < w[1].lsn));
}

#[test]
fn all_types_without_schemas() {
    let recs = fixtures::load("noschemas_precise", "types_toast_replica_identity_default");
    let t = transform(&recs);
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    let got = types(&t.tables[0]);
    let inferred = [
        ("id", "NUMBER(38,0)"),
        ("num12_2", "VARCHAR"),
        ("num_var", "VARIANT"),
        ("ts_tz", "VARCHAR"),
        ("ts", "NUMBER(38,0)"),
        ("d", "NUMBER(38,0)"),
        ("t", "NUMBER(38,0)"),
        ("js", "VARCHAR"),
        ("b", "VARCHAR"),
        ("flag", "BOOLEAN"),
        ("tags", "ARRAY"),
        ("i8", "NUMBER(38,0)"),
        ("f4", "FLOAT"),
        ("iv", "NUMBER(38,0)"),
    ];
    for (name, ty) in inferred {
        assert!(
            got.iter().any(|(n, t, _)| *n == name && *t == ty),
            "{name}: {got:?}"
        );
    }
    let first = data(&t.rows[0]);
    // Without schemas a precise decimal is only base64 text, a date a day count.
    assert_eq!(first["num12_2"], json!("EtaH"));
    assert_eq!(first["d"], json!("19797"));
    assert_eq!(first["i8"], json!("9007199254740993"));
    assert_eq!(
        first["num_var"],
        json!({"scale": 14, "value": "AR2552okgw=="})
    );
    assert_eq!(
        first["js"],
        json!("{\"a\": 1, \"b\": [true, null, \"x\"], \"nested\": {\"k\": \"v\"}}")
    );
}

#[test]
fn string_and_double_decimal_modes() {
    let t = transform(&fixtures::load(
        "schemas_string",
        "types_toast_replica_identity_default",
    ));
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    let s = &t.tables[0];
    let ty = |name: &str| {
        s.columns
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .data_type
            .clone()
    };
    assert_eq!(ty("num12_2"), "VARCHAR");
    assert_eq!(ty("num_var"), "VARCHAR");
    assert_eq!(data(&t.rows[0])["num12_2"], json!("12345.67"));
    assert_eq!(data(&t.rows[1])["num12_2"], json!("-0.50"));

    let t = transform(&fixtures::load(
        "noschemas_double",
        "types_toast_replica_identity_default",
    ));
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    let s = &t.tables[0];
    let ty = |name: &str| {
        s.columns
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .data_type
            .clone()
    };
    assert_eq!(ty("num12_2"), "FLOAT");
    assert_eq!(data(&t.rows[0])["num12_2"], json!(12345.67));
}

#[test]
fn crud_default_and_full() {
    for variant in ["schemas_precise", "noschemas_precise"] {
        let t = transform(&fixtures::load(variant, "crud_replica_identity_default"));
        assert!(t.failures.is_empty());
        assert_eq!(
            types(&t.tables[0]),
            [
                ("id", "NUMBER(38,0)", true),
                ("name", "VARCHAR", false),
                ("email", "VARCHAR", false),
                ("__op", "VARCHAR", false),
                ("__lsn", "NUMBER(38,0)", false),
                ("__source_ts_ms", "NUMBER(38,0)", false),
            ],
            "{variant}"
        );
        let rows: Vec<Value> = t.rows.iter().map(data).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["email"], json!("alice@example.com"));
        assert_eq!(rows[1]["email"], json!("alice@new.example.com"));
        assert_eq!(rows[1]["__op"], json!("u"));
        // DEFAULT identity: NOT NULL text column arrives as "" in `before`.
        assert_eq!(rows[2]["name"], json!(""));
        assert_eq!(rows[2]["__op"], json!("d"));

        let t = transform(&fixtures::load(variant, "crud_replica_identity_full"));
        assert!(t.failures.is_empty());
        let del = data(&t.rows[2]);
        assert_eq!(del["email"], json!("alice@new.example.com"));
        assert_eq!(t.tables[0].name, "public.customers_full");
    }
}

#[test]
fn pk_update_truncate_snapshot_and_message() {
    for variant in ["schemas_precise", "noschemas_string"] {
        // UPDATE SET id=2: d(1) + tombstone + c(2).
        let t = transform(&fixtures::load(variant, "pk_update"));
        let ops: Vec<(u32, Op, &str)> = t
            .rows
            .iter()
            .map(|r| (r.event, r.op, r.key.as_str()))
            .collect();
        assert_eq!(
            ops,
            [
                (0, Op::Insert, "[\"1\"]"),
                (1, Op::Delete, "[\"1\"]"),
                (3, Op::Insert, "[\"2\"]")
            ]
        );

        let t = transform(&fixtures::load(variant, "truncate"));
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.truncates.len(), 1);
        let tr = &t.truncates[0];
        assert_eq!((tr.event, tr.table.as_str()), (2, "public.trunc_items"));
        // The truncate carries its LSN, above the rows it wipes.
        assert!(t.rows.iter().all(|r| r.lsn > 0 && r.lsn < tr.lsn), "{t:?}");
        assert!(t.failures.is_empty());

        let t = transform(&fixtures::load(variant, "snapshot_read"));
        assert_eq!(t.rows.len(), 3);
        assert!(t.rows.iter().all(|r| r.op == Op::Read));
        assert!(t.rows.iter().all(|r| data(r)["__op"] == json!("r")));

        let t = transform(&fixtures::load(variant, "logical_message"));
        assert_eq!(t, Transformed::default());
    }
}

#[test]
fn whole_streams_of_every_variant() {
    for variant in fixtures::VARIANTS {
        let recs = fixtures::load(variant, "_all_in_order");
        let events = fixtures::events(&recs);
        let t = transform_batch(&events).unwrap();
        let verdicts = crate::validate_batch(&events);
        let rejected: Vec<usize> = verdicts
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v, crate::Verdict::Rejected(_)))
            .map(|(i, _)| i)
            .collect();
        let failed: Vec<usize> = t.failures.iter().map(|f| f.event as usize).collect();
        // The validator rejects exactly what the transformer cannot turn into rows.
        assert_eq!(rejected, failed, "{variant}");
        // Every event is accounted for once: row, truncate, failure or skip.
        let mut seen = vec![0; events.len()];
        for i in t
            .rows
            .iter()
            .map(|r| r.event)
            .chain(t.truncates.iter().map(|x| x.event))
            .chain(t.failures.iter().map(|f| f.event))
        {
            seen[i as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n <= 1), "{variant}");
        for (i, n) in seen.iter().enumerate() {
            if *n == 0 {
                let e = &events[i];
                // Skips, and tombstones that repeat the delete before them.
                let skippable = e.value.is_none()
                    || e.topic == "dbz.message"
                    || matches!(
                        envelope::decode(e),
                        Ok(Decoded::Skip(_) | Decoded::Tombstone(_))
                    );
                assert!(skippable, "{variant}: event {i} vanished");
            }
        }
        // Rows index their table; shapes list each table once.
        for r in &t.rows {
            let shape = &t.tables[r.table as usize];
            let d = data(r);
            for c in &shape.columns {
                if c.is_key {
                    assert!(!d[&c.name].is_null(), "{variant}: key {} null", c.name);
                }
            }
        }
        let mut names: Vec<&str> = t.tables.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), t.tables.len());

        assert!(t.failures.is_empty(), "{variant}: {:?}", t.failures);
        assert_eq!(t.tables.len(), 8, "{variant}");
        // ExtractNewRecordState drops truncates.
        let truncates = if variant.starts_with("unwrap") { 0 } else { 1 };
        assert_eq!(t.truncates.len(), truncates, "{variant}");
    }
}

#[test]
fn one_bad_event_fails_alone() {
    let recs = fixtures::load("schemas_precise", "crud_replica_identity_default");
    let mut events = fixtures::events(&recs);
    events.insert(
        1,
        event("dbz.public.customers", Some(r#"{"id":1}"#), Some("{broken")),
    );
    events.insert(
        2,
        event(
            "dbz.public.customers",
            None,
            Some(r#"{"op":"c","after":{"id":1}}"#),
        ),
    );
    events.insert(
        3,
        event(
            "dbz.public.customers",
            Some(r#"{"id":1}"#),
            Some(r#"{"op":"x","after":{"id":1}}"#),
        ),
    );
    let t = transform_batch(&events).unwrap();
    assert_eq!(
        t.rows.iter().map(|r| r.event).collect::<Vec<_>>(),
        [0, 4, 5]
    );
    let failures: Vec<(u32, &str)> = t
        .failures
        .iter()
        .map(|f| (f.event, f.reason.as_str()))
        .collect();
    assert_eq!(failures.len(), 3);
    assert_eq!(failures[0].0, 1);
    assert!(failures[0].1.starts_with("parse: "), "{}", failures[0].1);
    assert_eq!(failures[1], (2, "validation: missing key"));
    assert_eq!(failures[2], (3, "validation: unknown op 'x'"));
}

#[test]
fn conversion_failure_does_not_shape_the_table() {
    let ok = r#"{"op":"c","after":{"id":1,"a":"x"},"source":{"schema":"s","table":"t","lsn":5}}"#;
    let schema = r#"{"type":"struct","fields":[{"type":"struct","field":"after","fields":[
        {"type":"int32","field":"id"},{"type":"int32","name":"io.debezium.time.Date","field":"late"}]}]}"#;
    let bad = format!(
        r#"{{"schema":{schema},"payload":{{"op":"c","after":{{"id":2,"late":99999999}},"source":{{"schema":"s","table":"t"}}}}}}"#
    );
    let events = [
        event("p.s.t", Some(r#"{"id":1}"#), Some(ok)),
        event("p.s.t", Some(r#"{"id":2}"#), Some(&bad)),
    ];
    let t = transform_batch(&events).unwrap();
    assert_eq!(t.rows.len(), 1);
    assert_eq!(t.failures.len(), 1);
    assert!(
        t.failures[0]
            .reason
            .starts_with("conversion: column 'late': date"),
        "{}",
        t.failures[0].reason
    );
    assert!(t.tables[0].columns.iter().all(|c| c.name != "late"));
}

#[test]
fn skipped_events() {
    let heartbeat = event(
        "__debezium-heartbeat.dbz",
        Some(r#"{"serverName":"dbz"}"#),
        Some(r#"{"ts_ms":1}"#),
    );
    let txn = event(
        "dbz.transaction",
        Some(r#"{"id":"571:53195829"}"#),
        Some(
            r#"{"status":"BEGIN","id":"571:53195829","event_count":null,"data_collections":null,"ts_ms":1}"#,
        ),
    );
    // Tombstones without a key say nothing.
    let tombstone = event("dbz.public.t", None, None);
    let null_text = event("dbz.public.t", None, Some(" null "));
    let schema_null_payload = event(
        "dbz.public.t",
        None,
        Some(r#"{"schema":{"type":"struct"},"payload":null}"#),
    );
    // A real table called `transaction` still loads: its events have an op.
    let real = event(
        "dbz.public.transaction",
        Some(r#"{"id":1}"#),
        Some(r#"{"op":"c","after":{"id":1},"source":{"schema":"public","table":"transaction"}}"#),
    );
    let events = [
        heartbeat,
        txn,
        tombstone,
        null_text,
        schema_null_payload,
        real,
    ];
    let t = transform_batch(&events).unwrap();
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    assert_eq!(t.rows.len(), 1);
    assert_eq!(t.rows[0].event, 5);
    assert_eq!(t.tables[0].name, "public.transaction");
    assert!(
        crate::validate_batch(&events)
            .iter()
            .all(|v| *v == crate::Verdict::Ok)
    );
}

#[test]
fn keyed_tombstones_delete_unless_they_repeat_a_delete() {
    let k1 = Some(r#"{"id":1}"#);
    let k2 = Some(r#"{"id":2}"#);
    let events = [
        // Envelope delete + its tombstone: one delete.
        event(
            "dbz.public.t",
            k1,
            Some(r#"{"op":"d","before":{"id":1},"source":{"lsn":10}}"#),
        ),
        event("dbz.public.t", k1, None),
        // A tombstone alone (unwrap's default delete): a delete of its key, no LSN.
        event("dbz.public.t", k2, None),
        // The same key on another topic is another table.
        event("dbz.public.u", k1, Some("null")),
    ];
    let t = transform_batch(&events).unwrap();
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    let rows: Vec<(u32, Op, &str, i64)> = t
        .rows
        .iter()
        .map(|r| (r.event, r.op, r.key.as_str(), r.lsn))
        .collect();
    assert_eq!(
        rows,
        [
            (0, Op::Delete, r#"["1"]"#, 10),
            (2, Op::Delete, r#"["2"]"#, -1),
            (3, Op::Delete, r#"["1"]"#, -1)
        ]
    );
    assert_eq!(t.tables[0].name, "public.t");
    assert_eq!(t.tables[1].name, "public.u");
    assert_eq!(data(&t.rows[1])["__op"], json!("d"));
}

#[test]
fn shapes_across_tables_and_events() {
    let events = [
        event(
            "p.s.a",
            Some(r#"{"k2":"x","k1":1}"#),
            Some(r#"{"op":"c","after":{"k1":1,"v":null,"k2":"x","n":1}}"#),
        ),
        event(
            "p.s.b",
            Some(r#"{"id":1}"#),
            Some(r#"{"op":"r","after":{"id":1}}"#),
        ),
        event(
            "p.s.a",
            Some(r#"{"k2":"y","k1":2}"#),
            Some(r#"{"op":"u","after":{"k1":2,"v":null,"k2":"y","n":2.5,"extra":true}}"#),
        ),
        event(
            "p.s.a",
            Some(r#"{"k2":"z","k1":3}"#),
            Some(r#"{"op":"d","before":null}"#),
        ),
    ];
    let t = transform_batch(&events).unwrap();
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    assert_eq!(
        t.tables.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["s.a", "s.b"]
    );
    assert_eq!(
        t.rows.iter().map(|r| r.table).collect::<Vec<_>>(),
        [0, 1, 0, 0]
    );
    assert_eq!(
        types(&t.tables[0]),
        [
            ("k2", "VARCHAR", true),
            ("k1", "NUMBER(38,0)", true),
            ("v", "VARCHAR", false), // null in every row
            ("n", "FLOAT", false),   // integer and float
            ("extra", "BOOLEAN", false),
            ("__op", "VARCHAR", false),
            ("__lsn", "NUMBER(38,0)", false),
            ("__source_ts_ms", "NUMBER(38,0)", false),
        ]
    );
    assert_eq!(t.rows[0].key, r#"["x","1"]"#);
    // No source block: no LSN, table from the topic.
    assert_eq!(t.rows[0].lsn, -1);
    assert_eq!(data(&t.rows[0])["__lsn"], Value::Null);
    assert_eq!(data(&t.rows[0])["__source_ts_ms"], Value::Null);
    // A delete without `before` carries the key only.
    assert_eq!(
        t.rows[3].data,
        r#"{"k2":"z","k1":"3","__op":"d","__lsn":null,"__source_ts_ms":null}"#
    );
}

#[test]
fn key_values_come_from_the_key_and_match_across_events() {
    let schema_key = r#"{"schema":{"type":"struct","fields":[{"type":"int64","field":"id"}]},"payload":{"id":9007199254740993}}"#;
    let plain_key = r#"{"id":9007199254740993}"#;
    let v = r#"{"op":"c","after":{"id":9007199254740993,"x":1},"source":{"schema":"s","table":"t","lsn":-1,"ts_ms":7}}"#;
    let t = transform_batch(&[
        event("p.s.t", Some(schema_key), Some(v)),
        event("p.s.t", Some(plain_key), Some(v)),
    ])
    .unwrap();
    assert_eq!(t.rows[0].key, r#"["9007199254740993"]"#);
    assert_eq!(t.rows[0].key, t.rows[1].key);
    assert_eq!(t.rows[0].lsn, -1);
    let d = data(&t.rows[0]);
    assert_eq!(d["__lsn"], Value::Null);
    assert_eq!(d["__source_ts_ms"], json!("7"));
}

#[test]
fn metadata_name_collision_fails_the_event() {
    let v = r#"{"op":"c","after":{"id":1,"__op":"mine"}}"#;
    let t = transform_batch(&[event("p.s.t", Some(r#"{"id":1}"#), Some(v))]).unwrap();
    assert!(t.rows.is_empty());
    assert!(
        t.failures[0].reason.contains("collides"),
        "{}",
        t.failures[0].reason
    );
}

#[test]
fn schema_errors_are_event_failures() {
    let bad_schema = r#"{"schema":{"type":"struct","fields":[{"type":"struct","field":"after","fields":[{"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","field":"n"}]}]},"payload":{"op":"c","after":{"n":"AA=="}}}"#;
    let t = transform_batch(&[
        event("p.s.t", Some(r#"{"id":1}"#), Some(bad_schema)),
        event("p.s.t", Some(r#"{"id":1}"#), Some(bad_schema)),
    ])
    .unwrap();
    assert_eq!(t.failures.len(), 2);
    assert!(
        t.failures[1].reason.contains("scale"),
        "{}",
        t.failures[1].reason
    );
}

#[test]
fn unavailable_placeholders() {
    use crate::convert::Conv;
    let ph = json!(UNAVAILABLE_PLACEHOLDER);
    let b64 = json!(UNAVAILABLE_PLACEHOLDER_BASE64);
    assert!(is_unavailable(&ph, &Conv::Text));
    assert!(is_unavailable(&ph, &Conv::Json));
    assert!(is_unavailable(&ph, &Conv::Infer));
    assert!(is_unavailable(&b64, &Conv::Bytes));
    assert!(is_unavailable(&b64, &Conv::Infer));
    // Base64 text is only the placeholder where bytes are expected.
    assert!(!is_unavailable(&b64, &Conv::Text));
    let arr = json!([UNAVAILABLE_PLACEHOLDER]);
    assert!(is_unavailable(&arr, &Conv::Array(Box::new(Conv::Text))));
    assert!(!is_unavailable(
        &json!([UNAVAILABLE_PLACEHOLDER, "x"]),
        &Conv::Infer
    ));
    assert!(!is_unavailable(&json!("other"), &Conv::Text));
    assert!(!is_unavailable(&Value::Null, &Conv::Text));

    // Without schemas, a bytea and a text[] column, and a key that happens to be the
    // placeholder (keys are never checked).
    let v = format!(
        r#"{{"op":"u","source":{{"lsn":5}},"after":{{"id":"{UNAVAILABLE_PLACEHOLDER}","b":"{UNAVAILABLE_PLACEHOLDER_BASE64}","tags":["{UNAVAILABLE_PLACEHOLDER}"],"n":1}}}}"#
    );
    let k = format!(r#"{{"id":"{UNAVAILABLE_PLACEHOLDER}"}}"#);
    let t = transform_batch(&[event("p.s.t", Some(&k), Some(&v))]).unwrap();
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    let d = data(&t.rows[0]);
    assert_eq!(d["id"], ph);
    assert_eq!(d["b"], Value::Null);
    assert_eq!(d["tags"], Value::Null);
    assert_eq!(d["__unavailable"], json!({"b": true, "tags": true}));
    // No type is inferred from a placeholder: VARCHAR as for an all-null column.
    assert!(
        types(&t.tables[0]).contains(&("b", "VARCHAR", false)),
        "{:?}",
        t.tables[0]
    );
    // A source column named like the field fails its event.
    let v = r#"{"op":"c","after":{"id":1,"__unavailable":1}}"#;
    let t = transform_batch(&[event("p.s.t", Some(r#"{"id":1}"#), Some(v))]).unwrap();
    assert!(t.failures[0].reason.contains("collides"));
}

#[test]
fn unavailable_with_schemas_keeps_the_schema_type() {
    // Every row of the batch has the placeholder: the column keeps its schema type.
    let recs = fixtures::load("schemas_precise", "types_toast_replica_identity_default");
    let t = transform(&recs[2..3]);
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    assert!(types(&t.tables[0]).contains(&("big_text", "VARCHAR", false)));
    assert_eq!(data(&t.rows[0])["__unavailable"], json!({"big_text": true}));
}

#[test]
fn flattened_records_of_both_unwrap_modes() {
    // Default: c, u, then only a tombstone for the delete.
    let t = transform(&fixtures::load(
        "unwrap_default_noschemas",
        "crud_replica_identity_default",
    ));
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    let ops: Vec<(Op, i64)> = t.rows.iter().map(|r| (r.op, r.lsn)).collect();
    assert_eq!(ops, [(Op::Update, -1), (Op::Update, -1), (Op::Delete, -1)]);
    assert_eq!(t.tables[0].name, "public.customers");
    assert_eq!(data(&t.rows[1])["email"], json!("alice@new.example.com"));

    // rewrite-with-tombstone + add.fields: ops, LSNs and timestamps from the added
    // fields, which are not columns; the tombstone after the delete repeats it.
    let recs = fixtures::load("unwrap_rewrite_noschemas", "crud_replica_identity_default");
    let t = transform(&recs);
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    let ops: Vec<Op> = t.rows.iter().map(|r| r.op).collect();
    assert_eq!(ops, [Op::Insert, Op::Update, Op::Delete]);
    assert!(
        t.rows
            .windows(2)
            .all(|w| 0 < w[0].lsn && w[0].lsn < w[1].lsn)
    );
    let names: Vec<&str> = t.tables[0]
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["id", "name", "email", "__op", "__lsn", "__source_ts_ms"]
    );
    let d = data(&t.rows[0]);
    assert_eq!(d["__op"], json!("c"));
    assert!(
        d["__source_ts_ms"].as_str().is_some_and(|s| s.len() == 13),
        "{d}"
    );
    assert!(d.get("__deleted").is_none() && d.get("__txId").is_none());

    // The unchanged-TOAST placeholder is recognised in flattened records too.
    let t = transform(&fixtures::load(
        "unwrap_rewrite_noschemas",
        "types_toast_replica_identity_default",
    ));
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    let update = data(&t.rows[2]);
    assert_eq!(update["big_text"], Value::Null);
    assert_eq!(update[UNAVAILABLE_COLUMN], json!({"big_text": true}));
}

#[test]
fn flattened_records_with_schemas_use_the_record_schema() {
    let key = r#"{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"}]},"payload":{"id":7}}"#;
    let value = r#"{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"},{"type":"int32","optional":true,"name":"io.debezium.time.Date","field":"d"},{"type":"string","optional":true,"field":"__deleted"}]},"payload":{"id":7,"d":19797,"__deleted":"false"}}"#;
    let t = transform_batch(&[event("dbz.public.flat", Some(key), Some(value))]).unwrap();
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    assert_eq!(
        types(&t.tables[0])[..2],
        [("id", "NUMBER(38,0)", true), ("d", "DATE", false)]
    );
    assert_eq!(data(&t.rows[0])["d"], json!("2024-03-15"));
}

#[test]
fn a_primary_key_update_names_the_old_key_for_the_values_it_lacks() {
    // Debezium's two halves of `UPDATE t SET id = 2 WHERE id = 1` under REPLICA IDENTITY
    // DEFAULT, the TOASTed `big` untouched: a delete of key 1 and a create of key 2 at
    // the same LSN, the create carrying the placeholder.
    let events = [
        event(
            "dbz.public.t",
            Some(r#"{"id":1}"#),
            Some(
                r#"{"op":"d","before":{"id":1,"big":null,"v":null},"after":null,"source":{"schema":"public","table":"t","lsn":20}}"#,
            ),
        ),
        event("dbz.public.t", Some(r#"{"id":1}"#), None),
        event(
            "dbz.public.t",
            Some(r#"{"id":2}"#),
            Some(
                r#"{"op":"c","before":null,"after":{"id":2,"big":"__debezium_unavailable_value","v":"x"},"source":{"schema":"public","table":"t","lsn":20}}"#,
            ),
        ),
        // Another create lacking a value, without a delete at its LSN: nothing to name.
        event(
            "dbz.public.t",
            Some(r#"{"id":3}"#),
            Some(
                r#"{"op":"c","before":null,"after":{"id":3,"big":"__debezium_unavailable_value","v":"y"},"source":{"schema":"public","table":"t","lsn":30}}"#,
            ),
        ),
    ];
    let t = transform_batch(&events).unwrap();
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    let moved = data(&t.rows[1]);
    assert_eq!(moved["__from"], json!(["1"]));
    assert_eq!(moved["__unavailable"], json!({"big": true}));
    assert!(
        data(&t.rows[0]).get("__from").is_none(),
        "the delete itself"
    );
    assert!(
        data(&t.rows[2]).get("__from").is_none(),
        "no delete at LSN 30"
    );
    // A source column named `__from` is refused like the metadata columns.
    let bad = [event(
        "dbz.public.t",
        Some(r#"{"id":4}"#),
        Some(r#"{"op":"c","after":{"id":4,"__from":"x"},"source":{"lsn":1}}"#),
    )];
    assert_eq!(transform_batch(&bad).unwrap().failures.len(), 1);
}

/// The fused call gives what validating and then transforming the accepted events
/// gives: same verdicts, same answer once its indexes are mapped back, for every
/// fixture stream with rejected events mixed in (between a delete and its tombstone,
/// and between the two halves of a primary-key update).
#[test]
fn validate_and_transform_equals_validate_then_transform() {
    let bad: [(Option<&str>, Option<&str>); 4] = [
        (Some(r#"{"id":1}"#), Some("{broken")),
        (None, Some(r#"{"op":"c","after":{"id":1}}"#)),
        (Some(r#"{"id":1}"#), Some(r#"{"op":"x","after":{"id":1}}"#)),
        (Some("[1]"), None),
    ];
    for variant in fixtures::VARIANTS {
        for scenario in ["_all_in_order", "crud_replica_identity_default"] {
            let recs = fixtures::load(variant, scenario);
            let mut events = fixtures::events(&recs);
            // A bad event after every third real one.
            let mut at = 1;
            let mut k = 0;
            while at < events.len() {
                let (key, value) = bad[k % bad.len()];
                let topic = events[at].topic;
                events.insert(at, event(topic, key, value));
                at += 4;
                k += 1;
            }
            let (verdicts, fused) = validate_and_transform(&events).unwrap();
            assert_eq!(
                verdicts,
                crate::validate_batch(&events),
                "{variant}/{scenario}"
            );
            assert!(
                verdicts.iter().any(|v| *v != Verdict::Ok),
                "{variant}/{scenario}: the stream has rejected events"
            );
            let accepted: Vec<usize> = (0..events.len())
                .filter(|&i| verdicts[i] == Verdict::Ok)
                .collect();
            let subset: Vec<Event<'_>> = accepted.iter().map(|&i| events[i]).collect();
            let mut apart = transform_batch(&subset).unwrap();
            for r in &mut apart.rows {
                r.event = accepted[r.event as usize] as u32;
            }
            for t in &mut apart.truncates {
                t.event = accepted[t.event as usize] as u32;
            }
            for f in &mut apart.failures {
                f.event = accepted[f.event as usize] as u32;
            }
            assert_eq!(fused, apart, "{variant}/{scenario}");
        }
    }
}
