//! Per-topic message formats (`[[source.formats]]`): what a topic's values are, told
//! by configuration instead of guessed from their fields.
//!
//! Without configuration (`auto`) the components tell Debezium's envelope from a record
//! flattened by ExtractNewRecordState (unwrap) per message: by the value schema's name
//! when the converter wrote schemas, else by the envelope's shape. A flattened record's
//! fields prefixed like the SMT's `add.fields` (`__op`, `__lsn`, `__deleted`, ...) are
//! then read as metadata. A topic configured as `unwrap` is read with exactly the
//! SMT's settings instead (its `add.fields`, their prefix, its delete handling), so a
//! column named `op`, `source`, `payload` or even `__deleted` stays a column: floe turns
//! each record into Debezium's envelope here, before any component runs, and every
//! component (user components too) sees that envelope. A topic configured as `envelope`
//! accepts only Debezium's envelope. The dead letter queue always keeps the original
//! bytes.

use regex::Regex;
use serde_json::{Map, Value};

use crate::config::{DeleteHandling, FormatConfig, TopicFormat};

/// The resolved `[[source.formats]]`, first match wins.
#[derive(Debug, Default)]
pub struct Formats {
    rules: Vec<(Regex, Format)>,
}

/// How one topic's values are read.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Told per message by the components.
    Auto,
    /// Debezium's envelope only.
    Envelope,
    /// ExtractNewRecordState records with these settings.
    Unwrap(Unwrap),
}

/// The ExtractNewRecordState settings a topic was written with.
#[derive(Debug, Clone, PartialEq)]
pub struct Unwrap {
    /// The fields the SMT added (`add.fields`), by their record field name
    /// (prefix + name with `.` as `_`), each with what it is.
    added: Vec<(String, Added)>,
    /// `<prefix>deleted`, when the SMT rewrites deletes (`rewrite*` modes).
    deleted_field: Option<String>,
}

/// What an added field carries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Added {
    Op,
    /// A field of the source block, by its name there (`table`, `lsn`, `ts_ms` for
    /// `source.ts_ms`, ...).
    Source(String),
    /// Anything else (`ts_ms`, `transaction.id`, ...): metadata floe does not use.
    Ignored,
}

impl Formats {
    pub fn new(configs: &[FormatConfig]) -> Result<Formats, String> {
        let mut rules = Vec::with_capacity(configs.len());
        for c in configs {
            let pattern = if c.topics.starts_with('^') {
                c.topics.clone()
            } else {
                format!("^{}", c.topics)
            };
            let re = Regex::new(&pattern)
                .map_err(|e| format!("source.formats: topics {:?}: {e}", c.topics))?;
            let format = match c.format {
                TopicFormat::Auto => Format::Auto,
                TopicFormat::Envelope => Format::Envelope,
                TopicFormat::Unwrap => Format::Unwrap(Unwrap::new(c)),
            };
            rules.push((re, format));
        }
        Ok(Formats { rules })
    }

    /// The format of `topic`.
    pub fn of(&self, topic: &str) -> &Format {
        self.rules
            .iter()
            .find(|(re, _)| re.is_match(topic))
            .map_or(&Format::Auto, |(_, f)| f)
    }

    /// Whether every topic is `auto` (nothing to do per message).
    pub fn is_auto(&self) -> bool {
        self.rules.iter().all(|(_, f)| *f == Format::Auto)
    }
}

impl Unwrap {
    fn new(c: &FormatConfig) -> Unwrap {
        let prefix = &c.add_fields_prefix;
        let added = c
            .add_fields
            .iter()
            .map(|f| {
                let kind = match f.as_str() {
                    "op" => Added::Op,
                    "ts_ms" | "ts_us" | "ts_ns" => Added::Ignored,
                    f if f.starts_with("transaction.") => Added::Ignored,
                    f => Added::Source(f.strip_prefix("source.").unwrap_or(f).to_owned()),
                };
                (format!("{prefix}{}", f.replace('.', "_")), kind)
            })
            .collect();
        let deleted_field = matches!(
            c.delete_handling,
            DeleteHandling::Rewrite | DeleteHandling::RewriteWithTombstone
        )
        .then(|| format!("{prefix}deleted"));
        Unwrap {
            added,
            deleted_field,
        }
    }
}

impl Format {
    /// The value the components get for `value` (`None`: the value as it is), or why
    /// it is not a value of this format.
    pub fn normalize(&self, value: Option<&[u8]>) -> Result<Option<Vec<u8>>, String> {
        let Some(value) = value else {
            return Ok(None);
        };
        confluent_framed(value)?;
        match self {
            Format::Auto => Ok(None),
            Format::Envelope => check_envelope(value).map(|()| None),
            Format::Unwrap(u) => u.to_envelope(value),
        }
    }
}

/// A value in the Confluent wire format (magic byte 0, a 4-byte big-endian schema id,
/// then the serialised record), as Kafka Connect's Avro, Protobuf and JSON Schema
/// converters write it, refused with a reason that says so. With
/// `source.schema_registry` set, Avro values are decoded before they get here
/// ([`crate::avro`]). No JSON text starts with a
/// zero byte, so a JsonConverter value is never taken for one.
fn confluent_framed(value: &[u8]) -> Result<(), String> {
    match value {
        [0, a, b, c, d, ..] => Err(format!(
            "parse: the value is in the Confluent wire format (magic byte 0, schema id {}): \
             it was written by a Schema Registry converter (Avro, Protobuf or JSON Schema); \
             for Avro set source.schema_registry, else configure the connector with \
             org.apache.kafka.connect.json.JsonConverter",
            u32::from_be_bytes([*a, *b, *c, *d])
        )),
        _ => Ok(()),
    }
}

fn parse(value: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(value).map_err(|e| format!("parse: {e}"))
}

/// `Some((schema, payload))` for a JsonConverter `{"schema": {..}, "payload": ..}` frame.
fn frame(v: &mut Value) -> Option<(Value, Value)> {
    let m = v.as_object_mut()?;
    if m.len() != 2 || !m.get("schema").is_some_and(Value::is_object) || !m.contains_key("payload")
    {
        return None;
    }
    Some((m.remove("schema")?, m.remove("payload")?))
}

fn is_envelope(m: &Map<String, Value>) -> bool {
    const FIELDS: [&str; 10] = [
        "before",
        "after",
        "source",
        "op",
        "ts_ms",
        "ts_us",
        "ts_ns",
        "transaction",
        "message",
        "schema",
    ];
    m.get("op").is_some_and(Value::is_string)
        && m.keys().all(|k| FIELDS.contains(&k.as_str()))
        && m.get("source").is_none_or(Value::is_object)
}

fn check_envelope(value: &[u8]) -> Result<(), String> {
    let mut v = parse(value)?;
    let payload = match frame(&mut v) {
        Some((_, payload)) => payload,
        None => v,
    };
    match payload {
        Value::Null => Ok(()),
        Value::Object(m) if is_envelope(&m) => Ok(()),
        _ => Err(
            "validation: the topic's format is `envelope` (source.formats), but the value is \
             not a Debezium envelope"
                .to_owned(),
        ),
    }
}

impl Unwrap {
    /// A flattened record as Debezium's envelope (with its schema, when it has one).
    fn to_envelope(&self, value: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let mut v = parse(value)?;
        let (schema, payload) = match frame(&mut v) {
            Some((schema, payload)) => (Some(schema), payload),
            None => (None, v),
        };
        let mut record = match payload {
            // A null payload is a tombstone: as it is.
            Value::Null => return Ok(None),
            Value::Object(m) => m,
            _ => return Err("validation: value is not a JSON object".to_owned()),
        };
        // Logical-decoding messages pass through the SMT as full envelopes.
        if record.get("op").and_then(Value::as_str) == Some("m") && is_envelope(&record) {
            return Ok(None);
        }
        let mut op: Option<String> = None;
        let mut source = Map::new();
        for (name, kind) in &self.added {
            let Some(v) = record.shift_remove(name) else {
                continue;
            };
            match kind {
                Added::Op => match v {
                    Value::String(s) => op = Some(s),
                    Value::Null => {}
                    other => {
                        return Err(format!("validation: '{name}' is {other}, not an op code"));
                    }
                },
                Added::Source(field) => {
                    source.insert(field.clone(), v);
                }
                Added::Ignored => {}
            }
        }
        let deleted = match &self.deleted_field {
            None => false,
            Some(name) => match record.shift_remove(name) {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(Value::String(s)) if s == "true" => true,
                Some(Value::String(s)) if s == "false" => false,
                Some(other) => {
                    return Err(format!(
                        "validation: '{name}' is {other}, not true or false"
                    ));
                }
            },
        };
        let op = match op {
            _ if deleted => "d".to_owned(),
            Some(code) if ["c", "u", "d", "r"].contains(&code.as_str()) => code,
            Some(code) => {
                return Err(format!(
                    "validation: unknown op '{}' in the record's added op field",
                    code.escape_debug()
                ));
            }
            // Without the op the SMT added, a record is an upsert.
            None => "u".to_owned(),
        };
        let row = Value::Object(record);
        let (before, after) = if op == "d" {
            (row, Value::Null)
        } else {
            (Value::Null, row)
        };
        let mut envelope = Map::new();
        envelope.insert("before".into(), before);
        envelope.insert("after".into(), after);
        envelope.insert("source".into(), Value::Object(source));
        envelope.insert("op".into(), Value::String(op));
        let out = match schema {
            None => Value::Object(envelope),
            Some(schema) => {
                let mut framed = Map::new();
                framed.insert("schema".into(), self.envelope_schema(schema));
                framed.insert("payload".into(), Value::Object(envelope));
                Value::Object(framed)
            }
        };
        serde_json::to_vec(&out)
            .map(Some)
            .map_err(|e| format!("validation: {e}"))
    }

    /// The envelope schema of a flattened record's struct schema: `before` and
    /// `after` are the record's struct without the added fields.
    fn envelope_schema(&self, schema: Value) -> Value {
        let mut row = schema;
        if let Some(fields) = row.get_mut("fields").and_then(Value::as_array_mut) {
            fields.retain(|f| {
                let name = f.get("field").and_then(Value::as_str).unwrap_or_default();
                !self.added.iter().any(|(n, _)| n == name)
                    && self.deleted_field.as_deref() != Some(name)
            });
        }
        if let Some(m) = row.as_object_mut() {
            m.insert("optional".into(), Value::Bool(true));
        }
        let side = |name: &str| {
            let mut s = row.clone();
            if let Some(m) = s.as_object_mut() {
                m.insert("field".into(), Value::String(name.to_owned()));
            }
            s
        };
        serde_json::json!({
            "type": "struct",
            "name": "floe.unwrap.Envelope",
            "optional": false,
            "fields": [
                side("before"),
                side("after"),
                {"type": "struct", "optional": false, "field": "source", "fields": []},
                {"type": "string", "optional": false, "field": "op"}
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unwrap(add_fields: &[&str], delete_handling: DeleteHandling) -> Format {
        let c = FormatConfig {
            topics: ".*".into(),
            format: TopicFormat::Unwrap,
            add_fields: add_fields.iter().map(|s| s.to_string()).collect(),
            add_fields_prefix: "__".into(),
            delete_handling,
        };
        Formats::new(&[c]).unwrap().of("dbz.public.t").clone()
    }

    fn envelope(f: &Format, v: &str) -> Value {
        let out = f.normalize(Some(v.as_bytes())).unwrap().expect("rewritten");
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn user_columns_named_like_metadata_stay_columns() {
        // No add.fields, default delete handling: every field is a column, `__deleted`
        // included; the record is an upsert.
        let f = unwrap(&[], DeleteHandling::Tombstone);
        let e = envelope(
            &f,
            r#"{"id":1,"op":"t","source":"s","payload":null,"before":"b","after":"a","__deleted":true}"#,
        );
        assert_eq!(e["op"], "u");
        assert_eq!(
            e["after"],
            serde_json::json!({"id":1,"op":"t","source":"s","payload":null,"before":"b","after":"a","__deleted":true})
        );
        assert_eq!(e["before"], Value::Null);
    }

    #[test]
    fn added_fields_become_the_envelope() {
        let f = unwrap(
            &["op", "table", "lsn", "source.ts_ms", "ts_ms"],
            DeleteHandling::Rewrite,
        );
        let e = envelope(
            &f,
            r#"{"id":1,"op":"x","__op":"c","__table":"t","__lsn":42,"__source_ts_ms":7,"__ts_ms":9,"__deleted":"false"}"#,
        );
        assert_eq!(e["op"], "c");
        assert_eq!(e["after"], serde_json::json!({"id":1,"op":"x"}));
        assert_eq!(
            e["source"],
            serde_json::json!({"table":"t","lsn":42,"ts_ms":7})
        );
        let d = envelope(&f, r#"{"id":1,"__op":"d","__lsn":43,"__deleted":"true"}"#);
        assert_eq!(
            (d["op"].as_str(), &d["before"]),
            (Some("d"), &serde_json::json!({"id":1}))
        );
        assert_eq!(d["after"], Value::Null);
        assert!(f.normalize(Some(br#"{"id":1,"__op":"z"}"#)).is_err());
        assert!(
            f.normalize(Some(br#"{"id":1,"__deleted":"maybe"}"#))
                .is_err()
        );
        assert_eq!(f.normalize(None).unwrap(), None, "tombstones stay");
        assert_eq!(f.normalize(Some(b"null")).unwrap(), None);
    }

    #[test]
    fn schemas_lose_the_added_fields_and_frame_the_envelope() {
        let f = unwrap(&["op", "lsn"], DeleteHandling::Tombstone);
        let v = r#"{"schema":{"type":"struct","name":"dbz.public.t.Value","fields":[
            {"field":"id","type":"int32","optional":false},
            {"field":"op","type":"string","optional":true},
            {"field":"__op","type":"string","optional":true},
            {"field":"__lsn","type":"int64","optional":true}]},
            "payload":{"id":1,"op":"t","__op":"u","__lsn":5}}"#;
        let e = envelope(&f, v);
        assert_eq!(e["payload"]["op"], "u");
        assert_eq!(e["payload"]["after"], serde_json::json!({"id":1,"op":"t"}));
        let after = &e["schema"]["fields"][1];
        assert_eq!(after["field"], "after");
        let names: Vec<&str> = after["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["id", "op"]);
        assert!(e["schema"]["name"].as_str().unwrap().ends_with(".Envelope"));
    }

    #[test]
    fn schema_registry_framed_values_are_refused_with_their_schema_id() {
        // Magic byte 0, schema id 42, then an Avro record's bytes.
        let avro = [0u8, 0, 0, 0, 42, 2, 0x0c, b'a', b'b'];
        let formats = [
            Format::Auto,
            Format::Envelope,
            unwrap(&[], DeleteHandling::Rewrite),
        ];
        for format in formats {
            let err = format.normalize(Some(&avro)).unwrap_err();
            assert!(err.starts_with("parse: "), "{err}");
            assert!(err.contains("schema id 42"), "{err}");
            assert!(err.contains("JsonConverter"), "{err}");
        }
        // Too short to carry a schema id: left to the parser, as any other bytes.
        assert_eq!(Format::Auto.normalize(Some(&[0u8, 0, 1])), Ok(None));
        // JSON (with leading whitespace too) is untouched.
        assert_eq!(Format::Auto.normalize(Some(b" {\"op\":\"c\"}")), Ok(None));
    }

    #[test]
    fn envelope_topics_take_only_envelopes() {
        let c = FormatConfig {
            topics: "dbz\\..*".into(),
            format: TopicFormat::Envelope,
            ..FormatConfig::default()
        };
        let formats = Formats::new(&[c]).unwrap();
        assert_eq!(formats.of("other.x.y"), &Format::Auto);
        let f = formats.of("dbz.public.t");
        let ok = r#"{"before":null,"after":{"id":1},"source":{"lsn":1},"op":"c","ts_ms":1}"#;
        assert_eq!(f.normalize(Some(ok.as_bytes())).unwrap(), None);
        let framed = format!(r#"{{"schema":{{"type":"struct"}},"payload":{ok}}}"#);
        assert_eq!(f.normalize(Some(framed.as_bytes())).unwrap(), None);
        let e = f.normalize(Some(br#"{"id":1,"op":"c"}"#)).unwrap_err();
        assert!(e.starts_with("validation: "), "{e}");
    }
}
