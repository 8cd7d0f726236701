//! Promise: with `LLM_HTTP2=true` the calls go over HTTP/2 (h2c against an `http://` base URL),
//! and the answer gate works there as over HTTP/1.1: answers past its places wait unread, each
//! within its own small flow-control window, the admitted ones are read meanwhile, and every job
//! completes without an answer running out its wait. (At scale, thousands of answers at once,
//! the bench's part 3 shows the memory this saves.)

use std::time::Duration;

use mock_llm::FaultPlan;
use roadmap_worker::domain::event::Completed;

use testkit::{TestEnv, job};

const JOBS: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_http2_wait_at_the_gate_without_stalling_each_other() {
    // Answers come together after 300 ms; one database connection gives the gate 2 places.
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(300)).await;
    let worker = env
        .start_worker(&[
            "--llm-http2",
            "true",
            "--database-pool-size",
            "1",
            "--worker-concurrency",
            "24",
        ])
        .await;
    let mut events = env.watcher().await;
    let jobs: Vec<_> = (0..JOBS).map(|_| job(3, "Site Reliability Engineer")).collect();
    for (_, body) in &jobs {
        env.publish(body).await;
    }
    for (job_id, _) in &jobs {
        let end = events
            .wait_for_end(*job_id, Duration::from_secs(120), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
        let completed: Completed = serde_json::from_value(end.body).unwrap();
        assert_eq!(completed.fallback_batches, 0);
    }
    let requests = env.mock.requests();
    // A three-week answer is about 19 KB: more than two of its 8 KiB windows.
    assert_eq!(
        requests.len(),
        JOBS,
        "one batch per job (a single batch needs no outline)"
    );
    assert_eq!(
        env.mock.http2_requests(),
        requests.len(),
        "every call over HTTP/2"
    );
    assert_eq!(
        worker.running.metrics.answers_unadmitted.get(),
        0,
        "an answer ran out its wait at the gate: unread answers held back the admitted ones"
    );
    worker.stop().await;
    env.cleanup().await;
}
