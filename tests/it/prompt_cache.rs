//! Promise: a job's prompts start with the same bytes, OpenAI calls carry the job id as
//! `prompt_cache_key`, and the input tokens a provider serves from its cache are recorded per
//! batch, summed in the completion event's usage and counted in a metric.

use std::time::Duration;

use roadmap_worker::domain::event::Completed;

use testkit::{TestEnv, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_input_tokens_are_recorded_from_both_providers() {
    for provider in ["openai", "gemini"] {
        let env = TestEnv::new().await;
        let worker = env.start_worker_for(provider, &[]).await;
        let mut events = env.watcher().await;
        let (job_id, body) = job(12, "Site Reliability Engineer");
        env.publish(&body).await;
        let end = events
            .wait_for_end(job_id, Duration::from_secs(60), |_| {})
            .await
            .unwrap();
        let completed: Completed = serde_json::from_value(end.body).unwrap();
        let requests = env.mock.requests();
        assert_eq!(requests.len(), 5, "{provider}: the outline and 4 batches");
        assert!(requests[0].outline, "{provider}");
        if provider == "openai" {
            let key = job_id.to_string();
            assert!(
                requests
                    .iter()
                    .all(|r| r.cache_key.as_deref() == Some(key.as_str())),
                "every call carries the job id as prompt_cache_key"
            );
        }
        // The first call has nothing to share; the first batch shares the job's line with the
        // outline; every later batch shares the whole prefix of the job's batches.
        assert_eq!(requests[0].cached_tokens, 0, "{provider}");
        assert!(requests[1].cached_tokens > 20, "{provider}: {requests:?}");
        assert!(
            requests[2..].iter().all(|r| r.cached_tokens > 100),
            "{provider}: {requests:?}"
        );
        let served: u64 = requests.iter().map(|r| r.cached_tokens).sum();
        let usage = completed.usage;
        assert_eq!(
            usage.cached_input_tokens, served,
            "{provider}: the event sums what the provider said"
        );
        assert!(usage.cached_input_tokens < usage.input_tokens, "{provider}");
        println!(
            "{provider}: {} of {} input tokens served from the cache ({:.0}%)",
            usage.cached_input_tokens,
            usage.input_tokens,
            100.0 * usage.cached_input_tokens as f64 / usage.input_tokens as f64
        );
        let db = env.db().await;
        let stored: i64 = db
            .query_one(
                // Stored per batch, summed into the job's row when its completion folded them.
                "SELECT (batch_totals->>'cached_input_tokens')::bigint FROM jobs WHERE job_id = $1",
                &[&job_id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored as u64, served, "{provider}: stored per batch");
        let counted = worker
            .running
            .metrics
            .llm_tokens
            .with_label_values(&["cached_input"])
            .get();
        assert_eq!(counted, served, "{provider}: the metric");
        worker.stop().await;
        env.cleanup().await;
    }
}
