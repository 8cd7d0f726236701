//! RabbitMQ: connecting, the topology every replica declares, and publishing with confirms.

mod publisher;
pub mod topology;

use anyhow::Context as _;
use lapin::{Connection, ConnectionProperties};

use crate::config::AmqpSettings;

pub use publisher::{PublishError, Publisher};
pub use topology::Topology;

/// Connects to the broker named in `settings`; errors carry the URL with its password masked.
pub async fn connect(settings: &AmqpSettings, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(settings.url.expose(), props)
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::config::redact_url(&e.to_string())))
        .with_context(|| {
            format!(
                "connecting to RabbitMQ at {} (is it running? `rabbitmq-server -detached` or `docker compose up -d rabbitmq`)",
                settings.url
            )
        })
}
