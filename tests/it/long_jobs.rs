//! Promise: a job that outlives the broker's ack timeout acks its delivery early and stays safe:
//! if its replica then dies, the sweeper re-dispatches it and it resumes from its checkpoints.

use std::time::Duration;

use roadmap_worker::store::heartbeat::Liveness;
use testkit::{TestEnv, db_when_ready, job, job_row};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_job_whose_replica_died_is_swept_and_resumed() {
    let env = TestEnv::new().await;
    env.mock.stall_from_week(4);
    // The ack deadline stands in for RabbitMQ's 30-minute consumer timeout.
    let mut first = env.spawn_worker_process(&[("AMQP_ACK_DEADLINE_SECS", "1")]);
    let mut events = env.watcher().await;
    let (job_id, body) = job(9, "Platform Engineer");
    env.publish(&body).await;
    let db = db_when_ready(&env).await;
    job_row(&db, job_id, "the early ack after a checkpoint", |r| {
        (r.get::<_, i32>(1) == 1 && r.get::<_, bool>(5)).then_some(())
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    env.mock.release();

    // No delivery exists any more: only the sweeper can bring the job back.
    let second = env.start_worker(&["--sweep-interval-secs", "1"]).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    assert_eq!(second.running.metrics.jobs_redispatched.get(), 1);
    assert_eq!(second.running.metrics.jobs_resumed.get(), 1);
    let asked_first = env.mock.requests().iter().filter(|r| r.first_week == 1).count();
    assert_eq!(asked_first, 1, "the stored batch was not generated again");
    second.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_stamp_whose_copy_was_lost_expires() {
    let env = TestEnv::new().await;
    let pool = env.pool("sweeper-test").await;
    let db = env.db().await;
    let (job_id, body) = job(3, "Data Engineer");
    // An early-acked job whose owner died, stamped by a sweep whose copy never arrived.
    db.execute(
        "INSERT INTO jobs (job_id, user_id, request, plan, batches_total, owner, lease_until,
                           delivery_acked, redispatched_at)
         VALUES ($1, 'user-1', $2, '{}', 1, 'replica-long-gone', now() + interval '1 minute', true, $3)",
        &[
            &job_id,
            &body,
            &(chrono::Utc::now() - chrono::Duration::minutes(10)),
        ],
    )
    .await
    .unwrap();
    let lease = Duration::from_secs(60);
    let swept = roadmap_worker::store::jobs::sweep(
        &pool,
        roadmap_worker::store::jobs::Sweep::Stranded,
        lease,
        Duration::from_secs(300),
        10,
        &Liveness::judging(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    assert_eq!(
        swept.iter().map(|s| s.job_id).collect::<Vec<_>>(),
        vec![job_id],
        "a 10-minute-old stamp expired"
    );
    // Freshly stamped now: not again until the stamp is old.
    let again = roadmap_worker::store::jobs::sweep(
        &pool,
        roadmap_worker::store::jobs::Sweep::Stranded,
        lease,
        Duration::from_secs(300),
        10,
        &Liveness::judging(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    assert!(again.is_empty(), "swept twice in a row: {again:?}");
    drop(pool);
    env.cleanup().await;
}
