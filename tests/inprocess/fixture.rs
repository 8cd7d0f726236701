//! What the in-process tests share: a generator over a scripted model, a job's profile and plan.

use std::time::Duration;

use roadmap_worker::{
    config::{Prices, ResponseFormat},
    domain::{BatchRange, ExperienceLevel, JobProfile, Plan},
    metrics::Metrics,
    pipeline::{
        self,
        batch::{Caller, Generator, LadderSettings},
        budget::Budget,
        ladder::LadderPolicy,
    },
};
use testkit::scripted::{ScriptedLlm, Step};

/// The longest a retry waits in these tests (a server's `Retry-After` is capped at it).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

pub fn profile() -> JobProfile {
    JobProfile {
        target_role: "Data Engineer".into(),
        experience_level: ExperienceLevel::Intermediate,
        hours_per_week: 8,
        focus_areas: vec!["SQL".into()],
        language: "en".into(),
    }
}

/// A plan of `weeks` weeks in batches of three, with the template's phases.
pub fn plan(weeks: u32) -> Plan {
    pipeline::plan(&profile(), weeks, 3)
}

/// A generator whose model follows `steps`, retrying twice, with no budget.
pub fn generator(steps: impl IntoIterator<Item = Step>) -> (Generator<ScriptedLlm>, ScriptedLlm) {
    generator_with(steps, |_| {})
}

/// [`generator`] with its settings changed by `change`.
pub fn generator_with(
    steps: impl IntoIterator<Item = Step>,
    change: impl FnOnce(&mut LadderSettings),
) -> (Generator<ScriptedLlm>, ScriptedLlm) {
    let llm = ScriptedLlm::new(steps);
    let mut settings = LadderSettings {
        max_output_tokens: 8192,
        temperature: 0.7,
        format: ResponseFormat::JsonSchema,
        context_days: 2,
        policy: LadderPolicy::new(2, MAX_RETRY_DELAY),
        prices: Prices::default(),
        quality_checks: true,
    };
    change(&mut settings);
    let generator = Generator::new(llm.clone(), settings, Metrics::new(), Budget::default());
    (generator, llm)
}

pub fn caller() -> Caller {
    Caller {
        cache_key: "job-1".into(),
        bulk: false,
    }
}

/// The plan's first batch (weeks 1-3).
pub fn first_batch(plan: &Plan) -> BatchRange {
    plan.batches[0]
}

/// A `weeks`-week plan cut within the template outline's phases: one chain per phase.
pub fn outlined_plan(weeks: u32) -> Plan {
    plan_in_batches_of(weeks, 3)
}

/// [`outlined_plan`] in batches of at most `batch_weeks`.
pub fn plan_in_batches_of(weeks: u32, batch_weeks: u32) -> Plan {
    use roadmap_worker::{
        domain::{Outline, WeekSource},
        template,
    };
    let (phases, outline) = template::outline(&profile(), weeks);
    let outline = Outline {
        weeks: outline,
        source: WeekSource::Llm,
        usage: Default::default(),
    };
    Plan::outlined(phases, outline, weeks, batch_weeks)
}
