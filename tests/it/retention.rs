//! Promise: nothing finished is kept for good. A job that ended more than RETAIN_DAYS ago goes
//! in one pass with its batches, roadmap and outcome events (10,000 at once here), and so does a
//! refused message's failure event of that age; a job within the age, a running job and other
//! events stay. Until then its job_id is remembered (a completed job published again is
//! re-announced, not run again); after, the same job_id is a new job. Replicas take turns: one
//! runs the pass while it holds the lock, and the worker runs it at start.

use std::time::{Duration, Instant};

use roadmap_worker::{
    client::{EventWatcher, ReceivedEvent},
    store::{
        self,
        retention::{BATCH, LOCK_KEY, Purged},
    },
};
use uuid::Uuid;

use testkit::{TestEnv, eventually, job};

const DAY: Duration = Duration::from_secs(86_400);
const RETAIN: Duration = Duration::from_secs(30 * 86_400);
const OLD_JOBS: i64 = 10_000;

/// Inserts `count` finished jobs that ended `days` ago, as the worker leaves them: every tenth
/// failed (cancelled, its two batches kept), the others completed with their roadmap (and, as
/// before V14, their two batches), each with its outcome event, confirmed.
async fn finished_jobs(db: &tokio_postgres::Client, count: i64, days: i32) {
    db.execute(
        "WITH j AS (
            INSERT INTO jobs (job_id, user_id, request, plan, status, batches_total, batches_done, failure_reason,
                              created_at, updated_at, completed_at)
            SELECT gen_random_uuid(), 'user-' || g, '{}', '{}',
                   CASE WHEN g % 10 = 0 THEN 'failed' ELSE 'completed' END, 2, 2,
                   CASE WHEN g % 10 = 0 THEN 'cancelled' END,
                   now() - make_interval(days => $2 + 1), now() - make_interval(days => $2),
                   now() - make_interval(days => $2)
            FROM generate_series(1, $1::bigint) g
            RETURNING job_id, status, completed_at),
         b AS (
            INSERT INTO batches (job_id, batch_index, first_week, last_week, weeks, outcome, fallback_weeks,
                                 llm_calls, input_tokens, output_tokens, fencing_token)
            SELECT job_id, i, 3 * i + 1, 3 * i + 3, '[]', 'ok', 0, 1, 900, 4000, 1
            FROM j, generate_series(0, 1) i),
         r AS (
            INSERT INTO roadmaps (roadmap_id, job_id, user_id, roadmap)
            SELECT gen_random_uuid(), job_id, 'user', '{\"weeks\": []}' FROM j WHERE status = 'completed')
         INSERT INTO outbox (event_id, job_id, routing_key, payload, created_at, sent_at)
         SELECT gen_random_uuid(), job_id, 'roadmap.' || status, '{}', completed_at, completed_at FROM j",
        &[&count, &days],
    )
    .await
    .expect("inserting finished jobs");
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_past_the_age_go_in_one_pass_with_what_they_kept() {
    let env = TestEnv::new().await;
    // The pool migrates the test's database, as a replica's does.
    let pool = env.pool("retention").await;
    let db = env.db().await;
    finished_jobs(&db, OLD_JOBS, 40).await;
    // What stays: jobs that ended 20 days ago, a running job silent for 40 days, a refused
    // message's failure event of yesterday, a cancel's answer (no job) of 40 days ago.
    finished_jobs(&db, 5, 20).await;
    db.batch_execute(
        "INSERT INTO jobs (job_id, user_id, request, plan, batches_total, created_at, updated_at)
         VALUES ('00000000-0000-4000-8000-000000000001', 'running', '{}', '{}', 2,
                 now() - interval '41 days', now() - interval '40 days');
         INSERT INTO batches (job_id, batch_index, first_week, last_week, weeks, outcome, fallback_weeks,
                              llm_calls, input_tokens, output_tokens, fencing_token)
         VALUES ('00000000-0000-4000-8000-000000000001', 0, 1, 3, '[]', 'ok', 0, 1, 900, 4000, 1);
         INSERT INTO outbox (event_id, job_id, routing_key, payload, created_at, sent_at)
         VALUES (gen_random_uuid(), gen_random_uuid(), 'roadmap.failed', '{}', now() - interval '1 day', now()),
                (gen_random_uuid(), NULL, 'roadmap.cancel_rejected', '{}', now() - interval '40 days',
                 now() - interval '40 days');
         -- What goes besides: a refused message's failure event of 40 days ago, unsent (no
         -- queue ever took it).
         INSERT INTO outbox (event_id, job_id, routing_key, payload, created_at, sent_at)
         VALUES (gen_random_uuid(), gen_random_uuid(), 'roadmap.failed', '{}', now() - interval '40 days', NULL);
         ANALYZE;",
    )
    .await
    .unwrap();

    let started = Instant::now();
    let purged = store::retention::purge_exclusive(&pool, RETAIN, BATCH)
        .await
        .unwrap()
        .expect("no other session holds the lock");
    println!(
        "retention pass: {purged:?} in {:?} ({} jobs per statement)",
        started.elapsed(),
        BATCH
    );
    let completed = OLD_JOBS * 9 / 10;
    assert_eq!(
        purged,
        Purged {
            jobs: OLD_JOBS as u64,
            batches: 2 * OLD_JOBS as u64,
            roadmaps: completed as u64,
            outbox: OLD_JOBS as u64 + 1,
        },
        "every job past the age, with its batches, roadmap and outcome event, and the refusal's event"
    );
    let old = "now() - interval '30 days'";
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM jobs WHERE status <> 'running' AND completed_at < {old}")
        )
        .await,
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM jobs").await, 5 + 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM batches").await,
        5 * 2 + 1,
        "the young jobs' and the running job's"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM roadmaps").await, 5);
    let left: Vec<(String, bool)> = db
        .query(
            "SELECT routing_key, job_id IN (SELECT job_id FROM jobs) FROM outbox ORDER BY routing_key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<bool>>(1).unwrap_or(false)))
        .collect();
    let mut expected = vec![("roadmap.cancel_rejected".to_owned(), false)];
    expected.extend(std::iter::repeat_n(("roadmap.completed".to_owned(), true), 5));
    expected.push(("roadmap.failed".to_owned(), false));
    assert_eq!(
        left, expected,
        "the young jobs' outcomes, yesterday's refusal, the cancel's answer"
    );
    assert_eq!(
        // In this test's database (a lock is the cluster's; other tests take theirs).
        count(
            &db,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        .await,
        0,
        "the pooled session let the lock go"
    );

    // While another replica runs the pass (holds the lock), this one does not.
    db.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .unwrap();
    let skipped = store::retention::purge_exclusive(&pool, RETAIN, BATCH)
        .await
        .unwrap();
    assert_eq!(skipped, None);
    db.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .unwrap();
    let again = store::retention::purge_exclusive(&pool, RETAIN, BATCH)
        .await
        .unwrap();
    assert_eq!(again, Some(Purged::default()), "nothing is left to delete");
    drop(pool);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_the_pass_at_start_and_counts_the_rows() {
    let env = TestEnv::new().await;
    let pool = env.pool("retention").await;
    let db = env.db().await;
    finished_jobs(&db, 20, 8).await;
    let worker = env.start_worker(&["--retain-days", "7"]).await;
    eventually(Duration::from_secs(20), "the pass at start", || async {
        (count(&db, "SELECT count(*) FROM jobs").await == 0).then_some(())
    })
    .await;
    // The counters follow the pass's commits: wait for the last table's.
    let metrics = &worker.running.metrics;
    let text = eventually(Duration::from_secs(20), "the pass counted", || async {
        let text = metrics.render();
        text.contains("roadmap_retention_deleted_rows_total{table=\"outbox\"} 20")
            .then_some(text)
    })
    .await;
    for (table, rows) in [("jobs", 20), ("batches", 40), ("roadmaps", 18), ("outbox", 20)] {
        let series = format!("roadmap_retention_deleted_rows_total{{table=\"{table}\"}} {rows}");
        assert!(text.contains(&series), "{series} in:\n{text}");
    }
    worker.stop().await;
    drop(pool);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_id_is_remembered_for_retain_days_then_it_is_a_new_job() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(3, "Site Reliability Engineer");
    env.publish(&body).await;
    let first = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(first.routing_key, "roadmap.completed");
    let db = env.db().await;
    eventually(Duration::from_secs(10), "the completion marked sent", || async {
        let sent = count(
            &db,
            &format!("SELECT count(*) FROM outbox WHERE job_id = '{job_id}' AND sent_at IS NOT NULL"),
        )
        .await;
        // The acceptance, the progress event and the completion.
        (sent == 3).then_some(())
    })
    .await;
    let pool = env.pool("retention").await;
    let client = pool.get().await.unwrap();

    // 29 days on (its rows aged as the clock would age them), a pass keeps the job, and a copy
    // published then is answered with the stored completion, the same event, no LLM call.
    age(&db, job_id, 29).await;
    let kept = store::retention::purge(&client, RETAIN, BATCH).await.unwrap();
    assert_eq!(kept, Purged::default());
    env.publish(&body).await;
    let again = next_outcome(&mut events, job_id).await;
    assert_eq!(again.routing_key, "roadmap.completed");
    assert_eq!(
        again.message_id, first.message_id,
        "re-announced, with its event id"
    );
    assert_eq!(env.mock.requests().len(), 1, "not run again");

    // Two days more: the pass deletes the job, its roadmap and its completion event (its
    // batches went at completion); the relay trimmed its progress event weeks ago.
    age(&db, job_id, 2).await;
    let gone = store::retention::purge(&client, RETAIN, BATCH).await.unwrap();
    assert_eq!(
        gone,
        Purged {
            jobs: 1,
            batches: 0,
            roadmaps: 1,
            outbox: 1
        }
    );
    store::outbox::prune_sent(&client, 7 * DAY, 1_000).await.unwrap();
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM outbox WHERE job_id = '{job_id}'")
        )
        .await,
        0
    );
    // The same job_id is a new job: worked again, a new completion event.
    env.publish(&body).await;
    let fresh = next_outcome(&mut events, job_id).await;
    assert_eq!(fresh.routing_key, "roadmap.completed");
    assert_ne!(fresh.message_id, first.message_id, "a new job's event");
    assert_eq!(env.mock.requests().len(), 2, "the job was worked again");
    drop((client, pool));
    worker.stop().await;
    env.cleanup().await;
}

/// Moves job `job_id`'s end and its events `days` further into the past.
async fn age(db: &tokio_postgres::Client, job_id: Uuid, days: i32) {
    db.execute(
        "UPDATE jobs SET created_at = created_at - make_interval(days => $2),
                         updated_at = updated_at - make_interval(days => $2),
                         completed_at = completed_at - make_interval(days => $2)
         WHERE job_id = $1",
        &[&job_id, &days],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE outbox SET created_at = created_at - make_interval(days => $2),
                           sent_at = sent_at - make_interval(days => $2)
         WHERE job_id = $1",
        &[&job_id, &days],
    )
    .await
    .unwrap();
}

/// The next completed or failed event of `job_id`.
async fn next_outcome(events: &mut EventWatcher, job_id: Uuid) -> ReceivedEvent {
    events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .expect("an outcome event")
}
