//! Decoding of one Debezium event: JSON framing (with or without Connect schemas),
//! classification, and the default validation rules shared by [`crate::validate`] and
//! [`crate::transform`].
//!
//! Parsing is lazy where it can be: `before`, `after` and the Connect schema are kept
//! as raw JSON slices of the input here; only the transformer parses the part it uses,
//! and it parses each distinct schema text once per batch.
//!
//! Reasons returned as `Err(String)` start with `parse:` (the bytes are not JSON) or
//! `validation:` (JSON, but not an event floe can load).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::types::{Event, Op};

/// Topics of Debezium heartbeats (`__debezium-heartbeat.<prefix>`) start with this.
pub const HEARTBEAT_TOPIC_PREFIX: &str = "__debezium-heartbeat";
/// Topics of Debezium transaction metadata (`<prefix>.transaction`) end with this.
pub const TRANSACTION_TOPIC_SUFFIX: &str = ".transaction";

/// The fields of a Debezium value that floe reads, and whether it had others.
///
/// The same struct reads both framings: a with-schemas value has `schema` and
/// `payload` (and no `op`), a schemaless one has the envelope fields directly. Every
/// field is kept raw: whether `op` and `source` are Debezium's or a flattened record's
/// columns of those names is decided afterwards ([`RawEnvelope::is_envelope`]).
#[derive(Default)]
struct RawEnvelope<'a> {
    schema: Option<&'a RawValue>,
    /// `Some` whenever the field is present, even as `null`.
    payload: Option<&'a RawValue>,
    op: Option<&'a RawValue>,
    before: Option<&'a RawValue>,
    after: Option<&'a RawValue>,
    source: Option<&'a RawValue>,
    /// `before`, `after` and `source` fields present, `null` or not.
    envelope_fields: usize,
    /// Other fields Debezium's envelope has (`ts_ms`, `transaction`, `message`, ...).
    envelope_extras: usize,
    /// Fields no Debezium envelope has: this is a flattened record.
    others: usize,
}

/// Top-level fields of Debezium's envelope that floe does not read.
const ENVELOPE_EXTRAS: [&str; 5] = ["ts_ms", "ts_us", "ts_ns", "transaction", "message"];

impl<'de: 'a, 'a> serde::Deserialize<'de> for RawEnvelope<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = RawEnvelope<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a Debezium change event (a JSON object)")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut out = RawEnvelope::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = match &*key {
                        "schema" => &mut out.schema,
                        "payload" => &mut out.payload,
                        "op" => &mut out.op,
                        "before" => &mut out.before,
                        "after" => &mut out.after,
                        "source" => &mut out.source,
                        other => {
                            if ENVELOPE_EXTRAS.contains(&other) {
                                out.envelope_extras += 1;
                            } else {
                                out.others += 1;
                            }
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    let raw = map.next_value::<&'de RawValue>()?;
                    if matches!(&*key, "before" | "after" | "source") {
                        out.envelope_fields += 1;
                    }
                    // `null` reads as absent, except for `payload` (a null payload is
                    // a tombstone).
                    if raw.get() != "null" || key == "payload" {
                        *slot = Some(raw);
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

impl<'a> RawEnvelope<'a> {
    /// A `{"schema": {..}, "payload": ..}` frame (JsonConverter with schemas): exactly
    /// those two fields, the schema an object.
    fn is_frame(&self) -> bool {
        self.payload.is_some()
            && self.schema.is_some_and(|s| s.get().starts_with('{'))
            && self.op.is_none()
            && self.before.is_none()
            && self.after.is_none()
            && self.source.is_none()
            && self.envelope_extras == 0
            && self.others == 0
    }

    /// Debezium's envelope, not a flattened record with columns named like its
    /// fields: `op` is a string, `source` (when present) an object, another envelope
    /// field is there besides `op`, and no field is foreign to the envelope. (A
    /// JSON-converted row holds an object only for a struct-typed column, so a row
    /// whose every column is named like an envelope field and whose `source` is a
    /// struct is all it would take to mislead this; a configured format per topic
    /// removes even that.)
    fn is_envelope(&self) -> bool {
        let object = |v: Option<&RawValue>| v.is_some_and(|v| v.get().starts_with('{'));
        self.others == 0
            && self.schema.is_none()
            && self.payload.is_none()
            && self.op.is_some_and(|o| o.get().starts_with('"'))
            && match self.source {
                Some(_) => object(self.source),
                None => self.envelope_fields + self.envelope_extras > 0,
            }
    }

    /// `op` as text (only meaningful for an envelope).
    fn op(&self) -> Option<String> {
        self.op
            .and_then(|o| serde_json::from_str::<String>(o.get()).ok())
    }

    /// The source block (only meaningful for an envelope).
    fn source(&self) -> Result<Option<Source>, String> {
        match self.source {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|e| format!("validation: value: {e}")),
        }
    }
}

/// What a named Connect value schema says: `Some(true)` for Debezium's envelope
/// (`<prefix>.<schema>.<table>.Envelope`, or a logical message's `...MessageValue`),
/// `Some(false)` for a flattened record's (`...Value`), `None` otherwise (the payload's
/// shape decides).
fn schema_is_envelope(schema: &RawValue) -> Option<bool> {
    #[derive(Deserialize)]
    struct Named {
        #[serde(default)]
        name: Option<String>,
    }
    let name = serde_json::from_str::<Named>(schema.get()).ok()?.name?;
    if name.ends_with(".Envelope") || name.ends_with(".MessageValue") {
        Some(true)
    } else if name.ends_with(".Value") {
        Some(false)
    } else {
        None
    }
}

/// The `source` block fields floe uses.
#[derive(Deserialize, Default)]
#[serde(expecting = "a Debezium source block (a JSON object)")]
struct Source {
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    lsn: Option<i64>,
    #[serde(default)]
    ts_ms: Option<i64>,
}

/// A key with a Connect schema: exactly `{"schema": .., "payload": ..}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FramedKey<'a> {
    #[serde(borrow)]
    schema: &'a RawValue,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Why an event carries nothing to load (it is consumed and skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Null value (Kafka tombstone), including the JSON text `null`.
    Tombstone,
    /// A `__debezium-heartbeat*` topic.
    Heartbeat,
    /// A `*.transaction` topic record without `op` (BEGIN/END metadata).
    TransactionMetadata,
    /// `op: "m"`: a logical-decoding message.
    Message,
}

/// The message key of a change event.
pub(crate) struct Key<'a> {
    /// Key fields in key order (the key payload when the key has a schema).
    pub fields: Map<String, Value>,
    /// The key's Connect schema, when the key converter wrote one.
    pub schema: Option<&'a RawValue>,
}

/// A row change (`op` c, u, d or r) that passed the validation rules.
pub(crate) struct Change<'a> {
    pub op: Op,
    pub key: Key<'a>,
    /// `before`, a JSON object, when non-null.
    pub before: Option<&'a RawValue>,
    /// `after`, a JSON object, when non-null.
    pub after: Option<&'a RawValue>,
    /// The value's Connect schema (the whole envelope schema), when present.
    pub value_schema: Option<&'a RawValue>,
    /// Source table as `schema.table`.
    pub table: String,
    pub lsn: Option<i64>,
    pub source_ts_ms: Option<i64>,
    /// A flattened (ExtractNewRecordState) record: `before`/`after` hold the record
    /// itself, `value_schema` is the record's struct schema, and fields named like
    /// Debezium's `add.fields` (`__op`, `__deleted`, `__lsn`, ...) are not columns.
    pub flat: bool,
}

/// What one event is.
pub(crate) enum Decoded<'a> {
    #[allow(dead_code, reason = "the kind of skip is read by tests only")]
    Skip(Skip),
    Truncate {
        table: String,
        lsn: Option<i64>,
    },
    Change(Box<Change<'a>>),
    /// A keyed tombstone: under ExtractNewRecordState's default delete handling the
    /// only sign of a delete. A delete of the key (no LSN); the transformer drops it
    /// when a delete of the same key precedes it in the batch (the envelope formats
    /// send a tombstone right after every delete).
    Tombstone(Box<Change<'a>>),
}

/// The value schemas of `{"schema": .., "payload": ..}` frames seen so far in a batch,
/// the last one per topic: every event of a table repeats the same schema, about three
/// quarters of its bytes. An event that repeats it byte for byte is not scanned for it
/// again (see [`Frames::repeated`]), and gets the same `&RawValue` as the first, so the
/// transformer finds its parsed schema without hashing the text.
#[derive(Default)]
pub(crate) struct Frames<'a> {
    /// (topic, schema, what [`schema_is_envelope`] said of it); a handful of topics.
    last: Vec<(&'a str, &'a RawValue, Option<bool>)>,
}

/// The most topics [`Frames`] remembers; more are decoded in full.
const FRAME_TOPICS: usize = 16;

impl<'a> Frames<'a> {
    /// `value` as `{"schema":<the topic's last schema>,"payload":<P>}`, exactly that
    /// (compact, no other field, nothing after but whitespace): the remembered schema,
    /// what its name says and the payload. `None` means: decode it in full. The answer
    /// is what the full parse gives for these bytes: the schema's bytes are those of one
    /// the full parse read, and the payload is parsed as one JSON value.
    fn repeated(
        &self,
        topic: &str,
        value: &'a [u8],
    ) -> Option<(&'a RawValue, Option<bool>, &'a RawValue)> {
        let &(_, schema, says) = self.last.iter().find(|(t, _, _)| *t == topic)?;
        let rest = value.strip_prefix(br#"{"schema":"#)?;
        let text = schema.get().as_bytes();
        if rest.len() < text.len() || !same_bytes(&rest[..text.len()], text) {
            return None;
        }
        let rest = rest[text.len()..].strip_prefix(br#","payload":"#)?;
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<&RawValue>();
        let payload = values.next()?.ok()?;
        let end = values.byte_offset();
        (rest[end..].trim_ascii() == b"}").then_some((schema, says, payload))
    }

    fn remember(&mut self, topic: &'a str, schema: &'a RawValue, says: Option<bool>) {
        if let Some(slot) = self.last.iter_mut().find(|(t, _, _)| *t == topic) {
            *slot = (topic, schema, says);
        } else if self.last.len() < FRAME_TOPICS {
            self.last.push((topic, schema, says));
        }
    }
}

/// `a == b` for slices of one length, eight bytes at a time: in a WebAssembly guest
/// the slice comparison is a byte loop.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tails = a8.remainder() == b8.remainder();
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().expect("8 bytes"));
    tails && a8.zip(b8).all(|(x, y)| word(x) == word(y))
}

/// A value's top level: a with-schemas frame (its schema, what the schema's name says,
/// its payload) or the envelope or record itself.
enum Framing<'a> {
    Frame(&'a RawValue, Option<bool>, &'a RawValue),
    Bare(RawEnvelope<'a>),
}

/// Decodes one event and applies the default validation rules. `Err` is the
/// human-readable reason the event cannot be loaded.
#[cfg(test)]
pub(crate) fn decode<'a>(event: &Event<'a>) -> Result<Decoded<'a>, String> {
    decode_in(&mut Frames::default(), event)
}

/// [`decode`] for one of a batch's events, with the frames seen before it.
pub(crate) fn decode_in<'a>(
    frames: &mut Frames<'a>,
    event: &Event<'a>,
) -> Result<Decoded<'a>, String> {
    if event.topic.starts_with(HEARTBEAT_TOPIC_PREFIX) {
        return Ok(Decoded::Skip(Skip::Heartbeat));
    }
    let value = match event.value {
        Some(value) if value.trim_ascii() != b"null" => value,
        _ => return tombstone(event),
    };

    // With schemas: {"schema": .., "payload": <envelope or flattened record>}; the
    // schema's name tells which.
    let framing = match frames.repeated(event.topic, value) {
        Some((schema, says, payload)) => Framing::Frame(schema, says, payload),
        None => {
            let top: RawEnvelope<'a> = parse_envelope(value)?;
            if top.is_frame() {
                let schema = top.schema.expect("a frame has a schema");
                let says = schema_is_envelope(schema);
                frames.remember(event.topic, schema, says);
                Framing::Frame(schema, says, top.payload.expect("a frame has a payload"))
            } else {
                Framing::Bare(top)
            }
        }
    };
    let (envelope, value_schema, record, schema_says_envelope) = match framing {
        Framing::Frame(schema, says, payload) => {
            if payload.get().trim_ascii() == "null" {
                return tombstone(event);
            }
            (
                parse_envelope(payload.get().as_bytes())?,
                Some(schema),
                Some(payload),
                says,
            )
        }
        Framing::Bare(top) => (top, None, None, None),
    };

    let is_envelope = schema_says_envelope.unwrap_or(true) && envelope.is_envelope();
    let op = envelope.op();
    let Some(op) = op.filter(|_| is_envelope) else {
        if event.topic.ends_with(TRANSACTION_TOPIC_SUFFIX) {
            return Ok(Decoded::Skip(Skip::TransactionMetadata));
        }
        if schema_says_envelope == Some(true) {
            return Err("validation: the value schema is a Debezium envelope's, but the payload is not one (no 'op' string or no source block)".to_owned());
        }
        // A record flattened by ExtractNewRecordState (unwrap): its fields are columns,
        // `op` and `source` included.
        let record = match record {
            Some(record) => record,
            None => serde_json::from_slice(value).map_err(|e| classify(&e, value, "value"))?,
        };
        return flat(event, record, value_schema);
    };
    let source = envelope.source()?;
    let op = match op.as_str() {
        "m" => return Ok(Decoded::Skip(Skip::Message)),
        "t" => {
            let table = table_name(source.as_ref(), event.topic)?;
            let lsn = source.as_ref().and_then(|s| s.lsn);
            return Ok(Decoded::Truncate { table, lsn });
        }
        other => Op::from_code(other)
            .ok_or_else(|| format!("validation: unknown op '{}'", other.escape_debug()))?,
    };

    let key = decode_key(event.key)?;
    let before = object_or_null(envelope.before, "before")?;
    let after = object_or_null(envelope.after, "after")?;
    match op {
        Op::Insert | Op::Update | Op::Read if after.is_none() => {
            return Err(format!("validation: op '{}' without 'after'", op.code()));
        }
        // A delete needs `before` or a key; the key is required above.
        _ => {}
    }
    let table = table_name(source.as_ref(), event.topic)?;
    let source = source.unwrap_or_default();
    Ok(Decoded::Change(Box::new(Change {
        op,
        key,
        before,
        after,
        value_schema,
        table,
        lsn: source.lsn,
        source_ts_ms: source.ts_ms,
        flat: false,
    })))
}

/// A null value (or a with-schemas `null` payload). Without a key it says nothing;
/// with one it may be the only sign of a delete (ExtractNewRecordState's default).
fn tombstone<'a>(event: &Event<'a>) -> Result<Decoded<'a>, String> {
    if event.key.is_none() || event.topic.ends_with(TRANSACTION_TOPIC_SUFFIX) {
        return Ok(Decoded::Skip(Skip::Tombstone));
    }
    let key = decode_key(event.key).map_err(|e| format!("{e} (tombstone)"))?;
    let table = table_name(None, event.topic)?;
    Ok(Decoded::Tombstone(Box::new(Change {
        op: Op::Delete,
        key,
        before: None,
        after: None,
        value_schema: None,
        table,
        lsn: None,
        source_ts_ms: None,
        flat: true,
    })))
}

/// The fields Debezium's ExtractNewRecordState adds (`add.fields`, default prefix
/// `__`) that floe reads.
#[derive(Deserialize)]
#[serde(expecting = "a flattened Debezium record (a JSON object)")]
struct FlatMeta {
    #[serde(rename = "__deleted", default)]
    deleted: Option<Value>,
    #[serde(rename = "__op", default)]
    op: Option<String>,
    #[serde(rename = "__lsn", default)]
    lsn: Option<i64>,
    #[serde(rename = "__source_ts_ms", default)]
    source_ts_ms: Option<i64>,
    #[serde(rename = "__schema", default)]
    schema: Option<String>,
    #[serde(rename = "__table", default)]
    table: Option<String>,
}

/// Whether a field of a flattened record is one of Debezium's `add.fields`
/// (`__op`, `__table`, `__lsn`, `__source_ts_ms`, `__txId`, ...) or the
/// `__deleted` flag rather than a source column.
pub(crate) fn is_added_field(name: &str) -> bool {
    const ADDED: [&str; 18] = [
        "deleted",
        "op",
        "table",
        "schema",
        "db",
        "lsn",
        "txId",
        "ts_ms",
        "ts_us",
        "ts_ns",
        "sequence",
        "snapshot",
        "version",
        "connector",
        "name",
        "xmin",
        "origin",
        "origin_lsn",
    ];
    name.strip_prefix("__").is_some_and(|rest| {
        ADDED.contains(&rest) || rest.starts_with("source_") || rest.starts_with("transaction_")
    })
}

/// A record flattened by ExtractNewRecordState: the row itself, a delete when
/// `__deleted` is true (`delete.tombstone.handling.mode=rewrite[-with-tombstone]`) or
/// `__op` is `d`; `__op`, `__lsn`, `__source_ts_ms`, `__schema` + `__table` are used
/// when the SMT added them. Without `__op` a row is an upsert (`u`).
fn flat<'a>(
    event: &Event<'a>,
    record: &'a RawValue,
    record_schema: Option<&'a RawValue>,
) -> Result<Decoded<'a>, String> {
    if !record.get().starts_with('{') {
        return Err("validation: value is not a JSON object".to_owned());
    }
    let meta: FlatMeta = serde_json::from_str(record.get())
        .map_err(|e| format!("validation: flattened record: {e}"))?;
    let deleted = match &meta.deleted {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" => true,
        Some(Value::String(s)) if s == "false" => false,
        Some(other) => {
            return Err(format!(
                "validation: flattened record: '__deleted' is {other}, not true or false"
            ));
        }
    };
    let op = match meta.op.as_deref() {
        _ if deleted => Op::Delete,
        None => Op::Update,
        Some(code) => Op::from_code(code).ok_or_else(|| {
            format!(
                "validation: flattened record: unknown '__op' '{}'",
                code.escape_debug()
            )
        })?,
    };
    let key = decode_key(event.key)?;
    let source = Source {
        schema: meta.schema,
        table: meta.table,
        ..Source::default()
    };
    let table = table_name(Some(&source), event.topic)?;
    let (before, after) = match op {
        Op::Delete => (Some(record), None),
        _ => (None, Some(record)),
    };
    Ok(Decoded::Change(Box::new(Change {
        op,
        key,
        before,
        after,
        value_schema: record_schema,
        table,
        lsn: meta.lsn,
        source_ts_ms: meta.source_ts_ms,
        flat: true,
    })))
}

fn parse_envelope(bytes: &[u8]) -> Result<RawEnvelope<'_>, String> {
    serde_json::from_slice(bytes).map_err(|e| classify(&e, bytes, "value"))
}

/// `parse:` for bytes that are not JSON, `validation:` for JSON of the wrong shape.
fn classify(e: &serde_json::Error, bytes: &[u8], what: &str) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            if bytes.trim_ascii_start().first() == Some(&b'{') {
                format!("validation: {what}: {e}")
            } else {
                format!("validation: {what} is not a JSON object")
            }
        }
        Category::Syntax | Category::Eof | Category::Io => {
            if what == "value" {
                format!("parse: {e}")
            } else {
                format!("parse: {what}: {e}")
            }
        }
    }
}

fn object_or_null<'a>(
    raw: Option<&'a RawValue>,
    what: &str,
) -> Result<Option<&'a RawValue>, String> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get().starts_with('{') => Ok(Some(raw)),
        Some(_) => Err(format!("validation: '{what}' is not a JSON object")),
    }
}

fn decode_key(key: Option<&[u8]>) -> Result<Key<'_>, String> {
    const MISSING: &str = "validation: missing key";
    let Some(bytes) = key else {
        return Err(MISSING.to_owned());
    };
    let raw: &RawValue = serde_json::from_slice(bytes).map_err(|e| format!("parse: key: {e}"))?;
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(format!("{MISSING} (the key is not a JSON object)"));
    }
    let (payload, schema) = match serde_json::from_str::<FramedKey<'_>>(text) {
        Ok(framed) if framed.schema.get().starts_with('{') => {
            (framed.payload.get(), Some(framed.schema))
        }
        _ => (text, None),
    };
    let fields: Map<String, Value> = serde_json::from_str(payload)
        .map_err(|_| format!("{MISSING} (the key payload is not a JSON object)"))?;
    if fields.is_empty() {
        return Err(format!("{MISSING} (the key has no fields)"));
    }
    Ok(Key { fields, schema })
}

/// `source.schema + "." + source.table`, else the topic's last two dot-separated
/// segments (`<prefix>.<schema>.<table>`).
fn table_name(source: Option<&Source>, topic: &str) -> Result<String, String> {
    if let Some(Source {
        schema: Some(schema),
        table: Some(table),
        ..
    }) = source
    {
        return Ok(format!("{schema}.{table}"));
    }
    let mut parts = topic.rsplitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some(table), Some(schema)) if !table.is_empty() && !schema.is_empty() => {
            Ok(format!("{schema}.{table}"))
        }
        _ => Err(format!(
            "validation: cannot tell the table: no source.schema/source.table and topic \
             '{}' is not '<prefix>.<schema>.<table>'",
            topic.escape_debug()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev<'a>(topic: &'a str, key: Option<&'a str>, value: Option<&'a str>) -> Event<'a> {
        Event {
            topic,
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: key.map(str::as_bytes),
            value: value.map(str::as_bytes),
        }
    }

    fn reason(e: Event<'_>) -> String {
        match decode(&e) {
            Err(r) => r,
            Ok(_) => panic!("expected a rejection"),
        }
    }

    #[test]
    fn table_name_falls_back_to_topic() {
        assert_eq!(
            table_name(None, "dbz.public.items").unwrap(),
            "public.items"
        );
        assert_eq!(
            table_name(None, "a.b.public.items").unwrap(),
            "public.items"
        );
        assert_eq!(table_name(None, "public.items").unwrap(), "public.items");
        assert!(table_name(None, "items").is_err());
        assert!(table_name(None, "dbz.").is_err());
        let src = Source {
            schema: Some("s".into()),
            table: Some("t".into()),
            ..Default::default()
        };
        assert_eq!(table_name(Some(&src), "x").unwrap(), "s.t");
    }

    #[test]
    fn classifies_errors() {
        assert!(reason(ev("t.s.x", Some("{\"id\":1}"), Some("{not json"))).starts_with("parse: "));
        assert_eq!(
            reason(ev("t.s.x", Some("{\"id\":1}"), Some("[1,2]"))),
            "validation: value is not a JSON object"
        );
        // A Debezium source block that is not one.
        let r = reason(ev(
            "t.s.x",
            Some("{\"id\":1}"),
            Some(r#"{"op":"c","after":{"id":1},"source":{"lsn":"x"}}"#),
        ));
        assert!(r.starts_with("validation: value: invalid type"), "{r}");
        assert!(
            reason(ev(
                "t.s.x",
                Some("{\"id\""),
                Some(r#"{"op":"c","after":{}}"#)
            ))
            .starts_with("parse: key: ")
        );
    }

    /// The decoded change, or a panic.
    fn change(e: Event<'_>) -> Box<Change<'_>> {
        match decode(&e) {
            Ok(Decoded::Change(c)) => c,
            Ok(_) => panic!("expected a change"),
            Err(r) => panic!("expected a change, got {r}"),
        }
    }

    fn columns(c: &Change<'_>) -> Vec<String> {
        let raw = c.after.or(c.before).expect("a row");
        let m: Map<String, Value> = serde_json::from_str(raw.get()).unwrap();
        m.keys().cloned().collect()
    }

    #[test]
    fn columns_named_like_envelope_fields_are_columns() {
        // Flattened records (unwrap) whose columns are named op, source, payload,
        // before, after: never read as Debezium's fields.
        let flat_records = [
            r#"{"id":1,"op":"t","source":"s","payload":null,"before":"b","after":"a"}"#,
            r#"{"id":1,"op":"c","source":"web"}"#,
            r#"{"id":1,"op":"d","after":null}"#,
            r#"{"id":1,"payload":null}"#,
            r#"{"id":1,"source":5,"op":"c"}"#,
            r#"{"schema":"s","payload":"p","id":1}"#,
        ];
        for v in flat_records {
            let c = change(ev("dbz.public.t", Some(r#"{"id":1}"#), Some(v)));
            assert!(c.flat, "{v}");
            assert_eq!(c.op, Op::Update, "{v}");
            assert_eq!(c.table, "public.t", "{v}");
            let expected: Map<String, Value> = serde_json::from_str(v).unwrap();
            assert_eq!(
                columns(&c),
                expected.keys().cloned().collect::<Vec<_>>(),
                "{v}"
            );
        }
        // With schemas, the schema's name decides, whatever the payload holds.
        let framed = r#"{"schema":{"type":"struct","name":"dbz.public.t.Value","fields":[]},
            "payload":{"id":1,"op":"c","before":null,"after":{"x":1},"source":{"lsn":5}}}"#;
        let c = change(ev("dbz.public.t", Some(r#"{"id":1}"#), Some(framed)));
        assert!(c.flat);
        assert_eq!(columns(&c), ["id", "op", "before", "after", "source"]);
        let framed = r#"{"schema":{"type":"struct","name":"dbz.public.t.Envelope","fields":[]},
            "payload":{"op":"c","before":null,"after":{"id":1},"source":{"schema":"public","table":"t","lsn":5}}}"#;
        let c = change(ev("dbz.public.t", Some(r#"{"id":1}"#), Some(framed)));
        assert!(!c.flat);
        assert_eq!((c.op, c.lsn), (Op::Insert, Some(5)));
        // Debezium's envelope, schemaless, with its extra fields.
        let env = r#"{"before":null,"after":{"id":1},"source":{"connector":"postgresql","schema":"public","table":"t","lsn":9},
            "op":"u","ts_ms":1,"ts_us":2,"ts_ns":3,"transaction":null}"#;
        let c = change(ev("dbz.public.t", Some(r#"{"id":1}"#), Some(env)));
        assert!(!c.flat);
        assert_eq!((c.op, c.lsn), (Op::Update, Some(9)));
        // A truncate envelope stays a truncate.
        let t = r#"{"before":null,"after":null,"source":{"schema":"public","table":"t","lsn":3},"op":"t"}"#;
        assert!(matches!(
            decode(&ev("dbz.public.t", None, Some(t))),
            Ok(Decoded::Truncate { .. })
        ));
    }

    /// Everything a decoding says, for comparing two.
    fn render(d: &Result<Decoded<'_>, String>) -> String {
        let get = |r: Option<&RawValue>| r.map(|r| r.get().to_owned());
        let change = |kind: &str, c: &Change<'_>| {
            format!(
                "{kind} {:?} {:?} {:?} {:?} {:?} {:?} {} {:?} {:?} {}",
                c.op,
                c.key.fields,
                get(c.key.schema),
                get(c.before),
                get(c.after),
                get(c.value_schema),
                c.table,
                c.lsn,
                c.source_ts_ms,
                c.flat
            )
        };
        match d {
            Err(reason) => format!("rejected {reason}"),
            Ok(Decoded::Skip(skip)) => format!("skip {skip:?}"),
            Ok(Decoded::Truncate { table, lsn }) => format!("truncate {table} {lsn:?}"),
            Ok(Decoded::Change(c)) => change("change", c),
            Ok(Decoded::Tombstone(c)) => change("tombstone", c),
        }
    }

    #[test]
    fn an_event_repeating_its_topics_schema_decodes_as_in_full() {
        // Every fixture stream, decoded in order with the frames seen before, equals each
        // event decoded on its own.
        for variant in crate::fixtures::VARIANTS {
            let records = crate::fixtures::load(variant, "_all_in_order");
            let mut frames = Frames::default();
            for e in crate::fixtures::events(&records) {
                assert_eq!(render(&decode_in(&mut frames, &e)), render(&decode(&e)));
            }
        }

        // Near misses of a real framed value after it: each decodes as in full.
        let records = crate::fixtures::load("schemas_precise", "crud_replica_identity_full");
        let first = records
            .iter()
            .find(|r| {
                r.value
                    .as_deref()
                    .is_some_and(|v| v.contains(r#""op":"u""#))
            })
            .expect("an update in the fixture");
        let (topic, key, value) = (
            &first.topic,
            first.key.as_deref(),
            first.value.as_deref().unwrap(),
        );
        let payload_at = value.find(r#","payload":"#).unwrap();
        let (head, payload) = (
            &value[..payload_at],
            &value[payload_at + 11..value.len() - 1],
        );
        let schema_name_at = head.rfind(r#"Envelope""#).unwrap();
        let other_schema = format!(
            "{}Envelopf\"{}",
            &head[..schema_name_at],
            &head[schema_name_at + 9..]
        );
        let cases = [
            value.to_owned(),
            format!("{value} \n"),
            format!("{head},\"payload\":{payload},\"x\":1}}"),
            format!("{head},\"payload\":{payload},\"payload\":null}}"),
            format!("{head},\"payload\":{payload}}}x"),
            format!("{head},\"payload\":{payload}}}}}"),
            format!("{head},\"payload\":{}}}", &payload[..payload.len() - 1]),
            format!("{head},\"payload\":null}}"),
            format!("{head},\"payload\": {payload} }}"),
            format!("{head}, \"payload\":{payload}}}"),
            format!("{head},\"payload\":{{\"id\":1}}}}"),
            format!("{head},\"payload\":\"text\"}}"),
            head.to_owned(),
            format!("{other_schema},\"payload\":{payload}}}"),
        ];
        for case in &cases {
            for topic in [topic.as_str(), "dbz.public.other"] {
                let mut frames = Frames::default();
                let first = ev(topic, key, Some(value));
                let first_schema = match decode_in(&mut frames, &first) {
                    Ok(Decoded::Change(c)) => c.value_schema.unwrap().get().as_ptr(),
                    _ => panic!("the fixture's update decodes"),
                };
                let e = ev(topic, key, Some(case));
                let repeated = decode_in(&mut frames, &e);
                assert_eq!(render(&repeated), render(&decode(&e)), "{case}");
                // The exact repeat takes the remembered schema itself.
                if case == value {
                    let Ok(Decoded::Change(c)) = &repeated else {
                        panic!()
                    };
                    assert_eq!(c.value_schema.unwrap().get().as_ptr(), first_schema);
                }
            }
        }
        assert!(same_bytes(b"0123456789", b"0123456789"));
        assert!(!same_bytes(b"0123456789", b"0123456780"));
        assert!(!same_bytes(b"0123456789", b"1123456789"));
    }

    #[test]
    fn framed_key_needs_exactly_schema_and_payload() {
        let k = decode_key(Some(br#"{"schema":{"type":"struct"},"payload":{"id":7}}"#)).unwrap();
        assert!(k.schema.is_some());
        assert_eq!(k.fields["id"], serde_json::json!(7));
        // A schemaless key that happens to have columns `schema` and `payload`.
        let k = decode_key(Some(br#"{"schema":"s","payload":1}"#)).unwrap();
        assert!(k.schema.is_none());
        assert_eq!(k.fields.len(), 2);
        let k = decode_key(Some(br#"{"schema":{},"payload":{"a":1},"x":2}"#)).unwrap();
        assert!(k.schema.is_none());
        assert_eq!(k.fields.len(), 3);
    }
}
