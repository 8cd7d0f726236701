//! The mock LLM over HTTP: OpenAI-compatible `/v1/chat/completions` and Gemini
//! `/v1beta/models/{model}:generateContent`, answering with the embedded mock's weeks, with
//! scripted or random faults so tests exercise the real HTTP path and every rung of the ladder.
//!
//! A crate of its own, so that the shipped `roadmap-worker` binary carries no test double: the
//! tests and benches use it as a dev-dependency, and its `mock-llm` binary serves it for
//! docker-compose and for trying the worker's real providers by hand.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use self::faults::{Draws, FILL_MARKER, Filler, error};
use self::quota::{Quota, Ticket};
pub use self::{
    faults::{Fault, FaultPlan, RatedFault, ignore_outline, repeat_tasks, under_plan},
    quota::{QuotaCounts, QuotaSettings},
};
use roadmap_worker::{
    domain::brief::{Brief, OutlineBrief},
    llm::{estimate_tokens, mock},
};

mod dialects;
mod faults;
mod quota;
mod serve;

/// A request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub api: &'static str,
    pub role: String,
    /// An outline request (its weeks are 0..0); otherwise a batch of weeks.
    pub outline: bool,
    pub first_week: u32,
    pub last_week: u32,
    pub fault: Option<String>,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// The structured-output mode the request asked for: `json_schema[<pinned weeks>]`,
    /// `json_object` or `none` (OpenAI); `response_schema[<min>-<max>]`, `json` or `none` (Gemini).
    pub format: String,
    /// OpenAI's `prompt_cache_key`, if the request sent one.
    pub cache_key: Option<String>,
    /// Input tokens the mock served "from its cache": the prefix this prompt shares with the
    /// previous one of the same cache key (or, without a key, of the same job data).
    pub cached_tokens: u64,
}

#[derive(Debug)]
struct Shared {
    faults: Draws,
    log: Vec<Recorded>,
    /// The last prompt seen per cache key, for the prompt-cache simulation.
    prompts: std::collections::HashMap<String, String>,
    /// Requests that came over HTTP/2.
    http2_requests: usize,
}

#[derive(Debug, Clone)]
struct AppState {
    shared: Arc<Mutex<Shared>>,
    quota: Option<Arc<Quota>>,
    latency: Duration,
    /// Requests whose first week is at or past this wait until it is lowered (crash tests).
    stall_from: watch::Receiver<u32>,
}

/// A running mock server; dropping it does not stop it (it lives as long as the runtime).
#[derive(Debug, Clone)]
pub struct MockLlmServer {
    pub addr: SocketAddr,
    /// The path every route sits under (`/mock-…` in process, empty for `mock-llm`), so that a
    /// worker left over from an earlier test, calling a reused port, is answered 404 instead of
    /// being counted as this server's client.
    prefix: String,
    shared: Arc<Mutex<Shared>>,
    quota: Option<Arc<Quota>>,
    stall_from: Arc<watch::Sender<u32>>,
}

impl MockLlmServer {
    /// Binds `addr` (port 0 picks a free port) and serves in the background.
    pub async fn start(addr: SocketAddr, plan: FaultPlan, latency: Duration) -> anyhow::Result<Self> {
        Self::start_with_quota(addr, plan, latency, QuotaSettings::default()).await
    }

    /// Like [`Self::start`], with rate limits that answer 429 as a provider does.
    pub async fn start_with_quota(
        addr: SocketAddr,
        plan: FaultPlan,
        latency: Duration,
        quota: QuotaSettings,
    ) -> anyhow::Result<Self> {
        let prefix = format!("/mock-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Self::spawn(addr, plan, latency, quota, prefix).await
    }

    async fn spawn(
        addr: SocketAddr,
        plan: FaultPlan,
        latency: Duration,
        quota: QuotaSettings,
        prefix: String,
    ) -> anyhow::Result<Self> {
        let quota = Quota::new(quota).map(Arc::new);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared {
            faults: Draws::new(plan),
            log: Vec::new(),
            prompts: std::collections::HashMap::new(),
            http2_requests: 0,
        }));
        let (stall_tx, stall_rx) = watch::channel(u32::MAX);
        let state = AppState {
            shared: shared.clone(),
            quota: quota.clone(),
            latency,
            stall_from: stall_rx,
        };
        let routes = Router::new()
            .route("/v1/chat/completions", post(dialects::openai))
            .route("/chat/completions", post(dialects::openai))
            .route("/v1beta/models/{model_action}", post(dialects::gemini))
            .with_state(state);
        let app = if prefix.is_empty() {
            routes
        } else {
            Router::new().nest(&prefix, routes)
        };
        tokio::spawn(serve::serve(listener, app));
        Ok(Self {
            addr,
            prefix,
            shared,
            quota,
            stall_from: Arc::new(stall_tx),
        })
    }

    /// Base URL for `LLM_BASE_URL` with the OpenAI provider.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}{}/v1", self.addr, self.prefix)
    }

    /// Base URL for `LLM_BASE_URL` with the Gemini provider.
    pub fn gemini_base_url(&self) -> String {
        format!("http://{}{}/v1beta", self.addr, self.prefix)
    }

    /// What the quota admitted, refused and settled (zeros without a quota).
    pub fn quota_counts(&self) -> QuotaCounts {
        self.quota.as_ref().map(|q| q.counts()).unwrap_or_default()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().expect("mock state").log.clone()
    }

    /// How many requests came over HTTP/2.
    pub fn http2_requests(&self) -> usize {
        self.shared.lock().expect("mock state").http2_requests
    }

    pub fn set_plan(&self, plan: FaultPlan) {
        self.shared.lock().expect("mock state").faults = Draws::new(plan);
    }

    /// Holds every request whose first week is `week` or later until [`Self::release`].
    pub fn stall_from_week(&self, week: u32) {
        self.stall_from.send_replace(week);
    }

    pub fn release(&self) {
        self.stall_from.send_replace(u32::MAX);
    }
}

/// Serves until the process ends (the `mock-llm` binary).
pub async fn serve_forever(
    addr: SocketAddr,
    plan: FaultPlan,
    latency: Duration,
    quota: QuotaSettings,
) -> anyhow::Result<()> {
    let server = MockLlmServer::spawn(addr, plan, latency, quota, String::new()).await?;
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
    cached_tokens: u64,
    /// Streamed in place of [`FILL_MARKER`] in `text`, for answers too large to build.
    filler: Option<Filler>,
}

async fn prepare(
    state: &AppState,
    api: &'static str,
    system: &str,
    user: &str,
    max_tokens: Option<u64>,
    format: String,
    cache_key: Option<String>,
) -> Result<Answer, Response> {
    let brief = Brief::parse(user);
    let outline = brief.is_none().then(|| OutlineBrief::parse(user)).flatten();
    let (fault, cached_tokens) = {
        let mut shared = state.shared.lock().expect("mock state");
        let fault = if outline.is_some() {
            shared.faults.next_outline()
        } else {
            shared.faults.next()
        };
        // A real provider caches only long prefixes, in blocks; the mock counts any shared
        // prefix, so that short test prompts show the effect.
        let full = format!("{system}\n{user}");
        let key = cache_key
            .clone()
            .unwrap_or_else(|| user.split("</job_data>").next().unwrap_or_default().to_owned());
        let cached_tokens = shared
            .prompts
            .insert(key, full.clone())
            .map_or(0, |previous| estimate_tokens(common_prefix(&previous, &full)));
        shared.log.push(Recorded {
            api,
            role: brief
                .as_ref()
                .map(|b| &b.profile)
                .or(outline.as_ref().map(|o| &o.profile))
                .map(|p| p.target_role.clone())
                .unwrap_or_default(),
            outline: outline.is_some(),
            first_week: brief.as_ref().map_or(0, |b| b.first_week),
            last_week: brief.as_ref().map_or(0, |b| b.last_week),
            fault: fault.as_ref().map(|f| format!("{f:?}")),
            received_at: chrono::Utc::now(),
            format,
            cache_key,
            cached_tokens,
        });
        (fault, cached_tokens)
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
    let mut filler = None;
    let mut truncated = false;
    match fault {
        Some(Fault::Status { code, retry_after }) => {
            return Err(error(faults::status(code), "injected failure", retry_after));
        }
        Some(Fault::RetryHints {
            code,
            headers,
            raw_headers,
            retry_delay,
        }) => {
            return Err(faults::retry_hints(
                code,
                &headers,
                &raw_headers,
                retry_delay.as_deref(),
            ));
        }
        Some(Fault::HugeBody {
            bytes,
            code: Some(code),
        }) => return Err(faults::huge_error(code, bytes)),
        Some(Fault::HugeBody { bytes, code: None }) => {
            text = Some(FILL_MARKER.to_owned());
            filler = Some(Filler {
                byte: b'x',
                len: bytes,
            });
        }
        Some(Fault::Whitespace { bytes }) => {
            // The weeks array left open after its complete weeks, as the model's limit cuts it.
            let full = value.to_string();
            let open = full.strip_suffix("]}").unwrap_or(&full);
            text = Some(format!("{open},{FILL_MARKER}"));
            filler = Some(Filler {
                byte: b' ',
                len: bytes,
            });
            // Cut already: the mock's own cut at max tokens would drop the filler's place.
            truncate_at = None;
            truncated = true;
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
        Some(Fault::RepeatTasks) => faults::repeat_tasks(&mut value, user),
        Some(Fault::IgnoreOutline) => faults::ignore_outline(&mut value),
        Some(Fault::UnderPlan { share }) => faults::under_plan(&mut value, share),
        Some(Fault::WrongWeeks) => {
            for week in value["weeks"].as_array_mut().into_iter().flatten() {
                week["number"] = json!(week["number"].as_u64().unwrap_or(0) + 100);
            }
        }
        None => {}
    }
    let mut text = text.unwrap_or_else(|| value.to_string());
    if let Some(limit) = truncate_at.filter(|limit| estimate_tokens(&text) > *limit) {
        text = text.chars().take((limit * 4) as usize).collect();
        truncated = true;
    }
    let filled = filler.map_or(0, |f| f.len.div_ceil(4));
    Ok(Answer {
        input_tokens: estimate_tokens(system) + estimate_tokens(user),
        output_tokens: estimate_tokens(&text) + filled,
        cached_tokens,
        text,
        truncated,
        filler,
    })
}

/// The longest common prefix of `a` and `b`, on a character boundary.
fn common_prefix<'a>(a: &'a str, b: &str) -> &'a str {
    let end = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or_else(|| a.len().min(b.len()), |((i, _), _)| i);
    &a[..end]
}

/// Admits a request against the quota, if there is one: its prompt, plus `max_tokens` where the
/// provider charges the output limit at arrival (`Some`).
fn admit(
    state: &AppState,
    system: &str,
    user: &str,
    max_tokens: Option<u64>,
) -> Result<Option<Ticket>, Box<Response>> {
    let Some(quota) = &state.quota else {
        return Ok(None);
    };
    let tokens = estimate_tokens(system) + estimate_tokens(user) + max_tokens.unwrap_or(0);
    quota
        .admit(tokens)
        .map(Some)
        .map_err(|short| Box::new(quota.refuse(short)))
}

/// Settles an admitted request (to `charged` tokens, or as admitted) and adds the rate-limit
/// headers.
fn settle(
    state: &AppState,
    ticket: Option<Ticket>,
    charged: Option<u64>,
    mut response: Response,
) -> Response {
    if let (Some(quota), Some(ticket)) = (&state.quota, ticket) {
        quota.settle(ticket, charged, response.headers_mut());
    }
    response
}

/// A provider's response envelope, streamed if the answer has a filler.
fn respond(envelope: Value, filler: Option<Filler>) -> Response {
    match filler {
        Some(filler) => faults::streamed(StatusCode::OK, &envelope, filler),
        None => Json(envelope).into_response(),
    }
}
