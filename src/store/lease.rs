//! A job's lease as a handle: only a claim creates one, and every write fenced by the lease's
//! token is a method of it, so no write can present a token it was not given. A stale handle
//! (the job taken over since) writes nothing: its writes answer `Fenced`.

use std::time::Duration;

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::{
    StoreError,
    batches::{self, Checkpoint, Position},
    jobs, outbox, roadmaps,
};
use crate::domain::{
    BatchResult, Plan,
    event::{Accepted, Completed, EventKind, Failed},
};

/// The lease of one job under one fencing token. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Lease {
    pool: Pool,
    job_id: Uuid,
    token: i64,
}

impl Lease {
    /// Only a claim (or a test of the store, through it) makes one.
    pub(super) fn new(pool: Pool, job_id: Uuid, token: i64) -> Self {
        Self { pool, job_id, token }
    }

    pub fn job_id(&self) -> Uuid {
        self.job_id
    }

    /// The fencing token: every write under this lease presents it.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// Stores the outlined plan of a job with no checkpoint yet; `Fenced` once it has one, or
    /// another replica has the job.
    pub async fn set_plan(&self, plan: &Plan) -> Result<(), StoreError> {
        jobs::set_plan(&self.pool, self.job_id, self.token, plan).await
    }

    /// Queues the job's `roadmap.accepted` event for this claim, its outbox row leased for
    /// `express` when given. Returns whether it was queued now (not by an earlier try).
    pub async fn accepted(&self, event: &Accepted, express: Option<Duration>) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        outbox::insert_for_owner(
            &client,
            event.event_id,
            self.job_id,
            self.token,
            EventKind::Accepted,
            event,
            express,
        )
        .await
    }

    /// Stores a finished batch with the job's progress and its `roadmap.progress` event, the
    /// event's outbox row leased for `express` when given.
    pub async fn checkpoint(
        &self,
        at: Position,
        batch: &BatchResult,
        express: Option<Duration>,
    ) -> Result<Checkpoint, StoreError> {
        batches::checkpoint(&self.pool, self.job_id, self.token, at, batch, express).await
    }

    /// Completes the job with its roadmap and queues its `roadmap.completed` event.
    pub async fn complete(&self, event: &Completed, express: Option<Duration>) -> Result<(), StoreError> {
        roadmaps::complete(&self.pool, self.job_id, self.token, event, express).await
    }

    /// Ends the job as failed for `reason` and queues its `roadmap.failed` event.
    pub async fn fail(&self, reason: &str, event: &Failed) -> Result<(), StoreError> {
        jobs::fail(&self.pool, self.job_id, self.token, reason, event).await
    }

    /// Extends the lease; `Fenced` if another replica has taken the job over.
    pub async fn renew(&self, lease: Duration) -> Result<(), StoreError> {
        jobs::renew(&self.pool, self.job_id, self.token, lease).await
    }

    /// Gives the lease up at once (a hand-back), so another replica need not wait for it.
    pub async fn release(&self) -> Result<(), StoreError> {
        jobs::release(&self.pool, self.job_id, self.token).await
    }

    /// Parks the job unowned in Postgres until `wait` has passed (see [`jobs::park`]).
    pub async fn park(&self, wait: Duration, copy_sent: bool) -> Result<(), StoreError> {
        jobs::park(&self.pool, self.job_id, self.token, wait, copy_sent).await
    }

    /// Gives up a job whose task panicked, counting it as abandoned (towards poison).
    pub async fn abandon(&self) -> Result<(), StoreError> {
        jobs::abandon(&self.pool, self.job_id, self.token).await
    }
}
