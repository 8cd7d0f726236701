//! The two provider dialects the mock speaks: OpenAI's chat completions and Gemini's
//! generateContent, each read into the provider-neutral request and answered in its own shape.

use axum::{Json, extract::State, response::Response};
use serde_json::{Value, json};

use super::{AppState, admit, prepare, respond, settle};

fn count_version(state: &AppState, version: axum::http::Version) {
    if version == axum::http::Version::HTTP_2 {
        state.shared.lock().expect("mock state").http2_requests += 1;
    }
}

pub(super) async fn openai(
    State(state): State<AppState>,
    version: axum::http::Version,
    Json(body): Json<Value>,
) -> Response {
    count_version(&state, version);
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let content = |role: &str| {
        messages
            .iter()
            .filter(|m| m["role"] == role)
            .filter_map(|m| m["content"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let max_tokens = body["max_tokens"]
        .as_u64()
        .or_else(|| body["max_completion_tokens"].as_u64());
    // The week numbers a schema pins, wherever the dialect puts the schema: by `enum` (the
    // strict subset), or by position (`prefixItems` with a `const` each, the grammar dialects).
    let pinned = |schema: &Value| {
        let weeks = &schema["properties"]["weeks"];
        match weeks["prefixItems"].as_array() {
            Some(items) => Value::Array(
                items
                    .iter()
                    .map(|w| w["properties"]["number"]["const"].clone())
                    .collect(),
            )
            .to_string(),
            None => weeks["items"]["properties"]["number"]["enum"].to_string(),
        }
    };
    let format = match body["response_format"]["type"].as_str() {
        Some("json_schema") => format!(
            "json_schema{}",
            pinned(&body["response_format"]["json_schema"]["schema"])
        ),
        Some("json_object") if body["response_format"].get("schema").is_some() => {
            format!("json_object_schema{}", pinned(&body["response_format"]["schema"]))
        }
        Some(other) => other.to_owned(),
        None if body.get("guided_json").is_some() => format!("guided_json{}", pinned(&body["guided_json"])),
        None => "none".to_owned(),
    };
    let (system, user) = (content("system"), content("user"));
    let ticket = match admit(&state, &system, &user, max_tokens) {
        Ok(ticket) => ticket,
        Err(refused) => return *refused,
    };
    let cache_key = body["prompt_cache_key"].as_str().map(str::to_owned);
    let response = match prepare(&state, "openai", &system, &user, max_tokens, format, cache_key).await {
        Err(response) => response,
        Ok(a) => respond(
            json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": a.text},
                    "finish_reason": if a.truncated { "length" } else { "stop" },
                }],
                "usage": {
                    "prompt_tokens_details": {"cached_tokens": a.cached_tokens},
                    "prompt_tokens": a.input_tokens,
                    "completion_tokens": a.output_tokens,
                    "total_tokens": a.input_tokens + a.output_tokens,
                },
            }),
            a.filler,
        ),
    };
    // OpenAI charges at arrival: nothing comes back for a shorter answer.
    settle(&state, ticket, None, response)
}

pub(super) async fn gemini(
    State(state): State<AppState>,
    version: axum::http::Version,
    Json(body): Json<Value>,
) -> Response {
    count_version(&state, version);
    let texts = |v: &Value| {
        v["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let system = texts(&body["systemInstruction"]);
    let user: String = body["contents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(texts)
        .collect::<Vec<_>>()
        .join("\n");
    let max_tokens = body["generationConfig"]["maxOutputTokens"].as_u64();
    let config = &body["generationConfig"];
    let format = if config.get("responseSchema").is_some() {
        let number = &config["responseSchema"]["properties"]["weeks"]["items"]["properties"]["number"];
        format!("response_schema[{}-{}]", number["minimum"], number["maximum"])
    } else if config.get("responseMimeType").is_some() {
        "json".to_owned()
    } else {
        "none".to_owned()
    };
    // Gemini counts the prompt's tokens only.
    let ticket = match admit(&state, &system, &user, None) {
        Ok(ticket) => ticket,
        Err(refused) => return *refused,
    };
    let (response, used) = match prepare(&state, "gemini", &system, &user, max_tokens, format, None).await {
        Err(response) => (response, 0),
        Ok(a) => (
            respond(
                json!({
                    "candidates": [{
                        "content": {"role": "model", "parts": [{"text": a.text}]},
                        "finishReason": if a.truncated { "MAX_TOKENS" } else { "STOP" },
                    }],
                    "usageMetadata": {
                        "promptTokenCount": a.input_tokens,
                        "cachedContentTokenCount": a.cached_tokens,
                        "candidatesTokenCount": a.output_tokens,
                        "totalTokenCount": a.input_tokens + a.output_tokens,
                    },
                }),
                a.filler,
            ),
            a.input_tokens,
        ),
    };
    settle(&state, ticket, Some(used), response)
}
