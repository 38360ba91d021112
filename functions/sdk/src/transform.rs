//! Row transforms: rewrite each row the transformer produced before it is loaded.

use std::collections::{HashMap, HashSet};

use floe_cdc_core::convert::inferred_type;
use floe_cdc_core::{Column, Failure, METADATA_COLUMNS, Op, Transformed};
use serde_json::{Map, Value};

/// One row as a transform sees it: change its columns in place.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange<'a> {
    /// Source table as `schema.table`.
    pub table: &'a str,
    pub op: Op,
    /// Source log position (PostgreSQL LSN), when the record carries one.
    pub lsn: Option<i64>,
    /// The row's columns by source name, values as floe loads them. Change values,
    /// remove columns or add new ones; floe's metadata columns are not included and
    /// key columns must keep their values.
    pub row: Map<String, Value>,
}

impl RowChange<'_> {
    column_getters!();

    /// Sets (or adds) a column.
    pub fn set(&mut self, column: &str, value: impl Into<Value>) {
        self.row.insert(column.to_owned(), value.into());
    }

    /// Removes a column from the row (and, when no row keeps it, from the table).
    pub fn remove(&mut self, column: &str) -> Option<Value> {
        self.row.remove(column)
    }
}

/// What happens to a row after [`Transform::transform`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Load the row as changed.
    Load,
    /// Do not load it: the record is consumed and counted as skipped.
    Skip,
}

/// A user row transform: change the row in place and load it, skip it, or fail it
/// with a reason (the record then goes to the dead letter queue, category `transform`).
pub trait Transform {
    fn transform(change: &mut RowChange<'_>) -> Result<Action, String>;
}

fn is_metadata(column: &str) -> bool {
    METADATA_COLUMNS.iter().any(|(name, _)| *name == column)
}

/// Whether a value can be loaded into a column of `data_type` as floe loads values
/// (numbers may be carried as text).
fn fits(data_type: &str, v: &Value) -> bool {
    let t = data_type.to_ascii_uppercase();
    match v {
        Value::Null => true,
        _ if t.starts_with("VARIANT") || t.starts_with("OBJECT") || t.starts_with("ARRAY") => true,
        Value::Object(_) | Value::Array(_) => false,
        _ if t.starts_with("NUMBER")
            || t.starts_with("DECIMAL")
            || t.starts_with("FLOAT")
            || t.starts_with("DOUBLE") =>
        {
            crate::number_of(v).is_some()
        }
        Value::Bool(_) => t.starts_with("BOOLEAN") || t.starts_with("VARCHAR"),
        _ if t.starts_with("BOOLEAN") => false,
        Value::Number(_) => t.starts_with("VARCHAR"),
        Value::String(_) => true,
    }
}

/// Runs `T` over every row of `input`, natively callable so a transform is unit-tested
/// without WebAssembly. The answer follows the contract of world `row-transform`:
///
/// - rows keep their event, key, op and lsn (a transform that changes a key column is
///   a failure of that row);
/// - a table's shape follows the rows: a column the transform added gets a type
///   inferred from its first non-null value and goes before the metadata columns; a
///   column it removed from every row that had it leaves the shape; a column whose
///   values it changed to another kind (a number masked into a string) is retyped.
pub fn transform_rows<T: Transform>(input: Transformed) -> Transformed {
    let Transformed {
        mut tables,
        rows,
        truncates,
        mut failures,
    } = input;
    let mut kept = Vec::with_capacity(rows.len());
    // Per table: columns removed from some row, columns seen after, new columns in
    // first-seen order with their type, retyped columns.
    let mut removed: Vec<HashSet<String>> = vec![HashSet::new(); tables.len()];
    let mut present: Vec<HashSet<String>> = vec![HashSet::new(); tables.len()];
    let mut added: Vec<Vec<(String, Option<String>)>> = vec![Vec::new(); tables.len()];
    let mut retyped: Vec<HashMap<String, String>> = vec![HashMap::new(); tables.len()];
    for mut row in rows {
        let t = row.table as usize;
        let Some(shape) = tables.get(t) else {
            continue;
        };
        let mut data: Map<String, Value> = match serde_json::from_str(&row.data) {
            Ok(Value::Object(m)) => m,
            _ => {
                failures.push(Failure {
                    event: row.event,
                    reason: "row data is not a JSON object".into(),
                });
                continue;
            }
        };
        let metadata: Vec<(String, Value)> = data
            .iter()
            .filter(|(k, _)| is_metadata(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        data.retain(|k, _| !is_metadata(k));
        let before = data.clone();
        let mut change = RowChange {
            table: &shape.name,
            op: row.op,
            lsn: (row.lsn >= 0).then_some(row.lsn),
            row: data,
        };
        let outcome = T::transform(&mut change);
        let after = change.row;
        match outcome {
            Err(reason) => {
                failures.push(Failure {
                    event: row.event,
                    reason,
                });
                continue;
            }
            Ok(Action::Skip) => continue,
            Ok(Action::Load) => {}
        }
        let changed_key = shape
            .columns
            .iter()
            .filter(|c| c.is_key)
            .find(|c| before.get(&c.name) != after.get(&c.name));
        if let Some(c) = changed_key {
            failures.push(Failure {
                event: row.event,
                reason: format!(
                    "the transform changed key column {} of {}: keys must keep their values",
                    c.name, shape.name
                ),
            });
            continue;
        }
        for name in before.keys() {
            if !after.contains_key(name) {
                removed[t].insert(name.clone());
            }
        }
        for (name, value) in &after {
            present[t].insert(name.clone());
            match shape.columns.iter().find(|c| &c.name == name) {
                None => match added[t].iter_mut().find(|(n, _)| n == name) {
                    Some((_, ty)) => {
                        if ty.is_none() {
                            *ty = inferred_type(value);
                        }
                    }
                    None => added[t].push((name.clone(), inferred_type(value))),
                },
                Some(column) => {
                    if before.get(name) != Some(value)
                        && !fits(&column.data_type, value)
                        && let Some(new_kind) = inferred_type(value)
                    {
                        retyped[t].entry(column.name.clone()).or_insert(new_kind);
                    }
                }
            }
        }
        let mut data = after;
        for (k, v) in metadata {
            data.insert(k, v);
        }
        row.data = Value::Object(data).to_string();
        kept.push(row);
    }
    for (t, shape) in tables.iter_mut().enumerate() {
        shape
            .columns
            .retain(|c| c.is_key || !removed[t].contains(&c.name) || present[t].contains(&c.name));
        for c in &mut shape.columns {
            if let Some(ty) = retyped[t].get(&c.name) {
                c.data_type = ty.clone();
            }
        }
        let at = shape
            .columns
            .iter()
            .position(|c| is_metadata(&c.name))
            .unwrap_or(shape.columns.len());
        let new: Vec<Column> = added[t]
            .drain(..)
            .map(|(name, ty)| Column {
                name,
                data_type: ty.unwrap_or_else(|| "VARCHAR".into()),
                is_key: false,
            })
            .collect();
        shape.columns.splice(at..at, new);
    }
    Transformed {
        tables,
        rows: kept,
        truncates,
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_cdc_core::{Event, transform_batch};

    /// Masks emails, drops `secret`, adds `email_domain`, skips `test` rows, fails
    /// negative amounts, and (badly) rewrites id 99's key.
    struct Mask;

    impl Transform for Mask {
        fn transform(change: &mut RowChange<'_>) -> Result<Action, String> {
            assert!(!change.row.contains_key("__op"), "metadata columns hidden");
            if change.row.get("test") == Some(&Value::Bool(true)) {
                return Ok(Action::Skip);
            }
            if change.number("amount").is_some_and(|a| a < 0.0) {
                return Err("negative amount".into());
            }
            change.row.remove("secret");
            if let Some(Value::String(email)) = change.row.get("email").cloned()
                && let Some((_, domain)) = email.split_once('@')
            {
                change
                    .row
                    .insert("email".into(), Value::String(format!("***@{domain}")));
                change
                    .row
                    .insert("email_domain".into(), Value::String(domain.into()));
            }
            if change.number("id") == Some(99.0) {
                change.set("id", "100");
            }
            Ok(Action::Load)
        }
    }

    fn event(after: &str, offset: i64) -> String {
        format!(
            r#"{{"op":"c","before":null,"after":{after},"source":{{"schema":"public","table":"t","lsn":{}}}}}"#,
            10 + offset
        )
    }

    #[test]
    fn rows_are_rewritten_skipped_or_failed_and_the_shape_follows() {
        let values = [
            event(
                r#"{"id":1,"email":"ann@example.com","secret":"x","amount":5}"#,
                0,
            ),
            event(r#"{"id":2,"email":null,"secret":"y","amount":1}"#, 1),
            event(r#"{"id":3,"test":true,"amount":1}"#, 2),
            event(r#"{"id":4,"amount":-1}"#, 3),
            event(r#"{"id":99,"amount":1}"#, 4),
        ];
        let keys: Vec<String> = (0..values.len())
            .map(|i| format!(r#"{{"id":{}}}"#, [1, 2, 3, 4, 99][i]))
            .collect();
        let events: Vec<Event<'_>> = values
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, (v, k))| Event {
                topic: "dbz.public.t",
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
                key: Some(k.as_bytes()),
                value: Some(v.as_bytes()),
            })
            .collect();
        let input = transform_batch(&events).unwrap();
        assert_eq!(input.rows.len(), 5);
        let out = transform_rows::<Mask>(input.clone());

        let loaded: Vec<u32> = out.rows.iter().map(|r| r.event).collect();
        assert_eq!(loaded, vec![0, 1], "row 2 skipped, 3 and 4 failed");
        let failed: Vec<(u32, &str)> = out
            .failures
            .iter()
            .map(|f| (f.event, f.reason.as_str()))
            .collect();
        assert_eq!(failed[0], (3, "negative amount"));
        assert_eq!(failed[1].0, 4);
        assert!(failed[1].1.contains("key column id"), "{}", failed[1].1);

        let first: Value = serde_json::from_str(&out.rows[0].data).unwrap();
        assert_eq!(first["email"], "***@example.com");
        assert_eq!(first["email_domain"], "example.com");
        assert!(first.get("secret").is_none());
        assert_eq!(first["__op"], "c", "metadata columns kept");
        assert_eq!(out.rows[0].key, input.rows[0].key);
        assert_eq!(out.rows[0].lsn, input.rows[0].lsn);

        let columns: Vec<(&str, &str)> = out.tables[0]
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.data_type.as_str()))
            .collect();
        let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
        assert!(!names.contains(&"secret"), "{names:?}");
        let domain = names.iter().position(|n| *n == "email_domain").unwrap();
        let first_meta = names.iter().position(|n| n.starts_with("__")).unwrap();
        assert!(
            domain < first_meta,
            "new columns before metadata: {names:?}"
        );
        assert!(columns.contains(&("email_domain", "VARCHAR")));
    }

    struct Retype;

    impl Transform for Retype {
        fn transform(change: &mut RowChange<'_>) -> Result<Action, String> {
            change.set("amount", "hidden");
            Ok(Action::Load)
        }
    }

    #[test]
    fn a_value_changed_to_another_kind_retypes_the_column() {
        let v = event(r#"{"id":1,"amount":5}"#, 0);
        let events = [Event {
            topic: "dbz.public.t",
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(br#"{"id":1}"#),
            value: Some(v.as_bytes()),
        }];
        let input = transform_batch(&events).unwrap();
        let out = transform_rows::<Retype>(input);
        let amount = out.tables[0]
            .columns
            .iter()
            .find(|c| c.name == "amount")
            .unwrap();
        assert_eq!(amount.data_type, "VARCHAR");
    }
}
