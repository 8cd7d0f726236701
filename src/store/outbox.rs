//! The transactional outbox: events written with the state they announce, read by the relay.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::StoreError;
use crate::domain::event::EventKind;

/// How long the writer of an event holds its row for the express path (publish it from memory
/// right after the commit): the relay sends it only if the writer has not confirmed it by then.
pub const EXPRESS_LEASE: Duration = Duration::from_secs(15);

/// Events waiting for the express path at most; a completion carries its roadmap (up to about
/// 320 KB), so this bounds what a replica holds for a broker that stops confirming.
pub const EXPRESS_CAPACITY: usize = 256;

/// An event committed with its row leased to its writer, to be published from memory at once.
#[derive(Debug)]
pub struct Express {
    pub event_id: Uuid,
    pub kind: EventKind,
    pub body: Vec<u8>,
    pub job_id: Uuid,
    pub user_id: Option<String>,
    /// The job's W3C trace, when traces are exported, for the event's headers.
    pub traceparent: Option<String>,
}

/// Where committed events go to be published from memory; without a receiver every event goes
/// through the relay.
#[derive(Debug, Clone, Default)]
pub struct ExpressLane(Option<tokio::sync::mpsc::Sender<Express>>);

impl ExpressLane {
    pub fn new(sender: tokio::sync::mpsc::Sender<Express>) -> Self {
        Self(Some(sender))
    }

    /// The lease to write an event's row with: the express path's, if there is one.
    pub fn lease(&self) -> Option<Duration> {
        self.0.as_ref().map(|_| EXPRESS_LEASE)
    }

    /// Hands a committed event, whose row was written with [`Self::lease`], to the express path.
    /// Should that fail, its lease runs out and the relay sends it.
    pub fn send<T: Serialize>(
        &self,
        event_id: Uuid,
        kind: EventKind,
        (job_id, user_id): (Uuid, Option<&str>),
        event: &T,
    ) {
        let Some(sender) = &self.0 else { return };
        match serde_json::to_vec(event) {
            Ok(body) => {
                // Full (the broker is slow to confirm): the event is left to the relay once its
                // row's lease runs out, rather than held in memory without bound.
                let _ = sender.try_send(Express {
                    event_id,
                    kind,
                    body,
                    job_id,
                    user_id: user_id.map(str::to_owned),
                    traceparent: crate::telemetry::traceparent(),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, %event_id, "could not serialise an event; the relay sends it")
            }
        }
    }
}

/// How long after an outcome event was sent a copy of its job can have it sent again: a burst
/// of duplicate publishes gets one re-announcement, not one each.
pub const REANNOUNCE_AFTER: Duration = Duration::from_secs(2);

/// Sends an ended job's outcome event (`roadmap.completed` or `roadmap.failed`) again, with its
/// original event id: a backend that lost the result publishes the job again to fetch it.
/// Outcome rows are kept as long as their job (they hold the event without its roadmap, a few
/// hundred bytes); `false` if there is no such event, or it was sent less than
/// [`REANNOUNCE_AFTER`] ago.
pub async fn reannounce_outcome(client: &impl GenericClient, job_id: Uuid) -> Result<bool, StoreError> {
    let updated = client
        .execute(
            "UPDATE outbox SET sent_at = NULL, relay_until = now(), attempts = 0, unrouted = false
             WHERE job_id = $1 AND routing_key IN ($3, $4)
               AND sent_at < now() - make_interval(secs => $2)",
            &[
                &job_id,
                &REANNOUNCE_AFTER.as_secs_f64(),
                &EventKind::Completed.routing_key(),
                &EventKind::Failed.routing_key(),
            ],
        )
        .await?;
    Ok(updated > 0)
}

/// Queues an event inside the caller's transaction; a second insert of the same event id is a
/// no-op, which keeps event ids unique per occurrence even when work is repeated.
pub async fn insert<T: Serialize + std::fmt::Debug + Sync>(
    client: &impl GenericClient,
    event_id: Uuid,
    job_id: Option<Uuid>,
    kind: EventKind,
    payload: &T,
) -> Result<(), StoreError> {
    insert_leased(client, event_id, job_id, kind, payload, None).await?;
    Ok(())
}

/// Like [`insert`], with the row leased to the writer for `lease` when given (the express
/// path). Returns whether the row was inserted.
pub async fn insert_leased<T: Serialize + std::fmt::Debug + Sync>(
    client: &impl GenericClient,
    event_id: Uuid,
    job_id: Option<Uuid>,
    kind: EventKind,
    payload: &T,
    lease: Option<Duration>,
) -> Result<bool, StoreError> {
    let lease_secs = lease.map(|l| l.as_secs_f64());
    let n = client
        .execute(
            "INSERT INTO outbox (event_id, job_id, routing_key, payload, relay_until, attempts)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), CASE WHEN $5 IS NULL THEN 0 ELSE 1 END)
             ON CONFLICT (event_id) DO NOTHING",
            &[&event_id, &job_id, &kind.routing_key(), &Json(payload), &lease_secs],
        )
        .await?;
    Ok(n == 1)
}

/// Queues an event of a running job for its owner only: `Fenced` once the lease's `token` is
/// no longer the job's. Returns whether the row was inserted (a repeated write inserts nothing).
#[allow(clippy::too_many_arguments)]
pub async fn insert_for_owner<T: Serialize + std::fmt::Debug + Sync>(
    client: &impl GenericClient,
    event_id: Uuid,
    job_id: Uuid,
    token: i64,
    kind: EventKind,
    payload: &T,
    lease: Option<Duration>,
) -> Result<bool, StoreError> {
    let lease_secs = lease.map(|l| l.as_secs_f64());
    let row = client
        .query_one(
            "WITH fence AS (
                SELECT 1 FROM jobs WHERE job_id = $2 AND fencing_token = $6 AND status = 'running'),
             ob AS (
                INSERT INTO outbox (event_id, job_id, routing_key, payload, relay_until, attempts, traceparent)
                SELECT $1, $2, $3, $4, now() + make_interval(secs => $5),
                       CASE WHEN $5 IS NULL THEN 0 ELSE 1 END, $7
                FROM fence
                ON CONFLICT (event_id) DO NOTHING
                RETURNING 1)
             SELECT EXISTS (SELECT 1 FROM fence) AS owned, (SELECT count(*) FROM ob) AS queued",
            &[
                &event_id,
                &job_id,
                &kind.routing_key(),
                &Json(payload),
                &lease_secs,
                &token,
                &crate::telemetry::traceparent(),
            ],
        )
        .await?;
    if !row.get::<_, bool>("owned") {
        return Err(StoreError::Fenced);
    }
    Ok(row.get::<_, i64>("queued") == 1)
}

/// Marks events sent by the express path, by event id; `unrouted` ones reached no queue.
pub async fn mark_sent_events(
    client: &impl GenericClient,
    event_ids: &[Uuid],
    unrouted: bool,
) -> Result<(), StoreError> {
    if event_ids.is_empty() {
        return Ok(());
    }
    let statement = client
        .prepare_cached(
            "UPDATE outbox SET sent_at = now(), relay_until = NULL, unrouted = $2
             WHERE event_id = ANY($1) AND sent_at IS NULL",
        )
        .await?;
    client.execute(&statement, &[&event_ids, &unrouted]).await?;
    Ok(())
}

/// Hands events the express path could not send to the relay at once.
pub async fn unlease_events(client: &impl GenericClient, event_ids: &[Uuid]) -> Result<(), StoreError> {
    if event_ids.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "UPDATE outbox SET relay_until = NULL WHERE event_id = ANY($1) AND sent_at IS NULL",
            &[&event_ids],
        )
        .await?;
    Ok(())
}

/// Queues the `roadmap.failed` event of a refused message, unless a job with that id exists: a
/// refusal never announces an outcome for a job that is running or has ended (a malformed or
/// conflicting duplicate must not give its consumers a second outcome). Returns whether it was
/// queued.
pub async fn insert_refusal<T: Serialize + std::fmt::Debug + Sync>(
    client: &impl GenericClient,
    event_id: Uuid,
    job_id: Uuid,
    kind: EventKind,
    payload: &T,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "INSERT INTO outbox (event_id, job_id, routing_key, payload)
             SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE job_id = $2)
             ON CONFLICT (event_id) DO NOTHING",
            &[&event_id, &job_id, &kind.routing_key(), &Json(payload)],
        )
        .await?;
    Ok(n == 1)
}

/// An event waiting to be published.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub event_id: Uuid,
    /// As stored and published.
    pub routing_key: String,
    /// `None` for a routing key this worker does not know (one a newer worker wrote): the event
    /// is published all the same, but not counted, and kept for another try if no queue takes it.
    pub kind: Option<EventKind>,
    pub payload: serde_json::Value,
    /// Publish attempts, this one included.
    pub attempts: i32,
    /// The job's W3C trace, when traces are exported.
    pub traceparent: Option<String>,
}

/// Leases up to `limit` unsent events that are due, oldest first, for `lease`; other relays
/// skip them until the lease passes. One statement, so no transaction stays open while the
/// relay waits for the broker. A completion event is stored without its roadmap (the roadmaps
/// table holds it once) and gets it back here.
pub async fn lease_unsent(
    client: &impl GenericClient,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Pending>, StoreError> {
    let rows = client
        .query(
            "WITH due AS (
                SELECT id FROM outbox
                WHERE sent_at IS NULL
                  AND (relay_until IS NULL OR relay_until < now())
                  AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED),
             leased AS (
                UPDATE outbox o SET relay_until = now() + make_interval(secs => $2), attempts = attempts + 1
                FROM due WHERE o.id = due.id
                RETURNING o.id, o.event_id, o.routing_key, o.payload, o.attempts, o.traceparent)
             SELECT l.id, l.event_id, l.routing_key, l.payload, l.attempts, r.roadmap, l.traceparent
             FROM leased l
             LEFT JOIN roadmaps r
               ON l.routing_key = $3 AND r.roadmap_id = (l.payload->>'roadmap_id')::uuid
             ORDER BY l.id",
            &[&limit, &lease.as_secs_f64(), &EventKind::Completed.routing_key()],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut payload: serde_json::Value = r.get("payload");
            let roadmap: Option<serde_json::Value> = r.get("roadmap");
            if let (Some(roadmap), Some(obj)) = (roadmap, payload.as_object_mut()) {
                obj.insert("roadmap".into(), roadmap);
            }
            let routing_key: String = r.get("routing_key");
            Pending {
                id: r.get("id"),
                event_id: r.get("event_id"),
                kind: routing_key.parse().ok(),
                routing_key,
                payload,
                attempts: r.get("attempts"),
                traceparent: r.get("traceparent"),
            }
        })
        .collect())
}

/// Marks events confirmed by the broker; `unrouted` ones reached no queue.
pub async fn mark_sent(client: &impl GenericClient, ids: &[i64], unrouted: bool) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "UPDATE outbox SET sent_at = now(), relay_until = NULL, unrouted = $2 WHERE id = ANY($1)",
            &[&ids, &unrouted],
        )
        .await?;
    Ok(())
}

/// Puts an event that no queue took back in line after `delay`.
pub async fn defer(client: &impl GenericClient, id: i64, delay: Duration) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE outbox SET relay_until = NULL, next_attempt_at = now() + make_interval(secs => $2)
             WHERE id = $1",
            &[&id, &delay.as_secs_f64()],
        )
        .await?;
    Ok(())
}

/// Gives leased events back at once (the broker session failed mid-batch).
pub async fn unlease(client: &impl GenericClient, ids: &[i64]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "UPDATE outbox SET relay_until = NULL WHERE id = ANY($1) AND sent_at IS NULL",
            &[&ids],
        )
        .await?;
    Ok(())
}

/// Deletes events confirmed more than `keep` ago, in batches of `batch` rows (each its own
/// statement, so no lock is held long), until none is left. Returns how many went.
///
/// Outcome events (`roadmap.completed`, `roadmap.failed`) are not trimmed: a job published again
/// re-announces its outcome from its stored event, so they stay as long as their job and go
/// with it at retention (`store::retention`). Their rows are outside the index this scans (V14),
/// so the trim never steps over them.
pub async fn prune_sent(client: &impl GenericClient, keep: Duration, batch: i64) -> Result<u64, StoreError> {
    let kept = super::retention::OUTCOMES.map(EventKind::routing_key);
    let mut total = 0;
    loop {
        let deleted = client
            .execute(
                "DELETE FROM outbox WHERE id IN (
                    SELECT id FROM outbox WHERE sent_at < now() - make_interval(secs => $1::float8)
                                          AND routing_key <> ALL($3)
                    LIMIT $2)",
                &[&keep.as_secs_f64(), &batch, &&kept[..]],
            )
            .await?;
        total += deleted;
        if deleted < batch as u64 {
            return Ok(total);
        }
    }
}

/// Unsent events and the age in seconds of the oldest, for the backlog gauges.
pub async fn backlog(client: &impl GenericClient) -> Result<(i64, f64), StoreError> {
    let row = client
        .query_one(
            "SELECT count(*) AS unsent,
                    COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) AS oldest_secs
             FROM outbox WHERE sent_at IS NULL",
            &[],
        )
        .await?;
    Ok((row.get("unsent"), row.get("oldest_secs")))
}
