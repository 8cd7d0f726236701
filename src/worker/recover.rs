//! The recovery queue's consumer: gives an account of every message the broker dead-lettered
//! on its own (the work queue's delivery limit, or a refusal whose copy could not be made), so
//! that nothing reaches the dead-letter queue without a reason and a `roadmap.failed` event.
//!
//! A job whose message comes back here is returned to work, up to RECOVER_LIMIT times (a
//! header on the message counts them): such a job is usually the victim of crashes around it,
//! not their cause. After that it is failed with reason `delivery_limit`. A malformed message
//! is refused as at intake, and a job that has ended needs nothing.

use std::sync::Arc;

use lapin::{
    Channel,
    message::Delivery,
    options::BasicQosOptions,
    types::{AMQPValue, ShortString},
};
use tracing::{info, warn};
use uuid::Uuid;

use super::{Context, consume, settle};
use crate::{
    amqp::{self, PublishError, topology::JOB_ROUTING_KEY},
    domain::{
        JobRequest, Rejection,
        event::{Failed, JobFailure},
    },
    metrics::Recovery,
    pipeline,
    store::{self, StoreError},
};

/// The header that counts how often a message came back from the recovery queue.
const RECOVERIES: &str = "x-roadmap-recoveries";
/// Messages taken at once; recovery is rare and each is quick.
const PREFETCH: u16 = 4;

/// Consumes the recovery queue on channels of its own until the connection or the worker stops.
pub(super) async fn run(connection: std::sync::Arc<lapin::Connection>, ctx: Arc<Context>) {
    super::keep_consuming(&connection, &ctx, "recover", |channel| consume(channel, &ctx)).await;
}

async fn consume(channel: Channel, ctx: &Context) -> lapin::Result<()> {
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    super::consume_each(&channel, ctx, &ctx.topology.recover_queue, "recover", |d| {
        recover(ctx, d)
    })
    .await
}

async fn recover(ctx: &Context, delivery: Delivery) {
    let job = match consume::decode(&delivery) {
        Ok(job) => job,
        Err(rejection) => return refuse(ctx, delivery, &rejection).await,
    };
    let recoveries = settle::header_count(&delivery, RECOVERIES);
    let result = if recoveries < ctx.settings.recover_limit {
        requeue(ctx, &delivery, recoveries + 1)
            .await
            .map(|()| Recovery::Requeued)
    } else {
        give_up(ctx, &delivery, &job).await
    };
    let recovery = match result {
        Ok(recovery) => recovery,
        Err(e) => {
            warn!(job_id = %job.job_id, error = %e, "could not account for a dead-lettered job; it is tried again");
            return wait(ctx, delivery).await;
        }
    };
    info!(job_id = %job.job_id, recoveries, outcome = recovery.as_str(), "dead-lettered job accounted for");
    ctx.metrics.delivery_recovered(recovery);
    if let Err(e) = settle::ack(&delivery).await {
        warn!(error = %e, "could not ack a recovered message; it will be recovered again");
    }
}

#[derive(Debug, thiserror::Error)]
enum RecoverError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

/// Nothing could be done now (the database or the broker is away): the message waits in the
/// recovery retry queue and comes back here after RETRY_DELAY_SECS.
async fn wait(ctx: &Context, delivery: Delivery) {
    settle::wait_out_outage(ctx, delivery, &ctx.topology.recover_retry_queue).await;
}

/// Back to the work queue with the count raised; a fresh message starts a fresh delivery count.
async fn requeue(ctx: &Context, delivery: &Delivery, recoveries: u32) -> Result<(), RecoverError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(RECOVERIES), AMQPValue::LongUInt(recoveries));
    let props = amqp::republished(&delivery.properties.clone().with_headers(headers));
    ctx.publish_job(&delivery.data, props, JOB_ROUTING_KEY).await?;
    Ok(())
}

/// Fails the job (unless it has ended or a live replica works it) with its event, and files the
/// message in the dead-letter queue with the reason.
async fn give_up(ctx: &Context, delivery: &Delivery, job: &JobRequest) -> Result<Recovery, RecoverError> {
    let failure = JobFailure::DeliveryLimit;
    let reason = failure.as_str();
    let message = format!(
        "the broker gave up delivering the job after its delivery limit, {} times",
        ctx.settings.recover_limit + 1
    );
    // The event id derives from the job: a message recovered twice announces once.
    let mut event = Failed::new(job.job_id, Some(job.user_id.clone()), reason, message.clone());
    event.event_id = Uuid::new_v5(&job.job_id, b"failed:delivery_limit");
    let plan = pipeline::plan(&job.profile(), job.duration_weeks, ctx.runner.batch_weeks());
    let pool = ctx.runner.pool();
    // One try: a recovery that fails waits in its retry queue at once (see `wait`), so that the
    // deliveries prefetched behind it are not held unacked through an outage.
    let failed = store::bounded(store::jobs::fail_unowned(
        pool,
        job,
        &plan,
        reason,
        &event,
        ctx.runner.liveness(),
    ))
    .await?;
    if !failed {
        return Ok(Recovery::Done);
    }
    warn!(job_id = %job.job_id, "job failed: the broker dead-lettered it too often");
    ctx.metrics.job_failed(failure);
    // The job's row and event account for it; the copy is for the operator's tools.
    if let Err(e) = settle::copy_to_dead_letters(ctx, delivery, reason, &message).await {
        warn!(job_id = %job.job_id, error = %e, "could not file the failed job's message in the dead-letter queue");
    }
    Ok(Recovery::Failed)
}

/// A malformed message: refused as at intake. Unlike at intake, a failed copy makes the message
/// wait and come back here: the recovery queue has no dead-letter queue behind it.
async fn refuse(ctx: &Context, delivery: Delivery, rejection: &Rejection) {
    let code = rejection.reason.code();
    settle::record_refusal(ctx, rejection, &delivery.data).await;
    match settle::copy_to_dead_letters(ctx, &delivery, code, &rejection.reason.to_string()).await {
        Ok(()) => {
            ctx.metrics.delivery_recovered(Recovery::Failed);
            if let Err(e) = settle::ack(&delivery).await {
                warn!(error = %e, "could not ack a refused recovered message");
            }
        }
        Err(e) => {
            warn!(error = %e, reason = code, "could not file a refused message; it is tried again");
            wait(ctx, delivery).await;
        }
    }
}
