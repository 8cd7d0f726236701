//! The intake loop of one broker session, and the handling of one delivery up to its outcome.
//!
//! # Pausing for a dependency
//!
//! When Postgres stays down past the store's retries, or the provider refuses our key or model,
//! intake stops (`basic.cancel`): the queue keeps the jobs instead of every replica spinning
//! them through failed claims. Deliveries already prefetched are handed back once (through the
//! retry queue while the database is down), and a probe every LLM_PROBE_INTERVAL_SECS resumes intake once the dependency
//! answers again. `/readyz` and `roadmap_intake_paused{reason}` show why meanwhile.

use std::{collections::VecDeque, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions},
    types::FieldTable,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use super::{
    Context,
    lanes::Lane,
    settle::{self, settle},
};
use crate::{
    amqp::{self, properties, topology::BULK_ROUTING_KEY},
    domain::{JobRequest, Priority, Rejection},
    metrics::{Deferral, Dependency},
    pipeline::outcome::Outcome,
    store,
};

/// How long to wait before trying an early ack again after it failed.
const EARLY_ACK_RETRY: Duration = Duration::from_secs(30);

/// Takes deliveries until shutdown (`Ok`) or until the broker session fails (`Err`). Jobs run
/// as tasks in `tasks`, bounded by `slots`; they outlive a failed session and are drained by
/// the caller at shutdown. Interactive jobs take their turn before bulk ones (see [`lanes`]).
///
/// Every delivery is taken from its consumer as it arrives and waits here for a slot, at most
/// AMQP_ACK_DEADLINE_SECS (which operators keep below the broker's consumer timeout): one that
/// finds no slot by then goes back to its queue, so that no delivery ages unacked towards the
/// consumer timeout, which would close the channel under every job on it.
///
/// [`lanes`]: super::lanes
pub(super) async fn consume(
    channel: &Channel,
    ctx: &Arc<Context>,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let mut paused = ctx.intake.paused.subscribe();
    let slot_wait = ctx.settings.ack_deadline;
    loop {
        let tag = format!("{}-{}", ctx.runner.owner(), Uuid::new_v4().simple());
        let bulk_tag = format!("{tag}-bulk");
        let mut consumer = start_consumer(channel, &ctx.topology.queue, &tag).await?;
        let mut bulk = start_consumer(channel, &ctx.topology.bulk_queue, &bulk_tag).await?;
        info!(queue = %ctx.topology.queue, bulk_queue = %ctx.topology.bulk_queue, "consuming");
        let mut waiting = WaitingRoom::default();
        // Take deliveries until shutdown (Ok) or a dependency fault (Err).
        let stopped: Result<(), ()> = loop {
            while tasks.try_join_next().is_some() {}
            // Free slots go to waiting deliveries, interactive ones first.
            while let Some(permit) = waiting
                .has_any()
                .then(|| slots.clone().try_acquire_owned().ok())
                .flatten()
            {
                let (delivery, lane, arrived) = waiting.next().expect("a delivery is waiting");
                spawn_job(ctx, tasks, delivery, lane, arrived, permit);
            }
            let expiry = waiting.oldest().map(|since| since + slot_wait);
            let next = tokio::select! {
                biased;
                () = ctx.drain.shutdown.cancelled() => break Ok(()),
                _ = paused.wait_for(|p| p.any()) => break Err(()),
                // A slot came free: the loop hands it out.
                permit = slots.clone().acquire_owned(), if waiting.has_any() => {
                    drop(permit);
                    continue;
                }
                next = consumer.next() => (next, Lane::Interactive),
                next = bulk.next() => (next, Lane::Bulk),
                () = sleep_until_some(expiry) => (None, Lane::Interactive),
                // A finished task keeps its cell (the size of a job's future) until joined;
                // an idle replica after a burst would hold thousands.
                Some(_) = tasks.join_next() => continue,
            };
            if expiry.is_some_and(|at| at <= Instant::now()) {
                for delivery in waiting.expire(slot_wait) {
                    warn!("no slot came free within AMQP_ACK_DEADLINE_SECS; the job goes back to its queue");
                    let _ = settle::hand_back(ctx, &delivery, Deferral::NoSlot, false).await;
                }
                if next.0.is_none() {
                    continue;
                }
            }
            let delivery = match next {
                (Some(Ok(delivery)), lane) => (delivery, lane),
                (Some(Err(e)), _) => return Err(anyhow::Error::new(e).context("the consumer failed")),
                (None, _) => return Err(anyhow::anyhow!("the broker closed the consumer")),
            };
            // Every slot busy: an interactive job that arrives has a bulk job yield its slot.
            if delivery.1 == Lane::Interactive
                && slots.available_permits() == 0
                && ctx.intake.bulk.yield_one()
            {
                info!("interactive job waiting; a bulk job yields its slot at its next batch");
            }
            waiting.push(delivery.0, delivery.1);
        };
        // Stop intake in both cases, so nothing new arrives while we drain or wait. Deliveries
        // the broker had already pushed to this consumer go back without spending a delivery:
        // through the retry queue while the database is down, else straight to their queue.
        for t in [&tag, &bulk_tag] {
            let _ = channel
                .basic_cancel(t.as_str().into(), BasicCancelOptions::default())
                .await;
        }
        let reason = if stopped.is_ok() {
            Deferral::Shutdown
        } else if paused.borrow().database {
            Deferral::Database
        } else {
            Deferral::Provider
        };
        for delivery in waiting.drain() {
            let _ = settle::hand_back(ctx, &delivery, reason, false).await;
        }
        for queue in [&mut consumer, &mut bulk] {
            while let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(Duration::from_millis(50), queue.next()).await
            {
                let _ = settle::hand_back(ctx, &delivery, reason, false).await;
            }
        }
        if stopped.is_ok() {
            return Ok(());
        }
        if !wait_for_dependencies(ctx).await {
            return Ok(());
        }
        info!("dependencies answer again; resuming intake");
    }
}

/// Sleeps until `at`, or for ever without it.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Deliveries taken from the work queues that wait for a slot, by lane, oldest first.
#[derive(Default)]
struct WaitingRoom {
    interactive: VecDeque<(Delivery, Instant)>,
    bulk: VecDeque<(Delivery, Instant)>,
}

impl WaitingRoom {
    fn push(&mut self, delivery: Delivery, lane: Lane) {
        let entry = (delivery, Instant::now());
        match lane {
            Lane::Interactive => self.interactive.push_back(entry),
            Lane::Bulk => self.bulk.push_back(entry),
        }
    }

    fn has_any(&self) -> bool {
        !self.interactive.is_empty() || !self.bulk.is_empty()
    }

    /// The next delivery for a free slot, with when it arrived: interactive work first.
    fn next(&mut self) -> Option<(Delivery, Lane, Instant)> {
        if let Some((delivery, arrived)) = self.interactive.pop_front() {
            return Some((delivery, Lane::Interactive, arrived));
        }
        self.bulk
            .pop_front()
            .map(|(delivery, arrived)| (delivery, Lane::Bulk, arrived))
    }

    /// When the longest-waiting delivery arrived.
    fn oldest(&self) -> Option<Instant> {
        let first = |q: &VecDeque<(Delivery, Instant)>| q.front().map(|(_, at)| *at);
        match (first(&self.interactive), first(&self.bulk)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes out the deliveries that have waited `limit` or longer.
    fn expire(&mut self, limit: Duration) -> Vec<Delivery> {
        let mut out = Vec::new();
        for queue in [&mut self.interactive, &mut self.bulk] {
            while queue.front().is_some_and(|(_, at)| at.elapsed() >= limit) {
                out.extend(queue.pop_front().map(|(delivery, _)| delivery));
            }
        }
        out
    }

    fn drain(&mut self) -> Vec<Delivery> {
        let mut out: Vec<Delivery> = self.interactive.drain(..).map(|(d, _)| d).collect();
        out.extend(self.bulk.drain(..).map(|(d, _)| d));
        out
    }
}

async fn start_consumer(channel: &Channel, queue: &str, tag: &str) -> anyhow::Result<lapin::Consumer> {
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("starting the consumer of {queue}"))
}

/// Runs one delivery's job as a task holding `permit` (its slot) until it is settled.
fn spawn_job(
    ctx: &Arc<Context>,
    tasks: &mut JoinSet<()>,
    delivery: Delivery,
    lane: Lane,
    arrived: Instant,
    permit: OwnedSemaphorePermit,
) {
    let ctx = ctx.clone();
    tasks.spawn(async move {
        // Free slots derive from jobs in flight: the intake loop holds one permit while it
        // waits for a delivery, so counting permits would read one too low.
        let metrics = &ctx.metrics;
        metrics.jobs_in_flight.inc();
        metrics
            .worker_slots_free
            .set(ctx.settings.concurrency as i64 - metrics.jobs_in_flight.get());
        // A panic must not strand the delivery unacked on the channel: the job is given up as
        // abandoned (repeated panics end as a poison job) and its message goes back.
        let acker = delivery.acker.clone();
        let body = delivery.data.clone();
        if AssertUnwindSafe(handle(&ctx, delivery, lane, arrived))
            .catch_unwind()
            .await
            .is_err()
        {
            // Boxed: the panic path should not add its size to every job task.
            Box::pin(async {
                error!("job task panicked; its message goes back to the queue");
                if let Ok(job) = JobRequest::decode(&body, Some("application/json")) {
                    ctx.runner.abandon(job.job_id).await;
                }
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                let _ = acker.nack(requeue).await;
            })
            .await;
        }
        metrics.jobs_in_flight.dec();
        metrics
            .worker_slots_free
            .set(ctx.settings.concurrency as i64 - metrics.jobs_in_flight.get());
        drop(permit);
    });
}

/// Probes the paused dependencies every probe interval until all answer (`true`) or shutdown
/// (`false`).
async fn wait_for_dependencies(ctx: &Context) -> bool {
    let down = *ctx.intake.paused.borrow();
    warn!(
        database = down.database,
        provider = down.provider,
        probe_secs = ctx.settings.probe_interval.as_secs(),
        "a dependency is down; intake paused"
    );
    loop {
        tokio::select! {
            () = tokio::time::sleep(ctx.settings.probe_interval) => {}
            () = ctx.drain.shutdown.cancelled() => return false,
        }
        let down = *ctx.intake.paused.borrow();
        if down.database {
            match store::bounded(store::ping(ctx.runner.pool())).await {
                Ok(()) => ctx.set_paused(Dependency::Database, false),
                Err(e) => warn!(error = %e, "database still unavailable"),
            }
        }
        if down.provider {
            match ctx.runner.probe_provider().await {
                Ok(()) => ctx.set_paused(Dependency::Provider, false),
                Err(e) => warn!(error = %e, "LLM provider still refuses requests"),
            }
        }
        if !ctx.intake.paused.borrow().any() {
            return true;
        }
    }
}

/// Decodes a delivery's job; a refusal carries the job_id its properties state when the body
/// does not (see [`Rejection::or_job_id`]).
pub(super) fn decode(delivery: &Delivery) -> Result<JobRequest, Rejection> {
    let props = &delivery.properties;
    let content_type = props.content_type().as_ref().map(|s| s.as_str());
    JobRequest::decode(&delivery.data, content_type)
        .map_err(|rejection| rejection.or_job_id(properties::stated_job_id(props)))
}

/// A job's delivery from decoding to settling. Not an `async fn`: that would keep its
/// arguments twice in the job's state (as arguments and as locals), and the delivery alone is
/// about 430 bytes in each of thousands of jobs in flight.
#[expect(clippy::manual_async_fn, reason = "an `async fn` keeps its arguments twice")]
fn handle(ctx: &Context, delivery: Delivery, lane: Lane, arrived: Instant) -> impl Future<Output = ()> + '_ {
    async move {
        let job = match decode(&delivery) {
            Ok(job) => job,
            Err(rejection) => {
                return Box::pin(settle(ctx, delivery, Outcome::Refused(rejection), false)).await;
            }
        };
        let span = info_span!("job", job_id = %job.job_id, weeks = job.duration_weeks);
        // The web backend's trace goes on through the job, when its message carries one.
        let headers = delivery.properties.headers().as_ref();
        let text = |name: &str| match headers.and_then(|h| h.inner().get(name)) {
            Some(lapin::types::AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
            _ => None,
        };
        crate::telemetry::continue_trace(&span, text("traceparent"), text("tracestate"));
        // A bulk job published with the interactive routing key (or back from the retry queue,
        // which returns every job there) moves to the bulk queue; if it cannot, it runs here.
        if lane == Lane::Interactive
            && job.priority == Priority::Bulk
            && Box::pin(forward_to_bulk(ctx, &delivery)).await
        {
            return;
        }
        let turn = (lane == Lane::Bulk).then(|| ctx.intake.bulk.start(&ctx.drain.shutdown));
        let stop = turn.as_ref().map_or(&ctx.drain.shutdown, |t| &t.stop);
        // Pinned where they are built: a future moved into place is kept twice.
        let mut run = std::pin::pin!(
            ctx.runner
                .run(&job, stop, &ctx.drain.abort)
                .instrument(span.clone())
        );
        // From the delivery's arrival, not the job's start: the time it waited for a slot counts
        // towards the broker's consumer timeout too.
        let mut deadline = std::pin::pin!(tokio::time::sleep_until(arrived + ctx.settings.ack_deadline));
        let mut acked_early = false;
        let end = loop {
            tokio::select! {
                end = &mut run => break end,
                () = &mut deadline, if !acked_early => {
                    // Postgres first: once the row says "acked", the sweeper covers the job if this
                    // replica dies. Then the broker can no longer time the delivery out.
                    // Boxed, like `settle` below: a job task lives as long as its job, and these
                    // rarely taken steps should not add their size to every one in flight.
                    let acked = Box::pin(async {
                        store::bounded(store::jobs::mark_delivery_acked(ctx.runner.pool(), job.job_id))
                            .await
                            .is_ok_and(|row| row)
                            && settle::ack(&delivery).await.is_ok()
                    });
                    if acked.await {
                        acked_early = true;
                        span.in_scope(|| info!("job outlives the ack deadline; delivery acked, Postgres tracks it"));
                    } else {
                        // Not one shot: the broker's consumer timeout would close the channel.
                        deadline.as_mut().reset(tokio::time::Instant::now() + EARLY_ACK_RETRY);
                        span.in_scope(|| warn!("could not ack the delivery early; trying again"));
                    }
                }
            }
        };
        Box::pin(settle(ctx, delivery, end, acked_early).instrument(span)).await;
    }
}

/// Publishes a bulk job to the bulk queue and acks this delivery; `false` if it could not.
async fn forward_to_bulk(ctx: &Context, delivery: &Delivery) -> bool {
    let published = ctx
        .publish_job(
            &delivery.data,
            amqp::republished(&delivery.properties),
            BULK_ROUTING_KEY,
        )
        .await;
    match published {
        Ok(()) => settle::ack(delivery).await.is_ok(),
        Err(e) => {
            warn!(error = %e, "could not move a bulk job to the bulk queue; running it here");
            false
        }
    }
}
