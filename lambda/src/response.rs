//! The Kafka partial batch response (`function_response_types =
//! ["ReportBatchItemFailures"]`): for each partition to retry, its first record not
//! applied. The event source mapping then retries that record and everything after it
//! in the partition; an empty list acknowledges the whole batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::Records;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    pub batch_item_failures: Vec<ItemFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemFailure {
    pub item_identifier: ItemIdentifier,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemIdentifier {
    /// `"<topic>-<partition>"`, as the event keys it.
    pub partition: String,
    pub offset: i64,
}

impl BatchResponse {
    /// The response that retries, per partition, from the first of `pending` (indexes
    /// into `records.messages`): the lowest offset of a record whose outcome is not
    /// durable.
    pub fn retry_from(
        records: &Records,
        pending: impl IntoIterator<Item = usize>,
    ) -> BatchResponse {
        let mut first: BTreeMap<Arc<str>, i64> = BTreeMap::new();
        for i in pending {
            let key = records.partition_keys[i].clone();
            let offset = records.messages[i].offset;
            first
                .entry(key)
                .and_modify(|o| *o = (*o).min(offset))
                .or_insert(offset);
        }
        BatchResponse {
            batch_item_failures: first
                .into_iter()
                .map(|(partition, offset)| ItemFailure {
                    item_identifier: ItemIdentifier {
                        partition: partition.to_string(),
                        offset,
                    },
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_batch::Message;

    fn records(parts: &[(&str, i32, i64)]) -> Records {
        let mut r = Records::default();
        for &(topic, partition, offset) in parts {
            r.messages.push(Message {
                topic: Arc::from(topic),
                partition,
                offset,
                timestamp_ms: None,
                key: None,
                value: None,
                headers: Vec::new(),
            });
            r.partition_keys
                .push(Arc::from(format!("{topic}-{partition}")));
        }
        r
    }

    #[test]
    fn each_partition_retries_from_its_lowest_pending_offset() {
        let r = records(&[
            ("a", 0, 10),
            ("a", 0, 11),
            ("a", 0, 12),
            ("a", 1, 7),
            ("b", 0, 3),
        ]);
        let resp = BatchResponse::retry_from(&r, [2, 1, 3]);
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"batchItemFailures": [
                {"itemIdentifier": {"partition": "a-0", "offset": 11}},
                {"itemIdentifier": {"partition": "a-1", "offset": 7}}
            ]})
        );
        assert_eq!(
            serde_json::to_value(BatchResponse::retry_from(&r, [])).unwrap(),
            serde_json::json!({"batchItemFailures": []})
        );
    }
}
