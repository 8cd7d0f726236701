//! Postgres: the pool, database creation, migrations, TLS, and one module per table family.

pub mod batches;
pub mod budget;
pub mod claim;
mod conninfo;
pub mod dead_letters;
pub mod heartbeat;
pub mod jobs;
pub mod lease;
pub mod ledger;
pub mod outbox;
pub mod retention;
pub mod roadmaps;
pub mod session;
pub mod status;
mod tls;

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use backon::Retryable;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Config, error::SqlState};
use tracing::{info, warn};

use self::tls::Tls;
use crate::{config::DbSettings, retry::RetryPolicy};

refinery::embed_migrations!("migrations");

/// Errors from the store. Database and pool errors are transient; `Fenced` means another
/// replica owns the job now and this one must stop writing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database pool: {}", pool_error(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {}", chain(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("the job's lease was taken over by another replica")]
    Fenced,
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The call had no answer within [`CALL_DEADLINE`]: a path that went quiet (a stalled
    /// proxy, a partition the socket has not noticed yet) is an outage like a refused one.
    #[error("the database did not answer within {} s", .0.as_secs())]
    TimedOut(Duration),
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

/// A pool error with the causes of a failed connection (a refused certificate, say), which the
/// pool's own message leaves out.
fn pool_error(err: &deadpool_postgres::PoolError) -> String {
    match err {
        deadpool_postgres::PoolError::Backend(e) => format!("opening a connection: {}", chain(e)),
        other => other.to_string(),
    }
}

impl StoreError {
    /// Connection, timeout and server-availability errors pass with the outage (see
    /// [`session::is_transient`]); a deterministic SQL error, `Fenced` and corrupt data never do.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pool(deadpool_postgres::PoolError::Backend(e)) => session::is_transient(e),
            Self::Pool(_) => true,
            Self::Db(e) => session::is_transient(e),
            Self::TimedOut(_) => true,
            Self::Fenced | Self::Corrupt(_) => false,
        }
    }
}

/// How a store operation rides out a short database outage (a restart, a failover): about 20 s
/// of retries before the caller hands its job back and pauses intake.
pub const RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5)).with_max_retries(8);

/// The longest a store call waits for its answer, the pool's wait for a connection included:
/// past the server's `statement_timeout` (30 s by default), so that a statement the server is
/// still running is not taken for a dead path.
pub const CALL_DEADLINE: Duration = Duration::from_secs(40);

/// How long [`with_retries`] goes on retrying: a call that timed out is not tried eight more
/// times at [`CALL_DEADLINE`] each.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

/// `call` bounded by [`CALL_DEADLINE`]: no answer by then is [`StoreError::TimedOut`], a
/// transient error that the outage handling takes like a refused connection.
pub async fn bounded<T>(call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_DEADLINE, call)
        .await
        .unwrap_or(Err(StoreError::TimedOut(CALL_DEADLINE)))
}

/// Retries a store operation through short database outages ([`RETRY`]), each try
/// [`bounded`], for at most [`RETRY_FOR`]; `Fenced` and corrupt data are final.
pub async fn with_retries<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = tokio::time::Instant::now();
    (|| bounded(op()))
        .retry(RETRY.backoff())
        .when(|e: &StoreError| e.is_transient() && started.elapsed() < RETRY_FOR)
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
/// `application_name` identifies this replica to other replicas (see `claim::Claimant`).
pub async fn connect(settings: &DbSettings, application_name: &str) -> anyhow::Result<Pool> {
    connect_with(settings, application_name, Schema::Migrate).await
}

/// What [`connect_with`] does about the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Creates the database if missing and applies the migrations (each replica in turn).
    Migrate,
    /// Only checks that every migration has been applied (`roadmap-worker migrate` ran as a
    /// deploy step of its own); refuses otherwise.
    Require,
}

/// [`connect`], with the schema migrated or only checked.
pub async fn connect_with(
    settings: &DbSettings,
    application_name: &str,
    schema: Schema,
) -> anyhow::Result<Pool> {
    let (mut config, tls) = tls::parse(settings)?;
    config.application_name(application_name);
    session::apply_defaults(&mut config);
    match schema {
        Schema::Migrate => {
            ensure_database(&config, &tls).await?;
            migrate(&config, &tls).await?;
        }
        Schema::Require => require_current(&config, &tls).await?,
    }
    let manager = Manager::from_config(
        config,
        tls.connector(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.pool_size as usize)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(session::POOL_WAIT))
        .create_timeout(Some(session::POOL_CREATE))
        .recycle_timeout(Some(session::POOL_RECYCLE))
        .build()
        .context("building the Postgres pool")
}

/// One plain connection to the configured database, for the operator's tools (`status`, `dlq`):
/// nothing is created or migrated.
pub async fn connect_readonly(
    settings: &DbSettings,
    application_name: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let (mut config, tls) = tls::parse(settings)?;
    config.application_name(application_name);
    session::apply_defaults(&mut config);
    connect_one(&config, &tls).await
}

/// Creates the configured database if it does not exist, through the `postgres` maintenance
/// database.
async fn ensure_database(config: &Config, tls: &Tls) -> anyhow::Result<()> {
    let name = config.get_dbname().unwrap_or("postgres").to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect_one(&admin, tls).await?;
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

/// Refuses a schema that lacks a migration this worker needs.
async fn require_current(config: &Config, tls: &Tls) -> anyhow::Result<()> {
    let mut client = connect_one(config, tls).await?;
    let runner = migrations::runner();
    let needed = runner
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0);
    // No history table yet reads as nothing applied.
    let applied = runner
        .get_last_applied_migration_async(&mut client)
        .await
        .ok()
        .flatten()
        .map_or(0, |m| m.version());
    if applied < needed {
        anyhow::bail!(
            "the database schema is at V{applied}, this worker needs V{needed}: run `roadmap-worker migrate` \
             first (MIGRATE_ON_START=false leaves migrating to that step)"
        );
    }
    Ok(())
}

/// Migration runs tried before the start fails: a lock held by the running fleet passes.
const MIGRATION_TRIES: u32 = 5;

/// Applies migrations/ under an advisory lock, so replicas starting together take turns.
async fn migrate(config: &Config, tls: &Tls) -> anyhow::Result<()> {
    let mut client = connect_one(config, tls).await?;
    // Waiting for another replica's migrations has no deadline, and a migration may rewrite a
    // large table; but a migration waits at most LOCK_TIMEOUT for a table's lock, so a running
    // fleet never queues long behind it (it is tried again below).
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0; SELECT pg_advisory_lock(7291001)")
        .await?;
    client
        .batch_execute(&format!("SET lock_timeout = '{}'", session::LOCK_TIMEOUT))
        .await?;
    let mut report = migrations::runner().run_async(&mut client).await;
    for attempt in 1..MIGRATION_TRIES {
        let Err(e) = &report else { break };
        warn!(error = %e, attempt, "a migration failed (a table's lock busy?); trying again");
        tokio::time::sleep(Duration::from_secs(2)).await;
        report = migrations::runner().run_async(&mut client).await;
    }
    client.batch_execute("SELECT pg_advisory_unlock(7291001)").await?;
    let report = report.context("applying migrations")?;
    for m in report.applied_migrations() {
        info!(migration = %m, "applied migration");
    }
    Ok(())
}

async fn connect_one(config: &Config, tls: &Tls) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = config
        .connect(tls.connector())
        .await
        .map_err(|e| connect_error(config, tls, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "maintenance connection closed");
        }
    });
    Ok(client)
}

/// Where the connection went and why it failed. Only a socket error gets the "is it running?"
/// hint: a running server that refuses (authentication, no TLS on offer) says why itself.
fn connect_error(config: &Config, tls: &Tls, err: tokio_postgres::Error) -> anyhow::Error {
    let at = format!(
        "connecting to Postgres at {}:{} with sslmode={}",
        config
            .get_hosts()
            .first()
            .map_or_else(|| "?".into(), |h| format!("{h:?}")),
        config.get_ports().first().copied().unwrap_or(5432),
        tls.mode().as_str()
    );
    if let Some(why) = tls.explain(&err) {
        return anyhow::anyhow!("{at}: {why}");
    }
    let socket = std::iter::successors(std::error::Error::source(&err), |e| e.source())
        .any(|e| e.is::<std::io::Error>());
    let hint = if socket {
        " (is it running? `pg_ctlcluster 15 main start` or `docker compose up -d postgres`)"
    } else {
        ""
    };
    anyhow::Error::new(err).context(format!("{at}{hint}"))
}

/// Migrates without starting a worker (the `migrate` subcommand).
pub async fn migrate_only(settings: &DbSettings) -> anyhow::Result<()> {
    let (config, tls) = tls::parse(settings)?;
    ensure_database(&config, &tls).await?;
    migrate(&config, &tls).await
}
