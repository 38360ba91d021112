//! Wire shapes of Snowflake's driver protocol, and how a response maps to a result or error.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::Error;

/// "Query still running; poll `getResultUrl`."
pub(crate) const QUERY_IN_PROGRESS: &str = "333333";
/// "Query still running (asynchronous execution); poll `getResultUrl`."
pub(crate) const QUERY_IN_PROGRESS_ASYNC: &str = "333334";

/// Codes meaning the session token is no longer good: renew it (or log in again) and retry.
/// 390112 session expired; 390111 session no longer exists; 390104 "user must login again"
/// (also what fakesnow answers for an unknown token); 390114 master token expired.
const SESSION_GONE: &[&str] = &["390112", "390111", "390104", "390114"];

pub(crate) fn is_session_gone(code: &str) -> bool {
    SESSION_GONE.contains(&code)
}

/// Statement type ids Snowflake reports for DML (see `statementTypeId`).
pub(crate) fn is_dml(statement_type_id: i64) -> bool {
    (0x3000..0x4000).contains(&statement_type_id)
}

/// The envelope of every Snowflake answer.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    #[serde(default)]
    pub(crate) success: bool,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default)]
    pub(crate) data: Option<Value>,
}

impl Envelope {
    /// The code as text (Snowflake sends a string; be lenient about numbers).
    pub(crate) fn code(&self) -> Option<String> {
        match &self.code {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The typed `data` of a successful answer.
    pub(crate) fn data<T: serde::de::DeserializeOwned + Default>(
        &mut self,
        what: &str,
    ) -> Result<T, Error> {
        match self.data.take() {
            None | Some(Value::Null) => Ok(T::default()),
            Some(data) => serde_json::from_value(data)
                .map_err(|e| Error::Decode(format!("unexpected {what} data: {e}"))),
        }
    }

    /// A string field of `data`, e.g. `queryId` of an error answer.
    pub(crate) fn data_str(&self, key: &str) -> Option<String> {
        match self.data.as_ref()?.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// Parses an envelope, or says why not.
pub(crate) fn envelope(body: &[u8], what: &str) -> Result<Envelope, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::Decode(format!("{what} answer is not Snowflake JSON: {e}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoginData {
    pub(crate) token: Option<String>,
    pub(crate) master_token: Option<String>,
    pub(crate) session_id: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RenewData {
    pub(crate) session_token: Option<String>,
    pub(crate) master_token: Option<String>,
}

/// One column of `data.rowtype`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RowType {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(rename = "type", default)]
    pub(crate) type_name: String,
    pub(crate) scale: Option<i64>,
    pub(crate) precision: Option<i64>,
    pub(crate) nullable: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Stats {
    pub(crate) num_rows_inserted: Option<u64>,
    pub(crate) num_rows_updated: Option<u64>,
    pub(crate) num_rows_deleted: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Chunk {
    pub(crate) url: String,
    pub(crate) row_count: Option<u64>,
}

/// `data` of a query answer.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueryData {
    pub(crate) query_id: Option<String>,
    pub(crate) rowtype: Option<Vec<RowType>>,
    pub(crate) rowset: Option<Vec<Vec<Value>>>,
    pub(crate) rowset_base64: Option<String>,
    pub(crate) query_result_format: Option<String>,
    pub(crate) statement_type_id: Option<i64>,
    pub(crate) stats: Option<Stats>,
    pub(crate) chunks: Option<Vec<Chunk>>,
    pub(crate) chunk_headers: Option<BTreeMap<String, String>>,
    pub(crate) qrmk: Option<String>,
}

/// What a query-request (or a result poll) answered.
#[derive(Debug)]
pub(crate) enum QueryReply {
    Done(Box<QueryData>),
    /// Still running: poll this URL path.
    Running {
        get_result_url: String,
        query_id: Option<String>,
    },
}

/// Interprets the answer to a query-request or a `getResultUrl` poll.
pub(crate) fn query_reply(status: u16, body: &[u8], what: &str) -> Result<QueryReply, Error> {
    let parsed = envelope(body, what);
    if !(200..300).contains(&status) {
        // Snowflake (and fakesnow) put session errors in the body of a 401.
        if let Ok(envelope) = &parsed
            && envelope.code().is_some_and(|c| is_session_gone(&c))
        {
            return Err(Error::SessionExpired);
        }
        return Err(Error::status(status, what, body));
    }
    let mut envelope = parsed?;
    let code = envelope.code();
    if let Some(code) = code.as_deref()
        && (code == QUERY_IN_PROGRESS || code == QUERY_IN_PROGRESS_ASYNC)
    {
        let query_id = envelope.data_str("queryId");
        let get_result_url = envelope
            .data_str("getResultUrl")
            .or_else(|| query_id.as_ref().map(|id| format!("/queries/{id}/result")))
            .ok_or_else(|| {
                Error::Decode("query in progress without getResultUrl or queryId".into())
            })?;
        return Ok(QueryReply::Running {
            get_result_url,
            query_id,
        });
    }
    if !envelope.success {
        let code = code.unwrap_or_default();
        if is_session_gone(&code) {
            return Err(Error::SessionExpired);
        }
        return Err(Error::Sql {
            sql_state: envelope.data_str("sqlState"),
            query_id: envelope.data_str("queryId"),
            message: envelope.message.take().unwrap_or_default(),
            code,
        });
    }
    Ok(QueryReply::Done(Box::new(envelope.data(what)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_error_answer() {
        let body = br#"{"data":{"errorCode":"002003","sqlState":"42S02","queryId":"q1"},
            "code":"002003","message":"Table 'T' does not exist","success":false}"#;
        match query_reply(200, body, "query-request") {
            Err(Error::Sql {
                code,
                sql_state,
                message,
                query_id,
            }) => {
                assert_eq!(code, "002003");
                assert_eq!(sql_state.as_deref(), Some("42S02"));
                assert_eq!(query_id.as_deref(), Some("q1"));
                assert!(message.contains("does not exist"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn session_gone_answers() {
        let expired = br#"{"data":null,"code":"390112","message":"Your session has expired.","success":false}"#;
        assert!(matches!(
            query_reply(200, expired, "q"),
            Err(Error::SessionExpired)
        ));
        let fakesnow = br#"{"data":null,"code":"390104","message":"User must login again to access the service.","success":false,"headers":null}"#;
        assert!(matches!(
            query_reply(401, fakesnow, "q"),
            Err(Error::SessionExpired)
        ));
    }

    #[test]
    fn running_and_http_errors() {
        let running = br#"{"data":{"queryId":"q9","getResultUrl":"/queries/q9/result"},"code":"333334","message":"Asynchronous execution in progress.","success":true}"#;
        match query_reply(200, running, "q").unwrap() {
            QueryReply::Running {
                get_result_url,
                query_id,
            } => {
                assert_eq!(get_result_url, "/queries/q9/result");
                assert_eq!(query_id.as_deref(), Some("q9"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let no_url = br#"{"data":{"queryId":"q8"},"code":"333333","success":true}"#;
        assert!(matches!(
            query_reply(200, no_url, "q").unwrap(),
            QueryReply::Running { get_result_url, .. } if get_result_url == "/queries/q8/result"
        ));
        match query_reply(503, b"<html>unavailable</html>", "query-request") {
            Err(e @ Error::Status { status: 503, .. }) => assert!(e.is_retryable()),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            query_reply(200, b"<html>", "q"),
            Err(Error::Decode(_))
        ));
    }
}
