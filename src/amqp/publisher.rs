//! Publishing with publisher confirms: a message counts as sent only once the broker confirms it.

use anyhow::{Context as _, bail};
use lapin::{
    BasicProperties, Channel, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};

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
    ) -> anyhow::Result<()> {
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

    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
        mandatory: bool,
    ) -> anyhow::Result<()> {
        let confirm = self
            .channel
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
            .with_context(|| format!("publishing to {exchange}"))?
            .await
            .with_context(|| format!("waiting for the broker to confirm a message to {exchange}"))?;
        if confirm.is_nack() {
            bail!("the broker refused a message to {exchange}");
        }
        if let Some(returned) = confirm.take_message() {
            bail!(
                "no queue took a message to {exchange} with key {routing_key}: {}",
                returned.reply_text
            );
        }
        Ok(())
    }
}
