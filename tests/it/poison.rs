//! Promise: a job that crashes its worker again and again is failed with a `roadmap.failed`
//! event and dead-lettered after a bounded number of takeovers; it does not loop forever.

use std::time::Duration;

use testkit::{TestEnv, db_when_ready, eventually, job, job_row};

/// How many times the job's first batch was asked for: once per claim.
fn first_batch_asks(env: &TestEnv) -> usize {
    env.mock.requests().iter().filter(|r| r.first_week == 1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_that_kills_its_workers_is_dead_lettered_after_the_limit() {
    let env = TestEnv::new().await;
    // Every LLM call hangs: each worker dies (SIGKILL) while working the job.
    env.mock.stall_from_week(1);
    let mut events = env.watcher().await;
    let (job_id, body) = job(6, "Game Developer");
    env.publish(&body).await;
    let mut db = None;
    for claim in 1..=3 {
        let mut worker = env.spawn_worker_process(&[("JOB_POISON_AFTER", "3")]);
        let client = match db.take() {
            Some(client) => client,
            None => db_when_ready(&env).await,
        };
        job_row(&client, job_id, "the job to be claimed again", |r| {
            (r.get::<_, i32>(3) == claim).then_some(())
        })
        .await;
        eventually(Duration::from_secs(10), "the worker's LLM call", || async {
            (first_batch_asks(&env) >= claim as usize).then_some(())
        })
        .await;
        worker.start_kill().unwrap();
        worker.wait().await.unwrap();
        db = Some(client);
    }
    let db = db.unwrap();
    let worker = env.start_worker(&["--job-poison-after", "3"]).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.failed");
    assert_eq!(end.body["reason"], "poison_job");
    let (status, abandoned) = job_row(&db, job_id, "the failed job", |r| {
        Some((r.get::<_, String>(0), r.get::<_, i32>(4)))
    })
    .await;
    assert_eq!((status.as_str(), abandoned), ("failed", 3));
    let dead = eventually(Duration::from_secs(10), "the dead letter", || async {
        let dead = env.dead_letters().await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.as_deref(), Some("poison_job"));
    assert_eq!(
        first_batch_asks(&env),
        3,
        "the poison job was not generated a fourth time"
    );
    let outlines = env.mock.requests().iter().filter(|r| r.outline).count();
    assert_eq!(outlines, 1, "the stored outline is not asked for again");
    env.mock.release();
    worker.stop().await;
    env.cleanup().await;
}
