//! OpenAI-compatible chat completions over reqwest (OpenAI, vLLM, llama.cpp, Ollama, …).

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AnswerGate, FinishReason, LlmError, LlmRequest, LlmResponse, TokenUsage, estimate_tokens, schema, wire,
};
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
    gate: AnswerGate,
    /// The whole call's limit, which also bounds the wait at the gate.
    timeout: Duration,
    /// Send `prompt_cache_key`; off for servers that refuse unknown fields.
    prompt_cache_key: bool,
}

impl OpenAi {
    pub fn new(settings: &LlmSettings, gate: AnswerGate) -> anyhow::Result<Self> {
        let base = settings.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        Ok(Self {
            http: super::http_client(settings)?,
            timeout: settings.timeout(),
            endpoint: format!("{}/chat/completions", base.trim_end_matches('/')),
            model: settings.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into()),
            api_key: settings.api_key(),
            format: settings.response_format,
            temperature: settings.temperature,
            gate,
            prompt_cache_key: settings.prompt_cache_key,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let call = wire::post_json(&self.http, &self.endpoint, &self.body(request));
        let call = match &self.api_key {
            Some(key) => call.bearer_auth(key.expose()),
            None => call,
        };
        // The body's JSON tree is dropped above; only its bytes wait with the call.
        let deadline = Instant::now() + self.timeout;
        let response = call.send().await.map_err(LlmError::from_reqwest)?;
        self.answer(request, response, deadline).await
    }

    fn body(&self, request: &LlmRequest) -> Value {
        let mut body = json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.prompt},
            ],
            "max_tokens": request.max_output_tokens,
            "temperature": self.temperature,
        });
        if let Some(key) = request.cache_key.as_deref().filter(|_| self.prompt_cache_key) {
            body["prompt_cache_key"] = json!(key);
        }
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
                    "json_schema": {"name": "roadmap_batch", "strict": true, "schema": &*request.schema},
                });
            }
            // Servers that enforce the schema by grammar take the keywords strict mode refuses.
            ResponseFormat::JsonObjectSchema => {
                let schema = schema::for_grammar(&request.schema);
                body["response_format"] = json!({"type": "json_object", "schema": schema});
            }
            ResponseFormat::GuidedJson => body["guided_json"] = schema::for_grammar(&request.schema),
            ResponseFormat::JsonObject => body["response_format"] = json!({"type": "json_object"}),
            ResponseFormat::None => {}
        }
        body
    }

    async fn answer(
        &self,
        request: &LlmRequest,
        response: reqwest::Response,
        deadline: Instant,
    ) -> Result<LlmResponse, LlmError> {
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_hint(response.headers());
            let text = wire::read_error_body(response).await;
            return Err(LlmError::from_status(
                status.as_u16(),
                wire::error_message(&text),
                retry_after,
            ));
        }
        let limits = wire::rate_limits(response.headers());
        let (admission, parsed): (_, ChatResponse) = self.gate.read(response, deadline).await?;
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
                cached_input: 0,
            },
            |u| TokenUsage {
                input: u.prompt_tokens,
                output: u.completion_tokens,
                cached_input: u
                    .prompt_tokens_details
                    .map_or(0, |d| d.cached_tokens.min(u.prompt_tokens)),
            },
        );
        Ok(LlmResponse {
            text,
            finish,
            usage,
            admission,
            limits,
        })
    }
}

/// The server's requested delay: Retry-After, else OpenAI's x-ratelimit-reset-* (the longer one).
/// A value that is not visible ASCII (`to_str` fails) or not a delay is ignored.
fn retry_hint(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(d) = header("retry-after").and_then(wire::parse_retry_after) {
        return Some(d);
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|h| header(h).and_then(wire::parse_go_duration))
        .max()
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

/// Some OpenAI-compatible servers leave counts out; a missing one is 0, not a failed answer.
#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: u64,
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn garbage_hint_headers_are_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_bytes(b"1\xff\xfe").unwrap());
        headers.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::from_bytes(b"\xc3\x28s").unwrap(),
        );
        assert_eq!(retry_hint(&headers), None);
        headers.insert(
            "x-ratelimit-reset-tokens",
            HeaderValue::from_static("99999999999h"),
        );
        assert_eq!(retry_hint(&headers), Some(wire::MAX_RETRY_HINT));
        headers.insert("retry-after", HeaderValue::from_static("1e20"));
        assert_eq!(retry_hint(&headers), Some(wire::MAX_RETRY_HINT));
    }
}
