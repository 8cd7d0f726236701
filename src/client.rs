//! The web backend's side of the contract: publish a job, watch its events. Used by `enqueue`,
//! `demo` and the tests, so all three speak to the worker exactly as a real backend would.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use lapin::{
    Channel, Connection, Consumer,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    amqp::{
        Publisher, Topology,
        properties::JOB_ID_HEADER,
        topology::{BULK_ROUTING_KEY, CANCEL_ROUTING_KEY, JOB_ROUTING_KEY},
    },
    domain::event::EventKind,
};

/// Publishes a job body to the jobs exchange as the README tells a backend to: `mandatory`
/// (fails if no queue takes it), confirmed, with the body's job_id also in the `job_id` header
/// and as `message_id`. A body with `"priority": "bulk"` goes with the bulk routing key.
pub async fn publish_job(publisher: &Publisher, topology: &Topology, body: &[u8]) -> anyhow::Result<()> {
    let value = serde_json::from_slice::<Value>(body).ok();
    let field = |name: &str| value.as_ref().and_then(|v| v.get(name)).and_then(Value::as_str);
    let key = if field("priority") == Some("bulk") {
        BULK_ROUTING_KEY
    } else {
        JOB_ROUTING_KEY
    };
    let job_id = field("job_id").map(str::to_owned);
    let headers = job_id.as_deref().map(|id| {
        let mut headers = FieldTable::default();
        headers.insert(JOB_ID_HEADER.into(), AMQPValue::LongString(id.to_owned().into()));
        headers
    });
    publisher
        .publish_json(
            &topology.jobs_exchange,
            key,
            body,
            job_id.as_deref(),
            headers,
            true,
        )
        .await
        .context("publishing the job (is a worker's topology declared? run the worker once)")
}

/// Publishes a cancel message for `job_id` as its user `user_id` would.
pub async fn publish_cancel(
    publisher: &Publisher,
    topology: &Topology,
    job_id: Uuid,
    user_id: &str,
) -> anyhow::Result<()> {
    let body = serde_json::json!({"job_id": job_id, "user_id": user_id}).to_string();
    publisher
        .publish_json(
            &topology.jobs_exchange,
            CANCEL_ROUTING_KEY,
            body.as_bytes(),
            None,
            None,
            true,
        )
        .await
        .context("publishing the cancel (is a worker's topology declared? run the worker once)")
}

/// Events of other jobs kept while waiting for one job.
const MAX_HELD: usize = 10_000;

/// An event as received, with its AMQP message id and its string headers (`event`,
/// `job_id`, `user_id`).
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: Value,
}

impl ReceivedEvent {
    /// `None` for a routing key that names no event this worker sends.
    pub fn kind(&self) -> Option<EventKind> {
        self.routing_key.parse().ok()
    }
}

/// A private, auto-deleted queue bound to every event; create it before publishing the job.
pub struct EventWatcher {
    _channel: Channel,
    consumer: Consumer,
    /// Events of other jobs seen while waiting for one job, kept for later calls.
    held: std::collections::VecDeque<ReceivedEvent>,
}

impl std::fmt::Debug for EventWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWatcher").finish_non_exhaustive()
    }
}

impl EventWatcher {
    pub async fn new(connection: &Connection, topology: &Topology) -> anyhow::Result<Self> {
        let channel = connection.create_channel().await?;
        // Declare the exchange too, so watching works before any worker has started.
        channel
            .exchange_declare(
                topology.events_exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                topology.events_exchange.as_str().into(),
                "roadmap.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            _channel: channel,
            consumer,
            held: std::collections::VecDeque::new(),
        })
    }

    /// The next event of any job, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<ReceivedEvent>> {
        if let Some(event) = self.held.pop_front() {
            return Ok(Some(event));
        }
        self.receive(timeout).await
    }

    async fn receive(&mut self, timeout: Duration) -> anyhow::Result<Option<ReceivedEvent>> {
        let Ok(next) = tokio::time::timeout(timeout, self.consumer.next()).await else {
            return Ok(None);
        };
        let Some(delivery) = next else {
            bail!("the event consumer was closed");
        };
        let delivery = delivery?;
        let headers = delivery
            .properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .filter_map(|(k, v)| match v {
                        AMQPValue::LongString(s) => Some((k.to_string(), s.to_string())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(ReceivedEvent {
            routing_key: delivery.routing_key.to_string(),
            message_id: delivery.properties.message_id().as_ref().map(|s| s.to_string()),
            headers,
            body: serde_json::from_slice(&delivery.data).context("an event that is not JSON")?,
        }))
    }

    /// Waits for `job_id`'s completed or failed event (or the rejection of a cancel for it),
    /// handing its acceptance and progress events to `on_progress`.
    pub async fn wait_for_end(
        &mut self,
        job_id: Uuid,
        timeout: Duration,
        mut on_progress: impl FnMut(&ReceivedEvent),
    ) -> anyhow::Result<ReceivedEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = job_id.to_string();
        let is_ours = |e: &ReceivedEvent| e.body.get("job_id").and_then(Value::as_str) == Some(id.as_str());
        // Events of this job that arrived during an earlier wait come first, in order.
        let mut earlier: std::collections::VecDeque<ReceivedEvent> = std::collections::VecDeque::new();
        self.held.retain(|e| {
            if is_ours(e) {
                earlier.push_back(e.clone());
                false
            } else {
                true
            }
        });
        loop {
            let event = match earlier.pop_front() {
                Some(event) => event,
                None => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let Some(event) = self.receive(left).await? else {
                        bail!("no completion event for job {job_id} within {timeout:?}");
                    };
                    event
                }
            };
            if !is_ours(&event) {
                // Bounded: a watcher on a busy exchange must not grow without limit.
                if self.held.len() == MAX_HELD {
                    self.held.pop_front();
                }
                self.held.push_back(event);
                continue;
            }
            match event.kind() {
                Some(EventKind::Accepted | EventKind::Progress) => on_progress(&event),
                Some(EventKind::Completed | EventKind::Failed | EventKind::CancelRejected) => {
                    return Ok(event);
                }
                None => {}
            }
        }
    }
}
