//! Snowflake SQL text: identifiers, literals, types, and the `CREATE TABLE` that
//! matches the MERGE of [`crate::merge`] (the runner's sink uses both, so DDL and DML
//! agree on every name).
//!
//! Nothing from the data is ever inlined into SQL except through these functions:
//! identifiers are always double-quoted ([`quote_ident`]), string literals escaped
//! ([`sql_string_literal`]), and types checked against a strict grammar
//! ([`validate_data_type`]) because transformers are user code.

use crate::types::{Error, IdentifierCase, TableShape};

/// Snowflake's longest identifier, in characters.
pub const MAX_IDENTIFIER_CHARS: usize = 255;

/// The identifier a source name becomes under `case`, before quoting.
pub fn identifier(name: &str, case: IdentifierCase) -> String {
    match case {
        IdentifierCase::Upper => name.to_uppercase(),
        IdentifierCase::Preserve => name.to_owned(),
    }
}

/// `name` as a double-quoted Snowflake identifier: `Upper` upper-cases it (Unicode
/// aware), `"` is doubled. `quote_ident("a\"b", Upper)` is `"A""B"`.
pub fn quote_ident(name: &str, case: IdentifierCase) -> String {
    quote(&identifier(name, case))
}

fn quote(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push('"');
    for ch in ident.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// A dotted name of quoted parts, each as given (no case change):
/// `["db", "PUBLIC", "t"]` -> `"db"."PUBLIC"."t"`.
pub fn qualified(parts: &[String]) -> String {
    parts.iter().map(|p| quote(p)).collect::<Vec<_>>().join(".")
}

/// `s` as a single-quoted Snowflake string literal. Snowflake processes backslash
/// escapes inside `'...'`, so `\` is doubled as well as `'`.
pub fn sql_string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for ch in s.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(ch),
        }
    }
    out.push('\'');
    out
}

/// Checks a column type against the grammar `WORD( WORD)*[(N[,N])]` (letters, digits,
/// `_`; e.g. `NUMBER(38,0)`, `TIMESTAMP_NTZ(6)`, `DOUBLE PRECISION`) and returns it
/// upper-cased and trimmed. Anything else is [`Error::InvalidInput`]: types are
/// inlined into DDL and casts, so they must not carry SQL.
pub fn validate_data_type(data_type: &str) -> Result<String, Error> {
    let invalid = || Error::InvalidInput(format!("invalid column type {data_type:?}"));
    let t = data_type.trim();
    let (base, params) = match t.find('(') {
        Some(open) => {
            let params = t[open + 1..].strip_suffix(')').ok_or_else(invalid)?;
            (t[..open].trim_end(), Some(params))
        }
        None => (t, None),
    };
    let word_ok = |w: &str| {
        w.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if base.is_empty() || !base.split(' ').all(word_ok) {
        return Err(invalid());
    }
    if let Some(params) = params {
        let mut n = 0;
        for p in params.split(',') {
            let p = p.trim();
            n += 1;
            if n > 2 || p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
        }
    }
    Ok(t.to_ascii_uppercase())
}

/// The base type name of a validated type: `NUMBER(38,0)` -> `NUMBER`.
fn base_type(validated: &str) -> &str {
    validated.split('(').next().unwrap_or(validated).trim_end()
}

/// The SQL expression reading field `field` of the JSON object `row` (an SQL
/// expression of type VARIANT, e.g. `f.value`) as a value of `data_type`:
///
/// * `VARIANT` -> `STRIP_NULL_VALUE(row['field'])` (a JSON null becomes SQL NULL);
/// * `ARRAY`, `OBJECT` -> the same, cast;
/// * `BINARY`, `VARBINARY` -> `TO_BINARY(row['field']::VARCHAR, 'BASE64')`;
/// * anything else -> `row['field']::<TYPE>`.
///
/// Bracket notation with a string literal is used because it is exact for any key
/// (quotes, dots, backslashes) and, unlike `GET(..)::VARCHAR`, casts strings without
/// their JSON quotes in both Snowflake and the fakesnow emulator.
pub fn json_field_expr(row: &str, field: &str, data_type: &str) -> Result<String, Error> {
    json_value_expr(&format!("{row}[{}]", sql_string_literal(field)), data_type)
}

/// [`json_field_expr`] for element `index` of the JSON array `array`.
pub fn json_element_expr(array: &str, index: usize, data_type: &str) -> Result<String, Error> {
    json_value_expr(&format!("{array}[{index}]"), data_type)
}

fn json_value_expr(get: &str, data_type: &str) -> Result<String, Error> {
    let ty = validate_data_type(data_type)?;
    Ok(match base_type(&ty) {
        "VARIANT" => format!("STRIP_NULL_VALUE({get})"),
        "ARRAY" | "OBJECT" => format!("STRIP_NULL_VALUE({get})::{ty}"),
        "BINARY" | "VARBINARY" => format!("TO_BINARY({get}::VARCHAR, 'BASE64')"),
        _ => format!("{get}::{ty}"),
    })
}

/// Checks target name parts: 1 to 3 parts (`[db, schema, table]`), none empty, no NUL,
/// none longer than [`MAX_IDENTIFIER_CHARS`].
pub fn validate_target(target: &[String]) -> Result<(), Error> {
    if target.is_empty() || target.len() > 3 {
        return Err(Error::InvalidInput(format!(
            "target must have 1 to 3 name parts (database, schema, table), got {}",
            target.len()
        )));
    }
    for part in target {
        check_identifier(part, "target name part")?;
    }
    Ok(())
}

fn check_identifier(ident: &str, what: &str) -> Result<(), Error> {
    if ident.is_empty() {
        return Err(Error::InvalidInput(format!("empty {what}")));
    }
    if ident.contains('\0') {
        return Err(Error::InvalidInput(format!(
            "{what} {ident:?} contains NUL"
        )));
    }
    if ident.chars().count() > MAX_IDENTIFIER_CHARS {
        return Err(Error::InvalidInput(format!(
            "{what} {ident:?} is longer than {MAX_IDENTIFIER_CHARS} characters"
        )));
    }
    Ok(())
}

/// Checks a shape for DDL and MERGE: at least one column and one key column, valid
/// names and types, and no two columns with the same identifier under `case` (`id`
/// and `ID` would collide once upper-cased).
pub fn validate_shape(shape: &TableShape, case: IdentifierCase) -> Result<(), Error> {
    if shape.columns.is_empty() {
        return Err(Error::InvalidInput(format!(
            "table shape '{}' has no columns",
            shape.name
        )));
    }
    if !shape.columns.iter().any(|c| c.is_key) {
        return Err(Error::InvalidInput(format!(
            "table shape '{}' has no key column",
            shape.name
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(shape.columns.len());
    for c in &shape.columns {
        check_identifier(&c.name, "column name")?;
        let ident = identifier(&c.name, case);
        check_identifier(&ident, "column identifier")?;
        validate_data_type(&c.data_type)?;
        if !seen.insert(ident) {
            return Err(Error::InvalidInput(format!(
                "table shape '{}': column {:?} collides with another column under {case:?} case",
                shape.name, c.name
            )));
        }
    }
    Ok(())
}

/// `CREATE TABLE IF NOT EXISTS <target> (<col> <type> [NOT NULL], ..., PRIMARY KEY (<keys>))`
/// with columns in shape order, key columns `NOT NULL`, names quoted as in the MERGE.
pub fn create_table_sql(
    target: &[String],
    shape: &TableShape,
    case: IdentifierCase,
) -> Result<String, Error> {
    validate_target(target)?;
    validate_shape(shape, case)?;
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {} (", qualified(target));
    for (i, c) in shape.columns.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&quote_ident(&c.name, case));
        sql.push(' ');
        sql.push_str(&validate_data_type(&c.data_type)?);
        if c.is_key {
            sql.push_str(" NOT NULL");
        }
    }
    let keys: Vec<String> = shape
        .columns
        .iter()
        .filter(|c| c.is_key)
        .map(|c| quote_ident(&c.name, case))
        .collect();
    sql.push_str(", PRIMARY KEY (");
    sql.push_str(&keys.join(", "));
    sql.push_str("))");
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Column;

    fn col(name: &str, ty: &str, key: bool) -> Column {
        Column {
            name: name.into(),
            data_type: ty.into(),
            is_key: key,
        }
    }

    #[test]
    fn identifiers() {
        assert_eq!(
            quote_ident("customer_id", IdentifierCase::Upper),
            "\"CUSTOMER_ID\""
        );
        assert_eq!(
            quote_ident("customer_id", IdentifierCase::Preserve),
            "\"customer_id\""
        );
        assert_eq!(quote_ident("a\"b", IdentifierCase::Upper), "\"A\"\"B\"");
        assert_eq!(quote_ident("straße", IdentifierCase::Upper), "\"STRASSE\"");
        assert_eq!(quote_ident("ünïcode", IdentifierCase::Upper), "\"ÜNÏCODE\"");
        assert_eq!(
            quote_ident("\"\"", IdentifierCase::Preserve),
            "\"\"\"\"\"\""
        );
        let t = vec!["db".to_owned(), "PUB\"LIC".to_owned(), "t".to_owned()];
        assert_eq!(qualified(&t), "\"db\".\"PUB\"\"LIC\".\"t\"");
    }

    #[test]
    fn literals() {
        assert_eq!(sql_string_literal("x"), "'x'");
        assert_eq!(
            sql_string_literal("x'; drop table y; --"),
            "'x''; drop table y; --'"
        );
        assert_eq!(sql_string_literal("a\\'b"), "'a\\\\''b'");
        assert_eq!(sql_string_literal(""), "''");
    }

    #[test]
    fn data_types() {
        for ok in [
            "NUMBER(38,0)",
            "number(12, 2)",
            "VARCHAR",
            "TIMESTAMP_NTZ(6)",
            "DOUBLE PRECISION",
            " variant ",
        ] {
            assert!(validate_data_type(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            validate_data_type("number(12, 2)").unwrap(),
            "NUMBER(12, 2)"
        );
        for bad in [
            "",
            "NUMBER(38,0); DROP TABLE x",
            "NUMBER(38,0,1)",
            "NUMBER()",
            "NUMBER(a)",
            "VARCHAR --",
            "1NUMBER",
            "NUMBER(38,0)) --",
            "VAR\"CHAR",
            "DOUBLE  PRECISION",
            "NUMBER(99999999999)",
        ] {
            assert!(validate_data_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_expressions() {
        let e = |f: &str, t: &str| json_field_expr("f.value", f, t).unwrap();
        assert_eq!(e("id", "NUMBER(38,0)"), "f.value['id']::NUMBER(38,0)");
        assert_eq!(e("js", "VARIANT"), "STRIP_NULL_VALUE(f.value['js'])");
        assert_eq!(
            e("tags", "ARRAY"),
            "STRIP_NULL_VALUE(f.value['tags'])::ARRAY"
        );
        assert_eq!(
            e("b", "BINARY"),
            "TO_BINARY(f.value['b']::VARCHAR, 'BASE64')"
        );
        assert_eq!(
            e("x'; drop table y; --", "VARCHAR"),
            "f.value['x''; drop table y; --']::VARCHAR"
        );
        assert_eq!(e("a\\b", "date"), "f.value['a\\\\b']::DATE");
        assert!(json_field_expr("f.value", "x", "VARCHAR); DROP TABLE t; --").is_err());
    }

    #[test]
    fn create_table() {
        let shape = TableShape {
            name: "public.t".into(),
            columns: vec![
                col("id", "NUMBER(38,0)", true),
                col("a\"b", "VARCHAR", false),
                col("__op", "VARCHAR", false),
            ],
        };
        let target = vec!["DB".to_owned(), "SCHEMA".to_owned(), "T".to_owned()];
        assert_eq!(
            create_table_sql(&target, &shape, IdentifierCase::Upper).unwrap(),
            "CREATE TABLE IF NOT EXISTS \"DB\".\"SCHEMA\".\"T\" (\"ID\" NUMBER(38,0) NOT NULL, \
             \"A\"\"B\" VARCHAR, \"__OP\" VARCHAR, PRIMARY KEY (\"ID\"))"
        );
        assert_eq!(
            create_table_sql(&target, &shape, IdentifierCase::Preserve).unwrap(),
            "CREATE TABLE IF NOT EXISTS \"DB\".\"SCHEMA\".\"T\" (\"id\" NUMBER(38,0) NOT NULL, \
             \"a\"\"b\" VARCHAR, \"__op\" VARCHAR, PRIMARY KEY (\"id\"))"
        );
        assert!(create_table_sql(&[], &shape, IdentifierCase::Upper).is_err());
        assert!(create_table_sql(&[String::new()], &shape, IdentifierCase::Upper).is_err());
        let four = vec!["a".to_owned(); 4];
        assert!(create_table_sql(&four, &shape, IdentifierCase::Upper).is_err());
    }

    #[test]
    fn shape_checks() {
        let shape = |cols: Vec<Column>| TableShape {
            name: "s.t".into(),
            columns: cols,
        };
        let up = IdentifierCase::Upper;
        assert!(validate_shape(&shape(vec![]), up).is_err());
        assert!(validate_shape(&shape(vec![col("a", "VARCHAR", false)]), up).is_err());
        let dup = shape(vec![
            col("id", "VARCHAR", true),
            col("ID", "VARCHAR", false),
        ]);
        assert!(validate_shape(&dup, up).is_err());
        assert!(validate_shape(&dup, IdentifierCase::Preserve).is_ok());
        assert!(validate_shape(&shape(vec![col("", "VARCHAR", true)]), up).is_err());
        assert!(validate_shape(&shape(vec![col("a\0", "VARCHAR", true)]), up).is_err());
        assert!(validate_shape(&shape(vec![col(&"x".repeat(256), "VARCHAR", true)]), up).is_err());
        assert!(validate_shape(&shape(vec![col("a", "INT; --", true)]), up).is_err());
    }
}
