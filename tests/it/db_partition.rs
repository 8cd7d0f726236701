//! Promise: a database path that goes quiet, with no error on any socket (a partition the
//! kernel has not noticed, a proxy that hangs), is an outage like a refused connection: every
//! call gives up at its deadline, intake pauses, and once the path is back every job completes,
//! each with one completion event and one roadmap.
//!
//! The partition lasts `PARTITION_SECS` (45 s by default; 180 for the three-minute run).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use mock_llm::FaultPlan;
use roadmap_worker::metrics::{Dependency, Metrics};
use testkit::{Proxy, ProxyMode, TestEnv, eventually, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_database_path_pauses_intake_and_every_job_completes_after() {
    let partition = Duration::from_secs(
        std::env::var("PARTITION_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(45),
    );
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(500)).await;
    // The worker reaches Postgres only through the proxy; the test's own sessions go direct.
    let upstream: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::start(upstream).await;
    let url = env
        .database_url
        .replacen(":5432/", &format!(":{}/", proxy.port()), 1);
    assert_ne!(url, env.database_url, "the worker's URL goes through the proxy");
    let worker = env
        .start_worker(&[
            "--database-url",
            &url,
            "--worker-concurrency",
            "4",
            // A job handed back waits 5 s in the retry queue, not 30.
            "--retry-delay-secs",
            "5",
        ])
        .await;
    let metrics = worker.running.metrics.clone();
    let mut events = env.watcher().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let (id, body) = job(12, &format!("Partitioned Engineer {i}"));
        env.publish(&body).await;
        ids.push(id);
    }
    let db = env.db().await;
    eventually(Duration::from_secs(30), "first checkpoints", || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM jobs WHERE batches_done > 0", &[])
            .await
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    proxy.set(ProxyMode::Stalled);
    let cut = Instant::now();
    let paused = |m: &Metrics| {
        m.intake_paused
            .with_label_values(&[Dependency::Database.as_str()])
            .get()
            == 1
    };
    eventually(partition, "intake paused by the quiet database", || async {
        paused(&metrics).then_some(())
    })
    .await;
    let paused_after = cut.elapsed();
    println!(
        "partition: intake paused {:.1} s after the path went quiet",
        paused_after.as_secs_f64()
    );
    // The readiness probe answers within its own deadline, and says why.
    let ready = reqwest::Client::new()
        .get(format!("http://{}/readyz", worker.running.metrics_addr))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("/readyz answers while the database path is quiet");
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("postgres"), "{why}");
    tokio::time::sleep(partition.saturating_sub(cut.elapsed())).await;
    proxy.set(ProxyMode::Pass);
    let healed = Instant::now();

    let mut completions = BTreeSet::new();
    for id in &ids {
        let end = events
            .wait_for_end(*id, Duration::from_secs(180), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
        completions.insert(end.body["event_id"].as_str().unwrap().to_owned());
    }
    println!(
        "partition: every job completed {:.1} s after the path came back",
        healed.elapsed().as_secs_f64()
    );
    assert_eq!(completions.len(), ids.len(), "one completion event per job");
    // Delivery is at least once: a copy sent again (its confirm or its marking lost to the
    // partition) carries the event id of the first, so a consumer drops it. No job has a second
    // outcome.
    let mut repeats = Vec::new();
    while let Some(event) = events.next(Duration::from_secs(3)).await.unwrap() {
        if event.routing_key == "roadmap.completed" {
            repeats.push(event.body["event_id"].as_str().unwrap().to_owned());
        }
    }
    println!("partition: {} completion copies delivered again", repeats.len());
    assert!(
        repeats.iter().all(|id| completions.contains(id)),
        "a completion with a new event id: {repeats:?}"
    );
    let roadmaps: i64 = db
        .query_one("SELECT count(*) FROM roadmaps", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(roadmaps, ids.len() as i64, "one roadmap per job");
    assert!(!paused(&metrics), "intake resumed");
    worker.stop().await;
    env.cleanup().await;
}
