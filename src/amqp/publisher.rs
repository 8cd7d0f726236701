//! Publishing with publisher confirms: a message counts as sent only once the broker confirms it.

use anyhow::Context as _;
use lapin::{
    BasicProperties, Channel, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};

/// Why a message did not reach a queue. Every variant means "not sent": the caller keeps the
/// message (outbox row, unsettled delivery) and tries again or hands it to the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Between broker sessions: there is no channel to publish on.
    #[error("no broker session")]
    NotConnected,
    /// The broker refused the message (a negative confirm).
    #[error("the broker refused a message to {exchange}")]
    Nacked { exchange: String },
    /// A mandatory message that no queue took.
    #[error("no queue took a message to {exchange} with key {routing_key}: {reply}")]
    Unroutable {
        exchange: String,
        routing_key: String,
        reply: String,
    },
    /// The broker did not confirm within [`PUBLISH_TIMEOUT`] (a resource alarm blocks
    /// publishers, a partition drops the frames): not known to be sent.
    #[error("the broker did not confirm a message to {exchange} within {PUBLISH_TIMEOUT:?}")]
    TimedOut { exchange: String },
    #[error("publishing to {exchange}: {source}")]
    Lapin {
        exchange: String,
        #[source]
        source: lapin::Error,
    },
}

/// How long a publish waits for the broker's confirm before it counts as not sent.
pub const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A confirm-mode channel; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("channel", &self.channel.id())
            .finish()
    }
}

impl Publisher {
    pub async fn new(connection: &Connection) -> anyhow::Result<Self> {
        let channel = connection.create_channel().await.context("opening a channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        Ok(Self { channel })
    }

    /// Publishes a persistent JSON message and waits for the broker's confirm. With `mandatory`,
    /// a message that no queue takes is an error rather than silently dropped.
    pub async fn publish_json(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: Option<&str>,
        headers: Option<FieldTable>,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let mut props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2);
        if let Some(id) = message_id {
            props = props.with_message_id(id.into());
        }
        if let Some(headers) = headers {
            props = props.with_headers(headers);
        }
        self.publish(exchange, routing_key, body, props, mandatory).await
    }

    /// Whether the channel is open: the broker closes it on a channel error (a 406 for a
    /// property it refuses, say), and every publish on it fails from then on.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes and waits for the confirm, at most [`PUBLISH_TIMEOUT`].
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let timed_out = || PublishError::TimedOut {
            exchange: exchange.to_owned(),
        };
        let lapin = |source| PublishError::Lapin {
            exchange: exchange.to_owned(),
            source,
        };
        let sent = async {
            self.channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..Default::default()
                    },
                    body,
                    props,
                )
                .await
                .map_err(lapin)?
                .await
                .map_err(lapin)
        };
        let confirm = tokio::time::timeout(PUBLISH_TIMEOUT, sent)
            .await
            .map_err(|_| timed_out())??;
        if confirm.is_nack() {
            return Err(PublishError::Nacked {
                exchange: exchange.to_owned(),
            });
        }
        if let Some(returned) = confirm.take_message() {
            return Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                reply: returned.reply_text.to_string(),
            });
        }
        Ok(())
    }
}
