//! The cancel queue's consumer. A job's user publishes a cancel message (routing key
//! `roadmap.cancel`); whichever replica takes it records the request in Postgres. The replica
//! working the job sees it at its next checkpoint and stops there (the job fails with reason
//! `cancelled`, its batches kept); a job that no replica holds (not arrived yet, or waiting)
//! ends at once, and a copy that arrives later never runs. A cancel that changes nothing (the
//! job has ended, or the job_id is another user's) is answered with a
//! `roadmap.cancel_rejected` event; a malformed one is dead-lettered with its reason. A cancel
//! that cannot be recorded (the database is away) waits in its own retry queue.

use std::sync::Arc;

use lapin::{Channel, message::Delivery};
use serde_json::Value;
use tracing::{info, warn};
use uuid::Uuid;

use super::{Context, settle};
use crate::{
    domain::INVALID_CANCEL,
    domain::event::{CancelRefusal, CancelRejected, EventKind, JobFailure},
    store::{self, jobs::JobState, ledger::CancelRequest},
};

/// Consumes the cancel queue on channels of its own until the connection or the worker stops.
pub(super) async fn run(connection: std::sync::Arc<lapin::Connection>, ctx: Arc<Context>) {
    super::keep_consuming(&connection, &ctx, "cancel", |channel| consume(channel, &ctx)).await;
}

/// Cancel messages taken at once: each is one quick statement.
const PREFETCH: u16 = 8;

async fn consume(channel: Channel, ctx: &Context) -> lapin::Result<()> {
    channel
        .basic_qos(PREFETCH, lapin::options::BasicQosOptions::default())
        .await?;
    super::consume_each(&channel, ctx, &ctx.topology.cancel_queue, "cancel", |d| {
        handle(ctx, d)
    })
    .await
}

/// A cancel message: the job and the user it must belong to.
fn decode(body: &[u8]) -> Result<(Uuid, String), String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let job_id = value
        .get("job_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or("`job_id` must be a UUID string")?;
    let user_id = value
        .get("user_id")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|u| !u.is_empty() && u.chars().count() <= 128)
        .ok_or("`user_id` must be a string of 1 to 128 characters")?;
    Ok((job_id, user_id.to_owned()))
}

async fn handle(ctx: &Context, delivery: Delivery) {
    let (job_id, user_id) = match decode(&delivery.data) {
        Ok(cancel) => cancel,
        Err(message) => {
            warn!(%message, "cancel message refused");
            let _ = settle::dead_letter(ctx, &delivery, INVALID_CANCEL, &message, false).await;
            return;
        }
    };
    let pool = ctx.runner.pool();
    // One try, not the store's retries: a cancel that fails waits in its retry queue at once,
    // so that the ones prefetched behind it are not held unacked through an outage.
    let answer = match store::bounded(store::ledger::request_cancel(pool, job_id, &user_id)).await {
        Ok(answer) => answer,
        Err(e) => {
            warn!(error = %e, %job_id, "could not record a cancel; it is tried again");
            return wait(ctx, delivery).await;
        }
    };
    let rejection = match answer {
        CancelRequest::Requested | CancelRequest::AlreadyRequested => {
            info!(%job_id, ?answer, "cancel recorded; the job stops at its next batch");
            None
        }
        CancelRequest::Cancelled => {
            info!(%job_id, "no replica had the job; it is cancelled and will not run");
            ctx.metrics.job_failed(JobFailure::Cancelled);
            None
        }
        CancelRequest::Ended(status) => Some((
            match status {
                JobState::Completed => CancelRefusal::JobCompleted,
                _ => CancelRefusal::JobFailed,
            },
            format!("the job has already {status}; nothing was changed"),
        )),
        CancelRequest::Unknown => Some((
            CancelRefusal::UnknownJob,
            "no job of this user has this job_id; nothing was changed".to_owned(),
        )),
    };
    if let Some((reason, message)) = rejection {
        let event = CancelRejected::new(job_id, user_id, reason.as_str(), message);
        let queued = store::bounded(async {
            let client = pool.get().await?;
            // The job_id is left out of the row: it may name no job, or another user's.
            store::outbox::insert(&client, event.event_id, None, EventKind::CancelRejected, &event).await
        })
        .await;
        if let Err(e) = queued {
            warn!(error = %e, %job_id, "could not queue the cancel's answer; the cancel is tried again");
            return wait(ctx, delivery).await;
        }
    }
    let _ = settle::ack(&delivery).await;
}

/// The database is away: the cancel waits in the cancel retry queue (never the job path, where
/// it would be refused as a malformed job) and comes back to this queue after RETRY_DELAY_SECS.
async fn wait(ctx: &Context, delivery: Delivery) {
    settle::wait_out_outage(ctx, delivery, &ctx.topology.cancel_retry_queue).await;
}
