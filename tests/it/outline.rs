//! Promise: a job of several batches gets its outline first, in one call, and then writes its
//! phases side by side; the outline is stored with the plan, and a model that cannot write one
//! gets the template's, re-asked once before.

use std::time::Duration;

use mock_llm::{Fault, FaultPlan};
use roadmap_worker::domain::{WeekSource, event::Completed};

use testkit::{TestEnv, eventually, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phases_are_written_side_by_side_after_the_outline() {
    let env = TestEnv::new().await;
    // Every batch after the first phase's first one hangs: written one phase after another, the
    // job would never ask for weeks 7 or 10.
    env.mock.stall_from_week(2);
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(12, "Backend Engineer");
    env.publish(&body).await;
    eventually(
        Duration::from_secs(20),
        "all four phases asked at once",
        || async {
            let requests = env.mock.requests();
            let firsts = [1, 4, 7, 10].map(|week| requests.iter().any(|r| r.first_week == week));
            (firsts == [true; 4]).then_some(())
        },
    )
    .await;
    env.mock.release();
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    let completed: Completed = serde_json::from_value(end.body).unwrap();
    assert_eq!(completed.batches, 4);
    let requests = env.mock.requests();
    assert!(requests[0].outline, "the outline comes before any batch");
    assert_eq!(requests.iter().filter(|r| r.outline).count(), 1);

    // The outline is stored with the plan; the roadmap's phases are the outline's.
    let plan = env.stored_plan(job_id).await;
    let outline = plan.outline.as_ref().expect("the outline is stored");
    assert_eq!(outline.source, WeekSource::Llm);
    assert_eq!(outline.weeks.len(), 12);
    assert_eq!(outline.usage.llm_calls, 1);
    assert_eq!(completed.roadmap.phases, plan.phases);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_outline_is_reasked_once_then_the_template_stands_in() {
    for (script, outcome, source, calls) in [
        (vec![Fault::WrongWeeks], "reasked", WeekSource::Llm, 2),
        (
            vec![Fault::InvalidJson, Fault::Truncate { tokens: 50 }],
            "fallback",
            WeekSource::Fallback,
            2,
        ),
        (
            vec![
                Fault::Status {
                    code: 503,
                    retry_after: None,
                };
                3
            ],
            "fallback",
            WeekSource::Fallback,
            3,
        ),
    ] {
        let env = TestEnv::with_plan(FaultPlan {
            outline_script: script.clone(),
            ..Default::default()
        })
        .await;
        let worker = env.start_worker(&["--llm-max-retries", "2"]).await;
        let mut events = env.watcher().await;
        let (job_id, body) = job(9, "Data Analyst");
        env.publish(&body).await;
        let end = events
            .wait_for_end(job_id, Duration::from_secs(60), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed", "{script:?}: {}", end.body);
        let completed: Completed = serde_json::from_value(end.body).unwrap();
        assert_eq!(
            completed.fallback_batches, 0,
            "{script:?}: the batches are the model's"
        );
        assert_eq!(
            completed.usage.llm_calls,
            calls + 3,
            "{script:?}: the outline's calls and a call per batch"
        );
        let plan = env.stored_plan(job_id).await;
        assert_eq!(plan.outline.map(|o| o.source), Some(source), "{script:?}");
        let metrics = &worker.running.metrics;
        assert_eq!(
            metrics.outlines.with_label_values(&[outcome]).get(),
            1,
            "{script:?}"
        );
        worker.stop().await;
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_one_batch_asks_for_no_outline() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(3, "Designer");
    env.publish(&body).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    assert_eq!(end.body["usage"]["llm_calls"], 1);
    assert!(env.mock.requests().iter().all(|r| !r.outline));
    worker.stop().await;
    env.cleanup().await;
}
