//! Every file of the `noschemas_precise` and `schemas_precise` fixture variants (real
//! Debezium 3.6.3 output) replayed through the file source into the emulator; the target
//! rows are asserted column by column against the values the source rows held
//! (../shared/debezium-fixtures/README.md lists them).

use std::path::PathBuf;

use floe_snowflake::Client;

use crate::support::{fixtures_dir, query, replay, replay_with, snowflake, unique};

/// Schema-less JSON keeps what the JSON says (decimals stay base64 text, temporal
/// values stay numbers); with schemas every type is decoded.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Variant {
    NoSchemas,
    Schemas,
}

impl Variant {
    fn dir(self) -> &'static str {
        match self {
            Variant::NoSchemas => "noschemas_precise",
            Variant::Schemas => "schemas_precise",
        }
    }
}

fn file(v: Variant, name: &str) -> PathBuf {
    let p = fixtures_dir().join(v.dir()).join(name);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// The first `n` lines of a fixture file, as a new file.
fn prefix(v: Variant, name: &str, n: usize) -> PathBuf {
    lines(v, name, 0..n)
}

/// Some lines of a fixture file, as a new file.
fn lines(v: Variant, name: &str, range: std::ops::Range<usize>) -> PathBuf {
    let text = std::fs::read_to_string(file(v, name)).unwrap();
    let lines: Vec<&str> = text.lines().skip(range.start).take(range.len()).collect();
    let dir = std::env::temp_dir().join(unique("floe-fixture"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// Fraction digits of times and timestamps compare by value: the emulator reports
/// `...30.123456000`, Snowflake `...30.123456`.
pub fn canon(v: &str) -> String {
    let b = v.as_bytes();
    let timeish = v.len() >= 8 && b[2] == b':' && b[5] == b':'
        || v.len() >= 19 && b[4] == b'-' && b[10] == b' ' && b[13] == b':';
    if !timeish || !v.contains('.') {
        return v.to_string();
    }
    let (main, zone) = match v.rfind(['+', '-']) {
        Some(i) if i > 10 => v.split_at(i),
        _ => (v, ""),
    };
    format!("{}{zone}", main.trim_end_matches('0').trim_end_matches('.'))
}

/// The fixture's truncate with a row change that came after it in the source log
/// (`id` 3, LSN above the truncate's) but reaches floe out of offset order, as it does
/// when the two sit in different partitions (Debezium sends truncates without a key).
/// Returns the file's lines: c(1), c(2), t, and the late insert.
fn truncate_with_later_insert(v: Variant) -> Vec<String> {
    let text = std::fs::read_to_string(file(v, "truncate.jsonl")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    fn envelope(v: Variant, r: &mut serde_json::Value) -> &mut serde_json::Value {
        if v == Variant::Schemas {
            &mut r["value"]["payload"]
        } else {
            &mut r["value"]
        }
    }
    let mut t: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    let t_lsn = envelope(v, &mut t)["source"]["lsn"].as_i64().unwrap();
    let mut late: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    if v == Variant::Schemas {
        late["key"]["payload"]["id"] = 3.into();
    } else {
        late["key"]["id"] = 3.into();
    }
    let env = envelope(v, &mut late);
    env["after"]["id"] = 3.into();
    env["after"]["v"] = "after truncate".into();
    env["source"]["lsn"] = (t_lsn + 100).into();
    lines.push(late.to_string());
    lines
}

fn write_lines(name: &str, lines: &[&String]) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("floe-fixture"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let text: Vec<&str> = lines.iter().map(|l| l.as_str()).collect();
    std::fs::write(&p, text.join("\n") + "\n").unwrap();
    p
}

/// A truncate is ordered with the table's row changes by LSN, not by offset: a change
/// after it that arrived first survives it, a change before it that arrives after it
/// is not loaded.
async fn truncate_out_of_offset_order(sf: &Client, v: Variant, db: &dyn Fn(&str) -> String) {
    let l = truncate_with_later_insert(v);
    let (c1, c2, t, c3) = (&l[0], &l[1], &l[2], &l[3]);
    let only_3 = expect(&[&["3", "after truncate"]]);
    // In one batch, the later insert ahead of the truncate.
    let d = db("truncord1");
    replay(&[write_lines("truncate.jsonl", &[c1, c2, c3, t])], &d).await;
    assert_eq!(rows(sf, &d, "TRUNC_ITEMS", r#""ID", "V""#).await, only_3);
    // The later insert loaded in an earlier batch: the truncate removes only the rows
    // below its LSN.
    let d = db("truncord2");
    replay(&[write_lines("truncate.jsonl", &[c1, c2, c3])], &d).await;
    let s = replay(&[write_lines("truncate.jsonl", &[t])], &d).await;
    assert_eq!(s.tables_truncated, 1, "{s:?}");
    assert_eq!(rows(sf, &d, "TRUNC_ITEMS", r#""ID", "V""#).await, only_3);
    // Batches of one event: an insert from before the truncate that arrives after it is
    // not loaded.
    let d = db("truncord3");
    let s = replay_with(
        &[write_lines("truncate.jsonl", &[c3, t, c1, c2])],
        &d,
        |c| {
            c.batch.max_rows = 1;
        },
    )
    .await;
    assert_eq!((s.tables_truncated, s.events_failed), (1, 0), "{s:?}");
    assert_eq!(rows(sf, &d, "TRUNC_ITEMS", r#""ID", "V""#).await, only_3);
}

async fn rows(sf: &Client, db: &str, table: &str, cols: &str) -> Vec<Vec<String>> {
    let sql = format!(r#"SELECT {cols} FROM "{db}"."CDC"."{table}" ORDER BY 1"#);
    query(sf, &sql)
        .await
        .into_iter()
        .map(|r| r.iter().map(|v| canon(v)).collect())
        .collect()
}

fn expect(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|v| v.to_string()).collect())
        .collect()
}

/// The 9.6 kB TOASTed text of the `all_types` fixture row, from the event itself.
fn big_text(v: Variant) -> String {
    let text =
        std::fs::read_to_string(file(v, "types_toast_replica_identity_default.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let value = &first["value"];
    let payload = if v == Variant::Schemas {
        &value["payload"]
    } else {
        value
    };
    let s = payload["after"]["big_text"].as_str().unwrap().to_string();
    assert!(s.len() > 9000);
    s
}

const ALL_TYPES_COLS: &str = r#""ID", "NUM12_2", "NUM_VAR", "TS_TZ", "TS", "D", "T", "JS", "J", "U", "B", "FLAG", "TAGS", "I2", "I8", "F4", "F8", "VC", "IV", "BIG_TEXT", "__OP""#;

/// The first `all_types` row (every type filled), as the target must hold it.
fn full_types_row(v: Variant, num12_2: &str, flag: &str, op: &str) -> Vec<String> {
    let big = big_text(v);
    let mut r: Vec<String> = match v {
        Variant::Schemas => vec![
            "1",
            num12_2,
            "3.14159265358979",
            "2024-03-15 08:20:30.123456+00:00",
            "2024-03-15 10:20:30.123456",
            "2024-03-15",
            "13:45:00.5",
            r#"{"a":1,"b":[true,null,"x"],"nested":{"k":"v"}}"#,
            r#"{"raw":"spacing kept"}"#,
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "deadbeef00ff",
            flag,
            r#"["red","green","with,comma","with \"quote\""]"#,
            "32767",
            "9007199254740993",
            "1.5",
            "3.141592653589793",
            "hello",
            "93784000000",
        ],
        Variant::NoSchemas => vec![
            "1",
            num12_2,
            r#"{"scale":14,"value":"AR2552okgw=="}"#,
            "2024-03-15T08:20:30.123456Z",
            "1710498030123456",
            "19797",
            "49500500000",
            r#"{"a": 1, "b": [true, null, "x"], "nested": {"k": "v"}}"#,
            r#"{"raw":  "spacing kept"}"#,
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "3q2+7wD/",
            flag,
            r#"["red","green","with,comma","with \"quote\""]"#,
            "32767",
            "9007199254740993",
            "1.5",
            "3.141592653589793",
            "hello",
            "93784000000",
        ],
    }
    .into_iter()
    .map(String::from)
    .collect();
    r.push(big);
    r.push(op.to_string());
    r
}

/// The second `all_types` row: -0.50 and 1969-12-31, everything else NULL.
fn sparse_types_row(v: Variant) -> Vec<String> {
    let (num, date) = match v {
        Variant::Schemas => ("-0.50", "1969-12-31"),
        Variant::NoSchemas => ("zg==", "-1"),
    };
    let mut r = vec!["2".to_string(), num.into()];
    r.extend(std::iter::repeat_n("<NULL>".to_string(), 3));
    r.push(date.into());
    r.extend(std::iter::repeat_n("<NULL>".to_string(), 14));
    r.push("c".into());
    r
}

async fn check_scenarios(v: Variant) {
    let sf = snowflake().await;
    let db = |s: &str| unique(&format!("FIX_{}_{s}", v.dir())).to_uppercase();

    // Snapshot reads.
    let d = db("snap");
    let s = replay(&[file(v, "snapshot_read.jsonl")], &d).await;
    assert_eq!(
        (s.events_consumed, s.ops.read, s.rows_loaded),
        (3, 3, 3),
        "{s:?}"
    );
    let prices = match v {
        Variant::Schemas => ["10.50", "0.99"],
        Variant::NoSchemas => ["BBo=", "Yw=="],
    };
    assert_eq!(
        rows(&sf, &d, "SNAP_ITEMS", r#""ID", "NAME", "PRICE", "__OP""#).await,
        expect(&[
            &["1", "alpha", prices[0], "r"],
            &["2", "beta", prices[1], "r"],
            &["3", "gamma", "<NULL>", "r"],
        ])
    );

    // Insert, update, delete (+ tombstone) with both replica identities.
    for (name, table) in [
        ("crud_replica_identity_default.jsonl", "CUSTOMERS"),
        ("crud_replica_identity_full.jsonl", "CUSTOMERS_FULL"),
    ] {
        let d = db("crud2");
        replay(&[prefix(v, name, 2)], &d).await;
        assert_eq!(
            rows(&sf, &d, table, r#""ID", "NAME", "EMAIL", "__OP""#).await,
            expect(&[&["1", "Alice", "alice@new.example.com", "u"]]),
            "{name}: after insert + update"
        );
        let d = db("crud");
        let s = replay(&[file(v, name)], &d).await;
        assert_eq!(
            (s.events_skipped, s.ops.delete),
            (1, 1),
            "tombstone skipped: {s:?}"
        );
        assert!(
            rows(&sf, &d, table, r#""ID", "NAME", "EMAIL""#)
                .await
                .is_empty(),
            "{name}: the delete removed the row"
        );
    }

    // Primary-key update: delete(1) + tombstone + create(2).
    let d = db("pk");
    replay(&[file(v, "pk_update.jsonl")], &d).await;
    assert_eq!(
        rows(&sf, &d, "PK_ITEMS", r#""ID", "V", "__OP""#).await,
        expect(&[&["2", "x", "c"]])
    );

    // Truncate (default: applied). Two inserts loaded, then the truncate in a later batch:
    // the target is emptied.
    let d = db("trunc");
    replay(&[prefix(v, "truncate.jsonl", 2)], &d).await;
    assert_eq!(
        rows(&sf, &d, "TRUNC_ITEMS", r#""ID", "V""#).await,
        expect(&[&["1", "a"], &["2", "b"]])
    );
    let s = replay(&[file(v, "truncate.jsonl")], &d).await;
    assert_eq!((s.tables_truncated, s.truncates_ignored), (1, 0), "{s:?}");
    assert!(rows(&sf, &d, "TRUNC_ITEMS", r#""ID""#).await.is_empty());
    // Ignored when configured so: the rows stay.
    let d = db("truncign");
    let s = replay_with(&[file(v, "truncate.jsonl")], &d, |c| {
        c.sink.snowflake.truncate = floe::config::TruncateMode::Ignore;
    })
    .await;
    assert_eq!((s.tables_truncated, s.truncates_ignored), (0, 1), "{s:?}");
    assert_eq!(
        rows(&sf, &d, "TRUNC_ITEMS", r#""ID", "V""#).await,
        expect(&[&["1", "a"], &["2", "b"]])
    );

    truncate_out_of_offset_order(&sf, v, &db).await;

    // Every type, both rows, before the update and delete.
    let d = db("types2");
    replay(
        &[prefix(v, "types_toast_replica_identity_default.jsonl", 2)],
        &d,
    )
    .await;
    let num = if v == Variant::Schemas {
        "12345.67"
    } else {
        "EtaH"
    };
    assert_eq!(
        rows(&sf, &d, "ALL_TYPES", ALL_TYPES_COLS).await,
        vec![full_types_row(v, num, "true", "c"), sparse_types_row(v)]
    );
    // An update that leaves the TOASTed text unchanged (Debezium sends a placeholder):
    // the target keeps the real text, whether the insert is in the same batch or not.
    let num = if v == Variant::Schemas {
        "99.99"
    } else {
        "Jw8="
    };
    let toast = "types_toast_replica_identity_default.jsonl";
    let d = db("toast1");
    replay(&[prefix(v, toast, 3)], &d).await;
    let updated = rows(&sf, &d, "ALL_TYPES", ALL_TYPES_COLS).await;
    assert_eq!(
        updated[0],
        full_types_row(v, num, "false", "u"),
        "one batch"
    );
    let d = db("toast2");
    replay(&[prefix(v, toast, 2)], &d).await;
    let s = replay(&[lines(v, toast, 2..3)], &d).await;
    assert_eq!(s.ops.update, 1, "{s:?}");
    let updated = rows(&sf, &d, "ALL_TYPES", ALL_TYPES_COLS).await;
    assert_eq!(
        updated[0],
        full_types_row(v, num, "false", "u"),
        "separate batches"
    );
    // Replaying the update (a restart before its commit) changes nothing.
    replay(&[lines(v, toast, 2..3)], &d).await;
    assert_eq!(
        rows(&sf, &d, "ALL_TYPES", ALL_TYPES_COLS).await[0],
        updated[0]
    );

    // The whole file: row 1 updated then deleted, row 2 stays.
    let d = db("types");
    replay(&[file(v, "types_toast_replica_identity_default.jsonl")], &d).await;
    assert_eq!(
        rows(&sf, &d, "ALL_TYPES", ALL_TYPES_COLS).await,
        vec![sparse_types_row(v)]
    );
    // REPLICA IDENTITY FULL: insert + update carry every value.
    let d = db("typesfull2");
    replay(
        &[prefix(v, "types_toast_replica_identity_full.jsonl", 2)],
        &d,
    )
    .await;
    let num = if v == Variant::Schemas {
        "99.99"
    } else {
        "Jw8="
    };
    assert_eq!(
        rows(&sf, &d, "ALL_TYPES_FULL", ALL_TYPES_COLS).await,
        vec![full_types_row(v, num, "false", "u")]
    );
    let d = db("typesfull");
    replay(&[file(v, "types_toast_replica_identity_full.jsonl")], &d).await;
    assert!(rows(&sf, &d, "ALL_TYPES_FULL", r#""ID""#).await.is_empty());

    // A logical-decoding message carries no row: consumed and skipped.
    let d = db("msg");
    let s = replay(&[file(v, "logical_message.jsonl")], &d).await;
    assert_eq!(
        (s.events_consumed, s.events_skipped, s.rows_loaded),
        (1, 1, 0),
        "{s:?}"
    );

    // The whole stream in emission order, all tables in one run: same final states.
    let d = db("all");
    let s = replay(&[file(v, "_all_in_order.jsonl")], &d).await;
    assert_eq!((s.events_rejected, s.events_failed), (0, 0), "{s:?}");
    assert_eq!(
        rows(&sf, &d, "SNAP_ITEMS", r#""ID", "PRICE""#).await,
        expect(&[&["1", prices[0]], &["2", prices[1]], &["3", "<NULL>"]])
    );
    assert!(rows(&sf, &d, "CUSTOMERS", r#""ID""#).await.is_empty());
    assert!(rows(&sf, &d, "CUSTOMERS_FULL", r#""ID""#).await.is_empty());
    assert_eq!(
        rows(&sf, &d, "PK_ITEMS", r#""ID", "V""#).await,
        expect(&[&["2", "x"]])
    );
    assert_eq!(
        rows(&sf, &d, "ALL_TYPES", ALL_TYPES_COLS).await,
        vec![sparse_types_row(v)]
    );
    assert!(rows(&sf, &d, "ALL_TYPES_FULL", r#""ID""#).await.is_empty());
    // Inserts and their truncate in one batch: nothing to load, no table needed.
    match sf
        .execute(
            &format!(r#"SELECT COUNT(*) FROM "{d}"."CDC"."TRUNC_ITEMS""#),
            &[],
        )
        .await
    {
        Ok(r) => assert_eq!(r.rows[0][0].as_deref(), Some("0")),
        Err(e) => assert!(e.to_string().contains("does not exist"), "{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake emulator: make test"]
async fn noschemas_precise_fixtures_land_column_by_column() {
    check_scenarios(Variant::NoSchemas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake emulator: make test"]
async fn schemas_precise_fixtures_land_column_by_column() {
    check_scenarios(Variant::Schemas).await;
}

#[test]
fn canon_trims_fraction_zeros_only_of_times() {
    assert_eq!(
        canon("2024-03-15 08:20:30.123456000+00:00"),
        "2024-03-15 08:20:30.123456+00:00"
    );
    assert_eq!(canon("13:45:00.500000000"), "13:45:00.5");
    assert_eq!(
        canon("2024-03-15 10:20:30.000000000"),
        "2024-03-15 10:20:30"
    );
    assert_eq!(canon("12345.670"), "12345.670");
    assert_eq!(canon("10.50"), "10.50");
}

/// A column added at the source mid-stream (a real Debezium insert, edited to carry one
/// more column): the target gets it by ALTER TABLE and loads the row; older rows keep
/// NULL there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake emulator: make test"]
async fn a_new_source_column_is_added_to_the_target() {
    let sf = snowflake().await;
    let d = unique("FIX_ADD_COLUMN").to_uppercase();
    let v = Variant::NoSchemas;
    replay(&[prefix(v, "crud_replica_identity_default.jsonl", 1)], &d).await;
    let text = std::fs::read_to_string(file(v, "crud_replica_identity_default.jsonl")).unwrap();
    let mut line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    line["key"]["id"] = 2.into();
    line["value"]["after"]["id"] = 2.into();
    line["value"]["after"]["phone"] = "+41 79 000 00 00".into();
    let dir = std::env::temp_dir().join(unique("floe-add-column"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("added.jsonl");
    std::fs::write(&p, format!("{line}\n")).unwrap();
    let s = replay(&[p], &d).await;
    assert_eq!(s.columns_added, 1, "{s:?}");
    assert_eq!(
        rows(&sf, &d, "CUSTOMERS", r#""ID", "NAME", "PHONE""#).await,
        expect(&[
            &["1", "Alice", "<NULL>"],
            &["2", "Alice", "+41 79 000 00 00"]
        ])
    );
}
