//! Promise: a backend can own the topology's declaration. `roadmap-worker declare` declares
//! exactly what a replica declares at start (a replica started later agrees with it), so a job
//! published before any worker runs is taken; routing keys are the contract's whatever the
//! namespace, and a job published with a namespaced key is returned, not silently dropped.

use std::time::Duration;

use serde_json::Value;

use testkit::{TestEnv, amqp_url, job};

async fn run_declare(env: &TestEnv, extra: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_roadmap-worker"))
        .arg("declare")
        .args(extra)
        .args(["--amqp-namespace", &env.name])
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_declares_the_topology_and_publishes_before_any_worker() {
    let env = TestEnv::new().await;
    // Start from a broker without this namespace, as before the first deploy.
    let channel = env.connection.create_channel().await.unwrap();
    for queue in env.topology.queues() {
        channel
            .queue_delete(queue.into(), Default::default())
            .await
            .unwrap();
    }
    for exchange in [
        &env.topology.jobs_exchange,
        &env.topology.events_exchange,
        &env.topology.dead_letter_exchange,
    ] {
        channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    // --dry-run --json prints the topology without touching the broker.
    let printed = run_declare(&env, &["--dry-run", "--json"]).await;
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let spec: Value = serde_json::from_slice(&printed.stdout).unwrap();
    let work = spec["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == env.topology.queue.as_str())
        .expect("the work queue is listed");
    assert_eq!(work["arguments"]["x-queue-type"], "quorum");
    assert_eq!(work["arguments"]["x-delivery-limit"], 5);
    assert_eq!(work["bindings"][0]["routing_key"], "roadmap.generate");
    let published = env
        .publisher
        .publish_json(
            &env.topology.jobs_exchange,
            "roadmap.generate",
            b"{}",
            None,
            None,
            true,
        )
        .await;
    assert!(
        published.is_err(),
        "nothing is declared yet: the exchange is missing"
    );

    let declared = run_declare(&env, &[]).await;
    assert!(
        declared.status.success(),
        "{}",
        String::from_utf8_lossy(&declared.stderr)
    );
    let text = String::from_utf8_lossy(&declared.stdout);
    assert!(
        text.contains(&format!("queue    {} (durable)", env.topology.queue)),
        "{text}"
    );
    assert!(text.ends_with("declared on the broker\n"), "{text}");

    // A namespaced routing key reaches no queue: returned, so a mandatory publish fails.
    // The publish to a missing exchange closed that channel (404): a new one.
    let publisher = roadmap_worker::amqp::Publisher::new(&env.connection)
        .await
        .unwrap();
    let namespaced = format!("{}.generate", env.name);
    let (job_id, body) = job(2, "Network Engineer");
    let body = body.to_string();
    let returned = publisher
        .publish_json(
            &env.topology.jobs_exchange,
            &namespaced,
            body.as_bytes(),
            None,
            None,
            true,
        )
        .await;
    assert!(returned.is_err(), "a namespaced routing key is unroutable");
    // The contract's key is taken with no worker running, and waits for one.
    publisher
        .publish_json(
            &env.topology.jobs_exchange,
            "roadmap.generate",
            body.as_bytes(),
            None,
            None,
            true,
        )
        .await
        .expect("the work queue takes the job before any worker runs");
    let mut events = env.watcher().await;
    // The worker declares the same topology again: the broker would refuse other arguments.
    let worker = env.start_worker(&[]).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    // And a second `declare` against the running fleet's topology changes nothing.
    assert!(run_declare(&env, &[]).await.status.success());
    worker.stop().await;
    env.cleanup().await;
}
