//! Why a job message was refused: a stable reason code for headers, metrics and events, with
//! whatever identity could still be read from the message.

use uuid::Uuid;

use super::job::{MAX_BODY_BYTES, MAX_DEPTH, MAX_FOCUS_AREAS};

/// Why a message was refused. `code()` is what goes into headers, metrics and events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("body is {0} bytes, over the limit of {MAX_BODY_BYTES}")]
    BodyTooLarge(usize),
    #[error("content type {0:?} is not application/json")]
    WrongContentType(String),
    #[error("body is not valid UTF-8")]
    InvalidUtf8,
    #[error("JSON nesting deeper than {MAX_DEPTH}")]
    NestingTooDeep,
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotObject,
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` must be {expected}")]
    InvalidType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `{field}` must be between {min} and {max}")]
    OutOfRange { field: &'static str, min: i64, max: i64 },
    #[error("field `{0}` must not be empty")]
    EmptyString(&'static str),
    #[error("field `{field}` is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("at most {MAX_FOCUS_AREAS} focus areas are allowed")]
    TooManyFocusAreas,
    #[error("experience_level must be beginner, intermediate or advanced")]
    UnknownExperienceLevel,
    #[error("priority must be interactive or bulk")]
    UnknownPriority,
    #[error("language is not a BCP 47 tag")]
    InvalidLanguage,
    #[error("field `job_id` is not a UUID")]
    InvalidJobId,
    #[error("job_id belongs to another user")]
    JobOwnedByAnotherUser,
    #[error("job_id was already sent with other fields; the first request stands")]
    JobConflict,
}

impl RejectReason {
    /// Every code [`Self::code`] can return (metrics start each at 0, so alerts see the first one).
    pub const CODES: [&'static str; 18] = [
        "body_too_large",
        "wrong_content_type",
        "invalid_utf8",
        "nesting_too_deep",
        "not_json",
        "not_object",
        "missing_field",
        "invalid_type",
        "out_of_range",
        "empty_string",
        "too_long",
        "too_many_focus_areas",
        "unknown_experience_level",
        "unknown_priority",
        "invalid_language",
        "invalid_job_id",
        "job_owned_by_another_user",
        "job_conflict",
    ];

    /// Stable reason code; a bounded set, so it is safe as a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BodyTooLarge(_) => "body_too_large",
            Self::WrongContentType(_) => "wrong_content_type",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::NestingTooDeep => "nesting_too_deep",
            Self::NotJson(_) => "not_json",
            Self::NotObject => "not_object",
            Self::MissingField(_) => "missing_field",
            Self::InvalidType { .. } => "invalid_type",
            Self::OutOfRange { .. } => "out_of_range",
            Self::EmptyString(_) => "empty_string",
            Self::TooLong { .. } => "too_long",
            Self::TooManyFocusAreas => "too_many_focus_areas",
            Self::UnknownExperienceLevel => "unknown_experience_level",
            Self::UnknownPriority => "unknown_priority",
            Self::InvalidLanguage => "invalid_language",
            Self::InvalidJobId => "invalid_job_id",
            Self::JobOwnedByAnotherUser => "job_owned_by_another_user",
            Self::JobConflict => "job_conflict",
        }
    }
}

/// The reason code of a cancel message that breaks `schemas/cancel.v1.json`: it is
/// dead-lettered, never announced (its job_id may be anything).
pub const INVALID_CANCEL: &str = "invalid_cancel";

/// Every reason a dead letter can carry (`dead_letters.reason`, the broker copy's
/// `x-reject-reason`): a refused job message's code, a job failed as poison, a malformed cancel.
pub fn dead_letter_codes() -> impl Iterator<Item = &'static str> {
    RejectReason::CODES
        .into_iter()
        .chain([super::event::JobFailure::PoisonJob.as_str(), INVALID_CANCEL])
}

/// A refused message, with whatever identity could still be read from it (for the failed event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub job_id: Option<Uuid>,
    pub user_id: Option<String>,
}

impl Rejection {
    /// A job_id is "readable" from the body when it is a JSON object with a UUID `job_id`;
    /// failing that, `stated` is taken: the one the message's properties state (its `job_id`
    /// header, then its `correlation_id`, see `amqp::properties::stated_job_id`). A body too
    /// large, not UTF-8 or nested too deep is not read at all. The `message_id` is never read:
    /// client libraries fill it with an id of their own (aiormq does), and a refusal announced
    /// under it would name a job the backend never issued.
    pub fn or_job_id(mut self, stated: Option<Uuid>) -> Self {
        if self.job_id.is_none() {
            self.job_id = stated;
        }
        self
    }
}
