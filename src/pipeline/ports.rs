//! The seams between a job's chains and what they write to: the job's fenced checkpoints and the
//! express sink for committed events. Small traits with static dispatch (the chains are generic
//! over them, so no call is boxed), implemented here by the store's [`Lease`] and
//! [`ExpressLane`], and in tests by in-memory stand-ins that run the chains in-process.

use std::{future::Future, time::Duration};

use crate::{
    domain::{
        BatchResult,
        event::{EventKind, Progress},
    },
    store::{
        StoreError,
        batches::{Checkpoint, Position},
        lease::Lease,
        outbox::ExpressLane,
    },
};

/// A job's checkpoints under its lease.
pub trait Checkpoints: Send + Sync {
    /// Stores a finished batch at `at`, with the job's progress and its progress event (the
    /// event's row leased for `express` when given). `Fenced` once another replica owns the job.
    fn checkpoint(
        &self,
        at: Position,
        batch: &BatchResult,
        express: Option<Duration>,
    ) -> impl Future<Output = Result<Checkpoint, StoreError>> + Send;
}

impl Checkpoints for Lease {
    fn checkpoint(
        &self,
        at: Position,
        batch: &BatchResult,
        express: Option<Duration>,
    ) -> impl Future<Output = Result<Checkpoint, StoreError>> + Send {
        Lease::checkpoint(self, at, batch, express)
    }
}

/// Where committed events go to be published at once; what it drops, the outbox relay sends.
pub trait EventSink: Send + Sync {
    /// The lease to write a committed event's outbox row with, if this sink publishes it.
    fn lease(&self) -> Option<Duration>;

    /// Hands over the progress event of `user_id`'s job, committed with its checkpoint.
    fn progress(&self, user_id: &str, event: &Progress);
}

impl EventSink for ExpressLane {
    fn lease(&self) -> Option<Duration> {
        ExpressLane::lease(self)
    }

    fn progress(&self, user_id: &str, event: &Progress) {
        self.send(
            event.event_id,
            EventKind::Progress,
            (event.job_id, Some(user_id)),
            event,
        );
    }
}
