//! One consumed record ([`Message`]) as both modes get it (from a Kafka consumer or an
//! MSK event), and the components' batch made of messages.

use std::sync::Arc;

/// One consumed record, owned. Payload bytes are exactly what the broker delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    /// None for a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Message {
    /// Bytes this message counts against `batch.max_bytes` and
    /// `source.max_message_bytes`: key, value and headers (names and values), so that
    /// a source cannot grow a batch past its bound through headers.
    /// The value of the first header named `key`, as text (lossy), when it has one.
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }
}

/// Topic names of a batch in order of first appearance, and each one's index.
#[derive(Default)]
struct Topics {
    index: std::collections::HashMap<Arc<str>, u32>,
    names: Vec<String>,
}

impl Topics {
    /// `m`'s event, with `key` and `value` as the components get them.
    fn event(
        &mut self,
        m: &Message,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) -> floe_host::types::Event {
        let names = &mut self.names;
        let topic = *self.index.entry(m.topic.clone()).or_insert_with(|| {
            names.push(m.topic.to_string());
            (names.len() - 1) as u32
        });
        floe_host::types::Event {
            topic,
            partition: m.partition,
            offset: m.offset,
            timestamp_ms: m.timestamp_ms,
            key,
            value,
        }
    }
}

/// The component batch (WIT `batch`) of `messages`: topics interned in order of first
/// appearance, payload bytes copied.
pub fn batch_of<'a>(messages: impl IntoIterator<Item = &'a Message>) -> floe_host::types::Batch {
    let mut topics = Topics::default();
    let events = messages
        .into_iter()
        .map(|m| topics.event(m, m.key.clone(), m.value.clone()))
        .collect();
    floe_host::types::Batch {
        topics: topics.names,
        events,
    }
}

/// One message picked into the components' batch, with the key and value the
/// components get instead of the message's own (`Some`: decoded from Avro, or
/// rewritten by a format, see [`crate::format`]).
#[derive(Debug, Default)]
pub struct Pick {
    pub index: usize,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Which of an event's key and value were moved from its message (not replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub key: bool,
    pub value: bool,
}

/// The batch the components get, made by moving each picked message's key and value
/// into it rather than copying them (a batch's bytes would otherwise be held twice
/// while the components run), unless the pick replaces them. What was moved comes
/// with each event; [`give_back`] returns the bytes to their message.
pub fn batch_taking(
    messages: &mut [Message],
    picks: Vec<Pick>,
) -> (floe_host::types::Batch, Vec<Moved>) {
    let mut topics = Topics::default();
    let mut moved = Vec::with_capacity(picks.len());
    let mut events = Vec::with_capacity(picks.len());
    for pick in picks {
        let m = &mut messages[pick.index];
        moved.push(Moved {
            key: pick.key.is_none(),
            value: pick.value.is_none(),
        });
        let key = pick.key.or_else(|| m.key.take());
        let value = pick.value.or_else(|| m.value.take());
        events.push(topics.event(m, key, value));
    }
    let batch = floe_host::types::Batch {
        topics: topics.names,
        events,
    };
    (batch, moved)
}

/// Returns an event's key and value (those that were moved) to the message
/// [`batch_taking`] took them from.
pub fn give_back(message: &mut Message, event: floe_host::types::Event, moved: Moved) {
    if moved.key {
        message.key = event.key;
    }
    if moved.value {
        message.value = event.value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_count_against_the_batch_bound() {
        let m = Message {
            topic: Arc::from("t"),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(vec![0; 10]),
            value: Some(vec![0; 100]),
            headers: vec![("h".into(), Some(vec![0; 1000])), ("n".into(), None)],
        };
        assert_eq!(m.size(), 10 + 100 + 1 + 1000 + 1);
    }

    #[test]
    fn a_taken_batch_gives_every_byte_back() {
        let m = |value: &str| Message {
            topic: std::sync::Arc::from("t"),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(b"k".to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: Vec::new(),
        };
        let mut messages = vec![m("a"), m("b"), m("c")];
        let picks = vec![
            Pick {
                index: 0,
                ..Pick::default()
            },
            Pick {
                index: 2,
                key: Some(b"K".to_vec()),
                value: Some(b"C".to_vec()),
            },
        ];
        let (batch, moved) = batch_taking(&mut messages, picks);
        let (both, neither) = (
            Moved {
                key: true,
                value: true,
            },
            Moved {
                key: false,
                value: false,
            },
        );
        assert_eq!(moved, vec![both, neither]);
        assert_eq!(batch.events[1].value.as_deref(), Some(&b"C"[..]));
        assert_eq!(batch.events[1].key.as_deref(), Some(&b"K"[..]));
        assert!(
            messages[0].key.is_none() && messages[0].value.is_none(),
            "moved, not copied"
        );
        assert_eq!(
            (messages[2].key.as_deref(), messages[2].value.as_deref()),
            (Some(&b"k"[..]), Some(&b"c"[..])),
            "a replaced key and value stay"
        );
        for ((i, e), moved) in [0, 2].into_iter().zip(batch.events).zip(moved) {
            give_back(&mut messages[i], e, moved);
        }
        assert_eq!(messages, vec![m("a"), m("b"), m("c")]);
    }
}
