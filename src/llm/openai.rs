//! OpenAI-compatible chat completions over reqwest (OpenAI, vLLM, llama.cpp, Ollama, …).

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{FinishReason, LlmError, LlmRequest, LlmResponse, TokenUsage, estimate_tokens};
use crate::config::{LlmSettings, ResponseFormat, Secret};

const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_MODEL: &str = "gpt-4o-mini";

#[derive(Debug, Clone)]
pub struct OpenAi {
    http: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<Secret>,
    format: ResponseFormat,
    temperature: f32,
}

impl OpenAi {
    pub fn new(settings: &LlmSettings) -> anyhow::Result<Self> {
        let base = settings.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        Ok(Self {
            http: super::http_client(settings)?,
            endpoint: format!("{}/chat/completions", base.trim_end_matches('/')),
            model: settings.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into()),
            api_key: settings.api_key(),
            format: settings.response_format,
            temperature: settings.temperature,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let mut body = json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.prompt},
            ],
            "max_tokens": request.max_output_tokens,
            "temperature": self.temperature,
        });
        // A null schema marks a probe, which asks for plain text.
        let format = if request.schema.is_null() {
            ResponseFormat::None
        } else {
            self.format
        };
        match format {
            ResponseFormat::JsonSchema => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": "roadmap_batch", "strict": true, "schema": request.schema},
                });
            }
            ResponseFormat::JsonObject => body["response_format"] = json!({"type": "json_object"}),
            ResponseFormat::None => {}
        }
        let mut call = self.http.post(&self.endpoint).json(&body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key.expose());
        }
        let response = call.send().await.map_err(LlmError::from_reqwest)?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_hint(response.headers());
            let text = response.text().await.unwrap_or_default();
            return Err(LlmError::from_status(
                status.as_u16(),
                error_message(&text),
                retry_after,
            ));
        }
        let parsed: ChatResponse = response.json().await.map_err(LlmError::from_reqwest)?;
        let choice = parsed
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| LlmError::Transient {
                status: "empty",
                message: "response had no choices".into(),
                retry_after: None,
            })?;
        let text = choice.message.content.unwrap_or_default();
        let finish = match choice.finish_reason.as_deref() {
            Some("stop") | None => FinishReason::Stop,
            Some("length") => FinishReason::Length,
            Some("content_filter") => FinishReason::Filtered,
            Some(other) => FinishReason::Other(other.to_owned()),
        };
        let usage = parsed.usage.map_or_else(
            || TokenUsage {
                input: estimate_tokens(&request.system) + estimate_tokens(&request.prompt),
                output: estimate_tokens(&text),
            },
            |u| TokenUsage {
                input: u.prompt_tokens,
                output: u.completion_tokens,
            },
        );
        Ok(LlmResponse { text, finish, usage })
    }
}

/// The server's requested delay: Retry-After, else OpenAI's x-ratelimit-reset-* (the longer one).
fn retry_hint(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(d) = header("retry-after").and_then(super::parse_retry_after) {
        return Some(d);
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|h| header(h).and_then(super::parse_go_duration))
        .max()
}

/// A short message from an error body, never the whole body (it may echo the request).
pub(crate) fn error_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    from_json.unwrap_or_else(|| body.chars().take(200).collect())
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
}
