//! SIGTERM during a real load: the `floe` binary consumes a topic of the stack's broker
//! and loads through the fault proxy, which holds the warehouse's answers.
//! 1. Answers held 1.5 s, shutdown deadline 15 s: SIGTERM while a statement is held; the
//!    in-flight batch finishes and is committed, floe exits 0 within the deadline.
//! 2. Answers held 120 s, deadline 1.5 s: SIGTERM while held; floe abandons the batch
//!    uncommitted and exits 0 at the deadline.
//! 3. A healthy run catches up: the target equals the model of the stream.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;

use crate::broker::{produce, stream};
use crate::faults::{HEALTHY, Proxy, SLOW, proxy};
use crate::support::{env, floe_bin, query, snowflake, unique};

pub(crate) fn write_config(path: &Path, run: &str, topic: &str, url: &str, shutdown_ms: u64) {
    std::fs::write(
        path,
        format!(
            r#"[source.kafka]
brokers = "{brokers}"
group_id = "{run}-group"
topics = ["{topic}"]
session_timeout_ms = 10000

[batch]
max_rows = 40
max_wait_ms = 200

[sink.snowflake]
account_url = "{url}"
database = "{database}"
schema = "CDC"
table_name = "{{table}}"
request_timeout_secs = 300

[delivery]
shutdown_timeout_ms = {shutdown_ms}
"#,
            brokers = env("FLOE_KAFKA_BROKERS"),
            database = run.to_uppercase(),
        ),
    )
    .unwrap();
}

pub(crate) fn start(config: &Path, metrics: &Path, extra: &[&str]) -> Child {
    Command::new(floe_bin())
        .arg("--config")
        .arg(config)
        .arg("run")
        .arg("--metrics-json")
        .arg(metrics)
        .args(extra)
        .env("FLOE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start floe")
}

/// Commits so far, from the metrics JSON floe writes after every batch.
pub(crate) fn commits(metrics: &Path) -> u64 {
    std::fs::read(metrics)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["commits"].as_u64())
        .unwrap_or(0)
}

/// Waits (bounded) until `ready` holds, checking floe is still running.
async fn wait_for(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "floe exited while waiting for {what}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM; returns floe's exit code and how long it took to exit.
pub(crate) async fn terminate(child: &mut Child) -> (Option<i32>, Duration) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let sent = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), sent.elapsed());
        }
        assert!(
            sent.elapsed() < Duration::from_secs(60),
            "floe ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One shutdown scenario's setting.
struct Held<'a> {
    config: &'a Path,
    metrics: &'a Path,
    run: &'a str,
    topic: &'a str,
    proxy: &'a Proxy,
}

impl Held<'_> {
    /// Starts floe with `shutdown_ms`, lets it commit `warm_up` batches, then makes the
    /// warehouse hold its answers `hold_ms` and sends SIGTERM while one is held. Returns
    /// the exit code, the time to exit and the commits before and after the signal.
    async fn sigterm(
        &self,
        shutdown_ms: u64,
        hold_ms: u64,
        warm_up: u64,
    ) -> (Option<i32>, Duration, u64, u64) {
        let proxy = self.proxy;
        write_config(self.config, self.run, self.topic, &proxy.url, shutdown_ms);
        proxy.mode.store(HEALTHY, Ordering::SeqCst);
        let _ = std::fs::remove_file(self.metrics);
        let mut floe = start(self.config, self.metrics, &[]);
        wait_for(&mut floe, "the first commits", || {
            commits(self.metrics) >= warm_up
        })
        .await;
        proxy.hold_ms.store(hold_ms, Ordering::SeqCst);
        proxy.mode.store(SLOW, Ordering::SeqCst);
        wait_for(&mut floe, "a held statement", || {
            proxy.held.load(Ordering::SeqCst) > 0
        })
        .await;
        let before = commits(self.metrics);
        let (code, took) = terminate(&mut floe).await;
        let after = commits(self.metrics);
        eprintln!(
            "shutdown: deadline {shutdown_ms} ms, answers held {hold_ms} ms: exit {code:?} after {took:?}, commits {before} -> {after}"
        );
        (code, took, before, after)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack and the floe binary: make test"]
async fn sigterm_during_a_slow_load_finishes_or_abandons_it_within_the_deadline() {
    let run = unique("shutdown");
    let table = format!("{run}_items");
    let topic = format!("dbz.public.{table}");
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).unwrap();
    let (records, model) = stream(&table, 1500);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env("FLOE_KAFKA_BROKERS"))
        .set("acks", "all")
        .create()
        .unwrap();
    produce(&producer, &topic, &records).await;

    let proxy = proxy(&env("FLOE_SNOWFLAKE_URL")).await;
    let config = dir.join("floe.toml");
    let metrics = dir.join("metrics.json");

    // 1. Held 1.5 s per statement, deadline 15 s: the in-flight batch finishes.
    let held = Held {
        config: &config,
        metrics: &metrics,
        run: &run,
        topic: &topic,
        proxy: &proxy,
    };
    let (code, took, before, after) = held.sigterm(15_000, 1500, 3).await;
    assert_eq!(code, Some(0), "exit code");
    assert!(
        took < Duration::from_secs(15),
        "within the deadline: {took:?}"
    );
    assert_eq!(after, before + 1, "the in-flight batch was committed");

    // 2. Held 120 s, deadline 1.5 s: the batch is abandoned uncommitted.
    let (code, took, before, after) = held.sigterm(1500, 120_000, 2).await;
    assert_eq!(code, Some(0), "exit code");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(6),
        "abandoned at the 1.5 s deadline: {took:?}"
    );
    assert_eq!(after, before, "the abandoned batch was not committed");

    // 3. Healthy again: a run catches up; nothing was lost.
    proxy.mode.store(HEALTHY, Ordering::SeqCst);
    let mut floe = start(&config, &metrics, &["--exit-when-idle", "6"]);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = floe.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "catch-up run did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    let sf = snowflake().await;
    let got = query(
        &sf,
        &format!(
            r#"SELECT "ID", "V" FROM "{}"."CDC"."{}" ORDER BY "ID""#,
            run.to_uppercase(),
            table.to_uppercase()
        ),
    )
    .await;
    let want: Vec<Vec<String>> = model
        .iter()
        .map(|(id, v)| vec![id.to_string(), v.clone()])
        .collect();
    assert_eq!(got, want, "target == model after both shutdowns");
    eprintln!(
        "shutdown: 1,500 changes, SIGTERM during held loads (one finished and committed, one abandoned at the deadline), {} rows == model",
        got.len()
    );
}
