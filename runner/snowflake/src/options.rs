//! What [`Client::connect`](crate::Client::connect) needs, and bind values.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A secret string (password, private key) that never prints: `Debug` and `Display` show `***`.
///
/// Deserializes from a plain string.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call only where the value is sent, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Serialises as `"***"`: printing a configuration never reveals the value.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How the client authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    /// User and password (`LOGIN_NAME` + `PASSWORD`).
    Password(Secret),
    /// Key-pair authentication: a JWT signed with this RSA private key (`SNOWFLAKE_JWT`).
    ///
    /// The PEM is unencrypted PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    /// Encrypted keys (`BEGIN ENCRYPTED PRIVATE KEY`) are refused with a clear error: decrypt
    /// them first (`openssl pkcs8 -in key.p8 -nocrypt -out key.pem`).
    KeyPair {
        /// The private key, PEM text.
        private_key_pem: Secret,
    },
}

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Base URL of the account, e.g. `https://myorg-myaccount.snowflakecomputing.com`, or the
    /// emulator's `http://127.0.0.1:17080`. Empty means `https://{account}.snowflakecomputing.com`.
    pub account_url: String,
    /// Account identifier, e.g. `myorg-myaccount` or `xy12345.us-east-1`. Sent as
    /// `ACCOUNT_NAME` (the part before the first `.`) and used in the key-pair JWT. Empty means
    /// the first label of a `*.snowflakecomputing.com` `account_url`.
    pub account: String,
    /// Login name.
    pub user: String,
    /// Credentials.
    pub auth: Auth,
    /// Default database of the session.
    pub database: Option<String>,
    /// Default schema of the session.
    pub schema: Option<String>,
    /// Warehouse the session runs on.
    pub warehouse: Option<String>,
    /// Role the session uses.
    pub role: Option<String>,
    /// Time limit of each HTTP request. A query-request may legitimately take up to ~45 s before
    /// Snowflake answers "still running", so keep this above 60 s for DML on real Snowflake.
    pub request_timeout: Duration,
    /// Session parameters sent at login (`SESSION_PARAMETERS`), e.g. `QUERY_TAG`,
    /// `STATEMENT_TIMEOUT_IN_SECONDS`. `STATEMENT_TIMEOUT_IN_SECONDS` also bounds how long the
    /// client polls a running query (default bound: one hour).
    pub session_parameters: serde_json::Map<String, serde_json::Value>,
}

/// A positional bind value (`?` or `:1` in the SQL text).
///
/// `data_type` is a Snowflake binding type: `TEXT`, `FIXED`, `REAL`, `BOOLEAN`, `DATE`, `TIME`,
/// `TIMESTAMP_NTZ`, `TIMESTAMP_LTZ`, `TIMESTAMP_TZ`, `BINARY`. `None` binds SQL NULL.
#[derive(Clone, PartialEq, Eq)]
pub struct Bind {
    /// Snowflake binding type.
    pub data_type: String,
    /// The value as text, `None` for NULL.
    pub value: Option<String>,
}

/// A [`Bind`] borrowed: what a statement's request is built from, so a caller holding
/// its values elsewhere (a MERGE plan's row array, several MiB) need not copy them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindRef<'a> {
    /// Snowflake binding type.
    pub data_type: &'a str,
    /// The value as text, `None` for NULL.
    pub value: Option<&'a str>,
}

impl Bind {
    /// This bind, borrowed.
    pub fn borrowed(&self) -> BindRef<'_> {
        BindRef {
            data_type: &self.data_type,
            value: self.value.as_deref(),
        }
    }

    /// A `TEXT` bind; Snowflake converts it to the column's type.
    pub fn text(value: impl Into<String>) -> Self {
        Bind {
            data_type: "TEXT".to_owned(),
            value: Some(value.into()),
        }
    }

    /// A bind of the given Snowflake binding type.
    pub fn typed(data_type: impl Into<String>, value: Option<String>) -> Self {
        Bind {
            data_type: data_type.into(),
            value,
        }
    }

    /// A `TEXT` NULL.
    pub fn null() -> Self {
        Bind {
            data_type: "TEXT".to_owned(),
            value: None,
        }
    }
}

/// Bind values are data: they never print.
impl fmt::Debug for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bind")
            .field("data_type", &self.data_type)
            .field("value", &self.value.as_ref().map(|_| "***"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_binds_never_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.expose(), "hunter2");
        let opts = ConnectOptions {
            account_url: String::new(),
            account: "a".into(),
            user: "u".into(),
            auth: Auth::Password(secret),
            database: None,
            schema: None,
            warehouse: None,
            role: None,
            request_timeout: Duration::from_secs(1),
            session_parameters: Default::default(),
        };
        assert!(!format!("{opts:?}").contains("hunter2"));
        let bind = Bind::text("card 4111");
        assert!(!format!("{bind:?}").contains("4111"));
        assert_eq!(
            format!("{:?}", Bind::null()),
            r#"Bind { data_type: "TEXT", value: None }"#
        );
    }

    #[test]
    fn secret_deserializes_from_a_string() {
        let secret: Secret = serde_json::from_str(r#""pw""#).unwrap();
        assert_eq!(secret.expose(), "pw");
    }
}
