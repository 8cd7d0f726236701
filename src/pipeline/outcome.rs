//! The one outcome a job's delivery comes to: a run's end, or the refusal of its message. The
//! worker's settle table maps each to ack, hand-back or dead-letter, in one place.

use crate::{domain::Rejection, llm::LlmError, store::StoreError};

/// How handling one job message ended.
#[derive(Debug)]
pub enum Outcome {
    /// The roadmap is stored and its event queued, now or by an earlier delivery.
    Completed,
    /// The job has ended as failed: earlier, or now at its cap or its user's cancel (the
    /// event is queued).
    Failed,
    /// A live replica is working the job: this delivery is a duplicate, settled at once. The job
    /// is marked as having no delivery of its own, so the sweeper brings it back if that
    /// replica dies.
    Duplicate,
    /// Another replica took the job over; it finishes it.
    Fenced,
    /// The message is refused for good: malformed, another user's job_id, or the same job_id
    /// with other fields. The stored job, if any, is untouched.
    Refused(Rejection),
    /// The job killed or lost its workers too often; it is failed and its event queued.
    Poison { abandoned: i32 },
    /// Shutdown came before the job finished; its checkpoints are kept for the next replica.
    Stopped,
    /// The LLM provider refuses every request (bad key, unknown model): the job waits for an
    /// operator, untouched by templates. `parked`: its wait is recorded in Postgres (the
    /// delivery can go); otherwise the database is away too and the broker keeps the wait.
    ProviderFault { fault: LlmError, parked: bool },
    /// The database stayed unreachable through the store's retries.
    StoreDown(StoreError),
    /// The user has `USER_MAX_IN_FLIGHT` jobs running elsewhere: not claimed, parked in
    /// Postgres to wait its turn.
    UserBusy,
}
