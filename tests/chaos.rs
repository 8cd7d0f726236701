//! The chaos run (not part of `cargo test`; it restarts the machine's RabbitMQ and Postgres):
//! several worker processes on a slow mock LLM, SIGKILLed at random moments, RabbitMQ and
//! Postgres restarted once each; then the invariants are checked from the database and the mock's
//! request log. Run: `cargo test --test chaos -- --nocapture`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use mock_llm::FaultPlan;
use testkit::{
    ALL_BATCHES, TestEnv, job,
    services::{pg_ctl, restart_rabbitmq},
};
use uuid::Uuid;

const REPLICAS: usize = 3;
const JOBS: u32 = 64;

/// A small deterministic generator, so a failing run can be repeated.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_nothing_and_regenerates_no_finished_batch() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(1200)).await;
    let replica_env = [
        ("LEASE_SECS", "6"),
        ("SWEEP_INTERVAL_SECS", "2"),
        ("SHUTDOWN_GRACE_SECS", "5"),
        ("WORKER_CONCURRENCY", "6"),
        // Random kills can land on one job three times, which is poison by definition; this run
        // is about losing nothing (poison itself is tests/it/poison.rs).
        ("JOB_POISON_AFTER", "8"),
    ];
    // A backend's durable event queue, bound before the first job as the README asks: it
    // survives the RabbitMQ restart, so every completion event has somewhere to go.
    let backend_queue = format!("{}.test-backend", env.name);
    let setup = env.connection.create_channel().await.unwrap();
    setup
        .exchange_declare(
            env.topology.events_exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    setup
        .queue_declare(
            backend_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    setup
        .queue_bind(
            backend_queue.as_str().into(),
            env.topology.events_exchange.as_str().into(),
            "roadmap.#".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut replicas: Vec<_> = (0..REPLICAS)
        .map(|_| env.spawn_worker_process(&replica_env))
        .collect();
    // A completion folds its batches away; the check of regenerated batches reads their copies.
    testkit::db_when_ready(&env).await;
    env.keep_folded_batches().await;
    let mut jobs = HashMap::new();
    for i in 0..JOBS {
        let weeks = 9 + i % 16;
        let (job_id, body) = job(weeks, &format!("Chaos role {i}"));
        jobs.insert(job_id, (weeks, format!("Chaos role {i}")));
        env.publish(&body).await;
    }
    let mut rng = Lcg(2026);
    let (mut kills, mut rabbit_restarted, mut pg_restarted) = (0, false, false);
    let started = Instant::now();
    let deadline = Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_millis(700 + rng.next(1300))).await;
        let completed = completed_count(&env).await;
        if completed == Some(JOBS as i64) {
            break;
        }
        assert!(
            started.elapsed() < deadline,
            "only {completed:?}/{JOBS} jobs completed in {deadline:?}"
        );
        let elapsed = started.elapsed().as_secs();
        if elapsed >= 4 && !rabbit_restarted {
            println!("chaos: restarting RabbitMQ");
            restart_rabbitmq();
            rabbit_restarted = true;
        } else if elapsed >= 7 && !pg_restarted {
            println!("chaos: restarting Postgres");
            pg_ctl("restart");
            pg_restarted = true;
        } else if elapsed < 30 {
            let victim = rng.next(REPLICAS as u64) as usize;
            replicas[victim].start_kill().unwrap();
            replicas[victim].wait().await.unwrap();
            kills += 1;
            replicas[victim] = env.spawn_worker_process(&replica_env);
        }
    }
    for replica in &mut replicas {
        replica.start_kill().unwrap();
    }

    // The invariants, from the database.
    let db = env.db().await;
    let roadmaps: i64 = db
        .query_one("SELECT count(*) FROM roadmaps", &[])
        .await
        .unwrap()
        .get(0);
    let duplicates: i64 = db
        .query_one("SELECT count(*) - count(DISTINCT job_id) FROM roadmaps", &[])
        .await
        .unwrap()
        .get(0);
    let events: i64 = db
        .query_one(
            "SELECT count(DISTINCT event_id) FROM outbox WHERE routing_key = 'roadmap.completed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let unsent: i64 = db
        .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    let mut contiguous = 0;
    for row in db
        .query("SELECT job_id, roadmap FROM roadmaps", &[])
        .await
        .unwrap()
    {
        let (job_id, roadmap): (Uuid, serde_json::Value) = (row.get(0), row.get(1));
        let weeks: Vec<u64> = roadmap["weeks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["number"].as_u64().unwrap())
            .collect();
        let expected = jobs[&job_id].0 as u64;
        if weeks == (1..=expected).collect::<Vec<_>>() {
            contiguous += 1;
        }
    }
    // A finished batch is regenerated if the LLM is asked for it after its checkpoint was stored.
    let stored: HashMap<(String, i32), chrono::DateTime<chrono::Utc>> = db
        .query(
            &format!(
                "SELECT j.request->>'target_role', (b.batch->>'first_week')::int, (b.batch->>'created_at')::timestamptz
                 FROM {ALL_BATCHES} JOIN jobs j ON j.job_id = (b.batch->>'job_id')::uuid"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let requests = env.mock.requests();
    let regenerated = requests
        .iter()
        .filter(|r| {
            stored
                .get(&(r.role.clone(), r.first_week as i32))
                .is_some_and(|at| r.received_at > *at)
        })
        .count();
    let lost = JOBS as i64 - roadmaps + duplicates;
    println!(
        "chaos: {JOBS} jobs on {REPLICAS} replicas; {kills} SIGKILLs, RabbitMQ restarted {}, Postgres restarted {}; \
         completed {roadmaps}, lost {lost}, duplicate roadmaps {duplicates}, completion events {events}, \
         unsent events {unsent}, contiguous roadmaps {contiguous}, LLM requests {}, finished batches regenerated {regenerated}; \
         {:.0}s",
        u8::from(rabbit_restarted),
        u8::from(pg_restarted),
        requests.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        rabbit_restarted && pg_restarted && kills > 0,
        "the chaos did not happen"
    );
    assert_eq!((roadmaps, duplicates, lost), (JOBS as i64, 0, 0));
    assert_eq!(events, JOBS as i64, "one completion event id per job");
    assert_eq!(contiguous, JOBS as i64);
    assert_eq!(regenerated, 0, "no finished batch was asked of the LLM again");
    // The first connection died with the broker's restart.
    let connection = roadmap_worker::amqp::connect(&testkit::amqp_settings(&env.name), "chaos-cleanup")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(backend_queue.as_str().into(), Default::default())
        .await;
    env.cleanup().await;
}

async fn completed_count(env: &TestEnv) -> Option<i64> {
    let (client, conn) = tokio_postgres::connect(&env.database_url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    client
        .query_one("SELECT count(*) FROM jobs WHERE status = 'completed'", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}
