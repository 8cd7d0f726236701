//! The job the parts send, and its batches exactly as the worker produces them on the mock LLM:
//! the prompts it renders, the answers the mock gives, the weeks it checkpoints.

use chrono::{DateTime, Utc};
use roadmap_worker::{
    config::{BatchSettings, ResponseFormat},
    domain::{
        BatchOutcome, BatchRange, BatchResult, JobRequest, Plan, Week,
        brief::Brief,
        event::{Completed, Progress, Usage},
        roadmap::check_weeks,
    },
    llm::{estimate_tokens, mock},
    pipeline::{
        self,
        job::completion_event,
        parse,
        prompt::{self, Context, SYSTEM_PROMPT},
    },
};

/// Every job of parts 1–3 has this many weeks (4 batches at the default BATCH_WEEKS).
pub const WEEKS: u32 = 12;
pub const ROLE: &str = "Backend Developer";
/// What the worker sends by default (LLM_RESPONSE_FORMAT).
pub const FORMAT: ResponseFormat = ResponseFormat::JsonSchema;

/// One batch: what the worker renders, what the mock answers, what gets checkpointed.
#[derive(Clone)]
pub struct Stage {
    pub range: BatchRange,
    pub brief: Brief,
    /// The batch before, as the worker carries it into the prompt.
    pub previous: Vec<Week>,
    pub prompt: String,
    pub answer: String,
    pub result: BatchResult,
}

#[derive(Clone)]
pub struct Fixture {
    pub job: JobRequest,
    pub plan: Plan,
    pub stages: Vec<Stage>,
}

impl Fixture {
    pub fn new(weeks: u32) -> Self {
        let (_, body) = testkit::job(weeks, ROLE);
        let job = JobRequest::decode(body.to_string().as_bytes(), Some("application/json"))
            .expect("the harness's job message is valid");
        let profile = job.profile();
        let defaults = BatchSettings::default();
        let plan = pipeline::plan(&profile, weeks, defaults.batch_weeks);
        let mut stages: Vec<Stage> = Vec::with_capacity(plan.batches.len());
        for range in &plan.batches {
            let previous = stages.last().map(|s| s.result.weeks.clone()).unwrap_or_default();
            let brief = Brief {
                profile: profile.clone(),
                duration_weeks: weeks,
                first_week: range.first,
                last_week: range.last,
                phases: plan.phases.clone(),
            };
            let prompt = prompt::render(
                &brief,
                context(&previous),
                &[],
                defaults.context_days,
                None,
                FORMAT,
            );
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
                    cached_input_tokens: 0,
                    cost_nanos: 0,
                },
                outcome: BatchOutcome::Ok,
                quality: Default::default(),
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
    pub fn without_weeks(&self) -> Self {
        let mut fx = self.clone();
        for s in &mut fx.stages {
            s.result.weeks.clear();
        }
        fx
    }

    /// Bytes of JSON one job's writes carry into Postgres: batches, roadmap, completion event,
    /// and the rest (job request, plan, progress events).
    pub fn json_bytes(&self) -> [usize; 4] {
        let batches = self.stages.iter().map(|s| json_len(&s.result.weeks)).sum();
        let event = self.completed(&self.job, Utc::now());
        let total = self.stages.len() as u32;
        let progress: usize = (1..=total)
            .map(|done| json_len(&Progress::new(self.job.job_id, done, total)))
            .sum();
        // The outbox row of the completion event holds it without the roadmap (the relay joins
        // the roadmap back in when publishing).
        let mut stored_event = serde_json::to_value(&event).expect("events serialise");
        if let Some(obj) = stored_event.as_object_mut() {
            obj.remove("roadmap");
        }
        [
            batches,
            json_len(&event.roadmap),
            json_len(&stored_event),
            json_len(&self.job) + json_len(&self.plan) + progress,
        ]
    }

    pub fn completed(&self, job: &JobRequest, started_at: DateTime<Utc>) -> Completed {
        let mut usage = Usage::default();
        for s in &self.stages {
            usage += s.result.usage;
        }
        let weeks = self.stages.iter().flat_map(|s| s.result.weeks.clone()).collect();
        let mut event = completion_event(job, &self.plan, weeks, usage, 0, started_at);
        event.batches = self.stages.len() as u32;
        event
    }
}

fn json_len<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |bytes| bytes.len())
}

/// What a prompt carries of the batch before: nothing for the first.
pub fn context(previous: &[Week]) -> Context<'_> {
    match previous {
        [] => Context::Start,
        before => Context::Days { before, written: &[] },
    }
}
