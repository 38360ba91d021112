//! A Snowflake client speaking Snowflake's driver protocol, the one its own drivers use:
//! `POST /session/v1/login-request`, then `POST /queries/v1/query-request` with positional
//! bindings, answered with JSON or Arrow rowsets. It works against real Snowflake and against
//! the fakesnow emulator (`fakesnow -s`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), floe_snowflake::Error> {
//! use floe_snowflake::{Auth, Bind, Client, ConnectOptions, Secret};
//! let client = Client::connect(ConnectOptions {
//!     account_url: "https://myorg-myaccount.snowflakecomputing.com".into(),
//!     account: "myorg-myaccount".into(),
//!     user: "FLOE".into(),
//!     auth: Auth::KeyPair { private_key_pem: Secret::new(std::fs::read_to_string("key.p8").unwrap()) },
//!     database: Some("ANALYTICS".into()),
//!     schema: Some("PUBLIC".into()),
//!     warehouse: Some("LOAD_WH".into()),
//!     role: None,
//!     request_timeout: std::time::Duration::from_secs(90),
//!     session_parameters: Default::default(),
//! })
//! .await?;
//! let result = client.execute("SELECT id, name FROM users WHERE id = ?", &[Bind::text("42")]).await?;
//! for row in &result.rows {
//!     println!("{:?}", row);
//! }
//! client.close().await?;
//! # Ok(()) }
//! ```
//!
//! # What it handles
//! - Password and key-pair (RS256 JWT, unencrypted PKCS#8 or PKCS#1 PEM) authentication.
//! - Statements Snowflake reports as still running (codes `333333`/`333334`): `getResultUrl` is
//!   polled, bounded by `STATEMENT_TIMEOUT_IN_SECONDS` from the session parameters (plus one
//!   request timeout) or one hour.
//! - Large results split into `chunks`: downloaded in order from their pre-signed URLs with
//!   `chunkHeaders` (or the `qrmk` SSE-C key), gzip or not, JSON or Arrow.
//! - Session expiry (`390112` and friends): renewed with the master token, or by logging in
//!   again, then the statement is resubmitted once.
//! - One pooled `reqwest` client per [`Client`] (gzip answers, per-request timeout).
//!
//! Not handled: encrypted private keys, multi-statement texts, array (multi-row) binds, PUT/GET
//! file transfer, request body compression.
//!
//! # Canonical values
//! Every value of [`QueryResult::rows`] is text (or `None` for SQL NULL) in one canonical form
//! per Snowflake type, whatever encoding the server chose (JSON or Arrow), so results from the
//! two compare equal:
//!
//! | type | form | example |
//! |---|---|---|
//! | NUMBER(p,s) (FIXED) | plain decimal, exactly `s` fraction digits | `12345.67`, `9007199254740993` |
//! | FLOAT (REAL) | Rust's shortest round-trip text (`f64` `Display`) | `1.5`, `1`, `NaN`, `inf` |
//! | BOOLEAN | `true` / `false` | `true` |
//! | DATE | `YYYY-MM-DD` | `2024-01-02` |
//! | TIME(s) | `HH:MM:SS` plus `s` fraction digits (none for scale 0) | `12:34:56.789000000` |
//! | TIMESTAMP_NTZ(s) | `YYYY-MM-DD HH:MM:SS` plus `s` fraction digits | `2024-01-02 03:04:05.123456000` |
//! | TIMESTAMP_LTZ(s), TIMESTAMP_TZ(s) | the instant in UTC, `s` fraction digits, `+00:00` | `2024-01-02 01:04:05.123456000+00:00` |
//! | VARIANT, OBJECT, ARRAY | compact JSON, number text and key order as stored | `{"x":[1,2.5]}` |
//! | BINARY | lowercase hex | `deadbeef` |
//! | TEXT and anything else sent as text | as is | `héllo ✓` |
//!
//! TIMESTAMP_TZ keeps the instant but not its original offset. fakesnow reports a scale of 9
//! for every TIME and TIMESTAMP column (so nine fraction digits), reports OBJECT and ARRAY
//! columns as VARIANT and TIMESTAMP_LTZ as TIMESTAMP_TZ, and answers DML in JSON and everything
//! else in Arrow.
//!
//! # Logging
//! `tracing` events at debug level carry the query id, statement sequence number, bind count,
//! timings and the SQL text cut to 200 characters. Passwords, tokens, keys, chunk URLs and bind
//! values are never logged nor put in errors ([`Secret`] and [`Bind`] print as `***`).

mod client;
mod decode;
mod error;
mod jwt;
mod options;
mod protocol;

pub use client::{Client, RequestId};
pub use error::Error;
pub use options::{Auth, Bind, BindRef, ConnectOptions, Secret};

/// Metadata of one result column (from `rowtype`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnMeta {
    /// Column name as Snowflake reports it (unquoted identifiers are upper case).
    pub name: String,
    /// Snowflake type, upper case: `FIXED`, `REAL`, `TEXT`, `BOOLEAN`, `DATE`, `TIME`,
    /// `TIMESTAMP_NTZ`, `TIMESTAMP_LTZ`, `TIMESTAMP_TZ`, `VARIANT`, `OBJECT`, `ARRAY`, `BINARY`...
    pub type_name: String,
    /// Scale (FIXED fraction digits, TIME/TIMESTAMP fraction-of-second digits).
    pub scale: Option<i64>,
    /// Precision (FIXED).
    pub precision: Option<i64>,
    /// Whether the column may hold NULL.
    pub nullable: bool,
}

impl From<protocol::RowType> for ColumnMeta {
    fn from(row_type: protocol::RowType) -> Self {
        ColumnMeta {
            name: row_type.name,
            type_name: row_type.type_name.to_ascii_uppercase(),
            scale: row_type.scale,
            precision: row_type.precision,
            nullable: row_type.nullable.unwrap_or(true),
        }
    }
}

/// The complete result of one statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Snowflake's query id (for query history), when reported.
    pub query_id: Option<String>,
    /// Result columns.
    pub columns: Vec<ColumnMeta>,
    /// Rows of canonical text values (see the crate docs), `None` for NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// For DML: inserted + updated + deleted rows. `None` for other statements.
    pub rows_affected: Option<u64>,
    /// For INSERT and MERGE: rows inserted.
    pub rows_inserted: Option<u64>,
    /// For UPDATE and MERGE: rows updated.
    pub rows_updated: Option<u64>,
    /// For DELETE and MERGE: rows deleted.
    pub rows_deleted: Option<u64>,
}

impl QueryResult {
    /// Index of the column named `name` (case-insensitive).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_shareable() {
        fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync_clone::<Client>();
        fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
        assert_error::<Error>();
    }

    #[test]
    fn column_lookup_is_case_insensitive() {
        let result = QueryResult {
            columns: vec![ColumnMeta {
                name: "AMOUNT".into(),
                type_name: "FIXED".into(),
                scale: Some(2),
                precision: Some(12),
                nullable: true,
            }],
            ..QueryResult::default()
        };
        assert_eq!(result.column_index("amount"), Some(0));
        assert_eq!(result.column_index("other"), None);
    }
}
