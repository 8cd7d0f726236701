//! Read-only views of jobs for operators (`roadmap-worker status`): one job with its batches'
//! totals, or the jobs running or failed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::StoreError;

/// One job as the database knows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job_id: Uuid,
    pub user_id: String,
    pub status: String,
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
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub roadmap_id: Option<Uuid>,
    /// The stored roadmap, when asked for and completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roadmap: Option<Value>,
}

const COLUMNS: &str = "j.job_id, j.user_id, j.status, j.batches_done, j.batches_total,
    coalesce(b.fallback, 0), coalesce(b.calls, 0) + coalesce((j.plan->'outline'->'usage'->>'llm_calls')::bigint, 0),
    coalesce(b.input, 0) + coalesce((j.plan->'outline'->'usage'->>'input_tokens')::bigint, 0),
    coalesce(b.output, 0) + coalesce((j.plan->'outline'->'usage'->>'output_tokens')::bigint, 0),
    coalesce(b.cached, 0) + coalesce((j.plan->'outline'->'usage'->>'cached_input_tokens')::bigint, 0),
    (coalesce(b.cost, 0) / 1e9)::float8 + coalesce((j.plan->'outline'->'usage'->>'cost')::float8, 0),
    j.owner, j.lease_until, j.claims, j.abandoned, j.failure_reason, j.created_at, j.updated_at,
    j.completed_at, j.roadmap_id, b.last_problem";

const FROM: &str = "FROM jobs j LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE fallback_weeks > 0) AS fallback, sum(llm_calls)::bigint AS calls,
               sum(input_tokens)::bigint AS input, sum(output_tokens)::bigint AS output,
               sum(cached_input_tokens)::bigint AS cached, sum(cost_nanos)::numeric AS cost,
               (array_agg('batch ' || batch_index || ': ' || outcome ORDER BY batch_index DESC)
                    FILTER (WHERE outcome <> 'ok'))[1] AS last_problem
        FROM batches WHERE job_id = j.job_id) b ON true";

fn row_to_status(row: &tokio_postgres::Row) -> JobStatus {
    JobStatus {
        job_id: row.get(0),
        user_id: row.get(1),
        status: row.get(2),
        batches_done: row.get(3),
        batches_total: row.get(4),
        fallback_batches: row.get(5),
        llm_calls: row.get(6),
        input_tokens: row.get(7),
        output_tokens: row.get(8),
        cached_input_tokens: row.get(9),
        cost: row.get(10),
        owner: row.get(11),
        lease_until: row.get(12),
        claims: row.get(13),
        abandoned: row.get(14),
        failure_reason: row.get(15),
        created_at: row.get(16),
        updated_at: row.get(17),
        completed_at: row.get(18),
        roadmap_id: row.get(19),
        last_problem: row.get(20),
        roadmap: None,
    }
}

/// One job, with its roadmap if `with_roadmap` and it is completed; `None` if unknown.
pub async fn job(
    client: &tokio_postgres::Client,
    job_id: Uuid,
    with_roadmap: bool,
) -> Result<Option<JobStatus>, StoreError> {
    let sql = format!("SELECT {COLUMNS} {FROM} WHERE j.job_id = $1");
    let Some(row) = client.query_opt(&sql, &[&job_id]).await? else {
        return Ok(None);
    };
    let mut status = row_to_status(&row);
    if with_roadmap && status.roadmap_id.is_some() {
        let roadmap = client
            .query_opt("SELECT roadmap::text FROM roadmaps WHERE job_id = $1", &[&job_id])
            .await?;
        if let Some(row) = roadmap {
            status.roadmap = Some(serde_json::from_str(row.get::<_, &str>(0))?);
        }
    }
    Ok(Some(status))
}

/// Jobs in `status` (`running` or `failed`) updated within `since_secs` (all without it),
/// newest first, at most `limit`.
pub async fn list(
    client: &tokio_postgres::Client,
    status: &str,
    since_secs: Option<f64>,
    limit: i64,
) -> Result<Vec<JobStatus>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} {FROM}
         WHERE j.status = $1 AND ($2::float8 IS NULL OR j.updated_at >= now() - make_interval(secs => $2))
         ORDER BY j.updated_at DESC LIMIT $3"
    );
    let rows = client.query(&sql, &[&status, &since_secs, &limit]).await?;
    Ok(rows.iter().map(row_to_status).collect())
}
