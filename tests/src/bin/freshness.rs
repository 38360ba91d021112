//! `freshness`: how long a change takes from its PostgreSQL commit to being visible in the
//! warehouse, the freshness step of `make bench` (dev/bench.sh, docs/benchmarks.md).
//!
//! Polls one target table that only ever receives inserts with ids `--above-id + 1, + 2,
//! ...` (a sequence): every `--poll-ms` it asks for the rows above the highest id up to
//! which every row was seen (rows of different Kafka partitions become visible out of id
//! order), and for each row not seen before takes "now" minus its `"__SOURCE_TS_MS"`
//! (Debezium's `source.ts_ms`, the PostgreSQL commit time) as the row's latency. Now is taken when the answer arrives, so a
//! latency is high by at most one poll interval plus one query (the `poll` figures in the
//! output give both). Stops after `--rows` rows or when none arrived for `--idle-secs`
//! after the first, and prints one JSON object on stdout:
//!
//! ```json
//! {"rows": 120000, "p50_ms": 3100, "p90_ms": 5200, "p99_ms": 5900, "max_ms": 6300,
//!  "mean_ms": 3050.2, "polls": 812, "poll_ms": 100, "query_ms_mean": 21.4,
//!  "query_ms_max": 180, "complete": true}
//! ```
//!
//! Both clocks are this machine's (PostgreSQL runs beside it), so no clock skew enters.
//! Exits 1 when fewer than `--rows` rows were seen.
//!
//! With `--brokers` and `--topic`, it also reads the topic (a group of its own) and splits
//! each row's latency at its message's Kafka timestamp (the time Debezium's producer made
//! the record): `debezium_*` is commit → in Kafka, `floe_*` is in Kafka → visible (floe's
//! batching, processing and load, plus the emulator), each as p50/p99/max.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "freshness",
    about = "Commit-to-visible latency of the rows of an insert-only table"
)]
struct Args {
    /// The emulator's (or account's) base URL.
    #[arg(
        long,
        env = "FLOE_SNOWFLAKE_URL",
        default_value = "http://127.0.0.1:17080"
    )]
    account_url: String,
    /// The target table, quoted as it must appear in SQL, e.g. `"BENCH"."CDC"."T"`.
    #[arg(long)]
    table: String,
    /// Rows to wait for.
    #[arg(long)]
    rows: u64,
    /// The measured rows' ids start right above this one (rows before them, e.g. a
    /// warm-up row, are not counted).
    #[arg(long)]
    above_id: Option<i64>,
    /// Poll interval.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Stop when no new row arrived for this long after the first one.
    #[arg(long, default_value_t = 60.0)]
    idle_secs: f64,
    /// Give up when no row arrived this long after start.
    #[arg(long, default_value_t = 300.0)]
    start_timeout_secs: f64,
    /// Kafka bootstrap servers, to split each latency at the message's Kafka timestamp.
    #[arg(long, requires = "topic")]
    brokers: Option<String>,
    /// The table's Debezium topic (with `--brokers`).
    #[arg(long, requires = "brokers")]
    topic: Option<String>,
}

/// Kafka timestamp (ms) of each change message of `topic`, by the row's `id`, read from
/// the beginning of every partition until the process ends. The partitions are assigned,
/// not subscribed to: no group join (15 s against tansu) delays the first message.
fn kafka_times(
    brokers: &str,
    topic: &str,
) -> anyhow::Result<std::sync::Arc<std::sync::Mutex<std::collections::HashMap<i64, i64>>>> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("freshness-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .create()
        .context("a Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .context("the topic's metadata")?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment
                .add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                .context("assignment")?;
        }
    }
    anyhow::ensure!(assignment.count() > 0, "topic {topic} has no partitions");
    consumer.assign(&assignment).context("assign")?;
    let times = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let out = times.clone();
    std::thread::spawn(move || {
        loop {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let (Some(ts), Some(value)) = (m.timestamp().to_millis(), m.payload()) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(value) else {
                continue;
            };
            let envelope = v.get("payload").unwrap_or(&v);
            if let Some(id) = envelope.pointer("/after/id").and_then(|id| id.as_i64()) {
                times.lock().unwrap().insert(id, ts);
            }
        }
    });
    Ok(out)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The `q`-quantile of sorted values (nearest rank).
fn quantile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = floe_integration_tests::emulator(&args.account_url)
        .await
        .context("login to the emulator")?;

    let kafka = match (&args.brokers, &args.topic) {
        (Some(b), Some(t)) => Some(kafka_times(b, t)?),
        _ => None,
    };
    // (id, source commit ms, seen ms) of each measured row.
    let mut rows: Vec<(i64, i64, i64)> = Vec::with_capacity(args.rows as usize);
    let started = Instant::now();
    let mut last_new: Option<Instant> = None;
    // Every id up to `contiguous` was seen; `seen` holds the ones seen above it.
    let mut contiguous: i64 = args.above_id.unwrap_or(0);
    let mut seen: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut latencies: Vec<i64> = Vec::with_capacity(args.rows as usize);
    let (mut polls, mut query_total, mut query_max) = (0u64, Duration::ZERO, Duration::ZERO);
    let poll = Duration::from_millis(args.poll_ms);
    while (latencies.len() as u64) < args.rows {
        match last_new {
            Some(t) if t.elapsed().as_secs_f64() > args.idle_secs => break,
            None if started.elapsed().as_secs_f64() > args.start_timeout_secs => break,
            _ => {}
        }
        let sql = format!(
            r#"SELECT "ID", "__SOURCE_TS_MS" FROM {} WHERE "ID" > {contiguous}"#,
            args.table
        );
        let asked = Instant::now();
        // The table appears with floe's first load; until then the query fails.
        let answer = client.execute(&sql, &[]).await;
        let took = asked.elapsed();
        let seen_at = now_ms();
        polls += 1;
        query_total += took;
        query_max = query_max.max(took);
        if let Ok(answer) = answer {
            let before = latencies.len();
            for row in answer.rows {
                let field = |i: usize| -> anyhow::Result<i64> {
                    row.get(i)
                        .and_then(|v| v.as_deref())
                        .context("a NULL id or source time")?
                        .parse::<i64>()
                        .context("a non-integer id or source time")
                };
                let (id, source_ts) = (field(0)?, field(1)?);
                if seen.insert(id) {
                    latencies.push(seen_at - source_ts);
                    rows.push((id, source_ts, seen_at));
                }
            }
            while seen.remove(&(contiguous + 1)) {
                contiguous += 1;
            }
            if latencies.len() > before {
                last_new = Some(Instant::now());
            }
        }
        tokio::time::sleep(poll.saturating_sub(took)).await;
    }

    let complete = latencies.len() as u64 >= args.rows;
    let mean = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().sum::<i64>() as f64 / latencies.len() as f64
    };
    latencies.sort_unstable();
    // Commit → Kafka and Kafka → visible, for the rows whose message was read.
    let (mut debezium, mut floe) = (Vec::new(), Vec::new());
    if let Some(kafka) = &kafka {
        // The consumer may still be behind the last rows: give it up to 30 s.
        for _ in 0..300 {
            let all_read = {
                let times = kafka.lock().unwrap();
                rows.iter().all(|r| times.contains_key(&r.0))
            };
            if all_read {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let times = kafka.lock().unwrap();
        for (id, source_ts, seen_at) in &rows {
            if let Some(kafka_ts) = times.get(id) {
                debezium.push(kafka_ts - source_ts);
                floe.push(seen_at - kafka_ts);
            }
        }
        debezium.sort_unstable();
        floe.sort_unstable();
    }
    let split = |v: &[i64]| {
        serde_json::json!({
            "p50_ms": quantile(v, 0.50),
            "p99_ms": quantile(v, 0.99),
            "max_ms": v.last().copied().unwrap_or(0),
        })
    };
    let mut out = serde_json::json!({
        "rows": latencies.len(),
        "p50_ms": quantile(&latencies, 0.50),
        "p90_ms": quantile(&latencies, 0.90),
        "p99_ms": quantile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or(0),
        "mean_ms": (mean * 10.0).round() / 10.0,
        "polls": polls,
        "poll_ms": args.poll_ms,
        "query_ms_mean": if polls == 0 { 0.0 } else {
            (query_total.as_secs_f64() * 1000.0 / polls as f64 * 10.0).round() / 10.0
        },
        "query_ms_max": query_max.as_millis() as u64,
        "complete": complete,
    });
    if kafka.is_some() {
        out["kafka_matched"] = debezium.len().into();
        if !debezium.is_empty() {
            out["debezium"] = split(&debezium);
            out["floe"] = split(&floe);
        }
    }
    println!("{out}");
    if !complete {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
