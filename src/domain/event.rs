//! Events the worker publishes to `roadmap.events` (contract v1). The routing key is the event type.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{quality::QualityReport, roadmap::Roadmap};

/// The type of an event. On the wire (routing key, `event` field and header) and in the outbox
/// it is a string; inside the worker it is this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A replica claimed the job and starts (or resumes) it.
    Accepted,
    Progress,
    Completed,
    Failed,
    /// The answer to a cancel that changed nothing.
    CancelRejected,
}

/// What the relay does with an event that no queue took (the backend has not bound its queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// Marked sent and counted as unrouted: it is stale by the time a queue binds.
    LetGo,
    /// Kept unsent and tried again with a backoff, so that a consumer binding later gets it.
    Retry,
}

impl EventKind {
    pub const ALL: [Self; 5] = [
        Self::Accepted,
        Self::Progress,
        Self::Completed,
        Self::Failed,
        Self::CancelRejected,
    ];

    /// The wire string: the routing key on `roadmap.events`, and the event's `event` field.
    pub const fn routing_key(self) -> &'static str {
        match self {
            Self::Accepted => "roadmap.accepted",
            Self::Progress => "roadmap.progress",
            Self::Completed => "roadmap.completed",
            Self::Failed => "roadmap.failed",
            Self::CancelRejected => "roadmap.cancel_rejected",
        }
    }

    /// Only a job's outcome and a cancel's answer are owed to a consumer; an acceptance or a
    /// progress event is superseded by the next one.
    pub fn unroutable_policy(self) -> Unroutable {
        match self {
            Self::Accepted | Self::Progress => Unroutable::LetGo,
            Self::Completed | Self::Failed | Self::CancelRejected => Unroutable::Retry,
        }
    }
}

/// A routing key that names no [`EventKind`] (a newer worker's, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an event kind this worker knows")]
pub struct UnknownEventKind(pub String);

impl std::str::FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.routing_key() == key)
            .ok_or_else(|| UnknownEventKind(key.to_owned()))
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.routing_key())
    }
}

/// For an event's `event` field.
impl From<EventKind> for String {
    fn from(kind: EventKind) -> Self {
        kind.routing_key().to_owned()
    }
}

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
            event: EventKind::CancelRejected.into(),
            version: 1,
            event_id: Uuid::now_v7(),
            job_id,
            user_id,
            reason: reason.into(),
            message,
        }
    }
}

/// Why a cancel changed nothing (the `reason` of `roadmap.cancel_rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRefusal {
    /// The job had completed.
    JobCompleted,
    /// The job had failed.
    JobFailed,
    /// No job of this user has the job_id (another user's job is never revealed).
    UnknownJob,
}

impl CancelRefusal {
    pub const ALL: [Self; 3] = [Self::JobCompleted, Self::JobFailed, Self::UnknownJob];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobCompleted => "job_completed",
            Self::JobFailed => "job_failed",
            Self::UnknownJob => "unknown_job",
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
    /// The content checks' findings; absent with `QUALITY_CHECKS=off` (and from versions
    /// without the checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityReport>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<&'a QualityReport>,
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
            quality: self.quality.as_ref(),
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

/// A replica claimed the job: it is being worked, with this plan. Sent at every claim that
/// starts work (a takeover after a crash too, with `claim` > 1 and the batches already stored),
/// before the job's first LLM call of that claim, so it comes before the claim's progress events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub event: String,
    pub version: u32,
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub user_id: String,
    /// Batches of the job's plan; an outlined job's plan may still be cut again within its
    /// phases after the outline, and its progress events then carry the final total.
    pub batches_total: u32,
    /// Batches already stored by earlier claims (0 for a new job).
    pub batches_done: u32,
    /// Which claim of the job this is: 1 for its first; more after a hand-back or a takeover.
    pub claim: u32,
}

impl Accepted {
    /// The event id is derived from the job and the claim, so a write repeated after a lost
    /// commit reply is one event, and a consumer de-duplicating by id keeps one per claim.
    pub fn new(job_id: Uuid, user_id: &str, batches: (u32, u32), claim: u32) -> Self {
        let (batches_done, batches_total) = batches;
        Self {
            event: EventKind::Accepted.into(),
            version: 1,
            event_id: Uuid::new_v5(&job_id, format!("roadmap.accepted/{claim}").as_bytes()),
            job_id,
            user_id: user_id.to_owned(),
            batches_total,
            batches_done,
            claim,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub event: String,
    pub version: u32,
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub batches_done: u32,
    pub batches_total: u32,
    /// The job's LLM tokens so far: its outline's and every batch stored before this one's,
    /// this one's included.
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
}

impl Failed {
    pub fn new(job_id: Uuid, user_id: Option<String>, reason: &str, message: String) -> Self {
        Self {
            event: EventKind::Failed.into(),
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
            event: EventKind::Progress.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_wire_string() {
        for kind in EventKind::ALL {
            assert_eq!(kind.routing_key().parse::<EventKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.routing_key());
            assert_eq!(String::from(kind), kind.routing_key());
        }
    }

    #[test]
    fn the_wire_strings_are_the_contract() {
        let keys = EventKind::ALL.map(EventKind::routing_key);
        assert_eq!(
            keys,
            [
                "roadmap.accepted",
                "roadmap.progress",
                "roadmap.completed",
                "roadmap.failed",
                "roadmap.cancel_rejected"
            ]
        );
    }

    #[test]
    fn unknown_and_near_miss_keys_are_refused() {
        for key in [
            "",
            "roadmap",
            "roadmap.generate",
            "Roadmap.completed",
            "roadmap.completed ",
            "progress",
        ] {
            assert_eq!(key.parse::<EventKind>(), Err(UnknownEventKind(key.to_owned())));
        }
    }

    #[test]
    fn only_acceptance_and_progress_are_let_go_when_no_queue_takes_them() {
        let let_go: Vec<EventKind> = EventKind::ALL
            .into_iter()
            .filter(|k| k.unroutable_policy() == Unroutable::LetGo)
            .collect();
        assert_eq!(let_go, [EventKind::Accepted, EventKind::Progress]);
    }

    #[test]
    fn built_events_carry_their_kind() {
        let id = Uuid::nil();
        let failed = Failed::new(id, None, "cancelled", String::new());
        let progress = Progress::new(id, 1, 2);
        let rejected = CancelRejected::new(id, "u".into(), "unknown_job", String::new());
        assert_eq!(failed.event.parse(), Ok(EventKind::Failed));
        assert_eq!(progress.event.parse(), Ok(EventKind::Progress));
        assert_eq!(rejected.event.parse(), Ok(EventKind::CancelRejected));
    }
}
