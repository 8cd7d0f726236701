//! Slow faults and everyday operations (not part of `cargo test`: they stop the machine's
//! Postgres and restart worker processes for minutes). Run alone:
//! `cargo test --test outage -- --nocapture --test-threads=1`.
//!
//! - A Postgres outage many times longer than a hand-back cycle, with jobs in flight and jobs
//!   published meanwhile: every job completes afterwards, nothing is dead-lettered.
//! - Rolling restarts of 3 replicas, 7 rounds, with LLM calls longer than the drain's grace,
//!   during 52-week jobs: every job completes, none fails, none is left running, and no
//!   restart is counted against a job.

use std::time::{Duration, Instant};

use mock_llm::FaultPlan;
use testkit::{TestEnv, job, services::stop_postgres, sigterm};
use uuid::Uuid;

/// Counts messages left in a queue (ready ones; the workers are stopped by then).
async fn queue_len(env: &TestEnv, queue: &str) -> u32 {
    let channel = env.connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap()
        .message_count()
}

/// Waits for the completed event of every job in `ids`; panics on a failed one.
async fn all_complete(events: &mut roadmap_worker::client::EventWatcher, ids: &[Uuid], within: Duration) {
    let deadline = Instant::now() + within;
    for id in ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let end = events
            .wait_for_end(*id, left, |_| {})
            .await
            .unwrap_or_else(|e| panic!("job {id}: {e:#}"));
        assert_eq!(end.routing_key, "roadmap.completed", "job {id}: {:#}", end.body);
    }
}

/// Every job completed exactly once, none failed or running, none counted as abandoned, no dead
/// letter filed (table or queue), and the recovery queue is empty.
async fn check_ledger(env: &TestEnv, jobs: usize) {
    let db = env.db().await;
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),
                    count(*) FILTER (WHERE status = 'running'), COALESCE(max(abandoned), 0),
                    (SELECT count(*) FROM roadmaps), (SELECT count(*) FROM dead_letters)
             FROM jobs",
            &[],
        )
        .await
        .unwrap();
    let (completed, failed, running, abandoned, roadmaps, dead): (i64, i64, i64, i32, i64, i64) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    println!(
        "ledger: {completed} completed, {failed} failed, {running} running, max abandoned {abandoned}, {roadmaps} roadmaps"
    );
    assert_eq!((completed, failed, running), (jobs as i64, 0, 0));
    assert_eq!(roadmaps, jobs as i64, "one roadmap per job");
    assert_eq!(
        abandoned, 0,
        "no graceful hand-back or outage counted against a job"
    );
    assert_eq!(dead, 0, "dead letters filed in Postgres");
    assert_eq!(
        queue_len(env, &env.topology.dead_letter_queue).await,
        0,
        "dead letters filed in the broker"
    );
    assert_eq!(
        queue_len(env, &env.topology.recover_queue).await,
        0,
        "broker dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_postgres_outage_loses_no_job() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(500)).await;
    // Every timer short, so the outage spans many hand-back cycles (each a 1 s wait in the retry
    // queue, a 1 s probe) and far more than the broker's delivery limit of 5.
    let worker_env = [
        ("RETRY_DELAY_SECS", "1"),
        ("LLM_PROBE_INTERVAL_SECS", "1"),
        ("LEASE_SECS", "6"),
        ("SWEEP_INTERVAL_SECS", "2"),
    ];
    let mut worker = env.spawn_worker_process(&worker_env);
    let mut events = env.watcher().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let (id, body) = job(9, &format!("Outage role {i}"));
        env.publish(&body).await;
        ids.push(id);
    }
    // Let the first batches land, then take Postgres away under the jobs in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outage = Duration::from_secs(75);
    println!("outage: stopping Postgres for {outage:?}");
    let back = stop_postgres();
    for i in 0..4 {
        let (id, body) = job(6, &format!("Queued during outage {i}"));
        env.publish(&body).await;
        ids.push(id);
    }
    tokio::time::sleep(outage).await;
    println!("outage: starting Postgres");
    drop(back);
    all_complete(&mut events, &ids, Duration::from_secs(120)).await;
    sigterm(&worker);
    worker.wait().await.unwrap();
    check_ledger(&env, ids.len()).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_fail_and_strand_nothing() {
    const REPLICAS: usize = 3;
    const ROUNDS: usize = 7;
    // LLM calls of 2.5 s against a 1 s grace: every drain has to stop batches in flight.
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(2500)).await;
    let worker_env = [
        ("SHUTDOWN_GRACE_SECS", "1"),
        ("WORKER_CONCURRENCY", "8"),
        ("LEASE_SECS", "10"),
        ("SWEEP_INTERVAL_SECS", "2"),
    ];
    let mut replicas: Vec<_> = (0..REPLICAS)
        .map(|_| env.spawn_worker_process(&worker_env))
        .collect();
    let mut events = env.watcher().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let (id, body) = job(52, &format!("Rolling role {i}"));
        env.publish(&body).await;
        ids.push(id);
    }
    let started = Instant::now();
    for round in 0..ROUNDS {
        for replica in replicas.iter_mut() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            sigterm(replica);
            let status = replica.wait().await.unwrap();
            assert!(status.success(), "round {round}: a replica exited with {status}");
            *replica = env.spawn_worker_process(&worker_env);
        }
        println!("rolling: round {} done after {:?}", round + 1, started.elapsed());
    }
    all_complete(&mut events, &ids, Duration::from_secs(300)).await;
    println!(
        "rolling: all {} jobs completed after {:?}",
        ids.len(),
        started.elapsed()
    );
    for replica in &mut replicas {
        sigterm(replica);
        replica.wait().await.unwrap();
    }
    check_ledger(&env, ids.len()).await;
    env.cleanup().await;
}
