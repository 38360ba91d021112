//! Column types and value conversion: Kafka Connect schemas (or, without schemas, the
//! JSON kind of each value) to Snowflake types, and Debezium's encodings to text that
//! Snowflake casts exactly.
//!
//! What a value becomes in `row.data`, by Connect schema (`name` first, then `type`):
//!
//! | Connect schema | written as | Snowflake type |
//! |---|---|---|
//! | `org.apache.kafka.connect.data.Decimal` (bytes) | exact decimal text, a JSON string (`"-0.50"`) | `NUMBER(p,s)` (p = `connect.decimal.precision` if 1..=38, else 38) |
//! | `io.debezium.data.VariableScaleDecimal` (struct) | exact decimal text, a JSON string | `VARCHAR` |
//! | `int8`/`int16`/`int32`/`int64` | the exact integer as a JSON string (`"9007199254740993"`) | `NUMBER(38,0)` |
//! | `io.debezium.time.Date`, `org.apache.kafka.connect.data.Date` | `"YYYY-MM-DD"` | `DATE` |
//! | `io.debezium.time.Time` / `MicroTime` / `NanoTime`, Connect `Time` | `"HH:MM:SS.fff[fff[fff]]"` | `TIME(3/6/9)` |
//! | `io.debezium.time.Timestamp` / `MicroTimestamp` / `NanoTimestamp`, Connect `Timestamp` | `"YYYY-MM-DD HH:MM:SS.f…"` | `TIMESTAMP_NTZ(3/6/9)` |
//! | `io.debezium.time.ZonedTimestamp` (string) | as is (ISO-8601, UTC) | `TIMESTAMP_TZ(6)` |
//! | `io.debezium.time.MicroDuration` (int64) | microseconds as a JSON string | `NUMBER(38,0)` |
//! | `io.debezium.data.Json` (string) | the JSON document itself, embedded | `VARIANT` |
//! | `bytes` | base64 text, as is | `BINARY` |
//! | `float`/`double` | JSON number, as is | `FLOAT` |
//! | `boolean` | JSON boolean | `BOOLEAN` |
//! | `string` (incl. `Uuid`, `Enum`, `Xml`, `ZonedTime`, interval strings) | as is | `VARCHAR` |
//! | `array` | JSON array, elements converted | `ARRAY` |
//! | `struct`, `map` | JSON object, fields converted | `VARIANT` |
//!
//! Integers are strings at the top level only because JSON readers that go through
//! a double (and Snowflake emulators) would round 2^53+1; inside arrays and objects
//! they stay JSON numbers, which Snowflake's `PARSE_JSON` keeps exact.
//!
//! `VariableScaleDecimal` (PostgreSQL `numeric` without a scale) becomes text, not a
//! number: each value has its own scale, and any fixed `NUMBER(38,s)` would round
//! some of them. Cast it in queries when a fixed scale is acceptable.
//!
//! Without schemas (`schemas.enable=false`), types are inferred from the JSON kind of
//! the values in the batch: boolean `BOOLEAN`, integer `NUMBER(38,0)` (written as an
//! exact integer string, as above), other numbers `FLOAT`, string `VARCHAR`, array
//! `ARRAY`, object `VARIANT`, a column null in every row `VARCHAR`. What is lost
//! without schemas: precise decimals arrive as base64 text (use
//! `decimal.handling.mode=string` or schemas), `numeric` without scale as a
//! `{scale, value}` object, temporal values as plain integers (days, µs) and JSON
//! columns as strings.
//!
//! When one batch shows a column with two different types (a schema change mid-batch,
//! or mixed JSON kinds), the column becomes: `FLOAT` for integers mixed with other
//! numbers, `NUMBER(38,s)` for decimals of one scale and different precisions,
//! `VARCHAR` for decimals of different scales, `VARIANT` otherwise.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::decimal::decimal_text;
use crate::temporal::{self, Unit};

/// A Snowflake column type floe creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SfType {
    Number { precision: u8, scale: u8 },
    Float,
    Varchar,
    Boolean,
    Binary,
    Date,
    Time(u8),
    TimestampNtz(u8),
    TimestampTz(u8),
    Variant,
    Array,
}

impl SfType {
    pub const INTEGER: SfType = SfType::Number {
        precision: 38,
        scale: 0,
    };

    /// The type of a column seen with types `a` and `b` in one batch.
    pub fn unify(a: SfType, b: SfType) -> SfType {
        use SfType::*;
        match (a, b) {
            _ if a == b => a,
            (Number { scale: 0, .. }, Float) | (Float, Number { scale: 0, .. }) => Float,
            (
                Number {
                    precision: p1,
                    scale: s1,
                },
                Number {
                    precision: p2,
                    scale: s2,
                },
            ) => {
                if s1 == s2 {
                    Number {
                        precision: p1.max(p2),
                        scale: s1,
                    }
                } else {
                    Varchar
                }
            }
            _ => Variant,
        }
    }
}

impl fmt::Display for SfType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SfType::Number { precision, scale } => write!(f, "NUMBER({precision},{scale})"),
            SfType::Float => f.write_str("FLOAT"),
            SfType::Varchar => f.write_str("VARCHAR"),
            SfType::Boolean => f.write_str("BOOLEAN"),
            SfType::Binary => f.write_str("BINARY"),
            SfType::Date => f.write_str("DATE"),
            SfType::Time(p) => write!(f, "TIME({p})"),
            SfType::TimestampNtz(p) => write!(f, "TIMESTAMP_NTZ({p})"),
            SfType::TimestampTz(p) => write!(f, "TIMESTAMP_TZ({p})"),
            SfType::Variant => f.write_str("VARIANT"),
            SfType::Array => f.write_str("ARRAY"),
        }
    }
}

/// How one value is converted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Conv {
    /// No schema: keep the value, integers as exact strings at the top level.
    Infer,
    Integer,
    Float,
    Boolean,
    Text,
    Bytes,
    Decimal {
        scale: i32,
        ty: SfType,
    },
    VariableScaleDecimal,
    Date,
    Time(Unit),
    Timestamp(Unit),
    ZonedTimestamp,
    Duration,
    Json,
    Array(Box<Conv>),
    Struct(Vec<(String, Conv)>),
    Map(Box<Conv>),
}

/// A Kafka Connect schema as the JsonConverter writes it.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a Kafka Connect schema (a JSON object)")]
struct ConnectSchema {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    fields: Vec<ConnectSchema>,
    #[serde(default)]
    items: Option<Box<ConnectSchema>>,
    #[serde(default)]
    values: Option<Box<ConnectSchema>>,
    #[serde(default)]
    field: Option<String>,
}

impl ConnectSchema {
    fn param_i64(&self, name: &str) -> Option<i64> {
        match self.parameters.as_ref()?.get(name)? {
            Value::String(s) => s.trim().parse().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }
}

/// Field conversions of one struct (a table row), in field order.
#[derive(Debug, Default)]
pub(crate) struct RowSchema {
    fields: Vec<(String, Conv)>,
    index: HashMap<String, usize>,
}

impl RowSchema {
    fn from_fields(fields: &[ConnectSchema]) -> Result<RowSchema, String> {
        let mut row = RowSchema::default();
        for f in fields {
            let name = f
                .field
                .clone()
                .ok_or("schema: a struct field has no 'field' name")?;
            let conv = Conv::from_schema(f).map_err(|e| format!("schema: field '{name}': {e}"))?;
            row.index.insert(name.clone(), row.fields.len());
            row.fields.push((name, conv));
        }
        Ok(row)
    }

    /// The conversion of field `name`, if the schema has it.
    pub fn get(&self, name: &str) -> Option<&Conv> {
        self.index.get(name).map(|&i| &self.fields[i].1)
    }
}

/// Row schemas of an envelope's `before` and `after` (usually the same struct).
#[derive(Debug, Default)]
pub(crate) struct EnvelopeSchema {
    pub before: Option<RowSchema>,
    pub after: Option<RowSchema>,
}

/// Parses a value (envelope) schema.
pub(crate) fn envelope_schema(raw: &str) -> Result<EnvelopeSchema, String> {
    let schema: ConnectSchema =
        serde_json::from_str(raw).map_err(|e| format!("schema: value schema: {e}"))?;
    let mut out = EnvelopeSchema::default();
    for f in &schema.fields {
        let slot = match f.field.as_deref() {
            Some("before") => &mut out.before,
            Some("after") => &mut out.after,
            _ => continue,
        };
        if f.ty == "struct" {
            *slot = Some(RowSchema::from_fields(&f.fields)?);
        }
    }
    Ok(out)
}

/// Parses the schema of a flattened (ExtractNewRecordState) record: a struct of the
/// row's columns, used for both sides.
pub(crate) fn flat_schema(raw: &str) -> Result<EnvelopeSchema, String> {
    let schema: ConnectSchema =
        serde_json::from_str(raw).map_err(|e| format!("schema: value schema: {e}"))?;
    if schema.ty != "struct" {
        return Err(format!(
            "schema: value schema is '{}', not a struct",
            schema.ty
        ));
    }
    Ok(EnvelopeSchema {
        before: Some(RowSchema::from_fields(&schema.fields)?),
        after: Some(RowSchema::from_fields(&schema.fields)?),
    })
}

/// Parses a key schema (a struct of the key columns).
pub(crate) fn key_schema(raw: &str) -> Result<RowSchema, String> {
    let schema: ConnectSchema =
        serde_json::from_str(raw).map_err(|e| format!("schema: key schema: {e}"))?;
    if schema.ty != "struct" {
        return Err(format!(
            "schema: key schema is '{}', not a struct",
            schema.ty
        ));
    }
    RowSchema::from_fields(&schema.fields)
}

impl Conv {
    fn from_schema(s: &ConnectSchema) -> Result<Conv, String> {
        let by_name = match s.name.as_deref() {
            Some("org.apache.kafka.connect.data.Decimal") => {
                let scale = s
                    .param_i64("scale")
                    .ok_or("Decimal without a 'scale' parameter")?;
                let scale = i32::try_from(scale).map_err(|_| format!("Decimal scale {scale}"))?;
                let declared = s.param_i64("connect.decimal.precision");
                let precision = declared.filter(|p| (1..=38).contains(p)).unwrap_or(38);
                // Snowflake: scale 0..=37 and scale <= precision. A declared precision
                // above 38 (numeric(50,2)) has values no NUMBER holds: exact text.
                let ty = match u8::try_from(scale) {
                    _ if declared.is_some_and(|p| p > 38) => SfType::Varchar,
                    Ok(scale) if scale <= 37 => {
                        let precision = if i64::from(scale) > precision {
                            38
                        } else {
                            precision as u8
                        };
                        SfType::Number { precision, scale }
                    }
                    _ => SfType::Varchar,
                };
                Some(Conv::Decimal { scale, ty })
            }
            Some("io.debezium.data.VariableScaleDecimal") => Some(Conv::VariableScaleDecimal),
            Some("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date") => {
                Some(Conv::Date)
            }
            Some("io.debezium.time.Time" | "org.apache.kafka.connect.data.Time") => {
                Some(Conv::Time(Unit::Milli))
            }
            Some("io.debezium.time.MicroTime") => Some(Conv::Time(Unit::Micro)),
            Some("io.debezium.time.NanoTime") => Some(Conv::Time(Unit::Nano)),
            Some("io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp") => {
                Some(Conv::Timestamp(Unit::Milli))
            }
            Some("io.debezium.time.MicroTimestamp") => Some(Conv::Timestamp(Unit::Micro)),
            Some("io.debezium.time.NanoTimestamp") => Some(Conv::Timestamp(Unit::Nano)),
            Some("io.debezium.time.ZonedTimestamp") => Some(Conv::ZonedTimestamp),
            Some("io.debezium.time.MicroDuration") => Some(Conv::Duration),
            Some("io.debezium.data.Json") => Some(Conv::Json),
            _ => None,
        };
        if let Some(conv) = by_name {
            return Ok(conv);
        }
        Ok(match s.ty.as_str() {
            "int8" | "int16" | "int32" | "int64" => Conv::Integer,
            "float" | "float32" | "double" | "float64" => Conv::Float,
            "boolean" => Conv::Boolean,
            "string" => Conv::Text,
            "bytes" => Conv::Bytes,
            "array" => Conv::Array(Box::new(match &s.items {
                Some(items) => Conv::from_schema(items)?,
                None => Conv::Infer,
            })),
            "map" => Conv::Map(Box::new(match &s.values {
                Some(values) => Conv::from_schema(values)?,
                None => Conv::Infer,
            })),
            "struct" => {
                let mut fields = Vec::with_capacity(s.fields.len());
                for f in &s.fields {
                    let name = f
                        .field
                        .clone()
                        .ok_or("a struct field has no 'field' name")?;
                    fields.push((name, Conv::from_schema(f)?));
                }
                Conv::Struct(fields)
            }
            _ => Conv::Infer,
        })
    }

    /// The column type for a value converted with `self` (`v` matters only for
    /// [`Conv::Infer`]); `None` for a null without schema.
    pub fn column_type(&self, v: &Value) -> Option<SfType> {
        Some(match self {
            Conv::Infer => match v {
                Value::Null => return None,
                Value::Bool(_) => SfType::Boolean,
                Value::Number(n) if is_integer(n) => SfType::INTEGER,
                Value::Number(_) => SfType::Float,
                Value::String(_) => SfType::Varchar,
                Value::Array(_) => SfType::Array,
                Value::Object(_) => SfType::Variant,
            },
            Conv::Integer | Conv::Duration => SfType::INTEGER,
            Conv::Float => SfType::Float,
            Conv::Boolean => SfType::Boolean,
            Conv::Text | Conv::VariableScaleDecimal => SfType::Varchar,
            Conv::Bytes => SfType::Binary,
            Conv::Decimal { ty, .. } => *ty,
            Conv::Date => SfType::Date,
            Conv::Time(u) => SfType::Time(u.digits()),
            Conv::Timestamp(u) => SfType::TimestampNtz(u.digits()),
            Conv::ZonedTimestamp => SfType::TimestampTz(6),
            Conv::Json | Conv::Struct(_) | Conv::Map(_) => SfType::Variant,
            Conv::Array(_) => SfType::Array,
        })
    }
}

/// The Snowflake type floe gives a column whose values have no schema, from one value
/// (e.g. `NUMBER(38,0)` for an integer, `VARCHAR` for a string); `None` for a null.
pub fn inferred_type(v: &Value) -> Option<String> {
    Conv::Infer.column_type(v).map(|t| t.to_string())
}

/// Long text cut for an error message: the first and last digits with the length.
fn abbreviate(text: &str) -> String {
    if text.len() <= 24 {
        return text.to_owned();
    }
    format!(
        "{}…{} ({} characters)",
        &text[..10],
        &text[text.len() - 10..],
        text.len()
    )
}

/// Whether a JSON number is an integer (`-?[0-9]+`, any size).
pub(crate) fn is_integer(n: &Number) -> bool {
    let s = n.as_str();
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn mismatch(expected: &str, v: &Value) -> String {
    format!("expected {expected}, got {}", kind(v))
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("serialising a str to a Vec cannot fail");
}

fn write_json(out: &mut Vec<u8>, v: &Value) {
    serde_json::to_writer(&mut *out, v).expect("serialising a Value to a Vec cannot fail");
}

fn as_i64(v: &Value, expected: &str) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("expected {expected}, got {n}")),
        _ => Err(mismatch(expected, v)),
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("invalid base64: {e}"))
}

/// Writes `v` converted by `conv` as JSON to `out`. `top` is true for a column value
/// (integers become strings), false inside arrays and objects.
pub(crate) fn write_value(
    out: &mut Vec<u8>,
    v: &Value,
    conv: &Conv,
    top: bool,
) -> Result<(), String> {
    if v.is_null() {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    match conv {
        Conv::Infer => match v {
            Value::Number(n) if top && is_integer(n) => write_json_str(out, n.as_str()),
            _ => write_json(out, v),
        },
        Conv::Integer | Conv::Duration => match v {
            Value::Number(n) if is_integer(n) => {
                if top {
                    write_json_str(out, n.as_str());
                } else {
                    out.extend_from_slice(n.as_str().as_bytes());
                }
            }
            _ => return Err(mismatch("an integer", v)),
        },
        Conv::Float => match v {
            Value::Number(_) => write_json(out, v),
            // Debezium writes special values of float columns as strings; Snowflake's
            // FLOAT spells them 'NaN', 'inf' and '-inf'.
            Value::String(s) => match s.as_str() {
                "NaN" => write_json_str(out, "NaN"),
                "Infinity" => write_json_str(out, "inf"),
                "-Infinity" => write_json_str(out, "-inf"),
                _ => return Err(mismatch("a number", v)),
            },
            _ => return Err(mismatch("a number", v)),
        },
        Conv::Boolean => match v {
            Value::Bool(_) => write_json(out, v),
            _ => return Err(mismatch("a boolean", v)),
        },
        Conv::Text => match v {
            Value::String(_) => write_json(out, v),
            _ => return Err(mismatch("a string", v)),
        },
        Conv::ZonedTimestamp => match v {
            Value::String(s) => {
                temporal::check_zoned_timestamp(s)?;
                write_json(out, v)
            }
            _ => return Err(mismatch("a string", v)),
        },
        Conv::Bytes => match v {
            Value::String(s) => {
                decode_base64(s)?;
                write_json(out, v);
            }
            _ => return Err(mismatch("base64 text", v)),
        },
        Conv::Decimal { scale, ty } => match v {
            Value::String(s) => {
                let text = decimal_text(&decode_base64(s)?, *scale)?;
                if let SfType::Number { precision, scale } = ty {
                    let digits = crate::decimal::integer_digits(&text);
                    if digits > usize::from(precision - scale) {
                        return Err(format!(
                            "decimal {} has {digits} digits before the point: more than {ty} holds",
                            abbreviate(&text)
                        ));
                    }
                }
                write_json_str(out, &text)
            }
            _ => return Err(mismatch("a base64 Decimal", v)),
        },
        Conv::VariableScaleDecimal => {
            let Value::Object(o) = v else {
                return Err(mismatch("a {scale, value} object", v));
            };
            let scale = o
                .get("scale")
                .map(|s| as_i64(s, "an integer scale"))
                .transpose()?;
            let scale = scale
                .and_then(|s| i32::try_from(s).ok())
                .ok_or("VariableScaleDecimal without a valid 'scale'")?;
            let Some(Value::String(bytes)) = o.get("value") else {
                return Err("VariableScaleDecimal without a base64 'value'".to_owned());
            };
            write_json_str(out, &decimal_text(&decode_base64(bytes)?, scale)?);
        }
        Conv::Date => write_json_str(out, &temporal::format_date(as_i64(v, "days (int32)")?)?),
        Conv::Time(unit) => write_json_str(
            out,
            &temporal::format_time(as_i64(v, "a time (integer)")?, *unit)?,
        ),
        Conv::Timestamp(unit) => write_json_str(
            out,
            &temporal::format_timestamp(as_i64(v, "a timestamp (integer)")?, *unit)?,
        ),
        Conv::Json => match v {
            // The document itself, as PostgreSQL wrote it. Text that is not JSON (the
            // unchanged-TOAST placeholder) stays a JSON string. A `json` (not `jsonb`)
            // document may repeat a key, which no VARIANT holds: an error of its row.
            Value::String(s) => match serde_json::from_str::<&serde_json::value::RawValue>(s) {
                Ok(raw) => {
                    crate::json::check_unique_keys(raw.get())?;
                    out.extend_from_slice(raw.get().as_bytes())
                }
                Err(_) => write_json(out, v),
            },
            _ => write_json(out, v),
        },
        Conv::Array(items) => {
            let Value::Array(a) = v else {
                return Err(mismatch("an array", v));
            };
            out.push(b'[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, items, false)?;
            }
            out.push(b']');
        }
        Conv::Struct(fields) => {
            let Value::Object(o) = v else {
                return Err(mismatch("an object", v));
            };
            write_object(out, o, |name| {
                fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(&Conv::Infer, |(_, c)| c)
            })?;
        }
        Conv::Map(values) => {
            let Value::Object(o) = v else {
                return Err(mismatch("an object", v));
            };
            write_object(out, o, |_| values)?;
        }
    }
    Ok(())
}

fn write_object<'c>(
    out: &mut Vec<u8>,
    o: &Map<String, Value>,
    conv_of: impl Fn(&str) -> &'c Conv,
) -> Result<(), String> {
    out.push(b'{');
    for (i, (k, item)) in o.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, k);
        out.push(b':');
        write_value(out, item, conv_of(k), false)?;
    }
    out.push(b'}');
    Ok(())
}

/// `"name":` into `out`.
pub(crate) fn write_key(out: &mut Vec<u8>, name: &str) {
    write_json_str(out, name);
    out.push(b':');
}

/// A JSON string of a Rust string, for metadata values.
pub(crate) fn write_string(out: &mut Vec<u8>, s: &str) {
    write_json_str(out, s);
}

/// An integer as a JSON string, for metadata values.
pub(crate) fn write_int_string(out: &mut Vec<u8>, v: i64) {
    write!(out, "\"{v}\"").expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(v: Value, c: &Conv) -> Result<String, String> {
        let mut out = Vec::new();
        write_value(&mut out, &v, c, true)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn parse(v: &str) -> Value {
        serde_json::from_str(v).unwrap()
    }

    #[test]
    fn integers_stay_exact() {
        let big = parse("9007199254740993");
        assert_eq!(
            conv(big.clone(), &Conv::Integer).unwrap(),
            r#""9007199254740993""#
        );
        assert_eq!(
            conv(big.clone(), &Conv::Infer).unwrap(),
            r#""9007199254740993""#
        );
        assert_eq!(Conv::Infer.column_type(&big), Some(SfType::INTEGER));
        let arr = parse("[9007199254740993, 1]");
        assert_eq!(
            conv(arr, &Conv::Array(Box::new(Conv::Integer))).unwrap(),
            "[9007199254740993,1]"
        );
        assert!(conv(json!(1.5), &Conv::Integer).is_err());
        assert!(conv(json!("1"), &Conv::Integer).is_err());
        assert_eq!(conv(parse("-0"), &Conv::Integer).unwrap(), r#""-0""#);
        assert_eq!(Conv::Infer.column_type(&parse("1e3")), Some(SfType::Float));
        assert_eq!(Conv::Infer.column_type(&parse("1.0")), Some(SfType::Float));
    }

    #[test]
    fn decimals() {
        let d = Conv::Decimal {
            scale: 2,
            ty: SfType::Number {
                precision: 12,
                scale: 2,
            },
        };
        assert_eq!(conv(json!("EtaH"), &d).unwrap(), r#""12345.67""#);
        assert_eq!(conv(json!("zg=="), &d).unwrap(), r#""-0.50""#);
        assert!(
            conv(json!("not base64!"), &d)
                .unwrap_err()
                .contains("invalid base64")
        );
        assert!(conv(json!(12.5), &d).is_err());
        let v = json!({"scale": 14, "value": "AR2552okgw=="});
        assert_eq!(
            conv(v, &Conv::VariableScaleDecimal).unwrap(),
            r#""3.14159265358979""#
        );
        assert!(conv(json!({"value": "AA=="}), &Conv::VariableScaleDecimal).is_err());
        assert!(conv(json!({"scale": 1}), &Conv::VariableScaleDecimal).is_err());
    }

    #[test]
    fn temporals() {
        assert_eq!(conv(json!(19797), &Conv::Date).unwrap(), r#""2024-03-15""#);
        assert_eq!(conv(json!(-1), &Conv::Date).unwrap(), r#""1969-12-31""#);
        assert_eq!(
            conv(json!(49500500000i64), &Conv::Time(Unit::Micro)).unwrap(),
            r#""13:45:00.500000""#
        );
        assert_eq!(
            conv(json!(1710498030123456i64), &Conv::Timestamp(Unit::Micro)).unwrap(),
            r#""2024-03-15 10:20:30.123456""#
        );
        assert_eq!(
            conv(json!(93784000000i64), &Conv::Duration).unwrap(),
            r#""93784000000""#
        );
        let z = json!("2024-03-15T08:20:30.123456Z");
        assert_eq!(
            conv(z, &Conv::ZonedTimestamp).unwrap(),
            r#""2024-03-15T08:20:30.123456Z""#
        );
        assert!(conv(json!("2024-03-15"), &Conv::Date).is_err());
        assert!(
            conv(json!(i64::MAX), &Conv::Timestamp(Unit::Micro))
                .unwrap_err()
                .contains("outside")
        );
    }

    #[test]
    fn json_bytes_and_nesting() {
        let js = json!("{\"a\": 1, \"b\": [true, null, \"x\"]}");
        assert_eq!(
            conv(js, &Conv::Json).unwrap(),
            r#"{"a": 1, "b": [true, null, "x"]}"#
        );
        assert_eq!(conv(json!("  7 "), &Conv::Json).unwrap(), "7");
        let toast = json!("__debezium_unavailable_value");
        assert_eq!(
            conv(toast, &Conv::Json).unwrap(),
            r#""__debezium_unavailable_value""#
        );
        assert_eq!(
            conv(json!("3q2+7wD/"), &Conv::Bytes).unwrap(),
            r#""3q2+7wD/""#
        );
        assert!(conv(json!("***"), &Conv::Bytes).is_err());
        let s = Conv::Struct(vec![("d".into(), Conv::Date), ("n".into(), Conv::Integer)]);
        assert_eq!(
            conv(json!({"d": 0, "n": 5, "x": 2}), &s).unwrap(),
            r#"{"d":"1970-01-01","n":5,"x":2}"#
        );
        let m = Conv::Map(Box::new(Conv::Bytes));
        assert_eq!(conv(json!({"k": "AA=="}), &m).unwrap(), r#"{"k":"AA=="}"#);
        assert_eq!(conv(Value::Null, &Conv::Date).unwrap(), "null");
        assert_eq!(Conv::Infer.column_type(&Value::Null), None);
    }

    #[test]
    fn one_bad_value_is_an_error_of_its_row() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let write = |v: Value, conv: &Conv| {
            let mut out = Vec::new();
            write_value(&mut out, &v, conv, true).map(|()| String::from_utf8(out).unwrap())
        };
        let number = |precision, scale| Conv::Decimal {
            scale: i32::from(scale),
            ty: SfType::Number { precision, scale },
        };
        // 10^12 at scale 2 = 10000000000.00: 11 integer digits, NUMBER(12,2) holds 10.
        let ten_pow_12 = 1_000_000_000_000i64.to_be_bytes();
        let e = write(Value::String(b64(&ten_pow_12)), &number(12, 2)).unwrap_err();
        assert!(e.contains("NUMBER(12,2)") && e.contains("11 digits"), "{e}");
        assert_eq!(
            write(
                Value::String(b64(&999_999_999_999i64.to_be_bytes())),
                &number(12, 2)
            )
            .unwrap(),
            "\"9999999999.99\""
        );
        // A scale no numeric has: refused before any memory is spent on it.
        let huge = serde_json::json!({"scale": 2_000_000_000, "value": b64(&[1])});
        assert!(write(huge, &Conv::VariableScaleDecimal).is_err());
        let negative = serde_json::json!({"scale": -2_000_000_000, "value": b64(&[1])});
        assert!(write(negative, &Conv::VariableScaleDecimal).is_err());
        // PostgreSQL's infinity timestamps.
        for inf in ["infinity", "-infinity"] {
            let e = write(Value::String(inf.into()), &Conv::ZonedTimestamp).unwrap_err();
            assert!(e.contains("infinity"), "{e}");
        }
        // Special floats in Snowflake's spelling.
        assert_eq!(
            write(Value::String("Infinity".into()), &Conv::Float).unwrap(),
            "\"inf\""
        );
        assert_eq!(
            write(Value::String("-Infinity".into()), &Conv::Float).unwrap(),
            "\"-inf\""
        );
        assert_eq!(
            write(Value::String("NaN".into()), &Conv::Float).unwrap(),
            "\"NaN\""
        );
        // A json document that repeats a key.
        let e = write(Value::String(r#"{"a":1,"a":2}"#.into()), &Conv::Json).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert_eq!(
            write(Value::String(r#"{"a":1,"b":{"a":2}}"#.into()), &Conv::Json).unwrap(),
            r#"{"a":1,"b":{"a":2}}"#
        );
    }

    #[test]
    fn unify_types() {
        use SfType::*;
        assert_eq!(SfType::unify(SfType::INTEGER, Float), Float);
        assert_eq!(SfType::unify(Varchar, Varchar), Varchar);
        assert_eq!(SfType::unify(Varchar, Boolean), Variant);
        let n = |precision, scale| Number { precision, scale };
        assert_eq!(SfType::unify(n(10, 2), n(12, 2)), n(12, 2));
        assert_eq!(SfType::unify(n(10, 2), n(10, 3)), Varchar);
        assert_eq!(SfType::unify(n(10, 2), Float), Variant);
    }

    #[test]
    fn schema_conversions() {
        let raw = r#"{"type":"struct","fields":[
            {"type":"struct","field":"before","fields":[]},
            {"type":"struct","field":"after","fields":[
              {"type":"int32","optional":false,"field":"id"},
              {"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2","connect.decimal.precision":"12"},"field":"a"},
              {"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2","connect.decimal.precision":"50"},"field":"b"},
              {"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"40"},"field":"c"},
              {"type":"array","items":{"type":"int32","name":"io.debezium.time.Date"},"field":"dates"},
              {"type":"string","name":"io.debezium.data.Uuid","field":"u","default":{"x":1}},
              {"type":"double","field":"f"},
              {"type":"float","field":"g"}
            ]}]}"#;
        let env = envelope_schema(raw).unwrap();
        let after = env.after.unwrap();
        assert_eq!(env.before.unwrap().fields.len(), 0);
        let ty = |n: &str| {
            after
                .get(n)
                .unwrap()
                .column_type(&Value::Null)
                .unwrap()
                .to_string()
        };
        assert_eq!(ty("id"), "NUMBER(38,0)");
        assert_eq!(ty("a"), "NUMBER(12,2)");
        // numeric(50,2): no NUMBER holds 50 digits, so exact text.
        assert_eq!(ty("b"), "VARCHAR");
        assert_eq!(ty("c"), "VARCHAR");
        assert_eq!(ty("dates"), "ARRAY");
        assert_eq!(ty("u"), "VARCHAR");
        assert_eq!(ty("f"), "FLOAT");
        assert_eq!(ty("g"), "FLOAT");
        assert!(after.get("nope").is_none());
        let bad = r#"{"type":"struct","fields":[{"type":"struct","field":"after","fields":[
            {"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","field":"a"}]}]}"#;
        assert!(envelope_schema(bad).unwrap_err().contains("scale"));
        assert!(key_schema(r#"{"type":"int32"}"#).is_err());
    }
}
