//! Settling deliveries: the one place where an outcome becomes ack, requeue or dead-letter.

use std::time::Duration;

use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
    types::{AMQPValue, LongString},
};
use tracing::{error, warn};
use uuid::Uuid;

use super::Context;
use crate::{
    amqp::{PublishError, topology::JOB_ROUTING_KEY},
    domain::{
        JobRequest, RejectReason, Rejection,
        event::{self, JobFailure},
    },
    llm::LlmError,
    pipeline::job::JobEnd,
    store::{self, StoreError, with_retries},
};

/// What handling one delivery came to.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Finished, or nothing left to do (already done, or another replica has it).
    Done,
    /// The message is refused for good.
    Rejected(Rejection),
    /// The job killed its workers too often; already failed in the store, event queued.
    Poison { abandoned: i32 },
    /// Shutdown before the job finished: back to the queue, checkpoints kept.
    HandedBack,
    /// The provider refuses all requests: back to the queue, untouched by templates.
    ProviderFault(LlmError),
    /// The database stayed unreachable through the retries.
    StoreDown(StoreError),
}

impl Outcome {
    /// What a job run's end means for its delivery.
    pub(super) fn of(job: &JobRequest, end: Result<JobEnd, StoreError>) -> Self {
        match end {
            Ok(JobEnd::Completed | JobEnd::AlreadyFailed | JobEnd::Fenced) => Self::Done,
            Ok(JobEnd::OtherUser) => Self::Rejected(Rejection {
                reason: RejectReason::JobOwnedByAnotherUser,
                job_id: Some(job.job_id),
                user_id: Some(job.user_id.clone()),
            }),
            Ok(JobEnd::Poison { abandoned }) => Self::Poison { abandoned },
            Ok(JobEnd::HandedBack) => Self::HandedBack,
            Ok(JobEnd::ProviderFault(e)) => Self::ProviderFault(e),
            Err(e) => Self::StoreDown(e),
        }
    }
}

/// How a delivery is settled with the broker.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    Ack,
    Requeue { pause: Duration },
    DeadLetter { reason: &'static str },
}

/// The single mapping from outcome to broker action.
pub(super) fn disposition(outcome: &Outcome) -> Disposition {
    match outcome {
        Outcome::Done => Disposition::Ack,
        Outcome::Rejected(r) => Disposition::DeadLetter {
            reason: r.reason.code(),
        },
        Outcome::Poison { .. } => Disposition::DeadLetter {
            reason: JobFailure::PoisonJob.as_str(),
        },
        Outcome::HandedBack => Disposition::Requeue {
            pause: Duration::ZERO,
        },
        // Intake pauses on a provider fault, so the job waits in the queue, not in a loop here.
        Outcome::ProviderFault(_) => Disposition::Requeue {
            pause: Duration::ZERO,
        },
        // Pause so that a database outage does not spin the message through the queue.
        Outcome::StoreDown(_) => Disposition::Requeue {
            pause: Duration::from_secs(5),
        },
    }
}

/// Settles `delivery`. `acked_early` says the delivery was already acked (a long job), in which
/// case a requeue becomes a re-publish and a dead letter needs no ack.
pub(super) async fn settle(ctx: &Context, delivery: Delivery, outcome: Outcome, acked_early: bool) {
    let disposition = disposition(&outcome);
    match &outcome {
        Outcome::Rejected(r) => {
            warn!(reason = r.reason.code(), error = %r.reason, job_id = ?r.job_id, "message rejected");
            ctx.metrics
                .jobs_rejected
                .with_label_values(&[r.reason.code()])
                .inc();
        }
        Outcome::Poison { abandoned } => error!(abandoned, "poison job dead-lettered"),
        Outcome::ProviderFault(e) => {
            error!(error = %e, "LLM provider refuses requests; job returned to the queue");
            ctx.metrics.provider_ready.set(0);
            ctx.provider_ok.send_replace(false);
        }
        Outcome::StoreDown(e) => error!(error = %e, "database unavailable; job returned to the queue"),
        Outcome::Done | Outcome::HandedBack => {}
    }
    let settled = match disposition {
        Disposition::Ack if acked_early => Ok(()),
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await.map(drop),
        Disposition::Requeue { pause } => {
            if !pause.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = ctx.shutdown.cancelled() => {}
                }
            }
            if acked_early {
                republish(ctx, &delivery).await;
                Ok(())
            } else {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                delivery.nack(requeue).await.map(drop)
            }
        }
        Disposition::DeadLetter { reason } => {
            let message = match &outcome {
                Outcome::Rejected(rejection) => {
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

/// Queues `roadmap.failed` for a refused message whose job_id is readable. The event id is
/// stable per job, reason and sender, so a redelivered refusal is not announced twice.
async fn queue_failed_event(ctx: &Context, rejection: &Rejection) {
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
        store::outbox::insert(&client, failed.event_id, Some(job_id), event::FAILED, &failed).await
    })
    .await;
    match queued {
        Ok(()) => ctx.metrics.jobs_failed.with_label_values(&[code]).inc(),
        Err(e) => warn!(error = %e, "could not queue the failed event"),
    }
}

/// Copies the message to the dead-letter exchange with the reason in its headers, then acks it.
/// If the copy fails, the broker's own dead-lettering takes the message: nothing is lost.
async fn dead_letter(
    ctx: &Context,
    delivery: &Delivery,
    code: &str,
    message: &str,
    acked_early: bool,
) -> lapin::Result<()> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        "x-reject-reason".into(),
        AMQPValue::LongString(LongString::from(code)),
    );
    headers.insert(
        "x-reject-message".into(),
        AMQPValue::LongString(LongString::from(message)),
    );
    let props = delivery.properties.clone().with_headers(headers);
    let copied = match ctx.publisher() {
        Some(publisher) => {
            publisher
                .publish(
                    &ctx.topology.dead_letter_exchange,
                    JOB_ROUTING_KEY,
                    &delivery.data,
                    props,
                    true,
                )
                .await
        }
        None => Err(PublishError::NotConnected),
    };
    ctx.metrics.dead_lettered.with_label_values(&[code]).inc();
    match (copied, acked_early) {
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => delivery.ack(BasicAckOptions::default()).await.map(drop),
        (Err(e), _) => {
            warn!(error = %e, "could not copy to the dead-letter exchange; rejecting to the broker's");
            let reject = BasicNackOptions {
                requeue: false,
                ..Default::default()
            };
            delivery.nack(reject).await.map(drop)
        }
    }
}

/// Puts an already-acked job message back on the queue (a long job handed back).
async fn republish(ctx: &Context, delivery: &Delivery) {
    let published = match ctx.publisher() {
        Some(p) => {
            p.publish(
                &ctx.topology.jobs_exchange,
                JOB_ROUTING_KEY,
                &delivery.data,
                delivery.properties.clone(),
                true,
            )
            .await
        }
        None => Err(PublishError::NotConnected),
    };
    if let Err(e) = published {
        // The job's row still says running with no owner; the sweeper re-publishes it.
        warn!(error = %e, "could not re-publish a handed-back job; the sweeper will");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_dispositions() {
        assert_eq!(disposition(&Outcome::Done), Disposition::Ack);
        assert_eq!(
            disposition(&Outcome::HandedBack),
            Disposition::Requeue {
                pause: Duration::ZERO
            }
        );
        let rejection = Rejection {
            reason: RejectReason::NotObject,
            job_id: None,
            user_id: None,
        };
        assert_eq!(
            disposition(&Outcome::Rejected(rejection)),
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
            Disposition::Requeue { .. }
        ));
    }
}
