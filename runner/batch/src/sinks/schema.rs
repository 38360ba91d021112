//! Column type changes: whether the type a batch reports for a column fits the
//! existing target column, and the DDL that widens the column in place where
//! Snowflake allows it (`ALTER TABLE .. ALTER COLUMN .. SET DATA TYPE`: a larger
//! `NUMBER` precision at the same scale, a longer `VARCHAR`).
//!
//! A change that cannot be applied without losing values (a smaller scale, a float
//! or a timestamp into a `NUMBER`, a number into a `DATE`, ...) is refused: the
//! table's rows of that batch are not loaded and are reported with category
//! `schema` and the reason, the other tables load and the pipeline keeps going.
//! A `VARCHAR` batch column fits any target: without Connect schemas a column that
//! is null in every row of a batch is reported as `VARCHAR`, and text is what the
//! warehouse casts best.

/// A target column's type, as `INFORMATION_SCHEMA.COLUMNS` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetType {
    /// `DATA_TYPE`: `NUMBER`, `TEXT`, `FLOAT`, `TIMESTAMP_TZ`, ...
    pub data_type: String,
    /// `NUMERIC_PRECISION` / `NUMERIC_SCALE` of numbers.
    pub precision: Option<u32>,
    pub scale: Option<u32>,
    /// `CHARACTER_MAXIMUM_LENGTH` of text.
    pub length: Option<u64>,
}

/// How a batch column type meets the target column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// Values of the batch type are stored as they are (or cast without loss).
    Fits,
    /// The column must first be widened to this type.
    Widen(String),
    /// Values would be lost or cannot be stored; the reason says why.
    Incompatible(String),
}

/// Snowflake's longest `VARCHAR`.
const MAX_VARCHAR: u64 = 16_777_216;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Number { precision: u32, scale: u32 },
    Float,
    Text,
    Boolean,
    Date,
    Time,
    Timestamp,
    Binary,
    Semi,
    Other,
}

fn family_of(base: &str, precision: Option<u32>, scale: Option<u32>) -> Family {
    match base {
        "NUMBER" | "DECIMAL" | "NUMERIC" => Family::Number {
            precision: precision.unwrap_or(38),
            scale: scale.unwrap_or(0),
        },
        "INT" | "INTEGER" | "BIGINT" | "SMALLINT" | "TINYINT" | "BYTEINT" => Family::Number {
            precision: 38,
            scale: 0,
        },
        "FLOAT" | "FLOAT4" | "FLOAT8" | "DOUBLE" | "DOUBLE PRECISION" | "REAL" => Family::Float,
        "VARCHAR" | "TEXT" | "STRING" | "CHAR" | "CHARACTER" => Family::Text,
        "BOOLEAN" => Family::Boolean,
        "DATE" => Family::Date,
        "TIME" => Family::Time,
        "TIMESTAMP" | "TIMESTAMP_NTZ" | "TIMESTAMP_TZ" | "TIMESTAMP_LTZ" | "DATETIME" => {
            Family::Timestamp
        }
        "BINARY" | "VARBINARY" => Family::Binary,
        "VARIANT" | "OBJECT" | "ARRAY" => Family::Semi,
        _ => Family::Other,
    }
}

/// Splits `NUMBER(12,2)` into `("NUMBER", [12, 2])`.
fn parse(data_type: &str) -> (String, Vec<u64>) {
    let t = data_type.trim().to_ascii_uppercase();
    match t.find('(') {
        Some(open) => {
            let params = t[open + 1..]
                .trim_end_matches(')')
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect();
            (t[..open].trim().to_string(), params)
        }
        None => (t, Vec::new()),
    }
}

/// Whether values of batch type `source` (as the transformer reports it, e.g.
/// `NUMBER(14,2)`) can be written to a target column of type `target`.
pub fn fit(target: &TargetType, source: &str) -> Fit {
    let (base, params) = parse(source);
    let source_family = family_of(
        &base,
        params.first().map(|&p| p as u32),
        params.get(1).map(|&s| s as u32),
    );
    let target_family = family_of(&target.data_type, target.precision, target.scale);
    let refuse = || {
        Fit::Incompatible(format!(
            "column type changed from {} to {source}, which the target column cannot hold without loss",
            describe(target)
        ))
    };
    match (target_family, source_family) {
        (_, Family::Text) if target_family != Family::Text => Fit::Fits,
        (Family::Semi, _) => Fit::Fits,
        (Family::Text, Family::Semi | Family::Binary | Family::Other) => refuse(),
        (Family::Text, _) => match target.length {
            Some(n) if n < MAX_VARCHAR => Fit::Widen("VARCHAR".into()),
            _ => Fit::Fits,
        },
        (
            Family::Number {
                precision: tp,
                scale: ts,
            },
            Family::Number {
                precision: sp,
                scale: ss,
            },
        ) => {
            if ts >= ss && tp - ts >= sp.saturating_sub(ss) {
                Fit::Fits
            } else if ts == ss && sp > tp && sp <= 38 {
                Fit::Widen(format!("NUMBER({sp},{ts})"))
            } else {
                refuse()
            }
        }
        (Family::Float, Family::Number { .. } | Family::Float) => Fit::Fits,
        (t, s) if t == s && t != Family::Other => Fit::Fits,
        (Family::Other, _) | (_, Family::Other) if target.data_type == base => Fit::Fits,
        _ => refuse(),
    }
}

fn describe(t: &TargetType) -> String {
    match (t.precision, t.scale, t.length) {
        (Some(p), Some(s), _) if t.data_type == "NUMBER" => format!("NUMBER({p},{s})"),
        (_, _, Some(n)) if n < MAX_VARCHAR => format!("{}({n})", t.data_type),
        _ => t.data_type.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(p: u32, s: u32) -> TargetType {
        TargetType {
            data_type: "NUMBER".into(),
            precision: Some(p),
            scale: Some(s),
            length: None,
        }
    }

    fn plain(t: &str) -> TargetType {
        TargetType {
            data_type: t.into(),
            precision: None,
            scale: None,
            length: None,
        }
    }

    #[test]
    fn numbers_fit_widen_or_refuse() {
        assert_eq!(fit(&number(12, 2), "NUMBER(12,2)"), Fit::Fits);
        assert_eq!(fit(&number(38, 0), "NUMBER(38,0)"), Fit::Fits);
        assert_eq!(fit(&number(14, 4), "NUMBER(12,2)"), Fit::Fits);
        assert_eq!(
            fit(&number(12, 2), "NUMBER(16,2)"),
            Fit::Widen("NUMBER(16,2)".into())
        );
        let Fit::Incompatible(why) = fit(&number(12, 2), "NUMBER(12,4)") else {
            panic!("a smaller scale rounds")
        };
        assert_eq!(
            why,
            "column type changed from NUMBER(12,2) to NUMBER(12,4), which the target column cannot hold without loss"
        );
        assert!(matches!(fit(&number(38, 0), "FLOAT"), Fit::Incompatible(_)));
        assert!(matches!(
            fit(&number(38, 0), "TIMESTAMP_TZ(6)"),
            Fit::Incompatible(_)
        ));
        assert_eq!(fit(&plain("FLOAT"), "NUMBER(38,0)"), Fit::Fits);
    }

    #[test]
    fn text_takes_what_casts_and_grows() {
        let text = |n| TargetType {
            data_type: "TEXT".into(),
            precision: None,
            scale: None,
            length: Some(n),
        };
        assert_eq!(fit(&text(MAX_VARCHAR), "VARCHAR"), Fit::Fits);
        assert_eq!(fit(&text(MAX_VARCHAR), "NUMBER(38,0)"), Fit::Fits);
        assert_eq!(fit(&text(MAX_VARCHAR), "TIMESTAMP_TZ(6)"), Fit::Fits);
        assert_eq!(fit(&text(20), "VARCHAR"), Fit::Widen("VARCHAR".into()));
        assert!(matches!(
            fit(&text(MAX_VARCHAR), "VARIANT"),
            Fit::Incompatible(_)
        ));
        assert!(matches!(
            fit(&text(MAX_VARCHAR), "BINARY"),
            Fit::Incompatible(_)
        ));
    }

    #[test]
    fn varchar_batches_and_variant_targets_fit() {
        // A column null in every row of a schemaless batch is reported as VARCHAR.
        for t in [
            number(38, 0),
            plain("DATE"),
            plain("BOOLEAN"),
            plain("BINARY"),
        ] {
            assert_eq!(fit(&t, "VARCHAR"), Fit::Fits, "{t:?}");
        }
        for s in ["NUMBER(38,0)", "ARRAY", "VARCHAR", "BOOLEAN"] {
            assert_eq!(fit(&plain("VARIANT"), s), Fit::Fits);
        }
        assert_eq!(fit(&plain("TIMESTAMP_TZ"), "TIMESTAMP_TZ(6)"), Fit::Fits);
        assert_eq!(fit(&plain("TIME"), "TIME(6)"), Fit::Fits);
        assert!(matches!(
            fit(&plain("DATE"), "NUMBER(38,0)"),
            Fit::Incompatible(_)
        ));
        assert!(matches!(
            fit(&plain("BOOLEAN"), "NUMBER(38,0)"),
            Fit::Incompatible(_)
        ));
        assert!(matches!(fit(&plain("ARRAY"), "VARIANT"), Fit::Fits));
    }
}
