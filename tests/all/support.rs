//! Shared helpers: the stack's endpoints, a Snowflake client, configs, PostgreSQL via psql.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use floe::config::{Config, SinkKind, SourceKind};
use floe::{RunOptions, Stats, StatsSnapshot};
use floe_snowflake::Client;

/// A required environment variable (set by `dev/stack.sh env`, i.e. by `make test`).
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: integration tests run against the dev stack, use `make test`")
    })
}

pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("FLOE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/debezium-fixtures")
        })
}

/// A name unique to this process and call, usable in SQL identifiers.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 100_000_000;
    format!("{prefix}_{t}_{}", N.fetch_add(1, Ordering::Relaxed))
}

pub async fn snowflake() -> Client {
    floe_integration_tests::emulator(&env("FLOE_SNOWFLAKE_URL"))
        .await
        .expect("login to the emulator")
}

/// Rows of a query, NULL as `<NULL>`. A transient error (the emulator closing an idle
/// pooled connection as the query goes out: uvicorn's keep-alive is 5 s) is retried once.
pub async fn query(client: &Client, sql: &str) -> Vec<Vec<String>> {
    let res = match client.execute(sql, &[]).await {
        Err(e) if e.is_retryable() => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.execute(sql, &[]).await
        }
        r => r,
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
    res.rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| v.unwrap_or_else(|| "<NULL>".into()))
                .collect()
        })
        .collect()
}

/// A producer to the dev stack's broker, with librdkafka's defaults.
pub fn producer() -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env("FLOE_KAFKA_BROKERS"))
        .create()
        .unwrap()
}

/// A config writing into `database` of the emulator.
pub fn sink_config(database: &str) -> Config {
    let mut c = Config::default();
    c.sink.kind = SinkKind::Snowflake;
    c.sink.snowflake.account_url = env("FLOE_SNOWFLAKE_URL");
    c.sink.snowflake.database = database.to_string();
    c.sink.snowflake.schema = "CDC".into();
    // Each test writes into a database of its own, so its target tables are named by
    // the source table alone (the default `{topic}` naming has tests of its own).
    c.sink.snowflake.table_name = "{table}".into();
    // tansu holds a group join for half the session timeout (dev/README.md): keep it short.
    c.source.kafka.session_timeout_ms = 10_000;
    c
}

/// [`sink_config`] with the stack's Kafka as the source: `topics`, consumer group
/// `<run>-group`, batches cut after 300 ms.
pub fn kafka_config(database: &str, run: &str, topics: Vec<String>) -> Config {
    let mut c = sink_config(database);
    c.source.kind = SourceKind::Kafka;
    c.source.kafka.brokers = env("FLOE_KAFKA_BROKERS");
    c.source.kafka.group_id = format!("{run}-group");
    c.source.kafka.topics = topics;
    c.batch.max_wait_ms = 300;
    c
}

/// Replays fixture-format files into `database`; returns the run's statistics.
pub async fn replay(files: &[PathBuf], database: &str) -> StatsSnapshot {
    replay_with(files, database, |_| {}).await
}

/// [`replay`] with a changed configuration.
pub async fn replay_with(
    files: &[PathBuf],
    database: &str,
    change: impl FnOnce(&mut Config),
) -> StatsSnapshot {
    let mut c = sink_config(database);
    change(&mut c);
    c.source.kind = SourceKind::File;
    c.source.file.paths = files.to_vec();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    floe::run(&c, &RunOptions::default(), rx, Stats::new())
        .await
        .unwrap_or_else(|e| panic!("replay of {files:?}: {e}"))
}

/// Runs floe in the background until `stop` is sent.
pub fn spawn_run(
    config: Config,
    options: RunOptions,
) -> (
    tokio::sync::watch::Sender<bool>,
    Arc<Stats>,
    tokio::task::JoinHandle<Result<StatsSnapshot, floe::RunError>>,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stats = Stats::new();
    let s = stats.clone();
    let handle = tokio::spawn(async move { floe::run(&config, &options, rx, s).await });
    (tx, stats, handle)
}

/// Runs SQL through psql against the stack's PostgreSQL (database `floe`); returns rows
/// split on the unit separator, NULL as `<NULL>`.
pub fn psql(sql: &str) -> Vec<Vec<String>> {
    let port = env("FLOE_PG_PORT");
    let mut child = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "floe",
            "-F",
            "\u{1f}",
            "-P",
            "null=<NULL>",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(sql.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\u{1f}').map(str::to_string).collect())
        .collect()
}

/// A tiny deterministic generator (SplitMix64), so a failing run can be replayed.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Settings for a pipeline driven batch by batch with `Pipeline::process` (the batch
/// limits do not matter there).
pub fn pipeline_settings(
    config: &Config,
    load_attempts: usize,
) -> floe::pipeline::PipelineSettings {
    floe::pipeline::PipelineSettings {
        limits: floe::sources::BatchLimits {
            max_rows: 100,
            max_bytes: 1 << 20,
            max_wait: std::time::Duration::from_millis(10),
            idle_poll: std::time::Duration::from_millis(10),
        },
        target: config.sink.snowflake.clone(),
        exit_when_idle: None,
        load_attempts,
        metrics_json: None,
        max_message_bytes: 8 << 20,
        breaker: Default::default(),
        reload: None,
        formats: Default::default(),
        schema_registry: None,
    }
}

/// The `floe` binary `make build` (a prerequisite of `make test`) produced.
pub fn floe_bin() -> PathBuf {
    let p = std::env::var_os("FLOE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/floe"));
    assert!(p.exists(), "{} is missing: run `make build`", p.display());
    p
}

/// Every record of `topic` on `brokers`, read from the beginning of each partition until
/// none arrived for 5 s.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("read-topic"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = md.topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    let mut quiet = std::time::Instant::now();
    while quiet.elapsed() < Duration::from_secs(5) {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            records.push(m.unwrap().detach());
            quiet = std::time::Instant::now();
        }
    }
    records
}

/// One more real Debezium forwarder (`dev/stack.sh debezium-exec`) with its own slot and
/// topic prefix (`name`) and the given connector settings; stopped (its slot dropped) on
/// drop. Its log is `target/dev-run/debezium-<name>.log`.
pub struct Debezium {
    child: std::process::Child,
}

impl Debezium {
    /// Starts it and waits until its slot streams (snapshot done).
    pub fn start(name: &str, settings: &[&str]) -> Debezium {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let log = root.join(format!("target/dev-run/debezium-{name}.log"));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(root.join("dev/stack.sh"))
            .arg("debezium-exec")
            .arg(name)
            .args(settings)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("dev/stack.sh debezium-exec");
        let d = Debezium { child };
        let slot = format!("floe_{name}");
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            let active = psql(&format!(
                "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ));
            if active.first().is_some_and(|r| r[0] == "t") {
                return d;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "debezium {name} did not start streaming: see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Debezium {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `sql` returns `want` (rows as text), for at most `secs`; returns the last
/// answer either way.
pub async fn wait_for_rows(
    sf: &Client,
    sql: &str,
    want: &[Vec<String>],
    secs: u64,
) -> Vec<Vec<String>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let got = match sf.execute(sql, &[]).await {
            Ok(res) => res
                .rows
                .into_iter()
                .map(|r| {
                    r.into_iter()
                        .map(|v| v.unwrap_or_else(|| "<NULL>".into()))
                        .collect()
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        if got == want || std::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
