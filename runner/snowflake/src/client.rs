//! The session: login, statements, renewal, polling, result chunks, close.

use std::fmt;
use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::RequestBuilder;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};
use tokio::sync::RwLock;
use tracing::debug;
use uuid::Uuid;

use crate::decode::{arrow, json_rows};
use crate::error::truncate;
use crate::jwt::KeyPairSigner;
use crate::protocol::{self, Chunk, LoginData, QueryData, QueryReply, RenewData};
use crate::{Auth, Bind, BindRef, ColumnMeta, ConnectOptions, Error, QueryResult, Secret};

const CLIENT_APP_ID: &str = "floe";
const CLIENT_APP_VERSION: &str = env!("CARGO_PKG_VERSION");
const USER_AGENT: &str = concat!("floe-snowflake/", env!("CARGO_PKG_VERSION"));
/// SQL text kept in logs.
const SQL_LOG_CHARS: usize = 200;
/// How long a running query is polled when `STATEMENT_TIMEOUT_IN_SECONDS` is not set.
const DEFAULT_POLL_LIMIT: Duration = Duration::from_secs(3600);
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_POLL_DELAY: Duration = Duration::from_millis(50);
const MAX_POLL_DELAY: Duration = Duration::from_secs(2);

/// A Snowflake session. Cheap to clone (one shared session and connection pool); `Send + Sync`.
///
/// Statements may run concurrently from clones; an expired session is renewed once for all.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Account URL without a trailing `/`.
    base: String,
    opts: ConnectOptions,
    signer: Option<KeyPairSigner>,
    session: RwLock<Session>,
    sequence: AtomicU64,
    closed: AtomicBool,
    poll_limit: Duration,
}

struct Session {
    token: Secret,
    master_token: Option<Secret>,
    /// Bumped at each renewal, so concurrent statements that all saw the expiry renew once.
    generation: u64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("account_url", &self.inner.base)
            .field("user", &self.inner.opts.user)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Logs in and returns a client holding the session.
    pub async fn connect(mut opts: ConnectOptions) -> Result<Client, Error> {
        let base = base_url(&opts)?;
        if opts.account.trim().is_empty() {
            opts.account = account_from_url(&base).unwrap_or_default();
        }
        if opts.user.trim().is_empty() {
            return Err(Error::Config("user is empty".into()));
        }
        if opts.request_timeout.is_zero() {
            return Err(Error::Config("request_timeout must be above zero".into()));
        }
        let signer = match &opts.auth {
            Auth::KeyPair { private_key_pem } => {
                if opts.account.trim().is_empty() {
                    return Err(Error::Config("key-pair auth needs the account".into()));
                }
                Some(KeyPairSigner::new(
                    &opts.account,
                    &opts.user,
                    private_key_pem.expose(),
                )?)
            }
            Auth::Password(_) => None,
        };
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .gzip(true)
            .timeout(opts.request_timeout)
            .connect_timeout(opts.request_timeout.min(MAX_CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        let poll_limit = opts
            .session_parameters
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("STATEMENT_TIMEOUT_IN_SECONDS"))
            .and_then(|(_, v)| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .filter(|secs| *secs > 0)
            .map_or(DEFAULT_POLL_LIMIT, |secs| {
                Duration::from_secs(secs) + opts.request_timeout
            });
        let inner = Inner {
            http,
            base,
            opts,
            signer,
            session: RwLock::new(Session {
                token: Secret::default(),
                master_token: None,
                generation: 0,
            }),
            sequence: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            poll_limit,
        };
        let session = inner.login().await?;
        *inner.session.write().await = session;
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// Runs one statement with positional binds and returns its complete result.
    ///
    /// Polls a statement Snowflake reports as still running, downloads result chunks, and on
    /// session expiry renews the session (or logs in again) and resubmits once.
    pub async fn execute(&self, sql: &str, binds: &[Bind]) -> Result<QueryResult, Error> {
        let binds: Vec<BindRef<'_>> = binds.iter().map(Bind::borrowed).collect();
        self.execute_as(sql, &binds, &RequestId::new()).await
    }

    /// [`execute`](Self::execute) under a caller-held request id: every submission of
    /// the statement, including the caller's retries after a timeout, carries the same
    /// `requestId`, and those after the first are marked `retry=true` with their
    /// `retryCount`, as Snowflake's own drivers do. Snowflake then answers a resubmission
    /// with the first submission's statement instead of running it again, so a request
    /// that timed out on the client but still reached the warehouse does not execute a
    /// second time, later, after newer statements.
    pub async fn execute_as(
        &self,
        sql: &str,
        binds: &[BindRef<'_>],
        request: &RequestId,
    ) -> Result<QueryResult, Error> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let sequence_id = inner.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let body = query_body(sql, binds, sequence_id);
        let started = Instant::now();
        debug!(
            sequence_id,
            binds = binds.len(),
            sql = %truncate(sql, SQL_LOG_CHARS),
            "snowflake statement"
        );
        let outcome = match inner.run(&body, request).await {
            Ok(data) => inner.result(data).await,
            Err(e) => Err(e),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &outcome {
            Ok(result) => debug!(
                sequence_id,
                query_id = result.query_id.as_deref().unwrap_or(""),
                rows = result.rows.len(),
                rows_affected = result.rows_affected,
                elapsed_ms,
                "snowflake statement done"
            ),
            Err(Error::Sql {
                code,
                sql_state,
                query_id,
                ..
            }) => debug!(
                sequence_id,
                query_id = query_id.as_deref().unwrap_or(""),
                code = code.as_str(),
                sql_state = sql_state.as_deref().unwrap_or(""),
                elapsed_ms,
                "snowflake statement failed"
            ),
            Err(e) => debug!(
                sequence_id,
                retryable = e.is_retryable(),
                elapsed_ms,
                "snowflake statement failed: {e}"
            ),
        }
        outcome
    }

    /// Deletes the session on the server, best effort. Later calls to
    /// [`execute`](Self::execute) fail with [`Error::Closed`]; closing twice is a no-op.
    pub async fn close(&self) -> Result<(), Error> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (token, _) = inner.token().await;
        let request = inner
            .http
            .post(format!("{}/session", inner.base))
            .query(&[
                ("delete", "true".to_owned()),
                ("requestId", Uuid::new_v4().to_string()),
            ])
            .header(AUTHORIZATION, auth_header(&token)?)
            .header(ACCEPT, "application/json");
        let (status, body) = inner.send(request, "session delete").await?;
        debug!(status, "snowflake session closed");
        if (200..300).contains(&status) {
            return Ok(());
        }
        match protocol::envelope(&body, "session delete") {
            // Already gone: closed is closed.
            Ok(env) if env.code().is_some_and(|c| protocol::is_session_gone(&c)) => Ok(()),
            _ => Err(Error::status(status, "session delete", &body)),
        }
    }
}

impl Inner {
    async fn send(&self, request: RequestBuilder, what: &str) -> Result<(u16, Vec<u8>), Error> {
        let map = |e: reqwest::Error| match Error::from_reqwest(what, e) {
            Error::Timeout { .. } => Error::Timeout {
                context: format!(
                    "{what}: no complete answer within {:?}",
                    self.opts.request_timeout
                ),
            },
            other => other,
        };
        let response = request.send().await.map_err(map)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(map)?;
        Ok((status, body.to_vec()))
    }

    async fn token(&self) -> (Secret, u64) {
        let session = self.session.read().await;
        (session.token.clone(), session.generation)
    }

    async fn login(&self) -> Result<Session, Error> {
        let opts = &self.opts;
        let mut query: Vec<(&str, String)> = Vec::new();
        for (key, value) in [
            ("databaseName", &opts.database),
            ("schemaName", &opts.schema),
            ("warehouse", &opts.warehouse),
            ("roleName", &opts.role),
        ] {
            if let Some(value) = value {
                query.push((key, value.clone()));
            }
        }
        query.push(("requestId", Uuid::new_v4().to_string()));

        let mut data = Map::new();
        data.insert("CLIENT_APP_ID".into(), CLIENT_APP_ID.into());
        data.insert("CLIENT_APP_VERSION".into(), CLIENT_APP_VERSION.into());
        data.insert("ACCOUNT_NAME".into(), account_name(&opts.account).into());
        data.insert("LOGIN_NAME".into(), opts.user.clone().into());
        data.insert(
            "CLIENT_ENVIRONMENT".into(),
            json!({"APPLICATION": CLIENT_APP_ID, "OS": std::env::consts::OS}),
        );
        data.insert(
            "SESSION_PARAMETERS".into(),
            Value::Object(opts.session_parameters.clone()),
        );
        match (&opts.auth, &self.signer) {
            (Auth::KeyPair { .. }, Some(signer)) => {
                data.insert("AUTHENTICATOR".into(), "SNOWFLAKE_JWT".into());
                data.insert("TOKEN".into(), signer.token(SystemTime::now())?.into());
            }
            (Auth::Password(password), _) => {
                data.insert("PASSWORD".into(), password.expose().into());
            }
            (Auth::KeyPair { .. }, None) => {
                return Err(Error::Config("key-pair signer missing".into()));
            }
        }
        debug!(
            account = %opts.account,
            user = %opts.user,
            database = opts.database.as_deref().unwrap_or(""),
            schema = opts.schema.as_deref().unwrap_or(""),
            key_pair = self.signer.is_some(),
            "snowflake login"
        );
        let request = self
            .http
            .post(format!("{}/session/v1/login-request", self.base))
            .query(&query)
            .header(ACCEPT, "application/json")
            .json(&json!({ "data": data }));
        let (status, body) = self.send(request, "login-request").await?;
        if !(200..300).contains(&status) {
            return Err(Error::status(status, "login-request", &body));
        }
        let mut env = protocol::envelope(&body, "login-request")?;
        if !env.success {
            return Err(Error::Login {
                code: env.code().unwrap_or_default(),
                message: env.message.take().unwrap_or_default(),
            });
        }
        let data: LoginData = env.data("login-request")?;
        let token = data
            .token
            .ok_or_else(|| Error::Decode("login answer has no session token".into()))?;
        let session_id = data.session_id.map(|id| id.to_string()).unwrap_or_default();
        debug!(session_id = %session_id, "snowflake session opened");
        Ok(Session {
            token: Secret::new(token),
            master_token: data.master_token.map(Secret::new),
            generation: 0,
        })
    }

    /// Renews the session token with the master token.
    async fn renew(&self, token: &Secret, master: &Secret) -> Result<Session, Error> {
        let request = self
            .http
            .post(format!("{}/session/token-request", self.base))
            .query(&[("requestId", Uuid::new_v4().to_string())])
            .header(AUTHORIZATION, auth_header(master)?)
            .header(ACCEPT, "application/json")
            .json(&json!({"oldSessionToken": token.expose(), "requestType": "RENEW"}));
        let (status, body) = self.send(request, "token-request").await?;
        if !(200..300).contains(&status) {
            return Err(Error::status(status, "token-request", &body));
        }
        let mut env = protocol::envelope(&body, "token-request")?;
        if !env.success {
            return Err(Error::Login {
                code: env.code().unwrap_or_default(),
                message: env.message.take().unwrap_or_default(),
            });
        }
        let data: RenewData = env.data("token-request")?;
        let token = data
            .session_token
            .ok_or_else(|| Error::Decode("token-request answer has no session token".into()))?;
        Ok(Session {
            token: Secret::new(token),
            master_token: data.master_token.map(Secret::new).or(Some(master.clone())),
            generation: 0,
        })
    }

    /// Replaces the session seen at `generation`: renewal with the master token, else login.
    async fn refresh(&self, generation: u64) -> Result<(), Error> {
        let mut session = self.session.write().await;
        if session.generation != generation {
            // Another statement already renewed it.
            return Ok(());
        }
        let renewed = match &session.master_token {
            Some(master) => match self.renew(&session.token, master).await {
                Ok(renewed) => {
                    debug!("snowflake session renewed");
                    Some(renewed)
                }
                Err(e) => {
                    debug!("snowflake session renewal failed, logging in again: {e}");
                    None
                }
            },
            None => None,
        };
        let mut next = match renewed {
            Some(next) => next,
            None => self.login().await?,
        };
        next.generation = generation + 1;
        *session = next;
        Ok(())
    }

    /// Submits a statement, resubmitting once after renewing an expired session.
    async fn run(&self, body: &QueryBody<'_>, request_id: &RequestId) -> Result<QueryData, Error> {
        let mut renewed = false;
        loop {
            let (token, generation) = self.token().await;
            let request = self
                .http
                .post(format!("{}/queries/v1/query-request", self.base))
                .query(&request_id.next_query())
                .header(AUTHORIZATION, auth_header(&token)?)
                .header(ACCEPT, "application/snowflake")
                .json(body);
            let (status, bytes) = self.send(request, "query-request").await?;
            match protocol::query_reply(status, &bytes, "query-request") {
                Err(Error::SessionExpired) if !renewed => {
                    debug!("snowflake session expired; renewing and resubmitting");
                    renewed = true;
                    self.refresh(generation).await?;
                }
                Err(e) => return Err(e),
                Ok(QueryReply::Done(data)) => return Ok(*data),
                Ok(QueryReply::Running {
                    get_result_url,
                    query_id,
                }) => return self.poll(get_result_url, query_id).await,
            }
        }
    }

    /// Polls `getResultUrl` until the statement finishes, within the poll limit.
    async fn poll(
        &self,
        mut result_url: String,
        query_id: Option<String>,
    ) -> Result<QueryData, Error> {
        let query_id = query_id.unwrap_or_default();
        let deadline = Instant::now() + self.poll_limit;
        let mut delay = FIRST_POLL_DELAY;
        let mut renewed = false;
        debug!(query_id = %query_id, "snowflake statement still running; polling");
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    context: format!("query {query_id} still running after {:?}", self.poll_limit),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_POLL_DELAY);
            let url = self.same_origin_url(&result_url)?;
            let (token, generation) = self.token().await;
            let request = self
                .http
                .get(url)
                .header(AUTHORIZATION, auth_header(&token)?)
                .header(ACCEPT, "application/snowflake");
            let (status, bytes) = self.send(request, "query result poll").await?;
            match protocol::query_reply(status, &bytes, "query result poll") {
                Err(Error::SessionExpired) if !renewed => {
                    renewed = true;
                    self.refresh(generation).await?;
                }
                Err(e) => return Err(e),
                Ok(QueryReply::Done(data)) => return Ok(*data),
                Ok(QueryReply::Running { get_result_url, .. }) => {
                    renewed = false;
                    result_url = get_result_url;
                }
            }
        }
    }

    /// `path` resolved against the account URL; an absolute URL must point at the account
    /// (the session token is sent with it).
    fn same_origin_url(&self, path: &str) -> Result<String, Error> {
        if path.starts_with("http://") || path.starts_with("https://") {
            if path.starts_with(&format!("{}/", self.base)) {
                return Ok(path.to_owned());
            }
            return Err(Error::Unsupported(
                "getResultUrl points outside the account URL".into(),
            ));
        }
        let slash = if path.starts_with('/') { "" } else { "/" };
        Ok(format!("{}{slash}{path}", self.base))
    }

    /// Builds the result: columns, rows (inline and chunked), DML counts.
    async fn result(&self, data: QueryData) -> Result<QueryResult, Error> {
        let columns: Vec<ColumnMeta> = data
            .rowtype
            .unwrap_or_default()
            .into_iter()
            .map(ColumnMeta::from)
            .collect();
        let arrow_format = match data.query_result_format.as_deref() {
            Some(format) => format.eq_ignore_ascii_case("arrow"),
            None => data.rowset_base64.is_some(),
        };
        let mut rows = match (&data.rowset_base64, data.rowset) {
            (Some(encoded), _) if !encoded.trim().is_empty() => {
                arrow::rows_from_base64(encoded, &columns)?
            }
            (_, Some(rowset)) => json_rows(rowset, &columns)?,
            _ => Vec::new(),
        };
        let chunks = data.chunks.unwrap_or_default();
        if !chunks.is_empty() {
            let headers = chunk_headers(data.chunk_headers.as_ref(), data.qrmk.as_deref())?;
            let total = chunks.len();
            for (index, chunk) in chunks.iter().enumerate() {
                let what = format!("result chunk {} of {total}", index + 1);
                let bytes = self.download_chunk(chunk, &headers, &what).await?;
                let chunk_rows = if arrow_format {
                    arrow::rows_from_ipc(&bytes, &columns)?
                } else {
                    json_chunk_rows(&bytes, &columns)?
                };
                if let Some(expected) = chunk.row_count
                    && expected != chunk_rows.len() as u64
                {
                    return Err(Error::Decode(format!(
                        "{what} has {} rows, expected {expected}",
                        chunk_rows.len()
                    )));
                }
                rows.extend(chunk_rows);
            }
            debug!(
                query_id = data.query_id.as_deref().unwrap_or(""),
                chunks = total,
                "snowflake result chunks downloaded"
            );
        }
        let counts = dml_counts(data.stats.as_ref(), data.statement_type_id, &columns, &rows);
        Ok(QueryResult {
            query_id: data.query_id,
            columns,
            rows,
            rows_affected: counts.affected(),
            rows_inserted: counts.inserted,
            rows_updated: counts.updated,
            rows_deleted: counts.deleted,
        })
    }

    async fn download_chunk(
        &self,
        chunk: &Chunk,
        headers: &HeaderMap,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        // Pre-signed cloud-storage URL: no session token, and never logged (it is a credential).
        let request = self.http.get(&chunk.url).headers(headers.clone());
        let (status, body) = self.send(request, what).await?;
        if !(200..300).contains(&status) {
            return Err(Error::status(status, what, &body));
        }
        gunzip_if_needed(body, what)
    }
}

/// The account URL, checked, without a trailing `/`.
fn base_url(opts: &ConnectOptions) -> Result<String, Error> {
    let url = if opts.account_url.trim().is_empty() {
        if opts.account.trim().is_empty() {
            return Err(Error::Config(
                "account_url and account are both empty".into(),
            ));
        }
        format!("https://{}.snowflakecomputing.com", opts.account.trim())
    } else {
        opts.account_url.trim().to_owned()
    };
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| Error::Config(format!("account_url {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(Error::Config(format!(
            "account_url {url:?} must be an http(s) URL with a host"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The account identifier in a `https://<account>.snowflakecomputing.com` URL.
fn account_from_url(base: &str) -> Option<String> {
    let host = reqwest::Url::parse(base).ok()?.host_str()?.to_owned();
    let account = host.strip_suffix(".snowflakecomputing.com")?;
    // `<account>.<region>.privatelink...` style hosts keep the region: drop it like Snowflake.
    Some(account.split('.').next()?.to_owned())
}

/// `ACCOUNT_NAME` of the login: the identifier before the first `.` (no region/cloud).
fn account_name(account: &str) -> &str {
    account.split('.').next().unwrap_or(account)
}

fn auth_header(token: &Secret) -> Result<HeaderValue, Error> {
    let mut value = HeaderValue::from_str(&format!("Snowflake Token=\"{}\"", token.expose()))
        .map_err(|_| Error::Decode("session token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The identity of one logical statement across its submissions (see
/// [`Client::execute_as`]).
#[derive(Debug)]
pub struct RequestId {
    id: Uuid,
    submissions: std::sync::atomic::AtomicU32,
}

impl RequestId {
    pub fn new() -> RequestId {
        RequestId {
            id: Uuid::new_v4(),
            submissions: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The id sent as `requestId`.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The query parameters of the next submission.
    fn next_query(&self) -> Vec<(&'static str, String)> {
        let n = self.submissions.fetch_add(1, Ordering::Relaxed);
        let mut q = vec![
            ("requestId", self.id.to_string()),
            ("request_guid", Uuid::new_v4().to_string()),
        ];
        if n > 0 {
            q.push(("retry", "true".into()));
            q.push(("retryCount", n.to_string()));
        }
        q
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

/// A query request's body, borrowing the statement and its binds: a MERGE's bind holds
/// the batch's rows for one table, serialised straight from the plan into the request.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct QueryBody<'a> {
    sql_text: &'a str,
    async_exec: bool,
    sequence_id: u64,
    query_submission_time: u64,
    is_internal: bool,
    #[serde(skip_serializing_if = "Bindings::is_empty")]
    bindings: Bindings<'a>,
}

/// Positional binds as Snowflake takes them: `{"1": {"type": .., "value": ..}, ..}`.
struct Bindings<'a>(&'a [BindRef<'a>]);

impl Bindings<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl serde::Serialize for Bindings<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        #[derive(serde::Serialize)]
        struct One<'a> {
            #[serde(rename = "type")]
            data_type: &'a str,
            value: Option<&'a str>,
        }
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (i, bind) in self.0.iter().enumerate() {
            let one = One {
                data_type: bind.data_type,
                value: bind.value,
            };
            map.serialize_entry(&(i + 1).to_string(), &one)?;
        }
        map.end()
    }
}

fn query_body<'a>(sql: &'a str, binds: &'a [BindRef<'a>], sequence_id: u64) -> QueryBody<'a> {
    let submitted_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    QueryBody {
        sql_text: sql,
        async_exec: false,
        sequence_id,
        query_submission_time: submitted_ms,
        is_internal: false,
        bindings: Bindings(binds),
    }
}

/// Headers for chunk downloads: `chunkHeaders`, else the SSE-C key `qrmk`.
fn chunk_headers(
    headers: Option<&std::collections::BTreeMap<String, String>>,
    qrmk: Option<&str>,
) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::new();
    let bad = |_| Error::Decode("invalid chunkHeaders".into());
    match headers.filter(|h| !h.is_empty()) {
        Some(headers) => {
            for (name, value) in headers {
                let mut value = HeaderValue::from_str(value).map_err(bad)?;
                value.set_sensitive(true);
                map.insert(
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| Error::Decode("invalid chunkHeaders header name".into()))?,
                    value,
                );
            }
        }
        None => {
            if let Some(qrmk) = qrmk {
                map.insert(
                    "x-amz-server-side-encryption-customer-algorithm",
                    HeaderValue::from_static("AES256"),
                );
                let mut key = HeaderValue::from_str(qrmk).map_err(bad)?;
                key.set_sensitive(true);
                map.insert("x-amz-server-side-encryption-customer-key", key);
            }
        }
    }
    Ok(map)
}

/// Chunks may arrive gzip-compressed without `Content-Encoding`.
fn gunzip_if_needed(body: Vec<u8>, what: &str) -> Result<Vec<u8>, Error> {
    if !body.starts_with(&[0x1f, 0x8b]) {
        return Ok(body);
    }
    let mut out = Vec::with_capacity(body.len() * 4);
    flate2::read::MultiGzDecoder::new(body.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| Error::Decode(format!("{what}: bad gzip data: {e}")))?;
    Ok(out)
}

/// A JSON chunk is the rows without the enclosing brackets: `[..],[..]`.
fn json_chunk_rows(
    bytes: &[u8],
    columns: &[ColumnMeta],
) -> Result<Vec<Vec<Option<String>>>, Error> {
    let mut text = Vec::with_capacity(bytes.len() + 2);
    text.push(b'[');
    text.extend_from_slice(bytes);
    text.push(b']');
    let rowset: Vec<Vec<Value>> = serde_json::from_slice(&text)
        .map_err(|e| Error::Decode(format!("JSON result chunk: {e}")))?;
    json_rows(rowset, columns)
}

#[derive(Debug, Default, PartialEq, Eq)]
struct DmlCounts {
    inserted: Option<u64>,
    updated: Option<u64>,
    deleted: Option<u64>,
}

impl DmlCounts {
    fn affected(&self) -> Option<u64> {
        let counts = [self.inserted, self.updated, self.deleted];
        counts
            .iter()
            .any(Option::is_some)
            .then(|| counts.iter().flatten().sum())
    }
}

/// Row counts of a DML statement: from `data.stats`, else from the one-row result Snowflake
/// returns for DML (`number of rows inserted` / `updated` / `deleted` columns).
fn dml_counts(
    stats: Option<&protocol::Stats>,
    statement_type_id: Option<i64>,
    columns: &[ColumnMeta],
    rows: &[Vec<Option<String>>],
) -> DmlCounts {
    if let Some(stats) = stats {
        let counts = DmlCounts {
            inserted: stats.num_rows_inserted,
            updated: stats.num_rows_updated,
            deleted: stats.num_rows_deleted,
        };
        if counts.affected().is_some() {
            return counts;
        }
    }
    let dml = match statement_type_id {
        Some(id) => protocol::is_dml(id),
        None => {
            !columns.is_empty()
                && columns
                    .iter()
                    .all(|c| c.name.to_ascii_lowercase().starts_with("number of "))
        }
    };
    let mut counts = DmlCounts::default();
    let [row] = rows else {
        return counts;
    };
    if !dml {
        return counts;
    }
    for (column, value) in columns.iter().zip(row) {
        let Some(value) = value.as_deref().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        match column.name.to_ascii_lowercase().as_str() {
            "number of rows inserted" => counts.inserted = Some(value),
            "number of rows updated" => counts.updated = Some(value),
            "number of rows deleted" => counts.deleted = Some(value),
            _ => {}
        }
    }
    counts
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
