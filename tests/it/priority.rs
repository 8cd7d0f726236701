//! Promise: bulk jobs never delay interactive ones by more than one batch. With every slot
//! taken by bulk work, an interactive job makes the youngest bulk job yield at its next batch;
//! the yielded job goes back to the bulk queue with its checkpoints and completes later, and
//! no batch is generated twice.

use std::{collections::HashSet, time::Duration};

use mock_llm::FaultPlan;

use testkit::{TestEnv, eventually, job};

const BULK: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_job_overtakes_a_full_replica_of_bulk_jobs() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(300)).await;
    let worker = env
        .start_worker(&["--worker-concurrency", "2", "--job-parallelism", "1"])
        .await;
    let mut events = env.watcher().await;
    let mut bulk = HashSet::new();
    for _ in 0..BULK {
        // Four batches each after the outline: long enough to be caught mid-job.
        let (job_id, mut body) = job(12, "Data Engineer");
        body["priority"] = "bulk".into();
        env.publish(&body).await;
        bulk.insert(job_id);
    }
    let db = env.db().await;
    eventually(Duration::from_secs(30), "both slots to run bulk jobs", || async {
        let running: i64 = db
            .query_one("SELECT count(*) FROM jobs WHERE status = 'running'", &[])
            .await
            .ok()?
            .get(0);
        (running == 2).then_some(())
    })
    .await;
    let (interactive, body) = job(3, "Data Engineer");
    env.publish(&body).await;
    let mut completed = Vec::new();
    while completed.len() < BULK + 1 {
        let event = events
            .next(Duration::from_secs(180))
            .await
            .expect("the event queue")
            .expect("events keep coming");
        if event.routing_key != "roadmap.completed" {
            continue;
        }
        if let Some(id) = event.body["job_id"].as_str().and_then(|s| s.parse().ok())
            && (id == interactive || bulk.contains(&id))
        {
            completed.push(id);
        }
    }
    let place = completed
        .iter()
        .position(|id| *id == interactive)
        .expect("the interactive job completed");
    println!(
        "the interactive job completed as number {} of {}",
        place + 1,
        completed.len()
    );
    assert!(
        place <= 2,
        "the interactive job waited for bulk jobs to finish: number {} of {}",
        place + 1,
        completed.len()
    );
    let metrics = &worker.running.metrics;
    assert!(
        metrics.deliveries_deferred.with_label_values(&["shutdown"]).get() >= 1,
        "a bulk job was handed back to free its slot"
    );
    assert_eq!(
        metrics.batches_regenerated.get(),
        0,
        "the yielded job resumed from its checkpoints"
    );
    assert!(env.dead_letters().await.is_empty());
    worker.stop().await;
    env.cleanup().await;
}
