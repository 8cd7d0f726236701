//! `roadmap-worker dlq`: the dead-letter queue for operators. `list` counts by reason and
//! shows each message's job, age and reason; `show` prints one; `replay` republishes matching
//! messages to the work queue with their original properties (a message still broken comes
//! back with its reason: nothing is lost); `purge` deletes matching ones, with `--yes`.
//!
//! Messages are read with `basic.get` and held unacknowledged while the command works; those it
//! does not replay or purge go back to the queue when its channel closes.

use std::collections::BTreeMap;

use anyhow::Context as _;
use lapin::{
    BasicProperties,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use serde_json::{Value, json};

use crate::{
    amqp::{
        self, Publisher, Topology,
        topology::{BULK_ROUTING_KEY, JOB_ROUTING_KEY},
    },
    cli::{DlqAction, DlqArgs},
};

/// Messages read at most in one run.
const MAX_MESSAGES: usize = 10_000;

/// One dead letter as read.
struct Letter {
    message: BasicGetMessage,
    reason: String,
    job_id: Option<String>,
    age_secs: Option<i64>,
}

fn header(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Letter {
    fn read(message: BasicGetMessage, now_ms: i64) -> Self {
        let headers = message.delivery.properties.headers().clone().unwrap_or_default();
        let reason = header(&headers, "x-reject-reason").unwrap_or_else(|| "(none)".into());
        let job_id = serde_json::from_slice::<Value>(&message.delivery.data)
            .ok()
            .and_then(|v| v.get("job_id").and_then(Value::as_str).map(str::to_owned))
            .or_else(|| {
                message
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
            });
        let age_secs = header(&headers, "x-dead-lettered-at")
            .and_then(|at| at.parse::<i64>().ok())
            .map(|at| (now_ms - at) / 1000);
        Self {
            message,
            reason,
            job_id,
            age_secs,
        }
    }

    fn matches(&self, reason: Option<&str>, job: Option<&str>) -> bool {
        reason.is_none_or(|r| r == self.reason) && job.is_none_or(|j| self.job_id.as_deref() == Some(j))
    }

    fn summary(&self, index: usize) -> Value {
        json!({
            "index": index,
            "reason": self.reason,
            "message": header(self.message.delivery.properties.headers().as_ref().unwrap_or(&FieldTable::default()), "x-reject-message"),
            "job_id": self.job_id,
            "age_secs": self.age_secs,
            "bytes": self.message.delivery.data.len(),
        })
    }
}

pub async fn dlq(args: DlqArgs) -> anyhow::Result<()> {
    let connection = amqp::connect(&args.amqp, "roadmap-dlq").await?;
    let topology = Topology::new(&args.amqp.namespace, args.amqp.delivery_limit);
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel.basic_qos(0, BasicQosOptions::default()).await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut letters = Vec::new();
    while letters.len() < MAX_MESSAGES {
        let got = channel
            .basic_get(
                topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .context("reading the dead-letter queue")?;
        match got {
            Some(message) => letters.push(Letter::read(message, now_ms)),
            None => break,
        }
    }
    let result = act(&args.action, &letters, &connection, &topology).await;
    // Everything not acked goes back to the queue, in its order.
    let _ = channel.close(200, "done".into()).await;
    result
}

async fn act(
    action: &DlqAction,
    letters: &[Letter],
    connection: &lapin::Connection,
    topology: &Topology,
) -> anyhow::Result<()> {
    match action {
        DlqAction::List { json } => {
            let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
            for l in letters {
                *by_reason.entry(l.reason.as_str()).or_default() += 1;
            }
            if *json {
                let all: Vec<Value> = letters.iter().enumerate().map(|(i, l)| l.summary(i)).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"count": letters.len(), "by_reason": by_reason, "messages": all})
                    )?
                );
                return Ok(());
            }
            println!("{} message(s) in {}", letters.len(), topology.dead_letter_queue);
            for (reason, n) in &by_reason {
                println!("  {n:>6}  {reason}");
            }
            for (i, l) in letters.iter().enumerate() {
                let age = l.age_secs.map_or("?".to_owned(), |s| format!("{s}s"));
                println!(
                    "#{i:<4} {:<26} job {:<36} age {age}",
                    l.reason,
                    l.job_id.as_deref().unwrap_or("(unreadable)")
                );
            }
        }
        DlqAction::Show { index, job } => {
            let letter = match (index, job) {
                (Some(i), _) => letters.get(*i),
                (None, Some(j)) => letters.iter().find(|l| l.job_id.as_deref() == Some(j.as_str())),
                (None, None) => letters.first(),
            }
            .context("no such message in the dead-letter queue")?;
            let props = &letter.message.delivery.properties;
            println!("reason       {}", letter.reason);
            for (k, v) in props
                .headers()
                .as_ref()
                .map(|h| h.inner().clone())
                .unwrap_or_default()
            {
                println!("header       {k} = {v:?}");
            }
            println!(
                "content_type {:?}",
                props.content_type().as_ref().map(|s| s.as_str())
            );
            println!(
                "message_id   {:?}",
                props.message_id().as_ref().map(|s| s.as_str())
            );
            println!(
                "body         {}",
                String::from_utf8_lossy(&letter.message.delivery.data)
            );
        }
        DlqAction::Replay {
            reason,
            job,
            content_type,
        } => {
            let publisher = Publisher::new(connection).await?;
            let mut replayed = 0;
            for l in letters
                .iter()
                .filter(|l| l.matches(reason.as_deref(), job.as_deref()))
            {
                let props = replay_properties(&l.message.delivery.properties, content_type.as_deref());
                let bulk = serde_json::from_slice::<Value>(&l.message.delivery.data)
                    .ok()
                    .is_some_and(|v| v.get("priority").and_then(Value::as_str) == Some("bulk"));
                let key = if bulk { BULK_ROUTING_KEY } else { JOB_ROUTING_KEY };
                publisher
                    .publish(
                        &topology.jobs_exchange,
                        key,
                        &l.message.delivery.data,
                        props,
                        true,
                    )
                    .await
                    .context("republishing a dead letter")?;
                l.message.delivery.ack(BasicAckOptions::default()).await?;
                replayed += 1;
            }
            println!("replayed {replayed} message(s) to {}", topology.jobs_exchange);
        }
        DlqAction::Purge { reason, yes } => {
            let matching: Vec<&Letter> = letters.iter().filter(|l| l.reason == *reason).collect();
            if !yes {
                anyhow::bail!(
                    "{} message(s) with reason {reason} would be deleted for good; run again with --yes",
                    matching.len()
                );
            }
            for l in &matching {
                l.message.delivery.ack(BasicAckOptions::default()).await?;
            }
            println!("purged {} message(s) with reason {reason}", matching.len());
        }
    }
    Ok(())
}

/// The original properties without the dead-letter headers, `content_type` replaced if given.
fn replay_properties(props: &BasicProperties, content_type: Option<&str>) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    let kept: BTreeMap<_, _> = headers
        .inner()
        .iter()
        .filter(|(k, _)| !k.as_str().starts_with("x-reject-") && k.as_str() != "x-dead-lettered-at")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers = FieldTable::from(kept);
    let props = props.clone().with_headers(headers);
    match content_type {
        Some(ct) => props.with_content_type(ShortString::from(ct)),
        None => props,
    }
}
