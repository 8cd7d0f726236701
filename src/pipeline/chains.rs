//! A job's missing batches, written chain by chain: the chains (one per phase of an outlined
//! plan) run side by side, the batches of one chain in order, each checkpointed as it ends.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
};

use futures_util::{StreamExt, stream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};

use super::{
    batch::{Caller, Generator},
    ports::{Checkpoints, EventSink},
};
use crate::{
    domain::{BatchRange, JobProfile, Plan, Week, event::Usage, quality::BatchQuality},
    llm::{Llm, LlmError, Provider},
    store::{
        StoreError,
        batches::{Position, StoredBatch},
        lease::Lease,
        outbox::ExpressLane,
        with_retries,
    },
};

/// One finished batch, stored or written by this run.
#[derive(Debug, Clone)]
pub struct Written {
    pub weeks: Vec<Week>,
    pub usage: Usage,
    pub fallback: bool,
    pub quality: BatchQuality,
}

impl From<StoredBatch> for Written {
    fn from(b: StoredBatch) -> Self {
        Self {
            weeks: b.weeks,
            usage: b.usage,
            fallback: b.fallback_weeks > 0,
            quality: b.quality,
        }
    }
}

/// How writing the batches ended.
#[derive(Debug)]
pub enum ChainsEnd {
    /// Every batch of the plan is stored: here by index.
    Done(BTreeMap<u32, Written>),
    /// Another replica took the job over.
    Fenced,
    /// Shutdown or the drain's abort stopped the run; the checkpoints stand.
    Stopped,
    /// The provider refuses every request.
    Fault(LlmError),
    /// The job's output tokens reached its cap (`JOB_MAX_OUTPUT_TOKENS`): this many.
    Capped(u64),
    /// Its user cancelled it before every batch was written: this many are stored.
    Cancelled(usize),
}

/// What a job's chains share while they run.
struct Shared {
    span_hint: AtomicU32,
    /// Output tokens of the job so far, against `JOB_MAX_OUTPUT_TOKENS`.
    spent: AtomicU64,
    /// The job's (input, output) tokens as of its latest stored checkpoint, for the progress
    /// events. Held from a checkpoint's write until its event is handed on, so that the chains'
    /// events leave in the order their checkpoints committed, each with the tokens of every
    /// batch before it: a backend reading them in order never sees a figure go backwards.
    announced: tokio::sync::Mutex<(u64, u64)>,
    /// A checkpoint said the job's user cancelled it.
    cancelled: AtomicBool,
    /// The provider's refusal, when a chain ended on one.
    fault: Mutex<Option<LlmError>>,
}

/// How one chain ended, in rising order of what it changes for the job: when chains end
/// differently, the greatest wins (a fence over everything, since another replica owns the
/// job; a cap over a fault; a fault over a cancel; anything over a clean end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ChainEnd {
    Done,
    Stopped,
    /// A checkpoint said the user cancelled the job.
    Cancelled,
    /// The provider refuses every request (the error is in [`Shared::fault`]).
    Fault,
    Capped,
    Fenced,
}

/// The writing of one job's missing batches under its lease. Generic over the model, the
/// checkpoints and the event sink (the worker's are the defaults), so that tests run it
/// in-process.
#[derive(Debug)]
pub struct Chains<'a, L = Provider, C = Lease, E = ExpressLane> {
    pub generator: &'a Generator<L>,
    /// The job's checkpoints, fenced by its lease.
    pub checkpoints: &'a C,
    pub job_id: uuid::Uuid,
    /// The job's owner, for the events' headers.
    pub user_id: &'a str,
    pub profile: &'a JobProfile,
    pub plan: &'a Plan,
    /// Weeks per batch: where each chain's guess of how many weeks fit one answer starts.
    pub batch_weeks: u32,
    /// Chains written at once.
    pub parallelism: usize,
    /// Where progress events go once committed.
    pub events: &'a E,
    /// Output tokens the job may use, its outline's included (`JOB_MAX_OUTPUT_TOKENS`).
    pub output_cap: Option<u64>,
    /// A bulk job: its calls take only spare budget.
    pub bulk: bool,
    /// Cancelled when a lease renewal finds that the job's user asked to cancel it: the calls
    /// in flight or waiting on the budget are dropped and the job ends as cancelled.
    pub cancel: Option<&'a CancellationToken>,
}

impl<L: Llm, C: Checkpoints, E: EventSink> Chains<'_, L, C, E> {
    /// Writes every batch of the plan that is not in `stored`. `shutdown` stops each chain
    /// before its next batch; `abort` (and a chain's fault) also stops the batches in flight;
    /// `lost` (the lease went to another replica) drops everything at once.
    pub async fn run(
        &self,
        stored: Vec<StoredBatch>,
        shutdown: &CancellationToken,
        abort: &CancellationToken,
        lost: &CancellationToken,
    ) -> Result<ChainsEnd, StoreError> {
        let mut done: BTreeMap<u32, Written> = stored.into_iter().map(|b| (b.index, b.into())).collect();
        // Output tokens so far, the outline's and the stored batches' included: a resumed job
        // does not get a fresh allowance.
        let shared = Shared {
            // How many weeks one answer holds, learned from cut-off answers and shared by the
            // chains, so that no chain repeats a cut another has already seen.
            span_hint: AtomicU32::new(self.batch_weeks),
            spent: AtomicU64::new(
                self.plan.outline.as_ref().map_or(0, |o| o.usage.output_tokens)
                    + done.values().map(|w| w.usage.output_tokens).sum::<u64>(),
            ),
            announced: tokio::sync::Mutex::new((
                self.plan.outline.as_ref().map_or(0, |o| o.usage.input_tokens)
                    + done.values().map(|w| w.usage.input_tokens).sum::<u64>(),
                self.plan.outline.as_ref().map_or(0, |o| o.usage.output_tokens)
                    + done.values().map(|w| w.usage.output_tokens).sum::<u64>(),
            )),
            cancelled: AtomicBool::new(false),
            fault: Mutex::new(None),
        };
        let pending: Vec<(Vec<BatchRange>, Vec<Week>)> = self
            .plan
            .chains()
            .into_iter()
            .map(|chain| {
                chain
                    .into_iter()
                    .filter(|r| !done.contains_key(&r.index))
                    .collect::<Vec<_>>()
            })
            .filter(|chain| !chain.is_empty())
            .map(|chain| {
                // A chain resumed after a stored batch continues from it.
                let before = chain[0].first - 1;
                let previous = done
                    .values()
                    .find(|w| w.weeks.last().is_some_and(|w| w.number == before))
                    .map(|w| w.weeks.clone())
                    .unwrap_or_default();
                (chain, previous)
            })
            .collect();
        let stop = abort.child_token();
        let ends = stream::iter(pending)
            // Boxed: the stream keeps a spare slot the size of its future, per job in flight.
            .map(|(chain, previous)| Box::pin(self.chain(chain, previous, &shared, shutdown, &stop)))
            .buffer_unordered(self.parallelism.max(1))
            .collect::<Vec<_>>();
        let ends = tokio::select! {
            ends = ends => ends,
            () = lost.cancelled() => return Ok(ChainsEnd::Fenced),
        };
        let mut worst = ChainEnd::Done;
        for (end, written) in ends.into_iter().collect::<Result<Vec<_>, _>>()? {
            done.extend(written);
            worst = worst.max(end);
        }
        let complete = done.len() == self.plan.batches.len();
        Ok(match worst {
            ChainEnd::Done => ChainsEnd::Done(done),
            // A cancel that came after the last batch changes nothing: the roadmap is whole.
            ChainEnd::Cancelled if complete => ChainsEnd::Done(done),
            ChainEnd::Cancelled => ChainsEnd::Cancelled(done.len()),
            ChainEnd::Stopped => ChainsEnd::Stopped,
            ChainEnd::Fault => {
                let fault = shared.fault.into_inner().unwrap_or_else(PoisonError::into_inner);
                ChainsEnd::Fault(fault.expect("a chain that ended on a fault left it"))
            }
            ChainEnd::Fenced => ChainsEnd::Fenced,
            ChainEnd::Capped => ChainsEnd::Capped(shared.spent.load(Ordering::Relaxed)),
        })
    }

    /// Writes `ranges` in order, `stored_previous` being the batch before the first when it is stored;
    /// returns how the chain ended with the batches it wrote. A chain that cannot go on cancels
    /// `stop`, so that its siblings stop too.
    async fn chain(
        &self,
        ranges: Vec<BatchRange>,
        stored_previous: Vec<Week>,
        shared: &Shared,
        shutdown: &CancellationToken,
        stop: &CancellationToken,
    ) -> Result<(ChainEnd, Vec<(u32, Written)>), StoreError> {
        let total = self.plan.batches.len() as u32;
        let caller = Caller {
            cache_key: self.job_id.to_string(),
            bulk: self.bulk,
        };
        let mut written = Vec::with_capacity(ranges.len());
        for range in ranges {
            if self
                .output_cap
                .is_some_and(|cap| shared.spent.load(Ordering::Relaxed) >= cap)
            {
                stop.cancel();
                return Ok((ChainEnd::Capped, written));
            }
            if shared.cancelled.load(Ordering::Relaxed) {
                // A sibling's checkpoint saw the cancel: no chain starts another batch.
                return Ok((ChainEnd::Cancelled, written));
            }
            if shutdown.is_cancelled() || stop.is_cancelled() {
                return Ok((ChainEnd::Stopped, written));
            }
            let span =
                info_span!("batch", batch = range.index, weeks = %format!("{}-{}", range.first, range.last));
            let mut hint = shared.span_hint.load(Ordering::Relaxed);
            // The last batch written in this chain, else the stored batch before it.
            let previous = written
                .last()
                .map_or(stored_previous.as_slice(), |(_, w): &(u32, Written)| {
                    w.weeks.as_slice()
                });
            // Built in the select: a future bound to a name first is kept twice in the chain's
            // state (the name's slot and the select's) by today's compiler, and a chain lives as
            // long as its job.
            let generated = tokio::select! {
                result = self
                    .generator
                    .batch(self.profile, self.plan, range, previous, &mut hint, &caller)
                    .instrument(span) => result,
                () = stop.cancelled() => return Ok((ChainEnd::Stopped, written)),
                () = cancelled(self.cancel) => {
                    shared.cancelled.store(true, Ordering::Relaxed);
                    return Ok((ChainEnd::Cancelled, written));
                }
            };
            shared.span_hint.fetch_min(hint, Ordering::Relaxed);
            if let Ok((result, _)) = &generated {
                shared
                    .spent
                    .fetch_add(result.usage.output_tokens, Ordering::Relaxed);
            }
            // The admission is held until the checkpoint below is written.
            let (result, _admission) = match generated {
                Ok(answered) => answered,
                Err(fault) => {
                    stop.cancel();
                    let mut first = shared.fault.lock().unwrap_or_else(PoisonError::into_inner);
                    first.get_or_insert(fault.0);
                    return Ok((ChainEnd::Fault, written));
                }
            };
            let lease = self.events.lease();
            let mut announced = shared.announced.lock().await;
            let at = Position {
                index: range.index,
                total,
                input_tokens: announced.0 + result.usage.input_tokens,
                output_tokens: announced.1 + result.usage.output_tokens,
            };
            // Boxed: a chain waits on its LLM call far longer than on its checkpoint, and the
            // store's futures would otherwise add their size to every chain in flight.
            let stored = Box::pin(with_retries(|| self.checkpoints.checkpoint(at, &result, lease))).await;
            let (fresh, cancelled) = match stored {
                Ok(stored) => {
                    *announced = (at.input_tokens, at.output_tokens);
                    if let Some(event) = stored.progress {
                        self.events.progress(self.user_id, &event);
                    }
                    drop(announced);
                    (stored.fresh, stored.cancelled)
                }
                Err(StoreError::Fenced) => {
                    stop.cancel();
                    return Ok((ChainEnd::Fenced, written));
                }
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            };
            if !fresh {
                self.generator.metrics().batches_regenerated.inc();
            }
            info!(
                batch = range.index,
                outcome = result.outcome.as_str(),
                total,
                "batch stored"
            );
            let fallback = result.fallback_weeks() > 0;
            written.push((
                range.index,
                Written {
                    weeks: result.weeks,
                    usage: result.usage,
                    fallback,
                    quality: result.quality,
                },
            ));
            if cancelled {
                shared.cancelled.store(true, Ordering::Relaxed);
                // Sibling chains finish the batch they are writing and start no other.
                info!(
                    batch = range.index,
                    "the job's user cancelled it; stopping after this batch"
                );
                return Ok((ChainEnd::Cancelled, written));
            }
        }
        Ok((ChainEnd::Done, written))
    }
}

/// Resolves when `cancel` is given and cancelled; never without one.
async fn cancelled(cancel: Option<&CancellationToken>) {
    match cancel {
        Some(cancel) => cancel.cancelled().await,
        None => std::future::pending().await,
    }
}
