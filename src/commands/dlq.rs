//! `roadmap-worker dlq`: the dead letters, for operators. They live in Postgres
//! (`dead_letters`), each under a stable number (its id): `list` counts them by reason and shows
//! each one's job, age and where the job stands; `show` prints one; `replay` republishes the
//! selected ones to the work queue with their stored properties and deletes them (one still
//! broken comes back with its reason: nothing is lost); `purge` deletes the selected ones, with
//! `--yes`. Reading changes nothing, so a number means the same letter on every call, and
//! `replay --id`/`purge --id` act on exactly what was listed.
//!
//! A job that already has its outcome in `jobs` (completed or failed) is not run again by a
//! replay: one outcome per job_id. The worker acks the copy (a completed job's completion
//! event is sent again); the command warns about each such letter.
//!
//! The worker files a letter in the broker's dead-letter queue only while Postgres cannot take
//! it (older versions filed every letter there). Every action first moves whatever waits there
//! into the table: insert (once per `x-dead-letter-id`), then ack.

use std::collections::BTreeMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties, Channel,
    options::{BasicAckOptions, BasicGetOptions},
    types::ShortString,
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::status::age;
use crate::{
    amqp::{
        self, Publisher, Topology,
        properties::{self, DEAD_LETTER_ID, DEAD_LETTERED_AT, REJECT_MESSAGE, REJECT_REASON},
        topology::{BULK_ROUTING_KEY, JOB_ROUTING_KEY},
    },
    cli::{DlqAction, DlqArgs, DlqSelector},
    store::{
        self,
        dead_letters::{self as letters, DeadLetter, Filter, Listed, NewDeadLetter},
    },
};

/// Messages moved from the broker's queue at most in one run (a fleet filing there all the
/// while cannot keep the command from its work).
const MAX_MOVED: usize = 10_000;
/// Dead letters listed, replayed or purged at most in one run.
const MAX_LISTED: i64 = 10_000;

pub async fn dlq(args: DlqArgs) -> anyhow::Result<()> {
    let mut client = store::connect_readonly(&args.db, "roadmap-worker:dlq").await?;
    let table = client
        .query_opt("SELECT to_regclass('dead_letters')::text", &[])
        .await?
        .and_then(|row| row.get::<_, Option<String>>(0));
    if table.is_none() {
        anyhow::bail!(
            "the database has no dead_letters table yet: run `roadmap-worker migrate` (or start an upgraded worker) first"
        );
    }
    let connection = amqp::connect(&args.amqp, "roadmap-dlq").await?;
    let topology = Topology::new(&args.amqp.namespace, args.amqp.delivery_limit);
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    let moved = move_in(&channel, &topology, &client).await;
    let result = match moved {
        Ok(moved) => {
            if moved.taken > 0 {
                eprintln!(
                    "moved {} dead letter(s) from {} into the dead_letters table ({} filed there already)",
                    moved.taken, topology.dead_letter_queue, moved.known
                );
            }
            act(args.action, &mut client, &connection, &topology, moved.taken).await
        }
        Err(e) => Err(e),
    };
    // A message taken but not filed (an error above) goes back to the queue with the channel.
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    result
}

/// What moving the broker's queue into the table did.
struct Moved {
    /// Messages taken from the queue (each filed in the table, then acked).
    taken: usize,
    /// Of those, the ones whose `x-dead-letter-id` was in the table already.
    known: usize,
}

/// Moves every message of the broker's dead-letter queue into the table: filed, then acked.
async fn move_in(
    channel: &Channel,
    topology: &Topology,
    client: &tokio_postgres::Client,
) -> anyhow::Result<Moved> {
    let mut moved = Moved { taken: 0, known: 0 };
    while moved.taken < MAX_MOVED {
        let got = channel
            .basic_get(
                topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .context("reading the broker's dead-letter queue")?;
        let Some(message) = got else { break };
        let delivery = message.delivery;
        let mut stored = properties::to_json(&delivery.properties);
        // The dead-letter headers become columns; the rest are the message's own.
        let mut headers = match stored.as_object_mut().and_then(|p| p.remove("headers")) {
            Some(Value::Object(headers)) => headers,
            _ => serde_json::Map::new(),
        };
        let text =
            |headers: &serde_json::Map<String, Value>, name: &str| headers.get(name).map(properties::display);
        let letter_id = text(&headers, DEAD_LETTER_ID)
            .and_then(|id| Uuid::parse_str(&id).ok())
            .unwrap_or_else(Uuid::new_v4);
        let reason = text(&headers, REJECT_REASON).unwrap_or_else(|| "(none)".into());
        let reject_message = text(&headers, REJECT_MESSAGE).unwrap_or_default();
        let created_at = headers
            .get(DEAD_LETTERED_AT)
            .and_then(Value::as_i64)
            .and_then(DateTime::<Utc>::from_timestamp_millis);
        // x-delivery-count counts the dead-letter queue's own deliveries (this one), not the
        // message's history.
        headers.retain(|name, _| !properties::is_dead_letter_header(name) && name != "x-delivery-count");
        if !headers.is_empty()
            && let Some(props) = stored.as_object_mut()
        {
            props.insert("headers".into(), Value::Object(headers));
        }
        let letter = NewDeadLetter {
            letter_id,
            job_id: properties::readable_job_id(&delivery.data, &delivery.properties),
            reason: &reason,
            message: &reject_message,
            // The key it was first delivered with is not on the copy.
            routing_key: None,
            properties: &stored,
            body: &delivery.data,
            created_at,
        };
        let inserted = letters::insert(client, &letter)
            .await
            .context("filing a dead letter from the broker's queue in Postgres")?;
        delivery
            .ack(BasicAckOptions::default())
            .await
            .context("acknowledging a dead letter moved into Postgres")?;
        moved.taken += 1;
        moved.known += usize::from(!inserted);
    }
    Ok(moved)
}

async fn act(
    action: DlqAction,
    client: &mut tokio_postgres::Client,
    connection: &lapin::Connection,
    topology: &Topology,
    moved: usize,
) -> anyhow::Result<()> {
    let now = Utc::now();
    match action {
        DlqAction::List { json, reason, job } => {
            let filter = Filter {
                ids: Vec::new(),
                reason,
                job_id: job,
            };
            list(client, &filter, json, moved, now).await
        }
        DlqAction::Show { id, job, json } => show(client, id, job, json, now).await,
        DlqAction::Replay { select, content_type } => {
            let selected = select_for("replay", client, &select).await?;
            replay(client, connection, topology, &selected, content_type.as_deref()).await
        }
        DlqAction::Purge { select, yes } => {
            let selected = select_for("purge", client, &select).await?;
            let numbers = numbers(&selected);
            if !yes {
                anyhow::bail!(
                    "{} dead letter(s) would be deleted for good ({numbers}); run again with --yes",
                    selected.len()
                );
            }
            let ids: Vec<i64> = selected.iter().map(|l| l.id).collect();
            let purged = letters::delete(&*client, &ids)
                .await
                .context("deleting dead letters")?;
            for letter in &purged {
                println!(
                    "purged #{} {} job {}",
                    letter.id,
                    letter.reason,
                    job_text(letter.job_id)
                );
            }
            println!("purged {} dead letter(s)", purged.len());
            Ok(())
        }
    }
}

async fn list(
    client: &tokio_postgres::Client,
    filter: &Filter,
    json: bool,
    moved: usize,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let by_reason: BTreeMap<String, i64> = letters::count_by_reason(client, filter)
        .await
        .context("counting dead letters")?
        .into_iter()
        .collect();
    let count: i64 = by_reason.values().sum();
    let rows = letters::list(client, filter, MAX_LISTED)
        .await
        .context("listing dead letters")?;
    if json {
        let all: Vec<Value> = rows.iter().map(|l| summary(l, now)).collect();
        let out = json!({"count": count, "by_reason": by_reason, "moved": moved, "messages": all});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{count} dead letter(s)");
    for (reason, n) in &by_reason {
        println!("  {n:>6}  {reason}");
    }
    for l in &rows {
        let ago = age((now - l.created_at).to_std().unwrap_or_default());
        println!(
            "#{:<6} {:<26} job {:<36}  {} ({ago} ago)  {}",
            l.id,
            l.reason,
            job_text(l.job_id),
            l.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
            job_state(l)
        );
    }
    if (rows.len() as i64) < count {
        println!("(the first {} shown; narrow with --reason or --job)", rows.len());
    }
    Ok(())
}

/// A listed letter as JSON for scripts.
fn summary(l: &Listed, now: DateTime<Utc>) -> Value {
    json!({
        "id": l.id,
        "letter_id": l.letter_id,
        "reason": l.reason,
        "message": l.message,
        "job_id": l.job_id,
        "job": l.job_status.as_ref().map(|status| json!({"status": status, "failure_reason": l.job_failure_reason})),
        "created_at": l.created_at,
        "age_secs": (now - l.created_at).num_seconds(),
        "bytes": l.bytes,
    })
}

async fn show(
    client: &tokio_postgres::Client,
    id: Option<i64>,
    job: Option<Uuid>,
    json: bool,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let filter = Filter {
        ids: id.into_iter().collect(),
        reason: None,
        job_id: job,
    };
    let found = letters::list(client, &filter, 1)
        .await
        .context("finding the dead letter")?;
    let Some(listed) = found.first() else {
        match (id, job) {
            (Some(id), _) => {
                anyhow::bail!("no dead letter #{id} (replayed or purged already?); `dlq list` shows them")
            }
            (None, Some(job)) => anyhow::bail!("no dead letter of job {job}"),
            (None, None) => anyhow::bail!("there are no dead letters"),
        }
    };
    let letter = letters::get(client, listed.id)
        .await
        .context("reading the dead letter")?
        .with_context(|| format!("dead letter #{} was replayed or purged meanwhile", listed.id))?;
    if json {
        let mut out = serde_json::to_value(&letter)?;
        out["body"] = Value::from(String::from_utf8_lossy(&letter.body));
        out["job"] = summary(listed, now)["job"].clone();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print!("{}", describe(&letter, listed, now));
    Ok(())
}

/// One dead letter as text: properties and headers as `key = value`, the body as text.
fn describe(letter: &DeadLetter, listed: &Listed, now: DateTime<Utc>) -> String {
    let ago = age((now - letter.created_at).to_std().unwrap_or_default());
    let mut out = format!("dead letter #{}  ({})\n", letter.id, letter.letter_id);
    out += &format!("  reason       {}\n", letter.reason);
    out += &format!("  message      {}\n", letter.message);
    out += &format!(
        "  job          {}  {}\n",
        job_text(letter.job_id),
        job_state(listed)
    );
    out += &format!(
        "  filed        {} ({ago} ago)\n",
        letter.created_at.format("%Y-%m-%dT%H:%M:%SZ")
    );
    if let Some(key) = &letter.routing_key {
        out += &format!("  routing key  {key}\n");
    }
    if let Some(props) = letter.properties.as_object() {
        for (name, value) in props.iter().filter(|(name, _)| *name != "headers") {
            out += &format!("  property     {name} = {}\n", properties::display(value));
        }
        if let Some(headers) = props.get("headers").and_then(Value::as_object) {
            for (name, value) in headers {
                out += &format!("  header       {name} = {}\n", properties::display(value));
            }
        }
    }
    out += &format!(
        "  body         {} bytes\n{}\n",
        letter.body.len(),
        String::from_utf8_lossy(&letter.body)
    );
    out
}

/// The letters a replay or purge acts on. A selector is required (a bare `purge` or `replay`
/// acting on everything would be one typo from disaster); every `--id` must exist.
async fn select_for(
    verb: &str,
    client: &tokio_postgres::Client,
    select: &DlqSelector,
) -> anyhow::Result<Vec<Listed>> {
    let filter = Filter {
        ids: select.ids.clone(),
        reason: select.reason.clone(),
        job_id: select.job,
    };
    if filter.is_empty() {
        anyhow::bail!(
            "{verb} needs a selector: --id N (the numbers `dlq list` shows; repeat for several), --reason R or --job JOB_ID"
        );
    }
    let selected = letters::list(client, &filter, MAX_LISTED)
        .await
        .context("selecting dead letters")?;
    let missing: Vec<String> = select
        .ids
        .iter()
        .filter(|id| !selected.iter().any(|l| l.id == **id))
        .map(|id| format!("#{id}"))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "no dead letter {} matching the selectors (replayed or purged already?); nothing done",
            missing.join(", ")
        );
    }
    Ok(selected)
}

/// Republishes each letter with publisher confirms, deleting its row in the same transaction:
/// the row stays if the broker does not take the message, and a letter is sent once even if two
/// operators replay it at the same time.
async fn replay(
    client: &mut tokio_postgres::Client,
    connection: &lapin::Connection,
    topology: &Topology,
    selected: &[Listed],
    content_type: Option<&str>,
) -> anyhow::Result<()> {
    let publisher = Publisher::new(connection).await?;
    let mut replayed = 0;
    for listed in selected {
        let tx = client.transaction().await.context("starting a transaction")?;
        let Some(letter) = letters::delete(&tx, &[listed.id]).await?.pop() else {
            println!("#{} is gone (replayed or purged meanwhile)", listed.id);
            continue;
        };
        let props = replay_properties(&letter.properties, content_type);
        let bulk = serde_json::from_slice::<Value>(&letter.body)
            .ok()
            .is_some_and(|v| v.get("priority").and_then(Value::as_str) == Some("bulk"));
        let key = if bulk { BULK_ROUTING_KEY } else { JOB_ROUTING_KEY };
        publisher
            .publish(&topology.jobs_exchange, key, &letter.body, props, true)
            .await
            .with_context(|| format!("republishing dead letter #{} (it stays filed)", letter.id))?;
        tx.commit().await.with_context(|| {
            format!(
                "deleting dead letter #{} after its replay: it was sent and is still listed",
                letter.id
            )
        })?;
        replayed += 1;
        println!(
            "replayed #{} {} job {}",
            letter.id,
            letter.reason,
            job_text(letter.job_id)
        );
        if listed.job_has_ended() {
            eprintln!(
                "warning: #{}: job {} has {}; it is not run again (one outcome per job_id)",
                letter.id,
                job_text(letter.job_id),
                job_state(listed)
            );
        }
    }
    println!("replayed {replayed} message(s) to {}", topology.jobs_exchange);
    Ok(())
}

/// The stored properties without the dead-letter headers, `content_type` replaced if given.
fn replay_properties(stored: &Value, content_type: Option<&str>) -> BasicProperties {
    let mut stored = stored.clone();
    if let Some(headers) = stored.get_mut("headers").and_then(Value::as_object_mut) {
        headers.retain(|name, _| !properties::is_dead_letter_header(name));
    }
    let props = properties::from_json(&stored);
    match content_type {
        Some(ct) => props.with_content_type(ShortString::from(ct)),
        None => props,
    }
}

fn job_text(job_id: Option<Uuid>) -> String {
    job_id.map_or_else(|| "(unreadable)".to_owned(), |id| id.to_string())
}

/// Where the letter's job stands in `jobs`.
fn job_state(l: &Listed) -> String {
    match (&l.job_status, &l.job_failure_reason) {
        (None, _) => "no job row".to_owned(),
        (Some(status), Some(why)) if status == "failed" => format!("job failed ({why})"),
        (Some(status), _) => format!("job {status}"),
    }
}

fn numbers(selected: &[Listed]) -> String {
    let shown: Vec<String> = selected.iter().take(20).map(|l| format!("#{}", l.id)).collect();
    let more = selected.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_replay_drops_the_dead_letter_headers_and_may_fix_the_content_type() {
        let stored = json!({
            "content_type": "text/plain",
            "message_id": "m-1",
            "headers": {
                "x-reject-reason": "wrong_content_type",
                "x-reject-message": "…",
                "x-dead-lettered-at": 1,
                "x-dead-letter-id": "id",
                "traceparent": "00-abc",
            },
        });
        let props = replay_properties(&stored, Some("application/json"));
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(props.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        let headers = props.headers().clone().unwrap();
        let names: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["traceparent"]);
    }
}
