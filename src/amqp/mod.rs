//! RabbitMQ: connecting, the topology every replica declares, publishing with confirms, and
//! properties as readable JSON (how dead letters keep them).

pub mod properties;
mod publisher;
pub mod topology;

use anyhow::Context as _;
use lapin::{Connection, ConnectionProperties, uri::AMQPUri};

use crate::config::AmqpSettings;

pub use publisher::{PublishError, Publisher};
pub use topology::Topology;

/// The largest frame proposed to the broker when the URL's `frame_max` names none. lapin holds
/// a send and a receive buffer of 32 frames each, zero-filled, for the connection's life: at
/// RabbitMQ's 128 KiB default that is 8 MiB resident in every replica. A message larger than a
/// frame travels in several, which costs nothing that shows.
const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

/// Connects to the broker named in `settings`; errors carry the URL with its password masked.
pub async fn connect(settings: &AmqpSettings, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let redacted =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("{}", crate::config::redact_url(&e.to_string()));
    let connected = match settings.url.expose().parse::<AMQPUri>() {
        Ok(mut uri) => {
            uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
            Connection::connect_uri(uri, props)
                .await
                .map_err(|e| redacted(&e))
        }
        Err(e) => Err(redacted(&e)),
    };
    connected.with_context(|| {
            format!(
                "connecting to RabbitMQ at {} (is it running? `rabbitmq-server -detached` or `docker compose up -d rabbitmq`)",
                settings.url
            )
        })
}
