//! The job message (contract v1): decoding untrusted bytes into a validated [`JobRequest`].
//!
//! Decoding walks a `serde_json::Value` by hand rather than deriving `Deserialize`, so that every
//! way a message can be wrong maps to a stable, machine-readable [`RejectReason`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{RejectReason, Rejection};

/// Largest job message accepted, in bytes. A real message is well under 4 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Deepest JSON nesting accepted; a job message needs 2 levels.
pub const MAX_DEPTH: usize = 16;
pub const MAX_FOCUS_AREAS: usize = 10;

/// A job that passed every check of the message contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    pub job_id: Uuid,
    pub user_id: String,
    pub target_role: String,
    pub duration_weeks: u32,
    pub experience_level: ExperienceLevel,
    pub hours_per_week: u32,
    pub focus_areas: Vec<String>,
    pub language: String,
    /// Which work queue's turn the job takes; not part of the stored request, so a job sent
    /// again with another priority is the same job.
    #[serde(skip)]
    pub priority: Priority,
}

/// `interactive` jobs (the default) go before `bulk` ones: a replica takes bulk work only with
/// a slot to spare, and hands a bulk job back at its next batch when an interactive job waits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Priority {
    #[default]
    Interactive,
    Bulk,
}

/// The part of a job that shapes the roadmap's content. It is all the LLM ever sees of a job:
/// identifiers stay out of prompts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProfile {
    pub target_role: String,
    pub experience_level: ExperienceLevel,
    pub hours_per_week: u32,
    pub focus_areas: Vec<String>,
    pub language: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperienceLevel {
    Beginner,
    Intermediate,
    Advanced,
}

impl ExperienceLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Beginner => "beginner",
            Self::Intermediate => "intermediate",
            Self::Advanced => "advanced",
        }
    }
}

impl JobRequest {
    /// Decodes a delivery body. `content_type` is the AMQP property, if the publisher set one.
    pub fn decode(body: &[u8], content_type: Option<&str>) -> Result<Self, Rejection> {
        let bare = |reason| Rejection {
            reason,
            job_id: None,
            user_id: None,
        };
        if body.len() > MAX_BODY_BYTES {
            return Err(bare(RejectReason::BodyTooLarge(body.len())));
        }
        let readable = || {
            let text = std::str::from_utf8(body).ok()?;
            (nesting_depth(text) <= MAX_DEPTH).then(|| serde_json::from_str::<Value>(text).ok())?
        };
        if let Some(ct) = content_type {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                // Refused for its label, but a readable JSON body still says whose job it is.
                let (job_id, user_id) = match readable() {
                    Some(Value::Object(obj)) => identity(&obj),
                    _ => (None, None),
                };
                return Err(Rejection {
                    reason: RejectReason::WrongContentType(truncate(ct, 64)),
                    job_id,
                    user_id,
                });
            }
        }
        let text = std::str::from_utf8(body).map_err(|_| bare(RejectReason::InvalidUtf8))?;
        if nesting_depth(text) > MAX_DEPTH {
            return Err(bare(RejectReason::NestingTooDeep));
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| bare(RejectReason::NotJson(truncate(&e.to_string(), 120))))?;
        let Value::Object(obj) = value else {
            return Err(bare(RejectReason::NotObject));
        };
        let (job_id, user_id) = identity(&obj);
        Self::from_object(&obj).map_err(|reason| Rejection {
            reason,
            job_id,
            user_id,
        })
    }

    fn from_object(obj: &Map<String, Value>) -> Result<Self, RejectReason> {
        let job_id = match obj.get("job_id") {
            None | Some(Value::Null) => return Err(RejectReason::MissingField("job_id")),
            Some(Value::String(s)) => Uuid::parse_str(s).map_err(|_| RejectReason::InvalidJobId)?,
            Some(_) => {
                return Err(RejectReason::InvalidType {
                    field: "job_id",
                    expected: "a UUID string",
                });
            }
        };
        let user_id = required_string(obj, "user_id", 128)?;
        let target_role = required_string(obj, "target_role", 200)?;
        let duration_weeks =
            integer(obj, "duration_weeks", 1, 52)?.ok_or(RejectReason::MissingField("duration_weeks"))?;
        let experience_level = match optional(obj, "experience_level") {
            None => ExperienceLevel::Beginner,
            Some(Value::String(s)) => match s.as_str() {
                "beginner" => ExperienceLevel::Beginner,
                "intermediate" => ExperienceLevel::Intermediate,
                "advanced" => ExperienceLevel::Advanced,
                _ => return Err(RejectReason::UnknownExperienceLevel),
            },
            Some(_) => {
                return Err(RejectReason::InvalidType {
                    field: "experience_level",
                    expected: "a string",
                });
            }
        };
        let priority = match optional(obj, "priority") {
            None => Priority::Interactive,
            Some(Value::String(s)) => match s.as_str() {
                "interactive" => Priority::Interactive,
                "bulk" => Priority::Bulk,
                _ => return Err(RejectReason::UnknownPriority),
            },
            Some(_) => {
                return Err(RejectReason::InvalidType {
                    field: "priority",
                    expected: "a string",
                });
            }
        };
        let hours_per_week = integer(obj, "hours_per_week", 1, 80)?.unwrap_or(10);
        let focus_areas = match optional(obj, "focus_areas") {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                if items.len() > MAX_FOCUS_AREAS {
                    return Err(RejectReason::TooManyFocusAreas);
                }
                items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => checked_string(s, "focus_areas", 100),
                        _ => Err(RejectReason::InvalidType {
                            field: "focus_areas",
                            expected: "an array of strings",
                        }),
                    })
                    .collect::<Result<_, _>>()?
            }
            Some(_) => {
                return Err(RejectReason::InvalidType {
                    field: "focus_areas",
                    expected: "an array of strings",
                });
            }
        };
        let language = match optional(obj, "language") {
            None => "en".to_owned(),
            Some(Value::String(s)) if is_language_tag(s) => s.clone(),
            Some(Value::String(_)) => return Err(RejectReason::InvalidLanguage),
            Some(_) => {
                return Err(RejectReason::InvalidType {
                    field: "language",
                    expected: "a string",
                });
            }
        };
        Ok(Self {
            job_id,
            user_id,
            target_role,
            duration_weeks,
            experience_level,
            hours_per_week,
            focus_areas,
            language,
            priority,
        })
    }

    pub fn profile(&self) -> JobProfile {
        JobProfile {
            target_role: self.target_role.clone(),
            experience_level: self.experience_level,
            hours_per_week: self.hours_per_week,
            focus_areas: self.focus_areas.clone(),
            language: self.language.clone(),
        }
    }

    /// The message a web backend publishes for this job (contract v1).
    pub fn to_message(&self) -> Value {
        serde_json::to_value(self).expect("a JobRequest always serialises")
    }
}

/// The sender's identity for the failed event of a refused message: the job_id if it is a UUID,
/// and only a user_id that passes the same checks as an accepted one (trimmed, 1..=128
/// characters, no control characters), so the event names the user exactly as an accepted job
/// would.
fn identity(obj: &Map<String, Value>) -> (Option<Uuid>, Option<String>) {
    let job_id = obj
        .get("job_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let user_id = obj
        .get("user_id")
        .and_then(Value::as_str)
        .and_then(|s| checked_string(s, "user_id", 128).ok());
    (job_id, user_id)
}

/// An absent field and an explicit `null` both mean "use the default".
fn optional<'a>(obj: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    obj.get(field).filter(|v| !v.is_null())
}

fn required_string(
    obj: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<String, RejectReason> {
    match optional(obj, field) {
        None => Err(RejectReason::MissingField(field)),
        Some(Value::String(s)) => checked_string(s, field, max),
        Some(_) => Err(RejectReason::InvalidType {
            field,
            expected: "a string",
        }),
    }
}

fn checked_string(s: &str, field: &'static str, max: usize) -> Result<String, RejectReason> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err(RejectReason::EmptyString(field));
    }
    if trimmed.chars().count() > max {
        return Err(RejectReason::TooLong { field, max });
    }
    if trimmed.chars().any(|c| c.is_control()) {
        return Err(RejectReason::InvalidType {
            field,
            expected: "text without control characters",
        });
    }
    Ok(trimmed.to_owned())
}

fn integer(
    obj: &Map<String, Value>,
    field: &'static str,
    min: i64,
    max: i64,
) -> Result<Option<u32>, RejectReason> {
    let Some(value) = optional(obj, field) else {
        return Ok(None);
    };
    // An integer too large for i64 is still an integer: out of range, not of the wrong type.
    if value.is_u64() && value.as_i64().is_none() {
        return Err(RejectReason::OutOfRange { field, min, max });
    }
    let n = value.as_i64().ok_or(RejectReason::InvalidType {
        field,
        expected: "an integer",
    })?;
    if !(min..=max).contains(&n) {
        return Err(RejectReason::OutOfRange { field, min, max });
    }
    Ok(Some(n as u32))
}

/// A pragmatic BCP 47 check: a 2–3 or 5–8 letter language subtag, then 1–8 alphanumeric subtags.
pub fn is_language_tag(tag: &str) -> bool {
    if tag.is_empty() || tag.len() > 35 {
        return false;
    }
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or("");
    let primary_ok =
        matches!(primary.len(), 2 | 3 | 5..=8) && primary.chars().all(|c| c.is_ascii_alphabetic());
    primary_ok && parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Deepest bracket nesting outside string literals; checked before parsing so that a hostile
/// body cannot make the parser recurse.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for (_, b) in crate::json_scan::brackets(text) {
        if matches!(b, b'{' | b'[') {
            depth += 1;
            max = max.max(depth);
        } else {
            depth = depth.saturating_sub(1);
        }
    }
    max
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> Result<JobRequest, RejectReason> {
        JobRequest::decode(body.as_bytes(), Some("application/json")).map_err(|r| r.reason)
    }

    const ID: &str = "7f1d7f8e-3a5c-4a55-9d1f-6a3b2c1d0e9f";

    #[test]
    fn defaults_apply_and_unknown_fields_are_ignored() {
        let job = decode(&format!(
            r#"{{"job_id":"{ID}","user_id":"u1","target_role":" Data Engineer ","duration_weeks":4,"extra":{{"x":1}}}}"#
        ))
        .unwrap();
        assert_eq!(job.target_role, "Data Engineer");
        assert_eq!(job.experience_level, ExperienceLevel::Beginner);
        assert_eq!((job.hours_per_week, job.language.as_str()), (10, "en"));
        assert!(job.focus_areas.is_empty());
    }

    #[test]
    fn each_fault_has_its_reason() {
        let base = |extra: &str| {
            format!(r#"{{"job_id":"{ID}","user_id":"u","target_role":"r","duration_weeks":3{extra}}}"#)
        };
        let cases = [
            ("[1]".to_owned(), "not_object"),
            ("{".to_owned(), "not_json"),
            (r#"{"user_id":"u"}"#.to_owned(), "missing_field"),
            (base(r#","hours_per_week":"ten""#), "invalid_type"),
            (base(r#","hours_per_week":81"#), "out_of_range"),
            (base(r#","experience_level":"guru""#), "unknown_experience_level"),
            (base(r#","language":"english language""#), "invalid_language"),
            (
                base(&format!(r#","focus_areas":{:?}"#, vec!["a"; 11])),
                "too_many_focus_areas",
            ),
            (
                r#"{"job_id":"nope","user_id":"u","target_role":"r","duration_weeks":3}"#.to_owned(),
                "invalid_job_id",
            ),
            (
                base(&format!(r#","x":{}"#, "[".repeat(40) + &"]".repeat(40))),
                "nesting_too_deep",
            ),
        ];
        for (body, code) in cases {
            assert_eq!(decode(&body).unwrap_err().code(), code, "{body}");
        }
        let err = JobRequest::decode(b"{}", Some("text/plain")).unwrap_err();
        assert_eq!(err.reason.code(), "wrong_content_type");
        let err = JobRequest::decode(&[0xff, 0xfe], None).unwrap_err();
        assert_eq!(err.reason.code(), "invalid_utf8");
    }

    #[test]
    fn identity_is_kept_for_the_failed_event() {
        let err = JobRequest::decode(
            format!(r#"{{"job_id":"{ID}","user_id":"u9","duration_weeks":99}}"#).as_bytes(),
            None,
        )
        .unwrap_err();
        assert_eq!(err.job_id, Some(Uuid::parse_str(ID).unwrap()));
        assert_eq!(err.user_id.as_deref(), Some("u9"));
        // The failed event names the user as an accepted job would: trimmed, never blank.
        let err = JobRequest::decode(
            format!(r#"{{"job_id":"{ID}","user_id":" u9 ","duration_weeks":99}}"#).as_bytes(),
            None,
        )
        .unwrap_err();
        assert_eq!(err.user_id.as_deref(), Some("u9"));
        let err = JobRequest::decode(
            format!(r#"{{"job_id":"{ID}","user_id":"  ","duration_weeks":3}}"#).as_bytes(),
            None,
        )
        .unwrap_err();
        assert_eq!((err.reason.code(), err.user_id), ("empty_string", None));
    }

    #[test]
    fn huge_integers_are_out_of_range() {
        let body = format!(
            r#"{{"job_id":"{ID}","user_id":"u","target_role":"r","duration_weeks":18446744073709551615}}"#
        );
        assert_eq!(decode(&body).unwrap_err().code(), "out_of_range");
    }

    #[test]
    fn every_code_is_listed() {
        let f = "x";
        let all = [
            RejectReason::BodyTooLarge(0),
            RejectReason::WrongContentType(String::new()),
            RejectReason::InvalidUtf8,
            RejectReason::NestingTooDeep,
            RejectReason::NotJson(String::new()),
            RejectReason::NotObject,
            RejectReason::MissingField(f),
            RejectReason::InvalidType {
                field: f,
                expected: f,
            },
            RejectReason::OutOfRange {
                field: f,
                min: 0,
                max: 0,
            },
            RejectReason::EmptyString(f),
            RejectReason::TooLong { field: f, max: 0 },
            RejectReason::TooManyFocusAreas,
            RejectReason::UnknownExperienceLevel,
            RejectReason::UnknownPriority,
            RejectReason::InvalidLanguage,
            RejectReason::InvalidJobId,
            RejectReason::JobOwnedByAnotherUser,
            RejectReason::JobConflict,
        ];
        // Exhaustive on purpose: a new variant fails to compile here until it is listed above,
        // and so in CODES (and the schema, which tests/contracts.rs checks against CODES).
        for reason in &all {
            match reason {
                RejectReason::BodyTooLarge(_)
                | RejectReason::WrongContentType(_)
                | RejectReason::InvalidUtf8
                | RejectReason::NestingTooDeep
                | RejectReason::NotJson(_)
                | RejectReason::NotObject
                | RejectReason::MissingField(_)
                | RejectReason::InvalidType { .. }
                | RejectReason::OutOfRange { .. }
                | RejectReason::EmptyString(_)
                | RejectReason::TooLong { .. }
                | RejectReason::TooManyFocusAreas
                | RejectReason::UnknownExperienceLevel
                | RejectReason::UnknownPriority
                | RejectReason::InvalidLanguage
                | RejectReason::InvalidJobId
                | RejectReason::JobOwnedByAnotherUser
                | RejectReason::JobConflict => {}
            }
        }
        let codes: Vec<&str> = all.iter().map(RejectReason::code).collect();
        assert_eq!(codes, RejectReason::CODES);
    }

    #[test]
    fn language_tags() {
        for ok in ["en", "de-CH", "zh-Hans-CN", "es-419"] {
            assert!(is_language_tag(ok), "{ok}");
        }
        for bad in ["", "e", "en-", "toolonglanguage", "en_US", "123", "en-abcdefghi"] {
            assert!(!is_language_tag(bad), "{bad}");
        }
    }
}
