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

/// Headers the broker writes when it dead-letters a message. A copy that carries them back into
/// a queue it expired from before is taken for a dead-letter cycle and dropped by RabbitMQ up to
/// 3.13, and `x-delivery-count` belongs to the delivery, not the message.
const BROKER_HEADERS: [&str; 8] = [
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
    "x-delivery-count",
];

/// The properties of a message the worker publishes again (a hand-back, a recovery, a wait
/// through a retry queue): persistent whatever the backend chose, and without the broker's
/// dead-letter history.
pub fn republished(props: &lapin::BasicProperties) -> lapin::BasicProperties {
    let mut props = props.clone().with_delivery_mode(2);
    if let Some(headers) = props.headers() {
        let kept: std::collections::BTreeMap<_, _> = headers
            .inner()
            .iter()
            .filter(|(k, _)| !BROKER_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        props = props.with_headers(lapin::types::FieldTable::from(kept));
    }
    props
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable};

    #[test]
    fn a_republished_copy_is_persistent_and_forgets_its_dead_letter_history() {
        let mut headers = FieldTable::default();
        headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        headers.insert("x-delivery-count".into(), AMQPValue::LongInt(3));
        headers.insert("traceparent".into(), AMQPValue::LongString("00-ab".into()));
        let props = lapin::BasicProperties::default().with_headers(headers);
        let copy = super::republished(&props);
        assert_eq!(*copy.delivery_mode(), Some(2));
        let kept = copy.headers().as_ref().unwrap().inner();
        assert_eq!(
            kept.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["traceparent"]
        );
    }
}
