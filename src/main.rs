//! The `roadmap-worker` binary: parse the command line, start logging, dispatch.

use clap::Parser as _;
use roadmap_worker::{cli::Cli, commands, telemetry};

// Measured with `cargo bench --bench worker -- throughput`: the worker's CPU per job is
// dominated by many small allocations (JSON values, strings), which mimalloc serves cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match commands::dispatch(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
