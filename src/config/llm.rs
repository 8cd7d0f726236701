//! The LLM's settings: which provider, where, which model, how answers are asked for, how long
//! a call may take and how it is retried.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Embedded deterministic mock: offline, no key.
    Mock,
    /// Any OpenAI-compatible chat completions server.
    Openai,
    /// Google Gemini generateContent API.
    Gemini,
}

/// `run` without a provider: the embedded mock answers only when asked for by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "LLM_PROVIDER is not set (nor --llm-provider): set it to openai (any OpenAI-compatible server), \
     gemini, or mock (the embedded offline mock, which writes template roadmaps)"
)]
pub struct MissingProvider;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResponseFormat {
    /// response_format json_schema with the batch's schema (strict): OpenAI, vLLM, Ollama 0.5+,
    /// llama.cpp's llama-server.
    JsonSchema,
    /// response_format json_object with the schema beside it (`{"type": "json_object",
    /// "schema": {...}}`), enforced by grammar: llama-cpp-python, llama-server.
    JsonObjectSchema,
    /// vLLM's own `guided_json` field with the schema, for vLLM versions before json_schema.
    GuidedJson,
    /// response_format json_object; the prompt carries the shape.
    JsonObject,
    /// No response_format at all, for servers that support neither.
    None,
}

impl ResponseFormat {
    /// Whether the server is given the schema to enforce; otherwise the prompt spells the shape.
    pub fn sends_schema(self) -> bool {
        matches!(self, Self::JsonSchema | Self::JsonObjectSchema | Self::GuidedJson)
    }
}

#[derive(Debug, Clone, Args)]
pub struct LlmSettings {
    /// Which LLM answers: required for `run`, so that a deployment that forgets it stops at
    /// start instead of storing the embedded mock's template roadmaps; `demo` takes the mock.
    #[arg(
        long = "llm-provider",
        id = "llm_provider",
        env = "LLM_PROVIDER",
        value_name = "LLM_PROVIDER",
        value_enum
    )]
    pub provider: Option<ProviderKind>,
    /// Base URL of the provider's API; defaults to the provider's public endpoint.
    #[arg(
        long = "llm-base-url",
        id = "llm_base_url",
        env = "LLM_BASE_URL",
        value_name = "LLM_BASE_URL"
    )]
    pub base_url: Option<String>,
    /// Model name; defaults per provider.
    #[arg(
        long = "llm-model",
        id = "llm_model",
        env = "LLM_MODEL",
        value_name = "LLM_MODEL"
    )]
    pub model: Option<String>,
    /// API key (also read from OPENAI_API_KEY / GEMINI_API_KEY).
    #[arg(
        long = "llm-api-key",
        id = "llm_api_key",
        env = "LLM_API_KEY",
        value_name = "LLM_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<Secret>,
    /// Output limit per call, in tokens.
    #[arg(
        long = "llm-max-output-tokens",
        id = "llm_max_output_tokens",
        env = "LLM_MAX_OUTPUT_TOKENS",
        value_name = "LLM_MAX_OUTPUT_TOKENS",
        default_value_t = 8192,
        value_parser = clap::value_parser!(u32).range(256..=1_000_000)
    )]
    pub max_output_tokens: u32,
    #[arg(
        long = "llm-response-format",
        id = "llm_response_format",
        env = "LLM_RESPONSE_FORMAT",
        value_name = "LLM_RESPONSE_FORMAT",
        value_enum,
        default_value = "json-schema"
    )]
    pub response_format: ResponseFormat,
    /// Sampling temperature, 0 to 2.
    #[arg(
        long = "llm-temperature",
        id = "llm_temperature",
        env = "LLM_TEMPERATURE",
        value_name = "LLM_TEMPERATURE",
        default_value_t = 0.7,
        value_parser = parse_temperature
    )]
    pub temperature: f32,
    /// Time allowed for one LLM call, in seconds.
    #[arg(
        long = "llm-timeout-secs",
        id = "llm_timeout_secs",
        env = "LLM_TIMEOUT_SECS",
        value_name = "LLM_TIMEOUT_SECS",
        default_value_t = 120,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub timeout_secs: u64,
    /// Retries of a transient LLM failure (timeout, 429, 5xx) before the batch falls back.
    #[arg(
        long = "llm-max-retries",
        id = "llm_max_retries",
        env = "LLM_MAX_RETRIES",
        value_name = "LLM_MAX_RETRIES",
        default_value_t = 4,
        value_parser = clap::value_parser!(u32).range(0..=50)
    )]
    pub max_retries: u32,
    /// Seconds between checks of a provider that refused our key or model; intake resumes when
    /// a check passes.
    #[arg(
        long = "llm-probe-interval-secs",
        id = "llm_probe_interval_secs",
        env = "LLM_PROBE_INTERVAL_SECS",
        value_name = "LLM_PROBE_INTERVAL_SECS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub probe_interval_secs: u64,
    /// Simulated latency of each embedded mock call, in milliseconds (demos and benchmarks).
    #[arg(
        long = "llm-mock-latency-ms",
        id = "llm_mock_latency_ms",
        env = "LLM_MOCK_LATENCY_MS",
        value_name = "LLM_MOCK_LATENCY_MS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..=600_000)
    )]
    pub mock_latency_ms: u64,
    /// Send OpenAI's `prompt_cache_key` (the job id), so that a job's calls hit the same prompt
    /// cache; `false` for an OpenAI-compatible server that refuses unknown fields.
    #[arg(
        long = "llm-prompt-cache-key",
        id = "llm_prompt_cache_key",
        env = "LLM_PROMPT_CACHE_KEY",
        value_name = "LLM_PROMPT_CACHE_KEY",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub prompt_cache_key: bool,
    /// Multiplex calls over HTTP/2: negotiated over TLS, spoken from the start (h2c) with an
    /// `http://` base URL. One connection carries every call, where HTTP/1.1 keeps one
    /// connection (about 25 KiB of buffers) per call in flight, and a call's answer waiting at
    /// the answer gate holds at most its 8 KiB flow-control window; but the server's stream
    /// limit (often 100 to 256) then caps the calls in flight per replica.
    #[arg(
        long = "llm-http2",
        id = "llm_http2",
        env = "LLM_HTTP2",
        value_name = "LLM_HTTP2",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub http2: bool,
    /// Longest wait between retries, in milliseconds, whatever the server asks for.
    #[arg(
        long = "llm-max-retry-delay-ms",
        id = "llm_max_retry_delay_ms",
        env = "LLM_MAX_RETRY_DELAY_MS",
        value_name = "LLM_MAX_RETRY_DELAY_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(0..=3_600_000)
    )]
    pub max_retry_delay_ms: u64,
}

impl LlmSettings {
    /// The chosen provider, or the refusal that names the variable to set.
    pub fn provider_kind(&self) -> Result<ProviderKind, MissingProvider> {
        self.provider.ok_or(MissingProvider)
    }

    pub fn api_key(&self) -> Option<Secret> {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        self.api_key.clone().or_else(|| {
            match self.provider? {
                ProviderKind::Openai => from_env("OPENAI_API_KEY"),
                ProviderKind::Gemini => from_env("GEMINI_API_KEY"),
                ProviderKind::Mock => None,
            }
            .map(Secret::new)
        })
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    pub fn probe_interval(&self) -> Duration {
        Duration::from_secs(self.probe_interval_secs)
    }

    pub fn mock_latency(&self) -> Duration {
        Duration::from_millis(self.mock_latency_ms)
    }
}

fn parse_temperature(value: &str) -> Result<f32, String> {
    let t: f32 = value.parse().map_err(|_| format!("{value:?} is not a number"))?;
    if (0.0..=2.0).contains(&t) {
        Ok(t)
    } else {
        Err(format!("{t} is not between 0 and 2"))
    }
}
