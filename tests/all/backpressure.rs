//! Back-pressure: with ~120 MB of changes waiting in the broker and a warehouse that
//! holds every answer for 2 s, the `floe` binary's peak memory (VmHWM) stays bounded by
//! `source.kafka.max_prefetch_bytes`: a 4 MiB budget keeps it far below the backlog, and
//! the budget is what decides it (a 256 MiB budget lets it grow by the backlog it
//! prefetches).

use std::path::Path;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::faults::{SLOW, proxy};
use crate::shutdown::{start, terminate};
use crate::support::{env, unique};

/// 60,000 changes of ~2 KB each on 2,000 keys.
async fn produce_backlog(topic: &str) -> usize {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env("FLOE_KAFKA_BROKERS"))
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .unwrap();
    let pad = "x".repeat(2000);
    let mut bytes = 0;
    let mut sends = Vec::new();
    for i in 0..60_000i64 {
        let id = i % 2000;
        let key = serde_json::json!({ "id": id }).to_string();
        let value = serde_json::json!({"op": "u", "before": null,
            "after": {"id": id, "v": format!("{i}{pad}")},
            "source": {"schema": "public", "table": "bp_items", "lsn": 10 + i}})
        .to_string();
        bytes += key.len() + value.len();
        sends.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .unwrap(),
        );
        if sends.len() >= 5000 {
            for s in sends.drain(..) {
                s.await.unwrap().unwrap();
            }
        }
    }
    for s in sends {
        s.await.unwrap().unwrap();
    }
    bytes
}

/// The process's peak resident memory, in bytes.
fn peak_rss(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

fn write_config(path: &Path, run: &str, group: &str, topic: &str, url: &str, prefetch: usize) {
    std::fs::write(
        path,
        format!(
            r#"[source.kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{topic}"]
session_timeout_ms = 10000
max_prefetch_bytes = {prefetch}

[batch]
max_rows = 500
max_bytes = 1048576
max_wait_ms = 200

[sink.snowflake]
account_url = "{url}"
database = "{database}"
schema = "CDC"
table_name = "{{table}}"
request_timeout_secs = 300

[delivery]
shutdown_timeout_ms = 500
"#,
            brokers = env("FLOE_KAFKA_BROKERS"),
            database = run.to_uppercase(),
        ),
    )
    .unwrap();
}

/// Runs floe against the backlog through a warehouse answering in 2 s, for 12 s
/// after its first commit; returns its peak RSS.
async fn peak_with(run: &str, topic: &str, url: &str, prefetch: usize) -> u64 {
    let dir = std::env::temp_dir().join(run);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join(format!("floe-{prefetch}.toml"));
    let metrics = dir.join(format!("metrics-{prefetch}.json"));
    write_config(&config, run, &unique("bp-group"), topic, url, prefetch);
    let mut floe = start(&config, &metrics, &[]);
    let started = Instant::now();
    while crate::shutdown::commits(&metrics) < 1 {
        assert!(floe.try_wait().unwrap().is_none(), "floe exited");
        assert!(started.elapsed() < Duration::from_secs(120), "no commit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    let peak = peak_rss(&floe);
    let commits = crate::shutdown::commits(&metrics);
    let (code, _) = terminate(&mut floe).await;
    assert_eq!(code, Some(0));
    eprintln!(
        "backpressure: max_prefetch_bytes {prefetch}: peak RSS {:.1} MiB after {commits} slow commits",
        peak as f64 / 1048576.0
    );
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack and the floe binary: make test"]
async fn memory_stays_bounded_by_the_prefetch_budget_when_the_warehouse_is_slow() {
    let run = unique("bp");
    let topic = format!("dbz.public.{run}_items");
    let backlog = produce_backlog(&topic).await;
    assert!(backlog > 120_000_000, "{backlog}");

    let proxy = proxy(&env("FLOE_SNOWFLAKE_URL")).await;
    proxy.hold_ms.store(2000, Ordering::SeqCst);
    proxy.mode.store(SLOW, Ordering::SeqCst);

    let small = peak_with(&run, &topic, &proxy.url, 4 << 20).await;
    let large = peak_with(&run, &topic, &proxy.url, 256 << 20).await;
    eprintln!(
        "backpressure: backlog {:.0} MB; peak RSS {:.1} MiB with a 4 MiB budget, {:.1} MiB with 256 MiB",
        backlog as f64 / 1e6,
        small as f64 / 1048576.0,
        large as f64 / 1048576.0
    );
    assert!(
        small < 100 << 20,
        "4 MiB budget: peak RSS {small} bytes (the backlog is {backlog})"
    );
    assert!(
        large > small + (50 << 20),
        "the budget decides: {large} vs {small}"
    );
}
