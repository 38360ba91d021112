//! The breaker and the shutdown deadline, with an in-process sink that fails or
//! stalls on demand (the real warehouse's faults are in tests/all).

use super::*;
use crate::config::{ComponentsConfig, DeleteMode};
use crate::sinks::{LoadReport, TableLoad};
use crate::sources::Message;
use crate::sources::file::FileSource;

/// Fails with a transient error `failures` times, sleeps `stall` per load.
struct FlakySink {
    /// Source tables of every successful load.
    tables: Vec<String>,
    failures: usize,
    stall: Duration,
    loaded: usize,
    /// The warehouse request ids of every attempt.
    request_ids: Vec<Vec<String>>,
    /// Per successful load: each table's target, statements and origins.
    plans: Vec<String>,
}

impl Sink for FlakySink {
    async fn load(&mut self, loads: &[TableLoad]) -> Result<LoadReport, SinkError> {
        self.request_ids.push(
            loads
                .iter()
                .flat_map(|l| {
                    let truncate = l.truncate.as_ref().map(|t| &t.request);
                    truncate
                        .into_iter()
                        .chain(&l.requests)
                        .map(|r| r.id().to_string())
                })
                .collect(),
        );
        tokio::time::sleep(self.stall).await;
        if self.failures > 0 {
            self.failures -= 1;
            return Err(SinkError::Snowflake(floe_snowflake::Error::SessionExpired));
        }
        self.loaded += 1;
        self.tables
            .extend(loads.iter().map(|l| l.source_table.clone()));
        self.plans.extend(loads.iter().map(|l| {
            format!(
                "{:?} {:?} {:?} {:?}",
                l.target,
                l.plan.statements,
                l.origins,
                l.truncate.as_ref().map(|t| t.below_lsn)
            )
        }));
        Ok(LoadReport::default())
    }
}

/// A source whose broker fails: `consume_failures` transient errors before the first
/// batch, then `commit_failures` transient commit errors, then (if `refuse`) one
/// commit refused by the group.
struct FlakySource {
    inner: FileSource,
    consume_failures: usize,
    commit_failures: usize,
    refuse: bool,
    committed: usize,
}

fn transient() -> SourceError {
    SourceError::Kafka(rdkafka::error::KafkaError::MessageConsumption(
        rdkafka::types::RDKafkaErrorCode::AllBrokersDown,
    ))
}

impl Source for FlakySource {
    async fn next_batch(
        &mut self,
        limits: BatchLimits,
    ) -> Result<Option<SourceBatch>, SourceError> {
        if self.consume_failures > 0 {
            self.consume_failures -= 1;
            return Err(transient());
        }
        self.inner.next_batch(limits).await
    }

    async fn commit(&mut self, checkpoint: &crate::sources::Checkpoint) -> Result<(), SourceError> {
        if self.commit_failures > 0 {
            self.commit_failures -= 1;
            return Err(SourceError::Kafka(
                rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
                ),
            ));
        }
        if self.refuse {
            self.refuse = false;
            return Err(SourceError::Kafka(
                rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::IllegalGeneration,
                ),
            ));
        }
        self.committed += 1;
        self.inner.commit(checkpoint).await
    }
}

fn message() -> Message {
    Message {
        topic: Arc::from("dbz.public.t"),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: Some(br#"{"id":1}"#.to_vec()),
        value: Some(
            br#"{"op":"c","after":{"id":1},"source":{"schema":"public","table":"t","lsn":5}}"#
                .to_vec(),
        ),
        headers: Vec::new(),
    }
}

fn settings(breaker: BreakerSettings) -> PipelineSettings {
    PipelineSettings {
        limits: BatchLimits {
            max_rows: 10,
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(10),
            idle_poll: Duration::from_millis(10),
        },
        target: SnowflakeConfig::default(),
        exit_when_idle: None,
        load_attempts: 2,
        metrics_json: None,
        max_message_bytes: 1 << 20,
        breaker,
        reload: None,
        formats: Default::default(),
        schema_registry: None,
    }
}

/// A pipeline over `source` and `sink` with the built-in components.
fn built<S: Source, K: Sink + 'static>(
    source: S,
    sink: K,
    breaker: BreakerSettings,
) -> Pipeline<S, K> {
    let components = Arc::new(Components::load(&ComponentsConfig::default()).unwrap());
    Pipeline::new(source, sink, components, settings(breaker), Stats::new())
}

fn pipeline(sink: FlakySink, breaker: BreakerSettings) -> Pipeline<FileSource, FlakySink> {
    built(FileSource::from_messages(vec![message()]), sink, breaker)
}

fn healthy() -> FlakySink {
    FlakySink {
        tables: Vec::new(),
        failures: 0,
        stall: Duration::ZERO,
        loaded: 0,
        request_ids: Vec::new(),
        plans: Vec::new(),
    }
}

/// A pipeline over one message that makes the hostile example validator panic.
fn hostile(on_failure: crate::config::OnFailure) -> Pipeline<FileSource, FlakySink> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/components/examples/example_hostile_validator.wasm");
    let cfg = ComponentsConfig {
        validator: path.display().to_string(),
        on_failure,
        ..ComponentsConfig::default()
    };
    let mut m = message();
    m.value = Some(
        br#"{"op":"c","after":{"id":1,"hostile":"panic"},"source":{"schema":"public","table":"t","lsn":5}}"#
            .to_vec(),
    );
    Pipeline::new(
        FileSource::from_messages(vec![m]),
        healthy(),
        Arc::new(Components::load(&cfg).unwrap()),
        settings(breaker(20, 1000)),
        Stats::new(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_component_dead_letters_its_batch_or_stops_the_run() {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = hostile(crate::config::OnFailure::Dlq)
        .run(rx)
        .await
        .unwrap();
    assert_eq!((snap.dead_letters, snap.commits), (1, 1), "{snap:?}");

    let (_tx, rx) = tokio::sync::watch::channel(false);
    let mut p = hostile(crate::config::OnFailure::Stop);
    match p.run(rx).await {
        Err(e @ PipelineError::ComponentFailed(_)) => {
            assert!(e.to_string().contains("panic"), "{e}");
            assert!(!e.is_retryable());
        }
        other => panic!("expected the run to stop, got {other:?}"),
    }
    assert_eq!(p.stats().snapshot().commits, 0, "nothing committed");
    assert_eq!(p.sink().loaded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_row_transform_dead_letters_only_its_chains_events() {
    let hostile = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/components/examples/example_hostile_transform.wasm");
    let cfg = ComponentsConfig {
        chains: vec![crate::config::ChainConfig {
            topics: r"^dbz\.public\.t$".into(),
            transforms: Some(vec![hostile.display().to_string()]),
            ..Default::default()
        }],
        ..ComponentsConfig::default()
    };
    let change = |table: &str, id: i64, hostile: &str, offset: i64| {
        let mut m = message();
        m.topic = Arc::from(format!("dbz.public.{table}"));
        m.offset = offset;
        m.key = Some(format!(r#"{{"id":{id}}}"#).into_bytes());
        m.value = Some(
            format!(
                r#"{{"op":"c","after":{{"id":{id},"hostile":"{hostile}"}},"source":{{"schema":"public","table":"{table}","lsn":{id}}}}}"#
            )
            .into_bytes(),
        );
        m
    };
    let messages = vec![
        change("t", 1, "no", 0),
        change("u", 2, "panic", 1),
        change("t", 3, "panic", 2),
        change("u", 4, "no", 3),
    ];
    let mut p = over(messages, &cfg);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    // Both of t's events die with the chain's failed call; u has no transform, so
    // its "panic" row is just data.
    assert_eq!(
        (snap.dead_letters, snap.rows_transformed, snap.commits),
        (2, 2, 1),
        "{snap:?}"
    );
    assert_eq!(snap.batch_errors, 1, "one failed component call: {snap:?}");
    assert_eq!(p.sink().tables, vec!["public.u".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_called_on_several_cores_load_what_one_call_loads() {
    // Every encoding case of real Debezium output, several tables (one topic each),
    // in order: creates, updates, deletes with tombstones, key changes, truncates.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/debezium-fixtures/schemas_precise/_all_in_order.jsonl");
    let messages = crate::sources::file::read_file(&path).unwrap();
    let topics: std::collections::BTreeSet<&str> = messages.iter().map(|m| &*m.topic).collect();
    assert!(topics.len() >= 3, "{topics:?}");
    let mut outcomes = Vec::new();
    for parallelism in [1, 2, 8] {
        let cfg = ComponentsConfig {
            parallelism,
            ..ComponentsConfig::default()
        };
        let mut p = over(messages.clone(), &cfg);
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let snap = p.run(rx).await.unwrap();
        assert!(snap.rows_transformed > 0, "{snap:?}");
        outcomes.push((
            p.sink().plans.clone(),
            snap.dead_letters,
            snap.rows_transformed,
            snap.events_skipped,
            snap.ops.clone(),
        ));
    }
    assert!(outcomes[0].0.len() >= 3, "{:?}", outcomes[0].0);
    assert_eq!(outcomes[0], outcomes[1], "parallelism 2");
    assert_eq!(outcomes[0], outcomes[2], "parallelism 8");
}

/// A pipeline over `messages` with the components `cfg` names and a healthy sink.
fn over(messages: Vec<Message>, cfg: &ComponentsConfig) -> Pipeline<FileSource, FlakySink> {
    Pipeline::new(
        FileSource::from_messages(messages),
        healthy(),
        Arc::new(Components::load(cfg).unwrap()),
        settings(breaker(20, 1000)),
        Stats::new(),
    )
}

fn truncate(table: &str, lsn: i64, offset: i64) -> Message {
    let mut m = message();
    m.topic = Arc::from(format!("dbz.public.{table}"));
    m.offset = offset;
    m.key = None;
    m.value = Some(
        format!(r#"{{"op":"t","source":{{"schema":"public","table":"{table}","lsn":{lsn}}}}}"#)
            .into_bytes(),
    );
    m
}

fn insert(table: &str, id: i64, lsn: i64, offset: i64) -> Message {
    let mut m = message();
    m.topic = Arc::from(format!("dbz.public.{table}"));
    m.offset = offset;
    m.key = Some(format!(r#"{{"id":{id}}}"#).into_bytes());
    m.value = Some(
        format!(r#"{{"op":"c","after":{{"id":{id}}},"source":{{"schema":"public","table":"{table}","lsn":{lsn}}}}}"#)
            .into_bytes(),
    );
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_whose_table_cannot_be_merged_goes_to_the_dlq_with_its_rows() {
    let hostile = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/components/examples/example_hostile_merge_builder.wasm");
    let cfg = ComponentsConfig {
        merge_builder: hostile.display().to_string(),
        ..ComponentsConfig::default()
    };
    let dir = std::env::temp_dir().join(format!("floe-trunc-dlq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dlq = dir.join("dlq.jsonl");
    let _ = std::fs::remove_file(&dlq);
    let messages = vec![
        insert("t", 1, 5, 0),
        truncate("t", 10, 1),
        insert("t", 2, 15, 2),
        // A table truncated with no row to merge: its truncate needs no MERGE.
        truncate("u", 12, 0),
    ];
    let mut p = over(messages, &cfg).with_dead_letters(DeadLetterQueue::File { path: dlq.clone() });
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    assert_eq!((snap.dead_letters, snap.commits), (2, 1), "{snap:?}");
    let letters = crate::sources::file::read_file(&dlq).unwrap();
    let mut offsets: Vec<(String, String)> = letters
        .iter()
        .map(|m| {
            let h = |k: &str| {
                let v = m.headers.iter().find(|(hk, _)| hk == k).unwrap().1.clone();
                String::from_utf8(v.unwrap()).unwrap()
            };
            (h(crate::dlq::OFFSET_HEADER), h(crate::dlq::REASON_HEADER))
        })
        .collect();
    offsets.sort();
    assert_eq!(offsets[0].0, "1", "the truncate: {offsets:?}");
    assert_eq!(offsets[1].0, "2", "the row after it: {offsets:?}");
    assert!(offsets[0].1.contains("refusing table"), "{offsets:?}");
    // Only u's truncate reached the warehouse.
    assert_eq!(p.sink().tables, vec!["public.u".to_string()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_load_resubmits_its_truncate_under_the_same_request_id() {
    let sink = FlakySink {
        failures: 2,
        ..healthy()
    };
    let mut p = Pipeline::new(
        FileSource::from_messages(vec![truncate("t", 10, 0), insert("t", 1, 15, 1)]),
        sink,
        Arc::new(Components::load(&ComponentsConfig::default()).unwrap()),
        settings(breaker(20, 1000)),
        Stats::new(),
    );
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    assert_eq!(snap.commits, 1, "{snap:?}");
    let sink = p.sink();
    let ids = &sink.request_ids;
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(
        ids[0].len(),
        2,
        "the truncate's id and the MERGE's: {ids:?}"
    );
    assert!(ids.iter().all(|a| *a == ids[0]), "{ids:?}");
}

/// Refuses every load of `table` for its data; loads the others.
struct Refusing {
    table: &'static str,
    loaded: Vec<String>,
}

impl Sink for Refusing {
    async fn load(&mut self, loads: &[TableLoad]) -> Result<LoadReport, SinkError> {
        let mut report = LoadReport::default();
        for (i, l) in loads.iter().enumerate() {
            if l.source_table == self.table {
                report.refuse(i, l, "schema", "refused by the test".into());
            } else {
                self.loaded.push(l.source_table.clone());
            }
        }
        Ok(report)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tables_events_reach_the_dlq_byte_for_byte_from_a_loading_batch() {
    // Real Debezium values with their schemas, which a loading batch keeps once per
    // topic (floe_batch::retained): the letters must still be the messages as they
    // came.
    let dir = std::env::temp_dir().join(format!("floe-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dlq = dir.join("dlq.jsonl");
    let _ = std::fs::remove_file(&dlq);
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/debezium-fixtures/schemas_precise");
    let mut messages = Vec::new();
    for file in [
        "crud_replica_identity_default.jsonl",
        "crud_replica_identity_full.jsonl",
    ] {
        messages.extend(crate::sources::file::read_file(&fixtures.join(file)).unwrap());
    }
    for (i, m) in messages.iter_mut().enumerate() {
        m.offset = i as i64;
    }
    type Kept = (i64, Option<Vec<u8>>, Option<Vec<u8>>);
    let want: Vec<Kept> = (messages.iter())
        .filter(|m| &*m.topic == "dbz.public.customers" && m.value.is_some())
        .map(|m| (m.offset, m.key.clone(), m.value.clone()))
        .collect();
    assert!(want.len() >= 3, "{}", want.len());
    let sink = Refusing {
        table: "public.customers",
        loaded: Vec::new(),
    };
    let mut p = built(FileSource::from_messages(messages), sink, breaker(20, 1000))
        .with_dead_letters(DeadLetterQueue::File { path: dlq.clone() });
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    assert_eq!(snap.dead_letters as usize, want.len(), "{snap:?}");
    assert_eq!(p.sink().loaded, vec!["public.customers_full".to_string()]);
    let letters = crate::sources::file::read_file(&dlq).unwrap();
    let got: Vec<Kept> = (letters.iter())
        .map(|l| (l.offset, l.key.clone(), l.value.clone()))
        .collect();
    assert_eq!(got, want);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_a_table_cannot_hold_apart_cost_only_that_tables_events() {
    let dir = std::env::temp_dir().join(format!("floe-collide-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dlq = dir.join("dlq.jsonl");
    let _ = std::fs::remove_file(&dlq);
    let with = |table: &str, id: i64, after: &str, offset: i64| {
        let mut m = insert(table, id, 10 + id, offset);
        m.value = Some(
            format!(r#"{{"op":"c","after":{after},"source":{{"schema":"public","table":"{table}","lsn":{}}}}}"#, 10 + id)
                .into_bytes(),
        );
        m
    };
    let messages = vec![
        // `a` and `A` are one column under identifier_case = "upper".
        with("t", 1, r#"{"id":1,"a":1,"A":2}"#, 0),
        with("t", 2, r#"{"id":2,"a":3,"A":4}"#, 1),
        // A column named like the MERGE's own `__unavailable`, in another case.
        with("v", 3, r#"{"id":3,"__Unavailable":1}"#, 0),
        insert("u", 4, 14, 0),
    ];
    let cfg = ComponentsConfig {
        on_failure: crate::config::OnFailure::Stop,
        ..ComponentsConfig::default()
    };
    let mut p = over(messages, &cfg).with_dead_letters(DeadLetterQueue::File { path: dlq.clone() });
    let (_tx, rx) = tokio::sync::watch::channel(false);
    // Not a component failure: even `on_failure = "stop"` goes on.
    let snap = p.run(rx).await.expect("the run goes on");
    assert_eq!((snap.dead_letters, snap.commits), (3, 1), "{snap:?}");
    assert_eq!(p.sink().tables, vec!["public.u".to_string()]);
    let letters = crate::sources::file::read_file(&dlq).unwrap();
    for l in &letters {
        let h = |k: &str| {
            let v = l.headers.iter().find(|(hk, _)| hk == k).unwrap().1.clone();
            String::from_utf8(v.unwrap()).unwrap()
        };
        assert_eq!(h(crate::dlq::CATEGORY_HEADER), "schema");
        let reason = h(crate::dlq::REASON_HEADER);
        assert!(
            reason.contains("collides") || reason.contains("__unavailable"),
            "{reason}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_column_named_like_the_soft_delete_flag_is_refused() {
    let mut m = insert("t", 1, 5, 0);
    m.value = Some(
        br#"{"op":"c","after":{"id":1,"__deleted":true},"source":{"schema":"public","table":"t","lsn":5}}"#
            .to_vec(),
    );
    let mut s = settings(breaker(20, 1000));
    s.target.deletes = DeleteMode::Soft;
    let mut p = Pipeline::new(
        FileSource::from_messages(vec![m, insert("u", 2, 6, 0)]),
        healthy(),
        Arc::new(Components::load(&ComponentsConfig::default()).unwrap()),
        s,
        Stats::new(),
    );
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    assert_eq!((snap.dead_letters, snap.events_failed), (1, 1), "{snap:?}");
    assert_eq!(p.sink().tables, vec!["public.u".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_row_lacking_a_toasted_value_is_counted_and_logged() {
    let mut lone = insert("t", 2, 20, 0);
    lone.value = Some(
        br#"{"op":"c","after":{"id":2,"body":"__debezium_unavailable_value"},"source":{"schema":"public","table":"t","lsn":20}}"#
            .to_vec(),
    );
    let mut p = Pipeline::new(
        FileSource::from_messages(vec![lone]),
        healthy(),
        Arc::new(Components::load(&ComponentsConfig::default()).unwrap()),
        settings(breaker(20, 1000)),
        Stats::new(),
    );
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    assert_eq!(
        (snap.toast_values_unknown, snap.commits),
        (1, 1),
        "{snap:?}"
    );
}

fn broken_message() -> Message {
    let mut m = message();
    m.value = Some(b"{not json".to_vec());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_outage_holds_the_batch_until_the_letters_are_written() {
    let dir = std::env::temp_dir().join(format!("floe-dlq-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The DLQ file's directory appears only once writes failed and the DLQ breaker
    // opened (not after a wall-clock delay, which a slow start under load used up
    // before the first write): until then every write fails, as a DLQ topic does
    // while its cluster is down.
    let path = dir.join("later").join("dlq.jsonl");
    let later = dir.join("later");
    let mut p = Pipeline::new(
        FileSource::from_messages(vec![broken_message(), insert("t", 2, 7, 1)]),
        healthy(),
        Arc::new(Components::load(&ComponentsConfig::default()).unwrap()),
        settings(breaker(50, 1000)),
        Stats::new(),
    )
    .with_dead_letters(DeadLetterQueue::File { path: path.clone() });
    let stats = p.stats().clone();
    tokio::spawn(async move {
        // Bounded, so that a run which never fails still ends (and the asserts say why).
        for _ in 0..1000 {
            let s = stats.snapshot();
            if s.dlq_errors >= 2 && s.dlq_breaker_opened >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::create_dir_all(later).unwrap();
    });
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.expect("a DLQ outage never ends the run");
    assert_eq!((snap.dead_letters, snap.commits), (1, 1), "{snap:?}");
    assert!(
        snap.dlq_errors >= 2 && snap.dlq_breaker_opened >= 1,
        "{snap:?}"
    );
    assert_eq!(snap.dlq_breaker_state, "closed", "{snap:?}");
    assert_eq!(crate::sources::file::read_file(&path).unwrap().len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_dlq_outage_leaves_the_batch_uncommitted() {
    let path = std::env::temp_dir()
        .join(format!("floe-dlq-never-{}", std::process::id()))
        .join("missing")
        .join("dlq.jsonl");
    let mut p = Pipeline::new(
        FileSource::from_messages(vec![broken_message()]),
        healthy(),
        Arc::new(Components::load(&ComponentsConfig::default()).unwrap()),
        settings(breaker(50, 5000)),
        Stats::new(),
    )
    .with_dead_letters(DeadLetterQueue::File { path });
    let started = Instant::now();
    let snap = p.run(shutdown_after(400)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!((snap.dead_letters, snap.commits), (0, 0), "{snap:?}");
    assert_eq!(snap.dlq_breaker_state, "open", "{snap:?}");
}

/// A shutdown signal sent after `ms` milliseconds (and kept open afterwards).
fn shutdown_after(ms: u64) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    rx
}

/// A pipeline over one message whose broker fails as given, with a healthy sink.
fn flaky_broker(
    consume_failures: usize,
    commit_failures: usize,
    refuse: bool,
    breaker: BreakerSettings,
) -> Pipeline<FlakySource, FlakySink> {
    let source = FlakySource {
        inner: FileSource::from_messages(vec![message()]),
        consume_failures,
        commit_failures,
        refuse,
        committed: 0,
    };
    built(source, healthy(), breaker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_breaker_rides_out_consume_and_commit_failures() {
    let mut p = flaky_broker(3, 3, false, breaker(20, 1000));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    // 2 attempts: consume fails (retry), fails (open), probe fails (open again),
    // then succeeds; commit likewise. Loaded once, committed once.
    assert_eq!(snap.broker_errors, 6, "{snap:?}");
    assert_eq!(snap.broker_breaker_opened, 4, "{snap:?}");
    assert_eq!(snap.broker_breaker_state, "closed", "{snap:?}");
    assert_eq!((snap.commits, snap.rows_loaded), (1, 1), "{snap:?}");
    assert_eq!(p.sink().loaded, 1);
    assert_eq!(p.source().committed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_refused_by_the_group_is_not_retried() {
    let mut p = flaky_broker(0, 0, true, breaker(20, 1000));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    assert_eq!(
        (
            snap.commits_refused,
            snap.broker_errors,
            p.source().committed
        ),
        (1, 0, 0),
        "{snap:?}"
    );
    assert_eq!(snap.rows_loaded, 1, "{snap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_broker_fails_stops_at_once() {
    let mut p = flaky_broker(usize::MAX, 0, false, breaker(60_000, 60_000));
    let rx = shutdown_after(800);
    let started = Instant::now();
    let snap = p.run(rx).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(snap.broker_breaker_state, "open", "{snap:?}");
    assert_eq!(snap.commits, 0, "{snap:?}");
}

fn breaker(open_ms: u64, shutdown_ms: u64) -> BreakerSettings {
    BreakerSettings {
        open_for: Duration::from_millis(open_ms),
        max_open_for: Duration::from_millis(open_ms * 2),
        shutdown_timeout: Duration::from_millis(shutdown_ms),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_probes_and_closes_without_ending_the_run() {
    let sink = FlakySink {
        tables: Vec::new(),
        failures: 5,
        stall: Duration::ZERO,
        loaded: 0,
        request_ids: Vec::new(),
        plans: Vec::new(),
    };
    let mut p = pipeline(sink, breaker(20, 1000));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    // 2 attempts closed, then 3 failed probes and a good one: opened 4 times.
    assert_eq!(snap.breaker_opened, 4, "{snap:?}");
    assert_eq!(snap.breaker_state, "closed");
    assert_eq!((snap.commits, snap.rows_loaded), (1, 1), "{snap:?}");
    assert_eq!(p.sink().loaded, 1);
    // Every attempt and probe resubmitted the batch's statements under the same ids.
    let sink = p.sink();
    let ids = &sink.request_ids;
    assert_eq!(ids.len(), 6);
    assert!(!ids[0].is_empty());
    assert!(ids.iter().all(|a| *a == ids[0]), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_open_abandons_the_batch_uncommitted() {
    let sink = FlakySink {
        tables: Vec::new(),
        failures: usize::MAX,
        stall: Duration::ZERO,
        loaded: 0,
        request_ids: Vec::new(),
        plans: Vec::new(),
    };
    let mut p = pipeline(sink, breaker(60_000, 60_000));
    let rx = shutdown_after(600);
    let started = Instant::now();
    let snap = p.run(rx).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((snap.commits, snap.breaker_opened), (0, 1), "{snap:?}");
    assert_eq!(snap.breaker_state, "open");
}

/// Counts the batches it hands out and records the checkpoints committed. Each
/// batch after the first is handed out only after `collect` (a slow topic).
struct Recording {
    inner: FileSource,
    consumed: Arc<std::sync::atomic::AtomicUsize>,
    commits: Arc<std::sync::Mutex<Vec<i64>>>,
    collect: Duration,
    in_flight: Option<Arc<InFlight>>,
}

/// (offset committed up to, batches handed out then) per commit from a load.
type LoadCommits = Arc<std::sync::Mutex<Vec<(i64, usize)>>>;

impl Recording {
    fn new(messages: Vec<Message>) -> Recording {
        Recording {
            inner: FileSource::from_messages(messages),
            consumed: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            commits: Arc::new(std::sync::Mutex::new(Vec::new())),
            collect: Duration::ZERO,
            in_flight: None,
        }
    }

    /// Lets the load's task commit (like the Kafka source); returns its commits.
    fn committing_from_loads(&mut self) -> LoadCommits {
        let commits = LoadCommits::default();
        let in_flight = Arc::new(InFlight::default());
        let (consumed, c) = (self.consumed.clone(), commits.clone());
        in_flight.set_commit_now(Box::new(move |cp: &crate::sources::Checkpoint| {
            let next = cp.next_offsets.values().copied().max().unwrap();
            let n = consumed.load(std::sync::atomic::Ordering::SeqCst);
            c.lock().unwrap().push((next, n));
            Ok(())
        }));
        self.in_flight = Some(in_flight);
        commits
    }
}

impl Source for Recording {
    async fn next_batch(
        &mut self,
        limits: BatchLimits,
    ) -> Result<Option<SourceBatch>, SourceError> {
        if self.consumed.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            tokio::time::sleep(self.collect).await;
        }
        let b = self.inner.next_batch(limits).await?;
        if b.as_ref().is_some_and(|b| !b.messages.is_empty()) {
            self.consumed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(b)
    }

    async fn commit(&mut self, checkpoint: &crate::sources::Checkpoint) -> Result<(), SourceError> {
        let next = checkpoint.next_offsets.values().copied().max().unwrap();
        self.commits.lock().unwrap().push(next);
        self.inner.commit(checkpoint).await
    }

    fn in_flight(&self) -> Option<Arc<InFlight>> {
        self.in_flight.clone()
    }
}

/// Takes `stall` per load; notes, per load, how many batches were committed when it
/// started and how many consumed when it ended.
struct Watching {
    stall: Duration,
    consumed: Arc<std::sync::atomic::AtomicUsize>,
    commits: Arc<std::sync::Mutex<Vec<i64>>>,
    /// (commits at start, batches consumed at end) per load.
    seen: Vec<(usize, usize)>,
}

impl Sink for Watching {
    async fn load(&mut self, _loads: &[TableLoad]) -> Result<LoadReport, SinkError> {
        let committed = self.commits.lock().unwrap().len();
        tokio::time::sleep(self.stall).await;
        let consumed = self.consumed.load(std::sync::atomic::Ordering::SeqCst);
        self.seen.push((committed, consumed));
        Ok(LoadReport::default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_batch_is_consumed_while_one_loads_and_loads_and_commits_keep_order() {
    let messages = (0..30).map(|i| insert("u", i, 100 + i, i)).collect();
    let source = Recording::new(messages);
    let (consumed, commits) = (source.consumed.clone(), source.commits.clone());
    let sink = Watching {
        stall: Duration::from_millis(300),
        consumed,
        commits: commits.clone(),
        seen: Vec::new(),
    };
    let mut p = built(source, sink, breaker(20, 1000));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    assert_eq!((snap.batches, snap.commits), (3, 3), "{snap:?}");
    // Batches of 10: committed in order, each after its load.
    assert_eq!(*commits.lock().unwrap(), vec![10, 20, 30]);
    let seen = p.sink().seen.clone();
    // Load k started after the k-1 batches before it were committed, and while it
    // loaded the next batch was consumed (the last load has no next batch).
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (k, &(committed, consumed)) in seen.iter().enumerate() {
        assert_eq!(
            committed, k,
            "load {k} started before the batches before it were committed: {seen:?}"
        );
        assert!(
            consumed >= (k + 2).min(3),
            "load {k}: the next batch was not consumed while it loaded: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_batch_is_committed_while_the_next_one_is_still_collected() {
    let messages = (0..20).map(|i| insert("u", i, 100 + i, i)).collect();
    let mut source = Recording::new(messages);
    source.collect = Duration::from_millis(800);
    let commits = source.committing_from_loads();
    let sink = Watching {
        stall: Duration::from_millis(100),
        consumed: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        commits: Arc::new(std::sync::Mutex::new(Vec::new())),
        seen: Vec::new(),
    };
    let mut p = built(source, sink, breaker(20, 1000));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let snap = p.run(rx).await.unwrap();
    assert_eq!((snap.batches, snap.commits), (2, 2), "{snap:?}");
    // The first batch (offsets up to 10) was committed from its load, while the
    // second was still being collected (only one batch handed out then).
    assert_eq!(*commits.lock().unwrap(), vec![(10, 1), (20, 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_the_batch_in_flight_is_committed_and_the_prepared_one_is_not() {
    let messages = (0..30).map(|i| insert("u", i, 100 + i, i)).collect();
    let source = Recording::new(messages);
    let (consumed, commits) = (source.consumed.clone(), source.commits.clone());
    let sink = Watching {
        stall: Duration::from_millis(600),
        consumed: consumed.clone(),
        commits: commits.clone(),
        seen: Vec::new(),
    };
    let mut p = built(source, sink, breaker(20, 10_000));
    // Asked while the first batch loads and the second is already consumed.
    let rx = shutdown_after(300);
    let snap = p.run(rx).await.unwrap();
    assert!(
        consumed.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the second batch was not consumed during the first load"
    );
    assert_eq!(*commits.lock().unwrap(), vec![10], "{snap:?}");
    assert_eq!(p.sink().seen.len(), 1, "the prepared batch was loaded");
    assert_eq!(snap.commits, 1, "{snap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_load_is_abandoned_at_the_shutdown_deadline() {
    let sink = FlakySink {
        tables: Vec::new(),
        failures: 0,
        stall: Duration::from_secs(60),
        loaded: 0,
        request_ids: Vec::new(),
        plans: Vec::new(),
    };
    let mut p = pipeline(sink, breaker(20, 300));
    let rx = shutdown_after(300);
    let started = Instant::now();
    let snap = p.run(rx).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(snap.commits, 0, "{snap:?}");
    assert_eq!(p.sink().loaded, 0);
}

mod metrics;
mod trace;
