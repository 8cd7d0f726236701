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
/// through a retry queue): only what the job contract uses, persistent whatever the backend
/// chose, and without the broker's dead-letter history. Left out on purpose: `user_id` (the
/// broker checks it against the publishing connection's user and closes the channel with 406 on
/// a mismatch, so a backend's own user would break every re-publish), `expiration` (a TTL meant
/// for the first trip), `reply_to` and `cluster_id`.
pub fn republished(props: &lapin::BasicProperties) -> lapin::BasicProperties {
    let mut copy = lapin::BasicProperties::default().with_delivery_mode(2);
    if let Some(v) = props.content_type() {
        copy = copy.with_content_type(v.clone());
    }
    if let Some(v) = props.content_encoding() {
        copy = copy.with_content_encoding(v.clone());
    }
    if let Some(v) = props.priority() {
        copy = copy.with_priority(*v);
    }
    if let Some(v) = props.correlation_id() {
        copy = copy.with_correlation_id(v.clone());
    }
    if let Some(v) = props.message_id() {
        copy = copy.with_message_id(v.clone());
    }
    if let Some(v) = props.timestamp() {
        copy = copy.with_timestamp(*v);
    }
    if let Some(v) = props.kind() {
        copy = copy.with_type(v.clone());
    }
    if let Some(v) = props.app_id() {
        copy = copy.with_app_id(v.clone());
    }
    if let Some(headers) = props.headers() {
        let kept: std::collections::BTreeMap<_, _> = headers
            .inner()
            .iter()
            .filter(|(k, _)| !BROKER_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        copy = copy.with_headers(lapin::types::FieldTable::from(kept));
    }
    copy
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable};

    #[test]
    fn a_republished_copy_keeps_the_contracts_properties_only() {
        let mut headers = FieldTable::default();
        headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        headers.insert("x-delivery-count".into(), AMQPValue::LongInt(3));
        headers.insert("traceparent".into(), AMQPValue::LongString("00-ab".into()));
        let props = lapin::BasicProperties::default()
            .with_headers(headers)
            .with_user_id("backend-user".into())
            .with_expiration("5000".into())
            .with_message_id("m-1".into())
            .with_content_type("application/json".into());
        let copy = super::republished(&props);
        assert_eq!(*copy.delivery_mode(), Some(2));
        assert_eq!(*copy.user_id(), None, "the broker would refuse another user's id");
        assert_eq!(*copy.expiration(), None);
        assert_eq!(copy.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
        assert_eq!(
            copy.content_type().as_ref().map(|m| m.as_str()),
            Some("application/json")
        );
        let kept = copy.headers().as_ref().unwrap().inner();
        assert_eq!(
            kept.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["traceparent"]
        );
    }
}
