//! The jobs a replica has taken up, in one registry: a claim under way, or a lease, renewed
//! while its job runs. Renewal is one statement per tick for every lease: thousands of jobs in
//! flight cost one UPDATE every third of a lease, not one each, and no task of their own. A job
//! whose task ended without finishing (the drain aborted it, or it panicked) keeps its entry,
//! unrenewed, so that the drain can release its lease and a panic can give it up.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::Duration,
};

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::store::{self, lease::Lease};

/// One job taken up by this replica.
#[derive(Debug)]
enum Entry {
    /// Its claim is under way: a second delivery here must not take our fresh lease for a
    /// leftover.
    Claiming,
    /// Claimed. `renewal` holds what a renewal tells the job's task; `None` once the task has
    /// stopped renewing it.
    Leased { lease: Lease, renewal: Option<Told> },
}

/// What a renewal tells a job's task.
#[derive(Debug, Clone, Default)]
pub struct Told {
    /// Another replica owns the job: stop at once.
    pub lost: CancellationToken,
    /// Its user asked to cancel it: stop, dropping the calls in flight or waiting on the budget.
    pub cancel: CancellationToken,
}

type Entries = HashMap<Uuid, Entry>;

/// The registry; cheap to clone, shared by a replica's job tasks.
#[derive(Debug, Clone)]
pub struct Leases {
    entries: Arc<Mutex<Entries>>,
}

impl Leases {
    /// Renews every lease being held for `lease` each third of it, until the last clone is
    /// dropped.
    pub fn start(pool: Pool, lease: Duration) -> Self {
        let entries = Arc::new(Mutex::new(Entries::new()));
        tokio::spawn(renew_loop(pool, lease, Arc::downgrade(&entries)));
        Self { entries }
    }

    /// Marks a claim of `job_id` under way; `false` if the job is already taken up here (a
    /// second delivery racing the first).
    pub fn begin_claim(&self, job_id: Uuid) -> bool {
        let mut entries = self.lock();
        if entries.contains_key(&job_id) {
            return false;
        }
        entries.insert(job_id, Entry::Claiming);
        true
    }

    /// The claim begun with [`Self::begin_claim`] did not take the job.
    pub fn end_claim(&self, job_id: Uuid) {
        let mut entries = self.lock();
        if matches!(entries.get(&job_id), Some(Entry::Claiming)) {
            entries.remove(&job_id);
        }
    }

    /// Holds `lease` and renews it while the guard lives, telling the job's task through `told`
    /// what a renewal finds: another replica owns the job, or its user asked to cancel it.
    pub fn hold(&self, lease: Lease, told: Told) -> RenewalGuard {
        let guard = RenewalGuard {
            entries: Arc::downgrade(&self.entries),
            job_id: lease.job_id(),
            token: lease.token(),
        };
        self.lock().insert(
            lease.job_id(),
            Entry::Leased {
                lease,
                renewal: Some(told),
            },
        );
        guard
    }

    /// The job under `lease` has ended here (finished, failed or handed back): its entry goes.
    pub fn finish(&self, lease: &Lease) {
        let mut entries = self.lock();
        if held_under(&entries, lease.job_id(), lease.token()) {
            entries.remove(&lease.job_id());
        }
    }

    /// Takes the lease of `job_id` out of the registry (a panicked task's job, to give up).
    pub fn take(&self, job_id: Uuid) -> Option<Lease> {
        match self.lock().remove(&job_id)? {
            Entry::Leased { lease, .. } => Some(lease),
            Entry::Claiming => None,
        }
    }

    /// Takes every lease still held (tasks the drain had to abort), to release.
    pub fn drain(&self) -> Vec<Lease> {
        self.lock()
            .drain()
            .filter_map(|(_, entry)| match entry {
                Entry::Leased { lease, .. } => Some(lease),
                Entry::Claiming => None,
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        lock(&self.entries)
    }
}

/// Whether `job_id` is held under `token` (a later claim of the same job holds its own token).
fn held_under(entries: &Entries, job_id: Uuid, token: i64) -> bool {
    matches!(entries.get(&job_id), Some(Entry::Leased { lease, .. }) if lease.token() == token)
}

/// Stops the renewal of one job's lease when dropped; the entry stays until the job's end is
/// settled ([`Leases::finish`], [`Leases::take`], [`Leases::drain`]).
#[derive(Debug)]
pub struct RenewalGuard {
    entries: Weak<Mutex<Entries>>,
    job_id: Uuid,
    token: i64,
}

impl Drop for RenewalGuard {
    fn drop(&mut self) {
        if let Some(entries) = self.entries.upgrade() {
            let mut entries = lock(&entries);
            if let Some(Entry::Leased { lease, renewal }) = entries.get_mut(&self.job_id)
                && lease.token() == self.token
            {
                *renewal = None;
            }
        }
    }
}

fn lock(entries: &Mutex<Entries>) -> MutexGuard<'_, Entries> {
    // Nothing is left half-done under this lock: take it even after a panic elsewhere.
    entries.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn renew_loop(pool: Pool, lease: Duration, entries: Weak<Mutex<Entries>>) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(entries) = entries.upgrade() else { return };
        let (ids, tokens): (Vec<Uuid>, Vec<i64>) = lock(&entries)
            .iter()
            .filter_map(|(id, entry)| match entry {
                Entry::Leased {
                    lease,
                    renewal: Some(_),
                } => Some((*id, lease.token())),
                _ => None,
            })
            .unzip();
        if ids.is_empty() {
            continue;
        }
        match store::bounded(store::jobs::renew_many(&pool, &ids, &tokens, lease)).await {
            Ok(renewed) => {
                let mut entries = lock(&entries);
                for (id, token) in ids.iter().zip(&tokens) {
                    let Some(Entry::Leased {
                        lease,
                        renewal: Some(told),
                    }) = entries.get(id)
                    else {
                        continue;
                    };
                    if lease.token() != *token {
                        continue;
                    }
                    if renewed.held.contains(id) {
                        if renewed.cancel_requested.contains(id) && !told.cancel.is_cancelled() {
                            info!(job_id = %id, "the job's user cancelled it; stopping its calls");
                            told.cancel.cancel();
                        }
                        continue;
                    }
                    // Fenced: another replica took the job over (or it has ended).
                    warn!(job_id = %id, "lease lost to another replica; stopping this job");
                    told.lost.cancel();
                    entries.remove(id);
                }
            }
            Err(e) => warn!(error = %e, jobs = ids.len(), "lease renewal failed; retrying"),
        }
    }
}
