//! The MERGE that applies one table's rows of a batch.
//!
//! 1. Rows are deduplicated per `row.key`, keeping the last change: the highest `lsn`,
//!    ties broken by the later position; a row with `lsn` -1 (unknown) is ordered by
//!    position only. Snowflake rejects a MERGE whose source has duplicate keys, and
//!    only the last change of a key matters. When a surviving change lacks values
//!    (unchanged TOASTed columns, listed in `data.__unavailable`, see
//!    [`crate::transform`]), the value of the change it replaced is carried forward
//!    when that one had it (e.g. insert with the real text, then an update with the
//!    placeholder: the row keeps the inserted text). See [`dedup_carry_forward`].
//! 2. The surviving rows' `data` objects are concatenated (not re-serialised unless
//!    a value was carried forward) into one JSON array bound as a single `TEXT`
//!    parameter, read back through [`ROWS_SOURCE`]: no value is ever inlined, and the
//!    SQL text depends only on the shape and on which columns lack values (so
//!    Snowflake can cache its plan; batches without unchanged TOASTed values all share
//!    one text per shape).
//! 3. Rows whose `__op` is `d` delete, others upsert, but only over a target row that
//!    is not newer (`__lsn`):
//!
//! ```sql
//! MERGE INTO "DB"."S"."T" AS t
//! USING (SELECT f.value['id']::NUMBER(38,0) AS "ID", ..., f.value['__op']::VARCHAR AS "__OP",
//!               f.value['__lsn']::NUMBER(38,0) AS "__LSN", ...
//!        FROM LATERAL FLATTEN(INPUT => PARSE_JSON(?)) AS f) AS s
//! ON t."ID" = s."ID"
//! WHEN MATCHED AND s."__OP" = 'd' AND (t."__LSN" IS NULL OR s."__LSN" IS NULL OR s."__LSN" >= t."__LSN") THEN DELETE
//! WHEN MATCHED AND (t."__LSN" IS NULL OR s."__LSN" IS NULL OR s."__LSN" >= t."__LSN")
//!   THEN UPDATE SET t."NAME" = s."NAME", ..., t."__OP" = s."__OP", t."__LSN" = COALESCE(s."__LSN", t."__LSN"), ...
//! WHEN NOT MATCHED AND s."__OP" <> 'd' THEN INSERT ("ID", ...) VALUES (s."ID", ...)
//! ```
//!
//! Ordering and idempotence: a change applies only when its LSN is at least the
//! target row's, so replaying a batch changes nothing (equal LSNs rewrite the same
//! values) and an older change never overwrites a newer one. Rows without an LSN (in
//! the target or the change, e.g. events without `source.lsn`) always apply.
//! Snapshot reads (`r`) carry the snapshot's LSN and follow the same rule. The LSN
//! conditions are present only when the shape has a non-key `__lsn` column.
//! Inserts (no target row) always apply. Limitations: a hard delete removes the row
//! and its LSN, so replaying an older change of that key afterwards inserts it again
//! (soft deletes keep the row and its LSN and close this gap); and an update
//! lacking a TOASTed value that reaches an empty target before its (older) insert
//! inserts NULL for that column, the insert then being ignored as older.
//!
//! Unavailable values (columns listed in a row's `__unavailable`, see
//! [`crate::transform`]), after carrying forward: a column that every upserting row
//! lacks is left out of the `UPDATE SET` (the target keeps its value); a column that
//! only some rows lack is chosen per row, `t."C" = IFF(s."__UNAVAILABLE"['c'] IS NULL,
//! s."C", t."C")`, with `f.value['__unavailable'] AS "__UNAVAILABLE"` added to the
//! source and the always-true `AND (s."__UNAVAILABLE" IS NULL OR TRUE)` to the `ON`
//! clause: the fakesnow emulator carries into its UPDATE only the source columns that
//! appear in `ON` or as a whole `SET`/`INSERT` value, and its `ARRAY_CONTAINS` cannot
//! read a JSON array, hence an object and a field test. Writing only the columns that
//! need it keeps `t."C" = s."C"` (an implicit cast to the target type) wherever it can:
//! `IFF` needs both branches of one type, which a batch without schemas may not give.
//! An INSERT writes NULL for an unavailable column, nothing better being known, except
//! for a row a primary-key update moved (its data names the old key in `__from`, see
//! [`crate::transform`]): then the source joins the target on the old key,
//! `LEFT JOIN <target> AS o ON o."ID" = f.value['__from'][0]::NUMBER(38,0)`, and takes
//! each value the row lacks from there, `IFF(f.value['__unavailable']['c'] IS NOT NULL
//! AND f.value['__from'] IS NOT NULL, o."C", f.value['c']::...)`: the source is read
//! before the MERGE applies, so the old row is still there even when the same MERGE
//! deletes it. The metadata columns `__op`, `__lsn`, `__source_ts_ms` are always
//! written.
//!
//! Soft deletes ([`DeleteMode::Soft`], per table): the shape holds a BOOLEAN
//! [`DELETED_COLUMN`] that the rows' data does not; a delete becomes
//! `WHEN MATCHED AND s."__OP" = 'd' AND <newer> THEN UPDATE SET <metadata columns>,
//! t."__DELETED" = TRUE` (other columns keep their values), an upsert also sets it
//! FALSE, and `WHEN NOT MATCHED THEN INSERT (..., "__DELETED") VALUES (..., (s."__OP" = 'd'))`
//! records even a delete of a key the target never had.
//!
//! When the array would exceed [`MAX_BIND_BYTES`] the rows are split over several
//! identical statements (each key appears in exactly one, so their order does not
//! matter and re-running any of them is harmless).

use std::borrow::Cow;
use std::collections::HashMap;

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::sql::{self, json_element_expr, json_field_expr, quote_ident, sql_string_literal};
use crate::transform::{
    FROM_COLUMN, LSN_COLUMN, METADATA_COLUMNS, OP_COLUMN, SOURCE_TS_MS_COLUMN, UNAVAILABLE_COLUMN,
};
use crate::types::{Bind, DeleteMode, Error, MergeInput, MergePlan, Op, Row, Statement};

/// The column that flags soft-deleted rows ([`DeleteMode::Soft`]): `BOOLEAN`, true
/// once the row was deleted at the source, false (or NULL, in rows loaded before the
/// table switched to soft deletes) while it lives.
pub const DELETED_COLUMN: &str = "__deleted";

/// The MERGE's row source: one row per element of the bound JSON array, as `f.value`.
///
/// Snowflake documents `TABLE(FLATTEN(...))` for a table function standing alone in a
/// `FROM`, but the fakesnow emulator cannot parse that inside a MERGE; it accepts
/// this `LATERAL` spelling, which Snowflake accepts as well.
pub const ROWS_SOURCE: &str = "LATERAL FLATTEN(INPUT => PARSE_JSON(?)) AS f";

/// Largest JSON array bound to one MERGE. Snowflake's VARCHAR and VARIANT values are
/// limited to 16 MiB; half of it leaves room for PARSE_JSON's representation.
pub const MAX_BIND_BYTES: usize = 8 * 1024 * 1024;

/// Builds the MERGE plan for one table's rows (see the module docs).
///
/// Errors ([`Error::InvalidInput`]): an invalid target; with rows, a shape without
/// columns, key column or `__op` column, invalid names or types, or a row whose `data`
/// is not a JSON object. No rows give an empty plan.
pub fn build_merge(input: &MergeInput<'_>) -> Result<MergePlan, Error> {
    build_merge_with_limit(input, MAX_BIND_BYTES)
}

/// [`build_merge`] with a custom bind size limit (for tests and tuning).
pub fn build_merge_with_limit(
    input: &MergeInput<'_>,
    max_bind_bytes: usize,
) -> Result<MergePlan, Error> {
    sql::validate_target(input.target)?;
    if input.rows.is_empty() {
        return Ok(MergePlan::default());
    }
    let shape = input.shape;
    sql::validate_shape(shape, input.identifier_case)?;
    if !shape
        .columns
        .iter()
        .any(|c| c.name == OP_COLUMN && !c.is_key)
    {
        return Err(Error::InvalidInput(format!(
            "table shape '{}' has no non-key '{OP_COLUMN}' column: the MERGE needs it to tell deletes",
            shape.name
        )));
    }

    if input.deletes == DeleteMode::Soft
        && !shape
            .columns
            .iter()
            .any(|c| c.name == DELETED_COLUMN && !c.is_key)
    {
        return Err(Error::InvalidInput(format!(
            "table shape '{}' has no non-key '{DELETED_COLUMN}' column: soft deletes need it",
            shape.name
        )));
    }

    let unavailable_ident = quote_ident(UNAVAILABLE_COLUMN, input.identifier_case);
    if let Some(c) = shape
        .columns
        .iter()
        .find(|c| quote_ident(&c.name, input.identifier_case) == unavailable_ident)
    {
        return Err(Error::InvalidInput(format!(
            "table shape '{}': column {:?} collides with the MERGE's '{UNAVAILABLE_COLUMN}' source column",
            shape.name, c.name
        )));
    }

    let winners = dedup_carry_forward(input.rows)?;
    // Per column: how many upserting survivors lack its value.
    let mut unavailable: HashMap<String, usize> = HashMap::new();
    let mut upserts = 0;
    for (i, data) in &winners {
        let row = &input.rows[*i];
        let missing = check_data(row, data, *i)?;
        if row.op != Op::Delete {
            upserts += 1;
            for name in missing {
                *unavailable.entry(name).or_default() += 1;
            }
        }
    }
    // Rows a primary-key update moved to a new key name their old key (`__from`).
    let moved = winners.iter().any(|(_, data)| data.contains(FROM_KEY_JSON));
    let merge_sql = merge_sql(
        input,
        |name| match unavailable.get(name) {
            None => Update::Write,
            Some(&n) if n == upserts => Update::Keep,
            Some(_) => Update::PerRow,
        },
        moved,
    )?;
    let rows_after_dedup = u32::try_from(winners.len())
        .map_err(|_| Error::InvalidInput(format!("{} rows in one merge", winners.len())))?;

    let mut statements = Vec::new();
    let mut array = String::new();
    for (_, data) in &winners {
        let data = data.trim();
        if !array.is_empty() && array.len() + data.len() + 2 > max_bind_bytes {
            statements.push(statement(&merge_sql, std::mem::take(&mut array)));
        }
        array.push(if array.is_empty() { '[' } else { ',' });
        array.push_str(data);
    }
    statements.push(statement(&merge_sql, array));
    Ok(MergePlan {
        statements,
        rows_after_dedup,
    })
}

fn statement(sql: &str, mut array: String) -> Statement {
    array.push(']');
    Statement {
        sql: sql.to_owned(),
        binds: vec![Bind {
            data_type: "TEXT".to_owned(),
            value: Some(array),
        }],
    }
}

/// Whether `row` replaces `current` as the last change of their key: a later
/// position wins unless both LSNs are known and the later row's is lower.
fn supersedes(row: &Row, current: &Row) -> bool {
    row.lsn == -1 || current.lsn == -1 || row.lsn >= current.lsn
}

/// Indices of the rows that survive deduplication, in position order.
pub fn dedup(rows: &[Row]) -> Vec<usize> {
    let mut best: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        best.entry(row.key.as_str())
            .and_modify(|cur| {
                if supersedes(row, &rows[*cur]) {
                    *cur = i;
                }
            })
            .or_insert(i);
    }
    let mut winners: Vec<usize> = best.into_values().collect();
    winners.sort_unstable();
    winners
}

/// The JSON key of [`UNAVAILABLE_COLUMN`] as it appears in `row.data`: rows without
/// it are never parsed here.
const UNAVAILABLE_KEY_JSON: &str = "\"__unavailable\"";
/// The JSON key of [`FROM_COLUMN`] as it appears in `row.data`.
const FROM_KEY_JSON: &str = "\"__from\"";

/// [`dedup`], plus the carrying forward of unavailable values: the surviving rows
/// (index and `data` to load), in position order.
///
/// Each key's changes are folded in position order, as [`dedup`] does. When a change
/// replaces the previous one and lists columns in `__unavailable`, each such column
/// the previous change had (present, not itself unavailable) takes that value and
/// leaves the list (which disappears when empty); the data is then re-serialised.
/// Nothing is carried across a delete (from or to). Values of a change that does not
/// replace the current one (an older LSN arriving later) are never carried.
///
/// Errors: [`Error::InvalidInput`] when a row involved in carrying is not a JSON
/// object.
pub fn dedup_carry_forward(rows: &[Row]) -> Result<Vec<(usize, Cow<'_, str>)>, Error> {
    // Per key: the current winner and its rewritten data, if any.
    let mut best: HashMap<&str, (usize, Option<String>)> = HashMap::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let Some(slot) = best.get_mut(row.key.as_str()) else {
            best.insert(row.key.as_str(), (i, None));
            continue;
        };
        let current = &rows[slot.0];
        if !supersedes(row, current) {
            continue;
        }
        let carried = if row.op != Op::Delete
            && current.op != Op::Delete
            && row.data.contains(UNAVAILABLE_KEY_JSON)
        {
            let previous = slot.1.as_deref().unwrap_or(&current.data);
            carry_forward(&row.data, previous)
                .map_err(|e| Error::InvalidInput(format!("row {i} (event {}): {e}", row.event)))?
        } else {
            None
        };
        *slot = (i, carried);
    }
    let mut winners: Vec<(usize, Cow<'_, str>)> = best
        .into_values()
        .map(|(i, data)| {
            (
                i,
                data.map_or(Cow::Borrowed(rows[i].data.as_str()), Cow::Owned),
            )
        })
        .collect();
    winners.sort_unstable_by_key(|(i, _)| *i);
    Ok(winners)
}

/// A row's members in order, each value as written (not decoded): carrying values
/// forward moves them as text. A repeated name keeps its first position and its last
/// value, as a parsed object would.
type RawObject<'a> = IndexMap<String, &'a RawValue>;

fn parse_object(data: &str) -> Result<RawObject<'_>, String> {
    serde_json::from_str(data).map_err(|e| format!("data is not a JSON object: {e}"))
}

/// The `__unavailable` members of a row, if it has them as an object.
fn unavailable_of(object: &RawObject<'_>) -> Option<Map<String, Value>> {
    let raw = object.get(UNAVAILABLE_COLUMN)?;
    match serde_json::from_str(raw.get()) {
        Ok(Value::Object(members)) => Some(members),
        _ => None,
    }
}

/// `data` with its unavailable columns filled from `previous` where it has them;
/// `None` when nothing could be filled. Values are copied as written; the members keep
/// their order, filled columns the row did not name come last.
fn carry_forward(data: &str, previous: &str) -> Result<Option<String>, String> {
    let object = parse_object(data)?;
    let Some(mut missing) = unavailable_of(&object) else {
        return Ok(None);
    };
    if missing.is_empty() {
        return Ok(None);
    }
    let previous = parse_object(previous)?;
    let previous_missing = unavailable_of(&previous);
    let filled: Vec<(String, &RawValue)> = (missing.keys())
        .filter(|name| {
            !previous_missing
                .as_ref()
                .is_some_and(|m| m.contains_key(*name))
        })
        .filter_map(|name| previous.get(name).map(|value| (name.clone(), *value)))
        .collect();
    if filled.is_empty() {
        return Ok(None);
    }
    for (name, _) in &filled {
        missing.shift_remove(name);
    }
    let still_missing = if missing.is_empty() {
        None
    } else {
        Some(
            serde_json::to_string(&missing)
                .map_err(|e| format!("cannot re-serialise data: {e}"))?,
        )
    };
    let mut out = String::with_capacity(data.len() + previous.len() / 2);
    let mut member = |name: &str, value: &str| -> Result<(), String> {
        out.push(if out.is_empty() { '{' } else { ',' });
        let name =
            serde_json::to_string(name).map_err(|e| format!("cannot re-serialise data: {e}"))?;
        out.push_str(&name);
        out.push(':');
        out.push_str(value);
        Ok(())
    };
    for (name, value) in &object {
        if name == UNAVAILABLE_COLUMN {
            if let Some(list) = &still_missing {
                member(name, list)?;
            }
        } else if let Some((_, carried)) = filled.iter().find(|(n, _)| n == name) {
            member(name, carried.get())?;
        } else {
            member(name, value.get())?;
        }
    }
    for (name, carried) in &filled {
        if !object.contains_key(name) {
            member(name, carried.get())?;
        }
    }
    if out.is_empty() {
        out.push('{');
    }
    out.push('}');
    Ok(Some(out))
}

/// `data.__unavailable` as the MERGE reads it: absent, null, or an object.
#[derive(Deserialize)]
struct RowMeta {
    #[serde(rename = "__unavailable", default)]
    unavailable: Option<Map<String, Value>>,
}

/// Rows are spliced into a JSON array as they are: each must be one JSON object whose
/// `__unavailable`, if present, is an object or null. Returns the columns it lists.
fn check_data(row: &Row, data: &str, index: usize) -> Result<Vec<String>, Error> {
    let data = data.trim();
    let problem = if !data.starts_with('{') {
        "data is not a JSON object".to_owned()
    } else {
        match serde_json::from_str::<RowMeta>(data) {
            Ok(meta) => {
                return Ok(meta
                    .unavailable
                    .map(|m| m.into_iter().map(|(k, _)| k).collect())
                    .unwrap_or_default());
            }
            Err(e) if e.is_data() && data.contains(UNAVAILABLE_KEY_JSON) => {
                format!("data is not a JSON object with an object '{UNAVAILABLE_COLUMN}': {e}")
            }
            Err(_) => "data is not a JSON object".to_owned(),
        }
    };
    Err(Error::InvalidInput(format!(
        "row {index} (event {}): {problem}",
        row.event
    )))
}

/// How the UPDATE branch writes a non-key column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Update {
    /// Every change has its value: `t."C" = s."C"`.
    Write,
    /// No upserting change has its value: not written (the target keeps its own).
    Keep,
    /// Some changes lack it: `t."C" = IFF(s."__UNAVAILABLE"['c'] IS NULL, s."C", t."C")`.
    PerRow,
}

fn merge_sql(
    input: &MergeInput<'_>,
    update: impl Fn(&str) -> Update,
    moved: bool,
) -> Result<String, Error> {
    let case = input.identifier_case;
    let soft = input.deletes == DeleteMode::Soft;
    // Soft deletes: `__deleted` is not in the rows' data; the MERGE writes it.
    let columns: Vec<_> = input
        .shape
        .columns
        .iter()
        .filter(|c| !(soft && c.name == DELETED_COLUMN))
        .collect();
    let idents: Vec<String> = columns.iter().map(|c| quote_ident(&c.name, case)).collect();
    let unavailable = quote_ident(UNAVAILABLE_COLUMN, case);
    let is_metadata = |name: &str| METADATA_COLUMNS.iter().any(|(m, _)| *m == name);
    let update_of = |name: &str| {
        if is_metadata(name) {
            Update::Write
        } else {
            update(name)
        }
    };
    let per_row = columns
        .iter()
        .any(|c| !c.is_key && update_of(&c.name) == Update::PerRow);

    let mut select = Vec::with_capacity(columns.len() + 1);
    for (c, ident) in columns.iter().zip(&idents) {
        let value = json_field_expr("f.value", &c.name, &c.data_type)?;
        // A row moved from an old key takes the values it lacks from the old key's
        // target row (`o`, read before this MERGE deletes it).
        let value = if moved && !c.is_key && update_of(&c.name) != Update::Write {
            format!(
                "IFF(f.value[{}][{}] IS NOT NULL AND f.value[{}] IS NOT NULL, o.{ident}, {value})",
                sql_string_literal(UNAVAILABLE_COLUMN),
                sql_string_literal(&c.name),
                sql_string_literal(FROM_COLUMN)
            )
        } else {
            value
        };
        select.push(format!("{value} AS {ident}"));
    }
    let mut on: Vec<String> = columns
        .iter()
        .zip(&idents)
        .filter(|(c, _)| c.is_key)
        .map(|(_, i)| format!("t.{i} = s.{i}"))
        .collect();
    if per_row {
        select.push(format!(
            "f.value[{}] AS {unavailable}",
            sql_string_literal(UNAVAILABLE_COLUMN)
        ));
        // Always true; makes fakesnow carry the column into its UPDATE (module docs).
        on.push(format!("(s.{unavailable} IS NULL OR TRUE)"));
    }
    // A change without an LSN (a tombstone's delete, the plain unwrap format) keeps the
    // target's LSN and source time rather than erasing them.
    let write = |name: &str, i: &str| {
        if name == LSN_COLUMN || name == SOURCE_TS_MS_COLUMN {
            format!("t.{i} = COALESCE(s.{i}, t.{i})")
        } else {
            format!("t.{i} = s.{i}")
        }
    };
    let mut set = Vec::with_capacity(columns.len());
    for (c, i) in columns.iter().zip(&idents).filter(|(c, _)| !c.is_key) {
        match update_of(&c.name) {
            Update::Write => set.push(write(&c.name, i)),
            Update::Keep => {}
            Update::PerRow => set.push(format!(
                "t.{i} = IFF(s.{unavailable}[{}] IS NULL, s.{i}, t.{i})",
                sql_string_literal(&c.name)
            )),
        }
    }
    let mut values: Vec<String> = idents.iter().map(|i| format!("s.{i}")).collect();
    let mut cols = idents.clone();
    let op = quote_ident(OP_COLUMN, case);
    let newer = if columns.iter().any(|c| c.name == LSN_COLUMN && !c.is_key) {
        let lsn = quote_ident(LSN_COLUMN, case);
        format!(" AND (t.{lsn} IS NULL OR s.{lsn} IS NULL OR s.{lsn} >= t.{lsn})")
    } else {
        String::new()
    };
    let target = sql::qualified(input.target);
    let mut rows_source = ROWS_SOURCE.to_owned();
    if moved {
        let from = format!("f.value[{}]", sql_string_literal(FROM_COLUMN));
        let mut join = Vec::new();
        for (k, (c, i)) in columns
            .iter()
            .zip(&idents)
            .filter(|(c, _)| c.is_key)
            .enumerate()
        {
            join.push(format!(
                "o.{i} = {}",
                json_element_expr(&from, k, &c.data_type)?
            ));
        }
        rows_source = format!(
            "{ROWS_SOURCE} LEFT JOIN {target} AS o ON {}",
            join.join(" AND ")
        );
    }
    let using = format!(
        "USING (SELECT {} FROM {rows_source}) AS s ON {}",
        select.join(", "),
        on.join(" AND ")
    );
    if !soft {
        return Ok(format!(
            "MERGE INTO {target} AS t {using} \
             WHEN MATCHED AND s.{op} = 'd'{newer} THEN DELETE \
             WHEN MATCHED{newer} THEN UPDATE SET {set} \
             WHEN NOT MATCHED AND s.{op} <> 'd' THEN INSERT ({cols}) VALUES ({values})",
            set = set.join(", "),
            cols = cols.join(", "),
            values = values.join(", "),
        ));
    }
    // Soft: a delete flags the row and records the delete's metadata, keeping the
    // other columns; an upsert clears the flag; a delete of a key the target lacks
    // inserts a flagged row (so an older change replayed later cannot resurrect it).
    let deleted = quote_ident(DELETED_COLUMN, case);
    let mut delete_set: Vec<String> = columns
        .iter()
        .zip(&idents)
        .filter(|(c, _)| !c.is_key && is_metadata(&c.name))
        .map(|(c, i)| write(&c.name, i))
        .collect();
    delete_set.push(format!("t.{deleted} = TRUE"));
    set.push(format!("t.{deleted} = FALSE"));
    cols.push(deleted);
    values.push(format!("(s.{op} = 'd')"));
    Ok(format!(
        "MERGE INTO {target} AS t {using} \
         WHEN MATCHED AND s.{op} = 'd'{newer} THEN UPDATE SET {delete_set} \
         WHEN MATCHED{newer} THEN UPDATE SET {set} \
         WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})",
        delete_set = delete_set.join(", "),
        set = set.join(", "),
        cols = cols.join(", "),
        values = values.join(", "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Column, IdentifierCase, Op, TableShape};

    #[test]
    fn a_moved_row_takes_the_values_it_lacks_from_the_old_keys_row() {
        let col = |name: &str, ty: &str, key| Column {
            name: name.into(),
            data_type: ty.into(),
            is_key: key,
        };
        let shape = TableShape {
            name: "public.t".into(),
            columns: vec![
                col("id", "NUMBER(38,0)", true),
                col("big", "VARCHAR", false),
                col("v", "VARCHAR", false),
                col("__op", "VARCHAR", false),
                col("__lsn", "NUMBER(38,0)", false),
            ],
        };
        let rows = [
            Row {
                event: 0,
                table: 0,
                op: Op::Delete,
                key: r#"["1"]"#.into(),
                data: r#"{"id":"1","big":null,"v":null,"__op":"d","__lsn":"20"}"#.into(),
                lsn: 20,
            },
            Row {
                event: 2,
                table: 0,
                op: Op::Insert,
                key: r#"["2"]"#.into(),
                data: r#"{"id":"2","big":null,"v":"x","__op":"c","__lsn":"20","__unavailable":{"big":true},"__from":["1"]}"#.into(),
                lsn: 20,
            },
        ];
        let target = vec!["DB".to_owned(), "S".to_owned(), "T".to_owned()];
        let plan = build_merge(&MergeInput {
            target: &target,
            identifier_case: IdentifierCase::Upper,
            shape: &shape,
            rows: &rows,
            deletes: DeleteMode::Hard,
        })
        .unwrap();
        let sql = &plan.statements[0].sql;
        assert!(
            sql.contains(
                r#"LEFT JOIN "DB"."S"."T" AS o ON o."ID" = f.value['__from'][0]::NUMBER(38,0)"#
            ),
            "{sql}"
        );
        assert!(
            sql.contains(r#"IFF(f.value['__unavailable']['big'] IS NOT NULL AND f.value['__from'] IS NOT NULL, o."BIG", f.value['big']::VARCHAR) AS "BIG""#),
            "{sql}"
        );
        assert!(sql.contains(r#"f.value['v']::VARCHAR AS "V""#), "{sql}");
        // Without a moved row the source is the rows alone.
        let plain = build_merge(&MergeInput {
            target: &target,
            identifier_case: IdentifierCase::Upper,
            shape: &shape,
            rows: &rows[..1],
            deletes: DeleteMode::Hard,
        })
        .unwrap();
        assert!(!plain.statements[0].sql.contains("LEFT JOIN"));
    }

    fn shape() -> TableShape {
        let col = |name: &str, ty: &str, key| Column {
            name: name.into(),
            data_type: ty.into(),
            is_key: key,
        };
        TableShape {
            name: "public.t".into(),
            columns: vec![
                col("id", "NUMBER(38,0)", true),
                col("name", "VARCHAR", false),
                col("__op", "VARCHAR", false),
                col("__lsn", "NUMBER(38,0)", false),
            ],
        }
    }

    fn row(id: i64, name: &str, op: Op, lsn: i64) -> Row {
        Row {
            event: 0,
            table: 0,
            op,
            key: format!("[\"{id}\"]"),
            data: format!(
                r#"{{"id":"{id}","name":"{name}","__op":"{}","__lsn":"{lsn}"}}"#,
                op.code()
            ),
            lsn,
        }
    }

    fn target() -> Vec<String> {
        vec!["DB".into(), "S".into(), "T".into()]
    }

    fn plan(rows: &[Row]) -> MergePlan {
        let (t, s) = (target(), shape());
        build_merge(&MergeInput {
            target: &t,
            identifier_case: IdentifierCase::Upper,
            shape: &s,
            rows,
            deletes: DeleteMode::Hard,
        })
        .unwrap()
    }

    const LSN_OK: &str =
        "(t.\"__LSN\" IS NULL OR s.\"__LSN\" IS NULL OR s.\"__LSN\" >= t.\"__LSN\")";

    #[test]
    fn sql_text() {
        let p = plan(&[row(1, "a", Op::Insert, 10)]);
        assert_eq!(p.statements.len(), 1);
        assert_eq!(
            p.statements[0].sql,
            format!(
                "MERGE INTO \"DB\".\"S\".\"T\" AS t USING (SELECT f.value['id']::NUMBER(38,0) AS \"ID\", \
                 f.value['name']::VARCHAR AS \"NAME\", f.value['__op']::VARCHAR AS \"__OP\", \
                 f.value['__lsn']::NUMBER(38,0) AS \"__LSN\" \
                 FROM LATERAL FLATTEN(INPUT => PARSE_JSON(?)) AS f) AS s ON t.\"ID\" = s.\"ID\" \
                 WHEN MATCHED AND s.\"__OP\" = 'd' AND {LSN_OK} THEN DELETE \
                 WHEN MATCHED AND {LSN_OK} \
                 THEN UPDATE SET t.\"NAME\" = s.\"NAME\", t.\"__OP\" = s.\"__OP\", t.\"__LSN\" = COALESCE(s.\"__LSN\", t.\"__LSN\") \
                 WHEN NOT MATCHED AND s.\"__OP\" <> 'd' THEN INSERT (\"ID\", \"NAME\", \"__OP\", \"__LSN\") \
                 VALUES (s.\"ID\", s.\"NAME\", s.\"__OP\", s.\"__LSN\")"
            )
        );
        assert_eq!(
            p.statements[0].binds,
            vec![Bind {
                data_type: "TEXT".into(),
                value: Some(r#"[{"id":"1","name":"a","__op":"c","__lsn":"10"}]"#.into())
            }]
        );
        assert_eq!(p.rows_after_dedup, 1);
    }

    #[test]
    fn sql_text_with_unavailable_values() {
        // Some rows lack `name`: chosen per row, the flag read and carried by the ON.
        let p = plan(&[
            toasted(1, Op::Update, 10),
            row(2, "b", Op::Update, 11),
            row(3, "", Op::Delete, 12),
        ]);
        assert_eq!(
            p.statements[0].sql,
            format!(
                "MERGE INTO \"DB\".\"S\".\"T\" AS t USING (SELECT f.value['id']::NUMBER(38,0) AS \"ID\", \
                 f.value['name']::VARCHAR AS \"NAME\", f.value['__op']::VARCHAR AS \"__OP\", \
                 f.value['__lsn']::NUMBER(38,0) AS \"__LSN\", f.value['__unavailable'] AS \"__UNAVAILABLE\" \
                 FROM LATERAL FLATTEN(INPUT => PARSE_JSON(?)) AS f) AS s \
                 ON t.\"ID\" = s.\"ID\" AND (s.\"__UNAVAILABLE\" IS NULL OR TRUE) \
                 WHEN MATCHED AND s.\"__OP\" = 'd' AND {LSN_OK} THEN DELETE \
                 WHEN MATCHED AND {LSN_OK} \
                 THEN UPDATE SET t.\"NAME\" = IFF(s.\"__UNAVAILABLE\"['name'] IS NULL, s.\"NAME\", t.\"NAME\"), \
                 t.\"__OP\" = s.\"__OP\", t.\"__LSN\" = COALESCE(s.\"__LSN\", t.\"__LSN\") \
                 WHEN NOT MATCHED AND s.\"__OP\" <> 'd' THEN INSERT (\"ID\", \"NAME\", \"__OP\", \"__LSN\") \
                 VALUES (s.\"ID\", s.\"NAME\", s.\"__OP\", s.\"__LSN\")"
            )
        );
        // Every upserting row lacks it (deletes do not count): not written at all.
        let p = plan(&[toasted(1, Op::Update, 10), row(3, "", Op::Delete, 12)]);
        let sql = &p.statements[0].sql;
        assert!(
            sql.contains("UPDATE SET t.\"__OP\" = s.\"__OP\", t.\"__LSN\" = COALESCE(s.\"__LSN\", t.\"__LSN\") WHEN"),
            "{sql}"
        );
        assert!(!sql.contains("__UNAVAILABLE"), "{sql}");
        assert!(sql.contains("INSERT (\"ID\", \"NAME\","), "{sql}");
        // Carried forward in the batch: written as usual.
        let p = plan(&[row(1, "a", Op::Insert, 9), toasted(1, Op::Update, 10)]);
        assert!(!p.statements[0].sql.contains("__UNAVAILABLE"));
        assert!(p.statements[0].sql.contains("t.\"NAME\" = s.\"NAME\""));
    }

    #[test]
    fn preserve_case_and_composite_keys() {
        let mut s = shape();
        s.columns.insert(
            1,
            Column {
                name: "Region".into(),
                data_type: "VARCHAR".into(),
                is_key: true,
            },
        );
        let t = target();
        let rows = [row(1, "a", Op::Insert, 1)];
        let p = build_merge(&MergeInput {
            target: &t,
            identifier_case: IdentifierCase::Preserve,
            shape: &s,
            rows: &rows,
            deletes: DeleteMode::Hard,
        })
        .unwrap();
        let sql = &p.statements[0].sql;
        assert!(
            sql.contains("ON t.\"id\" = s.\"id\" AND t.\"Region\" = s.\"Region\" WHEN"),
            "{sql}"
        );
        assert!(
            sql.contains(
                "UPDATE SET t.\"name\" = s.\"name\", t.\"__op\" = s.\"__op\", t.\"__lsn\" = COALESCE(s.\"__lsn\", t.\"__lsn\") WHEN"
            ),
            "{sql}"
        );
        assert!(sql.contains("s.\"__lsn\" >= t.\"__lsn\""), "{sql}");
        assert!(sql.contains("WHEN MATCHED AND s.\"__op\" = 'd'"), "{sql}");
    }

    #[test]
    fn hostile_names_stay_quoted() {
        let mut s = shape();
        s.columns.insert(
            1,
            Column {
                name: "a\"b".into(),
                data_type: "VARCHAR".into(),
                is_key: false,
            },
        );
        s.columns.insert(
            2,
            Column {
                name: "x'; drop table y; --".into(),
                data_type: "VARCHAR".into(),
                is_key: false,
            },
        );
        s.columns.insert(
            3,
            Column {
                name: "back\\slash".into(),
                data_type: "VARCHAR".into(),
                is_key: false,
            },
        );
        let t = vec!["d\"b".to_owned(), "s".to_owned(), "t'".to_owned()];
        let rows = [row(1, "a", Op::Insert, 1)];
        let p = build_merge(&MergeInput {
            target: &t,
            identifier_case: IdentifierCase::Upper,
            shape: &s,
            rows: &rows,
            deletes: DeleteMode::Hard,
        })
        .unwrap();
        let sql = &p.statements[0].sql;
        assert!(
            sql.starts_with("MERGE INTO \"d\"\"b\".\"s\".\"t'\" AS t"),
            "{sql}"
        );
        assert!(
            sql.contains("f.value['a\"b']::VARCHAR AS \"A\"\"B\""),
            "{sql}"
        );
        assert!(
            sql.contains("f.value['x''; drop table y; --']::VARCHAR AS \"X'; DROP TABLE Y; --\""),
            "{sql}"
        );
        assert!(
            sql.contains("f.value['back\\\\slash']::VARCHAR AS \"BACK\\SLASH\""),
            "{sql}"
        );
    }

    #[test]
    fn soft_deletes_flag_rows() {
        let mut shape = shape();
        shape.columns.push(Column {
            name: DELETED_COLUMN.into(),
            data_type: "BOOLEAN".into(),
            is_key: false,
        });
        let rows = [row(1, "a", Op::Insert, 10), row(2, "b", Op::Delete, 11)];
        let target = target();
        let input = |shape| MergeInput {
            target: &target,
            identifier_case: IdentifierCase::Upper,
            shape,
            rows: &rows,
            deletes: DeleteMode::Soft,
        };
        let p = build_merge(&input(&shape)).unwrap();
        let sql = &p.statements[0].sql;
        let newer = r#"(t."__LSN" IS NULL OR s."__LSN" IS NULL OR s."__LSN" >= t."__LSN")"#;
        assert!(
            sql.contains(&format!(
                r#"WHEN MATCHED AND s."__OP" = 'd' AND {newer} THEN UPDATE SET t."__OP" = s."__OP", t."__LSN" = COALESCE(s."__LSN", t."__LSN"), t."__DELETED" = TRUE WHEN MATCHED AND {newer} THEN UPDATE SET t."NAME" = s."NAME", t."__OP" = s."__OP", t."__LSN" = COALESCE(s."__LSN", t."__LSN"), t."__DELETED" = FALSE WHEN NOT MATCHED THEN INSERT ("ID", "NAME", "__OP", "__LSN", "__DELETED") VALUES (s."ID", s."NAME", s."__OP", s."__LSN", (s."__OP" = 'd'))"#
            )),
            "{sql}"
        );
        // `__deleted` is written by the MERGE, not read from the rows.
        assert!(!sql.contains("f.value['__deleted']"), "{sql}");
        // The shape must hold the column.
        let err = build_merge(&input(&super::tests::shape())).unwrap_err();
        assert!(
            err.to_string().contains("no non-key '__deleted' column"),
            "{err}"
        );
    }

    #[test]
    fn dedup_keeps_last_change() {
        // Same key: insert, update, delete in order -> the delete wins.
        let rows = [
            row(1, "a", Op::Insert, 10),
            row(1, "b", Op::Update, 20),
            row(1, "b", Op::Delete, 30),
        ];
        assert_eq!(dedup(&rows), vec![2]);
        // Higher LSN wins over a later position.
        let rows = [row(1, "new", Op::Update, 50), row(1, "old", Op::Update, 40)];
        assert_eq!(dedup(&rows), vec![0]);
        // Equal LSN: the later position wins.
        let rows = [row(1, "a", Op::Update, 5), row(1, "b", Op::Update, 5)];
        assert_eq!(dedup(&rows), vec![1]);
        // Unknown LSN orders by position only, either side.
        let rows = [row(1, "a", Op::Update, 50), row(1, "b", Op::Update, -1)];
        assert_eq!(dedup(&rows), vec![1]);
        let rows = [row(1, "a", Op::Update, -1), row(1, "b", Op::Update, 3)];
        assert_eq!(dedup(&rows), vec![1]);
        // Distinct keys all survive, in position order.
        let rows = [
            row(2, "a", Op::Insert, 1),
            row(1, "b", Op::Insert, 2),
            row(2, "c", Op::Update, 3),
        ];
        assert_eq!(dedup(&rows), vec![1, 2]);
        let p = plan(&rows);
        assert_eq!(p.rows_after_dedup, 2);
        assert_eq!(
            p.statements[0].binds[0].value.as_deref(),
            Some(
                r#"[{"id":"1","name":"b","__op":"c","__lsn":"2"},{"id":"2","name":"c","__op":"u","__lsn":"3"}]"#
            )
        );
    }

    #[test]
    fn splits_large_batches() {
        let rows: Vec<Row> = (0..100)
            .map(|i| row(i, "xxxxxxxxxx", Op::Insert, i))
            .collect();
        let (t, s) = (target(), shape());
        let input = MergeInput {
            target: &t,
            identifier_case: IdentifierCase::Upper,
            shape: &s,
            rows: &rows,
            deletes: DeleteMode::Hard,
        };
        let p = build_merge_with_limit(&input, 400).unwrap();
        assert!(p.statements.len() > 1);
        assert_eq!(p.rows_after_dedup, 100);
        let mut ids = Vec::new();
        for st in &p.statements {
            assert_eq!(st.sql, p.statements[0].sql);
            let v = st.binds[0].value.as_deref().unwrap();
            assert!(v.len() <= 400, "{}", v.len());
            let parsed: Vec<serde_json::Value> = serde_json::from_str(v).unwrap();
            ids.extend(
                parsed
                    .iter()
                    .map(|r| r["id"].as_str().unwrap().parse::<i64>().unwrap()),
            );
        }
        assert_eq!(ids, (0..100).collect::<Vec<_>>());
        // A row larger than the limit still goes, alone.
        let p = build_merge_with_limit(&input, 10).unwrap();
        assert_eq!(p.statements.len(), 100);
    }

    /// A row of the test shape whose `name` Debezium did not send.
    fn toasted(id: i64, op: Op, lsn: i64) -> Row {
        Row {
            data: format!(
                r#"{{"id":"{id}","name":null,"__op":"{}","__lsn":"{lsn}","__unavailable":{{"name":true}}}}"#,
                op.code()
            ),
            ..row(id, "", op, lsn)
        }
    }

    fn survivors(rows: &[Row]) -> Vec<(usize, serde_json::Value)> {
        dedup_carry_forward(rows)
            .unwrap()
            .into_iter()
            .map(|(i, d)| (i, serde_json::from_str(&d).unwrap()))
            .collect()
    }

    #[test]
    fn carried_values_keep_their_text_and_the_members_their_order() {
        let previous = r#"{"id":"1","doc":{"a": 1,  "b":[1.50]},"big":"\u00e9t\u00e9","__op":"c","__lsn":"10"}"#;
        let data = r#"{"id":"1","doc":null,"big":null,"note":null,"__op":"u","__lsn":"20","__unavailable":{"doc":true,"big":true,"note":true}}"#;
        assert_eq!(
            carry_forward(data, previous).unwrap().unwrap(),
            r#"{"id":"1","doc":{"a": 1,  "b":[1.50]},"big":"\u00e9t\u00e9","note":null,"__op":"u","__lsn":"20","__unavailable":{"note":true}}"#
        );
        // A filled column the row did not name comes last; an emptied list goes.
        let data = r#"{"id":"1","__op":"u","__lsn":"20","__unavailable":{"doc":true}}"#;
        assert_eq!(
            carry_forward(data, previous).unwrap().unwrap(),
            r#"{"id":"1","__op":"u","__lsn":"20","doc":{"a": 1,  "b":[1.50]}}"#
        );
        // Nothing to fill from: no new data.
        let data = r#"{"id":"1","__op":"u","__lsn":"20","__unavailable":{"other":true}}"#;
        assert_eq!(carry_forward(data, previous).unwrap(), None);
    }

    #[test]
    fn carry_forward_fills_unavailable_values() {
        use serde_json::json;
        // Insert with the real value, then an update without it: the update carries it.
        let rows = [row(1, "real", Op::Insert, 10), toasted(1, Op::Update, 20)];
        assert_eq!(
            survivors(&rows),
            vec![(1, json!({"id":"1","name":"real","__op":"u","__lsn":"20"}))]
        );
        // Through a chain of updates without the value.
        let rows = [
            row(1, "real", Op::Insert, 10),
            toasted(1, Op::Update, 20),
            toasted(1, Op::Update, 30),
        ];
        assert_eq!(survivors(&rows)[0].1["name"], json!("real"));
        assert!(survivors(&rows)[0].1.get("__unavailable").is_none());
        // A later real value wins over the earlier one.
        let rows = [
            row(1, "old", Op::Insert, 10),
            row(1, "new", Op::Update, 20),
            toasted(1, Op::Update, 30),
        ];
        assert_eq!(survivors(&rows)[0].1["name"], json!("new"));
        // Nothing known in the batch: the row is loaded as is (the MERGE keeps the
        // target's value), borrowed, not re-serialised.
        let rows = [toasted(1, Op::Update, 20), toasted(1, Op::Update, 30)];
        let got = dedup_carry_forward(&rows).unwrap();
        assert_eq!(got.len(), 1);
        assert!(matches!(&got[0].1, Cow::Borrowed(d) if *d == rows[1].data));
        // An older change arriving later is not the winner and supplies nothing.
        let rows = [toasted(1, Op::Update, 30), row(1, "older", Op::Update, 20)];
        let got = dedup_carry_forward(&rows).unwrap();
        assert_eq!(got[0].0, 0);
        assert_eq!(got[0].1, rows[0].data);
        // Nothing crosses a delete.
        let rows = [
            row(1, "gone", Op::Insert, 10),
            row(1, "", Op::Delete, 20),
            toasted(1, Op::Update, 30),
        ];
        assert_eq!(dedup_carry_forward(&rows).unwrap()[0].1, rows[2].data);
        // Other keys are independent; positions stay ordered.
        let rows = [
            row(2, "two", Op::Insert, 1),
            row(1, "one", Op::Insert, 2),
            toasted(2, Op::Update, 3),
        ];
        let got = survivors(&rows);
        assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(got[1].1["name"], json!("two"));
        // Only the listed columns the previous change had are filled; the others stay listed.
        let rows = [
            Row {
                data: r#"{"id":"1","a":"A","__op":"c","__lsn":"1"}"#.into(),
                ..row(1, "", Op::Insert, 1)
            },
            Row {
                data: r#"{"id":"1","a":null,"b":null,"__op":"u","__lsn":"2","__unavailable":{"a":true,"b":true}}"#.into(),
                ..row(1, "", Op::Update, 2)
            },
        ];
        assert_eq!(
            survivors(&rows)[0].1,
            json!({"id":"1","a":"A","b":null,"__op":"u","__lsn":"2","__unavailable":{"b":true}})
        );
        // The bound array carries the filled row.
        let p = plan(&[row(1, "real", Op::Insert, 10), toasted(1, Op::Update, 20)]);
        assert_eq!(
            p.statements[0].binds[0].value.as_deref(),
            Some(r#"[{"id":"1","name":"real","__op":"u","__lsn":"20"}]"#)
        );
    }

    #[test]
    fn lsn_conditions_need_an_lsn_column() {
        let mut s = shape();
        s.columns.retain(|c| c.name != "__lsn");
        let t = target();
        let rows = [row(1, "a", Op::Insert, 1)];
        let p = build_merge(&MergeInput {
            target: &t,
            identifier_case: IdentifierCase::Upper,
            shape: &s,
            rows: &rows,
            deletes: DeleteMode::Hard,
        })
        .unwrap();
        let sql = &p.statements[0].sql;
        assert!(!sql.contains("__LSN"), "{sql}");
        assert!(
            sql.contains("WHEN MATCHED AND s.\"__OP\" = 'd' THEN DELETE WHEN MATCHED THEN UPDATE"),
            "{sql}"
        );
    }

    #[test]
    fn unavailable_contract() {
        let t = target();
        let check = |shape: &TableShape, rows: &[Row]| {
            build_merge(&MergeInput {
                target: &t,
                identifier_case: IdentifierCase::Upper,
                shape,
                rows,
                deletes: DeleteMode::Hard,
            })
        };
        let mut s = shape();
        s.columns.insert(
            1,
            Column {
                name: "__Unavailable".into(),
                data_type: "VARIANT".into(),
                is_key: false,
            },
        );
        let rows = [row(1, "a", Op::Insert, 1)];
        assert!(matches!(check(&s, &rows), Err(Error::InvalidInput(m)) if m.contains("collides")));
        // `__unavailable` must be an object (or null).
        let mut bad = toasted(1, Op::Update, 1);
        bad.data = bad.data.replace(r#"{"name":true}"#, r#"["name"]"#);
        assert!(
            matches!(check(&shape(), &[bad]), Err(Error::InvalidInput(m)) if m.contains("'__unavailable'"))
        );
        let mut null = toasted(1, Op::Update, 1);
        null.data = null.data.replace(r#"{"name":true}"#, "null");
        assert!(check(&shape(), &[null]).is_ok());
        // A broken row met while carrying forward is invalid input too.
        let mut broken = row(1, "a", Op::Insert, 1);
        broken.data = "{".into();
        assert!(matches!(
            dedup_carry_forward(&[broken, toasted(1, Op::Update, 2)]),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn contract_violations() {
        let t = target();
        let rows = [row(1, "a", Op::Insert, 1)];
        let check = |target: &[String], shape: &TableShape, rows: &[Row]| {
            build_merge(&MergeInput {
                target,
                identifier_case: IdentifierCase::Upper,
                shape,
                rows,
                deletes: DeleteMode::Hard,
            })
        };
        let err = |r: Result<MergePlan, Error>| match r {
            Err(Error::InvalidInput(m)) => m,
            other => panic!("expected InvalidInput, got {other:?}"),
        };
        err(check(&[], &shape(), &rows));
        let mut no_key = shape();
        no_key.columns[0].is_key = false;
        assert!(err(check(&t, &no_key, &rows)).contains("no key"));
        let empty = TableShape {
            name: "x".into(),
            columns: vec![],
        };
        assert!(err(check(&t, &empty, &rows)).contains("no columns"));
        let mut no_op = shape();
        no_op.columns.retain(|c| c.name != "__op");
        assert!(err(check(&t, &no_op, &rows)).contains("__op"));
        let mut bad = rows.clone();
        bad[0].data = "[1]".into();
        assert!(err(check(&t, &shape(), &bad)).contains("not a JSON object"));
        bad[0].data = r#"{"id":1},{"id":2}"#.into();
        assert!(err(check(&t, &shape(), &bad)).contains("not a JSON object"));
        let mut bad_type = shape();
        bad_type.columns[1].data_type = "VARCHAR) --".into();
        err(check(&t, &bad_type, &rows));
        // No rows: an empty plan, whatever the shape.
        let p = check(&t, &empty, &[]).unwrap();
        assert!(p.statements.is_empty());
        assert_eq!(p.rows_after_dedup, 0);
    }
}
