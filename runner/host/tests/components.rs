//! The host calling the real default components (built by `functions/build.sh` into
//! `target/components/`), including the sandbox limits.

use std::path::PathBuf;
use std::time::Duration;

use floe_host::types::{Batch, DeleteMode, Event, IdentifierCase, MergeInput, Op, Verdict};
use floe_host::{Host, HostError, Limits, MergeBuilder, Transformer, TrapKind, Validator};

fn component(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/components")
        .join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the components first: `make components`",
            p.display()
        )
    })
}

/// (topic, key, value) of one Kafka record.
type Line = (String, Option<Vec<u8>>, Option<Vec<u8>>);

fn fixture_lines(variant: &str, file: &str) -> Vec<Line> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/debezium-fixtures")
        .join(variant)
        .join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the Debezium fixtures live in ../shared)",
            p.display()
        )
    });
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let bytes =
                |x: &serde_json::Value| (!x.is_null()).then(|| serde_json::to_vec(x).unwrap());
            (
                v["topic"].as_str().unwrap().to_string(),
                bytes(&v["key"]),
                bytes(&v["value"]),
            )
        })
        .collect()
}

fn batch_of(lines: Vec<Line>) -> Batch {
    let mut topics: Vec<String> = Vec::new();
    let events = lines
        .into_iter()
        .enumerate()
        .map(|(i, (t, key, value))| {
            let idx = match topics.iter().position(|x| *x == t) {
                Some(i) => i,
                None => {
                    topics.push(t);
                    topics.len() - 1
                }
            };
            Event {
                topic: idx as u32,
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
                key,
                value,
            }
        })
        .collect();
    Batch { topics, events }
}

fn host() -> Host {
    Host::new(false).unwrap()
}

#[test]
fn validator_accepts_debezium_and_rejects_garbage() {
    let h = host();
    let v = Validator::new(&h, "validator", &component("validator"), Limits::default()).unwrap();
    let mut lines = fixture_lines("schemas_precise", "crud_replica_identity_default.jsonl");
    let good = lines.len();
    lines.push((
        "dbz.public.x".into(),
        Some(br#"{"id":1}"#.to_vec()),
        Some(b"not json".to_vec()),
    ));
    lines.push((
        "dbz.public.x".into(),
        Some(br#"{"id":1}"#.to_vec()),
        Some(br#"{"op":"q","after":{"id":1}}"#.to_vec()),
    ));
    let verdicts = v.validate(&batch_of(lines)).unwrap();
    assert_eq!(verdicts.len(), good + 2);
    assert!(
        verdicts[..good].iter().all(|x| matches!(x, Verdict::Ok)),
        "{verdicts:?}"
    );
    match &verdicts[good] {
        Verdict::Rejected(r) => assert!(r.starts_with("parse"), "{r}"),
        other => panic!("not JSON accepted: {other:?}"),
    }
    match &verdicts[good + 1] {
        Verdict::Rejected(r) => assert!(r.contains("op"), "{r}"),
        other => panic!("unknown op accepted: {other:?}"),
    }
}

#[test]
fn transformer_and_merge_builder_turn_fixtures_into_one_merge() {
    let h = host();
    let t = Transformer::new(
        &h,
        "transformer",
        &component("transformer"),
        Limits::default(),
    )
    .unwrap();
    let m = MergeBuilder::new(
        &h,
        "merge_builder",
        &component("merge_builder"),
        Limits::default(),
    )
    .unwrap();
    let batch = batch_of(fixture_lines(
        "schemas_precise",
        "crud_replica_identity_default.jsonl",
    ));
    let out = t.transform(&batch).unwrap();
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(out.tables.len(), 1);
    assert_eq!(out.tables[0].name, "public.customers");
    let ops: Vec<Op> = out.rows.iter().map(|r| r.op).collect();
    assert_eq!(
        ops,
        vec![Op::Insert, Op::Update, Op::Delete],
        "tombstone skipped"
    );
    let shape = out.tables[0].clone();
    assert!(shape.columns[0].is_key && shape.columns[0].name == "id");
    let plan = m
        .build(&MergeInput {
            target: vec!["DB".into(), "S".into(), "CUSTOMERS".into()],
            identifier_case: IdentifierCase::Upper,
            shape,
            rows: out.rows,
            deletes: DeleteMode::Hard,
        })
        .unwrap();
    assert_eq!(
        plan.rows_after_dedup, 1,
        "three changes of one key dedup to the last"
    );
    assert_eq!(plan.statements.len(), 1);
    let st = &plan.statements[0];
    assert!(
        st.sql.starts_with("MERGE INTO \"DB\".\"S\".\"CUSTOMERS\""),
        "{}",
        st.sql
    );
    assert_eq!(st.binds.len(), 1, "one JSON-array bind");
    let rows: serde_json::Value =
        serde_json::from_str(st.binds[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["__op"], "d");
}

#[test]
fn memory_cap_traps_the_batch_and_the_next_call_works() {
    let h = host();
    let limits = Limits {
        max_memory_bytes: 4 * 1024 * 1024,
        ..Limits::default()
    };
    let v = Validator::new(&h, "validator", &component("validator"), limits).unwrap();
    let big = vec![(
        "dbz.public.x".to_string(),
        Some(br#"{"id":1}"#.to_vec()),
        Some(vec![b' '; 16 * 1024 * 1024]),
    )];
    match v.validate(&batch_of(big)) {
        Err(HostError::Trap {
            kind: TrapKind::Memory,
            ..
        }) => {}
        other => panic!("expected a memory trap, got {other:?}"),
    }
    let ok = fixture_lines("noschemas_precise", "snapshot_read.jsonl");
    let n = ok.len();
    assert_eq!(
        v.validate(&batch_of(ok)).unwrap().len(),
        n,
        "a fresh instance serves the next batch"
    );
}

#[test]
fn deadline_traps_a_long_call() {
    let h = host();
    let limits = Limits {
        deadline: Duration::from_millis(1),
        ..Limits::default()
    };
    let t = Transformer::new(&h, "transformer", &component("transformer"), limits).unwrap();
    let one = fixture_lines("schemas_precise", "types_toast_replica_identity_full.jsonl");
    let many: Vec<_> = (0..200).flat_map(|_| one.clone()).collect();
    match t.transform(&batch_of(many)) {
        Err(
            e @ HostError::Trap {
                kind: TrapKind::Deadline,
                ..
            },
        ) => assert!(e.is_retryable()),
        other => panic!(
            "expected a deadline trap, got {:?}",
            other.map(|o| o.rows.len())
        ),
    }
}

#[test]
fn a_core_module_is_refused_with_a_clear_error() {
    let h = host();
    // A core wasm module (magic + version 1), not a component.
    let core = b"\0asm\x01\0\0\0";
    match Validator::new(&h, "bogus", core, Limits::default()) {
        Err(HostError::Load { component, .. }) => assert_eq!(component, "bogus"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a core module loaded as a component"),
    }
}
