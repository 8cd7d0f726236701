//! Google Gemini `generateContent` over reqwest. The key travels in a header, never in the URL.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AnswerGate, FinishReason, LlmError, LlmRequest, LlmResponse, TokenUsage, estimate_tokens, schema, wire,
};
use crate::config::{LlmSettings, ResponseFormat, Secret};

const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";
const DEFAULT_MODEL: &str = "gemini-2.5-flash";

#[derive(Debug, Clone)]
pub struct Gemini {
    http: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<Secret>,
    format: ResponseFormat,
    temperature: f32,
    gate: AnswerGate,
    /// The whole call's limit, which also bounds the wait at the gate.
    timeout: Duration,
}

impl Gemini {
    pub fn new(settings: &LlmSettings, gate: AnswerGate) -> anyhow::Result<Self> {
        let base = settings.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let model = settings.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into());
        Ok(Self {
            http: super::http_client(settings)?,
            timeout: settings.timeout(),
            endpoint: format!("{}/models/{model}:generateContent", base.trim_end_matches('/')),
            model,
            api_key: settings.api_key(),
            format: settings.response_format,
            temperature: settings.temperature,
            gate,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let call = wire::post_json(&self.http, &self.endpoint, &self.body(request));
        let call = match &self.api_key {
            Some(key) => call.header("x-goog-api-key", key.expose()),
            None => call,
        };
        // The body's JSON tree is dropped above; only its bytes wait with the call.
        let deadline = Instant::now() + self.timeout;
        let response = call.send().await.map_err(LlmError::from_reqwest)?;
        self.answer(request, response, deadline).await
    }

    fn body(&self, request: &LlmRequest) -> Value {
        let mut config = json!({
            "maxOutputTokens": request.max_output_tokens,
            "temperature": self.temperature,
        });
        // A null schema marks a probe, which asks for plain text.
        let format = if request.schema.is_null() {
            ResponseFormat::None
        } else {
            self.format
        };
        if format != ResponseFormat::None {
            config["responseMimeType"] = json!("application/json");
        }
        // Gemini has one schema mechanism; every mode that sends a schema uses it.
        if format.sends_schema() {
            config["responseSchema"] = schema::to_gemini(&request.schema);
        }
        json!({
            "systemInstruction": {"parts": [{"text": request.system}]},
            "contents": [{"role": "user", "parts": [{"text": request.prompt}]}],
            "generationConfig": config,
        })
    }

    async fn answer(
        &self,
        request: &LlmRequest,
        response: reqwest::Response,
        deadline: Instant,
    ) -> Result<LlmResponse, LlmError> {
        let status = response.status();
        if !status.is_success() {
            // A value that is not visible ASCII (`to_str` fails) or not a delay is ignored.
            let header_hint = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(wire::parse_retry_after);
            let text = wire::read_error_body(response).await;
            let retry_after = header_hint.or_else(|| retry_info(&text));
            return Err(LlmError::from_status(
                status.as_u16(),
                wire::error_message(&text),
                retry_after,
            ));
        }
        let limits = wire::rate_limits(response.headers());
        let (admission, parsed): (_, GenerateResponse) = self.gate.read(response, deadline).await?;
        let candidate = parsed.candidates.into_iter().next();
        let (text, reason) = candidate.map_or((String::new(), None), |c| {
            let text = c
                .content
                .map(|content| {
                    content
                        .parts
                        .into_iter()
                        .filter_map(|p| p.text)
                        .collect::<String>()
                })
                .unwrap_or_default();
            (text, c.finish_reason)
        });
        let finish = match reason.as_deref() {
            Some("STOP") | None => FinishReason::Stop,
            // Thinking models can spend the whole budget before writing: empty text, MAX_TOKENS.
            Some("MAX_TOKENS") => FinishReason::Length,
            Some("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII") => {
                FinishReason::Filtered
            }
            Some(other) => FinishReason::Other(other.to_owned()),
        };
        let usage = parsed.usage_metadata.map_or_else(
            || TokenUsage {
                input: estimate_tokens(&request.system) + estimate_tokens(&request.prompt),
                output: estimate_tokens(&text),
                cached_input: 0,
            },
            |u| TokenUsage {
                input: u.prompt_token_count,
                cached_input: u.cached_content_token_count.min(u.prompt_token_count),
                // Counts come from the server: a sum must not overflow.
                output: u.candidates_token_count.saturating_add(u.thoughts_token_count),
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

/// `google.rpc.RetryInfo.retryDelay` ("17s") from a 429 body.
fn retry_info(body: &str) -> Option<Duration> {
    let value: Value = serde_json::from_str(body).ok()?;
    value
        .pointer("/error/details")?
        .as_array()?
        .iter()
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .and_then(wire::parse_go_duration)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    usage_metadata: Option<UsageMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
struct Part {
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_is_read() {
        let body = r#"{"error":{"code":429,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"17s"}]}}"#;
        assert_eq!(retry_info(body), Some(Duration::from_secs(17)));
    }

    #[test]
    fn absurd_retry_info_is_capped_or_ignored() {
        let body = |delay: &str| format!(r#"{{"error":{{"details":[{{"retryDelay":"{delay}"}}]}}}}"#);
        assert_eq!(retry_info(&body("1e20s")), None);
        assert_eq!(retry_info(&body("-5s")), None);
        assert_eq!(
            retry_info(&body("99999999999999999999s")),
            Some(wire::MAX_RETRY_HINT)
        );
        assert_eq!(retry_info(r#"{"error":{"details":[{"retryDelay":17}]}}"#), None);
        assert_eq!(retry_info(r#"{"error":{"details":{}}}"#), None);
        assert_eq!(retry_info("{\"error\":{\"details\":[{\"retryDelay\":\"1"), None);
    }
}
