//! The jobs table: claiming a job under a fenced lease, renewing it, and ending it as failed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::{StoreError, batches::StoredBatch, lease::Lease};
use crate::domain::{
    JobRequest, Plan,
    event::{EventKind, Failed},
};

/// The prefix of every replica's Postgres `application_name`; the suffix is its replica id.
pub const APP_PREFIX: &str = "roadmap-worker:";

/// The result of trying to take a job.
#[derive(Debug)]
pub enum Claim {
    /// This replica owns the job; its lease fences every write it makes. Boxed: a job holds it
    /// for its whole life, the other answers are a word.
    Owned(Box<OwnedJob>),
    /// Already completed: the completion event is in the outbox; nothing to do.
    Completed,
    /// Already ended as failed.
    Failed,
    /// The job_id belongs to another user.
    OtherUser,
    /// The same user sent other fields under this job_id: the stored request stands.
    Conflict,
    /// A live replica holds the lease and is working the job.
    Busy,
    /// The user has `USER_MAX_IN_FLIGHT` other jobs running: this one waits its turn, unclaimed.
    UserBusy,
}

#[derive(Debug)]
pub struct OwnedJob {
    /// The job's lease: every write this replica makes to the job goes through it.
    pub lease: Lease,
    pub plan: Plan,
    pub batches: Vec<StoredBatch>,
    pub started_at: DateTime<Utc>,
    /// How many times the job has been claimed, this claim included.
    pub claims: i32,
    /// How many claims took the job from an owner that died or lost its lease.
    pub abandoned: i32,
}

/// A replica as it claims jobs: the same for every claim it makes.
#[derive(Debug, Clone)]
pub struct Claimant {
    pub pool: Pool,
    /// The replica's id: the owner of the leases it takes.
    pub owner: String,
    /// How long a lease lasts unless renewed.
    pub lease: Duration,
    /// Jobs of one user running at once across the fleet (`USER_MAX_IN_FLIGHT`).
    pub user_limit: Option<u32>,
}

impl Claimant {
    /// Claims `job` (see [`claim`]); a new job is stored with `plan`.
    pub async fn claim(&self, job: &JobRequest, plan: &Plan, reclaim_own: bool) -> Result<Claim, StoreError> {
        claim(self, job, plan, reclaim_own).await
    }
}

/// Claims `job` for the claimant's `owner`. A new job is inserted with its plan; a known one is taken over when
/// its lease has expired or its owner's database session is gone (the replica died), which lets
/// a redelivered job resume in seconds rather than after the lease timeout.
///
/// `reclaim_own`: this replica is not working the job, so a live lease in its own name is the
/// leftover of a claim whose commit reply was lost, not a job in progress; it is taken back.
///
/// A takeover counts as abandoned (towards poison) only when the previous owner's sessions are
/// gone: a replica that died while working the job. An expired lease of a live owner (a database
/// outage, a pause), a released one, and an owner that has not written since the database
/// server restarted (which dropped its sessions) are not counted.
async fn claim(
    claimant: &Claimant,
    job: &JobRequest,
    plan: &Plan,
    reclaim_own: bool,
) -> Result<Claim, StoreError> {
    let Claimant {
        pool,
        owner,
        lease,
        user_limit,
    } = claimant;
    let owner = owner.as_str();
    let mut client = pool.get().await?;
    let lease_secs = lease.as_secs_f64();
    let request = Json(job);
    if let Some(limit) = user_limit {
        // The count and the claim are one transaction under a lock on the user, so that
        // replicas claiming the same user's jobs at once take turns.
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&job.user_id],
        )
        .await?;
        let running: i64 = tx
            .query_one(
                "SELECT count(*) FROM jobs
                 WHERE user_id = $1 AND job_id <> $2 AND status = 'running' AND lease_until > now()",
                &[&job.user_id, &job.job_id],
            )
            .await?
            .get(0);
        if running >= i64::from(*limit) {
            return Ok(Claim::UserBusy);
        }
        if let Some(owned) = insert_new(&tx, pool, job, plan, owner, lease_secs, &request).await? {
            tx.commit().await?;
            return Ok(Claim::Owned(Box::new(owned)));
        }
        return reclaim(tx, pool, job, owner, lease_secs, reclaim_own, &request).await;
    }
    // A new job is the common case: one statement in its own transaction. Only a job_id that
    // exists already needs the locked read of `reclaim`.
    if let Some(owned) = insert_new(&client, pool, job, plan, owner, lease_secs, &request).await? {
        return Ok(Claim::Owned(Box::new(owned)));
    }
    let tx = client.transaction().await?;
    reclaim(tx, pool, job, owner, lease_secs, reclaim_own, &request).await
}

/// Inserts a job_id seen for the first time, owned by `owner`; `None` if it exists.
async fn insert_new(
    db: &impl GenericClient,
    pool: &Pool,
    job: &JobRequest,
    plan: &Plan,
    owner: &str,
    lease_secs: f64,
    request: &Json<&JobRequest>,
) -> Result<Option<OwnedJob>, StoreError> {
    let insert = db
        .prepare_cached(
            "INSERT INTO jobs (job_id, user_id, request, plan, batches_total, owner, lease_until)
             VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
             ON CONFLICT (job_id) DO NOTHING
             RETURNING fencing_token, created_at",
        )
        .await?;
    let inserted = db
        .query_opt(
            &insert,
            &[
                &job.job_id,
                &job.user_id,
                request,
                &Json(plan),
                &(plan.batches.len() as i32),
                &owner,
                &lease_secs,
            ],
        )
        .await?;
    Ok(inserted.map(|row| OwnedJob {
        lease: Lease::new(pool.clone(), job.job_id, row.get(0)),
        plan: plan.clone(),
        batches: Vec::new(),
        started_at: row.get(1),
        claims: 1,
        abandoned: 0,
    }))
}

/// Claims a job_id that exists already, in `tx`: ended, another user's, busy, or taken over.
async fn reclaim(
    tx: deadpool_postgres::Transaction<'_>,
    pool: &Pool,
    job: &JobRequest,
    owner: &str,
    lease_secs: f64,
    reclaim_own: bool,
    request: &Json<&JobRequest>,
) -> Result<Claim, StoreError> {
    let row = tx
        .query_one(
            "SELECT user_id, status, owner, lease_until > now() AS live,
                    EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $2 || owner) AS present,
                    request = $3 AS same_request,
                    updated_at < pg_postmaster_start_time() AS before_restart
             FROM jobs WHERE job_id = $1 FOR UPDATE",
            &[&job.job_id, &APP_PREFIX, request],
        )
        .await?;
    let (user_id, status): (String, String) = (row.get(0), row.get(1));
    if user_id != job.user_id {
        return Ok(Claim::OtherUser);
    }
    if !row.get::<_, bool>(5) {
        return Ok(Claim::Conflict);
    }
    match status.as_str() {
        "completed" => return Ok(Claim::Completed),
        "failed" => return Ok(Claim::Failed),
        _ => {}
    }
    let previous: Option<String> = row.get(2);
    let live: Option<bool> = row.get(3);
    let present: bool = row.get(4);
    let mine = previous.as_deref() == Some(owner);
    if live == Some(true) && present && !(mine && reclaim_own) {
        // Its owner (possibly this replica, for a duplicate delivery) is alive and holds the
        // lease: that owner finishes the job.
        return Ok(Claim::Busy);
    }
    // A server restart drops every replica's sessions, so an owner that has not written since
    // the restart is missing for that reason, not because it died.
    let before_restart: bool = row.get(6);
    let died = i32::from(previous.is_some() && !present && !before_restart);
    let row = tx
        .query_one(
            "UPDATE jobs SET owner = $2, lease_until = now() + make_interval(secs => $3),
                    fencing_token = fencing_token + 1, claims = claims + 1,
                    abandoned = abandoned + $4,
                    delivery_acked = false, redispatched_at = NULL, updated_at = now()
             WHERE job_id = $1
             RETURNING fencing_token, plan, created_at, claims, abandoned",
            &[&job.job_id, &owner, &lease_secs, &died],
        )
        .await?;
    let token: i64 = row.get(0);
    let plan: Plan = row.get::<_, Json<Plan>>(1).0;
    let batches = super::batches::load(&tx, job.job_id).await?;
    tx.commit().await?;
    Ok(Claim::Owned(Box::new(OwnedJob {
        lease: Lease::new(pool.clone(), job.job_id, token),
        plan,
        batches,
        started_at: row.get(2),
        claims: row.get(3),
        abandoned: row.get(4),
    })))
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

/// Extends the leases of many jobs in one statement, each under its own token; returns the jobs
/// renewed (a job missing from it has been taken over, or has ended).
pub async fn renew_many(
    pool: &Pool,
    job_ids: &[Uuid],
    tokens: &[i64],
    lease: Duration,
) -> Result<std::collections::HashSet<Uuid>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => $3), updated_at = now()
             FROM unnest($1::uuid[], $2::bigint[]) AS held (job_id, token)
             WHERE jobs.job_id = held.job_id AND jobs.fencing_token = held.token AND jobs.status = 'running'
             RETURNING jobs.job_id",
        )
        .await?;
    let rows = client
        .query(&statement, &[&job_ids, &tokens, &lease.as_secs_f64()])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
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

/// What became of a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRequest {
    /// Recorded: the replica working the job stops at its next checkpoint.
    Requested,
    /// Recorded before: nothing changes.
    AlreadyRequested,
    /// The job has ended (`completed` or `failed`): nothing changes.
    Ended(&'static str),
    /// No job of this user has this id (another user's job is not revealed).
    Unknown,
}

/// Records that `user_id` asks to cancel `job_id`, if it is theirs and running.
pub async fn request_cancel(pool: &Pool, job_id: Uuid, user_id: &str) -> Result<CancelRequest, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "WITH job AS (SELECT status, cancel_requested_at FROM jobs WHERE job_id = $1 AND user_id = $2),
                  upd AS (UPDATE jobs SET cancel_requested_at = now(), updated_at = now()
                          WHERE job_id = $1 AND user_id = $2 AND status = 'running' AND cancel_requested_at IS NULL
                          RETURNING 1)
             SELECT job.status, job.cancel_requested_at IS NOT NULL, (SELECT count(*) FROM upd) FROM job",
            &[&job_id, &user_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(CancelRequest::Unknown);
    };
    let (status, before, now): (String, bool, i64) = (row.get(0), row.get(1), row.get(2));
    Ok(match status.as_str() {
        "completed" => CancelRequest::Ended("completed"),
        "failed" => CancelRequest::Ended("failed"),
        _ if now == 1 => CancelRequest::Requested,
        _ if before => CancelRequest::AlreadyRequested,
        _ => CancelRequest::Requested,
    })
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
               AND NOT (jobs.lease_until > now() AND EXISTS (
                   SELECT 1 FROM pg_stat_activity WHERE application_name = $7 || jobs.owner))",
            &[
                &job.job_id,
                &job.user_id,
                &Json(job),
                &Json(plan),
                &(plan.batches.len() as i32),
                &reason,
                &APP_PREFIX,
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

/// Records that the job's delivery was acked before the job ended (see the sweeper).
pub async fn mark_delivery_acked(pool: &Pool, job_id: Uuid) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE jobs SET delivery_acked = true WHERE job_id = $1 AND status = 'running'",
            &[&job_id],
        )
        .await?;
    Ok(())
}

/// A job the sweeper found stranded, with the message that re-dispatches it.
#[derive(Debug)]
pub struct Stranded {
    pub job_id: Uuid,
    pub request: serde_json::Value,
}

/// Finds running jobs that no delivery will bring back, and stamps them so that neither this
/// nor another replica's sweeper re-publishes them again before they are claimed (a claim clears
/// the stamp; a long queue must not fill up with copies of one job):
/// - the delivery was acked (early, or as a duplicate) and the owner's database sessions are
///   gone (it died), or nobody owns it;
/// - the lease expired more than a lease ago (a safety net for anything else that slipped).
///
/// A stamp older than `restamp_after` no longer counts: the copy it stands for may have been
/// lost (a sweeper killed between stamp and publish, a queue purged), so the job is swept again.
pub async fn sweep(
    pool: &Pool,
    lease: Duration,
    restamp_after: Duration,
    limit: i64,
) -> Result<Vec<Stranded>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "UPDATE jobs SET redispatched_at = now()
             WHERE job_id IN (
                SELECT job_id FROM jobs j
                WHERE status = 'running'
                  AND (redispatched_at IS NULL OR redispatched_at < now() - make_interval(secs => $4::float8))
                  AND ((delivery_acked AND (owner IS NULL OR NOT EXISTS (
                           SELECT 1 FROM pg_stat_activity WHERE application_name = $2 || j.owner)))
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
            ],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Stranded {
            job_id: r.get(0),
            request: r.get(1),
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
