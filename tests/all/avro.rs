//! Avro through the Schema Registry, live: real Debezium with Confluent's AvroConverter
//! (`dev/stack.sh debezium-exec NAME floe.format=avro`) registering its schemas in the
//! dev stack's registry stand-in. (The same all-types workload as JSON is in
//! live_types.rs.)

use std::time::{Duration, Instant};

use floe::RunOptions;
use floe::config::SchemaRegistryConfig;

use crate::support::{
    Debezium, env, kafka_config, psql, read_topic, snowflake, spawn_run, unique, wait_for_rows,
};

/// `dev/stack.sh <action> registry`.
fn registry(action: &str) {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new(root.join("dev/stack.sh"))
        .args([action, "registry"])
        .status()
        .expect("dev/stack.sh");
    assert!(status.success(), "dev/stack.sh {action} registry");
}

/// Starts the registry again when dropped (a failed test leaves the stack whole).
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        registry("start");
    }
}

/// The registry is down when floe starts on a topic whose schemas it has never seen:
/// the batch waits behind the registry's breaker (nothing dead-lettered, nothing
/// committed), and once the registry is back every change lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn a_registry_outage_is_waited_out_with_nothing_lost() {
    let run = unique("regout");
    let t = format!("{run}_items");
    let database = run.to_uppercase();
    psql(&format!(
        "CREATE TABLE public.{t} (id int PRIMARY KEY, v text, amount numeric(10,2))"
    ));
    let topic = format!("{run}.public.{t}");
    {
        let table_list = format!("table.include.list=public.{t}");
        let _forwarder = Debezium::start(
            &run,
            &["floe.format=avro", "snapshot.mode=no_data", &table_list],
        );
        psql(&format!(
            "INSERT INTO public.{t} SELECT i, 'item ' || i, i * 1.25 FROM generate_series(1, 50) i;
             UPDATE public.{t} SET v = v || ' updated' WHERE id % 4 = 0;
             DELETE FROM public.{t} WHERE id % 10 = 0;"
        ));
        // 50 inserts, 12 updates, 5 deletes and their 5 tombstones.
        let deadline = Instant::now() + Duration::from_secs(120);
        while read_topic(&env("FLOE_KAFKA_BROKERS"), &topic).len() < 72 {
            assert!(
                Instant::now() < deadline,
                "the forwarder did not write 72 records"
            );
        }
    }
    let all = read_topic(&env("FLOE_KAFKA_BROKERS"), &topic);
    assert!(
        all.iter()
            .filter_map(|m| rdkafka::Message::payload(m))
            .all(|v| v.first() == Some(&0)),
        "Avro values in the Confluent wire format"
    );

    registry("stop");
    let restart = Restart;
    let mut config = kafka_config(&database, &run, vec![topic.clone()]);
    config.source.schema_registry = Some(SchemaRegistryConfig {
        timeout_ms: 2_000,
        ..SchemaRegistryConfig::at(env("FLOE_REGISTRY_URL"))
    });
    config.delivery.breaker_open_ms = 1_000;
    let (stop, stats, handle) = spawn_run(config, RunOptions::default());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let snap = stats.snapshot();
        if snap.registry_errors >= 3 && snap.registry_breaker_opened >= 1 {
            assert_eq!(
                (snap.rows_loaded, snap.dead_letters),
                (0, 0),
                "nothing loaded or dead-lettered while the registry is down: {snap:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "floe did not wait for the registry: {snap:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(restart);

    let sf = snowflake().await;
    let source = psql(&format!(
        "SELECT id::text, v, amount::text FROM public.{t} src ORDER BY src.id"
    ));
    assert_eq!(source.len(), 45);
    let sql = format!(
        r#"SELECT "ID", "V", "AMOUNT" FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
        t.to_uppercase()
    );
    let got = wait_for_rows(&sf, &sql, &source, 120).await;
    assert_eq!(
        got, source,
        "every change landed once the registry was back"
    );
    stop.send(true).unwrap();
    let snap = handle.await.unwrap().expect("floe run");
    assert_eq!(snap.dead_letters, 0, "{snap:?}");
    assert_eq!(snap.registry_breaker_state, "closed", "{snap:?}");
    assert_eq!(snap.events_consumed, 72, "{snap:?}");
}
