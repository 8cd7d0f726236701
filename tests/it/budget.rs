//! Promise: `LLM_TPM_LIMIT` / `LLM_RPM_LIMIT` hold for the whole fleet. Replicas on one
//! database reserve before each call and wait their turn, so a provider quota that the same
//! load would overrun answers no 429; what the provider's headers say is followed; and the
//! cost of each batch at `LLM_PRICE_*` is stored and summed exactly in the event and metric.

use std::time::Duration;

use mock_llm::{FaultPlan, QuotaSettings};
use roadmap_worker::{
    config::{Accounting, BudgetSettings},
    domain::event::Completed,
    llm::LlmError,
    metrics::Metrics,
    pipeline::budget::{Budget, Charge},
    store,
};

use testkit::{TestEnv, eventually, job};

/// The mock's quota, and the limit the replicas are told: tokens per minute.
const TPM: u64 = 20_000;
const JOBS: usize = 12;

/// Two replicas with `extra` flags run [`JOBS`] one-week jobs: the fallback batches, the
/// calls that waited for the budget, and the budget rows written.
async fn run_fleet(env: &TestEnv, extra: &[&str]) -> (usize, u64, i64) {
    let a = env.start_worker(extra).await;
    let b = env.start_worker(extra).await;
    let mut events = env.watcher().await;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let (job_id, body) = job(1, "Data Engineer");
        env.publish(&body).await;
        ids.push(job_id);
    }
    let mut fallbacks = 0;
    for id in ids {
        let end = events
            .wait_for_end(id, Duration::from_secs(120), |_| {})
            .await
            .expect("every job ends");
        let completed: Completed = serde_json::from_value(end.body).expect("a completed event");
        fallbacks += completed.fallback_batches as usize;
    }
    let waited = [&a, &b]
        .iter()
        .map(|w| {
            let h = &w.running.metrics.budget_wait;
            // Observations of zero are calls that did not wait; the sum says some did.
            u64::from(h.get_sample_sum() > 0.0) * h.get_sample_count()
        })
        .sum();
    a.stop().await;
    b.stop().await;
    let rows: i64 = env
        .db()
        .await
        .query_one("SELECT count(*) FROM llm_budget", &[])
        .await
        .expect("the budget table")
        .get(0);
    (fallbacks, waited, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_token_budget_and_the_provider_answers_no_429() {
    let quota = QuotaSettings {
        rpm: None,
        tpm: Some(TPM),
    };
    // Without a budget the same load overruns the quota: 429s, retries, template weeks.
    let env = TestEnv::with_quota(FaultPlan::default(), Duration::from_millis(200), quota).await;
    let flags = ["--llm-max-output-tokens", "2500", "--llm-max-retries", "2"];
    let (fallbacks, _, rows) = run_fleet(&env, &flags).await;
    let unbudgeted = env.mock.quota_counts();
    println!("without a budget: {unbudgeted:?}, {fallbacks} fallback batches");
    assert!(
        unbudgeted.refused > 0,
        "the load must overrun the quota: {unbudgeted:?}"
    );
    assert_eq!(rows, 0, "no budget row without limits");
    env.cleanup().await;

    let env = TestEnv::with_quota(FaultPlan::default(), Duration::from_millis(200), quota).await;
    let tpm = TPM.to_string();
    let mut with_budget = flags.to_vec();
    with_budget.extend_from_slice(&["--llm-tpm-limit", &tpm]);
    let (fallbacks, waited, rows) = run_fleet(&env, &with_budget).await;
    let budgeted = env.mock.quota_counts();
    println!("with the budget: {budgeted:?}, {fallbacks} fallback batches");
    assert!(waited > 0, "the load is over the budget, so some calls waited");
    assert_eq!(
        budgeted.refused, 0,
        "the fleet stays within the quota: {budgeted:?}"
    );
    assert_eq!(fallbacks, 0, "no batch fell back for the budget");
    assert_eq!(
        budgeted.admitted, JOBS as u64,
        "one call per one-week job, none retried"
    );
    assert_eq!(rows, 1, "one budget row for the provider and model");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_wait_their_turn_and_corrections_follow_the_provider() {
    let env = TestEnv::new().await;
    let pool = env.pool("budget-test").await;
    let key = "openai/test-model";
    // 600 tokens a minute: one token costs 0.1 s of the clock.
    let ahead = store::budget::reserve(&pool, key, 600.0 * 0.1, 0.0)
        .await
        .unwrap();
    assert!((ahead.tokens.as_secs_f64() - 60.0).abs() < 1.0, "{ahead:?}");
    assert!(
        ahead.wait(Duration::from_secs(60)) < Duration::from_secs(1),
        "a minute's worth is free at once"
    );
    let ahead = store::budget::reserve(&pool, key, 300.0 * 0.1, 0.0)
        .await
        .unwrap();
    let wait = ahead.wait(Duration::from_secs(60));
    assert!(
        (wait.as_secs_f64() - 30.0).abs() < 1.0,
        "the next 300 wait 30 s: {wait:?}"
    );
    // The first call used 100 of its 600: 50 s come back.
    store::budget::correct(&pool, key, (-500.0 * 0.1, 0.0), None, None)
        .await
        .unwrap();
    let peek = store::budget::peek(&pool, key).await.unwrap();
    assert!(
        peek.wait(Duration::from_secs(60)) < Duration::from_secs(1),
        "{peek:?}"
    );
    // The provider says nothing is left: the clock stands a whole burst ahead.
    store::budget::correct(&pool, key, (0.0, 0.0), Some(60.0), None)
        .await
        .unwrap();
    let peek = store::budget::peek(&pool, key).await.unwrap();
    assert!(peek.tokens >= Duration::from_secs(59), "{peek:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_in_the_event_and_the_metric_is_the_batches_tokens_times_the_prices() {
    let env = TestEnv::new().await;
    let prices = [
        "--llm-price-input",
        "0.15",
        "--llm-price-cached-input",
        "0.075",
        "--llm-price-output",
        "0.6",
    ];
    let worker = env.start_worker(&prices).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(6, "Data Engineer");
    env.publish(&body).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .expect("the job ends");
    let completed: Completed = serde_json::from_value(end.body.clone()).expect("a completed event");
    let (input, cached, output) = (
        completed.usage.input_tokens as f64,
        completed.usage.cached_input_tokens as f64,
        completed.usage.output_tokens as f64,
    );
    let expected = ((input - cached) * 0.15 + cached * 0.075 + output * 0.6) / 1e6;
    let cost = end.body["usage"]["cost"]
        .as_f64()
        .expect("usage.cost in the event");
    println!("cost {cost} for {input} input ({cached} cached) and {output} output tokens");
    assert!(cost > 0.0);
    // Each batch is priced and rounded to a billionth on its own: the sum may differ by that.
    assert!((cost - expected).abs() < 1e-8, "{cost} vs {expected}");
    // The batches were folded into the job's row at completion, their cost summed there.
    let stored: i64 = env
        .db()
        .await
        .query_one(
            "SELECT (batch_totals->>'cost_nanos')::bigint FROM jobs WHERE job_id = $1",
            &[&job_id],
        )
        .await
        .expect("the batches' totals")
        .get(0);
    let plan = env.stored_plan(job_id).await;
    let outline = plan.outline.map_or(0, |o| o.usage.cost_nanos);
    assert_eq!(
        completed.usage.cost_nanos,
        stored as u64 + outline,
        "the event sums the stored batches and the outline"
    );
    let metric = worker.running.metrics.llm_cost.get();
    assert!(
        (metric - cost).abs() < 1e-9,
        "the metric {metric} counts the same {cost}"
    );
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_output_token_cap_fails_at_its_next_batch_with_the_reason() {
    let env = TestEnv::new().await;
    let worker = env
        .start_worker(&["--job-max-output-tokens", "3000", "--job-parallelism", "1"])
        .await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(12, "Data Engineer");
    env.publish(&body).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .expect("the job ends");
    assert_eq!(end.routing_key, "roadmap.failed", "{:?}", end.body);
    assert_eq!(end.body["reason"], "output_token_cap");
    let message = end.body["message"].as_str().unwrap_or_default();
    assert!(message.contains("JOB_MAX_OUTPUT_TOKENS (3000)"), "{message}");
    let stored: i64 = env
        .db()
        .await
        .query_one("SELECT count(*) FROM batches WHERE job_id = $1", &[&job_id])
        .await
        .expect("the batches")
        .get(0);
    // One batch of about 5,000 tokens passes the cap: the next is never asked.
    assert_eq!(stored, 1, "the batch written stays stored, no other is asked");
    assert_eq!(
        worker
            .running
            .metrics
            .jobs_failed
            .with_label_values(&["output_token_cap"])
            .get(),
        1
    );
    worker.stop().await;
    env.cleanup().await;
}

/// A budget of `tpm` tokens a minute on `pool`, as the worker builds it, with retry hints
/// capped at `hint_cap`; and its metrics.
fn budget(pool: &deadpool_postgres::Pool, tpm: u64, hint_cap: Duration) -> (Budget, Metrics) {
    let settings = BudgetSettings {
        tpm_limit: Some(tpm),
        accounting: Some(Accounting::Arrival),
        ..BudgetSettings::default()
    };
    let metrics = Metrics::new();
    let budget = Budget::new(
        &settings,
        pool.clone(),
        ("openai", "test-model"),
        metrics.clone(),
        hint_cap,
    );
    (budget, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_dropped_while_it_waits_is_given_back() {
    let env = TestEnv::new().await;
    let pool = env.pool("budget-test").await;
    let (budget, metrics) = budget(&pool, 6_000, Duration::from_secs(2));
    let charge = |tokens| Charge {
        prompt: 0,
        max_output: tokens,
    };
    // A minute's worth goes at once; what follows waits.
    budget.reserve(charge(6_000), false).await;
    let before = store::budget::peek(&pool, "openai/test-model").await.unwrap();
    // A call whose job stops while it waits its turn (a cancel, a sibling's fault, the drain).
    let waiting =
        tokio::time::timeout(Duration::from_millis(300), budget.reserve(charge(3_000), false)).await;
    assert!(waiting.is_err(), "the second call waits for the budget");
    let after = eventually(Duration::from_secs(5), "the reservation given back", || async {
        let peek = store::budget::peek(&pool, "openai/test-model").await.unwrap();
        (peek.tokens <= before.tokens).then_some(peek)
    })
    .await;
    assert!(
        before.tokens - after.tokens < Duration::from_secs(1),
        "the clock is back where it was, less the time that passed: {before:?} then {after:?}"
    );
    assert_eq!(
        metrics.budget_tokens.with_label_values(&["given_back"]).get(),
        3_000
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_long_retry_hint_moves_the_budget_no_further_than_the_ladder_waits() {
    let env = TestEnv::new().await;
    let pool = env.pool("budget-test").await;
    let (budget, metrics) = budget(&pool, 600_000, Duration::from_secs(2));
    let reservation = budget
        .reserve(
            Charge {
                prompt: 1_000,
                max_output: 1_000,
            },
            false,
        )
        .await;
    let refused = LlmError::Transient {
        status: "http_429",
        message: "daily limit".into(),
        retry_after: Some(Duration::from_secs(3600)),
    };
    budget.settle(reservation, Err(&refused)).await;
    let peek = store::budget::peek(&pool, "openai/test-model").await.unwrap();
    let wait = peek.wait(Duration::from_secs(60));
    assert!(
        wait <= Duration::from_secs(2),
        "the next call waits at most LLM_MAX_RETRY_DELAY_MS, not an hour: {wait:?}"
    );
    assert_eq!(metrics.retry_hints_capped.get(), 1, "the long hint is counted");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_at_an_arrival_charged_quota_get_almost_no_429() {
    // The mock's OpenAI dialect charges as OpenAI documents: the prompt and the whole
    // max_tokens at arrival, nothing back for a shorter answer. The fleet is told the quota.
    const LIMIT: u64 = 100_000;
    let quota = QuotaSettings {
        rpm: None,
        tpm: Some(LIMIT),
    };
    let env = TestEnv::with_quota(FaultPlan::default(), Duration::from_millis(200), quota).await;
    let limit = LIMIT.to_string();
    let flags = ["--llm-max-output-tokens", "2500", "--llm-tpm-limit", &limit];
    let replicas = [
        env.start_worker(&flags).await,
        env.start_worker(&flags).await,
        env.start_worker(&flags).await,
    ];
    let mut events = env.watcher().await;
    let mut ids = Vec::new();
    for i in 0..9 {
        let (job_id, body) = job(6, &format!("Quota Engineer {i}"));
        env.publish(&body).await;
        ids.push(job_id);
    }
    let started = std::time::Instant::now();
    for id in ids {
        let end = events
            .wait_for_end(id, Duration::from_secs(240), |_| {})
            .await
            .expect("every job ends");
        assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    }
    let counts = env.mock.quota_counts();
    let share = counts.refused as f64 / (counts.admitted + counts.refused) as f64;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    println!(
        "arrival-charged quota: {counts:?}, {:.1}% answered 429, {:.0} tokens charged per minute over {:.1} min",
        share * 100.0,
        counts.tokens_used as f64 / minutes,
        minutes
    );
    assert!(share <= 0.02, "at most 2% answered 429: {counts:?}");
    for replica in replicas {
        replica.stop().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_its_call_waits_on_the_budget_gives_the_reservation_back() {
    let env = TestEnv::new().await;
    // 10,000 tokens a minute; a 3-week job's one call is charged about 8,700 (its prompt and
    // its output limit): the first goes at once, the second waits about 45 s. Leases of 3 s
    // are renewed every second, and a renewal is what tells the job of its cancel.
    let worker = env
        .start_worker(&["--llm-tpm-limit", "10000", "--lease-secs", "3"])
        .await;
    let pool = env.pool("budget-test").await;
    let key = "openai/gpt-4o-mini";
    let mut events = env.watcher().await;
    let (first, body) = job(3, "Budget Engineer");
    env.publish(&body).await;
    let ahead =
        |pool: deadpool_postgres::Pool| async move { store::budget::peek(&pool, key).await.unwrap().tokens };
    let before = eventually(Duration::from_secs(30), "the first job's reservation", || async {
        let t = ahead(pool.clone()).await;
        (t > Duration::from_secs(30)).then_some(t)
    })
    .await;
    let (second, body) = job(3, "Budget Engineer");
    env.publish(&body).await;
    eventually(
        Duration::from_secs(30),
        "the second job's reservation",
        || async { (ahead(pool.clone()).await > before + Duration::from_secs(30)).then_some(()) },
    )
    .await;
    let asked = std::time::Instant::now();
    roadmap_worker::client::publish_cancel(&env.publisher, &env.topology, second, "user-1")
        .await
        .unwrap();
    let end = events
        .wait_for_end(second, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.failed", "{}", end.body);
    assert_eq!(end.body["reason"], "cancelled", "{}", end.body);
    println!(
        "cancelled while waiting on the budget: ended {:?} after the cancel",
        asked.elapsed()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "the waiting call was dropped, not waited out"
    );
    let after = eventually(Duration::from_secs(5), "the reservation given back", || async {
        let t = ahead(pool.clone()).await;
        (t <= before).then_some(t)
    })
    .await;
    println!("budget clock: {before:?} ahead before the second job, {after:?} after its cancel");
    let end = events
        .wait_for_end(first, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    worker.stop().await;
    env.cleanup().await;
}
