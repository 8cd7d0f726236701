//! Promise: an operator can work with the dead letters without the RabbitMQ UI, and looking
//! changes nothing. They are kept in Postgres: `dlq list` gives the same numbers and rows on
//! every call, `dlq show N` the same message, with headers as text; a letter Postgres cannot
//! take waits in the broker's dead-letter queue, and one left there is moved into the table
//! once. `dlq replay` and `dlq purge` act on exactly the ids given: a fixed message goes back to
//! work (it completes), a still-broken one back through intake (it returns with its reason,
//! nothing lost), and purge deletes only with `--yes`. A replay of a job that already has its
//! outcome does not run it again.

use std::{process::Output, time::Duration};

use lapin::{
    BasicProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use roadmap_worker::amqp::topology::REJECTED_ROUTING_KEY;
use serde_json::Value;
use uuid::Uuid;

use testkit::{TestEnv, amqp_url, db_when_ready, eventually, job};

fn dlq(env: &TestEnv, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_roadmap-worker"))
        .arg("dlq")
        .args(args)
        .env("AMQP_URL", amqp_url())
        .env("AMQP_NAMESPACE", &env.name)
        .env("DATABASE_URL", &env.database_url)
        .env("RUST_LOG", "off")
        .output()
        .expect("running roadmap-worker dlq")
}

fn ok(env: &TestEnv, args: &[&str]) -> (String, String) {
    let out = dlq(env, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "dlq {args:?}: {stderr}");
    (stdout, stderr)
}

fn listed(env: &TestEnv) -> Value {
    serde_json::from_str(&ok(env, &["list", "--json"]).0).expect("dlq list --json prints JSON")
}

/// A listing without what moves with the clock (ages) or with this call (what it moved).
fn stable(mut list: Value) -> Value {
    list.as_object_mut().unwrap().remove("moved");
    for m in list["messages"].as_array_mut().unwrap() {
        m.as_object_mut().unwrap().remove("age_secs");
    }
    list
}

/// Text output without its ages ("(12s ago)").
fn without_ages(text: &str) -> String {
    let (mut out, mut rest) = (String::new(), text);
    while let Some(at) = rest.find(" ago)") {
        let head = &rest[..at];
        out.push_str(&head[..head.rfind('(').unwrap_or(at)]);
        rest = &rest[at + " ago)".len()..];
    }
    out + rest
}

/// The id of the one listed letter with `reason`.
fn id_of(list: &Value, reason: &str) -> i64 {
    let ids: Vec<i64> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["reason"] == reason)
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "one {reason} letter: {list}");
    ids[0]
}

/// Every row of the table, whole, as text: what reading must leave untouched.
async fn table(db: &tokio_postgres::Client) -> Vec<String> {
    db.query(
        "SELECT id, letter_id, job_id, reason, message, routing_key, properties::text, body, created_at
         FROM dead_letters ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let body: Vec<u8> = r.get(7);
        let at: chrono::DateTime<chrono::Utc> = r.get(8);
        format!(
            "{} {} {:?} {} {} {:?} {} {:?} {at}",
            r.get::<_, i64>(0),
            r.get::<_, Uuid>(1),
            r.get::<_, Option<Uuid>>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4),
            r.get::<_, Option<String>>(5),
            r.get::<_, String>(6),
            body
        )
    })
    .collect()
}

async fn broker_dead_letters(env: &TestEnv) -> u32 {
    let channel = env.connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare(
            env.topology.dead_letter_queue.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap();
    queue.message_count()
}

/// A copy in the broker's dead-letter queue, as a worker files it while Postgres is away.
async fn file_in_broker(env: &TestEnv, letter_id: Uuid, body: &[u8]) {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-reject-reason", "from_broker".to_owned()),
        ("x-reject-message", "filed while Postgres was away".to_owned()),
        ("x-dead-letter-id", letter_id.to_string()),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    headers.insert(
        "x-dead-lettered-at".into(),
        AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis() - 3_600_000),
    );
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_headers(headers);
    env.publisher
        .publish(
            &env.topology.dead_letter_exchange,
            REJECTED_ROUTING_KEY,
            body,
            props,
            true,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_stably_replayed_and_purged_by_id() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let db = db_when_ready(&env).await;
    // A valid job that its backend labelled text/plain (with headers of its own), and two bodies
    // that are not JSON.
    let (job_id, body) = job(3, "Data Engineer");
    let mut headers = FieldTable::default();
    headers.insert("x-backend".into(), AMQPValue::LongString("shop-7".into()));
    headers.insert("x-attempt".into(), AMQPValue::LongInt(3));
    let mislabelled = BasicProperties::default()
        .with_content_type(ShortString::from("text/plain"))
        .with_headers(headers);
    env.publish_with(body.to_string().as_bytes(), mislabelled).await;
    env.publish_raw(b"{not json", Some("application/json")).await;
    env.publish_raw(b"{also not json", Some("application/json")).await;
    let first = eventually(
        Duration::from_secs(30),
        "three messages dead-lettered",
        || async {
            let list = listed(&env);
            (list["count"] == 3).then_some(list)
        },
    )
    .await;
    assert_eq!(first["by_reason"]["wrong_content_type"], 1, "{first}");
    assert_eq!(first["by_reason"]["not_json"], 2, "{first}");
    // Its refusal is announced before anything is replayed.
    let failed = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .expect("the refusal's event");
    assert_eq!(
        (failed.routing_key.as_str(), &failed.body["reason"]),
        ("roadmap.failed", &Value::from("wrong_content_type"))
    );

    // A copy left in the broker's queue is moved in once, also when it is there twice.
    let copy = Uuid::new_v4();
    file_in_broker(&env, copy, b"{\"broker\": 1}").await;
    file_in_broker(&env, copy, b"{\"broker\": 1}").await;
    let moved = listed(&env);
    assert_eq!(
        (moved["moved"].as_u64(), moved["count"].as_u64()),
        (Some(2), Some(4)),
        "{moved}"
    );
    assert_eq!(broker_dead_letters(&env).await, 0);
    let from_broker = id_of(&moved, "from_broker");
    let age = moved["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == from_broker)
        .unwrap()["age_secs"]
        .as_i64()
        .unwrap();
    assert!(age >= 3_590, "filed with the time it was dead-lettered: {moved}");
    let copy_shown: Value =
        serde_json::from_str(&ok(&env, &["show", &from_broker.to_string(), "--json"]).0).unwrap();
    assert_eq!(copy_shown["letter_id"], copy.to_string());
    assert_eq!(copy_shown["message"], "filed while Postgres was away");
    assert_eq!(
        copy_shown["properties"],
        serde_json::json!({"content_type": "application/json"}),
        "the dead-letter headers became columns"
    );

    // Reading three times: the same listing, the same message, nothing changed in the table.
    let before = table(&db).await;
    let wrong = id_of(&moved, "wrong_content_type");
    let lists: Vec<Value> = (0..3).map(|_| stable(listed(&env))).collect();
    assert!(lists.iter().all(|l| *l == lists[0]), "{lists:?}");
    assert_eq!(lists[0]["messages"].as_array().unwrap().len(), 4);
    let texts: Vec<String> = (0..3).map(|_| without_ages(&ok(&env, &["list"]).0)).collect();
    assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
    assert!(
        texts[0].contains("4 dead letter(s)")
            && texts[0].contains(&format!("#{wrong}"))
            && texts[0].contains(&job_id.to_string()),
        "{}",
        texts[0]
    );
    let shown: Vec<String> = (0..3)
        .map(|_| without_ages(&ok(&env, &["show", &wrong.to_string()]).0))
        .collect();
    assert!(shown.iter().all(|s| *s == shown[0]), "{shown:?}");
    let show = &shown[0];
    for line in [
        "reason       wrong_content_type",
        "header       x-backend = shop-7",
        "header       x-attempt = 3",
        "property     content_type = text/plain",
        &job_id.to_string(),
        "Data Engineer",
    ] {
        assert!(show.contains(line), "{line:?} in {show}");
    }
    assert!(!show.contains("LongString"), "{show}");
    let as_json: Value = serde_json::from_str(&ok(&env, &["show", &wrong.to_string(), "--json"]).0).unwrap();
    assert_eq!(as_json["properties"]["headers"]["x-backend"], "shop-7");
    assert_eq!(as_json["properties"]["headers"]["x-attempt"], 3);
    assert_eq!(table(&db).await, before, "reading changed nothing");
    assert_eq!(broker_dead_letters(&env).await, 0);

    // Replay and purge need a selector.
    let bare = dlq(&env, &["replay"]);
    assert!(!bare.status.success());
    assert!(
        String::from_utf8_lossy(&bare.stderr).contains("needs a selector"),
        "{bare:?}"
    );
    assert_eq!(table(&db).await, before);

    // The fixed one goes back to work and completes. Its job must have no outcome yet: a
    // refusal may have stored one (failed), and a replay never runs a job that has one.
    db.execute("DELETE FROM jobs WHERE job_id = $1", &[&job_id])
        .await
        .unwrap();
    let (out, _) = ok(
        &env,
        &[
            "replay",
            "--id",
            &wrong.to_string(),
            "--content-type",
            "application/json",
        ],
    );
    assert!(
        out.contains("replayed 1") && out.contains(&format!("#{wrong}")),
        "{out}"
    );
    // (A second copy of the refusal's event may come first: events are at least once.)
    let mut ends = Vec::new();
    while !ends.iter().any(|key| key == "roadmap.completed") {
        assert!(ends.len() < 3, "the replayed job did not complete: {ends:?}");
        let end = events
            .wait_for_end(job_id, Duration::from_secs(60), |_| {})
            .await
            .expect("the replayed job's end");
        ends.push(end.routing_key);
    }

    // Exactly the id given: one of the two broken ones goes through intake and comes back under
    // a new number; the other keeps its own.
    let list = listed(&env);
    let broken: Vec<i64> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["reason"] == "not_json")
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(broken.len(), 2, "{list}");
    let (out, _) = ok(&env, &["replay", "--id", &broken[0].to_string()]);
    assert!(out.contains("replayed 1"), "{out}");
    let back = eventually(Duration::from_secs(30), "the broken message back", || async {
        let list = listed(&env);
        (list["count"] == 3 && list["by_reason"]["not_json"] == 2).then_some(list)
    })
    .await;
    let ids: Vec<i64> = back["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert!(!ids.contains(&broken[0]) && ids.contains(&broken[1]), "{back}");
    let returned = *ids.iter().max().unwrap();
    assert!(returned > from_broker, "a new number: {back}");

    // Purge asks for --yes, then deletes exactly the ids given.
    let refused = dlq(&env, &["purge", "--id", &broken[1].to_string()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--yes"),
        "{refused:?}"
    );
    assert_eq!(listed(&env)["count"], 3, "nothing deleted without --yes");
    let (out, _) = ok(&env, &["purge", "--id", &broken[1].to_string(), "--yes"]);
    assert!(out.contains("purged 1"), "{out}");
    let left = listed(&env);
    let ids: Vec<i64> = left["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [from_broker, returned], "{left}");
    let missing = dlq(&env, &["purge", "--id", &broken[1].to_string(), "--yes"]);
    assert!(!missing.status.success(), "a purged id is gone");
    ok(&env, &["purge", "--reason", "not_json", "--yes"]);
    ok(&env, &["purge", "--reason", "from_broker", "--yes"]);
    assert_eq!(listed(&env)["count"], 0);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_job_that_has_its_outcome_is_not_run_again() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(1, "Data Engineer");
    env.publish(&body).await;
    let done = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .expect("the job's completion");
    assert_eq!(done.routing_key, "roadmap.completed");
    let calls = env.mock.requests().len();

    // The same job again, mislabelled: refused, filed beside its completed row.
    let mislabelled = BasicProperties::default().with_content_type(ShortString::from("text/plain"));
    env.publish_with(body.to_string().as_bytes(), mislabelled).await;
    let list = eventually(Duration::from_secs(30), "the copy dead-lettered", || async {
        let list = listed(&env);
        (list["count"] == 1).then_some(list)
    })
    .await;
    let letter = &list["messages"][0];
    assert_eq!(letter["job"]["status"], "completed", "{list}");
    // Past the window in which a copy does not re-send the completion event.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let (out, err) = ok(
        &env,
        &[
            "replay",
            "--id",
            &letter["id"].to_string(),
            "--content-type",
            "application/json",
        ],
    );
    assert!(out.contains("replayed 1"), "{out}");
    assert!(
        err.contains("warning") && err.contains(&job_id.to_string()) && err.contains("completed"),
        "{err}"
    );
    // The worker answers with the job's one outcome (its completion event again, same id)...
    let again = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .expect("the completion sent again");
    assert_eq!(again.routing_key, "roadmap.completed");
    assert_eq!(again.message_id, done.message_id);
    // ...and runs nothing.
    assert_eq!(
        env.mock.requests().len(),
        calls,
        "no LLM call for a replayed ended job"
    );
    let db = env.db().await;
    let row = db
        .query_one("SELECT status, claims FROM jobs WHERE job_id = $1", &[&job_id])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("completed".into(), 1)
    );
    assert_eq!(listed(&env)["count"], 0);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_postgres_cannot_take_waits_in_the_broker_and_is_moved_in_once() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let db = db_when_ready(&env).await;
    // The table out of reach: filing fails through the store's retries (about 20 s).
    db.batch_execute("ALTER TABLE dead_letters RENAME TO dead_letters_away")
        .await
        .unwrap();
    env.publish_raw(b"{not json", Some("application/json")).await;
    eventually(
        Duration::from_secs(90),
        "the copy in the broker's queue",
        || async { (broker_dead_letters(&env).await == 1).then_some(()) },
    )
    .await;
    db.batch_execute("ALTER TABLE dead_letters_away RENAME TO dead_letters")
        .await
        .unwrap();
    let list = listed(&env);
    assert_eq!(
        (list["moved"].as_u64(), list["count"].as_u64()),
        (Some(1), Some(1)),
        "{list}"
    );
    let letter = &list["messages"][0];
    assert_eq!(letter["reason"], "not_json");
    assert!(
        letter["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{list}"
    );
    assert_eq!(broker_dead_letters(&env).await, 0);
    let again = listed(&env);
    assert_eq!(again["moved"], 0);
    assert_eq!(stable(again), stable(list.clone()), "moved once, listed the same");
    let (shown, _) = ok(&env, &["show", &letter["id"].to_string()]);
    assert!(
        !shown.contains("x-reject-") && !shown.contains("x-dead-letter"),
        "{shown}"
    );
    assert!(shown.contains("{not json"), "{shown}");
    worker.stop().await;
    env.cleanup().await;
}
