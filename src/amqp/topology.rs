//! Exchange and queue names, and their idempotent declaration at start.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

/// The routing key of job messages (contract v1).
pub const JOB_ROUTING_KEY: &str = "roadmap.generate";
/// The routing key of bulk jobs: their own work queue, consumed only with a slot to spare.
pub const BULK_ROUTING_KEY: &str = "roadmap.generate.bulk";
/// The routing key of cancel messages (a job's user asks to stop it).
pub const CANCEL_ROUTING_KEY: &str = "roadmap.cancel";
/// The routing key on the dead-letter exchange of messages the worker refused, with their
/// reason in `x-reject-reason`. Messages the broker dead-letters itself (the work queue's
/// delivery limit) keep [`JOB_ROUTING_KEY`] and go to the recovery queue instead.
pub const REJECTED_ROUTING_KEY: &str = "roadmap.generate.rejected";

/// Names derived from a namespace; the default namespace `roadmap` gives the contract's names:
/// `roadmap.jobs`, `roadmap.generate`, `roadmap.events`, plus `roadmap.dlx` and
/// `roadmap.generate.dead` for dead letters, `roadmap.generate.retry` for delayed retries and
/// `roadmap.generate.recover` for what the broker dead-letters on its own, and
/// `roadmap.cancel.retry` and `roadmap.generate.recover.retry`, where a cancel or a recovery
/// that met a database error waits on a path of its own, never the job path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub jobs_exchange: String,
    pub queue: String,
    /// Bulk jobs (`priority: "bulk"`, routing key [`BULK_ROUTING_KEY`]).
    pub bulk_queue: String,
    /// Cancel messages (routing key [`CANCEL_ROUTING_KEY`]), taken by any replica.
    pub cancel_queue: String,
    pub events_exchange: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Jobs waiting out a database outage (every other wait is kept in Postgres): each message
    /// carries the same TTL and expires back into the work queue, so waiting spends none of the
    /// work queue's delivery limit.
    pub retry_queue: String,
    /// Cancels waiting out a database outage; they expire back into the cancel queue.
    pub cancel_retry_queue: String,
    /// Recoveries waiting out a database outage; they expire back into the recovery queue.
    pub recover_retry_queue: String,
    /// Messages the broker dead-lettered without the worker's say (delivery limit); the worker
    /// consumes it and gives each an account (back to work, or failed with an event).
    pub recover_queue: String,
    /// Deliveries of one message before the broker dead-letters it as poison.
    pub delivery_limit: u32,
}

impl Topology {
    pub fn new(namespace: &str, delivery_limit: u32) -> Self {
        Self {
            jobs_exchange: format!("{namespace}.jobs"),
            queue: format!("{namespace}.generate"),
            bulk_queue: format!("{namespace}.generate.bulk"),
            cancel_queue: format!("{namespace}.cancel"),
            events_exchange: format!("{namespace}.events"),
            dead_letter_exchange: format!("{namespace}.dlx"),
            dead_letter_queue: format!("{namespace}.generate.dead"),
            retry_queue: format!("{namespace}.generate.retry"),
            recover_queue: format!("{namespace}.generate.recover"),
            cancel_retry_queue: format!("{namespace}.cancel.retry"),
            recover_retry_queue: format!("{namespace}.generate.recover.retry"),
            delivery_limit,
        }
    }

    /// Every queue, for tools and tests that remove a namespace.
    pub fn queues(&self) -> [&str; 8] {
        [
            &self.queue,
            &self.cancel_retry_queue,
            &self.recover_retry_queue,
            &self.bulk_queue,
            &self.cancel_queue,
            &self.dead_letter_queue,
            &self.retry_queue,
            &self.recover_queue,
        ]
    }

    /// What [`Self::declare`] declares, in its order: exchanges, then queues with their
    /// arguments and bindings, the events exchange last. `declare --print` shows it, for a
    /// backend that declares the topology itself.
    pub fn spec(&self) -> Spec {
        let text = |v: &str| Arg::Text(v.to_owned());
        let quorum = || vec![("x-queue-type", text("quorum"))];
        let work = || {
            vec![
                ("x-queue-type", text("quorum")),
                ("x-dead-letter-exchange", text(&self.dead_letter_exchange)),
                ("x-dead-letter-routing-key", text(JOB_ROUTING_KEY)),
                ("x-delivery-limit", Arg::Int(i64::from(self.delivery_limit))),
            ]
        };
        // Classic queues: per-message TTLs expire in order because every message in one of
        // them waits as long, and an expired message is dead-lettered back where it came from.
        let retry = |exchange: &str, key: &str| {
            vec![
                ("x-dead-letter-exchange", text(exchange)),
                ("x-dead-letter-routing-key", text(key)),
            ]
        };
        let queue = |name: &str, arguments, bound_to: &[(&str, &str)]| QueueSpec {
            name: name.to_owned(),
            arguments,
            bindings: bound_to
                .iter()
                .map(|(e, k)| ((*e).to_owned(), (*k).to_owned()))
                .collect(),
        };
        let (jobs, dlx) = (self.jobs_exchange.as_str(), self.dead_letter_exchange.as_str());
        Spec {
            exchanges: vec![
                (self.jobs_exchange.clone(), ExchangeKind::Direct),
                (self.dead_letter_exchange.clone(), ExchangeKind::Direct),
            ],
            queues: vec![
                queue(&self.dead_letter_queue, quorum(), &[(dlx, REJECTED_ROUTING_KEY)]),
                queue(&self.recover_queue, quorum(), &[(dlx, JOB_ROUTING_KEY)]),
                queue(&self.retry_queue, retry(jobs, JOB_ROUTING_KEY), &[]),
                queue(&self.cancel_retry_queue, retry(jobs, CANCEL_ROUTING_KEY), &[]),
                queue(&self.recover_retry_queue, retry(dlx, JOB_ROUTING_KEY), &[]),
                queue(&self.queue, work(), &[(jobs, JOB_ROUTING_KEY)]),
                // The same rules as the work queue: delivery limit, dead letters to recovery.
                queue(&self.bulk_queue, work(), &[(jobs, BULK_ROUTING_KEY)]),
                queue(&self.cancel_queue, quorum(), &[(jobs, CANCEL_ROUTING_KEY)]),
            ],
            // Last: a backend that waits for the events exchange (to bind its queue before its
            // first job) then finds every work queue bound, and no job it publishes is returned.
            events_exchange: (self.events_exchange.clone(), ExchangeKind::Topic),
        }
    }

    /// Declares everything in [`Self::spec`]; safe to run from every replica at every start,
    /// and from a backend's `roadmap-worker declare`.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let spec = self.spec();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, kind) in &spec.exchanges {
            channel
                .exchange_declare(name.as_str().into(), kind.clone(), durable, FieldTable::default())
                .await?;
        }
        let queue_options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for queue in &spec.queues {
            let mut args = FieldTable::default();
            for (name, value) in &queue.arguments {
                args.insert(ShortString::from(*name), value.to_amqp());
            }
            channel
                .queue_declare(queue.name.as_str().into(), queue_options, args)
                .await?;
            for (exchange, key) in &queue.bindings {
                self.bind(channel, &queue.name, exchange, key).await?;
            }
        }
        // Earlier versions bound the dead-letter queue to the broker's own dead letters too;
        // those now go to the recovery queue, so that none ends there without an account.
        channel
            .queue_unbind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                JOB_ROUTING_KEY.into(),
                FieldTable::default(),
            )
            .await?;
        let (name, kind) = &spec.events_exchange;
        channel
            .exchange_declare(name.as_str().into(), kind.clone(), durable, FieldTable::default())
            .await
    }

    async fn bind(&self, channel: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

/// A queue argument's value, as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Text(String),
    Int(i64),
}

impl Arg {
    fn to_amqp(&self) -> AMQPValue {
        match self {
            Self::Text(text) => AMQPValue::LongString(text.as_str().into()),
            Self::Int(n) => AMQPValue::LongInt(i32::try_from(*n).unwrap_or(i32::MAX)),
        }
    }

    /// As JSON, for `declare --print --json`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Text(text) => text.as_str().into(),
            Self::Int(n) => (*n).into(),
        }
    }
}

/// A durable queue, its arguments and its bindings (exchange, routing key).
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: Vec<(&'static str, Arg)>,
    pub bindings: Vec<(String, String)>,
}

/// Everything the worker declares; every exchange and queue is durable.
#[derive(Debug, Clone)]
pub struct Spec {
    pub exchanges: Vec<(String, ExchangeKind)>,
    pub queues: Vec<QueueSpec>,
    pub events_exchange: (String, ExchangeKind),
}
