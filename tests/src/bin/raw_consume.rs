//! `raw_consume`: the raw librdkafka consume rate, the ceiling floe is compared with in
//! `make bench` (dev/bench.sh, docs/benchmarks.md).
//!
//! Joins a fresh consumer group (`auto.offset.reset=earliest`, no commits, the same
//! librdkafka settings floe's Kafka source uses), polls the given topics until it has
//! seen `--count` messages (or none arrived for `--idle-secs`), copying each message's
//! key, payload and headers out of librdkafka's buffer as floe does, and prints one JSON
//! object on stdout:
//!
//! ```json
//! {"events": 103493, "bytes": 326144471, "secs": 1.9, "events_per_sec": 54470.0,
//!  "join_secs": 15.1, "first_event_secs": 0.14, "wall_secs": 17.0,
//!  "mark_every": 10000, "marks": [0.3, 0.5, ...], "group": "...", "complete": true}
//! ```
//!
//! `secs` runs from the partition assignment the first message came under to the last
//! message counted, so the consumer-group join (15 s against tansu on the bench machine)
//! is not in `events_per_sec`; `join_secs` is start to assignment, `first_event_secs`
//! assignment to the first message, `marks[i]` assignment to message `(i + 1) *
//! mark_every` (for a steady-state rate that leaves out the start). The count must be
//! known up front: tansu's high watermarks are wrong, so "caught up" cannot be asked.
//! Exits 1 when fewer than `--count` messages arrived.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message};

#[derive(Parser)]
#[command(
    name = "raw_consume",
    about = "Raw librdkafka consume rate of a topic set"
)]
struct Args {
    /// Bootstrap servers.
    #[arg(long, env = "FLOE_KAFKA_BROKERS", default_value = "127.0.0.1:29092")]
    brokers: String,
    /// Topics to consume (comma separated or repeated).
    #[arg(long, value_delimiter = ',', required = true)]
    topics: Vec<String>,
    /// Stop after this many messages; 0 stops on idle only.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Stop when no message arrived for this long after the first one.
    #[arg(long, default_value_t = 15.0)]
    idle_secs: f64,
    /// Give up when no message arrived this long after start (group join included).
    #[arg(long, default_value_t = 120.0)]
    start_timeout_secs: f64,
    /// Record the time of every this-many-th message (`marks` in the output).
    #[arg(long, default_value_t = 10_000)]
    mark_every: u64,
    /// Consumer group id; a fresh one per run when unset.
    #[arg(long)]
    group: Option<String>,
}

/// Records when partitions were last assigned.
struct Timing {
    assigned_at: Mutex<Option<Instant>>,
}

impl ClientContext for Timing {}

impl ConsumerContext for Timing {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance
            && tpl.count() > 0
        {
            *self.assigned_at.lock().unwrap() = Some(Instant::now());
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let group = args.group.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("raw-consume-{}-{nanos}", std::process::id())
    });
    let consumer: BaseConsumer<Timing> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "30000")
        // floe's default (source.kafka.metadata_refresh_ms): a topic Debezium creates after
        // the subscription is seen within seconds, not after librdkafka's 5 minutes.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set_log_level(RDKafkaLogLevel::Warning)
        .create_with_context(Timing {
            assigned_at: Mutex::new(None),
        })
        .context("creating the consumer")?;
    let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribing")?;

    let idle = Duration::from_secs_f64(args.idle_secs);
    let start_timeout = Duration::from_secs_f64(args.start_timeout_secs);
    let mut events: u64 = 0;
    let mut bytes: u64 = 0;
    let mut first_at: Option<Instant> = None;
    let mut last_at: Option<Instant> = None;
    let mut marks: Vec<Instant> = Vec::new();
    // The assignment the first message was fetched under (a later rebalance does not move it).
    let mut assigned_at: Option<Instant> = None;
    while args.count == 0 || events < args.count {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                // What floe's Kafka source copies out of every message.
                let key = m.key().map(<[u8]>::to_vec);
                let value = m.payload().map(<[u8]>::to_vec);
                let headers: Vec<(String, Option<Vec<u8>>)> = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                drop(m);
                bytes +=
                    (key.as_ref().map_or(0, Vec::len) + value.as_ref().map_or(0, Vec::len)) as u64;
                std::hint::black_box((key, value, headers));
                events += 1;
                let now = Instant::now();
                if first_at.is_none() {
                    first_at = Some(now);
                    assigned_at = *consumer.context().assigned_at.lock().unwrap();
                }
                last_at = Some(now);
                if args.mark_every > 0 && events.is_multiple_of(args.mark_every) {
                    marks.push(now);
                }
            }
            Some(Err(e)) => eprintln!("raw_consume: consume error (librdkafka retries): {e}"),
            None => {
                let quiet_for = match last_at {
                    Some(t) => t.elapsed() >= idle,
                    None => started.elapsed() >= start_timeout,
                };
                if quiet_for {
                    break;
                }
            }
        }
    }
    let assigned_at = assigned_at.unwrap_or(started);
    let secs = |from: Instant, to: Option<Instant>| {
        to.map_or(0.0, |t| t.saturating_duration_since(from).as_secs_f64())
    };
    let window = secs(assigned_at, last_at);
    let complete = args.count == 0 || events >= args.count;
    let report = serde_json::json!({
        "events": events,
        "bytes": bytes,
        "secs": window,
        "events_per_sec": if window > 0.0 { events as f64 / window } else { 0.0 },
        "join_secs": secs(started, Some(assigned_at)),
        "first_event_secs": secs(assigned_at, first_at),
        "wall_secs": started.elapsed().as_secs_f64(),
        "mark_every": args.mark_every,
        "marks": marks.iter().map(|&t| secs(assigned_at, Some(t))).collect::<Vec<_>>(),
        "group": group,
        "complete": complete,
    });
    println!("{report}");
    if !complete {
        eprintln!(
            "raw_consume: only {events} of {} messages arrived",
            args.count
        );
        std::process::exit(1);
    }
    Ok(())
}
