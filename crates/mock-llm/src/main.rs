//! The `mock-llm` binary: the mock LLM over HTTP, for docker-compose and for pointing a worker's
//! real providers (`LLM_PROVIDER=openai` or `gemini`) at something that answers offline.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use mock_llm::{FaultPlan, QuotaSettings};

#[derive(Debug, Parser)]
#[command(
    name = "mock-llm",
    version,
    about = "Serves a mock LLM (OpenAI-compatible and Gemini shapes) with fault injection."
)]
struct Args {
    #[arg(long, env = "MOCK_LLM_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Delay before every answer, in milliseconds.
    #[arg(long, env = "MOCK_LLM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Fault plan as JSON (see README, "Fault injection"), or @path to a file holding it.
    #[arg(long, env = "MOCK_LLM_FAULTS")]
    faults: Option<String>,
    /// Requests per minute the mock admits; past it, 429 with Retry-After and x-ratelimit-*.
    #[arg(long, env = "MOCK_LLM_RPM", value_parser = clap::value_parser!(u32).range(1..))]
    rpm: Option<u32>,
    /// Tokens per minute the mock admits (a request counts its prompt plus max_tokens until it
    /// answers, then the tokens it used).
    #[arg(long, env = "MOCK_LLM_TPM", value_parser = clap::value_parser!(u64).range(1..))]
    tpm: Option<u64>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // The worker's own log setup: human lines, RUST_LOG as the filter, info by default.
    let _telemetry = roadmap_worker::telemetry::init(roadmap_worker::config::LogFormat::Human, "info");
    match serve(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let plan = match args.faults.as_deref() {
        None => FaultPlan::default(),
        Some(spec) => {
            let text = match spec.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
                None => spec.to_owned(),
            };
            serde_json::from_str(&text).context("MOCK_LLM_FAULTS is not a valid fault plan")?
        }
    };
    let quota = QuotaSettings {
        rpm: args.rpm,
        tpm: args.tpm,
    };
    // As PID 1 in a container, a signal has no default action: stop on SIGTERM and SIGINT.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        served = mock_llm::serve_forever(args.addr, plan, Duration::from_millis(args.latency_ms), quota) => served,
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
