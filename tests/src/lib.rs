//! What the integration tests (tests/all) and the benchmark binaries (src/bin) share.

pub mod http;
pub mod otlp;
pub mod runtime_api;

/// A session on the Snowflake emulator of the dev stack at `account_url`, as the stack's
/// user (`floe` / `floe`), with no default database.
pub async fn emulator(account_url: &str) -> Result<floe_snowflake::Client, floe_snowflake::Error> {
    floe_snowflake::Client::connect(floe_snowflake::ConnectOptions {
        account_url: account_url.to_string(),
        account: "floe".into(),
        user: "floe".into(),
        auth: floe_snowflake::Auth::Password("floe".to_string().into()),
        database: None,
        schema: None,
        warehouse: None,
        role: None,
        request_timeout: std::time::Duration::from_secs(60),
        session_parameters: Default::default(),
    })
    .await
}
