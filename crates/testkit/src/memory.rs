//! In-memory stand-ins for a job's checkpoints and the express event sink, for running a job's
//! chains in-process: they record what the chains write and answer as the store would, with
//! scripted cancels, fencing and outages.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use roadmap_worker::{
    domain::{BatchResult, WeekSource, event::Progress},
    pipeline::ports::{Checkpoints, EventSink},
    store::{
        StoreError,
        batches::{Checkpoint, Position},
    },
};
use uuid::Uuid;

/// One stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub index: u32,
    pub weeks: Vec<u32>,
    pub fallback_weeks: usize,
}

#[derive(Debug, Default)]
struct State {
    stored: BTreeMap<u32, Stored>,
    /// Checkpoints from which the job reads as cancelled (the store stores the batch, then says so).
    cancel_after: Option<usize>,
    /// Checkpoints refused as fenced from this stored count on.
    fence_after: Option<usize>,
    /// Transient failures still to answer before the next checkpoint goes through.
    outages: u32,
    attempts: u32,
    /// Checkpoints of these batches answer only after this long (their outcome is decided when
    /// they arrive, as a statement's is when it takes its lock).
    slow: BTreeMap<u32, Duration>,
}

/// A job's checkpoints in memory; clones share them.
#[derive(Debug, Clone)]
pub struct MemoryCheckpoints {
    job_id: Uuid,
    state: Arc<Mutex<State>>,
}

impl MemoryCheckpoints {
    pub fn new(job_id: Uuid) -> Self {
        Self {
            job_id,
            state: Arc::default(),
        }
    }

    /// Once `n` batches are stored, every checkpoint says the job's user cancelled it.
    pub fn cancel_after(self, n: usize) -> Self {
        self.state().cancel_after = Some(n);
        self
    }

    /// Once `n` batches are stored, another replica owns the job: checkpoints are fenced out.
    pub fn fence_after(self, n: usize) -> Self {
        self.state().fence_after = Some(n);
        self
    }

    /// The next `n` checkpoint attempts fail as in a database outage.
    pub fn outage(self, n: u32) -> Self {
        self.state().outages = n;
        self
    }

    /// The checkpoint of batch `index` answers `delay` after it arrives.
    pub fn slow(self, index: u32, delay: Duration) -> Self {
        self.state().slow.insert(index, delay);
        self
    }

    /// The stored batches, by index.
    pub fn stored(&self) -> Vec<Stored> {
        self.state().stored.values().cloned().collect()
    }

    /// Checkpoint attempts, failed ones included.
    pub fn attempts(&self) -> u32 {
        self.state().attempts
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory checkpoints")
    }
}

impl Checkpoints for MemoryCheckpoints {
    async fn checkpoint(
        &self,
        at: Position,
        batch: &BatchResult,
        _express: Option<Duration>,
    ) -> Result<Checkpoint, StoreError> {
        let (answer, delay) = {
            let mut state = self.state();
            (
                self.write(&mut state, at, batch),
                state.slow.get(&at.index).copied(),
            )
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        answer
    }
}

impl MemoryCheckpoints {
    fn write(&self, state: &mut State, at: Position, batch: &BatchResult) -> Result<Checkpoint, StoreError> {
        state.attempts += 1;
        if state.outages > 0 {
            state.outages -= 1;
            return Err(StoreError::Pool(deadpool_postgres::PoolError::Closed));
        }
        if state.fence_after.is_some_and(|n| state.stored.len() >= n) {
            return Err(StoreError::Fenced);
        }
        let fresh = !state.stored.contains_key(&at.index);
        state.stored.insert(
            at.index,
            Stored {
                index: at.index,
                weeks: batch.weeks.iter().map(|w| w.number).collect(),
                fallback_weeks: batch
                    .weeks
                    .iter()
                    .filter(|w| w.source == WeekSource::Fallback)
                    .count(),
            },
        );
        let done = state.stored.len() as u32;
        let mut progress = Progress::new(self.job_id, done, at.total);
        (progress.input_tokens, progress.output_tokens) = (at.input_tokens, at.output_tokens);
        Ok(Checkpoint {
            fresh,
            progress: Some(progress),
            cancelled: state.cancel_after.is_some_and(|n| state.stored.len() >= n),
        })
    }
}

/// The express sink in memory: every progress event handed to it, with its user.
#[derive(Debug, Clone, Default)]
pub struct MemoryEvents {
    progress: Arc<Mutex<Vec<(String, Progress)>>>,
}

impl MemoryEvents {
    pub fn progress(&self) -> Vec<(String, Progress)> {
        self.progress.lock().expect("memory events").clone()
    }
}

impl EventSink for MemoryEvents {
    fn lease(&self) -> Option<Duration> {
        Some(Duration::from_secs(15))
    }

    fn progress(&self, user_id: &str, event: &Progress) {
        self.progress
            .lock()
            .expect("memory events")
            .push((user_id.to_owned(), event.clone()));
    }
}
