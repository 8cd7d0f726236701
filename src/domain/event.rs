//! Events the worker publishes to `roadmap.events` (contract v1). The routing key is the event type.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::roadmap::Roadmap;

pub const COMPLETED: &str = "roadmap.completed";
pub const FAILED: &str = "roadmap.failed";
pub const PROGRESS: &str = "roadmap.progress";
pub const CANCEL_REJECTED: &str = "roadmap.cancel_rejected";

/// The answer to a cancel message that changed nothing: the job had ended, or no job of that
/// user has that id. A cancel that is taken is answered by the job's `roadmap.failed` event
/// with reason `cancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRejected {
    pub event: String,
    pub version: u32,
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub user_id: String,
    /// `job_completed`, `job_failed` or `unknown_job`.
    pub reason: String,
    pub message: String,
}

impl CancelRejected {
    pub fn new(job_id: Uuid, user_id: String, reason: &str, message: String) -> Self {
        Self {
            event: CANCEL_REJECTED.into(),
            version: 1,
            event_id: Uuid::now_v7(),
            job_id,
            user_id,
            reason: reason.into(),
            message,
        }
    }
}

/// Why a job that was taken on ended as failed (a `roadmap.failed` reason beside the refusal
/// codes of [`RejectReason`](super::RejectReason)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFailure {
    /// The job was abandoned by too many workers (they died while working it).
    PoisonJob,
    /// The broker dead-lettered the job's message for its delivery limit more often than the
    /// worker returns such messages to work.
    DeliveryLimit,
    /// The job's calls used more output tokens than `JOB_MAX_OUTPUT_TOKENS` allows.
    OutputTokenCap,
    /// Its user cancelled it (the cancel message); the batches written are kept.
    Cancelled,
}

impl JobFailure {
    pub const ALL: [Self; 4] = [
        Self::PoisonJob,
        Self::DeliveryLimit,
        Self::OutputTokenCap,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PoisonJob => "poison_job",
            Self::DeliveryLimit => "delivery_limit",
            Self::OutputTokenCap => "output_token_cap",
            Self::Cancelled => "cancelled",
        }
    }
}

/// LLM usage, summed over every attempt including failed ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub llm_calls: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those the provider served from its prompt cache (billed lower).
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// What the calls cost at the configured prices, in billionths of the currency unit: whole
    /// numbers, so that sums are exact. Written as `cost` in currency units.
    #[serde(rename = "cost", with = "cost_units", default)]
    pub cost_nanos: u64,
}

/// Timestamps as RFC 3339 in UTC with exactly six fractional digits (`2026-12-01T14:05:17.699558Z`),
/// whatever their source: Postgres keeps microseconds, the clock gives nanoseconds, and a
/// consumer should not see two shapes in one event.
mod micros {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }
}

/// A cost in billionths of a unit, written and read as a number of units.
mod cost_units {
    use serde::{Deserialize, Deserializer, Serializer};

    const NANOS: f64 = 1e9;

    pub fn serialize<S: Serializer>(nanos: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(*nanos as f64 / NANOS)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let units = f64::deserialize(d)?;
        Ok((units.max(0.0) * NANOS).round() as u64)
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        // Token counts are the provider's word: saturate rather than overflow on absurd ones.
        self.llm_calls = self.llm_calls.saturating_add(other.llm_calls);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cached_input_tokens = self.cached_input_tokens.saturating_add(other.cached_input_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completed {
    pub event: String,
    pub version: u32,
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub user_id: String,
    pub roadmap_id: Uuid,
    pub duration_weeks: u32,
    pub batches: u32,
    pub fallback_batches: u32,
    pub usage: Usage,
    #[serde(with = "micros")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "micros")]
    pub completed_at: DateTime<Utc>,
    pub roadmap: Roadmap,
}

/// A completion event without its roadmap: what the outbox stores, the roadmap being stored once,
/// in its own table.
#[derive(Debug, Serialize)]
pub struct CompletedHead<'a> {
    pub event: &'a str,
    pub version: u32,
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub user_id: &'a str,
    pub roadmap_id: Uuid,
    pub duration_weeks: u32,
    pub batches: u32,
    pub fallback_batches: u32,
    pub usage: Usage,
    #[serde(with = "micros")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "micros")]
    pub completed_at: DateTime<Utc>,
}

impl Completed {
    pub fn head(&self) -> CompletedHead<'_> {
        CompletedHead {
            event: &self.event,
            version: self.version,
            event_id: self.event_id,
            job_id: self.job_id,
            user_id: &self.user_id,
            roadmap_id: self.roadmap_id,
            duration_weeks: self.duration_weeks,
            batches: self.batches,
            fallback_batches: self.fallback_batches,
            usage: self.usage,
            started_at: self.started_at,
            completed_at: self.completed_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub event: String,
    pub version: u32,
    pub event_id: Uuid,
    pub job_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub event: String,
    pub version: u32,
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub batches_done: u32,
    pub batches_total: u32,
    /// The job's LLM tokens so far, as the replica writing this batch counts them.
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
}

impl Failed {
    pub fn new(job_id: Uuid, user_id: Option<String>, reason: &str, message: String) -> Self {
        Self {
            event: FAILED.into(),
            version: 1,
            event_id: Uuid::now_v7(),
            job_id,
            user_id,
            reason: reason.into(),
            message,
        }
    }
}

impl Progress {
    pub fn new(job_id: Uuid, batches_done: u32, batches_total: u32) -> Self {
        Self {
            event: PROGRESS.into(),
            version: 1,
            event_id: Uuid::now_v7(),
            job_id,
            batches_done,
            batches_total,
            input_tokens: 0,
            output_tokens: 0,
        }
    }
}
