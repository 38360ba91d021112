//! floe's configuration: embedded defaults, then a TOML file, then `FLOE__SECTION__KEY`
//! environment variables (figment). Every struct denies unknown fields, so a typo is an
//! error at start-up, not a silently ignored setting. Every default is written once, in
//! a `default_*` function next to the field it belongs to. The sections both modes share
//! (components, sink, DLQ, delivery, formats) live in `floe_batch::config` and are
//! re-exported here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use floe_batch::config::*;

/// The whole configuration of one `floe run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where change events come from.
    #[serde(default)]
    pub source: SourceConfig,
    /// When a micro-batch is cut.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Which WASM components run, and their sandbox limits.
    #[serde(default)]
    pub components: ComponentsConfig,
    /// Where rows go.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Pipeline statistics export.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where events floe cannot load go.
    #[serde(default)]
    pub dlq: DlqConfig,
    /// Retries, the warehouse circuit breaker and shutdown.
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

/// Which source to read.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Debezium topics in Kafka (or any Kafka-protocol broker).
    #[default]
    Kafka,
    /// JSON-lines files in the fixture format `{"topic","key","value","headers"}`.
    File,
}

/// The source section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `kafka` (default) or `file`.
    #[serde(default)]
    pub kind: SourceKind,
    /// Messages whose key + value + headers exceed this many bytes are not processed:
    /// they go to the dead letter queue (category `kafka`). Default 8 MiB.
    #[serde(default = "floe_batch::config::default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Settings of the Kafka source.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Settings of the file source.
    #[serde(default)]
    pub file: FileConfig,
    /// What each topic's values are (first matching entry wins; unmatched topics are
    /// `auto`). See docs/operating.md#message-formats.
    #[serde(default)]
    pub formats: Vec<FormatConfig>,
    /// The Schema Registry of Avro keys and values (Kafka Connect's `AvroConverter`).
    /// Unset: messages in the Confluent wire format are dead letters. See
    /// docs/operating.md#avro-and-a-schema-registry.
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryConfig>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::default(),
            max_message_bytes: floe_batch::config::default_max_message_bytes(),
            formats: Vec::new(),
            schema_registry: None,
            kafka: KafkaConfig::default(),
            file: FileConfig::default(),
        }
    }
}

/// Kafka source settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group id; offsets are committed under it.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Explicit topic names. Used when non-empty, else `topic_pattern`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Regular expression over topic names (Debezium's `prefix.schema.table`).
    #[serde(default = "default_topic_pattern")]
    pub topic_pattern: String,
    /// How often the broker's topic list is re-read, so new tables' topics are picked
    /// up by the pattern, in milliseconds.
    #[serde(default = "default_metadata_refresh_ms")]
    pub metadata_refresh_ms: u64,
    /// Consumer session timeout in milliseconds.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Back-pressure: at most this many bytes of fetched messages wait in the consumer
    /// while a batch loads (librdkafka's `queued.max.messages.kbytes`; fetches are
    /// sized to a quarter of it), and at most one message per KiB of it
    /// (`queued.min.messages`: small messages such as Avro's cost more in librdkafka's
    /// bookkeeping than in their bytes). floe holds two batches at a time (one loading, its
    /// values' repeated schemas kept once; one being consumed and prepared), so its
    /// message memory stays within twice `batch.max_bytes` (the one being prepared
    /// about three times while it is decoded and turned into rows) plus this, however
    /// slow the warehouse is. Default 16 MiB.
    #[serde(default = "default_max_prefetch_bytes")]
    pub max_prefetch_bytes: usize,
    /// Extra librdkafka settings, passed through as-is (e.g. `security.protocol`,
    /// `sasl.mechanisms`). floe's own delivery settings (`enable.auto.commit`,
    /// `enable.auto.offset.store`) cannot be overridden here. Secret-looking values
    /// (passwords, secrets, tokens, JAAS configs) print as `***`.
    #[serde(default)]
    pub options: KafkaOptions,
}

fn default_brokers() -> String {
    "127.0.0.1:29092".into()
}
fn default_group_id() -> String {
    "floe".into()
}
fn default_topic_pattern() -> String {
    r"^dbz\.[^.]+\.[^.]+$".into()
}
fn default_metadata_refresh_ms() -> u64 {
    5_000
}
fn default_session_timeout_ms() -> u64 {
    30_000
}
fn default_max_prefetch_bytes() -> usize {
    16 << 20
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            group_id: default_group_id(),
            topics: Vec::new(),
            topic_pattern: default_topic_pattern(),
            metadata_refresh_ms: default_metadata_refresh_ms(),
            session_timeout_ms: default_session_timeout_ms(),
            max_prefetch_bytes: default_max_prefetch_bytes(),
            options: KafkaOptions::default(),
        }
    }
}

/// File source settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// JSON-lines files replayed in order; each file's lines get offsets 0, 1, 2, ...
    /// on partition 0 of their topic.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
}

/// When a micro-batch is cut: whichever limit is reached first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events in one batch.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Most payload bytes (keys + values) in one batch.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Longest time a batch stays open after its first event, in milliseconds.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
}

fn default_max_rows() -> usize {
    10_000
}
fn default_max_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_max_wait_ms() -> u64 {
    5_000
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            max_wait_ms: default_max_wait_ms(),
        }
    }
}

impl BatchConfig {
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }
}
/// Statistics and metrics export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Write the pipeline statistics as JSON to this file after every batch and at exit.
    #[serde(default)]
    pub json_path: Option<PathBuf>,
    /// Serve `/metrics` (Prometheus text), `/healthz`, `/readyz` and `/stats` (the
    /// statistics JSON) over HTTP on this address, e.g. `0.0.0.0:9464`. Off when unset
    /// (the default). The endpoints have no authentication: bind them to an address
    /// only your scrapers and probes reach.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

impl Config {
    /// The DLQ kind in effect (`auto` resolved against the source).
    pub fn dlq_kind(&self) -> DlqKind {
        match (self.dlq.kind, self.source.kind) {
            (DlqKind::Auto, SourceKind::Kafka) => DlqKind::Kafka,
            (DlqKind::Auto, SourceKind::File) => DlqKind::Log,
            (kind, _) => kind,
        }
    }

    /// The Kafka cluster of the source, where Kafka dead letters go.
    pub fn cluster(&self) -> floe_batch::dlq::Cluster {
        floe_batch::dlq::Cluster {
            brokers: self.source.kafka.brokers.clone(),
            options: self.source.kafka.options.clone(),
            max_message_bytes: self.source.max_message_bytes,
            token: None,
        }
    }

    /// Embedded defaults, then `file` (if given), then `FLOE__*` environment variables
    /// (`FLOE__SINK__SNOWFLAKE__PASSWORD=...`), then checks.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("FLOE__").split("__").lowercase(true));
        let config: Config = fig
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Pure checks of values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.batch.max_rows == 0 {
            return bad("batch.max_rows must be at least 1".into());
        }
        if self.batch.max_bytes == 0 {
            return bad("batch.max_bytes must be at least 1".into());
        }
        self.components.validate()?;
        match self.source.kind {
            SourceKind::Kafka => {
                let k = &self.source.kafka;
                if k.brokers.trim().is_empty() {
                    return bad("source.kafka.brokers is empty".into());
                }
                if k.topics.is_empty()
                    && let Err(e) = regex::Regex::new(&k.topic_pattern)
                {
                    return bad(format!("source.kafka.topic_pattern: {e}"));
                }
                for key in ["enable.auto.commit", "enable.auto.offset.store", "group.id"] {
                    if k.options.contains_key(key) {
                        return bad(format!(
                            "source.kafka.options.{key} is managed by floe and cannot be set"
                        ));
                    }
                }
            }
            SourceKind::File => {
                if self.source.file.paths.is_empty() {
                    return bad("source.file.paths is empty".into());
                }
            }
        }
        crate::sources::format::Formats::new(&self.source.formats).map_err(ConfigError::Invalid)?;
        self.delivery.validate()?;
        if self.source.max_message_bytes == 0 {
            return bad("source.max_message_bytes must be at least 1".into());
        }
        self.dlq.validate()?;
        if matches!(self.dlq.kind, DlqKind::Sqs | DlqKind::S3) {
            let kind = if self.dlq.kind == DlqKind::Sqs {
                "sqs"
            } else {
                "s3"
            };
            return bad(format!(
                "dlq.kind = \"{kind}\": SQS and S3 dead letters are written by the Lambda \
                 (floe-lambda); the runner writes kafka, file or log"
            ));
        }
        if self.source.kind == SourceKind::Kafka
            && let Some(t) = (self.source.kafka.topics.iter())
                .find(|t| crate::dlq::is_dlq_topic(&self.dlq.topic, t))
        {
            return bad(format!(
                "source.kafka.topics: {t:?} is a dead letter topic (dlq.topic = {:?}); floe \
                 never consumes its own dead letters as changes (use `floe dlq replay`)",
                self.dlq.topic
            ));
        }
        if self.dlq_kind() == DlqKind::Kafka && !self.dlq.topic.contains("{topic}") {
            // One DLQ topic for every source topic is fine; say so in the log instead.
            tracing::info!(topic = %self.dlq.topic, "every source topic shares one DLQ topic");
        }
        self.sink.validate()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[test]
    fn an_explicit_dlq_topic_source_is_refused() {
        let mut config = Config::default();
        config.source.kafka.topics = vec!["dbz.public.a".into(), "dbz.public.a.dlq".into()];
        let e = config.validate().unwrap_err().to_string();
        assert!(
            e.contains("dbz.public.a.dlq") && e.contains("dead letter"),
            "{e}"
        );
    }

    #[test]
    fn the_lambdas_dead_letter_kinds_are_refused_with_the_ones_that_work() {
        let mut config = Config::default();
        config.dlq.kind = DlqKind::Sqs;
        config.dlq.sqs_queue_url = Some("https://sqs.eu-west-1.amazonaws.com/1/q".into());
        let e = config.validate().unwrap_err().to_string();
        assert!(
            e.contains("\"sqs\"") && e.contains("kafka, file or log"),
            "{e}"
        );
        config.dlq.kind = DlqKind::S3;
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("needs dlq.s3_bucket"), "{e}");
        config.dlq.s3_bucket = Some("b".into());
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("\"s3\""), "{e}");
    }

    #[test]
    fn defaults_are_valid_and_sized_for_a_warehouse() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.batch.max_rows, 10_000);
        assert_eq!(c.batch.max_wait(), Duration::from_secs(5));
    }

    #[test]
    fn file_and_env_layer_over_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "floe.toml",
                r#"
                [batch]
                max_rows = 500
                [sink.snowflake]
                database = "ANALYTICS"
                "#,
            )?;
            jail.set_env("FLOE__BATCH__MAX_WAIT_MS", "250");
            jail.set_env("FLOE__SINK__SNOWFLAKE__PASSWORD", "hunter2");
            let c = Config::load(Some(Path::new("floe.toml"))).unwrap();
            assert_eq!(c.batch.max_rows, 500);
            assert_eq!(c.batch.max_wait_ms, 250);
            assert_eq!(c.sink.snowflake.database, "ANALYTICS");
            assert_eq!(c.sink.snowflake.schema, "CDC");
            let pw = c.sink.snowflake.password.clone().unwrap();
            assert_eq!(pw.expose(), "hunter2");
            assert!(!format!("{c:?}").contains("hunter2"), "secret printed");
            Ok(())
        });
    }

    #[test]
    fn secret_kafka_options_never_print() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "floe.toml",
                r#"
                [source.kafka.options]
                "security.protocol" = "SASL_SSL"
                "sasl.username" = "floe"
                "sasl.password" = "kafka-pw-1"
                "ssl.key.password" = "key-pw-2"
                "sasl.oauthbearer.client.secret" = "oauth-3"
                "sasl.jaas.config" = "jaas-4"
                "ssl.key.pem" = "pem-5"
                [dlq.options]
                "sasl.password" = "dlq-pw-6"
                "#,
            )?;
            let c = Config::load(Some(Path::new("floe.toml"))).unwrap();
            assert_eq!(c.source.kafka.options["sasl.password"], "kafka-pw-1");
            let printed = [
                format!("{c:?}"),
                serde_json::to_string(&c).unwrap(),
                format!("{:?}", c.dlq),
            ];
            for p in &printed {
                for secret in [
                    "kafka-pw-1",
                    "key-pw-2",
                    "oauth-3",
                    "jaas-4",
                    "pem-5",
                    "dlq-pw-6",
                ] {
                    assert!(!p.contains(secret), "{secret} printed in {p}");
                }
                assert!(p.contains("sasl.password"), "the key stays visible: {p}");
            }
            // Values that are not secrets print as they are.
            assert!(printed[0].contains("SASL_SSL") && printed[1].contains("\"floe\""));
            Ok(())
        });
    }

    #[test]
    fn unknown_fields_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("floe.toml", "[batch]\nmax_rowz = 5\n")?;
            let err = Config::load(Some(Path::new("floe.toml"))).unwrap_err();
            assert!(err.to_string().contains("max_rowz"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn managed_kafka_options_are_refused() {
        let mut c = Config::default();
        c.source
            .kafka
            .options
            .insert("enable.auto.commit".into(), "true".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn chains_fall_back_to_the_pipelines_components() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "floe.toml",
                r#"
                [components]
                validator = "v.wasm"
                transforms = ["mask.wasm"]
                [[components.chains]]
                topics = "^dbz\\.public\\.orders$"
                transforms = []
                [[components.chains]]
                topics = "customers"
                validators = ["builtin", "rules.wasm"]
                transformer = "t.wasm"
                "#,
            )?;
            let c = Config::load(Some(Path::new("floe.toml"))).unwrap();
            let cc = &c.components;
            let path = |p: &str| ComponentRef::Path(PathBuf::from(p));
            let [orders, customers, default] = &cc.all_chains()[..] else {
                panic!("two chains and the default");
            };
            assert_eq!(orders.validator_refs(cc), vec![path("v.wasm")]);
            assert_eq!(orders.transformer_ref(cc), ComponentRef::Builtin);
            assert!(orders.transform_refs(cc).is_empty(), "[] means none");
            assert_eq!(
                customers.validator_refs(cc),
                vec![ComponentRef::Builtin, path("rules.wasm")]
            );
            assert_eq!(customers.transformer_ref(cc), path("t.wasm"));
            assert_eq!(customers.transform_refs(cc), vec![path("mask.wasm")]);
            assert_eq!(default.transform_refs(cc), vec![path("mask.wasm")]);
            Ok(())
        });
    }

    #[test]
    fn a_builtin_row_transform_or_empty_validator_list_is_refused() {
        let mut c = Config::default();
        c.components.transforms = vec!["builtin".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("no built-in row transform")
        );
        let mut c = Config::default();
        c.components.chains = vec![ChainConfig {
            topics: "x".into(),
            validators: Some(Vec::new()),
            ..ChainConfig::default()
        }];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("validators is empty")
        );
    }
}
