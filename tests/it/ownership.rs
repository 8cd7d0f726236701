//! Promise: a job_id of another user is refused without touching or showing that user's job: the
//! first owner's job, batches, roadmap and events stay exactly as they were.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use testkit::{TestEnv, eventually, hostile::wait_for_dead_letters};

/// A row as JSON text, to compare before and after.
async fn row_json(db: &tokio_postgres::Client, sql: &str, job_id: Uuid) -> Vec<String> {
    db.query(sql, &[&job_id])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

const JOB_ROW: &str = "SELECT row_to_json(j)::text FROM jobs j WHERE job_id = $1";
const ROADMAP_ROW: &str = "SELECT row_to_json(r)::text FROM roadmaps r WHERE job_id = $1";
const BATCH_ROWS: &str = "SELECT row_to_json(b)::text FROM batches b WHERE job_id = $1 ORDER BY batch_index";
const OUTBOX_ROWS: &str = "SELECT row_to_json(o)::text FROM outbox o WHERE job_id = $1 ORDER BY id";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_id_of_another_user_is_refused_and_the_first_job_is_untouched() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut watcher = env.watcher().await;

    let job_id = Uuid::new_v4();
    let a_role = "Confidential Quantum Ledger Architect";
    let a = json!({"job_id": job_id, "user_id": "user-A-7c1e", "target_role": a_role, "duration_weeks": 3,
                   "focus_areas": ["alpha-private-topic"]});
    env.publish(&a).await;
    let done = watcher
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(done.routing_key, "roadmap.completed");
    let a_roadmap_id = done.body["roadmap_id"].as_str().unwrap().to_owned();

    let db = env.db().await;
    // Snapshot once the relay has marked A's events sent.
    eventually(Duration::from_secs(10), "A's events marked sent", || async {
        let unsent: i64 = db
            .query_one(
                "SELECT count(*) FROM outbox WHERE job_id = $1 AND sent_at IS NULL",
                &[&job_id],
            )
            .await
            .unwrap()
            .get(0);
        (unsent == 0).then_some(())
    })
    .await;
    let job_before = row_json(&db, JOB_ROW, job_id).await;
    let roadmap_before = row_json(&db, ROADMAP_ROW, job_id).await;
    let batches_before = row_json(&db, BATCH_ROWS, job_id).await;
    let outbox_before = row_json(&db, OUTBOX_ROWS, job_id).await;
    assert_eq!((job_before.len(), roadmap_before.len()), (1, 1));

    // User B reuses A's job_id.
    let b =
        json!({"job_id": job_id, "user_id": "user-B", "target_role": "Data Analyst", "duration_weeks": 4});
    let b_bytes = b.to_string().into_bytes();
    env.publish_raw(&b_bytes, Some("application/json")).await;
    // A's job exists, so the refusal announces nothing under its job_id: A's consumers must not
    // see a second outcome for their job. B learns of it from the dead letter.
    let a_private = [
        "user-A-7c1e",
        a_role,
        "alpha-private-topic",
        a_roadmap_id.as_str(),
    ];
    if let Some(extra) = watcher.next(Duration::from_secs(3)).await.unwrap() {
        panic!("an event after B's message: {:#}", extra.body);
    }

    let dead = wait_for_dead_letters(&env, 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.as_deref(), Some("job_owned_by_another_user"));
    assert_eq!(dead[0].body, b_bytes, "the dead letter is B's own message");
    let headers = format!("{:?}", dead[0].headers);
    for secret in a_private {
        assert!(
            !headers.contains(secret),
            "the dead letter shows {secret:?}: {headers}"
        );
    }

    // A's job, batches, roadmap and events are exactly as they were.
    assert_eq!(row_json(&db, JOB_ROW, job_id).await, job_before);
    assert_eq!(row_json(&db, ROADMAP_ROW, job_id).await, roadmap_before);
    assert_eq!(row_json(&db, BATCH_ROWS, job_id).await, batches_before);
    let outbox_after = row_json(&db, OUTBOX_ROWS, job_id).await;
    assert_eq!(&outbox_after[..outbox_before.len()], outbox_before.as_slice());
    let added: Vec<Value> = outbox_after[outbox_before.len()..]
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    assert!(added.is_empty(), "nothing was announced for A's job: {added:#?}");
    let stored: i64 = db
        .query_one("SELECT count(*) FROM roadmaps", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "B got no roadmap");
    let metrics = &worker.running.metrics;
    assert_eq!(
        metrics
            .dead_lettered
            .with_label_values(&["job_owned_by_another_user"])
            .get(),
        1
    );

    worker.stop().await;
    env.cleanup().await;
}
