//! The outbox relay: publishes unsent events with publisher confirms, then marks them sent.
//! Delivery is at least once; consumers de-duplicate by `message_id` (= event_id).

use std::time::Duration;

use deadpool_postgres::Pool;
use tracing::warn;

use super::Background;
use crate::{amqp::Publisher, metrics::Metrics, store};

const BATCH: i64 = 100;
const POLL: Duration = Duration::from_millis(200);
/// How long confirmed events stay in the outbox table, and how often they are trimmed.
const KEEP_SENT: Duration = Duration::from_secs(7 * 24 * 3600);
const PRUNE_EVERY: Duration = Duration::from_secs(600);

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
    let mut last_prune = std::time::Instant::now();
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
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = std::time::Instant::now();
                if let Err(e) = store::outbox::prune_sent(&client, KEEP_SENT).await {
                    warn!(error = %e, "could not trim sent events");
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

/// Publishes up to one batch of unsent events; returns how many were sent.
async fn publish_pending(
    pool: &Pool,
    publisher: &Publisher,
    exchange: &str,
    metrics: &Metrics,
) -> anyhow::Result<usize> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let pending = store::outbox::lock_unsent(&tx, BATCH).await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let mut sent = Vec::with_capacity(pending.len());
    for event in &pending {
        let body = serde_json::to_vec(&event.payload)?;
        let id = event.event_id.to_string();
        // Events are not mandatory: a topic with no subscriber yet is not an error.
        publisher
            .publish_json(exchange, &event.routing_key, &body, Some(&id), None, false)
            .await?;
        metrics
            .events_published
            .with_label_values(&[event.routing_key.as_str()])
            .inc();
        sent.push(event.id);
    }
    store::outbox::mark_sent(&tx, &sent).await?;
    tx.commit().await?;
    Ok(sent.len())
}
