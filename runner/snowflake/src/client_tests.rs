//! Protocol tests against a scripted HTTP server on 127.0.0.1 (login, binds, renewal, polling,
//! chunks, errors, timeouts). fakesnow covers the happy path in `tests/fakesnow.rs`; these cover
//! what fakesnow never does.

use std::io::Write as _;
use std::sync::Mutex;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::jwt::Claims;

#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    /// Path and query.
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

struct Reply {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
}

fn ok(body: Value) -> Reply {
    Reply {
        status: 200,
        body: body.to_string().into_bytes(),
        delay: Duration::ZERO,
    }
}

fn status(status: u16, body: &str) -> Reply {
    Reply {
        status,
        body: body.as_bytes().to_vec(),
        delay: Duration::ZERO,
    }
}

type Handler = Box<dyn Fn(&Recorded, usize) -> Reply + Send + Sync>;

/// A scripted HTTP/1.1 server: one request per connection, answered by `handler`, which also
/// gets how many requests with the same path came before.
struct MockServer {
    url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockServer {
    async fn start(handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(Box::new(handler));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut stream).await else {
                        return;
                    };
                    let seen = {
                        let mut all = recorded.lock().unwrap();
                        let seen = all
                            .iter()
                            .filter(|r: &&Recorded| r.path() == request.path())
                            .count();
                        all.push(request.clone());
                        seen
                    };
                    let reply = handler(&request, seen);
                    tokio::time::sleep(reply.delay).await;
                    let head = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        reply.status,
                        reply.body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&reply.body).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        MockServer {
            url,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path() == path)
            .collect()
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Recorded> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Recorded {
        method,
        target,
        headers,
        body,
    })
}

const LOGIN: &str = "/session/v1/login-request";
const QUERY: &str = "/queries/v1/query-request";
const RENEW: &str = "/session/token-request";

fn login_ok(token: &str) -> Reply {
    ok(json!({
        "data": {"token": token, "masterToken": "M1", "sessionId": 7, "parameters": []},
        "code": null, "message": null, "success": true
    }))
}

fn expired() -> Reply {
    ok(
        json!({"data": null, "code": "390112", "message": "Your session has expired. Please login again.", "success": false}),
    )
}

fn one_value(value: &str) -> Reply {
    ok(json!({
        "data": {
            "rowtype": [{"name": "V", "type": "text", "nullable": true, "scale": null, "precision": null}],
            "rowset": [[value]],
            "queryResultFormat": "json",
            "queryId": "q-1",
            "statementTypeId": 4096
        },
        "success": true
    }))
}

fn options(url: &str, auth: Auth) -> ConnectOptions {
    let mut session_parameters = Map::new();
    session_parameters.insert("QUERY_TAG".into(), json!("floe-test"));
    ConnectOptions {
        account_url: format!("{url}/"),
        account: "myorg-acct.us-east-1".into(),
        user: "etl".into(),
        auth,
        database: Some("DB1".into()),
        schema: Some("S1".into()),
        warehouse: Some("WH".into()),
        role: Some("LOADER".into()),
        request_timeout: Duration::from_secs(5),
        session_parameters,
    }
}

fn password() -> Auth {
    Auth::Password(Secret::new("pa55-word"))
}

#[tokio::test]
async fn password_login_statement_with_binds_and_close() {
    let server = MockServer::start(|request, _| match request.path() {
        LOGIN => login_ok("T1"),
        QUERY => ok(json!({
            "data": {
                "rowtype": [
                    {"name": "number of rows inserted", "type": "fixed", "scale": 0, "precision": 38, "nullable": false}
                ],
                "rowset": [["2"]],
                "queryResultFormat": "json",
                "queryId": "q-insert",
                "statementTypeId": 12544
            },
            "success": true
        })),
        "/session" => ok(json!({"data": null, "code": null, "message": null, "success": true})),
        _ => status(404, "no"),
    })
    .await;
    let client = Client::connect(options(&server.url, password()))
        .await
        .unwrap();
    let result = client
        .execute(
            "INSERT INTO t (a, b) VALUES (?, ?)",
            &[Bind::text("x"), Bind::null()],
        )
        .await
        .unwrap();
    assert_eq!(result.query_id.as_deref(), Some("q-insert"));
    assert_eq!(result.rows_inserted, Some(2));
    assert_eq!(result.rows_affected, Some(2));
    assert_eq!(result.rows_updated, None);
    client.execute("SELECT 1", &[]).await.unwrap();

    let login = &server.requests_to(LOGIN)[0];
    assert_eq!(login.method, "POST");
    let query = login.query();
    for part in [
        "databaseName=DB1",
        "schemaName=S1",
        "warehouse=WH",
        "roleName=LOADER",
        "requestId=",
    ] {
        assert!(query.contains(part), "{query} lacks {part}");
    }
    let data = &login.json()["data"];
    assert_eq!(data["LOGIN_NAME"], "etl");
    assert_eq!(data["PASSWORD"], "pa55-word");
    assert_eq!(data["ACCOUNT_NAME"], "myorg-acct");
    assert_eq!(data["CLIENT_APP_ID"], "floe");
    assert_eq!(data["SESSION_PARAMETERS"]["QUERY_TAG"], "floe-test");
    assert!(data.get("AUTHENTICATOR").is_none());

    let queries = server.requests_to(QUERY);
    assert_eq!(queries.len(), 2);
    let first = &queries[0];
    assert_eq!(
        first.header("authorization"),
        Some("Snowflake Token=\"T1\"")
    );
    assert_eq!(first.header("accept"), Some("application/snowflake"));
    assert!(first.query().starts_with("requestId="));
    let body = first.json();
    assert_eq!(body["sqlText"], "INSERT INTO t (a, b) VALUES (?, ?)");
    assert_eq!(body["asyncExec"], false);
    assert_eq!(body["isInternal"], false);
    assert!(body["querySubmissionTime"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(body["sequenceId"], 1);
    assert_eq!(
        body["bindings"],
        json!({"1": {"type": "TEXT", "value": "x"}, "2": {"type": "TEXT", "value": null}})
    );
    let second = queries[1].json();
    assert_eq!(second["sequenceId"], 2);
    assert!(second.get("bindings").is_none());
    assert_ne!(
        first.query(),
        queries[1].query(),
        "fresh requestId per request"
    );

    client.close().await.unwrap();
    let close = &server.requests_to("/session")[0];
    assert!(close.query().contains("delete=true"));
    assert_eq!(
        close.header("authorization"),
        Some("Snowflake Token=\"T1\"")
    );
    assert!(matches!(
        client.execute("SELECT 1", &[]).await,
        Err(Error::Closed)
    ));
    client.close().await.unwrap();
    assert_eq!(server.requests_to("/session").len(), 1);
    assert!(!format!("{client:?}").contains("pa55"));
}

#[tokio::test]
async fn key_pair_login_sends_a_verifiable_jwt() {
    let server = MockServer::start(|request, _| match request.path() {
        LOGIN => login_ok("T1"),
        _ => status(404, "no"),
    })
    .await;
    let pem = include_str!("../testdata/jwt_test_key.p8");
    let auth = Auth::KeyPair {
        private_key_pem: Secret::new(pem),
    };
    Client::connect(options(&server.url, auth)).await.unwrap();
    let data = server.requests_to(LOGIN)[0].json()["data"].clone();
    assert_eq!(data["AUTHENTICATOR"], "SNOWFLAKE_JWT");
    assert!(data.get("PASSWORD").is_none());
    let token = data["TOKEN"].as_str().unwrap();
    let key =
        DecodingKey::from_rsa_pem(include_bytes!("../testdata/jwt_test_key.pub.pem")).unwrap();
    let claims = jsonwebtoken::decode::<Claims>(token, &key, &Validation::new(Algorithm::RS256))
        .unwrap()
        .claims;
    assert_eq!(claims.sub, "MYORG-ACCT.ETL");
    assert!(claims.iss.starts_with("MYORG-ACCT.ETL.SHA256:"));
}

#[tokio::test]
async fn expired_session_is_renewed_with_the_master_token_and_resubmitted() {
    let server = MockServer::start(|request, seen| match request.path() {
        LOGIN => login_ok("T1"),
        RENEW => ok(json!({
            "data": {"sessionToken": "T2", "validityInSecondsST": 3600, "masterToken": "M2"},
            "success": true
        })),
        QUERY if seen == 0 => expired(),
        QUERY => one_value("after renewal"),
        _ => status(404, "no"),
    })
    .await;
    let client = Client::connect(options(&server.url, password()))
        .await
        .unwrap();
    let result = client.execute("SELECT 'x'", &[]).await.unwrap();
    assert_eq!(result.rows, vec![vec![Some("after renewal".to_owned())]]);

    let renew = &server.requests_to(RENEW)[0];
    assert_eq!(
        renew.header("authorization"),
        Some("Snowflake Token=\"M1\"")
    );
    assert_eq!(
        renew.json(),
        json!({"oldSessionToken": "T1", "requestType": "RENEW"})
    );
    let queries = server.requests_to(QUERY);
    assert_eq!(queries.len(), 2);
    assert_eq!(
        queries[1].header("authorization"),
        Some("Snowflake Token=\"T2\"")
    );
    assert_eq!(
        queries[0].json()["sequenceId"],
        queries[1].json()["sequenceId"]
    );
    assert_eq!(server.requests_to(LOGIN).len(), 1);
}

#[tokio::test]
async fn failed_renewal_falls_back_to_login_and_persistent_expiry_is_reported() {
    let server = MockServer::start(|request, seen| match request.path() {
        LOGIN => login_ok(if seen == 0 { "T1" } else { "T2" }),
        RENEW => ok(json!({"data": null, "code": "390114", "message": "master token expired", "success": false})),
        QUERY if request.header("authorization") == Some("Snowflake Token=\"T2\"") => {
            one_value("relogged")
        }
        QUERY => expired(),
        _ => status(404, "no"),
    })
    .await;
    let client = Client::connect(options(&server.url, password()))
        .await
        .unwrap();
    let result = client.execute("SELECT 1", &[]).await.unwrap();
    assert_eq!(result.rows[0][0].as_deref(), Some("relogged"));
    assert_eq!(server.requests_to(LOGIN).len(), 2);

    let always_expired = MockServer::start(|request, _| match request.path() {
        LOGIN => login_ok("T1"),
        QUERY => expired(),
        _ => status(404, "no"),
    })
    .await;
    let mut opts = options(&always_expired.url, password());
    opts.request_timeout = Duration::from_secs(2);
    let client = Client::connect(opts).await.unwrap();
    let err = client.execute("SELECT 1", &[]).await.unwrap_err();
    assert!(matches!(err, Error::SessionExpired), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(always_expired.requests_to(QUERY).len(), 2);
}

#[tokio::test]
async fn running_statement_is_polled_until_done() {
    let server = MockServer::start(|request, seen| match request.path() {
        LOGIN => login_ok("T1"),
        QUERY => ok(json!({
            "data": {"queryId": "q-long", "getResultUrl": "/queries/q-long/result"},
            "code": "333334", "message": "Asynchronous execution in progress.", "success": true
        })),
        "/queries/q-long/result" if seen < 2 => ok(json!({
            "data": {"queryId": "q-long", "getResultUrl": "/queries/q-long/result"},
            "code": "333333", "message": "still running", "success": true
        })),
        "/queries/q-long/result" => ok(json!({
            "data": {
                "rowtype": [{"name": "number of rows updated", "type": "fixed", "scale": 0},
                            {"name": "number of multi-joined rows updated", "type": "fixed", "scale": 0}],
                "rowset": [["5", "0"]],
                "queryId": "q-long",
                "statementTypeId": 12800,
                "stats": {"numRowsUpdated": 5, "numDmlDuplicates": 0}
            },
            "success": true
        })),
        _ => status(404, "no"),
    })
    .await;
    let client = Client::connect(options(&server.url, password()))
        .await
        .unwrap();
    let result = client.execute("UPDATE t SET a = 1", &[]).await.unwrap();
    assert_eq!(result.rows_updated, Some(5));
    assert_eq!(result.rows_affected, Some(5));
    assert_eq!(result.query_id.as_deref(), Some("q-long"));
    let polls = server.requests_to("/queries/q-long/result");
    assert_eq!(polls.len(), 3);
    assert!(
        polls
            .iter()
            .all(|p| p.method == "GET"
                && p.header("authorization") == Some("Snowflake Token=\"T1\""))
    );
}

#[tokio::test]
async fn poll_limit_and_foreign_result_urls() {
    let server = MockServer::start(|request, _| match request.path() {
        LOGIN => login_ok("T1"),
        QUERY => ok(json!({
            "data": {"queryId": "q-slow", "getResultUrl": "/queries/q-slow/result"},
            "code": "333334", "success": true
        })),
        _ => ok(json!({
            "data": {"queryId": "q-slow", "getResultUrl": "http://evil.example/steal"},
            "code": "333333", "success": true
        })),
    })
    .await;
    let mut opts = options(&server.url, password());
    opts.session_parameters
        .insert("STATEMENT_TIMEOUT_IN_SECONDS".into(), json!(1));
    opts.request_timeout = Duration::from_secs(1);
    let client = Client::connect(opts).await.unwrap();
    let err = client.execute("SELECT 1", &[]).await.unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");

    let slow = MockServer::start(|request, _| match request.path() {
        LOGIN => login_ok("T1"),
        _ => ok(json!({
            "data": {"queryId": "q-slow", "getResultUrl": "/queries/q-slow/result"},
            "code": "333333", "success": true
        })),
    })
    .await;
    let mut opts = options(&slow.url, password());
    opts.session_parameters
        .insert("STATEMENT_TIMEOUT_IN_SECONDS".into(), json!("1"));
    opts.request_timeout = Duration::from_millis(500);
    let client = Client::connect(opts).await.unwrap();
    let started = Instant::now();
    let err = client.execute("SELECT 1", &[]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { context } if context.contains("q-slow")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn json_result_chunks_are_downloaded_in_order() {
    let server = MockServer::start(move |request, _| match request.path() {
        LOGIN => login_ok("T1"),
        QUERY => {
            let base = request.header("host").unwrap().to_owned();
            ok(json!({
                "data": {
                    "rowtype": [{"name": "N", "type": "fixed", "scale": 1},
                                {"name": "S", "type": "text"}],
                    "rowset": [["1.0", "a"]],
                    "queryResultFormat": "json",
                    "queryId": "q-big",
                    "chunks": [
                        {"url": format!("http://{base}/chunk/1?X-Amz-Signature=secret"), "rowCount": 2},
                        {"url": format!("http://{base}/chunk/2?X-Amz-Signature=secret"), "rowCount": 1}
                    ],
                    "chunkHeaders": {"x-amz-server-side-encryption-customer-key": "KEY="},
                    "statementTypeId": 4096
                },
                "success": true
            }))
        }
        "/chunk/1" => status(200, r#"["2.5","b"],["3",null]"#),
        "/chunk/2" => Reply {
            status: 200,
            body: gzip(br#"["4.25","d"]"#),
            delay: Duration::ZERO,
        },
        _ => status(404, "no"),
    })
    .await;
    let client = Client::connect(options(&server.url, password()))
        .await
        .unwrap();
    let result = client.execute("SELECT n, s FROM big", &[]).await.unwrap();
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        result.rows,
        vec![
            vec![s("1.0"), s("a")],
            vec![s("2.5"), s("b")],
            vec![s("3.0"), None],
            vec![s("4.25"), s("d")],
        ]
    );
    assert_eq!(result.rows_affected, None);
    for chunk in [
        &server.requests_to("/chunk/1")[0],
        &server.requests_to("/chunk/2")[0],
    ] {
        assert_eq!(
            chunk.header("x-amz-server-side-encryption-customer-key"),
            Some("KEY=")
        );
        assert!(
            chunk.header("authorization").is_none(),
            "no session token to storage"
        );
    }
}

#[tokio::test]
async fn arrow_result_chunks_use_the_qrmk_key() {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch};
    use arrow_ipc::writer::StreamWriter;
    use arrow_schema::{DataType, Field, Schema};

    fn ipc(values: Vec<i64>) -> Vec<u8> {
        let field = Field::new("N", DataType::Int64, true).with_metadata(
            [
                ("logicalType".to_owned(), "FIXED".to_owned()),
                ("scale".to_owned(), "0".to_owned()),
            ]
            .into(),
        );
        let schema = Arc::new(Schema::new(vec![field]));
        let array: ArrayRef = Arc::new(Int64Array::from(values));
        let batch = RecordBatch::try_new(schema.clone(), vec![array]).unwrap();
        let mut out = Vec::new();
        let mut writer = StreamWriter::try_new(&mut out, &schema).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        drop(writer);
        out
    }
    let first = base64::engine::general_purpose::STANDARD.encode(ipc(vec![1]));
    let chunk = ipc(vec![2, 3]);
    let server = MockServer::start(move |request, _| match request.path() {
        LOGIN => login_ok("T1"),
        QUERY => {
            let base = request.header("host").unwrap().to_owned();
            ok(json!({
                "data": {
                    "rowtype": [{"name": "N", "type": "fixed", "scale": 0}],
                    "rowsetBase64": first,
                    "queryResultFormat": "arrow",
                    "chunks": [{"url": format!("http://{base}/chunk/a"), "rowCount": 2}],
                    "qrmk": "QRMK=",
                    "statementTypeId": 4096
                },
                "success": true
            }))
        }
        "/chunk/a" => Reply {
            status: 200,
            body: gzip(&chunk),
            delay: Duration::ZERO,
        },
        _ => status(404, "no"),
    })
    .await;
    let client = Client::connect(options(&server.url, password()))
        .await
        .unwrap();
    let result = client.execute("SELECT n FROM big", &[]).await.unwrap();
    let values: Vec<_> = result.rows.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(values, ["1", "2", "3"]);
    let download = &server.requests_to("/chunk/a")[0];
    assert_eq!(
        download.header("x-amz-server-side-encryption-customer-key"),
        Some("QRMK=")
    );
    assert_eq!(
        download.header("x-amz-server-side-encryption-customer-algorithm"),
        Some("AES256")
    );
}

#[tokio::test]
async fn errors_are_classified() {
    let server = MockServer::start(|request, _| match request.path() {
        LOGIN => login_ok("T1"),
        QUERY => match request.json()["sqlText"].as_str().unwrap() {
            "compile" => ok(json!({
                "data": {"errorCode": "001003", "sqlState": "42000", "queryId": "q-bad"},
                "code": "001003", "message": "SQL compilation error: syntax error", "success": false
            })),
            "busy" => status(503, "Service Unavailable"),
            "throttled" => status(429, "Too Many Requests"),
            "bad" => status(400, "Bad Request"),
            "crash" => status(
                500,
                r#"{"data": null, "code": "261000", "message": "Unhandled exception", "success": false}"#,
            ),
            "slow" => Reply {
                status: 200,
                body: b"{}".to_vec(),
                delay: Duration::from_secs(3),
            },
            _ => status(200, "not json"),
        },
        _ => status(404, "no"),
    })
    .await;
    let mut opts = options(&server.url, password());
    opts.request_timeout = Duration::from_millis(700);
    let client = Client::connect(opts).await.unwrap();
    let run = |sql: &'static str| {
        let client = client.clone();
        async move { client.execute(sql, &[]).await.unwrap_err() }
    };
    match run("compile").await {
        e @ Error::Sql { .. } => {
            assert!(!e.is_retryable());
            let text = e.to_string();
            assert!(text.contains("001003") && text.contains("q-bad"), "{text}");
        }
        other => panic!("unexpected {other:?}"),
    }
    for (sql, code, retryable) in [
        ("busy", 503, true),
        ("throttled", 429, true),
        ("bad", 400, false),
        ("crash", 500, true),
    ] {
        match run(sql).await {
            e @ Error::Status { status, .. } => {
                assert_eq!(status, code);
                assert_eq!(e.is_retryable(), retryable, "{sql}");
            }
            other => panic!("{sql}: unexpected {other:?}"),
        }
    }
    let timeout = run("slow").await;
    assert!(matches!(timeout, Error::Timeout { .. }), "{timeout:?}");
    assert!(timeout.is_retryable());
    assert!(matches!(run("garbage").await, Error::Decode(_)));
}

#[tokio::test]
async fn resubmissions_of_one_statement_keep_its_request_id() {
    // The first submission is answered too late (the client times out); the caller
    // retries under the same RequestId; a plain execute gets a fresh id.
    let server = MockServer::start(|request, seen| match request.path() {
        LOGIN => login_ok("T1"),
        QUERY if seen == 0 => Reply {
            delay: Duration::from_secs(3),
            ..one_value("late")
        },
        QUERY => one_value("ok"),
        _ => status(404, "no"),
    })
    .await;
    let mut opts = options(&server.url, password());
    opts.request_timeout = Duration::from_millis(500);
    let client = Client::connect(opts).await.unwrap();
    let request = RequestId::new();
    let first = client.execute_as("MERGE 1", &[], &request).await;
    assert!(matches!(first, Err(Error::Timeout { .. })), "{first:?}");
    let second = client.execute_as("MERGE 1", &[], &request).await.unwrap();
    assert_eq!(second.rows[0][0].as_deref(), Some("ok"));
    client.execute("SELECT 1", &[]).await.unwrap();

    let queries = server.requests_to(QUERY);
    assert_eq!(queries.len(), 3);
    let param = |r: &Recorded, name: &str| {
        r.query()
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    let id = request.id().to_string();
    assert_eq!(
        param(&queries[0], "requestId").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(param(&queries[0], "retry"), None, "a first submission");
    assert_eq!(
        param(&queries[1], "requestId").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(param(&queries[1], "retry").as_deref(), Some("true"));
    assert_eq!(param(&queries[1], "retryCount").as_deref(), Some("1"));
    assert_ne!(
        param(&queries[0], "request_guid"),
        param(&queries[1], "request_guid"),
        "each submission has its own guid"
    );
    assert_ne!(
        param(&queries[2], "requestId").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(param(&queries[2], "retry"), None);
}

#[tokio::test]
async fn refused_login_and_unreachable_server() {
    let server = MockServer::start(|_, _| {
        ok(
            json!({"data": {"nextAction": "RETRY_LOGIN"}, "code": "390100",
                  "message": "Incorrect username or password was specified.", "success": false}),
        )
    })
    .await;
    let err = Client::connect(options(&server.url, password()))
        .await
        .unwrap_err();
    match &err {
        Error::Login { code, message } => {
            assert_eq!(code, "390100");
            assert!(message.contains("Incorrect"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("pa55"));

    // Nothing listens on a port we just released: a connection error, retryable.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = Client::connect(options(&format!("http://127.0.0.1:{port}"), password()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    assert!(err.is_retryable());

    let mut bad = options("ftp://x", password());
    assert!(matches!(
        Client::connect(bad.clone()).await,
        Err(Error::Config(_))
    ));
    bad.account_url = String::new();
    bad.account = String::new();
    assert!(matches!(Client::connect(bad).await, Err(Error::Config(_))));
}

#[test]
fn dml_counts_from_result_rows() {
    let column = |name: &str| ColumnMeta {
        name: name.into(),
        type_name: "FIXED".into(),
        scale: Some(0),
        precision: Some(38),
        nullable: true,
    };
    let merge_columns = vec![
        column("number of rows inserted"),
        column("number of rows updated"),
        column("number of rows deleted"),
    ];
    let rows = vec![vec![Some("3".into()), Some("2".into()), Some("1".into())]];
    let counts = dml_counts(None, Some(0x3400), &merge_columns, &rows);
    assert_eq!(
        counts,
        DmlCounts {
            inserted: Some(3),
            updated: Some(2),
            deleted: Some(1)
        }
    );
    assert_eq!(counts.affected(), Some(6));
    // Without a statement type, only "number of ..." columns count.
    assert_eq!(
        dml_counts(None, None, &merge_columns, &rows).affected(),
        Some(6)
    );
    let select = vec![column("number of rows inserted"), column("OTHER")];
    let rows2 = vec![vec![Some("3".into()), Some("2".into())]];
    assert_eq!(dml_counts(None, None, &select, &rows2).affected(), None);
    assert_eq!(
        dml_counts(None, Some(0x1000), &merge_columns, &rows).affected(),
        None
    );
    let stats = protocol::Stats {
        num_rows_inserted: Some(10),
        num_rows_updated: None,
        num_rows_deleted: Some(4),
    };
    let counts = dml_counts(Some(&stats), Some(0x3400), &merge_columns, &rows);
    assert_eq!(counts.inserted, Some(10));
    assert_eq!(counts.affected(), Some(14));
}

#[test]
fn base_url_and_account_name() {
    let mut opts = options("https://myorg-acct.snowflakecomputing.com/", password());
    assert_eq!(
        base_url(&opts).unwrap(),
        "https://myorg-acct.snowflakecomputing.com"
    );
    opts.account_url = String::new();
    opts.account = "xy12345.eu-central-1".into();
    assert_eq!(
        base_url(&opts).unwrap(),
        "https://xy12345.eu-central-1.snowflakecomputing.com"
    );
    assert_eq!(account_name("xy12345.eu-central-1"), "xy12345");
    assert_eq!(
        account_from_url("https://myorg-acct.snowflakecomputing.com").as_deref(),
        Some("myorg-acct")
    );
    assert_eq!(
        account_from_url("https://xy12345.eu-central-1.snowflakecomputing.com").as_deref(),
        Some("xy12345")
    );
    assert_eq!(account_from_url("http://127.0.0.1:17080"), None);
    assert_eq!(account_name("myorg-acct"), "myorg-acct");
}

/// Collects everything logged (all crates, debug level) while it is the default subscriber.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_carry_query_ids_but_no_secrets() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = MockServer::start(|request, seen| match request.path() {
        LOGIN => ok(json!({
            "data": {"token": "tok-SESSION-secret", "masterToken": "tok-MASTER-secret"},
            "success": true
        })),
        RENEW => ok(json!({"data": {"sessionToken": "tok-RENEWED-secret"}, "success": true})),
        QUERY if seen == 0 => expired(),
        QUERY => ok(json!({
            "data": {
                "rowtype": [{"name": "V", "type": "text"}],
                "rowset": [["row-value"]],
                "queryId": "01b2-query-id",
                "chunks": [{"url": format!("http://{}/chunk?X-Amz-Signature=sig-SECRET", request.header("host").unwrap()), "rowCount": 1}],
                "chunkHeaders": {"x-amz-server-side-encryption-customer-key": "key-SECRET"}
            },
            "success": true
        })),
        "/chunk" => status(200, r#"["chunk-value"]"#),
        _ => ok(json!({"success": true})),
    })
    .await;
    let long_sql = format!("SELECT v FROM t WHERE v = ? /* {} */", "x".repeat(400));
    let client = Client::connect(options(&server.url, password()))
        .await
        .unwrap();
    let result = client
        .execute(&long_sql, &[Bind::text("bind-SECRET-4111")])
        .await
        .unwrap();
    assert_eq!(result.rows.len(), 2);
    client.close().await.unwrap();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("01b2-query-id"), "{text}");
    assert!(text.contains("SELECT v FROM t WHERE v = ?"), "{text}");
    assert!(!text.contains(&"x".repeat(300)), "SQL text is cut");
    for secret in [
        "pa55-word",
        "tok-SESSION-secret",
        "tok-MASTER-secret",
        "tok-RENEWED-secret",
        "bind-SECRET",
        "sig-SECRET",
        "key-SECRET",
    ] {
        assert!(!text.contains(secret), "{secret} leaked into logs:\n{text}");
    }
}
