//! Checkpoints: each finished batch written with the job's progress, fenced by the lease token.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::StoreError;
use crate::domain::{
    BatchResult, Week,
    event::{EventKind, Progress, Usage},
    quality::BatchQuality,
};

/// A checkpoint as read back from the database.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub index: u32,
    pub weeks: Vec<Week>,
    pub fallback_weeks: u32,
    pub usage: Usage,
    pub quality: BatchQuality,
}

pub async fn load(client: &impl GenericClient, job_id: Uuid) -> Result<Vec<StoredBatch>, StoreError> {
    let rows = client
        .query(
            "SELECT batch_index, weeks, fallback_weeks, llm_calls, input_tokens, output_tokens,
                    cached_input_tokens, cost_nanos, quality
             FROM batches WHERE job_id = $1 ORDER BY batch_index",
            &[&job_id],
        )
        .await?;
    rows.into_iter()
        .map(|row| {
            Ok(StoredBatch {
                index: row.get::<_, i32>("batch_index") as u32,
                weeks: row.get::<_, Json<Vec<Week>>>("weeks").0,
                fallback_weeks: row.get::<_, i32>("fallback_weeks") as u32,
                usage: Usage {
                    llm_calls: row.get::<_, i32>("llm_calls") as u32,
                    input_tokens: row.get::<_, i64>("input_tokens") as u64,
                    output_tokens: row.get::<_, i64>("output_tokens") as u64,
                    cached_input_tokens: row.get::<_, i64>("cached_input_tokens") as u64,
                    cost_nanos: row.get::<_, i64>("cost_nanos") as u64,
                },
                quality: row
                    .get::<_, Option<Json<BatchQuality>>>("quality")
                    .map(|q| q.0)
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// What a checkpoint stored.
#[derive(Debug)]
pub struct Checkpoint {
    /// `false` if the batch was already stored (it was generated twice).
    pub fresh: bool,
    /// The progress event, if its outbox row was written now (leased to the writer when the
    /// checkpoint was given a lease).
    pub progress: Option<Progress>,
    /// The job's user asked to cancel it: the job stops here.
    pub cancelled: bool,
}

/// Where a checkpoint stands in its job, for its progress event: the batch, the job's batch
/// count, and the job's tokens so far, this batch's included.
#[derive(Debug, Clone, Copy, Default)]
pub struct Position {
    pub index: u32,
    pub total: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Stores batch `index` and the job's progress with a `roadmap.progress` event, its outbox row
/// leased for `express` when given. One statement, so one round trip and its own transaction:
/// the job row is locked first (`FOR UPDATE`), so a takeover waits for it or it sees the
/// takeover's token and writes nothing; checkpoints of one job's parallel phases take turns on
/// that lock and each counts the other's batch.
pub(super) async fn checkpoint(
    pool: &Pool,
    job_id: Uuid,
    token: i64,
    at: Position,
    batch: &BatchResult,
    express: Option<Duration>,
) -> Result<Checkpoint, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "WITH fence AS (
                SELECT batches_done, cancel_requested_at IS NOT NULL AS cancelled FROM jobs
                WHERE job_id = $1 AND fencing_token = $11 AND status = 'running' FOR UPDATE),
             ins AS (
                INSERT INTO batches (job_id, batch_index, first_week, last_week, weeks, outcome, fallback_weeks,
                                     llm_calls, input_tokens, output_tokens, fencing_token, cached_input_tokens,
                                     cost_nanos, quality)
                SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $17, $21 FROM fence
                ON CONFLICT (job_id, batch_index) DO NOTHING
                RETURNING 1),
             upd AS (
                UPDATE jobs SET batches_done = (SELECT batches_done FROM fence) + (SELECT count(*) FROM ins),
                                updated_at = now()
                WHERE job_id = $1 AND EXISTS (SELECT 1 FROM fence)
                RETURNING batches_done),
             ob AS (
                INSERT INTO outbox (event_id, job_id, routing_key, payload, relay_until, attempts, traceparent)
                SELECT $13, $1, $14,
                       jsonb_build_object('event', $14::text, 'version', 1, 'event_id', $13::uuid,
                                          'job_id', $1::uuid, 'batches_done', upd.batches_done,
                                          'batches_total', $15::integer, 'input_tokens', $18::bigint,
                                          'output_tokens', $19::bigint),
                       now() + make_interval(secs => $16), CASE WHEN $16 IS NULL THEN 0 ELSE 1 END, $20
                FROM upd
                ON CONFLICT (event_id) DO NOTHING
                RETURNING 1)
             SELECT EXISTS (SELECT 1 FROM fence) AS owned, (SELECT count(*) FROM ins) AS inserted,
                    (SELECT batches_done FROM upd) AS batches_done, (SELECT count(*) FROM ob) AS queued,
                    coalesce((SELECT cancelled FROM fence), false) AS cancelled",
        )
        .await?;
    let (first, last) = (
        batch.weeks.first().map_or(0, |w| w.number as i32),
        batch.weeks.last().map_or(0, |w| w.number as i32),
    );
    // One progress event per batch, whatever happens to the delivery.
    let (index, batches_total) = (at.index, at.total);
    let event_id = Uuid::new_v5(&job_id, format!("progress:{index}").as_bytes());
    let lease_secs = express.map(|l| l.as_secs_f64());
    let row = client
        .query_one(
            &statement,
            &[
                &job_id,
                &(index as i32),
                &first,
                &last,
                &Json(&batch.weeks),
                &batch.outcome.as_str(),
                &(batch.fallback_weeks() as i32),
                &(batch.usage.llm_calls as i32),
                // Token counts are the provider's word: saturate, never wrap negative.
                &i64::try_from(batch.usage.input_tokens).unwrap_or(i64::MAX),
                &i64::try_from(batch.usage.output_tokens).unwrap_or(i64::MAX),
                &token,
                &i64::try_from(batch.usage.cached_input_tokens).unwrap_or(i64::MAX),
                &event_id,
                &EventKind::Progress.routing_key(),
                &(batches_total as i32),
                &lease_secs,
                &i64::try_from(batch.usage.cost_nanos).unwrap_or(i64::MAX),
                &i64::try_from(at.input_tokens).unwrap_or(i64::MAX),
                &i64::try_from(at.output_tokens).unwrap_or(i64::MAX),
                &crate::telemetry::traceparent(),
                // A clean batch stores nothing: most batches are clean.
                &(!batch.quality.is_clean()).then_some(Json(&batch.quality)),
            ],
        )
        .await?;
    if !row.get::<_, bool>("owned") {
        return Err(StoreError::Fenced);
    }
    let done: i32 = row.get("batches_done");
    let mut event = Progress::new(job_id, done as u32, batches_total);
    event.event_id = event_id;
    (event.input_tokens, event.output_tokens) = (at.input_tokens, at.output_tokens);
    Ok(Checkpoint {
        fresh: row.get::<_, i64>("inserted") == 1,
        progress: (row.get::<_, i64>("queued") == 1).then_some(event),
        cancelled: row.get("cancelled"),
    })
}
