//! Keys and values in the Confluent wire format (a zero byte, a 4-byte big-endian
//! schema id, then an Avro record), as Kafka Connect's `AvroConverter` writes them,
//! turned into exactly the JSON the JsonConverter (with schemas) writes for the same
//! change: `{"schema": <Connect schema>, "payload": <value>}`. Decoding happens in the
//! host, before any component: every component (user components included) sees what
//! it sees on a JSON topic, and the dead letter queue keeps the original bytes.
//!
//! A batch's schema ids are resolved first ([`SchemaRegistry::resolve`], async: the
//! registry is asked for the ones not cached yet), then its messages are decoded with
//! what was resolved ([`Resolved::decode`], synchronous, in the CPU-bound preparation).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::config::SchemaRegistryConfig;
use crate::message::Message;

pub mod decode;
pub mod registry;
pub mod schema;
#[cfg(test)]
pub(crate) mod twins;

pub use registry::{Fetched, RegistryError};

/// The schema id of a key or value in the Confluent wire format.
pub fn framed_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// One writer schema, ready to decode with.
#[derive(Debug)]
pub struct Decoder {
    node: Arc<schema::Node>,
    /// `{"schema":<Connect schema>,"payload":` of every record of this schema.
    prefix: Vec<u8>,
}

impl Decoder {
    /// A decoder of the Avro schema `text`.
    pub fn new(text: &str) -> Result<Decoder, String> {
        let node = schema::parse(text)?;
        let mut prefix = b"{\"schema\":".to_vec();
        serde_json::to_writer(&mut prefix, &node.connect_schema()).map_err(|e| e.to_string())?;
        prefix.extend_from_slice(b",\"payload\":");
        Ok(Decoder { node, prefix })
    }

    /// The JsonConverter's JSON (with schema) of the Avro record `data`.
    pub fn decode(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(self.prefix.len() + data.len() * 3 + 16);
        out.extend_from_slice(&self.prefix);
        decode::decode(&self.node, data, &mut out)?;
        out.push(b'}');
        Ok(out)
    }
}

/// What a schema id resolved to for one batch.
#[derive(Debug, Clone)]
enum Entry {
    Ready(Arc<Decoder>),
    /// Why its messages cannot be read (unknown id, not Avro, not a schema floe reads).
    Refused(Arc<str>),
}

/// The schemas of one batch's messages, resolved.
#[derive(Debug, Default)]
pub struct Resolved {
    entries: HashMap<u32, Entry>,
}

impl Resolved {
    /// `None` when `bytes` is not in the Confluent wire format; else its JSON, or why
    /// it cannot be read (a dead letter's reason, starting with `parse:`).
    pub fn decode(&self, bytes: &[u8]) -> Option<Result<Vec<u8>, String>> {
        let id = framed_id(bytes)?;
        Some(match self.entries.get(&id) {
            Some(Entry::Ready(d)) => d
                .decode(&bytes[5..])
                .map_err(|e| format!("parse: Avro record of schema id {id}: {e}")),
            Some(Entry::Refused(reason)) => Err(format!("parse: {reason}")),
            None => Err(format!(
                "parse: schema id {id} was not resolved before decoding (a floe bug)"
            )),
        })
    }
}

/// A message's key and value as the components get them (`None`: its own).
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

impl Resolved {
    /// The JSON of `m`'s Avro key and value (`None`: not Avro), or why not, as a dead
    /// letter's reason.
    pub fn decode_message(&self, m: &Message) -> Result<KeyValue, String> {
        let decode = |b: &Option<Vec<u8>>| b.as_deref().and_then(|b| self.decode(b)).transpose();
        let key = decode(&m.key).map_err(|e| format!("{e} (the key)"))?;
        Ok((key, decode(&m.value)?))
    }
}

/// Replaces `m`'s Avro key and value with their JSON ([`Resolved::decode_message`]);
/// why not, as a dead letter's reason (`m` is then as it was).
pub fn decode_message(resolved: &Resolved, m: &mut Message) -> Result<(), String> {
    let (key, value) = resolved.decode_message(m)?;
    if key.is_some() {
        m.key = key;
    }
    if value.is_some() {
        m.value = value;
    }
    Ok(())
}

/// The schema ids of `messages`' keys and values in the Confluent wire format.
pub fn schema_ids(messages: &[Message]) -> BTreeSet<u32> {
    messages
        .iter()
        .flat_map(|m| [m.key.as_deref(), m.value.as_deref()])
        .flatten()
        .filter_map(framed_id)
        .collect()
}

/// A Schema Registry and the schemas fetched from it, cached by id; and the schemas
/// of `schemas_file`, looked up first.
pub struct SchemaRegistry {
    client: Option<registry::Client>,
    /// `schemas_file`'s schemas.
    given: HashMap<u32, Arc<Decoder>>,
    /// Where `given` came from, for reasons.
    file: Option<std::path::PathBuf>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    capacity: usize,
    by_id: HashMap<u32, Arc<Decoder>>,
    /// Ids in the order they were fetched: the oldest is dropped first.
    order: VecDeque<u32>,
}

impl Cache {
    fn insert(&mut self, id: u32, decoder: Arc<Decoder>) {
        if self.by_id.insert(id, decoder).is_none() {
            self.order.push_back(id);
        }
        while self.by_id.len() > self.capacity.max(1) {
            match self.order.pop_front() {
                Some(old) => {
                    self.by_id.remove(&old);
                }
                None => break,
            }
        }
    }
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("url", &self.url())
            .field("cached", &self.cached())
            .finish()
    }
}

impl SchemaRegistry {
    /// The registry `cfg` configures, if any (`source.schema_registry`).
    pub fn configured(
        cfg: Option<&SchemaRegistryConfig>,
    ) -> Result<Option<Arc<SchemaRegistry>>, RegistryError> {
        cfg.map(|c| SchemaRegistry::new(c).map(Arc::new))
            .transpose()
    }

    pub fn new(cfg: &SchemaRegistryConfig) -> Result<SchemaRegistry, RegistryError> {
        let client = match &cfg.url {
            Some(url) => Some(registry::Client::new(url, cfg)?),
            None if cfg.schemas_file.is_some() => None,
            None => {
                return Err(RegistryError::Config(
                    "neither url nor schemas_file is set".into(),
                ));
            }
        };
        let given = match &cfg.schemas_file {
            Some(path) => given_schemas(path).map_err(|e| {
                RegistryError::Config(format!("schemas_file {}: {e}", path.display()))
            })?,
            None => HashMap::new(),
        };
        Ok(SchemaRegistry {
            client,
            given,
            file: cfg.schemas_file.clone(),
            cache: Mutex::new(Cache {
                capacity: cfg.cache_size,
                ..Cache::default()
            }),
        })
    }

    /// The registry's URL (none: `schemas_file` only).
    pub fn url(&self) -> Option<&str> {
        self.client.as_ref().map(registry::Client::url)
    }

    /// Schemas held in memory.
    pub fn cached(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.by_id.len())
    }

    /// Resolves `ids`: cached ones from memory, the others from the registry. Stops at
    /// the first id the registry cannot answer for (nothing is dead-lettered for it:
    /// the caller retries the batch); ids it answered for stay cached.
    pub async fn resolve(&self, ids: &BTreeSet<u32>) -> Result<Resolved, RegistryError> {
        let mut resolved = Resolved::default();
        for &id in ids {
            let cached = (self.given.get(&id).cloned()).or_else(|| {
                self.cache
                    .lock()
                    .ok()
                    .and_then(|c| c.by_id.get(&id).cloned())
            });
            let Some(client) = &self.client else {
                let entry = match cached {
                    Some(d) => Entry::Ready(d),
                    None => Entry::Refused(
                        format!(
                            "schema id {id} is not in schemas_file {} (and no url is set)",
                            self.file
                                .as_deref()
                                .unwrap_or(std::path::Path::new(""))
                                .display()
                        )
                        .into(),
                    ),
                };
                resolved.entries.insert(id, entry);
                continue;
            };
            let entry = match cached {
                Some(d) => Entry::Ready(d),
                None => match client.schema(id).await? {
                    Fetched::Avro(text) => match Decoder::new(&text) {
                        Ok(d) => {
                            let d = Arc::new(d);
                            if let Ok(mut c) = self.cache.lock() {
                                c.insert(id, d.clone());
                            }
                            Entry::Ready(d)
                        }
                        Err(e) => Entry::Refused(
                            format!("schema id {id} is not an Avro schema floe can read: {e}")
                                .into(),
                        ),
                    },
                    Fetched::Refused(reason) => Entry::Refused(reason.into()),
                },
            };
            resolved.entries.insert(id, entry);
        }
        Ok(resolved)
    }
}

/// The schemas of a `schemas_file`: `{"<id>": <schema text, or the schema as JSON>}`.
fn given_schemas(path: &std::path::Path) -> Result<HashMap<u32, Arc<Decoder>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let map: HashMap<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| format!("not a JSON object of schemas: {e}"))?;
    let mut out = HashMap::with_capacity(map.len());
    for (id, schema) in map {
        let n: u32 = id
            .parse()
            .map_err(|_| format!("{id:?} is not a schema id (a number)"))?;
        let text = match schema {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        let d = Decoder::new(&text).map_err(|e| format!("schema {id}: {e}"))?;
        out.insert(n, Arc::new(d));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn a_framed_record_reads_as_the_json_converter_frame() {
        let schema = json!({"type": "record", "name": "Key", "namespace": "dbz.public.t",
            "fields": [{"name": "id", "type": "int"}], "connect.name": "dbz.public.t.Key"});
        let d = Arc::new(Decoder::new(&schema.to_string()).unwrap());
        let mut resolved = Resolved::default();
        resolved.entries.insert(7, Entry::Ready(d.clone()));
        resolved
            .entries
            .insert(8, Entry::Refused("schema id 8 is gone".into()));
        let mut bytes = vec![0, 0, 0, 0, 7];
        decode::tests::long(42, &mut bytes);
        let json: Value =
            serde_json::from_slice(&resolved.decode(&bytes).unwrap().unwrap()).unwrap();
        assert_eq!(
            json,
            json!({"schema": {"type": "struct", "fields": [
                {"type": "int32", "optional": false, "field": "id"}],
                "optional": false, "name": "dbz.public.t.Key"},
                "payload": {"id": 42}})
        );
        assert!(
            resolved.decode(br#"{"id":42}"#).is_none(),
            "JSON is not framed"
        );
        let e = resolved.decode(&[0, 0, 0, 0, 8, 2]).unwrap().unwrap_err();
        assert_eq!(e, "parse: schema id 8 is gone");
        let e = resolved.decode(&[0, 0, 0, 0, 7]).unwrap().unwrap_err();
        assert!(e.starts_with("parse: Avro record of schema id 7: "), "{e}");
        let e = resolved.decode(&[0, 0, 0, 0, 9, 1]).unwrap().unwrap_err();
        assert!(e.contains("not resolved"), "{e}");
    }

    #[tokio::test]
    async fn a_schemas_file_stands_in_for_the_registry() {
        let dir = std::env::temp_dir().join(format!("floe-avro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("schemas.json");
        // One schema as the registry's text, one as JSON.
        std::fs::write(
            &file,
            r#"{"1": "\"long\"", "2": {"type": "array", "items": "int"}}"#,
        )
        .unwrap();
        let cfg = SchemaRegistryConfig {
            url: None,
            schemas_file: Some(file.clone()),
            ..SchemaRegistryConfig::at("")
        };
        let registry = SchemaRegistry::new(&cfg).unwrap();
        assert_eq!(registry.url(), None);
        let resolved = registry.resolve(&BTreeSet::from([1, 2, 3])).await.unwrap();
        let mut m = Message {
            topic: Arc::from("t"),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(vec![0, 0, 0, 0, 1, 84]),        // 42
            value: Some(vec![0, 0, 0, 0, 2, 2, 2, 0]), // [1]
            headers: Vec::new(),
        };
        decode_message(&resolved, &mut m).unwrap();
        let json = |b: &Option<Vec<u8>>| -> Value {
            serde_json::from_slice(b.as_deref().unwrap()).unwrap()
        };
        assert_eq!(json(&m.key)["payload"], json!(42));
        assert_eq!(
            json(&m.key)["schema"],
            json!({"type": "int64", "optional": false})
        );
        assert_eq!(json(&m.value)["payload"], json!([1]));
        m.value = Some(vec![0, 0, 0, 0, 3, 0]);
        let e = decode_message(&resolved, &mut m).unwrap_err();
        assert!(e.contains("schema id 3 is not in schemas_file"), "{e}");
        // Neither setting, or a bad file: refused at start.
        let none = SchemaRegistryConfig {
            url: None,
            ..SchemaRegistryConfig::at("")
        };
        assert!(SchemaRegistry::new(&none).is_err());
        std::fs::write(&file, r#"{"x": "\"long\""}"#).unwrap();
        let e = SchemaRegistry::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("not a schema id"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cache_drops_the_oldest_schema_first() {
        let d = Arc::new(Decoder::new(r#""string""#).unwrap());
        let mut c = Cache {
            capacity: 2,
            ..Cache::default()
        };
        for id in [1, 2, 1, 3] {
            c.insert(id, d.clone());
        }
        let mut ids: Vec<u32> = c.by_id.keys().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![2, 3]);
    }

    #[test]
    fn schema_ids_come_from_keys_and_values() {
        let m = |key: Option<Vec<u8>>, value: Option<Vec<u8>>| Message {
            topic: Arc::from("t"),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key,
            value,
            headers: Vec::new(),
        };
        let messages = [
            m(Some(vec![0, 0, 0, 0, 1, 2]), Some(vec![0, 0, 0, 1, 0, 2])),
            m(None, Some(b"{}".to_vec())),
            m(Some(vec![0, 0, 0, 0, 1]), None),
        ];
        assert_eq!(schema_ids(&messages), BTreeSet::from([1, 256]));
    }
}
