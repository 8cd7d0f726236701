//! The embedded deterministic mock LLM: reads the batch brief back out of the prompt and answers
//! with template weeks. Also the content source of the `mock-llm` HTTP server.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use super::{FinishReason, LlmError, LlmRequest, LlmResponse};
use crate::{
    domain::{
        Day, Week,
        brief::{Brief, OutlineBrief},
    },
    template,
};

#[derive(Debug, Clone, Default)]
pub struct MockLlm {
    pub latency: Duration,
}

impl MockLlm {
    pub async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let text = answer(&request.prompt).map_err(|message| LlmError::Refused {
            status: "http_400",
            message,
        })?;
        Ok(LlmResponse::estimated(request, text, FinishReason::Stop))
    }
}

/// The mock's answer to a batch prompt: `{"weeks": [...]}` for exactly the weeks asked for;
/// to an outline prompt, the template outline.
pub fn answer(prompt_text: &str) -> Result<String, String> {
    if OutlineBrief::parse(prompt_text).is_some() {
        return Ok(answer_value(prompt_text)?.to_string());
    }
    let brief = batch_brief(prompt_text)?;
    let weeks: Vec<Week> = (brief.first_week..=brief.last_week)
        .map(|n| template::week(&brief.profile, &brief.phases, n, brief.duration_weeks))
        .collect();
    // Written straight from the weeks, without a JSON tree: the embedded mock stands in for
    // an instant provider in benchmarks, where its own cost should be small.
    let weeks: Vec<ModelWeek<'_>> = weeks.iter().map(ModelWeek::from).collect();
    serde_json::to_string(&ModelAnswer { weeks }).map_err(|e| e.to_string())
}

/// A week as a model writes it: without `source`, which the worker sets itself.
#[derive(Serialize)]
struct ModelWeek<'a> {
    number: u32,
    phase: u32,
    title: &'a str,
    goals: &'a [String],
    days: &'a [Day],
}

impl<'a> From<&'a Week> for ModelWeek<'a> {
    fn from(w: &'a Week) -> Self {
        Self {
            number: w.number,
            phase: w.phase,
            title: &w.title,
            goals: &w.goals,
            days: &w.days,
        }
    }
}

#[derive(Serialize)]
struct ModelAnswer<'a> {
    weeks: Vec<ModelWeek<'a>>,
}

fn batch_brief(prompt_text: &str) -> Result<Brief, String> {
    Brief::parse(prompt_text)
        .ok_or_else(|| "the mock LLM understands only roadmap batch and outline prompts".to_owned())
}

/// Like [`answer`], as a JSON value (the fault injector edits it). An outline prompt gets the
/// template outline.
pub fn answer_value(prompt_text: &str) -> Result<Value, String> {
    if let Some(brief) = OutlineBrief::parse(prompt_text) {
        let (phases, weeks) = template::outline(&brief.profile, brief.duration_weeks);
        return Ok(json!({ "phases": phases, "weeks": weeks }));
    }
    let brief = batch_brief(prompt_text)?;
    let weeks: Vec<Value> = (brief.first_week..=brief.last_week)
        .map(|n| {
            let week = template::week(&brief.profile, &brief.phases, n, brief.duration_weeks);
            let mut value = serde_json::to_value(week).expect("weeks serialise");
            // A model does not know who wrote a week; the worker sets that itself.
            if let Some(obj) = value.as_object_mut() {
                obj.remove("source");
            }
            value
        })
        .collect();
    Ok(json!({ "weeks": weeks }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobProfile;

    #[test]
    fn the_written_answer_is_the_answer_the_fault_injector_edits() {
        let profile = JobProfile {
            target_role: "Data {role} Engineer".into(),
            experience_level: crate::domain::ExperienceLevel::Beginner,
            hours_per_week: 10,
            focus_areas: vec!["SQL".into()],
            language: "en".into(),
        };
        let brief = Brief {
            phases: template::phases(&profile, 12),
            profile,
            duration_weeks: 12,
            first_week: 4,
            last_week: 6,
        };
        let mut text = String::new();
        brief.embed_shared(&mut text);
        brief.embed_batch(&mut text);
        let written: Value = serde_json::from_str(&answer(&text).unwrap()).unwrap();
        assert_eq!(written, answer_value(&text).unwrap());
        assert!(written["weeks"][0].get("source").is_none());
    }
}
