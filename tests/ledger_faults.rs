//! The ledger under broker and database faults (not part of `cargo test`: it restarts the
//! machine's RabbitMQ, stops its Postgres, shortens the broker's consumer timeout, raises its
//! memory alarm and adds a broker user). Run alone:
//! `cargo test --test ledger_faults -- --nocapture --test-threads=1`.
//!
//! - Jobs published transient, parked by a provider that refuses our key, then a RabbitMQ
//!   restart: all complete (their waits are rows, not messages).
//! - A cancel during a database outage: the job ends `cancelled`, nothing is refused.
//! - The recovery consumer meeting a database outage with more messages than its prefetch: each
//!   is accounted for once the database is back, and the cancel consumer still answers twice the
//!   consumer timeout later.
//! - Two slots, interactive and bulk jobs longer than a short consumer timeout: no channel is
//!   closed, nothing is dead-lettered, everything completes.
//! - A job published by another broker user with `user_id` set, re-published by intake: the
//!   copy leaves the property out, every job completes, no channel is closed.
//! - A minute-long memory alarm while jobs finish: all complete, one completion event id each,
//!   every slot free again.
//! - Postgres stopped while calls wait on the provider budget: intake pauses, the jobs are handed
//!   back, and all complete once it is back.

use std::time::Duration;

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};
use mock_llm::{Fault, FaultPlan, RatedFault};
use serde_json::json;
use testkit::{
    TestEnv, eventually, job,
    services::{restart_rabbitmq, short_consumer_timeout, stop_postgres},
};

/// Every dead letter, in the table and in the broker's queue.
async fn dead_letters(env: &TestEnv) -> usize {
    env.dead_letters().await.len()
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    env.db().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_jobs_parked_by_a_401_survive_a_broker_restart() {
    let refusing = FaultPlan {
        rates: vec![RatedFault {
            rate: 1.0,
            fault: Fault::AuthFailure,
        }],
        ..Default::default()
    };
    let env = TestEnv::with_plan(refusing).await;
    let worker = env.start_worker(&[]).await;
    for i in 0..4 {
        let (_, body) = job(3, &format!("Transient role {i}"));
        // pika's default: no delivery_mode, so the broker keeps the message in memory only.
        let props = BasicProperties::default().with_content_type("application/json".into());
        env.publish_with(body.to_string().as_bytes(), props).await;
    }
    eventually(Duration::from_secs(30), "every job parked in its row", || async {
        let parked = count(
            &env,
            "SELECT count(*) FROM jobs WHERE status = 'running' AND owner IS NULL AND delivery_acked",
        )
        .await;
        (parked == 4).then_some(())
    })
    .await;
    println!("broker: restarting RabbitMQ with 4 jobs parked");
    restart_rabbitmq();
    env.mock.set_plan(FaultPlan::default());
    eventually(Duration::from_secs(120), "every job completed", || async {
        let done = count(&env, "SELECT count(*) FROM jobs WHERE status = 'completed'").await;
        (done == 4).then_some(())
    })
    .await;
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_a_database_outage_cancels_the_job() {
    // Long enough (18 batches of 1.5 s, one at a time) to be running when the database is back.
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(1500)).await;
    let worker = env
        .start_worker(&["--retry-delay-secs", "1", "--job-parallelism", "1"])
        .await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(52, "Data Engineer");
    env.publish(&body).await;
    let accepted = events.next(Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(accepted.routing_key, "roadmap.accepted");
    let first = events.next(Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(first.routing_key, "roadmap.progress");
    let back = stop_postgres();
    println!("outage: Postgres stopped; the user cancels");
    roadmap_worker::client::publish_cancel(&env.publisher, &env.topology, job_id, "user-1")
        .await
        .unwrap();
    // Longer than the store's retries, so the cancel has to wait on its own path.
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(back);
    println!("outage: Postgres back");
    let end = events
        .wait_for_end(job_id, Duration::from_secs(120), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.failed", "{}", end.body);
    assert_eq!(end.body["reason"], "cancelled", "{}", end.body);
    assert_eq!(dead_letters(&env).await, 0, "nothing refused, no missing_field");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recovery_consumer_settles_every_delivery_through_an_outage() {
    let timeout = Duration::from_secs(5);
    let _broker = short_consumer_timeout(timeout.as_millis() as u64);
    let env = TestEnv::new().await;
    let worker = env
        .start_worker(&["--retry-delay-secs", "1", "--recover-limit", "0"])
        .await;
    let mut events = env.watcher().await;
    let back = stop_postgres();
    // More than the recovery consumer's prefetch, as the broker dead-letters them.
    let mut ids = Vec::new();
    for i in 0..6 {
        let (id, body) = job(3, &format!("Recovered role {i}"));
        let mut headers = FieldTable::default();
        headers.insert("x-roadmap-recoveries".into(), AMQPValue::LongUInt(1));
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers);
        env.publisher
            .publish(
                &env.topology.dead_letter_exchange,
                roadmap_worker::amqp::topology::JOB_ROUTING_KEY,
                body.to_string().as_bytes(),
                props,
                true,
            )
            .await
            .unwrap();
        ids.push(id);
    }
    tokio::time::sleep(timeout * 5).await;
    drop(back);
    println!("outage: Postgres back");
    for id in &ids {
        let end = events
            .wait_for_end(*id, Duration::from_secs(90), |_| {})
            .await
            .unwrap();
        assert_eq!(end.body["reason"], "delivery_limit", "{}", end.body);
    }
    tokio::time::sleep(timeout * 2).await;
    // The cancel consumer still answers: a cancel of a job not seen yet ends it at once.
    let (late, _) = job(3, "Never published");
    roadmap_worker::client::publish_cancel(&env.publisher, &env.topology, late, "user-1")
        .await
        .unwrap();
    let end = events
        .wait_for_end(late, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.body["reason"], "cancelled", "{}", end.body);
    let metrics = &worker.running.metrics;
    assert_eq!(
        metrics.amqp_reconnects.get(),
        0,
        "no channel of the session was closed"
    );
    for consumer in ["cancel", "recover"] {
        let restarts = metrics.channels_reopened.with_label_values(&[consumer]).get();
        assert_eq!(restarts, 0, "the {consumer} consumer's channel was never closed");
    }
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slots_and_jobs_longer_than_the_consumer_timeout_close_no_channel() {
    let timeout = Duration::from_secs(6);
    let _broker = short_consumer_timeout(timeout.as_millis() as u64);
    // Each job takes about 5 calls of 1.5 s: longer than the consumer timeout.
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(1500)).await;
    let worker = env
        .start_worker(&[
            "--worker-concurrency",
            "2",
            "--amqp-ack-deadline-secs",
            "2",
            "--job-parallelism",
            "1",
        ])
        .await;
    let mut events = env.watcher().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let (id, mut body) = job(12, &format!("Slot role {i}"));
        if i % 2 == 1 {
            body["priority"] = json!("bulk");
        }
        env.publish(&body).await;
        ids.push(id);
    }
    for id in &ids {
        let end = events
            .wait_for_end(*id, Duration::from_secs(240), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    }
    let metrics = &worker.running.metrics;
    assert_eq!(
        metrics.amqp_reconnects.get(),
        0,
        "no channel was closed under the jobs"
    );
    assert_eq!(dead_letters(&env).await, 0, "nothing dead-lettered");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_carrying_another_brokers_user_id_is_re_published_without_it() {
    // A backend that publishes as its own broker user and sets `user_id` to it (RabbitMQ checks
    // the property against the connection's user): a worker copying the property onto its own
    // re-publish would have the broker close its channel with 406.
    testkit::services::broker_user("rw-backend", "rw-backend");
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    let backend = lapin::Connection::connect(
        "amqp://rw-backend:rw-backend@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("the backend's broker user");
    let channel = backend.create_channel().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        // Bulk jobs sent with the interactive key: intake re-publishes each to the bulk queue.
        let (id, mut body) = job(3, &format!("Own-user role {i}"));
        body["priority"] = json!("bulk");
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_user_id("rw-backend".into());
        channel
            .basic_publish(
                env.topology.jobs_exchange.as_str().into(),
                roadmap_worker::amqp::topology::JOB_ROUTING_KEY.into(),
                Default::default(),
                body.to_string().as_bytes(),
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        ids.push(id);
    }
    for id in &ids {
        let end = events
            .wait_for_end(*id, Duration::from_secs(60), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    }
    assert_eq!(
        worker.running.metrics.amqp_reconnects.get(),
        0,
        "no channel was closed"
    );
    let _ = backend.close(200, "done".into()).await;
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_long_memory_alarm_wedges_no_slot_and_repeats_no_event() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(300)).await;
    let worker = env.start_worker(&["--job-parallelism", "1"]).await;
    let mut events = env.watcher().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let (id, body) = job(12, &format!("Alarm role {i}"));
        env.publish(&body).await;
        ids.push(id);
    }
    // Let the jobs start, then block every publishing connection for a minute while they finish.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("broker: memory alarm for 60 s");
    let alarm = testkit::services::memory_alarm();
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(alarm);
    println!("broker: memory alarm cleared");
    let mut ends = std::collections::HashMap::new();
    for id in &ids {
        let end = events
            .wait_for_end(*id, Duration::from_secs(120), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
        ends.insert(*id, end.message_id.clone());
    }
    // Whatever else arrives for these jobs is a copy of an event already seen (same id), never a
    // second outcome.
    while let Some(event) = events.next(Duration::from_secs(3)).await.unwrap() {
        if event.routing_key == "roadmap.completed" {
            let id: uuid::Uuid = event.body["job_id"].as_str().unwrap().parse().unwrap();
            assert_eq!(
                ends.get(&id),
                Some(&event.message_id),
                "one completion event id per job"
            );
        }
    }
    let metrics = &worker.running.metrics;
    eventually(Duration::from_secs(30), "every slot free again", || async {
        (metrics.jobs_in_flight.get() == 0).then_some(())
    })
    .await;
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_while_calls_wait_on_the_budget_pauses_intake_and_all_complete() {
    // A budget far below the load: most calls wait their turn when Postgres stops.
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(200)).await;
    let worker = env
        .start_worker(&["--llm-tpm-limit", "40000", "--retry-delay-secs", "2"])
        .await;
    let mut events = env.watcher().await;
    let mut ids = Vec::new();
    // One call of about 8,700 tokens each (the prompt and a 3-week output limit): four go at
    // once, the others wait their turn, up to about 20 s.
    for i in 0..6 {
        let (id, body) = job(3, &format!("Budgeted Engineer {i}"));
        env.publish(&body).await;
        ids.push(id);
    }
    eventually(Duration::from_secs(60), "calls waiting on the budget", || async {
        let waits = worker.running.metrics.budget_wait.get_sample_sum();
        (waits > 0.0).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let back = stop_postgres();
    println!("budget outage: Postgres stopped while calls wait on the budget");
    eventually(
        Duration::from_secs(120),
        "intake paused for the database",
        || async {
            (worker
                .running
                .metrics
                .intake_paused
                .with_label_values(&["database"])
                .get()
                == 1)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    drop(back);
    println!("budget outage: Postgres back after {:?}", started.elapsed());
    for id in ids {
        let end = events
            .wait_for_end(id, Duration::from_secs(240), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    }
    println!(
        "budget outage: every job completed {:?} after the stop",
        started.elapsed()
    );
    assert_eq!(dead_letters(&env).await, 0, "nothing dead-lettered");
    worker.stop().await;
    env.cleanup().await;
}
