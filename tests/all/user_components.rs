//! User components in the running pipeline:
//! - the example rules validator (built with floe-sdk) replaces the default validator in
//!   a live Kafka pipeline: the records it rejects land on the DLQ topic with its reason
//!   (category `validation`), the accepted ones load;
//! - the hostile validator loops, allocates 4 GiB, panics and breaks the contract in
//!   some batches: only those batches' records go to the DLQ (category `wasm-trap`, the
//!   component's error text), a huge reason is cut to a bounded size, and the run goes
//!   on and loads the other batches;
//! - a chain (built-in validator, then the rules validator) for one topic: it applies to
//!   that topic only, and the first rejection in chain order is the one reported;
//! - hot reload under load: the validator file is replaced mid-stream (the new rules
//!   apply from the next batch), then replaced by a broken file (refused, the running
//!   validator stays); nothing is lost;
//! - the C example validator (a second guest language) in the pipeline.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use floe::RunOptions;
use floe::config::{DlqKind, SourceKind};
use rdkafka::message::{Headers, Message as _};

use crate::broker::produce;
use crate::support::{
    env, producer, query, read_topic, replay_with, sink_config, snowflake, unique,
};

fn example(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/components/examples")
        .join(format!("{name}.wasm"));
    assert!(p.exists(), "{}: run `make components`", p.display());
    p
}

/// The dead letters of a file DLQ: (key id, category, component, reason) per line.
fn file_letters(path: &std::path::Path) -> Vec<(i64, String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let header = |name: &str| {
                v["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|h| h["key"] == name)
                    .and_then(|h| h["value"].as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let key: serde_json::Value =
                serde_json::from_str(v["raw_key"].as_str().unwrap()).unwrap();
            (
                key["id"].as_i64().unwrap(),
                header("floe.error.category"),
                header("floe.error.component"),
                header("floe.error.reason"),
            )
        })
        .collect()
}

/// A Debezium change of row `after` in `public.<table>` (envelope without schema).
fn change(table: &str, op: &str, after: serde_json::Value, lsn: i64) -> serde_json::Value {
    serde_json::json!({"op": op, "before": null, "after": after,
        "source": {"schema": "public", "table": table, "lsn": lsn}})
}

/// A Kafka record (key, value) of `change` keyed by `id`.
fn record(id: i64, change: &serde_json::Value) -> (String, String) {
    (
        serde_json::json!({ "id": id }).to_string(),
        change.to_string(),
    )
}

/// `change` of `public.<table>` keyed by `id`, as a line of the file source's format.
fn line(table: &str, id: i64, change: serde_json::Value) -> String {
    serde_json::json!({"topic": format!("dbz.public.{table}"), "key": {"id": id}, "value": change})
        .to_string()
}

/// A fresh directory for run `run` holding `lines` as `events.jsonl`: (dir, file).
fn events_file(run: &str, lines: &[String]) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(run);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    (dir, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn the_rules_validator_rejects_into_the_dlq_and_the_rest_loads() {
    let run = unique("rules");
    let table = format!("{run}_orders");
    let topic = format!("dbz.public.{table}");
    let database = run.to_uppercase();
    // 300 orders; by id % 10: 3 a negative amount, 5 an unknown currency, 7 a broken
    // email. Everything else is fine.
    let mut records = Vec::new();
    let mut accepted = BTreeSet::new();
    for id in 0..300i64 {
        let (amount, currency, email) = match id % 10 {
            3 => ("-1.50", "EUR", "a@b.io"),
            5 => ("1.50", "DOGE", "a@b.io"),
            7 => ("1.50", "EUR", "broken"),
            _ => {
                accepted.insert(id);
                ("1.50", "EUR", "a@b.io")
            }
        };
        let after =
            serde_json::json!({"id": id, "amount": amount, "currency": currency, "email": email});
        records.push(record(id, &change(&table, "c", after, 100 + id)));
    }
    let producer = producer();
    produce(&producer, &topic, &records).await;

    let mut config = sink_config(&database);
    config.source.kafka.brokers = env("FLOE_KAFKA_BROKERS");
    config.source.kafka.topics = vec![topic.clone()];
    config.source.kafka.group_id = run.clone();
    config.components.validator = example("example_rules_validator").display().to_string();
    let (_stop, stats, handle) = crate::support::spawn_run(
        config,
        RunOptions {
            exit_when_idle: Some(Duration::from_secs(8)),
            ..RunOptions::default()
        },
    );
    let snap = tokio::time::timeout(Duration::from_secs(180), handle)
        .await
        .unwrap_or_else(|_| panic!("run did not end: {:?}", stats.snapshot()))
        .unwrap()
        .unwrap();
    assert_eq!(
        (snap.events_rejected, snap.dead_letters),
        (90, 90),
        "{snap:?}"
    );

    let sf = snowflake().await;
    let loaded: BTreeSet<i64> = query(
        &sf,
        &format!(
            r#"SELECT "ID" FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
            table.to_uppercase()
        ),
    )
    .await
    .into_iter()
    .map(|r| r[0].parse().unwrap())
    .collect();
    assert_eq!(loaded, accepted, "exactly the accepted orders load");

    let letters = read_topic(&env("FLOE_KAFKA_BROKERS"), &format!("{topic}.dlq"));
    assert_eq!(letters.len(), 90);
    let mut reasons = [0; 3];
    for m in &letters {
        let header = |name: &str| {
            m.headers()
                .and_then(|hs| hs.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        assert_eq!(header("floe.error.category"), "validation");
        assert!(
            header("floe.error.component").ends_with("example_rules_validator.wasm"),
            "{}",
            header("floe.error.component")
        );
        let key: serde_json::Value = serde_json::from_slice(m.key().unwrap()).unwrap();
        let id = key["id"].as_i64().unwrap();
        let reason = header("floe.error.reason");
        let want = match id % 10 {
            3 => "amount must be non-negative, got -1.5",
            5 => "currency \"DOGE\" is not one of USD, EUR, GBP, CHF",
            7 => "malformed email \"broken\"",
            _ => panic!("id {id} should not be in the DLQ"),
        };
        assert!(reason.ends_with(want), "{id}: {reason}");
        reasons[[3, 5, 7].iter().position(|r| *r == id % 10).unwrap()] += 1;
    }
    assert_eq!(reasons, [30, 30, 30]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake emulator: make test"]
async fn a_hostile_validator_fails_only_its_batches() {
    let run = unique("hostile");
    let database = run.to_uppercase();
    // 7 batches of 5 records (batch.max_rows = 5); the first record of a batch may ask
    // the validator to misbehave.
    let modes = ["", "loop", "alloc", "panic", "count", "huge", ""];
    let mut lines = Vec::new();
    for (b, mode) in modes.iter().enumerate() {
        for i in 0..5 {
            let id = (b * 5 + i) as i64;
            let mut after = serde_json::json!({"id": id, "v": format!("v{id}")});
            if i == 0 && !mode.is_empty() {
                after["hostile"] = (*mode).into();
            }
            let c = change("hostile_items", "c", after, 10 + id);
            lines.push(line("hostile_items", id, c));
        }
    }
    let (dir, file) = events_file(&run, &lines);
    let dlq = dir.join("dlq.jsonl");

    let started = std::time::Instant::now();
    let snap = replay_with(std::slice::from_ref(&file), &database, |c| {
        c.source.kind = SourceKind::File;
        c.batch.max_rows = 5;
        c.components.validator = example("example_hostile_validator").display().to_string();
        c.components.deadline_ms = 500;
        c.components.max_memory_mib = 256;
        c.dlq.kind = DlqKind::File;
        c.dlq.path = dlq.clone();
    })
    .await;
    let took = started.elapsed();
    assert_eq!(snap.events_consumed, 35, "{snap:?}");
    assert_eq!(snap.dead_letters, 25, "{snap:?}");

    // Per batch: the category and reason of its dead letters.
    let mut seen: Vec<(i64, String, String)> = file_letters(&dlq)
        .into_iter()
        .map(|(id, category, _, reason)| (id, category, reason))
        .collect();
    seen.sort();
    assert_eq!(seen.len(), 25);
    for (id, category, reason) in &seen {
        let batch = modes[(*id / 5) as usize];
        let (want_category, want_in_reason) = match batch {
            "loop" => ("wasm-trap", "deadline"),
            "alloc" => ("wasm-trap", "memory"),
            "panic" => ("wasm-trap", "panic"),
            "count" => ("wasm-trap", "4 verdicts for 5 events"),
            "huge" => ("validation", "more bytes cut)"),
            other => panic!("id {id} of batch {other:?} should have loaded"),
        };
        assert_eq!(category, want_category, "{id}: {reason}");
        assert!(reason.contains(want_in_reason), "{id}: {reason}");
        assert!(
            reason.len() < 5000,
            "{id}: reason of {} bytes",
            reason.len()
        );
    }

    let sf = snowflake().await;
    let loaded: Vec<String> = query(
        &sf,
        &format!(r#"SELECT "ID" FROM "{database}"."CDC"."HOSTILE_ITEMS" ORDER BY "ID""#),
    )
    .await
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    let want: Vec<String> = (0..5).chain(30..35).map(|i: i64| i.to_string()).collect();
    assert_eq!(loaded, want, "the healthy batches loaded");
    eprintln!(
        "hostile: 7 batches (loop, 4 GiB allocation, panic, wrong verdict count, 16 MiB reasons, 2 healthy) in {took:?}; 25 dead letters, 10 rows loaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake emulator: make test"]
async fn a_chain_applies_to_its_topics_only_first_rejection_wins() {
    let run = unique("chain");
    let database = run.to_uppercase();
    let order = |table: &str, id: i64, op: &str, amount: &str| {
        let after = serde_json::json!({"id": id, "amount": amount});
        line(table, id, change(table, op, after, id))
    };
    let lines = [
        order("chain_orders", 1, "c", "5.00"),
        order("chain_orders", 2, "c", "-1.00"),
        order("chain_orders", 3, "x", "-1.00"),
        order("chain_customers", 4, "c", "-1.00"),
    ];
    let (dir, file) = events_file(&run, &lines);
    let dlq = dir.join("dlq.jsonl");
    let rules = example("example_rules_validator").display().to_string();
    let snap = replay_with(std::slice::from_ref(&file), &database, |c| {
        c.components.chains = vec![floe::config::ChainConfig {
            topics: r"^dbz\.public\.chain_orders$".into(),
            validators: Some(vec!["builtin".into(), rules.clone()]),
            ..Default::default()
        }];
        c.dlq.kind = DlqKind::File;
        c.dlq.path = dlq.clone();
    })
    .await;
    assert_eq!(
        (snap.events_rejected, snap.dead_letters),
        (2, 2),
        "{snap:?}"
    );
    let letters: Vec<(i64, String, String)> = file_letters(&dlq)
        .into_iter()
        .map(|(id, _, component, reason)| (id, component, reason))
        .collect();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let (id, component, reason) = &letters[0];
    assert_eq!(*id, 2);
    assert!(
        component.ends_with("example_rules_validator.wasm"),
        "{component}"
    );
    assert!(reason.contains("amount must be non-negative"), "{reason}");
    let (id, component, reason) = &letters[1];
    assert_eq!(*id, 3);
    assert_eq!(
        component, "builtin-validator",
        "the first rejection wins: {reason}"
    );

    let sf = snowflake().await;
    let orders = query(
        &sf,
        &format!(r#"SELECT "ID" FROM "{database}"."CDC"."CHAIN_ORDERS" ORDER BY "ID""#),
    )
    .await;
    assert_eq!(orders, vec![vec!["1".to_string()]]);
    let customers = query(
        &sf,
        &format!(r#"SELECT "ID" FROM "{database}"."CDC"."CHAIN_CUSTOMERS" ORDER BY "ID""#),
    )
    .await;
    assert_eq!(
        customers,
        vec![vec!["4".to_string()]],
        "no chain for customers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn hot_reload_swaps_the_validator_between_batches_and_refuses_a_broken_one() {
    let run = unique("reload");
    let table = format!("{run}_items");
    let topic = format!("dbz.public.{table}");
    let database = run.to_uppercase();
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).unwrap();
    // The validator floe is pointed at; replaced by rename, as a deployment would.
    let path = dir.join("validator.wasm");
    let replace = |bytes: &[u8]| {
        let tmp = dir.join("validator.wasm.new");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    replace(&std::fs::read(example("example_template_validator")).unwrap());

    // id % 4 == 1: an empty name (the template's rule); id % 4 == 2: a negative amount
    // (the rules example's).
    let order = |id: i64| {
        let name = if id % 4 == 1 { "" } else { "n" };
        let amount = if id % 4 == 2 { "-1.00" } else { "1.00" };
        let after = serde_json::json!({"id": id, "name": name, "amount": amount});
        record(id, &change(&table, "c", after, 10 + id))
    };
    let producer = producer();
    let mut config = sink_config(&database);
    config.source.kafka.brokers = env("FLOE_KAFKA_BROKERS");
    config.source.kafka.topics = vec![topic.clone()];
    config.source.kafka.group_id = run.clone();
    config.batch.max_wait_ms = 300;
    config.components.validator = path.display().to_string();
    let (stop, stats, handle) = crate::support::spawn_run(config, RunOptions::default());
    let wait = |what: &'static str, done: Box<dyn Fn(&floe::StatsSnapshot) -> bool>| {
        let stats = stats.clone();
        async move {
            let started = std::time::Instant::now();
            loop {
                let snap = stats.snapshot();
                if done(&snap) {
                    return;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "waiting for {what}: {snap:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let phase = |from: i64| (from..from + 100).map(order).collect::<Vec<_>>();

    produce(&producer, &topic, &phase(0)).await;
    wait(
        "phase 1",
        Box::new(|s| s.events_consumed >= 100 && s.commits > 0),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    replace(&std::fs::read(example("example_rules_validator")).unwrap());
    wait("the reload", Box::new(|s| s.components_reloaded == 1)).await;

    produce(&producer, &topic, &phase(100)).await;
    wait("phase 2", Box::new(|s| s.events_consumed >= 200)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    replace(b"not a component");
    wait(
        "the refused reload",
        Box::new(|s| s.component_reloads_failed == 1),
    )
    .await;

    produce(&producer, &topic, &phase(200)).await;
    wait("phase 3", Box::new(|s| s.events_consumed >= 300)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.send(true).unwrap();
    let snap = tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .expect("run did not stop")
        .unwrap()
        .unwrap();
    assert_eq!(
        (snap.components_reloaded, snap.component_reloads_failed),
        (1, 1),
        "{snap:?}"
    );

    // Phase 1 was judged by the template, phases 2 and 3 by the rules example (the
    // broken file was refused and the rules kept running).
    let rejected_by = |id: i64| match id {
        0..100 => (id % 4 == 1).then_some("name must not be empty"),
        _ => (id % 4 == 2).then_some("amount must be non-negative"),
    };
    let letters = read_topic(&env("FLOE_KAFKA_BROKERS"), &format!("{topic}.dlq"));
    let mut in_dlq = BTreeSet::new();
    for m in &letters {
        let key: serde_json::Value = serde_json::from_slice(m.key().unwrap()).unwrap();
        let id = key["id"].as_i64().unwrap();
        let reason = m
            .headers()
            .and_then(|hs| hs.iter().find(|h| h.key == "floe.error.reason"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let want = rejected_by(id).unwrap_or_else(|| panic!("{id} should have loaded: {reason}"));
        assert!(reason.contains(want), "{id}: {reason}");
        in_dlq.insert(id);
    }
    let want_dlq: BTreeSet<i64> = (0..300).filter(|&id| rejected_by(id).is_some()).collect();
    assert_eq!(in_dlq, want_dlq);
    let sf = snowflake().await;
    let loaded: BTreeSet<i64> = query(
        &sf,
        &format!(
            r#"SELECT "ID" FROM "{database}"."CDC"."{}""#,
            table.to_uppercase()
        ),
    )
    .await
    .into_iter()
    .map(|r| r[0].parse().unwrap())
    .collect();
    let want_loaded: BTreeSet<i64> = (0..300).filter(|&id| rejected_by(id).is_none()).collect();
    assert_eq!(loaded, want_loaded, "nothing lost: loaded + DLQ = all 300");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake emulator: make test"]
async fn the_c_validator_runs_in_the_pipeline() {
    let run = unique("cval");
    let database = run.to_uppercase();
    let lines: Vec<String> = (0..40i64)
        .map(|id| {
            let amount = if id % 5 == 0 { "-2.50" } else { "2.50" };
            let after = serde_json::json!({"id": id, "amount": amount});
            line("c_orders", id, change("c_orders", "c", after, 10 + id))
        })
        .collect();
    let (dir, file) = events_file(&run, &lines);
    let dlq = dir.join("dlq.jsonl");
    let snap = replay_with(std::slice::from_ref(&file), &database, |c| {
        c.components.validator = example("example_c_validator").display().to_string();
        c.batch.max_rows = 16;
        c.dlq.kind = DlqKind::File;
        c.dlq.path = dlq.clone();
    })
    .await;
    assert_eq!(
        (snap.events_rejected, snap.dead_letters),
        (8, 8),
        "{snap:?}"
    );
    let letters = std::fs::read_to_string(&dlq).unwrap();
    assert_eq!(
        letters
            .matches("c-rules: amount must be non-negative")
            .count(),
        8
    );
    let sf = snowflake().await;
    let loaded = query(
        &sf,
        &format!(r#"SELECT COUNT(*) FROM "{database}"."CDC"."C_ORDERS""#),
    )
    .await;
    assert_eq!(loaded, vec![vec!["32".to_string()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake emulator: make test"]
async fn a_row_transform_chain_masks_its_topics_rows_and_fails_the_unmaskable() {
    let run = unique("pii");
    let database = run.to_uppercase();
    let person = |table: &str, id: i64, op: &str, lsn: i64, email: serde_json::Value| {
        let after = serde_json::json!({"id": id, "email": email, "ssn": "123-45-6789", "name": format!("n{id}")});
        line(table, id, change(table, op, after, lsn))
    };
    let lines = [
        person("pii_customers", 1, "c", 1, "ann@example.com".into()),
        person("pii_customers", 2, "c", 2, serde_json::Value::Bool(true)),
        person("pii_customers", 3, "c", 3, serde_json::Value::Null),
        person("pii_customers", 1, "u", 4, "ann@new.org".into()),
        person("pii_orders", 10, "c", 5, "bob@example.com".into()),
    ];
    let (dir, file) = events_file(&run, &lines);
    let dlq = dir.join("dlq.jsonl");
    let pii = example("example_pii_transform").display().to_string();
    let snap = replay_with(std::slice::from_ref(&file), &database, |c| {
        c.components.chains = vec![floe::config::ChainConfig {
            topics: r"^dbz\.public\.pii_customers$".into(),
            transforms: Some(vec![pii.clone()]),
            ..Default::default()
        }];
        // One change per batch: a batch's column type is what its values make it (an
        // email column holding text and a boolean is VARIANT in that batch).
        c.batch.max_rows = 1;
        c.dlq.kind = DlqKind::File;
        c.dlq.path = dlq.clone();
    })
    .await;
    assert_eq!(snap.dead_letters, 1, "{snap:?}");
    let letters = file_letters(&dlq);
    let (id, category, component, reason) = &letters[0];
    assert_eq!((*id, category.as_str()), (2, "transform"));
    assert!(
        component.ends_with("example_pii_transform.wasm"),
        "{component}"
    );
    assert!(reason.contains("email is not text"), "{reason}");

    let sf = snowflake().await;
    let customers = query(
        &sf,
        &format!(
            r#"SELECT "ID", "EMAIL", "EMAIL_DOMAIN", "NAME" FROM "{database}"."CDC"."PII_CUSTOMERS" ORDER BY "ID""#
        ),
    )
    .await;
    let row = |v: [&str; 4]| v.map(str::to_string).to_vec();
    assert_eq!(
        customers,
        vec![
            row(["1", "a***@new.org", "new.org", "n1"]),
            row(["3", "<NULL>", "<NULL>", "n3"]),
        ]
    );
    let customer_columns: BTreeSet<String> = query(
        &sf,
        &format!(
            "SELECT COLUMN_NAME FROM \"{database}\".INFORMATION_SCHEMA.COLUMNS \
             WHERE TABLE_SCHEMA = 'CDC' AND TABLE_NAME = 'PII_CUSTOMERS'"
        ),
    )
    .await
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    assert!(
        !customer_columns.contains("SSN") && customer_columns.contains("EMAIL_DOMAIN"),
        "{customer_columns:?}"
    );
    // Topics outside the chain load untouched.
    let orders = query(
        &sf,
        &format!(r#"SELECT "EMAIL", "SSN" FROM "{database}"."CDC"."PII_ORDERS""#),
    )
    .await;
    assert_eq!(
        orders,
        vec![vec![
            "bob@example.com".to_string(),
            "123-45-6789".to_string()
        ]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake emulator: make test"]
async fn javascript_validators_run_in_the_pipeline_the_wasi_one_only_when_granted() {
    let run = unique("js");
    let database = run.to_uppercase();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = |table: &str, id: i64, after: serde_json::Value, ts_ms: i64| {
        let mut c = change(table, "c", after, id);
        c["source"]["ts_ms"] = ts_ms.into();
        line(table, id, c)
    };
    let order = |id: i64, amount: &str, currency: &str| {
        let after = serde_json::json!({"id": id, "amount": amount, "currency": currency});
        at("js_orders", id, after, now)
    };
    let lines = [
        order(1, "5.00", "USD"),
        order(2, "-1.00", "USD"),
        order(3, "7.00", "XXX"),
        at("js_events", 4, serde_json::json!({"id": 4}), now - 1_000),
        at(
            "js_events",
            5,
            serde_json::json!({"id": 5}),
            now + 3_600_000,
        ),
    ];
    let (dir, file) = events_file(&run, &lines);
    let dlq = dir.join("dlq.jsonl");
    let rules = example("example_js_validator").display().to_string();
    let fresh = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/components/examples/wasi/example_js_freshness_validator.wasm")
        .display()
        .to_string();
    let configure = |c: &mut floe::config::Config, grant: bool| {
        c.components.chains = vec![
            floe::config::ChainConfig {
                topics: r"^dbz\.public\.js_orders$".into(),
                validators: Some(vec![rules.clone()]),
                ..Default::default()
            },
            floe::config::ChainConfig {
                topics: r"^dbz\.public\.js_events$".into(),
                validators: Some(vec![fresh.clone()]),
                ..Default::default()
            },
        ];
        if grant {
            c.components.grants.insert(
                fresh.clone(),
                floe::config::GrantConfig {
                    wasi: ["clocks", "random", "stdio", "filesystem"]
                        .map(String::from)
                        .to_vec(),
                },
            );
        }
        c.dlq.kind = DlqKind::File;
        c.dlq.path = dlq.clone();
    };

    // Without the grant, the run does not start, and says what to grant.
    let mut c = sink_config(&database);
    configure(&mut c, false);
    c.source.kind = SourceKind::File;
    c.source.file.paths = vec![file.clone()];
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let refused = floe::run(&c, &RunOptions::default(), rx, floe::Stats::new())
        .await
        .expect_err("a WASI component without grants must not load");
    let refused = refused.to_string();
    assert!(
        refused.contains("capability clocks") && refused.contains("components.grants"),
        "{refused}"
    );

    let snap = replay_with(std::slice::from_ref(&file), &database, |c| {
        configure(c, true)
    })
    .await;
    assert_eq!(snap.dead_letters, 3, "{snap:?}");
    let letters: Vec<(i64, String)> = file_letters(&dlq)
        .into_iter()
        .map(|(id, _, _, reason)| (id, reason))
        .collect();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(letters[0].0 == 2 && letters[0].1.starts_with("js-rules: public.js_orders:"));
    assert!(
        letters[1].0 == 3 && letters[1].1.contains("XXX"),
        "{letters:?}"
    );
    assert!(
        letters[2].0 == 5 && letters[2].1.starts_with("js-freshness: public.js_events:"),
        "{letters:?}"
    );

    let sf = snowflake().await;
    for (table, want) in [("JS_ORDERS", "1"), ("JS_EVENTS", "4")] {
        let ids = query(
            &sf,
            &format!(r#"SELECT "ID" FROM "{database}"."CDC"."{table}" ORDER BY "ID""#),
        )
        .await;
        assert_eq!(ids, vec![vec![want.to_string()]], "{table}");
    }
}
