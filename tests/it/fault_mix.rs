//! Promise: under a realistic mix of provider faults every job still completes with a valid
//! roadmap. Prints the fallback ratio, calls and tokens per job of the run (quoted in reports).

use std::{collections::HashMap, time::Duration};

use mock_llm::{Fault, FaultPlan, RatedFault};
use roadmap_worker::domain::event::Completed;
use uuid::Uuid;

use testkit::{TestEnv, job};

const JOBS: usize = 50;

fn mixed_faults() -> FaultPlan {
    let rated = |rate, fault| RatedFault { rate, fault };
    FaultPlan {
        script: vec![],
        // 40% of requests fail in one way or another.
        rates: vec![
            rated(
                0.10,
                Fault::Status {
                    code: 503,
                    retry_after: None,
                },
            ),
            rated(
                0.06,
                Fault::Status {
                    code: 429,
                    retry_after: Some(0.05),
                },
            ),
            rated(
                0.04,
                Fault::Status {
                    code: 500,
                    retry_after: None,
                },
            ),
            rated(0.06, Fault::Truncate { tokens: 2500 }),
            rated(0.05, Fault::InvalidJson),
            rated(0.04, Fault::WrongWeeks),
            rated(0.03, Fault::Fences),
            rated(0.02, Fault::Slow { ms: 300 }),
        ],
        seed: 2026,
        ..FaultPlan::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_jobs_with_forty_percent_faults_all_complete() {
    let env = TestEnv::with_plan(mixed_faults()).await;
    let worker = env.start_worker(&["--worker-concurrency", "16"]).await;
    let mut events = env.watcher().await;
    let mut pending: HashMap<Uuid, u32> = HashMap::new();
    for i in 0..JOBS {
        let weeks = 4 + (i as u32 * 7) % 9; // 4..=12 weeks
        let (job_id, body) = job(weeks, &format!("Role {i}"));
        pending.insert(job_id, weeks);
        env.publish(&body).await;
    }
    let mut done = Vec::new();
    while !pending.is_empty() {
        let event = events
            .next(Duration::from_secs(120))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{} jobs never finished", pending.len()));
        if ["roadmap.accepted", "roadmap.progress"].contains(&event.routing_key.as_str()) {
            continue;
        }
        assert_eq!(event.routing_key, "roadmap.completed", "{}", event.body);
        let completed: Completed = serde_json::from_value(event.body).unwrap();
        let weeks = pending
            .remove(&completed.job_id)
            .expect("one terminal event per job");
        let numbers: Vec<u32> = completed.roadmap.weeks.iter().map(|w| w.number).collect();
        assert_eq!(numbers, (1..=weeks).collect::<Vec<_>>());
        assert!(completed.roadmap.weeks.iter().all(|w| w.days.len() == 7));
        done.push(completed);
    }
    // Faults fall on batch requests; the outline requests are left out of the rate.
    let requests: Vec<_> = env.mock.requests().into_iter().filter(|r| !r.outline).collect();
    let faulted = requests.iter().filter(|r| r.fault.is_some()).count();
    let batches: u32 = done.iter().map(|c| c.batches).sum();
    let fallback: u32 = done.iter().map(|c| c.fallback_batches).sum();
    let calls: u32 = done.iter().map(|c| c.usage.llm_calls).sum();
    let input: u64 = done.iter().map(|c| c.usage.input_tokens).sum();
    let output: u64 = done.iter().map(|c| c.usage.output_tokens).sum();
    let n = done.len() as f64;
    println!(
        "fault mix: {}/{JOBS} completed; {} requests, {faulted} with an injected fault ({:.0}%); \
         fallback batches {fallback}/{batches} ({:.1}%); {:.2} LLM calls/job (no faults: {:.2}); \
         {:.0} input + {:.0} output tokens/job",
        done.len(),
        requests.len(),
        100.0 * faulted as f64 / requests.len() as f64,
        100.0 * fallback as f64 / batches as f64,
        calls as f64 / n,
        batches as f64 / n,
        input as f64 / n,
        output as f64 / n,
    );
    assert_eq!(done.len(), JOBS);
    assert!(
        faulted * 100 / requests.len() >= 30,
        "the fault rate was meant to be about 40%"
    );
    worker.stop().await;
    env.cleanup().await;
}
