//! Template validator: rejects a row change whose `name` column is present but empty.
//! Replace the rule with yours; keep the `export_validator!` line.

use floe_sdk::{Change, Validator};

pub struct MyRules;

impl Validator for MyRules {
    fn validate(change: &Change<'_>) -> Result<(), String> {
        match change.str("name") {
            Some(name) if name.trim().is_empty() && !change.is_delete() => {
                Err(format!("{}: name must not be empty", change.table))
            }
            _ => Ok(()),
        }
    }
}

floe_sdk::export_validator!(MyRules);

#[cfg(test)]
mod tests {
    use super::*;
    use floe_cdc_core::{Event, Verdict};

    #[test]
    fn empty_names_are_rejected() {
        let value = |name: &str| {
            format!(
                r#"{{"op":"c","before":null,"after":{{"id":1,"name":"{name}"}},"source":{{"schema":"public","table":"customers","lsn":1}}}}"#
            )
        };
        let (good, bad) = (value("Ada"), value(" "));
        fn event(v: &str) -> Event<'_> {
            Event {
                topic: "dbz.public.customers",
                partition: 0,
                offset: 0,
                timestamp_ms: None,
                key: Some(br#"{"id":1}"#),
                value: Some(v.as_bytes()),
            }
        }
        let verdicts = floe_sdk::validate_events::<MyRules>(&[event(&good), event(&bad)]);
        assert_eq!(verdicts[0], Verdict::Ok);
        assert_eq!(
            verdicts[1],
            Verdict::Rejected("public.customers: name must not be empty".into())
        );
    }
}
