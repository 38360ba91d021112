//! How the Lambda reaches what it writes to, resolved once per container: the
//! Snowflake private key (from AWS Secrets Manager when
//! `FLOE_SNOWFLAKE_PRIVATE_KEY_SECRET_ARN` names a secret, else
//! `sink.snowflake.private_key` / `password` as configured) and the authentication of
//! the dead letter producer on the event's cluster (`lambda.kafka_auth`: none, Amazon
//! MSK IAM, or SASL/SCRAM with the credentials of `FLOE_KAFKA_SCRAM_SECRET_ARN`, the
//! secret the event source mapping uses), or the SQS queue or S3 bucket dead letters go
//! to (`dlq.kind = "sqs"` / `"s3"`). Secret values are never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use floe_batch::config::{DlqKind, KafkaOptions};
use floe_batch::dlq::{LetterStore, TokenSource};
use serde::{Deserialize, Serialize};

use crate::aws::{Aws, AwsError};
use crate::config::LambdaConfig;
use crate::letters::{S3Store, SqsStore};

/// The environment variable naming the secret that holds the Snowflake private key
/// (its `SecretString` is the PEM).
pub const SNOWFLAKE_KEY_SECRET: &str = "FLOE_SNOWFLAKE_PRIVATE_KEY_SECRET_ARN";
/// The environment variable naming the SASL/SCRAM secret (`{"username","password"}`).
pub const SCRAM_SECRET: &str = "FLOE_KAFKA_SCRAM_SECRET_ARN";

/// How the dead letter producer authenticates to the event's cluster.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaAuth {
    /// PLAINTEXT, or whatever `dlq.options` sets.
    #[default]
    None,
    /// Amazon MSK IAM (SASL_SSL + OAUTHBEARER with a presigned token of the function's
    /// role; MSK's port 9098).
    MskIam,
    /// SASL_SSL + SCRAM-SHA-512 with the credentials of `FLOE_KAFKA_SCRAM_SECRET_ARN`.
    ScramSha512,
    /// SASL_SSL + SCRAM-SHA-256, likewise.
    ScramSha256,
}

/// The DLQ producer's settings for the event's cluster, or the store dead letters go
/// to instead.
#[derive(Clone, Default)]
pub struct Access {
    /// librdkafka settings (security protocol, SASL mechanism and credentials).
    pub options: KafkaOptions,
    /// OAUTHBEARER tokens (MSK IAM).
    pub token: Option<TokenSource>,
    /// The SQS queue or S3 bucket of `dlq.kind = "sqs"` / `"s3"`.
    pub letters: Option<Arc<dyn LetterStore>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("options", &self.options)
            .field("token", &self.token.as_ref().map(|_| "<msk-iam>"))
            .field("letters", &self.letters.as_ref().map(|l| l.describe()))
            .finish()
    }
}

#[derive(Deserialize)]
struct Scram {
    username: String,
    password: String,
}

/// Fills `config`'s Snowflake key from Secrets Manager when asked, and returns the
/// DLQ producer's access for `config.lambda.kafka_auth`, or the dead letter store of
/// `config.dlq.kind`.
pub async fn resolve(
    config: &mut LambdaConfig,
    env: &HashMap<String, String>,
) -> Result<Access, AwsError> {
    let auth = config.lambda.kafka_auth;
    let key_secret = env.get(SNOWFLAKE_KEY_SECRET).filter(|v| !v.is_empty());
    let store = matches!(config.dlq.kind, DlqKind::Sqs | DlqKind::S3);
    if key_secret.is_none() && auth == KafkaAuth::None && !store {
        return Ok(Access::default());
    }
    let aws = Aws::from_env(env)?;
    if let Some(arn) = key_secret {
        let pem = aws.secret(arn).await?;
        config.sink.snowflake.private_key = Some(pem.into());
        tracing::info!(secret = %arn, "Snowflake private key read from Secrets Manager");
    }
    let mut access = Access::default();
    let dlq = &config.dlq;
    access.letters = match dlq.kind {
        DlqKind::Sqs => Some(Arc::new(SqsStore::new(
            aws.clone(),
            dlq.sqs_queue_url.as_deref().unwrap_or_default(),
            dlq.max_letter_bytes,
        ))),
        DlqKind::S3 => Some(Arc::new(S3Store::new(
            aws.clone(),
            dlq.s3_bucket.as_deref().unwrap_or_default(),
            &dlq.s3_prefix,
        ))),
        _ => None,
    };
    if let Some(store) = &access.letters {
        tracing::info!(store = %store.describe(), "dead letters go to AWS");
    }
    let set = |o: &mut KafkaOptions, k: &str, v: &str| {
        o.insert(k.to_owned(), v.to_owned());
    };
    match auth {
        KafkaAuth::None => {}
        KafkaAuth::MskIam => {
            set(&mut access.options, "security.protocol", "SASL_SSL");
            set(&mut access.options, "sasl.mechanism", "OAUTHBEARER");
            aws.msk_iam_token(SystemTime::now())?;
            access.token = Some(Arc::new(move || {
                aws.msk_iam_token(SystemTime::now())
                    .map_err(|e| e.to_string())
            }));
        }
        KafkaAuth::ScramSha512 | KafkaAuth::ScramSha256 => {
            let Some(arn) = env.get(SCRAM_SECRET).filter(|v| !v.is_empty()) else {
                return Err(AwsError::Missing(SCRAM_SECRET));
            };
            let scram: Scram =
                serde_json::from_str(&aws.secret(arn).await?).map_err(|e| AwsError::Call {
                    service: "secretsmanager",
                    message: format!(
                        "{arn}: not a SASL/SCRAM secret ({{\"username\",\"password\"}}): {e}"
                    ),
                })?;
            let mechanism = if auth == KafkaAuth::ScramSha512 {
                "SCRAM-SHA-512"
            } else {
                "SCRAM-SHA-256"
            };
            set(&mut access.options, "security.protocol", "SASL_SSL");
            set(&mut access.options, "sasl.mechanism", mechanism);
            set(&mut access.options, "sasl.username", &scram.username);
            set(&mut access.options, "sasl.password", &scram.password);
        }
    }
    Ok(access)
}
