//! Broker restart mid-stream: floe consumes from a second tansu broker whose storage is a
//! local S3 server (moto), so its topics and committed offsets survive a restart. While
//! changes stream in, the broker is SIGKILLed and restarted twice (once mid-batch, once
//! with SIGTERM while producing). floe rides the outages out (broker errors counted, the
//! broker breaker opens and closes, the run never ends) and afterwards the target equals
//! what the broker holds (read back from it; an acknowledged record the broker itself
//! lost in a restart is reported, not blamed on floe).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use floe::RunOptions;
use floe::config::SourceKind;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::support::{Rng, env, query, sink_config, snowflake, spawn_run, unique};

/// A child process killed when dropped.
pub(crate) struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn signal(&mut self, signal: &str) {
        let pid = self.0.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, what: &str, log: &Path) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what} not listening on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn start_moto(port: u16, dir: &Path) -> Proc {
    let log = dir.join("moto.log");
    let child = Command::new(env("FLOE_MOTO_BIN"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("moto.err")).unwrap(),
        ))
        .spawn()
        .expect("moto_server (dev/install.sh moto)");
    let proc = Proc(child);
    wait_listening(port, "moto", &log);
    // The bucket tansu stores into.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "PUT /tansu HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "create bucket: {answer}"
    );
    proc
}

fn start_tansu(port: u16, s3_port: u16, log: &Path) -> Proc {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env("FLOE_TANSU_BIN"))
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--storage-engine",
            "s3://tansu/",
        ])
        .env("NO_COLOR", "1")
        .env("AWS_ACCESS_KEY_ID", "floe")
        .env("AWS_SECRET_ACCESS_KEY", "floe")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{s3_port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("tansu");
    let proc = Proc(child);
    wait_listening(port, "tansu", log);
    proc
}

/// `changes` Debezium envelopes of `table` over 150 keys (key JSON, value JSON), and
/// the model's final table.
pub(crate) fn stream(
    table: &str,
    changes: usize,
) -> (Vec<(String, String)>, BTreeMap<i64, String>) {
    let mut rng = Rng(7);
    let mut model = BTreeMap::new();
    let mut out = Vec::new();
    for i in 0..changes {
        let id = rng.below(150) as i64;
        let lsn = 5000 + i as i64;
        let source = serde_json::json!({"schema": "public", "table": table, "lsn": lsn});
        let value = match (model.contains_key(&id), rng.below(6)) {
            (true, 0) => {
                model.remove(&id);
                serde_json::json!({"op": "d", "before": {"id": id}, "after": null, "source": source})
            }
            (exists, _) => {
                let v = format!("v{i}");
                model.insert(id, v.clone());
                serde_json::json!({"op": if exists { "u" } else { "c" }, "before": null,
                                   "after": {"id": id, "v": v}, "source": source})
            }
        };
        out.push((serde_json::json!({"id": id}).to_string(), value.to_string()));
    }
    (out, model)
}

/// The query of `run`'s target of `table` (its `ID` and `V` columns) and the rows it
/// must return for `model`.
pub(crate) fn model_query(
    run: &str,
    table: &str,
    model: &BTreeMap<i64, String>,
) -> (String, Vec<Vec<String>>) {
    let sql = format!(
        r#"SELECT "ID", "V" FROM "{}"."CDC"."{}" ORDER BY "ID""#,
        run.to_uppercase(),
        table.to_uppercase()
    );
    let rows = model
        .iter()
        .map(|(id, v)| vec![id.to_string(), v.clone()])
        .collect();
    (sql, rows)
}

pub(crate) async fn produce(producer: &FutureProducer, topic: &str, records: &[(String, String)]) {
    let sends: Vec<_> = records
        .iter()
        .map(|(k, v)| {
            producer.send(
                FutureRecord::to(topic).key(k).payload(v),
                Duration::from_secs(120),
            )
        })
        .collect();
    for s in sends {
        s.await
            .expect("produced (the producer retries through the restart)");
    }
}

async fn wait_consumed(stats: &floe::Stats, at_least: u64, handle_done: impl Fn() -> bool) {
    let started = Instant::now();
    while stats.snapshot().events_consumed < at_least {
        assert!(!handle_done(), "run ended early: {:?}", stats.snapshot());
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "stuck: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the broker holds after the restarts: every record of `topic` read back from
/// the beginning, folded into the final table (per key, the change with the highest
/// LSN wins; a delete removes the row). Returns it and the number of records.
fn broker_model(brokers: &str, topic: &str) -> (BTreeMap<i64, String>, usize) {
    use rdkafka::message::Message as _;
    let mut last: BTreeMap<i64, (i64, Option<String>)> = BTreeMap::new();
    let messages = crate::support::read_topic(brokers, topic);
    let records = messages.len();
    for m in messages {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let lsn = v["source"]["lsn"].as_i64().unwrap();
        let (id, row) = if v["op"] == "d" {
            (v["before"]["id"].as_i64().unwrap(), None)
        } else {
            let after = &v["after"];
            (
                after["id"].as_i64().unwrap(),
                Some(after["v"].as_str().unwrap().to_string()),
            )
        };
        if last.get(&id).is_none_or(|(l, _)| *l < lsn) {
            last.insert(id, (lsn, row));
        }
    }
    let model = last
        .into_iter()
        .filter_map(|(id, (_, row))| row.map(|r| (id, r)))
        .collect();
    (model, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack (tansu, moto, the Snowflake emulator): make test"]
async fn broker_restarts_mid_stream_lose_nothing() {
    let run = unique("broker");
    let database = run.to_uppercase();
    let dir: PathBuf = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).unwrap();
    let (s3_port, kafka_port) = (free_port(), free_port());
    let _moto = start_moto(s3_port, &dir);
    let tansu_log = dir.join("tansu.log");
    let mut tansu = start_tansu(kafka_port, s3_port, &tansu_log);
    let brokers = format!("127.0.0.1:{kafka_port}");
    let topic = "dbz.public.broker_items";

    let (records, model) = stream("broker_items", 1200);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "120000")
        .set("request.timeout.ms", "5000")
        .create()
        .unwrap();
    produce(&producer, topic, &records[..400]).await;

    let mut config = sink_config(&database);
    config.source.kind = SourceKind::Kafka;
    config.source.kafka.brokers = brokers.clone();
    config.source.kafka.group_id = run.clone();
    config.source.kafka.topics = vec![topic.to_string()];
    config.batch.max_rows = 100;
    config.batch.max_wait_ms = 200;
    config.delivery.breaker_open_ms = 500;
    config.delivery.breaker_max_open_ms = 2000;
    let options = RunOptions {
        load_attempts: Some(3),
        exit_when_idle: Some(Duration::from_secs(12)),
        ..RunOptions::default()
    };
    let (_stop, stats, handle) = spawn_run(config, options);
    let done = || handle.is_finished();

    // Restart 1: SIGKILL while floe is consuming the first 400 changes.
    wait_consumed(&stats, 200, done).await;
    tansu.signal("KILL");
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    tansu = start_tansu(kafka_port, s3_port, &tansu_log);
    eprintln!("broker: restart 1 after {:?}", down_at.elapsed());
    produce(&producer, topic, &records[400..800]).await;

    // Restart 2: SIGTERM while the last 400 are being produced.
    wait_consumed(&stats, 600, done).await;
    eprintln!("broker: restart 2 at {:?}", down_at.elapsed());
    let tail = records[800..].to_vec();
    let p2 = producer.clone();
    let producing = tokio::spawn(async move { produce(&p2, topic, &tail).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tansu.signal("TERM");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _tansu = start_tansu(kafka_port, s3_port, &tansu_log);
    producing.await.unwrap();
    eprintln!(
        "broker: all produced at {:?}: {:?}",
        down_at.elapsed(),
        stats.snapshot()
    );

    let snap = tokio::time::timeout(Duration::from_secs(240), handle)
        .await
        .expect("run did not finish")
        .unwrap()
        .expect("broker outages never end the run");
    assert!(snap.broker_errors >= 1, "the outages were seen: {snap:?}");
    assert_eq!(snap.broker_breaker_state, "closed", "{snap:?}");
    assert_eq!(
        (snap.events_rejected, snap.events_failed, snap.dead_letters),
        (0, 0, 0),
        "{snap:?}"
    );

    // The expectation is what the broker holds: an acknowledged record lost by the
    // broker's own restart is not floe's to load (counted and reported below).
    let (held, records_held) = broker_model(&brokers, topic);
    assert!(
        snap.events_consumed >= records_held as u64,
        "floe consumed {} of the {records_held} records the broker holds",
        snap.events_consumed
    );
    let sf = snowflake().await;
    let got = query(
        &sf,
        &format!(r#"SELECT "ID", "V" FROM "{database}"."CDC"."BROKER_ITEMS" ORDER BY "ID""#),
    )
    .await;
    let want: Vec<Vec<String>> = held
        .iter()
        .map(|(id, v)| vec![id.to_string(), v.clone()])
        .collect();
    assert_eq!(
        got, want,
        "target == what the broker holds, after two restarts"
    );
    let lost_by_broker = records.len() - records_held;
    eprintln!(
        "broker: acknowledged records the broker itself lost in its restarts: {lost_by_broker}; final table {}",
        if held == model {
            "== the produced stream's model"
        } else {
            "differs from the produced stream's model (broker loss)"
        }
    );
    eprintln!(
        "broker: 1,200 changes produced, {records_held} held by the broker, 2 broker restarts (SIGKILL, SIGTERM), {} events consumed, {} broker errors, broker breaker opened {} times, {} commits refused, {} rows",
        snap.events_consumed,
        snap.broker_errors,
        snap.broker_breaker_opened,
        snap.commits_refused,
        got.len()
    );
}
