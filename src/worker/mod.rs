//! The worker: broker sessions (reconnecting with backoff), intake bounded to
//! WORKER_CONCURRENCY jobs, the outbox relay, the sweeper, and the drain on shutdown.

mod consume;
mod settle;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use backon::{BackoffBuilder, ExponentialBuilder};
use deadpool_postgres::Pool;
use lapin::options::BasicQosOptions;
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    amqp::{self, Publisher, Topology, topology::JOB_ROUTING_KEY},
    config::WorkerSettings,
    http::{self, Health},
    llm::{Provider, mock::MockLlm},
    metrics::Metrics,
    outbox,
    pipeline::{
        batch::{Generator, LadderSettings},
        job::JobRunner,
    },
    store::{self, jobs::APP_PREFIX},
};

/// A running worker's handles, for callers that embed it (demo, tests).
#[derive(Debug, Clone)]
pub struct Running {
    pub metrics: Metrics,
    pub metrics_addr: std::net::SocketAddr,
    pub owner: String,
}

/// What every job task shares.
struct Context {
    runner: JobRunner,
    /// False from a provider configuration fault until a probe passes.
    provider_ok: watch::Sender<bool>,
    probe_interval: Duration,
    ack_deadline: Duration,
    concurrency: u16,
    /// The current broker session's publisher; `None` between sessions.
    publisher: watch::Receiver<Option<Publisher>>,
    topology: Topology,
    metrics: Metrics,
    shutdown: CancellationToken,
}

impl Context {
    fn publisher(&self) -> Option<Publisher> {
        self.publisher.borrow().clone()
    }
}

/// Runs the worker until `shutdown` is cancelled, then drains and returns. `started` receives
/// the running worker's handles once it first consumes.
pub async fn run(
    settings: WorkerSettings,
    shutdown: CancellationToken,
    mut started: Option<tokio::sync::oneshot::Sender<Running>>,
) -> anyhow::Result<()> {
    let owner = replica_id();
    let metrics = Metrics::new();
    let pool = store::connect(&settings.db, &format!("{APP_PREFIX}{owner}")).await?;
    let mut provider = Provider::from_settings(&settings.llm)?;
    if let Provider::Mock(_) = provider {
        provider = Provider::Mock(MockLlm {
            latency: Duration::from_millis(settings.llm.llm_mock_latency_ms),
        });
    }
    metrics.provider_ready.set(1);
    info!(
        provider = provider.name(),
        model = provider.model(),
        db = %settings.db.database_url,
        amqp = %settings.amqp.amqp_url,
        "worker starting"
    );
    let lease = Duration::from_secs(settings.lease_secs.max(3));
    let runner = JobRunner {
        pool: pool.clone(),
        generator: Generator {
            provider,
            settings: LadderSettings::from_settings(&settings.llm, settings.batch.context_days),
            metrics: metrics.clone(),
        },
        batch_weeks: settings.batch.batch_weeks,
        lease,
        owner: owner.clone(),
        poison_after: settings.job_poison_after.max(1),
    };
    let (connection_tx, connection_rx) = watch::channel(None);
    let (publisher_tx, publisher_rx) = watch::channel(None);
    let stop_background = CancellationToken::new();
    let health = Health {
        metrics: metrics.clone(),
        pool: pool.clone(),
        amqp: connection_rx,
    };
    let metrics_addr = http::serve(settings.metrics_addr, health, stop_background.clone()).await?;
    let topology = Topology::new(&settings.amqp.amqp_namespace, settings.amqp.amqp_delivery_limit);
    let relay = tokio::spawn(outbox::relay(
        pool.clone(),
        publisher_rx.clone(),
        topology.events_exchange.clone(),
        metrics.clone(),
        stop_background.clone(),
    ));
    let sweeper = tokio::spawn(sweep(
        pool.clone(),
        publisher_rx.clone(),
        topology.clone(),
        lease,
        Duration::from_secs(settings.sweep_interval_secs.max(1)),
        metrics.clone(),
        stop_background.clone(),
    ));
    let ctx = Arc::new(Context {
        runner,
        provider_ok: watch::Sender::new(true),
        probe_interval: Duration::from_secs(settings.llm.llm_probe_interval_secs.max(1)),
        ack_deadline: Duration::from_secs(settings.amqp_ack_deadline_secs.max(1)),
        concurrency: settings.worker_concurrency,
        publisher: publisher_rx,
        topology: topology.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    });
    let concurrency = settings.worker_concurrency;
    let slots = Arc::new(Semaphore::new(concurrency as usize));
    metrics.worker_slots_free.set(concurrency as i64);
    let mut tasks = JoinSet::new();
    let mut backoff = reconnect_backoff();
    let mut sessions = 0u32;
    // One broker session per pass: connect, declare, consume until shutdown or a broker failure.
    let last_channel = loop {
        let session = async {
            let connection = Arc::new(amqp::connect(&settings.amqp, &owner).await?);
            let setup = connection.create_channel().await.context("opening a channel")?;
            topology
                .declare(&setup)
                .await
                .context("declaring the RabbitMQ topology")?;
            let _ = setup.close(200, "topology declared".into()).await;
            let publisher = Publisher::new(&connection).await?;
            let channel = connection
                .create_channel()
                .await
                .context("opening the consumer channel")?;
            // Two bounds: the broker sends no more than we can work; the semaphore enforces it.
            channel.basic_qos(concurrency, BasicQosOptions::default()).await?;
            anyhow::Ok((connection, publisher, channel))
        };
        let (connection, publisher, channel) = tokio::select! {
            s = session => match s {
                Ok(s) => s,
                // A broker that is unreachable at start is a configuration problem: say so.
                Err(e) if sessions == 0 => return Err(e),
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    warn!(error = format!("{e:#}"), delay_ms = delay.as_millis() as u64, "broker unavailable; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = shutdown.cancelled() => break None,
                    }
                }
            },
            () = shutdown.cancelled() => break None,
        };
        sessions += 1;
        if sessions > 1 {
            metrics.amqp_reconnects.inc();
            info!(sessions, "broker session re-established; topology declared again");
        }
        backoff = reconnect_backoff();
        connection_tx.send_replace(Some(connection.clone()));
        publisher_tx.send_replace(Some(publisher));
        if let Some(tx) = started.take() {
            let _ = tx.send(Running {
                metrics: metrics.clone(),
                metrics_addr,
                owner: owner.clone(),
            });
        }
        match consume::consume(&channel, &ctx, &slots, &mut tasks).await {
            Ok(()) => break Some((connection, channel)),
            Err(e) => {
                // Jobs in flight go on: Postgres holds their state, and their redelivered
                // messages wait for them (the owner is alive) instead of starting them again.
                warn!(error = format!("{e:#}"), "broker session lost; reconnecting");
                publisher_tx.send_replace(None);
            }
        }
    };
    drain(&mut tasks, settings.shutdown_grace_secs).await;
    // The relay's last pass needs the broker, so it stops before the connection closes.
    stop_background.cancel();
    let _ = relay.await;
    let _ = sweeper.await;
    if let Some((connection, channel)) = last_channel {
        // A broker that went away cannot answer close-ok; do not let that hold the exit.
        let close = async {
            let _ = channel.close(200, "drained".into()).await;
            let _ = connection.close(200, "worker stopped".into()).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
    }
    info!("worker stopped");
    Ok(())
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(15))
        .without_max_times()
        .with_jitter()
        .build()
}

/// Waits for in-flight jobs; they stop between batches once shutdown is signalled and hand
/// their jobs back. After the grace period the rest is abandoned to redelivery.
async fn drain(tasks: &mut JoinSet<()>, grace_secs: u64) {
    while tasks.try_join_next().is_some() {}
    if tasks.is_empty() {
        return;
    }
    info!(in_flight = tasks.len(), grace_secs, "draining in-flight jobs");
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
}

/// The safety net: re-publishes running jobs that no delivery will bring back.
async fn sweep(
    pool: Pool,
    publisher: watch::Receiver<Option<Publisher>>,
    topology: Topology,
    lease: Duration,
    interval: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
        let Some(publisher) = publisher.borrow().clone() else {
            continue;
        };
        let stranded = match store::jobs::sweep(&pool, lease, 50).await {
            Ok(stranded) => stranded,
            Err(e) => {
                warn!(error = %e, "sweep failed");
                continue;
            }
        };
        for job in stranded {
            let body = job.request.to_string();
            match publisher
                .publish_json(
                    &topology.jobs_exchange,
                    JOB_ROUTING_KEY,
                    body.as_bytes(),
                    None,
                    None,
                    true,
                )
                .await
            {
                Ok(()) => {
                    metrics.jobs_redispatched.inc();
                    info!(job_id = %job.job_id, "stranded job re-published");
                }
                Err(e) => {
                    warn!(job_id = %job.job_id, error = %e, "could not re-publish a stranded job");
                    let _ = store::jobs::unstamp(&pool, job.job_id).await;
                }
            }
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
