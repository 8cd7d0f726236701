//! Exchange and queue names, and their idempotent declaration at start.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

/// The routing key of job messages (contract v1).
pub const JOB_ROUTING_KEY: &str = "roadmap.generate";

/// Names derived from a namespace; the default namespace `roadmap` gives the contract's names:
/// `roadmap.jobs`, `roadmap.generate`, `roadmap.events`, plus `roadmap.dlx` and
/// `roadmap.generate.dead` for dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub jobs_exchange: String,
    pub queue: String,
    pub events_exchange: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Deliveries of one message before the broker dead-letters it as poison.
    pub delivery_limit: u32,
}

impl Topology {
    pub fn new(namespace: &str, delivery_limit: u32) -> Self {
        Self {
            jobs_exchange: format!("{namespace}.jobs"),
            queue: format!("{namespace}.generate"),
            events_exchange: format!("{namespace}.events"),
            dead_letter_exchange: format!("{namespace}.dlx"),
            dead_letter_queue: format!("{namespace}.generate.dead"),
            delivery_limit,
        }
    }

    /// Declares everything; safe to run from every replica at every start.
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
                self.events_exchange.as_str().into(),
                ExchangeKind::Topic,
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
        let mut dead_args = FieldTable::default();
        dead_args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(self.dead_letter_queue.as_str().into(), queue_options, dead_args)
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                JOB_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
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
            .queue_declare(self.queue.as_str().into(), queue_options, args)
            .await?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.jobs_exchange.as_str().into(),
                JOB_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}
