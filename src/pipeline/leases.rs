//! Lease renewal for every job a replica holds, in one statement per tick: thousands of jobs in
//! flight cost one UPDATE every third of a lease, not one each, and no task of their own.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::Duration,
};

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

use crate::store;

/// A held job's fencing token, and the token cancelled when another replica owns the job.
type Held = HashMap<Uuid, (i64, CancellationToken)>;

/// The leases of one replica's running jobs; cheap to clone, shared by its job tasks.
#[derive(Debug, Clone)]
pub struct Renewer {
    held: Arc<Mutex<Held>>,
}

impl Renewer {
    /// Renews every held lease for `lease` each third of it, until the last clone is dropped.
    pub fn start(pool: Pool, lease: Duration) -> Self {
        let held = Arc::new(Mutex::new(Held::new()));
        tokio::spawn(renew_loop(pool, lease, Arc::downgrade(&held)));
        Self { held }
    }

    /// Keeps the lease of `job_id` under `token` renewed while the guard lives; `lost` is
    /// cancelled if a renewal finds that another replica owns the job.
    pub fn hold(&self, job_id: Uuid, token: i64, lost: CancellationToken) -> LeaseGuard {
        lock(&self.held).insert(job_id, (token, lost));
        LeaseGuard {
            held: Arc::downgrade(&self.held),
            job_id,
            token,
        }
    }
}

/// Stops the renewal of one job's lease when dropped.
#[derive(Debug)]
pub struct LeaseGuard {
    held: Weak<Mutex<Held>>,
    job_id: Uuid,
    token: i64,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(held) = self.held.upgrade() {
            let mut held = lock(&held);
            // A later claim of the same job on this replica holds its own token.
            if held.get(&self.job_id).is_some_and(|(t, _)| *t == self.token) {
                held.remove(&self.job_id);
            }
        }
    }
}

fn lock(held: &Mutex<Held>) -> MutexGuard<'_, Held> {
    // Nothing is left half-done under this lock: take it even after a panic elsewhere.
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn renew_loop(pool: Pool, lease: Duration, held: Weak<Mutex<Held>>) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(held) = held.upgrade() else { return };
        let (ids, tokens): (Vec<Uuid>, Vec<i64>) = lock(&held).iter().map(|(id, (t, _))| (*id, *t)).unzip();
        if ids.is_empty() {
            continue;
        }
        match store::jobs::renew_many(&pool, &ids, &tokens, lease).await {
            Ok(renewed) => {
                let mut held = lock(&held);
                for (id, token) in ids.iter().zip(&tokens) {
                    if renewed.contains(id) {
                        continue;
                    }
                    // Fenced: another replica took the job over (or it has ended).
                    if let Some((t, lost)) = held.get(id)
                        && t == token
                    {
                        warn!(job_id = %id, "lease lost to another replica; stopping this job");
                        lost.cancel();
                        held.remove(id);
                    }
                }
            }
            Err(e) => warn!(error = %e, jobs = ids.len(), "lease renewal failed; retrying"),
        }
    }
}
