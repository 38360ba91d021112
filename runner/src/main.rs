//! The `floe` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use floe::config::{Config, SinkKind, SourceKind};
use floe::{RunOptions, Stats};

#[derive(Parser)]
#[command(
    name = "floe",
    version,
    about = "Stream PostgreSQL CDC (Debezium on Kafka) into Snowflake"
)]
struct Cli {
    /// Config file (TOML). Defaults to ./floe.toml when it exists; embedded defaults
    /// otherwise. `FLOE__SECTION__KEY` environment variables override both.
    #[arg(long, short, global = true, env = "FLOE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FLOE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum SinkArg {
    Snowflake,
    None,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline.
    Run {
        /// Override the sink: `none` runs everything but the warehouse.
        #[arg(long, value_enum)]
        sink: Option<SinkArg>,
        /// Replay these fixture-format JSON-lines files instead of consuming Kafka.
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<PathBuf>,
        /// Stop after no event arrived for this many seconds (counted while the source
        /// owns partitions, so a slow consumer-group join does not end the run).
        #[arg(long, value_name = "SECS")]
        exit_when_idle: Option<f64>,
        /// Write the statistics JSON here after every batch and at exit.
        #[arg(long, value_name = "PATH")]
        metrics_json: Option<PathBuf>,
    },
    /// Print the SQL `floe run` would execute for these events (fixture-format JSON
    /// lines), batch by batch, without connecting to a warehouse.
    Plan {
        /// Fixture-format JSON-lines files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print bind values in full (default: their type and size).
        #[arg(long)]
        binds: bool,
    },
    /// Load a validator or row transform component with the configured sandbox limits
    /// and run it over sample events: prints every verdict (for a row transform, each
    /// row as it would load), timings and limit usage; exits 1 when a call trapped,
    /// failed or broke the contract (e.g. the wrong number of verdicts).
    Check {
        /// The component (.wasm, world floe:cdc/validator or floe:cdc/row-transform).
        component: PathBuf,
        /// Fixture-format JSON-lines files of sample events.
        #[arg(long = "events", value_name = "FILE", required = true)]
        events: Vec<PathBuf>,
        /// Events per call (default: batch.max_rows).
        #[arg(long, value_name = "N")]
        batch_rows: Option<usize>,
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Grant a WASI capability (clocks, random, stdio, environment, filesystem), in
        /// addition to what `components.grants` grants this path; repeat or comma-separate.
        #[arg(long = "wasi", value_name = "CAPABILITY", value_delimiter = ',')]
        wasi: Vec<floe_host::Capability>,
    },
    /// Print the effective configuration (secrets masked) and exit.
    Config,
    /// Run one SQL statement against the configured Snowflake and print the result.
    Query {
        /// The statement.
        sql: String,
    },
    /// Work with the dead letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Re-submit dead letters to the topics they were read from (after a fix), and
    /// print what was replayed as JSON.
    Replay {
        /// Only dead letters of this category (repeatable): parse, validation,
        /// transform, wasm-trap, schema, warehouse, kafka.
        #[arg(long = "category", value_name = "CATEGORY")]
        categories: Vec<String>,
        /// DLQ topics to read (repeatable; default: every topic `dlq.topic` names).
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        /// Stop after no dead letter arrived for this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        idle_secs: f64,
        /// Count what would be replayed; produce nothing.
        #[arg(long)]
        dry_run: bool,
        /// Consumer group that commits what it replayed, so the next replay with it
        /// continues from there (default: a fresh group, reading from the beginning).
        #[arg(long)]
        group: Option<String>,
        /// Also re-submit tombstones and changes without a source LSN: the MERGE
        /// applies those whatever the target row's LSN, so a late one can undo a
        /// newer change of its key.
        #[arg(long)]
        allow_without_lsn: bool,
    },
}

/// Logs to stderr (filtered by `FLOE_LOG` or `RUST_LOG`, `info` by default) and, when
/// `traces` exports, floe's trace spans to the OTLP exporter (whatever the log level).
fn init_tracing(
    format: LogFormat,
    traces: &floe::telemetry::Traces,
    status: Option<&floe::telemetry::StatusLine>,
) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::{FilterExt as _, filter_fn};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, fmt};
    let filter = EnvFilter::try_from_env("FLOE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(floe_batch::export::DEFAULT_LOG_FILTER));
    let logged = filter.and(filter_fn(floe::telemetry::logged));
    let logs = match (format, status) {
        (LogFormat::Text, Some(status)) => fmt::layer().with_writer(status.writer()).boxed(),
        (LogFormat::Text, None) => fmt::layer().with_writer(std::io::stderr).boxed(),
        (LogFormat::Json, _) => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(logged))
        .with(traces.layer())
        .init();
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = path.or_else(floe::default_config_path);
    Config::load(path.as_deref()).context("loading configuration")
}

/// Allocations of 128 KiB and more (a batch's message list, the components' batches and
/// answers, request bodies) are mapped on their own and given back to the system when
/// freed. glibc raises that threshold by itself up to 32 MiB once such a block is
/// freed; batches of that size then stay in the heap between batches, and with one batch
/// loading while the next is prepared the peak resident memory was 12 MiB higher
/// (docs/benchmarks.md). `MALLOC_MMAP_THRESHOLD_` in the environment still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn map_large_allocations() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called before any
        // other thread exists, and a refusal (return 0) leaves glibc's default.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn map_large_allocations() {}

fn main() -> anyhow::Result<()> {
    map_large_allocations();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Spans go over OTLP for `floe run` only; the other commands just log.
    let otlp = match &cli.command {
        Command::Run { .. } => floe::telemetry::Otlp::from_env()?,
        _ => floe::telemetry::Otlp::default(),
    };
    let traces = floe::telemetry::Traces::install(&otlp)?;
    // The live status line: `floe run` on a terminal, with text logs.
    let status = match &cli.command {
        Command::Run { .. } => {
            floe::telemetry::StatusLine::stderr(matches!(cli.log_format, LogFormat::Json))
        }
        _ => None,
    };
    init_tracing(cli.log_format, &traces, status.as_ref());
    let ran = command(cli, &otlp, status).await;
    traces.shutdown().await;
    ran
}

async fn command(
    cli: Cli,
    otlp: &floe::telemetry::Otlp,
    status: Option<floe::telemetry::StatusLine>,
) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            sink,
            files,
            exit_when_idle,
            metrics_json,
        } => {
            let mut config = load_config(cli.config)?;
            if let Some(s) = sink {
                config.sink.kind = match s {
                    SinkArg::Snowflake => SinkKind::Snowflake,
                    SinkArg::None => SinkKind::None,
                };
            }
            if !files.is_empty() {
                config.source.kind = SourceKind::File;
                config.source.file.paths = files;
            }
            if metrics_json.is_some() {
                config.metrics.json_path = metrics_json;
            }
            // SIGHUP: reload the components between batches.
            let reload = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = reload.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut hup) = signal(SignalKind::hangup()) else {
                    return;
                };
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: components will be reloaded before the next batch");
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let options = RunOptions {
                exit_when_idle: exit_when_idle.map(Duration::from_secs_f64),
                load_attempts: None,
                reload: Some(reload),
            };
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!(
                    "signal received: finishing the current batch (send again to exit at once)"
                );
                let _ = tx.send(true);
                wait_for_signal().await;
                tracing::warn!(
                    "second signal: exiting now; uncommitted events will be consumed again on the next start"
                );
                std::process::exit(130);
            });
            // The meter provider first: the run's instruments come from it.
            let telemetry = floe::telemetry::Telemetry::install(&config.metrics, otlp)?;
            let stats = Stats::new();
            let endpoints = match config.metrics.listen {
                Some(addr) => Some(
                    floe::telemetry::Endpoints::serve(
                        addr,
                        stats.clone(),
                        telemetry.registry().cloned(),
                    )
                    .await?,
                ),
                None => None,
            };
            let status =
                status.map(|s| (s.clone(), s.spawn(stats.clone(), Duration::from_secs(1))));
            let ran = floe::run(&config, &options, rx, stats).await;
            if let Some((line, task)) = status {
                task.abort();
                let _ = task.await;
                line.clear();
            }
            if let Some(endpoints) = endpoints {
                endpoints.stop();
            }
            telemetry.shutdown().await;
            println!("{}", serde_json::to_string_pretty(&ran?)?);
            Ok(())
        }
        Command::Plan { files, binds } => {
            let config = load_config(cli.config)?;
            let (text, stats) = floe::plan(&config, &files, binds).await?;
            print!("{text}");
            eprintln!(
                "plan: {} events, {} rows after dedup, {} statements, {} rejected, {} failed",
                stats.events_consumed,
                stats.rows_transformed,
                stats.statements,
                stats.events_rejected,
                stats.events_failed
            );
            Ok(())
        }
        Command::Check {
            component,
            events,
            batch_rows,
            json,
            wasi,
        } => {
            let config = load_config(cli.config)?;
            let rows = batch_rows.unwrap_or(config.batch.max_rows);
            let granted = floe_host::Grants::new(wasi);
            let schemas = match &config.source.schema_registry {
                Some(registry) => match floe::check::resolve_schemas(&events, registry).await {
                    Ok(resolved) => Some(resolved),
                    Err(e) => {
                        eprintln!("floe check: {e}");
                        std::process::exit(2);
                    }
                },
                None => None,
            };
            let checked = floe::check::check(
                &config.components,
                &component,
                &events,
                rows,
                granted,
                schemas.as_ref(),
            );
            let report = match checked {
                Ok(report) => report,
                Err(e) => {
                    eprintln!("floe check: {e}");
                    std::process::exit(2);
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", floe::check::render(&report));
            }
            if !report.passed() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Config => {
            let config = load_config(cli.config)?;
            println!("{}", config_json(&config)?);
            Ok(())
        }
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    categories,
                    topics,
                    idle_secs,
                    dry_run,
                    group,
                    allow_without_lsn,
                },
        } => {
            let config = load_config(cli.config)?;
            for c in &categories {
                anyhow::ensure!(
                    floe::dlq::CATEGORIES.contains(&c.as_str()),
                    "unknown category '{c}' (one of {})",
                    floe::dlq::CATEGORIES.join(", ")
                );
            }
            let options = floe::dlq::replay::ReplayOptions {
                categories,
                topics,
                idle: Duration::from_secs_f64(idle_secs),
                dry_run,
                group,
                allow_without_lsn,
            };
            let report = floe::dlq::replay::replay(&config, &options).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Query { sql } => {
            let config = load_config(cli.config)?;
            let sink =
                floe::sinks::snowflake::SnowflakeSink::connect(&config.sink.snowflake).await?;
            let res = sink.client().execute(&sql, &[]).await?;
            let header: Vec<&str> = res.columns.iter().map(|c| c.name.as_str()).collect();
            println!("{}", header.join("\t"));
            for row in &res.rows {
                let cells: Vec<&str> = row.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
                println!("{}", cells.join("\t"));
            }
            Ok(())
        }
    }
}

/// The configuration as pretty JSON (secrets print as `***`).
fn config_json(config: &Config) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(config)?)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
