//! floe: stream PostgreSQL change data capture (Debezium JSON on Kafka) into Snowflake.
//!
//! ```text
//! Source (Kafka | file) -> validator.wasm -> transformer.wasm -> merge-builder.wasm -> Sink (Snowflake | none)
//!                     \_____________ offsets committed only after the sink committed ___/
//! ```
//!
//! The `floe` binary (`src/main.rs`) is a thin shell over [`run`]. Components run in
//! `floe-host` (the only crate that touches wasmtime); the per-batch work (components,
//! MERGE loads, dead letters) in `floe-batch`, which the Lambda shares; the Snowflake
//! protocol in `floe-snowflake`.

pub mod check;
pub mod config;
pub mod dlq;
pub mod pipeline;
pub mod sources;
pub mod telemetry;

// The per-batch work lives in floe-batch (shared with the Lambda); these paths stay.
pub use floe_batch::{components, events, sinks, targets};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
pub use events::{Stats, StatsSnapshot};

use crate::components::Components;
use crate::config::{SinkKind, SourceKind};
use crate::dlq::DeadLetterQueue;
use crate::pipeline::{Pipeline, PipelineError, PipelineSettings};
use crate::sinks::null::NullSink;
use crate::sinks::plan::PlanSink;
use crate::sinks::snowflake::SnowflakeSink;
use crate::sources::file::FileSource;
use crate::sources::kafka::KafkaSource;
use crate::sources::{BatchLimits, Source};

/// Errors of a whole run, by layer.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Components(#[from] floe_host::HostError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Options of one run that are not configuration (they come from the command line).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop once no event arrived for this long.
    pub exit_when_idle: Option<Duration>,
    /// Attempts of a retryable warehouse error before the run fails.
    pub load_attempts: Option<usize>,
    /// Set to ask for a reload of the components between batches (SIGHUP). With
    /// `components.reload`, a changed component file asks for one too.
    pub reload: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Runs a pipeline as configured until the source ends, it is idle for
/// `exit_when_idle`, or `shutdown` turns true. Returns the run's statistics.
pub async fn run(
    config: &Config,
    options: &RunOptions,
    shutdown: tokio::sync::watch::Receiver<bool>,
    stats: Arc<Stats>,
) -> Result<StatsSnapshot, RunError> {
    config.validate()?;
    let components = Arc::new(Components::load(&config.components)?);
    let settings = settings_of(config, options)?;
    match config.source.kind {
        SourceKind::Kafka => {
            let source = KafkaSource::new(&config.source.kafka, &config.dlq.topic, stats.clone())
                .map_err(PipelineError::from)?;
            with_sink(config, source, components, settings, shutdown, stats).await
        }
        SourceKind::File => {
            let source =
                FileSource::open(&config.source.file.paths).map_err(PipelineError::from)?;
            with_sink(config, source, components, settings, shutdown, stats).await
        }
    }
}

/// The pipeline settings `config` and `options` ask for.
fn settings_of(config: &Config, options: &RunOptions) -> Result<PipelineSettings, RunError> {
    let schema_registry =
        floe_batch::avro::SchemaRegistry::configured(config.source.schema_registry.as_ref())
            .map_err(|e| config::ConfigError::Invalid(e.to_string()))?;
    Ok(PipelineSettings {
        limits: BatchLimits {
            max_rows: config.batch.max_rows,
            max_bytes: config.batch.max_bytes,
            max_wait: config.batch.max_wait(),
            idle_poll: Duration::from_millis(500).min(config.batch.max_wait()),
        },
        target: config.sink.snowflake.clone(),
        exit_when_idle: options.exit_when_idle,
        load_attempts: options
            .load_attempts
            .unwrap_or(config.delivery.load_attempts),
        metrics_json: config.metrics.json_path.clone(),
        max_message_bytes: config.source.max_message_bytes,
        // Checked by `Config::validate`.
        formats: Arc::new(
            sources::format::Formats::new(&config.source.formats).unwrap_or_default(),
        ),
        breaker: config.delivery.breaker(),
        reload: (options.reload.is_some() || config.components.reload).then(|| {
            pipeline::ReloadSettings {
                components: config.components.clone(),
                requested: options.reload.clone().unwrap_or_default(),
            }
        }),
        schema_registry,
    })
}

async fn with_sink<S: Source>(
    config: &Config,
    source: S,
    components: Arc<Components>,
    settings: PipelineSettings,
    shutdown: tokio::sync::watch::Receiver<bool>,
    stats: Arc<Stats>,
) -> Result<StatsSnapshot, RunError> {
    match config.sink.kind {
        SinkKind::None => {
            let dlq = DeadLetterQueue::new(config.dlq_kind(), &config.dlq, &config.cluster())
                .map_err(PipelineError::from)?;
            let mut p = Pipeline::new(source, NullSink::default(), components, settings, stats)
                .with_dead_letters(dlq);
            Ok(p.run(shutdown).await?)
        }
        SinkKind::Snowflake => {
            let sink = SnowflakeSink::connect(&config.sink.snowflake)
                .await
                .map_err(PipelineError::from)?;
            let dlq = DeadLetterQueue::new(config.dlq_kind(), &config.dlq, &config.cluster())
                .map_err(PipelineError::from)?;
            let mut p =
                Pipeline::new(source, sink, components, settings, stats).with_dead_letters(dlq);
            Ok(p.run(shutdown).await?)
        }
    }
}

/// `floe plan`: runs the pipeline over fixture-format files with the configured
/// components, without a warehouse, and returns the SQL each batch would execute (with
/// binds summarised, or in full with `show_binds`) and the run's statistics. Events that
/// would be dead-lettered are logged, not written anywhere.
pub async fn plan(
    config: &Config,
    files: &[PathBuf],
    show_binds: bool,
) -> Result<(String, StatsSnapshot), RunError> {
    config.validate()?;
    let components = Arc::new(Components::load(&config.components)?);
    let options = RunOptions {
        exit_when_idle: None,
        load_attempts: Some(1),
        reload: None,
    };
    let settings = PipelineSettings {
        metrics_json: None,
        ..settings_of(config, &options)?
    };
    let source = FileSource::open(files).map_err(PipelineError::from)?;
    let mut p = Pipeline::new(
        source,
        PlanSink::new(show_binds),
        components,
        settings,
        Stats::new(),
    );
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let stats = p.run(rx).await?;
    Ok((p.sink().text.clone(), stats))
}

/// Where `floe` looks for a config file when none is given.
pub fn default_config_path() -> Option<PathBuf> {
    let p = PathBuf::from("floe.toml");
    p.exists().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plan_prints_one_merge_per_table_per_batch() {
        let dir = std::env::temp_dir().join(format!("floe-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("events.jsonl");
        let line = |table: &str, id: i64, op: &str, lsn: i64| {
            serde_json::json!({"topic": format!("dbz.public.{table}"), "key": {"id": id},
                "value": {"op": op, "before": null, "after": {"id": id, "name": format!("n{lsn}")},
                          "source": {"schema": "public", "table": table, "lsn": lsn}}})
            .to_string()
        };
        let lines = [
            line("customers", 1, "c", 10),
            line("customers", 1, "u", 11),
            line("orders", 7, "c", 12),
            line("orders", 8, "x", 13),
        ];
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        let mut config = Config::default();
        config.sink.snowflake.database = "DB".into();
        config.sink.snowflake.schema = "S".into();
        let (text, stats) = plan(&config, std::slice::from_ref(&file), true)
            .await
            .unwrap();
        assert_eq!(text.matches("MERGE INTO").count(), 2, "{text}");
        assert!(
            text.contains(
                "public.customers -> DB.S.DBZ_PUBLIC_CUSTOMERS · 1 row(s) after dedup from 2 event(s)"
            ),
            "{text}"
        );
        assert!(
            text.contains("public.orders -> DB.S.DBZ_PUBLIC_ORDERS"),
            "{text}"
        );
        assert!(text.contains("\"n11\""), "binds shown: {text}");
        assert!(!text.contains("\"n10\""), "deduplicated: {text}");
        assert_eq!(stats.events_rejected, 1, "{stats:?}");
        let (summary, _) = plan(&config, &[file], false).await.unwrap();
        assert!(summary.contains("-- bind 1 (TEXT): "), "{summary}");
        assert!(!summary.contains("\"n11\""), "{summary}");
    }

    /// Real AvroConverter records in the fixture format (base64), their schemas from a
    /// `schemas_file`: planned as their JSON twins are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plan_reads_avro_samples_with_the_schemas_given() {
        let fixtures =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/avro");
        let lines: Vec<String> = std::fs::read_to_string(fixtures.join("messages.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| {
                v["format"] == "avro"
                    && v["smt"].is_null()
                    && v["topic"].as_str().unwrap().starts_with("fxavro.public.")
            })
            .map(|v| {
                serde_json::json!({"topic": v["topic"], "key_base64": v["key_b64"],
                    "value_base64": v["value_b64"]})
                .to_string()
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("floe-plan-avro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("avro.jsonl");
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        let mut config = Config::default();
        config.source.schema_registry = Some(config::SchemaRegistryConfig {
            url: None,
            schemas_file: Some(fixtures.join("schemas.json")),
            ..config::SchemaRegistryConfig::at("")
        });
        let (text, stats) = plan(&config, std::slice::from_ref(&file), true)
            .await
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        for table in ["ALL_TYPES", "ALL_TYPES_TRUNC", "COMPOSITE_PK"] {
            assert!(
                text.contains(&format!("FXAVRO_PUBLIC_{table}")),
                "{table}: {text}"
            );
        }
        assert!(text.contains("12346.67"), "decoded decimals: {text}");
        assert_eq!(
            (
                stats.events_consumed,
                stats.events_rejected,
                stats.events_failed
            ),
            (lines.len() as u64, 0, 0),
            "{stats:?}"
        );
    }
}
