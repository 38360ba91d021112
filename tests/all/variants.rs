//! The fixture variants besides `*_precise` (decimals as strings or doubles, and the two
//! ExtractNewRecordState "unwrap" formats) replayed through the file source: the whole
//! stream of each variant, and each of its scenario files on its own, land the same final
//! tables, with the values and column types its encoding carries, and the
//! unchanged-TOAST update keeps the target's text.

use std::path::PathBuf;

use floe_snowflake::Client;

use crate::support::{fixtures_dir, query, replay, snowflake, unique};

const VARIANTS: [&str; 5] = [
    "schemas_string",
    "noschemas_string",
    "noschemas_double",
    "unwrap_default_noschemas",
    "unwrap_rewrite_noschemas",
];

fn file(variant: &str, name: &str) -> PathBuf {
    let p = fixtures_dir().join(variant).join(name);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

fn prefix(variant: &str, name: &str, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(file(variant, name)).unwrap();
    let lines: Vec<&str> = text.lines().take(n).collect();
    let dir = std::env::temp_dir().join(unique("floe-variant"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

async fn rows(sf: &Client, db: &str, table: &str, cols: &str) -> Vec<Vec<String>> {
    let sql = format!(r#"SELECT {cols} FROM "{db}"."CDC"."{table}" ORDER BY 1"#);
    query(sf, &sql).await
}

async fn columns(sf: &Client, db: &str, table: &str) -> Vec<Vec<String>> {
    let sql = format!(
        "SELECT COLUMN_NAME, DATA_TYPE FROM \"{db}\".INFORMATION_SCHEMA.COLUMNS \
         WHERE TABLE_SCHEMA = 'CDC' AND TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION"
    );
    query(sf, &sql).await
}

/// What a variant's encoding makes of the values the assertions look at.
struct Expect {
    variant: &'static str,
    /// `snap_items.price` of rows 1 and 2 (numeric(10,2) 10.50 and 0.99).
    prices: [&'static str; 2],
    /// `all_types` row 2: `num12_2` (-0.50) and `d` (1969-12-31).
    num: &'static str,
    date: &'static str,
    /// Row 1's `num12_2` after the update to 99.99.
    updated_num: &'static str,
    /// Target types of `num12_2` and `d`.
    types: [&'static str; 2],
    /// `__op` of an insert (without `add.fields=op` an upsert is `u`).
    insert_op: &'static str,
    /// Whether `__lsn` is known (the plain unwrap format carries none).
    lsn: bool,
    /// ExtractNewRecordState drops truncates: the two rows stay.
    truncated: bool,
}

const EXPECT: [Expect; 5] = [
    Expect {
        variant: "schemas_string",
        prices: ["10.50", "0.99"],
        num: "-0.50",
        date: "1969-12-31",
        updated_num: "99.99",
        types: ["TEXT", "DATE"],
        insert_op: "c",
        lsn: true,
        truncated: true,
    },
    Expect {
        variant: "noschemas_string",
        prices: ["10.50", "0.99"],
        num: "-0.50",
        date: "-1",
        updated_num: "99.99",
        types: ["TEXT", "NUMBER"],
        insert_op: "c",
        lsn: true,
        truncated: true,
    },
    Expect {
        variant: "noschemas_double",
        prices: ["10.5", "0.99"],
        num: "-0.5",
        date: "-1",
        updated_num: "99.99",
        types: ["FLOAT", "NUMBER"],
        insert_op: "c",
        lsn: true,
        truncated: true,
    },
    Expect {
        variant: "unwrap_default_noschemas",
        prices: ["BBo=", "Yw=="],
        num: "zg==",
        date: "-1",
        updated_num: "Jw8=",
        types: ["TEXT", "NUMBER"],
        insert_op: "u",
        lsn: false,
        truncated: false,
    },
    Expect {
        variant: "unwrap_rewrite_noschemas",
        prices: ["BBo=", "Yw=="],
        num: "zg==",
        date: "-1",
        updated_num: "Jw8=",
        types: ["TEXT", "NUMBER"],
        insert_op: "c",
        lsn: true,
        truncated: false,
    },
];

const ALL_TYPES_COLUMNS: [&str; 23] = [
    "ID",
    "NUM12_2",
    "NUM_VAR",
    "TS_TZ",
    "TS",
    "D",
    "T",
    "JS",
    "J",
    "U",
    "B",
    "FLAG",
    "TAGS",
    "I2",
    "I8",
    "F4",
    "F8",
    "VC",
    "IV",
    "BIG_TEXT",
    "__OP",
    "__LSN",
    "__SOURCE_TS_MS",
];

fn owned(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|v| v.to_string()).collect())
        .collect()
}

/// Asserts the final state of one scenario table of variant `e` in database `d`.
async fn assert_table(sf: &Client, e: &Expect, d: &str, table: &str) {
    let v = e.variant;
    let op = e.insert_op;
    match table {
        "SNAP_ITEMS" => assert_eq!(
            rows(sf, d, "SNAP_ITEMS", r#""ID", "NAME", "PRICE""#).await,
            owned(&[
                &["1", "alpha", e.prices[0]],
                &["2", "beta", e.prices[1]],
                &["3", "gamma", "<NULL>"]
            ]),
            "{v}"
        ),
        "CUSTOMERS" | "CUSTOMERS_FULL" | "ALL_TYPES_FULL" => assert!(
            rows(sf, d, table, r#""ID""#).await.is_empty(),
            "{v}: {table}"
        ),
        "PK_ITEMS" => assert_eq!(
            rows(sf, d, "PK_ITEMS", r#""ID", "V", "__OP""#).await,
            owned(&[&["2", "x", op]]),
            "{v}"
        ),
        "ALL_TYPES" => {
            // The surviving all_types row, every column; only row 2 remains.
            let mut row2 = vec!["2", e.num, "<NULL>", "<NULL>", "<NULL>", e.date];
            row2.extend(["<NULL>"; 14]);
            row2.push(op);
            let cols = ALL_TYPES_COLUMNS[..21]
                .iter()
                .map(|c| format!(r#""{c}""#))
                .collect::<Vec<_>>()
                .join(", ");
            assert_eq!(
                rows(sf, d, "ALL_TYPES", &cols).await,
                owned(&[&row2]),
                "{v}"
            );
            let lsn = &rows(sf, d, "ALL_TYPES", r#""__LSN""#).await[0][0];
            assert_eq!(lsn != "<NULL>", e.lsn, "{v}: __LSN {lsn}");
            // Debezium's added fields (`__deleted`, `__table`, `__txId`) are not columns.
            let cols = columns(sf, d, "ALL_TYPES").await;
            let names: Vec<&str> = cols.iter().map(|c| c[0].as_str()).collect();
            assert_eq!(names, ALL_TYPES_COLUMNS, "{v}");
            let types: Vec<&str> = cols[1..]
                .iter()
                .step_by(4)
                .take(2)
                .map(|c| c[1].as_str())
                .collect();
            assert_eq!(types, e.types, "{v}: NUM12_2 and D");
        }
        "TRUNC_ITEMS" => {
            let trunc_sql =
                format!(r#"SELECT "ID", "V" FROM "{d}"."CDC"."TRUNC_ITEMS" ORDER BY 1"#);
            match sf.execute(&trunc_sql, &[]).await {
                Ok(r) if e.truncated => assert!(r.rows.is_empty(), "{v}"),
                Ok(r) => assert_eq!(r.rows.len(), 2, "{v}: the truncate is not in the stream"),
                // Inserts and their truncate in one batch: no table needed.
                Err(err) => assert!(
                    e.truncated && err.to_string().contains("does not exist"),
                    "{v}: {err}"
                ),
            }
        }
        other => panic!("no expectation for {other}"),
    }
}

/// Each scenario file of a variant and the table it changes.
const SCENARIOS: [(&str, &str); 8] = [
    ("snapshot_read.jsonl", "SNAP_ITEMS"),
    ("crud_replica_identity_default.jsonl", "CUSTOMERS"),
    ("crud_replica_identity_full.jsonl", "CUSTOMERS_FULL"),
    ("pk_update.jsonl", "PK_ITEMS"),
    ("truncate.jsonl", "TRUNC_ITEMS"),
    ("types_toast_replica_identity_default.jsonl", "ALL_TYPES"),
    ("types_toast_replica_identity_full.jsonl", "ALL_TYPES_FULL"),
    ("logical_message.jsonl", ""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake emulator: make test"]
async fn every_other_variant_lands_its_whole_stream() {
    assert_eq!(EXPECT.map(|e| e.variant), VARIANTS);
    let sf = snowflake().await;
    for e in &EXPECT {
        let v = e.variant;
        let d = unique(&format!("VAR_{v}")).to_uppercase();
        let s = replay(&[file(v, "_all_in_order.jsonl")], &d).await;
        assert_eq!((s.events_rejected, s.events_failed), (0, 0), "{v}: {s:?}");

        for (_, table) in SCENARIOS.iter().filter(|(_, t)| !t.is_empty()) {
            assert_table(&sf, e, &d, table).await;
        }

        // Every scenario file on its own, into its own database: the same final table.
        for (name, table) in SCENARIOS {
            let d = unique(&format!("VAR_{v}_F")).to_uppercase();
            let s = replay(&[file(v, name)], &d).await;
            assert_eq!(
                (s.events_rejected, s.events_failed),
                (0, 0),
                "{v}/{name}: {s:?}"
            );
            if table.is_empty() {
                // The logical message: consumed, skipped, nothing loaded.
                assert_eq!(
                    (s.events_consumed, s.events_skipped, s.rows_loaded),
                    (1, 1, 0)
                );
            } else {
                assert_table(&sf, e, &d, table).await;
            }
        }

        // The update that leaves the TOASTed text unchanged keeps the target's text.
        let d = unique(&format!("VAR_{v}_T")).to_uppercase();
        replay(
            &[prefix(v, "types_toast_replica_identity_default.jsonl", 3)],
            &d,
        )
        .await;
        assert_eq!(
            rows(
                &sf,
                &d,
                "ALL_TYPES",
                r#""ID", "NUM12_2", LENGTH("BIG_TEXT"), "FLAG""#
            )
            .await,
            owned(&[
                &["1", e.updated_num, "9600", "false"],
                &["2", e.num, "<NULL>", "<NULL>"]
            ]),
            "{v}"
        );
    }
}
