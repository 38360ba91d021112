//! Warehouse faults: a fault-injecting HTTP proxy between floe and the Snowflake emulator
//! answers 500, then 429, then holds its answers past floe's request timeout, then cuts
//! connections, each until the breaker opened (plus 1 s) between healthy periods. The breaker opens and
//! closes; the run never ends on these transient errors; afterwards the target equals
//! the model of the change stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use floe::RunOptions;
use floe::config::SourceKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use floe_integration_tests::http::read_request;

use crate::support::{Rng, env, query, sink_config, snowflake, spawn_run, unique};

pub(crate) const HEALTHY: u8 = 0;
pub(crate) const ERROR_500: u8 = 1;
const TOO_MANY: u8 = 2;
/// Runs the statement, then holds the answer for the proxy's `hold_ms`.
pub(crate) const SLOW: u8 = 3;
const CUT: u8 = 4;

/// A fault-injecting HTTP proxy in front of the Snowflake emulator.
#[derive(Clone)]
pub(crate) struct Proxy {
    pub url: String,
    /// One of the modes above, read per request.
    pub mode: Arc<AtomicU8>,
    /// How long SLOW holds an answer.
    pub hold_ms: Arc<AtomicU64>,
    /// Answers being held right now.
    pub held: Arc<AtomicUsize>,
}

async fn serve(mut client: TcpStream, upstream: String, proxy: Proxy) {
    let mode = &proxy.mode;
    let Some(request) = read_request(&mut client).await else {
        return;
    };
    let canned = |status: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    match mode.load(Ordering::SeqCst) {
        ERROR_500 => {
            let _ = client
                .write_all(canned("500 Internal Server Error").as_bytes())
                .await;
            return;
        }
        TOO_MANY => {
            let _ = client
                .write_all(canned("429 Too Many Requests").as_bytes())
                .await;
            return;
        }
        CUT => return, // dropped without an answer
        _ => {}
    }
    // SLOW holds the answer past floe's request timeout (the statement itself runs at
    // once, as a warehouse that is slow to answer would have run it).
    let slow = mode.load(Ordering::SeqCst) == SLOW;
    let Ok(mut up) = TcpStream::connect(&upstream).await else {
        return;
    };
    if up.write_all(&request).await.is_err() {
        return;
    }
    let mut response = Vec::new();
    if up.read_to_end(&mut response).await.is_ok() {
        if slow {
            proxy.held.fetch_add(1, Ordering::SeqCst);
            let hold = Duration::from_millis(proxy.hold_ms.load(Ordering::SeqCst));
            tokio::time::sleep(hold).await;
            proxy.held.fetch_sub(1, Ordering::SeqCst);
        }
        let _ = client.write_all(&response).await;
    }
}

/// Starts the proxy (healthy; SLOW holds answers 4 s).
pub(crate) async fn proxy(upstream_url: &str) -> Proxy {
    let upstream = upstream_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Proxy {
        url: format!("http://{addr}"),
        mode: Arc::new(AtomicU8::new(HEALTHY)),
        hold_ms: Arc::new(AtomicU64::new(4000)),
        held: Arc::new(AtomicUsize::new(0)),
    };
    let p = proxy.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(client, upstream.clone(), p.clone()));
        }
    });
    proxy
}

/// A change stream over 60 keys in the fixture format, and the model's final table.
fn stream(path: &std::path::Path, changes: usize) -> BTreeMap<i64, i64> {
    let mut rng = Rng(42);
    let mut model = BTreeMap::new();
    let mut lines = Vec::new();
    for i in 0..changes {
        let id = rng.below(60) as i64;
        let lsn = 1000 + i as i64;
        let line = match (model.contains_key(&id), rng.below(5)) {
            (true, 0) => {
                model.remove(&id);
                serde_json::json!({"topic": "dbz.public.fault_items", "key": {"id": id},
                    "value": {"op": "d", "before": {"id": id}, "after": null,
                              "source": {"schema": "public", "table": "fault_items", "lsn": lsn}}})
            }
            (exists, _) => {
                let n = rng.below(1_000_000) as i64;
                model.insert(id, n);
                serde_json::json!({"topic": "dbz.public.fault_items", "key": {"id": id},
                    "value": {"op": if exists { "u" } else { "c" }, "before": null, "after": {"id": id, "n": n},
                              "source": {"schema": "public", "table": "fault_items", "lsn": lsn}}})
            }
        };
        lines.push(line.to_string());
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Snowflake emulator: make test"]
async fn breaker_rides_out_500s_429s_timeouts_and_cut_connections() {
    let proxy = proxy(&env("FLOE_SNOWFLAKE_URL")).await;
    let (mode, url) = (proxy.mode.clone(), proxy.url.clone());
    let run = unique("faults");
    let database = run.to_uppercase();
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("changes.jsonl");
    let model = stream(&file, 900);

    let mut config = sink_config(&database);
    config.sink.snowflake.account_url = url;
    config.sink.snowflake.request_timeout_secs = 1;
    config.source.kind = SourceKind::File;
    config.source.file.paths = vec![file];
    config.batch.max_rows = 30;
    config.delivery.breaker_open_ms = 300;
    config.delivery.breaker_max_open_ms = 600;
    let options = RunOptions {
        load_attempts: Some(2),
        ..RunOptions::default()
    };
    let (_stop, stats, handle) = spawn_run(config, options);

    // Each fault starts after a few more committed batches.
    let started = Instant::now();
    let mut faults_seen = Vec::new();
    for (after_commits, fault) in [(3, ERROR_500), (8, TOO_MANY), (13, SLOW), (18, CUT)] {
        while stats.snapshot().commits < after_commits {
            assert!(
                !handle.is_finished(),
                "run ended early: {:?}",
                stats.snapshot()
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "stuck: {:?}",
                stats.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The fault lasts until the breaker opened (at most 20 s: a loaded CI machine
        // may take several seconds to exhaust the attempts), then 1 s more.
        let before = stats.snapshot().breaker_opened;
        mode.store(fault, Ordering::SeqCst);
        let fault_started = Instant::now();
        while stats.snapshot().breaker_opened == before
            && fault_started.elapsed() < Duration::from_secs(20)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let during = stats.snapshot();
        mode.store(HEALTHY, Ordering::SeqCst);
        faults_seen.push((fault, during.breaker_opened - before, during.breaker_state));
    }
    let snap = tokio::time::timeout(Duration::from_secs(120), handle)
        .await
        .expect("run did not finish")
        .unwrap()
        .expect("transient faults never end the run");
    for (fault, opened, state) in &faults_seen {
        assert!(
            *opened >= 1,
            "fault {fault}: the breaker did not open: {faults_seen:?}"
        );
        assert_ne!(*state, "closed", "fault {fault}: {faults_seen:?}");
    }
    assert_eq!(snap.breaker_state, "closed", "{snap:?}");
    assert_eq!(
        (snap.events_rejected, snap.events_failed),
        (0, 0),
        "{snap:?}"
    );

    let sf = snowflake().await;
    let got = query(
        &sf,
        &format!(r#"SELECT "ID", "N" FROM "{database}"."CDC"."FAULT_ITEMS" ORDER BY "ID""#),
    )
    .await;
    let want: Vec<Vec<String>> = model
        .iter()
        .map(|(id, n)| vec![id.to_string(), n.to_string()])
        .collect();
    assert_eq!(got, want, "target == model after the faults");
    eprintln!(
        "faults: 900 changes, 4 fault windows (500, 429, 4 s stalls vs a 1 s timeout, cut connections), breaker opened {} times, {} load retries",
        snap.breaker_opened, snap.load_retries
    );
}
