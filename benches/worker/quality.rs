//! Part 9: what the content checks catch and cost (only when asked for: `-- quality`).
//!
//! Twenty 12-week jobs through one worker in this process, against the mock LLM over HTTP
//! answering a batch request with the tasks of the batch before it (its `repeat_tasks` fault)
//! at a rate of 30%, once with `QUALITY_CHECKS=off` and once with `on`. `BATCH_WEEKS=2`, so
//! that each of the template outline's 3-week phases is two batches and has a batch boundary
//! inside it, where the previous batch's tasks are in the prompt to be copied (a phase's first
//! batch is written beside the phase before it, which it never sees; there the fault copies
//! its first week into the next).
//!
//! Counted on the roadmaps as completed: weeks that are copies (more than three quarters of
//! their tasks near-copies of the batch before or of their own batch's earlier weeks, the
//! checks' own measure), the tasks of a batch that are near-copies of the previous batch's
//! (routine tasks such as "Write a one-page summary" recur in a good roadmap, so this is never
//! 0), and the LLM calls, to see what the re-asks cost.

use std::time::Duration;

use mock_llm::{Fault, FaultPlan, RatedFault};
use roadmap_worker::domain::{
    Week,
    event::Completed,
    quality::{REPEATED_SHARE, repeated_tasks},
};
use testkit::TestEnv;

use crate::fixture::ROLE;

const JOBS: usize = 20;
const WEEKS: u32 = 12;
const BATCH_WEEKS: u32 = 2;
const RATE: f64 = 0.3;

pub async fn quality() {
    println!(
        "[9] quality: {JOBS} jobs of {WEEKS} weeks, BATCH_WEEKS {BATCH_WEEKS}, mock LLM repeating the batch \
         before at {:.0}%",
        RATE * 100.0
    );
    for checks in ["off", "on"] {
        let plan = FaultPlan {
            rates: vec![RatedFault {
                rate: RATE,
                fault: Fault::RepeatTasks,
            }],
            seed: 9,
            ..Default::default()
        };
        let env = TestEnv::with_plan(plan).await;
        let batch_weeks = BATCH_WEEKS.to_string();
        let worker = env
            .start_worker(&["--quality-checks", checks, "--batch-weeks", &batch_weeks])
            .await;
        let mut events = env.watcher().await;
        let mut ids = Vec::new();
        for _ in 0..JOBS {
            let (job_id, body) = testkit::job(WEEKS, ROLE);
            env.publish(&body).await;
            ids.push(job_id);
        }
        let mut tally = Tally::default();
        for job_id in ids {
            let end = events
                .wait_for_end(job_id, Duration::from_secs(120), |_| {})
                .await
                .expect("the job ends");
            let completed: Completed = serde_json::from_value(end.body).expect("a completion event");
            tally.count(&completed);
        }
        println!(
            "    QUALITY_CHECKS={checks:<3}  copied weeks {:>3} of {}   tasks repeated across batch \
             boundaries {:>4} of {}   LLM calls {} ({:.2} per job, batches re-asked for content {})",
            tally.copied_weeks,
            JOBS as u32 * WEEKS,
            tally.boundary_repeats,
            tally.boundary_tasks,
            tally.calls,
            f64::from(tally.calls) / JOBS as f64,
            tally.reasked,
        );
        worker.stop().await;
        env.cleanup().await;
    }
    println!();
}

#[derive(Debug, Default)]
struct Tally {
    copied_weeks: u32,
    boundary_repeats: u32,
    boundary_tasks: u32,
    calls: u32,
    reasked: u32,
}

impl Tally {
    fn count(&mut self, completed: &Completed) {
        self.calls += completed.usage.llm_calls;
        self.reasked += completed.quality.as_ref().map_or(0, |q| q.reasked_batches);
        // The batches as the worker cut them: within each phase, batches of at most BATCH_WEEKS
        // weeks of even sizes.
        let plan = roadmap_worker::domain::Plan::outlined(
            completed.roadmap.phases.clone(),
            roadmap_worker::domain::Outline {
                weeks: Vec::new(),
                source: roadmap_worker::domain::WeekSource::Llm,
                usage: Default::default(),
            },
            WEEKS,
            BATCH_WEEKS,
        );
        let weeks = &completed.roadmap.weeks;
        let slice = |first: u32, last: u32| &weeks[first as usize - 1..last as usize];
        let mut before: &[Week] = &[];
        for range in &plan.batches {
            let batch = slice(range.first, range.last);
            for (i, week) in batch.iter().enumerate() {
                let earlier: Vec<Week> = before.iter().chain(&batch[..i]).cloned().collect();
                let (repeated, tasks, _) = repeated_tasks(week, &earlier);
                if f64::from(repeated) > REPEATED_SHARE * f64::from(tasks) {
                    self.copied_weeks += 1;
                }
                if !before.is_empty() {
                    let (across, tasks, _) = repeated_tasks(week, before);
                    self.boundary_repeats += across;
                    self.boundary_tasks += tasks;
                }
            }
            before = batch;
        }
    }
}
