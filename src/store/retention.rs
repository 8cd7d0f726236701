//! Retention: a finished job is deleted, with everything kept for it, once it has been over for
//! RETAIN_DAYS; until then its job_id is remembered for idempotency.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Object, Pool};

use super::StoreError;
use crate::domain::event::EventKind;

/// The events kept as long as their job, and deleted with it: a job published again
/// re-announces its outcome from them (`store::outbox::prune_sent` leaves them alone).
pub const OUTCOMES: [EventKind; 2] = [EventKind::Completed, EventKind::Failed];

/// The session-level advisory lock that one replica holds while it runs the pass (the
/// migrations' is 7291001), so that replicas do not all delete the same rows at once.
pub const LOCK_KEY: i64 = 7_291_002;

/// Jobs deleted per statement: each statement is its own short transaction, so no lock is held
/// long and a backlog of millions goes in steps while the fleet keeps writing.
pub const BATCH: i64 = 1_000;

/// Rows one pass deleted, by table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub jobs: u64,
    pub batches: u64,
    pub roadmaps: u64,
    pub outbox: u64,
}

impl Purged {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Deletes every finished job (completed or failed) that ended more than `retain` ago (its
/// `completed_at`, which every end sets; V14 dated older rows that lacked it by their
/// `updated_at`), `batch` jobs per statement until none is left, with its batches, roadmap and
/// outcome events; then the failure events of refused messages older than `retain`, which no
/// job row takes along.
///
/// A job's progress events are not looked for: the relay trims them 7 days after they were
/// sent, like every event but outcomes, and an index of every row by job would cost each
/// checkpoint a write. Safe while jobs are written and claimed: a row another transaction holds
/// (a claim finding the job ended, to re-announce it) is skipped and taken by the next pass.
pub async fn purge(client: &impl GenericClient, retain: Duration, batch: i64) -> Result<Purged, StoreError> {
    // One cutoff for the whole pass, from the database's clock, and as a value: the planner
    // then sees how few rows lie before it and takes the index.
    let cutoff: DateTime<Utc> = client
        .query_one(
            "SELECT now() - make_interval(secs => $1::float8)",
            &[&retain.as_secs_f64()],
        )
        .await?
        .get(0);
    // Batches and roadmaps would go with their job by ON DELETE CASCADE, which stays as the
    // safety net; deleting them here, as sets, is cheaper than the cascade's statement per job,
    // and counts them. Outcome rows are found by their index on job_id (V14). Statements are
    // not prepared once for the pass: each is planned with its values, the routing keys as
    // constants that match the partial indexes' conditions.
    let outcomes = OUTCOMES.map(EventKind::routing_key);
    let mut purged = Purged::default();
    loop {
        let row = client
            .query_one(
                "WITH doomed AS (
                    SELECT job_id FROM jobs
                    WHERE status <> 'running' AND completed_at < $1
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED),
                 b AS (DELETE FROM batches WHERE job_id IN (SELECT job_id FROM doomed) RETURNING 1),
                 r AS (DELETE FROM roadmaps WHERE job_id IN (SELECT job_id FROM doomed) RETURNING 1),
                 o AS (DELETE FROM outbox
                       WHERE job_id IN (SELECT job_id FROM doomed) AND routing_key = ANY($3)
                       RETURNING 1),
                 j AS (DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM doomed) RETURNING 1)
                 SELECT (SELECT count(*) FROM j) AS jobs, (SELECT count(*) FROM b) AS batches,
                        (SELECT count(*) FROM r) AS roadmaps, (SELECT count(*) FROM o) AS outbox",
                &[&cutoff, &batch, &&outcomes[..]],
            )
            .await?;
        let count = |column: &str| row.get::<_, i64>(column) as u64;
        let deleted = count("jobs");
        purged.jobs += deleted;
        purged.batches += count("batches");
        purged.roadmaps += count("roadmaps");
        purged.outbox += count("outbox");
        if deleted < batch as u64 {
            break;
        }
    }
    // A refused message's failure event names a job_id that had no row (that is why it was
    // announced): it is kept as long as a job's would be, then goes by its age (V14's index).
    loop {
        let deleted = client
            .execute(
                "DELETE FROM outbox WHERE id IN (
                    SELECT id FROM outbox o
                    WHERE routing_key = $3 AND created_at < $1
                      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = o.job_id)
                    LIMIT $2)",
                &[&cutoff, &batch, &EventKind::Failed.routing_key()],
            )
            .await?;
        purged.outbox += deleted;
        if deleted < batch as u64 {
            return Ok(purged);
        }
    }
}

/// [`purge`] under the advisory lock [`LOCK_KEY`]: `None` if another replica holds it (and is
/// running the pass now).
///
/// The lock belongs to the pooled session that took it. Should the pass end any other way than
/// through the unlock (an error, the task dropped at shutdown), that session is closed instead
/// of going back to the pool, and the server releases the lock with it: an idle pooled
/// connection must never hold it, or no replica would run the pass again.
pub async fn purge_exclusive(
    pool: &Pool,
    retain: Duration,
    batch: i64,
) -> Result<Option<Purged>, StoreError> {
    let mut held = Held(Some(pool.get().await?));
    let client = held.client();
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
        .await?
        .get(0);
    if !locked {
        held.release();
        return Ok(None);
    }
    let purged = purge(client, retain, batch).await?;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    held.release();
    Ok(Some(purged))
}

/// A pooled session that may hold the lock: closed when dropped, unless released to the pool.
struct Held(Option<Object>);

impl Held {
    fn client(&self) -> &Object {
        self.0.as_ref().expect("held until released")
    }

    /// Back to the pool: the session holds no lock.
    fn release(&mut self) {
        self.0.take();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            // Detached from the pool, the connection closes when its client is dropped here.
            drop(Object::take(object));
        }
    }
}
