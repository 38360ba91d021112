//! The built-ins' fused call (`validate-and-transform`) against the built-in validator
//! and transformer called one after the other: the same batches give the same loads,
//! dead letters and counts.

use std::sync::Arc;

use crate::breaker::BreakerSettings;
use crate::components::Components;
use crate::config::{ComponentsConfig, SnowflakeConfig};
use crate::events::Stats;
use crate::message::Message;
use crate::sinks::null::NullSink;

use super::{BatchProcessor, ProcessorSettings};

fn processor(fused: bool, parallelism: usize) -> BatchProcessor<NullSink> {
    let cfg = ComponentsConfig {
        parallelism,
        cache: false,
        ..ComponentsConfig::default()
    };
    let mut components = Components::load(&cfg).unwrap();
    assert!(
        components.chains.iter().all(|c| c.fused.is_some()),
        "the built-in chain calls the fused component"
    );
    if !fused {
        components.chains.iter_mut().for_each(|c| c.fused = None);
    }
    BatchProcessor::new(
        NullSink::default(),
        Arc::new(components),
        ProcessorSettings {
            target: SnowflakeConfig::default(),
            load_attempts: 1,
            max_message_bytes: 1 << 20,
            breaker: BreakerSettings::default(),
            formats: Default::default(),
        },
        Stats::new(),
    )
}

/// Every variant's whole fixture stream with a bad message (not JSON, no key, an
/// unknown op, a tombstone whose key is not an object) after every third real one; and
/// how many bad ones there are.
fn messages(variant: &str) -> (Vec<Message>, usize) {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/debezium-fixtures")
        .join(variant)
        .join("_all_in_order.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let real = crate::fixture::parse_lines(&text).unwrap();
    // (key, value)
    type Bytes = Option<&'static [u8]>;
    let bad: [(Bytes, Bytes); 4] = [
        (Some(br#"{"id":1}"#), Some(b"{broken")),
        (None, Some(br#"{"op":"c","after":{"id":1}}"#)),
        (
            Some(br#"{"id":1}"#),
            Some(br#"{"op":"x","after":{"id":1}}"#),
        ),
        (Some(b"[1]"), None),
    ];
    let mut out = Vec::new();
    let mut bad_ones = 0;
    for (i, m) in real.into_iter().enumerate() {
        if i % 3 == 1 {
            let (key, value) = bad[(i / 3) % bad.len()];
            bad_ones += 1;
            out.push(Message {
                key: key.map(<[u8]>::to_vec),
                value: value.map(<[u8]>::to_vec),
                ..m.clone()
            });
        }
        out.push(m);
    }
    for (offset, m) in out.iter_mut().enumerate() {
        m.offset = offset as i64;
    }
    (out, bad_ones)
}

/// What a prepared batch amounts to, comparable: loads (plans, origins, truncates),
/// counts, and dead letters in message order. A truncate's warehouse request id is
/// random per batch, so only its position is compared.
fn outcome(p: &mut BatchProcessor<NullSink>, batch: &mut [Message]) -> String {
    let before = batch.to_vec();
    let prepared = p.preparer.prepare_batch(batch);
    assert_eq!(
        batch,
        &before[..],
        "the messages are given back as they were"
    );
    let loads: Vec<String> = (prepared.loads.iter())
        .map(|l| {
            let below = l.truncate.as_ref().map(|t| t.below_lsn);
            format!(
                "{:?} {:?} {below:?} {:?} {:?}",
                l.target, l.shape, l.plan, l.origins
            )
        })
        .collect();
    let mut dead: Vec<String> = (prepared.dead.iter())
        .map(|d| {
            format!(
                "{} {} {} {} {}",
                d.index, d.category, d.stage, d.component, d.reason
            )
        })
        .collect();
    dead.sort();
    let mut truncates = prepared.truncates.clone();
    truncates.sort_unstable();
    format!(
        "loads {loads:#?}\nrows {} skipped {}\ndead {dead:#?}\ntruncates {truncates:?}",
        prepared.rows, prepared.skipped
    )
}

#[test]
fn the_fused_call_prepares_what_validator_then_transformer_prepare() {
    for variant in [
        "schemas_precise",
        "noschemas_string",
        "unwrap_rewrite_noschemas",
    ] {
        let (mut all, bad_ones) = messages(variant);
        for parallelism in [1, 2] {
            let mut fused = processor(true, parallelism);
            let mut apart = processor(false, parallelism);
            let mut rejected = 0;
            for batch in all.chunks_mut(25) {
                let a = outcome(&mut fused, batch);
                let b = outcome(&mut apart, batch);
                assert_eq!(a, b, "{variant}, parallelism {parallelism}");
                rejected += a.matches(" validate builtin-validator ").count();
            }
            // Every bad message is refused at validation, none elsewhere.
            assert_eq!(rejected, bad_ones, "{variant}: rejections");
            assert!(
                bad_ones >= 8,
                "{variant}: {bad_ones} bad messages, each kind twice"
            );
        }
    }
}
