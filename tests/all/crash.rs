//! Crash test: a mixed workload of 21,200 changes (inserts, two rounds of updates of every
//! row, deletes, new rows, re-inserts of deleted keys) streams from PostgreSQL through the
//! real Debezium connector while the `floe` binary is killed with SIGKILL at 12 random
//! moments and restarted each time. Afterwards the target equals the source value by
//! value, and every row's `__LSN` is the LSN of the last change of its key in the topic:
//! no change was applied out of order, however the kills cut the batches.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::Message as _;

use crate::support::{Rng, env, floe_bin, psql, query, read_topic, snowflake, unique};

/// The workload, in steps applied a second or two apart.
fn steps(table: &str) -> (Vec<String>, u64) {
    let t = format!("public.{table}");
    let mut steps = Vec::new();
    for k in 0..6 {
        let (a, b) = (k * 1000 + 1, k * 1000 + 1000);
        steps.push(format!(
            "INSERT INTO {t} SELECT i, md5(i::text), i FROM generate_series({a}, {b}) i;"
        ));
    }
    for round in 0..2 {
        for k in 0..4 {
            steps.push(format!(
                "UPDATE {t} SET v = md5(v || '{round}'), n = n * 3 + {k} WHERE id % 4 = {k};"
            ));
        }
    }
    steps.push(format!("DELETE FROM {t} WHERE id % 10 = 0;"));
    steps.push(format!(
        "INSERT INTO {t} SELECT i, 'late ' || i, -i FROM generate_series(6001, 8000) i;"
    ));
    steps.push(format!(
        "INSERT INTO {t} SELECT i, 'again ' || i, 0 FROM generate_series(10, 6000, 10) i;"
    ));
    (steps, 6000 + 12_000 + 600 + 2000 + 600)
}

/// Per key, the LSN of its last change event in the topic (deletes included).
fn last_lsn_per_key(topic: &str) -> HashMap<String, i64> {
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in read_topic(&env("FLOE_KAFKA_BROKERS"), topic) {
        let Some(value) = m.payload() else { continue };
        let v: serde_json::Value = serde_json::from_slice(value).unwrap();
        let payload = &v["payload"];
        let (Some(lsn), Some(key)) = (payload["source"]["lsn"].as_i64(), m.key()) else {
            continue;
        };
        let k: serde_json::Value = serde_json::from_slice(key).unwrap();
        let id = k["payload"]["id"].to_string();
        let e = last.entry(id).or_insert(lsn);
        *e = (*e).max(lsn);
    }
    last
}

#[test]
#[ignore = "needs the dev stack and the floe binary: make test"]
fn sigkill_at_random_moments_loses_and_reorders_nothing() {
    let run = unique("crash");
    let table = format!("{run}_items");
    let topic = format!("dbz.public.{table}");
    let database = run.to_uppercase();
    psql(&format!(
        "CREATE TABLE public.{table} (id int PRIMARY KEY, v text, n bigint);"
    ));
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("floe.toml");
    std::fs::write(
        &config,
        format!(
            r#"[source.kafka]
brokers = "{brokers}"
group_id = "{run}-group"
topics = ["{topic}"]
session_timeout_ms = 10000

[batch]
max_rows = 1500
max_wait_ms = 300

[sink.snowflake]
account_url = "{url}"
database = "{database}"
schema = "CDC"
table_name = "{{table}}"
"#,
            brokers = env("FLOE_KAFKA_BROKERS"),
            url = env("FLOE_SNOWFLAKE_URL"),
        ),
    )
    .unwrap();
    let floe = floe_bin();
    let start = |extra: &[&str]| {
        Command::new(&floe)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .args(extra)
            .env("FLOE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start floe")
    };

    let (steps, changes) = steps(&table);
    assert!(changes >= 20_000);
    let workload = std::thread::spawn(move || {
        for s in steps {
            psql(&s);
            std::thread::sleep(Duration::from_millis(1500));
        }
    });

    // 12 kills at random moments: some during the consumer-group join, some while
    // batches are loading or committing.
    let mut rng = Rng(0xC0FFEE);
    let kills = 12;
    for _ in 0..kills {
        let mut child = start(&[]);
        std::thread::sleep(Duration::from_millis(1500 + rng.below(7500)));
        if let Some(status) = child.try_wait().unwrap() {
            panic!("floe exited by itself: {status}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    workload.join().unwrap();

    // The last run catches up (it may first wait for the killed members' sessions to
    // expire), then SIGTERM stops it gracefully.
    let last_run = start(&[]);
    let source = psql(&format!(
        "SELECT id::text, v, n::text FROM public.{table} t ORDER BY t.id"
    ));
    assert_eq!(source.len(), 8000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let target_sql = format!(
        r#"SELECT "ID", "V", "N", "__LSN" FROM "{database}"."CDC"."{}" ORDER BY "ID""#,
        table.to_uppercase()
    );
    let deadline = Instant::now() + Duration::from_secs(240);
    let target = rt.block_on(async {
        let sf = snowflake().await;
        loop {
            if let Ok(r) = sf.execute(&target_sql, &[]).await
                && r.rows.len() == source.len()
            {
                let t = query(&sf, &target_sql).await;
                let values: Vec<&[String]> = t.iter().map(|r| &r[..3]).collect();
                let want: Vec<&[String]> = source.iter().map(|r| &r[..]).collect();
                if values == want {
                    break t;
                }
            }
            assert!(
                Instant::now() < deadline,
                "target never caught up with the source"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let term = Command::new("kill")
        .args(["-TERM", &last_run.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = last_run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "final run after SIGTERM: {:?}",
        out.status
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["events_rejected"], 0, "{stats}");
    assert_eq!(stats["events_failed"], 0, "{stats}");

    // Every row carries the LSN of its key's last change: nothing applied out of order.
    let last = last_lsn_per_key(&topic);
    for t in &target {
        let want = last
            .get(&t[0])
            .unwrap_or_else(|| panic!("key {} not in the topic", t[0]));
        assert_eq!(t[3], want.to_string(), "row {} applied out of order", t[0]);
    }
    eprintln!(
        "crash: {changes} changes, {kills} SIGKILLs, {} rows compared; final run consumed {} events",
        target.len(),
        stats["events_consumed"]
    );
}
