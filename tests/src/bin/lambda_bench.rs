//! Times the Lambda's `bootstrap` as the Lambda service runs it, against the Runtime API
//! emulator: the cold start (process start to the first invocation answered, that
//! invocation included) and warm invocations, each an MSK event of `--records` Debezium
//! inserts (real Debezium output as the template, a new key and LSN per record, so each
//! invocation loads new rows). Prints one JSON object. Run by `dev/bench-lambda.sh`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Parser;
use floe_integration_tests::runtime_api::RuntimeApi;

#[derive(Parser)]
struct Args {
    /// The command that runs bootstrap (split on whitespace, e.g. a qemu prefix).
    #[arg(long)]
    bootstrap: String,
    /// The package's precompiled components (`components.precompiled_dir`).
    #[arg(long)]
    components: PathBuf,
    /// A Debezium fixture (JSON lines); its first record with an `after` is the template.
    #[arg(long)]
    fixture: PathBuf,
    /// Records per invocation.
    #[arg(long, default_value_t = 1000)]
    records: usize,
    /// Warm invocations after the first.
    #[arg(long, default_value_t = 20)]
    warm: usize,
    /// `none` or `snowflake`.
    #[arg(long, default_value = "none")]
    sink: String,
    /// The Snowflake emulator's URL (sink snowflake).
    #[arg(long, default_value = "")]
    snowflake_url: String,
    /// Target database (sink snowflake).
    #[arg(long, default_value = "LAMBDA_BENCH")]
    database: String,
    /// Topic of the records.
    #[arg(long, default_value = "bench.public.items")]
    topic: String,
    /// Memory size the function is told it has (MB).
    #[arg(long, default_value_t = 1024)]
    memory_mb: u32,
}

/// The template record: the fixture's first change with an `after` row.
fn template(path: &PathBuf) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let payload = &v["value"]["payload"];
        if payload["after"].is_object() && v["key"]["payload"]["id"].is_number() {
            return Ok(v);
        }
    }
    bail!(
        "{}: no change with an `after` row and an id key",
        path.display()
    )
}

/// An MSK event of `n` inserts with ids from `first_id`, on 4 partitions.
fn event(template: &serde_json::Value, topic: &str, first_id: i64, n: usize) -> serde_json::Value {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(v).unwrap())
    };
    let mut groups = serde_json::Map::new();
    for i in 0..n as i64 {
        let id = first_id + i;
        let mut key = template["key"].clone();
        key["payload"]["id"] = id.into();
        let mut value = template["value"].clone();
        value["payload"]["after"]["id"] = id.into();
        value["payload"]["op"] = "c".into();
        value["payload"]["source"]["lsn"] = (1_000_000 + id).into();
        value["payload"]["source"]["snapshot"] = "false".into();
        let partition = id % 4;
        groups
            .entry(format!("{topic}-{partition}"))
            .or_insert_with(|| serde_json::Value::Array(Vec::new()))
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "topic": topic, "partition": partition, "offset": id,
                "timestamp": 1_764_547_200_000i64, "timestampType": "CREATE_TIME",
                "key": b64(&key), "value": b64(&value), "headers": [],
            }));
    }
    serde_json::json!({
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/bench/00000000-0000-0000-0000-000000000000-1",
        "records": groups,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let template = template(&args.fixture)?;
    let events: Vec<serde_json::Value> = (0..=args.warm)
        .map(|k| {
            event(
                &template,
                &args.topic,
                1 + (k * args.records) as i64,
                args.records,
            )
        })
        .collect();
    let event_bytes = serde_json::to_vec(&events[0])?.len();
    let api = RuntimeApi::start(events).await;
    let mut words = args.bootstrap.split_whitespace();
    let mut cmd = Command::new(words.next().context("--bootstrap is empty")?);
    cmd.args(words)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
        .env("AWS_LAMBDA_FUNCTION_NAME", "floe")
        .env(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            args.memory_mb.to_string(),
        )
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("RUST_LOG", "warn")
        .env("FLOE__COMPONENTS__PRECOMPILED_DIR", &args.components)
        .env("FLOE__DLQ__KIND", "log")
        .env("FLOE__SINK__KIND", &args.sink)
        .env("FLOE__SINK__SNOWFLAKE__ACCOUNT_URL", &args.snowflake_url)
        .env("FLOE__SINK__SNOWFLAKE__DATABASE", &args.database)
        .env("FLOE__SINK__SNOWFLAKE__TABLE_NAME", "{table}")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting bootstrap")?;
    let total = args.warm + 1;
    let waited = tokio::time::timeout(
        Duration::from_secs(600),
        api.answers(total, Duration::from_secs(600)),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    if waited.is_err() {
        bail!("bootstrap did not answer {total} invocations within 600 s");
    }
    let seen = api.seen.lock().unwrap();
    if !seen.errors.is_empty() {
        bail!("function errors: {:?}", seen.errors);
    }
    for (id, r) in &seen.responses {
        if r["batchItemFailures"] != serde_json::json!([]) {
            bail!("{id}: item failures {r}");
        }
    }
    let mut warm: Vec<f64> = (1..total)
        .map(|i| ms(seen.answered[i] - seen.handed_out[i]))
        .collect();
    warm.sort_by(f64::total_cmp);
    let mean = warm.iter().sum::<f64>() / warm.len().max(1) as f64;
    let summary = serde_json::json!({
        "sink": args.sink,
        "records_per_invocation": args.records,
        "event_bytes": event_bytes,
        "init_ms": ms(seen.handed_out[0] - started),
        "first_invocation_ms": ms(seen.answered[0] - seen.handed_out[0]),
        "cold_start_ms": ms(seen.answered[0] - started),
        "warm_invocations": warm.len(),
        "warm_p50_ms": percentile(&warm, 0.5),
        "warm_p90_ms": percentile(&warm, 0.9),
        "warm_mean_ms": (mean * 10.0).round() / 10.0,
        "warm_events_per_s": (args.records as f64 / (mean / 1000.0)).round(),
    });
    println!("{summary}");
    Ok(())
}
