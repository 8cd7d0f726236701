//! What the operator page reads from Postgres: every read bounded by a LIMIT over an index (or
//! a small table), in one read-only transaction with a statement timeout of its own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::{
    domain::quality::BatchQuality,
    store::{self, StoreError, status::JobStatus},
};

/// Rows shown in each list of the overview. More than a screen's worth is not read.
pub const RUNNING_LIMIT: i64 = 100;
pub const NEWEST_LIMIT: i64 = 20;
/// Batches of one job read at most (a 52-week job of 1-week batches has 52).
const BATCH_LIMIT: i64 = 200;

/// Server-side bound of each statement: the page's own deadline abandons the wait, this stops
/// the work, so that a slow page does not keep a pooled connection busy after the answer.
const STATEMENT_TIMEOUT_MS: u32 = 4_000;

/// A running job that some replica holds.
#[derive(Debug, Clone)]
pub struct RunningJob {
    pub job_id: Uuid,
    pub user_id: Option<String>,
    pub target_role: Option<String>,
    pub weeks: Option<String>,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub batches_done: i32,
    pub batches_total: i32,
}

/// A job that ended without a roadmap.
#[derive(Debug, Clone)]
pub struct Failure {
    pub job_id: Uuid,
    pub user_id: Option<String>,
    pub reason: Option<String>,
    /// The text of its `roadmap.failed` event, while that event is kept.
    pub message: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct Letter {
    pub id: i64,
    pub job_id: Option<Uuid>,
    pub reason: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

/// One row of `llm_budget`: how far ahead of now each clock of the GCRA stands.
#[derive(Debug, Clone)]
pub struct BudgetRow {
    pub key: String,
    pub tokens_ahead_secs: f64,
    pub requests_ahead_secs: f64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Replica {
    pub owner: String,
    pub started_at: DateTime<Utc>,
    pub beat_at: DateTime<Utc>,
    /// Running jobs it holds now.
    pub jobs: i64,
}

/// Everything the overview shows.
#[derive(Debug, Clone)]
pub struct Overview {
    pub now: DateTime<Utc>,
    pub running: Vec<RunningJob>,
    pub running_count: i64,
    /// Running jobs no replica holds: waiting for their user's turn, for the provider, or
    /// queued for the next free replica.
    pub parked_count: i64,
    /// Of those, the ones with a `not_before` still ahead.
    pub parked_later: i64,
    pub failures_by_reason: Vec<(String, i64)>,
    pub failures: Vec<Failure>,
    pub letters_by_reason: Vec<(String, i64)>,
    pub letters: Vec<Letter>,
    pub budget: Vec<BudgetRow>,
    pub replicas: Vec<Replica>,
}

/// One written checkpoint.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub index: i32,
    pub first_week: i32,
    pub last_week: i32,
    pub outcome: String,
    pub fallback_weeks: i32,
    pub llm_calls: i32,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub cost: f64,
    pub created_at: DateTime<Utc>,
    /// The content checks' findings on the weeks as stored, as the model was told them.
    pub problems: Vec<String>,
    /// The batch was asked again for content problems.
    pub content_reasked: bool,
}

/// A batch row's content findings; none when clean (stored as NULL) or unreadable.
fn quality(row: &tokio_postgres::Row) -> BatchQuality {
    row.get::<_, Option<tokio_postgres::types::Json<BatchQuality>>>("quality")
        .map(|q| q.0)
        .unwrap_or_default()
}

/// Everything the job page shows.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub now: DateTime<Utc>,
    pub status: JobStatus,
    /// The request as stored (the first one under this job_id).
    pub request: Value,
    pub plan: Value,
    pub batches: Vec<BatchRow>,
    pub failure_message: Option<String>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
}

/// Opens a read-only transaction whose statements stop after [`STATEMENT_TIMEOUT_MS`].
async fn read_only(client: &mut deadpool_postgres::Object) -> Result<Transaction<'_>, StoreError> {
    // tokio-postgres's own transaction, which `store::status` takes as a `GenericClient`.
    let client: &mut tokio_postgres::Client = client;
    let tx = client.build_transaction().read_only(true).start().await?;
    // SET LOCAL ends with the transaction: the pooled session keeps the worker's own timeout.
    tx.batch_execute(&format!("SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
        .await?;
    Ok(tx)
}

/// The overview's data, in one transaction (one consistent picture).
pub async fn overview(pool: &Pool) -> Result<Overview, StoreError> {
    let mut client = pool.get().await?;
    let tx = read_only(&mut client).await?;
    let now: DateTime<Utc> = tx.query_one("SELECT now()", &[]).await?.get(0);
    // Running jobs are bounded by the fleet's slots and found through the partial index on
    // running jobs (jobs_running_lease).
    let running = tx
        .query(
            "SELECT job_id, user_id, request->>'target_role' AS target_role,
                    request->>'duration_weeks' AS weeks, owner, created_at, batches_done,
                    batches_total
             FROM jobs WHERE status = 'running' AND owner IS NOT NULL
             ORDER BY created_at LIMIT $1",
            &[&RUNNING_LIMIT],
        )
        .await?
        .iter()
        .map(|r| RunningJob {
            job_id: r.get("job_id"),
            user_id: r.get("user_id"),
            target_role: r.get("target_role"),
            weeks: r.get("weeks"),
            owner: r.get("owner"),
            created_at: r.get("created_at"),
            batches_done: r.get("batches_done"),
            batches_total: r.get("batches_total"),
        })
        .collect();
    let counts = tx
        .query_one(
            "SELECT count(*) FILTER (WHERE owner IS NOT NULL) AS running,
                    count(*) FILTER (WHERE owner IS NULL) AS parked,
                    count(*) FILTER (WHERE owner IS NULL AND not_before > now()) AS later
             FROM jobs WHERE status = 'running'",
            &[],
        )
        .await?;
    // Ended jobs of the last day through jobs_finished_at (completed_at, status <> 'running'),
    // whose predicate is repeated so that the planner sees the index applies.
    let failures_by_reason = pairs(
        &tx,
        "SELECT coalesce(failure_reason, '(none)'), count(*) FROM jobs
         WHERE status <> 'running' AND status = 'failed' AND completed_at >= now() - interval '24 hours'
         GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 50",
    )
    .await?;
    // The message lives in the job's `roadmap.failed` event (outbox_retained_by_job).
    let failures = tx
        .query(
            "SELECT j.job_id, j.user_id, j.failure_reason, j.completed_at, f.message
             FROM jobs j
             LEFT JOIN LATERAL (
                 SELECT o.payload->>'message' AS message FROM outbox o
                 WHERE o.job_id = j.job_id
                   AND o.routing_key IN ('roadmap.completed', 'roadmap.failed')
                   AND o.routing_key = 'roadmap.failed'
                 ORDER BY o.id DESC LIMIT 1) f ON true
             WHERE j.status <> 'running' AND j.status = 'failed'
               AND j.completed_at >= now() - interval '24 hours'
             ORDER BY j.completed_at DESC LIMIT $1",
            &[&NEWEST_LIMIT],
        )
        .await?
        .iter()
        .map(|r| Failure {
            job_id: r.get("job_id"),
            user_id: r.get("user_id"),
            reason: r.get("failure_reason"),
            message: r.get("message"),
            at: r.get("completed_at"),
        })
        .collect();
    // Dead letters stay until an operator replays or purges them: a short table, counted
    // through its reason index.
    let letters_by_reason = pairs(
        &tx,
        "SELECT reason, count(*) FROM dead_letters GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 50",
    )
    .await?;
    let letters = tx
        .query(
            "SELECT id, job_id, reason, left(message, 500) AS message, created_at
             FROM dead_letters ORDER BY created_at DESC LIMIT $1",
            &[&NEWEST_LIMIT],
        )
        .await?
        .iter()
        .map(|r| Letter {
            id: r.get("id"),
            job_id: r.get("job_id"),
            reason: r.get("reason"),
            message: r.get("message"),
            created_at: r.get("created_at"),
        })
        .collect();
    let budget = tx
        .query(
            "SELECT budget_key, extract(epoch FROM tokens_tat - now())::float8 AS tokens_ahead,
                    extract(epoch FROM requests_tat - now())::float8 AS requests_ahead, updated_at
             FROM llm_budget ORDER BY budget_key LIMIT 20",
            &[],
        )
        .await?
        .iter()
        .map(|r| BudgetRow {
            key: r.get("budget_key"),
            tokens_ahead_secs: r.get::<_, f64>("tokens_ahead").max(0.0),
            requests_ahead_secs: r.get::<_, f64>("requests_ahead").max(0.0),
            updated_at: r.get("updated_at"),
        })
        .collect();
    // Rows of replicas gone for a day are pruned by the replicas still running.
    let replicas = tx
        .query(
            "SELECT r.owner, r.started_at, r.beat_at,
                    (SELECT count(*) FROM jobs j WHERE j.status = 'running' AND j.owner = r.owner) AS jobs
             FROM replicas r ORDER BY r.beat_at DESC LIMIT 50",
            &[],
        )
        .await?
        .iter()
        .map(|r| Replica {
            owner: r.get("owner"),
            started_at: r.get("started_at"),
            beat_at: r.get("beat_at"),
            jobs: r.get("jobs"),
        })
        .collect();
    tx.commit().await?;
    Ok(Overview {
        now,
        running,
        running_count: counts.get("running"),
        parked_count: counts.get("parked"),
        parked_later: counts.get("later"),
        failures_by_reason,
        failures,
        letters_by_reason,
        letters,
        budget,
        replicas,
    })
}

/// `(text, count)` rows of a grouping query.
async fn pairs(tx: &Transaction<'_>, sql: &str) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(tx
        .query(sql, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// One job's page, `None` if no job has this id; all by the job's primary key.
pub async fn job(pool: &Pool, job_id: Uuid) -> Result<Option<JobPage>, StoreError> {
    let mut client = pool.get().await?;
    let tx = read_only(&mut client).await?;
    let Some(status) = store::status::job(&tx, job_id, false).await? else {
        return Ok(None);
    };
    let row = tx
        .query_one(
            "SELECT now() AS now, request, plan, cancel_requested_at FROM jobs WHERE job_id = $1",
            &[&job_id],
        )
        .await?;
    let batches = tx
        .query(
            "SELECT batch_index, first_week, last_week, outcome, fallback_weeks, llm_calls,
                    input_tokens, output_tokens, cached_input_tokens,
                    (cost_nanos::numeric / 1e9)::float8 AS cost, created_at, quality
             FROM batches WHERE job_id = $1 ORDER BY batch_index LIMIT $2",
            &[&job_id, &BATCH_LIMIT],
        )
        .await?
        .iter()
        .map(|r| BatchRow {
            index: r.get("batch_index"),
            first_week: r.get("first_week"),
            last_week: r.get("last_week"),
            outcome: r.get("outcome"),
            fallback_weeks: r.get("fallback_weeks"),
            llm_calls: r.get("llm_calls"),
            input_tokens: r.get("input_tokens"),
            output_tokens: r.get("output_tokens"),
            cached_input_tokens: r.get("cached_input_tokens"),
            cost: r.get("cost"),
            created_at: r.get("created_at"),
            problems: quality(r).problems.iter().map(ToString::to_string).collect(),
            content_reasked: quality(r).reasked,
        })
        .collect();
    let failure_message = tx
        .query_opt(
            "SELECT payload->>'message' FROM outbox
             WHERE job_id = $1 AND routing_key IN ('roadmap.completed', 'roadmap.failed')
               AND routing_key = 'roadmap.failed'
             ORDER BY id DESC LIMIT 1",
            &[&job_id],
        )
        .await?
        .and_then(|r| r.get(0));
    tx.commit().await?;
    Ok(Some(JobPage {
        now: row.get("now"),
        status,
        request: row.get("request"),
        plan: row.get("plan"),
        batches,
        failure_message,
        cancel_requested_at: row.get("cancel_requested_at"),
    }))
}

/// `call` within `deadline`, the wait for a pooled connection included: a database that is down
/// or silent gives an error page at once instead of a hung browser tab.
pub async fn within<T>(
    deadline: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or(Err(StoreError::TimedOut(deadline)))
}
