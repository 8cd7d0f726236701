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

    /// Declares everything; safe to run from every replica at every start. The events exchange
    /// comes last, once every queue is bound.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.jobs_exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        let queue_options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let quorum = || {
            let mut args = FieldTable::default();
            args.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString("quorum".into()),
            );
            args
        };
        channel
            .queue_declare(self.dead_letter_queue.as_str().into(), queue_options, quorum())
            .await?;
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
        self.bind(
            channel,
            &self.dead_letter_queue,
            &self.dead_letter_exchange,
            REJECTED_ROUTING_KEY,
        )
        .await?;
        channel
            .queue_declare(self.recover_queue.as_str().into(), queue_options, quorum())
            .await?;
        self.bind(
            channel,
            &self.recover_queue,
            &self.dead_letter_exchange,
            JOB_ROUTING_KEY,
        )
        .await?;
        // Classic queues: per-message TTLs expire in order because every message in one of
        // them waits as long, and an expired message is dead-lettered back where it came from.
        for (queue, exchange, key) in [
            (&self.retry_queue, &self.jobs_exchange, JOB_ROUTING_KEY),
            (&self.cancel_retry_queue, &self.jobs_exchange, CANCEL_ROUTING_KEY),
            (
                &self.recover_retry_queue,
                &self.dead_letter_exchange,
                JOB_ROUTING_KEY,
            ),
        ] {
            let mut retry_args = FieldTable::default();
            retry_args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(exchange.as_str().into()),
            );
            retry_args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(key.into()),
            );
            channel
                .queue_declare(queue.as_str().into(), queue_options, retry_args)
                .await?;
        }
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange.as_str().into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(JOB_ROUTING_KEY.into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(self.delivery_limit as i32),
        );
        channel
            .queue_declare(self.queue.as_str().into(), queue_options, args.clone())
            .await?;
        self.bind(channel, &self.queue, &self.jobs_exchange, JOB_ROUTING_KEY)
            .await?;
        // The same rules as the work queue: delivery limit, dead letters to the recovery queue.
        channel
            .queue_declare(self.bulk_queue.as_str().into(), queue_options, args)
            .await?;
        self.bind(channel, &self.bulk_queue, &self.jobs_exchange, BULK_ROUTING_KEY)
            .await?;
        channel
            .queue_declare(self.cancel_queue.as_str().into(), queue_options, quorum())
            .await?;
        self.bind(
            channel,
            &self.cancel_queue,
            &self.jobs_exchange,
            CANCEL_ROUTING_KEY,
        )
        .await?;
        // Last: a backend that waits for the events exchange (to bind its queue before its first
        // job) then finds every work queue bound, and no job it publishes is returned unroutable.
        channel
            .exchange_declare(
                self.events_exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
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
