//! The OpenTelemetry instruments the internal events record into ([`crate::events`]):
//! the one place where floe's metrics are named, typed and described. The binaries
//! choose where they go (a Prometheus registry served at `/metrics`, OTLP, both or
//! neither) by the meter provider they install before the pipeline's [`Stats`] is
//! made; without one, recording costs a no-op call.
//!
//! The names follow OpenTelemetry's conventions (dotted, unit apart); Prometheus shows
//! them with underscores, the unit as a suffix and `_total` on counters
//! (`floe.rows.loaded` → `floe_rows_loaded_total`). `docs/operating.md` lists them.
//!
//! [`Stats`]: crate::events::Stats

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, ObservableGauge};

use crate::events::{Breaker, BreakerState};

/// Seconds: from a fast statement to a slow batch.
const SECONDS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Events per batch.
const EVENTS: [f64; 10] = [
    1.0, 10.0, 100.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 25_000.0, 50_000.0,
];

/// Fuel (≈ WebAssembly instructions) per component call.
const FUEL: [f64; 8] = [1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];

/// Bytes of linear memory a component call reached: 64 KiB (one page) to 4 GiB.
const MEMORY: [f64; 9] = [
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// One assigned partition as the consumer last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPosition {
    pub topic: String,
    pub partition: i32,
    /// Messages between the committed offset and the partition's end (`None` until
    /// both are known).
    pub lag: Option<i64>,
    /// The group's committed offset (the next message to consume), when it has one.
    pub committed: Option<i64>,
}

/// What the observable gauges read when the meter provider collects (a scrape of
/// `/metrics`, an OTLP export): the consumer's partitions and each table's latest
/// loaded change. Written by internal events only.
#[derive(Debug, Default)]
pub struct Observed {
    /// The assigned partitions, replaced at each consumer statistics report (so revoked
    /// partitions drop out).
    pub partitions: Mutex<Vec<PartitionPosition>>,
    /// Per target table (`DB.SCHEMA.TABLE`): the source commit time (ms since the epoch)
    /// of the latest change loaded and committed.
    pub loaded_source_ms: Mutex<HashMap<String, i64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// floe's instruments, made once per run from one meter.
#[derive(Debug, Clone)]
pub struct Instruments {
    pub events_consumed: Counter<u64>,
    pub bytes_consumed: Counter<u64>,
    pub batch_size: Histogram<u64>,
    pub batch_duration: Histogram<f64>,
    pub components_duration: Histogram<f64>,
    pub component_call_duration: Histogram<f64>,
    pub component_fuel: Histogram<u64>,
    pub component_memory: Histogram<u64>,
    pub load_duration: Histogram<f64>,
    pub batches_committed: Counter<u64>,
    pub rows_loaded: Counter<u64>,
    pub events_dropped: Counter<u64>,
    pub dead_letters: Counter<u64>,
    pub dead_letters_cut: Counter<u64>,
    pub load_retries: Counter<u64>,
    pub breaker_state: Gauge<u64>,
    pub breaker_openings: Counter<u64>,
    pub broker_errors: Counter<u64>,
    pub statements: Counter<u64>,
    pub statement_duration: Histogram<f64>,
    pub schema_changes: Counter<u64>,
    pub component_reloads: Counter<u64>,
    pub commits_refused: Counter<u64>,
    pub truncates_ignored: Counter<u64>,
    pub toast_values_unknown: Counter<u64>,
    /// The state `floe.consumer.lag`, `floe.consumer.committed_offset` and
    /// `floe.freshness` report.
    pub observed: Arc<Observed>,
    /// The observable gauges (registered with their meter; held for the run).
    pub gauges: (
        ObservableGauge<i64>,
        ObservableGauge<i64>,
        ObservableGauge<f64>,
    ),
}

impl Default for Instruments {
    /// Instruments of the global meter provider (a no-op until a binary installs one).
    fn default() -> Self {
        Instruments::new(&opentelemetry::global::meter("floe"))
    }
}

impl Instruments {
    pub fn new(meter: &Meter) -> Instruments {
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS.to_vec())
                .build()
        };
        let observed = Arc::new(Observed::default());
        let partitions = |o: &Observed, pick: fn(&PartitionPosition) -> Option<i64>| {
            lock(&o.partitions)
                .iter()
                .filter_map(|p| {
                    let attributes = [
                        KeyValue::new("topic", p.topic.clone()),
                        KeyValue::new("partition", i64::from(p.partition)),
                    ];
                    pick(p).map(|v| (v, attributes))
                })
                .collect::<Vec<_>>()
        };
        let o = observed.clone();
        let lag = meter
            .i64_observable_gauge("floe.consumer.lag")
            .with_unit("{message}")
            .with_description(
                "Messages of an assigned partition past the group's committed offset (from librdkafka's statistics).",
            )
            .with_callback(move |gauge| {
                for (v, attributes) in partitions(&o, |p| p.lag) {
                    gauge.observe(v, &attributes);
                }
            })
            .build();
        let o = observed.clone();
        let committed = meter
            .i64_observable_gauge("floe.consumer.committed_offset")
            .with_unit("{offset}")
            .with_description(
                "The group's committed offset of an assigned partition: the next message floe consumes there.",
            )
            .with_callback(move |gauge| {
                for (v, attributes) in partitions(&o, |p| p.committed) {
                    gauge.observe(v, &attributes);
                }
            })
            .build();
        let o = observed.clone();
        let freshness = meter
            .f64_observable_gauge("floe.freshness")
            .with_unit("s")
            .with_description(
                "Now minus the source commit time of the latest change loaded into a table.",
            )
            .with_callback(move |gauge| {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                for (table, ms) in lock(&o.loaded_source_ms).iter() {
                    let age = (now_ms - ms) as f64 / 1000.0;
                    gauge.observe(age, &[KeyValue::new("table", table.clone())]);
                }
            })
            .build();
        let instruments = Instruments {
            observed,
            gauges: (lag, committed, freshness),
            events_consumed: counter(
                "floe.events.consumed",
                "{event}",
                "Change events (messages) taken from the source into batches.",
            ),
            bytes_consumed: counter(
                "floe.bytes.consumed",
                "By",
                "Bytes of the consumed messages (keys, values and headers).",
            ),
            batch_size: meter
                .u64_histogram("floe.batch.size")
                .with_unit("{event}")
                .with_description("Events per batch.")
                .with_boundaries(EVENTS.to_vec())
                .build(),
            batch_duration: seconds(
                "floe.batch.duration",
                "From a batch's cut to its acknowledgement (offsets committed): components, load, dead letters and commit.",
            ),
            components_duration: seconds(
                "floe.components.duration",
                "Time a batch spent in the WebAssembly components (validation, transformation, MERGE building).",
            ),
            component_call_duration: seconds(
                "floe.component.call.duration",
                "One component call (a share of a batch, or one table's MERGE building), instantiation included, by kind and component.",
            ),
            component_fuel: meter
                .u64_histogram("floe.component.fuel")
                .with_unit("{instruction}")
                .with_description(
                    "Fuel one component call consumed (roughly WebAssembly instructions), by kind and component; recorded when components.fuel is set.",
                )
                .with_boundaries(FUEL.to_vec())
                .build(),
            component_memory: meter
                .u64_histogram("floe.component.memory.peak")
                .with_unit("By")
                .with_description(
                    "The largest linear memory one component call reached or asked for, by kind and component (components.max_memory_mib bounds it).",
                )
                .with_boundaries(MEMORY.to_vec())
                .build(),
            load_duration: seconds(
                "floe.load.duration",
                "Time a batch's warehouse load took, retries included.",
            ),
            batches_committed: counter(
                "floe.batches.committed",
                "{batch}",
                "Batches loaded (or dead-lettered) and acknowledged.",
            ),
            rows_loaded: counter(
                "floe.rows.loaded",
                "{row}",
                "Rows the warehouse reported inserted, updated or deleted, by target table and operation.",
            ),
            events_dropped: counter(
                "floe.events.dropped",
                "{event}",
                "Events not loaded (dead-lettered), by category (parse, validation, wasm-trap, schema, warehouse, ...) and stage.",
            ),
            dead_letters: counter(
                "floe.dead_letters.written",
                "{letter}",
                "Dead letters written durably (or logged, with dlq.kind = log).",
            ),
            dead_letters_cut: counter(
                "floe.dead_letters.cut",
                "{letter}",
                "Dead letters too large for the dead letter queue, written in their bounded form.",
            ),
            load_retries: counter(
                "floe.load.retries",
                "{retry}",
                "Warehouse loads retried after a transient error.",
            ),
            breaker_state: meter
                .u64_gauge("floe.breaker.state")
                .with_description(
                    "A circuit breaker's state: 0 closed, 1 open (consumption paused), 2 half-open (probing).",
                )
                .build(),
            breaker_openings: counter(
                "floe.breaker.openings",
                "{opening}",
                "Times a circuit breaker opened.",
            ),
            broker_errors: counter(
                "floe.broker.errors",
                "{error}",
                "Transient broker errors while consuming, committing or writing dead letters (each retried).",
            ),
            statements: counter(
                "floe.warehouse.statements",
                "{statement}",
                "Warehouse statements executed, by kind (merge, create, alter, truncate, delete, describe, ...).",
            ),
            statement_duration: seconds(
                "db.client.operation.duration",
                "Duration of a warehouse statement (OpenTelemetry's database client convention).",
            ),
            schema_changes: counter(
                "floe.schema.changes",
                "{change}",
                "Target schema changes: table_created, column_added, column_widened, table_truncated.",
            ),
            component_reloads: counter(
                "floe.components.reloads",
                "{reload}",
                "Component reloads (SIGHUP or a changed file), by outcome: replaced or refused.",
            ),
            commits_refused: counter(
                "floe.commits.refused",
                "{commit}",
                "Offset commits the consumer group refused (partitions reassigned during the load).",
            ),
            truncates_ignored: counter(
                "floe.truncates.ignored",
                "{event}",
                "TRUNCATE events seen and, as configured, not applied.",
            ),
            toast_values_unknown: counter(
                "floe.toast.unknown",
                "{row}",
                "New rows lacking an unchanged TOASTed value nothing in their batch had (loaded as NULL).",
            ),
        };
        // Every breaker's series exists from the start, closed.
        for breaker in [
            Breaker::Warehouse,
            Breaker::Broker,
            Breaker::Dlq,
            Breaker::Registry,
        ] {
            instruments.breaker(breaker, BreakerState::Closed);
        }
        instruments
    }

    /// A consumer statistics report: the assigned partitions' positions.
    pub fn partitions(&self, partitions: Vec<PartitionPosition>) {
        *lock(&self.observed.partitions) = partitions;
    }

    /// Tables loaded and committed, with their latest change's source commit time.
    pub fn loaded(&self, tables: &[(String, i64)]) {
        let mut latest = lock(&self.observed.loaded_source_ms);
        for (table, ms) in tables {
            let entry = latest.entry(table.clone()).or_insert(*ms);
            *entry = (*entry).max(*ms);
        }
    }

    /// Records a breaker's new state.
    pub fn breaker(&self, breaker: Breaker, state: BreakerState) {
        self.breaker_state
            .record(state as u64, &[KeyValue::new("breaker", breaker.name())]);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;
    use prometheus::Encoder as _;

    use super::PartitionPosition;
    use crate::events::{
        BatchCommitted, BatchReceived, Breaker, BreakerChanged, BreakerState, ComponentCalled,
        ConsumerPositions, EventDropped, Position, Stats,
    };
    use crate::sinks::Executed;

    /// The Prometheus text of what `record` did to a fresh set of instruments.
    fn exposition(record: impl FnOnce(&Stats)) -> String {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .unwrap();
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let stats = Stats::with_meter(&provider.meter("floe"));
        record(&stats);
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        String::from_utf8(text).unwrap()
    }

    fn statement(table: &str, kind: &'static str, ok: bool, rows: [u64; 3]) -> Executed {
        Executed {
            table: table.into(),
            kind,
            duration: Duration::from_millis(30),
            ok,
            inserted: rows[0],
            updated: rows[1],
            deleted: rows[2],
        }
    }

    #[test]
    fn a_known_batch_reads_back_as_prometheus_metrics() {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let text = exposition(|stats| {
            BatchReceived {
                events: 12,
                bytes: 4_000,
            }
            .emit(stats);
            EventDropped {
                position: Position {
                    topic: "dbz.public.t",
                    partition: 0,
                    offset: 3,
                },
                error_type: "validation",
                stage: "validate",
                reason: "id missing",
            }
            .emit(stats);
            BreakerChanged {
                breaker: Breaker::Warehouse,
                state: BreakerState::Open,
                error: Some("down"),
                open_for: Some(Duration::from_secs(1)),
            }
            .emit(stats);
            let executed = [
                statement("DB.S.T", "create", true, [0, 0, 0]),
                statement("DB.S.T", "merge", false, [0, 0, 0]),
                statement("DB.S.T", "merge", true, [7, 3, 1]),
                statement("DB.S.U", "merge", true, [2, 0, 0]),
            ];
            BatchCommitted {
                events: 12,
                rows: 13,
                tables: 2,
                skipped: 0,
                statements: 4,
                inserted: 9,
                updated: 3,
                deleted: 1,
                tables_created: 1,
                tables_truncated: 0,
                columns_added: 2,
                columns_widened: 0,
                wasm: Duration::from_millis(40),
                load: Duration::from_millis(90),
                total: Duration::from_millis(150),
                executed: &executed,
                loaded_source_ms: &[("DB.S.T".into(), now_ms - 3_000)],
            }
            .emit(stats);
            // A later batch whose latest change is older (another partition's) leaves
            // the table's freshness at its newest change.
            BatchCommitted {
                events: 1,
                rows: 1,
                tables: 1,
                skipped: 0,
                statements: 0,
                inserted: 0,
                updated: 0,
                deleted: 0,
                tables_created: 0,
                tables_truncated: 0,
                columns_added: 0,
                columns_widened: 0,
                wasm: Duration::ZERO,
                load: Duration::ZERO,
                total: Duration::ZERO,
                executed: &[],
                loaded_source_ms: &[("DB.S.T".into(), now_ms - 600_000)],
            }
            .emit(stats);
            ConsumerPositions {
                partitions: vec![
                    PartitionPosition {
                        topic: "dbz.public.t".into(),
                        partition: 0,
                        lag: Some(42),
                        committed: Some(1_000),
                    },
                    PartitionPosition {
                        topic: "dbz.public.t".into(),
                        partition: 1,
                        lag: None,
                        committed: None,
                    },
                ],
            }
            .emit(stats);
            ComponentCalled {
                component: "builtin-transformer",
                usage: &floe_host::Usage {
                    kind: "transform",
                    elapsed: Duration::from_millis(3),
                    memory_peak_bytes: 2_097_152,
                    fuel_used: Some(5_000_000),
                },
            }
            .emit(stats);
        });
        let has = |line: &str| {
            assert!(
                text.lines().any(|l| l == line),
                "no line `{line}` in:\n{text}"
            )
        };
        has("floe_events_consumed_total 12");
        has("floe_bytes_consumed_bytes_total 4000");
        has("floe_batch_size_count 1");
        has("floe_batch_size_sum 12");
        has(r#"floe_events_dropped_total{category="validation",stage="validate"} 1"#);
        has(r#"floe_breaker_state{breaker="warehouse"} 1"#);
        has(r#"floe_breaker_state{breaker="broker"} 0"#);
        has(r#"floe_breaker_openings_total{breaker="warehouse"} 1"#);
        has("floe_batches_committed_total 2");
        has("floe_batch_duration_seconds_sum 0.15");
        has(r#"floe_rows_loaded_total{op="insert",table="DB.S.T"} 7"#);
        has(r#"floe_rows_loaded_total{op="update",table="DB.S.T"} 3"#);
        has(r#"floe_rows_loaded_total{op="delete",table="DB.S.T"} 1"#);
        has(r#"floe_rows_loaded_total{op="insert",table="DB.S.U"} 2"#);
        has(r#"floe_warehouse_statements_total{kind="merge"} 3"#);
        has(r#"floe_warehouse_statements_total{kind="create"} 1"#);
        has(r#"floe_schema_changes_total{change="table_created"} 1"#);
        has(r#"floe_schema_changes_total{change="column_added"} 2"#);
        has(
            r#"db_client_operation_duration_seconds_count{db_collection_name="DB.S.T",db_operation_name="merge",db_system_name="snowflake",status="error"} 1"#,
        );
        has(
            r#"db_client_operation_duration_seconds_count{db_collection_name="DB.S.T",db_operation_name="merge",db_system_name="snowflake",status="ok"} 1"#,
        );
        has(r#"floe_consumer_lag{partition="0",topic="dbz.public.t"} 42"#);
        let component =
            r#"{floe_component_kind="transform",floe_component_name="builtin-transformer"}"#;
        has(&format!(
            "floe_component_memory_peak_bytes_sum{component} 2097152"
        ));
        has(&format!("floe_component_fuel_sum{component} 5000000"));
        has(&format!(
            "floe_component_call_duration_seconds_count{component} 1"
        ));
        has(r#"floe_consumer_committed_offset{partition="0",topic="dbz.public.t"} 1000"#);
        assert!(
            !text.contains(r#"partition="1""#),
            "unknown positions are not reported: {text}"
        );
        let freshness: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(r#"floe_freshness_seconds{table="DB.S.T"} "#))
            .unwrap_or_else(|| panic!("no freshness in:\n{text}"))
            .parse()
            .unwrap();
        assert!((3.0..60.0).contains(&freshness), "{freshness}");
    }

    /// Every metric the Grafana dashboard in docs/ queries is one floe records.
    #[test]
    fn the_dashboard_queries_only_metrics_floe_records() {
        let instrument = regex::Regex::new(r#""((?:floe|db)\.[a-z_.]+)""#).unwrap();
        let recorded: std::collections::HashSet<String> =
            [include_str!("metrics.rs"), include_str!("export/otlp.rs")]
                .iter()
                .flat_map(|src| {
                    instrument
                        .captures_iter(src)
                        .map(|c| c[1].replace('.', "_"))
                })
                .collect();
        let dashboard = include_str!("../../../docs/grafana/floe-dashboard.json");
        let queried = regex::Regex::new(r"\b((?:floe|db_client)_[a-z_]+)\{").unwrap();
        let mut names = 0;
        for c in queried.captures_iter(dashboard) {
            let mut name = c[1].to_string();
            for suffix in ["_bucket", "_total", "_seconds", "_bytes"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base.to_string();
                }
            }
            assert!(
                recorded.contains(&name),
                "the dashboard queries {}, which floe does not record",
                &c[1]
            );
            names += 1;
        }
        assert!(names > 20, "{names}");
    }

    #[test]
    fn statement_kinds_are_a_bounded_set() {
        use crate::sinks::statement_kind;
        assert_eq!(statement_kind("MERGE INTO t USING ..."), "merge");
        assert_eq!(statement_kind("  alter TABLE t ADD COLUMN c"), "alter");
        assert_eq!(
            statement_kind("CREATE TABLE IF NOT EXISTS t (..)"),
            "create"
        );
        assert_eq!(statement_kind("SELECT COLUMN_NAME FROM x"), "select");
        assert_eq!(statement_kind("GRANT ALL ON t TO r"), "other");
        assert_eq!(statement_kind(""), "other");
    }
}
