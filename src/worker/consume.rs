//! The intake loop of one broker session, and the handling of one delivery up to its outcome.

use std::{panic::AssertUnwindSafe, sync::Arc};

use anyhow::Context as _;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions},
    types::FieldTable,
};
use tokio::{sync::Semaphore, task::JoinSet};
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use super::{
    Context,
    settle::{Outcome, settle},
};
use crate::{domain::JobRequest, store};

/// Takes deliveries until shutdown (`Ok`) or until the broker session fails (`Err`). Jobs run
/// as tasks in `tasks`, bounded by `slots`; they outlive a failed session and are drained by
/// the caller at shutdown.
pub(super) async fn consume(
    channel: &Channel,
    ctx: &Arc<Context>,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let mut provider_ok = ctx.provider_ok.subscribe();
    loop {
        let tag = format!("{}-{}", ctx.runner.owner(), Uuid::new_v4().simple());
        let mut consumer = channel
            .basic_consume(
                ctx.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("starting the consumer")?;
        info!(queue = %ctx.topology.queue, "consuming");
        // Take deliveries until shutdown (Ok) or a provider fault (Err).
        let stopped: Result<(), ()> = loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                () = ctx.shutdown.cancelled() => break Ok(()),
                _ = provider_ok.wait_for(|ok| !*ok) => break Err(()),
            };
            let delivery = tokio::select! {
                next = consumer.next() => next,
                () = ctx.shutdown.cancelled() => break Ok(()),
                _ = provider_ok.wait_for(|ok| !*ok) => break Err(()),
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(anyhow::Error::new(e).context("the consumer failed")),
                None => return Err(anyhow::anyhow!("the broker closed the consumer")),
            };
            let ctx = ctx.clone();
            tasks.spawn(async move {
                // Free slots derive from jobs in flight: the intake loop holds one permit while
                // it waits for a delivery, so counting permits would read one too low.
                let metrics = &ctx.metrics;
                metrics.jobs_in_flight.inc();
                metrics
                    .worker_slots_free
                    .set(ctx.concurrency as i64 - metrics.jobs_in_flight.get());
                // A panic must not strand the delivery unacked on the channel: it goes back to
                // the queue, and repeated panics end as a poison job (the lease is not released).
                let acker = delivery.acker.clone();
                if AssertUnwindSafe(handle(&ctx, delivery))
                    .catch_unwind()
                    .await
                    .is_err()
                {
                    error!("job task panicked; its message goes back to the queue");
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    };
                    let _ = acker.nack(requeue).await;
                }
                metrics.jobs_in_flight.dec();
                metrics
                    .worker_slots_free
                    .set(ctx.concurrency as i64 - metrics.jobs_in_flight.get());
                drop(permit);
            });
        };
        // Stop intake in both cases, so nothing new arrives while we drain or wait. Deliveries
        // the broker had already pushed to this consumer go back to the queue at once.
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(std::time::Duration::from_millis(50), consumer.next()).await
        {
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            let _ = delivery.nack(requeue).await;
        }
        if stopped.is_ok() {
            return Ok(());
        }
        // The provider refuses our key or model: jobs stay queued rather than be filled with
        // templates, until a probe shows that an operator fixed it.
        warn!(
            probe_secs = ctx.probe_interval.as_secs(),
            "LLM provider refuses requests; intake paused"
        );
        loop {
            tokio::select! {
                () = tokio::time::sleep(ctx.probe_interval) => {}
                () = ctx.shutdown.cancelled() => return Ok(()),
            }
            match ctx.runner.probe_provider().await {
                Ok(()) => break,
                Err(e) => warn!(error = %e, "LLM provider still refuses requests"),
            }
        }
        ctx.metrics.provider_ready.set(1);
        ctx.provider_ok.send_replace(true);
        info!("LLM provider accepts requests again; resuming intake");
    }
}

async fn handle(ctx: &Context, delivery: lapin::message::Delivery) {
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(|s| s.as_str().to_owned());
    let job = match JobRequest::decode(&delivery.data, content_type.as_deref()) {
        Ok(job) => job,
        Err(rejection) => return settle(ctx, delivery, Outcome::Rejected(rejection), false).await,
    };
    let span = info_span!("job", job_id = %job.job_id, weeks = job.duration_weeks);
    let run = ctx.runner.run(&job, &ctx.shutdown).instrument(span.clone());
    tokio::pin!(run);
    let deadline = tokio::time::sleep(ctx.ack_deadline);
    tokio::pin!(deadline);
    let (mut deadline_passed, mut acked_early) = (false, false);
    let end = loop {
        tokio::select! {
            end = &mut run => break end,
            () = &mut deadline, if !deadline_passed => {
                deadline_passed = true;
                // Postgres first: once the row says "acked", the sweeper covers the job if this
                // replica dies. Then the broker can no longer time the delivery out.
                if store::jobs::mark_delivery_acked(ctx.runner.pool(), job.job_id).await.is_ok()
                    && delivery.ack(BasicAckOptions::default()).await.is_ok()
                {
                    acked_early = true;
                    span.in_scope(|| info!("job outlives the ack deadline; delivery acked, Postgres tracks it"));
                }
            }
        }
    };
    let outcome = Outcome::of(&job, end);
    settle(ctx, delivery, outcome, acked_early).instrument(span).await;
}
