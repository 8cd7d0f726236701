//! A finished batch: its weeks, what the LLM calls cost, and the highest rung of the ladder it
//! needed.

use super::{Week, WeekSource, event::Usage, quality::BatchQuality};

/// A finished batch, ready to checkpoint.
#[derive(Debug, Clone)]
pub struct BatchResult {
    pub weeks: Vec<Week>,
    pub usage: Usage,
    pub outcome: BatchOutcome,
    /// What the content checks found in the weeks as stored, and whether they cost a re-ask.
    pub quality: BatchQuality,
}

impl BatchResult {
    pub fn fallback_weeks(&self) -> u32 {
        self.weeks
            .iter()
            .filter(|w| w.source == WeekSource::Fallback)
            .count() as u32
    }
}

/// The tokens of one answer, as its provider counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    /// Of `input`, the tokens the provider served from its prompt cache.
    pub cached_input: u64,
}

/// The highest rung of the robustness ladder a batch needed; stored with the checkpoint and
/// used as the `outcome` label of `roadmap_batches_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BatchOutcome {
    /// The first answer was good.
    Ok,
    /// A transient failure (timeout, 429, 5xx) was retried.
    Retried,
    /// An answer was cut off at the output limit; the rest was asked in smaller pieces.
    Truncated,
    /// An invalid answer was asked again once, with its problems listed.
    Reasked,
    /// Some weeks are template weeks.
    Fallback,
}

impl BatchOutcome {
    pub const ALL: [Self; 5] = [
        Self::Ok,
        Self::Retried,
        Self::Truncated,
        Self::Reasked,
        Self::Fallback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retried => "retried",
            Self::Truncated => "truncated",
            Self::Reasked => "reasked",
            Self::Fallback => "fallback",
        }
    }
}

/// What was wrong with an answer the model gave for a batch: the answer-side `reason` labels
/// of `roadmap_batch_failures_total` (the LLM call's own failures carry its status instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFault {
    /// Cut off at the output limit.
    Truncated,
    /// Not JSON at all (or too large to read).
    InvalidJson,
    /// JSON, but not weeks of the required shape, numbering or counts.
    InvalidSchema,
}

impl AnswerFault {
    pub const ALL: [Self; 3] = [Self::Truncated, Self::InvalidJson, Self::InvalidSchema];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::InvalidJson => "invalid_json",
            Self::InvalidSchema => "invalid_schema",
        }
    }
}
