//! Postgres: the pool, database creation, migrations, and one module per table family.

pub mod batches;
pub mod jobs;
pub mod outbox;
pub mod roadmaps;

use std::{future::Future, str::FromStr, time::Duration};

use anyhow::Context as _;
use backon::{ExponentialBuilder, Retryable};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Config, NoTls, error::SqlState};
use tracing::{info, warn};

use crate::config::DbSettings;

refinery::embed_migrations!("migrations");

/// Errors from the store. Database and pool errors are transient; `Fenced` means another
/// replica owns the job now and this one must stop writing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {}", chain(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("the job's lease was taken over by another replica")]
    Fenced,
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

/// An error with its causes, which tokio-postgres keeps out of its own message.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl StoreError {
    /// Database and pool errors pass with the outage; `Fenced` and corrupt data never do.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Pool(_) | Self::Db(_))
    }
}

/// Retries a store operation through short database outages; `Fenced` and corrupt data are final.
pub async fn with_retries<T, F, Fut>(op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    op.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(8)
            .with_jitter(),
    )
    .when(StoreError::is_transient)
    .notify(
        |e, delay| warn!(error = %e, delay_ms = delay.as_millis() as u64, "database call failed; retrying"),
    )
    .await
}

impl From<serde_json::Error> for StoreError {
    fn from(err: serde_json::Error) -> Self {
        Self::Corrupt(err.to_string())
    }
}

/// Whether the database answers at all (the probe that resumes intake after an outage).
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// The pool for `settings`, after creating the database if it is missing and migrating it.
/// `application_name` identifies this replica to other replicas (see `jobs::claim`).
pub async fn connect(settings: &DbSettings, application_name: &str) -> anyhow::Result<Pool> {
    let mut config = parse_config(settings)?;
    config.application_name(application_name);
    ensure_database(&config).await?;
    migrate(&config).await?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.pool_size as usize)
        .build()
        .context("building the Postgres pool")
}

fn parse_config(settings: &DbSettings) -> anyhow::Result<Config> {
    Config::from_str(settings.url.expose())
        .map_err(|_| anyhow::anyhow!("DATABASE_URL {} is not a valid Postgres URL", settings.url))
}

/// Creates the configured database if it does not exist, through the `postgres` maintenance
/// database.
pub async fn ensure_database(config: &Config) -> anyhow::Result<()> {
    let name = config.get_dbname().unwrap_or("postgres").to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect_one(&admin).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match client.batch_execute(&sql).await {
            Ok(()) => info!(database = %name, "created database"),
            // Another replica created it between our check and our CREATE: Postgres says so
            // with duplicate_database, or, when both CREATEs race, with a unique violation on
            // its catalog.
            Err(e)
                if matches!(
                    e.code(),
                    Some(&SqlState::DUPLICATE_DATABASE | &SqlState::UNIQUE_VIOLATION)
                ) => {}
            Err(e) => return Err(e).context("creating the database"),
        }
    }
    Ok(())
}

/// Applies migrations/ under an advisory lock, so replicas starting together take turns.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let mut client = connect_one(config).await?;
    client.batch_execute("SELECT pg_advisory_lock(7291001)").await?;
    let report = migrations::runner().run_async(&mut client).await;
    client.batch_execute("SELECT pg_advisory_unlock(7291001)").await?;
    let report = report.context("applying migrations")?;
    for m in report.applied_migrations() {
        info!(migration = %m, "applied migration");
    }
    Ok(())
}

async fn connect_one(config: &Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = config.connect(NoTls).await.with_context(|| {
        format!(
            "connecting to Postgres at {}:{} (is it running? `pg_ctlcluster 15 main start` or `docker compose up -d postgres`)",
            config.get_hosts().first().map_or_else(|| "?".into(), |h| format!("{h:?}")),
            config.get_ports().first().copied().unwrap_or(5432)
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "maintenance connection closed");
        }
    });
    Ok(client)
}

/// Migrates without starting a worker (the `migrate` subcommand).
pub async fn migrate_only(settings: &DbSettings) -> anyhow::Result<()> {
    let config = parse_config(settings)?;
    ensure_database(&config).await?;
    migrate(&config).await
}
