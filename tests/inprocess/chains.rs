//! Promise: a job's chains end as the job must. Every missing batch is written and
//! checkpointed; a resumed job asks only for what is not stored; a cancel stops every chain after
//! the batch it is writing; the output-token cap stops the job before its next batch; a fenced
//! checkpoint or a lost lease stops it at once; a provider fault stops the sibling chains'
//! calls in flight; shutdown stops between batches, abort within one; a short database outage
//! is ridden out.

use std::time::Duration;

use roadmap_worker::{
    domain::{Plan, Week, event::Usage},
    pipeline::chains::{Chains, ChainsEnd},
    store::{StoreError, batches::StoredBatch},
    template,
};
use testkit::{
    memory::{MemoryCheckpoints, MemoryEvents},
    scripted::{ScriptedLlm, Step},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::fixture::{generator, outlined_plan, plan, profile};

/// The signals a run of the chains listens to.
#[derive(Default)]
struct Signals {
    shutdown: CancellationToken,
    abort: CancellationToken,
    lost: CancellationToken,
    /// A lease renewal found the job's user asked to cancel it.
    cancel: CancellationToken,
}

struct Run {
    end: Result<ChainsEnd, StoreError>,
    llm: ScriptedLlm,
    checkpoints: MemoryCheckpoints,
    events: MemoryEvents,
}

/// Writes `plan`'s batches not in `stored`, the model following `steps`.
async fn run(
    plan: &Plan,
    steps: Vec<Step>,
    checkpoints: MemoryCheckpoints,
    stored: Vec<StoredBatch>,
    output_cap: Option<u64>,
    signals: &Signals,
) -> Run {
    let (generator, llm) = generator(steps);
    let events = MemoryEvents::default();
    let profile = profile();
    let chains = Chains {
        generator: &generator,
        checkpoints: &checkpoints,
        job_id: Uuid::nil(),
        user_id: "user-1",
        profile: &profile,
        plan,
        batch_weeks: 3,
        parallelism: 4,
        events: &events,
        output_cap,
        bulk: false,
        cancel: Some(&signals.cancel),
    };
    // A day on the paused clock passes at once when nothing else can run: a chain that never
    // ends fails here instead of hanging the suite.
    let end = tokio::time::timeout(
        Duration::from_secs(24 * 3600),
        chains.run(stored, &signals.shutdown, &signals.abort, &signals.lost),
    )
    .await
    .expect("the chains never ended");
    Run {
        end,
        llm,
        checkpoints,
        events,
    }
}

/// Cancels `signal` once `after` has passed on the (paused) clock.
fn fire_after(signal: &CancellationToken, after: Duration) {
    let signal = signal.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        signal.cancel();
    });
}

/// Writes every batch of `plan` on `checkpoints`, the model answering well, nothing stored
/// before, no cap, no signal.
async fn run_on(plan: &Plan, checkpoints: MemoryCheckpoints) -> Run {
    run(plan, vec![], checkpoints, vec![], None, &Signals::default()).await
}

fn memory() -> MemoryCheckpoints {
    MemoryCheckpoints::new(Uuid::nil())
}

fn stored_indexes(run: &Run) -> Vec<u32> {
    run.checkpoints.stored().iter().map(|s| s.index).collect()
}

/// Batch `index` of `plan` as a checkpoint read back from the store.
fn stored_batch(plan: &Plan, index: usize, output_tokens: u64) -> StoredBatch {
    let range = plan.batches[index];
    let weeks: Vec<Week> = range
        .weeks()
        .map(|n| template::week(&profile(), &plan.phases, n, plan.duration_weeks))
        .collect();
    StoredBatch {
        index: range.index,
        weeks,
        fallback_weeks: 0,
        usage: Usage {
            output_tokens,
            ..Usage::default()
        },
        quality: Default::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn every_batch_is_written_chain_by_chain_with_a_progress_event_each() {
    let plan = outlined_plan(12);
    assert!(
        plan.chains().len() > 1,
        "the outlined plan runs chains side by side"
    );
    let run = run_on(&plan, memory()).await;
    let Ok(ChainsEnd::Done(written)) = &run.end else {
        panic!("{:?}", run.end)
    };
    assert_eq!(written.len(), plan.batches.len());
    let weeks: Vec<u32> = written
        .values()
        .flat_map(|w| w.weeks.iter().map(|w| w.number))
        .collect();
    assert_eq!(weeks, (1..=12).collect::<Vec<_>>());
    assert_eq!(
        stored_indexes(&run),
        (0..plan.batches.len() as u32).collect::<Vec<_>>()
    );
    let progress = run.events.progress();
    assert_eq!(progress.len(), plan.batches.len());
    assert!(
        progress
            .iter()
            .all(|(user, p)| user == "user-1" && p.batches_total == plan.batches.len() as u32)
    );
}

#[tokio::test(start_paused = true)]
async fn a_resumed_job_asks_only_for_the_batches_not_stored() {
    let plan = plan(12);
    let stored = vec![stored_batch(&plan, 0, 0), stored_batch(&plan, 1, 0)];
    let run = run(&plan, vec![], memory(), stored, None, &Signals::default()).await;
    let Ok(ChainsEnd::Done(written)) = &run.end else {
        panic!("{:?}", run.end)
    };
    assert_eq!(written.len(), 4, "the stored batches are part of the result");
    assert_eq!(run.llm.asked(), [(7, 9), (10, 12)]);
    assert_eq!(stored_indexes(&run), [2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_stops_the_job_after_the_batch_that_saw_it() {
    let plan = plan(12);
    let run = run_on(&plan, memory().cancel_after(2)).await;
    assert!(matches!(run.end, Ok(ChainsEnd::Cancelled(2))), "{:?}", run.end);
    assert_eq!(run.llm.asked(), [(1, 3), (4, 6)]);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_seen_by_one_chain_stops_its_siblings_after_their_batch() {
    let plan = outlined_plan(24);
    let chains = plan.chains().len();
    assert!(
        chains > 1 && plan.batches.len() > chains,
        "chains of several batches"
    );
    // Every chain's first call is in flight when the first checkpoint sees the cancel.
    let steps = vec![Step::Slow(Duration::from_secs(1)); chains];
    let run = run(
        &plan,
        steps,
        memory().cancel_after(1),
        vec![],
        None,
        &Signals::default(),
    )
    .await;
    let Ok(ChainsEnd::Cancelled(stored)) = run.end else {
        panic!("{:?}", run.end)
    };
    // Each chain finishes the batch it is writing, and none starts a second.
    assert_eq!(stored, chains);
    assert_eq!(run.llm.asked().len(), chains);
}

#[tokio::test(start_paused = true)]
async fn side_by_side_checkpoints_announce_their_progress_in_order() {
    let plan = outlined_plan(24);
    assert!(plan.chains().len() > 1, "chains side by side");
    // The first chain's checkpoint answers late: its siblings' answers are in by then. Their
    // checkpoints must wait for it, so that no progress event overtakes an earlier one and no
    // token figure goes backwards.
    let run = run_on(&plan, memory().slow(0, Duration::from_secs(5))).await;
    assert!(matches!(run.end, Ok(ChainsEnd::Done(_))), "{:?}", run.end);
    let progress: Vec<_> = run.events.progress().into_iter().map(|(_, p)| p).collect();
    let done: Vec<u32> = progress.iter().map(|p| p.batches_done).collect();
    assert_eq!(done, (1..=plan.batches.len() as u32).collect::<Vec<_>>());
    for pair in progress.windows(2) {
        assert!(
            pair[1].input_tokens > pair[0].input_tokens && pair[1].output_tokens > pair[0].output_tokens,
            "token figures must grow with each event: {pair:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_chain_stops_after_the_batch_it_was_writing_when_a_sibling_saw_the_cancel() {
    let plan = outlined_plan(52);
    let chains = plan.chains().len();
    assert!(plan.chains()[0].len() > 2, "chains of three batches or more");
    // The first chain's checkpoint is stored before the cancel (it is the first of two) and
    // answers late, so the sibling that sees the cancel writes after it. The first chain may
    // have started its next batch by then; it must start no third.
    let checkpoints = memory().cancel_after(2).slow(0, Duration::from_secs(5));
    let run = run_on(&plan, checkpoints).await;
    let Ok(ChainsEnd::Cancelled(stored)) = run.end else {
        panic!("{:?}", run.end)
    };
    assert!(stored <= chains + 1, "{stored} batches stored by {chains} chains");
    let third = plan.chains()[0][2];
    assert!(
        !run.llm.asked().contains(&(third.first, third.last)),
        "the first chain started a batch after the cancel: {:?}",
        run.llm.asked()
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_after_the_last_batch_leaves_the_roadmap_whole() {
    let plan = plan(6);
    let run = run_on(&plan, memory().cancel_after(2)).await;
    assert!(matches!(run.end, Ok(ChainsEnd::Done(_))), "{:?}", run.end);
}

#[tokio::test(start_paused = true)]
async fn the_output_token_cap_stops_the_job_before_its_next_batch() {
    let plan = plan(12);
    let run = run(&plan, vec![], memory(), vec![], Some(1), &Signals::default()).await;
    let Ok(ChainsEnd::Capped(spent)) = run.end else {
        panic!("{:?}", run.end)
    };
    assert!(spent >= 1);
    assert_eq!(
        run.llm.asked(),
        [(1, 3)],
        "the batch that crossed the cap is the last"
    );
    assert_eq!(stored_indexes(&run), [0], "and it is stored");
}

#[tokio::test(start_paused = true)]
async fn a_job_resumed_over_its_cap_asks_for_nothing() {
    let plan = plan(12);
    let stored = vec![stored_batch(&plan, 0, 5_000)];
    let run = run(&plan, vec![], memory(), stored, Some(5_000), &Signals::default()).await;
    assert!(matches!(run.end, Ok(ChainsEnd::Capped(5_000))), "{:?}", run.end);
    assert!(run.llm.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_fenced_checkpoint_stops_every_chain_at_once() {
    let plan = outlined_plan(12);
    // The first chain's checkpoint is fenced while the second chain's call never answers: the
    // fence must not wait for it.
    let steps = vec![Step::Answer, Step::Hang, Step::Hang, Step::Hang];
    let run = run(
        &plan,
        steps,
        memory().fence_after(0),
        vec![],
        None,
        &Signals::default(),
    )
    .await;
    assert!(matches!(run.end, Ok(ChainsEnd::Fenced)), "{:?}", run.end);
    assert!(run.checkpoints.stored().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_ends_the_run_at_once_even_mid_call() {
    let plan = plan(12);
    let signals = Signals::default();
    fire_after(&signals.lost, Duration::from_secs(1));
    let run = run(&plan, vec![Step::Hang], memory(), vec![], None, &signals).await;
    assert!(matches!(run.end, Ok(ChainsEnd::Fenced)), "{:?}", run.end);
    assert!(run.checkpoints.stored().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_provider_fault_stops_the_sibling_chains_calls_in_flight() {
    let plan = outlined_plan(12);
    let steps = vec![Step::Hang, Step::unauthorized(), Step::Hang, Step::Hang];
    let run = run(&plan, steps, memory(), vec![], None, &Signals::default()).await;
    assert!(matches!(run.end, Ok(ChainsEnd::Fault(_))), "{:?}", run.end);
    assert!(
        run.checkpoints.stored().is_empty(),
        "no template weeks for a provider fault"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_between_batches_and_keeps_the_batch_in_flight() {
    let plan = plan(12);
    let signals = Signals::default();
    fire_after(&signals.shutdown, Duration::from_secs(1));
    let steps = vec![Step::Slow(Duration::from_secs(5))];
    let run = run(&plan, steps, memory(), vec![], None, &signals).await;
    assert!(matches!(run.end, Ok(ChainsEnd::Stopped)), "{:?}", run.end);
    assert_eq!(
        stored_indexes(&run),
        [0],
        "the batch in flight is finished and stored"
    );
    assert_eq!(run.llm.asked(), [(1, 3)]);
}

#[tokio::test(start_paused = true)]
async fn abort_stops_the_batch_in_flight() {
    let plan = plan(12);
    let signals = Signals::default();
    fire_after(&signals.abort, Duration::from_secs(1));
    let run = run(&plan, vec![Step::Hang], memory(), vec![], None, &signals).await;
    assert!(matches!(run.end, Ok(ChainsEnd::Stopped)), "{:?}", run.end);
    assert!(run.checkpoints.stored().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_short_database_outage_is_ridden_out() {
    let plan = plan(6);
    let run = run_on(&plan, memory().outage(3)).await;
    assert!(matches!(run.end, Ok(ChainsEnd::Done(_))), "{:?}", run.end);
    assert_eq!(stored_indexes(&run), [0, 1]);
    assert_eq!(
        run.checkpoints.attempts(),
        5,
        "three failed tries, then one per batch"
    );
}

#[tokio::test(start_paused = true)]
async fn a_database_outage_past_the_retries_is_an_error() {
    let plan = plan(6);
    let run = run_on(&plan, memory().outage(100)).await;
    assert!(matches!(run.end, Err(StoreError::Pool(_))), "{:?}", run.end);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_a_renewal_finds_drops_the_calls_in_flight() {
    let plan = outlined_plan(24);
    let chains = plan.chains().len();
    // Every chain's first call takes a minute (or waits that long on the provider budget); the
    // renewal tells the job of its user's cancel after 5 s.
    let steps = vec![Step::Slow(Duration::from_secs(60)); chains];
    let signals = Signals::default();
    fire_after(&signals.cancel, Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    let run = run(&plan, steps, memory(), vec![], None, &signals).await;
    assert!(matches!(run.end, Ok(ChainsEnd::Cancelled(0))), "{:?}", run.end);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the calls were dropped, not waited for: {:?}",
        started.elapsed()
    );
    assert!(run.checkpoints.stored().is_empty());
}
