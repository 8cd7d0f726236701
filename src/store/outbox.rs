//! The transactional outbox: events written with the state they announce, read by the relay.

use deadpool_postgres::{GenericClient, Transaction};
use serde::Serialize;
use uuid::Uuid;

use super::StoreError;

/// Queues an event inside the caller's transaction; a second insert of the same event id is a
/// no-op, which keeps event ids unique per occurrence even when work is repeated.
pub async fn insert<T: Serialize>(
    client: &impl GenericClient,
    event_id: Uuid,
    job_id: Option<Uuid>,
    routing_key: &str,
    payload: &T,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO outbox (event_id, job_id, routing_key, payload) VALUES ($1, $2, $3, $4)
             ON CONFLICT (event_id) DO NOTHING",
            &[&event_id, &job_id, &routing_key, &serde_json::to_value(payload)?],
        )
        .await?;
    Ok(())
}

/// An event waiting to be published.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    pub payload: serde_json::Value,
}

/// Locks up to `limit` unsent events, oldest first; other replicas' relays skip them. A
/// completion event is stored without its roadmap (the roadmaps table holds it once) and gets it
/// back here.
pub async fn lock_unsent(tx: &Transaction<'_>, limit: i64) -> Result<Vec<Pending>, StoreError> {
    let rows = tx
        .query(
            "SELECT o.id, o.event_id, o.routing_key, o.payload, r.roadmap
             FROM outbox o
             LEFT JOIN roadmaps r
               ON o.routing_key = 'roadmap.completed' AND r.roadmap_id = (o.payload->>'roadmap_id')::uuid
             WHERE o.sent_at IS NULL ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
            &[&limit],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut payload: serde_json::Value = r.get(3);
            let roadmap: Option<serde_json::Value> = r.get(4);
            if let (Some(roadmap), Some(obj)) = (roadmap, payload.as_object_mut()) {
                obj.insert("roadmap".into(), roadmap);
            }
            Pending {
                id: r.get(0),
                event_id: r.get(1),
                routing_key: r.get(2),
                payload,
            }
        })
        .collect())
}

pub async fn mark_sent(tx: &Transaction<'_>, ids: &[i64]) -> Result<(), StoreError> {
    tx.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)", &[&ids])
        .await?;
    Ok(())
}

/// Deletes events confirmed more than `keep` ago, a bounded number per call so that a large
/// backlog of old rows is trimmed in small transactions. Returns how many went.
pub async fn prune_sent(client: &impl GenericClient, keep: std::time::Duration) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "DELETE FROM outbox WHERE id IN (
                SELECT id FROM outbox WHERE sent_at < now() - make_interval(secs => $1::float8)
                ORDER BY id LIMIT 1000)",
            &[&keep.as_secs_f64()],
        )
        .await?)
}

/// Unsent events and the age in seconds of the oldest, for the backlog gauges.
pub async fn backlog(client: &impl GenericClient) -> Result<(i64, f64), StoreError> {
    let row = client
        .query_one(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
             FROM outbox WHERE sent_at IS NULL",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
