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
    read_component(p)
}

fn read_component(p: PathBuf) -> Vec<u8> {
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

/// A rejection's reason; `None` for ok.
fn reason(v: &Verdict) -> Option<&str> {
    match v {
        Verdict::Ok => None,
        Verdict::Rejected(r) => Some(r),
    }
}

fn example(name: &str) -> Vec<u8> {
    read_component(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/components/examples")
            .join(format!("{name}.wasm")),
    )
}

/// A batch of `n` records whose first asks the hostile validator for `mode`.
fn hostile_batch(mode: &str, n: usize) -> Batch {
    let lines = (0..n)
        .map(|i| {
            let value = if i == 0 {
                format!(r#"{{"op":"c","after":{{"id":{i},"hostile":"{mode}"}}}}"#)
            } else {
                format!(r#"{{"op":"c","after":{{"id":{i}}}}}"#)
            };
            (
                "dbz.public.h".to_string(),
                Some(format!(r#"{{"id":{i}}}"#).into_bytes()),
                Some(value.into_bytes()),
            )
        })
        .collect();
    batch_of(lines)
}

#[test]
fn hostile_components_fail_only_their_call() {
    let h = host();
    let limits = Limits {
        max_memory_bytes: 64 * 1024 * 1024,
        deadline: Duration::from_millis(300),
        fuel: None,
        ..Limits::default()
    };
    let v = Validator::new(&h, "hostile", &example("example_hostile_validator"), limits).unwrap();
    let started = std::time::Instant::now();
    match v.validate(&hostile_batch("loop", 3)) {
        Err(HostError::Trap {
            kind: TrapKind::Deadline,
            ..
        }) => {}
        other => panic!("loop: expected a deadline trap, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match v.validate(&hostile_batch("alloc", 3)) {
        Err(HostError::Trap {
            kind: TrapKind::Memory,
            ..
        }) => {}
        other => panic!("alloc 4 GiB: expected a memory trap, got {other:?}"),
    }
    match v.validate(&hostile_batch("panic", 3)) {
        Err(HostError::Trap {
            kind: TrapKind::Panic,
            ..
        }) => {}
        other => panic!("panic: expected a panic trap, got {other:?}"),
    }
    match v.validate(&hostile_batch("count", 3)) {
        Err(e @ HostError::Contract { .. }) => {
            assert!(e.to_string().contains("2 verdicts for 3 events"), "{e}")
        }
        other => panic!("count: expected a contract violation, got {other:?}"),
    }
    // 16 MiB per reason does not fit the 64 MiB cap three times over: the guest traps.
    // With room for it, the host cuts each reason to a bounded size.
    let roomy = Validator::new(
        &h,
        "hostile",
        &example("example_hostile_validator"),
        Limits {
            max_memory_bytes: 256 * 1024 * 1024,
            ..Limits::default()
        },
    )
    .unwrap();
    let verdicts = roomy.validate(&hostile_batch("huge", 3)).unwrap();
    assert_eq!(verdicts.len(), 3);
    for v in &verdicts {
        match v {
            Verdict::Rejected(r) => {
                assert!(r.len() < floe_host::MAX_REASON_BYTES + 64, "{}", r.len());
                assert!(r.ends_with("more bytes cut)"), "{}", &r[r.len() - 40..]);
            }
            Verdict::Ok => panic!("huge: expected rejections"),
        }
    }
    // After all that, the same component serves a normal batch.
    let fine = v.validate(&hostile_batch("reject", 2)).unwrap();
    let fine: Vec<Option<&str>> = fine.iter().map(reason).collect();
    assert_eq!(fine, vec![Some("hostile: rejected"), None]);
}

#[test]
fn the_example_rules_validator_rejects_with_its_reasons() {
    let h = host();
    let v = Validator::new(
        &h,
        "rules",
        &example("example_rules_validator"),
        Limits::default(),
    )
    .unwrap();
    let line = |id: i64, after: &str| {
        (
            "dbz.public.orders".to_string(),
            Some(format!(r#"{{"id":{id}}}"#).into_bytes()),
            Some(
                format!(
                    r#"{{"op":"c","before":null,"after":{after},"source":{{"schema":"public","table":"orders","lsn":{id}}}}}"#
                )
                .into_bytes(),
            ),
        )
    };
    let verdicts = v
        .validate(&batch_of(vec![
            line(
                1,
                r#"{"id":1,"amount":"5.00","currency":"USD","email":"a@b.io"}"#,
            ),
            line(2, r#"{"id":2,"amount":"-5.00","currency":"USD"}"#),
            line(3, r#"{"id":3,"amount":"5.00","currency":"DOGE"}"#),
            line(4, r#"{"id":4,"email":"not-an-email"}"#),
            (
                "dbz.public.orders".into(),
                Some(b"{\"id\":5}".to_vec()),
                None,
            ),
        ]))
        .unwrap();
    assert_eq!(reason(&verdicts[0]), None);
    assert_eq!(
        reason(&verdicts[1]),
        Some("rules: public.orders: amount must be non-negative, got -5")
    );
    assert!(matches!(&verdicts[2], Verdict::Rejected(r) if r.contains("\"DOGE\"")));
    assert!(matches!(&verdicts[3], Verdict::Rejected(r) if r.contains("malformed email")));
    assert_eq!(reason(&verdicts[4]), None, "a tombstone");
    // Debezium fixtures: every real record is accepted (their amounts and emails are fine).
    let real = fixture_lines("schemas_precise", "_all_in_order.jsonl");
    let n = real.len();
    let verdicts = v.validate(&batch_of(real)).unwrap();
    assert_eq!(verdicts.len(), n);
    let rejected: Vec<_> = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Rejected(_)))
        .collect();
    assert!(rejected.is_empty(), "{rejected:?}");
}

#[test]
fn compiled_components_are_cached_and_a_bad_cache_file_is_replaced() {
    let dir = std::env::temp_dir().join(format!("floe-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bytes = component("validator");
    let batch = || batch_of(fixture_lines("noschemas_precise", "snapshot_read.jsonl"));
    let first = Host::new(false).unwrap().with_cache(dir.clone());
    let v = Validator::new(&first, "validator", &bytes, Limits::default()).unwrap();
    assert!(!v.validate(&batch()).unwrap().is_empty());
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "cwasm");
    let modified = std::fs::metadata(&files[0]).unwrap().modified().unwrap();

    // A new engine (a restart) loads the cached file instead of compiling.
    let second = Host::new(false).unwrap().with_cache(dir.clone());
    let started = std::time::Instant::now();
    let v = Validator::new(&second, "validator", &bytes, Limits::default()).unwrap();
    let load = started.elapsed();
    assert!(!v.validate(&batch()).unwrap().is_empty());
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
        modified,
        "not rewritten"
    );
    eprintln!("cached validator loaded in {load:?}");

    // A fuel-metering engine is another engine: its own file.
    let fuel = Host::new(true).unwrap().with_cache(dir.clone());
    Validator::new(&fuel, "validator", &bytes, Limits::default()).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);

    // A damaged file is compiled again and replaced.
    std::fs::write(&files[0], b"not a compiled component").unwrap();
    let third = Host::new(false).unwrap().with_cache(dir.clone());
    let v = Validator::new(&third, "validator", &bytes, Limits::default()).unwrap();
    assert!(!v.validate(&batch()).unwrap().is_empty());
    assert!(std::fs::read(&files[0]).unwrap().len() > 1000, "replaced");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn portable_precompiled_components_load_without_compiling() {
    let root = std::env::temp_dir().join(format!("floe-precompiled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (shipped, cache) = (root.join("shipped"), root.join("cache"));
    std::fs::create_dir_all(&shipped).unwrap();
    let bytes = component("validator");
    let batch = || batch_of(fixture_lines("noschemas_precise", "snapshot_read.jsonl"));
    let compiled = floe_host::precompile_portable(false, &bytes).unwrap();
    let file = shipped.join(floe_host::precompiled_name(&bytes));
    std::fs::write(&file, &compiled).unwrap();
    // Loaded from the shipped file: nothing is compiled, so nothing reaches the cache.
    let host = Host::new(false)
        .unwrap()
        .with_cache(cache.clone())
        .with_precompiled(shipped.clone());
    let v = Validator::new(&host, "validator", &bytes, Limits::default()).unwrap();
    assert!(!v.validate(&batch()).unwrap().is_empty());
    assert!(
        !cache.exists(),
        "compiled although a precompiled file was there"
    );
    // A file this engine cannot use (here: damaged) is compiled instead.
    std::fs::write(&file, b"not a compiled component").unwrap();
    let v = Validator::new(&host, "validator", &bytes, Limits::default()).unwrap();
    assert!(!v.validate(&batch()).unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        1,
        "compiled and cached"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_c_example_validator_loads_and_runs() {
    let h = host();
    let bytes = example("example_c_validator");
    // Its bindings were generated from `floe:cdc@0.1.0` and are kept so: a component
    // built against 0.1.0 must load and run in a floe that speaks 0.2.0.
    let contract = |version: &str| {
        let name = format!("floe:cdc/types@{version}");
        bytes.windows(name.len()).any(|w| w == name.as_bytes())
    };
    assert!(
        contract("0.1.0") && !contract("0.2.0"),
        "the C example is a floe:cdc@0.1.0 component"
    );
    let v = Validator::new(&h, "c-rules", &bytes, Limits::default()).unwrap();
    let line = |id: i64, amount: &str| {
        (
            "dbz.public.orders".to_string(),
            Some(format!(r#"{{"id":{id}}}"#).into_bytes()),
            Some(
                format!(r#"{{"op":"c","before":null,"after":{{"id":{id},"amount":{amount}}}}}"#)
                    .into_bytes(),
            ),
        )
    };
    let verdicts = v
        .validate(&batch_of(vec![
            line(1, r#""5.00""#),
            line(2, r#""-5.00""#),
            line(3, "-7"),
            (
                "dbz.public.orders".into(),
                Some(b"{\"id\":4}".to_vec()),
                None,
            ),
        ]))
        .unwrap();
    let got: Vec<Option<&str>> = verdicts.iter().map(reason).collect();
    let neg = Some("c-rules: amount must be non-negative");
    assert_eq!(got, vec![None, neg, neg, None]);
    // Real Debezium records (their amounts are base64 decimals or positive): all pass.
    let real = fixture_lines("schemas_precise", "_all_in_order.jsonl");
    let n = real.len();
    let verdicts = v.validate(&batch_of(real)).unwrap();
    assert_eq!(verdicts.len(), n);
}

#[test]
fn the_js_example_validator_loads_and_runs() {
    let h = Host::new(false).unwrap();
    // A JavaScript engine of about 12 MB: compiled once, for every batch below.
    let started = std::time::Instant::now();
    let v = Validator::new(
        &h,
        "js-rules",
        &example("example_js_validator"),
        Limits::default(),
    )
    .unwrap();
    eprintln!("JS example validator compiled in {:?}", started.elapsed());
    let line = |id: i64, op: &str, row: &str| {
        let (before, after) = if op == "d" {
            (row, "null")
        } else {
            ("null", row)
        };
        (
            "dbz.public.orders".to_string(),
            Some(format!(r#"{{"id":{id}}}"#).into_bytes()),
            Some(
                format!(
                    r#"{{"op":"{op}","before":{before},"after":{after},"source":{{"schema":"public","table":"orders","lsn":{id}}}}}"#
                )
                .into_bytes(),
            ),
        )
    };
    let verdicts = v
        .validate(&batch_of(vec![
            line(1, "c", r#"{"id":1,"amount":"5.00","currency":"USD"}"#),
            line(2, "c", r#"{"id":2,"amount":"-1.00","currency":"USD"}"#),
            line(3, "u", r#"{"id":3,"amount":5,"currency":"DOGE"}"#),
            line(4, "c", r#"{"id":4,"email":"not an@email"}"#),
            line(5, "d", r#"{"id":5,"amount":"-9.99"}"#),
            (
                "dbz.public.orders".into(),
                Some(b"{\"id\":6}".to_vec()),
                None,
            ),
            (
                "dbz.public.orders".into(),
                Some(b"{\"id\":7}".to_vec()),
                Some(b"{\"op\":\"c\",".to_vec()),
            ),
        ]))
        .unwrap();
    let got: Vec<Option<&str>> = verdicts.iter().map(reason).collect();
    assert_eq!(got.len(), 7, "{got:?}");
    assert_eq!(got[0], None, "a good order");
    assert_eq!(
        got[1],
        Some("js-rules: public.orders: amount must be non-negative, got -1")
    );
    assert!(
        got[2].is_some_and(|r| r.starts_with("js-rules: public.orders: currency \"DOGE\"")),
        "{got:?}"
    );
    assert!(
        got[3].is_some_and(|r| r.starts_with("js-rules: public.orders: malformed email")),
        "{got:?}"
    );
    assert_eq!(got[4], None, "a delete, whatever its amount");
    assert_eq!(got[5], None, "a tombstone");
    assert!(got[6].is_some_and(|r| r.starts_with("parse:")), "{got:?}");
    // Real Debezium records (decimals as base64 or strings, good emails): all pass.
    let real = fixture_lines("schemas_precise", "_all_in_order.jsonl");
    let n = real.len();
    let verdicts = v.validate(&batch_of(real)).unwrap();
    let rejected: Vec<_> = verdicts.iter().filter_map(reason).collect();
    assert_eq!(verdicts.len(), n);
    assert!(rejected.is_empty(), "{rejected:?}");
}

#[test]
fn a_hostile_row_transform_fails_only_its_call() {
    let h = host();
    let limits = Limits {
        deadline: Duration::from_millis(300),
        ..Limits::default()
    };
    let t = floe_host::RowTransform::new(
        &h,
        "hostile-transform",
        &example("example_hostile_transform"),
        limits,
    )
    .unwrap();
    let transformer = Transformer::new(
        &h,
        "transformer",
        &component("transformer"),
        Limits::default(),
    )
    .unwrap();
    let rows = |mode: &str| {
        let value = format!(
            r#"{{"op":"c","after":{{"id":1,"hostile":"{mode}"}},"source":{{"schema":"public","table":"t","lsn":1}}}}"#
        );
        transformer
            .transform(&batch_of(vec![(
                "dbz.public.t".into(),
                Some(br#"{"id":1}"#.to_vec()),
                Some(value.into_bytes()),
            )]))
            .unwrap()
    };
    let started = std::time::Instant::now();
    match t.transform_rows(&rows("loop")) {
        Err(HostError::Trap {
            kind: TrapKind::Deadline,
            ..
        }) => {}
        other => panic!("expected a deadline trap, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    match t.transform_rows(&rows("panic")) {
        Err(HostError::Trap {
            kind: TrapKind::Panic,
            ..
        }) => {}
        other => panic!("expected a panic trap, got {other:?}"),
    }
    let fine = t.transform_rows(&rows("no")).unwrap();
    assert_eq!(fine.rows.len(), 1, "a fresh instance serves the next call");
}
