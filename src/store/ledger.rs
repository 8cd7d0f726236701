//! The ledger's entries for jobs that never ran: a refused message whose job_id is readable
//! ends that job_id as failed, and a cancel is recorded for any job_id of its user, started or
//! not, so that a job cancelled before it starts never runs.

use deadpool_postgres::Pool;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::{StoreError, jobs::JobState};
use crate::domain::{
    Rejection,
    event::{EventKind, Failed, JobFailure},
};

/// The largest refused body kept in the job's row as its request (for `status`); a larger one
/// is stored as `null` (its copy is in the dead letters).
const KEPT_BODY: usize = 64 * 1024;

/// Ends the job_id of a refused message as failed with its `roadmap.failed` event, in one
/// statement, unless the job_id is known already (a refusal never gives a job a second outcome).
/// Returns whether it was recorded.
pub async fn refuse(
    pool: &Pool,
    rejection: &Rejection,
    body: &[u8],
    event: &Failed,
) -> Result<bool, StoreError> {
    let Some(job_id) = rejection.job_id else {
        return Ok(false);
    };
    let request: serde_json::Value = if body.len() <= KEPT_BODY {
        serde_json::from_slice(body).unwrap_or_default()
    } else {
        serde_json::Value::Null
    };
    let client = pool.get().await?;
    let n = client
        .execute(
            "WITH job AS (
                INSERT INTO jobs (job_id, user_id, request, plan, batches_total, status, failure_reason,
                                  owner, lease_until, completed_at)
                VALUES ($1, $2, $3, 'null', 0, 'failed', $4, NULL, NULL, now())
                ON CONFLICT (job_id) DO NOTHING
                RETURNING job_id)
             INSERT INTO outbox (event_id, job_id, routing_key, payload)
             SELECT $5, job_id, $6, $7 FROM job
             ON CONFLICT (event_id) DO NOTHING",
            &[
                &job_id,
                &rejection.user_id,
                &Json(&request),
                &rejection.reason.code(),
                &event.event_id,
                &EventKind::Failed.routing_key(),
                &Json(event),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// What became of a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRequest {
    /// Recorded: the replica working the job stops at its next checkpoint.
    Requested,
    /// Recorded before: nothing changes.
    AlreadyRequested,
    /// No replica had the job (not arrived yet, or waiting): it has ended as failed with
    /// reason `cancelled` now, its event queued; a copy that arrives later never runs.
    Cancelled,
    /// The job has ended (`completed` or `failed`): nothing changes.
    Ended(JobState),
    /// The job_id belongs to another user (who is not revealed): nothing changes.
    Unknown,
}

/// Records that `user_id` asks to cancel `job_id`. A job that a replica holds stops at its next
/// checkpoint; one that none holds ends at once, and a job_id not seen yet is recorded as
/// cancelled before it arrives.
pub async fn request_cancel(pool: &Pool, job_id: Uuid, user_id: &str) -> Result<CancelRequest, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Twice at most: a claim may insert the job between our read and our insert.
    for _ in 0..2 {
        let row = tx
            .query_opt(
                "SELECT user_id, status, owner, cancel_requested_at IS NOT NULL AS before,
                        batches_done, batches_total
                 FROM jobs WHERE job_id = $1 FOR UPDATE",
                &[&job_id],
            )
            .await?;
        let Some(row) = row else {
            let event = cancelled_event(job_id, user_id, "cancelled by its user before it started");
            let inserted = tx
                .execute(
                    "INSERT INTO jobs (job_id, user_id, request, plan, batches_total, status, failure_reason,
                                       owner, lease_until, cancel_requested_at, completed_at)
                     VALUES ($1, $2, 'null', 'null', 0, 'failed', $3, NULL, NULL, now(), now())
                     ON CONFLICT (job_id) DO NOTHING",
                    &[&job_id, &user_id, &JobFailure::Cancelled.as_str()],
                )
                .await?;
            if inserted == 0 {
                continue;
            }
            super::outbox::insert(&tx, event.event_id, Some(job_id), EventKind::Failed, &event).await?;
            tx.commit().await?;
            return Ok(CancelRequest::Cancelled);
        };
        if row.get::<_, Option<&str>>("user_id") != Some(user_id) {
            return Ok(CancelRequest::Unknown);
        }
        let state = JobState::parse(row.get("status"))?;
        if state != JobState::Running {
            return Ok(CancelRequest::Ended(state));
        }
        if row.get::<_, Option<&str>>("owner").is_none() {
            // Waiting (its user's turn, a provider fault) or released: nobody would see the
            // request at a checkpoint, so the job ends here.
            let (done, total): (i32, i32) = (row.get("batches_done"), row.get("batches_total"));
            let message = format!(
                "cancelled by its user after {done} of {total} batches; the batches written are kept"
            );
            let event = cancelled_event(job_id, user_id, &message);
            tx.execute(
                "UPDATE jobs SET status = 'failed', failure_reason = $2, not_before = NULL,
                        cancel_requested_at = coalesce(cancel_requested_at, now()),
                        completed_at = now(), updated_at = now()
                 WHERE job_id = $1",
                &[&job_id, &JobFailure::Cancelled.as_str()],
            )
            .await?;
            super::outbox::insert(&tx, event.event_id, Some(job_id), EventKind::Failed, &event).await?;
            tx.commit().await?;
            return Ok(CancelRequest::Cancelled);
        }
        if row.get::<_, bool>("before") {
            return Ok(CancelRequest::AlreadyRequested);
        }
        tx.execute(
            "UPDATE jobs SET cancel_requested_at = now(), updated_at = now() WHERE job_id = $1",
            &[&job_id],
        )
        .await?;
        tx.commit().await?;
        return Ok(CancelRequest::Requested);
    }
    Err(StoreError::Corrupt(format!(
        "job {job_id} was neither found nor insertable"
    )))
}

fn cancelled_event(job_id: Uuid, user_id: &str, message: &str) -> Failed {
    Failed::new(
        job_id,
        Some(user_id.to_owned()),
        JobFailure::Cancelled.as_str(),
        message.to_owned(),
    )
}
