//! The `dead_letters` table: messages the worker refused or gave up on, each under a stable id
//! until an operator replays or purges it (`roadmap-worker dlq`). Reading changes nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
// tokio-postgres's trait, not deadpool's: the `dlq` command works on a plain connection.
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::StoreError;

/// A dead letter to file.
#[derive(Debug, Clone)]
pub struct NewDeadLetter<'a> {
    /// The letter's identity: a second insert with it files nothing.
    pub letter_id: Uuid,
    pub job_id: Option<Uuid>,
    pub reason: &'a str,
    pub message: &'a str,
    pub routing_key: Option<&'a str>,
    /// The message's AMQP properties (`amqp::properties::to_json`).
    pub properties: &'a Value,
    pub body: &'a [u8],
    /// When it was dead-lettered, for a broker copy moved in later; now when `None`.
    pub created_at: Option<DateTime<Utc>>,
}

/// A stored dead letter, whole.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub letter_id: Uuid,
    pub job_id: Option<Uuid>,
    pub reason: String,
    pub message: String,
    pub routing_key: Option<String>,
    pub properties: Value,
    /// Bytes, not text: the command chooses how to print them.
    #[serde(skip)]
    pub body: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

/// A dead letter as `dlq list` shows it: without body and properties, with where its job stands
/// in `jobs` (whether a replay would run it or meet its outcome).
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub id: i64,
    pub letter_id: Uuid,
    pub job_id: Option<Uuid>,
    pub reason: String,
    pub message: String,
    pub bytes: i32,
    pub created_at: DateTime<Utc>,
    /// `running`, `completed` or `failed`; `None` when the job has no row.
    pub job_status: Option<String>,
    pub job_failure_reason: Option<String>,
}

impl Listed {
    /// Whether the job already has its one outcome, which a replay cannot change.
    pub fn job_has_ended(&self) -> bool {
        matches!(self.job_status.as_deref(), Some("completed" | "failed"))
    }
}

/// Which dead letters: every condition given must hold; none given selects all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub ids: Vec<i64>,
    pub reason: Option<String>,
    pub job_id: Option<Uuid>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.reason.is_none() && self.job_id.is_none()
    }
}

/// The filter as a WHERE clause over `d` with parameters $1 (ids), $2 (reason), $3 (job).
const WHERE: &str = "(cardinality($1::bigint[]) = 0 OR d.id = ANY($1)) \
     AND ($2::text IS NULL OR d.reason = $2) \
     AND ($3::uuid IS NULL OR d.job_id = $3)";

const COLUMNS: &str =
    "d.id, d.letter_id, d.job_id, d.reason, d.message, d.routing_key, d.properties, d.body, d.created_at";

/// Files a dead letter; `false` when one with its `letter_id` is filed already.
pub async fn insert(client: &impl GenericClient, letter: &NewDeadLetter<'_>) -> Result<bool, StoreError> {
    let inserted = client
        .execute(
            "INSERT INTO dead_letters
                 (letter_id, job_id, reason, message, routing_key, properties, body, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE($8, now()))
             ON CONFLICT (letter_id) DO NOTHING",
            &[
                &letter.letter_id,
                &letter.job_id,
                &letter.reason,
                &letter.message,
                &letter.routing_key,
                letter.properties,
                &letter.body,
                &letter.created_at,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// The dead letters `filter` selects, oldest id first, at most `limit`.
pub async fn list(
    client: &impl GenericClient,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<Listed>, StoreError> {
    let sql = format!(
        "SELECT d.id, d.letter_id, d.job_id, d.reason, d.message, octet_length(d.body) AS bytes,
                d.created_at, j.status AS job_status, j.failure_reason AS job_failure_reason
         FROM dead_letters d LEFT JOIN jobs j ON j.job_id = d.job_id
         WHERE {WHERE}
         ORDER BY d.id
         LIMIT $4"
    );
    let rows = client
        .query(&sql, &[&filter.ids, &filter.reason, &filter.job_id, &limit])
        .await?;
    rows.iter().map(listed).collect()
}

/// How many dead letters `filter` selects, by reason (all of them, whatever a list's limit).
pub async fn count_by_reason(
    client: &impl GenericClient,
    filter: &Filter,
) -> Result<Vec<(String, i64)>, StoreError> {
    let sql = format!(
        "SELECT d.reason, count(*) AS n FROM dead_letters d WHERE {WHERE}
         GROUP BY d.reason ORDER BY d.reason"
    );
    let rows = client
        .query(&sql, &[&filter.ids, &filter.reason, &filter.job_id])
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("reason")?, row.try_get("n")?)))
        .collect()
}

/// One dead letter, whole.
pub async fn get(client: &impl GenericClient, id: i64) -> Result<Option<DeadLetter>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters d WHERE d.id = $1");
    client
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(whole)
        .transpose()
}

/// Deletes the dead letters with these ids and returns them, oldest id first. In a transaction,
/// the rows stay locked until it ends: a replay that publishes before committing cannot send a
/// letter that a concurrent replay or purge has taken.
pub async fn delete(client: &impl GenericClient, ids: &[i64]) -> Result<Vec<DeadLetter>, StoreError> {
    let sql = format!("DELETE FROM dead_letters d WHERE d.id = ANY($1) RETURNING {COLUMNS}");
    let rows = client.query(&sql, &[&ids]).await?;
    let mut deleted = rows.iter().map(whole).collect::<Result<Vec<_>, _>>()?;
    deleted.sort_by_key(|letter| letter.id);
    Ok(deleted)
}

fn whole(row: &Row) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        id: row.try_get("id")?,
        letter_id: row.try_get("letter_id")?,
        job_id: row.try_get("job_id")?,
        reason: row.try_get("reason")?,
        message: row.try_get("message")?,
        routing_key: row.try_get("routing_key")?,
        properties: row.try_get("properties")?,
        body: row.try_get("body")?,
        created_at: row.try_get("created_at")?,
    })
}

fn listed(row: &Row) -> Result<Listed, StoreError> {
    Ok(Listed {
        id: row.try_get("id")?,
        letter_id: row.try_get("letter_id")?,
        job_id: row.try_get("job_id")?,
        reason: row.try_get("reason")?,
        message: row.try_get("message")?,
        bytes: row.try_get("bytes")?,
        created_at: row.try_get("created_at")?,
        job_status: row.try_get("job_status")?,
        job_failure_reason: row.try_get("job_failure_reason")?,
    })
}
