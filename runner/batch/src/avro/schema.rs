//! An Avro writer schema (the JSON text a Schema Registry holds) parsed into a tree
//! that decodes records, with the Kafka Connect schema each node stands for.
//!
//! Kafka Connect's `AvroData` carries what Avro cannot say in the schema's own
//! properties: `connect.name` (`io.debezium.time.MicroTimestamp`,
//! `org.apache.kafka.connect.data.Decimal`, ...), `connect.version`,
//! `connect.parameters` and `connect.type` (`int8`, `int16`). A union of `null` and
//! one type is Connect's optional. Those give back exactly the Connect schema that
//! the JsonConverter would have written (see [`Node::connect_schema`]), so a record
//! decoded here reads the same as the JsonConverter's output of the same change.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

/// One node of a parsed schema.
#[derive(Debug)]
pub struct Node {
    pub kind: Kind,
    /// The Connect schema's name (`connect.name`, else a named Avro type's full name).
    pub name: Option<String>,
    /// `connect.version`.
    pub version: Option<i64>,
    /// `connect.parameters` (and a decimal's scale and precision).
    pub parameters: Option<Map<String, Value>>,
    /// `connect.doc`.
    pub doc: Option<String>,
    /// `connect.default`: the Connect schema's default value.
    pub default: Option<Value>,
    /// `connect.type`: `int8` or `int16` for an Avro `int`.
    pub connect_type: Option<&'static str>,
}

/// What a node decodes.
#[derive(Debug)]
pub enum Kind {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum(Vec<String>),
    Array(Arc<Node>),
    Map(Arc<Node>),
    Record(Vec<Field>),
    /// Connect's optional: `null` or the type, by the union branch number of `null`.
    Optional {
        null_branch: u8,
        inner: Arc<Node>,
    },
}

#[derive(Debug)]
pub struct Field {
    pub name: String,
    pub node: Arc<Node>,
}

/// Parses a writer schema (JSON text).
pub fn parse(text: &str) -> Result<Arc<Node>, String> {
    let json: Value =
        serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
    Parser::default().node(&json, "")
}

#[derive(Default)]
struct Parser {
    /// Named types defined so far, by full name.
    named: HashMap<String, Arc<Node>>,
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

impl Parser {
    fn node(&mut self, json: &Value, namespace: &str) -> Result<Arc<Node>, String> {
        match json {
            Value::String(name) => self.named_or_primitive(name, namespace),
            Value::Array(branches) => self.union(branches, namespace),
            Value::Object(m) => self.complex(m, namespace),
            other => Err(format!("not an Avro schema: {other}")),
        }
    }

    fn named_or_primitive(&mut self, name: &str, namespace: &str) -> Result<Arc<Node>, String> {
        if let Some(kind) = primitive(name) {
            return Ok(Arc::new(plain(kind)));
        }
        self.named
            .get(&full_name(name, namespace))
            .or_else(|| self.named.get(name))
            .cloned()
            .ok_or_else(|| {
                format!("unknown type '{name}' (recursive types are not supported either)")
            })
    }

    fn union(&mut self, branches: &[Value], namespace: &str) -> Result<Arc<Node>, String> {
        let nodes = branches
            .iter()
            .map(|b| self.node(b, namespace))
            .collect::<Result<Vec<_>, _>>()?;
        match nodes.as_slice() {
            [a, b] if matches!(a.kind, Kind::Null) && !matches!(b.kind, Kind::Null) => {
                Ok(Arc::new(plain(Kind::Optional {
                    null_branch: 0,
                    inner: b.clone(),
                })))
            }
            [a, b] if matches!(b.kind, Kind::Null) && !matches!(a.kind, Kind::Null) => {
                Ok(Arc::new(plain(Kind::Optional {
                    null_branch: 1,
                    inner: a.clone(),
                })))
            }
            _ => Err(format!(
                "a union of {} types: only a union of null and one type (Kafka Connect's \
                 optional) is supported",
                nodes.len()
            )),
        }
    }

    fn complex(&mut self, m: &Map<String, Value>, namespace: &str) -> Result<Arc<Node>, String> {
        let ty = m.get("type").ok_or("a schema object without 'type'")?;
        let ty = match ty {
            Value::String(s) => s.as_str(),
            // {"type": {...}} or {"type": [...]}: the inner schema, these props ignored.
            nested => return self.node(nested, namespace),
        };
        let name_of = |m: &Map<String, Value>| -> Result<(String, String), String> {
            let name = m
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("a {ty} without a name"))?;
            let ns = m
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(namespace);
            let full = full_name(name, ns);
            let ns = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_owned();
            Ok((full, ns))
        };
        let kind = match ty {
            "record" | "error" => {
                let (full, ns) = name_of(m)?;
                let fields = m
                    .get("fields")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("record '{full}' has no fields array"))?;
                let fields = fields
                    .iter()
                    .map(|f| {
                        let name = f
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| format!("a field of record '{full}' has no name"))?;
                        let schema = f.get("type").ok_or_else(|| {
                            format!("field '{name}' of record '{full}' has no type")
                        })?;
                        let node = self
                            .node(schema, &ns)
                            .map_err(|e| format!("field '{name}' of record '{full}': {e}"))?;
                        Ok(Field {
                            name: name.to_owned(),
                            node,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                return self.define(full, Kind::Record(fields), m);
            }
            "enum" => {
                let (full, _) = name_of(m)?;
                let symbols = m
                    .get("symbols")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("enum '{full}' has no symbols"))?
                    .iter()
                    .map(|s| s.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("enum '{full}' has a symbol that is not a string"))?;
                return self.define(full, Kind::Enum(symbols), m);
            }
            "fixed" => {
                let (full, _) = name_of(m)?;
                let size = m
                    .get("size")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| format!("fixed '{full}' has no size"))?;
                return self.define(full, Kind::Fixed(size as usize), m);
            }
            "array" => {
                let items = m.get("items").ok_or("an array without items")?;
                Kind::Array(self.node(items, namespace)?)
            }
            "map" => {
                let values = m.get("values").ok_or("a map without values")?;
                Kind::Map(self.node(values, namespace)?)
            }
            other => primitive(other).ok_or_else(|| format!("unknown type '{other}'"))?,
        };
        Ok(Arc::new(annotate(kind, None, m)))
    }

    fn define(
        &mut self,
        full: String,
        kind: Kind,
        m: &Map<String, Value>,
    ) -> Result<Arc<Node>, String> {
        let node = Arc::new(annotate(kind, Some(&full), m));
        if self.named.insert(full.clone(), node.clone()).is_some() {
            return Err(format!("type '{full}' is defined twice"));
        }
        Ok(node)
    }
}

fn primitive(name: &str) -> Option<Kind> {
    Some(match name {
        "null" => Kind::Null,
        "boolean" => Kind::Boolean,
        "int" => Kind::Int,
        "long" => Kind::Long,
        "float" => Kind::Float,
        "double" => Kind::Double,
        "bytes" => Kind::Bytes,
        "string" => Kind::String,
        _ => return None,
    })
}

fn plain(kind: Kind) -> Node {
    Node {
        kind,
        name: None,
        version: None,
        parameters: None,
        doc: None,
        default: None,
        connect_type: None,
    }
}

/// `kind` with the Connect schema properties of schema object `m`, as `AvroData`
/// reads them back.
fn annotate(kind: Kind, avro_name: Option<&str>, m: &Map<String, Value>) -> Node {
    let mut parameters = match m.get("connect.parameters") {
        Some(Value::Object(p)) => Some(p.clone()),
        _ => None,
    };
    let logical = m.get("logicalType").and_then(Value::as_str);
    let mut name = m
        .get("connect.name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut version = m.get("connect.version").and_then(Value::as_i64);
    // Avro's own logical types, as Connect's logical types.
    match (logical, &kind) {
        (Some("decimal"), Kind::Bytes | Kind::Fixed(_)) => {
            name.get_or_insert_with(|| "org.apache.kafka.connect.data.Decimal".into());
            version.get_or_insert(1);
            let p = parameters.get_or_insert_with(Map::new);
            let scale = m.get("scale").and_then(Value::as_i64).unwrap_or(0);
            p.entry("scale")
                .or_insert_with(|| Value::String(scale.to_string()));
            if let Some(precision) = m.get("precision").and_then(Value::as_i64) {
                p.entry("connect.decimal.precision")
                    .or_insert_with(|| Value::String(precision.to_string()));
            }
        }
        (Some("date"), Kind::Int) => {
            name.get_or_insert_with(|| "org.apache.kafka.connect.data.Date".into());
            version.get_or_insert(1);
        }
        (Some("time-millis"), Kind::Int) => {
            name.get_or_insert_with(|| "org.apache.kafka.connect.data.Time".into());
            version.get_or_insert(1);
        }
        (Some("timestamp-millis"), Kind::Long) => {
            name.get_or_insert_with(|| "org.apache.kafka.connect.data.Timestamp".into());
            version.get_or_insert(1);
        }
        _ => {}
    }
    // A named Avro type without connect.name keeps its Avro full name, as AvroData
    // does (except its placeholder for unnamed Connect structs).
    if name.is_none() {
        name = avro_name
            .filter(|n| !n.starts_with("io.confluent.connect.avro.ConnectDefault"))
            .map(str::to_owned);
    }
    let connect_type = match (m.get("connect.type").and_then(Value::as_str), &kind) {
        (Some("int8"), Kind::Int) => Some("int8"),
        (Some("int16"), Kind::Int) => Some("int16"),
        _ => None,
    };
    Node {
        kind,
        name,
        version,
        parameters,
        doc: m
            .get("connect.doc")
            .and_then(Value::as_str)
            .map(str::to_owned),
        default: m.get("connect.default").cloned(),
        connect_type,
    }
}

impl Node {
    /// The Kafka Connect schema this node stands for, as the JsonConverter writes it
    /// (`{"type", "optional", "name", "version", "parameters", "fields", ...}`).
    pub fn connect_schema(&self) -> Value {
        self.connect(false, None)
    }

    fn connect(&self, optional: bool, field: Option<&str>) -> Value {
        let mut m = Map::new();
        let ty = match &self.kind {
            Kind::Optional { inner, .. } => return inner.connect(true, field),
            Kind::Null => "null",
            Kind::Boolean => "boolean",
            Kind::Int => self.connect_type.unwrap_or("int32"),
            Kind::Long => "int64",
            Kind::Float => "float",
            Kind::Double => "double",
            Kind::Bytes | Kind::Fixed(_) => "bytes",
            Kind::String | Kind::Enum(_) => "string",
            Kind::Array(_) => "array",
            Kind::Map(_) => "map",
            Kind::Record(_) => "struct",
        };
        m.insert("type".into(), Value::String(ty.into()));
        match &self.kind {
            Kind::Record(fields) => {
                let fields = fields
                    .iter()
                    .map(|f| f.node.connect(false, Some(&f.name)))
                    .collect();
                m.insert("fields".into(), Value::Array(fields));
            }
            Kind::Array(items) => {
                m.insert("items".into(), items.connect(false, None));
            }
            Kind::Map(values) => {
                m.insert(
                    "keys".into(),
                    serde_json::json!({"type": "string", "optional": false}),
                );
                m.insert("values".into(), values.connect(false, None));
            }
            _ => {}
        }
        m.insert("optional".into(), Value::Bool(optional));
        if let Some(name) = &self.name {
            m.insert("name".into(), Value::String(name.clone()));
        }
        if let Some(version) = self.version {
            m.insert("version".into(), Value::from(version));
        }
        if let Some(doc) = &self.doc {
            m.insert("doc".into(), Value::String(doc.clone()));
        }
        if let Some(parameters) = &self.parameters {
            m.insert("parameters".into(), Value::Object(parameters.clone()));
        }
        if let Some(default) = &self.default {
            m.insert("default".into(), default.clone());
        }
        if let Some(field) = field {
            m.insert("field".into(), Value::String(field.into()));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn connect_properties_give_back_the_connect_schema() {
        let schema = json!({
            "type": "record", "name": "Value", "namespace": "dbz.public.t",
            "fields": [
                {"name": "id", "type": "int"},
                {"name": "small", "type": ["null", {"type": "int", "connect.type": "int16"}], "default": null},
                {"name": "amount", "type": ["null", {"type": "bytes", "scale": 2, "precision": 12,
                    "connect.version": 1,
                    "connect.parameters": {"scale": "2", "connect.decimal.precision": "12"},
                    "connect.name": "org.apache.kafka.connect.data.Decimal", "logicalType": "decimal"}]},
                {"name": "ts", "type": {"type": "long", "connect.version": 1,
                    "connect.name": "io.debezium.time.MicroTimestamp"}},
                {"name": "tags", "type": ["null", {"type": "array", "items": ["null", "string"]}]}
            ],
            "connect.name": "dbz.public.t.Value"
        });
        let node = parse(&schema.to_string()).unwrap();
        assert_eq!(
            node.connect_schema(),
            json!({"type": "struct", "fields": [
                {"type": "int32", "optional": false, "field": "id"},
                {"type": "int16", "optional": true, "field": "small"},
                {"type": "bytes", "optional": true, "name": "org.apache.kafka.connect.data.Decimal",
                 "version": 1, "parameters": {"scale": "2", "connect.decimal.precision": "12"},
                 "field": "amount"},
                {"type": "int64", "optional": false, "name": "io.debezium.time.MicroTimestamp",
                 "version": 1, "field": "ts"},
                {"type": "array", "items": {"type": "string", "optional": true},
                 "optional": true, "field": "tags"}
            ], "optional": false, "name": "dbz.public.t.Value"})
        );
    }

    #[test]
    fn named_types_are_referenced_by_name_in_their_namespace() {
        let schema = json!({
            "type": "record", "name": "Envelope", "namespace": "dbz.public.t",
            "fields": [
                {"name": "before", "type": ["null", {"type": "record", "name": "Value",
                    "fields": [{"name": "id", "type": "int"}]}], "default": null},
                {"name": "after", "type": ["null", "Value"], "default": null},
                {"name": "same", "type": ["dbz.public.t.Value", "null"]}
            ]
        });
        let node = parse(&schema.to_string()).unwrap();
        let c = node.connect_schema();
        assert_eq!(c["name"], "dbz.public.t.Envelope");
        assert_eq!(c["fields"][1]["name"], "dbz.public.t.Value");
        assert_eq!(c["fields"][1]["optional"], true);
        assert_eq!(c["fields"][2]["fields"][0]["field"], "id");
    }

    #[test]
    fn what_connect_cannot_hold_is_refused_with_a_reason() {
        let e = parse(r#"["null","int","string"]"#).unwrap_err();
        assert!(e.contains("union of 3 types"), "{e}");
        let e =
            parse(r#"{"type":"record","name":"R","fields":[{"name":"next","type":["null","R"]}]}"#)
                .unwrap_err();
        assert!(e.contains("unknown type 'R'"), "{e}");
        assert!(parse("{").unwrap_err().contains("not JSON"));
        assert!(
            parse(r#"{"type":"uuid"}"#)
                .unwrap_err()
                .contains("unknown type")
        );
    }
}
