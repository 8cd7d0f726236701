//! Checkpoints: each finished batch written with the job's progress, fenced by the lease token.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::StoreError;
use crate::domain::{
    BatchResult, Week,
    event::{PROGRESS, Progress, Usage},
};

/// A checkpoint as read back from the database.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub index: u32,
    pub weeks: Vec<Week>,
    pub fallback_weeks: u32,
    pub usage: Usage,
}

pub async fn load(client: &impl GenericClient, job_id: Uuid) -> Result<Vec<StoredBatch>, StoreError> {
    let rows = client
        .query(
            "SELECT batch_index, weeks, fallback_weeks, llm_calls, input_tokens, output_tokens,
                    cached_input_tokens
             FROM batches WHERE job_id = $1 ORDER BY batch_index",
            &[&job_id],
        )
        .await?;
    rows.into_iter()
        .map(|row| {
            Ok(StoredBatch {
                index: row.get::<_, i32>(0) as u32,
                weeks: row.get::<_, Json<Vec<Week>>>(1).0,
                fallback_weeks: row.get::<_, i32>(2) as u32,
                usage: Usage {
                    llm_calls: row.get::<_, i32>(3) as u32,
                    input_tokens: row.get::<_, i64>(4) as u64,
                    output_tokens: row.get::<_, i64>(5) as u64,
                    cached_input_tokens: row.get::<_, i64>(6) as u64,
                },
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
}

/// Stores batch `index` and the job's progress in one transaction, with a `roadmap.progress`
/// event, its outbox row leased for `express` when given.
pub async fn checkpoint(
    pool: &Pool,
    job_id: Uuid,
    token: i64,
    index: u32,
    batches_total: u32,
    batch: &BatchResult,
    express: Option<Duration>,
) -> Result<Checkpoint, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Fencing first: this locks the job row, so a takeover waits for us or we see its token.
    let fenced = tx
        .execute(
            "UPDATE jobs SET updated_at = now() WHERE job_id = $1 AND fencing_token = $2 AND status = 'running'",
            &[&job_id, &token],
        )
        .await?;
    if fenced != 1 {
        return Err(StoreError::Fenced);
    }
    let (first, last) = (
        batch.weeks.first().map_or(0, |w| w.number as i32),
        batch.weeks.last().map_or(0, |w| w.number as i32),
    );
    let inserted = tx
        .execute(
            "INSERT INTO batches (job_id, batch_index, first_week, last_week, weeks, outcome, fallback_weeks,
                                  llm_calls, input_tokens, output_tokens, fencing_token, cached_input_tokens)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (job_id, batch_index) DO NOTHING",
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
            ],
        )
        .await?;
    let done: i64 = tx
        .query_one(
            "WITH c AS (SELECT count(*) AS n FROM batches WHERE job_id = $1)
             UPDATE jobs SET batches_done = (SELECT n FROM c) WHERE job_id = $1 RETURNING (SELECT n FROM c)",
            &[&job_id],
        )
        .await?
        .get(0);
    let mut event = Progress::new(job_id, done as u32, batches_total);
    // One progress event per batch, whatever happens to the delivery.
    event.event_id = Uuid::new_v5(&job_id, format!("progress:{index}").as_bytes());
    let queued =
        super::outbox::insert_leased(&tx, event.event_id, Some(job_id), PROGRESS, &event, express).await?;
    tx.commit().await?;
    Ok(Checkpoint {
        fresh: inserted == 1,
        progress: queued.then_some(event),
    })
}
