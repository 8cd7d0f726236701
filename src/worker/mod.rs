//! The worker: broker sessions (reconnecting with backoff), intake bounded to
//! WORKER_CONCURRENCY jobs, the background tasks (outbox relay, sweeper, retention), and the
//! drain on shutdown.
//!
//! # Stopping safely
//!
//! The shutdown signal is injected as a [`CancellationToken`]. Once it fires, intake stops, jobs
//! in flight finish their current batch and hand their jobs back (checkpoints kept, leases
//! released), the relay sends what is pending, and the broker connection closes.

mod cancel;
mod consume;
mod context;
mod lanes;
mod recover;
mod relay;
mod retention;
mod settle;
mod sweeper;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use backon::BackoffBuilder;
use deadpool_postgres::Pool;
use lapin::{Channel, Connection, options::BasicQosOptions};
use tokio::{
    sync::{Semaphore, mpsc, oneshot, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use self::context::{Context, Drain, IntakeSettings, IntakeState, Paused};

use crate::{
    admin,
    amqp::{self, Publisher, Topology},
    config::{Prices, WorkerSettings},
    http::{self, Health},
    llm::{AnswerGate, Llm as _, Provider},
    metrics::{Dependency, Metrics},
    pipeline::{
        batch::{Generator, LadderSettings},
        budget::Budget,
        job::JobRunner,
    },
    retry::RetryPolicy,
    store::{self, heartbeat::Liveness, jobs::APP_PREFIX, outbox::ExpressLane},
};

/// A running worker's handles, for callers that embed it (demo, tests).
#[derive(Debug, Clone)]
pub struct Running {
    pub metrics: Metrics,
    pub metrics_addr: SocketAddr,
    /// The operator page's address, when ADMIN_ADDR turned it on.
    pub admin_addr: Option<SocketAddr>,
    pub owner: String,
}

/// Consumes `queue` on `channel` (consumer tag `<replica>-<role>-<id>`), one delivery at a time
/// through `handle`, until shutdown (`Ok`) or the channel fails.
async fn consume_each<F, Fut>(
    channel: &Channel,
    ctx: &Context,
    queue: &str,
    role: &str,
    mut handle: F,
) -> lapin::Result<()>
where
    F: FnMut(lapin::message::Delivery) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures_util::StreamExt as _;
    let tag = format!("{}-{role}-{}", ctx.runner.owner(), uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            next = consumer.next() => next,
            () = ctx.drain.shutdown.cancelled() => return Ok(()),
        };
        match delivery {
            Some(Ok(delivery)) => handle(delivery).await,
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

/// Runs a side consumer (cancel, recovery) on channels of its own for the life of
/// `connection`: when the broker closes its channel (a consumer timeout, a channel error) or
/// cancels its consumer, a new channel is opened after a backoff, so that the consumer does not
/// stay dead until the work queues' channel fails. Returns at shutdown or when the connection
/// is gone (the next broker session starts the consumer again).
async fn keep_consuming<F, Fut>(connection: &Connection, ctx: &Context, role: &str, mut consume: F)
where
    F: FnMut(Channel) -> Fut,
    Fut: std::future::Future<Output = lapin::Result<()>>,
{
    let mut backoff = reconnect_backoff();
    loop {
        let ended = match connection.create_channel().await {
            Ok(channel) => consume(channel).await,
            Err(e) => Err(e),
        };
        if ctx.drain.shutdown.is_cancelled() || !connection.status().connected() {
            return;
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(15));
        match ended {
            Ok(()) => warn!(role, "the broker cancelled a consumer; consuming again"),
            Err(e) => warn!(role, error = %e, "a consumer's channel failed; consuming again"),
        }
        ctx.metrics.channel_reopened(role);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = ctx.drain.shutdown.cancelled() => return,
        }
    }
}

/// Watches the session's publisher: when the broker closes its channel while the connection
/// lives (a channel error, such as a 406 for a property it refuses), a new confirm channel takes
/// its place, so that events, hand-backs and dead letters do not fail from then on. Returns when
/// the connection is gone (the next session brings a publisher of its own) or at shutdown.
async fn keep_publisher(
    connection: Arc<Connection>,
    publisher: watch::Sender<Option<Publisher>>,
    ctx: Arc<Context>,
) {
    let mut backoff = reconnect_backoff();
    loop {
        tokio::select! {
            () = tokio::time::sleep(PUBLISHER_CHECK) => {}
            () = ctx.drain.shutdown.cancelled() => return,
        }
        if !connection.status().connected() {
            return;
        }
        if publisher.borrow().as_ref().is_none_or(Publisher::is_open) {
            continue;
        }
        match Publisher::new(&connection).await {
            Ok(fresh) => {
                warn!("the broker closed the publisher's channel; publishing on a new one");
                publisher.send_replace(Some(fresh));
                ctx.metrics.channel_reopened("publisher");
                backoff = reconnect_backoff();
            }
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(15));
                warn!(
                    error = format!("{e:#}"),
                    "could not open a new publisher channel; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// How often the publisher's channel is checked.
const PUBLISHER_CHECK: Duration = Duration::from_secs(1);

/// What the background tasks (relay, sweeper, retention) share. They stop on `stop`, which fires after the
/// drain, so that the relay's last pass still has the broker.
#[derive(Clone)]
struct Background {
    pool: Pool,
    /// The current broker session's publisher; `None` between sessions.
    publisher: watch::Receiver<Option<Publisher>>,
    topology: Topology,
    metrics: Metrics,
    stop: CancellationToken,
    /// Whether this replica may take another for dead, kept by the heartbeat.
    liveness: Liveness,
}

/// Where the session loop announces each new broker session.
struct SessionLinks {
    connection: watch::Sender<Option<Arc<Connection>>>,
    publisher: watch::Sender<Option<Publisher>>,
    /// Told once, when the worker first consumes.
    started: Option<oneshot::Sender<Running>>,
    running: Running,
}

/// Runs the worker until `shutdown` is cancelled, then drains and returns. `started` receives
/// the running worker's handles once it first consumes.
pub async fn run(
    settings: WorkerSettings,
    shutdown: CancellationToken,
    started: Option<oneshot::Sender<Running>>,
) -> anyhow::Result<()> {
    // Refused before anything connects: a worker without a provider must not take jobs.
    settings.llm.provider_kind()?;
    // Nor may one open an operator page without its token.
    let admin_page = settings.admin.enabled()?;
    let owner = replica_id();
    let metrics = Metrics::new();
    let schema = if settings.migrate_on_start {
        store::Schema::Migrate
    } else {
        store::Schema::Require
    };
    let pool = store::connect_with(&settings.db, &format!("{APP_PREFIX}{owner}"), schema).await?;
    let (express_tx, express_rx) = mpsc::channel(store::outbox::EXPRESS_CAPACITY);
    let runner = job_runner(&settings, pool.clone(), metrics.clone(), owner.clone())?
        .with_express(ExpressLane::new(express_tx));
    let (connection_tx, connection_rx) = watch::channel(None);
    let (publisher_tx, publisher_rx) = watch::channel(None);
    let stop_background = CancellationToken::new();
    metrics
        .concurrency_limit
        .set(i64::from(settings.worker_concurrency));
    let health = Health {
        metrics: metrics.clone(),
        pool: pool.clone(),
        amqp: connection_rx,
        publisher_open: {
            let publisher = publisher_rx.clone();
            Arc::new(move || publisher.borrow().as_ref().is_some_and(Publisher::is_open))
        },
    };
    let metrics_addr = http::serve(settings.metrics_addr, health, stop_background.clone()).await?;
    let admin_addr = match admin_page {
        Some((addr, token)) => {
            let page = admin::Admin::new(pool.clone(), token, &settings);
            Some(admin::serve(addr, page, stop_background.clone()).await?)
        }
        None => None,
    };
    let topology = Topology::new(&settings.amqp.namespace, settings.amqp.delivery_limit);
    let background = Background {
        pool,
        publisher: publisher_rx.clone(),
        topology: topology.clone(),
        metrics: metrics.clone(),
        stop: stop_background.clone(),
        liveness: runner.liveness().clone(),
    };
    let relay = tokio::spawn(relay::run(background.clone()));
    let express = tokio::spawn(relay::express(background.clone(), express_rx));
    let sweeper = tokio::spawn(sweeper::run(
        background.clone(),
        settings.lease(),
        settings.sweep_interval(),
    ));
    let retention = tokio::spawn(retention::run(background, settings.retain()));
    let ctx = Arc::new(Context {
        runner,
        publisher: publisher_rx,
        topology,
        metrics: metrics.clone(),
        settings: IntakeSettings::from_settings(&settings),
        intake: IntakeState {
            paused: watch::Sender::new(Paused::default()),
            bulk: lanes::BulkJobs::default(),
        },
        drain: Drain {
            shutdown,
            abort: CancellationToken::new(),
        },
    });
    // A beat that fails pauses intake at once; the probe that resumes it is intake's own.
    let heartbeat = tokio::spawn(store::heartbeat::run(
        ctx.runner.pool().clone(),
        owner.clone(),
        ctx.runner.liveness().clone(),
        stop_background.clone(),
        {
            let ctx = Arc::downgrade(&ctx);
            move || {
                if let Some(ctx) = ctx.upgrade() {
                    ctx.pause(Dependency::Database);
                }
            }
        },
    ));
    let links = SessionLinks {
        connection: connection_tx,
        publisher: publisher_tx,
        started,
        running: Running {
            metrics,
            metrics_addr,
            admin_addr,
            owner,
        },
    };
    let mut tasks = JoinSet::new();
    let last_session = sessions(&settings, &ctx, links, &mut tasks).await?;
    drain(&ctx, &mut tasks, settings.shutdown_grace()).await;
    // The relay's last pass needs the broker, so it stops before the connection closes.
    stop_background.cancel();
    let _ = relay.await;
    let _ = express.await;
    let _ = sweeper.await;
    let _ = retention.await;
    let _ = heartbeat.await;
    if let Some((connection, channel)) = last_session {
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

/// The job runner of replica `owner`, on the configured provider.
fn job_runner(
    settings: &WorkerSettings,
    pool: Pool,
    metrics: Metrics,
    owner: String,
) -> anyhow::Result<JobRunner> {
    // Two answers per database connection: one being stored, one parsed and ready for the next.
    let gate = AnswerGate::new(
        2 * settings.db.pool_size as usize,
        metrics.answers_unadmitted.clone(),
    );
    let provider = Provider::from_settings(&settings.llm, gate)?;
    metrics.provider_ready.set(1);
    info!(
        provider = provider.name(),
        model = provider.model(),
        db = %settings.db.url,
        amqp = %settings.amqp.url,
        "worker starting"
    );
    let budget = Budget::new(
        &settings.budget,
        pool.clone(),
        (provider.name(), provider.model()),
        metrics.clone(),
        Duration::from_millis(settings.llm.max_retry_delay_ms),
    );
    let ladder = LadderSettings {
        prices: Prices::from_settings(&settings.budget),
        quality_checks: settings.batch.quality_checks,
        ..LadderSettings::from_settings(&settings.llm, settings.batch.context_days)
    };
    let generator = Generator::new(provider, ladder, metrics, budget);
    Ok(JobRunner::new(settings, pool, generator, owner))
}

/// One broker session per pass: connect, declare, consume until shutdown (returns the last
/// session, to close after the drain) or a broker failure (reconnects with backoff). Jobs run
/// as tasks in `tasks` and outlive a failed session.
async fn sessions(
    settings: &WorkerSettings,
    ctx: &Arc<Context>,
    mut links: SessionLinks,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Option<(Arc<Connection>, Channel)>> {
    let slots = Arc::new(Semaphore::new(ctx.settings.concurrency as usize));
    ctx.metrics
        .worker_slots_free
        .set(i64::from(ctx.settings.concurrency));
    let mut backoff = reconnect_backoff();
    let mut sessions = 0u32;
    loop {
        let session = tokio::select! {
            s = open_session(settings, &ctx.topology, &links.running.owner, ctx.settings.concurrency) => s,
            () = ctx.drain.shutdown.cancelled() => return Ok(None),
        };
        let BrokerSession {
            connection,
            publisher,
            jobs,
        } = match session {
            Ok(s) => s,
            // A broker that is unreachable at start is a configuration problem: say so.
            Err(e) if sessions == 0 => return Err(e),
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                warn!(
                    error = format!("{e:#}"),
                    delay_ms = delay.as_millis() as u64,
                    "broker unavailable; retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue,
                    () = ctx.drain.shutdown.cancelled() => return Ok(None),
                }
            }
        };
        sessions += 1;
        if sessions > 1 {
            ctx.metrics.amqp_reconnects.inc();
            info!(sessions, "broker session re-established; topology declared again");
        }
        backoff = reconnect_backoff();
        links.connection.send_replace(Some(connection.clone()));
        links.publisher.send_replace(Some(publisher));
        // They end with the session's connection; the next session starts others.
        tokio::spawn(cancel::run(connection.clone(), ctx.clone()));
        tokio::spawn(recover::run(connection.clone(), ctx.clone()));
        tokio::spawn(keep_publisher(
            connection.clone(),
            links.publisher.clone(),
            ctx.clone(),
        ));
        if let Some(tx) = links.started.take() {
            let _ = tx.send(links.running.clone());
        }
        match consume::consume(&jobs, ctx, &slots, tasks).await {
            Ok(()) => return Ok(Some((connection, jobs))),
            Err(e) => {
                // Jobs in flight go on: Postgres holds their state, and their redelivered
                // messages wait for them (the owner is alive) instead of starting them again.
                warn!(error = format!("{e:#}"), "broker session lost; reconnecting");
                links.publisher.send_replace(None);
            }
        }
    }
}

/// One broker session: a connection and its channels, each consumer on its own so that each
/// keeps its own prefetch.
struct BrokerSession {
    connection: Arc<Connection>,
    /// Confirmed publishing (events, hand-backs, dead letters).
    publisher: Publisher,
    /// The work queues' consumers, with prefetch `WORKER_CONCURRENCY`. The cancel and
    /// recovery consumers open channels of their own (see [`keep_consuming`]).
    jobs: Channel,
}

/// Connects, declares the topology, and opens the publisher and the consumers' channels.
async fn open_session(
    settings: &WorkerSettings,
    topology: &Topology,
    owner: &str,
    concurrency: u16,
) -> anyhow::Result<BrokerSession> {
    let connection = Arc::new(amqp::connect(&settings.amqp, owner).await?);
    let setup = connection.create_channel().await.context("opening a channel")?;
    topology
        .declare(&setup)
        .await
        .context("declaring the RabbitMQ topology")?;
    let _ = setup.close(200, "topology declared".into()).await;
    let publisher = Publisher::new(&connection).await?;
    let jobs = connection
        .create_channel()
        .await
        .context("opening the consumer channel")?;
    // Two bounds: the broker sends no more than we can work; the semaphore enforces it.
    jobs.basic_qos(concurrency, BasicQosOptions::default()).await?;
    Ok(BrokerSession {
        connection,
        publisher,
        jobs,
    })
}

/// A broker session that failed is opened again after 0.25 s, doubling to 15 s, for good.
const RECONNECT: RetryPolicy = RetryPolicy::new(Duration::from_millis(250), Duration::from_secs(15));

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    RECONNECT.backoff().build()
}

/// How long jobs get, after the grace period, to stop their batch in flight and hand back.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// Waits for in-flight jobs; they stop between batches once shutdown is signalled and hand
/// their jobs back. After the grace period they stop the batch in flight too (a batch can take
/// longer than any grace), release their leases and hand back; what is still left after that
/// is aborted, its leases released here, its deliveries returned when the channel closes.
async fn drain(ctx: &Context, tasks: &mut JoinSet<()>, grace: Duration) {
    while tasks.try_join_next().is_some() {}
    if tasks.is_empty() {
        return;
    }
    info!(
        in_flight = tasks.len(),
        grace_secs = grace.as_secs(),
        "draining in-flight jobs"
    );
    if join_within(tasks, grace).await {
        return;
    }
    warn!(
        left = tasks.len(),
        "grace period over; stopping the batches in flight"
    );
    ctx.drain.abort.cancel();
    if !join_within(tasks, ABORT_GRACE).await {
        warn!(left = tasks.len(), "jobs did not stop; aborting them");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    let release = ctx.runner.release_held();
    if tokio::time::timeout(ABORT_GRACE, release).await.is_err() {
        warn!("could not release every lease in time; they will expire");
    }
}

/// Whether every task ended within `within`.
async fn join_within(tasks: &mut JoinSet<()>, within: Duration) -> bool {
    let all = async { while tasks.join_next().await.is_some() {} };
    tokio::time::timeout(within, all).await.is_ok()
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
