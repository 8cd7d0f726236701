//! Promise: every message ends with an account. A message the broker dead-letters on its own
//! (delivery limit) is returned to work or failed with a `roadmap.failed` event; a refusal whose
//! job_id can be read from the message's properties is announced; a conflicting copy of a job is
//! refused with its own reason and announces nothing for the job that exists.

use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::{
    BasicProperties,
    options::{BasicConsumeOptions, BasicNackOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::json;
use uuid::Uuid;

use testkit::{TestEnv, eventually, hostile::wait_for_dead_letters, job};

/// Plays a consumer that crashes on every delivery: nacks each back until the quorum queue's
/// delivery limit dead-letters the message (nothing arrives for a while).
async fn nack_until_dead_lettered(env: &TestEnv) -> usize {
    let channel = env.connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            env.topology.queue.as_str().into(),
            "crashing-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut deliveries = 0;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
        deliveries += 1;
        let requeue = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        delivery.nack(requeue).await.unwrap();
    }
    channel.close(200, "done".into()).await.unwrap();
    deliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_dead_letters_ends_failed_with_an_event_or_back_at_work() {
    let env = TestEnv::new().await;
    let mut events = env.watcher().await;

    // Recovery limit 0: the first dead-lettering fails the job.
    let (failed_id, body) = job(3, "Site Reliability Engineer");
    env.publish(&body).await;
    let deliveries = nack_until_dead_lettered(&env).await;
    assert_eq!(
        deliveries, 6,
        "delivered up to the limit of 5 redeliveries, then dead-lettered"
    );
    let worker = env.start_worker(&["--recover-limit", "0"]).await;
    let end = events
        .wait_for_end(failed_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.failed", "{:#}", end.body);
    assert_eq!(end.body["reason"], "delivery_limit");
    let db = env.db().await;
    let row = db
        .query_one(
            "SELECT status, failure_reason FROM jobs WHERE job_id = $1",
            &[&failed_id],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("failed".into(), "delivery_limit".into())
    );
    let dead = wait_for_dead_letters(&env, 1, Duration::from_secs(10)).await;
    assert_eq!(dead[0].reason.as_deref(), Some("delivery_limit"));
    worker.stop().await;

    // The default limit: the victim of crashing consumers goes back to work and completes.
    let (saved_id, body) = job(3, "Data Engineer");
    env.publish(&body).await;
    assert_eq!(nack_until_dead_lettered(&env).await, 6);
    let worker = env.start_worker(&[]).await;
    let end = events
        .wait_for_end(saved_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{:#}", end.body);
    let metrics = &worker.running.metrics;
    assert_eq!(
        metrics
            .deliveries_recovered
            .with_label_values(&["requeued"])
            .get(),
        1
    );
    assert!(
        env.dead_letters().await.is_empty(),
        "nothing more in the dead-letter queue"
    );
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_read_their_job_id_from_the_message_properties() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let props = || BasicProperties::default().with_delivery_mode(2);
    let mut cases = Vec::new();

    // A valid job labelled text/plain: the body still says whose job it is.
    let (id, body) = job(2, "Data Analyst");
    env.publish_with(
        body.to_string().as_bytes(),
        props().with_content_type("text/plain".into()),
    )
    .await;
    cases.push((id, "wrong_content_type"));
    // Too large to read: the `job_id` header names the job.
    let id = Uuid::new_v4();
    let large = format!(r#"{{"job_id":"{id}","pad":"{}"}}"#, "x".repeat(70 * 1024));
    env.publish_with(large.as_bytes(), props().with_headers(job_id_header(id)))
        .await;
    cases.push((id, "body_too_large"));
    // Nested too deep: the correlation_id names the job.
    let id = Uuid::new_v4();
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    env.publish_with(
        deep.as_bytes(),
        props().with_correlation_id(id.to_string().into()),
    )
    .await;
    cases.push((id, "nesting_too_deep"));
    // Not UTF-8: the header again, beside a message_id (which is never read).
    let id = Uuid::new_v4();
    env.publish_with(
        &[0xff, 0xfe, b'{', b'}'],
        props()
            .with_headers(job_id_header(id))
            .with_message_id(Uuid::new_v4().to_string().into()),
    )
    .await;
    cases.push((id, "invalid_utf8"));
    // A message_id alone, as client libraries set one of their own: nothing is announced
    // under it; the dead letter is filed without a job_id.
    let library_id = Uuid::new_v4();
    env.publish_with(
        b"{not json",
        props().with_message_id(library_id.to_string().into()),
    )
    .await;

    for (job_id, reason) in cases {
        let end = events
            .wait_for_end(job_id, Duration::from_secs(20), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.failed", "{reason}");
        assert_eq!(end.body["reason"], reason);
    }
    let db = env.db().await;
    let filed = eventually(Duration::from_secs(20), "the not_json dead letter", || async {
        db.query_opt(
            "SELECT job_id FROM dead_letters WHERE reason = 'not_json' AND body = $1",
            &[&b"{not json".as_slice()],
        )
        .await
        .unwrap()
        .map(|row| row.get::<_, Option<Uuid>>(0))
    })
    .await;
    assert_eq!(filed, None, "filed without a job_id");
    let named: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM jobs WHERE job_id = $1)
                  + (SELECT count(*) FROM outbox WHERE job_id = $1)",
            &[&library_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        named, 0,
        "nothing was recorded or announced under the library's message_id"
    );
    worker.stop().await;
    env.cleanup().await;
}

fn job_id_header(id: Uuid) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert("job_id".into(), AMQPValue::LongString(id.to_string().into()));
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_copy_is_refused_and_changes_nothing() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(3, "Backend Developer");
    env.publish(&body).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed");
    let db = env.db().await;
    let before: String = db
        .query_one(
            "SELECT row_to_json(j)::text FROM jobs j WHERE job_id = $1",
            &[&job_id],
        )
        .await
        .unwrap()
        .get(0);

    // Same user, same job_id, another duration: the stored request stands.
    let mut changed = body.clone();
    changed["duration_weeks"] = json!(5);
    env.publish(&changed).await;
    let dead = wait_for_dead_letters(&env, 1, Duration::from_secs(10)).await;
    assert_eq!(dead[0].reason.as_deref(), Some("job_conflict"));
    if let Some(extra) = events.next(Duration::from_secs(2)).await.unwrap() {
        panic!("the conflicting copy announced something: {:#}", extra.body);
    }
    let after: String = db
        .query_one(
            "SELECT row_to_json(j)::text FROM jobs j WHERE job_id = $1",
            &[&job_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, before, "the job is untouched");

    // A malformed copy under the same job_id is refused for its own reason, and announces
    // nothing either: the job it names has ended, and its consumers saw that outcome.
    let mut broken = body.clone();
    broken["duration_weeks"] = json!(99);
    env.publish(&broken).await;
    let dead = wait_for_dead_letters(&env, 1, Duration::from_secs(10)).await;
    assert_eq!(dead[0].reason.as_deref(), Some("out_of_range"));
    if let Some(extra) = events.next(Duration::from_secs(2)).await.unwrap() {
        panic!("the malformed copy announced something: {:#}", extra.body);
    }

    // An identical copy after completion is a plain duplicate: acked, nothing dead-lettered.
    env.publish(&body).await;
    eventually(Duration::from_secs(10), "the duplicate settled", || async {
        let q = env
            .connection
            .create_channel()
            .await
            .unwrap()
            .queue_declare(
                env.topology.queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        (q.message_count() == 0).then_some(())
    })
    .await;
    assert!(env.dead_letters().await.is_empty());
    worker.stop().await;
    env.cleanup().await;
}
