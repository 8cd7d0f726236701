//! The batch brief: what one LLM call is asked to write, and how it is quoted into a prompt.
//!
//! The prompt writer embeds it and the mock LLM reads it back, so both sides use this one
//! format. The brief is JSON between tags; user text is JSON-escaped and `<`/`>` are escaped
//! too, so a hostile `target_role` can neither close a tag nor read as an instruction.

use serde::{Deserialize, Serialize};

use super::{JobProfile, Phase};

/// What one batch asks of the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brief {
    pub profile: JobProfile,
    pub duration_weeks: u32,
    pub first_week: u32,
    pub last_week: u32,
    pub phases: Vec<Phase>,
}

const JOB_OPEN: &str = "<job_data>";
const JOB_CLOSE: &str = "</job_data>";
const PLAN_OPEN: &str = "<plan>";
const PLAN_CLOSE: &str = "</plan>";
const BATCH_OPEN: &str = "<batch>";
const BATCH_CLOSE: &str = "</batch>";
const OUTLINE_OPEN: &str = "<outline_request>";
const OUTLINE_CLOSE: &str = "</outline_request>";

/// What the outline call asks of the model: the phases and every week's title and goals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlineBrief {
    pub profile: JobProfile,
    pub duration_weeks: u32,
    /// The most phases the outline may have.
    pub max_phases: u32,
}

#[derive(Serialize, Deserialize)]
struct OutlineBlock {
    duration_weeks: u32,
    max_phases: u32,
}

impl OutlineBrief {
    /// Appends the job, then the request, one line each: the job's line is the same as in its
    /// batch prompts, which providers can cache.
    pub fn embed(&self, out: &mut String) {
        embed_job(&self.profile, out);
        let block = OutlineBlock {
            duration_weeks: self.duration_weeks,
            max_phases: self.max_phases,
        };
        out.push_str(OUTLINE_OPEN);
        out.push_str(&json_for_prompt(&block));
        out.push_str(OUTLINE_CLOSE);
        out.push('\n');
    }

    /// Reads the outline brief back out of a prompt that embeds one.
    pub fn parse(prompt: &str) -> Option<Self> {
        let profile: JobProfile = serde_json::from_str(between(prompt, JOB_OPEN, JOB_CLOSE)?).ok()?;
        let block: OutlineBlock = serde_json::from_str(between(prompt, OUTLINE_OPEN, OUTLINE_CLOSE)?).ok()?;
        (block.duration_weeks >= 1).then_some(Self {
            profile,
            duration_weeks: block.duration_weeks,
            max_phases: block.max_phases.max(1),
        })
    }
}

fn embed_job(profile: &JobProfile, out: &mut String) {
    out.push_str(JOB_OPEN);
    out.push_str(&json_for_prompt(profile));
    out.push_str(JOB_CLOSE);
    out.push('\n');
}

#[derive(Serialize, Deserialize)]
struct PlanBlock<P> {
    duration_weeks: u32,
    phases: P,
}

#[derive(Serialize, Deserialize)]
struct BatchBlock {
    first_week: u32,
    last_week: u32,
}

impl Brief {
    /// Appends what every batch of the job shares, the job and the phase outline, one line
    /// each. Kept apart from the batch's own part so that a job's prompts start with the same
    /// bytes, which providers cache.
    pub fn embed_shared(&self, out: &mut String) {
        embed_job(&self.profile, out);
        let plan = PlanBlock {
            duration_weeks: self.duration_weeks,
            phases: &self.phases,
        };
        out.push_str(PLAN_OPEN);
        out.push_str(&json_for_prompt(&plan));
        out.push_str(PLAN_CLOSE);
        out.push('\n');
    }

    /// Appends this batch's own part: the weeks it asks for.
    pub fn embed_batch(&self, out: &mut String) {
        let batch = BatchBlock {
            first_week: self.first_week,
            last_week: self.last_week,
        };
        out.push_str(BATCH_OPEN);
        out.push_str(&json_for_prompt(&batch));
        out.push_str(BATCH_CLOSE);
        out.push('\n');
    }

    /// Reads the brief back out of a prompt that embeds one.
    pub fn parse(prompt: &str) -> Option<Self> {
        let profile: JobProfile = serde_json::from_str(between(prompt, JOB_OPEN, JOB_CLOSE)?).ok()?;
        let plan: PlanBlock<Vec<Phase>> =
            serde_json::from_str(between(prompt, PLAN_OPEN, PLAN_CLOSE)?).ok()?;
        let batch: BatchBlock = serde_json::from_str(between(prompt, BATCH_OPEN, BATCH_CLOSE)?).ok()?;
        (batch.first_week >= 1 && batch.first_week <= batch.last_week).then_some(Self {
            profile,
            duration_weeks: plan.duration_weeks,
            first_week: batch.first_week,
            last_week: batch.last_week,
            phases: plan.phases,
        })
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

fn json_for_prompt<T: Serialize>(value: &T) -> String {
    escape_tags(&serde_json::to_string(value).expect("prompt data always serialises"))
}

/// `<` and `>` as JSON unicode escapes: still the same JSON, but no tag can be forged.
pub fn escape_tags(s: &str) -> String {
    s.replace('<', "\\u003c").replace('>', "\\u003e")
}
