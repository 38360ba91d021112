//! Turns Snowflake rowsets (JSON or Arrow) into rows of canonical text.
//!
//! Both encodings go through the same formatting functions in [`text`], so a value reads the
//! same whichever encoding the server chose. The forms are documented in the crate docs.

pub(crate) mod arrow;
pub(crate) mod text;

use serde_json::Value;

use crate::{ColumnMeta, Error};

/// A Snowflake logical type, as named in `rowtype[].type` and Arrow `logicalType` metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Logical {
    Fixed,
    Real,
    Text,
    Boolean,
    Date,
    Time,
    TimestampNtz,
    TimestampLtz,
    TimestampTz,
    /// VARIANT, OBJECT, ARRAY, MAP: JSON text.
    Json,
    Binary,
    /// Anything else (GEOGRAPHY, VECTOR, ...): passed through when sent as text.
    Other,
}

impl Logical {
    pub(crate) fn of(type_name: &str) -> Self {
        match type_name.to_ascii_uppercase().as_str() {
            "FIXED" | "NUMBER" | "DECIMAL" | "INTEGER" => Logical::Fixed,
            "REAL" | "FLOAT" | "DOUBLE" => Logical::Real,
            "TEXT" | "VARCHAR" | "STRING" | "CHAR" => Logical::Text,
            "BOOLEAN" => Logical::Boolean,
            "DATE" => Logical::Date,
            "TIME" => Logical::Time,
            "TIMESTAMP_NTZ" | "TIMESTAMP" | "DATETIME" => Logical::TimestampNtz,
            "TIMESTAMP_LTZ" => Logical::TimestampLtz,
            "TIMESTAMP_TZ" => Logical::TimestampTz,
            "VARIANT" | "OBJECT" | "ARRAY" | "MAP" => Logical::Json,
            "BINARY" | "VARBINARY" => Logical::Binary,
            _ => Logical::Other,
        }
    }
}

/// Fraction digits of a TIME/TIMESTAMP column: its scale, 9 when unknown.
pub(crate) fn temporal_scale(column: &ColumnMeta) -> u32 {
    column.scale.map_or(9, |s| s.clamp(0, 9) as u32)
}

/// Fraction digits of a FIXED column.
pub(crate) fn fixed_scale(column: &ColumnMeta) -> u32 {
    column.scale.map_or(0, |s| s.clamp(0, 38) as u32)
}

fn bad_value(column: &ColumnMeta, what: &str) -> Error {
    // The value itself is data: never put it in an error.
    Error::Decode(format!(
        "column {} ({}): value is not {what}",
        column.name, column.type_name
    ))
}

/// Decodes a JSON rowset (`data.rowset`, or a JSON result chunk).
pub(crate) fn json_rows(
    rowset: Vec<Vec<Value>>,
    columns: &[ColumnMeta],
) -> Result<Vec<Vec<Option<String>>>, Error> {
    let logicals: Vec<Logical> = columns.iter().map(|c| Logical::of(&c.type_name)).collect();
    rowset
        .into_iter()
        .map(|row| {
            if row.len() != columns.len() {
                return Err(Error::Decode(format!(
                    "JSON rowset row has {} values for {} columns",
                    row.len(),
                    columns.len()
                )));
            }
            row.into_iter()
                .zip(columns.iter().zip(&logicals))
                .map(|(value, (column, logical))| json_value(value, column, *logical))
                .collect()
        })
        .collect()
}

fn json_value(
    value: Value,
    column: &ColumnMeta,
    logical: Logical,
) -> Result<Option<String>, Error> {
    let raw = match value {
        Value::Null => return Ok(None),
        Value::String(s) => s,
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    };
    json_text(&raw, column, logical).map(Some)
}

/// Canonical text of one JSON rowset value. Snowflake's JSON encodings: FIXED as decimal text,
/// REAL as float text, BOOLEAN as `1`/`0`, DATE as days since the epoch, TIME as decimal
/// seconds since midnight, TIMESTAMP_* as decimal seconds since the epoch (UTC; TIMESTAMP_TZ
/// adds ` <offset minutes + 1440>`), BINARY as hex. Textual forms some emulators send
/// (`True`, `2024-01-02`, `12:34:56`) are accepted too.
pub(crate) fn json_text(raw: &str, column: &ColumnMeta, logical: Logical) -> Result<String, Error> {
    match logical {
        Logical::Fixed => text::normalize_decimal_text(raw, fixed_scale(column))
            .ok_or_else(|| bad_value(column, "a decimal number")),
        Logical::Real => raw
            .trim()
            .parse::<f64>()
            .map(text::format_real)
            .map_err(|_| bad_value(column, "a floating-point number")),
        Logical::Boolean => match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" => Ok("true".to_owned()),
            "0" | "false" => Ok("false".to_owned()),
            _ => Err(bad_value(column, "a boolean")),
        },
        Logical::Date => {
            if let Ok(days) = raw.trim().parse::<i64>() {
                Ok(text::format_date(days))
            } else if text::is_iso_date(raw.trim()) {
                Ok(raw.trim().to_owned())
            } else {
                Err(bad_value(column, "a date"))
            }
        }
        Logical::Time => {
            let nanos = if raw.contains(':') {
                text::parse_clock_time(raw)
            } else {
                text::parse_decimal_seconds(raw)
            };
            nanos
                .map(|n| text::format_time(n, temporal_scale(column)))
                .ok_or_else(|| bad_value(column, "a time"))
        }
        Logical::TimestampNtz | Logical::TimestampLtz | Logical::TimestampTz => {
            // `<epoch seconds>[ <tz>]`: the epoch is UTC for every kind, so the offset of a
            // TIMESTAMP_TZ does not change the canonical (UTC) text.
            let epoch = raw.split_whitespace().next().unwrap_or("");
            text::parse_decimal_seconds(epoch)
                .map(|n| {
                    text::format_timestamp(
                        n,
                        temporal_scale(column),
                        logical != Logical::TimestampNtz,
                    )
                })
                .ok_or_else(|| bad_value(column, "an epoch timestamp"))
        }
        Logical::Json => Ok(text::canonical_json(raw)),
        Logical::Binary => {
            if raw.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(raw.to_ascii_lowercase())
            } else {
                Err(bad_value(column, "hex"))
            }
        }
        Logical::Text | Logical::Other => Ok(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn col(name: &str, ty: &str, scale: Option<i64>) -> ColumnMeta {
        ColumnMeta {
            name: name.into(),
            type_name: ty.to_ascii_uppercase(),
            scale,
            precision: None,
            nullable: true,
        }
    }

    #[test]
    fn snowflake_json_encodings() {
        let columns = vec![
            col("A", "fixed", Some(0)),
            col("B", "fixed", Some(2)),
            col("C", "real", None),
            col("D", "boolean", None),
            col("E", "date", None),
            col("F", "time", Some(9)),
            col("G", "timestamp_ntz", Some(6)),
            col("H", "timestamp_tz", Some(9)),
            col("I", "variant", None),
            col("K", "binary", None),
            col("L", "text", None),
            col("N", "timestamp_ltz", Some(3)),
        ];
        // As real Snowflake sends them in a JSON rowset.
        let rowset = vec![
            vec![
                json!("9007199254740993"),
                json!("-12345.67"),
                json!("1.5"),
                json!("1"),
                json!("19724"),
                json!("45296.789000000"),
                json!("1704164645.123456"),
                json!("1704157445.123456000 1560"),
                json!("{\n  \"x\": [\n    1,\n    2.5\n  ]\n}"),
                json!("DEADBEEF"),
                json!("héllo ✓"),
                json!("1704164645.500"),
            ],
            vec![Value::Null; 12],
        ];
        let rows = json_rows(rowset, &columns).unwrap();
        let expected: Vec<Option<String>> = [
            "9007199254740993",
            "-12345.67",
            "1.5",
            "true",
            "2024-01-02",
            "12:34:56.789000000",
            "2024-01-02 03:04:05.123456",
            "2024-01-02 01:04:05.123456000+00:00",
            r#"{"x":[1,2.5]}"#,
            "deadbeef",
            "héllo ✓",
            "2024-01-02 03:04:05.500+00:00",
        ]
        .iter()
        .map(|s| Some((*s).to_owned()))
        .collect();
        assert_eq!(rows[0], expected);
        assert_eq!(rows[1], vec![None; 12]);
    }

    #[test]
    fn emulator_text_forms_and_errors() {
        let boolean = col("D", "boolean", None);
        assert_eq!(
            json_text("True", &boolean, Logical::Boolean).unwrap(),
            "true"
        );
        assert_eq!(json_text("0", &boolean, Logical::Boolean).unwrap(), "false");
        let date = col("E", "date", None);
        assert_eq!(
            json_text("2024-01-02", &date, Logical::Date).unwrap(),
            "2024-01-02"
        );
        let time = col("F", "time", Some(3));
        assert_eq!(
            json_text("01:02:03.456", &time, Logical::Time).unwrap(),
            "01:02:03.456"
        );
        let fixed = col("A", "fixed", Some(0));
        let err = json_text("12abc-secret", &fixed, Logical::Fixed).unwrap_err();
        assert!(
            !err.to_string().contains("secret"),
            "values stay out of errors"
        );
        assert!(json_rows(vec![vec![json!("1"), json!("2")]], &[fixed]).is_err());
    }
}
