//! The provider-neutral LLM interface: one request in, text plus finish reason and usage out.
//!
//! Providers are an enum rather than a trait object: the set is closed (mock, OpenAI-compatible,
//! Gemini), and an enum keeps `async fn` without boxing. The pipeline sees them through the
//! [`Llm`] trait, with static dispatch, so that its tests can script the model's answers
//! in-process without any of them.

pub mod gate;
pub(crate) mod gemini;
pub mod mock;
pub(crate) mod openai;
pub mod schema;
pub(crate) mod wire;

use std::{sync::Arc, time::Duration};

use serde_json::Value;

pub use self::gate::{Admission, AnswerGate};
use crate::{
    config::{LlmSettings, ProviderKind},
    metrics::{BatchFault, CallStatus},
};
// Defined below this layer, so that metrics can count it.
pub use crate::domain::TokenUsage;

/// One call to the model.
#[derive(Debug, Clone)]
pub struct LlmRequest {
    pub system: String,
    pub prompt: String,
    /// JSON Schema of the expected answer, for providers that constrain decoding with it;
    /// shared, as every call for the same weeks carries the same one.
    pub schema: Arc<Value>,
    pub max_output_tokens: u32,
    pub temperature: f32,
    /// Routes a job's calls to the same prompt cache (OpenAI's `prompt_cache_key`): the job id.
    pub cache_key: Option<String>,
    /// A bulk job's call: it takes only budget no interactive call is waiting for.
    pub bulk: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlmResponse {
    pub text: String,
    pub finish: FinishReason,
    pub usage: TokenUsage,
    /// The answer's place behind the [`AnswerGate`], to hold until it is stored.
    pub admission: Admission,
    /// What the provider's headers said is left of its rate limits.
    pub limits: RateLimits,
}

impl LlmResponse {
    /// An answer from an offline model (the embedded mock, a test's script), its usage estimated
    /// from the text as for a provider that reports none.
    pub fn estimated(request: &LlmRequest, text: String, finish: FinishReason) -> Self {
        Self {
            usage: TokenUsage {
                input: estimate_tokens(&request.system) + estimate_tokens(&request.prompt),
                output: estimate_tokens(&text),
                cached_input: 0,
            },
            text,
            finish,
            admission: Admission::default(),
            limits: RateLimits::default(),
        }
    }
}

/// What is left of a provider's rate limits, from its response headers where it sends them
/// (OpenAI's `x-ratelimit-remaining-*`, Anthropic's `anthropic-ratelimit-*-remaining`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub remaining_tokens: Option<u64>,
    pub remaining_requests: Option<u64>,
}

/// Why the model stopped, normalised across providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    /// Cut off at the output limit: the text is incomplete.
    Length,
    /// Withheld by a safety or recitation filter.
    Filtered,
    Other(String),
}

/// A failed call. Transient errors are retried; the others are not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// Timeout, connection failure, 429 or 5xx, an undecodable body or one over the body cap
    /// (`body_too_large`): worth retrying, after `retry_after` if given.
    #[error("transient LLM failure ({status}): {message}")]
    Transient {
        status: &'static str,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Bad key, no access, unknown model or endpoint: no job can succeed until an operator acts.
    #[error("LLM provider configuration fault ({status}): {message}")]
    Config { status: &'static str, message: String },
    /// The provider refused this request (other 4xx): retrying it unchanged will not help.
    #[error("LLM request refused ({status}): {message}")]
    Refused { status: &'static str, message: String },
}

impl LlmError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// A bounded label for metrics (`http_429`, `timeout`, `body_too_large`, …).
    pub fn status(&self) -> &'static str {
        match self {
            Self::Transient { status, .. } | Self::Config { status, .. } | Self::Refused { status, .. } => {
                status
            }
        }
    }

    /// Maps an HTTP error status to the right kind of error.
    pub(crate) fn from_status(code: u16, message: String, retry_after: Option<Duration>) -> Self {
        let status = status_label(code);
        match code {
            401 | 403 | 404 => Self::Config { status, message },
            408 | 409 | 425 | 429 | 500..=599 => Self::Transient {
                status,
                message,
                retry_after,
            },
            _ => Self::Refused { status, message },
        }
    }

    pub(crate) fn from_reqwest(err: reqwest::Error) -> Self {
        let status = if err.is_timeout() {
            "timeout"
        } else if err.is_connect() {
            "connect"
        } else if err.is_decode() {
            "decode"
        } else {
            "io"
        };
        // Drop the URL: some providers put keys in query strings, and errors reach logs.
        let mut message = err.without_url().to_string();
        if status == "timeout" {
            // The operator's next step, where they will read it: a model that writes slower
            // than a batch's answer needs fits no default.
            message.push_str(
                " (no complete answer within LLM_TIMEOUT_SECS: a slow model, such as a small local \
                 one on CPU, needs a longer LLM_TIMEOUT_SECS or a smaller BATCH_WEEKS; see the \
                 README's Local model servers)",
            );
        }
        Self::Transient {
            status,
            message,
            retry_after: None,
        }
    }
}

// The metrics layer sits below this one and knows no `LlmError`: a call is counted by its status.
impl From<&LlmError> for BatchFault {
    fn from(err: &LlmError) -> Self {
        Self::Call(err.status())
    }
}

impl<T> From<&Result<T, LlmError>> for CallStatus {
    fn from(result: &Result<T, LlmError>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(err) => Self::Failed(err.status()),
        }
    }
}

fn status_label(code: u16) -> &'static str {
    const KNOWN: [(u16, &str); 14] = [
        (400, "http_400"),
        (401, "http_401"),
        (403, "http_403"),
        (404, "http_404"),
        (408, "http_408"),
        (409, "http_409"),
        (413, "http_413"),
        (422, "http_422"),
        (425, "http_425"),
        (429, "http_429"),
        (500, "http_500"),
        (502, "http_502"),
        (503, "http_503"),
        (504, "http_504"),
    ];
    // A bounded set of labels, whatever a server answers.
    KNOWN
        .iter()
        .find(|(known, _)| *known == code)
        .map_or(if code < 500 { "http_4xx" } else { "http_5xx" }, |(_, label)| {
            label
        })
}

/// What the pipeline needs of a model: one call, and names for metrics and spans. Static
/// dispatch only (the pipeline is generic over it): a `dyn` call would box every call's future,
/// and thousands are in flight.
pub trait Llm: std::fmt::Debug + Send + Sync {
    /// One call; transient failures are the caller's to retry.
    fn complete(&self, request: &LlmRequest) -> impl Future<Output = Result<LlmResponse, LlmError>> + Send;

    /// The provider's name, a bounded metric label (`mock`, `openai`, `gemini`).
    fn name(&self) -> &'static str;

    /// The model's name.
    fn model(&self) -> &str;

    /// A minimal request that tells whether the provider accepts our key and model at all.
    /// A refusal of the request itself still proves both, so only configuration faults and
    /// transient failures count as "not usable".
    fn probe(&self) -> impl Future<Output = Result<(), LlmError>> + Send {
        async move {
            let request = LlmRequest {
                system: "Health check.".into(),
                prompt: "Answer with the word ok.".into(),
                schema: Arc::new(Value::Null),
                max_output_tokens: 1,
                temperature: 0.0,
                cache_key: None,
                bulk: false,
            };
            match self.complete(&request).await {
                Ok(_) | Err(LlmError::Refused { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// The configured provider.
#[derive(Debug, Clone)]
pub enum Provider {
    Mock(mock::MockLlm),
    OpenAi(openai::OpenAi),
    Gemini(gemini::Gemini),
}

impl Provider {
    /// The configured provider; a remote one reads its answers through `gate`.
    pub fn from_settings(settings: &LlmSettings, gate: AnswerGate) -> anyhow::Result<Self> {
        Ok(match settings.provider_kind()? {
            ProviderKind::Mock => Self::Mock(mock::MockLlm {
                latency: settings.mock_latency(),
            }),
            ProviderKind::Openai => Self::OpenAi(openai::OpenAi::new(settings, gate)?),
            ProviderKind::Gemini => Self::Gemini(gemini::Gemini::new(settings, gate)?),
        })
    }
}

impl Llm for Provider {
    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        match self {
            Self::Mock(p) => p.complete(request).await,
            Self::OpenAi(p) => p.complete(request).await,
            Self::Gemini(p) => p.complete(request).await,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Mock(_) => "mock",
            Self::OpenAi(_) => "openai",
            Self::Gemini(_) => "gemini",
        }
    }

    fn model(&self) -> &str {
        match self {
            Self::Mock(_) => "mock",
            Self::OpenAi(p) => p.model(),
            Self::Gemini(p) => p.model(),
        }
    }
}

/// Idle connections kept per provider host. Each keeps the buffers of the answer it last read;
/// after a burst of thousands of calls that answer together, thousands of idle connections
/// would hold hundreds of MiB. Busy connections are reused back to back either way.
const MAX_IDLE_CONNECTIONS: usize = 64;

/// Bytes of one answer an HTTP/2 server may send ahead of its reading. A batch's answer is a
/// few times this size, so a call read at once takes a few more round trips (tens of ms against
/// calls of seconds), and an answer left unread at the gate holds only this much.
const HTTP2_STREAM_WINDOW: u32 = 8 * 1024;

/// The largest flow-control window HTTP/2 allows (2^31 - 1), for the connection as a whole.
const HTTP2_MAX_WINDOW: u32 = (1 << 31) - 1;

/// The HTTP client of the remote providers: the call timeout from settings, a short connect
/// timeout so that an unreachable endpoint fails fast.
pub(crate) fn http_client(settings: &LlmSettings) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(settings.timeout())
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
        .pool_idle_timeout(Duration::from_secs(60));
    let cleartext = settings
        .base_url
        .as_deref()
        .is_some_and(|url| url.starts_with("http://"));
    let builder = match (settings.http2, cleartext) {
        // reqwest's own retry layer replays only HTTP/2 refusals, yet it keeps a copy of every
        // request's headers while the call is in flight: off where it can never fire. Retries
        // are the ladder's anyway.
        (false, _) => builder
            .http1_only()
            .retry(reqwest::retry::never().max_retries_per_request(0)),
        (true, cleartext) => {
            // A small window per call and none worth the name per connection: an answer waiting
            // at the gate, unread, then holds at most one window and no other call's share.
            let builder = builder
                .http2_initial_stream_window_size(HTTP2_STREAM_WINDOW)
                .http2_initial_connection_window_size(HTTP2_MAX_WINDOW);
            // Over TLS, offered next to HTTP/1.1 in the handshake; the server picks.
            if cleartext {
                builder.http2_prior_knowledge()
            } else {
                builder
            }
        }
    };
    builder
        .build()
        .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))
}

/// Rough token estimate (4 characters a token), for providers that report no usage.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timeout says which settings fit a slow model, where the operator reads it (the log).
    #[tokio::test]
    async fn a_timeout_names_the_settings_that_fit_a_slow_model() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and never answers, as a model still writing.
        let _silent = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let err = client.get(format!("http://{addr}/")).send().await.unwrap_err();
        let err = LlmError::from_reqwest(err);
        assert_eq!(err.status(), "timeout");
        let text = err.to_string();
        assert!(
            text.contains("LLM_TIMEOUT_SECS") && text.contains("BATCH_WEEKS"),
            "{text}"
        );
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert!(LlmError::from_status(503, String::new(), None).is_transient());
        assert!(LlmError::from_status(429, String::new(), None).is_transient());
        assert!(matches!(
            LlmError::from_status(401, String::new(), None),
            LlmError::Config { .. }
        ));
        assert!(matches!(
            LlmError::from_status(400, String::new(), None),
            LlmError::Refused { .. }
        ));
    }

    #[test]
    fn calls_are_counted_by_their_status() {
        let err = LlmError::from_status(418, String::new(), None);
        assert_eq!(BatchFault::from(&err), BatchFault::Call("http_4xx"));
        assert_eq!(
            CallStatus::from(&Err::<(), _>(err)),
            CallStatus::Failed("http_4xx")
        );
        assert_eq!(CallStatus::from(&Ok::<_, LlmError>(())), CallStatus::Ok);
        assert_eq!(CallStatus::Ok.as_str(), "ok");
    }
}
