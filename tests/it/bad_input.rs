//! Promise: a malformed message is dead-lettered with its reason, announced when its job_id is
//! readable, and the worker goes on with the next job.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use testkit::{TestEnv, eventually, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_are_dead_lettered_and_the_worker_goes_on() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;

    env.publish_raw(b"this is not json", Some("application/json"))
        .await;
    let bad_id = Uuid::new_v4();
    env.publish(&json!({"job_id": bad_id, "user_id": "u-7", "target_role": "Chef", "duration_weeks": 99}))
        .await;
    let (job_id, body) = job(3, "Mobile Developer");
    env.publish(&body).await;

    let failed = events
        .wait_for_end(bad_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(failed.routing_key, "roadmap.failed");
    assert_eq!(failed.body["reason"], "out_of_range");
    assert_eq!(failed.body["user_id"], "u-7");
    let done = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(
        done.routing_key, "roadmap.completed",
        "the worker went on after bad input"
    );

    let dead = eventually(Duration::from_secs(10), "two dead letters", || async {
        let dead = env.dead_letters().await;
        (dead.len() == 2).then_some(dead)
    })
    .await;
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|d| d.reason.clone().unwrap_or_default())
        .collect();
    reasons.sort();
    assert_eq!(reasons, vec!["not_json", "out_of_range"]);
    assert!(
        dead.iter().any(|d| d.body == b"this is not json"),
        "the original bytes are kept"
    );
    let metrics = &worker.running.metrics;
    assert_eq!(metrics.dead_lettered.with_label_values(&["not_json"]).get(), 1);
    assert_eq!(
        metrics.jobs_rejected.with_label_values(&["out_of_range"]).get(),
        1
    );

    worker.stop().await;
    env.cleanup().await;
}
