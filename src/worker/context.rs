//! What the worker's job tasks and consumers share, by role: their dependencies, the settings
//! of intake converted once, the state intake changes, and the drain's signals.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lanes;
use crate::{
    amqp::{self, Publisher, Topology},
    config::WorkerSettings,
    metrics::{Dependency, Metrics},
    pipeline::job::JobRunner,
};

/// What every job task and consumer shares: its dependencies, then the settings, the shared
/// state and the drain's signals, each a value of its own.
pub(super) struct Context {
    pub(super) runner: JobRunner,
    /// The current broker session's publisher; `None` between sessions.
    pub(super) publisher: watch::Receiver<Option<Publisher>>,
    pub(super) topology: Topology,
    pub(super) metrics: Metrics,
    pub(super) settings: IntakeSettings,
    pub(super) intake: IntakeState,
    pub(super) drain: Drain,
}

/// The settings of intake and settling, converted once from [`WorkerSettings`].
#[derive(Debug, Clone, Copy)]
pub(super) struct IntakeSettings {
    /// Jobs in flight at once (`WORKER_CONCURRENCY`): the broker's prefetch and the slots.
    pub(super) concurrency: u16,
    /// How often a paused dependency is probed.
    pub(super) probe_interval: Duration,
    /// How long a job handed back during a database outage waits in the retry queue.
    pub(super) retry_delay: Duration,
    /// Times a message the broker dead-lettered is returned to work before its job fails.
    pub(super) recover_limit: u32,
    /// How long a delivery stays unacked before a long job acks it and Postgres tracks it.
    pub(super) ack_deadline: Duration,
}

impl IntakeSettings {
    pub(super) fn from_settings(settings: &WorkerSettings) -> Self {
        Self {
            concurrency: settings.worker_concurrency,
            probe_interval: settings.llm.probe_interval(),
            retry_delay: settings.retry_delay(),
            recover_limit: settings.recover_limit,
            ack_deadline: settings.ack_deadline(),
        }
    }
}

/// What intake's tasks change while the worker runs.
pub(super) struct IntakeState {
    /// Dependencies found down (Postgres past its retries, the provider refusing our key or
    /// model); intake stays paused while any is, until a probe passes.
    pub(super) paused: watch::Sender<Paused>,
    /// The bulk jobs running here, to ask one to yield its slot to an interactive job.
    pub(super) bulk: lanes::BulkJobs,
}

/// The drain's two signals, in the order they fire.
#[derive(Debug, Clone, Default)]
pub(super) struct Drain {
    /// Stops intake, and jobs between batches (the injected shutdown signal).
    pub(super) shutdown: CancellationToken,
    /// The grace is over: jobs stop the batch in flight too, and hand back.
    pub(super) abort: CancellationToken,
}

/// The dependencies that intake waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Paused {
    pub(super) database: bool,
    pub(super) provider: bool,
}

impl Paused {
    pub(super) fn any(self) -> bool {
        self.database || self.provider
    }
}

impl Context {
    pub(super) fn publisher(&self) -> Option<Publisher> {
        self.publisher.borrow().clone()
    }

    /// Publishes a job message to the work queue (mandatory, confirmed).
    pub(super) async fn publish_job(
        &self,
        body: &[u8],
        props: lapin::BasicProperties,
        routing_key: &str,
    ) -> Result<(), amqp::PublishError> {
        let publisher = self.publisher().ok_or(amqp::PublishError::NotConnected)?;
        publisher
            .publish(&self.topology.jobs_exchange, routing_key, body, props, true)
            .await
    }

    /// Publishes a message to `queue`, a retry queue, to wait there for `delay` (its TTL) and
    /// expire back to where the queue sends it. `props` should be [`amqp::republished`].
    pub(super) async fn publish_delayed(
        &self,
        queue: &str,
        body: &[u8],
        props: lapin::BasicProperties,
        delay: Duration,
    ) -> Result<(), amqp::PublishError> {
        let publisher = self.publisher().ok_or(amqp::PublishError::NotConnected)?;
        let props = props.with_expiration(delay.as_millis().to_string().into());
        publisher.publish("", queue, body, props, true).await
    }

    /// Pauses intake until `dependency` passes a probe.
    pub(super) fn pause(&self, dependency: Dependency) {
        self.set_paused(dependency, true);
    }

    pub(super) fn set_paused(&self, dependency: Dependency, down: bool) {
        self.intake.paused.send_modify(|p| match dependency {
            Dependency::Database => p.database = down,
            Dependency::Provider => p.provider = down,
        });
        self.metrics.set_intake_paused(dependency, down);
        if dependency == Dependency::Provider {
            self.metrics.provider_ready.set(i64::from(!down));
        }
    }
}
