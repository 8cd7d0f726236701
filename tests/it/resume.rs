//! Promise: a job whose worker dies mid-roadmap resumes on another worker from its checkpoints,
//! and no finished batch is asked of the LLM again.

use std::time::Duration;

use testkit::{TestEnv, db_when_ready, eventually, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_resumes_from_checkpoints_without_regenerating() {
    let env = TestEnv::new().await;
    let (job_id, body) = job(12, "Site Reliability Engineer");
    // The four phases (of 3 weeks each) are written side by side: the first worker completes
    // the batches of phases 1 and 2 and hangs in those of phases 3 and 4, where it is killed.
    env.mock.stall_from_week(7);
    let mut first = env.spawn_worker_process(&[]);
    let mut events = env.watcher().await;
    env.publish(&body).await;
    // The worker process creates and migrates the database; wait for it rather than race it.
    let db = db_when_ready(&env).await;
    eventually(
        Duration::from_secs(30),
        "two checkpoints and the last two batches asked",
        || async {
            let done: i32 = db
                .query_opt("SELECT batches_done FROM jobs WHERE job_id = $1", &[&job_id])
                .await
                .unwrap()
                .map_or(0, |r| r.get(0));
            let requests = env.mock.requests();
            let asked_last = [7, 10].map(|week| requests.iter().any(|r| r.first_week == week));
            (done == 2 && asked_last == [true, true]).then_some(())
        },
    )
    .await;
    first.start_kill().unwrap(); // SIGKILL: no drain, no lease release
    first.wait().await.unwrap();
    env.mock.release();

    let second = env.start_worker(&[]).await;
    let mut accepted = Vec::new();
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |e| {
            if e.routing_key == "roadmap.accepted" {
                accepted.push((e.body["claim"].clone(), e.body["batches_done"].clone()));
            }
        })
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    // A backend sees the job start, then taken over with the batches already stored.
    assert_eq!(
        accepted,
        [
            (serde_json::json!(1), serde_json::json!(0)),
            (serde_json::json!(2), serde_json::json!(2))
        ],
        "one acceptance per claim"
    );
    let weeks: Vec<u64> = end.body["roadmap"]["weeks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["number"].as_u64().unwrap())
        .collect();
    assert_eq!(weeks, (1..=12).collect::<Vec<_>>());

    let asked = |first: u32| {
        env.mock
            .requests()
            .iter()
            .filter(|r| r.first_week == first)
            .count()
    };
    assert_eq!(asked(1), 1, "batch 1 was stored; it must not be asked again");
    assert_eq!(asked(4), 1, "batch 2 was stored; it must not be asked again");
    assert_eq!(asked(7), 2, "batch 3 was cut by the kill and asked once more");
    assert_eq!(asked(10), 2, "batch 4 was cut by the kill and asked once more");
    let outlines = env.mock.requests().iter().filter(|r| r.outline).count();
    assert_eq!(outlines, 1, "the stored outline is not asked for again");
    assert_eq!(second.running.metrics.jobs_resumed.get(), 1);
    let row = db
        .query_one(
            "SELECT claims, (SELECT count(*) FROM roadmaps) FROM jobs WHERE job_id = $1",
            &[&job_id],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i64>(1)), (2, 1));

    second.stop().await;
    env.cleanup().await;
}
