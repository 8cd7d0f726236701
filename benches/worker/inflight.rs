//! Part 3: jobs held in flight by one replica process with a slow LLM, and its memory.
//!
//! **Jobs in flight.** The worker *binary* as a child process (`WORKER_CONCURRENCY=5000`,
//! `DATABASE_POOL_SIZE=32`) against the mock LLM HTTP server answering after 2 s; 5,000 jobs of
//! 3 weeks are published before it starts, and `roadmap_jobs_in_flight` is scraped from its
//! /metrics every 100 ms until all are done (at most 60 s), with the child's `VmRSS`/`VmHWM` from
//! `/proc/<pid>/status`. A separate
//! process is used so that the figure is one replica's memory alone: in this process the
//! mock server (which holds every pending request) and the allocator's leftovers from the
//! other parts would be counted too. Run twice, answers read through the gate both times: over
//! HTTP/1.1 (a connection per call in flight) and with `LLM_HTTP2=true` (one connection for all;
//! `-- inflight-h1` or `-- inflight-h2` runs one of them).

use std::time::{Duration, Instant};

use mock_llm::FaultPlan;
use roadmap_worker::config::BatchSettings;

use crate::{
    fixture::ROLE,
    util::{proc_field, scrape, spawn_replica},
};
use testkit::TestEnv;

const IN_FLIGHT_JOBS: usize = 5000;
const IN_FLIGHT_WEEKS: u32 = 3;
const IN_FLIGHT_CONCURRENCY: usize = 5000;
const IN_FLIGHT_POOL: usize = 32;
const SLOW_LLM: Duration = Duration::from_secs(2);
const IN_FLIGHT_WINDOW: Duration = Duration::from_secs(60);

pub async fn in_flight(http2: bool) {
    let env = TestEnv::with_mock(FaultPlan::default(), SLOW_LLM).await;
    // Events are routed to a backend, as in production (an unbound event is kept and retried).
    let _sink = env.event_sink().await;
    let (concurrency, pool_size) = (IN_FLIGHT_CONCURRENCY.to_string(), IN_FLIGHT_POOL.to_string());
    let (mut child, addr, http) = spawn_replica(
        &env,
        &[
            ("WORKER_CONCURRENCY", &concurrency),
            ("DATABASE_POOL_SIZE", &pool_size),
            ("LLM_HTTP2", if http2 { "true" } else { "false" }),
        ],
    )
    .await;
    let pid = child.id().expect("the replica is running");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = format!("/proc/{pid}/status");
    let idle_rss = proc_field(&status, "VmRSS:").unwrap_or(0);

    let bodies: Vec<_> = (0..IN_FLIGHT_JOBS)
        .map(|_| testkit::job(IN_FLIGHT_WEEKS, ROLE).1)
        .collect();
    let start = Instant::now();
    // Published as a busy backend does, many at once with their confirms awaited together.
    for chunk in bodies.chunks(500) {
        futures_util::future::join_all(chunk.iter().map(|body| env.publish(body))).await;
    }
    let published = start.elapsed();
    let (mut peak, mut peak_at, mut rss_at_peak) = (0i64, Duration::ZERO, 0u64);
    // Until every job is done: resident memory still climbs after the peak in flight, as freed
    // heap that was reserved but never written is reused, so the high-water mark is only known
    // at the end of the burst.
    while start.elapsed() < IN_FLIGHT_WINDOW {
        let in_flight = scrape(&http, &addr, "roadmap_jobs_in_flight")
            .await
            .unwrap_or(0.0) as i64;
        let done = scrape(&http, &addr, "roadmap_jobs_completed_total")
            .await
            .unwrap_or(0.0);
        if done >= IN_FLIGHT_JOBS as f64 {
            break;
        }
        let rss = proc_field(&status, "VmRSS:").unwrap_or(0);
        if in_flight > peak {
            (peak, peak_at, rss_at_peak) = (in_flight, start.elapsed(), rss);
        } else if in_flight == peak {
            rss_at_peak = rss_at_peak.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let completed = scrape(&http, &addr, "roadmap_jobs_completed_total")
        .await
        .unwrap_or(0.0);
    let job_secs = scrape(&http, &addr, "roadmap_job_duration_seconds_sum")
        .await
        .unwrap_or(0.0);
    let hwm = proc_field(&status, "VmHWM:").unwrap_or(0);
    let threads = proc_field(&status, "Threads:").unwrap_or(0);
    child.start_kill().expect("stopping the replica");
    let _ = child.wait().await;
    env.cleanup().await;

    let mib = |kib: u64| kib as f64 / 1024.0;
    let per_job = (rss_at_peak.saturating_sub(idle_rss)) as f64 / peak.max(1) as f64;
    let per_job_hwm = (hwm.saturating_sub(idle_rss)) as f64 / peak.max(1) as f64;
    println!(
        "[3] jobs in flight, one replica process: {IN_FLIGHT_JOBS} jobs x {IN_FLIGHT_WEEKS} weeks, mock LLM over {} \
         answering after {} ms, WORKER_CONCURRENCY {IN_FLIGHT_CONCURRENCY}, pool {IN_FLIGHT_POOL}",
        if http2 {
            "HTTP/2 (LLM_HTTP2=true)"
        } else {
            "HTTP/1.1"
        },
        SLOW_LLM.as_millis()
    );
    println!(
        "    peak in flight       {peak} jobs, reached {:.2} s after the first publish (publishing took \
         {:.2} s)",
        peak_at.as_secs_f64(),
        published.as_secs_f64(),
    );
    let llm_only =
        SLOW_LLM.as_secs_f64() * f64::from(IN_FLIGHT_WEEKS.div_ceil(BatchSettings::default().batch_weeks));
    println!(
        "    completed            {completed} within {:.1} s, {:.2} s per job on average ({llm_only:.0} s of it \
         waiting for the LLM)",
        start.elapsed().as_secs_f64(),
        job_secs / completed.max(1.0)
    );
    println!(
        "    resident memory      idle {:.1} MiB -> {:.1} MiB at peak in flight (VmHWM {:.1} MiB), {threads} \
         threads",
        mib(idle_rss),
        mib(rss_at_peak),
        mib(hwm)
    );
    println!(
        "    per in-flight job    {per_job:.0} KiB (RSS at peak - idle) / {peak}; {per_job_hwm:.0} KiB by VmHWM"
    );
    println!();
}
