//! Part 5: the critical path of a 52-week roadmap with a slow LLM.
//!
//! **Wall time.** One 52-week job through a worker in this process, against the mock LLM HTTP
//! server answering every call after 2 s: from the publish to the completion event, with the
//! job's LLM calls. It runs with the default `JOB_PARALLELISM` (the outline, then the phases
//! side by side) and again with `JOB_PARALLELISM=1` (the outline, then one phase after
//! another), beside the bound the design promises: 1.2 × (1 + ⌈longest phase / BATCH_WEEKS⌉)
//! LLM latencies.
//!
//! **A kill mid-job.** The same job on a worker process that is SIGKILLed once half of its
//! batches are stored; a second worker finishes it. Counted: stored batches asked again (must
//! be 0), and the batches the kill cut in flight, which are asked again by design.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use mock_llm::FaultPlan;
use roadmap_worker::{config::BatchSettings, domain::event::Completed};

use testkit::{TestEnv, db_when_ready};

const WEEKS: u32 = 52;
const ROLE: &str = "Machine Learning Engineer";
const SLOW_LLM: Duration = Duration::from_secs(2);

pub async fn critical_path() {
    println!(
        "[5] critical path: one {WEEKS}-week job, mock LLM over HTTP answering after {} ms",
        SLOW_LLM.as_millis()
    );
    let batch_weeks = BatchSettings::default().batch_weeks;
    for parallelism in [BatchSettings::default().job_parallelism, 1] {
        let env = TestEnv::with_mock(FaultPlan::default(), SLOW_LLM).await;
        let worker = env
            .start_worker(&["--job-parallelism", &parallelism.to_string()])
            .await;
        let mut events = env.watcher().await;
        let (job_id, body) = testkit::job(WEEKS, ROLE);
        let started = Instant::now();
        env.publish(&body).await;
        let end = events
            .wait_for_end(job_id, Duration::from_secs(120), |_| {})
            .await
            .expect("the job ends");
        let wall = started.elapsed();
        let completed: Completed = serde_json::from_value(end.body).expect("a completion event");
        let longest = completed
            .roadmap
            .phases
            .iter()
            .map(|p| p.week_to + 1 - p.week_from)
            .max()
            .unwrap_or(WEEKS);
        let path = 1 + longest.div_ceil(batch_weeks);
        let bound = 1.2 * f64::from(path) * SLOW_LLM.as_secs_f64();
        println!(
            "    JOB_PARALLELISM {parallelism}    {:.1} s wall ({} LLM calls, {} batches in {} phases; bound \
             1.2 x {path} x {} s = {bound:.1} s for side-by-side phases); input tokens {} ({:.0} % a cached \
             prefix), output {}",
            wall.as_secs_f64(),
            completed.usage.llm_calls,
            completed.batches,
            completed.roadmap.phases.len(),
            SLOW_LLM.as_secs(),
            completed.usage.input_tokens,
            100.0 * completed.usage.cached_input_tokens as f64 / completed.usage.input_tokens.max(1) as f64,
            completed.usage.output_tokens
        );
        worker.stop().await;
        env.cleanup().await;
    }
    kill_mid_job().await;
    println!();
}

async fn kill_mid_job() {
    let env = TestEnv::with_mock(FaultPlan::default(), SLOW_LLM).await;
    let mut first = env.spawn_worker_process(&[]);
    let mut events = env.watcher().await;
    let (job_id, body) = testkit::job(WEEKS, ROLE);
    let started = Instant::now();
    env.publish(&body).await;
    let db = db_when_ready(&env).await;
    let stored_at_kill: BTreeSet<i32> =
        testkit::eventually(Duration::from_secs(120), "half of the batches stored", || async {
            let rows = db
                .query("SELECT first_week FROM batches WHERE job_id = $1", &[&job_id])
                .await
                .ok()?;
            let total: i32 = db
                .query_opt("SELECT batches_total FROM jobs WHERE job_id = $1", &[&job_id])
                .await
                .ok()??
                .get(0);
            (rows.len() as i32 * 2 >= total).then(|| rows.iter().map(|r| r.get(0)).collect())
        })
        .await;
    first.start_kill().expect("SIGKILL");
    let _ = first.wait().await;
    let killed_at = chrono::Utc::now();
    let second = env.start_worker(&[]).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(120), |_| {})
        .await
        .expect("the job ends");
    assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    let plan = env.stored_plan(job_id).await;
    let requests = env.mock.requests();
    let after: Vec<_> = requests.iter().filter(|r| r.received_at > killed_at).collect();
    let regenerated = after
        .iter()
        .filter(|r| !r.outline && stored_at_kill.contains(&(r.first_week as i32)))
        .count();
    let outlines = requests.iter().filter(|r| r.outline).count();
    println!(
        "    SIGKILL mid-job      {} of {} batches stored at the kill; after it {} batches asked, {regenerated} \
         of them stored before (regenerated), {} outline calls in all; {:.1} s wall with the kill \
         and a restart",
        stored_at_kill.len(),
        plan.batches.len(),
        after.iter().filter(|r| !r.outline).count(),
        outlines,
        started.elapsed().as_secs_f64()
    );
    second.stop().await;
    env.cleanup().await;
}
