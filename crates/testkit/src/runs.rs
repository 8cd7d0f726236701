//! One job run against a scripted mock LLM, with what the worker asked and stored: shared by the
//! ladder tests and the hostile-provider tests.

use std::time::Duration;

use mock_llm::{Fault, FaultPlan};
use roadmap_worker::domain::event::Completed;

use super::{ALL_BATCHES, TestEnv, job};

pub const PROVIDERS: [&str; 2] = ["openai", "gemini"];

#[derive(Debug)]
pub struct Run {
    pub completed: Completed,
    /// The week ranges of the batch requests the mock received, in order.
    pub asked: Vec<(u32, u32)>,
    /// Outline requests the mock received.
    pub outlines: usize,
    /// The structured-output mode of each batch request.
    pub formats: Vec<String>,
    /// Each stored batch's outcome and LLM calls (folded away at completion, read from the
    /// copies [`TestEnv::keep_folded_batches`] keeps).
    pub batches: Vec<(String, i32)>,
    /// The worker's /metrics text at the end of the run.
    pub metrics: String,
}

impl Run {
    pub fn outcomes(&self) -> Vec<&str> {
        self.batches.iter().map(|(o, _)| o.as_str()).collect()
    }

    /// The value of one metric series, 0 if it is missing.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Runs one job of `weeks` weeks against the mock with `script` (faults of its batch requests),
/// and returns what happened. Phases are written one at a time, so that the script's faults
/// fall on the batches in week order.
pub async fn run_job(provider: &str, script: Vec<Fault>, weeks: u32, extra: &[&str]) -> Run {
    let env = TestEnv::with_plan(FaultPlan {
        script,
        ..Default::default()
    })
    .await;
    let mut args = vec!["--job-parallelism", "1"];
    args.extend_from_slice(extra);
    let worker = env.start_worker_for(provider, &args).await;
    env.keep_folded_batches().await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(weeks, "Cloud Engineer");
    env.publish(&body).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{provider}: {}", end.body);
    let completed: Completed = serde_json::from_value(end.body).unwrap();
    let numbers: Vec<u32> = completed.roadmap.weeks.iter().map(|w| w.number).collect();
    assert_eq!(numbers, (1..=weeks).collect::<Vec<_>>(), "{provider}");
    assert!(
        completed.roadmap.weeks.iter().all(|w| w.days.len() == 7),
        "{provider}"
    );
    let db = env.db().await;
    let batches = db
        .query(
            &format!(
                "SELECT batch->>'outcome', (batch->>'llm_calls')::int FROM {ALL_BATCHES}
                 ORDER BY (batch->>'batch_index')::int"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let requests = env.mock.requests();
    let outlines = requests.iter().filter(|r| r.outline).count();
    let batch_requests = requests.iter().filter(|r| !r.outline);
    let formats = batch_requests.clone().map(|r| r.format.clone()).collect();
    let asked = batch_requests.map(|r| (r.first_week, r.last_week)).collect();
    let metrics = worker.running.metrics.render();
    worker.stop().await;
    env.cleanup().await;
    Run {
        completed,
        asked,
        outlines,
        formats,
        batches,
        metrics,
    }
}
