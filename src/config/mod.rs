//! Typed settings from environment variables and flags, with secrets in redacting types.

mod admin;
mod budget;
mod ca_file;
mod llm;
mod secret;

use std::{net::SocketAddr, time::Duration};

use clap::{Args, ValueEnum};

pub use self::{
    admin::{AdminConfigError, AdminSettings},
    budget::{Accounting, BudgetSettings, Prices},
    ca_file::CaFile,
    llm::{LlmSettings, MissingProvider, ProviderKind, ResponseFormat},
    secret::{Secret, ServiceUrl, redact_url},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Database connection settings, shared by every subcommand that touches Postgres. Global:
/// a command with subcommands of its own (`dlq list`) takes them after those too.
///
/// Every range is checked here, where the value is parsed: a bad value stops the process at
/// start with the variable's name (each value is named after its environment variable).
#[derive(Debug, Clone, Args)]
pub struct DbSettings {
    /// Postgres URL. `run`, `migrate` and `demo` create the database if it is missing; the other
    /// commands only read it. `sslmode` (libpq's values but `allow`, default `prefer`) and
    /// `sslrootcert` are honoured, in URL and key=value forms.
    #[arg(
        long = "database-url",
        id = "database_url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432/roadmap",
        hide_env_values = true
    )]
    pub url: ServiceUrl,
    /// Largest number of pooled Postgres connections.
    #[arg(
        long = "database-pool-size",
        id = "database_pool_size",
        env = "DATABASE_POOL_SIZE",
        value_name = "DATABASE_POOL_SIZE",
        global = true,
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub pool_size: u32,
    /// PEM file of the CA certificates that the Postgres server's certificate must chain to
    /// (libpq's `sslrootcert`); without it, verify-ca and verify-full use the platform's roots.
    #[arg(
        long = "database-ca-file",
        id = "database_ca_file",
        env = "DATABASE_CA_FILE",
        value_name = "DATABASE_CA_FILE",
        global = true
    )]
    pub ca_file: Option<CaFile>,
}

/// Broker connection settings and the names of the topology; global, as [`DbSettings`].
#[derive(Debug, Clone, Args)]
pub struct AmqpSettings {
    /// RabbitMQ URL.
    #[arg(
        long = "amqp-url",
        id = "amqp_url",
        env = "AMQP_URL",
        value_name = "AMQP_URL",
        global = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub url: ServiceUrl,
    /// Prefix of every exchange and queue name; `roadmap` gives the contract's names. Tests and
    /// side-by-side deployments on one vhost use their own.
    #[arg(
        long = "amqp-namespace",
        id = "amqp_namespace",
        env = "AMQP_NAMESPACE",
        value_name = "AMQP_NAMESPACE",
        global = true,
        default_value = "roadmap",
        value_parser = parse_namespace
    )]
    pub namespace: String,
    /// Deliveries of one job before it is dead-lettered as poison.
    #[arg(
        long = "amqp-delivery-limit",
        id = "amqp_delivery_limit",
        env = "AMQP_DELIVERY_LIMIT",
        value_name = "AMQP_DELIVERY_LIMIT",
        global = true,
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub delivery_limit: u32,
}

/// Default weeks per LLM call: about 5,000 output tokens, well inside common output limits.
pub const DEFAULT_BATCH_WEEKS: u32 = 3;
/// Default days of the previous week carried into the next prompt.
pub const DEFAULT_CONTEXT_DAYS: u32 = 2;

/// How roadmaps are cut into LLM calls.
#[derive(Debug, Clone, Copy, Args)]
pub struct BatchSettings {
    /// Weeks per LLM call.
    #[arg(
        long,
        env = "BATCH_WEEKS",
        value_name = "BATCH_WEEKS",
        default_value_t = DEFAULT_BATCH_WEEKS,
        value_parser = clap::value_parser!(u32).range(1..=12)
    )]
    pub batch_weeks: u32,
    /// Days of the previous week carried into the next prompt.
    #[arg(
        long,
        env = "CONTEXT_DAYS",
        value_name = "CONTEXT_DAYS",
        default_value_t = DEFAULT_CONTEXT_DAYS,
        value_parser = clap::value_parser!(u32).range(0..=7)
    )]
    pub context_days: u32,
    /// Phases of one job written side by side (their batches stay in order within a phase).
    #[arg(
        long,
        env = "JOB_PARALLELISM",
        value_name = "JOB_PARALLELISM",
        default_value_t = DEFAULT_JOB_PARALLELISM,
        value_parser = clap::value_parser!(u32).range(1..=8)
    )]
    pub job_parallelism: u32,
    /// Content checks of each batch (repeated tasks, drift from the outline, hours off plan,
    /// unusable resources): `on` re-asks once with the problems and records them; `off` judges
    /// answers on their structure alone.
    #[arg(
        long,
        env = "QUALITY_CHECKS",
        value_name = "QUALITY_CHECKS",
        default_value = "on",
        value_parser = parse_on_off,
        // A bool is a bare flag to clap by default; this one takes its value.
        action = clap::ArgAction::Set
    )]
    pub quality_checks: bool,
}

/// `on` or `off`, as the switches of the configuration are written.
fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?} is neither on nor off")),
    }
}

/// Default phases of a job written at once: the template's 4 phases of a long roadmap.
pub const DEFAULT_JOB_PARALLELISM: u32 = 4;

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            batch_weeks: DEFAULT_BATCH_WEEKS,
            context_days: DEFAULT_CONTEXT_DAYS,
            job_parallelism: DEFAULT_JOB_PARALLELISM,
            quality_checks: true,
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
    #[command(flatten)]
    pub budget: BudgetSettings,
    #[command(flatten)]
    pub admin: AdminSettings,
    /// Jobs in flight per replica (also the broker prefetch).
    #[arg(
        long,
        env = "WORKER_CONCURRENCY",
        value_name = "WORKER_CONCURRENCY",
        default_value_t = 32,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub worker_concurrency: u16,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "METRICS_ADDR",
        value_name = "METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: SocketAddr,
    /// Seconds a job's lease lasts without a heartbeat before another replica may take it over
    /// (at least 3: the heartbeat renews it every third).
    #[arg(
        long,
        env = "LEASE_SECS",
        value_name = "LEASE_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(3..=86_400)
    )]
    pub lease_secs: u64,
    /// Seconds a replica may go without a heartbeat (a row it stamps every fifth of this) and
    /// without a database session before another takes its jobs over: long enough to cover a
    /// database proxy restart or a terminated session, which cut a live replica's sessions. At
    /// most half of LEASE_SECS is used, so that a replica that died is known dead when its
    /// lease runs out.
    #[arg(
        long,
        env = "OWNER_GRACE_SECS",
        value_name = "OWNER_GRACE_SECS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub owner_grace_secs: u64,
    /// Seconds in-flight jobs get to finish their batch after SIGTERM before being handed back.
    #[arg(
        long,
        env = "SHUTDOWN_GRACE_SECS",
        value_name = "SHUTDOWN_GRACE_SECS",
        default_value_t = 25,
        value_parser = clap::value_parser!(u64).range(0..=86_400)
    )]
    pub shutdown_grace_secs: u64,
    /// Seconds after which a job still running acks its delivery and relies on Postgres and the
    /// sweeper instead; keep it below RabbitMQ's consumer timeout (30 minutes by default).
    #[arg(
        long,
        env = "AMQP_ACK_DEADLINE_SECS",
        value_name = "AMQP_ACK_DEADLINE_SECS",
        default_value_t = 1500,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub amqp_ack_deadline_secs: u64,
    /// Seconds between sweeps for stranded jobs (acked deliveries whose owner died, long-expired
    /// leases), which are re-published.
    #[arg(
        long,
        env = "SWEEP_INTERVAL_SECS",
        value_name = "SWEEP_INTERVAL_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub sweep_interval_secs: u64,
    /// Seconds a job handed back during a database outage waits in the retry queue before it
    /// is delivered again (the wait spends none of the work queue's delivery limit).
    #[arg(
        long,
        env = "RETRY_DELAY_SECS",
        value_name = "RETRY_DELAY_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub retry_delay_secs: u64,
    /// Whether `run` applies the migrations at start (each replica in turn). `false` for a
    /// deploy that runs `roadmap-worker migrate` as a step of its own before the rollout: the
    /// worker then only checks that the schema is current, and refuses to start if it is not.
    #[arg(
        long = "migrate-on-start",
        env = "MIGRATE_ON_START",
        value_name = "MIGRATE_ON_START",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub migrate_on_start: bool,
    /// Times a message that the broker dead-lettered for its delivery limit is returned to work
    /// before its job is failed with reason delivery_limit.
    #[arg(
        long,
        env = "RECOVER_LIMIT",
        value_name = "RECOVER_LIMIT",
        default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(0..=100)
    )]
    pub recover_limit: u32,
    /// A job taken over from a replica that died while working it this many times is failed as
    /// poison.
    #[arg(
        long,
        env = "JOB_POISON_AFTER",
        value_name = "JOB_POISON_AFTER",
        default_value_t = 3,
        value_parser = clap::value_parser!(i32).range(1..=1000)
    )]
    pub job_poison_after: i32,
    /// Days a finished job (completed or failed) is kept after it ended, with its roadmap,
    /// batches and events; its job_id is remembered for idempotency as long. Then the hourly
    /// retention pass deletes it, and the same job_id is a new job.
    #[arg(
        long,
        env = "RETAIN_DAYS",
        value_name = "RETAIN_DAYS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..=3650)
    )]
    pub retain_days: u32,
}

impl WorkerSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// `OWNER_GRACE_SECS`, at most half a lease: a job is taken over when its lease runs out,
    /// and whether that counts towards poison depends on its owner's heartbeat being that old.
    pub fn owner_grace(&self) -> Duration {
        Duration::from_secs(self.owner_grace_secs).min(self.lease() / 2)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn ack_deadline(&self) -> Duration {
        Duration::from_secs(self.amqp_ack_deadline_secs)
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs(self.sweep_interval_secs)
    }

    pub fn retry_delay(&self) -> Duration {
        Duration::from_secs(self.retry_delay_secs)
    }

    /// How long a finished job is kept: RETAIN_DAYS.
    pub fn retain(&self) -> Duration {
        Duration::from_secs(u64::from(self.retain_days) * 86_400)
    }
}

/// Namespaces become exchange and queue names: keep them to what every tool quotes safely.
fn parse_namespace(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} must be 1-100 characters of letters, digits, '.', '-' or '_'"
        ))
    }
}
