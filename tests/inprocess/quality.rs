//! Promise: the content checks act where the ladder acts. An answer that repeats the batch
//! before, ignores its outline or under-plans the learner's hours is asked again once with its
//! problems; a good re-ask is stored clean, and a re-ask that fails too is stored with its
//! problems recorded: never failed, never replaced by template weeks. Off, they cost nothing.

use roadmap_worker::{
    domain::{
        BatchOutcome, BatchResult, Plan, Week, WeekSource,
        quality::{ContentProblem, ProblemKind},
    },
    pipeline::batch::Generator,
};
use testkit::scripted::{ScriptedLlm, Step};

use crate::fixture::{caller, generator, outlined_plan, profile};

/// Runs batch `index` of `plan` against `steps`, after `previous` (the batch before).
async fn run(
    generator: &Generator<ScriptedLlm>,
    plan: &Plan,
    index: usize,
    previous: &[Week],
) -> BatchResult {
    let mut hint = 3;
    let (result, _) = generator
        .batch(
            &profile(),
            plan,
            plan.batches[index],
            previous,
            &mut hint,
            &caller(),
        )
        .await
        .expect("a batch");
    result
}

fn kinds(result: &BatchResult) -> Vec<ProblemKind> {
    result.quality.problems.iter().map(ContentProblem::kind).collect()
}

/// A 12-week outlined plan (phases of three weeks, batches of two and one) and its first batch
/// as a good model writes it.
async fn first_batch() -> (Plan, Vec<Week>) {
    let plan = crate::fixture::plan_in_batches_of(12, 2);
    let (generator, _) = generator([]);
    let first = run(&generator, &plan, 0, &[]).await;
    assert_eq!(
        first.quality,
        Default::default(),
        "a good batch has no content problem"
    );
    (plan, first.weeks)
}

#[tokio::test(start_paused = true)]
async fn each_content_fault_is_found_and_the_re_ask_fixes_it() {
    let (plan, previous) = first_batch().await;
    for (step, kind) in [
        (Step::RepeatTasks, ProblemKind::RepeatedTasks),
        (Step::IgnoreOutline, ProblemKind::OffOutline),
        (Step::UnderPlan(0.3), ProblemKind::HoursOffPlan),
    ] {
        // The first answer misbehaves; the re-ask is answered well.
        let (model, llm) = generator([step.clone()]);
        let result = run(&model, &plan, 1, &previous).await;
        assert_eq!(result.outcome, BatchOutcome::Reasked, "{step:?}");
        assert!(
            result.quality.reasked && result.quality.problems.is_empty(),
            "{step:?}"
        );
        let reasks: Vec<bool> = llm.calls().iter().map(|c| c.reask).collect();
        assert_eq!(reasks, [false, true], "{step:?}: one re-ask, with the problems");
        assert!(result.weeks.iter().all(|w| w.source == WeekSource::Llm));

        // Both answers misbehave: the second is stored with its problems, not templated.
        let (model, llm) = generator([step.clone(), step.clone()]);
        let result = run(&model, &plan, 1, &previous).await;
        assert_eq!(llm.calls().len(), 2, "{step:?}: no more than one re-ask");
        assert_eq!(result.outcome, BatchOutcome::Reasked, "{step:?}");
        assert_eq!(result.fallback_weeks(), 0, "{step:?}");
        let found = kinds(&result);
        assert!(
            !found.is_empty() && found.iter().all(|k| *k == kind),
            "{step:?}: {found:?}"
        );
        let metric = format!("roadmap_quality_problems_total{{kind=\"{}\"}}", kind.as_str());
        let rendered = model.metrics().render();
        assert!(
            rendered.contains(&format!("{metric} {}", found.len())),
            "{step:?}: {metric} in {rendered}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_repeat_within_the_first_batch_is_found_too() {
    let plan = outlined_plan(12);
    let (generator, _) = generator([Step::RepeatTasks, Step::RepeatTasks]);
    let result = run(&generator, &plan, 0, &[]).await;
    // Weeks 2 and 3 are copies of week 1.
    let weeks: Vec<u32> = result
        .quality
        .problems
        .iter()
        .map(|p| match p {
            ContentProblem::RepeatedTasks { week, .. } => *week,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(weeks, [2, 3]);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_answer_spends_the_re_ask_and_flawed_content_is_then_kept() {
    let (plan, previous) = first_batch().await;
    let (generator, llm) = generator([Step::InvalidJson, Step::RepeatTasks]);
    let result = run(&generator, &plan, 1, &previous).await;
    assert_eq!(llm.calls().len(), 2);
    assert_eq!(result.fallback_weeks(), 0);
    assert!(!result.quality.reasked, "the re-ask was for the invalid answer");
    assert_eq!(kinds(&result), [ProblemKind::RepeatedTasks]);
}

/// A content re-ask that brings nothing usable (not JSON, or the call gives up) does not cost
/// the model's weeks: the first answer's are kept with their problems, no template week.
#[tokio::test(start_paused = true)]
async fn a_re_ask_that_brings_nothing_keeps_the_flawed_answer() {
    let (plan, previous) = first_batch().await;
    for failed in [Step::InvalidJson, Step::WrongWeeks] {
        let (generator, llm) = generator([Step::RepeatTasks, failed.clone()]);
        let result = run(&generator, &plan, 1, &previous).await;
        assert_eq!(llm.calls().len(), 2, "{failed:?}");
        assert_eq!(result.fallback_weeks(), 0, "{failed:?}: no template week");
        assert!(result.weeks.iter().all(|w| w.source == WeekSource::Llm));
        assert_eq!(result.outcome, BatchOutcome::Reasked, "{failed:?}");
        assert!(result.quality.reasked, "{failed:?}");
        assert_eq!(kinds(&result), [ProblemKind::RepeatedTasks], "{failed:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn with_the_checks_off_content_faults_cost_no_call() {
    let (plan, previous) = first_batch().await;
    let (generator, llm) = crate::fixture::generator_with([Step::RepeatTasks, Step::UnderPlan(0.3)], |s| {
        s.quality_checks = false
    });
    let result = run(&generator, &plan, 1, &previous).await;
    assert_eq!(result.outcome, BatchOutcome::Ok);
    assert_eq!(llm.calls().len(), 1);
    assert_eq!(result.quality, Default::default());
}
