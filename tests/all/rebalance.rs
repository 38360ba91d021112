//! Rebalances under load: two `floe` processes in one consumer group share a 4-partition
//! topic while changes stream in. A second member joins mid-stream (partitions revoked
//! from the first and split), then leaves on SIGTERM (its partitions go back). Batches
//! being collected drop the revoked partitions' messages; a commit the group refuses is
//! given up (the new owner replays). Afterwards the target equals the model.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;

use crate::broker::{model_query, produce, stream};
use crate::shutdown::{commits, start, terminate, write_config};
use crate::support::{env, query, snowflake, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack and the floe binary: make test"]
async fn members_joining_and_leaving_mid_stream_lose_nothing() {
    let run = unique("rebalance");
    let table = format!("{run}_items");
    let topic = format!("dbz.public.{table}");
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).unwrap();
    let (records, model) = stream(&table, 3000);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env("FLOE_KAFKA_BROKERS"))
        .set("acks", "all")
        .create()
        .unwrap();
    let config = dir.join("floe.toml");
    write_config(&config, &run, &topic, &env("FLOE_SNOWFLAKE_URL"), 10_000);
    let (metrics_a, metrics_b) = (dir.join("a.json"), dir.join("b.json"));

    produce(&producer, &topic, &records[..600]).await;
    let mut a = start(&config, &metrics_a, &[]);
    let started = Instant::now();
    while commits(&metrics_a) < 3 {
        assert!(a.try_wait().unwrap().is_none(), "member A exited");
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "A never committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // B joins while changes keep arriving.
    let mut b = start(&config, &metrics_b, &[]);
    let mut next = 600;
    let started = Instant::now();
    while commits(&metrics_b) < 2 || next < 1800 {
        assert!(a.try_wait().unwrap().is_none(), "member A exited");
        assert!(b.try_wait().unwrap().is_none(), "member B exited");
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "B never got partitions"
        );
        if next < 1800 {
            produce(&producer, &topic, &records[next..next + 50]).await;
            next += 50;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // B leaves (SIGTERM) while the rest arrives; A takes its partitions back.
    let tail = records[1800..].to_vec();
    let p2 = producer.clone();
    let topic2 = topic.clone();
    let producing = tokio::spawn(async move {
        for chunk in tail.chunks(50) {
            produce(&p2, &topic2, chunk).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code_b, _) = terminate(&mut b).await;
    assert_eq!(code_b, Some(0), "B exits 0 on SIGTERM");
    let commits_b = commits(&metrics_b);
    producing.await.unwrap();

    // A alone catches up.
    let (sql, want) = model_query(&run, &table, &model);
    let sf = snowflake().await;
    let started = Instant::now();
    loop {
        if query(&sf, &sql).await == want {
            break;
        }
        assert!(a.try_wait().unwrap().is_none(), "member A exited");
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "target never equalled the model"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (code_a, _) = terminate(&mut a).await;
    assert_eq!(code_a, Some(0), "A exits 0 on SIGTERM");
    let stats_a: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metrics_a).unwrap()).unwrap();
    eprintln!(
        "rebalance: 3,000 changes, member B joined and left mid-stream; A {} commits ({} refused after a rebalance), B {commits_b} commits; {} rows == model",
        stats_a["commits"],
        stats_a["commits_refused"],
        want.len()
    );
}
