//! The Snowflake sink: runs each table's MERGE plan over Snowflake's driver protocol
//! (`floe-snowflake`), creating the database, schema and missing tables first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use floe_snowflake::{Auth, BindRef, Client, ConnectOptions, QueryResult, RequestId};
use tracing::Instrument as _;

use super::schema::{self, Fit, TargetType};
use super::{
    Executed, LoadReport, Sink, SinkError, TableLoad, Truncation, core_shape, statement_kind,
};
use crate::config::{IdentifierCase, SnowflakeConfig};

pub fn core_case(case: IdentifierCase) -> floe_cdc_core::IdentifierCase {
    match case {
        IdentifierCase::Upper => floe_cdc_core::IdentifierCase::Upper,
        IdentifierCase::Preserve => floe_cdc_core::IdentifierCase::Preserve,
    }
}

/// The trace span of one warehouse statement on `table` (`[database, schema, table]`),
/// with the database client conventions' attributes: `db.collection.name` is the
/// qualified name the statement uses (as on `db.client.operation.duration`),
/// `db.namespace` its database and schema.
fn statement_span(table: &[String], kind: &'static str, binds: usize) -> tracing::Span {
    let namespace = table
        .split_last()
        .map(|(_, rest)| rest.join("."))
        .unwrap_or_default();
    let collection = table.join(".");
    tracing::info_span!(
        target: floe_host::TRACE_TARGET,
        "statement",
        otel.name = %format_args!("{} {collection}", kind.to_uppercase()),
        otel.kind = "client",
        db.system.name = "snowflake",
        db.namespace = %namespace,
        db.collection.name = collection.as_str(),
        db.operation.name = kind,
        floe.statement.binds = floe_host::span_int(binds),
        db.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    )
}

/// Marks a statement's span failed: Snowflake's error code (or HTTP status) as the
/// response status, the error's kind as `error.type`.
fn record_failure(span: &tracing::Span, e: &floe_snowflake::Error) {
    use floe_snowflake::Error as E;
    let (status, error_type) = match e {
        E::Sql { code, .. } | E::Login { code, .. } => (Some(code.clone()), "sql"),
        E::Status { status, .. } => (Some(status.to_string()), "http_status"),
        E::Http { .. } => (None, "http"),
        E::Timeout { .. } => (None, "timeout"),
        E::SessionExpired => (None, "session_expired"),
        E::Decode(_) => (None, "decode"),
        _ => (None, "other"),
    };
    if let Some(status) = status {
        span.record("db.response.status_code", status);
    }
    crate::trace::failed(span, error_type, e);
}

/// A connected Snowflake sink.
pub struct SnowflakeSink {
    client: Client,
    cfg: SnowflakeConfig,
    /// Tables known to exist this run, with their columns (target identifiers) and
    /// column types.
    known_tables: HashMap<Vec<String>, HashMap<String, TargetType>>,
    /// The statements of the load running now, for its report.
    executed: Mutex<Vec<Executed>>,
}

impl SnowflakeSink {
    /// Logs in and, when `create_tables` is on, creates the database and schema.
    pub async fn connect(cfg: &SnowflakeConfig) -> Result<SnowflakeSink, SinkError> {
        let auth = match (&cfg.private_key_path, &cfg.password) {
            (None, _) if cfg.private_key.is_some() => Auth::KeyPair {
                private_key_pem: cfg.private_key.clone().unwrap_or_default(),
            },
            (Some(path), _) => {
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    SinkError::Config(format!(
                        "cannot read sink.snowflake.private_key_path {}: {e}",
                        path.display()
                    ))
                })?;
                Auth::KeyPair {
                    private_key_pem: pem.into(),
                }
            }
            (None, Some(pw)) => Auth::Password(pw.clone()),
            (None, None) => Auth::Password(String::new().into()),
        };
        let opts = ConnectOptions {
            account_url: cfg.account_url.clone(),
            account: cfg.account.clone(),
            user: cfg.user.clone(),
            auth,
            database: None,
            schema: None,
            warehouse: cfg.warehouse.clone(),
            role: cfg.role.clone(),
            request_timeout: Duration::from_secs(cfg.request_timeout_secs),
            session_parameters: Default::default(),
        };
        let client = Client::connect(opts).await?;
        let sink = SnowflakeSink {
            client,
            cfg: cfg.clone(),
            known_tables: HashMap::new(),
            executed: Mutex::default(),
        };
        if cfg.create_tables {
            let db = floe_cdc_core::sql::quote_ident(
                &cfg.database,
                floe_cdc_core::IdentifierCase::Preserve,
            );
            let schema = floe_cdc_core::sql::quote_ident(
                &cfg.schema,
                floe_cdc_core::IdentifierCase::Preserve,
            );
            sink.client
                .execute(&format!("CREATE DATABASE IF NOT EXISTS {db}"), &[])
                .await?;
            sink.client
                .execute(&format!("CREATE SCHEMA IF NOT EXISTS {db}.{schema}"), &[])
                .await?;
        }
        tracing::info!(account_url = %cfg.account_url, database = %cfg.database, schema = %cfg.schema, "snowflake sink connected");
        Ok(sink)
    }

    /// The client, for callers that need to query the target (tests, the demo).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs one statement of a load on `table` (under `request` when given) and notes
    /// it for the load's report.
    async fn run(
        &self,
        table: &[String],
        sql: &str,
        binds: &[BindRef<'_>],
        request: Option<&RequestId>,
    ) -> Result<QueryResult, floe_snowflake::Error> {
        let kind = statement_kind(sql);
        let span = statement_span(table, kind, binds.len());
        let started = Instant::now();
        let res = async {
            match request {
                Some(request) => self.client.execute_as(sql, binds, request).await,
                None => self.client.execute_as(sql, binds, &RequestId::new()).await,
            }
        }
        .instrument(span.clone())
        .await;
        if let Err(e) = &res {
            record_failure(&span, e);
        }
        let counted = |n: Option<u64>| n.unwrap_or(0);
        let ok = res.as_ref().ok();
        let executed = Executed {
            table: table.join("."),
            kind,
            duration: started.elapsed(),
            ok: ok.is_some(),
            inserted: counted(ok.and_then(|r| r.rows_inserted)),
            updated: counted(ok.and_then(|r| r.rows_updated)),
            deleted: counted(ok.and_then(|r| r.rows_deleted)),
        };
        self.executed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(executed);
        res
    }

    /// The statements run since the last call.
    fn take_executed(&self) -> Vec<Executed> {
        std::mem::take(
            &mut *self
                .executed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// The columns (identifiers) of a target table with their types; empty when it
    /// does not exist.
    async fn target_columns(
        &self,
        target: &[String],
    ) -> Result<HashMap<String, TargetType>, SinkError> {
        let columns_sql = format!(
            "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, CHARACTER_MAXIMUM_LENGTH \
             FROM {}.INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            floe_cdc_core::qualified(&target[..1]),
            floe_cdc_core::sql_string_literal(&target[1]),
            floe_cdc_core::sql_string_literal(&target[2]),
        );
        match self.run(target, &columns_sql, &[], None).await {
            Ok(res) => Ok(res
                .rows
                .into_iter()
                .filter_map(|r| {
                    let mut r = r.into_iter();
                    let name = r.next().flatten()?;
                    let data_type = r.next().flatten().unwrap_or_default().to_ascii_uppercase();
                    let mut num = || r.next().flatten().and_then(|v| v.parse::<u64>().ok());
                    let (precision, scale, length) = (num(), num(), num());
                    Some((
                        name,
                        TargetType {
                            data_type,
                            precision: precision.map(|p| p as u32),
                            scale: scale.map(|s| s as u32),
                            length,
                        },
                    ))
                })
                .collect()),
            // The database itself does not exist (yet).
            Err(floe_snowflake::Error::Sql { code, .. }) if code == "002003" => Ok(HashMap::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies a source TRUNCATE: removes the rows loaded from changes below the
    /// truncate's LSN (`DELETE ... WHERE __LSN < lsn`), or every row when the LSN or
    /// the table's `__LSN` column is missing (`TRUNCATE TABLE`). A table that does not
    /// exist has nothing to empty.
    async fn truncate(
        &mut self,
        load: &TableLoad,
        truncation: &Truncation,
        report: &mut LoadReport,
    ) -> Result<(), SinkError> {
        let case = core_case(self.cfg.identifier_case);
        let lsn_column = floe_cdc_core::sql::identifier(floe_cdc_core::LSN_COLUMN, case);
        // (table exists, table has the __LSN column)
        let (exists, has_lsn) = match self.known_tables.get(&load.target) {
            Some(columns) => (!columns.is_empty(), columns.contains_key(&lsn_column)),
            None => {
                let columns = self.target_columns(&load.target).await?;
                (!columns.is_empty(), columns.contains_key(&lsn_column))
            }
        };
        let target = load.target.join(".");
        if !exists {
            tracing::info!(table = %target, "truncate of a table that does not exist yet: nothing to empty");
            return Ok(());
        }
        let table = floe_cdc_core::qualified(&load.target);
        let sql = match truncation.below_lsn {
            Some(lsn) if has_lsn => {
                let lsn_column = floe_cdc_core::quote_ident(floe_cdc_core::LSN_COLUMN, case);
                format!("DELETE FROM {table} WHERE {lsn_column} IS NULL OR {lsn_column} < {lsn}")
            }
            _ => format!("TRUNCATE TABLE {table}"),
        };
        let res = self
            .run(&load.target, &sql, &[], Some(&truncation.request))
            .await?;
        report.statements += 1;
        report.tables_truncated += 1;
        report.rows_deleted += res.rows_deleted.unwrap_or(0);
        tracing::info!(table = %target, below_lsn = ?truncation.below_lsn, "target table truncated");
        Ok(())
    }

    /// On a table's first sight this run: creates it when missing and reads its columns.
    /// Then adds every column of the batch's shape the table lacks (a column added at the
    /// source) and widens columns whose type grew where Snowflake can ([`schema::fit`]).
    /// Columns dropped at the source stay in the target and are no longer written.
    /// `Ok(Err(reason))`: a column's type changed in a way the target cannot hold; the
    /// load must not run.
    async fn ensure_table(
        &mut self,
        load: &TableLoad,
    ) -> Result<Result<Ensured, String>, SinkError> {
        let mut done = Ensured::default();
        if !self.cfg.create_tables {
            return Ok(Ok(done));
        }
        let case = core_case(self.cfg.identifier_case);
        let invalid = |e: floe_cdc_core::Error| {
            SinkError::Config(format!("table {}: {e}", load.source_table))
        };
        if !self.known_tables.contains_key(&load.target) {
            let ddl =
                floe_cdc_core::sql::create_table_sql(&load.target, &core_shape(&load.shape), case)
                    .map_err(invalid)?;
            self.run(&load.target, &ddl, &[], None).await?;
            let existing = self.target_columns(&load.target).await?;
            tracing::info!(table = %load.target.join("."), columns = existing.len(), "target table ensured");
            self.known_tables.insert(load.target.clone(), existing);
            done.tables_created = 1;
        }
        let table = floe_cdc_core::qualified(&load.target);
        for column in &load.shape.columns {
            let ident = floe_cdc_core::sql::identifier(&column.name, case);
            let data_type =
                floe_cdc_core::sql::validate_data_type(&column.data_type).map_err(invalid)?;
            let quoted = floe_cdc_core::quote_ident(&column.name, case);
            let known = self.known_tables.get(&load.target).expect("inserted above");
            match known.get(&ident) {
                None => {
                    let sql = format!(
                        "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {quoted} {data_type}"
                    );
                    self.run(&load.target, &sql, &[], None).await?;
                    tracing::info!(table = %load.target.join("."), column = %ident, data_type = %data_type, "target column added");
                    done.columns_added += 1;
                }
                Some(existing) => match schema::fit(existing, &data_type) {
                    Fit::Fits => continue,
                    Fit::Incompatible(reason) => {
                        return Ok(Err(format!(
                            "schema: table {} column {ident}: {reason}",
                            load.target.join(".")
                        )));
                    }
                    Fit::Widen(wider) => {
                        let sql = format!(
                            "ALTER TABLE {table} ALTER COLUMN {quoted} SET DATA TYPE {wider}"
                        );
                        self.run(&load.target, &sql, &[], None).await?;
                        tracing::info!(table = %load.target.join("."), column = %ident, data_type = %wider, "target column widened");
                        done.columns_widened += 1;
                    }
                },
            }
        }
        if done.columns_added + done.columns_widened > 0 {
            // The cache takes the warehouse's view of the changed columns.
            let fresh = self.target_columns(&load.target).await?;
            self.known_tables.insert(load.target.clone(), fresh);
        }
        Ok(Ok(done))
    }
}

/// Snowflake's data errors (`100xxx`: numeric value not recognized, string too long,
/// NULL into a NOT NULL column, ...): the same statement fails again on retry.
pub fn is_data_error(code: &str) -> bool {
    code.len() == 6 && code.starts_with("100")
}

/// What [`SnowflakeSink::ensure_table`] changed.
#[derive(Debug, Default)]
struct Ensured {
    tables_created: u64,
    columns_added: u64,
    columns_widened: u64,
}

impl Sink for SnowflakeSink {
    async fn load(&mut self, loads: &[TableLoad]) -> Result<LoadReport, SinkError> {
        let mut report = LoadReport::default();
        // A failed attempt's statements are not reported (its error is).
        self.take_executed();
        for (index, load) in loads.iter().enumerate() {
            if let Some(truncation) = &load.truncate {
                self.truncate(load, truncation, &mut report).await?;
            }
            if load.plan.statements.is_empty() {
                continue;
            }
            let ensured = match self.ensure_table(load).await? {
                Ok(ensured) => ensured,
                Err(reason) => {
                    report.refuse(index, load, "schema", reason);
                    continue;
                }
            };
            report.tables_created += ensured.tables_created;
            report.columns_added += ensured.columns_added;
            report.columns_widened += ensured.columns_widened;
            for (i, st) in load.plan.statements.iter().enumerate() {
                // Borrowed: a MERGE's bind holds the table's rows of the whole batch.
                let binds: Vec<BindRef<'_>> = (st.binds.iter())
                    .map(|b| BindRef {
                        data_type: &b.data_type,
                        value: b.value.as_deref(),
                    })
                    .collect();
                let request = load.requests.get(i).map(|r| &**r);
                let executed = self.run(&load.target, &st.sql, &binds, request).await;
                let res = match executed {
                    Ok(res) => res,
                    // A data error (Snowflake's 100xxx: a value it cannot convert or
                    // store) repeats on every retry: the table's rows go to the DLQ.
                    Err(floe_snowflake::Error::Sql { code, message, .. })
                        if is_data_error(&code) =>
                    {
                        let reason = format!(
                            "warehouse: table {}: {code}: {message}",
                            load.target.join(".")
                        );
                        report.refuse(index, load, "warehouse", reason);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                report.statements += 1;
                report.rows_inserted += res.rows_inserted.unwrap_or(0);
                report.rows_updated += res.rows_updated.unwrap_or(0);
                report.rows_deleted += res.rows_deleted.unwrap_or(0);
            }
        }
        report.executed = self.take_executed();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_are_the_100xxx_codes() {
        for code in ["100038", "100072", "100078"] {
            assert!(is_data_error(code), "{code}");
        }
        for code in ["002003", "000904", "390114", "1000", "100"] {
            assert!(!is_data_error(code), "{code}");
        }
    }
}
