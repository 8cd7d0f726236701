//! Promise: Postgres is the ledger of every job the worker has heard of, until its one outcome.
//! A job that waits (a provider fault, its user's turn) waits in its row, not only as a message
//! in a broker queue, so a purged queue strands nothing; a refusal is its job_id's one outcome;
//! a cancel that arrives before its job means the job never runs; a job published again after
//! it ended has its one outcome announced again, failed as completed.

use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueuePurgeOptions};
use mock_llm::{Fault, FaultPlan, RatedFault};
use serde_json::json;
use testkit::{TestEnv, eventually, job};

/// Messages ready in `queue`.
async fn ready(env: &TestEnv, queue: &str) -> u32 {
    let channel = env.connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = channel
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .unwrap();
    let _ = channel.close(200, "counted".into()).await;
    q.message_count()
}

async fn purge(env: &TestEnv, queue: &str) -> u32 {
    let channel = env.connection.create_channel().await.unwrap();
    let n = channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    let _ = channel.close(200, "purged".into()).await;
    n
}

fn refusing() -> FaultPlan {
    FaultPlan {
        rates: vec![RatedFault {
            rate: 1.0,
            fault: Fault::AuthFailure,
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_parked_by_a_provider_fault_wait_in_postgres_and_survive_purged_queues() {
    let env = TestEnv::with_plan(refusing()).await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let jobs: Vec<_> = (0..4).map(|i| job(3, &format!("Role {i}"))).collect();
    // Published as a backend with pika's defaults would: no delivery_mode, so transient.
    for (_, body) in &jobs {
        env.publish_with(
            body.to_string().as_bytes(),
            lapin::BasicProperties::default().with_content_type("application/json".into()),
        )
        .await;
    }
    let db = env.db().await;
    eventually(Duration::from_secs(30), "every job parked in its row", || async {
        let parked: i64 = db
            .query_one(
                "SELECT count(*) FROM jobs WHERE status = 'running' AND owner IS NULL AND delivery_acked",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (parked == 4).then_some(())
    })
    .await;
    // Whatever copies the queues hold now go: the rows alone must bring every job back.
    for queue in [
        &env.topology.retry_queue,
        &env.topology.queue,
        &env.topology.bulk_queue,
    ] {
        purge(&env, queue).await;
    }
    assert_eq!(ready(&env, &env.topology.retry_queue).await, 0);
    env.mock.set_plan(FaultPlan::default());
    for (job_id, _) in &jobs {
        let end = events
            .wait_for_end(*job_id, Duration::from_secs(60), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    }
    let waits: i64 = db
        .query_one("SELECT count(*) FROM jobs WHERE status = 'completed'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(waits, 4);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_released_whose_copy_was_purged_is_found_by_the_sweeper() {
    let env = TestEnv::new().await;
    // A job handed back while the database was away: released, its only copy in the retry
    // queue (with a long wait), which an operator then purges.
    let (job_id, body) = job(3, "Site Reliability Engineer");
    let worker = env
        .start_worker(&["--sweep-interval-secs", "1", "--lease-secs", "3"])
        .await;
    let mut events = env.watcher().await;
    let db = env.db().await;
    // Stored as the worker stores a job: the decoded request and its plan.
    let request = roadmap_worker::domain::JobRequest::decode(body.to_string().as_bytes(), None).unwrap();
    let plan = roadmap_worker::pipeline::plan(&request.profile(), request.duration_weeks, 3);
    let plan = serde_json::to_value(&plan).unwrap();
    let request = serde_json::to_value(&request).unwrap();
    db.execute(
        "INSERT INTO jobs (job_id, user_id, request, plan, batches_total, owner, lease_until, updated_at)
         VALUES ($1, $2, $3, $4, 1, NULL, NULL, now() - interval '10 minutes')",
        &[&job_id, &"user-1", &request, &plan],
    )
    .await
    .unwrap();
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_job_id_has_one_outcome_even_when_corrected() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let (job_id, mut body) = job(3, "Backend Developer");
    body["duration_weeks"] = json!(500);
    env.publish(&body).await;
    let refused = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(refused.routing_key, "roadmap.failed");
    assert_eq!(refused.body["reason"], "out_of_range", "{}", refused.body);
    let status = roadmap_worker::store::status::job(&env.db().await, job_id, false)
        .await
        .unwrap()
        .expect("status knows the refused job");
    assert_eq!(status.failure_reason.as_deref(), Some("out_of_range"));

    // Corrected under the same job_id: the refusal stands and is announced again, same event.
    tokio::time::sleep(roadmap_worker::store::outbox::REANNOUNCE_AFTER + Duration::from_millis(500)).await;
    body["duration_weeks"] = json!(3);
    for _ in 0..3 {
        env.publish(&body).await;
    }
    let mut later = Vec::new();
    while let Some(event) = events.next(Duration::from_secs(4)).await.unwrap() {
        if event.body["job_id"] == job_id.to_string() {
            later.push(event);
        }
    }
    assert_eq!(later.len(), 1, "announced again once, nothing else: {later:?}");
    assert_eq!(later[0].routing_key, "roadmap.failed");
    assert_eq!(later[0].message_id, refused.message_id, "the same event id");
    assert!(env.mock.requests().is_empty(), "the job never ran");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_before_the_job_arrives_means_it_never_runs() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(6, "Data Engineer");
    roadmap_worker::client::publish_cancel(&env.publisher, &env.topology, job_id, "user-1")
        .await
        .unwrap();
    let end = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.failed", "{}", end.body);
    assert_eq!(end.body["reason"], "cancelled");
    // The job arrives afterwards: it does not run, and its failure is announced again.
    tokio::time::sleep(roadmap_worker::store::outbox::REANNOUNCE_AFTER + Duration::from_millis(500)).await;
    env.publish(&body).await;
    let again = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(again.routing_key, "roadmap.failed");
    assert_eq!(again.message_id, end.message_id);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(env.mock.requests().is_empty(), "the job never called the LLM");
    let (status, reason): (String, String) = {
        let row = env
            .db()
            .await
            .query_one(
                "SELECT status, failure_reason FROM jobs WHERE job_id = $1",
                &[&job_id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((status.as_str(), reason.as_str()), ("failed", "cancelled"));
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_its_user_is_cancelled_at_once() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(700)).await;
    let worker = env
        .start_worker(&["--user-max-in-flight", "1", "--job-parallelism", "1"])
        .await;
    let mut events = env.watcher().await;
    let (first, body) = job(9, "Data Engineer");
    env.publish(&body).await;
    let (second, body) = job(3, "Data Engineer");
    let db = env.db().await;
    eventually(Duration::from_secs(30), "the first job running", || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM jobs WHERE owner IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    env.publish(&body).await;
    eventually(
        Duration::from_secs(30),
        "the second job parked for its turn",
        || async {
            let row = db
                .query_opt(
                    "SELECT waits FROM jobs WHERE job_id = $1 AND owner IS NULL AND not_before IS NOT NULL",
                    &[&second],
                )
                .await
                .unwrap();
            row.map(|r| r.get::<_, i32>(0)).filter(|w| *w >= 1)
        },
    )
    .await;
    // `status` shows where it stands: waiting in Postgres for its user (read again if it is
    // read in the moment a wake-up claims it to park it anew).
    eventually(Duration::from_secs(10), "status showing the wait", || async {
        let status = roadmap_worker::store::status::job(&db, second, false)
            .await
            .unwrap()
            .expect("status knows the waiting job");
        let text = roadmap_worker::commands::status::describe(&status, chrono::Utc::now());
        text.contains("turn(s) waited for its user").then_some(())
    })
    .await;
    roadmap_worker::client::publish_cancel(&env.publisher, &env.topology, second, "user-1")
        .await
        .unwrap();
    let end = events
        .wait_for_end(second, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.body["reason"], "cancelled", "{}", end.body);
    let done = events
        .wait_for_end(first, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(done.routing_key, "roadmap.completed");
    assert_eq!(
        ready(&env, &env.topology.retry_queue).await,
        0,
        "no wait went through the broker"
    );
    worker.stop().await;
    env.cleanup().await;
}
