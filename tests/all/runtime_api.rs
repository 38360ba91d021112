//! The real `bootstrap` binary (floe-lambda) served by a Lambda Runtime API emulator
//! on 127.0.0.1: the endpoints a provided.al2023 function talks to (`next`,
//! `response`, `error`, `init/error`), HTTP/1.1 with keep-alive, in the test. The
//! binary loads the MSK fixture into the Snowflake emulator; the same event delivered
//! again changes nothing.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::lambda::msk_fixture;
use crate::support::{env, query, snowflake, unique};

/// What the emulator saw: the answers per request id, errors, and when the first
/// answer arrived.
#[derive(Default)]
pub(crate) struct Seen {
    pub responses: Vec<(String, serde_json::Value)>,
    pub errors: Vec<(String, String)>,
    pub first_answer: Option<Instant>,
}

/// The Runtime API emulator: hands out `events` in order (each with a deadline 60 s
/// away), then holds `next` open.
pub(crate) struct RuntimeApi {
    pub addr: String,
    pub seen: Arc<Mutex<Seen>>,
}

impl RuntimeApi {
    pub(crate) async fn start(events: Vec<serde_json::Value>) -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let queue = Arc::new(Mutex::new(VecDeque::from(events)));
        let s = seen.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                n += 1;
                tokio::spawn(serve(conn, queue.clone(), s.clone(), n));
            }
        });
        RuntimeApi { addr, seen }
    }

    /// Waits until `n` answers (responses or errors) arrived.
    pub(crate) async fn answers(&self, n: usize, within: Duration) {
        let started = Instant::now();
        loop {
            let got = {
                let s = self.seen.lock().unwrap();
                s.responses.len() + s.errors.len()
            };
            if got >= n {
                return;
            }
            assert!(
                started.elapsed() < within,
                "only {got} of {n} answers in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One HTTP/1.1 request: method, path, body (Content-Length or chunked).
async fn read_request(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, String, Vec<u8>)> {
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let lower = head.to_ascii_lowercase();
    let length: Option<usize> = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let chunked = lower.contains("transfer-encoding: chunked");
    buf.drain(..header_end);
    let mut body = Vec::new();
    if chunked {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16).ok()?;
            while buf.len() < line_end + 2 + size + 2 {
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    } else {
        let length = length.unwrap_or(0);
        while buf.len() < length {
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        body = buf.drain(..length).collect();
    }
    Some((method, path, body))
}

async fn serve(
    mut conn: TcpStream,
    queue: Arc<Mutex<VecDeque<serde_json::Value>>>,
    seen: Arc<Mutex<Seen>>,
    conn_no: u32,
) {
    let mut buf = Vec::new();
    let mut served = 0u32;
    while let Some((method, path, body)) = read_request(&mut conn, &mut buf).await {
        let answer = |status: &str, headers: &str, body: &[u8]| {
            let mut out = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(body);
            out
        };
        let out = if method == "GET" && path.ends_with("/runtime/invocation/next") {
            let next = queue.lock().unwrap().pop_front();
            let Some(event) = next else {
                // No more events: hold the long poll until the test ends.
                std::future::pending::<()>().await;
                return;
            };
            served += 1;
            let id = format!("req-{conn_no}-{served}");
            let deadline = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 60_000;
            let body = serde_json::to_vec(&event).unwrap();
            answer(
                "200 OK",
                &format!(
                    "Content-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: {id}\r\nLambda-Runtime-Deadline-Ms: {deadline}\r\nLambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:123456789012:function:floe\r\nLambda-Runtime-Trace-Id: Root=1-00000000-000000000000000000000000\r\n"
                ),
                &body,
            )
        } else if method == "POST" && path.ends_with("/response") {
            let id = path.split('/').rev().nth(1).unwrap_or_default().to_string();
            let mut s = seen.lock().unwrap();
            s.first_answer.get_or_insert_with(Instant::now);
            s.responses.push((
                id,
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            ));
            answer("202 Accepted", "", b"{}")
        } else if method == "POST" && path.ends_with("/error") {
            let id = path.split('/').rev().nth(1).unwrap_or_default().to_string();
            let mut s = seen.lock().unwrap();
            s.first_answer.get_or_insert_with(Instant::now);
            s.errors
                .push((id, String::from_utf8_lossy(&body).into_owned()));
            answer("202 Accepted", "", b"{}")
        } else {
            answer("404 Not Found", "", b"")
        };
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

pub(crate) fn bootstrap_bin() -> PathBuf {
    let p = std::env::var_os("FLOE_LAMBDA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/bootstrap")
        });
    assert!(p.exists(), "{} is missing: run `make build`", p.display());
    p
}

/// Starts `bootstrap` against `api` with the Lambda environment and `vars`; killed on
/// drop.
pub(crate) struct Bootstrap(Child);

impl Bootstrap {
    pub(crate) fn start(api: &RuntimeApi, vars: &[(&str, String)]) -> Bootstrap {
        Self::spawn(api, vars, Stdio::inherit())
    }

    /// [`Bootstrap::start`] with its output (logs) written to `log`.
    pub(crate) fn start_logged(
        api: &RuntimeApi,
        vars: &[(&str, String)],
        log: &std::path::Path,
    ) -> Bootstrap {
        Self::spawn(api, vars, Stdio::from(std::fs::File::create(log).unwrap()))
    }

    fn spawn(api: &RuntimeApi, vars: &[(&str, String)], out: Stdio) -> Bootstrap {
        let mut cmd = Command::new(bootstrap_bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
            .env("AWS_LAMBDA_FUNCTION_NAME", "floe")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/floe")
            .env("RUST_LOG", "info")
            .stdout(out)
            .stderr(Stdio::inherit());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Bootstrap(cmd.spawn().unwrap())
    }
}

impl Drop for Bootstrap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn the_bootstrap_binary_answers_invocations_of_the_runtime_api() {
    let run = unique("lbin").to_lowercase();
    let database = unique("LAMBDA_BIN").to_uppercase();
    let event = msk_fixture(&run);
    let api = RuntimeApi::start(vec![event.clone(), event]).await;
    let _bootstrap = Bootstrap::start(
        &api,
        &[
            (
                "FLOE__SINK__SNOWFLAKE__ACCOUNT_URL",
                env("FLOE_SNOWFLAKE_URL"),
            ),
            ("FLOE__SINK__SNOWFLAKE__DATABASE", database.clone()),
            ("FLOE__SINK__SNOWFLAKE__TABLE_NAME", "{table}".into()),
        ],
    );
    api.answers(2, Duration::from_secs(120)).await;
    {
        let seen = api.seen.lock().unwrap();
        assert_eq!(seen.errors, vec![], "no function error");
        assert_eq!(seen.responses.len(), 2);
        for (id, body) in &seen.responses {
            assert_eq!(body, &serde_json::json!({"batchItemFailures": []}), "{id}");
        }
    }
    let sf = snowflake().await;
    assert_eq!(
        query(
            &sf,
            &format!(r#"SELECT "ID", "FIRST_NAME", "LAST_NAME", "EMAIL", "__OP" FROM {database}.CDC.CUSTOMERS ORDER BY "ID""#)
        )
        .await,
        vec![vec!["1001", "Sally", "Thomas", "sally@acme.com", "u"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn a_fatal_warehouse_error_is_a_function_error_with_its_message() {
    let run = unique("lfatal").to_lowercase();
    let api = RuntimeApi::start(vec![msk_fixture(&run)]).await;
    // The emulator's login succeeds for any user; a database name that cannot be
    // created fails the first statement for good (SQL compile error).
    let _bootstrap = Bootstrap::start(
        &api,
        &[
            (
                "FLOE__SINK__SNOWFLAKE__ACCOUNT_URL",
                env("FLOE_SNOWFLAKE_URL"),
            ),
            ("FLOE__SINK__SNOWFLAKE__DATABASE", "no such\"db".into()),
        ],
    );
    api.answers(1, Duration::from_secs(120)).await;
    let seen = api.seen.lock().unwrap();
    assert_eq!(seen.responses.len(), 0, "{:?}", seen.responses);
    let (_, error) = &seen.errors[0];
    assert!(error.contains("errorMessage"), "{error}");
}

/// Creates a secret in the moto server on `port` (Secrets Manager `CreateSecret`) and
/// returns its ARN.
fn create_secret(port: u16, name: &str, value: &str) -> String {
    use std::io::{Read, Write};
    let body = serde_json::json!({"Name": name, "SecretString": value}).to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: secretsmanager.CreateSecret\r\nAuthorization: AWS4-HMAC-SHA256 Credential=test/20261130/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "create secret: {answer}"
    );
    let json = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str::<serde_json::Value>(json).unwrap()["ARN"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack (and moto): make test"]
async fn the_snowflake_key_comes_from_secrets_manager() {
    let dir = std::env::temp_dir().join(unique("floe-lambda-secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = crate::broker::free_port();
    let _moto = crate::broker::start_moto(port, &dir);
    let pem = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../runner/snowflake/testdata/jwt_test_key.p8"),
    )
    .unwrap();
    let arn = create_secret(port, &unique("floe-snowflake-key"), &pem);
    let aws = |secret: &str| {
        vec![
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
            ("FLOE_SNOWFLAKE_PRIVATE_KEY_SECRET_ARN", secret.to_string()),
            (
                "FLOE__SINK__SNOWFLAKE__ACCOUNT_URL",
                env("FLOE_SNOWFLAKE_URL"),
            ),
            (
                "FLOE__SINK__SNOWFLAKE__DATABASE",
                unique("LAMBDA_KEY").to_uppercase(),
            ),
            ("FLOE__SINK__SNOWFLAKE__TABLE_NAME", "{table}".into()),
        ]
    };
    // The key from the secret signs the login; the invocation loads.
    let api = RuntimeApi::start(vec![msk_fixture(&unique("lkey").to_lowercase())]).await;
    let log = dir.join("bootstrap.log");
    let _b = Bootstrap::start_logged(&api, &aws(&arn), &log);
    api.answers(1, Duration::from_secs(120)).await;
    {
        let seen = api.seen.lock().unwrap();
        assert_eq!(seen.errors, vec![]);
        assert_eq!(
            seen.responses[0].1,
            serde_json::json!({"batchItemFailures": []})
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Snowflake private key read from Secrets Manager"),
        "{text}"
    );
    assert!(
        !text.contains("PRIVATE KEY-----"),
        "the key is never logged"
    );
    // A secret that does not exist: a function error that says so.
    let api = RuntimeApi::start(vec![msk_fixture(&unique("lkey").to_lowercase())]).await;
    let missing = arn.replace("floe-snowflake-key", "no-such-secret");
    let _b = Bootstrap::start(&api, &aws(&missing));
    api.answers(1, Duration::from_secs(120)).await;
    let seen = api.seen.lock().unwrap();
    assert_eq!(seen.responses.len(), 0);
    assert!(
        seen.errors[0].1.contains("ResourceNotFound"),
        "{:?}",
        seen.errors
    );
    let _ = std::fs::remove_dir_all(&dir);
}
