//! A stand-in OpenTelemetry collector for the telemetry benchmark (dev/bench.sh): an
//! OTLP/HTTP (protobuf) receiver on `--listen` that decodes every export as a collector
//! does. On SIGTERM or SIGINT it prints what it received as one JSON line: export
//! requests per signal, body bytes, spans and the `floe.events.consumed` it last saw.

use clap::Parser;
use floe_integration_tests::otlp::Receiver;

#[derive(Parser)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:4318.
    #[arg(long, default_value = "127.0.0.1:4318")]
    listen: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let receiver = Receiver::start_on(&args.listen).await;
    eprintln!("otlp_receiver: listening on {}", receiver.url);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let (traces, metrics) = receiver.requests();
    let (sums, _) = receiver.sums();
    let summary = serde_json::json!({
        "trace_requests": traces,
        "metric_requests": metrics,
        "bytes": receiver.bytes.load(std::sync::atomic::Ordering::SeqCst),
        "spans": receiver.spans().len(),
        "events_consumed": sums.get("floe.events.consumed"),
    });
    println!("{summary}");
    Ok(())
}
