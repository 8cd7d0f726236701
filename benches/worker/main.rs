//! Performance figures: printed, never asserted (a timed assertion would flake on a shared machine).
//!
//! ```sh
//! cargo bench --bench worker                      # all five parts, about 2 min after the build
//! cargo bench --bench worker -- overhead tokens   # only some: overhead, throughput, inflight,
//!                                                 # tokens, critical (process: part 2b alone)
//! ```
//!
//! Needs the same Postgres and RabbitMQ as the integration tests (127.0.0.1, or `TEST_PG_URL` /
//! `TEST_AMQP_URL`); every part works in its own database and AMQP namespace through the test
//! harness (the `testkit` crate) and drops them at the end. `RUST_LOG` sets the log filter (default
//! `warn`, so the per-batch `info` lines of production are not part of the figures). The first
//! line says how busy the cores were just before the run: on a small machine another build or
//! test run shifts every figure.
//!
//! Each part lives in its own module under `benches/worker/`, whose documentation says what it
//! measures and how:
//!
//! 1. [`overhead`]: worker overhead per batch, beside the time inside LLM calls.
//! 2. [`throughput`]: jobs per second through the worker, against a plain loop of the same writes;
//!    [`process`]: the worker binary's own CPU per job over HTTP, beside Postgres and RabbitMQ.
//! 3. [`inflight`]: jobs held in flight by one replica process with a slow LLM, and its memory.
//! 4. [`tokens`]: input tokens per roadmap, the worker's window against a chat's full history.
//! 5. [`critical`]: wall time of a 52-week roadmap with a slow LLM, and a kill in the middle.
//! 6. [`budget`]: three replicas against a provider quota, with and without the shared budget
//!    (about 5 minutes; only when asked for: `-- budget`).
//! 7. [`turns`]: fairness between users and interactive before bulk (only when asked for:
//!    `-- turns`).
//! 8. [`storage`]: what 1,000 finished jobs keep in Postgres, table by table (only when asked
//!    for: `-- storage`).
//! 9. [`quality`]: copied weeks and repeated tasks with the content checks off and on, and the
//!    LLM calls they cost (only when asked for: `-- quality`).
//!
//! They share [`fixture`] (one job's batches as the worker produces them on the mock LLM),
//! [`plain`] (the plain loop of the worker's writes) and [`util`].

mod budget;
mod critical;
mod fixture;
mod inflight;
mod overhead;
mod plain;
mod process;
mod quality;
mod storage;
mod throughput;
mod tokens;
mod turns;
mod util;

use std::time::Duration;

use util::proc_field;

#[tokio::main]
async fn main() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
                .add_directive(
                    roadmap_worker::telemetry::QUIET_RETURNS
                        .parse()
                        .expect("a valid directive"),
                ),
        )
        .try_init();
    // `cargo bench` passes `--bench`; plain words pick parts.
    let picked: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |part: &str| picked.is_empty() || picked.iter().any(|p| p == part);

    machine_facts().await;
    let mut measured_tokens = None;
    if run("overhead") {
        measured_tokens = Some(overhead::overhead().await);
    }
    if run("throughput") {
        throughput::throughput().await;
    }
    if run("throughput") || run("process") {
        process::process_over_http().await;
    }
    // `inflight-h1` / `inflight-h2` run one of the two, e.g. under a profiler.
    if run("inflight") || run("inflight-h1") {
        inflight::in_flight(false).await;
    }
    if run("inflight") || run("inflight-h2") {
        inflight::in_flight(true).await;
    }
    if run("tokens") {
        tokens::tokens(measured_tokens);
    }
    if run("critical") {
        critical::critical_path().await;
    }
    // Minutes long: only when named.
    if picked.iter().any(|p| p == "budget") {
        budget::budget().await;
    }
    if picked.iter().any(|p| p == "turns") {
        turns::turns().await;
    }
    if picked.iter().any(|p| p == "storage") {
        storage::storage().await;
    }
    if picked.iter().any(|p| p == "quality") {
        quality::quality().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Machine facts

async fn machine_facts() {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kib = proc_field("/proc/meminfo", "MemTotal:").unwrap_or(0);
    // Other work on the machine shares its cores with Postgres, RabbitMQ and this benchmark.
    let busy = busy_share(Duration::from_secs(1))
        .await
        .map_or_else(|| "unknown".to_owned(), |b| format!("{:.0} %", b * 100.0));
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "machine: {cores} cores ({model}), {:.1} GiB RAM, {busy} of the cores busy in the second before \
         the run, {build} build",
        mem_kib as f64 / 1024.0 / 1024.0,
    );
    let base = std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    match tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            let mut facts = Vec::new();
            for (label, sql) in [
                ("", "SHOW server_version"),
                ("synchronous_commit=", "SHOW synchronous_commit"),
                ("fsync=", "SHOW fsync"),
                ("shared_buffers=", "SHOW shared_buffers"),
            ] {
                if let Ok(row) = client.query_one(sql, &[]).await {
                    facts.push(format!("{label}{}", row.get::<_, String>(0)));
                }
            }
            println!("postgres: {}", facts.join(", "));
        }
        Err(e) => println!("postgres: unreachable ({e}); {}", testkit::PG_HINT),
    }
    println!();
}

/// The share of all cores that was busy over `window`, from /proc/stat.
async fn busy_share(window: Duration) -> Option<f64> {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
        Some((ticks.iter().take(8).sum(), idle))
    }
    let (total0, idle0) = sample()?;
    tokio::time::sleep(window).await;
    let (total1, idle1) = sample()?;
    let total = total1.saturating_sub(total0);
    (total > 0).then(|| 1.0 - idle1.saturating_sub(idle0) as f64 / total as f64)
}
