//! Promise: no event is dropped for want of a queue. A completion event published while no
//! consumer queue is bound stays unsent (counted as unroutable, not as published) and reaches a
//! consumer that binds later.

use std::time::Duration;

use testkit::{TestEnv, eventually, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_event_waits_for_a_queue_bound_later() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    // No watcher yet: nothing is bound to the events exchange.
    let (job_id, body) = job(3, "Mobile Developer");
    env.publish(&body).await;
    let db = env.db().await;
    eventually(Duration::from_secs(30), "the job completed", || async {
        let row = db
            .query_opt(
                "SELECT 1 FROM jobs WHERE job_id = $1 AND status = 'completed'",
                &[&job_id],
            )
            .await
            .unwrap();
        row.map(|_| ())
    })
    .await;
    let metrics = &worker.running.metrics;
    eventually(
        Duration::from_secs(10),
        "the completion found no queue",
        || async {
            (metrics
                .events_unroutable
                .with_label_values(&["roadmap.completed"])
                .get()
                >= 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        metrics
            .events_published
            .with_label_values(&["roadmap.completed"])
            .get(),
        0,
        "an event that reached no queue is not counted as published"
    );
    let unsent: i64 = db
        .query_one(
            "SELECT count(*) FROM outbox WHERE job_id = $1 AND routing_key = 'roadmap.completed' AND sent_at IS NULL",
            &[&job_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unsent, 1, "the completion event is kept unsent");

    // The backend binds its queue late; the event arrives.
    let mut events = env.watcher().await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed");
    // The consumer may see the event before the relay has read the broker's confirm.
    eventually(
        Duration::from_secs(10),
        "the completion counted as published",
        || async {
            let published = metrics
                .events_published
                .with_label_values(&["roadmap.completed"])
                .get();
            (published == 1).then_some(())
        },
    )
    .await;
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_queue_bound_every_event_counts_as_published() {
    let env = TestEnv::new().await;
    let _sink = env.event_sink().await;
    let worker = env.start_worker(&[]).await;
    let (job_id, body) = job(3, "Mobile Developer");
    env.publish(&body).await;
    let metrics = &worker.running.metrics;
    eventually(Duration::from_secs(30), "the completion published", || async {
        (metrics
            .events_published
            .with_label_values(&["roadmap.completed"])
            .get()
            == 1)
            .then_some(())
    })
    .await;
    for kind in ["roadmap.progress", "roadmap.completed"] {
        assert_eq!(
            metrics.events_unroutable.with_label_values(&[kind]).get(),
            0,
            "{kind}"
        );
    }
    assert_eq!(
        metrics
            .events_published
            .with_label_values(&["roadmap.progress"])
            .get(),
        1
    );
    let db = env.db().await;
    let unsent: i64 = db
        .query_one(
            "SELECT count(*) FROM outbox WHERE job_id = $1 AND sent_at IS NULL",
            &[&job_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unsent, 0);
    worker.stop().await;
    env.cleanup().await;
}
