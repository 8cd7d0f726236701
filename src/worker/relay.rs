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
//! # Nothing held while waiting for the broker
//!
//! Rows are leased in one statement (`relay_until`), not locked in a transaction, and every wait
//! for a confirm has a timeout: a broker under a memory alarm stalls the relay, not Postgres.

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tracing::{debug, warn};

use super::Background;
use crate::{
    amqp::{PublishError, Publisher},
    domain::event::PROGRESS,
    metrics::Metrics,
    store::{self, StoreError},
};

const BATCH: i64 = 100;
const POLL: Duration = Duration::from_millis(200);
/// How long a relay holds leased rows; past it another relay sends them.
const LEASE: Duration = Duration::from_secs(60);
/// Longest wait for one confirm; a broker that takes longer is treated as failing.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long confirmed events stay in the outbox table, how often they are trimmed, and in
/// batches of how many rows (so that no delete holds locks for long).
const KEEP_SENT: Duration = Duration::from_secs(7 * 24 * 3600);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: i64 = 5_000;
/// Longest wait before an event that no queue took is tried again: each try re-sends the whole
/// event (a 52-week completion is about 320 KB), so a backend that never binds costs little.
const MAX_UNROUTED_DELAY: Duration = Duration::from_secs(300);

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
        if let Ok(client) = pool.get().await {
            if let Ok((count, age)) = store::outbox::backlog(&client).await {
                metrics.outbox_backlog.set(count);
                metrics.outbox_oldest_age.set(age);
            }
            // Sent events are kept a while for inspection, then trimmed so the table stays small.
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                match store::outbox::prune_sent(&client, KEEP_SENT, PRUNE_BATCH).await {
                    Ok(n) if n > 0 => debug!(rows = n, "trimmed sent events"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "could not trim sent events"),
                }
            }
        }
        let pause = POLL * 2u32.pow(failures.min(5));
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

/// Publishes up to one batch of due events; returns how many were leased.
async fn publish_pending(
    pool: &Pool,
    publisher: &Publisher,
    exchange: &str,
    metrics: &Metrics,
) -> Result<usize, RelayError> {
    let client = pool.get().await.map_err(StoreError::from)?;
    let pending = store::outbox::lease_unsent(&client, BATCH, LEASE).await?;
    let mut sent = Vec::with_capacity(pending.len());
    let mut let_go = Vec::new();
    let mut failed = None;
    for (i, event) in pending.iter().enumerate() {
        let body = serde_json::to_vec(&event.payload)?;
        let id = event.event_id.to_string();
        let publish = publisher.publish_json(exchange, &event.routing_key, &body, Some(&id), None, true);
        let result = match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
            Ok(result) => result.map_err(RelayError::from),
            Err(_) => Err(RelayError::ConfirmTimeout),
        };
        let kind = event.routing_key.as_str();
        match result {
            Ok(()) => {
                metrics.events_published.with_label_values(&[kind]).inc();
                sent.push(event.id);
            }
            Err(RelayError::Publish(PublishError::Unroutable { .. })) => {
                metrics.events_unroutable.with_label_values(&[kind]).inc();
                if kind == PROGRESS {
                    let_go.push(event.id);
                } else {
                    let delay = unrouted_delay(event.attempts);
                    warn!(event_id = %event.event_id, kind, attempts = event.attempts,
                          retry_secs = delay.as_secs(), "no queue is bound for this event; kept unsent");
                    store::outbox::defer(&client, event.id, delay).await?;
                }
            }
            Err(e) => {
                // The rest go back at once rather than wait out their lease.
                let rest: Vec<i64> = pending[i..].iter().map(|p| p.id).collect();
                let _ = store::outbox::unlease(&client, &rest).await;
                failed = Some(e);
                break;
            }
        }
    }
    store::outbox::mark_sent(&client, &sent, false).await?;
    store::outbox::mark_sent(&client, &let_go, true).await?;
    match failed {
        Some(e) => Err(e),
        None => Ok(pending.len()),
    }
}

/// 1 s, 2 s, 4 s … up to five minutes: quick for a backend that is just starting, cheap for one
/// that never binds.
fn unrouted_delay(attempts: i32) -> Duration {
    let exp = attempts.clamp(1, 10) as u32 - 1;
    (Duration::from_secs(1) * 2u32.pow(exp)).min(MAX_UNROUTED_DELAY)
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
