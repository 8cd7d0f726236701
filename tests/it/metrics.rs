//! Promise: /metrics shows what dashboards and alerts need, with the documented names, after a
//! job, a retried LLM call and a refused message. The capture is saved for `deploy/check.sh`,
//! which checks every metric named by the alert rules and the dashboard against it.

use std::time::Duration;

use mock_llm::{Fault, FaultPlan};
use serde_json::json;
use uuid::Uuid;

use testkit::{TestEnv, eventually, job};

/// Where the capture goes; `.ci/run` passes it to `deploy/check.sh`.
pub const CAPTURE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/metrics.txt");

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("series {series} missing from /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_documented_after_a_job() {
    let env = TestEnv::with_plan(FaultPlan {
        script: vec![Fault::Status {
            code: 503,
            retry_after: None,
        }],
        ..Default::default()
    })
    .await;
    let worker = env.start_worker(&[]).await;
    let url = format!("http://{}/metrics", worker.running.metrics_addr);
    let mut events = env.watcher().await;
    let (job_id, body) = job(6, "QA Engineer");
    env.publish(&body).await;
    let bad = json!({"job_id": Uuid::new_v4(), "user_id": "u", "target_role": "r", "duration_weeks": 99});
    env.publish(&bad).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed");
    // The relay confirms the completion event just after it is received; wait for the counter.
    let text = eventually(Duration::from_secs(10), "the events to be counted", || async {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        let rejected = text.contains("roadmap_jobs_rejected_total{reason=\"out_of_range\"} 1");
        let published = text.contains("roadmap_events_published_total{type=\"roadmap.completed\"} 1");
        (rejected && published).then_some(text)
    })
    .await;
    std::fs::write(CAPTURE, &text).unwrap();

    assert_eq!(value(&text, "roadmap_jobs_started_total"), 1.0);
    assert_eq!(value(&text, "roadmap_jobs_completed_total"), 1.0);
    assert_eq!(value(&text, "roadmap_jobs_in_flight"), 0.0);
    assert_eq!(
        value(&text, "roadmap_worker_slots_free"),
        8.0,
        "all slots free when idle"
    );
    assert_eq!(value(&text, "roadmap_batches_total{outcome=\"retried\"}"), 1.0);
    // Six weeks: the outline, then the template's three phases of two weeks, a batch each.
    assert_eq!(value(&text, "roadmap_batches_total{outcome=\"ok\"}"), 2.0);
    assert_eq!(value(&text, "roadmap_outlines_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(value(&text, "roadmap_outlines_total{outcome=\"fallback\"}"), 0.0);
    assert_eq!(
        value(&text, "roadmap_batch_failures_total{reason=\"http_503\"}"),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "roadmap_llm_requests_total{model=\"gpt-4o-mini\",provider=\"openai\",status=\"http_503\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "roadmap_llm_requests_total{model=\"gpt-4o-mini\",provider=\"openai\",status=\"ok\"}"
        ),
        4.0
    );
    assert!(value(&text, "roadmap_llm_tokens_total{direction=\"output\"}") > 1000.0);
    assert!(value(&text, "roadmap_llm_tokens_total{direction=\"input\"}") > 100.0);
    assert_eq!(value(&text, "roadmap_job_duration_seconds_count"), 1.0);
    assert_eq!(value(&text, "roadmap_batch_duration_seconds_count"), 3.0);
    assert_eq!(
        value(
            &text,
            "roadmap_messages_dead_lettered_total{reason=\"out_of_range\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "roadmap_jobs_failed_total{reason=\"out_of_range\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "roadmap_events_published_total{type=\"roadmap.progress\"}"),
        3.0
    );
    assert_eq!(value(&text, "roadmap_provider_ready"), 1.0);
    assert_eq!(value(&text, "roadmap_jobs_resumed_total"), 0.0);
    // Known label values start at 0, so an alert sees the first fallback or poison job.
    assert_eq!(value(&text, "roadmap_batches_total{outcome=\"fallback\"}"), 0.0);
    assert_eq!(
        value(
            &text,
            "roadmap_messages_dead_lettered_total{reason=\"poison_job\"}"
        ),
        0.0
    );
    // The delivery-accounting series exist from the start, at 0 on a healthy run.
    for series in [
        "roadmap_intake_paused{reason=\"database\"}",
        "roadmap_intake_paused{reason=\"provider\"}",
        "roadmap_deliveries_deferred_total{reason=\"shutdown\"}",
        "roadmap_deliveries_recovered_total{outcome=\"failed\"}",
        "roadmap_events_unroutable_total{type=\"roadmap.completed\"}",
        "roadmap_jobs_failed_total{reason=\"delivery_limit\"}",
        "roadmap_duplicate_deliveries_total",
    ] {
        assert_eq!(value(&text, series), 0.0, "{series}");
    }
    // Operator series: the build, the limit, the pool and the process itself.
    assert_eq!(
        value(
            &text,
            &format!("roadmap_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );
    assert_eq!(value(&text, "roadmap_worker_concurrency"), 8.0);
    assert!(value(&text, "roadmap_db_pool_connections{state=\"idle\"}") >= 1.0);
    assert_eq!(value(&text, "roadmap_db_pool_waiting"), 0.0);
    assert!(value(&text, "process_resident_memory_bytes") > 1e6);
    assert!(value(&text, "process_open_fds") > 3.0);
    assert!(value(&text, "process_cpu_seconds_total") > 0.0);
    assert_eq!(
        value(
            &text,
            "roadmap_events_publish_failures_total{type=\"roadmap.completed\"}"
        ),
        0.0
    );
    // No label carries a job or user id.
    assert!(!text.contains(&job_id.to_string()) && !text.contains("user-1"));

    worker.stop().await;
    env.cleanup().await;
}
