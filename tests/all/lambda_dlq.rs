//! The Lambda's dead letters in Amazon SQS and S3 (`dlq.kind = "sqs"` / `"s3"`), against
//! a local AWS emulator (moto): the poison record of the MSK fixture arrives there as
//! its fixture line, bytes and reason kept, while the good records load into the
//! Snowflake emulator; a store that refuses the letter is answered with the item
//! failure that retries it, and nothing after it in its partition.

use std::collections::HashMap;
use std::path::Path;

use floe_lambda::access;
use floe_lambda::handler::Floe;

use crate::lambda::{deadline_in, event, failures, lambda_config, msk_fixture};
use crate::support::{query, snowflake, unique};

/// The environment the function would see: credentials, region and the emulator.
fn aws_env(port: u16) -> HashMap<String, String> {
    [
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A call to the emulator (which does not check signatures), answered with its body.
/// `service` routes it (the emulator reads it from the credential scope).
async fn call(
    service: &str,
    request: reqwest::RequestBuilder,
    target: Option<&str>,
    body: Option<serde_json::Value>,
) -> String {
    let mut request = request.header(
        "authorization",
        format!("AWS4-HMAC-SHA256 Credential=test/20261201/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"),
    );
    if let Some(target) = target {
        request = request
            .header("x-amz-target", target)
            .header("content-type", "application/x-amz-json-1.0");
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    text
}

async fn sqs(port: u16, target: &str, body: serde_json::Value) -> serde_json::Value {
    let http = reqwest::Client::new();
    let text = call(
        "sqs",
        http.post(format!("http://127.0.0.1:{port}/")),
        Some(target),
        Some(body),
    )
    .await;
    serde_json::from_str(&text).unwrap()
}

/// Floe as the Lambda starts it with `env` (the dead letter store resolved from it).
async fn started(database: &str, env: HashMap<String, String>) -> Floe {
    let mut config = floe_lambda::config::LambdaConfig::load(None, env.clone()).unwrap();
    let base = lambda_config(&crate::support::env("FLOE_SNOWFLAKE_URL"), database);
    config.sink = base.sink;
    let access = access::resolve(&mut config, &env).await.unwrap();
    Floe::init(config, access, floe::Stats::new())
        .await
        .unwrap()
}

/// One invocation with the MSK fixture under a fresh run prefix and target database,
/// dead letters going where `dlq` says (`FLOE__DLQ__<KEY>` entries): the run prefix, the
/// database and the item failures.
async fn invoke(
    port: u16,
    tag: &str,
    dlq: &[(&str, &str)],
    deadline_ms: u64,
) -> (String, String, Vec<(String, i64)>) {
    let run = unique(tag).to_lowercase();
    let database = unique(&format!("lambda_{tag}")).to_uppercase();
    let mut env = aws_env(port);
    env.extend(
        dlq.iter()
            .map(|(k, v)| (format!("FLOE__DLQ__{k}"), v.to_string())),
    );
    let mut floe = started(&database, env).await;
    let response = floe
        .handle(&event(msk_fixture(&run)), deadline_in(deadline_ms))
        .await
        .unwrap();
    (run, database, failures(&response))
}

/// The ids loaded into the run's target table.
async fn loaded_ids(sf: &floe_snowflake::Client, database: &str) -> Vec<Vec<String>> {
    let sql = format!(r#"SELECT "ID" FROM {database}.CDC.CUSTOMERS ORDER BY "ID""#);
    query(sf, &sql).await
}

fn assert_poison_letter(line: &str, run: &str) {
    let back = floe_batch::fixture::parse_lines(line).unwrap();
    assert_eq!(back.len(), 1, "{line}");
    let m = &back[0];
    assert_eq!(&*m.topic, format!("{run}.inventory.customers"));
    assert_eq!(m.partition, 1);
    assert_eq!(m.value.as_deref(), Some(&b"{not json"[..]));
    assert_eq!(m.key.as_deref(), Some(&br#"{"id":1003}"#[..]));
    assert_eq!(m.header("floe.error.category").as_deref(), Some("parse"));
    assert_eq!(m.header("floe.source.offset").as_deref(), Some("879"));
    assert!(m.header("floe.error.reason").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the dev stack (and moto): make test"]
async fn dead_letters_go_to_sqs_and_s3_and_a_refusing_store_is_retried() {
    let dir = std::env::temp_dir().join(unique("floe-lambda-dlq"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = crate::broker::free_port();
    let _moto = crate::broker::start_moto(port, &dir);
    let http = reqwest::Client::new();
    let sf = snowflake().await;

    // SQS: the poison record is one message, its fixture line, with attributes.
    let queue = unique("floe-dead").to_lowercase();
    let created = sqs(
        port,
        "AmazonSQS.CreateQueue",
        serde_json::json!({"QueueName": queue}),
    )
    .await;
    let queue_url = created["QueueUrl"].as_str().unwrap().to_string();
    let (run, database, failed) = invoke(
        port,
        "lsqs",
        &[("KIND", "sqs"), ("SQS_QUEUE_URL", &queue_url)],
        60_000,
    )
    .await;
    assert_eq!(failed, vec![]);
    let received = sqs(
        port,
        "AmazonSQS.ReceiveMessage",
        serde_json::json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "MessageAttributeNames": ["All"]}),
    )
    .await;
    let messages = received["Messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{received}");
    assert_poison_letter(messages[0]["Body"].as_str().unwrap(), &run);
    assert_eq!(
        messages[0]["MessageAttributes"]["floe.error.category"]["StringValue"],
        "parse"
    );
    assert_eq!(loaded_ids(&sf, &database).await, vec![vec!["1001"]]);

    // S3: one object for the poison record's partition, under the prefix.
    let bucket = unique("floe-dead").to_lowercase().replace('_', "-");
    call(
        "s3",
        http.put(format!("http://127.0.0.1:{port}/{bucket}")),
        None,
        None,
    )
    .await;
    let (run, database, failed) = invoke(
        port,
        "ls3",
        &[
            ("KIND", "s3"),
            ("S3_BUCKET", &bucket),
            ("S3_PREFIX", "dead/letters/"),
        ],
        60_000,
    )
    .await;
    assert_eq!(failed, vec![]);
    let listing = call(
        "s3",
        http.get(format!("http://127.0.0.1:{port}/{bucket}?list-type=2")),
        None,
        None,
    )
    .await;
    let keys: Vec<&str> = listing
        .split("<Key>")
        .skip(1)
        .map(|k| k.split("</Key>").next().unwrap())
        .collect();
    assert_eq!(keys.len(), 1, "{listing}");
    let prefix = format!(
        "dead/letters/{run}.inventory.customers/1/00000000000000000879-00000000000000000879."
    );
    assert!(
        keys[0].starts_with(&prefix) && keys[0].ends_with(".jsonl"),
        "{}",
        keys[0]
    );
    let object = call(
        "s3",
        http.get(format!("http://127.0.0.1:{port}/{bucket}/{}", keys[0])),
        None,
        None,
    )
    .await;
    assert_poison_letter(&object, &run);
    assert_eq!(loaded_ids(&sf, &database).await, vec![vec!["1001"]]);

    // A bucket that does not exist: the letter cannot be stored, so its partition is
    // retried from the poison record (partition 1, offset 879); the rest is loaded.
    let (run, database, failed) = invoke(
        port,
        "ls3x",
        &[("KIND", "s3"), ("S3_BUCKET", "no-such-bucket")],
        12_000,
    )
    .await;
    assert_eq!(failed, vec![(format!("{run}.inventory.customers-1"), 879)]);
    assert_eq!(
        loaded_ids(&sf, &database).await,
        vec![vec!["1001"]],
        "the loads are kept; only the letter's partition is retried from it"
    );
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
