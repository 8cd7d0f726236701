//! Settling deliveries: the one place where an outcome becomes ack, hand-back or dead-letter.
//!
//! # Hand-backs spend no delivery
//!
//! A quorum queue counts every `nack(requeue)` against its `x-delivery-limit`, so a fleet that
//! restarts or waits out an outage with requeues would dead-letter healthy jobs. A job handed
//! back is instead re-published (straight to the work queue on shutdown; through the retry
//! queue, whose per-message TTL expires it back, while a dependency is down) and then acked. A
//! requeue is left only as the last resort when no broker session can take the copy.

use std::time::Duration;

use lapin::{
    BasicProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
    types::{AMQPValue, LongString, ShortString},
};
use tracing::{error, warn};
use uuid::Uuid;

use super::Context;
use crate::{
    amqp::{
        PublishError, properties,
        topology::{BULK_ROUTING_KEY, JOB_ROUTING_KEY, REJECTED_ROUTING_KEY},
    },
    domain::{
        Rejection,
        event::{self, EventKind, JobFailure},
    },
    metrics::{Deferral, Dependency},
    pipeline::outcome::Outcome,
    store::{self, dead_letters::NewDeadLetter, with_retries},
};

/// How a delivery is settled with the broker.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    Ack,
    /// Re-published (after the wait for `reason`, through the retry queue) and acked.
    HandBack {
        reason: Deferral,
    },
    DeadLetter {
        reason: &'static str,
    },
}

/// The single mapping from outcome to broker action.
pub(super) fn disposition(outcome: &Outcome) -> Disposition {
    match outcome {
        // Finished, or nothing left to do here (ended before, or another replica has it).
        Outcome::Completed | Outcome::Failed | Outcome::Duplicate | Outcome::Fenced => Disposition::Ack,
        Outcome::Refused(r) => Disposition::DeadLetter {
            reason: r.reason.code(),
        },
        Outcome::Poison { .. } => Disposition::DeadLetter {
            reason: JobFailure::PoisonJob.as_str(),
        },
        // Straight back to work, for the next replica.
        Outcome::Stopped => Disposition::HandBack {
            reason: Deferral::Shutdown,
        },
        // Intake pauses on a provider fault; the job waits out a probe interval.
        Outcome::ProviderFault(_) => Disposition::HandBack {
            reason: Deferral::Provider,
        },
        // Intake pauses too; waiting in the retry queue keeps the message from spinning.
        Outcome::StoreDown(_) => Disposition::HandBack {
            reason: Deferral::Database,
        },
        // Through the retry queue: the wait holds no worker slot and spends no delivery.
        Outcome::UserBusy => Disposition::HandBack {
            reason: Deferral::User,
        },
    }
}

/// Settles `delivery`. `acked_early` says the delivery was already acked (a long job), in which
/// case a hand-back is only the re-publish and a dead letter only the copy.
pub(super) async fn settle(ctx: &Context, delivery: Delivery, outcome: Outcome, acked_early: bool) {
    let disposition = disposition(&outcome);
    match &outcome {
        Outcome::Refused(r) => {
            warn!(reason = r.reason.code(), error = %r.reason, job_id = ?r.job_id, "message rejected");
            ctx.metrics.job_rejected(&r.reason);
        }
        Outcome::Poison { abandoned } => error!(abandoned, "poison job dead-lettered"),
        Outcome::ProviderFault(e) => {
            error!(error = %e, "LLM provider refuses requests; job handed back");
            ctx.pause(Dependency::Provider);
        }
        Outcome::StoreDown(e) => {
            error!(error = %e, "database unavailable; job handed back");
            ctx.pause(Dependency::Database);
        }
        Outcome::Duplicate => ctx.metrics.duplicate_deliveries.inc(),
        Outcome::Completed | Outcome::Failed | Outcome::Fenced | Outcome::Stopped | Outcome::UserBusy => {}
    }
    let settled = match disposition {
        Disposition::Ack if acked_early => Ok(()),
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await.map(drop),
        Disposition::HandBack { reason } => hand_back(ctx, &delivery, reason, acked_early).await,
        Disposition::DeadLetter { reason } => {
            let message = match &outcome {
                Outcome::Refused(rejection) => {
                    queue_failed_event(ctx, rejection).await;
                    rejection.reason.to_string()
                }
                _ => "the job failed its workers too many times".to_owned(),
            };
            dead_letter(ctx, &delivery, reason, &message, acked_early).await
        }
    };
    if let Err(e) = settled {
        // The channel is gone: the broker redelivers the message, and the job is idempotent.
        warn!(error = %e, "could not settle a delivery; it will be redelivered");
    }
}

/// The header that counts how often a job waited for its user's turn (`USER_MAX_IN_FLIGHT`).
const USER_WAITS: &str = "x-roadmap-user-waits";

/// A whole-number header of `delivery`, 0 when absent or of another type.
pub(super) fn header_count(delivery: &Delivery, name: &str) -> u32 {
    let Some(headers) = delivery.properties.headers() else {
        return 0;
    };
    match headers.inner().get(name) {
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortUInt(n)) => u32::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => u32::from(*n),
        _ => 0,
    }
}

/// Re-publishes the message (delayed for a dependency outage), then acks the delivery.
pub(super) async fn hand_back(
    ctx: &Context,
    delivery: &Delivery,
    reason: Deferral,
    acked_early: bool,
) -> lapin::Result<()> {
    let mut props = delivery.properties.clone();
    // How long the job waits before it is tried again, by why it was handed back.
    let delay = match reason {
        Deferral::Shutdown => Duration::ZERO,
        Deferral::Provider => ctx.settings.probe_interval,
        Deferral::Database => ctx.settings.retry_delay,
        // A job waiting for its user's turn waits longer each time (2, 4, 8, then 10 s), so a
        // long backlog of one user is not spun through the queue every 2 s.
        Deferral::User => {
            let waits = header_count(delivery, USER_WAITS);
            let mut headers = props.headers().clone().unwrap_or_default();
            headers.insert(USER_WAITS.into(), AMQPValue::LongUInt(waits.saturating_add(1)));
            props = props.with_headers(headers);
            super::user_turn_delay(waits)
        }
    };
    match republish(ctx, delivery, props, delay).await {
        Ok(()) => {
            ctx.metrics.delivery_deferred(reason);
            if acked_early {
                Ok(())
            } else {
                delivery.ack(BasicAckOptions::default()).await.map(drop)
            }
        }
        // The job's row still says running: the sweeper re-publishes it.
        Err(e) if acked_early => {
            warn!(error = %e, "could not re-publish a handed-back job; the sweeper will");
            Ok(())
        }
        Err(e) => {
            warn!(error = %e, "could not re-publish a handed-back job; requeueing it instead");
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            delivery.nack(requeue).await.map(drop)
        }
    }
}

/// Puts the message back to work: at once on the jobs exchange, or after `delay` through the
/// retry queue (by the default exchange), with its original properties.
async fn republish(
    ctx: &Context,
    delivery: &Delivery,
    props: BasicProperties,
    delay: Duration,
) -> Result<(), PublishError> {
    if delay.is_zero() {
        // Back to the queue it came from (a bulk job to the bulk queue).
        let key = match delivery.routing_key.as_str() {
            BULK_ROUTING_KEY => BULK_ROUTING_KEY,
            _ => JOB_ROUTING_KEY,
        };
        return ctx.publish_job(&delivery.data, props, key).await;
    }
    let publisher = ctx.publisher().ok_or(PublishError::NotConnected)?;
    let props: BasicProperties = props.with_expiration(ShortString::from(delay.as_millis().to_string()));
    publisher
        .publish("", &ctx.topology.retry_queue, &delivery.data, props, true)
        .await
}

/// Queues `roadmap.failed` for a refused message whose job_id is readable, unless a job with
/// that id exists (a refusal never announces a second outcome for a job). The event id is
/// stable per job, reason and sender, so a redelivered refusal is not announced twice.
pub(super) async fn queue_failed_event(ctx: &Context, rejection: &Rejection) {
    let Some(job_id) = rejection.job_id else {
        return;
    };
    let code = rejection.reason.code();
    let mut failed = event::Failed::new(
        job_id,
        rejection.user_id.clone(),
        code,
        rejection.reason.to_string(),
    );
    let key = format!("rejected:{code}:{}", rejection.user_id.as_deref().unwrap_or(""));
    failed.event_id = Uuid::new_v5(&job_id, key.as_bytes());
    let pool = ctx.runner.pool();
    let queued = with_retries(|| async {
        let client = pool.get().await?;
        store::outbox::insert_refusal(&client, failed.event_id, job_id, EventKind::Failed, &failed).await
    })
    .await;
    match queued {
        Ok(true) => ctx.metrics.job_failed(&rejection.reason),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "could not queue the failed event"),
    }
}

/// Copies the message to the dead-letter exchange with the reason in its headers, then acks it.
/// If the copy fails, the broker's own dead-lettering takes the message to the recovery queue:
/// nothing is lost.
pub(super) async fn dead_letter(
    ctx: &Context,
    delivery: &Delivery,
    code: &str,
    message: &str,
    acked_early: bool,
) -> lapin::Result<()> {
    let copied = copy_to_dead_letters(ctx, delivery, code, message).await;
    match (copied, acked_early) {
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => delivery.ack(BasicAckOptions::default()).await.map(drop),
        // Already settled: a second settlement would close the channel under the other jobs.
        (Err(e), true) => {
            warn!(error = %e, "could not copy an acked message to the dead-letter exchange");
            Ok(())
        }
        (Err(e), false) => {
            warn!(error = %e, "could not copy to the dead-letter exchange; rejecting to the broker's");
            let reject = BasicNackOptions {
                requeue: false,
                ..Default::default()
            };
            delivery.nack(reject).await.map(drop)
        }
    }
}

/// Files the message as a dead letter with its reason, and counts it: a row in `dead_letters`,
/// where `dlq` reads it under a stable id without disturbing it. Only when Postgres cannot take
/// the row (after the store's retries) does a copy go to the dead-letter exchange, with
/// `x-reject-reason`, `x-reject-message` and `x-dead-letter-id` (the row's identity, so that
/// `dlq` moves the copy into the table once). `Ok` means the letter is filed in one of the two.
pub(super) async fn copy_to_dead_letters(
    ctx: &Context,
    delivery: &Delivery,
    code: &str,
    message: &str,
) -> Result<(), PublishError> {
    let letter_id = Uuid::new_v4();
    let stored_properties = properties::to_json(&delivery.properties);
    let letter = NewDeadLetter {
        letter_id,
        job_id: properties::readable_job_id(&delivery.data, &delivery.properties),
        reason: code,
        message,
        routing_key: Some(delivery.routing_key.as_str()),
        properties: &stored_properties,
        body: &delivery.data,
        created_at: None,
    };
    let pool = ctx.runner.pool();
    // The same letter_id on every try: an insert whose commit was not heard files nothing twice.
    let filed = with_retries(|| async {
        let client = pool.get().await?;
        store::dead_letters::insert(&**client, &letter).await
    })
    .await;
    match filed {
        Ok(_) => {
            ctx.metrics.message_dead_lettered(code);
            return Ok(());
        }
        Err(e) => {
            warn!(error = %e, reason = code, "could not file a dead letter in Postgres; copying it to the dead-letter exchange")
        }
    }
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        properties::REJECT_REASON.into(),
        AMQPValue::LongString(LongString::from(code)),
    );
    headers.insert(
        properties::REJECT_MESSAGE.into(),
        AMQPValue::LongString(LongString::from(message)),
    );
    // For `dlq`, which files the copy with the time it was dead-lettered, not moved.
    headers.insert(
        properties::DEAD_LETTERED_AT.into(),
        AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
    );
    headers.insert(
        properties::DEAD_LETTER_ID.into(),
        AMQPValue::LongString(LongString::from(letter_id.to_string())),
    );
    let props = delivery.properties.clone().with_headers(headers);
    let publisher = ctx.publisher().ok_or(PublishError::NotConnected)?;
    publisher
        .publish(
            &ctx.topology.dead_letter_exchange,
            REJECTED_ROUTING_KEY,
            &delivery.data,
            props,
            true,
        )
        .await?;
    ctx.metrics.message_dead_lettered(code);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{domain::RejectReason, llm::LlmError};

    #[test]
    fn a_user_backlog_waits_longer_each_turn_up_to_ten_seconds() {
        let waits: Vec<u64> = (0..6)
            .map(|n| crate::worker::user_turn_delay(n).as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 10, 10, 10]);
        assert_eq!(crate::worker::user_turn_delay(u32::MAX).as_secs(), 10);
    }

    #[test]
    fn outcomes_map_to_dispositions() {
        for done in [
            Outcome::Completed,
            Outcome::Failed,
            Outcome::Duplicate,
            Outcome::Fenced,
        ] {
            assert_eq!(disposition(&done), Disposition::Ack);
        }
        assert_eq!(
            disposition(&Outcome::Stopped),
            Disposition::HandBack {
                reason: Deferral::Shutdown
            }
        );
        let rejection = Rejection {
            reason: RejectReason::NotObject,
            job_id: None,
            user_id: None,
        };
        assert_eq!(
            disposition(&Outcome::Refused(rejection)),
            Disposition::DeadLetter { reason: "not_object" }
        );
        assert_eq!(
            disposition(&Outcome::Poison { abandoned: 3 }),
            Disposition::DeadLetter { reason: "poison_job" }
        );
        let fault = LlmError::Config {
            status: "http_401",
            message: String::new(),
        };
        assert!(matches!(
            disposition(&Outcome::ProviderFault(fault)),
            Disposition::HandBack { .. }
        ));
    }
}
