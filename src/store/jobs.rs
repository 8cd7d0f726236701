//! The jobs table: its states, the fenced writes behind a [`Lease`](super::lease::Lease)
//! (renewing, releasing, failing a job), cancels, and the sweeper's and recovery's reads.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::{StoreError, heartbeat::Liveness};
use crate::domain::{
    JobRequest, Plan,
    event::{EventKind, Failed},
};

/// The prefix of every replica's Postgres `application_name`; the suffix is its replica id.
pub const APP_PREFIX: &str = "roadmap-worker:";

/// Where a job's row stands: `jobs.status`, read into this type at the edge so that no code
/// compares it as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Completed,
    Failed,
}

impl JobState {
    /// The value stored in `jobs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// A stored `jobs.status`; anything else is corrupt data, not a state to guess.
    pub fn parse(stored: &str) -> Result<Self, StoreError> {
        match stored {
            "running" => Ok(Self::Running),
            "completed" => Ok(Self::Completed),
            "failed" => Ok(Self::Failed),
            other => Err(StoreError::Corrupt(format!("unknown job status {other:?}"))),
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stores the outlined plan of a job that has no checkpoint yet, so that the outline is never
/// asked for again and every replica resumes on its batches. `Fenced` if another replica has
/// taken the job over, or the job has a checkpoint (then its stored plan stands).
pub(super) async fn set_plan(pool: &Pool, job_id: Uuid, token: i64, plan: &Plan) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE jobs SET plan = $3, batches_total = $4, updated_at = now()
             WHERE job_id = $1 AND fencing_token = $2 AND status = 'running'
               AND NOT EXISTS (SELECT 1 FROM batches WHERE job_id = $1)",
            &[&job_id, &token, &Json(plan), &(plan.batches.len() as i32)],
        )
        .await?;
    if n == 1 { Ok(()) } else { Err(StoreError::Fenced) }
}

/// What one renewal found: the jobs still held, and those of them whose user asked to cancel.
#[derive(Debug, Default)]
pub struct Renewed {
    pub held: std::collections::HashSet<Uuid>,
    pub cancel_requested: std::collections::HashSet<Uuid>,
}

/// Extends the leases of many jobs in one statement, each under its own token; returns the jobs
/// still held (a job missing from it has been taken over, or has ended), and which of them
/// their users asked to cancel (so that a job whose calls wait on the provider budget stops
/// without waiting for its next checkpoint). A job whose row another
/// session holds locked is skipped, not waited for: one stuck row must not hold back the renewal
/// of every other lease. It is returned as held, unrenewed, and tried again at the next tick.
/// A released job (no owner) is not renewed: a renewal that arrives after the release (a
/// statement held up in a partition) must not give the row a lease that no one holds.
pub async fn renew_many(
    pool: &Pool,
    job_ids: &[Uuid],
    tokens: &[i64],
    lease: Duration,
) -> Result<Renewed, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "WITH ours AS (
                SELECT j.job_id, j.cancel_requested_at IS NOT NULL AS cancel FROM jobs j
                JOIN unnest($1::uuid[], $2::bigint[]) AS held (job_id, token)
                  ON j.job_id = held.job_id AND j.fencing_token = held.token
                WHERE j.status = 'running' AND j.owner IS NOT NULL),
             free AS (
                SELECT job_id FROM jobs WHERE job_id IN (SELECT job_id FROM ours)
                FOR UPDATE SKIP LOCKED),
             renewed AS (
                UPDATE jobs SET lease_until = now() + make_interval(secs => $3), updated_at = now()
                FROM free WHERE jobs.job_id = free.job_id AND jobs.owner IS NOT NULL
                RETURNING jobs.job_id)
             SELECT ours.job_id, ours.cancel, renewed.job_id IS NOT NULL AS renewed
             FROM ours LEFT JOIN renewed ON renewed.job_id = ours.job_id",
        )
        .await?;
    let rows = client
        .query(&statement, &[&job_ids, &tokens, &lease.as_secs_f64()])
        .await?;
    let busy = rows.iter().filter(|r| !r.get::<_, bool>("renewed")).count();
    if busy > 0 {
        tracing::warn!(
            jobs = busy,
            "leases not renewed: another session holds their rows locked"
        );
    }
    Ok(Renewed {
        held: rows.iter().map(|r| r.get("job_id")).collect(),
        cancel_requested: rows
            .iter()
            .filter(|r| r.get::<_, bool>("cancel"))
            .map(|r| r.get("job_id"))
            .collect(),
    })
}

/// Extends the lease; `Fenced` if another replica has taken the job over.
pub(super) async fn renew(pool: &Pool, job_id: Uuid, token: i64, lease: Duration) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => $3), updated_at = now()
             WHERE job_id = $1 AND fencing_token = $2 AND status = 'running'",
        )
        .await?;
    let n = client
        .execute(&statement, &[&job_id, &token, &lease.as_secs_f64()])
        .await?;
    if n == 1 { Ok(()) } else { Err(StoreError::Fenced) }
}

/// Gives the lease up at once (graceful shutdown), so another replica need not wait for it.
pub(super) async fn release(pool: &Pool, job_id: Uuid, token: i64) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE jobs SET owner = NULL, lease_until = NULL, updated_at = now()
             WHERE job_id = $1 AND fencing_token = $2 AND status = 'running'",
            &[&job_id, &token],
        )
        .await?;
    Ok(())
}

/// Parks the job in Postgres, unowned, until `wait` has passed: the row is its record while it
/// waits (the delivery is acked), and the sweeper dispatches it again once it is due.
/// `copy_sent`: the caller publishes a copy now (a hand-back at shutdown), so the sweeper sends
/// none until that copy has had its time to be claimed. `Fenced` if another replica has it.
pub(super) async fn park(
    pool: &Pool,
    job_id: Uuid,
    token: i64,
    wait: Duration,
    copy_sent: bool,
) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE jobs SET owner = NULL, lease_until = NULL, delivery_acked = true,
                    not_before = now() + make_interval(secs => $3),
                    redispatched_at = CASE WHEN $4 THEN now() END, updated_at = now()
             WHERE job_id = $1 AND fencing_token = $2 AND status = 'running'",
            &[&job_id, &token, &wait.as_secs_f64(), &copy_sent],
        )
        .await?;
    if n == 1 { Ok(()) } else { Err(StoreError::Fenced) }
}

/// Gives up a job whose task panicked: the lease is released and the job counted as abandoned,
/// so that a job that keeps crashing its task ends as poison.
pub(super) async fn abandon(pool: &Pool, job_id: Uuid, token: i64) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE jobs SET owner = NULL, lease_until = NULL, abandoned = abandoned + 1, updated_at = now()
             WHERE job_id = $1 AND fencing_token = $2 AND status = 'running'",
            &[&job_id, &token],
        )
        .await?;
    Ok(())
}

/// Ends a running job as failed and queues its `roadmap.failed` event, in one transaction.
pub(super) async fn fail(
    pool: &Pool,
    job_id: Uuid,
    token: i64,
    reason: &str,
    event: &Failed,
) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE jobs SET status = 'failed', failure_reason = $3, owner = NULL, lease_until = NULL,
                    updated_at = now(), completed_at = now()
             WHERE job_id = $1 AND fencing_token = $2 AND status = 'running'",
            &[&job_id, &token, &reason],
        )
        .await?;
    if n != 1 {
        return Err(StoreError::Fenced);
    }
    super::outbox::insert(&tx, event.event_id, Some(job_id), EventKind::Failed, event).await?;
    tx.commit().await?;
    Ok(())
}

/// Fails a job that no live replica is working, whether or not it was ever claimed, and queues
/// its `roadmap.failed` event, in one transaction (a message the broker gave up on). Returns
/// `false`, changing nothing, when the job has ended, belongs to another user or to another
/// request (a conflicting copy never fails the job it conflicts with), or a live replica holds
/// its lease.
pub async fn fail_unowned(
    pool: &Pool,
    job: &JobRequest,
    plan: &Plan,
    reason: &str,
    event: &Failed,
    liveness: &Liveness,
) -> Result<bool, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "INSERT INTO jobs (job_id, user_id, request, plan, batches_total, status, failure_reason,
                               completed_at)
             VALUES ($1, $2, $3, $4, $5, 'failed', $6, now())
             ON CONFLICT (job_id) DO UPDATE
               SET status = 'failed', failure_reason = $6, owner = NULL, lease_until = NULL,
                   completed_at = now(), updated_at = now()
             WHERE jobs.status = 'running' AND jobs.user_id = $2 AND jobs.request = $3
               AND NOT (jobs.lease_until > now() AND (NOT $8 OR owner_alive(jobs.owner, $7, $9)))",
            &[
                &job.job_id,
                &job.user_id,
                &Json(job),
                &Json(plan),
                &(plan.batches.len() as i32),
                &reason,
                &APP_PREFIX,
                &liveness.is_judging(),
                &liveness.grace_secs(),
            ],
        )
        .await?;
    if n != 1 {
        return Ok(false);
    }
    super::outbox::insert(&tx, event.event_id, Some(job.job_id), EventKind::Failed, event).await?;
    tx.commit().await?;
    Ok(true)
}

/// Records that the job's delivery was acked before the job ended (see the sweeper); `false`
/// if no running row has this id (yet), in which case the delivery must not be acked: it would
/// be the job's only record.
pub async fn mark_delivery_acked(pool: &Pool, job_id: Uuid) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE jobs SET delivery_acked = true WHERE job_id = $1 AND status = 'running'",
            &[&job_id],
        )
        .await?;
    Ok(n == 1)
}

/// A job the sweeper found stranded, with the message that re-dispatches it.
#[derive(Debug)]
pub struct Stranded {
    pub job_id: Uuid,
    pub request: serde_json::Value,
}

/// Which running jobs a sweep looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Parked jobs whose wait is over (cheap, by index: run every second).
    Due,
    /// Every running job that no delivery will bring back (see [`sweep`]).
    Stranded,
}

/// Finds running jobs that no delivery will bring back, and stamps them so that neither this
/// nor another replica's sweeper re-publishes them again before they are claimed (a claim clears
/// the stamp; a long queue must not fill up with copies of one job):
/// - parked jobs (no owner, the row is their record) whose wait is over;
/// - the delivery was acked (early, or as a duplicate) and the owner died: no session and no
///   heartbeat within the grace, judged only while this replica's own heartbeat holds
///   ([`Liveness`]);
/// - the lease expired more than a lease ago (a safety net for anything else that slipped);
/// - a job released without an owner whose copy has not been claimed for `restamp_after` (the
///   copy waited in a queue that was purged, or was lost with a broker).
///
/// A stamp older than `restamp_after` no longer counts: the copy it stands for may have been
/// lost (a sweeper killed between stamp and publish, a queue purged), so the job is swept again.
pub async fn sweep(
    pool: &Pool,
    scope: Sweep,
    lease: Duration,
    restamp_after: Duration,
    limit: i64,
    liveness: &Liveness,
) -> Result<Vec<Stranded>, StoreError> {
    let client = pool.get().await?;
    let rows = match scope {
        Sweep::Due => {
            client
                .query(
                    "UPDATE jobs SET redispatched_at = now()
                     WHERE job_id IN (
                        SELECT job_id FROM jobs
                        WHERE status = 'running' AND owner IS NULL AND not_before <= now()
                          AND delivery_acked AND redispatched_at IS NULL
                        ORDER BY not_before
                        LIMIT $1
                        FOR UPDATE SKIP LOCKED)
                     RETURNING job_id, request",
                    &[&limit],
                )
                .await?
        }
        Sweep::Stranded => {
            client
                .query(
                    "UPDATE jobs SET redispatched_at = now()
                     WHERE job_id IN (
                        SELECT job_id FROM jobs j
                        WHERE status = 'running'
                          AND (redispatched_at IS NULL OR redispatched_at < now() - make_interval(secs => $4::float8))
                          AND ((owner IS NULL AND (not_before IS NULL OR not_before <= now())
                                AND (delivery_acked OR updated_at < now() - make_interval(secs => $4::float8)))
                               OR (owner IS NOT NULL AND delivery_acked AND $5
                                   AND NOT owner_alive(j.owner, $2, $6))
                               OR lease_until < now() - make_interval(secs => $1::float8))
                        ORDER BY updated_at
                        LIMIT $3
                        FOR UPDATE SKIP LOCKED)
                     RETURNING job_id, request",
                    &[
                        &lease.as_secs_f64(),
                        &APP_PREFIX,
                        &limit,
                        &restamp_after.as_secs_f64(),
                        &liveness.is_judging(),
                        &liveness.grace_secs(),
                    ],
                )
                .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|r| Stranded {
            job_id: r.get("job_id"),
            request: r.get("request"),
        })
        .collect())
}

/// Clears the sweeper's stamp after a failed re-publish, so that the next sweep tries again.
pub async fn unstamp(pool: &Pool, job_id: Uuid) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE jobs SET redispatched_at = NULL WHERE job_id = $1",
            &[&job_id],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_round_trip_and_an_unknown_one_is_corrupt() {
        for state in [JobState::Running, JobState::Completed, JobState::Failed] {
            assert_eq!(JobState::parse(state.as_str()).unwrap(), state);
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert!(matches!(JobState::parse("paused"), Err(StoreError::Corrupt(_))));
    }
}
