//! Finished roadmaps: stored with the job's completion and its event, in one transaction.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::StoreError;
use crate::domain::event::{Completed, EventKind};

/// Completes the job: stores the roadmap, marks the job completed and queues `event`, its
/// outbox row leased for `express` when given. Fenced by the lease token, so exactly one replica
/// completes a job. One statement, so one round trip and its own transaction.
///
/// The job's batches are folded away in the same statement: the roadmap holds their weeks, which
/// were all a completed job's batches were still read for, and keeping both stored every roadmap
/// twice. What `status` shows of them (calls, tokens, cost, fallbacks, the last batch that was
/// not `ok`) is kept in `jobs.batch_totals`, summed by `job_batch_totals` (V14) from the rows the
/// statement deletes, as its snapshot sees them.
pub(super) async fn complete(
    pool: &Pool,
    job_id: Uuid,
    token: i64,
    event: &Completed,
    express: Option<Duration>,
) -> Result<(), StoreError> {
    if event.job_id != job_id {
        return Err(StoreError::Corrupt(format!(
            "the completion event of job {} under the lease of job {job_id}",
            event.job_id
        )));
    }
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "WITH upd AS (
                UPDATE jobs SET status = 'completed', roadmap_id = $3, owner = NULL, lease_until = NULL,
                                completed_at = $4, updated_at = now(), batch_totals = job_batch_totals($1)
                WHERE job_id = $1 AND fencing_token = $2 AND status = 'running'
                RETURNING job_id),
             folded AS (
                DELETE FROM batches WHERE job_id = $1 AND EXISTS (SELECT 1 FROM upd)),
             rm AS (
                INSERT INTO roadmaps (roadmap_id, job_id, user_id, roadmap)
                SELECT $3, $1, $5, $6 FROM upd
                RETURNING 1),
             ob AS (
                INSERT INTO outbox (event_id, job_id, routing_key, payload, relay_until, attempts, traceparent)
                SELECT $7, $1, $8, $9, now() + make_interval(secs => $10), CASE WHEN $10 IS NULL THEN 0 ELSE 1 END, $11
                FROM upd
                ON CONFLICT (event_id) DO NOTHING
                RETURNING 1)
             SELECT (SELECT count(*) FROM upd) AS completed, (SELECT count(*) FROM rm) AS stored,
                    (SELECT count(*) FROM ob) AS queued",
        )
        .await?;
    let lease_secs = express.map(|l| l.as_secs_f64());
    // The roadmap is stored once, in its table; the outbox row refers to it, and the relay puts
    // it back into the event should it be the one to publish.
    let row = client
        .query_one(
            &statement,
            &[
                &event.job_id,
                &token,
                &event.roadmap_id,
                &event.completed_at,
                &event.user_id,
                &Json(&event.roadmap),
                &event.event_id,
                &EventKind::Completed.routing_key(),
                &Json(&event.head()),
                &lease_secs,
                &crate::telemetry::traceparent(),
            ],
        )
        .await?;
    if row.get::<_, i64>("completed") != 1 {
        return Err(StoreError::Fenced);
    }
    Ok(())
}
