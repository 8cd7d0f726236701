//! Part 2: jobs per second through the worker, against a plain loop of the same writes.
//!
//! **Jobs per second.** 400 jobs of 12 weeks through one in-process worker on the embedded
//! mock (`--llm-provider mock`: no HTTP, no latency), `WORKER_CONCURRENCY=32`, pool 16 (the
//! production default), against a plain loop that makes the same writes per job through the
//! same store functions (claim = insert the job row; one checkpoint transaction per batch
//! with the very weeks the mock produces; one completion transaction with roadmap and outbox
//! row), sequentially and as 32 tasks on a pool of 16. CPU time per job is read from
//! `/proc/*/stat` for this process (worker, embedded mock, relay), for `postgres` and for
//! RabbitMQ's `beam.smp`, to show where the machine's cores go. One more plain run makes the
//! same transactions with the weeks left out, which shows what the JSON costs Postgres; the
//! embedded mock's own share of the worker's CPU is timed offline.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use roadmap_worker::llm::mock;

use crate::{
    fixture::{Fixture, ROLE, WEEKS},
    plain::{plain_loop, plain_pool},
    util::{Cpu, ms, wait_completed},
};
use testkit::TestEnv;

const THROUGHPUT_JOBS: usize = 400;
const PLAIN_SEQUENTIAL_JOBS: usize = 150;
const CONCURRENCY: usize = 32;
const POOL: usize = 16;

/// Milliseconds the embedded mock spends writing one job's answers.
fn mock_ms_per_job(fx: &Fixture) -> f64 {
    const REPS: u32 = 100;
    let start = Instant::now();
    for _ in 0..REPS {
        for s in &fx.stages {
            black_box(mock::answer(black_box(&s.prompt)).expect("the mock answers"));
        }
    }
    ms(start.elapsed()) / f64::from(REPS)
}

pub async fn throughput() {
    let fx = Arc::new(Fixture::new(WEEKS));
    let env = TestEnv::new().await;
    // Events are routed to a backend, as in production (an unbound event is kept and retried).
    let _sink = env.event_sink().await;
    for _ in 0..THROUGHPUT_JOBS {
        env.publish(&testkit::job(WEEKS, ROLE).1).await;
    }
    let (concurrency, pool_size) = (CONCURRENCY.to_string(), POOL.to_string());
    let worker = env
        .start_worker(&[
            "--llm-provider",
            "mock",
            "--worker-concurrency",
            &concurrency,
            "--database-pool-size",
            &pool_size,
        ])
        .await;
    let metrics = worker.running.metrics.clone();
    let cpu = Cpu::now();
    let start = Instant::now();
    wait_completed(&metrics, THROUGHPUT_JOBS, Duration::from_secs(180)).await;
    let worker_wall = start.elapsed();
    let worker_cpu = Cpu::now().per_job_since(&cpu, THROUGHPUT_JOBS);
    let fallback = metrics.batches.with_label_values(&["fallback"]).get();
    worker.stop().await;

    let pool = plain_pool(&env, POOL).await;
    let cpu = Cpu::now();
    let (seq_wall, seq_writes) = plain_loop(&pool, &fx, PLAIN_SEQUENTIAL_JOBS, 1).await;
    let seq_cpu = Cpu::now().per_job_since(&cpu, PLAIN_SEQUENTIAL_JOBS);
    let cpu = Cpu::now();
    let (par_wall, par_writes) = plain_loop(&pool, &fx, THROUGHPUT_JOBS, CONCURRENCY).await;
    let par_cpu = Cpu::now().per_job_since(&cpu, THROUGHPUT_JOBS);
    let bare = Arc::new(fx.without_weeks());
    let cpu = Cpu::now();
    let (bare_wall, _) = plain_loop(&pool, &bare, THROUGHPUT_JOBS, CONCURRENCY).await;
    let bare_cpu = Cpu::now().per_job_since(&cpu, THROUGHPUT_JOBS);
    drop(pool);
    env.cleanup().await;

    let rate = |jobs: usize, wall: Duration| jobs as f64 / wall.as_secs_f64();
    let worker_rate = rate(THROUGHPUT_JOBS, worker_wall);
    let seq_rate = rate(PLAIN_SEQUENTIAL_JOBS, seq_wall);
    let par_rate = rate(THROUGHPUT_JOBS, par_wall);
    println!(
        "[2] jobs per second: {WEEKS}-week jobs ({} batches, {} transactions each), instant mock LLM, \
         pool {POOL}",
        fx.stages.len(),
        fx.stages.len() + 2
    );
    if fallback > 0 {
        println!("    note: {fallback} batches fell back to templates");
    }
    let line = |label: &str, jobs: usize, wall: Duration, rate: f64, cpu: &str| {
        println!(
            "    {label:<34} {jobs:4} jobs in {:6.2} s = {rate:7.1} jobs/s   {cpu}",
            wall.as_secs_f64()
        );
    };
    line(
        &format!("worker, WORKER_CONCURRENCY {CONCURRENCY}"),
        THROUGHPUT_JOBS,
        worker_wall,
        worker_rate,
        &worker_cpu,
    );
    line(
        "plain loop, sequential",
        PLAIN_SEQUENTIAL_JOBS,
        seq_wall,
        seq_rate,
        &seq_cpu,
    );
    line(
        &format!("plain loop, {CONCURRENCY} tasks"),
        THROUGHPUT_JOBS,
        par_wall,
        par_rate,
        &par_cpu,
    );
    let bare_rate = rate(THROUGHPUT_JOBS, bare_wall);
    line(
        "  same, without the weeks' JSON",
        THROUGHPUT_JOBS,
        bare_wall,
        bare_rate,
        &bare_cpu,
    );
    println!(
        "    worker / plain loop: {:.2} of the {CONCURRENCY}-task loop, {:.2} of the sequential loop",
        worker_rate / par_rate,
        worker_rate / seq_rate
    );
    println!(
        "    of this process's CPU, the embedded mock's answers take {:.1} ms/job (timed offline; a real \
         provider costs the worker an HTTP call instead)",
        mock_ms_per_job(&fx)
    );
    let [batches, roadmap, event, rest] = fx.json_bytes();
    let kib = |b: usize| b as f64 / 1024.0;
    println!(
        "    JSON written per job: batches {:.1} KiB + roadmap {:.1} KiB + completion event row {:.1} KiB + \
         job, plan, progress {:.1} KiB = {:.1} KiB (the weeks go in twice: checkpoints and roadmap)",
        kib(batches),
        kib(roadmap),
        kib(event),
        kib(rest),
        kib(batches + roadmap + event + rest)
    );
    println!(
        "    plain-loop store calls, sequential / {CONCURRENCY} tasks (incl. waiting for a pooled \
         connection): claim {:.2} / {:.2} ms, checkpoint {:.2} / {:.2} ms, complete {:.2} / {:.2} ms",
        seq_writes.claim_ms(),
        par_writes.claim_ms(),
        seq_writes.checkpoint_ms(),
        par_writes.checkpoint_ms(),
        seq_writes.complete_ms(),
        par_writes.complete_ms()
    );
    println!();
}
