//! The embedded deterministic mock LLM: reads the batch brief back out of the prompt and answers
//! with template weeks. Also the content source of the `mock-llm` HTTP server.

use std::time::Duration;

use serde_json::{Value, json};

use super::{FinishReason, LlmError, LlmRequest, LlmResponse, TokenUsage, estimate_tokens};
use crate::{
    domain::brief::{Brief, OutlineBrief},
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
        Ok(LlmResponse {
            usage: TokenUsage {
                input: estimate_tokens(&request.system) + estimate_tokens(&request.prompt),
                output: estimate_tokens(&text),
                cached_input: 0,
            },
            text,
            finish: FinishReason::Stop,
        })
    }
}

/// The mock's answer to a batch prompt: `{"weeks": [...]}` for exactly the weeks asked for;
/// to an outline prompt, the template outline.
pub fn answer(prompt_text: &str) -> Result<String, String> {
    Ok(answer_value(prompt_text)?.to_string())
}

/// Like [`answer`], as a JSON value (the fault injector edits it). An outline prompt gets the
/// template outline.
pub fn answer_value(prompt_text: &str) -> Result<Value, String> {
    if let Some(brief) = OutlineBrief::parse(prompt_text) {
        let (phases, weeks) = template::outline(&brief.profile, brief.duration_weeks);
        return Ok(json!({ "phases": phases, "weeks": weeks }));
    }
    let brief = Brief::parse(prompt_text)
        .ok_or_else(|| "the mock LLM understands only roadmap batch and outline prompts".to_owned())?;
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
