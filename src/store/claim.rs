//! Claiming a job: a new job_id is inserted owned by the claimant, a known one is taken over
//! when its owner is gone or its lease has lapsed; either way the claim hands out the job's
//! [`Lease`], the only way to write to it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::Json;

use super::{
    StoreError,
    batches::{self, StoredBatch},
    heartbeat::Liveness,
    jobs::{APP_PREFIX, JobState},
    lease::Lease,
};
use crate::domain::{JobRequest, Plan};

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
    /// The user has `USER_MAX_IN_FLIGHT` other jobs running: this one is parked in Postgres,
    /// unclaimed, to wait its turn (the sweeper dispatches it again when the wait is over).
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
    /// Its user asked to cancel it while an earlier owner had it: it ends before any batch.
    pub cancel_requested: bool,
}

/// A job over its user's `USER_MAX_IN_FLIGHT` waits 2 s, then twice as long each turn up to
/// 10 s: short at first, so that a freed turn is taken soon; longer for a long backlog, whose
/// every try is a claim.
const USER_TURN_FIRST: Duration = Duration::from_secs(2);
const USER_TURN_MAX: Duration = Duration::from_secs(10);

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
    /// Whether an owner without a session or a recent heartbeat may be taken for dead.
    pub liveness: Liveness,
}

impl Claimant {
    /// Claims `job` (see [`claim`]); a new job is stored with `plan`.
    pub async fn claim(&self, job: &JobRequest, plan: &Plan, reclaim_own: bool) -> Result<Claim, StoreError> {
        claim(self, job, plan, reclaim_own).await
    }
}

/// Claims `job` for the claimant's `owner`. A new job is inserted with its plan; a known one is taken over when
/// its lease has expired or its owner has died (no database session and no heartbeat within
/// the grace, see [`Liveness`]), which lets a redelivered job resume within the grace rather
/// than after the lease timeout.
///
/// `reclaim_own`: this replica is not working the job, so a live lease in its own name is the
/// leftover of a claim whose commit reply was lost, not a job in progress; it is taken back.
///
/// A takeover counts as abandoned (towards poison) only when the previous owner died while
/// working the job. An expired lease of a live owner (a database outage, a pause), a released
/// one, and any takeover while this replica's own heartbeat has not held for the grace (after a
/// failover or a proxy restart, when every owner's last beat is old) are not counted.
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
        liveness: _,
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
                "SELECT count(*) AS running FROM jobs
                 WHERE user_id = $1 AND job_id <> $2 AND status = 'running' AND lease_until > now()",
                &[&job.user_id, &job.job_id],
            )
            .await?
            .get("running");
        if running >= i64::from(*limit) {
            if park_new(&tx, job, plan, &request).await? {
                tx.commit().await?;
                return Ok(Claim::UserBusy);
            }
            let taker = Taker::ParkForUser;
            return reclaim(tx, claimant, job, taker, &request).await;
        }
        if let Some(owned) = insert_new(&tx, pool, job, plan, owner, lease_secs, &request).await? {
            tx.commit().await?;
            return Ok(Claim::Owned(Box::new(owned)));
        }
        let taker = Taker::Claim { reclaim_own };
        return reclaim(tx, claimant, job, taker, &request).await;
    }
    // A new job is the common case: one statement in its own transaction. Only a job_id that
    // exists already needs the locked read of `reclaim`.
    if let Some(owned) = insert_new(&client, pool, job, plan, owner, lease_secs, &request).await? {
        return Ok(Claim::Owned(Box::new(owned)));
    }
    let tx = client.transaction().await?;
    reclaim(tx, claimant, job, Taker::Claim { reclaim_own }, &request).await
}

/// Stores a job_id seen for the first time as parked for its user's turn; `false` if it exists.
async fn park_new(
    db: &impl GenericClient,
    job: &JobRequest,
    plan: &Plan,
    request: &Json<&JobRequest>,
) -> Result<bool, StoreError> {
    let n = db
        .execute(
            "INSERT INTO jobs (job_id, user_id, request, plan, batches_total, owner, lease_until,
                               delivery_acked, not_before, waits)
             VALUES ($1, $2, $3, $4, $5, NULL, NULL, true, now() + make_interval(secs => $6), 1)
             ON CONFLICT (job_id) DO NOTHING",
            &[
                &job.job_id,
                &job.user_id,
                request,
                &Json(plan),
                &(plan.batches.len() as i32),
                &USER_TURN_FIRST.as_secs_f64(),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// What [`reclaim`] does with a job it may take.
#[derive(Debug, Clone, Copy)]
enum Taker {
    /// Takes it over. `reclaim_own`: see [`claim`].
    Claim { reclaim_own: bool },
    /// The user is at `USER_MAX_IN_FLIGHT`: parks it for a longer turn instead.
    ParkForUser,
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
        lease: Lease::new(pool.clone(), job.job_id, row.get("fencing_token")),
        plan: plan.clone(),
        batches: Vec::new(),
        started_at: row.get("created_at"),
        claims: 1,
        abandoned: 0,
        cancel_requested: false,
    }))
}

/// Claims a job_id that exists already, in `tx`: ended, another user's, busy, or taken over.
async fn reclaim(
    tx: deadpool_postgres::Transaction<'_>,
    claimant: &Claimant,
    job: &JobRequest,
    taker: Taker,
    request: &Json<&JobRequest>,
) -> Result<Claim, StoreError> {
    let (pool, owner, lease_secs) = (
        &claimant.pool,
        claimant.owner.as_str(),
        claimant.lease.as_secs_f64(),
    );
    let liveness = &claimant.liveness;
    let row = tx
        .query_one(
            "SELECT user_id, status, owner, lease_until > now() AS live,
                    (owner IS NOT NULL AND (NOT $4 OR owner_alive(owner, $2, $5))) AS alive,
                    request = $3 AS same_request
             FROM jobs WHERE job_id = $1 FOR UPDATE",
            &[
                &job.job_id,
                &APP_PREFIX,
                request,
                &liveness.is_judging(),
                &liveness.grace_secs(),
            ],
        )
        .await?;
    // A row without a user is a refusal of a message that named none: the job_id's outcome
    // stands for whoever sends it again.
    if row
        .get::<_, Option<&str>>("user_id")
        .is_some_and(|u| u != job.user_id)
    {
        return Ok(Claim::OtherUser);
    }
    let state = JobState::parse(row.get("status"))?;
    // A failed job_id has had its one outcome, whatever request comes under it now (a refused
    // message corrected, a job cancelled before it arrived): its failure is announced again.
    if state == JobState::Failed {
        return Ok(Claim::Failed);
    }
    if !row.get::<_, bool>("same_request") {
        return Ok(Claim::Conflict);
    }
    if state == JobState::Completed {
        return Ok(Claim::Completed);
    }
    let previous: Option<String> = row.get("owner");
    let live: Option<bool> = row.get("live");
    let alive: bool = row.get("alive");
    let mine = previous.as_deref() == Some(owner);
    let reclaim_own = match taker {
        Taker::Claim { reclaim_own } => reclaim_own,
        Taker::ParkForUser => false,
    };
    if live == Some(true) && alive && !(mine && reclaim_own) {
        // Its owner (possibly this replica, for a duplicate delivery) is alive and holds the
        // lease: that owner finishes the job.
        return Ok(Claim::Busy);
    }
    // Died: no session and no heartbeat within the grace, judged by a replica whose own
    // heartbeat holds. An expired lease of a live owner (an outage, a pause) is no death.
    let died = i32::from(previous.is_some() && !alive);
    if let Taker::ParkForUser = taker {
        // Not ours to run yet: parked for a longer turn, its row the record of the wait.
        tx.execute(
            "UPDATE jobs SET owner = NULL, lease_until = NULL, abandoned = abandoned + $2,
                    delivery_acked = true, redispatched_at = NULL, waits = waits + 1,
                    not_before = now() + make_interval(secs => LEAST($3 * power(2, waits), $4)),
                    updated_at = now()
             WHERE job_id = $1",
            &[
                &job.job_id,
                &died,
                &USER_TURN_FIRST.as_secs_f64(),
                &USER_TURN_MAX.as_secs_f64(),
            ],
        )
        .await?;
        tx.commit().await?;
        return Ok(Claim::UserBusy);
    }
    let row = tx
        .query_one(
            "UPDATE jobs SET owner = $2, lease_until = now() + make_interval(secs => $3),
                    fencing_token = fencing_token + 1, claims = claims + 1,
                    abandoned = abandoned + $4, not_before = NULL, waits = 0,
                    delivery_acked = false, redispatched_at = NULL, updated_at = now()
             WHERE job_id = $1
             RETURNING fencing_token, plan, created_at, claims, abandoned,
                       cancel_requested_at IS NOT NULL AS cancel_requested",
            &[&job.job_id, &owner, &lease_secs, &died],
        )
        .await?;
    let token: i64 = row.get("fencing_token");
    let plan: Plan = row.get::<_, Json<Plan>>("plan").0;
    let batches = batches::load(&tx, job.job_id).await?;
    tx.commit().await?;
    Ok(Claim::Owned(Box::new(OwnedJob {
        lease: Lease::new(pool.clone(), job.job_id, token),
        plan,
        batches,
        started_at: row.get("created_at"),
        claims: row.get("claims"),
        abandoned: row.get("abandoned"),
        cancel_requested: row.get("cancel_requested"),
    })))
}
