//! A batch's messages as kept while the batch is delivered ([`Retained`]).
//!
//! Once a batch is prepared, its messages are read again only for the events that end
//! in the dead letter queue (rejected, failed, or in a table the warehouse refuses).
//! The runner keeps them while the batch loads and the next batch is consumed and
//! prepared, so two batches' messages are in memory at once. Kafka Connect's
//! `JsonConverter` with schemas (Debezium's most common setting) starts every value
//! with the same schema, about three quarters of its bytes, for every event of a table:
//! [`Retained::compact`] keeps each topic's common leading bytes once and only each
//! value's own rest, and gives back every message exactly as it came.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::dlq::DeadLetter;
use crate::message::Message;

/// Values share a prefix only when it is at least this long: shorter common starts
/// (`{"id":`, a Confluent wire header) save less than they cost.
const MIN_SHARED: usize = 256;

/// The messages of a batch being delivered: as they came ([`Retained::borrowed`]), or
/// with each topic's common value prefix kept once ([`Retained::compact`]).
pub struct Retained<'a> {
    messages: Cow<'a, [Message]>,
    /// Per message, the prefix its stored value continues (empty when not compacted).
    prefixes: Vec<Option<Arc<[u8]>>>,
}

impl<'a> Retained<'a> {
    /// `messages` as they are.
    pub fn borrowed(messages: &'a [Message]) -> Retained<'a> {
        Retained {
            messages: Cow::Borrowed(messages),
            prefixes: Vec::new(),
        }
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Message `i` exactly as it came (its value rebuilt when it was compacted).
    pub fn message(&self, i: usize) -> Cow<'_, Message> {
        let m = &self.messages[i];
        match self.prefixes.get(i).and_then(Option::as_ref) {
            None => Cow::Borrowed(m),
            Some(prefix) => {
                let rest = m.value.as_deref().unwrap_or_default();
                let mut value = Vec::with_capacity(prefix.len() + rest.len());
                value.extend_from_slice(prefix);
                value.extend_from_slice(rest);
                Cow::Owned(Message {
                    value: Some(value),
                    ..m.clone()
                })
            }
        }
    }

    /// The messages `letters` name, as they came, and the letters renumbered to index
    /// into them: what the dead letter queue writes.
    pub fn letters(&self, letters: &[DeadLetter]) -> (Vec<Message>, Vec<DeadLetter>) {
        let mut at: HashMap<usize, usize> = HashMap::new();
        let mut messages = Vec::new();
        let renumbered = letters
            .iter()
            .map(|l| {
                let index = *at.entry(l.index).or_insert_with(|| {
                    messages.push(self.message(l.index).into_owned());
                    messages.len() - 1
                });
                DeadLetter { index, ..l.clone() }
            })
            .collect();
        (messages, renumbered)
    }

    /// Bytes of message values held (shared prefixes counted once).
    #[cfg(test)]
    fn value_bytes(&self) -> usize {
        let own: usize = (self.messages.iter())
            .map(|m| m.value.as_ref().map_or(0, Vec::len))
            .sum();
        let mut seen: Vec<*const u8> = Vec::new();
        let mut shared = 0;
        for p in self.prefixes.iter().flatten() {
            if !seen.contains(&p.as_ptr()) {
                seen.push(p.as_ptr());
                shared += p.len();
            }
        }
        own + shared
    }
}

impl Retained<'static> {
    /// Keeps `messages` with each topic's common leading value bytes stored once. A
    /// value that starts with its topic's current prefix keeps only the rest; one that
    /// does not is compared with that prefix (or, before there is one, with the topic's
    /// last value) and, when they share at least [`MIN_SHARED`] bytes, the shared part
    /// becomes the topic's prefix. Prefixes only shorten for a topic whose values keep
    /// their start (payload bytes that happened to match drop out after a few events),
    /// so a batch holds a handful of them per topic.
    pub fn compact(mut messages: Vec<Message>) -> Retained<'static> {
        // Per topic: its current prefix, or the index of its last value.
        enum Seen {
            Prefix(Arc<[u8]>),
            Last(usize),
        }
        let mut seen: HashMap<Arc<str>, Seen> = HashMap::new();
        let mut prefixes: Vec<Option<Arc<[u8]>>> = Vec::with_capacity(messages.len());
        for i in 0..messages.len() {
            let Some(value) = messages[i].value.as_deref() else {
                prefixes.push(None);
                continue;
            };
            let shared = match seen.get(&messages[i].topic) {
                Some(Seen::Prefix(p)) if value.starts_with(p) => Some(p.clone()),
                Some(Seen::Prefix(p)) => common(p, value).map(|n| Arc::from(&p[..n])),
                Some(Seen::Last(j)) => {
                    let last = messages[*j].value.as_deref().unwrap_or_default();
                    common(last, value).map(|n| Arc::from(&last[..n]))
                }
                None => None,
            };
            let topic = messages[i].topic.clone();
            match shared {
                Some(prefix) => {
                    let rest = value[prefix.len()..].to_vec();
                    messages[i].value = Some(rest);
                    prefixes.push(Some(prefix.clone()));
                    seen.insert(topic, Seen::Prefix(prefix));
                }
                None => {
                    prefixes.push(None);
                    // A topic with a prefix keeps it: one odd value does not reset it.
                    if !matches!(seen.get(&topic), Some(Seen::Prefix(_))) {
                        seen.insert(topic, Seen::Last(i));
                    }
                }
            }
        }
        Retained {
            messages: Cow::Owned(messages),
            prefixes,
        }
    }
}

/// The length of the common start of `a` and `b`, when at least [`MIN_SHARED`].
fn common(a: &[u8], b: &[u8]) -> Option<usize> {
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (n >= MIN_SHARED).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, offset: i64, value: Option<&[u8]>) -> Message {
        Message {
            topic: Arc::from(topic),
            partition: 1,
            offset,
            timestamp_ms: Some(7),
            key: Some(format!("k{offset}").into_bytes()),
            value: value.map(<[u8]>::to_vec),
            headers: vec![("h".into(), Some(b"v".to_vec()))],
        }
    }

    /// A Connect-style value: the schema (`width` bytes of it), then a payload.
    fn connect(schema: &str, width: usize, payload: &str) -> Vec<u8> {
        format!(
            r#"{{"schema":{{"name":"{}"}},"payload":{payload}}}"#,
            schema.repeat(width / schema.len().max(1))
        )
        .into_bytes()
    }

    fn fixture_messages() -> Vec<Message> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/debezium-fixtures/schemas_precise");
        let mut out = Vec::new();
        for file in [
            "crud_replica_identity_default.jsonl",
            "crud_replica_identity_full.jsonl",
            "types_toast_replica_identity_full.jsonl",
            "_all_in_order.jsonl",
        ] {
            let text = std::fs::read_to_string(dir.join(file)).expect("fixture");
            // Values byte for byte as in the file: the schema first, as JsonConverter
            // writes it.
            out.extend(crate::fixture::parse_lines(&text).expect("fixture lines"));
        }
        out
    }

    #[test]
    fn every_message_comes_back_exactly_and_the_schemas_are_kept_once() {
        let messages = fixture_messages();
        let kept = Retained::compact(messages.clone());
        assert_eq!(kept.len(), messages.len());
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(kept.message(i).as_ref(), m, "message {i}");
        }
        // The small rows' values are 2.5-2.9 kB, of which the schema is 2.1-2.4 kB: after
        // its topic's first one, each keeps its payload only. (The wide rows' values
        // carry a 9.6 kB TOASTed text of their own.)
        for (i, m) in messages.iter().enumerate() {
            let (Some(value), Some(prefix)) = (&m.value, &kept.prefixes[i]) else {
                continue;
            };
            if value.len() < 3_000 {
                assert!(prefix.len() * 10 > value.len() * 7, "{i}: {}", prefix.len());
            }
        }
        let before: usize = (messages.iter())
            .map(|m| m.value.as_ref().map_or(0, Vec::len))
            .sum();
        assert!(
            kept.value_bytes() * 10 < before * 8,
            "{}",
            kept.value_bytes()
        );
    }

    #[test]
    fn values_of_other_topics_tombstones_and_short_starts_are_kept_whole() {
        let a = connect("a", 600, r#"{"id":1}"#);
        let b = connect("b", 600, r#"{"id":1}"#);
        let tiny = br#"{"schema":null,"payload":{"id":2}}"#;
        let messages = vec![
            message("t1", 0, Some(&a)),
            message("t2", 1, Some(&b)),
            message("t1", 2, None),
            message("t1", 3, Some(&connect("a", 600, r#"{"id":3}"#))),
            message("t2", 4, Some(&connect("b", 600, r#"{"id":4}"#))),
            message("t2", 5, Some(tiny)),
            message("t2", 6, Some(&connect("b", 600, r#"{"id":6}"#))),
        ];
        let kept = Retained::compact(messages.clone());
        let shared: Vec<bool> = kept.prefixes.iter().map(Option::is_some).collect();
        // An odd value (5) does not reset its topic's prefix.
        assert_eq!(shared, [false, false, false, true, true, false, true]);
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(kept.message(i).as_ref(), m);
        }
    }

    #[test]
    fn a_prefix_shortens_when_payload_bytes_matched_and_keeps_values_exact() {
        // The first two payloads agree beyond the schema (`{"id":1`), the third does not.
        let values: Vec<Vec<u8>> = [
            r#"{"id":10}"#,
            r#"{"id":11}"#,
            r#"{"id":20}"#,
            r#"{"id":21}"#,
        ]
        .iter()
        .map(|p| connect("s", 400, p))
        .collect();
        let messages: Vec<Message> = (values.iter().enumerate())
            .map(|(i, v)| message("t", i as i64, Some(v)))
            .collect();
        let kept = Retained::compact(messages.clone());
        let lens: Vec<usize> = kept
            .prefixes
            .iter()
            .map(|p| p.as_ref().map_or(0, |p| p.len()))
            .collect();
        assert_eq!(lens[0], 0);
        assert!(
            lens[1] > lens[2],
            "{lens:?}: shortened when `{{\"id\":2` came"
        );
        assert_eq!(lens[2], lens[3], "{lens:?}: stable after that");
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(kept.message(i).as_ref(), m);
        }
    }

    #[test]
    fn dead_letters_get_their_messages_whole_and_renumbered() {
        let messages: Vec<Message> = (0..5)
            .map(|i| {
                message(
                    "t",
                    i,
                    Some(&connect("s", 400, &format!(r#"{{"id":{i}}}"#))),
                )
            })
            .collect();
        let kept = Retained::compact(messages.clone());
        let letter = |index: usize| DeadLetter {
            index,
            category: "validation",
            stage: "validate",
            component: "v".into(),
            reason: format!("r{index}"),
        };
        let (got, letters) = kept.letters(&[letter(3), letter(1), letter(3)]);
        assert_eq!(got, vec![messages[3].clone(), messages[1].clone()]);
        let indexes: Vec<usize> = letters.iter().map(|l| l.index).collect();
        assert_eq!(indexes, [0, 1, 0]);
        assert_eq!(letters[1].reason, "r1");
        let borrowed = Retained::borrowed(&messages);
        assert!(matches!(borrowed.message(2), Cow::Borrowed(_)));
    }
}
