//! The Lambda's configuration: the runner's sections (components, sink, dead letter
//! queue, delivery, message formats) under the same names, read from an optional TOML
//! file in the package (`FLOE_CONFIG`, default `/var/task/floe.toml` when present) and
//! then `FLOE__SECTION__KEY` environment variables, as the runner reads them
//! (`FLOE__SINK__SNOWFLAKE__ACCOUNT=...`). Unknown keys are errors.

use std::collections::HashMap;
use std::path::Path;

use floe_batch::config::{
    ComponentsConfig, ConfigError, DeliveryConfig, DlqConfig, FormatConfig, SchemaRegistryConfig,
    SinkConfig,
};
use serde::{Deserialize, Serialize};

/// The whole configuration of the Lambda.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct LambdaConfig {
    /// What the records are.
    #[serde(default)]
    pub source: SourceConfig,
    /// Which WASM components run, and their sandbox limits. In the package, the
    /// built-in components are precompiled (`components.cache_dir` points at them).
    #[serde(default)]
    pub components: ComponentsConfig,
    /// Where rows go.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Where events floe cannot load go (`auto`: the `<topic>.dlq` topic on the
    /// event's cluster).
    #[serde(default)]
    pub dlq: DlqConfig,
    /// Retries and the circuit breakers (bounded by the invocation's deadline).
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// The invocation's time budget.
    #[serde(default)]
    pub lambda: LambdaSettings,
}

/// What the records are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Records whose key + value + headers exceed this many bytes go to the dead
    /// letter queue unprocessed (category `kafka`).
    #[serde(default = "floe_batch::config::default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// What each topic's values are (first matching entry wins), as in the runner.
    #[serde(default)]
    pub formats: Vec<FormatConfig>,
    /// The Schema Registry of Avro keys and values, as in the runner.
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryConfig>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            max_message_bytes: floe_batch::config::default_max_message_bytes(),
            formats: Vec::new(),
            schema_registry: None,
        }
    }
}

/// The invocation's time budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LambdaSettings {
    /// Retrying stops this long before the invocation's deadline; what is not loaded
    /// by then is reported as item failures (and retried by the event source mapping).
    #[serde(default = "default_deadline_margin_ms")]
    pub deadline_margin_ms: u64,
    /// The time budget of an invocation whose deadline is unknown (absent, in the
    /// past, or further than Lambda's 15 minutes: some emulators send such values).
    #[serde(default = "default_unknown_deadline_ms")]
    pub unknown_deadline_ms: u64,
    /// How the dead letter producer authenticates to the event's cluster: `none`
    /// (default; `dlq.options` may still set SASL/TLS), `msk-iam`, `scram-sha-512` or
    /// `scram-sha-256` (credentials from `FLOE_KAFKA_SCRAM_SECRET_ARN`).
    #[serde(default)]
    pub kafka_auth: crate::access::KafkaAuth,
}

fn default_deadline_margin_ms() -> u64 {
    5_000
}
fn default_unknown_deadline_ms() -> u64 {
    60_000
}

impl Default for LambdaSettings {
    fn default() -> Self {
        LambdaSettings {
            deadline_margin_ms: default_deadline_margin_ms(),
            unknown_deadline_ms: default_unknown_deadline_ms(),
            kafka_auth: Default::default(),
        }
    }
}

/// Where the Lambda looks for its config file when `FLOE_CONFIG` is not set.
pub const PACKAGED_CONFIG: &str = "/var/task/floe.toml";

/// The package's precompiled components (`make lambda`), used as
/// `components.precompiled_dir` when that is not set.
pub const PACKAGED_COMPONENTS: &str = "/var/task/components";

impl LambdaConfig {
    /// Embedded defaults, then `file` (when given), then the `FLOE__*` variables of
    /// `env`, then checks.
    pub fn load(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<LambdaConfig, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("FLOE__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("FLOE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let config: LambdaConfig = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Pure checks of values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.components.validate()?;
        floe_batch::format::Formats::new(&self.source.formats).map_err(ConfigError::Invalid)?;
        self.delivery.validate()?;
        self.dlq.validate()?;
        self.sink.validate()?;
        if self.source.max_message_bytes == 0 {
            return Err(ConfigError::Invalid(
                "source.max_message_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_layers_over_defaults_like_the_runner() {
        let c = LambdaConfig::load(
            None,
            env(&[
                (
                    "FLOE__SINK__SNOWFLAKE__ACCOUNT_URL",
                    "https://acme.snowflakecomputing.com",
                ),
                ("FLOE__SINK__SNOWFLAKE__USER", "12345"),
                ("FLOE__SINK__SNOWFLAKE__DATABASE", "RAW"),
                ("FLOE__DELIVERY__LOAD_ATTEMPTS", "3"),
                ("FLOE__LAMBDA__DEADLINE_MARGIN_MS", "2500"),
                ("FLOE__DLQ__TOPIC", "dead.{topic}"),
                ("FLOE__LAMBDA__KAFKA_AUTH", "msk-iam"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.sink.snowflake.account_url,
            "https://acme.snowflakecomputing.com"
        );
        assert_eq!(
            c.sink.snowflake.user, "12345",
            "a number-looking string stays a string"
        );
        assert_eq!(c.sink.snowflake.database, "RAW");
        assert_eq!(c.sink.snowflake.schema, "CDC", "defaults stay");
        assert_eq!(c.delivery.load_attempts, 3);
        assert_eq!(c.lambda.deadline_margin_ms, 2500);
        assert_eq!(c.dlq.topic, "dead.{topic}");
        assert_eq!(c.lambda.kafka_auth, crate::access::KafkaAuth::MskIam);
    }

    #[test]
    fn a_misspelt_key_is_an_error_naming_it() {
        let e = LambdaConfig::load(None, env(&[("FLOE__SINK__SNOWFLAKE__ACOUNT", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("acount"), "{e}");
        let e = LambdaConfig::load(None, env(&[("FLOE__DELIVERY__LOAD_ATTEMPTS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("load_attempts"), "{e}");
    }

    #[test]
    fn a_packaged_file_comes_first_and_the_environment_wins() {
        let dir = std::env::temp_dir().join(format!("floe-lambda-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("floe.toml");
        std::fs::write(
            &file,
            "[sink.snowflake]\ndatabase = \"FROM_FILE\"\nschema = \"S\"\n[components]\ndeadline_ms = 1234\n",
        )
        .unwrap();
        let c = LambdaConfig::load(
            Some(&file),
            env(&[("FLOE__SINK__SNOWFLAKE__DATABASE", "FROM_ENV")]),
        )
        .unwrap();
        assert_eq!(c.sink.snowflake.database, "FROM_ENV");
        assert_eq!(c.sink.snowflake.schema, "S");
        assert_eq!(c.components.deadline_ms, 1234);
        assert!(LambdaConfig::load(Some(&dir.join("missing.toml")), HashMap::new()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
