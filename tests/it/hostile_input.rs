//! Promise: every malformed message is dead-lettered with its reason, counted and (when its job_id
//! is readable) announced, and the worker goes on. The corpus of hostile messages is in
//! `common/hostile.rs`; ownership, prompt injection and secrets have their own test files.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use testkit::{
    DeadLetter, TestEnv, eventually,
    hostile::{Case, collect_events, corpus, wait_for_dead_letters},
    job,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_dead_lettered_with_their_reason_and_the_worker_goes_on() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut watcher = env.watcher().await;
    let cases = corpus();
    let bodies: BTreeSet<&[u8]> = cases.iter().map(|c| c.body.as_slice()).collect();
    assert_eq!(bodies.len(), cases.len(), "each case has distinct bytes");
    let codes: BTreeSet<&str> = cases.iter().map(|c| c.code).collect();
    assert!(
        cases.len() >= 30 && codes.len() >= 15,
        "{} cases, codes {codes:?}",
        cases.len()
    );

    for case in &cases {
        env.publish_raw(&case.body, case.content_type).await;
    }
    let (valid_id, valid) = job(3, "Platform Engineer");
    env.publish(&valid).await;

    // Every case is dead-lettered with its own reason; its original bytes are kept.
    let dead = wait_for_dead_letters(&env, cases.len(), Duration::from_secs(60)).await;
    let by_body: BTreeMap<&[u8], &DeadLetter> = dead.iter().map(|d| (d.body.as_slice(), d)).collect();
    assert_eq!(dead.len(), cases.len(), "one dead letter per case, no more");
    for case in &cases {
        let letter = by_body
            .get(case.body.as_slice())
            .unwrap_or_else(|| panic!("{}: no dead letter with its bytes", case.name));
        assert_eq!(letter.reason.as_deref(), Some(case.code), "{}", case.name);
        assert!(
            letter.headers.inner().contains_key("x-reject-message"),
            "{}: no x-reject-message",
            case.name
        );
    }

    // The worker goes on: a valid job sent after all of them completes, and every readable
    // job_id is announced with its reason and sender.
    let announced: BTreeMap<String, &Case> = cases
        .iter()
        .filter_map(|c| c.announced.as_ref().map(|(id, _)| (id.to_string(), c)))
        .collect();
    let valid_key = valid_id.to_string();
    let events = collect_events(&mut watcher, Duration::from_secs(60), |events| {
        let ended = |id: &str, key: &str| {
            events
                .iter()
                .any(|e| e.routing_key == key && e.body["job_id"].as_str() == Some(id))
        };
        ended(&valid_key, "roadmap.completed") && announced.keys().all(|id| ended(id, "roadmap.failed"))
    })
    .await;
    for event in events.iter().filter(|e| e.routing_key == "roadmap.failed") {
        let id = event.body["job_id"].as_str().unwrap();
        let case = announced.get(id).unwrap_or_else(|| {
            panic!(
                "a failed event for a job_id that is not readable: {:#}",
                event.body
            )
        });
        let (_, user) = case.announced.as_ref().unwrap();
        assert_eq!(event.body["reason"], case.code, "{}", case.name);
        assert_eq!(event.body["user_id"].as_str(), user.as_deref(), "{}", case.name);
        assert!(
            !event.body["message"].as_str().unwrap_or("").is_empty(),
            "{}",
            case.name
        );
    }
    // No other job_id was announced, in the events sent or in those still in the outbox.
    let db = env.db().await;
    let rows = db
        .query(
            "SELECT job_id::text FROM outbox WHERE routing_key = 'roadmap.failed'",
            &[],
        )
        .await
        .unwrap();
    let outbox: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let expected: BTreeSet<String> = announced.keys().cloned().collect();
    assert_eq!(
        outbox, expected,
        "failed events queued exactly for readable job_ids"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.routing_key == "roadmap.completed" && e.body["job_id"] != valid_key.as_str()),
        "no hostile message produced a roadmap"
    );

    // The per-reason metrics add up.
    let mut per_code: BTreeMap<&str, u64> = BTreeMap::new();
    let mut announced_per_code: BTreeMap<&str, u64> = BTreeMap::new();
    for case in &cases {
        *per_code.entry(case.code).or_default() += 1;
        if case.announced.is_some() {
            *announced_per_code.entry(case.code).or_default() += 1;
        }
    }
    let metrics = &worker.running.metrics;
    eventually(Duration::from_secs(10), "dead-letter metrics", || async {
        per_code
            .iter()
            .all(|(code, n)| metrics.dead_lettered.with_label_values(&[code]).get() == *n)
            .then_some(())
    })
    .await;
    for (code, n) in &per_code {
        assert_eq!(
            metrics.dead_lettered.with_label_values(&[code]).get(),
            *n,
            "{code}"
        );
        assert_eq!(
            metrics.jobs_rejected.with_label_values(&[code]).get(),
            *n,
            "{code}"
        );
        let failed = announced_per_code.get(code).copied().unwrap_or(0);
        assert_eq!(
            metrics.jobs_failed.with_label_values(&[code]).get(),
            failed,
            "{code}"
        );
    }
    let total: u64 = per_code.values().sum();
    assert_eq!(total, cases.len() as u64);

    worker.stop().await;
    env.cleanup().await;
}
