//! Finished roadmaps: stored with the job's completion and its event, in one transaction.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::types::Json;

use super::StoreError;
use crate::domain::event::{COMPLETED, Completed};

/// Completes the job: stores the roadmap, marks the job completed and queues `event`, its
/// outbox row leased for `express` when given. Fenced by the lease token, so exactly one replica
/// completes a job.
pub async fn complete(
    pool: &Pool,
    token: i64,
    event: &Completed,
    express: Option<Duration>,
) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE jobs SET status = 'completed', roadmap_id = $3, owner = NULL, lease_until = NULL,
                    completed_at = $4, updated_at = now()
             WHERE job_id = $1 AND fencing_token = $2 AND status = 'running'",
            &[&event.job_id, &token, &event.roadmap_id, &event.completed_at],
        )
        .await?;
    if n != 1 {
        return Err(StoreError::Fenced);
    }
    tx.execute(
        "INSERT INTO roadmaps (roadmap_id, job_id, user_id, roadmap) VALUES ($1, $2, $3, $4)",
        &[
            &event.roadmap_id,
            &event.job_id,
            &event.user_id,
            &Json(&event.roadmap),
        ],
    )
    .await?;
    // The roadmap is stored once, above; the relay puts it back into the event when publishing.
    super::outbox::insert_leased(
        &tx,
        event.event_id,
        Some(event.job_id),
        COMPLETED,
        &event.head(),
        express,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
