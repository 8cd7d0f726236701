//! The run loop: consume with a bounded number of jobs in flight, settle each delivery (the one
//! place where outcomes become ack / requeue / dead-letter), and drain on shutdown.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use crate::{
    amqp::{self, Publisher, Topology},
    config::WorkerSettings,
    domain::{JobRequest, RejectReason, Rejection, event},
    http::{self, Health},
    llm::{LlmError, Provider, mock::MockLlm},
    metrics::Metrics,
    outbox,
    pipeline::{
        batch::{Generator, LadderSettings},
        job::{JobEnd, JobRunner, with_retries},
    },
    store::{self, StoreError, jobs::APP_PREFIX},
};

/// What handling one delivery came to.
#[derive(Debug)]
enum Outcome {
    /// Finished, or nothing left to do (already done, or another replica has it).
    Done,
    /// The message is refused for good.
    Rejected(Rejection),
    /// Shutdown before the job finished: back to the queue, checkpoints kept.
    HandedBack,
    /// The provider refuses all requests: back to the queue, untouched by templates.
    ProviderFault(LlmError),
    /// The database stayed unreachable through the retries.
    StoreDown(StoreError),
}

/// How a delivery is settled with the broker.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    Ack,
    Requeue { pause: Duration },
    DeadLetter,
}

/// The single mapping from outcome to broker action.
fn disposition(outcome: &Outcome) -> Disposition {
    match outcome {
        Outcome::Done => Disposition::Ack,
        Outcome::Rejected(_) => Disposition::DeadLetter,
        Outcome::HandedBack => Disposition::Requeue {
            pause: Duration::ZERO,
        },
        // Pause before requeueing so that an outage does not spin the message through the queue.
        Outcome::ProviderFault(_) => Disposition::Requeue {
            pause: Duration::from_secs(10),
        },
        Outcome::StoreDown(_) => Disposition::Requeue {
            pause: Duration::from_secs(5),
        },
    }
}

/// A running worker's handles, for callers that embed it (demo, tests).
#[derive(Debug, Clone)]
pub struct Running {
    pub metrics: Metrics,
    pub metrics_addr: std::net::SocketAddr,
    pub owner: String,
}

/// Runs the worker until `shutdown` is cancelled, then drains and returns. `started` receives
/// the running worker's handles once it consumes.
pub async fn run(
    settings: WorkerSettings,
    shutdown: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<Running>>,
) -> anyhow::Result<()> {
    let owner = replica_id();
    let metrics = Metrics::new();
    let pool = store::connect(&settings.db, &format!("{APP_PREFIX}{owner}")).await?;
    let connection = Arc::new(amqp::connect(&settings.amqp, &owner).await?);
    let topology = Topology::new(&settings.amqp.amqp_namespace, settings.amqp.amqp_delivery_limit);
    let setup = connection.create_channel().await.context("opening a channel")?;
    topology
        .declare(&setup)
        .await
        .context("declaring the RabbitMQ topology")?;
    let _ = setup.close(200, "topology declared".into()).await;
    let publisher = Publisher::new(&connection).await?;
    let mut provider = Provider::from_settings(&settings.llm)?;
    if let Provider::Mock(_) = provider {
        provider = Provider::Mock(MockLlm {
            latency: Duration::from_millis(settings.llm.llm_mock_latency_ms),
        });
    }
    metrics.provider_ready.set(1);
    info!(provider = provider.name(), model = provider.model(), db = %settings.db.database_url, amqp = %settings.amqp.amqp_url, "worker starting");
    let runner = JobRunner {
        pool: pool.clone(),
        generator: Generator {
            provider,
            settings: LadderSettings::from_settings(&settings.llm, settings.batch.context_days),
            metrics: metrics.clone(),
        },
        batch_weeks: settings.batch.batch_weeks,
        lease: Duration::from_secs(settings.lease_secs.max(3)),
        owner: owner.clone(),
    };
    let stop_http = CancellationToken::new();
    let health = Health {
        metrics: metrics.clone(),
        pool: pool.clone(),
        amqp: connection.clone(),
    };
    let metrics_addr = http::serve(settings.metrics_addr, health, stop_http.clone()).await?;
    let stop_relay = CancellationToken::new();
    let relay = tokio::spawn(outbox::relay(
        pool.clone(),
        publisher.clone(),
        topology.events_exchange.clone(),
        metrics.clone(),
        stop_relay.clone(),
    ));
    let ctx = Arc::new(Context {
        runner,
        provider_ok: tokio::sync::watch::Sender::new(true),
        probe_interval: Duration::from_secs(settings.llm.llm_probe_interval_secs.max(1)),
        publisher,
        topology,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    });
    if let Some(tx) = started {
        let _ = tx.send(Running {
            metrics: metrics.clone(),
            metrics_addr,
            owner: owner.clone(),
        });
    }
    let result = consume(
        &connection,
        ctx,
        settings.worker_concurrency,
        &shutdown,
        settings.shutdown_grace_secs,
    )
    .await;
    stop_relay.cancel();
    let _ = relay.await;
    stop_http.cancel();
    // A broker that went away cannot answer close-ok; do not let that hold the exit.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        connection.close(200, "worker stopped".into()),
    )
    .await;
    info!("worker stopped");
    result
}

struct Context {
    runner: JobRunner,
    /// False from a provider configuration fault until a probe passes.
    provider_ok: tokio::sync::watch::Sender<bool>,
    probe_interval: Duration,
    publisher: Publisher,
    topology: Topology,
    metrics: Metrics,
    shutdown: CancellationToken,
}

async fn consume(
    connection: &lapin::Connection,
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: &CancellationToken,
    grace_secs: u64,
) -> anyhow::Result<()> {
    let channel = connection
        .create_channel()
        .await
        .context("opening the consumer channel")?;
    // Two bounds: the broker sends no more than we can work, and the semaphore enforces it here.
    channel.basic_qos(concurrency, BasicQosOptions::default()).await?;
    let slots = Arc::new(Semaphore::new(concurrency as usize));
    ctx.metrics.worker_slots_free.set(concurrency as i64);
    let mut tasks = JoinSet::new();
    let mut provider_ok = ctx.provider_ok.subscribe();
    let result = 'intake: loop {
        let tag = format!("{}-{}", ctx.runner.owner, Uuid::new_v4().simple());
        let mut consumer = channel
            .basic_consume(
                ctx.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("starting the consumer")?;
        info!(queue = %ctx.topology.queue, concurrency, "consuming");
        // Take deliveries until shutdown (break 'intake) or a provider fault (break here).
        let stopped = loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                () = shutdown.cancelled() => break Ok(()),
                _ = provider_ok.wait_for(|ok| !*ok) => break Err(()),
            };
            let delivery = tokio::select! {
                next = consumer.next() => next,
                () = shutdown.cancelled() => break Ok(()),
                _ = provider_ok.wait_for(|ok| !*ok) => break Err(()),
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => break 'intake Err(anyhow::Error::new(e).context("the consumer failed")),
                None => break 'intake Err(anyhow::anyhow!("the broker closed the consumer")),
            };
            let ctx = ctx.clone();
            let slots_gauge = slots.clone();
            tasks.spawn(async move {
                ctx.metrics.jobs_in_flight.inc();
                ctx.metrics
                    .worker_slots_free
                    .set(slots_gauge.available_permits() as i64);
                handle(&ctx, delivery).await;
                ctx.metrics.jobs_in_flight.dec();
                drop(permit);
                ctx.metrics
                    .worker_slots_free
                    .set(slots_gauge.available_permits() as i64);
            });
        };
        // Stop intake in both cases, so nothing new arrives while we drain or wait.
        let _ = channel
            .basic_cancel(tag.as_str().into(), lapin::options::BasicCancelOptions::default())
            .await;
        if stopped.is_ok() {
            break Ok(());
        }
        // The provider refuses our key or model: jobs stay queued rather than be filled with
        // templates, until a probe shows an operator fixed it.
        warn!(
            probe_secs = ctx.probe_interval.as_secs(),
            "LLM provider refuses requests; intake paused"
        );
        loop {
            tokio::select! {
                () = tokio::time::sleep(ctx.probe_interval) => {}
                () = shutdown.cancelled() => break 'intake Ok(()),
            }
            match ctx.runner.generator.provider.probe().await {
                Ok(()) => break,
                Err(e) => warn!(error = %e, "LLM provider still refuses requests"),
            }
        }
        ctx.metrics.provider_ready.set(1);
        ctx.provider_ok.send_replace(true);
        info!("LLM provider accepts requests again; resuming intake");
    };
    while tasks.try_join_next().is_some() {}
    let in_flight = tasks.len();
    if in_flight > 0 {
        info!(in_flight, grace_secs, "draining in-flight jobs");
    }
    let drained = tokio::time::timeout(Duration::from_secs(grace_secs), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Unsettled deliveries return to the queue when the channel closes; checkpoints stay.
        warn!(
            left = tasks.len(),
            "grace period over; abandoning the rest to redelivery"
        );
        tasks.abort_all();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), channel.close(200, "draining done".into())).await;
    result
}

async fn handle(ctx: &Context, delivery: Delivery) {
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(|s| s.as_str().to_owned());
    let outcome = match JobRequest::decode(&delivery.data, content_type.as_deref()) {
        Err(rejection) => Outcome::Rejected(rejection),
        Ok(job) => {
            let span = info_span!("job", job_id = %job.job_id, weeks = job.duration_weeks);
            match ctx.runner.run(&job, &ctx.shutdown).instrument(span).await {
                Ok(JobEnd::Completed | JobEnd::AlreadyFailed | JobEnd::Fenced) => Outcome::Done,
                Ok(JobEnd::OtherUser) => Outcome::Rejected(Rejection {
                    reason: RejectReason::JobOwnedByAnotherUser,
                    job_id: Some(job.job_id),
                    user_id: Some(job.user_id.clone()),
                }),
                Ok(JobEnd::HandedBack) => Outcome::HandedBack,
                Ok(JobEnd::ProviderFault(e)) => Outcome::ProviderFault(e),
                Err(e) => Outcome::StoreDown(e),
            }
        }
    };
    settle(ctx, delivery, outcome).await;
}

async fn settle(ctx: &Context, delivery: Delivery, outcome: Outcome) {
    let disposition = disposition(&outcome);
    match &outcome {
        Outcome::Rejected(r) => {
            warn!(reason = r.reason.code(), error = %r.reason, job_id = ?r.job_id, "message rejected");
            ctx.metrics
                .jobs_rejected
                .with_label_values(&[r.reason.code()])
                .inc();
        }
        Outcome::ProviderFault(e) => {
            error!(error = %e, "LLM provider refuses requests; job returned to the queue");
            ctx.metrics.provider_ready.set(0);
            ctx.provider_ok.send_replace(false);
        }
        Outcome::StoreDown(e) => error!(error = %e, "database unavailable; job returned to the queue"),
        Outcome::Done | Outcome::HandedBack => {}
    }
    let settled = match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await.map(drop),
        Disposition::Requeue { pause } => {
            if !pause.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = ctx.shutdown.cancelled() => {}
                }
            }
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .map(drop)
        }
        Disposition::DeadLetter => {
            let Outcome::Rejected(rejection) = &outcome else {
                unreachable!("only rejections are dead-lettered")
            };
            dead_letter(ctx, &delivery, rejection).await
        }
    };
    if let Err(e) = settled {
        // The channel is gone: the broker redelivers the message, and the job is idempotent.
        warn!(error = %e, "could not settle a delivery; it will be redelivered");
    }
}

/// Records the refusal (a `roadmap.failed` event when the job_id is readable), copies the
/// message to the dead-letter exchange with the reason in its headers, then acks it. If the
/// copy fails, the broker's own dead-lettering takes the message instead: nothing is lost.
async fn dead_letter(ctx: &Context, delivery: &Delivery, rejection: &Rejection) -> lapin::Result<()> {
    let code = rejection.reason.code();
    if let Some(job_id) = rejection.job_id {
        let mut failed = event::Failed::new(
            job_id,
            rejection.user_id.clone(),
            code,
            rejection.reason.to_string(),
        );
        // Stable per job, reason and sender: a redelivered refusal does not announce itself twice.
        let key = format!("rejected:{code}:{}", rejection.user_id.as_deref().unwrap_or(""));
        failed.event_id = Uuid::new_v5(&job_id, key.as_bytes());
        let pool = &ctx.runner.pool;
        let queued = with_retries(|| async {
            let client = pool.get().await?;
            store::outbox::insert(&client, failed.event_id, Some(job_id), event::FAILED, &failed).await
        })
        .await;
        match queued {
            Ok(()) => {
                ctx.metrics.jobs_failed.with_label_values(&[code]).inc();
            }
            Err(e) => warn!(error = %e, "could not queue the failed event"),
        }
    }
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        "x-reject-reason".into(),
        AMQPValue::LongString(LongString::from(code)),
    );
    headers.insert(
        "x-reject-message".into(),
        AMQPValue::LongString(LongString::from(rejection.reason.to_string())),
    );
    let props = delivery.properties.clone().with_headers(headers);
    let copied = ctx
        .publisher
        .publish(
            &ctx.topology.dead_letter_exchange,
            amqp::topology::JOB_ROUTING_KEY,
            &delivery.data,
            props,
            true,
        )
        .await;
    ctx.metrics.dead_lettered.with_label_values(&[code]).inc();
    match copied {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(drop),
        Err(e) => {
            warn!(error = %e, "could not copy to the dead-letter exchange; rejecting to the broker's");
            delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    ..Default::default()
                })
                .await
                .map(drop)
        }
    }
}

/// A replica id that is unique per process and readable in logs: host name plus a random suffix.
pub fn replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_else(|| "worker".into());
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(24)
        .collect();
    format!("{host}-{}", &Uuid::new_v4().simple().to_string()[..8])
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
            Disposition::DeadLetter
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
