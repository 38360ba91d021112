//! An example floe validator, written against `floe-sdk` only:
//! - `amount`, where a table has it, must be non-negative;
//! - `currency`, where present, must be one of [`CURRENCIES`];
//! - `email`, where present and not NULL, must look like `local@domain.tld`.
//!
//! Deletes are always accepted (the row is going away). Build it with
//! `functions/build.sh` (it lands in `target/components/examples/`) and point floe at it:
//! `[components] validator = "target/components/examples/rules_validator.wasm"`.

use floe_sdk::{Change, Validator};

/// Accepted currency codes.
pub const CURRENCIES: [&str; 4] = ["USD", "EUR", "GBP", "CHF"];

pub struct Rules;

impl Validator for Rules {
    fn validate(change: &Change<'_>) -> Result<(), String> {
        if change.is_delete() {
            return Ok(());
        }
        if let Some(amount) = change.number("amount")
            && amount < 0.0
        {
            return Err(format!(
                "rules: {}: amount must be non-negative, got {amount}",
                change.table
            ));
        }
        if let Some(currency) = change.str("currency")
            && !CURRENCIES.contains(&currency)
        {
            return Err(format!(
                "rules: {}: currency {currency:?} is not one of {}",
                change.table,
                CURRENCIES.join(", ")
            ));
        }
        if let Some(email) = change.str("email")
            && !well_formed_email(email)
        {
            return Err(format!(
                "rules: {}: malformed email {email:?}",
                change.table
            ));
        }
        Ok(())
    }
}

/// `local@domain.tld`: one `@`, a non-empty local part, a dot inside the domain, no
/// spaces.
pub fn well_formed_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && !s.chars().any(char::is_whitespace)
        && domain
            .split_once('.')
            .is_some_and(|(host, tld)| !host.is_empty() && !tld.is_empty() && !tld.ends_with('.'))
}

floe_sdk::export_validator!(Rules);

#[cfg(test)]
mod tests {
    use super::*;
    use floe_cdc_core::{Event, Verdict};

    fn verdict(after: &str) -> Verdict {
        let value = format!(
            r#"{{"op":"c","before":null,"after":{after},"source":{{"schema":"public","table":"orders","lsn":1}}}}"#
        );
        let events = [Event {
            topic: "dbz.public.orders",
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(br#"{"id":1}"#),
            value: Some(value.as_bytes()),
        }];
        floe_sdk::validate_events::<Rules>(&events).remove(0)
    }

    #[test]
    fn rules() {
        assert_eq!(
            verdict(r#"{"id":1,"amount":"12.50","currency":"EUR"}"#),
            Verdict::Ok
        );
        assert_eq!(
            verdict(r#"{"id":1,"amount":"-0.01","currency":"EUR"}"#),
            Verdict::Rejected(
                "rules: public.orders: amount must be non-negative, got -0.01".into()
            )
        );
        assert!(matches!(
            verdict(r#"{"id":1,"amount":3,"currency":"XXX"}"#),
            Verdict::Rejected(r) if r.contains("currency \"XXX\"")
        ));
        assert_eq!(verdict(r#"{"id":1,"email":"a@b.io"}"#), Verdict::Ok);
        assert_eq!(verdict(r#"{"id":1,"email":null}"#), Verdict::Ok);
        for bad in ["a.b.io", "@b.io", "a@b", "a b@c.io", "a@b.", "a@@b.io"] {
            assert!(!well_formed_email(bad), "{bad}");
        }
        assert!(matches!(
            verdict(r#"{"id":1,"email":"nope"}"#),
            Verdict::Rejected(r) if r.contains("malformed email")
        ));
    }
}
