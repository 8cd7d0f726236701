//! Promise: with `USER_MAX_IN_FLIGHT`, one user's backlog cannot hold the fleet. Their jobs
//! beyond the limit wait their turn in the retry queue (no worker slot held, no delivery
//! counted), another user's job goes ahead, and every job still completes.

use std::{collections::HashSet, time::Duration};

use mock_llm::FaultPlan;
use testkit::{TestEnv, job};

const LIMIT: i64 = 2;
const BACKLOG: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_users_job_overtakes_the_first_users_backlog() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(300)).await;
    let limit = LIMIT.to_string();
    let a = env.start_worker(&["--user-max-in-flight", &limit]).await;
    let b = env.start_worker(&["--user-max-in-flight", &limit]).await;
    let mut events = env.watcher().await;
    let mut backlog = Vec::new();
    for _ in 0..BACKLOG {
        let (job_id, mut body) = job(3, "Data Engineer");
        body["user_id"] = "bulk-user".into();
        env.publish(&body).await;
        backlog.push(job_id);
    }
    let (other, mut body) = job(3, "Data Engineer");
    body["user_id"] = "other-user".into();
    env.publish(&body).await;

    // The limit holds across both replicas while the backlog drains.
    let db = env.db().await;
    let watch = tokio::spawn(async move {
        let mut most = 0;
        for _ in 0..200 {
            let running: i64 = db
                .query_one(
                    "SELECT count(*) FROM jobs WHERE user_id = 'bulk-user' AND status = 'running'
                     AND lease_until > now()",
                    &[],
                )
                .await
                .expect("the jobs table")
                .get(0);
            most = most.max(running);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        most
    });
    let mut ended = Vec::new();
    let mut waiting: HashSet<_> = backlog.iter().copied().chain([other]).collect();
    while !waiting.is_empty() {
        let event = events
            .next(Duration::from_secs(120))
            .await
            .expect("the event queue")
            .expect("events keep coming");
        let Some(id) = event.body["job_id"].as_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if event.routing_key == "roadmap.completed" && waiting.remove(&id) {
            ended.push(id);
        }
    }
    let place = ended
        .iter()
        .position(|id| *id == other)
        .expect("the other user's job completed");
    println!(
        "the other user's job completed {}th of {}",
        place + 1,
        ended.len()
    );
    assert!(
        place < BACKLOG / 2,
        "the other user's job waited for the backlog: it completed as number {} of {}",
        place + 1,
        ended.len()
    );
    let most = watch.await.expect("the watcher");
    assert!(
        most <= LIMIT,
        "{most} of the user's jobs ran at once, over {LIMIT}"
    );
    let deferred: u64 = [&a, &b]
        .iter()
        .map(|w| {
            w.running
                .metrics
                .deliveries_deferred
                .with_label_values(&["user_limit"])
                .get()
        })
        .sum();
    assert!(deferred > 0, "jobs over the limit were handed back to wait");
    assert!(
        env.dead_letters().await.is_empty(),
        "no job spent its delivery limit"
    );
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}
