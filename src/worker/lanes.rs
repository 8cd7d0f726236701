//! The two work queues' turns. A free slot takes an interactive job first and a bulk job only
//! when no interactive one is waiting; when every slot is busy and an interactive job arrives,
//! the youngest bulk job is handed back at its next batch (its checkpoints kept) to free one.
//! So bulk work never delays interactive work by more than one batch.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use tokio_util::sync::CancellationToken;

/// Which work queue a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    Interactive,
    Bulk,
}

/// The bulk jobs running on this replica, youngest last.
#[derive(Debug, Default)]
pub(super) struct BulkJobs {
    next: AtomicU64,
    running: Mutex<Vec<(u64, CancellationToken)>>,
}

/// A bulk job's turn: `stop` ends it at its next batch (or with the replica's shutdown).
#[derive(Debug)]
pub(super) struct BulkTurn<'a> {
    jobs: &'a BulkJobs,
    id: u64,
    pub stop: CancellationToken,
}

impl BulkJobs {
    /// Registers a bulk job that stops with `shutdown` or when asked to yield.
    pub fn start(&self, shutdown: &CancellationToken) -> BulkTurn<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stop = shutdown.child_token();
        self.running.lock().expect("bulk jobs").push((id, stop.clone()));
        BulkTurn { jobs: self, id, stop }
    }

    /// Asks the youngest bulk job not yet asked to yield its slot; `false` if there is none.
    pub fn yield_one(&self) -> bool {
        let running = self.running.lock().expect("bulk jobs");
        match running.iter().rev().find(|(_, stop)| !stop.is_cancelled()) {
            Some((_, stop)) => {
                stop.cancel();
                true
            }
            None => false,
        }
    }
}

impl Drop for BulkTurn<'_> {
    fn drop(&mut self) {
        self.jobs
            .running
            .lock()
            .expect("bulk jobs")
            .retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_youngest_bulk_job_yields_first_and_once() {
        let (jobs, shutdown) = (BulkJobs::default(), CancellationToken::new());
        let old = jobs.start(&shutdown);
        let young = jobs.start(&shutdown);
        assert!(jobs.yield_one());
        assert!(young.stop.is_cancelled() && !old.stop.is_cancelled());
        assert!(jobs.yield_one());
        assert!(old.stop.is_cancelled());
        assert!(!jobs.yield_one(), "every bulk job was asked already");
        drop((old, young));
        assert!(jobs.running.lock().unwrap().is_empty());
    }
}
