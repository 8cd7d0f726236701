//! Part 6: the fleet's provider budget against a provider quota (run alone: `-- budget`).
//!
//! **Three replicas, one quota.** Three worker *binaries* share one database, against the mock
//! LLM of this process holding a tokens-per-minute quota (`mock-llm --tpm`) of a third of what
//! the replicas ask at full speed (`WORKER_CONCURRENCY=2`, `JOB_PARALLELISM=1`, a 1 s LLM:
//! about 6 calls a second). 60 jobs of 12 weeks are published, once with no budget (each
//! replica retries its 429s alone) and once with `LLM_TPM_LIMIT` at the quota. Printed: the
//! share of requests answered 429, the tokens used per minute against the limit (overall, and
//! after the first minute, when the minute's burst allowance is spent), fallback batches, and
//! the wall time.

use std::time::{Duration, Instant};

use mock_llm::{FaultPlan, QuotaSettings};

use crate::{
    fixture::ROLE,
    util::{scrape, spawn_replica},
};
use testkit::TestEnv;

const JOBS: usize = 60;
const WEEKS: u32 = 12;
const REPLICAS: usize = 3;
/// A third of the replicas' demand at full speed (about 6 calls of 5,000 tokens a second).
const TPM: u64 = 600_000;
const LLM: Duration = Duration::from_secs(1);

pub async fn budget() {
    println!(
        "[6] provider budget: {REPLICAS} replicas, {JOBS} jobs x {WEEKS} weeks, mock LLM answering after {} ms \
         with a quota of {TPM} tokens/min (a third of the replicas' demand)",
        LLM.as_millis()
    );
    for budgeted in [false, true] {
        run(budgeted).await;
    }
    println!();
}

async fn run(budgeted: bool) {
    let quota = QuotaSettings {
        rpm: None,
        tpm: Some(TPM),
    };
    let env = TestEnv::with_quota(FaultPlan::default(), LLM, quota).await;
    let _sink = env.event_sink().await;
    let tpm = TPM.to_string();
    let mut settings = vec![("WORKER_CONCURRENCY", "2"), ("JOB_PARALLELISM", "1")];
    if budgeted {
        settings.push(("LLM_TPM_LIMIT", &tpm));
    }
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(spawn_replica(&env, &settings).await);
    }
    let start = Instant::now();
    for _ in 0..JOBS {
        env.publish(&testkit::job(WEEKS, ROLE).1).await;
    }
    // The mock's counts every second, for the tokens used after the first minute.
    let mut at_minute = None;
    loop {
        let mut done = 0.0;
        for (_, addr, http) in &replicas {
            done += scrape(http, addr, "roadmap_jobs_completed_total")
                .await
                .unwrap_or(0.0);
        }
        if at_minute.is_none() && start.elapsed() >= Duration::from_secs(60) {
            at_minute = Some((start.elapsed(), env.mock.quota_counts()));
        }
        if done as usize >= JOBS {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "only {done} of {JOBS} jobs completed"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let wall = start.elapsed();
    let counts = env.mock.quota_counts();
    let mut fallbacks = 0.0;
    for (_, addr, http) in &replicas {
        fallbacks += scrape(http, addr, "roadmap_batches_total{outcome=\"fallback\"}")
            .await
            .unwrap_or(0.0);
    }
    for (child, _, _) in &mut replicas {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    env.cleanup().await;
    let minutes = wall.as_secs_f64() / 60.0;
    let requests = counts.admitted + counts.refused;
    let steady = at_minute.map(|(at, then)| {
        (counts.tokens_used - then.tokens_used) as f64 / ((wall - at).as_secs_f64() / 60.0)
    });
    println!(
        "    {}: {:.0} s, {requests} requests, {} answered 429 ({:.1}%), {fallbacks} fallback batches",
        if budgeted {
            "LLM_TPM_LIMIT at the quota"
        } else {
            "no budget        "
        },
        wall.as_secs_f64(),
        counts.refused,
        100.0 * counts.refused as f64 / requests.max(1) as f64,
    );
    println!(
        "      tokens used {} = {:.0}/min overall ({:.0}% of the limit){}",
        counts.tokens_used,
        counts.tokens_used as f64 / minutes,
        100.0 * counts.tokens_used as f64 / minutes / TPM as f64,
        steady.map_or_else(String::new, |s| format!(
            ", {s:.0}/min after the first minute ({:.0}% of the limit)",
            100.0 * s / TPM as f64
        )),
    );
}
