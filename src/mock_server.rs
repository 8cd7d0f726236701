//! The mock LLM over HTTP: OpenAI-compatible `/v1/chat/completions` and Gemini
//! `/v1beta/models/{model}:generateContent`, answering with the embedded mock's weeks, with
//! scripted or random faults so tests exercise the real HTTP path and every rung of the ladder.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{
    domain::brief::Brief,
    llm::{estimate_tokens, mock},
};

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// An HTTP error status, with an optional Retry-After in seconds.
    Status { code: u16, retry_after: Option<f64> },
    /// The answer cut after `tokens` tokens, finish reason length / MAX_TOKENS.
    Truncate { tokens: u64 },
    /// Text that is not JSON.
    InvalidJson,
    /// Valid JSON wrapped in markdown fences.
    Fences,
    /// Week numbers shifted by 100.
    WrongWeeks,
    /// Answer after `ms` milliseconds.
    Slow { ms: u64 },
    /// 401 with an OpenAI-style "invalid API key" body.
    AuthFailure,
}

/// A fault with its probability per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatedFault {
    pub rate: f64,
    pub fault: Fault,
}

/// What the server does wrong, and when.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// Applied to the first requests, one each, in order.
    #[serde(default)]
    pub script: Vec<Fault>,
    /// After the script: each request draws at most one of these by its rate.
    #[serde(default)]
    pub rates: Vec<RatedFault>,
    /// Seed of the random draws, so a run can be repeated.
    #[serde(default)]
    pub seed: u64,
}

/// A request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub api: &'static str,
    pub role: String,
    pub first_week: u32,
    pub last_week: u32,
    pub fault: Option<String>,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// The structured-output mode the request asked for: `json_schema[<pinned weeks>]`,
    /// `json_object` or `none` (OpenAI); `response_schema[<min>-<max>]`, `json` or `none` (Gemini).
    pub format: String,
}

#[derive(Debug)]
struct Shared {
    plan: FaultPlan,
    scripted: usize,
    rng: u64,
    log: Vec<Recorded>,
}

#[derive(Debug, Clone)]
struct AppState {
    shared: Arc<Mutex<Shared>>,
    latency: Duration,
    /// Requests whose first week is at or past this wait until it is lowered (crash tests).
    stall_from: watch::Receiver<u32>,
}

/// A running mock server; dropping it does not stop it (it lives as long as the runtime).
#[derive(Debug, Clone)]
pub struct MockLlmServer {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stall_from: Arc<watch::Sender<u32>>,
}

impl MockLlmServer {
    /// Binds `addr` (port 0 picks a free port) and serves in the background.
    pub async fn start(addr: SocketAddr, plan: FaultPlan, latency: Duration) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared {
            rng: plan.seed ^ 0x9E37_79B9_7F4A_7C15,
            plan,
            scripted: 0,
            log: Vec::new(),
        }));
        let (stall_tx, stall_rx) = watch::channel(u32::MAX);
        let state = AppState {
            shared: shared.clone(),
            latency,
            stall_from: stall_rx,
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/chat/completions", post(openai))
            .route("/v1beta/models/{model_action}", post(gemini))
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            shared,
            stall_from: Arc::new(stall_tx),
        })
    }

    /// Base URL for `LLM_BASE_URL` with the OpenAI provider.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Base URL for `LLM_BASE_URL` with the Gemini provider.
    pub fn gemini_base_url(&self) -> String {
        format!("http://{}/v1beta", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().expect("mock state").log.clone()
    }

    pub fn set_plan(&self, plan: FaultPlan) {
        let mut shared = self.shared.lock().expect("mock state");
        shared.rng = plan.seed ^ 0x9E37_79B9_7F4A_7C15;
        shared.plan = plan;
        shared.scripted = 0;
    }

    /// Holds every request whose first week is `week` or later until [`Self::release`].
    pub fn stall_from_week(&self, week: u32) {
        self.stall_from.send_replace(week);
    }

    pub fn release(&self) {
        self.stall_from.send_replace(u32::MAX);
    }
}

/// Serves until the process ends (the `mock-llm` subcommand).
pub async fn serve_forever(addr: SocketAddr, plan: FaultPlan, latency: Duration) -> anyhow::Result<()> {
    let server = MockLlmServer::start(addr, plan, latency).await?;
    tracing::info!(addr = %server.addr, "mock LLM serving: OpenAI at {}, Gemini at {}", server.openai_base_url(), server.gemini_base_url());
    std::future::pending::<()>().await;
    Ok(())
}

/// A provider-neutral answer, before it is put in the provider's response shape.
struct Answer {
    text: String,
    truncated: bool,
    input_tokens: u64,
    output_tokens: u64,
}

async fn prepare(
    state: &AppState,
    api: &'static str,
    system: &str,
    user: &str,
    max_tokens: Option<u64>,
    format: String,
) -> Result<Answer, Response> {
    let brief = Brief::parse(user);
    let fault = {
        let mut shared = state.shared.lock().expect("mock state");
        let fault = next_fault(&mut shared);
        shared.log.push(Recorded {
            api,
            role: brief
                .as_ref()
                .map(|b| b.profile.target_role.clone())
                .unwrap_or_default(),
            first_week: brief.as_ref().map_or(0, |b| b.first_week),
            last_week: brief.as_ref().map_or(0, |b| b.last_week),
            fault: fault.as_ref().map(|f| format!("{f:?}")),
            received_at: chrono::Utc::now(),
            format,
        });
        fault
    };
    if let Some(first) = brief.as_ref().map(|b| b.first_week) {
        let mut stall = state.stall_from.clone();
        let _ = stall.wait_for(|from| first < *from).await;
    }
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    let mut value = mock::answer_value(user).map_err(|m| error(StatusCode::BAD_REQUEST, &m, None))?;
    let mut truncate_at = max_tokens;
    let mut text = None;
    match fault {
        Some(Fault::Status { code, retry_after }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(error(status, "injected failure", retry_after));
        }
        Some(Fault::AuthFailure) => {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided",
                None,
            ));
        }
        Some(Fault::Slow { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Some(Fault::Truncate { tokens }) => truncate_at = Some(truncate_at.map_or(tokens, |m| m.min(tokens))),
        Some(Fault::InvalidJson) => text = Some("Sure! Here is your roadmap: {weeks: [oops".to_owned()),
        Some(Fault::Fences) => text = Some(format!("```json\n{value}\n```")),
        Some(Fault::WrongWeeks) => {
            for week in value["weeks"].as_array_mut().into_iter().flatten() {
                week["number"] = json!(week["number"].as_u64().unwrap_or(0) + 100);
            }
        }
        None => {}
    }
    let mut text = text.unwrap_or_else(|| value.to_string());
    let mut truncated = false;
    if let Some(limit) = truncate_at.filter(|limit| estimate_tokens(&text) > *limit) {
        text = text.chars().take((limit * 4) as usize).collect();
        truncated = true;
    }
    Ok(Answer {
        input_tokens: estimate_tokens(system) + estimate_tokens(user),
        output_tokens: estimate_tokens(&text),
        text,
        truncated,
    })
}

fn next_fault(shared: &mut Shared) -> Option<Fault> {
    if let Some(fault) = shared.plan.script.get(shared.scripted).cloned() {
        shared.scripted += 1;
        return Some(fault);
    }
    // xorshift64*: deterministic per seed, good enough to spread faults.
    let mut x = shared.rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    shared.rng = x;
    let draw = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
    let mut acc = 0.0;
    for rated in &shared.plan.rates {
        acc += rated.rate;
        if draw < acc {
            return Some(rated.fault.clone());
        }
    }
    None
}

fn error(status: StatusCode, message: &str, retry_after: Option<f64>) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(v) = retry_after.and_then(|secs| HeaderValue::from_str(&secs.to_string()).ok()) {
        headers.insert("retry-after", v);
    }
    (
        status,
        headers,
        Json(json!({"error": {"message": message, "code": status.as_u16()}})),
    )
        .into_response()
}

async fn openai(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
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
    let format = match body["response_format"]["type"].as_str() {
        Some("json_schema") => {
            let pinned = &body["response_format"]["json_schema"]["schema"]["properties"]["weeks"]["items"]["properties"]
                ["number"]["enum"];
            format!("json_schema{pinned}")
        }
        Some(other) => other.to_owned(),
        None => "none".to_owned(),
    };
    match prepare(
        &state,
        "openai",
        &content("system"),
        &content("user"),
        max_tokens,
        format,
    )
    .await
    {
        Err(response) => response,
        Ok(a) => Json(json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": a.text},
                "finish_reason": if a.truncated { "length" } else { "stop" },
            }],
            "usage": {
                "prompt_tokens": a.input_tokens,
                "completion_tokens": a.output_tokens,
                "total_tokens": a.input_tokens + a.output_tokens,
            },
        }))
        .into_response(),
    }
}

async fn gemini(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
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
    match prepare(&state, "gemini", &system, &user, max_tokens, format).await {
        Err(response) => response,
        Ok(a) => Json(json!({
            "candidates": [{
                "content": {"role": "model", "parts": [{"text": a.text}]},
                "finishReason": if a.truncated { "MAX_TOKENS" } else { "STOP" },
            }],
            "usageMetadata": {
                "promptTokenCount": a.input_tokens,
                "candidatesTokenCount": a.output_tokens,
                "totalTokenCount": a.input_tokens + a.output_tokens,
            },
        }))
        .into_response(),
    }
}
