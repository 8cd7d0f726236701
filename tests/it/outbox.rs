//! Promise: the outbox does not grow without bound: confirmed events are trimmed after their
//! retention, an unconfirmed event is never trimmed, and outcome events (completed, failed) stay
//! with their job (the retention pass takes them, tests/it/retention.rs).

use std::time::Duration;

use roadmap_worker::store;

use testkit::{TestEnv, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_events_are_trimmed_and_unsent_ones_kept() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(3, "Data Analyst");
    env.publish(&body).await;
    events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    worker.stop().await;

    let db = env.db().await;
    // Every event confirmed long ago (the acceptance, a progress and the completion), one never
    // sent, and a
    // failure confirmed long ago.
    db.batch_execute(
        "UPDATE outbox SET sent_at = now() - interval '30 days';
         INSERT INTO outbox (event_id, routing_key, payload, created_at)
         VALUES (gen_random_uuid(), 'roadmap.failed', '{}', now() - interval '30 days');
         INSERT INTO outbox (event_id, job_id, routing_key, payload, created_at, sent_at)
         VALUES (gen_random_uuid(), gen_random_uuid(), 'roadmap.failed', '{}', now() - interval '30 days',
                 now() - interval '30 days');",
    )
    .await
    .unwrap();
    let pool = env.pool("test").await;
    let client = pool.get().await.unwrap();
    let pruned = store::outbox::prune_sent(&client, Duration::from_secs(7 * 24 * 3600), 1000)
        .await
        .unwrap();
    assert_eq!(pruned, 2, "the month-old confirmed acceptance and progress event");
    let left: Vec<(String, bool)> = db
        .query("SELECT routing_key, sent_at IS NULL FROM outbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        left,
        vec![
            ("roadmap.completed".to_owned(), false),
            ("roadmap.failed".to_owned(), true),
            ("roadmap.failed".to_owned(), false)
        ]
    );
    drop((client, pool));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_up_with_a_hundred_jobs_a_second() {
    let env = TestEnv::new().await;
    // The worker creates and migrates the database; its relay then trims on its own schedule.
    let worker = env.start_worker(&[]).await;
    worker.stop().await;
    let db = env.db().await;
    // Five minutes of 100 jobs/s at 6 events each, all confirmed more than the retention ago.
    let rows: i64 = 100 * 6 * 300;
    db.execute(
        "INSERT INTO outbox (event_id, routing_key, payload, created_at, sent_at)
         SELECT gen_random_uuid(), 'roadmap.progress', '{}', now() - interval '8 days', now() - interval '8 days'
         FROM generate_series(1, $1::bigint)",
        &[&rows],
    )
    .await
    .unwrap();
    let pool = env.pool("test").await;
    let client = pool.get().await.unwrap();
    let started = std::time::Instant::now();
    let pruned = store::outbox::prune_sent(&client, Duration::from_secs(7 * 24 * 3600), 5_000)
        .await
        .unwrap();
    let took = started.elapsed();
    println!(
        "trimmed {pruned} rows in {took:?} ({:.0} rows/s; 100 jobs/s make 600)",
        pruned as f64 / took.as_secs_f64()
    );
    assert_eq!(
        pruned, rows as u64,
        "one pass trims the whole backlog, not a fixed slice"
    );
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM outbox WHERE sent_at < now() - interval '7 days'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    drop((client, pool));
    env.cleanup().await;
}
