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
            schema_registry: None,
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

/// A processor reading Avro with the fixtures' schemas (tests/fixtures/avro), with
/// `formats`.
fn avro_processor(formats: &[crate::config::FormatConfig]) -> BatchProcessor<NullSink> {
    let mut p = processor(true, 1);
    let registry = crate::avro::SchemaRegistry::new(&crate::avro::twins::schemas_file_config());
    p.preparer.settings.schema_registry = Some(Arc::new(registry.unwrap()));
    p.preparer.settings.formats = Arc::new(crate::format::Formats::new(formats).unwrap());
    p
}

/// [`outcome`] after the batch's schemas are resolved, with the topic prefix `prefix`
/// read as `PREFIX`.
fn avro_outcome(p: &mut BatchProcessor<NullSink>, batch: &mut [Message], prefix: &str) -> String {
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(
        rt.block_on(p.preparer.resolve_schemas(batch, stop))
            .unwrap()
    );
    outcome(p, batch)
        .replace(prefix, "PREFIX")
        .replace(&prefix.to_uppercase(), "PREFIX")
}

/// The records of one forwarder of the fixtures (`format`, `smt`) whose pairs are in
/// `pairs`, in capture order.
fn twins(format: &str, smt: Option<&str>, pairs: &[String]) -> Vec<Message> {
    let mut out: Vec<Message> = crate::avro::twins::records()
        .into_iter()
        .filter(|r| r.format == format && r.smt.as_deref() == smt && pairs.contains(&r.pair))
        .map(|r| r.message)
        .collect();
    for (offset, m) in out.iter_mut().enumerate() {
        m.offset = offset as i64;
    }
    out
}

#[test]
fn avro_twins_prepare_the_loads_their_json_twins_prepare() {
    // Row changes only: transaction metadata and heartbeats carry no rows, and a
    // snapshot read carries each forwarder's own LSN.
    let pairs: Vec<String> = crate::avro::twins::records()
        .into_iter()
        .filter(|r| r.format == "json" && r.pair.contains(':') && !r.pair.starts_with("tx:"))
        .filter(|r| !r.pair.contains(":r:"))
        .map(|r| r.pair)
        .collect();
    assert!(pairs.len() >= 25, "{pairs:?}");
    let mut json = twins("json", None, &pairs);
    let mut avro = twins("avro", None, &pairs);
    assert_eq!(json.len(), avro.len());
    let mut from_json = avro_processor(&[]);
    let mut from_avro = avro_processor(&[]);
    for (j, a) in json.chunks_mut(7).zip(avro.chunks_mut(7)) {
        let want = avro_outcome(&mut from_json, j, "fxjson");
        assert!(!want.contains("dead [\n"), "{want}");
        assert_eq!(avro_outcome(&mut from_avro, a, "fxavro"), want);
    }

    // Through the unwrap SMT: the same rows for each table (ExtractNewRecordState
    // drops tombstones and truncates, and a flattened record holds no `before`).
    let unwrap = [crate::config::FormatConfig {
        topics: "^fxunwrap\\.".into(),
        format: crate::config::TopicFormat::Unwrap,
        add_fields: vec!["op".into(), "lsn".into()],
        delete_handling: crate::config::DeleteHandling::Rewrite,
        ..Default::default()
    }];
    let rows_only = |pairs: &[String]| -> Vec<String> {
        pairs
            .iter()
            .filter(|p| p.starts_with("all_types:") && !p.ends_with(":tombstone"))
            .cloned()
            .collect()
    };
    let pairs = rows_only(&pairs);
    let mut json = twins("json", None, &pairs);
    let mut flat = twins("avro", Some("unwrap"), &pairs);
    assert_eq!(json.len(), flat.len());
    // The SMT above added no `source.ts_ms`: the rows' commit times are unknown.
    let no_ts = regex::Regex::new(r#"__source_ts_ms(\\*"):(\\*")?\d+(\\*")?"#).unwrap();
    let rows = |outcome: String| -> Vec<String> {
        // The MERGE plans' rows: what lands.
        outcome
            .lines()
            .filter(|l| l.contains("__op"))
            .map(|l| no_ts.replace_all(l, "__source_ts_ms$1:null").into_owned())
            .collect()
    };
    let want = rows(avro_outcome(&mut avro_processor(&[]), &mut json, "fxjson"));
    let got = rows(avro_outcome(
        &mut avro_processor(&unwrap),
        &mut flat,
        "fxunwrap",
    ));
    assert!(!want.is_empty());
    assert_eq!(got, want);
}

#[test]
fn unreadable_avro_is_dead_lettered_at_the_source_with_its_reason() {
    let m = |value: Vec<u8>| Message {
        topic: Arc::from("fxavro.public.all_types"),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: None,
        value: Some(value),
        headers: Vec::new(),
    };
    // An id no schema has, a record cut short (schema 1 is a record of a string
    // field: a length of 20 with no bytes behind it).
    let mut batch = vec![m(vec![0, 0, 0, 0, 99, 2]), m(vec![0, 0, 0, 0, 1, 40])];
    for (i, msg) in batch.iter_mut().enumerate() {
        msg.offset = i as i64;
    }
    let with = avro_outcome(&mut avro_processor(&[]), &mut batch, "fxavro");
    assert!(
        with.contains("0 parse source floe parse: schema id 99 is not in schemas_file"),
        "{with}"
    );
    assert!(
        with.contains("1 parse source floe parse: Avro record of schema id 1: "),
        "{with}"
    );
    // Without a registry, the reason says what to set.
    let without = outcome(&mut processor(true, 1), &mut batch);
    assert!(without.contains("set source.schema_registry"), "{without}");
}
