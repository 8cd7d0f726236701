//! Part 2b: the worker binary's own cost per job, over HTTP.
//!
//! **CPU per job, one replica process.** The worker *binary* as a child process
//! (`WORKER_CONCURRENCY=64`), against the mock LLM HTTP server of this process answering at
//! once, so the child's CPU is the worker's alone: its HTTP client, parsing, checks, Postgres
//! and RabbitMQ clients, relay. 300 jobs of 12 weeks are published once it is ready; CPU time is
//! read from `/proc/<pid>/stat` of the child, of every `postgres` process and of RabbitMQ's
//! `beam.smp` from the first publish to the last completion, with the child's peak RSS
//! (`VmHWM`). This is the setting of the comparison with the Python seed design (an external
//! OpenAI-compatible fake LLM).

use std::time::{Duration, Instant};

use mock_llm::FaultPlan;

use crate::{
    fixture::{ROLE, WEEKS},
    util::{Cpu, proc_field, scrape, spawn_replica},
};
use testkit::TestEnv;

const JOBS: usize = 300;
const CONCURRENCY: &str = "64";

pub async fn process_over_http() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::ZERO).await;
    let _sink = env.event_sink().await;
    let (mut child, addr, http) = spawn_replica(&env, &[("WORKER_CONCURRENCY", CONCURRENCY)]).await;
    let pid = child.id().expect("the replica is running");
    let cpu = Cpu::with(Some(pid));
    let start = Instant::now();
    for _ in 0..JOBS {
        env.publish(&testkit::job(WEEKS, ROLE).1).await;
    }
    testkit::eventually(Duration::from_secs(300), "every job completed", || async {
        let done = scrape(&http, &addr, "roadmap_jobs_completed_total").await?;
        (done as usize >= JOBS).then_some(())
    })
    .await;
    let wall = start.elapsed();
    let used = Cpu::with(Some(pid)).per_job_as(&cpu, JOBS, "worker process");
    let hwm = proc_field(&format!("/proc/{pid}/status"), "VmHWM:").unwrap_or(0);
    child.start_kill().expect("stopping the replica");
    let _ = child.wait().await;
    env.cleanup().await;
    println!(
        "[2b] one replica process over HTTP: {JOBS} jobs x {WEEKS} weeks, mock LLM answering at once, \
         WORKER_CONCURRENCY {CONCURRENCY}"
    );
    println!(
        "    {:.2} s = {:.1} jobs/s   {used}   peak RSS {:.1} MiB",
        wall.as_secs_f64(),
        JOBS as f64 / wall.as_secs_f64(),
        hwm as f64 / 1024.0
    );
    println!();
}
