//! Promise: a job published to the queue comes back as one `roadmap.completed` event carrying a
//! complete roadmap, generated a batch at a time over the real HTTP path.

use std::time::Duration;

use roadmap_worker::domain::event::Completed;

use testkit::{TestEnv, eventually, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_week_job_publishes_one_completed_event() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(12, "Data Engineer");
    env.publish(&body).await;

    let mut progress = Vec::new();
    let mut accepted = Vec::new();
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |p| {
            match p.routing_key.as_str() {
                "roadmap.accepted" => accepted.push(progress.len()),
                _ => progress.push(p.body["batches_done"].as_u64().unwrap()),
            }
        })
        .await
        .unwrap();
    assert_eq!(accepted, [0], "one acceptance, before the first progress event");
    assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    let event: Completed = serde_json::from_value(end.body.clone()).unwrap();
    assert_eq!(
        end.message_id,
        Some(event.event_id.to_string()),
        "message_id is the event id"
    );
    // A router can tell whose event it is from the headers, without parsing the body.
    let headers: Vec<(&str, &str)> = end
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let job = job_id.to_string();
    assert_eq!(
        headers,
        vec![
            ("event", "roadmap.completed"),
            ("job_id", job.as_str()),
            ("user_id", "user-1")
        ]
    );
    // Timestamps have one shape: six fractional digits, UTC.
    for field in ["started_at", "completed_at"] {
        let at = end.body[field].as_str().unwrap();
        assert_eq!(
            (at.len(), &at[19..20], &at[26..]),
            (27, ".", "Z"),
            "{field}: {at}"
        );
    }
    let numbers: Vec<u32> = event.roadmap.weeks.iter().map(|w| w.number).collect();
    assert_eq!(numbers, (1..=12).collect::<Vec<_>>());
    assert!(event.roadmap.weeks.iter().all(|w| w.days.len() == 7));
    assert_eq!((event.batches, event.fallback_batches), (4, 0));
    assert_eq!(event.usage.llm_calls, 5, "the outline, then one call per batch");
    assert!(event.usage.input_tokens > 0 && event.usage.output_tokens > 0);
    progress.sort_unstable();
    assert_eq!(progress, vec![1, 2, 3, 4], "one progress event per batch");

    // One outline request, then exactly one batch request per 3 weeks, each for the right
    // weeks (the phases are written side by side, so in no fixed order).
    let requests = env.mock.requests();
    assert_eq!(requests.iter().filter(|r| r.outline).count(), 1);
    assert!(requests[0].outline, "the outline comes first");
    let mut asked: Vec<(u32, u32)> = requests
        .iter()
        .filter(|r| !r.outline)
        .map(|r| (r.first_week, r.last_week))
        .collect();
    asked.sort_unstable();
    assert_eq!(asked, vec![(1, 3), (4, 6), (7, 9), (10, 12)]);

    let db = env.db().await;
    let row = db
        .query_one(
            "SELECT j.status, j.batches_done, r.roadmap->'weeks'->0->>'title' FROM jobs j JOIN roadmaps r USING (job_id) WHERE job_id = $1",
            &[&job_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(row.get::<_, i32>(1), 4);
    assert_eq!(row.get::<_, String>(2), event.roadmap.weeks[0].title);
    // The roadmap is stored once: the outbox row refers to it and the relay embeds it.
    let embedded: bool = db
        .query_one(
            "SELECT payload ? 'roadmap' FROM outbox WHERE routing_key = 'roadmap.completed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!embedded);
    // Every event went out by the express path, published once from memory right after its
    // commit: none was left for the relay to lease and publish again.
    let rows: Vec<(String, i32)> = eventually(Duration::from_secs(10), "every event marked sent", || async {
        let rows = db
            .query(
                "SELECT routing_key, attempts, sent_at IS NOT NULL FROM outbox",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .all(|r| r.get::<_, bool>(2))
            .then(|| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    })
    .await;
    assert_eq!(
        rows.len(),
        6,
        "the acceptance, 4 progress events and the completion: {rows:?}"
    );
    assert!(rows.iter().all(|(_, attempts)| *attempts == 1), "{rows:?}");

    worker.stop().await;
    env.cleanup().await;
}

/// A backend tells "queued" from "working" by the `roadmap.accepted` event: it comes before the
/// first progress event, with the plan's batch count, for jobs of one batch and of many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acceptance_comes_before_the_first_progress_event() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let jobs: Vec<_> = [1, 12, 52]
        .map(|weeks| (weeks, job(weeks, "Platform Engineer")))
        .into();
    for (_, (_, body)) in &jobs {
        env.publish(body).await;
    }
    for (weeks, (job_id, _)) in jobs {
        let mut seen = Vec::new();
        let end = events
            .wait_for_end(job_id, Duration::from_secs(120), |e| seen.push(e.clone()))
            .await
            .unwrap();
        assert_eq!(
            end.routing_key, "roadmap.completed",
            "{weeks} weeks: {}",
            end.body
        );
        let kinds: Vec<&str> = seen.iter().map(|e| e.routing_key.as_str()).collect();
        assert_eq!(kinds[0], "roadmap.accepted", "{weeks} weeks: {kinds:?}");
        assert!(
            kinds[1..].iter().all(|k| *k == "roadmap.progress"),
            "{weeks} weeks: one acceptance, then progress: {kinds:?}"
        );
        let accepted = &seen[0].body;
        assert_eq!(accepted["batches_done"], 0);
        assert_eq!(accepted["claim"], 1);
        assert_eq!(accepted["job_id"], job_id.to_string());
        // The plan as claimed: one batch per BATCH_WEEKS (3) weeks; an outlined job's total may
        // grow when the outline cuts its phases, and the progress events carry the final one.
        let planned = accepted["batches_total"].as_u64().unwrap();
        assert_eq!(planned, u64::from(weeks.div_ceil(3)), "{weeks} weeks");
        let last = seen.last().unwrap();
        let total = last.body["batches_total"].as_u64().unwrap();
        assert!(total >= planned, "{weeks} weeks: {total} < {planned}");
        assert_eq!(seen.len() as u64, total + 1, "{weeks} weeks: {kinds:?}");
        let headers: Vec<&str> = seen[0].headers.keys().map(String::as_str).collect();
        assert_eq!(headers, ["event", "job_id", "user_id"]);
    }
    worker.stop().await;
    env.cleanup().await;
}
