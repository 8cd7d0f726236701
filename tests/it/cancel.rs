//! Promise: a job's user can cancel it. The cancel message is taken by any replica and recorded
//! in Postgres; the replica working the job stops at its next batch boundary, keeps the batches
//! written and announces `roadmap.failed` with reason `cancelled`. A cancel from another user,
//! or for a finished or unknown job, changes nothing and is answered `roadmap.cancel_rejected`.

use std::time::Duration;

use mock_llm::FaultPlan;
use roadmap_worker::store;

use testkit::{TestEnv, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_job_at_its_next_batch_and_only_its_user_may_cancel() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_secs(1)).await;
    // Replica A works the job, one batch after another; replica B only takes messages.
    let a = env.start_worker(&["--job-parallelism", "1"]).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(12, "Data Engineer");
    env.publish(&body).await;
    let accepted = events
        .next(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the job's acceptance");
    assert_eq!(accepted.routing_key, "roadmap.accepted");
    let first = events
        .next(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("a first progress event");
    assert_eq!(first.routing_key, "roadmap.progress");
    let b = env.start_worker(&["--worker-concurrency", "1"]).await;

    // Another user's cancel changes nothing, and says so without revealing the job.
    let publisher = &env.publisher;
    roadmap_worker::client::publish_cancel(publisher, &env.topology, job_id, "someone-else")
        .await
        .unwrap();
    // The user's own cancel, recorded as any replica records it.
    roadmap_worker::client::publish_cancel(publisher, &env.topology, job_id, "user-1")
        .await
        .unwrap();
    let mut rejected = None;
    let end = loop {
        let event = events
            .next(Duration::from_secs(30))
            .await
            .unwrap()
            .expect("events keep coming");
        match event.routing_key.as_str() {
            "roadmap.cancel_rejected" => rejected = Some(event),
            "roadmap.failed" | "roadmap.completed" => break event,
            _ => {}
        }
    };
    assert_eq!(end.routing_key, "roadmap.failed", "{}", end.body);
    assert_eq!(end.body["reason"], "cancelled");
    let rejected = rejected.expect("the other user's cancel was answered");
    assert_eq!(rejected.body["reason"], "unknown_job", "{}", rejected.body);
    assert_eq!(rejected.body["user_id"], "someone-else");

    let db = env.db().await;
    let stored: i64 = db
        .query_one("SELECT count(*) FROM batches WHERE job_id = $1", &[&job_id])
        .await
        .unwrap()
        .get(0);
    assert!(
        (1..4).contains(&stored),
        "stopped at a batch boundary with its batches kept: {stored} of 4"
    );
    let message = end.body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("after {stored} of 4 batches")),
        "{message}"
    );

    // A cancel for an ended job changes nothing and is answered.
    roadmap_worker::client::publish_cancel(publisher, &env.topology, job_id, "user-1")
        .await
        .unwrap();
    let answer = loop {
        let event = events
            .next(Duration::from_secs(30))
            .await
            .unwrap()
            .expect("an answer");
        if event.routing_key == "roadmap.cancel_rejected" {
            break event;
        }
    };
    assert_eq!(answer.body["reason"], "job_failed");
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_recorded_elsewhere_stops_the_replica_working_the_job() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(400)).await;
    let worker = env.start_worker(&["--job-parallelism", "1"]).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(12, "Data Engineer");
    env.publish(&body).await;
    events
        .next(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("a first progress event");
    // What the replica that took the cancel message does: one statement on the job's row.
    let other = env.pool("replica-b").await;
    let answer = store::ledger::request_cancel(&other, job_id, "user-1")
        .await
        .unwrap();
    assert_eq!(answer, store::ledger::CancelRequest::Requested);
    let end = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.body["reason"], "cancelled", "{}", end.body);
    assert_eq!(
        worker
            .running
            .metrics
            .jobs_failed
            .with_label_values(&["cancelled"])
            .get(),
        1
    );
    worker.stop().await;
    env.cleanup().await;
}
