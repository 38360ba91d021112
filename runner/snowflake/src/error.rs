//! The one error type of this crate, with its retry classification.

use std::error::Error as StdError;
use std::fmt::Write as _;

/// Longest slice of an HTTP body kept in [`Error::Status`].
const MAX_BODY_IN_ERROR: usize = 512;

/// SQL error codes Snowflake raises for transient conditions, where running the same statement
/// again can succeed.
const RETRYABLE_SQL_CODES: &[&str] = &[
    // "Statement ... has locked table ... aborted because the number of waiters for this lock
    // exceeds the 20 statements limit": concurrent DML on one table.
    "000625",
    // "SQL execution internal error": Snowflake-side failure, usually transient.
    "000603",
];

/// Everything that can go wrong talking to Snowflake.
///
/// [`Error::is_retryable`] tells whether running the same statement again (after a back-off) can
/// help. No variant carries a password, token, key or bind value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The [`ConnectOptions`](crate::ConnectOptions) cannot work (bad URL, unreadable key, ...).
    #[error("invalid Snowflake client configuration: {0}")]
    Config(String),

    /// The HTTP exchange itself failed: connection refused or reset, TLS, body read.
    #[error("HTTP request to Snowflake failed ({context}): {detail}")]
    Http {
        /// What was being done, e.g. `query-request`.
        context: String,
        /// The error and its causes, flattened (URLs removed: chunk URLs carry credentials).
        detail: String,
        /// Whether the failure is transient (connection and body errors are, request-building
        /// errors are not).
        transient: bool,
    },

    /// Snowflake answered with an HTTP error status and no Snowflake error code we could act on.
    #[error("Snowflake answered HTTP {status} ({context}): {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// What was being done, e.g. `login-request`.
        context: String,
        /// Start of the response body.
        body: String,
    },

    /// The login was refused (wrong password, unknown user, bad JWT, ...).
    #[error("Snowflake login failed with code {code}: {message}")]
    Login {
        /// Snowflake's error code, e.g. `390100`.
        code: String,
        /// Snowflake's message.
        message: String,
    },

    /// The statement failed in Snowflake (compilation, constraint, permission, ...).
    #[error(
        "Snowflake SQL error {code} (SQL state {}, query id {}): {message}",
        sql_state.as_deref().unwrap_or("?"),
        query_id.as_deref().unwrap_or("?")
    )]
    Sql {
        /// Snowflake's error code, e.g. `002003`.
        code: String,
        /// The ANSI SQL state, e.g. `42S02`.
        sql_state: Option<String>,
        /// Snowflake's message.
        message: String,
        /// The failed query's id, for Snowflake's query history.
        query_id: Option<String>,
    },

    /// A response did not have the expected shape or held a value in an unknown encoding.
    #[error("could not decode Snowflake response: {0}")]
    Decode(String),

    /// A request, or a query being polled, ran past its time limit.
    #[error("Snowflake request timed out: {context}")]
    Timeout {
        /// What timed out, with the limit.
        context: String,
    },

    /// The session expired and renewing it (or logging in again) did not help.
    #[error("Snowflake session expired and could not be renewed")]
    SessionExpired,

    /// The server sent something this client does not implement.
    #[error("unsupported by floe-snowflake: {0}")]
    Unsupported(String),

    /// [`Client::close`](crate::Client::close) was called before this request.
    #[error("Snowflake client is closed")]
    Closed,
}

impl Error {
    /// Whether running the same statement again, after a back-off, can succeed.
    ///
    /// True for HTTP 408/429/5xx, timeouts, connection failures, session expiry and a few
    /// transient Snowflake SQL codes (lock-waiter limit, internal error). False for SQL
    /// compilation and data errors, other 4xx, login refusals, decode and configuration errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Http { transient, .. } => *transient,
            Error::Status { status, .. } => {
                matches!(*status, 408 | 429) || (500..=599).contains(status)
            }
            Error::Sql { code, .. } => RETRYABLE_SQL_CODES.contains(&code.as_str()),
            Error::Timeout { .. } | Error::SessionExpired => true,
            Error::Config(_)
            | Error::Login { .. }
            | Error::Decode(_)
            | Error::Unsupported(_)
            | Error::Closed => false,
        }
    }

    /// Maps a transport error. Timeouts become [`Error::Timeout`]; URLs are stripped.
    pub(crate) fn from_reqwest(context: impl Into<String>, error: reqwest::Error) -> Self {
        let context = context.into();
        if error.is_timeout() {
            return Error::Timeout { context };
        }
        let transient = !(error.is_builder() || error.is_redirect());
        let error = error.without_url();
        let mut detail = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let _ = write!(detail, ": {cause}");
            source = cause.source();
        }
        Error::Http {
            context,
            detail,
            transient,
        }
    }

    pub(crate) fn status(status: u16, context: impl Into<String>, body: &[u8]) -> Self {
        Error::Status {
            status,
            context: context.into(),
            body: truncate(
                &scrub_params(&String::from_utf8_lossy(body)),
                MAX_BODY_IN_ERROR,
            ),
        }
    }
}

/// Masks bind values echoed in an error body: fakesnow's HTTP 500 message reads
/// `sql_text='...' params=('v1', 'v2') Unhandled exception`.
fn scrub_params(body: &str) -> String {
    const MARK: &str = "params=";
    const END: &str = " Unhandled exception";
    let Some(start) = body.find(MARK) else {
        return body.to_owned();
    };
    let value_start = start + MARK.len();
    let value_end = body[value_start..]
        .find(END)
        .map_or(body.len(), |i| value_start + i);
    format!("{}***{}", &body[..value_start], &body[value_end..])
}

/// Cuts `text` to at most `max` bytes on a char boundary, marking the cut with `…`.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(code: &str) -> Error {
        Error::Sql {
            code: code.into(),
            sql_state: Some("42000".into()),
            message: "m".into(),
            query_id: None,
        }
    }

    #[test]
    fn retry_classification() {
        let status = |s| Error::Status {
            status: s,
            context: "x".into(),
            body: String::new(),
        };
        assert!(status(429).is_retryable());
        assert!(status(500).is_retryable());
        assert!(status(503).is_retryable());
        assert!(status(408).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(
            Error::Timeout {
                context: "x".into()
            }
            .is_retryable()
        );
        assert!(Error::SessionExpired.is_retryable());
        assert!(!sql("001003").is_retryable());
        assert!(!sql("002003").is_retryable());
        assert!(sql("000625").is_retryable());
        assert!(
            !Error::Login {
                code: "390100".into(),
                message: "bad".into()
            }
            .is_retryable()
        );
        assert!(!Error::Decode("x".into()).is_retryable());
        assert!(!Error::Config("x".into()).is_retryable());
        assert!(!Error::Closed.is_retryable());
        assert!(
            Error::Http {
                context: "x".into(),
                detail: "reset".into(),
                transient: true
            }
            .is_retryable()
        );
    }

    #[test]
    fn sql_error_display_has_code_state_and_query_id() {
        let e = Error::Sql {
            code: "002003".into(),
            sql_state: Some("42S02".into()),
            message: "Table 'T' does not exist".into(),
            query_id: Some("01b2-qid".into()),
        };
        let text = e.to_string();
        assert!(text.contains("002003") && text.contains("42S02") && text.contains("01b2-qid"));
    }

    #[test]
    fn echoed_bind_values_are_masked() {
        let body = r#"{"data":null,"code":"261000","message":"sql_text='INSERT INTO t VALUES (?)' params=('4111 1111',) Unhandled exception","success":false}"#;
        let Error::Status { body, .. } = Error::status(500, "query-request", body.as_bytes())
        else {
            unreachable!()
        };
        assert!(!body.contains("4111"), "{body}");
        assert!(body.contains("params=*** Unhandled exception"), "{body}");
        assert_eq!(scrub_params("plain"), "plain");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 3), "abc");
        let long = "x".repeat(2000);
        let e = Error::status(502, "query-request", long.as_bytes());
        match e {
            Error::Status { body, .. } => assert!(body.len() <= MAX_BODY_IN_ERROR + 3),
            other => panic!("unexpected {other:?}"),
        }
    }
}
