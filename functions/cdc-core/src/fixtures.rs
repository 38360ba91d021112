//! Test access to the real Debezium fixtures in `shared/debezium-fixtures` (see its
//! README): one Kafka record per line, key and value embedded verbatim.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::types::Event;

/// One fixture record, key and value as the exact bytes Kafka would carry.
pub struct Record {
    pub topic: String,
    pub key: Option<String>,
    pub value: Option<String>,
}

impl Record {
    pub fn event(&self, offset: i64) -> Event<'_> {
        Event {
            topic: &self.topic,
            partition: 0,
            offset,
            timestamp_ms: None,
            key: self.key.as_deref().map(str::as_bytes),
            value: self.value.as_deref().map(str::as_bytes),
        }
    }
}

#[derive(Deserialize)]
struct Line<'a> {
    topic: String,
    #[serde(borrow)]
    key: Option<&'a RawValue>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
}

fn dir() -> PathBuf {
    // Cargo sets CARGO_MANIFEST_DIR for `cargo test` at run time too; reading it then
    // keeps a test binary built in another checkout (a shared target dir) pointing here.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.join("../../../shared/debezium-fixtures")
}

/// The records of `<variant>/<scenario>.jsonl`.
pub fn load(variant: &str, scenario: &str) -> Vec<Record> {
    let path = dir().join(variant).join(format!("{scenario}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read Debezium fixture {}: {e}. The tests need the shared fixtures \
             checked out beside the repository (../shared/debezium-fixtures).",
            path.display()
        )
    });
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let line: Line<'_> = serde_json::from_str(l).expect("fixture line is JSON");
            Record {
                topic: line.topic,
                key: line.key.map(|k| k.get().to_owned()),
                value: line.value.map(|v| v.get().to_owned()),
            }
        })
        .collect()
}

/// Events borrowing `records`, offsets in file order.
pub fn events(records: &[Record]) -> Vec<Event<'_>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| r.event(i as i64))
        .collect()
}

/// Every variant directory.
pub const VARIANTS: [&str; 7] = [
    "schemas_precise",
    "schemas_string",
    "noschemas_precise",
    "noschemas_string",
    "noschemas_double",
    "unwrap_default_noschemas",
    "unwrap_rewrite_noschemas",
];
