//! Part 1: the worker's overhead per batch, beside the time spent inside LLM calls.
//!
//! **Worker overhead per batch.** 40 jobs of 12 weeks (160 batches) through one in-process
//! worker with `WORKER_CONCURRENCY=1`, against the mock LLM HTTP server with no latency. Jobs
//! are queued before the worker starts; the clock runs from "consuming" to the last
//! `jobs_completed`. Overhead = wall time − the sum of `roadmap_llm_request_duration_seconds`
//! (which covers the HTTP round trip, the client's JSON encoding and decoding, and the mock's
//! own work). It is split with the other histogram, `roadmap_batch_duration_seconds`
//! (batch − LLM = the ladder's own work: prompt, schema, parse, checks), and with the store
//! calls timed alone on the same database (`Claimant::claim`, `Lease::checkpoint`,
//! `Lease::complete`, 10 jobs in a plain loop); what is left
//! is AMQP delivery and ack, task start, assembly and the relay. The CPU-only pieces are also
//! timed offline on the same batches.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use mock_llm::FaultPlan;
use prometheus::core::Collector as _;
use roadmap_worker::{
    config::BatchSettings,
    domain::roadmap::check_weeks,
    llm::schema,
    metrics::Metrics,
    pipeline::{parse, prompt},
};

use crate::{
    fixture::{FORMAT, Fixture, ROLE, WEEKS},
    plain::{plain_loop, plain_pool},
    util::{ms, wait_completed},
};
use testkit::TestEnv;

const OVERHEAD_JOBS: usize = 40;
const OVERHEAD_PLAIN_JOBS: usize = 10;

/// Returns the input tokens per job the mock server counted, for part 4's cross-check.
pub async fn overhead() -> f64 {
    let fx = Arc::new(Fixture::new(WEEKS));
    let per_job = fx.stages.len();
    let batches = (OVERHEAD_JOBS * per_job) as f64;
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::ZERO).await;
    // Events are routed to a backend, as in production (an unbound event is kept and retried).
    let _sink = env.event_sink().await;
    for _ in 0..OVERHEAD_JOBS {
        env.publish(&testkit::job(WEEKS, ROLE).1).await;
    }
    // One call at a time, so that the gaps between the mock's requests are the worker's own.
    let worker = env
        .start_worker(&["--worker-concurrency", "1", "--job-parallelism", "1"])
        .await;
    let metrics = worker.running.metrics.clone();
    let start = Instant::now();
    wait_completed(&metrics, OVERHEAD_JOBS, Duration::from_secs(120)).await;
    let wall = start.elapsed();
    let (llm_secs, llm_calls) = llm_time(&metrics);
    let batch_secs = metrics.batch_duration.get_sample_sum();
    let input_tokens = metrics.llm_tokens.with_label_values(&["input"]).get() as f64 / OVERHEAD_JOBS as f64;
    let ok = metrics.batches.with_label_values(&["ok"]).get();
    worker.stop().await;
    let gaps = call_gaps(&env, llm_secs / llm_calls.max(1) as f64);

    let pool = plain_pool(&env, 1).await;
    let (_, writes) = plain_loop(&pool, &fx, OVERHEAD_PLAIN_JOBS, 1).await;
    drop(pool);
    env.cleanup().await;
    let (render, json_in, json_out) = cpu_pieces(&fx);

    let wall_b = ms(wall) / batches;
    let llm_b = llm_secs * 1000.0 / batches;
    let over_b = wall_b - llm_b;
    let ladder_b = (batch_secs - llm_secs) * 1000.0 / batches;
    let checkpoint_b = writes.checkpoint_ms();
    let job_writes_b = (writes.claim_ms() + writes.complete_ms()) / per_job as f64;
    let rest_b = over_b - ladder_b - checkpoint_b - job_writes_b;
    println!(
        "[1] worker overhead per batch: {OVERHEAD_JOBS} jobs x {WEEKS} weeks = {batches} batches, \
         WORKER_CONCURRENCY 1, mock LLM over HTTP with 0 ms latency"
    );
    if ok as f64 != batches || llm_calls as f64 != batches + OVERHEAD_JOBS as f64 {
        println!(
            "    note: {ok} batches ok and {llm_calls} LLM calls for {batches} batches and their outlines"
        );
    }
    println!(
        "    per batch, from one LLM answer to the job's next request (parse, checks, checkpoint, prompt): \
         p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} gaps within jobs)",
        gaps.0, gaps.1, gaps.2, gaps.3
    );
    println!(
        "    wall time            {:8.3} ms/batch  ({:.0} ms in all)",
        wall_b,
        ms(wall)
    );
    println!("    inside LLM calls     {llm_b:8.3} ms/batch  (HTTP round trip + mock answer + client JSON)");
    println!(
        "    worker overhead      {over_b:8.3} ms/batch  = {:.1} % of the wall time; made of:",
        100.0 * over_b / wall_b
    );
    println!(
        "      ladder's own work  {ladder_b:8.3} ms/batch  (batch_duration - llm_request_duration: prompt, \
         schema, parse, checks)"
    );
    println!(
        "      checkpoint tx      {checkpoint_b:8.3} ms/batch  (Lease::checkpoint timed alone, \
         {} calls)",
        writes.checkpoints
    );
    println!(
        "      claim + complete   {job_writes_b:8.3} ms/batch  ({:.3} + {:.3} ms per job, timed alone, shared \
         by {per_job} batches)",
        writes.claim_ms(),
        writes.complete_ms()
    );
    println!(
        "      the rest           {rest_b:8.3} ms/batch  (AMQP delivery + ack, task start, assembly, relay; \
         by difference)"
    );
    println!(
        "    CPU-only pieces, timed offline: render prompt + schema {:.3} ms, parse + check answer {:.3} ms, \
         weeks to JSON for the checkpoint {:.3} ms (per batch)",
        render, json_in, json_out
    );
    println!();
    input_tokens
}

/// Percentiles of the worker's time between LLM calls of one job: the gap between consecutive
/// requests of the same job (by `prompt_cache_key`, the job id) that the mock received, less the
/// mean time of one call. Returns p50, p99, max (ms) and the count.
fn call_gaps(env: &TestEnv, mean_call_secs: f64) -> (f64, f64, f64, usize) {
    let mut requests = env.mock.requests();
    requests.sort_by_key(|r| r.received_at);
    let mut gaps: Vec<f64> = requests
        .windows(2)
        .filter(|w| w[0].cache_key == w[1].cache_key)
        .map(|w| {
            let gap = (w[1].received_at - w[0].received_at)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1000.0;
            (gap - mean_call_secs * 1000.0).max(0.0)
        })
        .collect();
    gaps.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        gaps.get(((gaps.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    (pick(0.5), pick(0.99), pick(1.0), gaps.len())
}

/// Sum and count of `roadmap_llm_request_duration_seconds` over every provider and model.
fn llm_time(metrics: &Metrics) -> (f64, u64) {
    let mut sum = 0.0;
    let mut count = 0;
    for family in metrics.llm_request_duration.collect() {
        for metric in family.get_metric() {
            let h = metric.get_histogram();
            sum += h.get_sample_sum();
            count += h.get_sample_count();
        }
    }
    (sum, count)
}

/// Per-batch milliseconds of the worker's CPU-only steps, on the fixture's batches.
fn cpu_pieces(fx: &Fixture) -> (f64, f64, f64) {
    const REPS: u32 = 200;
    let context_days = BatchSettings::default().context_days;
    let (mut render, mut parse_check, mut to_json) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..REPS {
        for s in &fx.stages {
            let t = Instant::now();
            black_box(prompt::render(
                &s.brief,
                crate::fixture::context(&s.previous),
                &[],
                context_days,
                None,
                FORMAT,
            ));
            black_box(schema::batch_schema(s.range.first, s.range.last));
            render += t.elapsed();
            let t = Instant::now();
            let weeks = parse::parse_answer(black_box(&s.answer)).expect("parses");
            black_box(check_weeks(weeks, s.range.weeks(), |n| fx.plan.phase_of(n)).expect("passes"));
            parse_check += t.elapsed();
            let t = Instant::now();
            black_box(serde_json::to_value(&s.result.weeks).expect("serialises"));
            to_json += t.elapsed();
        }
    }
    let n = f64::from(REPS) * fx.stages.len() as f64;
    (ms(render) / n, ms(parse_check) / n, ms(to_json) / n)
}
