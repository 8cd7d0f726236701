//! Promise: the same job_id delivered more than once yields one roadmap and one event id; a
//! copy published after completion gets the stored completion event again.

use std::time::Duration;

use testkit::{TestEnv, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_job_published_twice_yields_one_roadmap_and_one_event() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(6, "Backend Developer");
    // Both copies are in flight at once on the same worker.
    env.publish(&body).await;
    env.publish(&body).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed");

    // Copies after completion do no new work: the stored completion event is sent again, with
    // its original event id, for a backend that lost the result; a burst of copies, once.
    tokio::time::sleep(roadmap_worker::store::outbox::REANNOUNCE_AFTER + Duration::from_millis(500)).await;
    for _ in 0..3 {
        env.publish(&body).await;
    }
    let mut later = Vec::new();
    while let Some(event) = events.next(Duration::from_secs(4)).await.unwrap() {
        if event.body["job_id"] == job_id.to_string() && event.routing_key != "roadmap.progress" {
            later.push(event);
        }
    }
    assert_eq!(
        later.len(),
        1,
        "the completion is announced again, once: {later:?}"
    );
    assert_eq!(later[0].routing_key, "roadmap.completed");
    assert_eq!(later[0].message_id, end.message_id, "with its original event id");
    assert_eq!(later[0].body, end.body, "and the same content");

    let db = env.db().await;
    let roadmaps: i64 = db
        .query_one("SELECT count(*) FROM roadmaps", &[])
        .await
        .unwrap()
        .get(0);
    let completed: i64 = db
        .query_one(
            "SELECT count(*) FROM outbox WHERE routing_key = 'roadmap.completed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((roadmaps, completed), (1, 1));
    assert_eq!(
        env.mock.requests().len(),
        1 + 3,
        "the outline and each batch of the 6-week job asked once"
    );
    let queued: i64 = db
        .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 0, "every event was confirmed by the broker");

    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_copies_on_one_replica_runs_the_job_once() {
    let env = TestEnv::new().await;
    let mut events = env.watcher().await;
    // Many copies waiting when a replica starts: they arrive together while its pool is still
    // opening connections, so whichever copy reaches the database first is not the one taken up
    // first here. Every copy after the first taken up is a duplicate.
    for round in 0..4 {
        let (job_id, body) = job(6, &format!("Burst role {round}"));
        for _ in 0..12 {
            env.publish(&body).await;
        }
        let before = env.mock.requests().len();
        let worker = env.start_worker(&["--database-pool-size", "16"]).await;
        let end = events
            .wait_for_end(job_id, Duration::from_secs(60), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed");
        tokio::time::sleep(Duration::from_millis(300)).await;
        worker.stop().await;
        assert_eq!(
            env.mock.requests().len() - before,
            1 + 3,
            "round {round}: the outline and each batch asked once"
        );
    }
    env.cleanup().await;
}
