//! Cost per record of each pipeline stage, WASM component vs the same logic called
//! natively (`make bench`, docs/benchmarks.md).
//!
//! For batches of 1,000 and 10,000 events built from real Debezium records
//! (`shared/debezium-fixtures/schemas_precise`, keys varied so every template row becomes
//! many distinct rows), each stage is timed twice:
//!
//! * `wasm`: through `floe-host` exactly as the runner calls it: a fresh `Store` and
//!   instance per call, the batch copied into the guest through the canonical ABI and the
//!   answer copied out;
//! * `native`: the `floe-cdc-core` function the component wraps, on borrowed bytes.
//!
//! Stages: `validate`, `transform` and the built-ins' fused `validate_and_transform`
//! over the whole batch (per record = per event),
//! `build_merge` once per table over that table's transformed rows, as the pipeline does
//! (per record = per row). Criterion's estimates land in
//! `target/criterion/<stage>/<impl>/<events>/new/estimates.json`; dev/bench.sh turns
//! them into ns/record.
//!
//! Components are read from `target/components/` (`functions/build.sh`), or from
//! `$FLOE_COMPONENTS_DIR`; fixtures from `../shared/debezium-fixtures`, or `$FLOE_FIXTURES`.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use floe_cdc_core as core;
use floe_host::{Host, Limits, MergeBuilder, RowTransform, Transformer, Validator, types as wit};
use serde_json::Value;

/// Batch sizes: a small batch and floe's default `batch.max_rows`.
const SIZES: [usize; 2] = [1_000, 10_000];

/// Fixture files the batches cycle through: small rows (REPLICA IDENTITY DEFAULT and
/// FULL, tombstones included) and a wide row of every PostgreSQL type with a TOASTed
/// 9.6 kB text.
const TEMPLATES: [&str; 3] = [
    "crud_replica_identity_default.jsonl",
    "crud_replica_identity_full.jsonl",
    "types_toast_replica_identity_default.jsonl",
];

/// Key values of round `r` are the template's plus `r * KEY_STRIDE`; LSNs move by
/// `r * LSN_STRIDE`, so rounds stay ordered as they would in a real stream.
const KEY_STRIDE: i64 = 1_000;
const LSN_STRIDE: i64 = 1_000_000_000;

/// One Kafka record of a template file.
struct Template {
    topic: String,
    key: Option<Value>,
    value: Option<Value>,
}

/// One Kafka record of a batch: topic index, key, value.
type Record = (usize, Option<Vec<u8>>, Option<Vec<u8>>);

/// An owned batch; both the WIT batch and the native events are views of it.
struct Owned {
    topics: Vec<String>,
    records: Vec<Record>,
}

impl Owned {
    fn wit(&self) -> wit::Batch {
        wit::Batch {
            topics: self.topics.clone(),
            events: self
                .records
                .iter()
                .enumerate()
                .map(|(i, (t, k, v))| wit::Event {
                    topic: *t as u32,
                    partition: 0,
                    offset: i as i64,
                    timestamp_ms: None,
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        }
    }

    fn native(&self) -> Vec<core::Event<'_>> {
        self.records
            .iter()
            .enumerate()
            .map(|(i, (t, k, v))| core::Event {
                topic: &self.topics[*t],
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
                key: k.as_deref(),
                value: v.as_deref(),
            })
            .collect()
    }

    fn bytes(&self) -> usize {
        self.records
            .iter()
            .map(|(_, k, v)| k.as_ref().map_or(0, Vec::len) + v.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

fn fixtures_dir() -> PathBuf {
    std::env::var_os("FLOE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/debezium-fixtures")
        })
}

/// An example user component (`functions/examples`, built into
/// `target/components/examples/`).
fn example(name: &str) -> Vec<u8> {
    component(&format!("examples/{name}"))
}

fn component(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("FLOE_COMPONENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/components")
        });
    let p = dir.join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the components first: `make components`",
            p.display()
        )
    })
}

fn templates() -> Vec<Template> {
    let dir = fixtures_dir().join("schemas_precise");
    let mut out = Vec::new();
    for file in TEMPLATES {
        let p = dir.join(file);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the Debezium fixtures live in ../shared)",
                p.display()
            )
        });
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut v: Value = serde_json::from_str(line).expect("fixture line is JSON");
            let take = |v: &mut Value, k: &str| Some(v[k].take()).filter(|x| !x.is_null());
            out.push(Template {
                topic: v["topic"].as_str().expect("topic").to_string(),
                key: take(&mut v, "key"),
                value: take(&mut v, "value"),
            });
        }
    }
    out
}

/// Adds `delta` to the integer at `v[field]`, if there is one.
fn shift(v: &mut Value, field: &str, delta: i64) {
    if let Some(n) = v.get(field).and_then(Value::as_i64) {
        v[field] = Value::from(n + delta);
    }
}

/// `n` events cycling through the templates; round `r` shifts every key column (in the
/// key and in `before`/`after`) by `r * KEY_STRIDE` and the LSN by `r * LSN_STRIDE`.
fn batch(templates: &[Template], n: usize) -> Owned {
    let mut topics: Vec<String> = Vec::new();
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        let t = &templates[i % templates.len()];
        let round = (i / templates.len()) as i64;
        let topic = match topics.iter().position(|x| *x == t.topic) {
            Some(p) => p,
            None => {
                topics.push(t.topic.clone());
                topics.len() - 1
            }
        };
        let mut key = t.key.clone();
        let key_fields: Vec<String> = key
            .as_ref()
            .and_then(|k| k["payload"].as_object())
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(k) = key.as_mut() {
            for f in &key_fields {
                shift(&mut k["payload"], f, round * KEY_STRIDE);
            }
        }
        let mut value = t.value.clone();
        if let Some(v) = value.as_mut() {
            let payload = &mut v["payload"];
            for image in ["before", "after"] {
                if payload.get(image).is_some_and(Value::is_object) {
                    for f in &key_fields {
                        shift(&mut payload[image], f, round * KEY_STRIDE);
                    }
                }
            }
            if payload.get("source").is_some_and(Value::is_object) {
                shift(&mut payload["source"], "lsn", round * LSN_STRIDE);
            }
        }
        let bytes = |x: Option<Value>| x.map(|x| serde_json::to_vec(&x).expect("JSON"));
        records.push((topic, bytes(key), bytes(value)));
    }
    Owned { topics, records }
}

fn wit_case(c: core::IdentifierCase) -> wit::IdentifierCase {
    match c {
        core::IdentifierCase::Upper => wit::IdentifierCase::Upper,
        core::IdentifierCase::Preserve => wit::IdentifierCase::Preserve,
    }
}

fn wit_op(op: core::Op) -> wit::Op {
    match op {
        core::Op::Insert => wit::Op::Insert,
        core::Op::Update => wit::Op::Update,
        core::Op::Delete => wit::Op::Delete,
        core::Op::Read => wit::Op::Read,
    }
}

fn wit_shape(s: &core::TableShape) -> wit::TableShape {
    wit::TableShape {
        name: s.name.clone(),
        columns: s
            .columns
            .iter()
            .map(|c| wit::Column {
                name: c.name.clone(),
                data_type: c.data_type.clone(),
                is_key: c.is_key,
            })
            .collect(),
    }
}

fn wit_row(r: &core::Row) -> wit::Row {
    wit::Row {
        event: r.event,
        table: r.table,
        op: wit_op(r.op),
        key: r.key.clone(),
        data: r.data.clone(),
        lsn: r.lsn,
    }
}

/// One table's MERGE input, as the pipeline builds it.
struct TableInput {
    target: Vec<String>,
    shape: core::TableShape,
    rows: Vec<core::Row>,
    wit: wit::MergeInput,
}

/// Splits a transformed batch per table, as the pipeline does before the MERGE builder.
fn merge_inputs(out: &core::Transformed) -> Vec<TableInput> {
    out.tables
        .iter()
        .enumerate()
        .filter_map(|(i, shape)| {
            let rows: Vec<core::Row> = out
                .rows
                .iter()
                .filter(|r| r.table as usize == i)
                .cloned()
                .collect();
            if rows.is_empty() {
                return None;
            }
            let table = shape.name.rsplit('.').next().unwrap_or(&shape.name);
            let target = vec!["FLOE".to_string(), "CDC".to_string(), table.to_uppercase()];
            let case = core::IdentifierCase::Upper;
            let wit = wit::MergeInput {
                target: target.clone(),
                identifier_case: wit_case(case),
                shape: wit_shape(shape),
                rows: rows.iter().map(wit_row).collect(),
                deletes: wit::DeleteMode::Hard,
            };
            Some(TableInput {
                target,
                shape: shape.clone(),
                rows,
                wit,
            })
        })
        .collect()
}

fn stages(c: &mut Criterion) {
    let host = Host::new(false).expect("wasmtime engine");
    let limits = Limits::default();
    let validator = Validator::new(&host, "validator", &component("validator"), limits.clone())
        .expect("validator");
    // A user validator written with floe-sdk: decodes every record (as the transformer
    // does) and applies three rules to each row.
    let user = Validator::new(
        &host,
        "rules",
        &example("example_rules_validator"),
        limits.clone(),
    )
    .expect("rules validator");
    // The C example: a byte search per record, no decoding.
    let user_c = Validator::new(
        &host,
        "c-rules",
        &example("example_c_validator"),
        limits.clone(),
    )
    .expect("C validator");
    // The JavaScript example: the same three rules, JSON.parse per record, in a JS engine.
    let user_js = Validator::new(
        &host,
        "js-rules",
        &example("example_js_validator"),
        limits.clone(),
    )
    .expect("JS validator");
    // A row transform written with floe-sdk: parses each row, masks, re-serialises.
    let pii = RowTransform::new(
        &host,
        "pii",
        &example("example_pii_transform"),
        limits.clone(),
    )
    .expect("pii transform");
    let transformer = Transformer::new(
        &host,
        "transformer",
        &component("transformer"),
        limits.clone(),
    )
    .expect("transformer");
    let fused = transformer
        .validating()
        .expect("the built-in transformer exports validate-and-transform");
    let merge_builder =
        MergeBuilder::new(&host, "merge_builder", &component("merge_builder"), limits)
            .expect("merge builder");
    let templates = templates();

    for n in SIZES {
        let owned = batch(&templates, n);
        let wit_batch = owned.wit();
        let events = owned.native();

        // The same answers both ways, or the comparison means nothing.
        let native_verdicts = core::validate_batch(&events);
        let wasm_verdicts = validator.validate(&wit_batch).expect("wasm validate");
        assert_eq!(native_verdicts.len(), wasm_verdicts.len());
        assert!(
            native_verdicts.iter().all(|v| *v == core::Verdict::Ok),
            "the bench batch must be valid"
        );
        assert!(wasm_verdicts.iter().all(|v| matches!(v, wit::Verdict::Ok)));
        let transformed = core::transform_batch(&events).expect("native transform");
        let wasm_transformed = transformer.transform(&wit_batch).expect("wasm transform");
        assert!(
            transformed.failures.is_empty(),
            "{:?}",
            transformed.failures.first()
        );
        assert_eq!(transformed.rows.len(), wasm_transformed.rows.len());
        let inputs = merge_inputs(&transformed);
        let merge_rows: usize = inputs.iter().map(|t| t.rows.len()).sum();
        for t in &inputs {
            let native = core::build_merge(&core::MergeInput {
                target: &t.target,
                identifier_case: core::IdentifierCase::Upper,
                shape: &t.shape,
                rows: &t.rows,
                deletes: core::DeleteMode::Hard,
            })
            .expect("native merge");
            let wasm = merge_builder.build(&t.wit).expect("wasm merge");
            assert_eq!(native.statements.len(), wasm.statements.len());
            assert_eq!(native.statements[0].sql, wasm.statements[0].sql);
            assert_eq!(native.rows_after_dedup, wasm.rows_after_dedup);
        }
        eprintln!(
            "stages: batch of {n} events, {} bytes ({} B/event), {} tables, {} rows",
            owned.bytes(),
            owned.bytes() / n,
            inputs.len(),
            merge_rows
        );

        let mut g = c.benchmark_group("validate");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("wasm", n), &wit_batch, |b, batch| {
            b.iter(|| validator.validate(batch).expect("validate"))
        });
        g.bench_with_input(BenchmarkId::new("native", n), &events, |b, events| {
            b.iter(|| core::validate_batch(events))
        });
        let user_verdicts = user.validate(&wit_batch).expect("user validate");
        assert_eq!(user_verdicts.len(), n);
        g.bench_with_input(BenchmarkId::new("user-sdk", n), &wit_batch, |b, batch| {
            b.iter(|| user.validate(batch).expect("user validate"))
        });
        g.bench_with_input(BenchmarkId::new("user-c", n), &wit_batch, |b, batch| {
            b.iter(|| user_c.validate(batch).expect("C validate"))
        });
        let js_verdicts = user_js.validate(&wit_batch).expect("JS validate");
        assert_eq!(js_verdicts.len(), n);
        g.bench_with_input(BenchmarkId::new("user-js", n), &wit_batch, |b, batch| {
            b.iter(|| user_js.validate(batch).expect("JS validate"))
        });
        g.finish();

        // Per row of the transformer's answer.
        let masked = pii.transform_rows(&wasm_transformed).expect("pii");
        assert_eq!(masked.rows.len(), wasm_transformed.rows.len());
        let mut g = c.benchmark_group("row_transform");
        g.throughput(Throughput::Elements(wasm_transformed.rows.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("user-sdk", n),
            &wasm_transformed,
            |b, rows| b.iter(|| pii.transform_rows(rows).expect("pii")),
        );
        g.finish();

        let mut g = c.benchmark_group("transform");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("wasm", n), &wit_batch, |b, batch| {
            b.iter(|| transformer.transform(batch).expect("transform"))
        });
        g.bench_with_input(BenchmarkId::new("native", n), &events, |b, events| {
            b.iter(|| core::transform_batch(events).expect("transform"))
        });
        g.finish();

        // The built-ins' fused call: validate and transform with one parse per event,
        // against validate then transform (the `validate` and `transform` groups).
        let (fused_verdicts, fused_transformed) = fused
            .validate_and_transform(&wit_batch)
            .expect("wasm validate-and-transform");
        assert!(fused_verdicts.iter().all(|v| matches!(v, wit::Verdict::Ok)));
        assert_eq!(fused_transformed.rows.len(), wasm_transformed.rows.len());
        let mut g = c.benchmark_group("validate_and_transform");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("wasm", n), &wit_batch, |b, batch| {
            b.iter(|| fused.validate_and_transform(batch).expect("fused"))
        });
        g.bench_with_input(BenchmarkId::new("native", n), &events, |b, events| {
            b.iter(|| core::validate_and_transform(events).expect("fused"))
        });
        g.finish();

        // Parameter is the batch's event count; throughput (and ns/record) is per row.
        let mut g = c.benchmark_group("build_merge");
        g.throughput(Throughput::Elements(merge_rows as u64));
        g.bench_with_input(BenchmarkId::new("wasm", n), &inputs, |b, inputs| {
            b.iter(|| {
                for t in inputs {
                    merge_builder.build(&t.wit).expect("merge");
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("native", n), &inputs, |b, inputs| {
            b.iter(|| {
                for t in inputs {
                    core::build_merge(&core::MergeInput {
                        target: &t.target,
                        identifier_case: core::IdentifierCase::Upper,
                        shape: &t.shape,
                        rows: &t.rows,
                        deletes: core::DeleteMode::Hard,
                    })
                    .expect("merge");
                }
            })
        });
        g.finish();
    }
}

fn config() -> Criterion {
    // A shared 2-core machine: few samples, short runs; criterion's own noise estimate
    // is reported with every figure.
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = stages
}
criterion_main!(benches);
