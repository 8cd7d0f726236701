//! The outbox relay: publishes unsent events with publisher confirms, then marks them sent.
//! Delivery is at least once; consumers de-duplicate by `message_id` (= event_id).
//!
//! # No event dropped for want of a queue
//!
//! Events are published `mandatory`. One that no queue takes (the backend has not bound its
//! event queue yet) is not counted as published: a completion or failure event stays unsent and
//! is tried again with a backoff, so it reaches a consumer that binds later; a progress event,
//! stale by then, is let go and counted as unrouted.
//!
//! # The express path
//!
//! A job's progress and completion events are written with their rows leased to the job's
//! replica and handed to [`express`] right after the commit, which publishes them from memory:
//! no row is read back, and a completion's roadmap is not re-assembled from its table. What the
//! express path confirms it marks sent, a batch of events in one statement; what it cannot send
//! it gives back to the relay at once; should the replica die in between, the lease
//! (`EXPRESS_LEASE`) runs out and any relay sends it.
//!
//! # Nothing held while waiting for the broker
//!
//! Rows are leased in one statement (`relay_until`), not locked in a transaction, and every wait
//! for a confirm has a timeout: a broker under a memory alarm stalls the relay, not Postgres.

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures_util::future::join_all;
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Background;
use crate::{
    amqp::{PublishError, Publisher},
    domain::event::{EventKind, Unroutable},
    metrics::Metrics,
    retry::RetryPolicy,
    store::{self, StoreError, outbox::Express},
};

const BATCH: i64 = 100;
const POLL: Duration = Duration::from_millis(200);
/// The pause between relay passes: a poll, doubling after each failed pass up to 6.4 s.
const PAUSE: RetryPolicy = RetryPolicy::new(POLL, Duration::from_millis(200 * 32));
/// How long a relay holds leased rows; past it another relay sends them.
const LEASE: Duration = Duration::from_secs(60);
/// Longest wait for one confirm; a broker that takes longer is treated as failing.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long confirmed events stay in the outbox table, how often they are trimmed, and in
/// batches of how many rows (so that no delete holds locks for long).
const KEEP_SENT: Duration = Duration::from_secs(7 * 24 * 3600);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: i64 = 5_000;
/// When an event that no queue took is tried again: 1 s, 2 s, 4 s … up to five minutes. Quick
/// for a backend that is just starting; cheap for one that never binds, since each try re-sends
/// the whole event (a 52-week completion is about 320 KB).
const UNROUTED: RetryPolicy = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(300));

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("the broker did not confirm within {}s", CONFIRM_TIMEOUT.as_secs())]
    ConfirmTimeout,
    #[error("serialising an event: {0}")]
    Json(#[from] serde_json::Error),
}

/// Runs until the background tasks stop, then drains what is pending once more before returning.
pub(super) async fn run(bg: Background) {
    let Background {
        pool,
        publisher,
        topology,
        metrics,
        stop,
        ..
    } = bg;
    let exchange = topology.events_exchange;
    let mut failures = 0u32;
    let mut last_prune: Option<Instant> = None;
    loop {
        let current = publisher.borrow().clone();
        let published = match &current {
            Some(p) => publish_pending(&pool, p, &exchange, &metrics).await,
            // Between broker sessions: nothing can be sent; the rows wait.
            None => Ok(0),
        };
        match published {
            Ok(n) => {
                failures = 0;
                if n as i64 == BATCH {
                    continue;
                }
            }
            Err(e) => {
                failures += 1;
                warn!(error = %e, "outbox relay failed; will retry");
            }
        }
        let upkeep = async {
            let client = pool.get().await?;
            let (count, age) = store::outbox::backlog(&client).await?;
            metrics.outbox_backlog.set(count);
            metrics.outbox_oldest_age.set(age);
            // Sent events are kept a while for inspection, then trimmed so the table stays small.
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                match store::outbox::prune_sent(&client, KEEP_SENT, PRUNE_BATCH).await {
                    Ok(n) if n > 0 => debug!(rows = n, "trimmed sent events"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "could not trim sent events"),
                }
            }
            Ok::<_, StoreError>(())
        };
        // Failures show in the pass above; the gauges keep their last values meanwhile.
        let _ = store::bounded(upkeep).await;
        let pause = PAUSE.nth_delay(failures);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => {
                let current = publisher.borrow().clone();
                if let Some(p) = current
                    && let Err(e) = publish_pending(&pool, &p, &exchange, &metrics).await
                {
                    warn!(error = %e, "outbox not drained at shutdown; another replica will send it");
                }
                return;
            }
        }
    }
}

/// Publishes the events handed over after their commits until the background tasks stop, then
/// what is left.
pub(super) async fn express(bg: Background, mut events: mpsc::Receiver<Express>) {
    let exchange = bg.topology.events_exchange.clone();
    loop {
        let first = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
            () = bg.stop.cancelled() => {
                let mut rest = Vec::new();
                while let Ok(event) = events.try_recv() {
                    rest.push(event);
                }
                send_express(&bg, &exchange, rest).await;
                return;
            }
        };
        // Whatever else is waiting goes in the same round: its confirms are awaited together
        // and its rows marked in one statement.
        let mut batch = vec![first];
        while batch.len() < BATCH as usize {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        send_express(&bg, &exchange, batch).await;
    }
}

async fn send_express(bg: &Background, exchange: &str, batch: Vec<Express>) {
    if batch.is_empty() {
        return;
    }
    let publisher = bg.publisher.borrow().clone();
    let (mut sent, mut let_go, mut back) = (Vec::new(), Vec::new(), Vec::new());
    match publisher {
        None => back.extend(batch.iter().map(|e| e.event_id)),
        Some(publisher) => {
            let ids: Vec<String> = batch.iter().map(|e| e.event_id.to_string()).collect();
            let confirms = batch.iter().zip(&ids).map(|(event, id)| {
                let headers = event_headers(
                    event.kind.routing_key(),
                    &event.job_id.to_string(),
                    event.user_id.as_deref(),
                    event.traceparent.as_deref(),
                );
                let publish = publisher.publish_json(
                    exchange,
                    event.kind.routing_key(),
                    &event.body,
                    Some(id),
                    Some(headers),
                    true,
                );
                tokio::time::timeout(CONFIRM_TIMEOUT, publish)
            });
            for (event, result) in batch.iter().zip(join_all(confirms).await) {
                let kind = event.kind;
                match result {
                    Ok(Ok(())) => {
                        bg.metrics.event_published(kind);
                        sent.push(event.event_id);
                    }
                    Ok(Err(PublishError::Unroutable { .. })) => match kind.unroutable_policy() {
                        Unroutable::LetGo => {
                            bg.metrics.event_unroutable(kind);
                            let_go.push(event.event_id);
                        }
                        // The relay keeps it, with the backoff of an event no queue takes (and
                        // counts it when its own try finds no queue either).
                        Unroutable::Retry => back.push(event.event_id),
                    },
                    // Tried again by the relay, on this or the next broker session.
                    _ => {
                        bg.metrics.event_publish_failed(kind);
                        back.push(event.event_id);
                    }
                }
            }
        }
    }
    let marked = async {
        let client = bg.pool.get().await.map_err(StoreError::from)?;
        store::outbox::mark_sent_events(&client, &sent, false).await?;
        store::outbox::mark_sent_events(&client, &let_go, true).await?;
        store::outbox::unlease_events(&client, &back).await
    };
    if let Err(e) = store::bounded(marked).await {
        // The leases run out and the relay sends these again: at least once, as always.
        warn!(error = %e, events = batch.len(), "could not record express-published events");
    }
}

/// Publishes up to one batch of due events; returns how many were leased.
async fn publish_pending(
    pool: &Pool,
    publisher: &Publisher,
    exchange: &str,
    metrics: &Metrics,
) -> Result<usize, RelayError> {
    let (client, pending) = store::bounded(async {
        let client = pool.get().await?;
        let pending = store::outbox::lease_unsent(&client, BATCH, LEASE).await?;
        Ok((client, pending))
    })
    .await?;
    let mut sent = Vec::with_capacity(pending.len());
    let mut let_go = Vec::new();
    let mut failed = None;
    for (i, event) in pending.iter().enumerate() {
        let body = serde_json::to_vec(&event.payload)?;
        let id = event.event_id.to_string();
        let text = |field: &str| event.payload.get(field).and_then(serde_json::Value::as_str);
        let headers = event_headers(
            &event.routing_key,
            text("job_id").unwrap_or_default(),
            text("user_id"),
            event.traceparent.as_deref(),
        );
        let publish = publisher.publish_json(
            exchange,
            &event.routing_key,
            &body,
            Some(&id),
            Some(headers),
            true,
        );
        let result = match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
            Ok(result) => result.map_err(RelayError::from),
            Err(_) => Err(RelayError::ConfirmTimeout),
        };
        // An event of a kind this worker does not know is sent all the same, uncounted.
        let count = |record: fn(&Metrics, EventKind)| {
            if let Some(kind) = event.kind {
                record(metrics, kind);
            }
        };
        match result {
            Ok(()) => {
                count(Metrics::event_published);
                sent.push(event.id);
            }
            Err(RelayError::Publish(PublishError::Unroutable { .. })) => {
                count(Metrics::event_unroutable);
                match event.kind.map_or(Unroutable::Retry, EventKind::unroutable_policy) {
                    Unroutable::LetGo => let_go.push(event.id),
                    Unroutable::Retry => {
                        let delay = unrouted_delay(event.attempts);
                        warn!(event_id = %event.event_id, kind = event.routing_key.as_str(),
                              attempts = event.attempts, retry_secs = delay.as_secs(),
                              "no queue is bound for this event; kept unsent");
                        store::bounded(store::outbox::defer(&client, event.id, delay)).await?;
                    }
                }
            }
            Err(e) => {
                count(Metrics::event_publish_failed);
                // The rest go back at once rather than wait out their lease.
                let rest: Vec<i64> = pending[i..].iter().map(|p| p.id).collect();
                let _ = store::bounded(store::outbox::unlease(&client, &rest)).await;
                failed = Some(e);
                break;
            }
        }
    }
    store::bounded(async {
        store::outbox::mark_sent(&client, &sent, false).await?;
        store::outbox::mark_sent(&client, &let_go, true).await
    })
    .await?;
    match failed {
        Some(e) => Err(e),
        None => Ok(pending.len()),
    }
}

/// The AMQP headers of an event: its type, `job_id` and, where known, `user_id`, so that a
/// router or consumer can tell whose event it is without parsing the body (a 52-week
/// completion is about 320 KB); and the job's `traceparent`, so that its trace goes on to
/// whoever consumes the event.
fn event_headers(kind: &str, job_id: &str, user_id: Option<&str>, traceparent: Option<&str>) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert("event".into(), AMQPValue::LongString(kind.into()));
    headers.insert("job_id".into(), AMQPValue::LongString(job_id.into()));
    for (name, value) in [("user_id", user_id), ("traceparent", traceparent)] {
        if let Some(value) = value {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
    }
    headers
}

/// The wait after an event's `attempts`-th try found no queue ([`UNROUTED`]).
fn unrouted_delay(attempts: i32) -> Duration {
    UNROUTED.nth_delay(attempts.max(1).unsigned_abs() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrouted_events_back_off_to_five_minutes() {
        let delays: Vec<u64> = [0, 1, 2, 3, 9, 10, 50, i32::MAX]
            .map(|a| unrouted_delay(a).as_secs())
            .to_vec();
        assert_eq!(delays, vec![1, 1, 2, 4, 256, 300, 300, 300]);
    }
}
