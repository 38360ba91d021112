//! Real Debezium output serialised twice, by the JsonConverter (schemas on) and by
//! Confluent's AvroConverter (tests/fixtures/avro, written by dev/avro-fixtures.sh):
//! every Avro key and value decodes to its JSON twin, schema and payload, except for
//! what two forwarders of one change differ in; and the pipeline prepares the same
//! loads from either, through the envelope and through the unwrap SMT.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::{Decoder, Resolved, SchemaRegistry, framed_id};
use crate::config::SchemaRegistryConfig;
use crate::message::Message;

pub(crate) fn fixtures_dir() -> std::path::PathBuf {
    // Read at run time: a test binary built in another checkout sharing the target
    // directory still reads this checkout's fixtures.
    let manifest =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    std::path::PathBuf::from(manifest).join("../../tests/fixtures/avro")
}

/// One captured record.
pub(crate) struct Record {
    pub pair: String,
    pub format: String,
    pub smt: Option<String>,
    pub message: Message,
}

pub(crate) fn records() -> Vec<Record> {
    let text = std::fs::read_to_string(fixtures_dir().join("messages.jsonl")).unwrap();
    let b64 = |v: &Value| v.as_str().map(|s| STANDARD.decode(s).unwrap());
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            Record {
                pair: v["pair"].as_str().unwrap().to_owned(),
                format: v["format"].as_str().unwrap().to_owned(),
                smt: v["smt"].as_str().map(str::to_owned),
                message: Message {
                    topic: Arc::from(v["topic"].as_str().unwrap()),
                    partition: v["partition"].as_i64().unwrap() as i32,
                    offset: v["offset"].as_i64().unwrap(),
                    timestamp_ms: None,
                    key: b64(&v["key_b64"]),
                    value: b64(&v["value_b64"]),
                    headers: Vec::new(),
                },
            }
        })
        .collect()
}

pub(crate) fn schemas_file_config() -> SchemaRegistryConfig {
    SchemaRegistryConfig {
        url: None,
        schemas_file: Some(fixtures_dir().join("schemas.json")),
        ..SchemaRegistryConfig::at("")
    }
}

fn decoders() -> HashMap<u32, Decoder> {
    let text = std::fs::read_to_string(fixtures_dir().join("schemas.json")).unwrap();
    let map: HashMap<String, String> = serde_json::from_str(&text).unwrap();
    map.into_iter()
        .map(|(id, schema)| (id.parse().unwrap(), Decoder::new(&schema).unwrap()))
        .collect()
}

/// `v` without what differs between two forwarders of one change: the topic prefix in
/// names, processing times, and a snapshot read's position.
fn comparable(mut v: Value, prefix: &str) -> Value {
    fn walk(v: &mut Value, prefix: &str) {
        match v {
            Value::String(s) if s.starts_with(prefix) => {
                *s = s.replacen(prefix, "PREFIX", 1);
            }
            Value::String(s) if s.ends_with(prefix) => {
                *s = "PREFIX".into();
            }
            Value::Array(a) => a.iter_mut().for_each(|v| walk(v, prefix)),
            Value::Object(m) => m.values_mut().for_each(|v| walk(v, prefix)),
            _ => {}
        }
    }
    walk(&mut v, prefix);
    if let Some(payload) = v.get_mut("payload").and_then(Value::as_object_mut) {
        let snapshot = payload.get("op").and_then(Value::as_str) == Some("r");
        for ts in ["ts_ms", "ts_us", "ts_ns"] {
            payload.shift_remove(ts);
        }
        if let Some(source) = payload.get_mut("source").and_then(Value::as_object_mut)
            && snapshot
        {
            for field in ["lsn", "sequence", "txId", "ts_ms", "ts_us", "ts_ns"] {
                source.shift_remove(field);
            }
        }
    }
    v
}

#[test]
fn every_avro_key_and_value_decodes_to_its_json_twin() {
    let decoders = decoders();
    let records = records();
    let json: HashMap<&str, &Record> = (records.iter())
        .filter(|r| r.format == "json")
        .map(|r| (r.pair.as_str(), r))
        .collect();
    let mut compared = 0;
    for avro in records
        .iter()
        .filter(|r| r.format == "avro" && r.smt.is_none())
    {
        let twin = json[avro.pair.as_str()];
        for (what, a, j) in [
            ("key", &avro.message.key, &twin.message.key),
            ("value", &avro.message.value, &twin.message.value),
        ] {
            let (Some(a), Some(j)) = (a, j) else {
                assert_eq!(a.is_none(), j.is_none(), "{} {what}", avro.pair);
                continue;
            };
            let id = framed_id(a).expect("framed");
            let decoded = decoders[&id].decode(&a[5..]).unwrap();
            let decoded: Value = serde_json::from_slice(&decoded).unwrap();
            let expected: Value = serde_json::from_slice(j).unwrap();
            let (decoded, expected) = (
                comparable(decoded, "fxavro"),
                comparable(expected, "fxjson"),
            );
            assert_eq!(
                decoded["schema"], expected["schema"],
                "{} {what}: schema",
                avro.pair
            );
            assert_eq!(
                decoded["payload"], expected["payload"],
                "{} {what}: payload",
                avro.pair
            );
            compared += 1;
        }
    }
    // Every pair but the first heartbeat's has a key; tombstones have no value.
    assert!(compared >= 100, "{compared} keys and values compared");
}

#[tokio::test]
async fn the_registry_of_the_fixtures_resolves_every_id_they_carry() {
    let registry = SchemaRegistry::new(&schemas_file_config()).unwrap();
    let messages: Vec<Message> = records().into_iter().map(|r| r.message).collect();
    let ids = super::schema_ids(&messages);
    assert_eq!(ids.len(), 18, "{ids:?}");
    let resolved: Resolved = registry.resolve(&ids).await.unwrap();
    for m in &messages {
        for b in [&m.key, &m.value].into_iter().flatten() {
            if let Some(r) = resolved.decode(b) {
                r.unwrap();
            }
        }
    }
}
