//! Settling deliveries: the one place where an outcome becomes ack, hand-back or dead-letter.
//!
//! # Waits are kept in Postgres
//!
//! A job that must wait (its user's turn, a provider fault) is parked in its row with the time
//! it is due, and its delivery is acked: the row is its record, and the sweeper dispatches it
//! again. The broker keeps a job only while Postgres is down: then the copy goes through the
//! retry queue, persistent, without the broker's dead-letter history.
//!
//! # Hand-backs spend no delivery
//!
//! A quorum queue counts every `nack(requeue)` against its `x-delivery-limit`, so a fleet that
//! restarts or waits out an outage with requeues would dead-letter healthy jobs. A job handed
//! back is instead re-published (straight to its work queue, or through the retry queue while
//! the database is down) and then acked. A requeue is left only as the last resort when no
//! broker session can take the copy.

use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
    types::{AMQPValue, LongString},
};
use tracing::{error, warn};
use uuid::Uuid;

use super::Context;
use crate::{
    amqp::{
        self, PublishError, properties,
        topology::{BULK_ROUTING_KEY, JOB_ROUTING_KEY, REJECTED_ROUTING_KEY},
    },
    domain::{
        Rejection,
        event::{self, JobFailure},
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
        // Finished, or nothing left to do here (ended before, or another replica has it), or
        // waiting in Postgres (the row is the record; the sweeper dispatches it when due).
        Outcome::Completed
        | Outcome::Failed
        | Outcome::Duplicate
        | Outcome::Fenced
        | Outcome::UserBusy
        | Outcome::ProviderFault { parked: true, .. } => Disposition::Ack,
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
        // The database is away: the broker keeps the job, through the retry queue, until it is
        // back.
        Outcome::StoreDown(_) | Outcome::ProviderFault { parked: false, .. } => Disposition::HandBack {
            reason: Deferral::Database,
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
        Outcome::ProviderFault { fault, .. } => {
            error!(error = %fault, "LLM provider refuses requests; the job waits for it");
            ctx.metrics.delivery_deferred(Deferral::Provider);
            ctx.pause(Dependency::Provider);
        }
        Outcome::UserBusy => ctx.metrics.delivery_deferred(Deferral::User),
        Outcome::StoreDown(e) => {
            error!(error = %e, "database unavailable; job handed back");
            ctx.pause(Dependency::Database);
        }
        Outcome::Duplicate => ctx.metrics.duplicate_deliveries.inc(),
        Outcome::Completed | Outcome::Failed | Outcome::Fenced | Outcome::Stopped => {}
    }
    let settled = match disposition {
        Disposition::Ack if acked_early => Ok(()),
        Disposition::Ack => ack(&delivery).await,
        Disposition::HandBack { reason } => hand_back(ctx, &delivery, reason, acked_early).await,
        Disposition::DeadLetter { reason } => {
            let message = match &outcome {
                Outcome::Refused(rejection) => {
                    record_refusal(ctx, rejection, &delivery.data).await;
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

/// How long an ack may wait. Under a broker's resource alarm the connection is blocked and the
/// frame waits in lapin's buffer; the outcome is in Postgres already, so a late or lost ack is
/// harmless (the redelivery is settled by the ledger), and a job task must not hold its slot for it.
const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Acks `delivery`, waiting at most [`ACK_TIMEOUT`].
pub(super) async fn ack(delivery: &Delivery) -> lapin::Result<()> {
    match tokio::time::timeout(ACK_TIMEOUT, delivery.ack(BasicAckOptions::default())).await {
        Ok(acked) => acked.map(drop),
        Err(_) => {
            warn!("the broker did not take an ack within 30 s; a redelivery is settled by the ledger");
            Ok(())
        }
    }
}

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

/// Re-publishes the message (through the retry queue while the database is down, else straight
/// to its work queue), then acks the delivery.
pub(super) async fn hand_back(
    ctx: &Context,
    delivery: &Delivery,
    reason: Deferral,
    acked_early: bool,
) -> lapin::Result<()> {
    let props = amqp::republished(&delivery.properties);
    let published = match reason {
        Deferral::Database => {
            ctx.publish_delayed(
                &ctx.topology.retry_queue,
                &delivery.data,
                props,
                ctx.settings.retry_delay,
            )
            .await
        }
        // Back to the queue it came from (a bulk job to the bulk queue).
        _ => {
            let key = match delivery.routing_key.as_str() {
                BULK_ROUTING_KEY => BULK_ROUTING_KEY,
                _ => JOB_ROUTING_KEY,
            };
            ctx.publish_job(&delivery.data, props, key).await
        }
    };
    match published {
        Ok(()) => {
            ctx.metrics.delivery_deferred(reason);
            if acked_early { Ok(()) } else { ack(delivery).await }
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

/// Settles a side consumer's delivery (a cancel, a recovery) that met a database outage: it
/// waits in `queue`, a retry queue of its own path, for RETRY_DELAY_SECS and comes back. Every
/// such delivery is settled at once: one left unacked would hold the consumer's prefetch and,
/// past the broker's consumer timeout, close its channel. If even the copy cannot be made, the
/// delivery goes back to its queue.
pub(super) async fn wait_out_outage(ctx: &Context, delivery: Delivery, queue: &str) {
    let props = amqp::republished(&delivery.properties);
    match ctx
        .publish_delayed(queue, &delivery.data, props, ctx.settings.retry_delay)
        .await
    {
        Ok(()) => {
            ctx.metrics.delivery_deferred(Deferral::Database);
            let _ = ack(&delivery).await;
        }
        Err(e) => {
            warn!(error = %e, queue, "could not delay a delivery; it goes back to its queue");
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            let _ = delivery.nack(requeue).await;
        }
    }
}

/// Records a refused message whose job_id is readable as that job's outcome: a failed row
/// and its `roadmap.failed` event, unless the job_id is known already (a refusal never gives a
/// job a second outcome; a copy under an ended job_id has its outcome announced again). The
/// event id is stable per job, reason and sender, so a redelivered refusal is not announced
/// twice.
pub(super) async fn record_refusal(ctx: &Context, rejection: &Rejection, body: &[u8]) {
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
    let recorded = with_retries(|| store::ledger::refuse(pool, rejection, body, &failed)).await;
    match recorded {
        Ok(true) => ctx.metrics.job_failed(&rejection.reason),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "could not record the refusal"),
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
        (Ok(()), false) => ack(delivery).await,
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
    let props = amqp::republished(&delivery.properties).with_headers(headers);
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
    fn outcomes_map_to_dispositions() {
        for done in [
            Outcome::Completed,
            Outcome::Failed,
            Outcome::Duplicate,
            Outcome::Fenced,
            Outcome::UserBusy,
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
        let fault = || LlmError::Config {
            status: "http_401",
            message: String::new(),
        };
        // Parked in Postgres: the delivery goes. Not parked (the database is away too): the
        // broker keeps the job until the database is back.
        let parked = Outcome::ProviderFault {
            fault: fault(),
            parked: true,
        };
        assert_eq!(disposition(&parked), Disposition::Ack);
        let unparked = Outcome::ProviderFault {
            fault: fault(),
            parked: false,
        };
        assert_eq!(
            disposition(&unparked),
            Disposition::HandBack {
                reason: Deferral::Database
            }
        );
    }
}
