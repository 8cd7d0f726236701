//! Typed settings from environment variables and flags, with secrets in redacting types.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::{Args, ValueEnum};

/// A secret such as an API key. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The only way to read the value: call sites that need it are easy to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A service URL that may carry a password. `Display`/`Debug` show it with the password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUrl(Secret);

impl ServiceUrl {
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The URL with any password replaced by `***`, safe for logs and errors.
    pub fn redacted(&self) -> String {
        redact_url(self.expose())
    }
}

/// Masks the password of a URL (`scheme://user:pass@host`) or of a libpq key/value string.
pub fn redact_url(raw: &str) -> String {
    if let Ok(mut url) = url::Url::parse(raw) {
        if url.password().is_some() && url.set_password(Some("***")).is_ok() {
            return url.to_string();
        }
        if url.has_host() {
            return url.to_string();
        }
    }
    // Not a URL (libpq "key=value" form) or unparsable: mask what follows `password=` / `:...@`.
    let mut out = String::with_capacity(raw.len());
    for word in raw.split(' ') {
        if !out.is_empty() {
            out.push(' ');
        }
        match word.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => {
                out.push_str(k);
                out.push_str("=***");
            }
            _ => match (word.find("://"), word.rfind('@')) {
                (Some(s), Some(at)) if at > s => {
                    let creds = &word[s + 3..at];
                    let user = creds.split(':').next().unwrap_or("");
                    out.push_str(&format!("{}{user}:***{}", &word[..s + 3], &word[at..]));
                }
                _ => out.push_str(word),
            },
        }
    }
    out
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceUrl({})", self.redacted())
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for ServiceUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(Secret::new(s)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Embedded deterministic mock: offline, no key.
    Mock,
    /// Any OpenAI-compatible chat completions server.
    Openai,
    /// Google Gemini generateContent API.
    Gemini,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResponseFormat {
    /// response_format json_schema with the batch's schema (strict).
    JsonSchema,
    /// response_format json_object; the prompt carries the shape.
    JsonObject,
    /// No response_format at all, for servers that support neither.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Database connection settings, shared by every subcommand that touches Postgres.
#[derive(Debug, Clone, Args)]
pub struct DbSettings {
    /// Postgres URL; the database is created if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/roadmap",
        hide_env_values = true
    )]
    pub database_url: ServiceUrl,
    /// Largest number of pooled Postgres connections.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: usize,
}

/// Broker connection settings and the names of the topology.
#[derive(Debug, Clone, Args)]
pub struct AmqpSettings {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: ServiceUrl,
    /// Prefix of every exchange and queue name; `roadmap` gives the contract's names. Tests and
    /// side-by-side deployments on one vhost use their own.
    #[arg(long, env = "AMQP_NAMESPACE", default_value = "roadmap")]
    pub amqp_namespace: String,
    /// Deliveries of one job before it is dead-lettered as poison.
    #[arg(long, env = "AMQP_DELIVERY_LIMIT", default_value_t = 5)]
    pub amqp_delivery_limit: u32,
}

#[derive(Debug, Clone, Args)]
pub struct LlmSettings {
    #[arg(long, env = "LLM_PROVIDER", value_enum, default_value = "mock")]
    pub llm_provider: ProviderKind,
    /// Base URL of the provider's API; defaults to the provider's public endpoint.
    #[arg(long, env = "LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// Model name; defaults per provider.
    #[arg(long, env = "LLM_MODEL")]
    pub llm_model: Option<String>,
    /// API key (also read from OPENAI_API_KEY / GEMINI_API_KEY).
    #[arg(long, env = "LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<Secret>,
    #[arg(long, env = "LLM_MAX_OUTPUT_TOKENS", default_value_t = 8192)]
    pub llm_max_output_tokens: u32,
    #[arg(long, env = "LLM_RESPONSE_FORMAT", value_enum, default_value = "json-schema")]
    pub llm_response_format: ResponseFormat,
    #[arg(long, env = "LLM_TEMPERATURE", default_value_t = 0.7)]
    pub llm_temperature: f32,
    /// Time allowed for one LLM call, in seconds.
    #[arg(long, env = "LLM_TIMEOUT_SECS", default_value_t = 120)]
    pub llm_timeout_secs: u64,
    /// Retries of a transient LLM failure (timeout, 429, 5xx) before the batch falls back.
    #[arg(long, env = "LLM_MAX_RETRIES", default_value_t = 4)]
    pub llm_max_retries: usize,
    /// Seconds between checks of a provider that refused our key or model; intake resumes when
    /// a check passes.
    #[arg(long, env = "LLM_PROBE_INTERVAL_SECS", default_value_t = 15)]
    pub llm_probe_interval_secs: u64,
    /// Simulated latency of each embedded mock call, in milliseconds (demos and benchmarks).
    #[arg(long, env = "LLM_MOCK_LATENCY_MS", default_value_t = 0)]
    pub llm_mock_latency_ms: u64,
    /// Longest wait between retries, in milliseconds, whatever the server asks for.
    #[arg(long, env = "LLM_MAX_RETRY_DELAY_MS", default_value_t = 30_000)]
    pub llm_max_retry_delay_ms: u64,
}

impl LlmSettings {
    pub fn api_key(&self) -> Option<Secret> {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        self.llm_api_key.clone().or_else(|| {
            match self.llm_provider {
                ProviderKind::Openai => from_env("OPENAI_API_KEY"),
                ProviderKind::Gemini => from_env("GEMINI_API_KEY"),
                ProviderKind::Mock => None,
            }
            .map(Secret::new)
        })
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.llm_timeout_secs)
    }
}

/// How roadmaps are cut into LLM calls.
#[derive(Debug, Clone, Copy, Args)]
pub struct BatchSettings {
    /// Weeks per LLM call.
    #[arg(long, env = "BATCH_WEEKS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=12))]
    pub batch_weeks: u32,
    /// Days of the previous week carried into the next prompt.
    #[arg(long, env = "CONTEXT_DAYS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=7))]
    pub context_days: u32,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            batch_weeks: 3,
            context_days: 2,
        }
    }
}

/// Everything the `run` subcommand needs.
#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    #[command(flatten)]
    pub db: DbSettings,
    #[command(flatten)]
    pub amqp: AmqpSettings,
    #[command(flatten)]
    pub llm: LlmSettings,
    #[command(flatten)]
    pub batch: BatchSettings,
    /// Jobs in flight per replica (also the broker prefetch).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_concurrency: u16,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Seconds a job's lease lasts without a heartbeat before another replica may take it over.
    #[arg(long, env = "LEASE_SECS", default_value_t = 60)]
    pub lease_secs: u64,
    /// Seconds in-flight jobs get to finish their batch after SIGTERM before being handed back.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,
    /// Seconds after which a job still running acks its delivery and relies on Postgres and the
    /// sweeper instead; keep it below RabbitMQ's consumer timeout (30 minutes by default).
    #[arg(long, env = "AMQP_ACK_DEADLINE_SECS", default_value_t = 1500)]
    pub amqp_ack_deadline_secs: u64,
    /// Seconds between sweeps for stranded jobs (acked deliveries whose owner died, long-expired
    /// leases), which are re-published.
    #[arg(long, env = "SWEEP_INTERVAL_SECS", default_value_t = 10)]
    pub sweep_interval_secs: u64,
    /// A job taken over from a dead or fenced owner this many times is failed as poison.
    #[arg(long, env = "JOB_POISON_AFTER", default_value_t = 3)]
    pub job_poison_after: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        let url: ServiceUrl = "postgres://app:s3cr3t@db:5432/roadmap".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/roadmap");
        assert!(!format!("{url:?}").contains("s3cr3t"));
        assert_eq!(
            redact_url("host=db user=app password=s3cr3t dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn secrets_never_print() {
        let key = Secret::new("sk-live-123");
        assert!(!format!("{key:?} {key}").contains("sk-live"));
    }
}
