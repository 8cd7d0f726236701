//! Promise: duplicates of a job a live replica is working are settled at once; fifty of them do
//! not hold worker slots, so other users' jobs run as fast as without them.

use std::time::{Duration, Instant};

use mock_llm::FaultPlan;

use testkit::{TestEnv, job};

/// Wall time until five one-batch jobs of other users have all completed.
async fn five_short_jobs(env: &TestEnv) -> Duration {
    let mut events = env.watcher().await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (id, mut body) = job(2, "QA Engineer");
        body["user_id"] = format!("other-user-{i}").into();
        env.publish(&body).await;
        ids.push(id);
    }
    for id in ids {
        let end = events
            .wait_for_end(id, Duration::from_secs(60), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed");
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_duplicates_of_a_running_job_do_not_slow_other_jobs() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(400)).await;
    let worker = env.start_worker(&["--worker-concurrency", "16"]).await;
    let baseline = five_short_jobs(&env).await;

    // A 24-week job (8 batches of 0.4 s), then 50 copies of it while it runs.
    let mut events = env.watcher().await;
    let (long_id, long) = job(24, "Platform Engineer");
    env.publish(&long).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..50 {
        env.publish(&long).await;
    }
    let with_duplicates = five_short_jobs(&env).await;
    println!("five short jobs: {baseline:?} alone, {with_duplicates:?} beside 50 duplicates");
    let end = events
        .wait_for_end(long_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed");
    // Within 20%, plus a little for a shared machine's scheduling.
    assert!(
        with_duplicates <= baseline.mul_f64(1.2) + Duration::from_millis(300),
        "{with_duplicates:?} against {baseline:?} without duplicates"
    );
    let settled = worker.running.metrics.duplicate_deliveries.get();
    assert!(
        settled >= 45,
        "only {settled} of 50 duplicates were settled as such"
    );
    assert_eq!(
        env.mock.requests().len(),
        5 + 1 + 8 + 5,
        "the long job was generated once: its outline and its batches each asked once"
    );
    worker.stop().await;
    env.cleanup().await;
}
