//! The Schema Registry client: `GET /schemas/ids/{id}` of a Confluent-compatible REST
//! API, with basic auth, a private CA and a timeout.
//!
//! What an answer means for the messages that carry the id:
//! - 200 with an Avro schema: decoded with it;
//! - 404 (Confluent's 40403), or a schema that is not Avro: those messages are dead
//!   letters with the reason ([`Fetched::Refused`]);
//! - no answer, a timeout, 5xx, 408 or 429: transient ([`RegistryError::Unavailable`]);
//!   the batch waits behind the registry's circuit breaker and nothing is dead-lettered;
//! - 401 or 403, or any other answer, or a certificate floe does not trust: floe's
//!   settings are wrong ([`RegistryError::Refused`], [`RegistryError::Tls`]), which
//!   stops the run rather than dead-letter a stream whose schemas exist.

use std::time::Duration;

use serde::Deserialize;

use crate::config::SchemaRegistryConfig;

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Down, slow or overloaded: retried behind the registry's circuit breaker.
    #[error("schema registry {url} unavailable: {message}")]
    Unavailable { url: String, message: String },
    /// The registry's certificate is not trusted (`ca_file`, its name): not retried.
    #[error(
        "schema registry {url}: TLS: {message} (set source.schema_registry.ca_file to the CA that signed it)"
    )]
    Tls { url: String, message: String },
    /// The registry refused the request itself (credentials, a wrong URL): not retried.
    #[error("schema registry {url} refused floe's request ({status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// `source.schema_registry` cannot be used as it is.
    #[error("source.schema_registry: {0}")]
    Config(String),
}

impl RegistryError {
    /// Whether asking again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// A schema id's outcome.
#[derive(Debug, PartialEq)]
pub enum Fetched {
    /// The schema's JSON text (an Avro schema).
    Avro(String),
    /// Why messages with this id cannot be read.
    Refused(String),
}

/// An HTTP client for one registry.
pub struct Client {
    http: reqwest::Client,
    base: String,
    username: Option<String>,
    password: Option<crate::config::Secret>,
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

impl Client {
    /// A client of the registry at `url` with `cfg`'s other settings.
    pub fn new(url: &str, cfg: &SchemaRegistryConfig) -> Result<Client, RegistryError> {
        let base = url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(RegistryError::Config(format!(
                "url {url:?} is not an http:// or https:// URL"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms.max(1)))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.clamp(1, 5_000)))
            .user_agent(concat!("floe/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| RegistryError::Config(format!("ca_file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| RegistryError::Config(format!("ca_file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(RegistryError::Config(format!(
                    "ca_file {}: no PEM certificate in it",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if cfg.password.is_some() && cfg.username.is_none() {
            return Err(RegistryError::Config(
                "password is set without a username".into(),
            ));
        }
        let http = builder
            .build()
            .map_err(|e| RegistryError::Config(e.to_string()))?;
        Ok(Client {
            http,
            base: base.to_owned(),
            username: cfg.username.clone(),
            password: cfg.password.clone(),
        })
    }

    /// The registry's base URL (no credentials in it).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// `GET /schemas/ids/{id}`.
    pub async fn schema(&self, id: u32) -> Result<Fetched, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let mut request = self.http.get(&url).header(
            reqwest::header::ACCEPT,
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if let Some(user) = &self.username {
            request = request.basic_auth(user, self.password.as_ref().map(|p| p.expose()));
        }
        let unavailable = |message: String| RegistryError::Unavailable {
            url: self.base.clone(),
            message,
        };
        let response = request.send().await.map_err(|e| {
            let message = error_chain(&e);
            if message.contains("certificate") {
                RegistryError::Tls {
                    url: self.base.clone(),
                    message,
                }
            } else {
                unavailable(message)
            }
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(format!("reading the answer: {}", error_chain(&e))))?;
        let said = || {
            let e: Option<ErrorAnswer> = serde_json::from_slice(&body).ok();
            match e {
                Some(ErrorAnswer {
                    error_code,
                    message: Some(m),
                }) => match error_code {
                    Some(code) => format!("{m} (error code {code})"),
                    None => m,
                },
                _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            }
        };
        match status.as_u16() {
            200 => {
                let answer: SchemaAnswer = serde_json::from_slice(&body)
                    .map_err(|e| unavailable(format!("an answer floe cannot read: {e}")))?;
                match answer.schema_type.as_deref() {
                    None | Some("AVRO") => Ok(Fetched::Avro(answer.schema)),
                    Some(other) => Ok(Fetched::Refused(format!(
                        "schema id {id} is a {other} schema: floe reads Avro (and JSON without \
                         the registry)"
                    ))),
                }
            }
            404 => Ok(Fetched::Refused(format!(
                "schema id {id} is not in the schema registry at {}: {}",
                self.base,
                said()
            ))),
            408 | 429 | 500..=599 => Err(unavailable(format!("HTTP {status}: {}", said()))),
            code => Err(RegistryError::Refused {
                url: self.base.clone(),
                status: code,
                message: said(),
            }),
        }
    }
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client(cfg: &SchemaRegistryConfig) -> Result<Client, RegistryError> {
        Client::new(cfg.url.as_deref().unwrap_or_default(), cfg)
    }

    /// A registry that answers each `GET /schemas/ids/{id}` from a fixed table and
    /// remembers the Authorization headers it saw (a unit test of this client only;
    /// the live tests run against the dev stack's registry).
    async fn registry() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let auth = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let auth = auth.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    if let Some(line) = head
                        .lines()
                        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                    {
                        auth.lock().unwrap().push(line[14..].trim().to_owned());
                    }
                    let (status, body) = match path.as_str() {
                        "/prefix/schemas/ids/1" => ("200 OK", r#"{"schema":"\"string\""}"#),
                        "/prefix/schemas/ids/2" => (
                            "404 Not Found",
                            r#"{"error_code":40403,"message":"Schema not found"}"#,
                        ),
                        "/prefix/schemas/ids/3" => (
                            "200 OK",
                            r#"{"schema":"syntax = \"proto3\";","schemaType":"PROTOBUF"}"#,
                        ),
                        "/prefix/schemas/ids/4" => ("503 Service Unavailable", "busy"),
                        _ => (
                            "401 Unauthorized",
                            r#"{"error_code":401,"message":"Unauthorized"}"#,
                        ),
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(answer.as_bytes()).await;
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn answers_are_schemas_dead_letter_reasons_or_errors_by_kind() {
        let (url, seen) = registry().await;
        let mut cfg = SchemaRegistryConfig::at(format!("{url}/prefix/"));
        cfg.username = Some("key".into());
        cfg.password = Some("secret".into());
        let c = client(&cfg).unwrap();
        assert_eq!(
            c.schema(1).await.unwrap(),
            Fetched::Avro("\"string\"".into())
        );
        // base64("key:secret")
        assert_eq!(seen.lock().unwrap()[0], "Basic a2V5OnNlY3JldA==");
        match c.schema(2).await.unwrap() {
            Fetched::Refused(r) => {
                assert!(
                    r.contains("schema id 2 is not in the schema registry"),
                    "{r}"
                );
                assert!(r.contains("Schema not found (error code 40403)"), "{r}");
            }
            other => panic!("{other:?}"),
        }
        match c.schema(3).await.unwrap() {
            Fetched::Refused(r) => assert!(r.contains("PROTOBUF"), "{r}"),
            other => panic!("{other:?}"),
        }
        let e = c.schema(4).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        let e = c.schema(5).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("(401): Unauthorized"), "{e}");
        // Nobody listening: transient.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let c = client(&SchemaRegistryConfig::at(format!("http://{addr}"))).unwrap();
        let e = c.schema(1).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains("unavailable"), "{e}");
    }

    #[test]
    fn settings_that_cannot_work_are_refused_at_start() {
        let e = client(&SchemaRegistryConfig::at("registry:8081"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("not an http"), "{e}");
        let mut cfg = SchemaRegistryConfig::at("https://r");
        cfg.password = Some("p".into());
        assert!(
            client(&cfg)
                .err()
                .unwrap()
                .to_string()
                .contains("without a username")
        );
        let mut cfg = SchemaRegistryConfig::at("https://r");
        cfg.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(client(&cfg).err().unwrap().to_string().contains("ca_file"));
    }
}
