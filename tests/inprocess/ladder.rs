//! Promise: each rung of the ladder, for one batch, as the model misbehaves: retries with
//! backoff that honours the server's hint up to its cap, a cut answer salvaged and the rest asked
//! in smaller requests, an invalid answer asked again once with its problems, and template weeks
//! for what is still missing. A provider that refuses everything is an error, not a fallback.

use std::time::Duration;

use roadmap_worker::{
    domain::{BatchOutcome, BatchResult, WeekSource},
    pipeline::batch::ProviderFault,
};
use testkit::scripted::{ScriptedLlm, Step};

use crate::fixture::{MAX_RETRY_DELAY, caller, first_batch, generator, plan, profile};

/// Runs the first batch (weeks 1-3) of a 6-week plan against `steps`, asking at most
/// `span_hint` weeks at once; returns the result, the hint after it, and the model.
async fn run(steps: Vec<Step>, span_hint: u32) -> (Result<BatchResult, ProviderFault>, u32, ScriptedLlm) {
    let (generator, llm) = generator(steps);
    let plan = plan(6);
    let mut hint = span_hint;
    let result = generator
        .batch(&profile(), &plan, first_batch(&plan), &[], &mut hint, &caller())
        .await
        .map(|(result, _admission)| result);
    (result, hint, llm)
}

fn sources(result: &BatchResult) -> Vec<(u32, WeekSource)> {
    result.weeks.iter().map(|w| (w.number, w.source)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_good_answer_is_one_call() {
    let (result, hint, llm) = run(vec![], 3).await;
    let result = result.expect("a batch");
    assert_eq!(result.outcome, BatchOutcome::Ok);
    assert_eq!(
        sources(&result),
        [(1, WeekSource::Llm), (2, WeekSource::Llm), (3, WeekSource::Llm)]
    );
    assert_eq!(llm.asked(), [(1, 3)]);
    assert_eq!(result.usage.llm_calls, 1);
    assert_eq!(hint, 3, "a batch that was never cut teaches nothing");
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_honouring_retry_after_up_to_the_cap() {
    let steps = vec![
        Step::unavailable(Some(Duration::from_millis(1500))),
        Step::unavailable(Some(Duration::from_secs(3600))),
    ];
    let (result, _, llm) = run(steps, 3).await;
    let result = result.expect("a batch");
    assert_eq!(result.outcome, BatchOutcome::Retried);
    assert_eq!(result.usage.llm_calls, 3);
    assert!(result.weeks.iter().all(|w| w.source == WeekSource::Llm));
    let calls = llm.calls();
    let first_wait = calls[1].at - calls[0].at;
    let second_wait = calls[2].at - calls[1].at;
    assert!(
        first_wait >= Duration::from_millis(1500),
        "Retry-After 1.5 s was not honoured: waited {first_wait:?}"
    );
    // An hour's hint is capped: the planned delay (jittered, so at most twice the cap) stands.
    assert!(
        second_wait <= 2 * MAX_RETRY_DELAY,
        "Retry-After 3600 s was not capped at {MAX_RETRY_DELAY:?}: waited {second_wait:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_spent_fill_the_batch_from_the_template() {
    let steps = vec![Step::unavailable(None); 3];
    let (result, _, llm) = run(steps, 3).await;
    let result = result.expect("a batch, from the template");
    assert_eq!(result.outcome, BatchOutcome::Fallback);
    assert_eq!(result.fallback_weeks(), 3);
    assert_eq!(result.usage.llm_calls, 3, "one try and two retries");
    assert_eq!(llm.asked(), [(1, 3), (1, 3), (1, 3)]);
}

#[tokio::test(start_paused = true)]
async fn a_cut_answer_keeps_its_complete_weeks_and_asks_the_rest_in_smaller_requests() {
    let (result, hint, llm) = run(vec![Step::CutAfter { weeks: 1 }], 3).await;
    let result = result.expect("a batch");
    assert_eq!(result.outcome, BatchOutcome::Truncated);
    assert_eq!(result.fallback_weeks(), 0);
    assert_eq!(llm.asked(), [(1, 3), (2, 2), (3, 3)]);
    assert_eq!(hint, 1, "the job's later batches start from what fits");
}

#[tokio::test(start_paused = true)]
async fn a_cut_with_no_complete_week_halves_the_request() {
    let (result, hint, llm) = run(vec![Step::CutAfter { weeks: 0 }], 3).await;
    let result = result.expect("a batch");
    assert_eq!(result.outcome, BatchOutcome::Truncated);
    assert_eq!(llm.asked(), [(1, 3), (1, 1), (2, 2), (3, 3)]);
    assert_eq!(hint, 1);
}

#[tokio::test(start_paused = true)]
async fn a_week_too_long_for_any_answer_comes_from_the_template_alone() {
    // Cut as three weeks, as one, and as one again when asked once more.
    let steps = vec![Step::CutAfter { weeks: 0 }; 3];
    let (result, _, llm) = run(steps, 3).await;
    let result = result.expect("a batch");
    assert_eq!(result.outcome, BatchOutcome::Fallback);
    assert_eq!(
        sources(&result),
        [
            (1, WeekSource::Fallback),
            (2, WeekSource::Llm),
            (3, WeekSource::Llm)
        ]
    );
    assert_eq!(llm.asked(), [(1, 3), (1, 1), (1, 1), (2, 2), (3, 3)]);
    let reasks: Vec<bool> = llm.calls().iter().map(|c| c.reask).collect();
    assert_eq!(reasks, [false, false, true, false, false]);
}

#[tokio::test(start_paused = true)]
async fn a_week_cut_off_alone_is_asked_again_once_told_why() {
    // A small model ran on in a loop to the limit; a new sample of the same week fits.
    let steps = vec![Step::CutAfter { weeks: 0 }, Step::CutAfter { weeks: 0 }];
    let (result, _, llm) = run(steps, 3).await;
    let result = result.expect("a batch");
    assert_eq!(result.outcome, BatchOutcome::Reasked);
    assert_eq!(result.fallback_weeks(), 0);
    assert_eq!(llm.asked(), [(1, 3), (1, 1), (1, 1), (2, 2), (3, 3)]);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_answer_is_asked_again_once_with_its_problems() {
    let (result, _, llm) = run(vec![Step::InvalidJson], 3).await;
    let result = result.expect("a batch");
    assert_eq!(result.outcome, BatchOutcome::Reasked);
    assert_eq!(result.fallback_weeks(), 0);
    let reasks: Vec<bool> = llm.calls().iter().map(|c| c.reask).collect();
    assert_eq!(reasks, [false, true]);
}

#[tokio::test(start_paused = true)]
async fn an_answer_still_invalid_after_the_re_ask_is_replaced_by_template_weeks() {
    let (result, _, llm) = run(vec![Step::WrongWeeks, Step::InvalidJson], 3).await;
    let result = result.expect("a batch");
    assert_eq!(result.outcome, BatchOutcome::Fallback);
    assert_eq!(result.fallback_weeks(), 3);
    assert_eq!(llm.asked(), [(1, 3), (1, 3)], "one re-ask, no more");
}

#[tokio::test(start_paused = true)]
async fn a_batch_re_asks_once_in_all_even_across_a_cut() {
    // Cut after one week, then the rest is invalid: the one re-ask goes to week 2, and week 3's
    // invalid answer finds it spent.
    let steps = vec![
        Step::CutAfter { weeks: 1 },
        Step::InvalidJson,
        Step::Answer,
        Step::InvalidJson,
    ];
    let (result, _, llm) = run(steps, 3).await;
    let result = result.expect("a batch");
    assert_eq!(llm.asked(), [(1, 3), (2, 2), (2, 2), (3, 3)]);
    assert_eq!(
        sources(&result),
        [
            (1, WeekSource::Llm),
            (2, WeekSource::Llm),
            (3, WeekSource::Fallback)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_configuration_fault_is_an_error_not_a_fallback() {
    let (result, _, llm) = run(vec![Step::unauthorized()], 3).await;
    assert!(matches!(result, Err(ProviderFault(_))), "{result:?}");
    assert_eq!(llm.calls().len(), 1, "a configuration fault is not retried");
}

#[tokio::test(start_paused = true)]
async fn a_learned_span_splits_the_batch_from_the_start() {
    let (result, hint, llm) = run(vec![], 2).await;
    assert_eq!(result.expect("a batch").outcome, BatchOutcome::Ok);
    assert_eq!(llm.asked(), [(1, 2), (3, 3)]);
    assert_eq!(hint, 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_costs_no_wall_time_under_the_paused_clock() {
    let started = std::time::Instant::now();
    let (result, _, _) = run(vec![Step::Slow(Duration::from_secs(600))], 3).await;
    assert_eq!(result.expect("a batch").outcome, BatchOutcome::Ok);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the clock was not paused"
    );
}
