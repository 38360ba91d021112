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

/// The component batch (WIT `batch`) of `messages`: topics interned in order of first
/// appearance, payload bytes copied.
pub fn batch_of<'a>(messages: impl IntoIterator<Item = &'a Message>) -> floe_host::types::Batch {
    batch_with_values(messages.into_iter().map(|m| (m, None)))
}

/// [`batch_of`], with some values replaced (`Some`: the value the components get
/// instead of the message's own, see [`crate::format`]).
pub fn batch_with_values<'a>(
    messages: impl IntoIterator<Item = (&'a Message, Option<Vec<u8>>)>,
) -> floe_host::types::Batch {
    let mut index: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    let mut topics: Vec<String> = Vec::new();
    let events = messages
        .into_iter()
        .map(|(m, value)| {
            let topic = *index.entry(&m.topic).or_insert_with(|| {
                topics.push(m.topic.to_string());
                (topics.len() - 1) as u32
            });
            floe_host::types::Event {
                topic,
                partition: m.partition,
                offset: m.offset,
                timestamp_ms: m.timestamp_ms,
                key: m.key.clone(),
                value: value.or_else(|| m.value.clone()),
            }
        })
        .collect();
    floe_host::types::Batch { topics, events }
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
}
