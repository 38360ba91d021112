//! The real `bootstrap` binary (floe-lambda) served by a Lambda Runtime API emulator
//! on 127.0.0.1: the endpoints a provided.al2023 function talks to (`next`,
//! `response`, `error`, `init/error`), HTTP/1.1 with keep-alive, in the test. The
//! binary loads the MSK fixture into the Snowflake emulator; the same event delivered
//! again changes nothing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_integration_tests::otlp::{Receiver, attr};
use floe_integration_tests::runtime_api::{RuntimeApi, Seen};

use crate::lambda::msk_fixture;
use crate::support::{env, query, snowflake, unique};

pub(crate) fn bootstrap_bin() -> PathBuf {
    let p = std::env::var_os("FLOE_LAMBDA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/bootstrap")
        });
    assert!(p.exists(), "{} is missing: run `make build`", p.display());
    p
}

/// The command that runs `bootstrap`: `FLOE_TEST_BOOTSTRAP` when set, a command line split
/// on whitespace (`dev/lambda.sh smoke arm64` sets it to the arm64 package's bootstrap under
/// `qemu-aarch64-static -L <aarch64 root>`), else [`bootstrap_bin`].
fn bootstrap_command() -> Command {
    match std::env::var("FLOE_TEST_BOOTSTRAP") {
        Ok(line) if !line.trim().is_empty() => {
            let mut words = line.split_whitespace();
            let mut cmd = Command::new(words.next().unwrap());
            cmd.args(words);
            cmd
        }
        _ => Command::new(bootstrap_bin()),
    }
}

/// Starts `bootstrap` against `api` with the Lambda environment and `vars`; killed on
/// drop, saying how long after its start the first answer came (test output).
pub(crate) struct Bootstrap {
    child: Child,
    started: Instant,
    seen: Arc<Mutex<Seen>>,
}

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
        let mut cmd = bootstrap_command();
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
        Bootstrap {
            child: cmd.spawn().unwrap(),
            started: Instant::now(),
            seen: api.seen.clone(),
        }
    }
}

impl Drop for Bootstrap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let first = self.seen.lock().ok().and_then(|s| s.first_answer);
        if let Some(after) = first.and_then(|t| t.checked_duration_since(self.started)) {
            eprintln!(
                "bootstrap: first answer {} ms after start",
                after.as_millis()
            );
        }
    }
}

/// The bootstrap's environment for loading into `database` on the stack's emulator, one
/// target table per source table.
fn emulator_vars(database: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "FLOE__SINK__SNOWFLAKE__ACCOUNT_URL",
            env("FLOE_SNOWFLAKE_URL"),
        ),
        ("FLOE__SINK__SNOWFLAKE__DATABASE", database.to_string()),
        ("FLOE__SINK__SNOWFLAKE__TABLE_NAME", "{table}".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn the_bootstrap_binary_answers_invocations_of_the_runtime_api() {
    let run = unique("lbin").to_lowercase();
    let database = unique("LAMBDA_BIN").to_uppercase();
    let event = msk_fixture(&run);
    let api = RuntimeApi::start(vec![event.clone(), event]).await;
    let _bootstrap = Bootstrap::start(&api, &emulator_vars(&database));
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

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, each invocation's spans and metrics reach the
/// collector before its response does (the sandbox is frozen between invocations), with
/// the exporters' own intervals far away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack: make test"]
async fn each_invocation_flushes_its_spans_and_metrics_before_it_answers() {
    let run = unique("lotel").to_lowercase();
    let database = unique("LAMBDA_OTEL").to_uppercase();
    let event = msk_fixture(&run);
    let records: usize = event["records"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r.as_array().unwrap().len())
        .sum();
    let receiver = Receiver::start().await;
    let api = RuntimeApi::start(vec![event.clone(), event]).await;
    let mut vars = emulator_vars(&database);
    vars.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "600000".into()),
    ]);
    let _bootstrap = Bootstrap::start(&api, &vars);
    api.answers(2, Duration::from_secs(120)).await;
    assert_eq!(api.seen.lock().unwrap().errors, vec![], "no function error");

    let spans = receiver.spans();
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    let batch = format!("process {run}.inventory.customers");
    let batches: Vec<_> = spans.iter().filter(|(_, s)| s.name == batch).collect();
    assert_eq!(batches.len(), 2, "one batch span per invocation: {names:?}");
    assert!(
        spans.iter().all(|(service, _)| service == "floe"),
        "{names:?}"
    );
    for (_, b) in &batches {
        let load = spans
            .iter()
            .find(|(_, s)| s.name == "load" && s.parent_span_id == b.span_id)
            .unwrap_or_else(|| panic!("a load under {}: {names:?}", b.name));
        assert!(
            spans.iter().any(|(_, s)| s.parent_span_id == load.1.span_id
                && attr(s, "db.system.name").as_deref() == Some("snowflake")),
            "statements under the load: {names:?}"
        );
    }
    let (sums, _) = receiver.sums();
    assert_eq!(
        sums.get("floe.events.consumed"),
        Some(&(2 * records as i64)),
        "{sums:?}"
    );
    assert!(sums.get("floe.batches.committed") >= Some(&2), "{sums:?}");
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
        let mut vars = emulator_vars(&unique("LAMBDA_KEY").to_uppercase());
        vars.extend([
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
            ("FLOE_SNOWFLAKE_PRIVATE_KEY_SECRET_ARN", secret.to_string()),
        ]);
        vars
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
