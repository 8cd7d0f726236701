//! The `roadmap-worker` binary: parse the command line, start logging, dispatch.

use clap::Parser as _;
use roadmap_worker::{cli::Cli, commands, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Tools that talk to a person keep the terminal for their own output: warnings only,
    // unless RUST_LOG asks for more. The worker keeps its structured info lines.
    let quiet = !matches!(cli.command, roadmap_worker::cli::Command::Run(_));
    let _telemetry = telemetry::init(cli.log_format, if quiet { "warn" } else { "info" });
    match commands::dispatch(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Said once: the worker's way is its log (a JSON line where logs are collected), a
        // tool's is a plain line for the person who ran it.
        Err(e) if quiet => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
