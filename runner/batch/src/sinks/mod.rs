//! Where rows go. The pipeline hands a sink one [`TableLoad`] per table per batch (the
//! MERGE plan already built by the merge-builder component) and commits the source's
//! offsets only after [`Sink::load`] returned `Ok`.

use floe_host::types::{MergePlan, TableShape};

pub mod null;
pub mod plan;
pub mod schema;
pub mod snowflake;

/// One table's share of a batch.
#[derive(Debug, Clone)]
pub struct TableLoad {
    /// Source table, `schema.table`.
    pub source_table: String,
    /// Target name parts: database, schema, table (unquoted, as configured).
    pub target: Vec<String>,
    /// Columns as reported by the transformer for this batch.
    pub shape: TableShape,
    /// Empty the target table before running the plan: the batch held a TRUNCATE of
    /// the source table, and the plan holds only the changes that came after it.
    pub truncate: Option<Truncation>,
    /// Statements to run, in order (none when the batch only truncated the table).
    pub plan: MergePlan,
    /// The batch messages (indexes) the plan's rows came from, to report them if the
    /// table refuses them.
    pub origins: Vec<usize>,
    /// One warehouse request id per plan statement, made once per batch so that every
    /// retry of the load (and every breaker probe) resubmits the same statement under
    /// the same id, which the warehouse runs at most once.
    pub requests: Vec<std::sync::Arc<floe_snowflake::RequestId>>,
    /// The source commit time (Debezium `source.ts_ms`, ms since the epoch) of the
    /// table's latest change in the plan, when the change carried one: the table's
    /// freshness once loaded.
    pub latest_source_ms: Option<i64>,
}

/// A source TRUNCATE to apply to the target before a table's plan.
#[derive(Debug, Clone)]
pub struct Truncation {
    /// The truncate's source log position (PostgreSQL LSN). When known, only rows
    /// loaded from changes below it (or without one) are removed: a change that came
    /// after the truncate but reached floe first, from another partition, stays.
    /// `None`: the whole table is emptied.
    pub below_lsn: Option<i64>,
    /// Its warehouse request id, made once per batch like the plan's: a retried load
    /// resubmits the truncate under the same id, so the warehouse runs it at most
    /// once, never again after the batch's rows were merged.
    pub request: std::sync::Arc<floe_snowflake::RequestId>,
}

impl Truncation {
    pub fn new(below_lsn: Option<i64>) -> Truncation {
        Truncation {
            below_lsn,
            request: Default::default(),
        }
    }
}

/// What a sink did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Statements executed.
    pub statements: u64,
    /// Rows the warehouse reports as inserted / updated / deleted (when it reports them).
    pub rows_inserted: u64,
    pub rows_updated: u64,
    pub rows_deleted: u64,
    /// Tables ensured on first sight this run (created when missing).
    pub tables_created: u64,
    /// Columns added to existing tables (new source columns).
    pub columns_added: u64,
    /// Tables truncated.
    pub tables_truncated: u64,
    /// Columns widened in place (`ALTER COLUMN .. SET DATA TYPE`).
    pub columns_widened: u64,
    /// Loads the warehouse refused for their data, not for a transient reason; their
    /// rows go to the dead letter queue, the batch's other loads were applied.
    pub refused: Vec<Refused>,
    /// Every statement the load ran, in order (for the metrics: statements by kind,
    /// their durations, rows by table and operation).
    pub executed: Vec<Executed>,
}

/// One warehouse statement a load ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// The target table, `DATABASE.SCHEMA.TABLE` as configured.
    pub table: String,
    /// The statement's kind: [`statement_kind`] of its SQL.
    pub kind: &'static str,
    pub duration: std::time::Duration,
    /// Whether the warehouse ran it.
    pub ok: bool,
    /// Rows the warehouse reported inserted / updated / deleted.
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// A statement's kind for the metrics: its first SQL keyword in lower case, from a
/// fixed set (`other` for anything else), so the label's values stay bounded.
pub fn statement_kind(sql: &str) -> &'static str {
    const KINDS: [&str; 11] = [
        "merge", "insert", "update", "delete", "create", "alter", "truncate", "select", "describe",
        "show", "drop",
    ];
    let word = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    KINDS
        .into_iter()
        .find(|k| word.eq_ignore_ascii_case(k))
        .unwrap_or("other")
}

impl LoadReport {
    /// Records that `load` (index `index` of the batch's loads) was not applied.
    pub fn refuse(
        &mut self,
        index: usize,
        load: &TableLoad,
        category: &'static str,
        reason: String,
    ) {
        tracing::error!(table = %load.target.join("."), rows = load.plan.rows_after_dedup, category, reason = %reason, "table refuses the batch's rows");
        self.refused.push(Refused {
            load: index,
            category,
            reason,
        });
    }
}

/// A table's load that was not applied because of its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Index into the batch's loads.
    pub load: usize,
    /// `schema`: a column's type changed in a way the target column cannot hold;
    /// `warehouse`: the warehouse rejected a value (a data error, e.g. a number it
    /// cannot parse).
    pub category: &'static str,
    pub reason: String,
}

/// Errors of a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Snowflake(#[from] floe_snowflake::Error),
    #[error("sink configuration: {0}")]
    Config(String),
}

impl SinkError {
    /// Whether the same load may succeed if tried again (HTTP 429/5xx, timeouts, lost
    /// connections, expired sessions), as opposed to errors that will repeat (SQL
    /// compile errors, auth, bad configuration).
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Snowflake(e) => e.is_retryable(),
            SinkError::Config(_) => false,
        }
    }
}

/// A warehouse (or stand-in) that applies batches atomically per table.
pub trait Sink: Send {
    /// Applies every table's plan. Returns only after the warehouse committed them.
    fn load(
        &mut self,
        loads: &[TableLoad],
    ) -> impl Future<Output = Result<LoadReport, SinkError>> + Send;
}

/// Converts the host's table shape into the core logic's, for DDL built natively.
pub fn core_shape(shape: &TableShape) -> floe_cdc_core::TableShape {
    floe_cdc_core::TableShape {
        name: shape.name.clone(),
        columns: shape
            .columns
            .iter()
            .map(|c| floe_cdc_core::Column {
                name: c.name.clone(),
                data_type: c.data_type.clone(),
                is_key: c.is_key,
            })
            .collect(),
    }
}
