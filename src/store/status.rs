//! Read-only views of jobs for operators (`roadmap-worker status`): one job with its batches'
//! totals (kept on the job's row once a completion folded its batches away), or the jobs running
//! or failed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{StoreError, jobs::JobState};

/// One job as the database knows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job_id: Uuid,
    /// `None` for a refused message that named no user.
    pub user_id: Option<String>,
    pub status: JobState,
    pub batches_done: i32,
    pub batches_total: i32,
    pub fallback_batches: i64,
    pub llm_calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    /// In the currency of `LLM_PRICE_*`, as stored per batch.
    pub cost: f64,
    pub owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub claims: i32,
    pub abandoned: i32,
    pub failure_reason: Option<String>,
    /// The latest batch that needed more than one clean call (`batch 3: fallback`), if any:
    /// the last trouble the job had with the provider.
    pub last_problem: Option<String>,
    /// Content problems of the job's batches by kind (`{"repeated_tasks": 1, ...}`), and the
    /// batches re-asked for them; `None` for jobs folded by a version without the checks.
    pub quality_problems: Option<Value>,
    pub quality_reasked: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// A running job with no owner waits in its row until then (its user's turn, a provider
    /// fault), or is queued again when it is in the past.
    pub not_before: Option<DateTime<Utc>>,
    /// Turns the job has waited for its user (`USER_MAX_IN_FLIGHT`) since it was last claimed.
    pub waits: i32,
    pub roadmap_id: Option<Uuid>,
    /// The stored roadmap, when asked for and completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roadmap: Option<Value>,
}

// The batches' totals come from `job_batch_totals` (V14) over a job's batches, or, once a
// completed job's batches were folded away, from what that function stored at its completion.
const COLUMNS: &str = "j.job_id, j.user_id, j.status, j.batches_done, j.batches_total,
    (t.totals->>'fallback_batches')::bigint AS fallback_batches,
    (t.totals->>'llm_calls')::bigint + coalesce((j.plan->'outline'->'usage'->>'llm_calls')::bigint, 0) AS llm_calls,
    (t.totals->>'input_tokens')::bigint + coalesce((j.plan->'outline'->'usage'->>'input_tokens')::bigint, 0)
        AS input_tokens,
    (t.totals->>'output_tokens')::bigint + coalesce((j.plan->'outline'->'usage'->>'output_tokens')::bigint, 0)
        AS output_tokens,
    (t.totals->>'cached_input_tokens')::bigint
        + coalesce((j.plan->'outline'->'usage'->>'cached_input_tokens')::bigint, 0) AS cached_input_tokens,
    ((t.totals->>'cost_nanos')::numeric / 1e9)::float8 + coalesce((j.plan->'outline'->'usage'->>'cost')::float8, 0)
        AS cost,
    j.owner, j.lease_until, j.claims, j.abandoned, j.failure_reason, j.created_at, j.updated_at,
    j.completed_at, j.not_before, j.waits, j.roadmap_id, t.totals->>'last_problem' AS last_problem,
    t.totals->'quality_problems' AS quality_problems, (t.totals->>'quality_reasked')::bigint AS quality_reasked";

const FROM: &str = "FROM jobs j
    CROSS JOIN LATERAL (SELECT coalesce(j.batch_totals, job_batch_totals(j.job_id)) AS totals) t";

fn row_to_status(row: &tokio_postgres::Row) -> Result<JobStatus, StoreError> {
    Ok(JobStatus {
        job_id: row.get("job_id"),
        user_id: row.get("user_id"),
        status: JobState::parse(row.get("status"))?,
        batches_done: row.get("batches_done"),
        batches_total: row.get("batches_total"),
        fallback_batches: row.get("fallback_batches"),
        llm_calls: row.get("llm_calls"),
        input_tokens: row.get("input_tokens"),
        output_tokens: row.get("output_tokens"),
        cached_input_tokens: row.get("cached_input_tokens"),
        cost: row.get("cost"),
        owner: row.get("owner"),
        lease_until: row.get("lease_until"),
        claims: row.get("claims"),
        abandoned: row.get("abandoned"),
        failure_reason: row.get("failure_reason"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        completed_at: row.get("completed_at"),
        not_before: row.get("not_before"),
        waits: row.get("waits"),
        roadmap_id: row.get("roadmap_id"),
        last_problem: row.get("last_problem"),
        quality_problems: row.get("quality_problems"),
        quality_reasked: row.get("quality_reasked"),
        roadmap: None,
    })
}

/// One job, with its roadmap if `with_roadmap` and it is completed; `None` if unknown.
pub async fn job(
    client: &impl tokio_postgres::GenericClient,
    job_id: Uuid,
    with_roadmap: bool,
) -> Result<Option<JobStatus>, StoreError> {
    let sql = format!("SELECT {COLUMNS} {FROM} WHERE j.job_id = $1");
    let Some(row) = client.query_opt(&sql, &[&job_id]).await? else {
        return Ok(None);
    };
    let mut status = row_to_status(&row)?;
    if with_roadmap && status.roadmap_id.is_some() {
        let roadmap = client
            .query_opt(
                "SELECT roadmap::text AS roadmap FROM roadmaps WHERE job_id = $1",
                &[&job_id],
            )
            .await?;
        if let Some(row) = roadmap {
            status.roadmap = Some(serde_json::from_str(row.get::<_, &str>("roadmap"))?);
        }
    }
    Ok(Some(status))
}

/// Jobs in `status` updated within `since_secs` (all without it), newest first, at most `limit`.
pub async fn list(
    client: &tokio_postgres::Client,
    status: JobState,
    since_secs: Option<f64>,
    limit: i64,
) -> Result<Vec<JobStatus>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} {FROM}
         WHERE j.status = $1 AND ($2::float8 IS NULL OR j.updated_at >= now() - make_interval(secs => $2))
         ORDER BY j.updated_at DESC LIMIT $3"
    );
    let rows = client
        .query(&sql, &[&status.as_str(), &since_secs, &limit])
        .await?;
    rows.iter().map(row_to_status).collect()
}
