//! Promise: SIGTERM stops intake, lets the batch in flight finish and checkpoint, hands the job
//! back and exits 0; the next replica continues without asking for any batch twice.

use std::time::Duration;

use mock_llm::FaultPlan;

use testkit::{TestEnv, db_when_ready, job, job_row, sigterm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_batch_in_flight_and_hands_the_job_back() {
    // Slow answers, so that SIGTERM lands while a batch is being generated.
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(600)).await;
    // One phase at a time, so that the job is surely unfinished when SIGTERM lands.
    let mut first = env.spawn_worker_process(&[("SHUTDOWN_GRACE_SECS", "10"), ("JOB_PARALLELISM", "1")]);
    let mut events = env.watcher().await;
    let (job_id, body) = job(12, "Embedded Engineer");
    env.publish(&body).await;
    let db = db_when_ready(&env).await;
    job_row(&db, job_id, "the first checkpoint", |r| {
        (r.get::<_, i32>(1) >= 1).then_some(())
    })
    .await;
    sigterm(&first);
    let status = tokio::time::timeout(Duration::from_secs(15), first.wait())
        .await
        .expect("the worker exits within its grace period")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    // The batch that was in flight at SIGTERM was finished and stored, not dropped.
    let asked = env.mock.requests().iter().filter(|r| !r.outline).count() as i32;
    let (done, owner) = job_row(&db, job_id, "the handed-back job", |r| {
        Some((r.get::<_, i32>(1), r.get::<_, Option<String>>(2)))
    })
    .await;
    assert_eq!(done, asked, "every batch asked before the stop was stored");
    assert!(done < 4, "the job was still unfinished at the stop");
    assert_eq!(owner, None, "the lease was released for the next replica");

    let second = env.start_worker(&[]).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed");
    let requests = env.mock.requests();
    let mut ranges: Vec<u32> = requests
        .iter()
        .filter(|r| !r.outline)
        .map(|r| r.first_week)
        .collect();
    ranges.sort_unstable();
    assert_eq!(ranges, vec![1, 4, 7, 10], "no batch was asked for twice");
    assert_eq!(
        requests.iter().filter(|r| r.outline).count(),
        1,
        "nor the outline"
    );
    second.stop().await;
    env.cleanup().await;
}
