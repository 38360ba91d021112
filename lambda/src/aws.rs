//! The few AWS calls the Lambda makes itself, over the HTTP client floe already has
//! (reqwest) and signed with AWS Signature Version 4 (`aws-sigv4`): Secrets Manager's
//! `GetSecretValue` (the Snowflake private key, the SCRAM credentials) and the token of
//! Amazon MSK's IAM authentication. Credentials and region come from the function's
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`); endpoints from `AWS_ENDPOINT_URL_<SERVICE>` / `AWS_ENDPOINT_URL` when
//! set (as the AWS SDKs read them), else the service's regional endpoint.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine as _;

/// Errors of an AWS call; never retried by floe (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("AWS: {0} is not set in the environment")]
    Missing(&'static str),
    #[error("AWS {service}: {message}")]
    Call {
        service: &'static str,
        message: String,
    },
}

/// Credentials, region and endpoints of the function.
#[derive(Clone)]
pub struct Aws {
    http: reqwest::Client,
    region: String,
    identity: Identity,
    env: HashMap<String, String>,
}

impl std::fmt::Debug for Aws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aws")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Aws {
    /// From the Lambda environment (`env`: the process's variables).
    pub fn from_env(env: &HashMap<String, String>) -> Result<Aws, AwsError> {
        let get = |k: &'static str| {
            env.get(k)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or(AwsError::Missing(k))
        };
        let region = get("AWS_REGION").or_else(|_| get("AWS_DEFAULT_REGION"))?;
        let credentials = Credentials::new(
            get("AWS_ACCESS_KEY_ID")?,
            get("AWS_SECRET_ACCESS_KEY")?,
            env.get("AWS_SESSION_TOKEN")
                .filter(|t| !t.is_empty())
                .cloned(),
            None,
            "environment",
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AwsError::Call {
                service: "http",
                message: e.to_string(),
            })?;
        Ok(Aws {
            http,
            region,
            identity: credentials.into(),
            env: env.clone(),
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The endpoint of `service` (`secretsmanager`, ...): `AWS_ENDPOINT_URL_<ID>`, then
    /// `AWS_ENDPOINT_URL`, then `https://<service>.<region>.amazonaws.com`.
    pub(crate) fn endpoint(&self, service: &str, id: &str) -> String {
        self.endpoint_override(id)
            .unwrap_or_else(|| format!("https://{service}.{}.amazonaws.com", self.region))
    }

    /// The endpoint set for the service `id` in the environment, if any (an emulator's).
    pub(crate) fn endpoint_override(&self, id: &str) -> Option<String> {
        self.env
            .get(&format!("AWS_ENDPOINT_URL_{id}"))
            .or_else(|| self.env.get("AWS_ENDPOINT_URL"))
            .filter(|u| !u.is_empty())
            .map(|u| u.trim_end_matches('/').to_string())
    }

    fn params<'a>(
        &'a self,
        service: &'a str,
        settings: SigningSettings,
        time: SystemTime,
    ) -> Result<aws_sigv4::http_request::SigningParams<'a>, String> {
        Ok(v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(service)
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into())
    }

    /// A request signed for `service`, answered with its status and body.
    pub(crate) async fn signed(
        &self,
        service: &'static str,
        request: Signed<'_>,
    ) -> Result<(reqwest::StatusCode, String), AwsError> {
        let err = |message: String| AwsError::Call { service, message };
        let signable = SignableRequest::new(
            request.method,
            request.url,
            request.headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Bytes(&request.body),
        )
        .map_err(|e| err(e.to_string()))?;
        let params = self
            .params(service, request.settings, SystemTime::now())
            .map_err(err)?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| err(e.to_string()))?
            .into_parts();
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|e| err(e.to_string()))?;
        let mut http = self.http.request(method, request.url);
        for (k, v) in request.headers.iter().map(|(k, v)| (*k, v.as_str())) {
            http = http.header(k, v);
        }
        for (k, v) in instructions.headers() {
            http = http.header(k, v);
        }
        let response = http
            .body(request.body)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| err(e.to_string()))?;
        Ok((status, text))
    }

    /// A signed JSON-protocol call (`X-Amz-Target`), answered with JSON.
    pub(crate) async fn json_call(
        &self,
        service: &'static str,
        url: &str,
        target: &str,
        content_type: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, AwsError> {
        let err = |message: String| AwsError::Call { service, message };
        let body = serde_json::to_vec(body).map_err(|e| err(e.to_string()))?;
        let request = Signed {
            method: "POST",
            url,
            headers: vec![
                ("content-type", content_type.to_owned()),
                ("x-amz-target", target.to_owned()),
            ],
            body,
            settings: SigningSettings::default(),
        };
        let (status, text) = self.signed(service, request).await?;
        if !status.is_success() {
            return Err(err(format!(
                "{target}: HTTP {status}: {}",
                first_line(&text)
            )));
        }
        serde_json::from_str(&text).map_err(|e| err(format!("{target}: {e}")))
    }

    /// The `SecretString` of a secret (Secrets Manager `GetSecretValue`).
    pub async fn secret(&self, secret_id: &str) -> Result<String, AwsError> {
        let url = format!("{}/", self.endpoint("secretsmanager", "SECRETS_MANAGER"));
        let answer = self
            .json_call(
                "secretsmanager",
                &url,
                "secretsmanager.GetSecretValue",
                "application/x-amz-json-1.1",
                &serde_json::json!({ "SecretId": secret_id }),
            )
            .await?;
        answer["SecretString"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| AwsError::Call {
                service: "secretsmanager",
                message: format!(
                    "{secret_id} has no SecretString (binary secrets are not supported)"
                ),
            })
    }

    /// An Amazon MSK IAM authentication token (SASL/OAUTHBEARER), as the
    /// aws-msk-iam-sasl-signer libraries make it: the URL of a `kafka-cluster:Connect`
    /// request presigned for 15 minutes, base64url without padding; and when it expires
    /// (ms since the epoch).
    pub fn msk_iam_token(&self, now: SystemTime) -> Result<(String, i64), AwsError> {
        let err = |message: String| AwsError::Call {
            service: "kafka-cluster",
            message,
        };
        let expires = Duration::from_secs(900);
        let url = format!(
            "https://kafka.{}.amazonaws.com/?Action=kafka-cluster%3AConnect",
            self.region
        );
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires);
        let params = self.params("kafka-cluster", settings, now).map_err(err)?;
        let signable = SignableRequest::new(
            "GET",
            &url,
            std::iter::empty(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| err(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| err(e.to_string()))?
            .into_parts();
        let mut signed = url;
        for (k, v) in instructions.params() {
            signed.push('&');
            signed.push_str(k);
            signed.push('=');
            signed.push_str(&query_escape(v));
        }
        signed.push_str("&User-Agent=floe-lambda");
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signed.as_bytes());
        let issued = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        Ok((token, (issued + expires).as_millis() as i64))
    }
}

/// One request to sign and send.
pub(crate) struct Signed<'a> {
    pub method: &'static str,
    pub url: &'a str,
    /// Headers sent and signed (lowercase names).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub settings: SigningSettings,
}

/// RFC 3986 query escaping (what SigV4 signs).
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(crate) fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or_default();
    &line[..line.len().min(300)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn aws() -> Aws {
        Aws::from_env(&env(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            ),
            ("AWS_SESSION_TOKEN", "session/token+x"),
        ]))
        .unwrap()
    }

    #[test]
    fn missing_credentials_are_named() {
        let e = Aws::from_env(&env(&[("AWS_REGION", "eu-west-1")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "AWS: AWS_ACCESS_KEY_ID is not set in the environment"
        );
    }

    #[test]
    fn endpoints_follow_the_sdk_variables() {
        let a = aws();
        assert_eq!(
            a.endpoint("secretsmanager", "SECRETS_MANAGER"),
            "https://secretsmanager.eu-west-1.amazonaws.com"
        );
        let mut e = a.env.clone();
        e.insert("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:5000/".into());
        let b = Aws {
            env: e.clone(),
            ..a.clone()
        };
        assert_eq!(
            b.endpoint("secretsmanager", "SECRETS_MANAGER"),
            "http://127.0.0.1:5000"
        );
        e.insert(
            "AWS_ENDPOINT_URL_SECRETS_MANAGER".into(),
            "http://sm:1".into(),
        );
        let c = Aws { env: e, ..a };
        assert_eq!(
            c.endpoint("secretsmanager", "SECRETS_MANAGER"),
            "http://sm:1"
        );
    }

    #[test]
    fn the_msk_iam_token_is_a_presigned_connect_url() {
        let now = UNIX_EPOCH + Duration::from_secs(1_764_500_000);
        let (token, expires_ms) = aws().msk_iam_token(now).unwrap();
        assert_eq!(expires_ms, (1_764_500_000 + 900) * 1000);
        assert!(
            !token.contains('=') && !token.contains('+') && !token.contains('/'),
            "base64url, no padding"
        );
        let url = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&token)
                .unwrap(),
        )
        .unwrap();
        assert!(
            url.starts_with(
                "https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect&"
            ),
            "{url}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F20251130%2Feu-west-1%2Fkafka-cluster%2Faws4_request",
            "X-Amz-Date=20251130T105320Z",
            "X-Amz-Expires=900",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Security-Token=session%2Ftoken%2Bx",
            "X-Amz-Signature=",
            "User-Agent=floe-lambda",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        // Signed: another time gives another signature.
        let (other, _) = aws().msk_iam_token(now + Duration::from_secs(1)).unwrap();
        assert_ne!(token, other);
    }
}
