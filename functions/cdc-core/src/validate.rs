//! The default validation rules, one verdict per event:
//!
//! * value not JSON -> `parse: <error>`; JSON but not an event -> `validation: ...`;
//! * keyless tombstones (null value), heartbeat topics (`__debezium-heartbeat*`), transaction
//!   metadata (`*.transaction` records without `op`) and logical messages -> ok;
//! * an envelope's `op` must be one of `c`, `u`, `d`, `r`, `t`, `m`
//!   (`validation: unknown op 'x'`);
//! * any other value is a record flattened by ExtractNewRecordState (unwrap), whatever
//!   its columns are named (see [`crate::envelope`]): its `__deleted` must be
//!   true/false and its `__op` (when added) a known code;
//! * a tombstone with a key is a delete of that key: the key must be a JSON object;
//! * `c`/`u`/`d`/`r` need a key that is a non-empty JSON object (with schemas: its
//!   payload) -> else `validation: missing key`;
//! * `c`/`u`/`r` need a non-null `after` object; `d` needs `before` or a key;
//! * the table must be known (`source.schema`/`source.table` or the topic).
//!
//! The transformer applies the same rules (they share [`crate::envelope`]), so an
//! accepted event becomes a transformer failure only when a value cannot be converted
//! (e.g. a date beyond year 9999), its Connect schema is malformed, or a source column
//! is named like a metadata column.

use crate::envelope;
use crate::types::{Event, Verdict};

/// The verdict for one event.
pub fn validate_event(event: &Event<'_>) -> Verdict {
    verdict_in(&mut envelope::Frames::default(), event)
}

fn verdict_in<'a>(frames: &mut envelope::Frames<'a>, event: &Event<'a>) -> Verdict {
    match envelope::decode_in(frames, event) {
        Ok(_) => Verdict::Ok,
        Err(reason) => Verdict::Rejected(reason),
    }
}

/// One verdict per event, in order.
pub fn validate_batch(events: &[Event<'_>]) -> Vec<Verdict> {
    let mut frames = envelope::Frames::default();
    events.iter().map(|e| verdict_in(&mut frames, e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn verdict(topic: &str, key: Option<&str>, value: Option<&str>) -> Verdict {
        validate_event(&Event {
            topic,
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: key.map(str::as_bytes),
            value: value.map(str::as_bytes),
        })
    }

    fn rejected(topic: &str, key: Option<&str>, value: Option<&str>) -> String {
        match verdict(topic, key, value) {
            Verdict::Rejected(r) => r,
            Verdict::Ok => panic!("expected a rejection for {value:?}"),
        }
    }

    const K: Option<&str> = Some(r#"{"id":1}"#);
    const T: &str = "dbz.public.t";

    #[test]
    fn accepts() {
        assert_eq!(verdict(T, K, None), Verdict::Ok);
        assert_eq!(verdict(T, None, None), Verdict::Ok);
        // Flattened by ExtractNewRecordState, with and without added fields.
        assert_eq!(
            verdict(T, K, Some(r#"{"id":1,"name":"flat"}"#)),
            Verdict::Ok
        );
        assert_eq!(
            verdict(
                T,
                K,
                Some(r#"{"id":1,"__deleted":"true","__op":"d","__lsn":5}"#)
            ),
            Verdict::Ok
        );
        assert_eq!(
            verdict(T, K, Some(r#"{"op":"c","after":{"id":1}}"#)),
            Verdict::Ok
        );
        assert_eq!(
            verdict(T, K, Some(r#"{"op":"r","after":{"id":1}}"#)),
            Verdict::Ok
        );
        assert_eq!(
            verdict(T, K, Some(r#"{"op":"u","before":null,"after":{"id":1}}"#)),
            Verdict::Ok
        );
        assert_eq!(
            verdict(T, K, Some(r#"{"op":"d","before":null,"after":null}"#)),
            Verdict::Ok
        );
        assert_eq!(
            verdict(
                T,
                None,
                Some(r#"{"op":"t","source":{"schema":"s","table":"t"}}"#)
            ),
            Verdict::Ok
        );
        assert_eq!(
            verdict("dbz.message", None, Some(r#"{"op":"m","message":{}}"#)),
            Verdict::Ok
        );
        assert_eq!(
            verdict("__debezium-heartbeat.dbz", None, Some(r#"{"ts_ms":1}"#)),
            Verdict::Ok
        );
        assert_eq!(
            verdict(
                "dbz.transaction",
                None,
                Some(r#"{"status":"END","id":"1"}"#)
            ),
            Verdict::Ok
        );
        // With schemas: the key payload and the value payload are what count.
        let key = r#"{"schema":{"type":"struct","fields":[]},"payload":{"id":1}}"#;
        let value =
            r#"{"schema":{"type":"struct","fields":[]},"payload":{"op":"c","after":{"id":1}}}"#;
        assert_eq!(verdict(T, Some(key), Some(value)), Verdict::Ok);
    }

    #[test]
    fn rejects() {
        assert!(rejected(T, K, Some("{\"op\":")).starts_with("parse: EOF while parsing"));
        assert!(rejected(T, K, Some("\u{0}")).starts_with("parse: "));
        assert_eq!(
            rejected(T, K, Some("42")),
            "validation: value is not a JSON object"
        );
        assert_eq!(
            rejected(T, K, Some(r#"{"op":"x","after":{"id":1}}"#)),
            "validation: unknown op 'x'"
        );
        assert_eq!(
            rejected(T, K, Some(r#"{"op":"c\n","source":{}}"#)),
            "validation: unknown op 'c\\n'"
        );
        // Flattened (unwrap) records: the added fields must make sense.
        assert_eq!(
            rejected(T, K, Some(r#"{"id":1,"__deleted":"maybe"}"#)),
            "validation: flattened record: '__deleted' is \"maybe\", not true or false"
        );
        assert_eq!(
            rejected(T, K, Some(r#"{"id":1,"__op":"x"}"#)),
            "validation: flattened record: unknown '__op' 'x'"
        );
        assert_eq!(
            rejected(T, None, Some(r#"{"id":1}"#)),
            "validation: missing key"
        );
        assert!(
            rejected(T, K, Some(r#"{"id":1,"__lsn":"x"}"#))
                .starts_with("validation: flattened record: ")
        );
        // A keyed tombstone is a delete: its key must be one.
        assert_eq!(
            rejected(T, Some("[1]"), None),
            "validation: missing key (the key is not a JSON object) (tombstone)"
        );
        let c = Some(r#"{"op":"c","after":{"id":1}}"#);
        assert_eq!(rejected(T, None, c), "validation: missing key");
        assert_eq!(
            rejected(T, Some("null"), c),
            "validation: missing key (the key is not a JSON object)"
        );
        assert_eq!(
            rejected(T, Some("[1]"), c),
            "validation: missing key (the key is not a JSON object)"
        );
        assert_eq!(
            rejected(T, Some("{}"), c),
            "validation: missing key (the key has no fields)"
        );
        assert!(rejected(T, Some("{"), c).starts_with("parse: key: "));
        let framed_bad = r#"{"schema":{"type":"int32"},"payload":5}"#;
        assert!(rejected(T, Some(framed_bad), c).starts_with("validation: missing key"));
        assert_eq!(
            rejected(T, K, Some(r#"{"op":"c","after":null}"#)),
            "validation: op 'c' without 'after'"
        );
        assert_eq!(
            rejected(T, K, Some(r#"{"op":"u","source":{"lsn":1}}"#)),
            "validation: op 'u' without 'after'"
        );
        // A value with an `op` field and nothing else of the envelope is a flattened
        // record whose column is named `op`: accepted as a row.
        assert_eq!(verdict(T, K, Some(r#"{"op":"u"}"#)), Verdict::Ok);
        assert_eq!(
            rejected(T, K, Some(r#"{"op":"c","after":[1]}"#)),
            "validation: 'after' is not a JSON object"
        );
        assert_eq!(
            rejected(T, K, Some(r#"{"op":"d","before":"x"}"#)),
            "validation: 'before' is not a JSON object"
        );
        assert!(
            rejected("t", K, Some(r#"{"op":"c","after":{}}"#))
                .starts_with("validation: cannot tell the table")
        );
        assert!(
            rejected(T, K, Some(r#"{"op":"c","after":{},"source":{"lsn":"x"}}"#))
                .starts_with("validation: value: ")
        );
    }

    #[test]
    fn every_real_envelope_is_accepted() {
        for variant in fixtures::VARIANTS {
            let recs = fixtures::load(variant, "_all_in_order");
            let verdicts = validate_batch(&fixtures::events(&recs));
            assert_eq!(verdicts.len(), recs.len());
            for (i, v) in verdicts.iter().enumerate() {
                assert_eq!(*v, Verdict::Ok, "{variant} event {i}");
            }
        }
    }
}
