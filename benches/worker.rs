//! Performance figures for BRIEF §5 ("Performance"): printed, never asserted.
//!
//! ```sh
//! cargo bench --bench worker                      # all four parts, about 20 s after the build
//! cargo bench --bench worker -- overhead tokens   # only some: overhead, throughput, inflight, tokens
//! ```
//!
//! Needs the same Postgres and RabbitMQ as the integration tests (127.0.0.1, or `TEST_PG_URL` /
//! `TEST_AMQP_URL`); every part works in its own database and AMQP namespace through the test
//! harness (`tests/common`) and drops them at the end. `RUST_LOG` sets the log filter (default
//! `warn`, so the per-batch `info` lines of production are not part of the figures). The first
//! line says how busy the cores were just before the run: on a small machine another build or
//! test run shifts every figure.
//!
//! What each part measures and how:
//!
//! 1. **Worker overhead per batch.** 40 jobs of 12 weeks (160 batches) through one in-process
//!    worker with `WORKER_CONCURRENCY=1`, against the mock LLM HTTP server with no latency. Jobs
//!    are queued before the worker starts; the clock runs from "consuming" to the last
//!    `jobs_completed`. Overhead = wall time − the sum of `roadmap_llm_request_duration_seconds`
//!    (which covers the HTTP round trip, the client's JSON encoding and decoding, and the mock's
//!    own work). It is split with the other histogram, `roadmap_batch_duration_seconds`
//!    (batch − LLM = the ladder's own work: prompt, schema, parse, checks), and with the store
//!    calls timed alone on the same database (`store::batches::checkpoint`,
//!    `store::jobs::claim`, `store::roadmaps::complete`, 10 jobs in a plain loop); what is left
//!    is AMQP delivery and ack, task start, assembly and the relay. The CPU-only pieces are also
//!    timed offline on the same batches.
//! 2. **Jobs per second.** 400 jobs of 12 weeks through one in-process worker on the embedded
//!    mock (`--llm-provider mock`: no HTTP, no latency), `WORKER_CONCURRENCY=32`, pool 16 (the
//!    production default), against a plain loop that makes the same writes per job through the
//!    same store functions (claim = insert the job row; one checkpoint transaction per batch
//!    with the very weeks the mock produces; one completion transaction with roadmap and outbox
//!    row), sequentially and as 32 tasks on a pool of 16. CPU time per job is read from
//!    `/proc/*/stat` for this process (worker, embedded mock, relay), for `postgres` and for
//!    RabbitMQ's `beam.smp`, to show where the machine's cores go. One more plain run makes the
//!    same transactions with the weeks left out, which shows what the JSON costs Postgres; the
//!    embedded mock's own share of the worker's CPU is timed offline.
//! 3. **Jobs in flight.** The worker *binary* as a child process (`WORKER_CONCURRENCY=256`,
//!    `DATABASE_POOL_SIZE=32`) against the mock LLM HTTP server answering after 2 s; 300 jobs of
//!    12 weeks are published and `roadmap_jobs_in_flight` is scraped from its /metrics every
//!    100 ms for 10 s, with the child's `VmRSS`/`VmHWM` from `/proc/<pid>/status`. A separate
//!    process is used so that the figure is one replica's memory alone: in this process the
//!    mock server (which holds every pending request) and the allocator's leftovers from the
//!    other parts would be counted too.
//! 4. **Input tokens per roadmap**, computed offline with the worker's own prompt renderer, the
//!    mock's answers and `llm::estimate_tokens` (4 characters a token), for 12, 26 and 52 weeks
//!    with the default BATCH_WEEKS and CONTEXT_DAYS. Window = Σ over calls of system + prompt,
//!    as the worker sends them (the previous week's last days in each prompt). Full history =
//!    what a chat session re-sends: each call carries the system prompt, every earlier prompt and
//!    answer, and its own prompt (without the window, which the history makes redundant).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use common::TestEnv;
use deadpool_postgres::Pool;
use prometheus::core::Collector as _;
use roadmap_worker::{
    config::{BatchSettings, DbSettings, ResponseFormat},
    domain::{
        JobRequest, Roadmap, Week,
        event::{COMPLETED, Completed, Progress, Usage},
        roadmap::check_weeks,
    },
    llm::{estimate_tokens, mock, schema},
    metrics::Metrics,
    mock_server::FaultPlan,
    pipeline::{
        batch::BatchResult,
        parse,
        plan::{BatchRange, Plan},
        prompt::{self, Brief, SYSTEM_PROMPT},
    },
    store::{self, jobs::Claim},
};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Every job of parts 1–3 has this many weeks (4 batches at the default BATCH_WEEKS).
const WEEKS: u32 = 12;
const ROLE: &str = "Backend Developer";
/// What the worker sends by default (LLM_RESPONSE_FORMAT).
const FORMAT: ResponseFormat = ResponseFormat::JsonSchema;

const OVERHEAD_JOBS: usize = 40;
const OVERHEAD_PLAIN_JOBS: usize = 10;
const THROUGHPUT_JOBS: usize = 400;
const PLAIN_SEQUENTIAL_JOBS: usize = 150;
const CONCURRENCY: usize = 32;
const POOL: usize = 16;
const IN_FLIGHT_JOBS: usize = 300;
const IN_FLIGHT_CONCURRENCY: usize = 256;
const IN_FLIGHT_POOL: usize = 32;
const SLOW_LLM: Duration = Duration::from_secs(2);
const IN_FLIGHT_WINDOW: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    // `cargo bench` passes `--bench`; plain words pick parts.
    let picked: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |part: &str| picked.is_empty() || picked.iter().any(|p| p == part);

    machine_facts().await;
    let mut measured_tokens = None;
    if run("overhead") {
        measured_tokens = Some(overhead().await);
    }
    if run("throughput") {
        throughput().await;
    }
    if run("inflight") {
        in_flight().await;
    }
    if run("tokens") {
        tokens(measured_tokens);
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
        Err(e) => println!("postgres: unreachable ({e}); {}", common::PG_HINT),
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

// ---------------------------------------------------------------------------------------------
// The batches of one job exactly as the worker produces them on the mock LLM

/// One batch: what the worker renders, what the mock answers, what gets checkpointed.
#[derive(Clone)]
struct Stage {
    range: BatchRange,
    brief: Brief,
    previous: Option<Week>,
    prompt: String,
    answer: String,
    result: BatchResult,
}

#[derive(Clone)]
struct Fixture {
    job: JobRequest,
    plan: Plan,
    stages: Vec<Stage>,
}

impl Fixture {
    fn new(weeks: u32) -> Self {
        let (_, body) = common::job(weeks, ROLE);
        let job = JobRequest::decode(body.to_string().as_bytes(), Some("application/json"))
            .expect("the harness's job message is valid");
        let profile = job.profile();
        let defaults = BatchSettings::default();
        let plan = Plan::new(&profile, weeks, defaults.batch_weeks);
        let mut stages: Vec<Stage> = Vec::with_capacity(plan.batches.len());
        for range in &plan.batches {
            let previous = stages.last().and_then(|s| s.result.weeks.last().cloned());
            let brief = Brief {
                profile: profile.clone(),
                duration_weeks: weeks,
                first_week: range.first,
                last_week: range.last,
                phases: plan.phases.clone(),
            };
            let prompt = prompt::render(&brief, previous.as_ref(), defaults.context_days, None, FORMAT);
            let answer = mock::answer(&prompt).expect("the mock answers a batch prompt");
            let weeks = parse::parse_answer(&answer).expect("the mock's answer parses");
            let weeks =
                check_weeks(weeks, range.weeks(), |n| plan.phase_of(n)).expect("the mock's weeks pass");
            let result = BatchResult {
                weeks,
                usage: Usage {
                    llm_calls: 1,
                    input_tokens: estimate_tokens(SYSTEM_PROMPT) + estimate_tokens(&prompt),
                    output_tokens: estimate_tokens(&answer),
                },
                outcome: "ok",
            };
            stages.push(Stage {
                range: *range,
                brief,
                previous,
                prompt,
                answer,
                result,
            });
        }
        Self { job, plan, stages }
    }

    /// The same job with every batch's weeks left out: the same transactions without the JSON.
    fn without_weeks(&self) -> Self {
        let mut fx = self.clone();
        for s in &mut fx.stages {
            s.result.weeks.clear();
        }
        fx
    }

    /// Bytes of JSON one job's writes carry into Postgres: batches, roadmap, completion event,
    /// and the rest (job request, plan, progress events).
    fn json_bytes(&self) -> [usize; 4] {
        let batches = self.stages.iter().map(|s| json_len(&s.result.weeks)).sum();
        let event = self.completed(&self.job, Utc::now());
        let total = self.stages.len() as u32;
        let progress: usize = (1..=total)
            .map(|done| json_len(&Progress::new(self.job.job_id, done, total)))
            .sum();
        [
            batches,
            json_len(&event.roadmap),
            json_len(&event),
            json_len(&self.job) + json_len(&self.plan) + progress,
        ]
    }

    fn completed(&self, job: &JobRequest, started_at: DateTime<Utc>) -> Completed {
        let roadmap_id = Uuid::new_v5(&job.job_id, b"roadmap");
        let mut usage = Usage::default();
        for s in &self.stages {
            usage += s.result.usage;
        }
        Completed {
            event: COMPLETED.into(),
            version: 1,
            event_id: Uuid::now_v7(),
            job_id: job.job_id,
            user_id: job.user_id.clone(),
            roadmap_id,
            duration_weeks: job.duration_weeks,
            batches: self.stages.len() as u32,
            fallback_batches: 0,
            usage,
            started_at,
            completed_at: Utc::now(),
            roadmap: Roadmap {
                roadmap_id,
                job_id: job.job_id,
                target_role: job.target_role.clone(),
                experience_level: job.experience_level,
                hours_per_week: job.hours_per_week,
                language: job.language.clone(),
                duration_weeks: job.duration_weeks,
                phases: self.plan.phases.clone(),
                weeks: self.stages.iter().flat_map(|s| s.result.weeks.clone()).collect(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plain loop: the worker's writes per job, nothing else

/// Time spent in each store call, summed.
#[derive(Debug, Default, Clone, Copy)]
struct WriteTimes {
    jobs: u32,
    claim: Duration,
    checkpoints: u32,
    checkpoint: Duration,
    complete: Duration,
}

impl WriteTimes {
    fn add(&mut self, other: Self) {
        self.jobs += other.jobs;
        self.claim += other.claim;
        self.checkpoints += other.checkpoints;
        self.checkpoint += other.checkpoint;
        self.complete += other.complete;
    }

    fn claim_ms(&self) -> f64 {
        ms(self.claim) / f64::from(self.jobs.max(1))
    }

    fn checkpoint_ms(&self) -> f64 {
        ms(self.checkpoint) / f64::from(self.checkpoints.max(1))
    }

    fn complete_ms(&self) -> f64 {
        ms(self.complete) / f64::from(self.jobs.max(1))
    }
}

/// One job's writes through the worker's own store functions, on a fresh job_id.
async fn plain_job(pool: &Pool, fx: &Fixture) -> WriteTimes {
    let mut job = fx.job.clone();
    job.job_id = Uuid::new_v4();
    let lease = Duration::from_secs(60);
    let mut times = WriteTimes {
        jobs: 1,
        ..Default::default()
    };
    let start = Instant::now();
    let claim = store::jobs::claim(pool, &job, &fx.plan, "bench-plain-loop", lease)
        .await
        .expect("claim");
    let Claim::Owned(owned) = claim else {
        panic!("a fresh job_id is always owned, got {claim:?}");
    };
    times.claim = start.elapsed();
    let total = fx.stages.len() as u32;
    for stage in &fx.stages {
        let start = Instant::now();
        store::batches::checkpoint(
            pool,
            job.job_id,
            owned.token,
            stage.range.index,
            total,
            &stage.result,
        )
        .await
        .expect("checkpoint");
        times.checkpoint += start.elapsed();
        times.checkpoints += 1;
    }
    let start = Instant::now();
    let event = fx.completed(&job, owned.started_at);
    store::roadmaps::complete(pool, owned.token, &event)
        .await
        .expect("complete");
    times.complete = start.elapsed();
    times
}

/// `jobs` plain jobs spread over `tasks` tasks; the wall time and the summed store times.
async fn plain_loop(pool: &Pool, fx: &Arc<Fixture>, jobs: usize, tasks: usize) -> (Duration, WriteTimes) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        let (pool, fx, next) = (pool.clone(), fx.clone(), next.clone());
        set.spawn(async move {
            let mut times = WriteTimes::default();
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                times.add(plain_job(&pool, &fx).await);
            }
            times
        });
    }
    let mut total = WriteTimes::default();
    while let Some(times) = set.join_next().await {
        total.add(times.expect("plain-loop task"));
    }
    (start.elapsed(), total)
}

/// A pool on `env`'s database (the worker has created and migrated it).
async fn plain_pool(env: &TestEnv, size: usize) -> Pool {
    let settings = DbSettings {
        database_url: env.database_url.parse().expect("a valid URL"),
        database_pool_size: size,
    };
    let pool = store::connect(&settings, "bench-plain-loop")
        .await
        .expect("connecting the plain loop");
    // Open every connection before the clock starts, as the worker's pool is warm by then.
    let mut warm = Vec::with_capacity(size);
    for _ in 0..size {
        warm.push(pool.get().await.expect("a pooled connection"));
    }
    drop(warm);
    pool
}

// ---------------------------------------------------------------------------------------------
// Part 1: worker overhead per batch

/// Returns the input tokens per job the mock server counted, for part 4's cross-check.
async fn overhead() -> f64 {
    let fx = Arc::new(Fixture::new(WEEKS));
    let per_job = fx.stages.len();
    let batches = (OVERHEAD_JOBS * per_job) as f64;
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::ZERO).await;
    for _ in 0..OVERHEAD_JOBS {
        env.publish(&common::job(WEEKS, ROLE).1).await;
    }
    let worker = env.start_worker(&["--worker-concurrency", "1"]).await;
    let metrics = worker.running.metrics.clone();
    let start = Instant::now();
    wait_completed(&metrics, OVERHEAD_JOBS, Duration::from_secs(120)).await;
    let wall = start.elapsed();
    let (llm_secs, llm_calls) = llm_time(&metrics);
    let batch_secs = metrics.batch_duration.get_sample_sum();
    let input_tokens = metrics.llm_tokens.with_label_values(&["input"]).get() as f64 / OVERHEAD_JOBS as f64;
    let ok = metrics.batches.with_label_values(&["ok"]).get();
    worker.stop().await;

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
    if ok as f64 != batches || llm_calls as f64 != batches {
        println!("    note: {ok} batches ok and {llm_calls} LLM calls for {batches} batches");
    }
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
        "      checkpoint tx      {checkpoint_b:8.3} ms/batch  (store::batches::checkpoint timed alone, \
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
                s.previous.as_ref(),
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

async fn wait_completed(metrics: &Metrics, jobs: usize, timeout: Duration) {
    let start = Instant::now();
    while metrics.jobs_completed.get() < jobs as u64 {
        assert!(
            start.elapsed() < timeout,
            "only {} of {jobs} jobs completed within {timeout:?}",
            metrics.jobs_completed.get()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Part 2: jobs per second, worker versus plain loop

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

/// CPU time (user + system) in clock ticks of this process, of Postgres and of RabbitMQ.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    this: u64,
    postgres: u64,
    rabbitmq: u64,
}

impl Cpu {
    fn now() -> Self {
        let this = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| stat_ticks(&s).map(|(_, t)| t))
            .unwrap_or(0);
        let (mut postgres, mut rabbitmq) = (0, 0);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let is_pid = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            let Some((comm, ticks)) = is_pid
                .then(|| std::fs::read_to_string(entry.path().join("stat")).ok())
                .flatten()
                .and_then(|s| stat_ticks(&s))
            else {
                continue;
            };
            match comm.as_str() {
                "postgres" => postgres += ticks,
                "beam.smp" => rabbitmq += ticks,
                _ => {}
            }
        }
        Self {
            this,
            postgres,
            rabbitmq,
        }
    }

    /// Milliseconds per job since `before` for each of the three (Linux's USER_HZ is 100).
    fn per_job_since(&self, before: &Self, jobs: usize) -> String {
        let ms = |a: u64, b: u64| a.saturating_sub(b) as f64 * 10.0 / jobs as f64;
        format!(
            "CPU ms/job: this process {:5.1}, postgres {:5.1}, rabbitmq {:4.1}",
            ms(self.this, before.this),
            ms(self.postgres, before.postgres),
            ms(self.rabbitmq, before.rabbitmq)
        )
    }
}

/// The command name and utime + stime of a `/proc/<pid>/stat` line.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    // After the command: state is field 3, utime 14 and stime 15 (proc(5)).
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

async fn throughput() {
    let fx = Arc::new(Fixture::new(WEEKS));
    let env = TestEnv::new().await;
    for _ in 0..THROUGHPUT_JOBS {
        env.publish(&common::job(WEEKS, ROLE).1).await;
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
        "    JSON written per job: batches {:.1} KiB + roadmap {:.1} KiB + completion event {:.1} KiB + \
         job, plan, progress {:.1} KiB = {:.1} KiB (the weeks go in three times)",
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

// ---------------------------------------------------------------------------------------------
// Part 3: jobs held in flight by one replica with a slow LLM, and its memory

async fn in_flight() {
    let env = TestEnv::with_mock(FaultPlan::default(), SLOW_LLM).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (concurrency, pool_size) = (IN_FLIGHT_CONCURRENCY.to_string(), IN_FLIGHT_POOL.to_string());
    let mut child = env.spawn_worker_process(&[
        ("WORKER_CONCURRENCY", &concurrency),
        ("DATABASE_POOL_SIZE", &pool_size),
        ("METRICS_ADDR", &addr),
    ]);
    let pid = child.id().expect("the replica is running");
    let http = reqwest::Client::new();
    common::eventually(Duration::from_secs(60), "the replica to be ready", || async {
        let response = http.get(format!("http://{addr}/readyz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = format!("/proc/{pid}/status");
    let idle_rss = proc_field(&status, "VmRSS:").unwrap_or(0);

    let start = Instant::now();
    for _ in 0..IN_FLIGHT_JOBS {
        env.publish(&common::job(WEEKS, ROLE).1).await;
    }
    let published = start.elapsed();
    let (mut peak, mut peak_at, mut rss_at_peak) = (0i64, Duration::ZERO, 0u64);
    while start.elapsed() < IN_FLIGHT_WINDOW {
        let in_flight = scrape(&http, &addr, "roadmap_jobs_in_flight")
            .await
            .unwrap_or(0.0) as i64;
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
        "[3] jobs in flight, one replica process: {IN_FLIGHT_JOBS} jobs x {WEEKS} weeks, mock LLM over HTTP \
         answering after {} ms, WORKER_CONCURRENCY {IN_FLIGHT_CONCURRENCY}, pool {IN_FLIGHT_POOL}",
        SLOW_LLM.as_millis()
    );
    println!(
        "    peak in flight       {peak} jobs, reached {:.2} s after the first publish (publishing took \
         {:.2} s)",
        peak_at.as_secs_f64(),
        published.as_secs_f64(),
    );
    let llm_only = SLOW_LLM.as_secs_f64() * f64::from(WEEKS.div_ceil(BatchSettings::default().batch_weeks));
    println!(
        "    completed            {completed} within {} s, {:.2} s per job on average ({llm_only:.0} s of it \
         waiting for the LLM)",
        IN_FLIGHT_WINDOW.as_secs(),
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

/// The value of an unlabelled series on the replica's /metrics.
async fn scrape(http: &reqwest::Client, addr: &str, series: &str) -> Option<f64> {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A `Name:   1234 kB` field of a /proc file, as a number.
fn proc_field(path: &str, name: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Part 4: input tokens per roadmap, window versus full history

fn tokens(measured_12_weeks: Option<f64>) {
    let defaults = BatchSettings::default();
    let system = estimate_tokens(SYSTEM_PROMPT);
    println!(
        "[4] input tokens per roadmap (llm::estimate_tokens = chars/4), BATCH_WEEKS {}, CONTEXT_DAYS {}",
        defaults.batch_weeks, defaults.context_days
    );
    println!(
        "    weeks  calls  window input  full-history input  full/window  largest call: window / full  \
         output (both)"
    );
    for weeks in [12, 26, 52] {
        let fx = Fixture::new(weeks);
        let (mut window, mut full, mut history, mut output) = (0, 0, 0, 0);
        let (mut window_max, mut full_max) = (0, 0);
        for s in &fx.stages {
            let call = system + estimate_tokens(&s.prompt);
            window += call;
            window_max = window_max.max(call);
            // In a chat the history already holds the previous days: no window in the prompt.
            let bare = estimate_tokens(&prompt::render(&s.brief, None, 0, None, FORMAT));
            let answer = estimate_tokens(&s.answer);
            let call = system + history + bare;
            full += call;
            full_max = full_max.max(call);
            history += bare + answer;
            output += answer;
        }
        println!(
            "    {weeks:5}  {:5}  {window:12}  {full:18}  {:10.1}x  {window_max:19} / {full_max:<6}  {output:13}",
            fx.stages.len(),
            full as f64 / window as f64
        );
    }
    let schema_tokens = estimate_tokens(&schema::batch_schema(1, defaults.batch_weeks).to_string());
    println!(
        "    not counted above, the same in both: the json-schema response_format, about {schema_tokens} \
         tokens per call"
    );
    if let Some(measured) = measured_12_weeks {
        println!("    cross-check: part 1's mock server counted {measured:.0} input tokens per 12-week job");
    }
    println!();
}

fn json_len<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |bytes| bytes.len())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
