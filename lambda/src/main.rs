//! The `bootstrap` binary of the Lambda (provided.al2023): reads the configuration,
//! builds the components, the HTTP client and the Snowflake session once, then serves
//! invocations until the container is retired.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lambda_events::event::kafka::KafkaEvent;
use floe_batch::export::{Otlp, Traces};
use floe_lambda::access::{self, Access};
use floe_lambda::config::{LambdaConfig, PACKAGED_COMPONENTS, PACKAGED_CONFIG};
use floe_lambda::handler::Floe;
use lambda_runtime::{LambdaEvent, service_fn};
use opentelemetry_sdk::metrics::SdkMeterProvider;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, dir] = args.as_slice()
        && cmd == "precompile"
    {
        // Packaging (`make lambda`): the configured components, compiled for this
        // architecture, into the package's components directory.
        init_tracing(&Traces::install(&Otlp::default())?);
        let config = config()?;
        floe_batch::components::precompile(&config.components, std::path::Path::new(dir))?;
        return Ok(());
    }
    // OTLP export when the `OTEL_*` environment asks for it (e.g. a collector extension
    // on localhost:4318): flushed before each invocation returns, as the sandbox is
    // frozen between invocations.
    let otlp = Otlp::from_env()?;
    let traces = Arc::new(Traces::install(&otlp)?);
    init_tracing(&traces);
    let meters = match otlp.metric_reader()? {
        Some(reader) => {
            let provider = SdkMeterProvider::builder()
                .with_resource(floe_batch::export::resource())
                .with_reader(reader)
                .build();
            // Before the first `Stats` is made: its instruments come from it.
            opentelemetry::global::set_meter_provider(provider.clone());
            Some(provider)
        }
        None => None,
    };
    let container = Arc::new(tokio::sync::Mutex::new(Container::start().await));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KafkaEvent>| {
        let container = container.clone();
        let traces = traces.clone();
        let meters = meters.clone();
        async move {
            let answer = invoke(&container, event).await;
            traces.flush().await;
            if let Some(meters) = &meters {
                floe_batch::export::flush_metrics(meters).await;
            }
            answer
        }
    }))
    .await
}

/// One invocation, on the container's pipeline.
async fn invoke(
    container: &tokio::sync::Mutex<Container>,
    event: LambdaEvent<KafkaEvent>,
) -> Result<floe_lambda::response::BatchResponse, lambda_runtime::Error> {
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
/// filters (default `info`). floe's trace spans go to `traces` (when exported), not
/// to the logs.
fn init_tracing(traces: &Traces) {
    use tracing_subscriber::filter::{FilterExt as _, filter_fn};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _, fmt};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(floe_batch::export::DEFAULT_LOG_FILTER));
    let logged = filter.and(filter_fn(floe_batch::export::logged));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let logs = fmt::layer().with_ansi(false).with_target(false);
    let logs = if json {
        logs.json().boxed()
    } else {
        logs.without_time().boxed()
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(logged))
        .with(traces.layer())
        .init();
}
