//! Debezium envelopes to flat rows: one [`Row`] per row change, one [`TableShape`] per
//! table of the batch, [`Truncate`]s, and a [`Failure`] for each event that cannot be
//! loaded. One bad event never fails the batch.
//!
//! * Table: `source.schema + "." + source.table` (else the topic's last two segments).
//! * Key columns: the fields of the message key (its payload with schemas), in order.
//!   Their values come from the key and are written first in `row.data`.
//! * `row.key`: a JSON array of the converted key values in key order, e.g. `["1"]`
//!   for an integer key 1 (integers are written as strings, see [`crate::convert`]),
//!   so equal keys give equal strings.
//! * `c`/`u`/`r` take their data from `after`, `d` from `before` when non-null, else
//!   from the key alone (REPLICA IDENTITY DEFAULT deletes carry the key only).
//! * Metadata columns appended to every row: `__op` (`c`/`u`/`d`/`r`, VARCHAR),
//!   `__lsn` (`source.lsn`, NUMBER(38,0), null when absent or -1) and
//!   `__source_ts_ms` (`source.ts_ms`, NUMBER(38,0)). A source column with one of
//!   these names (or [`UNAVAILABLE_COLUMN`], [`FROM_COLUMN`]) makes its events fail.
//! * Unchanged TOASTed values: with REPLICA IDENTITY DEFAULT, an update that leaves
//!   a TOASTed column untouched carries Debezium's placeholder
//!   ([`UNAVAILABLE_PLACEHOLDER`]) instead of the value. Such a column is written as
//!   JSON `null` and its name listed in [`UNAVAILABLE_COLUMN`] (`"__unavailable":
//!   {"big_text":true}`, present only when not empty; an object rather than an array
//!   because `v['name']` works alike in Snowflake and its emulator, `ARRAY_CONTAINS`
//!   does not). That field is not a
//!   target column: the MERGE ([`crate::merge`]) reads it to keep the target's
//!   current value, and its in-batch dedup carries an earlier row's real value
//!   forward. Recognised forms: the placeholder string (any
//!   column type, e.g. text, json, hstore), its base64 (`bytea` columns, and any
//!   column without schema), and a one-element array of the placeholder (arrays).
//!   Key columns are never checked (keys are not TOASTed). A real value equal to
//!   the placeholder is indistinguishable from it: that is Debezium's contract.
//! * Primary-key updates: Debezium sends an update that changes the key as a delete of
//!   the old key and a create of the new one, both at the update's LSN; the create
//!   carries placeholders for unchanged TOASTed columns. When both are in the batch,
//!   the create's data names the old key in [`FROM_COLUMN`] (`"__from":["1"]`, the old
//!   key's canonical array) and the MERGE takes those columns from the old key's target
//!   row, read before the same MERGE deletes it.
//! * Skipped (no row, no failure): tombstones, heartbeats, transaction metadata,
//!   logical messages (`op: "m"`).
//!
//! Not handled yet: flattened (ExtractNewRecordState) records fail as an unsupported
//! format, and the placeholder is not configurable (Debezium's
//! `unavailable.value.placeholder` must keep its default).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::convert::{self, Conv, EnvelopeSchema, RowSchema, SfType};
use crate::envelope::{self, Change, Decoded};
use crate::types::{
    Column, Error, Event, Failure, Op, Row, TableShape, Transformed, Truncate, Verdict,
};

/// Name of the metadata column holding the Debezium op code.
pub const OP_COLUMN: &str = "__op";
/// Name of the metadata column holding `source.lsn`.
pub const LSN_COLUMN: &str = "__lsn";
/// Name of the metadata column holding `source.ts_ms`.
pub const SOURCE_TS_MS_COLUMN: &str = "__source_ts_ms";
/// Name of the field of `row.data` listing the columns whose value Debezium did not
/// send (unchanged TOASTed values): a JSON object with one `true` member per such
/// source column (`{"big_text":true}`), present only when not empty. Not a target column: the MERGE reads it and keeps the target's value.
pub const UNAVAILABLE_COLUMN: &str = "__unavailable";
/// Field of a row's data (not a column) naming the key a primary-key update moved the
/// row from, when the row lacks unchanged TOASTed values (see the module docs).
pub const FROM_COLUMN: &str = "__from";
/// Debezium's default `unavailable.value.placeholder`, sent instead of an unchanged
/// TOASTed value.
pub const UNAVAILABLE_PLACEHOLDER: &str = "__debezium_unavailable_value";
/// [`UNAVAILABLE_PLACEHOLDER`]'s bytes in base64, as Debezium sends it for `bytea`
/// columns (`binary.handling.mode=bytes`).
pub const UNAVAILABLE_PLACEHOLDER_BASE64: &str = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";
/// The metadata columns appended to every row, in order, with their Snowflake types.
pub const METADATA_COLUMNS: [(&str, &str); 3] = [
    (OP_COLUMN, "VARCHAR"),
    (LSN_COLUMN, "NUMBER(38,0)"),
    (SOURCE_TS_MS_COLUMN, "NUMBER(38,0)"),
];

/// Transforms a batch of events. `Err` only when the batch breaks the contract
/// (more than `u32::MAX` events).
pub fn transform_batch(events: &[Event<'_>]) -> Result<Transformed, Error> {
    transform_events(events, None)
}

/// [`crate::validate_batch`] and [`transform_batch`] in one pass, each envelope decoded
/// once: one verdict per event, and the transformer's answer for the accepted events
/// (indexes into `events`). An event the validator rejects (its envelope does not
/// decode) has its verdict and appears nowhere in the answer, exactly as if the
/// accepted events alone had been transformed: a rejected event never relates to
/// another one (it deletes no key, moves no key).
pub fn validate_and_transform(events: &[Event<'_>]) -> Result<(Vec<Verdict>, Transformed), Error> {
    let mut verdicts = vec![Verdict::Ok; events.len()];
    let t = transform_events(events, Some(&mut verdicts))?;
    Ok((verdicts, t))
}

/// [`transform_batch`]; with `verdicts`, an event whose envelope does not decode gets a
/// rejection there instead of a failure in the answer.
fn transform_events(
    events: &[Event<'_>],
    mut verdicts: Option<&mut Vec<Verdict>>,
) -> Result<Transformed, Error> {
    if u32::try_from(events.len()).is_err() {
        return Err(Error::InvalidInput(format!(
            "{} events in one batch",
            events.len()
        )));
    }
    let mut t = Transformer::default();
    // Keys deleted so far in the batch, by topic: the tombstone Debezium sends right
    // after a delete repeats it and is dropped.
    let mut deleted: HashSet<(&str, &[u8])> = HashSet::new();
    let mut frames = envelope::Frames::default();
    for (i, event) in events.iter().enumerate() {
        let index = i as u32;
        let decoded = envelope::decode_in(&mut frames, event);
        if let (Ok(Decoded::Change(c)), Some(key)) = (&decoded, event.key)
            && c.op == Op::Delete
        {
            deleted.insert((event.topic, key));
        }
        match decoded {
            Ok(Decoded::Skip(_)) => {}
            Ok(Decoded::Tombstone(change)) => {
                let repeat = event
                    .key
                    .is_some_and(|k| deleted.contains(&(event.topic, k)));
                if !repeat && let Err(reason) = t.row(index, &change) {
                    t.out.failures.push(Failure {
                        event: index,
                        reason,
                    });
                }
            }
            Ok(Decoded::Truncate { table, lsn }) => t.out.truncates.push(Truncate {
                event: index,
                table,
                lsn: lsn.unwrap_or(-1),
            }),
            Ok(Decoded::Change(change)) => {
                if let Err(reason) = t.row(index, &change) {
                    t.out.failures.push(Failure {
                        event: index,
                        reason,
                    });
                }
            }
            Err(reason) => match verdicts.as_deref_mut() {
                Some(verdicts) => verdicts[i] = Verdict::Rejected(reason),
                None => t.out.failures.push(Failure {
                    event: index,
                    reason,
                }),
            },
        }
    }
    link_key_moves(&mut t.out.rows);
    Ok(t.finish())
}

/// Names the old key in the data of each create that lacks TOASTed values and has a
/// delete of the same table at its LSN in the batch: the two halves of a primary-key
/// update (see the module docs).
fn link_key_moves(rows: &mut [Row]) {
    let lacking =
        |r: &Row| r.op == Op::Insert && r.lsn >= 0 && r.data.contains("\"__unavailable\"");
    if !rows.iter().any(lacking) {
        return;
    }
    let mut deleted: HashMap<(u32, i64), String> = HashMap::new();
    for r in rows.iter().filter(|r| r.op == Op::Delete && r.lsn >= 0) {
        deleted
            .entry((r.table, r.lsn))
            .or_insert_with(|| r.key.clone());
    }
    for r in rows.iter_mut().filter(|r| lacking(r)) {
        if let Some(old) = deleted.get(&(r.table, r.lsn))
            && *old != r.key
            && r.data.ends_with('}')
        {
            r.data.pop();
            r.data.push_str(",\"");
            r.data.push_str(FROM_COLUMN);
            r.data.push_str("\":");
            r.data.push_str(old);
            r.data.push('}');
        }
    }
}

/// A column of a table as seen so far in the batch.
struct ColumnAcc {
    name: String,
    /// `None` while every value was null without schema.
    ty: Option<SfType>,
    /// Position among the key columns, for key columns.
    key_rank: Option<usize>,
}

#[derive(Default)]
struct TableAcc {
    name: String,
    columns: Vec<ColumnAcc>,
    by_name: HashMap<String, usize>,
    keys: usize,
}

impl TableAcc {
    fn observe(&mut self, name: &str, ty: Option<SfType>, is_key: bool) {
        let i = match self.by_name.get(name) {
            Some(&i) => i,
            None => {
                self.by_name.insert(name.to_owned(), self.columns.len());
                self.columns.push(ColumnAcc {
                    name: name.to_owned(),
                    ty: None,
                    key_rank: None,
                });
                self.columns.len() - 1
            }
        };
        let col = &mut self.columns[i];
        if let Some(ty) = ty {
            col.ty = Some(col.ty.map_or(ty, |old| SfType::unify(old, ty)));
        }
        if is_key && col.key_rank.is_none() {
            col.key_rank = Some(self.keys);
            self.keys += 1;
        }
    }

    fn finish(self) -> TableShape {
        let mut keys: Vec<&ColumnAcc> = self
            .columns
            .iter()
            .filter(|c| c.key_rank.is_some())
            .collect();
        keys.sort_by_key(|c| c.key_rank);
        let others = self.columns.iter().filter(|c| c.key_rank.is_none());
        let mut columns: Vec<Column> = keys
            .into_iter()
            .chain(others)
            .map(|c| Column {
                name: c.name.clone(),
                data_type: c.ty.unwrap_or(SfType::Varchar).to_string(),
                is_key: c.key_rank.is_some(),
            })
            .collect();
        columns.extend(METADATA_COLUMNS.iter().map(|(name, ty)| Column {
            name: (*name).to_owned(),
            data_type: (*ty).to_owned(),
            is_key: false,
        }));
        TableShape {
            name: self.name,
            columns,
        }
    }
}

/// Schemas are parsed once per distinct schema text per batch: every event of a
/// table repeats the same (large) schema. The last lookup is kept beside the map: the
/// decoder gives the events that repeat a topic's schema the very same text (see
/// [`envelope::Frames`]), found again without hashing it.
#[derive(Default)]
struct Cache<'a, T> {
    by_text: HashMap<&'a str, Result<Rc<T>, String>>,
    last: Option<(&'a str, Result<Rc<T>, String>)>,
}

#[derive(Default)]
struct Transformer<'a> {
    out: Transformed,
    tables: Vec<TableAcc>,
    table_index: HashMap<String, usize>,
    value_schemas: Cache<'a, EnvelopeSchema>,
    key_schemas: Cache<'a, RowSchema>,
}

fn cached<'a, T>(
    cache: &mut Cache<'a, T>,
    raw: Option<&'a RawValue>,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<Rc<T>>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if let Some((last, parsed)) = &cache.last
        && std::ptr::eq(*last, text)
    {
        return parsed.clone().map(Some);
    }
    let parsed = cache
        .by_text
        .entry(text)
        .or_insert_with(|| parse(text).map(Rc::new))
        .clone();
    cache.last = Some((text, parsed.clone()));
    parsed.map(Some)
}

impl<'a> Transformer<'a> {
    fn row(&mut self, event: u32, c: &Change<'a>) -> Result<(), String> {
        let key_schema = cached(&mut self.key_schemas, c.key.schema, convert::key_schema)?;
        let value_schema = cached(
            &mut self.value_schemas,
            c.value_schema,
            if c.flat {
                convert::flat_schema
            } else {
                convert::envelope_schema
            },
        )?;

        // Deletes read `before`, everything else `after`.
        let (side, raw, row_schema) = match c.op {
            Op::Delete => (
                "before",
                c.before,
                value_schema.as_deref().and_then(|s| s.before.as_ref()),
            ),
            _ => (
                "after",
                c.after,
                value_schema.as_deref().and_then(|s| s.after.as_ref()),
            ),
        };
        let source: Map<String, Value> = match raw {
            Some(raw) => {
                serde_json::from_str(raw.get()).map_err(|e| format!("validation: '{side}': {e}"))?
            }
            None => Map::new(),
        };
        let conv_of = |name: &str, key: bool| -> &Conv {
            let from_key = if key {
                key_schema.as_deref().and_then(|s| s.get(name))
            } else {
                None
            };
            from_key
                .or_else(|| row_schema.and_then(|s| s.get(name)))
                .unwrap_or(&Conv::Infer)
        };

        let mut data = Vec::with_capacity(256);
        let mut key = Vec::with_capacity(16);
        let mut seen: Vec<(&str, Option<SfType>, bool)> =
            Vec::with_capacity(source.len() + c.key.fields.len());
        data.push(b'{');
        key.push(b'[');
        for (i, (name, v)) in c.key.fields.iter().enumerate() {
            check_name(name)?;
            let conv = conv_of(name, true);
            if i > 0 {
                data.push(b',');
                key.push(b',');
            }
            let start = key.len();
            convert::write_value(&mut key, v, conv, true).map_err(|e| column_error(name, e))?;
            convert::write_key(&mut data, name);
            data.extend_from_slice(&key[start..]);
            seen.push((name, conv.column_type(v), true));
        }
        key.push(b']');
        let mut unavailable: Vec<&str> = Vec::new();
        for (name, v) in &source {
            if c.key.fields.contains_key(name) || c.flat && envelope::is_added_field(name) {
                continue;
            }
            check_name(name)?;
            let conv = conv_of(name, false);
            data.push(b',');
            convert::write_key(&mut data, name);
            if is_unavailable(v, conv) {
                // The value was not sent: null here, listed below; typed by the
                // schema only (a placeholder says nothing about the column's type).
                data.extend_from_slice(b"null");
                unavailable.push(name);
                seen.push((name, conv.column_type(&Value::Null), false));
                continue;
            }
            convert::write_value(&mut data, v, conv, true).map_err(|e| column_error(name, e))?;
            seen.push((name, conv.column_type(v), false));
        }
        data.push(b',');
        convert::write_key(&mut data, OP_COLUMN);
        convert::write_string(&mut data, c.op.code());
        data.push(b',');
        convert::write_key(&mut data, LSN_COLUMN);
        match c.lsn {
            Some(lsn) if lsn != -1 => convert::write_int_string(&mut data, lsn),
            _ => data.extend_from_slice(b"null"),
        }
        data.push(b',');
        convert::write_key(&mut data, SOURCE_TS_MS_COLUMN);
        match c.source_ts_ms {
            Some(ts) => convert::write_int_string(&mut data, ts),
            None => data.extend_from_slice(b"null"),
        }
        if !unavailable.is_empty() {
            data.push(b',');
            convert::write_key(&mut data, UNAVAILABLE_COLUMN);
            data.push(b'{');
            for (i, name) in unavailable.iter().enumerate() {
                if i > 0 {
                    data.push(b',');
                }
                convert::write_key(&mut data, name);
                data.extend_from_slice(b"true");
            }
            data.push(b'}');
        }
        data.push(b'}');

        // The event converted: only now does it shape the table.
        let table = match self.table_index.get(&c.table) {
            Some(&t) => t,
            None => {
                self.table_index.insert(c.table.clone(), self.tables.len());
                self.tables.push(TableAcc {
                    name: c.table.clone(),
                    ..TableAcc::default()
                });
                self.tables.len() - 1
            }
        };
        let acc = &mut self.tables[table];
        for (name, ty, is_key) in seen {
            acc.observe(name, ty, is_key);
        }
        self.out.rows.push(Row {
            event,
            table: table as u32,
            op: c.op,
            key: into_string(key)?,
            data: into_string(data)?,
            lsn: c.lsn.unwrap_or(-1),
        });
        Ok(())
    }

    fn finish(mut self) -> Transformed {
        self.out.tables = self.tables.into_iter().map(TableAcc::finish).collect();
        self.out
    }
}

/// Whether `v`, the value of a non-key column converted by `conv`, is Debezium's
/// unchanged-TOAST placeholder: the placeholder string (any type: text, json, hstore,
/// enum...), its base64 for binary columns (`bytes`, and values without schema,
/// whose type is unknown), or a one-element array holding the placeholder (arrays).
pub(crate) fn is_unavailable(v: &Value, conv: &Conv) -> bool {
    match v {
        Value::String(s) if s == UNAVAILABLE_PLACEHOLDER => true,
        Value::String(s) if s == UNAVAILABLE_PLACEHOLDER_BASE64 => {
            matches!(conv, Conv::Bytes | Conv::Decimal { .. } | Conv::Infer)
        }
        Value::Array(items) if matches!(conv, Conv::Array(_) | Conv::Infer) => {
            matches!(items.as_slice(), [Value::String(s)] if s == UNAVAILABLE_PLACEHOLDER)
        }
        _ => false,
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name == UNAVAILABLE_COLUMN
        || name == FROM_COLUMN
        || METADATA_COLUMNS.iter().any(|(m, _)| *m == name)
    {
        return Err(format!(
            "validation: source column '{}' collides with floe's metadata column of that name",
            name.escape_debug()
        ));
    }
    Ok(())
}

fn column_error(name: &str, e: String) -> String {
    format!("conversion: column '{}': {e}", name.escape_debug())
}

fn into_string(bytes: Vec<u8>) -> Result<String, String> {
    // Everything written is serde_json output or ASCII: always UTF-8.
    String::from_utf8(bytes).map_err(|e| format!("internal: non-UTF-8 row: {e}"))
}

#[cfg(test)]
mod tests;
