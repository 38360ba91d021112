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

/// The registry goes down mid-run. A running floe reads on from its cache (the
/// converter's too: the changes keep the schemas both have seen); a floe that has not
/// seen the schemas (another consumer group, replaying the topic) waits behind the
/// registry's breaker, nothing loaded, dead-lettered or committed; once the registry
/// is back every change lands, in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn a_registry_outage_mid_run_is_survived_with_nothing_lost() {
    let run = unique("regout");
    let t = format!("{run}_items");
    let (database, replay_database) =
        (run.to_uppercase(), format!("{}_REPLAY", run.to_uppercase()));
    psql(&format!(
        "CREATE TABLE public.{t} (id int PRIMARY KEY, v text, amount numeric(10,2))"
    ));
    let topic = format!("{run}.public.{t}");
    let table_list = format!("table.include.list=public.{t}");
    // No heartbeats: their schema would first be registered at a moment of their choosing.
    let forwarder = Debezium::start(
        &run,
        &[
            "floe.format=avro",
            "snapshot.mode=no_data",
            "heartbeat.interval.ms=0",
            &table_list,
        ],
    );
    let registry_config = || {
        Some(SchemaRegistryConfig {
            timeout_ms: 2_000,
            ..SchemaRegistryConfig::at(env("FLOE_REGISTRY_URL"))
        })
    };
    let mut config = kafka_config(&database, &run, vec![topic.clone()]);
    config.source.schema_registry = registry_config();
    config.delivery.breaker_open_ms = 1_000;
    let (stop, stats, handle) = spawn_run(config.clone(), RunOptions::default());
    let sf = snowflake().await;
    let source = || {
        psql(&format!(
            "SELECT id::text, v, amount::text FROM public.{t} src ORDER BY src.id"
        ))
    };
    let target = |db: &str| {
        format!(
            r#"SELECT "ID", "V", "AMOUNT" FROM "{db}"."CDC"."{}" ORDER BY "ID""#,
            t.to_uppercase()
        )
    };

    // Phase 1, the registry up: inserts (the first of their schemas).
    psql(&format!(
        "INSERT INTO public.{t} SELECT i, 'item ' || i, i * 1.25 FROM generate_series(1, 50) i"
    ));
    let want = source();
    assert_eq!(want.len(), 50);
    assert_eq!(
        wait_for_rows(&sf, &target(&database), &want, 120).await,
        want
    );

    // Phase 2, the registry down: updates and deletes, same schemas.
    registry("stop");
    let restart = Restart;
    psql(&format!(
        "UPDATE public.{t} SET v = v || ' updated' WHERE id % 4 = 0;
         DELETE FROM public.{t} WHERE id % 10 = 0;"
    ));
    let want = source();
    assert_eq!(want.len(), 45);
    assert_eq!(
        wait_for_rows(&sf, &target(&database), &want, 120).await,
        want,
        "a running floe reads on from its cache"
    );
    assert_eq!(stats.snapshot().registry_errors, 0);
    // 50 inserts, 12 updates, 5 deletes and their 5 tombstones.
    let all = read_topic(&env("FLOE_KAFKA_BROKERS"), &topic);
    assert_eq!(all.len(), 72);
    assert!(
        all.iter()
            .filter_map(|m| rdkafka::Message::payload(m))
            .all(|v| v.first() == Some(&0)),
        "Avro values in the Confluent wire format"
    );
    drop(forwarder);

    // A floe that never saw the schemas, still during the outage.
    let mut replay = kafka_config(
        &replay_database,
        &format!("{run}-replay"),
        vec![topic.clone()],
    );
    replay.source.schema_registry = registry_config();
    replay.delivery.breaker_open_ms = 1_000;
    let (replay_stop, replay_stats, replay_handle) = spawn_run(replay, RunOptions::default());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let snap = replay_stats.snapshot();
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
    assert_eq!(
        wait_for_rows(&sf, &target(&replay_database), &want, 120).await,
        want,
        "every change landed once the registry was back"
    );
    for (stop, handle) in [(stop, handle), (replay_stop, replay_handle)] {
        stop.send(true).unwrap();
        let snap = handle.await.unwrap().expect("floe run");
        assert_eq!(snap.dead_letters, 0, "{snap:?}");
        assert_eq!(snap.registry_breaker_state, "closed", "{snap:?}");
        assert_eq!(snap.events_consumed, 72, "{snap:?}");
    }
}

/// The registry stand-in over HTTPS with basic auth, on a port of its own: floe trusts
/// it through `ca_file` and authenticates; a wrong password and an untrusted
/// certificate are errors that stop the run, not transient ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack's tools (python3, openssl): make test"]
async fn https_basic_auth_and_a_private_ca() {
    use floe_batch::avro::SchemaRegistry;
    use std::collections::BTreeSet;
    use std::io::BufRead;

    let dir = std::env::temp_dir().join(unique("floe-registry-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // A server certificate, not a CA (which rustls refuses as a server's).
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{made:?}");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = std::process::Command::new("python3")
        .arg(root.join("dev/registry/registry.py"))
        .args(["--port", "0", "--basic-auth", "floe:s3cret", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("registry.py");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let child = Killed(child);
    let url = loop {
        let line = lines.next().expect("registry.py output").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    assert!(url.starts_with("https://"), "{url}");

    // Register a schema as the AvroConverter would.
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let answer: serde_json::Value = http
        .post(format!("{url}/subjects/t-value/versions"))
        .basic_auth("floe", Some("s3cret"))
        .json(&serde_json::json!({"schema": r#"{"type":"record","name":"V","fields":[{"name":"id","type":"int"}]}"#}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["id"].as_u64().unwrap() as u32;

    let mut cfg = SchemaRegistryConfig::at(&url);
    cfg.username = Some("floe".into());
    cfg.password = Some("s3cret".into());
    cfg.ca_file = Some(cert.clone());
    let registry = SchemaRegistry::new(&cfg).unwrap();
    let resolved = registry.resolve(&BTreeSet::from([id])).await.unwrap();
    let json = resolved
        .decode(&[0, 0, 0, 0, id as u8, 84])
        .unwrap()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["payload"], serde_json::json!({"id": 42}));
    assert_eq!(registry.cached(), 1);

    cfg.password = Some("wrong".into());
    let e = (SchemaRegistry::new(&cfg).unwrap())
        .resolve(&BTreeSet::from([id]))
        .await
        .unwrap_err();
    assert!(!e.is_retryable() && e.to_string().contains("401"), "{e}");
    cfg.ca_file = None;
    let e = (SchemaRegistry::new(&cfg).unwrap())
        .resolve(&BTreeSet::from([id]))
        .await
        .unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("ca_file"),
        "{e}"
    );
    drop(child);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
