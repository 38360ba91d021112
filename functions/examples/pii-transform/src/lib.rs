//! An example floe row transform, written against `floe-sdk` only. For every row of
//! every table it is configured for:
//! - `email` (where present and not NULL) is masked to its first character and domain,
//!   `ann@example.com` -> `a***@example.com`, and the domain is loaded into a new
//!   column `email_domain`;
//! - the columns in [`DROPPED`] are not loaded at all;
//! - a row whose `email` is not text is failed (dead-lettered) rather than loaded
//!   unmasked.
//!
//! Build it with `functions/build.sh` (it lands in `target/components/examples/`) and
//! chain it after the transformer:
//! `[components] transforms = ["target/components/examples/pii_transform.wasm"]`.

use floe_sdk::{Action, RowChange, Transform};
use serde_json::Value;

/// Columns never loaded.
pub const DROPPED: [&str; 2] = ["ssn", "password"];

pub struct Pii;

impl Transform for Pii {
    fn transform(change: &mut RowChange<'_>) -> Result<Action, String> {
        for column in DROPPED {
            change.remove(column);
        }
        match change.get("email") {
            None | Some(Value::Null) => {}
            Some(Value::String(email)) => {
                let (masked, domain) = mask(email);
                change.set("email", masked);
                change.set("email_domain", domain);
            }
            Some(other) => {
                return Err(format!(
                    "pii: {}: email is not text ({other}); not loading it unmasked",
                    change.table
                ));
            }
        }
        Ok(Action::Load)
    }
}

/// `ann@example.com` -> (`a***@example.com`, `example.com`); text without `@` is
/// masked whole.
pub fn mask(email: &str) -> (String, Option<String>) {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            (format!("{first}***@{domain}"), Some(domain.to_owned()))
        }
        None => ("***".to_owned(), None),
    }
}

floe_sdk::export_transform!(Pii);

#[cfg(test)]
mod tests {
    use super::*;
    use floe_cdc_core::{Event, transform_batch};
    use floe_sdk::transform_rows;

    #[test]
    fn emails_are_masked_secrets_dropped() {
        let value = r#"{"op":"c","before":null,"after":{"id":1,"email":"ann@example.com","ssn":"123-45-6789","name":"Ann"},"source":{"schema":"public","table":"customers","lsn":5}}"#;
        let odd = r#"{"op":"c","before":null,"after":{"id":2,"email":{"not":"text"}},"source":{"schema":"public","table":"customers","lsn":6}}"#;
        let events = [
            Event {
                topic: "dbz.public.customers",
                partition: 0,
                offset: 0,
                timestamp_ms: None,
                key: Some(br#"{"id":1}"#),
                value: Some(value.as_bytes()),
            },
            Event {
                topic: "dbz.public.customers",
                partition: 0,
                offset: 1,
                timestamp_ms: None,
                key: Some(br#"{"id":2}"#),
                value: Some(odd.as_bytes()),
            },
        ];
        let out = transform_rows::<Pii>(transform_batch(&events).unwrap());
        assert_eq!(out.rows.len(), 1);
        let row: Value = serde_json::from_str(&out.rows[0].data).unwrap();
        assert_eq!(row["email"], "a***@example.com");
        assert_eq!(row["email_domain"], "example.com");
        assert_eq!(row["name"], "Ann");
        assert!(row.get("ssn").is_none());
        let columns: Vec<&str> = out.tables[0]
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert!(columns.contains(&"email_domain") && !columns.contains(&"ssn"));
        assert_eq!(out.failures.len(), 1);
        assert_eq!(out.failures[0].event, 1);
        assert!(out.failures[0].reason.contains("not text"));
    }

    #[test]
    fn masking() {
        assert_eq!(
            mask("bob@corp.io"),
            ("b***@corp.io".into(), Some("corp.io".into()))
        );
        assert_eq!(mask("nobody"), ("***".into(), None));
    }
}
