//! The configuration sections both of floe's modes use: components, the sink, the dead
//! letter queue, delivery and message formats. Plain serde structs: the runner reads them
//! from its layered file + environment configuration, the Lambda from its environment.
//! Every struct denies unknown fields, so a typo is an error at start-up, not a silently
//! ignored setting. Every default is written once, in a `default_*` function next to the
//! field it belongs to.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use floe_snowflake::Secret;

/// librdkafka settings passed through as-is (`source.kafka.options`, `dlq.options`).
/// Printed (`floe config`, `Debug`, logs) with the value of every secret-looking key
/// masked as `***`: passwords, secrets, tokens, JAAS and OAuth configs, private keys.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct KafkaOptions(pub BTreeMap<String, String>);

impl KafkaOptions {
    /// Whether an option's value must never be printed.
    pub fn is_secret(key: &str) -> bool {
        const SECRET: [&str; 8] = [
            "password",
            "secret",
            "token",
            "jaas",
            "oauthbearer.config",
            "key.pem",
            "credentials",
            "sasl.kerberos.keytab",
        ];
        let key = key.to_ascii_lowercase();
        SECRET.iter().any(|s| key.contains(s))
    }

    /// The options as they may be printed.
    fn masked(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if Self::is_secret(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect()
    }
}

impl std::ops::Deref for KafkaOptions {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KafkaOptions {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a KafkaOptions {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.masked().fmt(f)
    }
}

impl Serialize for KafkaOptions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.masked().serialize(serializer)
    }
}

/// The default of `source.max_message_bytes`: 8 MiB.
pub fn default_max_message_bytes() -> usize {
    8 << 20
}

/// Errors while reading or checking the configuration. Never retryable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Retries, the warehouse circuit breaker and shutdown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Attempts of a batch's load on transient warehouse errors (exponential backoff
    /// with jitter, 200 ms to 30 s) before the circuit breaker opens.
    #[serde(default = "default_load_attempts")]
    pub load_attempts: usize,
    /// How long the breaker first stays open (no consumption, no load) before a probe,
    /// in ms; doubles after every failed probe.
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// Longest open period, in ms.
    #[serde(default = "default_breaker_max_open_ms")]
    pub breaker_max_open_ms: u64,
    /// How long SIGINT/SIGTERM waits for the in-flight batch to load and commit before
    /// abandoning it uncommitted (it is replayed on the next start), in ms.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

fn default_load_attempts() -> usize {
    8
}
fn default_breaker_open_ms() -> u64 {
    5_000
}
fn default_breaker_max_open_ms() -> u64 {
    120_000
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            load_attempts: default_load_attempts(),
            breaker_open_ms: default_breaker_open_ms(),
            breaker_max_open_ms: default_breaker_max_open_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
        }
    }
}

/// One `[[source.formats]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FormatConfig {
    /// Regular expression over topic names (anchored at the start, like
    /// `source.kafka.topic_pattern`).
    pub topics: String,
    /// `auto` (default: told per message), `envelope` (Debezium's envelope only) or
    /// `unwrap` (records flattened by ExtractNewRecordState, read with the settings
    /// below).
    #[serde(default)]
    pub format: TopicFormat,
    /// `unwrap`: the SMT's `add.fields` (e.g. `["op", "table", "lsn", "source.ts_ms"]`);
    /// only these fields are metadata, every other field is a column. Default none.
    #[serde(default)]
    pub add_fields: Vec<String>,
    /// `unwrap`: the SMT's `add.fields.prefix`. Default `__`.
    #[serde(default = "default_add_fields_prefix")]
    pub add_fields_prefix: String,
    /// `unwrap`: the SMT's `delete.tombstone.handling.mode`: `tombstone` (default: a
    /// delete is a keyed tombstone), `rewrite` and `rewrite-with-tombstone` (a record
    /// with `<prefix>deleted` = true), `drop`, `delete-to-tombstone`.
    #[serde(default)]
    pub delete_handling: DeleteHandling,
}

fn default_add_fields_prefix() -> String {
    "__".into()
}

impl Default for FormatConfig {
    fn default() -> Self {
        FormatConfig {
            topics: ".*".into(),
            format: TopicFormat::default(),
            add_fields: Vec::new(),
            add_fields_prefix: default_add_fields_prefix(),
            delete_handling: DeleteHandling::default(),
        }
    }
}

/// `source.schema_registry`: where the writer schemas of values and keys in the
/// Confluent wire format (Kafka Connect's `AvroConverter`) are fetched. Unset: such
/// messages are dead-lettered with a reason that says so.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL of a Confluent-compatible Schema Registry REST API
    /// (`https://registry.example.com:8081`; a path prefix is kept).
    #[serde(default)]
    pub url: Option<String>,
    /// A JSON file of schemas by id (`{"1": <schema>, ...}`, each schema as the
    /// registry's text or as JSON), read at start and looked up before the registry:
    /// `floe check` and `floe plan` read Avro samples with it and no registry. At least
    /// one of `url` and `schemas_file` is needed.
    #[serde(default)]
    pub schemas_file: Option<PathBuf>,
    /// Basic auth user (Confluent Cloud: the API key).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic auth password (Confluent Cloud: the API secret). Never printed.
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM file of CA certificates trusted for `https` besides the system's (a private
    /// CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one request may take, in milliseconds. Default 10 s.
    #[serde(default = "default_registry_timeout_ms")]
    pub timeout_ms: u64,
    /// Schemas kept in memory, by id (the oldest fetched is dropped first). A schema
    /// is fetched once and then read from here. Default 1,000.
    #[serde(default = "default_registry_cache_size")]
    pub cache_size: usize,
}

fn default_registry_timeout_ms() -> u64 {
    10_000
}

fn default_registry_cache_size() -> usize {
    1_000
}

impl SchemaRegistryConfig {
    /// A registry at `url` with every other setting at its default.
    pub fn at(url: impl Into<String>) -> Self {
        SchemaRegistryConfig {
            url: Some(url.into()),
            schemas_file: None,
            username: None,
            password: None,
            ca_file: None,
            timeout_ms: default_registry_timeout_ms(),
            cache_size: default_registry_cache_size(),
        }
    }
}

/// How a topic's values are framed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TopicFormat {
    #[default]
    Auto,
    Envelope,
    Unwrap,
}

/// ExtractNewRecordState's `delete.tombstone.handling.mode`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeleteHandling {
    #[default]
    Tombstone,
    Rewrite,
    RewriteWithTombstone,
    Drop,
    DeleteToTombstone,
}

/// Where a component comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum ComponentRef {
    /// The component built into the floe binary (`"builtin"`).
    #[default]
    Builtin,
    /// A `.wasm` component file.
    Path(PathBuf),
}

impl ComponentRef {
    fn from_setting(s: &str) -> ComponentRef {
        if s == "builtin" {
            ComponentRef::Builtin
        } else {
            ComponentRef::Path(PathBuf::from(s))
        }
    }
}

/// The components section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComponentsConfig {
    /// `"builtin"` or the path of a validator component.
    #[serde(default = "default_builtin")]
    pub validator: String,
    /// `"builtin"` or the path of a transformer component.
    #[serde(default = "default_builtin")]
    pub transformer: String,
    /// Row transforms (paths of `row-transform` components) run in order after the
    /// transformer, for topics no chain matches: each rewrites, skips or fails rows
    /// before they are loaded. None by default.
    #[serde(default)]
    pub transforms: Vec<String>,
    /// `"builtin"` or the path of a merge-builder component.
    #[serde(default = "default_builtin")]
    pub merge_builder: String,
    /// Largest linear memory of one component instance, in MiB.
    #[serde(default = "default_max_memory_mib")]
    pub max_memory_mib: usize,
    /// Wall-clock budget of one component call, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Optional instruction budget (fuel) per call; unset disables fuel metering.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// What a failed component call (trap, deadline, memory cap, contract violation,
    /// error answer) does: `dlq` (default) sends the affected events of the batch to the
    /// dead letter queue (category `wasm-trap`) and goes on; `stop` ends the run without
    /// committing the batch, for pipelines that must halt rather than skip.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Most component calls of a batch run at once, each on its own core: a batch's
    /// events are split by topic (never within a topic: events of one topic relate to
    /// each other) into at most this many shares per chain. 0 (default): one per CPU
    /// core; 1: one call per chain and stage, as in floe 0.1.
    #[serde(default)]
    pub parallelism: usize,
    /// Hot reload: when a component file changes on disk, load it again between
    /// batches (and self-check it) and swap it in; a failed load keeps the running one.
    /// SIGHUP asks for the same at any time.
    #[serde(default = "default_reload")]
    pub reload: bool,
    /// Keep compiled components between runs, so start-up does not compile them again.
    #[serde(default = "default_cache")]
    pub cache: bool,
    /// Where compiled components are kept (default `$XDG_CACHE_HOME/floe/components`,
    /// else `~/.cache/floe/components`). Must be writable by floe's user only.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// A directory of components compiled ahead of time (`<sha256>.cwasm`, as the
    /// Lambda package ships them, made by `bootstrap precompile`): a component found
    /// there loads without compiling. Read-only; unusable files are logged and the
    /// component compiled.
    #[serde(default)]
    pub precompiled_dir: Option<PathBuf>,
    /// Component chains for some topics: the first chain whose `topics` pattern matches
    /// a record's topic validates and transforms it; other topics use `validator`,
    /// `transformer` and `transforms`.
    #[serde(default)]
    pub chains: Vec<ChainConfig>,
    /// WASI capabilities granted to component files, keyed by the path exactly as it is
    /// written in this section (`[components.grants."js/validator.wasm"] wasi =
    /// ["clocks"]`). A component without a grant is linked with nothing: one that
    /// imports WASI is refused at load, naming the capabilities it would need.
    #[serde(default)]
    pub grants: std::collections::BTreeMap<String, GrantConfig>,
}

/// The WASI capabilities granted to one component file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// Capability names: `clocks`, `random`, `stdio`, `environment`, `filesystem`
    /// (docs/writing-a-validator.md says what each gives; none opens a directory, a
    /// socket or the host environment).
    pub wasi: Vec<String>,
}

/// See [`ComponentsConfig::on_failure`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    #[default]
    Dlq,
    Stop,
}

/// The components for the topics matching a pattern: validators in order (every one
/// sees the chain's records; the first rejection, in chain order, is the one reported),
/// then the transformer, then the row transforms in order. A setting left out is the
/// pipeline's own (`components.validator`, `.transformer`, `.transforms`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// Regular expression over topic names (e.g. `^dbz\.public\.orders$`).
    pub topics: String,
    /// `"builtin"` or validator component paths, in order.
    #[serde(default)]
    pub validators: Option<Vec<String>>,
    /// `"builtin"` or the path of a transformer component.
    #[serde(default)]
    pub transformer: Option<String>,
    /// Row transform component paths, in order (`[]`: none).
    #[serde(default)]
    pub transforms: Option<Vec<String>>,
}

impl ChainConfig {
    /// The chain's validators (the pipeline's `validator` when not set).
    pub fn validator_refs(&self, cfg: &ComponentsConfig) -> Vec<ComponentRef> {
        match &self.validators {
            Some(v) => v.iter().map(|v| ComponentRef::from_setting(v)).collect(),
            None => vec![cfg.validator_ref()],
        }
    }

    /// The chain's transformer (the pipeline's when not set).
    pub fn transformer_ref(&self, cfg: &ComponentsConfig) -> ComponentRef {
        match &self.transformer {
            Some(t) => ComponentRef::from_setting(t),
            None => cfg.transformer_ref(),
        }
    }

    /// The chain's row transforms (the pipeline's `transforms` when not set).
    pub fn transform_refs(&self, cfg: &ComponentsConfig) -> Vec<ComponentRef> {
        self.transforms
            .as_ref()
            .unwrap_or(&cfg.transforms)
            .iter()
            .map(|t| ComponentRef::from_setting(t))
            .collect()
    }
}

fn default_builtin() -> String {
    "builtin".into()
}
fn default_reload() -> bool {
    true
}
fn default_cache() -> bool {
    true
}
fn default_max_memory_mib() -> usize {
    512
}
fn default_deadline_ms() -> u64 {
    30_000
}

impl Default for ComponentsConfig {
    fn default() -> Self {
        ComponentsConfig {
            validator: default_builtin(),
            transformer: default_builtin(),
            transforms: Vec::new(),
            merge_builder: default_builtin(),
            max_memory_mib: default_max_memory_mib(),
            deadline_ms: default_deadline_ms(),
            fuel: None,
            on_failure: OnFailure::default(),
            parallelism: 0,
            reload: default_reload(),
            cache: default_cache(),
            cache_dir: None,
            precompiled_dir: None,
            chains: Vec::new(),
            grants: Default::default(),
        }
    }
}

impl ComponentsConfig {
    /// The precompiled-component cache directory, when the cache is on.
    pub fn cache_path(&self) -> Option<PathBuf> {
        if !self.cache {
            return None;
        }
        if let Some(dir) = &self.cache_dir {
            return Some(dir.clone());
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("floe").join("components"))
    }

    /// `parallelism` resolved: 0 is the number of CPU cores (1 when unknown).
    pub fn parallelism(&self) -> usize {
        match self.parallelism {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn validator_ref(&self) -> ComponentRef {
        ComponentRef::from_setting(&self.validator)
    }
    pub fn transformer_ref(&self) -> ComponentRef {
        ComponentRef::from_setting(&self.transformer)
    }
    pub fn merge_builder_ref(&self) -> ComponentRef {
        ComponentRef::from_setting(&self.merge_builder)
    }

    /// The WASI capabilities granted to the component `r` refers to (none for the
    /// built-ins). Names were checked by [`Config::validate`]; an unknown one here is
    /// ignored.
    pub fn grants_of(&self, r: &ComponentRef) -> floe_host::Grants {
        let ComponentRef::Path(path) = r else {
            return floe_host::Grants::default();
        };
        let granted = self
            .grants
            .iter()
            .filter(|(p, _)| std::path::Path::new(p) == path)
            .flat_map(|(_, g)| g.wasi.iter().filter_map(|c| c.parse().ok()));
        floe_host::Grants::new(granted)
    }

    /// The chains in matching order, the default one (every topic, the pipeline's own
    /// components) last.
    pub fn all_chains(&self) -> Vec<ChainConfig> {
        let mut chains = self.chains.clone();
        chains.push(ChainConfig {
            topics: String::new(),
            ..ChainConfig::default()
        });
        chains
    }
}

/// Which sink to write to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Snowflake (or its emulator) over the driver protocol.
    #[default]
    Snowflake,
    /// Discard rows after building their MERGE: measures everything but the warehouse.
    None,
}

/// The sink section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `snowflake` (default) or `none`.
    #[serde(default)]
    pub kind: SinkKind,
    /// Settings of the Snowflake sink.
    #[serde(default)]
    pub snowflake: SnowflakeConfig,
}

/// How source names become Snowflake identifiers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdentifierCase {
    /// `customer_id` -> `"CUSTOMER_ID"` (queries may use unquoted names).
    #[default]
    Upper,
    /// Keep the source spelling: `"customer_id"`.
    Preserve,
}

/// What to do with a TRUNCATE of a source table.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TruncateMode {
    /// Empty the target table too, in order with the batch's other changes (default).
    #[default]
    Apply,
    /// Keep the target's rows; the truncate is logged and counted.
    Ignore,
}

/// What a source DELETE does to the target row.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    /// Remove the row (default).
    #[default]
    Hard,
    /// Keep the row with `__DELETED = TRUE` and the delete's `__OP`, `__LSN` and
    /// `__SOURCE_TS_MS`; the column is added to the table when missing.
    Soft,
}

/// Snowflake connection and table settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeConfig {
    /// Base URL: `https://<account>.snowflakecomputing.com`, or the emulator's.
    #[serde(default = "default_account_url")]
    pub account_url: String,
    /// Account identifier (as in the JWT issuer).
    #[serde(default = "default_account")]
    pub account: String,
    /// Login name.
    #[serde(default = "default_user")]
    pub user: String,
    /// Password (password auth). Never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// PKCS#8 PEM private key file (key-pair JWT auth); takes precedence over `password`.
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// The PEM private key itself (key-pair JWT auth), for where a file is awkward
    /// (`FLOE__SINK__SNOWFLAKE__PRIVATE_KEY`; the Lambda fills it from AWS Secrets
    /// Manager). Never printed. `private_key_path` wins when both are set.
    #[serde(default)]
    pub private_key: Option<Secret>,
    /// Target database (created by floe when missing and `create_tables` is on).
    #[serde(default = "default_database")]
    pub database: String,
    /// Target schema.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Virtual warehouse to run the MERGEs on.
    #[serde(default)]
    pub warehouse: Option<String>,
    /// Role to assume.
    #[serde(default)]
    pub role: Option<String>,
    /// Create missing target tables from the first batch's columns.
    #[serde(default = "default_true")]
    pub create_tables: bool,
    /// `upper` (default) or `preserve`.
    #[serde(default)]
    pub identifier_case: IdentifierCase,
    /// Source TRUNCATE events: `apply` (default) or `ignore`. (Debezium emits them only
    /// with `skipped.operations` not containing `t`.)
    #[serde(default)]
    pub truncate: TruncateMode,
    /// Target table name of every source table not mapped in `tables`: `{topic}`
    /// (default: the topic with `.` as `_`, e.g. `dbz.public.orders` -> `DBZ_PUBLIC_ORDERS`,
    /// as the Snowflake Kafka connector and Debezium's JDBC sink name tables), `{prefix}`
    /// (the topic without its last two segments), `{schema}`, `{table}`; in
    /// `identifier_case`. Two sources that map to one target are refused (see
    /// `shared_targets`).
    #[serde(default = "default_table_name")]
    pub table_name: String,
    /// Source table (`schema.table`) or topic -> target table name, used as written.
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    /// Target tables that several sources may feed on purpose (e.g. shards of one
    /// table). Any other target takes the rows of one source only: another source's
    /// rows and truncates that map to it go to the dead letter queue (`schema`).
    #[serde(default)]
    pub shared_targets: Vec<String>,
    /// Source DELETEs: `hard` (default: remove the row) or `soft` (flag it in a
    /// `__DELETED` column), for every table not listed in `table_deletes`.
    #[serde(default)]
    pub deletes: DeleteMode,
    /// Per source table (`schema.table`): `hard` or `soft`, overriding `deletes`.
    #[serde(default)]
    pub table_deletes: BTreeMap<String, DeleteMode>,
    /// Timeout of one HTTP request to Snowflake, in seconds.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
}

fn default_account_url() -> String {
    "http://127.0.0.1:28080".into()
}
fn default_account() -> String {
    "floe".into()
}
fn default_user() -> String {
    "floe".into()
}
fn default_database() -> String {
    "FLOE".into()
}
fn default_schema() -> String {
    "CDC".into()
}
fn default_table_name() -> String {
    "{topic}".into()
}
fn default_true() -> bool {
    true
}
fn default_request_timeout_secs() -> u64 {
    120
}

impl SnowflakeConfig {
    /// How deletes of a source table (`schema.table`) apply.
    pub fn deletes_of(&self, source_table: &str) -> DeleteMode {
        self.table_deletes
            .get(source_table)
            .copied()
            .unwrap_or(self.deletes)
    }
}

impl Default for SnowflakeConfig {
    fn default() -> Self {
        SnowflakeConfig {
            account_url: default_account_url(),
            account: default_account(),
            user: default_user(),
            password: None,
            private_key_path: None,
            private_key: None,
            database: default_database(),
            schema: default_schema(),
            warehouse: None,
            role: None,
            create_tables: default_true(),
            identifier_case: IdentifierCase::default(),
            truncate: TruncateMode::default(),
            table_name: default_table_name(),
            tables: BTreeMap::new(),
            shared_targets: Vec::new(),
            deletes: DeleteMode::default(),
            table_deletes: BTreeMap::new(),
            request_timeout_secs: default_request_timeout_secs(),
        }
    }
}

/// Which dead letter queue to write.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DlqKind {
    /// `kafka` with the Kafka source, `log` with the file source (default).
    #[default]
    Auto,
    /// A Kafka topic per source topic (`topic`), on the source's brokers.
    Kafka,
    /// JSON lines in the fixture format (`path`): `floe run --file` replays them.
    File,
    /// Logged and counted only.
    Log,
    /// Messages on an Amazon SQS queue (`sqs_queue_url`), one fixture line each
    /// (the Lambda only).
    Sqs,
    /// Objects in an Amazon S3 bucket (`s3_bucket`, `s3_prefix`), one JSON-lines
    /// object of fixture lines per source partition and batch (the Lambda only).
    S3,
}

/// Dead letter queue settings: every event floe cannot load is written here, with
/// headers saying why, before the batch's offsets are committed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    /// `auto` (default), `kafka`, `file` or `log`; the Lambda also writes `sqs` and
    /// `s3`.
    #[serde(default)]
    pub kind: DlqKind,
    /// DLQ topic name; `{topic}` stands for the source topic. Default `{topic}.dlq`.
    #[serde(default = "default_dlq_topic")]
    pub topic: String,
    /// File of the `file` kind (appended to). Default `floe-dlq.jsonl`.
    #[serde(default = "default_dlq_path")]
    pub path: PathBuf,
    /// How long one DLQ write may take before the batch is retried, in ms.
    #[serde(default = "default_dlq_timeout_ms")]
    pub timeout_ms: u64,
    /// `kafka` kind: a dead letter larger than this (key + value + headers) is written
    /// in a bounded form: floe's headers, the start of its key and value, and the
    /// original sizes and SHA-256 digests in `floe.original.*` headers (`floe.cut`
    /// says what was cut). A letter the DLQ topic still refuses as too large is cut
    /// further. Default 1,000,000, under Kafka's default `max.message.bytes`; raise it
    /// with the DLQ topics' limit.
    #[serde(default = "default_dlq_max_letter_bytes")]
    pub max_letter_bytes: usize,
    /// Extra librdkafka producer settings for the `kafka` kind (secret-looking values
    /// print as `***`).
    #[serde(default)]
    pub options: KafkaOptions,
    /// `sqs` kind: the queue's URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`;
    /// a `.fifo` queue gets each source partition as its message group). Letters
    /// larger than SQS's 256 KiB are written in their bounded form.
    #[serde(default)]
    pub sqs_queue_url: Option<String>,
    /// `s3` kind: the bucket.
    #[serde(default)]
    pub s3_bucket: Option<String>,
    /// `s3` kind: the key prefix; objects are
    /// `<prefix><topic>/<partition>/<first offset>-<last offset>.<dead at ms>.jsonl`.
    /// Default `floe-dlq/`.
    #[serde(default = "default_dlq_s3_prefix")]
    pub s3_prefix: String,
}

fn default_dlq_s3_prefix() -> String {
    "floe-dlq/".into()
}

fn default_dlq_topic() -> String {
    "{topic}.dlq".into()
}
fn default_dlq_path() -> PathBuf {
    "floe-dlq.jsonl".into()
}
fn default_dlq_timeout_ms() -> u64 {
    30_000
}
fn default_dlq_max_letter_bytes() -> usize {
    1_000_000
}

impl Default for DlqConfig {
    fn default() -> Self {
        DlqConfig {
            kind: DlqKind::default(),
            topic: default_dlq_topic(),
            path: default_dlq_path(),
            timeout_ms: default_dlq_timeout_ms(),
            max_letter_bytes: default_dlq_max_letter_bytes(),
            options: KafkaOptions::default(),
            sqs_queue_url: None,
            s3_bucket: None,
            s3_prefix: default_dlq_s3_prefix(),
        }
    }
}

impl DlqConfig {
    /// The DLQ topic of a source topic.
    pub fn topic_for(&self, source_topic: &str) -> String {
        self.topic.replace("{topic}", source_topic)
    }
}

impl ComponentsConfig {
    /// Pure checks of values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.max_memory_mib == 0 || self.deadline_ms == 0 {
            return bad("components.max_memory_mib and components.deadline_ms must be > 0".into());
        }
        for (i, chain) in self.chains.iter().enumerate() {
            if let Err(e) = regex::Regex::new(&chain.topics) {
                return bad(format!("components.chains[{i}].topics: {e}"));
            }
            if chain.validators.as_ref().is_some_and(Vec::is_empty) {
                return bad(format!(
                    "components.chains[{i}].validators is empty (leave it out for components.validator)"
                ));
            }
            if chain.transforms.iter().flatten().any(|t| t == "builtin") {
                return bad(format!(
                    "components.chains[{i}].transforms: there is no built-in row transform; list component paths"
                ));
            }
        }
        let used = crate::components::files_of(self);
        for (path, grant) in &self.grants {
            if path == "builtin" {
                return bad(
                    "components.grants: built-in components import nothing and take no grants"
                        .into(),
                );
            }
            if !used.iter().any(|p| p == std::path::Path::new(path)) {
                return bad(format!(
                    "components.grants: {path:?} is not a component of this configuration (grants are keyed by the path as written for validator, transformer, transforms, merge_builder or a chain)"
                ));
            }
            for c in &grant.wasi {
                if let Err(e) = c.parse::<floe_host::Capability>() {
                    return bad(format!("components.grants.{path:?}.wasi: {e}"));
                }
            }
        }
        if self.transforms.iter().any(|t| t == "builtin") {
            return bad(
                "components.transforms: there is no built-in row transform; list component paths"
                    .into(),
            );
        }
        Ok(())
    }
}

impl DeliveryConfig {
    /// The warehouse and DLQ breakers' settings (`breaker_max_open_ms` never below
    /// `breaker_open_ms`) and the shutdown deadline.
    pub fn breaker(&self) -> crate::breaker::BreakerSettings {
        crate::breaker::BreakerSettings {
            open_for: Duration::from_millis(self.breaker_open_ms),
            max_open_for: Duration::from_millis(self.breaker_max_open_ms.max(self.breaker_open_ms)),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
        }
    }

    /// Pure checks of values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.load_attempts == 0 || self.breaker_open_ms == 0 {
            return Err(ConfigError::Invalid(
                "delivery.load_attempts and delivery.breaker_open_ms must be > 0".into(),
            ));
        }
        Ok(())
    }
}

impl DlqConfig {
    /// Pure checks of values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.topic.trim().is_empty() {
            return bad("dlq.topic is empty");
        }
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
        match self.kind {
            DlqKind::Sqs if !set(&self.sqs_queue_url) => {
                return bad("dlq.kind = \"sqs\" needs dlq.sqs_queue_url");
            }
            DlqKind::Sqs
                if !self
                    .sqs_queue_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://") || u.starts_with("http://")) =>
            {
                return bad(
                    "dlq.sqs_queue_url must be the queue's URL (https://sqs.<region>.amazonaws.com/<account>/<name>)",
                );
            }
            DlqKind::S3 if !set(&self.s3_bucket) => {
                return bad("dlq.kind = \"s3\" needs dlq.s3_bucket");
            }
            _ => {}
        }
        Ok(())
    }
}

impl SinkConfig {
    /// Pure checks of values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.kind == SinkKind::Snowflake {
            let s = &self.snowflake;
            if s.database.is_empty() || s.schema.is_empty() {
                return bad("sink.snowflake.database and schema must be set".into());
            }
            crate::targets::check_mappings(s).map_err(ConfigError::Invalid)?;
            if !(s.account_url.starts_with("http://") || s.account_url.starts_with("https://")) {
                return bad(format!(
                    "sink.snowflake.account_url must start with http:// or https://, got {:?}",
                    s.account_url
                ));
            }
        }
        Ok(())
    }
}
