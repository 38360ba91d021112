//! The `bootstrap` binary of the Lambda (provided.al2023): reads the configuration,
//! builds the components, the HTTP client and the Snowflake session once, then serves
//! invocations until the container is retired.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lambda_events::event::kafka::KafkaEvent;
use floe_lambda::access::{self, Access};
use floe_lambda::config::{LambdaConfig, PACKAGED_COMPONENTS, PACKAGED_CONFIG};
use floe_lambda::handler::Floe;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, dir] = args.as_slice()
        && cmd == "precompile"
    {
        // Packaging (`make lambda`): the configured components, compiled for this
        // architecture, into the package's components directory.
        let config = config()?;
        floe_batch::components::precompile(&config.components, std::path::Path::new(dir))?;
        return Ok(());
    }
    let container = Arc::new(tokio::sync::Mutex::new(Container::start().await));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KafkaEvent>| {
        let container = container.clone();
        async move {
            let mut container = container.lock().await;
            let result = match container.floe().await {
                Ok(floe) => floe
                    .handle(&event.payload, event.context.deadline)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            result.map_err(|e| {
                tracing::error!(error = %e, request_id = %event.context.request_id, "invocation failed");
                lambda_runtime::Error::from(e)
            })
        }
    }))
    .await
}

/// The container's state. Built before the first invocation; when that fails (the
/// warehouse unreachable at a cold start, a bad setting), every invocation tries
/// again and, failing, answers with a function error that says why.
struct Container {
    config: Result<LambdaConfig, String>,
    floe: Option<Floe>,
}

/// The configuration with its secrets resolved, and the DLQ producer's access.
async fn resolved(mut config: LambdaConfig) -> Result<(LambdaConfig, Access), String> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let access = access::resolve(&mut config, &env)
        .await
        .map_err(|e| format!("start: {e}"))?;
    Ok((config, access))
}

impl Container {
    async fn start() -> Container {
        let mut container = Container {
            config: config().map_err(|e| format!("configuration: {e:#}")),
            floe: None,
        };
        if let Err(e) = container.floe().await {
            tracing::error!(error = %e, "floe-lambda cannot start; every invocation will try again");
        }
        container
    }

    async fn floe(&mut self) -> Result<&mut Floe, String> {
        if self.floe.is_none() {
            let (config, access) = resolved(self.config.clone()?).await?;
            let floe = Floe::init(config, access, floe_batch::Stats::new())
                .await
                .map_err(|e| format!("start: {e}"))?;
            self.floe = Some(floe);
        }
        Ok(self.floe.as_mut().expect("set above"))
    }
}

fn config() -> anyhow::Result<LambdaConfig> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let file = match env.get("FLOE_CONFIG") {
        Some(path) => Some(PathBuf::from(path)),
        None => Some(PathBuf::from(PACKAGED_CONFIG)).filter(|p| p.exists()),
    };
    let mut config = LambdaConfig::load(file.as_deref(), env)?;
    if config.components.precompiled_dir.is_none() && Path::new(PACKAGED_COMPONENTS).is_dir() {
        config.components.precompiled_dir = Some(PathBuf::from(PACKAGED_COMPONENTS));
    }
    Ok(config)
}
/// Logs to stdout for CloudWatch: JSON when the function's log format is JSON, else
/// plain lines without colours or timestamps (CloudWatch stamps them). `RUST_LOG`
/// filters (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.without_time().init();
    }
}
