//! The MSK event: `records` grouped by `"<topic>-<partition>"`, base64 keys and values
//! (a missing value is a tombstone), header values as arrays of Java signed bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lambda_events::event::kafka::{KafkaEvent, KafkaRecord};
use base64::Engine as _;
use floe_batch::Message;

/// The event's records as messages, partition by partition (by the event's
/// `"<topic>-<partition>"` key, sorted) and by offset within each, with the key each
/// came under (for the partial batch response).
#[derive(Debug, Default)]
pub struct Records {
    pub messages: Vec<Message>,
    /// The event's partition key of each message (`"<topic>-<partition>"`).
    pub partition_keys: Vec<Arc<str>>,
}

/// Reads the records of `event`. A record whose key or value is not valid base64
/// (never seen from AWS) is passed on with the text as it came, so that it fails
/// validation and is dead-lettered with every byte kept, and logged.
pub fn records(event: &KafkaEvent) -> Records {
    let groups: BTreeMap<&String, &Vec<KafkaRecord>> = event.records.iter().collect();
    let mut out = Records::default();
    let mut topics: Vec<Arc<str>> = Vec::new();
    for (key, records) in groups {
        let partition_key: Arc<str> = Arc::from(key.as_str());
        let mut records: Vec<&KafkaRecord> = records.iter().collect();
        records.sort_by_key(|r| r.offset);
        for r in records {
            let topic_name = r
                .topic
                .clone()
                .unwrap_or_else(|| topic_of_key(key, r.partition).to_owned());
            let topic = match topics.iter().find(|t| ***t == *topic_name) {
                Some(t) => t.clone(),
                None => {
                    let t: Arc<str> = Arc::from(topic_name.as_str());
                    topics.push(t.clone());
                    t
                }
            };
            out.messages.push(Message {
                topic,
                partition: r.partition as i32,
                offset: r.offset,
                timestamp_ms: Some(r.timestamp.0.timestamp_millis()),
                key: r.key.as_deref().map(|k| decode(k, key, r.offset, "key")),
                value: r
                    .value
                    .as_deref()
                    .map(|v| decode(v, key, r.offset, "value")),
                headers: headers(&r.headers),
            });
            out.partition_keys.push(partition_key.clone());
        }
    }
    out
}

/// The topic of a `"<topic>-<partition>"` key.
fn topic_of_key(key: &str, partition: i64) -> &str {
    key.strip_suffix(&format!("-{partition}")).unwrap_or(key)
}

fn decode(text: &str, partition: &str, offset: i64, what: &str) -> Vec<u8> {
    match base64::engine::general_purpose::STANDARD.decode(text) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(partition, offset, what, error = %e, "record {what} is not base64: passed on as text");
            text.as_bytes().to_vec()
        }
    }
}

/// Header values arrive as arrays of Java bytes (-128..127): cast back to u8.
fn headers(
    headers: &[std::collections::HashMap<String, Vec<i8>>],
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for h in headers {
        let mut entries: Vec<_> = h.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in entries {
            out.push((k.clone(), Some(v.iter().map(|&b| b as u8).collect())));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> KafkaEvent {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/msk-fixtures/msk_event.json"
        );
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn the_msk_fixture_reads_as_messages_in_partition_and_offset_order() {
        let event = fixture();
        let r = records(&event);
        let total: usize = event.records.values().map(Vec::len).sum();
        assert_eq!(r.messages.len(), total);
        assert_eq!(r.partition_keys.len(), total);
        for (m, key) in r.messages.iter().zip(&r.partition_keys) {
            assert_eq!(**key, format!("{}-{}", m.topic, m.partition));
        }
        for pair in r.messages.windows(2) {
            if (pair[0].topic.clone(), pair[0].partition)
                == (pair[1].topic.clone(), pair[1].partition)
            {
                assert!(pair[0].offset < pair[1].offset, "offset order");
            }
        }
        // A tombstone (null value) stays a tombstone.
        let raw = serde_json::to_value(&event).unwrap();
        let tombstones = raw["records"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|v| v.as_array().unwrap())
            .filter(|r| r["value"].is_null())
            .count();
        assert!(tombstones >= 1, "the fixture holds a tombstone");
        assert_eq!(
            r.messages.iter().filter(|m| m.value.is_none()).count(),
            tombstones
        );
        // The traceparent header's Java bytes are the ASCII text.
        let tp = r
            .messages
            .iter()
            .flat_map(|m| &m.headers)
            .find(|(k, _)| k == "traceparent")
            .and_then(|(_, v)| v.clone())
            .unwrap();
        assert!(String::from_utf8(tp).unwrap().starts_with("00-"));
    }

    #[test]
    fn negative_java_bytes_become_their_unsigned_values() {
        let mut h = std::collections::HashMap::new();
        h.insert("bin".to_string(), vec![-1i8, 0, 127, -128]);
        assert_eq!(
            headers(&[h]),
            vec![("bin".to_string(), Some(vec![255u8, 0, 127, 128]))]
        );
    }

    #[test]
    fn a_value_that_is_not_base64_is_kept_as_text() {
        let event: KafkaEvent = serde_json::from_value(serde_json::json!({
            "eventSource": "aws:kafka",
            "records": {"t-0": [{"topic": "t", "partition": 0, "offset": 5, "timestamp": 1,
                "timestampType": "CREATE_TIME", "key": null, "value": "not base64!", "headers": []}]}
        }))
        .unwrap();
        let r = records(&event);
        assert_eq!(r.messages[0].value.as_deref(), Some(&b"not base64!"[..]));
        assert_eq!(r.messages[0].key, None);
    }
}
