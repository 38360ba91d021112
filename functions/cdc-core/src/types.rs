//! Plain Rust mirrors of the types of `wit/floe.wit` (`floe:cdc/types`).
//!
//! The guest crates convert between these and the bindgen types; native callers (the
//! runner's sink, benchmarks) use them directly. Field meanings are those of the WIT.

use std::fmt;

/// One Kafka record exactly as consumed (WIT `event`), borrowing its bytes.
///
/// The topic is resolved to its name (WIT events carry an index into `batch.topics`;
/// see [`crate::resolve_topic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// Kafka topic name.
    pub topic: &'a str,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset within the partition.
    pub offset: i64,
    /// Broker/producer timestamp in ms since the epoch, when present.
    pub timestamp_ms: Option<i64>,
    /// Message key bytes (Debezium: JSON of the primary key). `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Message value bytes (Debezium: JSON envelope). `None` for a tombstone.
    pub value: Option<&'a [u8]>,
}

/// A validator's decision about one event (WIT `verdict`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Load the event.
    Ok,
    /// Do not load the event; the reason is logged, counted and sent to the DLQ.
    Rejected(String),
}

/// The change a row carries (WIT `op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `c`: a new row.
    Insert,
    /// `u`: a changed row.
    Update,
    /// `d`: a removed row.
    Delete,
    /// `r`: a row read by a snapshot.
    Read,
}

impl Op {
    /// Debezium's one-letter code (`c`, `u`, `d`, `r`), as written to the `__op` column.
    pub fn code(self) -> &'static str {
        match self {
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
        }
    }

    /// The op for a Debezium code, if it is one of `c`, `u`, `d`, `r`.
    pub fn from_code(code: &str) -> Option<Op> {
        match code {
            "c" => Some(Op::Insert),
            "u" => Some(Op::Update),
            "d" => Some(Op::Delete),
            "r" => Some(Op::Read),
            _ => None,
        }
    }
}

/// One column of a target table, named as in the source (WIT `column`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Source column name (the JSON key in `row.data`).
    pub name: String,
    /// Snowflake type to create it with, e.g. `NUMBER(38,0)`, `VARCHAR`, `VARIANT`.
    pub data_type: String,
    /// Part of the primary key (from the Debezium message key).
    pub is_key: bool,
}

/// The shape of one source table as seen in a batch (WIT `table-shape`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// Source table as `schema.table` (e.g. `public.customers`).
    pub name: String,
    /// Key columns first, in key order, then the other columns in source order, then
    /// floe's metadata columns ([`crate::METADATA_COLUMNS`]).
    pub columns: Vec<Column>,
}

/// One flat row ready to load (WIT `row`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Index of the event it came from in the batch.
    pub event: u32,
    /// Index into [`Transformed::tables`].
    pub table: u32,
    pub op: Op,
    /// Canonical JSON array of the key column values, in key order: the dedup key.
    pub key: String,
    /// JSON object: every column of the row (by source name) plus metadata columns.
    pub data: String,
    /// Position of the change in the source log (PostgreSQL LSN); -1 when unknown.
    pub lsn: i64,
}

/// An event that could not be turned into a row (WIT `failure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Index into the batch's events.
    pub event: u32,
    /// Why, for humans and the DLQ.
    pub reason: String,
}

/// A truncate of a whole source table (WIT `truncate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Index into the batch's events.
    pub event: u32,
    /// Source table as `schema.table`.
    pub table: String,
    /// Source log position (PostgreSQL LSN), -1 when unknown.
    pub lsn: i64,
}

/// The transformer's output for one batch (WIT `transformed`). Events that carry no
/// row change (tombstones, heartbeats, transaction metadata, logical messages) appear
/// in none of the lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transformed {
    pub tables: Vec<TableShape>,
    pub rows: Vec<Row>,
    pub truncates: Vec<Truncate>,
    pub failures: Vec<Failure>,
}

/// How source names become Snowflake identifiers, always double-quoted (WIT
/// `identifier-case`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentifierCase {
    /// `customer_id` -> `"CUSTOMER_ID"` (Unicode upper case).
    Upper,
    /// Keep the source spelling exactly: `"customer_id"`.
    Preserve,
}

/// What a delete does to the target row (WIT `delete-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeleteMode {
    /// Remove the row.
    #[default]
    Hard,
    /// Keep the row, flagged in its `__deleted` column (see [`crate::merge`]).
    Soft,
}

/// What the MERGE builder gets: the rows of one table from one batch, in batch order
/// (WIT `merge-input`, borrowed).
#[derive(Debug, Clone, Copy)]
pub struct MergeInput<'a> {
    /// Target table name parts (database, schema, table), quoted as given.
    pub target: &'a [String],
    /// How column names become identifiers.
    pub identifier_case: IdentifierCase,
    /// Columns of the target, key columns flagged.
    pub shape: &'a TableShape,
    /// The rows of this table, in batch order. `row.table` is ignored.
    pub rows: &'a [Row],
    /// Hard or soft deletes.
    pub deletes: DeleteMode,
}

/// A value bound to a `?` placeholder, in Snowflake's binding format (WIT `bind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Snowflake bind type, e.g. `TEXT`.
    pub data_type: String,
    /// `None` binds SQL NULL.
    pub value: Option<String>,
}

/// One SQL statement with its positional binds (WIT `statement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub binds: Vec<Bind>,
}

/// The statements that apply one table's batch, to run in order (WIT `merge-plan`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergePlan {
    pub statements: Vec<Statement>,
    /// Rows after in-batch deduplication (one per key).
    pub rows_after_dedup: u32,
}

/// A failure of a whole call (WIT `error`). Failures of single events are values
/// ([`Verdict::Rejected`], [`Transformed::failures`]), never errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input broke the contract (an index out of range, a shape without key...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The function could not do its work.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether running the same call again can help. Everything here is a pure
    /// function of its input, so never.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
