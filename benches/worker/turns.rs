//! Part 7: whose turn it is (run alone: `-- turns`).
//!
//! **Fairness between users.** One replica (`WORKER_CONCURRENCY=8`, `USER_MAX_IN_FLIGHT=4`)
//! with a 500 ms LLM; one user publishes 200 three-week jobs, then another user one. Printed:
//! the other user's job from publish to completion, against the mean job's duration.
//!
//! **Interactive before bulk.** The same replica without the user limit, 100 bulk jobs of 12
//! weeks queued (`priority: "bulk"`), then one interactive job: the time from its publish to its
//! claim (its row's `created_at`), against one batch's time (the LLM's 500 ms).

use std::time::{Duration, Instant};

use mock_llm::FaultPlan;

use crate::{
    fixture::ROLE,
    util::{scrape, spawn_replica},
};
use testkit::TestEnv;

const LLM: Duration = Duration::from_millis(500);

pub async fn turns() {
    println!(
        "[7] turns: one replica, WORKER_CONCURRENCY 8, mock LLM answering after {} ms",
        LLM.as_millis()
    );
    fairness().await;
    priority().await;
    println!();
}

async fn fairness() {
    let env = TestEnv::with_mock(FaultPlan::default(), LLM).await;
    let _sink = env.event_sink().await;
    let (mut child, addr, http) =
        spawn_replica(&env, &[("WORKER_CONCURRENCY", "8"), ("USER_MAX_IN_FLIGHT", "4")]).await;
    let mut events = env.watcher().await;
    for _ in 0..200 {
        let (_, mut body) = testkit::job(3, ROLE);
        body["user_id"] = "busy-user".into();
        env.publish(&body).await;
    }
    let (other, mut body) = testkit::job(3, ROLE);
    body["user_id"] = "other-user".into();
    let published = Instant::now();
    env.publish(&body).await;
    events
        .wait_for_end(other, Duration::from_secs(300), |_| {})
        .await
        .expect("the other user's job ends");
    let waited = published.elapsed();
    let done = scrape(&http, &addr, "roadmap_jobs_completed_total")
        .await
        .unwrap_or(0.0);
    let secs = scrape(&http, &addr, "roadmap_job_duration_seconds_sum")
        .await
        .unwrap_or(0.0);
    let deferred = scrape(
        &http,
        &addr,
        "roadmap_deliveries_deferred_total{reason=\"user_limit\"}",
    )
    .await
    .unwrap_or(0.0);
    let _ = child.start_kill();
    let _ = child.wait().await;
    env.cleanup().await;
    let mean = secs / done.max(1.0);
    println!(
        "    USER_MAX_IN_FLIGHT 4: 200 jobs of one user, then one of another: that one completed {:.2} s after \
         its publish = {:.1} mean job durations ({mean:.2} s; {done} jobs done by then, {deferred} hand-backs \
         for the user limit)",
        waited.as_secs_f64(),
        waited.as_secs_f64() / mean.max(f64::EPSILON)
    );
}

async fn priority() {
    let env = TestEnv::with_mock(FaultPlan::default(), LLM).await;
    let _sink = env.event_sink().await;
    let (mut child, _addr, _http) = spawn_replica(&env, &[("WORKER_CONCURRENCY", "8")]).await;
    for _ in 0..100 {
        let (_, mut body) = testkit::job(12, ROLE);
        body["priority"] = "bulk".into();
        env.publish(&body).await;
    }
    // Every slot busy with bulk work before the interactive job arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let db = env.db().await;
    let (job_id, body) = testkit::job(3, ROLE);
    let before: chrono::DateTime<chrono::Utc> = db.query_one("SELECT now()", &[]).await.expect("now").get(0);
    env.publish(&body).await;
    let claimed = testkit::eventually(Duration::from_secs(60), "the interactive job's claim", || async {
        let row = db
            .query_opt("SELECT created_at FROM jobs WHERE job_id = $1", &[&job_id])
            .await
            .ok()??;
        Some(row.get::<_, chrono::DateTime<chrono::Utc>>(0))
    })
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    env.cleanup().await;
    let started = (claimed - before).to_std().unwrap_or_default();
    println!(
        "    100 bulk jobs queued, every slot busy, then one interactive job: claimed {:.0} ms after its \
         publish ({:.2} batch times of {} ms)",
        started.as_secs_f64() * 1000.0,
        started.as_secs_f64() / LLM.as_secs_f64(),
        LLM.as_millis()
    );
}
