//! One job from claim to stored roadmap: claim under a lease, generate the missing batches with a
//! checkpoint after each, assemble, and complete with the event in the same transaction.

use std::time::Duration;

use backon::Retryable;
use chrono::Utc;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use uuid::Uuid;

use super::{
    batch::{Caller, Generator},
    chains::{Chains, ChainsEnd},
    leases::{Leases, Told},
    outcome::Outcome,
};
use crate::{
    config::WorkerSettings,
    domain::{
        JobProfile, JobRequest, Plan, Priority, RejectReason, Rejection, Roadmap, Week,
        event::{Accepted, Completed, EventKind, Failed, JobFailure, Usage},
        quality::{self, QualityReport},
        roadmap::check_roadmap,
    },
    llm::LlmError,
    metrics::Metrics,
    retry::RetryPolicy,
    store::{
        self, StoreError,
        claim::{Claim, Claimant, OwnedJob},
        heartbeat::Liveness,
        lease::Lease,
        outbox::ExpressLane,
        with_retries,
    },
};

/// How long a lease left behind by a database outage is tried to be released: about ten
/// minutes, after which it has expired anyway.
const RELEASE_RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(5))
    .with_max_retries(120)
    .without_jitter();

/// Runs jobs; one per worker, shared by its job tasks.
#[derive(Debug, Clone)]
pub struct JobRunner {
    /// This replica as it claims jobs: its pool, name, lease length and per-user limit.
    claimant: Claimant,
    generator: Generator,
    batch_weeks: u32,
    /// Chains (phases) of one job written at once.
    parallelism: usize,
    /// Where committed events go to be published at once.
    express: ExpressLane,
    /// The jobs taken up here, their leases renewed while they run: a lease in our name that
    /// is not here is a leftover (a claim whose commit reply was lost), and a task that
    /// panicked, or that the drain aborted, gives its job up through this.
    leases: Leases,
    /// Output tokens one job may use (`JOB_MAX_OUTPUT_TOKENS`).
    output_cap: Option<u64>,
    /// Takeovers from dead owners after which a job is failed as poison.
    poison_after: i32,
    /// How long a job parked for a provider fault waits (`LLM_PROBE_INTERVAL_SECS`).
    provider_wait: Duration,
}

impl JobRunner {
    /// The runner of replica `owner`, from the worker's settings.
    pub fn new(settings: &WorkerSettings, pool: Pool, generator: Generator, owner: String) -> Self {
        Self {
            leases: Leases::start(pool.clone(), settings.lease()),
            claimant: Claimant {
                pool,
                owner,
                lease: settings.lease(),
                user_limit: settings.budget.user_max_in_flight,
                liveness: Liveness::new(settings.owner_grace()),
            },
            generator,
            batch_weeks: settings.batch.batch_weeks,
            parallelism: settings.batch.job_parallelism as usize,
            express: ExpressLane::default(),
            poison_after: settings.job_poison_after,
            provider_wait: settings.llm.probe_interval(),
            output_cap: settings.budget.job_max_output_tokens,
        }
    }

    /// Publishes committed events through `lane` right after each commit.
    pub fn with_express(mut self, lane: ExpressLane) -> Self {
        self.express = lane;
        self
    }

    pub fn pool(&self) -> &Pool {
        &self.claimant.pool
    }

    pub fn owner(&self) -> &str {
        &self.claimant.owner
    }

    /// Whether this replica may take another for dead; its heartbeat keeps it.
    pub fn liveness(&self) -> &Liveness {
        &self.claimant.liveness
    }

    pub fn lease(&self) -> Duration {
        self.claimant.lease
    }

    /// Weeks per batch of the plans this runner makes.
    pub fn batch_weeks(&self) -> u32 {
        self.batch_weeks
    }

    fn metrics(&self) -> &Metrics {
        self.generator.metrics()
    }

    /// Whether the provider accepts our key and model again (after a configuration fault).
    pub async fn probe_provider(&self) -> Result<(), LlmError> {
        self.generator.probe().await
    }

    /// Gives up the job of a task that panicked: its lease is released and the job counted as
    /// abandoned, so that a job that keeps crashing its task ends as poison.
    pub async fn abandon(&self, job_id: Uuid) {
        if let Some(lease) = self.leases.take(job_id)
            && let Err(e) = lease.abandon().await
        {
            warn!(error = %e, %job_id, "could not give up the job of a panicked task; its lease will expire");
        }
    }

    /// Runs `job` to its end. `shutdown` stops it between batches; `abort` (the drain's grace
    /// is over) also stops the batch in flight. Either way the lease is released and the job
    /// stopped with its checkpoints kept. Store errors that persist past the retries end it as
    /// [`Outcome::StoreDown`].
    pub async fn run(
        &self,
        job: &JobRequest,
        shutdown: &CancellationToken,
        abort: &CancellationToken,
    ) -> Outcome {
        self.try_run(job, shutdown, abort)
            .await
            .unwrap_or_else(Outcome::StoreDown)
    }

    async fn try_run(
        &self,
        job: &JobRequest,
        shutdown: &CancellationToken,
        abort: &CancellationToken,
    ) -> Result<Outcome, StoreError> {
        let profile = job.profile();
        let plan = super::plan(&profile, job.duration_weeks, self.batch_weeks);
        // Marked before the claim: a second delivery of the job to this replica while the first
        // is claimed or worked here is a duplicate, settled without a claim of its own. (Had it
        // claimed, it could insert the row first, and the first delivery's claim, free to take
        // back a lease in our own name as the leftover of a lost commit reply, would then take
        // over a job that is running here: both would run it.)
        if !self.leases.begin_claim(job.job_id) {
            debug!("the job is already being claimed or worked here; settling this duplicate");
            // The delivery the job runs under may belong to a broker session that is gone: from
            // now on the sweeper covers the job if this replica dies.
            Box::pin(with_retries(|| {
                store::jobs::mark_delivery_acked(self.pool(), job.job_id)
            }))
            .await?;
            return Ok(Outcome::Duplicate);
        }
        // The steps before and after the batches are boxed: a job spends its life in the
        // batches, and thousands in flight should not each carry room for these.
        let claim = Box::pin(with_retries(|| self.claimant.claim(job, &plan, true))).await;
        let owned = match claim {
            Ok(Claim::Owned(owned)) => owned,
            other => {
                self.leases.end_claim(job.job_id);
                return match other? {
                    Claim::Owned(_) => unreachable!("handled above"),
                    // Published again after it ended: the backend may have lost the result,
                    // so the stored outcome event goes out again, same event id.
                    ended @ (Claim::Completed | Claim::Failed) => {
                        let reannounced = Box::pin(with_retries(|| async {
                            let client = self.pool().get().await?;
                            store::outbox::reannounce_outcome(&client, job.job_id).await
                        }))
                        .await?;
                        debug!(reannounced, "job already ended; its outcome event is sent again");
                        Ok(match ended {
                            Claim::Completed => Outcome::Completed,
                            _ => Outcome::Failed,
                        })
                    }
                    Claim::OtherUser => Ok(refused(job, RejectReason::JobOwnedByAnotherUser)),
                    Claim::Conflict => Ok(refused(job, RejectReason::JobConflict)),
                    Claim::UserBusy => {
                        debug!("the user has USER_MAX_IN_FLIGHT jobs running; this one waits its turn");
                        Ok(Outcome::UserBusy)
                    }
                    Claim::Busy => {
                        debug!("job is being worked by a live replica; settling this duplicate");
                        Box::pin(with_retries(|| {
                            store::jobs::mark_delivery_acked(self.pool(), job.job_id)
                        }))
                        .await?;
                        Ok(Outcome::Duplicate)
                    }
                };
            }
        };
        let lease = owned.lease.clone();
        let told = Told::default();
        let renewal = self.leases.hold(lease.clone(), told.clone());
        let end = self.work(job, &profile, owned, shutdown, abort, &told).await;
        drop(renewal);
        // An aborted task never gets here: its entry stays, and the drain releases it.
        self.leases.finish(&lease);
        if end.is_err() {
            release_when_back(lease);
        }
        end
    }

    /// Releases every lease still held (tasks the drain had to abort), so that the next claim
    /// takes the jobs over at once and does not count them as abandoned.
    pub async fn release_held(&self) {
        for lease in self.leases.drain() {
            if let Err(e) = lease.release().await {
                warn!(error = %e, job_id = %lease.job_id(), "could not release a lease; it will expire");
            }
        }
    }

    /// The owned part of a run: poison check, the missing batches, assembly and completion.
    async fn work(
        &self,
        job: &JobRequest,
        profile: &JobProfile,
        owned: Box<OwnedJob>,
        shutdown: &CancellationToken,
        abort: &CancellationToken,
        told: &Told,
    ) -> Result<Outcome, StoreError> {
        let lost = &told.lost;
        let lease = &owned.lease;
        let metrics = self.metrics();
        if owned.abandoned >= self.poison_after {
            let reason = JobFailure::PoisonJob.as_str();
            let message = format!(
                "the job was abandoned by {} workers (crash or lost lease); it is not retried again",
                owned.abandoned
            );
            warn!(abandoned = owned.abandoned, "poison job; failing it");
            let event = Failed::new(job.job_id, Some(job.user_id.clone()), reason, message);
            match Box::pin(with_retries(|| lease.fail(reason, &event))).await {
                Ok(()) => {}
                // Another replica took the job over meanwhile: it decides, not a database fault.
                Err(StoreError::Fenced) => return Ok(Outcome::Fenced),
                Err(e) => return Err(e),
            }
            metrics.job_failed(JobFailure::PoisonJob);
            return Ok(Outcome::Poison {
                abandoned: owned.abandoned,
            });
        }
        if owned.cancel_requested {
            // Asked while an earlier owner had it; that owner never reached a checkpoint.
            let message = format!(
                "cancelled by its user after {} of {} batches; the batches written are kept",
                owned.batches.len(),
                owned.plan.batches.len()
            );
            return Box::pin(self.fail_running(job, lease, JobFailure::Cancelled, message)).await;
        }
        metrics.jobs_started.inc();
        let accepted = Accepted::new(
            job.job_id,
            &job.user_id,
            (owned.batches.len() as u32, owned.plan.batches.len() as u32),
            u32::try_from(owned.claims).unwrap_or(u32::MAX),
        );
        let express = self.express.lease();
        match Box::pin(with_retries(|| lease.accepted(&accepted, express))).await {
            Ok(true) => self.express.send(
                accepted.event_id,
                EventKind::Accepted,
                (job.job_id, Some(&job.user_id)),
                &accepted,
            ),
            Ok(false) => {}
            Err(StoreError::Fenced) => return Ok(Outcome::Fenced),
            Err(e) => return Err(e),
        }
        if !owned.batches.is_empty() {
            metrics.jobs_resumed.inc();
            info!(
                done = owned.batches.len(),
                total = owned.plan.batches.len(),
                claims = owned.claims,
                "resuming from checkpoints"
            );
        }
        if owned.batches.is_empty() && self.generator.budget().is_on() {
            // A new job waits while the provider budget is backlogged; started ones go first.
            tokio::select! {
                () = Box::pin(self.generator.budget().intake()) => {}
                () = shutdown.cancelled() => return Ok(self.stop(lease).await),
            }
        }
        let mut plan = owned.plan;
        if plan.wants_outline() && owned.batches.is_empty() {
            if shutdown.is_cancelled() {
                return Ok(self.stop(lease).await);
            }
            let caller = Caller {
                cache_key: job.job_id.to_string(),
                bulk: job.priority == Priority::Bulk,
            };
            let outline = Box::pin(self.generator.outline(profile, job.duration_weeks, &caller));
            let generated = tokio::select! {
                result = outline.instrument(info_span!("outline")) => result,
                () = lost.cancelled() => return Ok(Outcome::Fenced),
                () = abort.cancelled() => return Ok(self.stop(lease).await),
            };
            let (phases, outline) = match generated {
                Ok(written) => written,
                Err(fault) => return Ok(self.provider_fault(lease, fault.0).await),
            };
            plan = Plan::outlined(phases, outline, job.duration_weeks, self.batch_weeks);
            match Box::pin(with_retries(|| lease.set_plan(&plan))).await {
                Ok(()) => {}
                Err(StoreError::Fenced) => return Ok(Outcome::Fenced),
                Err(e) => return Err(e),
            }
        }
        let chains = Chains {
            generator: &self.generator,
            checkpoints: lease,
            job_id: job.job_id,
            user_id: &job.user_id,
            profile,
            plan: &plan,
            batch_weeks: self.batch_weeks,
            parallelism: self.parallelism,
            events: &self.express,
            output_cap: self.output_cap,
            bulk: job.priority == Priority::Bulk,
            cancel: Some(&told.cancel),
        };
        let written = match chains.run(owned.batches, shutdown, abort, lost).await? {
            ChainsEnd::Done(written) => written,
            ChainsEnd::Fenced => return Ok(Outcome::Fenced),
            ChainsEnd::Stopped => return Ok(self.stop(lease).await),
            // Keep what is stored; the job waits for a healthy provider.
            ChainsEnd::Fault(fault) => return Ok(self.provider_fault(lease, fault).await),
            ChainsEnd::Capped(spent) => {
                let message = format!(
                    "the job used {spent} output tokens, at or over JOB_MAX_OUTPUT_TOKENS ({}); stopped before its \
                     next batch",
                    self.output_cap.unwrap_or_default()
                );
                return Box::pin(self.fail_running(job, lease, JobFailure::OutputTokenCap, message)).await;
            }
            ChainsEnd::Cancelled(stored) => {
                let message = format!(
                    "cancelled by its user after {stored} of {} batches; the batches written are kept",
                    plan.batches.len()
                );
                return Box::pin(self.fail_running(job, lease, JobFailure::Cancelled, message)).await;
            }
        };
        let mut usage = plan.outline.as_ref().map(|o| o.usage).unwrap_or_default();
        let mut weeks = Vec::with_capacity(job.duration_weeks as usize);
        let mut fallback_batches = 0;
        let mut quality = QualityReport::default();
        for batch in written.into_values() {
            weeks.extend(batch.weeks);
            usage += batch.usage;
            fallback_batches += u32::from(batch.fallback);
            quality.add(&batch.quality);
        }
        if self.generator.settings().quality_checks {
            let across = quality::repeats_across_phases(&plan, &weeks, self.batch_weeks);
            across.iter().for_each(|p| metrics.quality_problem(p.kind()));
            quality.add_problems(&across);
        }
        let mut event = assemble(job, &plan, weeks, usage, fallback_batches, owned.started_at)?;
        event.quality = self.generator.settings().quality_checks.then_some(quality);
        let express = self.express.lease();
        match Box::pin(with_retries(|| lease.complete(&event, express))).await {
            Ok(()) => {
                let ids = (event.job_id, Some(event.user_id.as_str()));
                self.express
                    .send(event.event_id, EventKind::Completed, ids, &event);
            }
            Err(StoreError::Fenced) => return Ok(Outcome::Fenced),
            Err(e) => return Err(e),
        }
        metrics.jobs_completed.inc();
        metrics.job_duration.observe(
            (event.completed_at - event.started_at)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64(),
        );
        info!(roadmap_id = %event.roadmap_id, llm_calls = usage.llm_calls, fallback_batches, "roadmap stored");
        Ok(Outcome::Completed)
    }

    /// Fails the running job for `failure` (its cap, or its user's cancel); its batches stay
    /// stored and its `roadmap.failed` event is queued.
    async fn fail_running(
        &self,
        job: &JobRequest,
        lease: &Lease,
        failure: JobFailure,
        message: String,
    ) -> Result<Outcome, StoreError> {
        let reason = failure.as_str();
        warn!(reason, %message, "job stopped");
        let event = Failed::new(job.job_id, Some(job.user_id.clone()), reason, message);
        match with_retries(|| lease.fail(reason, &event)).await {
            Ok(()) => {}
            Err(StoreError::Fenced) => return Ok(Outcome::Fenced),
            Err(e) => return Err(e),
        }
        self.metrics().job_failed(failure);
        Ok(Outcome::Failed)
    }

    /// Stops the job here, its checkpoints kept: the lease is given up at once, so that the
    /// next replica need not wait for it, and the row records that a copy goes back to work
    /// now (the settle re-publishes it), so that the sweeper sends another only if that one is
    /// lost.
    async fn stop(&self, lease: &Lease) -> Outcome {
        // Boxed: `work` awaits this at several points, and each would otherwise give every job
        // in flight room for the park's database future.
        let parked = Box::pin(lease.park(Duration::ZERO, true)).await;
        if let Err(e) = parked {
            warn!(error = %e, "could not give up the lease; it will expire");
        }
        Outcome::Stopped
    }

    /// The provider refuses every request: the job is parked in Postgres for a probe interval
    /// (its row is its record while it waits; the sweeper dispatches it again).
    async fn provider_fault(&self, lease: &Lease, fault: LlmError) -> Outcome {
        let parked = Box::pin(lease.park(self.provider_wait, false)).await;
        match parked {
            Ok(()) | Err(StoreError::Fenced) => Outcome::ProviderFault { fault, parked: true },
            Err(e) => {
                warn!(error = %e, "could not park the job in the database; it waits in the broker");
                release_when_back(lease.clone());
                Outcome::ProviderFault { fault, parked: false }
            }
        }
    }
}

/// The database went away under a job: its lease could not be released, and while it stays
/// live another replica would take the handed-back job for a duplicate. Release it as soon as
/// the database answers again (tries for about ten minutes; the lease expires anyway).
fn release_when_back(lease: Lease) {
    tokio::spawn(async move {
        let released = (|| lease.release())
            .retry(RELEASE_RETRY.backoff())
            .when(StoreError::is_transient)
            .await;
        if let Err(e) = released {
            warn!(error = %e, job_id = %lease.job_id(), "could not release the lease of a handed-back job; it will expire");
        }
    });
}

/// The refusal of `job`'s message for `reason`.
fn refused(job: &JobRequest, reason: RejectReason) -> Outcome {
    Outcome::Refused(Rejection {
        reason,
        job_id: Some(job.job_id),
        user_id: Some(job.user_id.clone()),
    })
}

fn assemble(
    job: &JobRequest,
    plan: &Plan,
    weeks: Vec<Week>,
    usage: Usage,
    fallback_batches: u32,
    started_at: chrono::DateTime<Utc>,
) -> Result<Completed, StoreError> {
    let event = completion_event(job, plan, weeks, usage, fallback_batches, started_at);
    // Every batch was checked on its own; this guards the seams between them.
    check_roadmap(&event.roadmap)
        .map_err(|problem| StoreError::Corrupt(format!("assembled roadmap is inconsistent: {problem}")))?;
    Ok(event)
}

/// The completion event of `job` with these weeks, unchecked (the worker checks it in
/// `assemble`). The roadmap id derives from the job id, so a job has one roadmap id whoever
/// completes it.
pub fn completion_event(
    job: &JobRequest,
    plan: &Plan,
    weeks: Vec<Week>,
    usage: Usage,
    fallback_batches: u32,
    started_at: chrono::DateTime<Utc>,
) -> Completed {
    let roadmap_id = Uuid::new_v5(&job.job_id, b"roadmap");
    Completed {
        event: EventKind::Completed.into(),
        version: 1,
        event_id: Uuid::now_v7(),
        job_id: job.job_id,
        user_id: job.user_id.clone(),
        roadmap_id,
        duration_weeks: job.duration_weeks,
        batches: plan.batches.len() as u32,
        fallback_batches,
        usage,
        quality: None,
        started_at,
        completed_at: Utc::now(),
        roadmap: Roadmap {
            roadmap_id,
            job_id: job.job_id,
            target_role: job.target_role.clone(),
            experience_level: job.experience_level,
            hours_per_week: job.hours_per_week,
            language: job.language.clone(),
            duration_weeks: job.duration_weeks,
            phases: plan.phases.clone(),
            weeks,
        },
    }
}
